"""Bad input on Coinbase: an unknown product is refused at start-up with its near matches; a
subscription the venue refuses is one log line naming the product and the reason, counted in the
status, while the other products keep streaming; a sequence break and stopped heartbeats are noticed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import BadInput
from deltafeed.venues import registry
from deltafeed.venues.coinbase.replica import CoinbaseReplica


def _settings(tmp_path: Path, replica: CoinbaseReplica, symbols: list[str]) -> Settings:
    return Settings(
        symbols=[f"coinbase:{s}" for s in symbols],
        timeframes=["1m", "5m"],
        history="10m",
        db=str(tmp_path / "f.duckdb"),
        stale_after="1.5s",
        venues={"coinbase": registry.get("coinbase").replica_settings(replica)},
    ).validate()


async def test_an_unknown_product_is_refused_with_near_matches(tmp_path: Path) -> None:
    async with CoinbaseReplica(symbols=["BTC-USD", "ETH-USD"], rate=1.0, history_ms=600_000) as replica:
        engine = Engine(_settings(tmp_path, replica, ["BTC-USD", "BTCUSD"]))
        with pytest.raises(BadInput, match=r"unknown symbol\(s\) on coinbase at .*BTCUSD \(did you mean BTC-USD"):
            await engine.start()
        await engine.feeds["coinbase"].stop()


@pytest.mark.slow  # the engine runs against the replica for ~15 s
async def test_a_refused_subscription_is_one_line_and_the_others_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "deltafeed.coinbase")
    async with CoinbaseReplica(
        symbols=["BTC-USD", "ETH-USD"], rate=2.0, speed=30.0, history_ms=600_000, refuse=["ETH-USD"],
        faults={"seqgap": 30.0, "noheartbeat": 6.0}, faults_seed=2,
    ) as replica:  # fmt: skip
        engine = Engine(_settings(tmp_path, replica, ["BTC-USD", "ETH-USD"]))
        await engine.start()
        try:
            await asyncio.sleep(6.0)
            # Streaming stopped and started again over the same connection (unsubscribe, subscribe).
            await engine.stop_streaming(["coinbase:BTC-USD"])
            await asyncio.sleep(0.5)
            before = engine.status()["instruments"]["coinbase:BTC-USD"]["trades"]
            await engine.start_streaming(["coinbase:BTC-USD"])
            await asyncio.sleep(2.5)
            st = engine.status()
        finally:
            await engine.stop()
    cb = st["venues"]["coinbase"]
    assert set(cb["refused_symbols"]) == {"ETH-USD"} and "not a valid product" in cb["refused_symbols"]["ETH-USD"]
    assert cb["skipped_frames"].get("error_frame", 0) >= 1 and cb["venue_errors"]
    lines = [r.getMessage() for r in caplog.records if "refused the subscription" in r.getMessage()]
    assert len(lines) == 1 and "ETH-USD" in lines[0], lines
    assert st["instruments"]["coinbase:BTC-USD"]["trades"] > before > 100
    # Skipped sequence numbers and stopped heartbeats were noticed, not dodged.
    assert cb["sequence_gaps"] >= 1 and cb["reconnects"] >= 1, cb


async def test_the_replica_closes_a_connection_that_never_subscribes() -> None:
    replica = CoinbaseReplica(symbols=["BTC-USD"], rate=1.0, history_ms=60_000, subscribe_deadline_s=0.5)
    async with replica, aiohttp.ClientSession() as http, http.ws_connect(replica.ws_url) as ws:
        async with asyncio.timeout(5):
            msg = await ws.receive()
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
