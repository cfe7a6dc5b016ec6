"""Market calendars: the FX week in New York time across both 2026 daylight-saving switches, holidays,
the edges of is_open / open_between / next_close / next_open exactly at 17:00, and CandleBuilder
making no flat candles while the market is closed."""

from __future__ import annotations

import datetime as dt
import random
from zoneinfo import ZoneInfo

import pytest

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.calendar import (
    CALENDARS,
    NEVER_MS,
    AlwaysOpen,
    Calendar,
    FxCalendar,
    UsEquityCalendar,
    calendar_for,
)
from deltafeed.model import BadInput, Candle, Trade, time_ms
from deltafeed.venues import registry

NY = ZoneInfo("America/New_York")


def utc(text: str) -> int:
    return time_ms(text)  # naive ISO text is UTC


# Weekly opens (Sunday 17:00 New York) and closes (Friday 17:00 New York) in UTC, written out by hand:
# 22:00 under EST, 21:00 under EDT. The US switches on Sun 8 Mar and Sun 1 Nov 2026; Europe's switches
# (29 Mar, 25 Oct) must move nothing.
OPENS = [
    ("2026-03-01T22:00", "EST"),
    ("2026-03-08T21:00", "US switch day: EDT since 02:00"),
    ("2026-03-22T21:00", "EDT"),
    ("2026-03-29T21:00", "EU switch day"),
    ("2026-10-25T21:00", "EU switch back day"),
    ("2026-11-01T22:00", "US switch back day: EST since 02:00"),
]
CLOSES = [  # (close, the reopening two days later, why)
    ("2026-03-06T22:00", "2026-03-08T21:00", "last EST Friday: 47 h closed"),
    ("2026-03-13T21:00", "2026-03-15T21:00", "first EDT Friday"),
    ("2026-03-27T21:00", "2026-03-29T21:00", "before the EU switch"),
    ("2026-04-03T21:00", "2026-04-05T21:00", "after the EU switch"),
    ("2026-10-23T21:00", "2026-10-25T21:00", "before the EU switch back"),
    ("2026-10-30T21:00", "2026-11-01T22:00", "between the switches back: 49 h closed"),
    ("2026-11-06T22:00", "2026-11-08T22:00", "first EST Friday"),
]


@pytest.mark.parametrize(("when", "why"), OPENS)
def test_weekly_open_is_sunday_17_new_york(when: str, why: str) -> None:
    cal = FxCalendar()
    t = utc(when)
    assert not cal.is_open(t - 1), why
    assert cal.is_open(t), why
    assert cal.next_open(t) == t and cal.next_open(t - 1) == t
    assert cal.next_open(t - 36 * 3_600_000) == t  # from Saturday morning
    assert cal.next_close(t - 1) == t - 1  # closed then: the answer is the moment itself
    assert cal.open_between(t - 1, t + 1) and not cal.open_between(t - 3_600_000, t)
    assert cal.open_between(t, t + 1)  # exactly 17:00 is open


@pytest.mark.parametrize(("when", "reopen_at", "why"), CLOSES)
def test_weekly_close_is_friday_17_new_york(when: str, reopen_at: str, why: str) -> None:
    cal = FxCalendar()
    t = utc(when)
    assert cal.is_open(t - 1), why
    assert not cal.is_open(t), why  # exactly 17:00 is closed
    assert cal.next_close(t - 1) == t and cal.next_close(t - 4 * 86_400_000) == t
    assert cal.next_close(t) == t
    assert cal.open_between(t - 1, t) and not cal.open_between(t, t + 86_400_000)
    reopen = utc(reopen_at)
    assert cal.next_open(t) == reopen  # Sunday 17:00 New York, whatever the UTC hour
    assert not cal.open_between(t, reopen) and cal.open_between(t, reopen + 1)


def test_empty_and_reversed_ranges_are_never_open() -> None:
    for cal in (FxCalendar(), AlwaysOpen()):
        t = utc("2026-03-10T12:00")  # a Tuesday, open
        assert not cal.open_between(t, t) and not cal.open_between(t + 1, t)
        assert cal.open_between(t, t + 1)


def test_holiday_closes_the_new_york_calendar_day() -> None:
    cal = FxCalendar()  # 25 Dec and 1 Jan by default; 25 Dec 2026 is a Friday
    start = utc("2026-12-25T05:00")  # 00:00 EST
    assert cal.is_open(start - 1) and not cal.is_open(start)
    assert cal.next_close(utc("2026-12-24T12:00")) == start
    assert cal.next_open(start) == utc("2026-12-27T22:00")  # the week's close falls inside the holiday
    assert not cal.open_between(start, utc("2026-12-27T22:00"))
    assert not cal.is_open(utc("2027-01-01T12:00")) and cal.is_open(utc("2027-01-01T04:59:59.999"))


def test_one_date_and_sunday_holidays() -> None:
    cal = FxCalendar(["2026-07-15", dt.date(2026, 3, 8)])  # a Wednesday (EDT); the US switch Sunday
    a, b = utc("2026-07-15T04:00"), utc("2026-07-16T04:00")  # midnight to midnight, EDT
    assert cal.is_open(a - 1) and not cal.is_open(a) and not cal.is_open(b - 1) and cal.is_open(b)
    assert cal.next_close(utc("2026-07-14T12:00")) == a and cal.next_open(a) == b
    assert not cal.open_between(a, b) and cal.open_between(a, b + 1) and cal.open_between(a - 1, b)
    assert not cal.is_open(utc("2026-07-15T12:00")) and FxCalendar().is_open(utc("2026-07-15T12:00"))
    # A Sunday holiday: the week opens at Monday 00:00 New York instead of Sunday 17:00.
    assert not cal.is_open(utc("2026-03-08T21:00"))
    assert cal.next_open(utc("2026-03-07T00:00")) == utc("2026-03-09T04:00")
    assert FxCalendar([]).is_open(utc("2026-12-25T12:00"))  # no holidays at all
    assert cal.holidays == ["2026-03-08", "2026-07-15"]
    assert FxCalendar().holidays == ["01-01", "12-25"]


def brute_is_open(ms: int, holidays: set[tuple[int, int]]) -> bool:
    """The rule from the definition, one moment at a time, without the calendar's week cache."""
    local = dt.datetime.fromtimestamp(ms / 1000, NY)
    if (local.month, local.day) in holidays:
        return False
    wd = local.weekday()  # Monday 0 .. Sunday 6
    return wd in (0, 1, 2, 3) or (wd == 6 and local.hour >= 17) or (wd == 4 and local.hour < 17)


def test_fx_calendar_agrees_with_the_rule_at_random_moments() -> None:
    rng = random.Random(11)
    cal = FxCalendar()
    lo, hi = utc("2025-01-01T00:00"), utc("2028-01-01T00:00")
    moments = [rng.randrange(lo, hi) for _ in range(20_000)]
    moments += [utc("2026-03-06T22:00") + d for d in (-1, 0, 1)]
    for t in moments:
        assert cal.is_open(t) == brute_is_open(t, {(12, 25), (1, 1)}), t
        c = cal.next_close(t)
        o = cal.next_open(t)
        assert c >= t and o >= t and (c == t) != (o == t)
        assert not cal.is_open(c) and cal.is_open(o)
        if c > t:  # open from t up to the close
            assert cal.is_open(c - 1) and cal.open_between(t, c)
        if o > t:  # closed from t up to the open
            assert not cal.is_open(o - 1) and not cal.open_between(t, o)


def test_always_open_and_registry() -> None:
    cal = AlwaysOpen()
    assert cal.is_open(0) and cal.next_close(123) == NEVER_MS and cal.next_open(123) == 123
    assert registry.get("oanda").calendar_name("EUR_USD") == registry.get("dukascopy").calendar_name("EURUSD") == "fx"
    assert registry.get("binance").calendar_name("BTCUSDT") == "crypto"
    assert calendar_for("fx") is CALENDARS["fx"] and isinstance(CALENDARS["fx"], FxCalendar)
    custom = calendar_for("fx", holidays=["07-03"])  # a Friday in 2026
    assert isinstance(custom, FxCalendar) and custom.holidays == ["01-01", "07-03", "12-25"]  # added to the defaults
    assert custom.is_open(utc("2026-07-02T12:00")) and not custom.is_open(utc("2026-07-03T12:00"))
    assert CALENDARS["fx"].is_open(utc("2026-07-03T12:00"))  # the shared one is untouched
    assert calendar_for("crypto") is CALENDARS["crypto"]
    with pytest.raises(BadInput, match="unknown calendar"):
        calendar_for("nyse")
    with pytest.raises(BadInput, match="no holidays"):
        calendar_for("crypto", holidays=["12-25"])
    for bad in ("12/25", "13-01", "2026-02-30", "christmas"):
        with pytest.raises(BadInput, match="cannot read holiday"):
            FxCalendar([bad])


# --- US stock exchanges ----------------------------------------------------------------------------


def test_us_equity_sessions_follow_new_york_time_across_the_dst_switch() -> None:
    cal = UsEquityCalendar()
    # Friday 6 March 2026 is EST (09:30 = 14:30 UTC, 16:00 = 21:00 UTC); Monday 9 March is EDT (13:30, 20:00).
    assert not cal.is_open(utc("2026-03-06T14:29:59.999")) and cal.is_open(utc("2026-03-06T14:30"))
    assert cal.next_close(utc("2026-03-06T15:00")) == utc("2026-03-06T21:00")
    assert cal.next_open(utc("2026-03-06T21:00")) == utc("2026-03-09T13:30")  # the weekend and the switch
    assert cal.next_close(utc("2026-03-09T13:30")) == utc("2026-03-09T20:00")
    # Every weekday a session of its own: the night between is closed.
    assert cal.next_open(utc("2026-03-10T20:00")) == utc("2026-03-11T13:30")
    assert not cal.open_between(utc("2026-03-10T20:00"), utc("2026-03-11T13:30"))
    assert cal.open_between(utc("2026-03-10T20:00"), utc("2026-03-11T13:31"))
    assert not cal.is_open(utc("2026-03-07T16:00")) and not cal.is_open(utc("2026-03-08T16:00"))  # Sat, Sun


def test_us_equity_holidays_are_closed_and_more_can_be_added() -> None:
    cal = UsEquityCalendar()
    # Thanksgiving, Thursday 26 November 2026: Wednesday's close is followed by Friday's open.
    assert cal.next_open(utc("2026-11-25T21:00")) == utc("2026-11-27T14:30")
    assert not cal.is_open(utc("2026-11-26T15:00"))
    assert not cal.is_open(utc("2026-07-03T15:00"))  # Independence Day observed (the 4th is a Saturday)
    extra = calendar_for("us_equity", holidays=["2026-11-27"])
    assert isinstance(extra, UsEquityCalendar) and extra.next_open(utc("2026-11-25T21:00")) == utc("2026-11-30T14:30")
    assert CALENDARS["us_equity"].is_open(utc("2026-11-27T15:00"))  # the shared one is untouched


def test_finnhub_symbols_get_their_market_calendar() -> None:
    from deltafeed.venues.finnhub import VENUE

    assert {s: VENUE.calendar_name(s) for s in ("OANDA:EUR_USD", "BINANCE:BTCUSDT", "AAPL", "BRK.B", "BMW.DE")} == {
        "OANDA:EUR_USD": "fx",
        "BINANCE:BTCUSDT": "crypto",
        "AAPL": "us_equity",
        "BRK.B": "us_equity",
        "BMW.DE": "crypto",
    }


# --- CandleBuilder with the FX calendar ----------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.closed: dict[str, dict[int, Candle]] = {}
        self.repairs: list[tuple[str, int, int]] = []

    def on_closed(self, tf: str, c: Candle) -> None:
        self.closed.setdefault(tf, {})[c.open_time] = c

    def on_repair(self, tf: str, first: int, last: int) -> None:
        self.repairs.append((tf, first, last))


H = 3_600_000


def run_week(trades: list[Trade], cal: Calendar | None, until: int) -> tuple[CandleBuilder, Recorder]:
    """Trades in, the venue's clock ticking every minute through every silence up to ``until``."""
    rec = Recorder()
    b = CandleBuilder(["1m", "4h", "1d"], rec.on_closed, rec.on_repair, calendar=cal)
    now = trades[0].time_ms
    for t in trades:
        while now + 60_000 < t.time_ms:
            now += 60_000
            b.advance(now)
        b.on_trade(t)
    while now < until:
        now += 60_000
        b.advance(now)
    return b, rec


def test_trades_across_the_weekly_close_make_no_flats_while_closed() -> None:
    close, reopen = utc("2026-03-06T22:00"), utc("2026-03-08T21:00")  # EST Friday, EDT Sunday
    trades = [
        Trade("X", 1, utc("2026-03-06T15:30"), 10.0, 1.0, False),
        Trade("X", 2, utc("2026-03-06T21:58:30"), 11.0, 2.0, False),
        Trade("X", 3, reopen + 5_000, 12.0, 3.0, False),
    ]
    b, rec = run_week(trades, FxCalendar(), utc("2026-03-08T23:00"))
    m1 = rec.closed["1m"]
    assert m1[close - 60_000].row() == (close - 60_000, 11.0, 11.0, 11.0, 11.0, 0.0, 0)  # 21:59 flat: ends at 17:00
    assert m1[utc("2026-03-06T20:00")].trades == 0  # quiet while open: flat as ever
    assert not [t for t in m1 if close <= t < reopen]
    assert m1[reopen].row() == (reopen, 12.0, 12.0, 12.0, 12.0, 3.0, 1)  # from the first trade
    assert sorted(t for t in m1 if t > reopen) == list(range(reopen + 60_000, utc("2026-03-08T23:00"), 60_000))
    # 4h: 12:00 had a trade, 16:00 is flat (ends 20:00, before the close), 20:00 straddles the close and
    # had a trade; nothing on Saturday or Sunday until the trade of Sunday's 20:00 candle, still open.
    assert sorted(rec.closed["4h"]) == [utc("2026-03-06T12:00"), utc("2026-03-06T16:00"), utc("2026-03-06T20:00")]
    assert rec.closed["4h"][utc("2026-03-06T20:00")].row()[1:] == (11.0, 11.0, 11.0, 11.0, 2.0, 1)
    assert b.open_candle("4h") == Candle(utc("2026-03-08T20:00"), 12.0, 12.0, 12.0, 12.0, 3.0, 1, False)
    assert sorted(rec.closed["1d"]) == [utc("2026-03-06T00:00")]  # no Saturday, Sunday still open
    # The same trades with the crypto default: the weekend fills with flats (the control).
    _, crypto = run_week(trades, None, utc("2026-03-08T23:00"))
    assert len([t for t in crypto.closed["1m"] if close <= t < reopen]) == 47 * 60
    assert utc("2026-03-07T00:00") in crypto.closed["1d"]


def test_a_candle_straddling_the_close_is_made_only_with_trades() -> None:
    close = utc("2026-03-13T21:00")  # the first EDT Friday: the close falls inside the 20:00 4h candle
    trades = [Trade("X", 1, utc("2026-03-13T15:30"), 10.0, 1.0, False)]
    _, rec = run_week(trades, FxCalendar(), utc("2026-03-15T20:00"))
    assert sorted(rec.closed["4h"]) == [utc("2026-03-13T12:00"), utc("2026-03-13T16:00")]
    assert max(rec.closed["1m"]) == close - 60_000
    assert sorted(rec.closed["1d"]) == [utc("2026-03-13T00:00")]
