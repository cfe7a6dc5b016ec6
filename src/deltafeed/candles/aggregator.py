"""Builds candles of several timeframes at once from one instrument's trades, by venue event time."""

from __future__ import annotations

from collections.abc import Callable

from deltafeed.candles.calendar import AlwaysOpen, Calendar
from deltafeed.model import Candle, Trade, timeframe, timeframe_ms

INF = float("inf")

ClosedSink = Callable[[str, Candle], None]
"""Receives ``(timeframe, candle)`` for every candle that closed (``final`` when the builder can
vouch for it, else provisional), and again for a provisional one the builder later vouches for."""
RepairSink = Callable[[str, int, int], None]
"""Receives ``(timeframe, first_open_time, last_open_time)``: candles whose trades were not all seen."""


class _Series:
    """State of one timeframe: the open candle and what the next candle follows on from."""

    __slots__ = ("cur", "end", "last_close", "name", "next_open", "start", "tf")

    def __init__(self, name: str) -> None:
        self.name = name
        self.tf = timeframe(name)  # its grid: weeks and months are not epoch-aligned multiples
        self.cur: Candle | None = None
        # [start, end) of ``cur``. With no open candle start == end == next_open (or 0): every
        # trade then rolls, and one older than next_open is recognised as late.
        self.start = 0
        self.end = 0
        # Open time of the candle after the last one closed, and that candle's close: what a
        # flat (no-trade) candle is made of. None until something closed or the series was seeded.
        self.next_open: int | None = None
        self.last_close: float | None = None


class CandleBuilder:
    """Trades in, candles out, for every configured timeframe of one instrument.

    Invariants:
    - A trade lands in the candle its venue timestamp falls in; the local clock never decides.
    - Trade ids are consecutive per instrument (Binance guarantees it): an id seen before is a
      duplicate and never counts twice. A jump holds the trade back until the hole fills (a reorder,
      or the overlap of two connections) or the owner calls :meth:`release_held`; then the trades
      are declared lost, and the candles they belong to are reported to ``on_repair`` (and rebuilt
      from the venue's REST history) instead of being trusted. The first trade after start-up is
      such a hole: what came before it is unknown.
    - An interval without trades becomes a flat candle (volume 0, trades 0, OHLC = previous close),
      but only across a stretch where no trade can have been missed, and only while the market stays
      open (``calendar``): an interval is flat only if it ends no later than the first close after the
      last trade. A closed market is not a quiet one, so nothing is made over a weekend or a holiday,
      an interval straddling the close (a 4h or 1d candle) exists only if it had trades, and the first
      candle after the reopening starts from its first trade, not from the close before the weekend.
    - A candle closes when a trade or a venue candle shows time has passed its end, or when
      :meth:`advance` is told the venue's clock has (the quiet-market timer).
    - Closed means true: a candle is handed on ``final`` only when the builder can vouch for it.
      With ``vouch`` (the trade ids are the venue's own consecutive sequence) that is a candle a
      trade with the next id closed, or a flat candle between two consecutive ids, opening after
      the last hole. A venue's closed candle is final. The timer never vouches: what it closes is
      provisional, and becomes final (handed on again) when the next trade follows on by id and
      lies past it; a hole instead sends it to ``on_repair``. Without ``vouch`` (synthetic ids of
      quotes) nothing the builder makes is final: the owner reconciles it with the venue's history.
    - A trade id far beyond what the venue can have traded since the last trade (more than
      ``max_jump`` ids ahead) is a suspect, not a hole: it is set aside, and only when
      ``confirm_jump`` trades continue from it does it become a real jump (a hole, repaired); a
      lone outlier never moves the continuity cursor.
    """

    def __init__(
        self,
        timeframes: list[str],
        on_closed: ClosedSink,
        on_repair: RepairSink,
        hold_max: int = 256,
        calendar: Calendar | None = None,
        vouch: bool = True,
        max_jump: int = 1_000_000,
        confirm_jump: int = 3,
        unvouched_max: int = 100_000,
    ) -> None:
        self._series = [_Series(tf) for tf in sorted(timeframes, key=timeframe_ms)]
        self._by_name = {s.name: s for s in self._series}
        self._on_closed = on_closed
        self._on_repair = on_repair
        self.last_trade_id = -1
        self.last_trade_ms = -1
        self.hold_max = hold_max
        self._held: dict[int, Trade] = {}
        self.duplicates = 0
        self.missed_trades = 0
        self.late_trades = 0
        self.gaps = 0
        self.calendar: Calendar = calendar if calendar is not None else AlwaysOpen()
        self._limit_at = -1  # the trade time _limit was computed for
        self._limit = 0
        self.vouch = vouch
        # Candles opening at or before this time may miss trades from before the last hole (or
        # start-up): the builder never vouches for them; their repair does.
        self._hole_ms = 2**62
        # Provisional candles closed since the last trade (by the timer, or around a venue candle),
        # oldest first: vouched for when the next trade follows on by id.
        self._unvouched: list[tuple[_Series, Candle]] = []
        self.unvouched_max = unvouched_max
        self.vouched_late = 0  # provisional candles later vouched for
        # Suspect trade ids: far ahead of the last id (see the class notes).
        self.max_jump = max_jump
        self.confirm_jump = confirm_jump
        self._suspects: dict[int, Trade] = {}
        self.suspect_trades = 0
        # The trades since the last fold, as one partial candle (see on_trade and _fold): while
        # [_win_lo, _win_hi) lies inside every timeframe's open candle, a trade in it updates only
        # these; _fold adds them to every open candle before anything else reads or changes one.
        self._win_lo = self._win_hi = 0
        self._p_high = -INF
        self._p_low = INF
        self._p_close = 0.0
        self._p_vol = 0.0
        self._p_n = 0

    # --- set-up ---------------------------------------------------------------------------------

    def seed(self, timeframe: str, last_closed: Candle) -> None:
        """Continue after ``last_closed`` (from the store or REST history)."""
        self._fold()
        s = self._by_name[timeframe]
        after = s.tf.next(last_closed.open_time)
        if s.cur is None and (s.next_open is None or after > s.next_open):
            _idle(s, after, last_closed.close)

    @property
    def timeframes(self) -> list[str]:
        return [s.name for s in self._series]

    # --- trades ---------------------------------------------------------------------------------

    def on_trade(self, t: Trade) -> None:
        """Fold one trade in (the hot path: no allocation). A trade inside every open candle goes
        into the partial candle only (five attribute writes, whatever the number of timeframes);
        any other trade first folds that into the open candles, then rolls them as it needs."""
        tid = t.trade_id
        if tid != self.last_trade_id + 1 and not self._out_of_sequence(t):
            return
        self.last_trade_id = tid
        ts = t.time_ms
        if self._unvouched:
            self._vouch_until(ts)
        p = t.price
        if self._win_lo <= ts < self._win_hi:
            if p > self._p_high:
                self._p_high = p
            if p < self._p_low:
                self._p_low = p
            self._p_close = p
            self._p_vol += t.qty
            self._p_n += 1
        else:
            self._fold()
            self._apply(ts, p, t.qty)
        # Only now: while the candles rolled above, the last trade was the one before (flat limit).
        self.last_trade_ms = ts
        if self._held and self.last_trade_id + 1 in self._held:
            self.on_trade(self._held.pop(self.last_trade_id + 1))

    def _apply(self, ts: int, p: float, q: float) -> None:
        """Fold a trade into every timeframe's open candle, rolling those it lies past, then open
        the window: the span inside every open candle (empty when a timeframe has none)."""
        for s in self._series:
            if not s.start <= ts < s.end and not self._roll(s, ts, p):
                continue
            assert s.cur is not None
            _add(s.cur, p, p, p, q, 1)
        lo, hi = 0, 2**63
        for s in self._series:
            if s.cur is None:
                hi = 0
            lo = max(lo, s.start)
            hi = min(hi, s.end)
        self._win_lo, self._win_hi = lo, hi

    def _fold(self) -> None:
        """Add the partial candle to every open candle and close the window: called before anything
        reads or changes the open candles (every one of them held each trade of the window)."""
        self._win_lo = self._win_hi = 0
        n = self._p_n
        if not n:
            return
        for s in self._series:
            assert s.cur is not None
            _add(s.cur, self._p_high, self._p_low, self._p_close, self._p_vol, n)
        self._p_high, self._p_low, self._p_vol, self._p_n = -INF, INF, 0.0, 0

    def _out_of_sequence(self, t: Trade) -> bool:
        """Decide about a trade whose id does not follow the last one; True to apply it now.

        A repeat is dropped. A trade from beyond a hole is held back for a moment, because the
        hole is usually a reorder (or an overlapping second connection) that fills itself; only
        when :meth:`release_held` is called, or too many trades wait, is the hole declared lost.
        """
        tid = t.trade_id
        if tid <= self.last_trade_id or tid in self._held:
            self.duplicates += 1
            return False
        if self.last_trade_id < 0:
            self._resync(t)  # the first trade seen: what came before is unknown
            return True
        if tid - self.last_trade_id > self.max_jump:
            return self._suspect(t)
        self._held[tid] = t
        if len(self._held) > self.hold_max:
            self.release_held()
        return False

    def _suspect(self, t: Trade) -> bool:
        """A trade id too far ahead to be believed on its own: keep it aside until ``confirm_jump``
        trades follow on from it (a real jump: True, apply it as a hole), else it stays a suspect."""
        tid = t.trade_id
        run = 1
        while tid - run in self._suspects:
            run += 1
        self._suspects[tid] = t
        self.suspect_trades += 1
        if run < self.confirm_jump:
            if len(self._suspects) > 4 * self.confirm_jump:  # outliers pile up: forget the oldest
                del self._suspects[min(self._suspects)]
            return False
        # Confirmed: the venue's ids really jumped. Everything up to the first of the run is a hole.
        first = self._suspects.pop(tid - run + 1)
        rest = [self._suspects.pop(i) for i in range(tid - run + 2, tid + 1)]
        self._suspects.clear()
        self.suspect_trades -= run
        self.release_held()  # trades before the jump first, in order
        self._resync(first)
        self.last_trade_id = first.trade_id - 1
        self.on_trade(first)
        for r in rest:
            self.on_trade(r)
        return False

    def release_held(self) -> None:
        """Declare the holes before held trades lost: report them for repair and apply the trades."""
        while self._held:
            t = self._held.pop(min(self._held))
            self._resync(t)
            self.last_trade_id = t.trade_id - 1  # the hole is written off: t now follows on
            self.on_trade(t)  # also applies every held trade that follows it without a hole

    @property
    def held(self) -> int:
        """Trades waiting for a hole before them to fill."""
        return len(self._held)

    def _roll(self, s: _Series, ts: int, price: float) -> bool:
        """Move ``s`` to the candle holding ``ts``; False when ``ts`` is older than the open candle."""
        b = s.tf.start(ts)
        if b < s.start:
            # The venue's clock went back past a candle we already moved on from: it is final here,
            # so the venue's own record of it is fetched instead.
            self.late_trades += 1
            if self._unvouched:  # its repair decides it now
                self._unvouched = [(u, c) for u, c in self._unvouched if u is not s or c.open_time != b]
            self._on_repair(s.name, b, b)
            return False
        self._close_until(s, b, self.vouch)
        s.cur = Candle(b, price, price, price, price, 0.0, 0, False)
        s.start = b
        s.end = s.tf.next(b)
        return True

    def _close_until(self, s: _Series, b: int, vouched: bool) -> None:
        """Close the open candle and emit flat candles for every empty interval before ``b``;
        ``vouched``: a trade that follows on by id shows time has passed them (else the timer)."""
        c = s.cur
        if c is not None:
            c.closed = True
            _idle(s, s.tf.next(c.open_time), c.close)
            self._emit(s, c, vouched)
        if s.next_open is not None and s.last_close is not None:
            px = s.last_close
            t = s.next_open
            limit = self._flat_limit()
            while t < b and (after := s.tf.next(t)) <= limit:
                self._emit(s, Candle(t, px, px, px, px, 0.0, 0, True), vouched)
                t = after
            _idle(s, max(t, s.next_open), px)

    def _emit(self, s: _Series, c: Candle, vouched: bool) -> None:
        """Hand on a closed candle: final when vouched for and clear of the last hole, else
        provisional (and, for a venue with real ids, remembered until the next trade vouches)."""
        if vouched and c.open_time > self._hole_ms:
            c.final = True
        elif self.vouch and c.open_time > self._hole_ms:
            if len(self._unvouched) >= self.unvouched_max:
                # A very long silence: the oldest can no longer wait to be vouched for; fetch it.
                old_s, old = self._unvouched.pop(0)
                self._on_repair(old_s.name, old.open_time, old.open_time)
            self._unvouched.append((s, c))
        self._on_closed(s.name, c)

    def _vouch_until(self, ts: int) -> None:
        """A trade at ``ts`` followed on by id: the provisional candles that ended by then had every
        trade (a later trade inside one of them is late, and gets it repaired instead)."""
        keep: list[tuple[_Series, Candle]] = []
        for s, c in self._unvouched:
            if s.tf.next(c.open_time) <= ts:
                self.vouched_late += 1
                self._on_closed(
                    s.name, Candle(c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, True, True)
                )
            else:
                keep.append((s, c))
        self._unvouched = keep

    def _flat_limit(self) -> int:
        """Flat candles must end by this time: the first close of the market after the last trade.

        Cached per last trade, so a quiet weekend's timer ticks and each roll cost one comparison.
        """
        p = max(self.last_trade_ms, 0)
        if p != self._limit_at:
            self._limit_at = p
            self._limit = self.calendar.next_close(p)
        return self._limit

    def _resync(self, t: Trade) -> None:
        """Trades before ``t`` are missing: report the candles they may belong to for repair."""
        self._fold()
        if self.last_trade_id >= 0:
            self.gaps += 1
            self.missed_trades += t.trade_id - self.last_trade_id - 1
        ts = t.time_ms
        # The candles a hole may touch are the repair's now: never vouched for by the builder.
        self._unvouched.clear()
        self._hole_ms = ts
        for s in self._series:
            b = s.tf.start(ts)
            # The lost trades lie between the last trade seen and this one, so the candles from the
            # one holding the last trade (even if it was closed by the timer since) up to this one
            # are suspect. Before any trade, everything since the last known candle is.
            if self.last_trade_ms >= 0:
                first: int | None = s.tf.start(self.last_trade_ms)
            else:
                first = s.cur.open_time if s.cur is not None else s.next_open
            if first is None or first > b:
                first = b
            if s.cur is not None and s.cur.open_time < b:
                c = s.cur
                c.closed = True
                _idle(s, None, None)
                self._on_closed(s.name, c)  # provisional: the repair below brings its final version
            if s.cur is None:
                # No flat candles across the hole: its candles come from the venue's history.
                _idle(s, None, None)
            self._on_repair(s.name, first, b)

    def suspect(self, since_ms: int, until_ms: int) -> None:
        """Trades between ``since_ms`` and ``until_ms`` may have been lost without a gap in the ids
        showing it yet (the venue's message sequence broke): the candles of that span, up to the one
        forming, are reported for repair and never vouched for by the builder."""
        self._fold()
        self._unvouched = [(s, c) for s, c in self._unvouched if s.tf.next(c.open_time) <= since_ms]
        self._hole_ms = max(self._hole_ms, until_ms)
        for s in self._series:
            first = s.tf.start(since_ms)
            last = max(first, s.tf.start(until_ms))
            if s.cur is not None:
                last = max(last, s.cur.open_time)
            self._on_repair(s.name, first, last)

    # --- the venue's own candles ----------------------------------------------------------------

    def on_venue_candle(self, timeframe: str, venue: Candle, last_trade_id: int) -> None:
        """Merge a venue kline: a closed one is final; an open one is taken over when it holds
        exactly the trades seen so far (then it also covers any we missed before start-up)."""
        self._fold()
        s = self._by_name.get(timeframe)
        if s is None:
            return
        b = venue.open_time
        c = s.cur
        if venue.closed:
            if c is not None and c.open_time == b:
                _assign(c, venue)
                c.closed = c.final = True  # the venue's own closed candle
                _idle(s, s.tf.next(b), c.close)
                self._on_closed(s.name, c)
                return
            behind = c.open_time > b if c is not None else (s.next_open is not None and s.next_open > b)
            if not behind:
                if self.last_trade_id >= 0:
                    self._close_until(s, b, False)  # the venue says time is past everything before b
                elif s.next_open is not None and s.next_open < b:
                    # No trade seen yet: what lies between the last known candle and this one is
                    # unknown (a long start-up); moving past it must not hide it.
                    self._on_repair(s.name, s.next_open, s.tf.prev(b))
                _idle(s, s.tf.next(b), venue.close)
            final = Candle(b, 0.0, 0.0, 0.0, 0.0, 0.0, 0, True, True)
            _assign(final, venue)
            self._on_closed(s.name, final)
            return
        if last_trade_id != self.last_trade_id or last_trade_id < 0 or b < s.start:
            return
        if c is None or c.open_time != b:
            self._close_until(s, b, False)
            s.cur = c = Candle(b, 0.0, 0.0, 0.0, 0.0, 0.0, 0, False)
            s.start = b
            s.end = s.tf.next(b)
        _assign(c, venue)

    # --- time -----------------------------------------------------------------------------------

    def advance(self, now_ms: int) -> None:
        """The venue's clock reads ``now_ms``: close candles that ended, fill quiet intervals (only
        while the market stays open since the last trade; see the class notes)."""
        self._fold()
        if self.last_trade_id < 0:
            return
        for s in self._series:
            if s.cur is not None and s.end <= now_ms:
                self._close_until(s, s.end, False)
            if s.cur is None and s.next_open is not None and s.tf.next(s.next_open) <= now_ms:
                self._close_until(s, s.tf.start(now_ms), False)

    def open_candles(self) -> list[tuple[str, Candle]]:
        """The candles still forming, one per timeframe at most (live objects: copy to keep)."""
        self._fold()
        return [(s.name, s.cur) for s in self._series if s.cur is not None]

    def open_candle(self, timeframe: str) -> Candle | None:
        self._fold()
        return self._by_name[timeframe].cur


def _assign(c: Candle, v: Candle) -> None:
    """Give ``c`` the prices, volume and trade count of ``v`` (keeping its own ``closed``)."""
    c.open, c.high, c.low, c.close = v.open, v.high, v.low, v.close
    c.volume, c.trades = v.volume, v.trades


def _add(c: Candle, high: float, low: float, close: float, volume: float, trades: int) -> None:
    """Add trades that followed ``c``'s (their high, low, last price, volume and count) to ``c``."""
    if high > c.high:
        c.high = high
    if low < c.low:
        c.low = low
    c.close = close
    c.volume += volume
    c.trades += trades


def _idle(s: _Series, next_open: int | None, last_close: float | None) -> None:
    """Leave ``s`` with no open candle, the next one to start at ``next_open``."""
    s.cur = None
    s.start = s.end = next_open or 0
    s.next_open = next_open
    s.last_close = last_close
