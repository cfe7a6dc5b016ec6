"""Alpaca's connection limit end to end: while another program streams stocks with the key, the
engine's stock connection is refused with 406. The feed says so in one error line and in its status
(``refused_symbols``, ``venue_errors``), waits before trying again instead of hammering the venue,
and its crypto stream (another endpoint, its own limit) runs; the first program keeps streaming."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

import aiohttp
import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues import registry
from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, KEY_ENV, SECRET_ENV
from deltafeed.venues.alpaca.replica import AlpacaReplica


@pytest.mark.slow  # the engine runs against the replica for ~8 s
async def test_a_second_connection_is_refused_406_once_and_the_first_keeps_streaming(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setitem(os.environ, KEY_ENV, DEV_KEY)
    monkeypatch.setitem(os.environ, SECRET_ENV, DEV_SECRET)
    first: list[dict[str, object]] = []  # what the other program receives

    async def other_program(ws: aiohttp.ClientWebSocketResponse) -> None:
        await ws.send_str(json.dumps({"action": "auth", "key": DEV_KEY, "secret": DEV_SECRET}))
        await ws.send_str(json.dumps({"action": "subscribe", "trades": ["AAPL"]}))
        async for msg in ws:
            first.extend(json.loads(msg.data))

    async with (
        AlpacaReplica(symbols=["AAPL", "BTC/USD"], seed=2, rate=2.0, speed=30.0, history_ms=600_000) as replica,
        aiohttp.ClientSession() as http,
        http.ws_connect(replica.stock_stream_url("iex")) as ws,
    ):
        reader = asyncio.create_task(other_program(ws))
        try:
            async with asyncio.timeout(5):
                while not any(m.get("T") == "t" for m in first):
                    await asyncio.sleep(0.05)
            settings = Settings(
                symbols=["alpaca:AAPL", "alpaca:BTC/USD"],
                timeframes=["1m"],
                history="10m",
                db=str(tmp_path / "f.duckdb"),
                venues={"alpaca": registry.get("alpaca").replica_settings(replica)},
            ).validate()
            engine = Engine(settings)
            await engine.start()
            try:
                await asyncio.sleep(3.0)
                trades_then = sum(m.get("T") == "t" for m in first)
                await asyncio.sleep(4.0)
                st = engine.status()
                feed = engine.feeds["alpaca"]
                stock_attempts = feed.streams["stocks"].ws.attempts  # type: ignore[attr-defined]
            finally:
                await engine.stop()
            trades_now = sum(m.get("T") == "t" for m in first)
            assert not ws.closed
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        stats = dict(replica.stats)
    al = st["venues"]["alpaca"]
    refusal = al["refused_symbols"]["stocks"]
    assert "connection limit exceeded (406)" in refusal and "another program streams with this key" in refusal
    assert set(al["refused_symbols"]) == {"stocks"}  # the crypto stream has its own limit
    assert al["venue_errors"] == {"406 connection limit exceeded": 1}
    # One line (an error) says it all, and no retry within the wait: the venue saw one refused attempt.
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        len(lines) == 1
        and lines[0].levelno == logging.ERROR
        and "406" in lines[0].getMessage()
        and "retrying in 60 s" in lines[0].getMessage()
    ), [r.getMessage() for r in lines]
    assert stock_attempts == 1 and stats["refused_406"] == 1 and stats["connections"] == 3, stats
    # The first connection never noticed, and kept streaming; the engine's crypto stream ran.
    assert trades_now > trades_then > 0
    assert not any(m.get("T") == "error" for m in first)
    assert st["instruments"]["alpaca:AAPL"]["trades"] == 0
    assert st["instruments"]["alpaca:BTC/USD"]["trades"] > 50
    print(f"\nalpaca 406: {lines[0].getMessage()!r}; replica {stats}")
