"""Bootstrap against the Hyperliquid replica inside the venue's weight limit: requests made against the
theoretical floor (one ``candleSnapshot`` per 5000 candles a series can still get), no throttled answer,
and each timeframe from its own history (only the newest 5000 candles of an interval exist)."""

from __future__ import annotations

import math
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.hyperliquid import codec as hl

COINS = ["BTC", "ETH"]
TFS = ["1m", "5m", "1h"]
HISTORY_MS = 4 * 86_400_000  # 5760 one-minute candles asked for: more than the venue keeps


async def test_bootstrap_stays_inside_the_weight_limit_near_the_request_floor(tmp_path: Path) -> None:
    venue = registry.get("hyperliquid")
    replica = venue.build_replica(symbols=COINS, seed=3, rate=0.5, history_ms=HISTORY_MS + 3_600_000)
    await replica.start()
    try:
        settings = Settings(
            symbols=[f"hyperliquid:{c}" for c in COINS],
            timeframes=TFS,
            history="4d",
            db=str(tmp_path / "boot.duckdb"),
            venues={"hyperliquid": venue.replica_settings(replica)},
            venue_klines=False,
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            status = engine.status()["venues"]["hyperliquid"]
        finally:
            await engine.stop()
        served = {tf: replica.history_start(tf) for tf in TFS}  # type: ignore[attr-defined]
    finally:
        await replica.stop()

    # The floor: per coin and timeframe, the candles the venue can still give, 5000 a request; plus
    # the start-up check (meta, and recentTrades for the venue's time).
    floor = 2
    for tf in TFS:
        ms = TIMEFRAMES[tf]
        n = min(hl.HISTORY_CANDLES, HISTORY_MS // ms)
        floor += len(COINS) * math.ceil(n / hl.CANDLES_PAGE)
    made = status["rest_requests"]
    print(f"\nhyperliquid bootstrap: {made} requests vs floor {floor}; throttled {status['rest_throttled']}; "
          f"replica weight {replica.stats['weight']}, 429s {replica.stats['429']}")  # fmt: skip
    assert made <= 1.3 * floor, (made, floor)
    assert status["rest_throttled"] == 0 and replica.stats["429"] == 0
    # The status says how far back the venue's history goes, per timeframe.
    assert set(status["history_from"]) == set(TFS)
    for tf in TFS:
        assert abs(status["history_from"][tf] - served[tf]) <= 2 * TIMEFRAMES[tf], tf
    cold = await open_cold(settings.db, read_only=True)
    try:
        for c in COINS:
            one = await cold.query(f"hyperliquid:{c}", "1m")
            hour = await cold.query(f"hyperliquid:{c}", "1h")
            # 1m reaches back only ~3.5 days; 1h, from its own history, the whole 4 days asked for.
            assert 4990 <= len(one) <= 5001 and one[0].open_time >= served["1m"] - 60_000
            assert len(hour) >= 4 * 24 - 1
            for rows, ms in ((one, 60_000), (hour, 3_600_000)):
                keys = [r.open_time for r in rows]
                assert keys == list(range(keys[0], keys[-1] + ms, ms))
    finally:
        await cold.close()
