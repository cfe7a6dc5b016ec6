"""Hyperliquid's codec on the verbatim frames and bodies of PROTOCOLS-wave2.md section 3: trades, the
one-object candle message, replies that carry nothing, error frames; bad frames are counted, never raised."""

from __future__ import annotations

import msgspec
import pytest

from deltafeed.model import VenueCandle
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.hyperliquid import codec as hl
from deltafeed.venues.hyperliquid.samples import CANDLE, CANDLES, ERROR, L2_BOOK, META, PONG, SUB_ACK, TRADES


def test_a_trades_frame_is_a_list_of_trades_with_the_venue_wide_tid() -> None:
    dec = hl.StreamDecoder()
    out = dec.decode(TRADES)
    assert out == [hl.HlTrade("BTC", 981894269203506, 1710125266669, 68517.0, 0.005, "A")]
    assert not dec.errors


def test_the_candle_message_is_one_object_and_never_closed() -> None:
    ev = hl.StreamDecoder().decode(CANDLE)
    assert isinstance(ev, VenueCandle)
    assert (ev.symbol, ev.timeframe, ev.event_ms) == ("BTC", "1m", 1710146280000)
    c = ev.candle
    assert (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades) == (
        1710146280000, 71400.0, 71422.0, 71389.0, 71411.0, 1.20407, 20,
    )  # fmt: skip
    assert not c.closed


def test_replies_that_carry_nothing_are_acks_not_skips() -> None:
    dec = hl.StreamDecoder()
    for frame in (SUB_ACK, PONG, hl.GREETING):
        assert dec.decode(frame) is None
    assert dec.acks == {"subscriptionResponse": 1, "pong": 1, "greeting": 1}
    assert not dec.errors


def test_an_error_frame_is_counted_with_its_text() -> None:
    dec = hl.StreamDecoder()
    assert dec.decode(ERROR) is None
    assert dec.errors == {"venue_error": 1}
    assert "NOPE" in dec.venue_errors[-1]
    assert hl.refused_coin(dec.venue_errors[-1], ["BTC", "NOPE"]) == "NOPE"


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (TRADES.replace(b'"px":"68517.0"', b'"px":"NaN"'), "impossible_value"),
        (TRADES.replace(b'"sz":"0.005"', b'"sz":1e400'), "impossible_value"),
        (CANDLE.replace(b'"o":"71400.0"', b'"o":"-1"'), "impossible_value"),
        (TRADES.replace(b'"tid":981894269203506', b'"tid":-5'), "bad_field"),
        (CANDLE.replace(b'"i":"1m"', b'"i":"7m"'), "bad_field"),
        (CANDLE[:60], "malformed"),
        (b'{"channel":"l2Bok","data":{}}', "unknown_channel"),
        (b"[1,2]", "unknown_frame"),
    ],
)
def test_bad_frames_are_counted_by_kind_and_skipped(frame: bytes, kind: str) -> None:
    dec = hl.StreamDecoder()
    assert not dec.decode(frame)
    assert dec.errors == {kind: 1}, dec.errors


def test_requests_are_what_the_docs_show() -> None:
    assert msgspec.json.decode(hl.subscribe("trades", "SOL")) == {
        "method": "subscribe",
        "subscription": {"type": "trades", "coin": "SOL"},
    }
    assert msgspec.json.decode(hl.subscribe("candle", "BTC", "5m", "unsubscribe"))["subscription"] == {
        "type": "candle",
        "coin": "BTC",
        "interval": "5m",
    }
    assert msgspec.json.decode(hl.candles_request("BTC", "15m", 1, 2)) == {
        "type": "candleSnapshot",
        "req": {"coin": "BTC", "interval": "15m", "startTime": 1, "endTime": 2},
    }
    assert hl.PING == b'{"method":"ping"}'


def test_rest_bodies_decode_and_a_bad_one_is_refused_whole() -> None:
    [c] = hl.decode_candles(CANDLES, 900_000, 1681924500000)
    assert (c.open_time, c.open, c.close, c.volume, c.trades, c.closed) == (
        1681923600000, 29295.0, 29258.0, 0.98639, 189, True,
    )  # fmt: skip
    assert not hl.decode_candles(CANDLES, 900_000, 1681924499999)[0].closed  # the venue's clock decides
    with pytest.raises(hl.BadAnswer):
        hl.decode_candles(CANDLES.replace(b'"h":"29309.0"', b'"h":"NaN"'), 900_000, 0)
    with pytest.raises(hl.BadAnswer):
        hl.decode_candles(b'{"error":"x"}', 900_000, 0)
    assert hl.coins_from_meta(META) == {"BTC", "ETH"}
    assert hl.last_trade_ms(b'[{"time":5},{"time":9}]') == 9


def test_weights_follow_the_docs() -> None:
    assert hl.candles_weight(0) == 20 and hl.candles_weight(59) == 20 and hl.candles_weight(5000) == 103
    assert hl.info_weight("allMids") == 2 and hl.info_weight("meta") == 20


def test_the_encoders_round_trip_through_the_decoder() -> None:
    dec = hl.StreamDecoder()
    frame = hl.trades_frame([hl.trade_obj("ETH", 7, 1000, 3000.5, 0.25, "B")])
    assert dec.decode(frame) == [hl.HlTrade("ETH", 7, 1000, 3000.5, 0.25, "B")]
    assert hl.num(68517.0) == "68517.0" and hl.num(0.005) == "0.005"
    assert dec.decode(hl.error_frame("Already subscribed")) is None and dec.errors == {"venue_error": 1}


def test_an_l2book_frame_is_a_snapshot_keyed_by_its_time() -> None:
    dec = hl.StreamDecoder()
    assert dec.decode(L2_BOOK) == BookMsg(
        "BTC", True, [(68674.0, 0.97139), (68673.0, 0.00033)], [(68675.0, 0.0147)], 1710131872708, 1710131872708
    )
    assert not dec.errors


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (L2_BOOK.replace(b'"sz":"0.0147"', b'"sz":"NaN"'), "impossible_value"),
        (L2_BOOK.replace(b'"sz":"0.0147"', b'"sz":1e400'), "impossible_value"),
        (L2_BOOK.replace(b'"time":1710131872708', b'"time":"x"'), "bad_field"),
    ],
)
def test_an_unusable_l2book_breaks_its_book(frame: bytes, kind: str) -> None:
    dec = hl.StreamDecoder()
    got = dec.decode(frame)
    assert isinstance(got, BookMsg) and got.broken and got.symbol == "BTC"
    assert dec.errors == {kind: 1}


def test_book_frame_round_trips() -> None:
    raw = hl.book_frame("ETH", 5, [("100.5", "1.25", 2)], [("101", "3", 1)])
    assert hl.StreamDecoder().decode(raw) == BookMsg("ETH", True, [(100.5, 1.25)], [(101.0, 3.0)], 5, 5)
