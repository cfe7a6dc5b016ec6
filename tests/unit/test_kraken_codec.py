"""The Kraken codec on the verbatim frames and bodies of docs.kraken.com (PROTOCOLS-wave2.md section 4):
what it decodes, and what it counts and skips without raising."""

from __future__ import annotations

import msgspec
import pytest

from deltafeed.candles.fromtrades import build_candles
from deltafeed.model import Trade
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.kraken import codec as kraken
from deltafeed.venues.kraken import samples


def test_trade_message_batches_trades_with_their_sequential_ids() -> None:
    dec = kraken.StreamDecoder()
    out = dec.decode(samples.TRADE)
    assert out == [
        Trade("MATIC/USD", 4665846, 1695628116925, 0.5147, 6423.46326, False),  # a taker buy
        Trade("MATIC/USD", 4665847, 1695628176925, 0.5147, 1136.19677815, True),  # a taker sell
    ]
    assert not dec.errors


def test_ohlc_is_keyed_on_interval_begin_not_its_timestamp_and_is_never_closed() -> None:
    dec = kraken.StreamDecoder()
    [ev] = dec.decode(samples.OHLC)
    assert ev.timeframe == "5m"  # type: ignore[union-attr]
    c = ev.candle  # type: ignore[union-attr]
    assert c.open_time == kraken.rfc3339_ms("2023-10-04T16:25:00Z")  # not 16:30, the doc's "timestamp"
    assert (c.open, c.high, c.low, c.close, c.volume, c.trades) == (0.5624, 0.5628, 0.5622, 0.5627, 30927.68066226, 12)
    assert not c.closed and not c.final


def test_acks_heartbeats_status_and_pongs_are_no_skips() -> None:
    dec = kraken.StreamDecoder()
    for frame in (samples.ACK, samples.HEARTBEAT, samples.STATUS, samples.PONG):
        assert dec.decode(frame) == []
    assert not dec.errors and dec.heartbeats == 1 and dec.acks == 3


def test_a_refused_subscription_names_symbol_and_reason_and_is_counted_by_kind() -> None:
    dec = kraken.StreamDecoder()
    assert dec.decode(samples.REFUSED) == [] and dec.decode(samples.REFUSED) == []
    assert dec.refusals[0] == kraken.Refusal("subscribe", "NOPE/USD", "Currency pair not supported")
    assert dec.venue_errors == {"Currency pair not supported": 2}
    assert dec.errors == {"venue_error": 2}


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (b"<html>502 Bad Gateway</html>", "malformed"),
        (samples.TRADE[:40], "malformed"),
        (b"[1,2]", "malformed"),
        (b'{"channel":"trade","type":"update","data":[{"symbol":"A/B"}]}', "bad_field"),
        (samples.TRADE.replace(b'"trade_id":4665846', b'"trade_id":-1'), "bad_field"),
        (samples.TRADE.replace(b"2023-09-25T07:48:36.925533Z", b"yesterday"), "bad_field"),
        (samples.TRADE.replace(b'"qty":6423.46326', b'"qty":0'), "impossible_value"),
        (samples.OHLC.replace(b'"low":0.5622', b'"low":-1'), "impossible_value"),
        (b'{"channel":"tickerz","data":[]}', "unknown_channel"),
        (b'{"foo":1}', "unknown_frame"),
    ],
)
def test_bad_frames_are_counted_by_kind_and_skipped(frame: bytes, kind: str) -> None:
    dec = kraken.StreamDecoder()
    assert dec.decode(frame) in ([], [Trade("MATIC/USD", 4665847, 1695628176925, 0.5147, 1136.19677815, True)])
    assert dec.errors == {kind: 1}, dec.errors


def test_a_price_beyond_float_range_refuses_that_trade_only() -> None:
    dec = kraken.StreamDecoder()
    out = dec.decode(samples.TRADE.replace(b'"price":0.5147,"qty":6423', b'"price":1e400,"qty":6423'))
    assert [t.trade_id for t in out] == [4665847]  # type: ignore[union-attr]
    assert dec.errors == {"impossible_value": 1}


def test_rest_ohlc_rows_are_closed_as_its_last_says_else_by_the_clock() -> None:
    rows = kraken.decode_ohlc(samples.OHLC_BODY, 60_000)  # "last" (1688672160) is past both rows
    assert [(c.open_time, c.close, c.volume, c.trades, c.closed) for c in rows] == [
        (1688671200_000, 30305.7, 3.39243896, 23, True),
        (1688671260_000, 30300.0, 4.42996871, 18, True),
    ]
    forming = samples.OHLC_BODY.replace(b'"last":1688672160', b'"last":1688671200')
    assert [c.closed for c in kraken.decode_ohlc(forming, 60_000)] == [True, False]
    no_last = samples.OHLC_BODY.replace(b',"last":1688672160', b"")
    assert [c.closed for c in kraken.decode_ohlc(no_last, 60_000, 1688671290_000)] == [True, False]


def test_rest_trades_with_nanosecond_last_and_exact_times() -> None:
    trades, last = kraken.decode_trades(samples.TRADES_BODY)
    assert last == 1688671969993150842
    assert [(t.trade_id, t.time_ms, t.price, t.qty, t.buyer_maker) for t in trades] == [
        (61044952, 1688669597827, 30243.4, 0.34507674, False),
        (61044953, 1688669598280, 30243.3, 0.0037696, True),
    ]
    old = b'{"error":[],"result":{"XXBTZUSD":[["30243.4","0.5",1688669597.8277,"b","m",""]],"last":"1"}}'
    assert kraken.decode_trades(old)[0][0].trade_id == -1  # the old 6-element rows


def test_rest_error_arrays_raise_and_say_whether_they_throttle() -> None:
    with pytest.raises(kraken.KrakenError) as info:
        kraken.decode_ohlc(samples.ERROR_BODY, 60_000, 0)
    assert info.value.errors == ["EQuery:Unknown asset pair"] and not info.value.throttled
    err = kraken.error_of(kraken.error_body("EGeneral:Too many requests"))
    assert err is not None and err.throttled
    with pytest.raises(kraken.BadAnswer):
        kraken.decode_ohlc(b"<html>", 60_000, 0)
    bad = samples.OHLC_BODY.replace(b'"30305.7","30305.7"', b'"30305.7","NaN"')
    with pytest.raises(kraken.BadAnswer):
        kraken.decode_ohlc(bad, 60_000, 0)


def test_time_and_asset_pairs_name_v2_symbols_and_rest_altnames() -> None:
    assert kraken.decode_time(samples.TIME_BODY) == 1688669448_000
    assert kraken.decode_asset_pairs(samples.PAIRS_BODY) == {"BTC/USD": "XBTUSD"}
    assert kraken.rest_names("BTC/USD") == ("XBTUSD", "XXBTZUSD")
    assert kraken.rest_names("ETH/EUR") == ("ETHEUR", "XETHZEUR")
    assert kraken.rest_names("SOL/USD") == ("SOLUSD", "SOLUSD")
    assert kraken.v2_name("XDG/USD") == "DOGE/USD"


def test_requests_are_what_ws_v2_and_rest_take() -> None:
    sub = msgspec.json.decode(kraken.subscribe("trade", ["BTC/USD"], 3, snapshot=True))
    assert sub == {
        "method": "subscribe",
        "params": {"channel": "trade", "symbol": ["BTC/USD"], "snapshot": True},
        "req_id": 3,
    }
    assert kraken.trades_query("XBTUSD", 1688671969993150842) == (
        "/0/public/Trades?pair=XBTUSD&since=1688671969993150842&count=1000"
    )
    assert kraken.ohlc_query("XBTUSD", 5) == "/0/public/OHLC?pair=XBTUSD&interval=5"


def test_encoders_round_trip_through_the_decoder() -> None:
    item = kraken.trade_item("BTC/USD", 7, 1794582000123, 60000.5, 0.0123, True)
    [t] = kraken.StreamDecoder().decode(kraken.trade_message([item]))
    assert t == Trade("BTC/USD", 7, 1794582000123, 60000.5, 0.0123, True)


def test_candles_from_trades_fill_quiet_intervals_flat_and_close_by_the_venue_clock() -> None:
    t0 = 1794582000000
    trades = [Trade("", 1, t0 + 1000, 10.0, 1.0, False), Trade("", 2, t0 + 2000, 12.0, 2.0, True)]
    out = build_candles(trades, 60_000, t0, t0 + 180_000, t0 + 120_000)
    assert [(c.open_time - t0, c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed) for c in out] == [
        (0, 10.0, 12.0, 10.0, 12.0, 3.0, 2, True),
        (60_000, 12.0, 12.0, 12.0, 12.0, 0.0, 0, True),
        (120_000, 12.0, 12.0, 12.0, 12.0, 0.0, 0, False),
    ]


def test_book_checksum_follows_the_documented_steps() -> None:
    # book-checksum-v2: "45285.2" -> "452852", "0.00100000" -> "100000": the level reads "452852100000".
    import zlib

    assert kraken.book_checksum([("45285.2", "0.00100000")], []) == zlib.crc32(b"452852100000")
    asks = [(f"{100 + i}.10", "0.50000") for i in range(12)]  # only the top 10 count
    bids = [(f"{99 - i}.90", "0.00100") for i in range(12)]
    text = "".join(f"{100 + i}10" + "50000" for i in range(10)) + "".join(f"{99 - i}90" + "100" for i in range(10))
    assert kraken.book_checksum(asks, bids) == zlib.crc32(text.encode()) & 0xFFFFFFFF


def test_book_snapshot_of_the_checksum_guide_decodes_and_checks() -> None:
    d = kraken.StreamDecoder()
    [snap] = d.decode(samples.DOC_BOOK_SNAPSHOT)
    assert isinstance(snap, BookMsg) and snap.snapshot and snap.symbol == "BTC/USD"
    assert (snap.key, snap.checksum) == (-1, samples.DOC_BOOK_CHECKSUM)  # no timestamp on this snapshot
    assert snap.bids[0] == (45283.5, 0.1) and snap.asks[-1] == (45299.5, 0.18772827)
    # The guide's value, from the levels written at the pair's precisions (price 1, qty 8 decimals).
    asks = [(f"{p:.1f}", f"{q:.8f}") for p, q in snap.asks]
    bids = [(f"{p:.1f}", f"{q:.8f}") for p, q in snap.bids]
    assert kraken.book_checksum(asks, bids) == samples.DOC_BOOK_CHECKSUM
    assert not d.errors


def test_book_update_is_keyed_by_its_timestamp() -> None:
    [up] = kraken.StreamDecoder().decode(samples.DOC_BOOK_UPDATE)
    assert up == BookMsg(
        "MATIC/USD", False, [(0.5657, 1098.3947558)], [], 1696613755440295, 1696613755440, -1, 2114181697
    )


@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        (samples.NAN_BOOK, "impossible_value"),
        (samples.DOC_BOOK_UPDATE.replace(b'"checksum":2114181697', b'"checksum":"x"'), "bad_field"),
        (samples.DOC_BOOK_UPDATE.replace(b"55.440295Z", b"55.4402x5Z"), "bad_field"),
    ],
)
def test_an_unusable_book_message_breaks_its_book(frame: bytes, kind: str) -> None:
    d = kraken.StreamDecoder()
    out = d.decode(frame)
    assert [(b.symbol, b.broken) for b in out if isinstance(b, BookMsg)] == [("MATIC/USD", True)]
    assert d.errors == {kind: 1}


def test_book_message_round_trips() -> None:
    raw = kraken.book_message(
        "BTC/USD", False, [("100.5", "0.00000000")], [("101.0", "2.50000000")], 7, 1_700_000_000_000_001
    )
    assert kraken.StreamDecoder().decode(raw) == [
        BookMsg("BTC/USD", False, [(100.5, 0.0)], [(101.0, 2.5)], 1_700_000_000_000_001, 1_700_000_000_000, -1, 7)
    ]


def test_pair_precisions_and_the_feed_checksum_of_the_guide_book() -> None:
    from deltafeed.books import L2Book
    from deltafeed.venues.kraken.book import book_depth, checksum

    assert kraken.decode_pair_precisions(samples.PAIRS_BODY) == {"BTC/USD": (1, 8)}
    [snap] = kraken.StreamDecoder().decode(samples.DOC_BOOK_SNAPSHOT)
    assert isinstance(snap, BookMsg)
    book = L2Book(10)
    book.update(snap.bids, snap.asks)
    assert checksum(book, 1, 8) == samples.DOC_BOOK_CHECKSUM
    book.update([(45283.5, 0.2)], [])  # one qty changed: another checksum
    assert checksum(book, 1, 8) != samples.DOC_BOOK_CHECKSUM
    assert [book_depth(n) for n in (1, 10, 11, 100, 101, 5000)] == [10, 10, 25, 100, 500, 1000]
