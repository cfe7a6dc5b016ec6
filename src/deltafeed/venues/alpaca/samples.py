"""Alpaca's decoder samples: the verbatim frames and bodies of PROTOCOLS-wave2.md section 6 (Alpaca's
``streaming-market-data`` and ``real-time-stock-pricing-data`` pages), as fuzz targets (see
:class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

from collections import Counter

import msgspec

from deltafeed.model import timeframe
from deltafeed.venues.alpaca import codec
from deltafeed.venues.base import SAMPLE_NOW_MS, FuzzTarget
from deltafeed.venues.rfc3339 import iso_ms

CONNECTED = b'[{"T":"success","msg":"connected"}]'
AUTHENTICATED = b'[{"T":"success","msg":"authenticated"}]'
SUBSCRIPTION = (
    b'[{"T":"subscription","trades":["AAPL"],"quotes":["AMD","CLDR"],"bars":["*"],"updatedBars":[],'
    b'"dailyBars":[],"statuses":[],"lulds":[],"corrections":["AAPL"],"cancelErrors":["AAPL"]}]'
)
TRADE = (
    b'[{"T":"t","i":96921,"S":"AAPL","x":"D","p":126.55,"s":1,"t":"2021-02-22T15:51:44.208Z","c":["@","I"],"z":"C"}]'
)
QUOTE = (
    b'[{"T":"q","S":"AMD","bx":"U","bp":87.66,"bs":1,"ax":"Q","ap":87.68,"as":4,'
    b'"t":"2021-02-22T15:51:45.335689322Z","c":["R"],"z":"C"}]'
)
BAR = (
    b'[{"T":"b","S":"FAKEPACA","o":132.65,"h":136,"l":132.12,"c":134.65,"v":205,'
    b'"t":"2024-07-24T07:56:00Z","n":16,"vw":133.7}]'
)
#: The same bar as an "updated bar" (``T`` ``u``), as the late-trade correction is sent.
UPDATED_BAR = BAR.replace(b'"T":"b"', b'"T":"u"')
ERROR_406 = b'[{"T":"error","code":406,"msg":"connection limit exceeded"}]'
ERROR_402 = b'[{"T":"error","code":402,"msg":"auth failed"}]'
NAN_PRICE = TRADE.replace(b'"p":126.55', b'"p":NaN')
#: A batch: a trade and a bar in one frame (data messages may be batched).
BATCH = TRADE[:-1] + b"," + BAR[1:]
#: The trade as alpaca-py receives it: msgpack, ``t`` a Timestamp extension.
TRADE_MSGPACK = msgspec.msgpack.encode(
    [dict(msgspec.json.decode(TRADE)[0], t=codec.ms_datetime(iso_ms("2021-02-22T15:51:44.208Z")))]
)

REST_BARS = (
    b'{"bars":{"AAPL":[{"t":"2021-02-01T16:01:00Z","o":133.32,"h":133.74,"l":133.31,"c":133.5,"v":9876,'
    b'"n":105,"vw":133.5651}]},"next_page_token":null}'
)
REST_BARS_SINGLE = (
    b'{"bars":[{"t":"2021-02-01T16:01:00Z","o":133.32,"h":133.74,"l":133.31,"c":133.5,"v":9876,"n":105,'
    b'"vw":133.5651}],"symbol":"AAPL","next_page_token":"QUFQTHxNfDIwMjEtMDItMDFUMTY6MDI6MDAuMDAwMDAwMDAwWg=="}'
)
REST_ERROR = b'{"code":42210000,"message":"invalid timeframe"}'


def fuzz_targets() -> list[FuzzTarget]:
    return [_stream(), _stream_msgpack(), _rest()]


def _stream() -> FuzzTarget:
    dec = codec.StreamDecoder()
    return FuzzTarget(
        name="alpaca_stream",
        seeds=[CONNECTED, AUTHENTICATED, SUBSCRIPTION, TRADE, QUOTE, BAR, UPDATED_BAR, BATCH, ERROR_406, NAN_PRICE],
        bad_seeds=[NAN_PRICE],
        run=dec.decode,
        skips=lambda: dec.errors,
    )


def _stream_msgpack() -> FuzzTarget:
    dec = codec.StreamDecoder()
    return FuzzTarget(
        name="alpaca_stream_msgpack",
        seeds=[TRADE_MSGPACK],
        run=lambda b: dec.decode(b, binary=True),
        skips=lambda: dec.errors,
    )


def _rest() -> FuzzTarget:
    refused: Counter[str] = Counter()

    def run(data: bytes) -> None:
        try:
            codec.decode_bars(data, timeframe("1m"), SAMPLE_NOW_MS)
        except codec.BadAnswer:
            refused["refused_bars"] += 1
        codec.decode_error(data)

    return FuzzTarget(
        name="alpaca_rest",
        seeds=[REST_BARS, REST_BARS_SINGLE, REST_ERROR],
        run=run,
        skips=lambda: refused,
        several_decoders=True,
    )
