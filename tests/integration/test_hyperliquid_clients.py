"""Third-party clients judge the Hyperliquid replica with only their URLs changed: ccxt.pro's hyperliquid
(``fetch_ohlcv``, ``watch_trades``) and the venue's own hyperliquid-python-sdk (``Info`` with a base URL,
``candles_snapshot`` and its WebSocket ``trades`` subscription); what they receive equals the tape."""

from __future__ import annotations

import asyncio
import csv
import threading
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt.pro as ccxtpro
import pytest
from hyperliquid.info import Info

from deltafeed.model import TIMEFRAMES
from deltafeed.venues import registry
from deltafeed.venues.hyperliquid.replica import HyperliquidReplica
from reference import candles_from_tape, read_venue_tape

MINUTE = TIMEFRAMES["1m"]
COINS = ["BTC", "ETH"]


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[HyperliquidReplica]:
    r = registry.get("hyperliquid").build_replica(
        symbols=COINS, seed=9, rate=20.0, speed=1.0, history_ms=2 * 3_600_000, tape=tmp_path / "tape.csv"
    )
    assert isinstance(r, HyperliquidReplica)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


def tape_trades(path: Path) -> dict[tuple[str, int], tuple[int, Decimal, Decimal, str]]:
    """(coin, tid) -> (time, px, sz, side), as the replica taped them."""
    with open(path, newline="") as f:
        return {(r[0], int(r[1])): (int(r[2]), Decimal(r[3]), Decimal(r[4]), r[5]) for r in list(csv.reader(f))[1:]}


def reference(path: Path, coin: str) -> dict[int, tuple[float, ...]]:
    rows = [r for r in read_venue_tape(path) if r.symbol == coin]
    return {c.open_time: (c.open, c.high, c.low, c.close, round(c.volume, 8)) for c in candles_from_tape(rows, MINUTE)}


def ccxt_for(replica: HyperliquidReplica) -> Any:
    """ccxt.pro hyperliquid pointed at the replica: its URLs only (its markets: perps, spot, HIP-3 dexs)."""
    return ccxtpro.hyperliquid(
        {"urls": {"api": {"public": replica.url, "private": replica.url, "ws": {"public": replica.ws_url}}}}
    )


async def test_ccxt_fetch_ohlcv_equals_the_tape(replica: HyperliquidReplica) -> None:
    ex = ccxt_for(replica)
    try:
        markets = await ex.load_markets()
        assert "BTC/USDC:USDC" in markets and markets["BTC/USDC:USDC"]["swap"]
        now = replica.clock.now_ms()
        since = now - now % MINUTE - 90 * MINUTE
        # ``until`` from the venue's clock (ccxt would take the local one, which a replica need not follow).
        got = await ex.fetch_ohlcv("ETH/USDC:USDC", "1m", since=since, params={"until": now})
    finally:
        await ex.close()
    ref = reference(replica.options.tape, "ETH")  # type: ignore[arg-type]
    closed = [c for c in got if c[0] + MINUTE <= now]
    assert len(closed) >= 89
    assert [c[0] for c in got] == list(range(got[0][0], got[-1][0] + MINUTE, MINUTE))
    for t, o, h, lo, c, v in closed:
        assert (o, h, lo, c, round(v, 8)) == ref[t], t


async def test_ccxt_watch_trades_equal_the_tape(replica: HyperliquidReplica) -> None:
    ex = ccxt_for(replica)
    seen: list[dict[str, Any]] = []
    try:
        await ex.load_markets()
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            seen += await asyncio.wait_for(ex.watch_trades("BTC/USDC:USDC"), 5.0)
    finally:
        await ex.close()
    tape = tape_trades(replica.options.tape)  # type: ignore[arg-type]
    assert len(seen) >= 40
    ids = [int(t["id"]) for t in seen]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    for t in seen:
        when, px, sz, side = tape[("BTC", int(t["id"]))]
        assert (t["timestamp"], Decimal(str(t["price"])), Decimal(str(t["amount"]))) == (when, px, sz)
        assert t["side"] == ("buy" if side == "B" else "sell")


async def test_sdk_info_candles_and_trades_subscription_equal_the_tape(replica: HyperliquidReplica) -> None:
    info = await asyncio.to_thread(Info, replica.url, False)  # skip_ws=False: its WebSocket too
    got: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_trades(msg: Any) -> None:
        with lock:
            got.extend(msg["data"])

    try:
        assert info.name_to_coin["ETH"] == "ETH"
        now = replica.clock.now_ms()
        start = now - now % MINUTE - 60 * MINUTE
        candles = await asyncio.to_thread(info.candles_snapshot, "BTC", "1m", start, now)
        await asyncio.to_thread(info.subscribe, {"type": "trades", "coin": "ETH"}, on_trades)
        await asyncio.sleep(3.0)
    finally:
        await asyncio.to_thread(info.disconnect_websocket)
    ref = reference(replica.options.tape, "BTC")  # type: ignore[arg-type]
    closed = [c for c in candles if c["t"] + MINUTE <= now]
    assert len(closed) >= 59
    for c in closed:
        assert (float(c["o"]), float(c["h"]), float(c["l"]), float(c["c"]), round(float(c["v"]), 8)) == ref[c["t"]]
        assert c["T"] == c["t"] + MINUTE - 1 and c["s"] == "BTC" and c["i"] == "1m"
    tape = tape_trades(replica.options.tape)  # type: ignore[arg-type]
    with lock:
        trades = list(got)
    assert len(trades) >= 20
    for t in trades:
        assert tape[("ETH", t["tid"])] == (t["time"], Decimal(t["px"]), Decimal(t["sz"]), t["side"])
