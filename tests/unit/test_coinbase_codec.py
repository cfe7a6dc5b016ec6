"""The Coinbase codec on the verbatim frames and bodies of PROTOCOLS-wave2.md section 1 (the venue's
``websocket-channels`` and candles pages), its error frame, and bad input counted, never raised."""

from __future__ import annotations

import msgspec
import pytest

from deltafeed.model import Candle, Trade
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.coinbase import codec
from deltafeed.venues.coinbase import samples as s


def test_market_trades_snapshot_side_is_the_makers() -> None:
    dec = codec.StreamDecoder()
    m = dec.decode(s.MARKET_TRADES)
    assert isinstance(m, codec.Message) and m.channel == "market_trades" and m.seq == 0 and m.snapshot
    # "side refers to the makers side": a BUY maker is a buyer-maker trade.
    assert m.trades == [Trade("ETH-USD", 0, 1565815347265, 1260.01, 0.3, True)]
    assert m.time_ms == codec.iso_ms("2023-02-09T20:19:35.396Z")
    u = dec.decode(s.TRADES_UPDATE)
    assert isinstance(u, codec.Message) and not u.snapshot and u.seq == 5
    assert u.trades[0].trade_id == 995098700 and u.trades[0].price == 68900.5
    assert not dec.errors


def test_a_batch_newest_first_comes_out_in_id_order() -> None:
    rows = [(7, "BTC-USD", 1_000, 10.0, 1.0, True), (8, "BTC-USD", 1_001, 11.0, 2.0, False)]
    frame = codec.envelope("market_trades", 3, 1_002, b"[%s]" % codec.trades_event("update", rows))
    assert b'"trade_id":"8"' in frame.split(b'"trade_id":"7"')[0]  # the venue's order: newest first
    m = codec.StreamDecoder().decode(frame)
    assert isinstance(m, codec.Message)
    assert [(t.trade_id, t.buyer_maker, t.qty) for t in m.trades] == [(7, True, 1.0), (8, False, 2.0)]


def test_heartbeats_counter_as_string_or_integer_candles_and_subscriptions() -> None:
    dec = codec.StreamDecoder()
    hb = dec.decode(s.HEARTBEAT)
    assert isinstance(hb, codec.Message) and hb.heartbeat == 3049
    hb2 = dec.decode(s.HEARTBEAT_INT)
    assert isinstance(hb2, codec.Message) and hb2.heartbeat == 42
    c = dec.decode(s.CANDLES)
    assert isinstance(c, codec.Message) and c.snapshot
    assert c.candles == [("ETH-USD", Candle(1688998200_000, 1867.38, 1867.72, 1865.63, 1866.81, 0.20269406, 0))]
    sub = dec.decode(s.SUBSCRIPTIONS)
    assert isinstance(sub, codec.Message) and sub.subscriptions == {
        "level2": ["BTC-USD"],
        "market_trades": ["BTC-USD", "ETH-USD"],
    }
    assert not dec.errors


def test_l2_data_events_are_book_messages_keyed_by_the_frame_time() -> None:
    dec = codec.StreamDecoder()
    l2 = dec.decode(s.L2_DATA)
    assert isinstance(l2, codec.Message) and l2.channel == "l2_data" and l2.seq == 0 and not l2.trades
    key = codec.iso_ms("2023-02-09T20:32:50.714Z") * 1000 + 964  # the frame's time in microseconds
    assert l2.books == [BookMsg("BTC-USD", True, [(21921.73, 0.06317902), (21921.3, 0.02)], [], key, key // 1000)]
    up = dec.decode(s.L2_UPDATE)
    assert isinstance(up, codec.Message) and len(up.books) == 1
    b = up.books[0]
    assert (b.snapshot, b.bids, b.asks) == (False, [(21921.73, 0.0)], [(21922.5, 1.25)])
    assert not dec.errors


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (s.L2_UPDATE.replace(b'"new_quantity":"1.25"', b'"new_quantity":"NaN"'), "impossible_value"),
        (s.L2_UPDATE.replace(b'"side":"offer"', b'"side":"ask"'), "bad_field"),
        (s.L2_UPDATE.replace(b'"price_level":"21922.5"', b'"price_level":[]'), "bad_field"),
    ],
)
def test_an_unusable_l2_event_breaks_its_book(frame: bytes, kind: str) -> None:
    dec = codec.StreamDecoder()
    m = dec.decode(frame)
    assert isinstance(m, codec.Message) and m.seq == 7
    assert [(b.symbol, b.broken) for b in m.books] == [("BTC-USD", True)]
    assert dec.errors == {kind: 1}


def test_l2_encoders_round_trip() -> None:
    ev = codec.l2_event("update", "ETH-USD", 1_700_000_000_123, [("99.5", "0")], [("100", "2")])
    m = codec.StreamDecoder().decode(codec.envelope_us("l2_data", 3, 1_700_000_000_123_456, b"[%s]" % ev))
    assert isinstance(m, codec.Message) and m.seq == 3
    assert m.books == [
        BookMsg("ETH-USD", False, [(99.5, 0.0)], [(100.0, 2.0)], 1_700_000_000_123_456, 1_700_000_000_123)
    ]


def test_error_frame_is_counted_and_returned() -> None:
    dec = codec.StreamDecoder()
    err = dec.decode(s.ERROR)
    assert isinstance(err, codec.VenueErrorFrame) and "FOO-USD" in err.message
    assert dec.errors == {"error_frame": 1}


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"<html>502</html>", "malformed"),
        (s.MARKET_TRADES[:40], "malformed"),
        (b"[1,2]", "malformed"),
        (s.MARKET_TRADES.replace(b'"sequence_num":0', b'"sequence_num":-1'), "bad_field"),
        (s.MARKET_TRADES.replace(b'"trade_id":"000000000"', b'"trade_id":"x1"'), "bad_field"),
        (s.MARKET_TRADES.replace(b'"trade_id":"000000000"', b'"trade_id":"99999999999999999999"'), "bad_field"),
        (s.MARKET_TRADES.replace(b'"2019-08-14T20:42:27.265Z"', b'"yesterday"'), "bad_field"),
        (s.MARKET_TRADES.replace(b'"side":"BUY"', b'"side":"UP"'), "bad_field"),
        (s.NAN_PRICE, "impossible_value"),
        (s.MARKET_TRADES.replace(b'"size":"0.3"', b'"size":"1e400"'), "impossible_value"),
        (s.CANDLES.replace(b'"volume":"0.20269406"', b'"volume":"-1"'), "impossible_value"),
        (s.HEARTBEAT.replace(b"heartbeats", b"weather"), "unknown_channel"),
        (b'{"type":"ping"}', "unknown_frame"),
    ],
)
def test_a_bad_frame_is_counted_by_kind_and_skipped(frame: bytes, kind: str) -> None:
    dec = codec.StreamDecoder()
    out = dec.decode(frame)
    assert dec.errors == {kind: 1}, (dec.errors, dec.last_error)
    assert not isinstance(out, codec.Message) or not out.trades
    good = dec.decode(s.TRADES_UPDATE)  # the stream goes on
    assert isinstance(good, codec.Message) and len(good.trades) == 1


def test_an_impossible_trade_is_dropped_alone() -> None:
    rows = [(1, "BTC-USD", 1_000, 10.0, 1.0, True), (2, "BTC-USD", 1_001, 11.0, 2.0, False)]
    frame = codec.envelope("market_trades", 0, 1_002, b"[%s]" % codec.trades_event("update", rows))
    frame = frame.replace(b'"price":"11.00000000"', b'"price":"NaN"')
    dec = codec.StreamDecoder()
    m = dec.decode(frame)
    assert isinstance(m, codec.Message) and [t.trade_id for t in m.trades] == [1]
    assert dec.errors == {"impossible_value": 1}


def test_times() -> None:
    assert codec.iso_ms("2019-08-14T20:42:27.265Z") == 1565815347265
    assert codec.iso_ms("2023-06-09T20:19:35.39625135Z") == 1686341975396
    assert codec.iso_ms("1970-01-01T00:00:00Z") == 0
    assert codec.ms_iso(1565815347265) == "2019-08-14T20:42:27.265Z"
    assert codec.iso_ms(codec.ms_iso(1565815347265, 6)) == 1565815347265
    for bad in ("2019-08-14 20:42:27Z", "2019-13-14T20:42:27Z", "2019-08-14T20:42:27.2x5Z", "x"):
        with pytest.raises(ValueError):
            codec.iso_ms(bad)


def test_subscribe_is_one_channel_per_message() -> None:
    assert msgspec.json.decode(codec.subscribe("market_trades", ["ETH-USD", "BTC-USD"])) == {
        "type": "subscribe",
        "channel": "market_trades",
        "product_ids": ["ETH-USD", "BTC-USD"],
    }
    assert msgspec.json.decode(codec.subscribe("heartbeats")) == {"type": "subscribe", "channel": "heartbeats"}
    assert msgspec.json.decode(codec.unsubscribe("market_trades", ["ETH-USD"]))["type"] == "unsubscribe"


def test_rest_candles_come_newest_first_and_are_returned_oldest_first() -> None:
    got = codec.decode_candles(s.REST_CANDLES, 60, 1712192460_000 + 30_000)
    assert [c.open_time for c in got] == [1712192400_000, 1712192460_000]
    assert got[0].closed and not got[1].closed  # the venue's clock says the newest is still forming
    assert got[0].trades == 0 and got[0].volume == 355.82896243 and got[0].open == 66312.4
    with pytest.raises(codec.BadAnswer):
        codec.decode_candles(s.REST_CANDLES.replace(b'"low":"66055.14"', b'"low":"NaN"'), 60, 0)
    with pytest.raises(codec.BadAnswer):
        codec.decode_candles(s.REST_CANDLES.replace(b'"1712192460"', b'"1712192461"'), 60, 0)  # off the grid
    with pytest.raises(codec.BadAnswer):
        codec.decode_candles(s.REST_ERROR, 60, 0)
    assert codec.decode_error(s.REST_ERROR) is not None and "less than 350" in (codec.decode_error(s.REST_ERROR) or "")


def test_rest_time_products_and_paths() -> None:
    assert codec.decode_time(s.REST_TIME) == 1685572150000
    assert codec.products_from_body(s.REST_PRODUCTS) == {"BTC-USD"}
    with pytest.raises(codec.BadAnswer):
        codec.decode_time(b'{"serverTime":1}')
    assert codec.candles_path("BTC-USD", "ONE_MINUTE", 60, 120) == (
        "/api/v3/brokerage/market/products/BTC-USD/candles?start=60&end=120&granularity=ONE_MINUTE"
    )


def test_time_as_integers_too() -> None:
    assert codec.decode_time(b'{"iso":"x","epochSeconds":1685572150,"epochMillis":1685572150000}') == 1685572150000
