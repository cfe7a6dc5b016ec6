"""End to end for IG: the engine against the IG replica (REST login and prices, Lightstreamer TLCP
sessions) with faults; stored MID and BID candles equal candles computed from the quote tape."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import series_key
from deltafeed.store.base import open_cold
from deltafeed.venues.ig.feed import IGFeed
from deltafeed.venues.ig.replica import IGReplica
from reference import quote_candles_from_tape, read_quote_tape
from settle import end_storm

EPICS = ["CS.D.EURUSD.CFD.IP"]  # one epic: IG's REST allows 30 requests a minute, and repairs take turns
FRIDAY_10H_NY = 1_794_582_000_000  # Friday 2026-11-13 10:00 America/New_York: FX open


async def test_ig_quotes_and_charts_with_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("IG_API_KEY", "IG_USERNAME", "IG_PASSWORD"):
        monkeypatch.setenv(name, "test")
    tape = tmp_path / "ig.csv"
    replica = IGReplica(
        epics=EPICS,
        seed=4,
        rate=2.0,
        speed=60.0,
        history_ms=3_600_000,
        start_ms=FRIDAY_10H_NY,
        tape=str(tape),
        faults={"close": 6.0, "reset": 3.0, "stall": 3.0, "overflow": 20.0, "http500": 6.0},
        faults_seed=1,
    )
    await replica.start()
    settings = Settings(
        venue="ig",
        symbols=EPICS,
        timeframes=["1m", "5m"],
        prices=["mid", "bid"],
        history="1h",
        db=str(tmp_path / "ig.duckdb"),
        rest_url=replica.rest_url,
        stream_url=replica.url,
        stale_after="3s",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(12.0)
        # The storm is over; IG's REST is paced at 30 requests a minute, so the repairs it caused take a while.
        injected = await end_storm(replica, engine, quiet_s=4.0, timeout_s=150.0)
        end_ms = replica.clock.now_ms()
        live = engine.feeds["ig"].status()
        await engine.stop()
    finally:
        await replica.stop()
    feed = engine.feeds["ig"]
    assert isinstance(feed, IGFeed)
    status = feed.status()
    assert sum(injected.values()) >= 2, injected
    # Quotes IG said it dropped (OV) are a hole like a disconnection: repaired, so the candles below hold.
    assert injected["overflow"] >= 1 and replica.stats["overflow_lost"] > 0, (injected, replica.stats)
    assert status["lost_quotes"] == replica.stats["overflow_lost"], status
    assert 0 < live["max_open_connections"] <= 40 and live["connects"] >= 2, live
    remaining, total, _ = status["allowance"]
    assert total == 10_000 and remaining is not None and 0 < remaining <= total, status
    rows = read_quote_tape(tape)
    calendar = FxCalendar()
    cold = await open_cold(settings.db, read_only=True)
    try:
        for epic in EPICS:
            for side in ("mid", "bid"):
                for tf, tf_ms in (("1m", 60_000), ("5m", 300_000)):
                    want = {
                        c.open_time: c
                        for c in quote_candles_from_tape([r for r in rows if r.symbol == epic], tf_ms, side, calendar)
                    }
                    stored = [
                        c
                        for c in await cold.query(series_key(f"ig:{epic}", side), tf)
                        if c.closed and c.open_time + tf_ms <= end_ms - 3 * tf_ms
                    ]
                    assert len(stored) >= 12, (epic, side, tf, len(stored), [c.open_time for c in stored][:3], end_ms)
                    keys = [c.open_time for c in stored]
                    assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (epic, side, tf)
                    for c in stored:
                        w = want[c.open_time]
                        assert (c.open, c.close, c.volume) == pytest.approx((w.open, w.close, w.volume), rel=1e-12), (
                            epic,
                            side,
                            tf,
                            c.open_time,
                        )
                        if side == "mid":
                            # IG's history has bid and ask OHLC only: a mid high (low) from it is the
                            # mean of the two highs (lows), a bound on the mid's own, not the value.
                            assert c.high >= w.high - 1e-12 and c.low <= w.low + 1e-12, (epic, tf, c.open_time)
                        else:
                            assert (c.high, c.low) == pytest.approx((w.high, w.low), rel=1e-12), (epic, tf, c.open_time)
    finally:
        await cold.close()


async def test_price_sides_of_an_epic_share_one_history_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every IG price row holds bid and ask and costs allowance once: bootstrapping MID, BID and ASK
    spends what one side would, and each side's candles equal the tape's."""
    for name in ("IG_API_KEY", "IG_USERNAME", "IG_PASSWORD"):
        monkeypatch.setenv(name, "test")
    tape = tmp_path / "ig.csv"
    replica = IGReplica(
        epics=EPICS, seed=6, rate=2.0, speed=1.0, history_ms=3_600_000, start_ms=FRIDAY_10H_NY, tape=str(tape)
    )
    await replica.start()
    settings = Settings(
        venue="ig",
        symbols=EPICS,
        timeframes=["1m"],
        prices=["mid", "bid", "ask"],
        history="1h",
        db=str(tmp_path / "ig.duckdb"),
        rest_url=replica.rest_url,
        stream_url=replica.url,
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()  # returns once the bootstrap is stored
        feed = engine.feeds["ig"]
        assert isinstance(feed, IGFeed)
        status = feed.status()
        await engine.stop()
    finally:
        await replica.stop()
    remaining, total, _ = status["allowance"]
    assert total is not None and remaining is not None
    # One point per minute of the hour (plus the one-point probe that learns the allowance), not three.
    assert total - remaining <= 62, status
    assert status["rest_shared_answers"] >= 2, status
    rows = [r for r in read_quote_tape(tape) if r.symbol == EPICS[0]]
    cold = await open_cold(settings.db, read_only=True)
    try:
        for side in ("bid", "ask"):
            want = {c.open_time: c for c in quote_candles_from_tape(rows, 60_000, side, FxCalendar())}
            stored = [c for c in await cold.query(series_key(f"ig:{EPICS[0]}", side), "1m") if c.closed]
            assert len(stored) >= 55, (side, len(stored))
            for c in stored:
                w = want[c.open_time]
                assert (c.open, c.high, c.low, c.close, c.volume) == pytest.approx(
                    (w.open, w.high, w.low, w.close, w.volume), rel=1e-12
                ), (side, c.open_time)
    finally:
        await cold.close()
