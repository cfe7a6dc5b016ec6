"""One process, five crypto venues, each on its own feed against its own replica: every final 1m and 5m
candle of every instrument equals the candles computed from that venue's tape, and a logical
instrument fails over from one venue to another (Coinbase to Kraken) without a hole.

The venues are found through the registry and pointed at their replicas with
``Venue.replica_settings``, as a user's own test would."""

from __future__ import annotations

import asyncio
import math
import urllib.parse
from pathlib import Path

import aiohttp
import pytest

from chaos import compare_finals_with_tape
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.client import Client
from deltafeed.config import FailoverSettings, Settings
from deltafeed.engine import Engine
from deltafeed.model import Candle, Instrument
from deltafeed.replicas.server import ReplicaBase
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from reference import read_venue_tape

#: The issue's own mix: each venue's BTC market as that venue spells it.
MIXED = ["binance:BTCUSDT", "coinbase:BTC-USD", "bybit:BTCUSDT", "hyperliquid:BTC", "kraken:BTC/USD"]
PRIMARY, STANDBY = "coinbase:BTC-USD", "kraken:BTC/USD"
LOGICAL = "x:BTCUSD"


def prices(c: Candle) -> tuple[float, ...]:
    return (c.open, c.high, c.low, c.close, c.volume)


def same(a: Candle, b: Candle | None) -> bool:
    """The same candle, its prices and volume as served (shortest decimal) or stored (binary float)."""
    return (
        b is not None
        and (a.open_time, a.trades, a.final) == (b.open_time, b.trades, b.final)
        and all(math.isclose(x, y, rel_tol=1e-12) for x, y in zip(prices(a), prices(b), strict=True))
    )


async def served_by_path(engine: Engine, instrument: str) -> list[Candle]:
    """``instrument``'s final 1m candles over HTTP, asked three ways (raw path, escaped path, the
    client), which must agree."""
    runner = await start_api(engine, None, "127.0.0.1", 0, None)
    try:
        url = api_url(runner)
        # The engine keeps finalising candles while we read, so the three reads share an `until`
        # taken from a first read: otherwise a candle finalised between them makes them differ.
        async with aiohttp.ClientSession() as http:

            async def final_rows(path: str, query: str = "") -> list[list[object]]:
                async with http.get(f"{url}/candles/{path}/1m?final=true&format=json{query}") as r:
                    assert r.status == 200, (path, r.status, await r.text())
                    return (await r.json())["candles"]

            first = await final_rows(instrument)
            assert first, instrument
            until = int(first[-1][0])  # type: ignore[call-overload]
            bodies = [
                await final_rows(path, f"&until={until}")
                for path in (instrument, urllib.parse.quote(instrument, safe=":"))
            ]
            assert bodies[0] == bodies[1] == first
        async with Client(url) as df:
            got = await df.fetch_candles(instrument, "1m", until=until, final=True)
        assert [c.open_time for c in got] == [row[0] for row in bodies[0]]
        return got
    finally:
        await stop_api(runner)


@pytest.mark.timeout(150)
async def test_five_venues_in_one_process_equal_their_tapes_and_fail_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instruments = [Instrument.parse(s) for s in MIXED]
    replicas: dict[str, ReplicaBase] = {}
    venues: dict[str, dict[str, object]] = {}
    try:
        for inst in instruments:
            venue = registry.get(inst.venue)
            replica = venue.build_replica(
                symbols=[inst.symbol],
                seed=21,
                rate=3.0,
                speed=60.0,
                history_ms=30 * 60_000,
                tape=tmp_path / f"{inst.venue}.csv",
            )
            await replica.start()
            replicas[inst.venue] = replica
            venues[inst.venue] = venue.replica_settings(replica)
            for k, v in venue.replica_env(replica).items():
                monkeypatch.setenv(k, v)
        settings = Settings(
            symbols=MIXED,
            timeframes=["1m", "5m"],
            history="30m",
            db=str(tmp_path / "mixed.duckdb"),
            venues=venues,
            failover={LOGICAL: FailoverSettings(primary=PRIMARY, standby=STANDBY)},
            failover_after="1s",
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            await asyncio.sleep(12.0)  # 12 market minutes on every venue
            status = engine.status()
            before = status["failover"][LOGICAL]
            # Each venue streams on its own feed.
            assert set(status["venues"]) >= {i.venue for i in instruments}, status["venues"].keys()
            for inst in instruments:
                assert status["venues"][inst.venue]["connected"], inst.venue
                assert status["instruments"][str(inst)]["trades"] > 0, inst
            served = await served_by_path(engine, STANDBY)
            await engine.stop_streaming([PRIMARY])  # the primary falls silent
            await asyncio.sleep(6.0)
            after = engine.status()["failover"][LOGICAL]
        finally:
            await engine.stop()
    finally:
        for replica in replicas.values():
            await replica.stop()

    assert before["active"] == PRIMARY and before["switches"] == 0
    assert after["active"] == STANDBY and after["switches"] == 1 and after["on_standby"]

    cold = await open_cold(settings.db, read_only=True)
    try:
        compared = 0
        for inst in instruments:
            rows = [r for r in read_venue_tape(tmp_path / f"{inst.venue}.csv") if r.symbol == inst.symbol]
            compared += await compare_finals_with_tape(cold, inst, rows)
        # A symbol with a slash is one path segment, escaped or not, and the client escapes it.
        stored_final = {c.open_time: c for c in await cold.query(STANDBY, "1m") if c.final}
        diff = [(c, stored_final.get(c.open_time)) for c in served if not same(c, stored_final.get(c.open_time))]
        assert served and not diff, diff[:3]
        logical = [c for c in await cold.query(LOGICAL, "1m") if c.closed]
        keys = [c.open_time for c in logical]
        assert keys == list(range(keys[0], keys[-1] + 60_000, 60_000)), "a hole in the logical series"
    finally:
        await cold.close()
    assert compared >= len(instruments) * 30
