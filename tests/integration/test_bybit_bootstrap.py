"""Bootstrap against the Bybit replica under a tight IP limit: the requests made stay within 1.3x of
the floor (one kline page of 1000 per series and timeframe, plus the start-up checks), no request is
refused with a 403, and the bootstrapped candles equal the tape's."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from chaos import candle_fields
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.bybit import codec
from reference import candles_from_tape, read_venue_tape

SYMBOLS = ["BTCUSDT", "ETHUSDT", "LINEAR:BTCUSDT"]
TIMEFRAMES_RUN = ["1m", "5m", "15m", "1h"]
HISTORY_MS = 3 * 86_400_000
LIMIT = 30  # requests per 5 s, replica and client alike: a 20th of Bybit's, so pacing matters


@pytest.mark.timeout(120)
async def test_bootstrap_stays_near_the_floor_without_a_403(tmp_path: Path) -> None:
    venue = registry.get("bybit")
    replica = venue.build_replica(
        symbols=SYMBOLS, seed=3, rate=0.5, speed=1.0, history_ms=HISTORY_MS + 3_600_000,
        tape=tmp_path / "tape.csv", requests_per_5s=LIMIT, ban_s=60.0,
    )  # fmt: skip
    await replica.start()
    try:
        settings = Settings(
            symbols=[f"bybit:{s}" for s in SYMBOLS],  # bybit:linear:BTCUSDT names its category
            timeframes=TIMEFRAMES_RUN,
            history="3d",
            db=str(tmp_path / "boot.duckdb"),
            venues={"bybit": venue.replica_settings(replica) | {"requests_per_5s": LIMIT}},
        ).validate()
        engine = Engine(settings)
        await engine.start()  # checks, bootstraps, then streams
        try:
            status = engine.status()["venues"]["bybit"]
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    pages = sum(math.ceil(HISTORY_MS / TIMEFRAMES[tf] / codec.KLINES_PAGE) for tf in TIMEFRAMES_RUN)
    floor = len(SYMBOLS) * pages + 1 + 2  # + the server time, one instrument list per category
    made = status["rest_requests"]
    print(f"\nbybit bootstrap: {made} requests vs floor {floor} ({made / floor:.2f}x); "
          f"403s {status['rest_throttled']}; limiter waits {status['rest_limiter_waits']}")  # fmt: skip
    assert status["rest_throttled"] == 0
    assert replica.stats["403"] == 0
    assert made <= 1.3 * floor
    assert status["rest_limiter_waits"] > 0  # the limit was tight enough to need pacing
    cold = await open_cold(settings.db, read_only=True)
    try:
        tape = read_venue_tape(tmp_path / "tape.csv")
        for sym in SYMBOLS:
            rows = [r for r in tape if r.symbol == sym]
            for tf in ("1m", "1h"):
                want = {c.open_time: c for c in candles_from_tape(rows, TIMEFRAMES[tf])}
                finals = [c for c in await cold.query(f"bybit:{sym}", tf) if c.final]
                assert len(finals) >= HISTORY_MS // TIMEFRAMES[tf] - 2, (sym, tf, len(finals))
                for c in finals:
                    assert candle_fields("bybit", c) == candle_fields("bybit", want[c.open_time]), (sym, tf, c)
    finally:
        await cold.close()
