"""The Binance codec against verbatim frames from Binance's documentation (PROTOCOLS.md section 1)."""

from __future__ import annotations

import msgspec
import pytest

from deltafeed.model import Candle, ServerShutdown, Trade, VenueCandle
from deltafeed.venues.binance import codec as b

DOC_TRADE = (
    b'{"e":"trade","E":1672515782136,"s":"BNBBTC","t":12345,"p":"0.001","q":"100","T":1672515782136,"m":true,"M":true}'
)
DOC_KLINE = (
    b'{"e":"kline","E":1672515782136,"s":"BNBBTC","k":{"t":1672515780000,"T":1672515839999,"s":"BNBBTC",'
    b'"i":"1m","f":100,"L":200,"o":"0.0010","c":"0.0020","h":"0.0025","l":"0.0015","v":"1000","n":100,'
    b'"x":false,"q":"1.0000","V":"500","Q":"0.500","B":"123456"}}'
)
DOC_SHUTDOWN_RAW = b'{"e":"serverShutdown","E":1770123456789}'
DOC_SHUTDOWN_COMBINED = b'{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":1770123456789}}'
DOC_KLINE_ROW = b'[[1499040000000,"0.01634790","0.80000000","0.01575800","0.01577100","148976.11427815",1499644799999,"2434.19055334",308,"1756.87402397","28.46694368","0"]]'


def test_raw_trade() -> None:
    ev = b.StreamDecoder().decode(DOC_TRADE)
    assert ev == Trade("BNBBTC", 12345, 1672515782136, 0.001, 100.0, True)


def test_combined_trade_and_memoryview() -> None:
    frame = b'{"stream":"bnbbtc@trade","data":' + DOC_TRADE + b"}"
    d = b.StreamDecoder()
    assert d.decode(memoryview(frame)) == Trade("BNBBTC", 12345, 1672515782136, 0.001, 100.0, True)
    assert not d.errors


def test_kline() -> None:
    ev = b.StreamDecoder().decode(b'{"stream":"bnbbtc@kline_1m","data":' + DOC_KLINE + b"}")
    assert isinstance(ev, VenueCandle)
    assert (ev.symbol, ev.timeframe, ev.event_ms, ev.first_trade_id, ev.last_trade_id) == (
        "BNBBTC",
        "1m",
        1672515782136,
        100,
        200,
    )
    assert ev.candle == Candle(1672515780000, 0.001, 0.0025, 0.0015, 0.002, 1000.0, 100, False)


@pytest.mark.parametrize("frame", [DOC_SHUTDOWN_RAW, DOC_SHUTDOWN_COMBINED])
def test_server_shutdown(frame: bytes) -> None:
    assert b.StreamDecoder().decode(frame) == ServerShutdown(1770123456789)


def test_control_replies_are_not_errors() -> None:
    d = b.StreamDecoder()
    assert d.decode(b'{"result":null,"id":1}') is None
    assert d.decode(b'{"result":["btcusdt@aggTrade"],"id":3}') is None
    assert not d.errors
    assert d.replies[-1] == {"result": ["btcusdt@aggTrade"], "id": 3}


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"{not json", "malformed"),
        (b'{"e":"trade","E":1,"s":"X","t":1,"p":"abc","q":"1","T":1,"m":true}', "bad_field"),
        (b'{"e":"trade","E":1,"s":"X"}', "bad_field"),
        (b'{"e":"depthUpdate","E":1,"s":"X","U":1,"u":2,"b":[],"a":[]}', "unknown_event"),
        (b'{"code":3,"msg":"Invalid JSON: expected value at line 1 column 1","id":null}', "error_reply"),
        (b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}', "error_reply"),
        (b"[1,2,3]", "unknown_frame"),
    ],
)
def test_bad_frames_are_counted_and_skipped(frame: bytes, kind: str) -> None:
    d = b.StreamDecoder()
    assert d.decode(frame) is None
    assert d.errors == {kind: 1}
    assert d.last_error
    # The stream goes on: the next good frame decodes.
    assert isinstance(d.decode(DOC_TRADE), Trade)


def test_subscribe_messages_match_the_docs() -> None:
    assert msgspec.json.decode(b.subscribe(["btcusdt@aggTrade", "btcusdt@depth"], 1)) == {
        "method": "SUBSCRIBE",
        "params": ["btcusdt@aggTrade", "btcusdt@depth"],
        "id": 1,
    }
    assert msgspec.json.decode(b.unsubscribe(["btcusdt@depth"], 312)) == {
        "method": "UNSUBSCRIBE",
        "params": ["btcusdt@depth"],
        "id": 312,
    }
    assert msgspec.json.decode(b.list_subscriptions(3)) == {"method": "LIST_SUBSCRIPTIONS", "id": 3}


def test_streams_and_urls() -> None:
    assert b.streams_for("BTCUSDT", ["5s", "1m", "5m"]) == ["btcusdt@trade", "btcusdt@kline_1m", "btcusdt@kline_5m"]
    assert (
        b.combined_url("ws://127.0.0.1:9001/", ["a@trade", "b@trade"])
        == "ws://127.0.0.1:9001/stream?streams=a@trade/b@trade"
    )
    assert (
        b.klines_query("btcusdt", "1m", 5, 10)
        == "/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=5&endTime=10&limit=1000"
    )


def test_kline_rows_from_the_docs() -> None:
    rows = b.decode_klines(DOC_KLINE_ROW, 60_000, now_ms=1499040060000)
    assert rows == [Candle(1499040000000, 0.0163479, 0.8, 0.015758, 0.015771, 148976.11427815, 308, True)]
    # One millisecond before its end, the venue's kline is still open.
    assert not b.decode_klines(DOC_KLINE_ROW, 60_000, now_ms=1499040059999)[0].closed


def test_encoders_round_trip_through_the_decoder() -> None:
    d = b.StreamDecoder()
    frame = b.wrap_combined("ethusdt@trade", b.encode_trade("ETHUSDT", 7, 1000, 3000.5, 0.12345, False))
    assert d.decode(frame) == Trade("ETHUSDT", 7, 1000, 3000.5, 0.12345, False)
    c = Candle(60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 3, True)
    ev = d.decode(b.kline_payload("ETHUSDT", "1m", 120_000, c, 5, 7))
    assert isinstance(ev, VenueCandle) and ev.candle == c and ev.last_trade_id == 7
    assert b.decode_klines(msgspec.json.encode([b.kline_row(c, 60_000)]), 60_000, 120_000) == [c]
