"""Bad input against the Hyperliquid replica: unknown coins refused at start-up with near matches; a
subscription the venue refuses is one clear line naming the coin and the reason, counted as a venue
error, and the other coins keep streaming."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.calendar import AlwaysOpen
from deltafeed.config import Settings
from deltafeed.model import BadInput, Instrument
from deltafeed.series import Series
from deltafeed.venues import registry
from deltafeed.venues.hyperliquid import HyperliquidSettings
from deltafeed.venues.hyperliquid.feed import HyperliquidFeed
from deltafeed.venues.hyperliquid.replica import HyperliquidReplica


@pytest.fixture
async def replica() -> object:
    r = registry.get("hyperliquid").build_replica(symbols=["BTC", "ETH"], seed=2, rate=20.0, history_ms=600_000)
    assert isinstance(r, HyperliquidReplica)
    await r.start()
    yield r
    await r.stop()


def feed_for(replica: HyperliquidReplica, coins: list[str]) -> HyperliquidFeed:
    vs = HyperliquidSettings(rest_url=replica.url, ws_url=replica.ws_url)
    feed = HyperliquidFeed(vs, venue_candles=False, stale_after_s=10.0, connect_budget=10, on_trade=lambda st, t: None)
    for c in coins:
        builder = CandleBuilder(["1m"], lambda tf, c: None, lambda tf, a, b: None, vouch=False)
        feed.add(Series(Instrument.parse(f"hyperliquid:{c}"), builder, AlwaysOpen(), feed))
    return feed


async def test_unknown_coins_are_refused_at_start_up_with_near_matches(replica: HyperliquidReplica) -> None:
    feed = feed_for(replica, ["BTC", "ETHH"])
    try:
        with pytest.raises(BadInput, match=r"unknown symbol\(s\) on hyperliquid at .*ETHH \(did you mean ETH\?\)"):
            await feed.check()
    finally:
        await feed.stop()


async def test_a_refused_subscription_is_one_line_and_the_other_coins_stream(
    replica: HyperliquidReplica, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    feed = feed_for(replica, ["BTC", "GONE"])  # GONE passed no check: the venue refuses its subscription
    feed.start()
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if feed.by_coin["BTC"].trades >= 10 and feed.refused:
                break
        report = feed.report()
    finally:
        await feed.stop()
    assert feed.by_coin["BTC"].trades >= 10
    assert report.refused_symbols is not None and "GONE" in report.refused_symbols
    assert report.venue_errors == {"error": 1}
    lines = [r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()]
    assert len(lines) == 1 and "GONE" in lines[0] and "unknown coin" in lines[0], lines
    assert sum("skipping venue_error" in r.getMessage() for r in caplog.records) == 1


def test_timeframes_hyperliquid_has_no_candles_for_are_refused(tmp_path: Path) -> None:
    settings = Settings(symbols=["hyperliquid:BTC"], timeframes=["1s", "1m"], db=str(tmp_path / "x.duckdb"))
    with pytest.raises(BadInput, match="Hyperliquid has no 1s candles"):
        from deltafeed.engine import Engine

        Engine(settings.validate())
