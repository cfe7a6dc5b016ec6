"""binance-connector (Binance's own Python connector) against the Binance replica over TLS: ``Spot``
REST (klines and uiKlines with ``timeZone``, aggregate trades, the 24hr ticker) and
``SpotWebsocketStreamClient`` (trade and the UTC+8 kline stream); all compared with the tape."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from typing import Any

import pytest

pytest.importorskip("binance.spot", reason="binance-connector does not install here")
from binance.spot import Spot
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient

from deltafeed.venues.binance.replica import BinanceReplica
from reference import TapeRow, agg_trades_from_tape, read_tape, rows_by_symbol

HOUR = 3_600_000


def _ohlcv(rows: list[TapeRow]) -> list[Decimal]:
    return [
        rows[0].price,
        max(r.price for r in rows),
        min(r.price for r in rows),
        rows[-1].price,
        sum(r.qty for r in rows),
    ]


def _rest(r: BinanceReplica) -> dict[str, Any]:
    spot = Spot(base_url=r.url, timeout=10)
    return {
        "k530": spot.klines("BTCUSDT", "1h", timeZone="+05:30", limit=5),
        "ui530": spot.ui_klines("BTCUSDT", "1h", timeZone="+05:30", limit=5),
        "aggs": spot.agg_trades("XYZUSDT", limit=1000),
        "t24": spot.ticker_24hr(symbols=["BTCUSDT", "XYZUSDT"], type="MINI"),
    }


async def test_rest_time_zone_aggs_and_tickers(tls_binance: BinanceReplica, monkeypatch: pytest.MonkeyPatch) -> None:
    r = tls_binance
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(r.ca_file))  # requests' own CA setting
    got = await asyncio.to_thread(_rest, r)
    assert r.options.tape is not None
    tape = rows_by_symbol(read_tape(r.options.tape))
    btc = tape["BTCUSDT"]
    # +05:30: hours open at half past the UTC hour; startTime/endTime stay UTC.
    assert got["k530"] and [k[0] for k in got["ui530"]] == [k[0] for k in got["k530"]]
    for k in got["k530"] + got["ui530"]:  # the open candle moves on between the two calls
        assert k[0] % HOUR == 30 * 60_000 and k[6] == k[0] + HOUR - 1
        rows = [row for row in btc if k[0] <= row.time_ms <= k[6]][: k[8]]
        assert rows and [Decimal(x) for x in k[1:6]] == _ohlcv(rows)
    ref = {a.agg_id: a for a in agg_trades_from_tape(tape["XYZUSDT"])}
    assert len(got["aggs"]) == 1000
    for a in got["aggs"]:  # the most recent 1000, oldest first
        x = ref[a["a"]]
        assert (Decimal(a["p"]), Decimal(a["q"]), a["f"], a["l"], a["T"]) == (
            x.price,
            x.qty,
            x.first_id,
            x.last_id,
            x.time_ms,
        )
    assert [t["symbol"] for t in got["t24"]] == ["BTCUSDT", "XYZUSDT"]
    for t in got["t24"]:
        rows = [row for row in tape[t["symbol"]] if t["firstId"] <= row.trade_id <= t["lastId"]]
        assert len(rows) == t["count"] and rows[0].time_ms >= t["openTime"]
        assert [Decimal(t[k]) for k in ("openPrice", "highPrice", "lowPrice", "lastPrice", "volume")] == _ohlcv(rows)


async def test_streams_trade_and_utc8_kline(tls_binance: BinanceReplica, monkeypatch: pytest.MonkeyPatch) -> None:
    r = tls_binance
    assert r.ca_file is not None
    monkeypatch.setenv("WEBSOCKET_CLIENT_CA_BUNDLE", str(r.ca_file))  # websocket-client's own CA setting
    msgs: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_message(_: object, text: str) -> None:
        with lock:
            msgs.append(json.loads(text))

    def run() -> None:
        client = SpotWebsocketStreamClient(stream_url=r.ws_url, on_message=on_message, timeout=10)
        try:
            client.trade(symbol="btcusdt", id=1)
            client.kline_timezone_offset(symbol="btcusdt", interval="1d", id=2)
            time.sleep(3.0)
        finally:
            client.stop()

    await asyncio.to_thread(run)
    assert {"result": None, "id": 1} in msgs and {"result": None, "id": 2} in msgs
    assert r.options.tape is not None
    btc = {row.trade_id: row for row in rows_by_symbol(read_tape(r.options.tape))["BTCUSDT"]}
    trades = [m for m in msgs if m.get("e") == "trade"]
    klines = [m["k"] for m in msgs if m.get("e") == "kline"]
    assert len(trades) > 50 and klines
    for t in trades:
        row = btc[t["t"]]
        assert (t["p"], t["q"], t["T"], t["m"]) == (row.price_text, row.qty_text, row.time_ms, row.buyer_maker)
    for k in klines:
        assert (k["t"] + 8 * HOUR) % (24 * HOUR) == 0 and k["i"] == "1d"  # midnight in UTC+8
        rows = [btc[i] for i in range(k["f"], k["L"] + 1)]
        assert all(k["t"] <= row.time_ms <= k["T"] for row in rows) and k["n"] == len(rows)
        assert [Decimal(k[x]) for x in "ohlcv"] == _ohlcv(rows)
