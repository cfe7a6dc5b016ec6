"""A third-party client, ccxt.pro's binance, consumes the replica with only its URLs changed."""

from __future__ import annotations

import asyncio
from typing import Any

import ccxt.pro as ccxtpro
import pytest

from conftest import MakeReplica
from deltafeed.venues.binance.replica import BinanceReplica
from reference import candles_from_tape, read_tape, rows_by_symbol

MINUTE = 60_000


def binance_for(replica: BinanceReplica) -> Any:
    """ccxt.pro binance pointed at the replica (PROTOCOLS.md section 9)."""
    return ccxtpro.binance(
        {
            "urls": {"api": {"public": replica.url + "/api/v3", "ws": {"spot": replica.ws_url + "/stream"}}},
            "options": {"fetchMarkets": {"types": ["spot"]}, "tradesLimit": 100_000},
            "enableRateLimit": False,
        }
    )


@pytest.fixture
async def replica(make_replica: MakeReplica) -> BinanceReplica:
    return await make_replica(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], seed=4, rate=5.0, speed=20.0, history_ms=3 * 3_600_000
    )


async def test_load_markets_and_fetch_ohlcv_equal_the_tape(replica: BinanceReplica) -> None:
    ex = binance_for(replica)
    try:
        markets = await ex.load_markets()
        assert {"BTC/USDT", "ETH/USDT", "SOL/USDT"} <= set(markets)
        sol = markets["SOL/USDT"]
        assert sol["spot"] and sol["active"] and sol["id"] == "SOLUSDT"
        assert sol["precision"]["price"] == 0.001 and sol["precision"]["amount"] == 0.00001
        now = await ex.fetch_time()
        since = replica.sim.origin_ms - replica.sim.origin_ms % MINUTE
        got: list[list[float]] = []
        while True:  # page like a ccxt user would
            page = await ex.fetch_ohlcv("SOL/USDT", "1m", since=since, limit=100)
            got += page
            if len(page) < 100:
                break
            since = page[-1][0] + MINUTE
    finally:
        await ex.close()
    ref = {
        c.open_time: c for c in candles_from_tape(rows_by_symbol(read_tape(replica.sim.tape.path))["SOLUSDT"], MINUTE)
    }
    closed = [c for c in got if c[0] + MINUTE <= now]
    assert len(closed) >= 3 * 60 - 1
    assert [c[0] for c in got] == list(range(got[0][0], got[-1][0] + MINUTE, MINUTE))
    for c in closed:
        r = ref[c[0]]
        assert c == [r.open_time, r.open, r.high, r.low, r.close, r.volume], c


async def test_watch_trades_equal_the_tape(replica: BinanceReplica) -> None:
    ex = binance_for(replica)
    trades: list[dict[str, Any]] = []
    try:
        await ex.load_markets()
        async with asyncio.timeout(15):
            while len(trades) < 150:
                batch = await ex.watch_trades("ETH/USDT")
                fresh = [t for t in batch if not trades or int(t["id"]) > int(trades[-1]["id"])]
                trades += fresh
    finally:
        await ex.close()
    tape = {r.trade_id: r for r in rows_by_symbol(read_tape(replica.sim.tape.path))["ETHUSDT"]}
    ids = [int(t["id"]) for t in trades]
    assert ids == list(range(ids[0], ids[0] + len(ids))), "no trade missing or repeated"
    for t in trades:
        row = tape[int(t["id"])]
        assert t["symbol"] == "ETH/USDT"
        assert (t["timestamp"], t["price"], t["amount"]) == (row.time_ms, float(row.price), float(row.qty))
        # buyer is maker -> the taker sold
        assert t["side"] == ("sell" if row.buyer_maker else "buy")
