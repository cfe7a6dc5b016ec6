"""The IB codec (sans-I/O) with the message layouts of PROTOCOLS-wave2.md §5, IB's pacing rules as
:class:`Pacer` applies them, and the CME Globex calendar."""

from __future__ import annotations

import datetime as dt
import struct

import pytest

from deltafeed.candles.calendar import CALENDARS, calendar_for
from deltafeed.model import BadInput
from deltafeed.venues.ib import codec, tws_address
from deltafeed.venues.ib.pacing import Pacer


def utc(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)


def body(*fields: object) -> list[str]:
    """What the framer yields for a message of ``fields``."""
    [msg] = list(codec.Framer().feed(codec.frame(fields)))
    return msg


def test_framing_is_a_big_endian_length_then_nul_ended_fields() -> None:
    data = codec.frame([71, 2, 17, ""])
    assert data == struct.pack(">I", 9) + b"71\x002\x0017\x00\x00"
    framer = codec.Framer()
    # Cut anywhere, the messages come out whole and in order.
    stream = codec.frame(["176", "20260101 12:00:00 EST"]) + codec.frame([9, 1, 1]) + codec.frame([15, 1, "DU1"])
    got = [m for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])]
    assert got == [["176", "20260101 12:00:00 EST"], ["9", "1", "1"], ["15", "1", "DU1"]]
    with pytest.raises(codec.ProtocolError):
        list(codec.Framer().feed(struct.pack(">I", codec.MAX_MESSAGE + 1)))


def test_handshake_offers_ib_async_s_version_range() -> None:
    hs = codec.handshake()
    assert hs[:4] == b"API\0" and hs[8:] == b"v157..178"
    assert codec.parse_client_versions(hs[8:]) == (157, 178)
    assert codec.parse_client_versions(b"v176 +PACEAPI") == (176, 176)


def test_the_first_message_is_the_two_field_hello_then_the_ready_pair() -> None:
    dec = codec.Decoder()
    assert dec.decode(["176", "20260101 12:00:00 EST"]) == codec.ServerHello(176, "20260101 12:00:00 EST")
    assert dec.decode(body(9, 1, 42)) == codec.NextValidId(42)
    assert dec.decode(body(15, 1, "DU123,DU456")) == codec.ManagedAccounts(["DU123", "DU456"])
    fresh = codec.Decoder()
    assert fresh.decode(body(9, 1, 42)) is None and fresh.errors["malformed"] == 1  # no hello first


def test_historical_data_17_and_its_update_90_in_their_different_orders() -> None:
    dec = codec.Decoder()
    dec.server_version = codec.SERVER_VERSION
    t = utc(2026, 11, 11, 15) // 1000
    h = dec.decode(body(17, 3, "a", "b", 1, t, "10.5", "11", "10", "10.75", "300", "10.6", 7))
    assert isinstance(h, codec.HistoricalData) and h.req_id == 3
    [c] = h.bars
    assert (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades) == (t * 1000, 10.5, 11, 10, 10.75, 300, 7)
    # 90: reqId, barCount, date, open, CLOSE, HIGH, LOW, average, volume.
    u = dec.decode(body(90, 3, 7, t, "10.5", "10.75", "11", "10", "10.6", "300"))
    assert isinstance(u, codec.HistoricalUpdate) and u.bar == c
    # MIDPOINT bars: IB's -1 volume and count are "none".
    m = dec.decode(body(17, 4, "a", "b", 1, t, "1.1", "1.2", "1.0", "1.15", -1, -1, -1))
    assert isinstance(m, codec.HistoricalData) and (m.bars[0].volume, m.bars[0].trades) == (0.0, 0)
    # The replica's encoders are the decoder's inverse.
    again = dec.decode(body(90, *codec.update_fields(3, c, 10.6, False)[1:]))
    assert isinstance(again, codec.HistoricalUpdate) and again.bar == c


def test_ticks_and_their_bad_values_are_counted_not_raised() -> None:
    dec = codec.Decoder()
    dec.server_version = codec.SERVER_VERSION
    assert dec.decode(body(99, 1, 2, 1767268800, "185.25", "100", 0, "NASDAQ", "")) == codec.TickLast(
        1, 1767268800000, 185.25, 100.0
    )
    assert dec.decode(body(99, 2, 3, 1767268800, "1.08765", "1.0877", "1", "2", 0)) == codec.TickBidAsk(
        2, 1767268800000, 1.08765, 1.0877, 1.0, 2.0
    )
    assert dec.decode(body(99, 1, 2, 1767268800, "nan", "-5", 0, "", "")) is None
    assert dec.decode(body(99, 1, 2, "x")) is None
    assert dec.decode(body(12345, 1)) is None
    assert dec.errors == {"impossible_value": 1, "bad_field": 1, "unknown_message": 1}


def test_error_messages() -> None:
    dec = codec.Decoder()
    dec.server_version = codec.SERVER_VERSION
    assert dec.decode(body(4, 2, 7, 162, "pacing violation", "")) == codec.ErrorMsg(7, 162, "pacing violation")


@pytest.mark.parametrize(
    ("name", "sec_type", "symbol", "exchange", "currency", "last"),
    [
        ("EUR.USD", "CASH", "EUR", "IDEALPRO", "USD", ""),
        ("AAPL", "STK", "AAPL", "SMART", "USD", ""),
        ("ES.202703", "FUT", "ES", "CME", "USD", "202703"),
        ("CL.20270320", "FUT", "CL", "NYMEX", "USD", "20270320"),
    ],
)
def test_instrument_names_are_contracts(
    name: str, sec_type: str, symbol: str, exchange: str, currency: str, last: str
) -> None:
    c = codec.contract_for(name)
    assert (c.sec_type, c.symbol, c.exchange, c.currency, c.last_trade) == (sec_type, symbol, exchange, currency, last)
    assert c.name == name and c.quotes == (sec_type == "CASH")
    assert codec.contract_from_fields([str(f) for f in c.fields()]).name == name


def test_exchange_and_currency_come_from_the_settings() -> None:
    c = codec.contract_for("SAP", {"SAP": "IBIS"}, {"SAP": "EUR"})
    assert (c.exchange, c.currency) == ("IBIS", "EUR")
    with pytest.raises(BadInput, match=r"\[venues.ib\] exchange"):
        codec.contract_for("XX.202703")
    with pytest.raises(BadInput, match="write a stock as AAPL"):
        codec.contract_for("a b!")
    assert tws_address("tws://10.0.0.2:4002") == ("10.0.0.2", 4002)
    with pytest.raises(BadInput, match=r"tws://127\.0\.0\.1:7497"):
        tws_address("http://x:1")


def test_times_and_durations() -> None:
    t = utc(2026, 11, 11, 15, 4, 5)
    assert codec.end_datetime(t) == "20261111-15:04:05"
    assert codec.parse_end_datetime("20261111-15:04:05", 0) == t
    assert codec.parse_end_datetime("20261111 15:04:05 UTC", 0) == t  # ib_async's spelling
    assert codec.parse_end_datetime("20261111 10:04:05 US/Eastern", 0) == t
    assert codec.parse_end_datetime("", 123) == 123
    with pytest.raises(ValueError):
        codec.parse_end_datetime("20261111 15:04:05", 0)
    assert codec.duration_str(1800) == "1800 S" and codec.duration_str(86_401) == "2 D"
    assert codec.duration_s("2 D") == 172_800 and codec.duration_s("1 W") == 604_800


def test_pacer_keeps_ibs_three_small_bar_rules() -> None:
    p = Pacer(max_per_10min=60, max_per_contract_2s=5, min_gap_s=0.0)
    # No identical request within 15 s.
    p.record(0.0, "k", "c", True)
    assert p.delay(1.0, "k", "c", True) == pytest.approx(14.0)
    # Five for one contract within 2 s, the sixth waits.
    for i in range(1, 5):
        assert p.delay(0.1 * i, f"k{i}", "c", True) == 0
        p.record(0.1 * i, f"k{i}", "c", True)
    assert p.delay(0.5, "k5", "c", True) == pytest.approx(1.5)
    assert p.delay(0.5, "k5", "other", True) == 0
    # Sixty in ten minutes.
    q = Pacer(max_per_10min=60, max_per_contract_2s=5, min_gap_s=0.0)
    for i in range(60):
        q.record(i * 3.0, f"r{i}", f"c{i}", True)
    assert q.delay(180.0, "new", "cn", True) == pytest.approx(420.0)
    # Longer bars: only the polite gap.
    assert Pacer(min_gap_s=0.05).delay(0.0, "k", "c", False) == 0


def test_a_share_of_the_pacer_keeps_that_fraction_of_ibs_rules() -> None:
    """Two collectors sharing one TWS session, each with half: 30 in ten minutes each, 60 together."""
    q = Pacer(max_per_10min=60, max_per_contract_2s=5, min_gap_s=0.1)
    q.share(0.5)
    assert (q.max_per_10min, q.max_per_contract_2s, q.min_gap_s) == (30, 2, 0.2)
    for i in range(30):
        q.record(i * 3.0, f"r{i}", f"c{i}", True)
    assert q.delay(90.0, "new", "cn", True) == pytest.approx(510.0)
    q.share(1.0)
    assert q.delay(90.0, "new", "cn", True) == 0


def test_cme_globex_week_with_its_daily_break() -> None:
    cal = CALENDARS["cme_globex"]
    # November 2026 is EST (UTC-5): 17:00 New York is 22:00 UTC.
    assert cal.is_open(utc(2026, 11, 11, 21, 59)) and not cal.is_open(utc(2026, 11, 11, 22, 30))
    assert cal.is_open(utc(2026, 11, 11, 23, 0))
    assert not cal.is_open(utc(2026, 11, 14, 12)) and not cal.is_open(utc(2026, 11, 15, 22, 59))
    assert cal.is_open(utc(2026, 11, 15, 23, 0))  # Sunday 18:00
    assert cal.next_open(utc(2026, 11, 13, 22)) == utc(2026, 11, 15, 23)
    assert not calendar_for("cme_globex", holidays=["2026-11-26"]).is_open(utc(2026, 11, 26, 15))
