"""Alpaca's codec against the verbatim frames of its docs (PROTOCOLS-wave2.md section 6), in JSON and
msgpack, and the REST bars bodies."""

from __future__ import annotations

import msgspec
import pytest

from deltafeed.candles.quotes import candles_from_quotes
from deltafeed.model import BadInput, Candle, Quote, Trade, timeframe
from deltafeed.venues.alpaca import AlpacaSettings, check_settings, codec, samples
from deltafeed.venues.alpaca.feed import poll_capacity, poll_cost


def test_trade_frame_decodes_to_a_trade_at_its_event_time() -> None:
    dec = codec.StreamDecoder()
    [t] = dec.decode(samples.TRADE) or []
    assert t == Trade("AAPL", 96921, codec.iso_ms("2021-02-22T15:51:44.208Z"), 126.55, 1.0, False)
    assert not dec.errors


def test_msgpack_trade_with_a_timestamp_extension_equals_the_json_one() -> None:
    dec = codec.StreamDecoder()
    assert dec.decode(samples.TRADE_MSGPACK, binary=True) == dec.decode(samples.TRADE)
    assert not dec.errors


def test_bars_updated_bars_and_control_messages() -> None:
    dec = codec.StreamDecoder()
    [b] = dec.decode(samples.BAR) or []
    [u] = dec.decode(samples.UPDATED_BAR) or []
    assert isinstance(b, codec.BarEvent) and isinstance(u, codec.BarEvent)
    assert (b.kind, u.kind) == ("b", "u")
    assert b.candle.open_time == codec.iso_ms("2024-07-24T07:56:00Z")
    assert (b.candle.high, b.candle.trades, b.candle.final) == (136.0, 16, False)
    [err] = dec.decode(samples.ERROR_406) or []
    assert err == codec.Control("error", msg="connection limit exceeded", code=406)
    [sub] = dec.decode(samples.SUBSCRIPTION) or []
    assert isinstance(sub, codec.Control) and sub.subs is not None and sub.subs["trades"] == ["AAPL"]
    assert not dec.errors


def test_quotes_in_json_and_msgpack_and_a_bad_one_counted() -> None:
    dec = codec.StreamDecoder()
    # The documented stock quote (real-time-stock-pricing-data): exchange, sizes and conditions beside bid and ask.
    [q] = dec.decode(samples.QUOTE) or []
    assert q == Quote("AMD", codec.iso_ms("2021-02-22T15:51:45.335689322Z"), 87.66, 87.68, 1.0, 4.0)
    for crypto in (False, True):
        sym = "BTC/USD" if crypto else "AAPL"
        msgs = [codec.quote_msg(sym, 1_700_000_000_123, 101.25, 101.27, 3.5, crypto)]
        for mp in (False, True):
            assert codec.StreamDecoder().decode(codec.encode_frame(msgs, mp), binary=mp) == [
                Quote(sym, 1_700_000_000_123, 101.25, 101.27, 3.5, 3.5)
            ]
    bad = [
        b'[{"T":"q","S":"AAPL","bp":0,"ap":1.5,"t":"2021-02-22T15:51:45Z"}]',  # no bid: impossible
        b'[{"T":"q","S":"AAPL","bp":"x","ap":1.5,"t":"2021-02-22T15:51:45Z"}]',  # mistyped
        b'[{"T":"q","S":"AAPL","ap":1.5,"t":"2021-02-22T15:51:45Z"}]',  # missing
    ]
    for frame in bad:
        assert dec.decode(frame) == []
    assert (dec.errors["impossible_value"], dec.errors["bad_field"]) == (1, 2)
    assert codec.StreamDecoder().decode(msgspec.msgpack.encode([{"T": "q", "S": "AAPL", "bp": 2.0}]), binary=True) == []


def test_rest_quotes_body_and_candles_from_it() -> None:
    t0 = 1_700_000_040_000  # a minute mark
    rows = [(t0 + 5, 10.0, 10.02), (t0 + 9, 10.01, 10.03), (t0 + 8, 9.0, 9.1), (t0 + 61_000, 10.05, 10.04),
            (t0 + 62_000, 10.04, 10.06)]  # fmt: skip
    body = codec.quotes_body({"AAPL": [codec.quote_msg("AAPL", t, b, a, 100.0, False) for t, b, a in rows]}, "tok")
    got, token = codec.decode_quotes(body)
    assert token == "tok" and [(q.time_ms, q.bid, q.ask) for q in got["AAPL"]] == rows
    # The older quote and the crossed one are left out, as the stream's router leaves them out.
    bid = candles_from_quotes(got["AAPL"], "bid", timeframe("1m"), t0 + 60_000)
    assert bid == [
        Candle(t0, 10.0, 10.01, 10.0, 10.01, 2.0, 2, True),
        Candle(t0 + 60_000, 10.04, 10.04, 10.04, 10.04, 1.0, 1, False),
    ]
    ask = candles_from_quotes(got["AAPL"], "ask", timeframe("1m"), t0 + 120_000)
    assert [(c.open, c.high, c.close, c.closed) for c in ask] == [
        (10.02, 10.03, 10.03, True),
        (10.06, 10.06, 10.06, True),
    ]
    with pytest.raises(codec.BadAnswer):
        codec.decode_quotes(b'{"quotes": {"AAPL": [{"t": "yesterday", "bp": 1, "ap": 2}]}}')


def test_a_bad_message_is_counted_and_the_rest_of_the_frame_kept() -> None:
    dec = codec.StreamDecoder()
    frame = b'[{"T":"t","i":1,"S":"AAPL","p":-1,"s":1,"t":"2021-02-22T15:51:44Z"},' + samples.BAR[1:]
    out = dec.decode(frame) or []
    assert [type(e) for e in out] == [codec.BarEvent]
    assert dec.errors["impossible_value"] == 1
    assert dec.decode(b"<html>502</html>") is None and dec.errors["malformed"] == 1
    assert dec.decode(b'[{"T":"zz"}]') == [] and dec.errors["unknown_message"] == 1


def test_encoded_frames_decode_back_in_both_encodings() -> None:
    msgs = [codec.trade_msg("BTC/USD", 7, 1_700_000_000_123, 60000.5, 0.25, True, True)]
    for mp in (False, True):
        [t] = codec.StreamDecoder().decode(codec.encode_frame(msgs, mp), binary=mp) or []
        assert t == Trade("BTC/USD", 7, 1_700_000_000_123, 60000.5, 0.25, True)


def test_daily_bars_in_both_encodings_and_each_kinds_day() -> None:
    # 2026-03-08 05:00Z is midnight in New York; clocks go forward that night: a 23-hour stock day.
    day = Candle(1772946000000, 101.5, 103.0, 99.25, 102.0, 1234.5, 321, True)
    for mp in (False, True):
        [d] = (
            codec.StreamDecoder().decode(codec.encode_frame([codec.bar_msg("d", "AAPL", day, 101.7)], mp), binary=mp)
            or []
        )
        assert isinstance(d, codec.BarEvent) and (d.kind, d.symbol, d.candle, d.vwap) == ("d", "AAPL", day, 101.7)
    assert (codec.day_of("AAPL"), codec.day_of("BTC/USD")) == ("1d-new_york", "1d")
    assert codec.serves("AAPL", "1d-new_york") and not codec.serves("AAPL", "1d") and codec.serves("AAPL", "1h")
    assert codec.serves("BTC/USD", "1d") and not codec.serves("BTC/USD", "1d-new_york")
    body = codec.bars_body({"AAPL": [(day, 101.7)]}, None)
    bars, _ = codec.decode_bars(body, timeframe("1d-new_york"), day.open_time + 23 * 3_600_000 + codec.SETTLE_MS)
    assert bars["AAPL"][0].closed  # the day lasted 23 h (a 24 h grid would still wait)
    with pytest.raises(codec.BadAnswer, match="1d grid"):
        codec.decode_bars(body, timeframe("1d"), 2**50)  # 05:00Z is no UTC midnight
    sub = codec.decode_action(
        codec.action("subscribe", {"trades": ["AAPL"], "dailyBars": ["AAPL"], "bars": []}, msgpack=True), msgpack=True
    )
    assert sub == {"action": "subscribe", "trades": ["AAPL"], "dailyBars": ["AAPL"]}


def test_rest_bars_multi_and_single_and_settling() -> None:
    bars, token = codec.decode_bars(samples.REST_BARS, timeframe("1m"), 2**50)
    assert token is None and [c.trades for c in bars["AAPL"]] == [105] and bars["AAPL"][0].closed
    t = codec.iso_ms("2021-02-01T16:01:00Z")
    # Not settled until 30 s (and a margin) after the next minute mark.
    unsettled, token = codec.decode_bars(samples.REST_BARS_SINGLE, timeframe("1m"), t + 60_000 + 30_000)
    assert token and not unsettled["AAPL"][0].closed
    path = codec.bars_path(["BTC/USD"], "1m", t, None)
    assert path.startswith("/v1beta3/crypto/us/bars?symbols=BTC%2FUSD&timeframe=1Min&start=2021-02-01T16:01:00Z")
    assert msgspec.json.decode(codec.error_body("x"))["message"] == "x"


def test_poll_budget_arithmetic() -> None:
    # At 60 s, 1m and 5m cost 1 + 1/5 requests a minute per batch of 100 symbols.
    assert poll_cost([10, 1], ["1m", "5m"], 60.0) == 2 * 1.2
    assert poll_capacity(["1m", "5m"], 60.0, 100.0) == 83 * 100
    assert poll_capacity(["1m"], 1.0, 59.0) == 0


def test_actions_in_both_encodings_and_the_encoding_setting() -> None:
    # The docs' auth message; alpaca-py sends the same map msgpack-packed on a msgpack connection.
    want = {"action": "auth", "key": "{KEY_ID}", "secret": "{SECRET_KEY}"}
    assert msgspec.json.decode(codec.auth("{KEY_ID}", "{SECRET_KEY}")) == want
    assert msgspec.msgpack.decode(codec.auth("{KEY_ID}", "{SECRET_KEY}", msgpack=True)) == want
    sub = codec.action("subscribe", {"trades": ["AAPL"], "bars": ["AAPL"]}, msgpack=True)
    assert codec.decode_action(sub, msgpack=True) == {"action": "subscribe", "trades": ["AAPL"], "bars": ["AAPL"]}
    check_settings(AlpacaSettings(encoding="msgpack"))
    with pytest.raises(BadInput, match=r'encoding = \'xml\'; use "json" or "msgpack"'):
        check_settings(AlpacaSettings(encoding="xml"))
