"""Alpaca's feed against the replica, end to end.

The connection limit: while another program streams stocks with the key, the engine's stock
connection is refused with 406. The feed says so in one error line and in its status
(``refused_symbols``, ``venue_errors``), waits before trying again instead of hammering the venue,
and its crypto stream (another endpoint, its own limit) runs; the first program keeps streaming.

The msgpack encoding: the stream in binary frames builds the same candles as the venue's bars."""

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
from deltafeed.model import TIMEFRAMES
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, KEY_ENV, SECRET_ENV
from deltafeed.venues.alpaca.replica import AlpacaReplica
from reference import candles_from_tape, read_venue_tape, rows_by_symbol


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


@pytest.mark.slow  # the engine runs against the replica for ~10 s
async def test_the_msgpack_encoding_streams_the_same_candles_as_the_venue_s_bars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``encoding = "msgpack"``: binary frames with Timestamp extensions, actions sent as msgpack. With
    no late trades, every candle built from the stream equals the venue's bar when reconciled (no
    correction), no frame is skipped, and the final candles equal the tape."""
    monkeypatch.setitem(os.environ, KEY_ENV, DEV_KEY)
    monkeypatch.setitem(os.environ, SECRET_ENV, DEV_SECRET)
    symbols = ["AAPL", "BTC/USD"]
    async with AlpacaReplica(
        symbols=symbols, seed=4, rate=2.0, speed=30.0, history_ms=600_000, late_every=0, tape=tmp_path / "t.csv"
    ) as replica:
        settings = Settings(
            symbols=[f"alpaca:{s}" for s in symbols],
            timeframes=["1m", "5m"],
            history="10m",
            db=str(tmp_path / "m.duckdb"),
            reconcile_every="2s",
            venues={"alpaca": registry.get("alpaca").replica_settings(replica) | {"encoding": "msgpack"}},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            await asyncio.sleep(10.0)
            st = engine.status()
        finally:
            await engine.stop()
        stats = dict(replica.stats)
    al = st["venues"]["alpaca"]
    assert stats["msgpack_connections"] == stats["connections"] == 2 and al["connects"] == 2, (stats, al)
    assert not al["skipped_frames"] and not al.get("venue_errors"), al
    print(f"\nalpaca msgpack: {stats}")
    for s in symbols:
        ins = st["instruments"][f"alpaca:{s}"]
        assert ins["trades"] > 100 and ins["reconciled"] >= 2 and ins["corrected"] == 0, ins
    assert replica.tape_path is not None
    tape = rows_by_symbol(read_venue_tape(replica.tape_path))
    cold = await open_cold(settings.db, read_only=True)
    try:
        for s in symbols:
            for tf in ("1m", "5m"):
                want = {c.open_time: c for c in candles_from_tape(tape[s], TIMEFRAMES[tf])}
                finals = [c for c in await cold.query(f"alpaca:{s}", tf) if c.final]
                assert finals
                for c in finals:
                    w = want[c.open_time]
                    assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                        w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
                    ), (s, tf, c, w.row())  # fmt: skip
    finally:
        await cold.close()


@pytest.mark.slow  # the engine runs against the replica for ~15 s
async def test_refused_406_waits_then_connects_and_catches_up_with_the_tape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection limit, from the other side: while another program streams stocks with the key,
    the engine's stock stream is refused with 406 and waits ``refused_retry_s`` (2 s here) before each
    attempt. Once the other program has gone, the next attempt connects and streams; the minutes
    nobody streamed for us are repaired from the bars, so every stored candle from the history's
    start to the end is there, and every final one equals the tape."""
    monkeypatch.setitem(os.environ, KEY_ENV, DEV_KEY)
    monkeypatch.setitem(os.environ, SECRET_ENV, DEV_SECRET)
    async with (
        AlpacaReplica(
            symbols=["AAPL"], seed=5, rate=2.0, speed=30.0, history_ms=600_000, tape=tmp_path / "t.csv"
        ) as replica,
        aiohttp.ClientSession() as http,
    ):
        other = await http.ws_connect(replica.stock_stream_url("iex"))
        await other.send_str(json.dumps({"action": "auth", "key": DEV_KEY, "secret": DEV_SECRET}))
        async with asyncio.timeout(5):
            while "authenticated" not in (await other.receive_str()):
                pass
        settings = Settings(
            symbols=["alpaca:AAPL"],
            timeframes=["1m", "5m"],
            history="10m",
            db=str(tmp_path / "r.duckdb"),
            reconcile_every="2s",
            venues={"alpaca": registry.get("alpaca").replica_settings(replica) | {"refused_retry_s": 2.0}},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        feed = engine.feeds["alpaca"]
        try:
            async with asyncio.timeout(10):  # refused
                while replica.stats["refused_406"] < 1:
                    await asyncio.sleep(0.05)
            refused_ms = replica.clock.now_ms()
            await asyncio.sleep(2.5)  # at least one more attempt, refused again, 2 s after the first
            await other.close()  # the other program stops: the next attempt may connect
            async with asyncio.timeout(15):
                while not engine.status()["instruments"]["alpaca:AAPL"]["trades"]:
                    await asyncio.sleep(0.05)
            streaming_ms = replica.clock.now_ms()
            # Catching up: the minutes before the stream came back become final (repaired, then
            # reconciled once the venue's bars have settled), so the final mark passes them.
            async with asyncio.timeout(30):
                while engine.final_marks().get(("alpaca:AAPL", "1m"), 0) < streaming_ms + 60_000:
                    await asyncio.sleep(0.1)
            st = engine.status()
            attempts = feed.streams["stocks"].ws.attempts  # type: ignore[attr-defined]
        finally:
            await engine.stop()
        stats = dict(replica.stats)
    al = st["venues"]["alpaca"]
    ins = st["instruments"]["alpaca:AAPL"]
    print(f"\nalpaca 406 retry: attempts {attempts}, replica {stats}, AAPL {ins}")
    assert stats["refused_406"] >= 2 and attempts == stats["refused_406"] + 1, (attempts, stats)
    assert al["venue_errors"] == {"406 connection limit exceeded": stats["refused_406"]}, al
    assert al["connected"] and not al.get("refused_symbols"), al
    assert ins["trades"] > 20 and ins["repaired"] > 0, ins
    assert streaming_ms - refused_ms >= 60_000  # more than a market minute went by without our stream
    assert replica.tape_path is not None
    tape = rows_by_symbol(read_venue_tape(replica.tape_path))["AAPL"]
    cold = await open_cold(settings.db, read_only=True)
    try:
        for tf in ("1m", "5m"):
            want = {c.open_time: c for c in candles_from_tape(tape, TIMEFRAMES[tf])}
            stored = await cold.query("alpaca:AAPL", tf)
            opens = [c.open_time for c in stored]
            tf_ms = TIMEFRAMES[tf]
            holes = [t for t in range(opens[0], opens[-1] + 1, tf_ms) if t in want and t not in set(opens)]
            assert not holes, (tf, holes)
            finals = [c for c in stored if c.final]
            if tf == "1m":  # every minute from before the first refusal to the stream's return is final
                across = [c for c in stored if refused_ms - tf_ms <= c.open_time <= streaming_ms - tf_ms]
                assert len(across) >= 2 and all(c.final for c in across), across
            for c in finals:
                w = want[c.open_time]
                assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                    w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
                ), (tf, c, w.row())  # fmt: skip
    finally:
        await cold.close()
