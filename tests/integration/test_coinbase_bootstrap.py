"""A Coinbase bootstrap against the replica stays inside the venue's limits: pages of at most 300
candles (the replica rejects a longer span as the venue does), one request per page, no 429."""

from __future__ import annotations

import json
import math
from pathlib import Path

import aiohttp

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES
from deltafeed.venues import registry
from deltafeed.venues.coinbase import codec

HISTORY_MS = 2 * 86_400_000
TIMEFRAMES_USED = ["1m", "5m", "1h"]
SYMBOLS = ["BTC-USD", "ETH-USD"]


async def test_bootstrap_pages_at_the_floor_without_a_429(tmp_path: Path) -> None:
    venue = registry.get("coinbase")
    replica = venue.build_replica(symbols=SYMBOLS, seed=3, rate=0.5, speed=1.0, history_ms=HISTORY_MS)
    await replica.start()
    try:
        settings = Settings(
            symbols=[f"coinbase:{s}" for s in SYMBOLS],
            timeframes=TIMEFRAMES_USED,
            history="1d",
            db=str(tmp_path / "boot.duckdb"),
            venues={"coinbase": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        now = replica.clock.now_ms()
        await engine.start()
        try:
            feed = engine.feeds["coinbase"]
            http = feed.history.http  # type: ignore[attr-defined]
            made, throttled = http.requests, http.throttled
            status = engine.status()
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    # The floor: the time and products requests of the start-up check, then per symbol and timeframe
    # one request per 300 candles of the day asked for.
    per_symbol = 0
    for tf in TIMEFRAMES_USED:
        ms = TIMEFRAMES[tf]
        start = now - settings.history_ms
        start -= start % ms
        candles = (now - now % ms - ms - start) // ms + 1
        per_symbol += math.ceil(candles / codec.CANDLES_PAGE)
    floor = 2 + len(SYMBOLS) * per_symbol
    print(f"\ncoinbase bootstrap: {made} requests, floor {floor} ({made / floor:.2f}x), {throttled} throttled")
    assert throttled == 0 and replica.stats["429"] == 0  # type: ignore[attr-defined]
    assert floor <= made <= 1.3 * floor, (made, floor)
    for s in SYMBOLS:
        assert status["instruments"][f"coinbase:{s}"]["bootstrapped"] >= 1440 + 288 + 24 - 3


async def test_the_replica_rejects_a_span_of_350_candles_like_the_venue() -> None:
    venue = registry.get("coinbase")
    replica = venue.build_replica(symbols=["BTC-USD"], seed=3, rate=1.0, history_ms=86_400_000)
    await replica.start()
    try:
        end = replica.clock.now_ms() // 1000 // 60 * 60
        async with aiohttp.ClientSession() as http:
            for n, status in ((300, 200), (349, 200), (350, 400)):
                path = codec.candles_path("BTC-USD", "ONE_MINUTE", end - n * 60, end)
                async with http.get(replica.url + path) as r:
                    body = await r.read()
                    assert r.status == status, (n, body)
                    if status == 200:
                        got = codec.decode_candles(body, 60, end * 1000)
                        assert len(got) == n and all(c.trades == 0 for c in got)
                        starts = [int(c["start"]) for c in json.loads(body)["candles"]]
                        assert starts == sorted(starts, reverse=True)  # newest first
                    else:
                        assert b"should be less than 350" in body
    finally:
        await replica.stop()
