"""Third-party clients judge the Coinbase replica, with only their URLs changed: ccxt.pro's ``coinbase``
(``load_markets``, ``fetch_ohlcv``, ``watch_trades``) and coinbase-advanced-py's ``WSClient``; what they
receive must equal the replica's tape.

coinbase-advanced-py's ``RESTClient`` cannot be pointed at the replica: ``RESTBase.send_request`` builds
every URL as ``f"https://{self.base_url}{url_path}"`` (coinbase/rest/rest_base.py:216 in 1.8.4), so a
plain-HTTP loopback server is out of its reach; the public REST endpoints are judged by ccxt here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from coinbase.websocket import WSClient

from deltafeed.venues.coinbase.replica import CoinbaseReplica
from reference import candles_from_tape, read_trade_tape, read_venue_tape, rows_by_symbol

MINUTE = 60_000


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[CoinbaseReplica]:
    r = CoinbaseReplica(
        symbols=["BTC-USD", "ETH-USD"], seed=4, rate=5.0, speed=20.0, history_ms=3 * 3_600_000, tape=tmp_path / "t.csv"
    )
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def coinbase_for(replica: CoinbaseReplica) -> Any:
    """ccxt.pro coinbase pointed at the replica: its REST base and WebSocket URLs, nothing else."""
    return ccxtpro.coinbase(
        {
            "urls": {"api": {"rest": replica.url, "ws": replica.ws_url}},
            "options": {"tradesLimit": 100_000},
            "rateLimit": 150,  # the replica enforces the venue's 10 requests a second
        }
    )


async def test_ccxt_load_markets_and_fetch_ohlcv_equal_the_tape(replica: CoinbaseReplica) -> None:
    ex = coinbase_for(replica)
    try:
        markets = await ex.load_markets()
        assert {"BTC/USD", "ETH/USD"} <= set(markets)
        eth = markets["ETH/USD"]
        assert eth["spot"] and eth["active"] and eth["id"] == "ETH-USD" and eth["precision"]["price"] == 0.01
        since = replica.sim.origin_ms - replica.sim.origin_ms % MINUTE + MINUTE
        got: list[list[float]] = []
        while len(got) < 3 * 60 - 2:  # page like a ccxt user would, 300 candles at most per call
            page = await ex.fetch_ohlcv("ETH/USD", "1m", since=since, limit=300)
            assert page, since
            got += page
            since = page[-1][0] + MINUTE
    finally:
        await ex.close()
    assert replica.tape_path is not None
    ref = {
        c.open_time: c for c in candles_from_tape(rows_by_symbol(read_venue_tape(replica.tape_path))["ETH-USD"], MINUTE)
    }
    now = replica.clock.now_ms()
    closed = [c for c in got if c[0] + MINUTE <= now - 2 * MINUTE]
    assert len(closed) >= 3 * 60 - 5
    assert [c[0] for c in got] == list(range(got[0][0], got[-1][0] + MINUTE, MINUTE))  # no quiet minute at this rate
    for c in closed:
        r = ref[c[0]]
        assert c == [r.open_time, r.open, r.high, r.low, r.close, r.volume], c


async def test_ccxt_watch_trades_equal_the_tape(replica: CoinbaseReplica) -> None:
    ex = coinbase_for(replica)
    trades: list[dict[str, Any]] = []
    try:
        await ex.load_markets()
        async with asyncio.timeout(20):
            while len(trades) < 150:
                batch = await ex.watch_trades("BTC/USD")
                trades += [t for t in batch if not trades or int(t["id"]) > int(trades[-1]["id"])]
    finally:
        await ex.close()
    assert replica.tape_path is not None
    tape = {r.trade_id: r for r in read_trade_tape(replica.tape_path, ["side"]) if r.symbol == "BTC-USD"}
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no trade missing or repeated"
    for t in trades:
        row = tape[int(t["id"])]
        assert (t["timestamp"], t["price"], t["amount"]) == (row.time_ms, float(row.price), float(row.qty))
        # ccxt reports the venue's ``side`` as the trade's side, though Coinbase documents it as the maker's.
        assert t["side"] == row.extra[0].lower()


async def test_sdk_wsclient_market_trades_and_heartbeats_equal_the_tape(replica: CoinbaseReplica) -> None:
    frames: list[dict[str, Any]] = []
    client = WSClient(on_message=lambda m: frames.append(json.loads(m)), base_url=replica.ws_url, retry=False)
    await client.open_async()
    try:
        await client.subscribe_async(["ETH-USD"], ["market_trades", "heartbeats"])
        async with asyncio.timeout(20):
            while sum(len(e.get("trades", [])) for f in frames for e in f.get("events", [])) < 100 or not any(
                f["channel"] == "heartbeats" for f in frames[3:]
            ):
                await asyncio.sleep(0.1)
    finally:
        await client.close_async()
    # One sequence per connection, across channels, from 0.
    assert [f["sequence_num"] for f in frames] == list(range(len(frames)))
    subs = [f for f in frames if f["channel"] == "subscriptions"]
    assert subs and subs[-1]["events"][0]["subscriptions"]["market_trades"] == ["ETH-USD"]
    counters = [int(e["heartbeat_counter"]) for f in frames if f["channel"] == "heartbeats" for e in f["events"]]
    assert counters == list(range(1, len(counters) + 1))
    mt = [f for f in frames if f["channel"] == "market_trades"]
    assert mt[0]["events"][0]["type"] == "snapshot" and all(f["events"][0]["type"] == "update" for f in mt[1:])
    trades = [t for f in mt for e in f["events"] for t in reversed(e["trades"])]  # each event newest first
    assert replica.tape_path is not None
    tape = {r.trade_id: r for r in read_trade_tape(replica.tape_path, ["side"]) if r.symbol == "ETH-USD"}
    ids = [int(t["trade_id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    for t in trades:
        row = tape[int(t["trade_id"])]
        assert (t["price"], t["size"], t["side"]) == (row.price, row.qty, row.extra[0])


async def test_a_refused_subscription_is_an_error_frame(replica: CoinbaseReplica) -> None:
    frames: list[dict[str, Any]] = []
    client = WSClient(on_message=lambda m: frames.append(json.loads(m)), base_url=replica.ws_url, retry=False)
    await client.open_async()
    try:
        await client.subscribe_async(["NOPE-USD", "ETH-USD"], ["market_trades"])
        async with asyncio.timeout(10):
            while not any(f.get("channel") == "market_trades" for f in frames):
                await asyncio.sleep(0.05)
    finally:
        await client.close_async()
    errors = [f for f in frames if f.get("type") == "error"]
    assert len(errors) == 1 and "NOPE-USD" in errors[0]["message"], frames[:3]
