"""Kraken's bad input against the replica: an unknown pair is refused at start-up with near matches;
a subscription Kraken refuses is one line naming symbol and reason, and the other pairs stream on."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import BadInput
from deltafeed.venues import registry
from deltafeed.venues.kraken import codec
from deltafeed.venues.kraken.feed import KrakenFeed


async def test_an_unknown_pair_is_refused_at_start_up_with_its_near_matches(tmp_path: Path) -> None:
    venue = registry.get("kraken")
    replica = venue.build_replica(symbols=["BTC/USD", "ETH/USD"], history_ms=600_000)
    await replica.start()
    try:
        settings = Settings(
            symbols=["kraken:BTC/USDT", "kraken:ETH/USD"],
            timeframes=["1m"],
            history="5m",
            db=str(tmp_path / "x.duckdb"),
            venues={"kraken": venue.replica_settings(replica)},
        ).validate()
        with pytest.raises(BadInput, match=r"unknown symbol\(s\) on kraken .*BTC/USDT \(did you mean BTC/USD"):
            await Engine(settings).start()
    finally:
        await replica.stop()


@pytest.mark.timeout(60)
async def test_a_refused_subscription_is_one_line_and_the_other_pairs_stream_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    venue = registry.get("kraken")
    replica = venue.build_replica(symbols=["BTC/USD"], rate=20.0, history_ms=600_000)
    await replica.start()
    try:
        settings = Settings(
            symbols=["kraken:BTC/USD"],
            timeframes=["1m"],
            history="5m",
            db=str(tmp_path / "x.duckdb"),
            venues={"kraken": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            feed = next(st.feed for st in engine.states.values())
            assert isinstance(feed, KrakenFeed)
            for _ in range(100):
                if feed.connected():
                    break
                await asyncio.sleep(0.05)
            with caplog.at_level(logging.ERROR, logger="deltafeed.kraken"):
                for req in (7, 8):  # twice: still one line
                    feed.ws.send(codec.subscribe("trade", ["NOPE/USD"], req))
                await asyncio.sleep(0.5)
                before = engine.status()["instruments"]["kraken:BTC/USD"]["trades"]
                await asyncio.sleep(1.0)
                status = engine.status()
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert lines == [
        "kraken refused the subscribe of NOPE/USD: Currency pair not supported; the other symbols keep streaming"
    ]
    kraken = status["venues"]["kraken"]
    assert kraken["refused_symbols"] == {"NOPE/USD": "Currency pair not supported"}
    assert kraken["venue_errors"] == {"Currency pair not supported": 2}
    assert status["instruments"]["kraken:BTC/USD"]["trades"] > before  # BTC/USD streams on
