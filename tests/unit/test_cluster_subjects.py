"""The cluster's subject names and messages (deltafeed.cluster.subjects): symbol tokens survive every
character NATS gives meaning, subjects parse back, and message ids follow a candle's values and state."""

from __future__ import annotations

import re

import pytest

from deltafeed.cluster import subjects as s
from deltafeed.model import BadInput, Candle, Switch, Trade

AWKWARD = [
    "BTCUSDT",
    "BTC/USDT",
    "BRK.B",
    "ES 2412",
    "A*B",
    "X>Y",
    "EUR_USD@bid",
    "BINANCE:BTCUSDT",
    "100%",
    "~é€",
    "a-b_c",
]


@pytest.mark.parametrize("symbol", AWKWARD)
def test_token_round_trip_and_is_one_plain_token(symbol: str) -> None:
    tok = s.token(symbol)
    assert s.untoken(tok) == symbol
    assert not set(tok) & set(". *>\t/")
    assert tok.isascii()


def test_token_keeps_plain_symbols_readable() -> None:
    assert s.token("BTCUSDT") == "BTCUSDT"
    assert s.token("BTC/USDT") == "BTC%2FUSDT"
    assert s.token("BRK.B") == "BRK%2EB"
    assert s.token("EUR_USD@bid") == "EUR_USD%40bid"


def test_distinct_symbols_get_distinct_tokens() -> None:
    toks = [s.token(x) for x in [*AWKWARD, "BTC%2FUSDT", "BTC.USDT", "BTC_USDT"]]
    assert len(set(toks)) == len(toks)


@pytest.mark.parametrize("symbol", AWKWARD)
def test_subject_parses_back(symbol: str) -> None:
    series = f"binance:{symbol}"
    subj = s.subject("prod-eu", s.CANDLES, series, "1m")
    assert subj.startswith("deltafeed.prod-eu.candles.binance.")
    assert subj.endswith(".1m")
    assert len(subj.split(".")) == 6
    assert s.parse_subject(subj) == ("prod-eu", "candles", series, "1m")
    for kind in (s.TRADES, s.BOOKS, s.SWITCHES):
        assert s.parse_subject(s.subject("c", kind, series)) == ("c", kind, series, None)
    assert s.series_of_key(s.kv_key(series)) == series
    assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", s.kv_key(series))  # what JetStream allows in a key


def test_subject_refuses_what_it_cannot_name() -> None:
    with pytest.raises(ValueError):
        s.subject("c", s.CANDLES, "binance:BTCUSDT")  # candles need a timeframe
    with pytest.raises(ValueError):
        s.subject("c", s.TRADES, "binance:BTCUSDT", "1m")
    with pytest.raises(ValueError):
        s.subject("c", "quotes", "binance:BTCUSDT")
    for bad in ["deltafeed.c.candles.binance.BTCUSDT", "other.c.trades.binance.X", "deltafeed.c.trades.binance.X.1m"]:
        with pytest.raises(ValueError):
            s.parse_subject(bad)


@pytest.mark.parametrize("name", ["", "a.b", "a b", "*", ">", "x" * 65, "ü"])
def test_bad_cluster_names_are_bad_input(name: str) -> None:
    with pytest.raises(BadInput, match="cluster name"):
        s.cluster_name(name)


def test_names_per_cluster() -> None:
    assert s.stream_name("prod") == "DELTAFEED_prod"
    assert s.filter_subject("prod") == "deltafeed.prod.>"
    assert s.filter_subject("prod", s.CANDLES) == "deltafeed.prod.candles.>"
    assert {s.bucket_name("prod", b) for b in s.BUCKETS} == {
        "deltafeed_prod_leases",
        "deltafeed_prod_collectors",
        "deltafeed_prod_budgets",
    }


def test_candle_message_round_trip_and_ids() -> None:
    c = Candle(60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 7, closed=True, final=False)
    m = s.candle_msg("binance:BTC/USDT", "1m", c, source="c1", sent_ms=123)
    data, headers = s.encode(m)
    back = s.decode_candle(data)
    assert back == m and back.candle == c and back.state == "provisional"
    assert headers == {"Nats-Msg-Id": f"binance:BTC/USDT|1m|60000|{m.revision}"}
    # The same candle from another collector, at another time: the same id (JetStream keeps one).
    assert s.candle_msg("binance:BTC/USDT", "1m", c, source="c2", sent_ms=999).msg_id == m.msg_id
    # Final, or corrected: another id.
    final = Candle(60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 7, closed=True, final=True)
    corrected = Candle(60_000, 1.0, 2.0, 0.5, 1.6, 10.0, 7, closed=True, final=True)
    ids = {s.candle_msg("binance:BTC/USDT", "1m", x).msg_id for x in (c, final, corrected)}
    assert len(ids) == 3


def test_malformed_messages_are_value_errors() -> None:
    good = s.encode(s.candle_msg("b:X", "1m", Candle(0, 1, 1, 1, 1, 1, 1)))[0]
    for bad in [b"", b"{", b"[]", b'{"series": 1}', good.replace(b'"final":false', b'"final":true'), good[:-1]]:
        with pytest.raises(ValueError):
            s.decode_candle(bad)


def test_final_is_replaced_only_by_final() -> None:
    prov = s.candle_msg("b:X", "1m", Candle(0, 1, 2, 1, 2, 5, 3, closed=True))
    final = s.candle_msg("b:X", "1m", Candle(0, 1, 2, 1, 2, 5, 3, closed=True, final=True))
    partial = s.candle_msg("b:X", "1m", Candle(0, 1, 1, 1, 1, 1, 1))
    assert s.newer(None, prov) and s.newer(prov, final) and s.newer(final, final)
    assert not s.newer(final, partial) and not s.newer(final, prov)


def test_switch_and_trade_messages_round_trip() -> None:
    sw = s.SwitchMsg(Switch("fx:EUR_USD", 1000, 1500, "oanda:EUR_USD", "ig:EURUSD"), source="c1")
    assert s.decode_switch(s.encode(sw)[0]) == sw
    tr = s.TradeMsg("binance:BTCUSDT", Trade("BTCUSDT", 42, 1000, 1.5, 2.0, True))
    assert s.decode_trade(s.encode(tr)[0]) == tr
    assert s.encode(tr)[1]["Nats-Msg-Id"] == "binance:BTCUSDT|trade|42|1000"
