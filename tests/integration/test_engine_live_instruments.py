"""Instruments added to and dropped from a running engine (what a cluster's collector does as its
leases come and go), against the Binance replica: the added one is bootstrapped from the history
asked for and then subscribed on the open connection, the dropped one unsubscribed, with no
connection beyond the first; every final candle of both equals the replica's tape, with no hole,
and the dropped one's final mark vouches for nothing past what the engine verified."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, Instrument
from deltafeed.store.cold import ColdStore
from deltafeed.venues import registry
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import until
from reference import candles_from_tape, read_tape

M = TIMEFRAMES["1m"]


async def test_add_and_drop_instruments_live_on_one_connection(tmp_path: Path) -> None:
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        seed=21,
        rate=4.0,
        speed=60.0,
        history_ms=2 * 3_600_000,
        tape=str(tape),
    )
    await replica.start()
    db = str(tmp_path / "live.duckdb")
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m", "5m"],
        history="20m",
        db=db,
        rest_url=replica.url,
        ws_url=replica.ws_url,
        venue_klines=False,
    ).validate()
    engine = Engine(settings)
    btc, eth, sol = (Instrument.parse(s, default_venue="binance") for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    try:
        await engine.start()
        await until(lambda: engine.states["binance:BTCUSDT"].trades > 200, 60.0, "BTC trades")
        added_at = replica.clock.now_ms()
        assert await engine.add_instrument(eth, history_ms=30 * M) == ["binance:ETHUSDT"]
        assert await engine.add_instrument(eth) == []  # collected already
        await until(lambda: engine.states["binance:ETHUSDT"].trades > 200, 60.0, "ETH trades")
        assert await engine.drop_instrument(btc) == ["binance:BTCUSDT"]
        dropped_at = replica.clock.now_ms()
        assert "binance:BTCUSDT" not in engine.states
        # Added and dropped again at once: a cancelled addition leaves nothing behind.
        adding = asyncio.create_task(engine.add_instrument(sol, history_ms=30 * M))
        await asyncio.sleep(0)  # it starts, and waits for the venue's answer to its first request
        adding.cancel()
        await asyncio.gather(adding, return_exceptions=True)
        assert adding.cancelled()
        assert "binance:SOLUSDT" not in engine.states
        assert not engine.joining, engine.joining
        await asyncio.sleep(3.0)  # three market minutes more of ETH alone
        status = engine.status()
        assert status["connects"] == 1, status
        assert not status["skipped_frames"]
    finally:
        await engine.stop()
        await replica.stop()
    assert replica.stats["connections"] == 1
    assert replica.stats["429"] == 0 and replica.stats["418"] == 0

    rows = read_tape(str(tape))
    store = ColdStore.open_reader(db)
    try:
        marks = store.final_marks()
        for sym, since in (("ETHUSDT", added_at - 30 * M), ("BTCUSDT", None)):
            for tf in ("1m", "5m"):
                tf_ms = TIMEFRAMES[tf]
                want = {c.open_time: c for c in candles_from_tape([r for r in rows if r[0] == sym], tf_ms)}
                final = [c for c in store.query(f"binance:{sym}", tf) if c.final]
                assert final, (sym, tf)
                keys = [c.open_time for c in final]
                assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (sym, tf)  # no hole
                if since is not None:  # history from where it was asked for
                    assert keys[0] <= since - since % tf_ms + tf_ms, (sym, tf)
                for c in final:
                    w = want[c.open_time]
                    got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
                    assert got == (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades), (sym, tf, c.open_time)
                # The mark vouches for final candles only: every stored candle before it is final.
                mark = marks[(f"binance:{sym}", tf)]
                assert all(c.final for c in store.query(f"binance:{sym}", tf) if c.open_time < mark), (sym, tf)
        # BTC stopped at the drop: nothing of it after, and its mark is not past the drop.
        btc_rows = store.query("binance:BTCUSDT", "1m")
        assert max(c.open_time for c in btc_rows) <= dropped_at
        assert marks[("binance:BTCUSDT", "1m")] <= dropped_at
        # The addition cancelled during its history may have stored some of it: final candles only.
        assert all(c.final for c in store.query("binance:SOLUSDT", "1m"))
    finally:
        store.close()


@pytest.mark.parametrize("venue_name", ["coinbase", "hyperliquid", "kraken"])
async def test_other_venues_add_and_drop_on_their_open_connection(
    venue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The venues on a LinkPool: an instrument added streams on the open connection, one dropped
    leaves its link (room for another), and the feed takes its part of a budget in place."""
    symbols = {"coinbase": ["BTC-USD", "ETH-USD"], "hyperliquid": ["BTC", "ETH"], "kraken": ["BTC/USD", "ETH/USD"]}
    first, second = (Instrument.parse(f"{venue_name}:{s}") for s in symbols[venue_name])
    venue = registry.get(venue_name)
    replica = venue.build_replica(symbols=symbols[venue_name], seed=4, rate=4.0, speed=60.0, history_ms=30 * M)
    await replica.start()
    try:
        for k, v in venue.replica_env(replica).items():
            monkeypatch.setenv(k, v)
        settings = Settings(
            symbols=[str(first)],
            timeframes=["1m"],
            history="10m",
            db=str(tmp_path / "live.duckdb"),
            venues={venue_name: venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            feed: Any = engine.feeds[venue_name]
            await until(lambda: engine.states[str(first)].trades > 20, 60.0, f"{first} trades")
            await engine.add_instrument(second, history_ms=10 * M)
            await until(lambda: engine.states[str(second)].trades > 20, 60.0, f"{second} trades")
            assert [len(link.members) for link in feed.pool.links] == [2]
            await engine.drop_instrument(first)
            assert [len(link.members) for link in feed.pool.links] == [1]
            assert first.symbol not in getattr(feed, "by_coin", getattr(feed, "by_symbol", {}))
            # A part of the venue's limits (a collector's share): both change in place.
            full_rest = feed.history.limiter.full
            engine.set_share(venue_name, 0.5, 0.001)
            assert feed.pool.budget.limit == 1
            assert feed.history.limiter.limit == full_rest / 2
            seen = engine.states[str(second)].trades
            await until(lambda: engine.states[str(second)].trades > seen, 30.0, f"{second} still streaming")
            assert engine.status()["connects"] == 1
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    finals = [c for c in (await _read(settings.db, str(second))) if c.final]
    assert finals, "no final candle of the added instrument"


async def _read(db: str, series: str) -> list[Any]:
    store = ColdStore.open_reader(db)
    try:
        return list(store.query(series, "1m"))
    finally:
        store.close()
