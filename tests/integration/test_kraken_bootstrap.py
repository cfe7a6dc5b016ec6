"""A Kraken bootstrap deeper than REST OHLC's 720 rows, against the replica: the older part is rebuilt
from /0/public/Trades (1000 a page), the rest comes from one OHLC call per timeframe, within the
public call limit (0 throttled answers), and every candle equals the tape."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, Candle
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.kraken import codec
from deltafeed.venues.kraken.rest import KrakenHistory
from reference import candles_from_tape, read_venue_tape

SYMBOL = "BTC/USD"


async def test_a_14_hour_bootstrap_takes_the_fewest_requests_and_is_never_throttled(tmp_path: Path) -> None:
    venue = registry.get("kraken")
    replica = venue.build_replica(
        symbols=[SYMBOL], seed=11, rate=3.0, speed=1.0, history_ms=15 * 3_600_000, tape=tmp_path / "tape.csv"
    )
    await replica.start()
    try:
        settings = Settings(
            symbols=[f"kraken:{SYMBOL}"],
            timeframes=["1m", "5m"],
            history="14h",
            db=str(tmp_path / "boot.duckdb"),
            venues={"kraken": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            await asyncio.sleep(1.0)
            status = engine.status()["venues"]["kraken"]
            now = replica.clock.now_ms()
        finally:
            await engine.stop()
    finally:
        await replica.stop()

    rows = [r for r in read_venue_tape(tmp_path / "tape.csv") if r.symbol == SYMBOL]
    start = now - 14 * 3_600_000
    start -= start % 60_000
    ohlc_from = KrakenHistory.ohlc_from("1m", now) + 2 * 60_000
    older = sum(1 for r in rows if start <= r.time_ms < ohlc_from)
    # Time + AssetPairs, the trades before OHLC's reach (1000 a call), one OHLC call per timeframe.
    floor = 2 + math.ceil(older / codec.TRADES_PAGE) + 2
    made = status["rest_requests"]
    print(
        f"\nkraken bootstrap of 14 h of 1m and 5m: {made} requests, floor {floor}, throttled {status['rest_throttled']}"
    )
    assert made <= 1.3 * floor, (made, floor)
    assert status["rest_throttled"] == 0 and "venue_errors" not in status
    assert older > 10 * codec.TRADES_PAGE  # deep enough to need many Trades pages

    cold = await open_cold(settings.db, read_only=True)
    try:
        for tf in ("1m", "5m"):
            want = {c.open_time: c for c in candles_from_tape(rows, TIMEFRAMES[tf])}
            finals = [c for c in await cold.query(f"kraken:{SYMBOL}", tf) if c.final]
            assert finals[0].open_time <= start + TIMEFRAMES[tf]
            assert len(finals) >= 14 * 3_600_000 // TIMEFRAMES[tf] - 2
            for c in finals:
                w = want[c.open_time]
                assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                    w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
                ), (tf, c, w)  # fmt: skip
    finally:
        await cold.close()


async def test_history_rolls_longer_candles_up_from_one_1m_answer_and_they_equal_kraken_s_own(tmp_path: Path) -> None:
    """Repairs of a pair's 1m and 5m candles take one OHLC call (5m rolled up from the 1m rows), and
    the rolled-up 5m candles equal the venue's own 5m rows; beyond the 720 rows, Trades rebuild them."""
    venue = registry.get("kraken")
    replica = venue.build_replica(
        symbols=[SYMBOL], seed=3, rate=2.0, history_ms=14 * 3_600_000, tape=tmp_path / "t.csv"
    )
    await replica.start()
    history = KrakenHistory(replica.url)
    try:
        now = replica.clock.now_ms()
        first = now - now % 300_000 - 3_600_000
        one = await history.candles("XBTUSD", "1m", first, first + 3_600_000, now)
        five = await history.candles("XBTUSD", "5m", first, first + 3_600_000, now)
        assert history.requests == 1  # one 1m answer served both
        native = [c for c in await history.ohlc("XBTUSD", "5m") if first <= c.open_time <= first + 3_600_000]
        deep = await history.candles("XBTUSD", "5m", now - 13 * 3_600_000, now - 12 * 3_600_000 - 300_000, now)
    finally:
        await history.close()
        await replica.stop()
    assert len(one) == 61 and len(five) == 13 and all(c.closed for c in five[:-1])
    theirs = {c.open_time: c for c in native}

    def fields(c: Candle) -> tuple[float, ...]:
        return (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)

    assert all(fields(c) == fields(theirs[c.open_time]) for c in five if c.closed)
    rows = [r for r in read_venue_tape(tmp_path / "t.csv") if r.symbol == SYMBOL]
    want = {c.open_time: c for c in candles_from_tape(rows, 300_000)}
    assert len(deep) == 12
    for c in deep:
        w = want[c.open_time]
        assert c.closed and (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
            w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
        )  # fmt: skip
