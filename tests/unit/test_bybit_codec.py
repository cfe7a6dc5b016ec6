"""The Bybit codec against verbatim frames and bodies from Bybit's v5 docs (PROTOCOLS-wave2.md section 2),
and the error shapes: a bad frame is counted by kind and skipped, never raised."""

from __future__ import annotations

import pytest

from deltafeed.model import Candle, Trade, VenueCandle
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.bybit import codec as b
from deltafeed.venues.bybit import samples as s


def test_trade_message() -> None:
    d = b.StreamDecoder()
    ev = d.decode(s.DOC_TRADE)
    assert isinstance(ev, b.Trades)
    assert ev.symbol == "BTCUSDT" and ev.ts == 1672304486868
    assert ev.trades == [Trade("BTCUSDT", 0, 1672304486865, 16578.5, 0.001, False)]  # taker bought
    assert ev.ids == ["20f43950-d8dd-5b31-9112-a178eb6023af"]
    assert not d.errors


def test_a_bad_item_loses_only_itself() -> None:
    d = b.StreamDecoder()
    frame = s.DOC_TRADE.replace(b"}]}", b'},{"T":1,"s":"BTCUSDT","S":"Sell","v":"1","p":"NaN","i":"x"},{"T":"x"}]}')
    ev = d.decode(frame)
    assert isinstance(ev, b.Trades) and len(ev.trades) == 1
    assert d.errors == {"impossible_value": 1, "bad_field": 1}


def test_kline_message() -> None:
    ev = b.StreamDecoder().decode(s.DOC_KLINE)
    assert ev == [
        VenueCandle(
            "BTCUSDT", "5m", 1672324988882, Candle(1672324800000, 16649.5, 16677.0, 16608.0, 16677.0, 2.081, 0, False)
        )
    ]
    confirmed = b.StreamDecoder().decode(s.DOC_KLINE.replace(b'"confirm":false', b'"confirm":true'))
    assert isinstance(confirmed, list) and confirmed[0].candle.closed


def test_replies_and_pongs() -> None:
    d = b.StreamDecoder()
    assert d.decode(s.DOC_SUBSCRIBED_SPOT) == b.Reply("subscribe", True, "subscribe", "10001")
    assert d.decode(s.DOC_SUBSCRIBED_LINEAR) == b.Reply("subscribe", True, "", "")
    assert d.decode(s.DOC_PONG_SPOT) == b.Reply("ping", True, "pong", "")
    assert d.decode(s.DOC_PONG_OPTION) is None
    assert not d.errors


def test_refusal_is_a_reply() -> None:
    d = b.StreamDecoder()
    r = d.decode(s.REFUSED)
    assert r == b.Reply("subscribe", False, "Invalid symbol :[publicTrade.BTCUSDX]", "df7")
    assert not d.errors  # the feed counts it in venue_errors


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"not json", "malformed"),
        (b"[1,2]", "malformed"),
        (s.DOC_TRADE[: len(s.DOC_TRADE) // 2], "malformed"),
        (b'{"topic":"spread.1.BTCUSDT","data":[],"ts":1}', "unknown_topic"),
        (b'{"topic":"kline.7.BTCUSDT","data":[],"ts":1}', "unknown_topic"),
        (b'{"topic":"publicTrade.BTCUSDT","data":{},"ts":1}', "bad_field"),
        (s.NAN_TRADE, "impossible_value"),
        (s.DOC_TRADE.replace(b'"p":"16578.50"', b'"p":1e400'), "impossible_value"),
        (s.DOC_KLINE.replace(b'"low":"16608"', b'"low":"-1"'), "impossible_value"),
        (s.DOC_KLINE.replace(b'"start":1672324800000', b'"start":-5'), "bad_field"),
        (b'{"hello":1}', "unknown_frame"),
    ],
)
def test_bad_frames_are_counted_not_raised(frame: bytes, kind: str) -> None:
    d = b.StreamDecoder()
    assert d.decode(frame) is None
    assert d.errors == {kind: 1}


def test_kline_body_is_oldest_first_and_closed_by_the_venue_clock() -> None:
    rows = b.decode_klines(s.DOC_KLINE_BODY, 3_600_000, 1670612400000)
    assert [c.open_time for c in rows] == [1670601600000, 1670605200000, 1670608800000]
    assert rows[0] == Candle(1670601600000, 17086.5, 17088.0, 16978.0, 17071.5, 6356.0, 0, True)
    assert rows[-1].closed  # ends exactly at now
    assert not b.decode_klines(s.DOC_KLINE_BODY, 3_600_000, 1670612399999)[-1].closed


def test_rest_errors() -> None:
    with pytest.raises(b.BadAnswer, match="10001 Not supported symbols"):
        b.decode_klines(s.ERROR_BODY, 60_000, 0)
    with pytest.raises(b.BadAnswer):
        b.decode_klines(b"<html>403</html>", 60_000, 0)
    with pytest.raises(b.BadAnswer, match="impossible"):
        b.decode_klines(s.DOC_KLINE_BODY.replace(b'"17027"', b'"NaN"'), 60_000, 0)
    with pytest.raises(b.BadAnswer, match="newest first"):
        b.decode_klines(s.DOC_KLINE_BODY.replace(b'"1670605200000"', b'"1670501200000"'), 60_000, 0)


def test_time_and_instruments() -> None:
    assert b.decode_server_time(s.DOC_TIME_BODY) == 1688639403423
    assert b.decode_instruments(s.DOC_INSTRUMENTS_BODY) == ({"BTCUSDT"}, "")


def test_requests() -> None:
    assert (
        b.kline_query("spot", "BTCUSDT", "1", 1, 2)
        == "/v5/market/kline?category=spot&symbol=BTCUSDT&interval=1&start=1&end=2&limit=1000"
    )
    assert (
        b.subscribe(["publicTrade.BTCUSDT"], "a") == b'{"req_id":"a","op":"subscribe","args":["publicTrade.BTCUSDT"]}'
    )
    assert b.kline_topic("BTCUSDT", "1h") == "kline.60.BTCUSDT"
    assert b.parse_symbol("BTCUSDT") == ("spot", "BTCUSDT")
    assert b.parse_symbol("LINEAR:BTCUSDT") == ("linear", "BTCUSDT")
    assert b.series_symbol("linear", "BTCUSDT") == "LINEAR:BTCUSDT"
    with pytest.raises(ValueError, match="inverse"):
        b.parse_symbol("INVERSE:BTCUSD")


def test_encoders_round_trip() -> None:
    item = b.trade_item("BTCUSDT", "2100000000007764263", 1000, 60000.5, 0.25, True, 7, linear=False)
    ev = b.StreamDecoder().decode(b.trade_message("BTCUSDT", 1001, [item]))
    assert isinstance(ev, b.Trades) and ev.trades == [Trade("BTCUSDT", 0, 1000, 60000.5, 0.25, True)]
    c = Candle(60_000, 1.5, 2.0, 1.0, 1.25, 3.0, 0, True)
    k = b.StreamDecoder().decode(b.kline_message("BTCUSDT", "1", 120_001, c, 60_000, 4.0, True, 119_000))
    assert k == [VenueCandle("BTCUSDT", "1m", 120_001, c)]


def test_orderbook_messages_decode_to_the_neutral_form() -> None:
    d = b.StreamDecoder()
    snap = d.decode(s.DOC_BOOK_SNAPSHOT)
    assert snap == BookMsg(
        "BTCUSDT", True, [(16493.5, 0.006), (16493.0, 0.1)], [(16611.0, 0.029), (16612.0, 0.213)],
        7961638724, 1672304484978, 18521288,
    )  # fmt: skip
    delta = d.decode(s.DOC_BOOK_DELTA)
    assert isinstance(delta, BookMsg) and not delta.snapshot and not delta.broken
    assert (delta.bids, delta.asks[-1], delta.update_id, delta.key) == ([], (16611.0, 0.0), 18521289, 7961638725)
    assert not d.errors


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (s.NAN_BOOK, "impossible_value"),
        (s.DOC_BOOK_DELTA.replace(b'"u":18521289', b'"u":"x"'), "bad_field"),
        (s.DOC_BOOK_DELTA.replace(b'"s":"BTCUSDT"', b'"s":"ETHUSDT"'), "bad_field"),
    ],
)
def test_an_unusable_orderbook_message_breaks_its_book(frame: bytes, kind: str) -> None:
    d = b.StreamDecoder()
    ev = d.decode(frame)
    assert isinstance(ev, BookMsg) and ev.broken and ev.symbol == "BTCUSDT"
    assert d.errors == {kind: 1}


def test_book_message_round_trips() -> None:
    raw = b.book_message("BTCUSDT", 50, False, 5, 4, [("100.5", "0")], [("101", "2.5")], 9, 77)
    assert b.StreamDecoder().decode(raw) == BookMsg("BTCUSDT", False, [(100.5, 0.0)], [(101.0, 2.5)], 77, 5, 9)
