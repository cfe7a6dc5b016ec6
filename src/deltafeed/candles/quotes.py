"""Builds BID, ASK and MID candles of several timeframes from one instrument's quotes (forex).

FX has no public trade tape, so candles come from the best bid and ask: mid = (bid + ask) / 2, each
side's OHLC from that side's price, and ``volume`` = ``trades`` = the number of quote updates in the
interval (OANDA's "number of prices created"). The rules follow :class:`~deltafeed.candles.aggregator.
CandleBuilder`, with quotes in place of trades:

- A quote lands in the candle its venue timestamp falls in. Quotes carry no ids, so order is by time:
  one older than the last accepted quote is dropped (``out_of_order``); equal times are fine.
- A quote with bid <= 0, ask <= 0, ask < bid or a price that is not finite is refused (``refused``):
  the owner counts it as an impossible value; it neither moves a candle nor the clock.
- Flat candles (no quotes: volume 0, OHLC = previous close) are made only while the market stays open:
  an interval is flat only if it ends no later than the calendar's first close after the last quote.
  Nothing is made over a weekend or holiday; the first candle after the reopening starts from its
  first quote; an interval straddling the close exists only if it had quotes.
- Lost quotes cannot be seen in the data, so the owner says when the stream broke (:meth:`gap`). The
  next quote then reports the candles from the last quote's to its own to ``on_repair`` (one report per
  timeframe covers every side), and no flat candle is made across the break. Start-up is such a break:
  the first quote's candles are reported, since their earlier quotes were not seen.

It is written directly rather than as one CandleBuilder per side fed with made-up trades: those would
allocate a Trade per side per quote, triple the roll bookkeeping and report every repair once per side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from deltafeed.candles.calendar import AlwaysOpen, Calendar
from deltafeed.model import PRICE_SIDES, TIMEFRAMES, BadInput, Candle, Quote, parse_timeframes

QuoteClosedSink = Callable[[str, str, Candle], None]
"""Receives ``(side, timeframe, candle)`` for every candle that became final (closed or flat)."""
QuoteRepairSink = Callable[[str, int, int], None]
"""Receives ``(timeframe, first_open_time, last_open_time)``: candles of every side whose quotes were
not all seen."""

_INF = math.inf


class _Series:
    """One timeframe: the open candle of every side (in ``sides`` order) and what follows them."""

    __slots__ = ("cur", "end", "last_close", "ms", "name", "next_open", "seeded", "slot", "start")

    def __init__(self, name: str, n_sides: int) -> None:
        self.name = name
        self.ms = TIMEFRAMES[name]
        self.cur: list[Candle] | None = None
        # [start, end) of ``cur``; with no open candle start == end == next_open (or 0), so every
        # quote rolls and one older than next_open is recognised as late.
        self.start = 0
        self.end = 0
        # Open time of the candle after the last closed one, and each side's close: what a flat
        # candle is made of. None when no flat candle may follow (start-up, after a break).
        self.next_open: int | None = None
        self.last_close: list[float] | None = None
        # Per side: open time after the last stored candle (seed), where the first repair starts.
        self.seeded: list[int | None] = [None] * n_sides
        self.slot = 0  # where its candles sit in the builder's flat list of open candles


class QuoteCandleBuilder:
    """Quotes in, candles of every configured side and timeframe out, for one instrument.

    ``on_closed(side, timeframe, candle)`` gets each final candle; ``on_repair(timeframe, first, last)``
    the open times of candles to fetch from the venue's history instead. The open candles are live
    objects updated in place (copy to keep).
    """

    def __init__(self, timeframes: list[str], sides: Sequence[str] = ("mid",),
                 on_closed: QuoteClosedSink | None = None, on_repair: QuoteRepairSink | None = None,
                 calendar: Calendar | None = None) -> None:
        sides = tuple(dict.fromkeys(sides))
        if not sides or any(s not in PRICE_SIDES for s in sides):
            raise BadInput(f"unknown price sides {sides!r}; use some of {', '.join(PRICE_SIDES)}")
        timeframes = parse_timeframes(timeframes)  # a BadInput naming the choices, not a KeyError
        # Kept in PRICE_SIDES order, so the quote's (mid, bid, ask) tuple serves all three as is.
        sides = tuple(s for s in PRICE_SIDES if s in sides)
        self.sides: tuple[str, ...] = sides
        self._pick = None if sides == PRICE_SIDES else _picker(tuple(PRICE_SIDES.index(s) for s in sides))
        self._series = [_Series(tf, len(sides)) for tf in timeframes]
        self._by_name = {s.name: s for s in self._series}
        # Every series' open candles side by side, series i at slot i * len(sides): the hot loop's
        # list. A slot holds a closed candle while its series is idle, but every quote rolls an idle
        # series (start == end) before the loop, so the loop never sees one.
        placeholder = Candle(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, True)
        self._open: list[Candle] = [placeholder] * (len(self._series) * len(sides))
        for i, s in enumerate(self._series):
            s.slot = i * len(sides)
        self._on_closed: QuoteClosedSink = on_closed if on_closed is not None else _drop_closed
        self._on_repair: QuoteRepairSink = on_repair if on_repair is not None else _drop_repair
        self.calendar: Calendar = calendar if calendar is not None else AlwaysOpen()
        self.last_quote_ms = -1
        self._broken = True  # start-up: what came before the first quote is unknown
        self._limit_at = -1
        self._limit = 0
        self.quotes = 0
        self.refused = 0
        self.out_of_order = 0
        self.late = 0
        self.gaps = 0

    @property
    def timeframes(self) -> list[str]:
        return [s.name for s in self._series]

    # --- set-up ---------------------------------------------------------------------------------

    def seed(self, side: str, timeframe: str, last_closed: Candle) -> None:
        """``last_closed`` is the last stored candle of ``side``: the first quote's repair report
        starts after it (at the earliest such point over the sides), covering the stretch since.

        Only meaningful before the first quote; later the last quote marks where a repair starts.
        """
        s = self._by_name[timeframe]
        i = self.sides.index(side)
        nxt = last_closed.open_time + s.ms
        prev = s.seeded[i]
        if prev is None or nxt > prev:
            s.seeded[i] = nxt

    # --- quotes ---------------------------------------------------------------------------------

    def on_quote(self, q: Quote) -> bool:
        """Fold one quote into every side and timeframe; False when it was refused or out of order."""
        bid = q.bid
        ask = q.ask
        if not 0.0 < bid <= ask < _INF:  # also false for NaN
            self.refused += 1
            return False
        ts = q.time_ms
        if ts < self.last_quote_ms:
            self.out_of_order += 1
            return False
        self.quotes += 1
        if self._broken:
            self._resync(ts)
        px = ((bid + ask) * 0.5, bid, ask)
        pick = self._pick
        prices = px if pick is None else pick(px)
        whole = True
        for s in self._series:
            if not s.start <= ts < s.end and not self._roll(s, ts, prices):
                whole = False  # late for this timeframe's candles: leave them alone
        # One flat loop over every open candle (series by series, sides in order) with the prices
        # repeated to match: one zip per quote instead of one per timeframe halves the cost.
        # strict=False on purpose: the lengths match by construction and strict costs 0.2 µs.
        if whole:
            todo = zip(self._open, prices * len(self._series), strict=False)
        else:
            todo = zip([c for s in self._series if s.start <= ts < s.end and s.cur for c in s.cur],
                       prices * len(self._series), strict=False)
        for c, p in todo:
            if p > c.high:
                c.high = p
            elif p < c.low:
                c.low = p
            c.close = p
            c.volume += 1.0
            c.trades += 1
        # Only now: while the candles rolled above, the last quote was the one before (flat limit).
        self.last_quote_ms = ts
        return True

    def gap(self) -> None:
        """The stream broke (a reconnect): quotes may be lost between the last one and the next.

        The next quote reports the candles from the last quote's up to its own for repair; until
        then no flat candle is made (a silent stream is not a quiet market).
        """
        if not self._broken:
            self.gaps += 1
            self._broken = True

    def _roll(self, s: _Series, ts: int, prices: tuple[float, ...]) -> bool:
        """Move ``s`` to the candles holding ``ts``; False when ``ts`` is older than the open ones."""
        b = ts - ts % s.ms
        if b < s.start:
            # The timer closed this candle before the quote came (the venue's clock ran ahead of its
            # quotes): it is final here, so the venue's record of it is fetched instead.
            self.late += 1
            self._on_repair(s.name, b, b)
            return False
        self._close_until(s, b)
        s.cur = cur = [Candle(b, p, p, p, p, 0.0, 0, False) for p in prices]
        self._open[s.slot:s.slot + len(cur)] = cur
        s.start = b
        s.end = b + s.ms
        return True

    def _close_until(self, s: _Series, b: int) -> None:
        """Close the open candles and emit flat candles for every empty interval before ``b`` that
        ends before the market closed after the last quote."""
        cur = s.cur
        if cur is not None:
            for side, c in zip(self.sides, cur, strict=True):
                c.closed = True
                self._on_closed(side, s.name, c)
            _idle(s, cur[0].open_time + s.ms, [c.close for c in cur])
        if s.next_open is not None and s.last_close is not None:
            t = s.next_open
            limit = self._flat_limit() - s.ms
            while t < b and t <= limit:
                for side, p in zip(self.sides, s.last_close, strict=True):
                    self._on_closed(side, s.name, Candle(t, p, p, p, p, 0.0, 0, True))
                t += s.ms
            if t != s.next_open:
                _idle(s, t, s.last_close)

    def _flat_limit(self) -> int:
        """Flat candles must end by this time: the first close after the last quote (none at all
        while the stream is broken). Cached per last quote: a quiet weekend costs a comparison a tick."""
        if self._broken or self.last_quote_ms < 0:
            return -1
        p = self.last_quote_ms
        if p != self._limit_at:
            self._limit_at = p
            self._limit = self.calendar.next_close(p)
        return self._limit

    def _resync(self, ts: int) -> None:
        """Quotes before the one at ``ts`` may be missing: report the candles they may belong to."""
        self._broken = False
        last = self.last_quote_ms
        for s in self._series:
            b = ts - ts % s.ms
            if last >= 0:
                first: int | None = last - last % s.ms
            else:  # start-up: everything since the stored candles
                seeded = [x for x in s.seeded if x is not None]
                first = min(seeded) if seeded else None
            if first is None or first > b:
                first = b
            cur = s.cur
            if cur is not None and cur[0].open_time < b:
                for side, c in zip(self.sides, cur, strict=True):
                    c.closed = True
                    self._on_closed(side, s.name, c)
                cur = None
            if cur is None:
                _idle(s, None, None)  # no flat candles across the break: history fills it
            self._on_repair(s.name, first, b)

    # --- time -----------------------------------------------------------------------------------

    def advance(self, now_ms: int) -> None:
        """The venue's clock reads ``now_ms``: close candles that ended and fill quiet intervals
        (only while the market stays open since the last quote, and not while the stream is broken)."""
        if self.last_quote_ms < 0:
            return
        for s in self._series:
            if s.cur is not None and s.end <= now_ms:
                self._close_until(s, s.end)
            if s.cur is None and s.next_open is not None and s.next_open + s.ms <= now_ms:
                self._close_until(s, now_ms - now_ms % s.ms)

    def open_candles(self) -> list[tuple[str, str, Candle]]:
        """``(side, timeframe, candle)`` of the candles still forming (live objects: copy to keep)."""
        return [(side, s.name, c) for s in self._series if s.cur is not None
                for side, c in zip(self.sides, s.cur, strict=True)]

    def open_candle(self, side: str, timeframe: str) -> Candle | None:
        cur = self._by_name[timeframe].cur
        return None if cur is None else cur[self.sides.index(side)]


def _picker(idx: tuple[int, ...]) -> Callable[[tuple[float, float, float]], tuple[float, ...]]:
    """A function from the quote's (mid, bid, ask) to the prices of the built sides, in order."""
    if len(idx) == 1:
        i = idx[0]
        return lambda px: (px[i],)
    j, k = idx  # two sides (all three need no picking)
    return lambda px: (px[j], px[k])


def _idle(s: _Series, next_open: int | None, last_close: list[float] | None) -> None:
    """Leave ``s`` with no open candle, the next one to start at ``next_open``."""
    s.cur = None
    s.start = s.end = next_open or 0
    s.next_open = next_open
    s.last_close = last_close


def _drop_closed(side: str, timeframe: str, candle: Candle) -> None:
    """Default sink: candles nobody asked for."""


def _drop_repair(timeframe: str, first: int, last: int) -> None:
    """Default sink: repairs nobody asked for."""
