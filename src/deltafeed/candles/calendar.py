"""Market calendars: when a venue is expected to trade, so that a closed market is not a gap.

``crypto`` never closes; ``fx`` is the forex week (Sunday 17:00 to Friday 17:00 New York);
``us_equity`` is the US stock exchanges' regular sessions (09:30 to 16:00 New York, Monday to
Friday). The last two are :class:`WeeklyCalendar` schedules with holidays.

Two things depend on them: the engine does not call a silent closed market stale nor a hole over a
weekend missing, and the candle builders make flat (no-print) candles only while the market is open,
so a weekend never fills with copies of Friday's close.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol
from zoneinfo import ZoneInfo

from deltafeed.model import BadInput

#: "Never" for :meth:`Calendar.next_close` of a market that never closes: later than any real
#: time, yet small enough that adding a timeframe to it stays a plain int comparison.
NEVER_MS = 2**62


class Calendar(Protocol):
    """Says whether data is expected at a moment (epoch ms). Every interval is half-open."""

    name: str

    def is_open(self, time_ms: int) -> bool:
        """Whether the market trades at ``time_ms``."""
        ...

    def open_between(self, start_ms: int, end_ms: int) -> bool:
        """Whether the market is open at any moment of [start_ms, end_ms)."""
        ...

    def next_close(self, time_ms: int) -> int:
        """The first moment >= ``time_ms`` at which the market is closed (``time_ms`` itself when it is
        closed then; :data:`NEVER_MS` for a market that never closes)."""
        ...

    def next_open(self, time_ms: int) -> int:
        """The first moment >= ``time_ms`` at which the market is open (``time_ms`` itself when open)."""
        ...


class AlwaysOpen:
    """Crypto venues trade around the clock, every day of the year."""

    name = "crypto"

    def is_open(self, time_ms: int) -> bool:
        return True

    def open_between(self, start_ms: int, end_ms: int) -> bool:
        return end_ms > start_ms

    def next_close(self, time_ms: int) -> int:
        return NEVER_MS

    def next_open(self, time_ms: int) -> int:
        return time_ms


#: Holidays every FX calendar gets unless told otherwise: ``MM-DD`` repeats every year.
DEFAULT_FX_HOLIDAYS: tuple[str, ...] = ("12-25", "01-01")
#: Full-day closures of the US stock exchanges (NYSE and Nasdaq publish the same list), 2026 and
#: 2027, as observed: a holiday on a Saturday closes the Friday before, on a Sunday the Monday after.
#: The dates move every year, so later years need ``holidays`` from the exchanges' own calendars.
#: Early closes (13:00 on some eves) are not modelled: those afternoons count as open.
DEFAULT_US_EQUITY_HOLIDAYS: tuple[str, ...] = (
    "2026-01-01",
    "2026-01-19",
    "2026-02-16",
    "2026-04-03",
    "2026-05-25",
    "2026-06-19",
    "2026-07-03",
    "2026-09-07",
    "2026-11-26",
    "2026-12-25",
    "2027-01-01",
    "2027-01-18",
    "2027-02-15",
    "2027-03-26",
    "2027-05-31",
    "2027-06-18",
    "2027-07-05",
    "2027-09-06",
    "2027-11-25",
    "2027-12-24",
)

_NY = ZoneInfo("America/New_York")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MS = dt.timedelta(milliseconds=1)
_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
# Weeks are cut at Saturday 12:00 UTC (1970-01-03 was a Saturday). That moment lies inside the
# weekend closure in every season (Friday 17:00 New York is 21:00 or 22:00 UTC, Sunday 17:00 is
# 21:00 or 22:00 UTC), so every such week holds exactly one Sunday-to-Friday session.
_ANCHOR_MS = 2 * _DAY_MS + 12 * 3_600_000
_ANCHOR_DATE = dt.date(1970, 1, 3)
_CACHE_WEEKS = 4096


def _ny_ms(day: dt.date, hour: int, minute: int = 0) -> int:
    """Epoch ms of ``hour:minute`` on ``day`` in New York. Every time a calendar here uses (00:00,
    09:30, 16:00, 17:00) exists exactly once on every day (the US switches daylight saving at 02:00),
    so this never meets a skipped or doubled hour."""
    local = dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=_NY)
    return (local - _EPOCH) // _MS


def _parse_holiday(h: str | dt.date) -> tuple[int, int, int]:
    """``(year, month, day)`` of one holiday, year 0 for an ``MM-DD`` that repeats every year."""
    if isinstance(h, dt.date):
        return h.year, h.month, h.day
    text = h.strip()
    try:
        if len(text) == 5:
            d = dt.date(2000, int(text[:2]), int(text[3:]))  # a leap year, so 02-29 is accepted
            if text[2] != "-":
                raise ValueError(text)
            return 0, d.month, d.day
        d = dt.date.fromisoformat(text)
        return d.year, d.month, d.day
    except ValueError:
        raise BadInput(
            f"cannot read holiday {h!r}; write MM-DD for every year (12-25) or YYYY-MM-DD for one date"
        ) from None


#: A session's edge: (day of the week, 0 Monday ... 6 Sunday; hour; minute), New York time.
Edge = tuple[int, int, int]
MON, TUE, WED, THU, FRI, SUN = 0, 1, 2, 3, 4, 6


class WeeklyCalendar:
    """Sessions that repeat every week in New York time, minus holidays.

    Times are worked out in the New York zone, so an FX week opens at 22:00 UTC under EST and 21:00
    UTC under EDT, switching on the US dates only (Europe switching a few weeks apart moves nothing).
    A session runs from one edge to the next (the FX week is one session, Sunday 17:00 to Friday
    17:00; a stock exchange's week is five). Sessions lie between Sunday and Friday. A holiday closes
    its whole New York calendar day, 00:00 to 24:00 local time: a Friday holiday ends the FX week at
    Thursday midnight, a Sunday one delays its open to Monday 00:00. Holidays are ``MM-DD`` (every
    year), ``YYYY-MM-DD`` or :class:`datetime.date` (one date).

    Speed: the open intervals of each week are computed once and cached, and the constant stretch
    (a session, or a closure) the last answer fell in is kept, so :meth:`is_open` on a clock that
    moves forward costs two comparisons. Safe to share between threads (the GIL makes each cache
    read and write whole), which is why ``CALENDARS`` holds one shared instance of each.
    """

    def __init__(self, name: str, sessions: Iterable[tuple[Edge, Edge]], holidays: Iterable[str | dt.date]) -> None:
        self.name = name
        self._sessions = tuple(sessions)
        for edges in self._sessions:
            if any(day == 5 for day, _, _ in edges):
                raise ValueError("sessions lie between Sunday and Friday")
        parsed = [_parse_holiday(h) for h in holidays]
        self._yearly = frozenset((m, d) for y, m, d in parsed if y == 0)
        self._dates = frozenset(dt.date(y, m, d) for y, m, d in parsed if y != 0)
        self._weeks: dict[int, tuple[tuple[int, int], ...]] = {}
        # The last stretch looked up, (lo, hi, open): [lo, hi) is all open or all closed. One tuple,
        # read and replaced whole, so threads sharing the calendar never see half of an update.
        self._last: tuple[int, int, bool] = (0, 0, False)

    @property
    def holidays(self) -> list[str]:
        """The holidays as given, normalised (``MM-DD`` first, then full dates)."""
        return [f"{m:02d}-{d:02d}" for m, d in sorted(self._yearly)] + sorted(d.isoformat() for d in self._dates)

    def is_holiday(self, day: dt.date) -> bool:
        """Whether the New York calendar day ``day`` is closed all day."""
        return day in self._dates or (day.month, day.day) in self._yearly

    # --- the Calendar protocol ------------------------------------------------------------------

    def is_open(self, time_ms: int) -> bool:
        span = self._last
        if not span[0] <= time_ms < span[1]:
            span = self._last = self._span(time_ms)
        return span[2]

    def open_between(self, start_ms: int, end_ms: int) -> bool:
        return end_ms > start_ms and self.next_open(start_ms) < end_ms

    def next_close(self, time_ms: int) -> int:
        span = self._last
        if not span[0] <= time_ms < span[1]:
            span = self._last = self._span(time_ms)
        return span[1] if span[2] else time_ms

    def next_open(self, time_ms: int) -> int:
        t = time_ms
        give_up = time_ms + 106 * _WEEK_MS  # two years closed: every day is a holiday
        while t < give_up:
            _, hi, is_open = self._span(t)
            if is_open:
                return t
            t = hi
        return NEVER_MS

    # --- the weeks ------------------------------------------------------------------------------

    def _span(self, time_ms: int) -> tuple[int, int, bool]:
        """The stretch [lo, hi) around ``time_ms`` over which the market stays open, or stays closed.

        An open stretch is a whole session (hi is its close); a closed one is cut at the week's edges.
        """
        k = (time_ms - _ANCHOR_MS) // _WEEK_MS
        lo = _ANCHOR_MS + k * _WEEK_MS
        for a, b in self._week(k):
            if time_ms < a:
                return lo, a, False
            if time_ms < b:
                return a, b, True
            lo = b
        return lo, _ANCHOR_MS + (k + 1) * _WEEK_MS, False

    def _week(self, k: int) -> tuple[tuple[int, int], ...]:
        """Open intervals of week ``k`` (Saturday 12:00 UTC onwards), sorted and disjoint."""
        ivs = self._weeks.get(k)
        if ivs is not None:
            return ivs
        saturday = _ANCHOR_DATE + dt.timedelta(weeks=k)

        def at(edge: Edge) -> int:  # the week runs Saturday (0 days after it) to Friday (6)
            day, hour, minute = edge
            return _ny_ms(saturday + dt.timedelta(days=(day - 5) % 7), hour, minute)

        pieces = sorted((at(a), at(b)) for a, b in self._sessions)
        for i in range(1, 7):  # Sunday to Friday
            day = saturday + dt.timedelta(days=i)
            if not self.is_holiday(day):
                continue
            cut_a, cut_b = _ny_ms(day, 0), _ny_ms(day + dt.timedelta(days=1), 0)
            pieces = [(x, y) for a, b in pieces for x, y in ((a, min(b, cut_a)), (max(a, cut_b), b)) if x < y]
        if len(self._weeks) >= _CACHE_WEEKS:
            self._weeks.clear()
        ivs = self._weeks[k] = tuple(pieces)
        return ivs


class FxCalendar(WeeklyCalendar):
    """The forex week: open Sunday 17:00 to Friday 17:00 America/New_York, minus holidays."""

    default_holidays = DEFAULT_FX_HOLIDAYS

    def __init__(self, holidays: Iterable[str | dt.date] = DEFAULT_FX_HOLIDAYS) -> None:
        super().__init__("fx", [((SUN, 17, 0), (FRI, 17, 0))], holidays)


class UsEquityCalendar(WeeklyCalendar):
    """US stock exchanges' regular sessions: 09:30 to 16:00 America/New_York, Monday to Friday,
    minus holidays (:data:`DEFAULT_US_EQUITY_HOLIDAYS` unless told otherwise). Pre- and post-market
    trades still make candles; they are just not expected, so their absence is no gap."""

    default_holidays = DEFAULT_US_EQUITY_HOLIDAYS

    def __init__(self, holidays: Iterable[str | dt.date] = DEFAULT_US_EQUITY_HOLIDAYS) -> None:
        super().__init__("us_equity", [((d, 9, 30), (d, 16, 0)) for d in (MON, TUE, WED, THU, FRI)], holidays)


class CmeGlobexCalendar(WeeklyCalendar):
    """CME Globex futures (equity index, rates, FX, energy, metals): Sunday 18:00 to Friday 17:00
    America/New_York with a daily break from 17:00 to 18:00, minus holidays (by default the days the
    FX calendar closes). Products with other hours (grains, livestock) and the exchange's early
    closes are not modelled: give their closed days in ``holidays``."""

    default_holidays = DEFAULT_FX_HOLIDAYS

    def __init__(self, holidays: Iterable[str | dt.date] = DEFAULT_FX_HOLIDAYS) -> None:
        days = (SUN, MON, TUE, WED, THU)
        super().__init__(
            "cme_globex", [((d, 18, 0), (nxt, 17, 0)) for d, nxt in zip(days, (*days[1:], FRI), strict=True)], holidays
        )


_WEEKLY: dict[str, type[FxCalendar] | type[UsEquityCalendar] | type[CmeGlobexCalendar]] = {
    "fx": FxCalendar,
    "us_equity": UsEquityCalendar,
    "cme_globex": CmeGlobexCalendar,
}
CALENDARS: dict[str, Calendar] = {
    "crypto": AlwaysOpen(),
    "fx": FxCalendar(),
    "us_equity": UsEquityCalendar(),
    "cme_globex": CmeGlobexCalendar(),
}


def calendar_for(name: str, holidays: Iterable[str | dt.date] | None = None) -> Calendar:
    """The calendar called ``name``; with ``holidays``, a new one of that kind closed on those days
    as well as on its default holidays.

    Without holidays the shared instance is returned (its week cache is shared too, which is the point).
    """
    if name not in CALENDARS:
        raise BadInput(f"unknown calendar {name!r}; use one of {', '.join(CALENDARS)}")
    if holidays is None:
        return CALENDARS[name]
    kind = _WEEKLY.get(name)
    if kind is None:
        raise BadInput(f"calendar {name!r} has no holidays; holidays apply to the {' and '.join(_WEEKLY)} calendars")
    return kind([*kind.default_holidays, *holidays])
