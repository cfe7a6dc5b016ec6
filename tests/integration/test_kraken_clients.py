"""Third-party Kraken clients against the replica with only their URLs changed, judged by the tape:
ccxt.pro's ``kraken`` (WS v2 ``watch_trades``, REST ``fetch_ohlcv``) and python-kraken-sdk's
``spot.Market`` (REST OHLC and Trades). The SDK's ``SpotWSClient`` cannot be pointed at the replica:
it connects to ``f"wss://{endpoint}"`` (kraken/spot/websocket/connectors.py:133 in 3.1.1), TLS only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import ccxt.pro
import pytest
from kraken.spot import Market

from deltafeed.model import TIMEFRAMES
from deltafeed.venues.kraken.replica import KrakenReplica
from reference import candles_from_tape, read_venue_tape

SYMBOL = "BTC/USD"


async def _replica(tmp_path: Path, rate: float = 5.0) -> KrakenReplica:
    r = KrakenReplica(
        symbols=[SYMBOL, "ETH/USD"], seed=5, rate=rate, history_ms=40 * 60_000, tape=tmp_path / "tape.csv"
    )
    await r.start()
    return r


def _tape(tmp_path: Path, symbol: str = SYMBOL) -> dict[int, tuple[int, float, float]]:
    return {
        r.trade_id: (r.time_ms, float(r.price), float(r.qty))
        for r in read_venue_tape(tmp_path / "tape.csv")
        if r.symbol == symbol
    }


@pytest.mark.timeout(60)
async def test_ccxt_pro_watch_trades_and_fetch_ohlcv_equal_the_tape(tmp_path: Path) -> None:
    r = await _replica(tmp_path)
    ex = ccxt.pro.kraken({"enableRateLimit": True})
    ex.urls["api"]["public"] = r.url
    ex.urls["api"]["ws"]["publicV2"] = r.ws_url
    try:
        seen: dict[int, tuple[int, float, float]] = {}
        while len(seen) < 60:
            for t in await asyncio.wait_for(ex.watch_trades(SYMBOL), 10):
                assert t["symbol"] == SYMBOL
                seen[int(t["id"])] = (t["timestamp"], t["price"], t["amount"])
        candles = await ex.fetch_ohlcv(SYMBOL, "1m")
        now = r.clock.now_ms()
        book = await asyncio.wait_for(ex.watch_order_book(SYMBOL, 10), 10)
        book = await asyncio.wait_for(ex.watch_order_book(SYMBOL, 10), 10)  # after an update
    finally:
        await ex.close()
        await r.stop()
    # The book channel: ccxt keeps 10 levels a side around the price (its checksum check is off by
    # default, "the exchange checksum was not reliable": ccxt/pro/kraken.py:950).
    assert len(book["asks"]) == len(book["bids"]) == 10 and book["bids"][0][0] < book["asks"][0][0]
    tape = _tape(tmp_path)
    assert seen == {i: tape[i] for i in seen}  # the snapshot's 50 and the updates, field by field
    ids = sorted(seen)
    assert ids == list(range(ids[0], ids[-1] + 1))  # sequential trade_id, nothing lost in between
    ref = {
        c.open_time: c
        for c in candles_from_tape([x for x in read_venue_tape(tmp_path / "tape.csv") if x.symbol == SYMBOL], 60_000)
    }
    closed = [c for c in candles if c[0] + TIMEFRAMES["1m"] <= now]
    assert len(closed) >= 39
    for ts, o, h, lo, c, v in closed:
        w = ref[ts]
        assert (o, h, lo, c, round(v, 8)) == (w.open, w.high, w.low, w.close, round(w.volume, 8)), ts


async def test_python_kraken_sdk_market_ohlc_and_trades_equal_the_tape(tmp_path: Path) -> None:
    r = await _replica(tmp_path)
    try:
        market = Market(url=r.url)
        ohlc = await asyncio.to_thread(market.get_ohlc, pair="XBTUSD", interval=5)
        since_ns = (r.clock.now_ms() - 10 * 60_000) * 1_000_000
        trades = await asyncio.to_thread(market.get_recent_trades, pair="XBTUSD", since=since_ns)
        with pytest.raises(Exception, match="Unknown asset pair"):
            await asyncio.to_thread(market.get_ohlc, pair="NOPEUSD")
        now = r.clock.now_ms()
    finally:
        await r.stop()
    rows = [x for x in read_venue_tape(tmp_path / "tape.csv") if x.symbol == SYMBOL]
    ref = {c.open_time: c for c in candles_from_tape(rows, 300_000)}
    got = ohlc["XXBTZUSD"]
    assert len(got) >= 8
    for t, o, h, lo, c, _vwap, v, n in got:
        if t * 1000 + 300_000 > now:
            continue  # the forming row
        w = ref[t * 1000]
        assert (float(o), float(h), float(lo), float(c), float(v), n) == (
            w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
        )  # fmt: skip
    tape = _tape(tmp_path)
    assert len(trades["XXBTZUSD"]) >= 100 and int(trades["last"]) > since_ns
    for price, qty, _t, _side, _kind, _misc, tid in trades["XXBTZUSD"]:
        assert (float(price), float(qty)) == tape[tid][1:]
