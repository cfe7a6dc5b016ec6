"""Asked for more history than Hyperliquid keeps (its newest 5000 candles per interval), the engine says
where the venue's history starts (status ``history_from`` and the log), does not wait forever for a
repair below it, and stores each series consecutive from there; 1h, bootstrapped from its own history,
reaches back as far as asked."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import Candle
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.hyperliquid.replica import HyperliquidReplica

KEY = "hyperliquid:BTC"
DAY = 86_400_000


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_history_before_the_venues_5000_candles_is_reported_not_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    venue = registry.get("hyperliquid")
    replica = venue.build_replica(symbols=["BTC"], seed=5, rate=0.2, history_ms=5 * DAY + 3_600_000)
    assert isinstance(replica, HyperliquidReplica)
    await replica.start()
    db = str(tmp_path / "cap.duckdb")
    try:
        floor = replica.history_start("1m")
        # A run of long ago left final 1m candles that end well before the venue's oldest one: the
        # hole after them lies below what the venue can still answer.
        old_end = floor - 120 * 60_000
        cold = await open_cold(db)
        try:
            olds = [
                Candle(t, 100.0, 100.0, 100.0, 100.0, 0.0, 0, True, True)
                for t in range(old_end - 60 * 60_000, old_end, 60_000)
            ]
            await cold.write([(KEY, "1m", c) for c in olds])
            await cold.set_final_marks({(KEY, "1m"): old_end})
        finally:
            await cold.close()
        settings = Settings(
            symbols=["hyperliquid:BTC"],
            timeframes=["1m", "1h"],
            history="5d",
            audit_window="7d",  # the audit sees the hole
            db=db,
            venues={"hyperliquid": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            # Wait until no repair below the venue's oldest candle is queued or under way, for 3 s in a
            # row (a repair of the hour now forming may wait for the hour to end: that one is fine).
            deadline = time.monotonic() + 30
            quiet_since = None
            below: list[int] = []
            while time.monotonic() < deadline:
                c = engine.completeness
                jobs = [*c.repairs, *([c.inflight] if c.inflight is not None else [])]
                below = [j.first for j in jobs if j.first < floor]
                if not below:
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since >= 3.0:
                        break
                else:
                    quiet_since = None
                await asyncio.sleep(0.25)
            status = engine.status()
            hl_status = status["venues"]["hyperliquid"]
        finally:
            await engine.stop()
        served = replica.history_start("1m")
    finally:
        await replica.stop()

    # No repair waits for what the venue can never give.
    assert not below, below
    # Status and log say where the venue's history starts.
    assert floor <= hl_status["history_from"]["1m"] <= served
    logged = caplog.text
    assert "keeps only its newest 5000 1m candles" in logged
    assert "the venue's history starts at" in logged and "cannot be repaired" in logged
    cold = await open_cold(db, read_only=True)
    try:
        one = [c for c in await cold.query(KEY, "1m") if c.open_time > old_end]
        hour = await cold.query(KEY, "1h")
    finally:
        await cold.close()
    # From the venue's oldest candle on, the series is whole.
    keys = [c.open_time for c in one]
    assert floor <= keys[0] <= served, (keys[0], floor)
    assert keys == list(range(keys[0], keys[-1] + 60_000, 60_000))
    assert len(keys) >= 4990
    # 1h comes from its own history: the whole five days, not 3.5 rolled up from 1m.
    hkeys = [c.open_time for c in hour]
    assert hkeys[-1] - hkeys[0] >= 5 * DAY - 2 * 3_600_000
    assert hkeys == list(range(hkeys[0], hkeys[-1] + 3_600_000, 3_600_000))
