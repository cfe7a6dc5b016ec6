"""python-binance (sammchardy) against the Binance replica over TLS: REST (trades, historical and
aggregate trades, klines and uiKlines, tickers, average price, book) through its sync ``Client``, and
aggTrade, diff-depth and bookTicker streams through ``BinanceSocketManager``; all compared with the tape."""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("binance.client", reason="python-binance does not install here")
from binance.async_client import AsyncClient
from binance.client import Client
from binance.exceptions import BinanceAPIException
from binance.ws.streams import BinanceSocketManager

from deltafeed.venues.binance.replica import BinanceReplica
from reference import agg_trades_from_tape, candles_from_tape, read_tape, rows_by_symbol

MINUTE = 60_000


def _rest(r: BinanceReplica) -> dict[str, Any]:
    c = Client(ping=False, requests_params={"verify": str(r.ca_file), "timeout": 10})
    c.API_URL = r.url + "/api"  # the only change: where the API is
    got: dict[str, Any] = {
        "recent": c.get_recent_trades(symbol="XYZUSDT", limit=1000),
        "hist": c.get_historical_trades(symbol="XYZUSDT", fromId=500, limit=1000),
        "aggs": c.get_aggregate_trades(symbol="XYZUSDT", fromId=1, limit=1000),
        "klines": c.get_klines(symbol="BTCUSDT", interval="1m", limit=1000),
        "ui": c.get_ui_klines(symbol="BTCUSDT", interval="1m", limit=1000),
        "ticker": c.get_ticker(symbol="BTCUSDT"),
        "avg": c.get_avg_price(symbol="BTCUSDT"),
        "book": c.get_orderbook_ticker(symbol="BTCUSDT"),
        "depth": c.get_order_book(symbol="BTCUSDT", limit=5),
        "now": c.get_server_time()["serverTime"],
    }
    with pytest.raises(BinanceAPIException) as e:
        c.get_klines(symbol="NOPEUSDT", interval="1m")
    got["bad_symbol"] = (e.value.status_code, e.value.code)
    with pytest.raises(BinanceAPIException) as e:
        c._get("ticker/tradingDay", data={"symbol": "BTCUSDT"})  # an endpoint the replica does not serve
    got["unserved"] = (e.value.status_code, e.value.code, e.value.message)
    return got


async def test_rest_equals_the_tape(tls_binance: BinanceReplica) -> None:
    r = tls_binance
    got = await asyncio.to_thread(_rest, r)
    assert r.options.tape is not None
    tape = rows_by_symbol(read_tape(r.options.tape))
    xyz, btc = tape["XYZUSDT"], tape["BTCUSDT"]
    by_id = {row.trade_id: row for row in xyz}

    def same_trade(t: dict[str, Any]) -> None:
        row = by_id[t["id"]]
        assert (t["price"], t["qty"], t["time"], t["isBuyerMaker"]) == (
            row.price_text, row.qty_text, row.time_ms, row.buyer_maker
        ), t  # fmt: skip
        assert Decimal(t["quoteQty"]) == row.price * row.qty

    assert len(got["recent"]) == 1000 and len(got["hist"]) == 1000
    assert [t["id"] for t in got["hist"]] == list(range(500, 1500))
    ids = [t["id"] for t in got["recent"]]
    assert ids == list(range(ids[0], ids[0] + 1000))
    for t in got["recent"] + got["hist"]:
        same_trade(t)

    ref_aggs = agg_trades_from_tape(xyz)
    assert any(a.last_id > a.first_id for a in ref_aggs[:1000])  # the rule is exercised
    assert len(got["aggs"]) == 1000
    for a, ref in zip(got["aggs"], ref_aggs, strict=False):
        assert (a["a"], Decimal(a["p"]), Decimal(a["q"]), a["f"], a["l"], a["T"], a["m"]) == (
            ref.agg_id, ref.price, ref.qty, ref.first_id, ref.last_id, ref.time_ms, ref.buyer_maker
        ), a  # fmt: skip

    ref_k = {c.open_time: c for c in candles_from_tape(btc, MINUTE)}
    closed = [k for k in got["klines"] if k[6] < got["now"]]
    assert len(closed) >= 9 and got["ui"][: len(closed)] == closed
    for k in closed:
        c = ref_k[k[0]]
        assert [Decimal(x) for x in k[1:6]] == [c.exact_open, c.exact_high, c.exact_low, c.exact_close, c.exact_volume]
        assert (k[8], Decimal(k[7]), Decimal(k[9])) == (c.trades, c.exact_quote_volume, c.exact_taker_base)

    t = got["ticker"]
    window = [row for row in btc if t["openTime"] <= row.time_ms <= t["closeTime"]]
    assert (t["firstId"], t["lastId"], t["count"]) == (window[0].trade_id, window[-1].trade_id, len(window))
    assert Decimal(t["volume"]) == sum(row.qty for row in window)
    assert (t["openPrice"], t["lastPrice"]) == (window[0].price_text, window[-1].price_text)
    assert Decimal(t["highPrice"]) == max(row.price for row in window)
    assert Decimal(t["priceChange"]) == window[-1].price - window[0].price
    five = [row for row in btc if row.time_ms > t["closeTime"] - 300_000 and row.trade_id <= t["lastId"]]
    assert five and abs(Decimal(got["avg"]["price"]) - window[-1].price) < window[-1].price / 100
    assert Decimal(got["book"]["bidPrice"]) < Decimal(got["book"]["askPrice"])
    assert Decimal(got["depth"]["bids"][0][0]) < Decimal(got["depth"]["asks"][0][0])
    assert got["bad_symbol"] == (400, -1121)
    assert got["unserved"][:2] == (404, -1000) and "does not serve" in got["unserved"][2]


async def test_streams_equal_the_tape_and_the_book_syncs(tls_binance: BinanceReplica) -> None:
    r = tls_binance
    assert r.ca_file is not None
    client = AsyncClient()
    bsm = BinanceSocketManager(client, max_queue_size=100_000)  # its default of 100 overflows at this rate
    bsm.STREAM_URL = r.ws_url + "/"
    bsm.ws_kwargs = {"ssl": ssl.create_default_context(cafile=str(r.ca_file))}
    msgs: list[dict[str, Any]] = []
    try:
        async with bsm.multiplex_socket(["xyzusdt@aggTrade", "btcusdt@depth@100ms", "btcusdt@bookTicker"]) as sock:
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.0
            while loop.time() < end:
                m = await asyncio.wait_for(sock.recv(), 5)
                assert m.get("e") != "error", m  # the client reports its own failures as messages
                msgs.append(m)
    finally:
        await client.close_connection()
    snapshot = await asyncio.to_thread(_depth_snapshot, r)
    assert r.options.tape is not None
    ref = {a.agg_id: a for a in agg_trades_from_tape(rows_by_symbol(read_tape(r.options.tape))["XYZUSDT"])}
    aggs = [m["data"] for m in msgs if m["stream"] == "xyzusdt@aggTrade"]
    assert len(aggs) > 50
    assert [a["a"] for a in aggs] == list(range(aggs[0]["a"], aggs[0]["a"] + len(aggs)))
    for a in aggs:
        x = ref[a["a"]]
        assert (Decimal(a["p"]), Decimal(a["q"]), a["f"], a["l"], a["T"], a["m"]) == (
            x.price, x.qty, x.first_id, x.last_id, x.time_ms, x.buyer_maker
        )  # fmt: skip
    # Diff depth: each event continues the previous one (U = previous u + 1), and a book built from the
    # first event on has, at every bookTicker's update id, that bookTicker's best levels.
    diffs = [m["data"] for m in msgs if m["stream"] == "btcusdt@depth@100ms"]
    tickers = {m["data"]["u"]: m["data"] for m in msgs if m["stream"] == "btcusdt@bookTicker"}
    assert len(diffs) > 5 and len(tickers) > 5
    for prev, ev in itertools.pairwise(diffs):
        assert ev["U"] == prev["u"] + 1
    book: dict[str, dict[Decimal, Decimal]] = {"b": {}, "a": {}}
    checked = 0
    for ev in diffs:
        for side in ("b", "a"):
            for p, q in ev[side]:
                if Decimal(q) == 0:
                    book[side].pop(Decimal(p), None)
                else:
                    book[side][Decimal(p)] = Decimal(q)
        bt = tickers.get(ev["u"])
        if bt is not None and ev is not diffs[0]:
            best_b, best_a = max(book["b"]), min(book["a"])
            assert (best_b, book["b"][best_b], best_a, book["a"][best_a]) == (
                Decimal(bt["b"]), Decimal(bt["B"]), Decimal(bt["a"]), Decimal(bt["A"])
            )  # fmt: skip
            checked += 1
    assert checked > 3
    assert snapshot["lastUpdateId"] >= diffs[-1]["u"]


def _depth_snapshot(r: BinanceReplica) -> dict[str, Any]:
    c = Client(ping=False, requests_params={"verify": str(r.ca_file), "timeout": 10})
    c.API_URL = r.url + "/api"
    return json.loads(json.dumps(c.get_order_book(symbol="BTCUSDT", limit=1000)))
