"""Bybit's decoder samples: verbatim frames and bodies from its v5 docs (PROTOCOLS-wave2.md section 2),
as fuzz targets (see :class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.bybit import codec as bybit

DOC_TRADE = (
    b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":[{"T":1672304486865,'
    b'"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick","i":"20f43950-d8dd-5b31-9112-a178eb6023af",'
    b'"BT":false,"seq":1783284617}]}'
)
DOC_KLINE = (
    b'{"topic":"kline.5.BTCUSDT","data":[{"start":1672324800000,"end":1672325099999,"interval":"5",'
    b'"open":"16649.5","close":"16677","high":"16677","low":"16608","volume":"2.081","turnover":"34666.4005",'
    b'"confirm":false,"timestamp":1672324988882}],"ts":1672324988882,"type":"snapshot"}'
)
DOC_SUBSCRIBED_SPOT = (
    b'{"success":true,"ret_msg":"subscribe","conn_id":"2324d924-aa4d-45b0-a858-7b8be29ab52b","req_id":"10001",'
    b'"op":"subscribe"}'
)
DOC_SUBSCRIBED_LINEAR = (
    b'{"success":true,"ret_msg":"","conn_id":"3cd84cb1-4d06-4a05-930a-2efe5fc70f0f","req_id":"","op":"subscribe"}'
)
DOC_PONG_SPOT = b'{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","op":"ping"}'
DOC_PONG_OPTION = b'{"args":["1672916271846"],"op":"pong"}'
#: The failure shape is not in Bybit's docs [UNVERIFIED]: as the live venue is reported to answer.
REFUSED = (
    b'{"success":false,"ret_msg":"Invalid symbol :[publicTrade.BTCUSDX]","conn_id":"cf71c4d6-2bd5-4a4b-8bd6-'
    b'a4f0e7e4e0e1","req_id":"df7","op":"subscribe"}'
)
#: ``orderbook.md``'s snapshot example with its elided levels left out (v5 docs), and the delta of the
#: v3 docs' example (its levels verbatim, ``u``/``seq`` continuing the snapshot's).
DOC_BOOK_SNAPSHOT = (
    b'{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT","b":'
    b'[["16493.50","0.006"],["16493.00","0.100"]],"a":[["16611.00","0.029"],["16612.00","0.213"]],'
    b'"u":18521288,"seq":7961638724}}'
)
DOC_BOOK_DELTA = (
    b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1672304484998,"data":{"s":"BTCUSDT","b":[],'
    b'"a":[["17440.50","78.857"],["17442.00","1.510"],["16611.00","0"]],"u":18521289,"seq":7961638725},'
    b'"cts":1672304484990}'
)
NAN_BOOK = DOC_BOOK_DELTA.replace(b'"78.857"', b'"NaN"')
NAN_TRADE = DOC_TRADE.replace(b'"p":"16578.50"', b'"p":"NaN"')

DOC_KLINE_BODY = (
    b'{"retCode":0,"retMsg":"OK","result":{"symbol":"BTCUSD","category":"inverse","list":[["1670608800000",'
    b'"17071","17073","17027","17055.5","268611","15.74462667"],["1670605200000","17071.5","17071.5","17061",'
    b'"17071","4177","0.24469757"],["1670601600000","17086.5","17088","16978","17071.5","6356","0.37288112"]]},'
    b'"retExtInfo":{},"time":1672025956592}'
)
DOC_TIME_BODY = (
    b'{"retCode":0,"retMsg":"OK","result":{"timeSecond":"1688639403","timeNano":"1688639403423213947"},'
    b'"retExtInfo":{},"time":1688639403423}'
)
DOC_INSTRUMENTS_BODY = (
    b'{"retCode":0,"retMsg":"OK","result":{"category":"spot","list":[{"symbol":"BTCUSDT","baseCoin":"BTC",'
    b'"quoteCoin":"USDT","innovation":"0","status":"Trading","marginTrading":"both","lotSizeFilter":'
    b'{"basePrecision":"0.000001","quotePrecision":"0.00000001","minOrderQty":"0.000048","maxOrderQty":"71.73956243",'
    b'"minOrderAmt":"1","maxOrderAmt":"2000000"},"priceFilter":{"tickSize":"0.01"}}]},"retExtInfo":{},'
    b'"time":1672712468011}'
)
ERROR_BODY = b'{"retCode":10001,"retMsg":"Not supported symbols","result":{},"retExtInfo":{},"time":1672025956592}'


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _rest()]


def _stream() -> FuzzTarget:
    dec = bybit.StreamDecoder()
    return FuzzTarget(
        name="bybit_stream",
        seeds=[
            DOC_TRADE,
            DOC_KLINE,
            DOC_SUBSCRIBED_SPOT,
            DOC_SUBSCRIBED_LINEAR,
            DOC_PONG_SPOT,
            DOC_PONG_OPTION,
            REFUSED,
            NAN_TRADE,
            DOC_BOOK_SNAPSHOT,
            DOC_BOOK_DELTA,
            NAN_BOOK,
        ],
        bad_seeds=[NAN_TRADE, NAN_BOOK],  # a refusal is a well-formed reply: the feed counts it
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _rest() -> FuzzTarget:
    refused: Counter[str] = Counter()  # the decoders' declared errors, by decoder (each input goes to three)

    def run(data: bytes) -> None:
        for what, decode in (
            ("klines", lambda: bybit.decode_klines(data, 3_600_000, SAMPLE_NOW_MS)),
            ("time", lambda: bybit.decode_server_time(data)),
            ("instruments", lambda: bybit.decode_instruments(data)),
        ):
            try:
                decode()
            except bybit.BadAnswer:
                refused[f"refused_{what}"] += 1

    return FuzzTarget(
        name="bybit_rest",
        seeds=[DOC_KLINE_BODY, DOC_TIME_BODY, DOC_INSTRUMENTS_BODY, ERROR_BODY],
        bad_seeds=[ERROR_BODY],
        run=run,
        skips=lambda: refused,
        several_decoders=True,
    )
