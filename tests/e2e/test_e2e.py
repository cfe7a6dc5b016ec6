"""End to end: the engine against the replica over compressed time, stopped and restarted in the
middle; the stored 1m and 5m candles equal candles computed independently from the replica's tape."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deltafeed.config import Settings
from deltafeed.model import TIMEFRAMES
from deltafeed.store.cold import ColdStore
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import run_engine
from reference import candles_from_tape, read_tape

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


@pytest.mark.parametrize("venue_klines", [True, False], ids=["with-kline-streams", "trades-only"])
async def test_stored_candles_equal_the_tape_across_a_restart(tmp_path: Path, venue_klines: bool) -> None:
    """With kline streams the venue's closed klines are merged in; without them every candle comes
    from our own aggregation of trades (plus REST for the ones the stream could not vouch for).
    15s has no Binance kline either way, so it always tests the aggregator and the 1s roll-up."""
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=SYMBOLS, seed=11, rate=4.0, speed=60.0, history_ms=2 * 3_600_000, tape=str(tape))
    await replica.start()
    db = str(tmp_path / "e2e.duckdb")
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["15s", "1m", "5m"],
        history="3h",  # more than the replica has: the tape's first candle is in reach however slow the start
        db=db,
        rest_url=replica.url,
        ws_url=replica.ws_url,
        venue_klines=venue_klines,
    ).validate()
    try:
        first = await run_engine(settings, 6.0)  # six market minutes of streaming
        await asyncio.sleep(4.0)  # four market minutes pass while nothing runs
        second = await run_engine(settings, 8.0)
    finally:
        await replica.stop()

    for engine in (first, second):
        status = engine.status()
        assert status["connects"] == 1
        assert not status["skipped_frames"]
        assert status["rest_throttled"] == 0
        for st in engine.states.values():
            assert st.trades > 100 and st.builder.duplicates == 0
    assert replica.stats["429"] == 0 and replica.stats["418"] == 0

    rows = read_tape(str(tape))
    store = ColdStore.open_reader(db)
    try:
        for sym in SYMBOLS:
            sym_rows = [r for r in rows if r[0] == sym]
            for tf in ("15s", "1m", "5m"):
                tf_ms = TIMEFRAMES[tf]
                stored = [c for c in store.query(f"binance:{sym}", tf) if c.closed]
                want = {c.open_time: c for c in candles_from_tape(sym_rows, tf_ms)}
                assert stored, (sym, tf)
                keys = [c.open_time for c in stored]
                # None missing, none repeated: consecutive open times from the first to the last.
                assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (sym, tf)
                # Covers the whole run: from history's start to the second run's streaming.
                assert keys[0] <= min(want) + tf_ms
                assert keys[-1] >= max(want) - 3 * max(tf_ms, 60_000)
                # The hot tier was warmed from the store on restart and agrees with it.
                hot = {c.open_time: c for c in second.hot.last(f"binance:{sym}", tf, 10_000) if c.closed}
                assert min(hot) == keys[0], (sym, tf)
                assert all(hot[c.open_time] == c for c in stored if c.open_time in hot), (sym, tf)
                for c in stored:
                    w = want[c.open_time]
                    got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
                    exp = (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades)
                    assert got == exp, (sym, tf, c.open_time)
    finally:
        store.close()


async def test_quiet_market_gets_flat_candles_closed_by_the_venue_clock(tmp_path: Path) -> None:
    """One trade every ~100 market seconds: most 15s and 1m intervals are empty. With no venue
    klines, only the engine's timer (driven by the venue's clock) closes them, as flat candles."""
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=["SOLUSDT"], seed=3, rate=0.01, speed=60.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    settings = Settings(
        symbols=["SOLUSDT"],
        timeframes=["15s", "1m"],
        history="1h",
        db=str(tmp_path / "q.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        venue_klines=False,
    ).validate()
    try:
        engine = await run_engine(settings, 10.0)  # ten market minutes
        end_ms = replica.clock.now_ms()
    finally:
        await replica.stop()
    rows = read_tape(str(tape))
    store = ColdStore.open_reader(settings.db)
    try:
        for tf in ("15s", "1m"):
            tf_ms = TIMEFRAMES[tf]
            want = {c.open_time: c for c in candles_from_tape(rows, tf_ms, until_ms=end_ms)}
            stored = [c for c in store.query("binance:SOLUSDT", tf) if c.closed]
            keys = [c.open_time for c in stored]
            assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms))
            streamed = [c for c in stored if c.open_time >= end_ms - 8 * 60_000]
            assert sum(1 for c in streamed if c.trades == 0) >= (4 if tf == "1m" else 20)  # flat ones
            for c in stored:
                w = want[c.open_time]
                assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                    w.open,
                    w.high,
                    w.low,
                    w.close,
                    round(w.volume, 8),
                    w.trades,
                ), (tf, c.open_time)
    finally:
        store.close()
    assert engine.status()["connects"] == 1
