"""Derives candles of longer timeframes from consecutive candles of a shorter (base) one.

Aggregating every trade into every timeframe costs one update per trade per timeframe. A longer
candle is fully determined by the base candles it spans, so it can be derived from them instead:
``open`` of the first part with trades, ``high``/``low`` over the parts with trades, ``close`` of the
last part, ``volume`` and ``trades`` summed. A part without trades is a flat placeholder at the
previous close; it adds nothing to the open, high or low of a candle that has trades, and a bucket
of only such parts is itself flat at the previous close -- exactly what :class:`CandleBuilder` makes
from the trades. :func:`rollup` does this for a finished list; :class:`RollupBuilder` does it live.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from deltafeed.candles.aggregator import ClosedSink
from deltafeed.model import Candle, Timeframe, timeframe

StaleSink = Callable[[str, int], None]
"""Receives ``(timeframe, bucket_open_time)``: a derived candle that can no longer be derived here
(its parts are no longer kept, or never all arrived) and must be fetched from the venue instead."""


def _append(c: Candle, p: Candle) -> None:
    """Fold part ``p`` into ``c``; ``p`` must come after every part already folded into ``c``.

    The one definition of the fold, shared by :func:`rollup` and :class:`RollupBuilder`. Volume is
    summed part by part, so it equals a trade-by-trade sum only up to float rounding.
    """
    if p.trades:
        if c.trades:
            if p.high > c.high:
                c.high = p.high
            if p.low < c.low:
                c.low = p.low
        else:  # the first part with trades sets the open; flat parts before it do not count
            c.open, c.high, c.low = p.open, p.high, p.low
    c.close = p.close
    c.volume += p.volume
    c.trades += p.trades


def _append_priced(c: Candle, p: Candle) -> None:
    """Fold part ``p`` into ``c`` when every part holds real prices (no flat placeholders), even
    with a count of 0: a venue whose history gives no trade count (IB's MIDPOINT/BID/ASK bars)."""
    if p.high > c.high:
        c.high = p.high
    if p.low < c.low:
        c.low = p.low
    c.close = p.close
    c.volume += p.volume
    c.trades += p.trades


def _start(open_time: int, p: Candle) -> Candle:
    """A new (not closed) candle opening at ``open_time`` holding just part ``p``."""
    return Candle(open_time, p.open, p.high, p.low, p.close, p.volume, p.trades, False)


def _grid(tf: Timeframe | str | int) -> Timeframe:
    """A timeframe given by name, as a :class:`Timeframe`, or as a length in ms (epoch aligned)."""
    if isinstance(tf, Timeframe):
        return tf
    if isinstance(tf, str):
        return timeframe(tf)
    return Timeframe(f"{tf}ms", tf)


def rollup(
    parts: Iterable[Candle],
    part: Timeframe | str | int,
    tf: Timeframe | str | int,
    until_ms: int | None = None,
    *,
    placeholders: bool = True,
) -> list[Candle]:
    """Fold ``parts`` (sorted by open time, each one candle of timeframe ``part``) into candles of
    ``tf`` (each a :class:`Timeframe`, a name, or a length in ms on the epoch grid).

    Parts without trades are flat placeholders at the previous close: they add nothing to the
    open, high or low of a candle that has trades, exactly as if it were built from the trades.
    A derived candle is closed only when its last part is closed and ends where it ends -- or, with
    ``until_ms`` (the venue's history is complete up to then, and it leaves out intervals without
    prices), when every part it has is closed and it ends by ``until_ms`` -- and final only when it
    is closed and every part of it is final.

    ``placeholders=False`` says there are none (the parts come from a history that leaves out
    intervals without prices): every part's prices count, whatever its number of trades, which a
    history without trade counts (IB's quote bars, count 0) needs.
    """
    part_tf, tf_tf = _grid(part), _grid(tf)
    fold = _append if placeholders else _append_priced
    if not part_tf.divides(tf_tf):
        raise ValueError(f"{tf_tf} candles cannot be built from {part_tf} ones: {part_tf} does not divide {tf_tf}")
    out: list[Candle] = []
    cur: Candle | None = None
    end = 0
    complete = verified = True
    for p in parts:
        b = tf_tf.start(p.open_time)
        if cur is None or b != cur.open_time:
            if cur is not None:
                out.append(cur)
            cur = _start(b, p)
            end = tf_tf.next(b)
            complete, verified = p.closed, p.final
        else:
            fold(cur, p)
            complete = complete and p.closed
            verified = verified and p.final
        ends = part_tf.next(p.open_time) == end or (until_ms is not None and end <= until_ms)
        cur.closed = complete and ends
        cur.final = cur.closed and verified
    if cur is not None:
        out.append(cur)
    return out


class _Bucket:
    """The parts of one derived candle and their fold.

    ``agg`` is the fold of the final parts up to index ``hi``, kept up to date incrementally while
    final parts arrive in order (the normal case: one ``_append`` per part). A final part that lands
    before ``hi`` or replaces one already folded (a correction) sets ``dirty`` instead, and the fold is
    redone from ``parts`` once, the next time it is needed. The forming base part is kept apart and
    folded in on demand: it changes every few hundred ms and must never force a refold.
    """

    __slots__ = (
        "agg",
        "dirty",
        "emitted",
        "finals",
        "forming",
        "forming_i",
        "hi",
        "n",
        "open_time",
        "parts",
        "verified",
    )

    def __init__(self, open_time: int, n: int) -> None:
        self.open_time = open_time
        self.n = n  # base parts in it (a month's count depends on the month)
        self.parts: list[Candle | None] = [None] * n  # closed parts only (final or provisional)
        self.finals = 0  # parts not None
        self.verified = 0  # parts that are final (the derived candle is final when all n are)
        self.agg: Candle | None = None
        self.hi = -1
        self.dirty = False
        self.forming: Candle | None = None
        self.forming_i = -1
        self.emitted = False  # handed to on_final (or, when seeded, known to the caller already)


class _Series:
    """One derived timeframe: the bucket the base is in and the one before it, nothing older."""

    __slots__ = ("anchor", "base_ms", "cur", "fixed_ms", "name", "prev", "reported", "tf")

    def __init__(self, tf: Timeframe, base_ms: int) -> None:
        self.name = tf.name
        self.tf = tf
        # The fixed grid inlined on the hot path (0 for months, which ask ``tf``).
        self.fixed_ms = tf.ms if tf.fixed else 0
        self.anchor = tf.anchor
        self.base_ms = base_ms
        self.cur: _Bucket | None = None
        self.prev: _Bucket | None = None  # always the bucket before cur when set
        self.reported: int | None = None  # the last bucket handed to on_stale (no repeats in a row)

    def bucket(self, b: int) -> _Bucket:
        """A new, empty bucket opening at ``b``."""
        return _Bucket(b, (self.tf.next(b) - b) // self.base_ms)


class RollupBuilder:
    """Base candles in, derived candles of longer timeframes out, for one instrument.

    Feed it what :class:`CandleBuilder` produces for the base timeframe, in the order it produces it:
    the forming candle from ``open_candles()`` every tick, and every final candle from ``on_closed``
    (closed ones, flat ones, and corrections of earlier ones, e.g. from a repair). Buckets are epoch
    on each timeframe's grid (:meth:`Timeframe.start`), and the base must divide every derived
    timeframe (:meth:`Timeframe.divides`): ``1m`` makes ``45m``, ``1w`` and ``1M``; ``15s`` makes
    ``45s``; ``1h`` makes ``1w``; ``45s`` makes no ``1m`` (a minute is not a whole number of them).

    - A derived candle is closed once every one of its parts is closed; that implies the base has
      moved past its end. It goes to ``on_final`` then, and again whenever a closed part of it is
      replaced by a different one while it is still kept (the stores upsert). It is final when every
      part is final; a provisional part vouched for later makes it go out again, final.
    - Only the current and the previous bucket of each timeframe are kept (at most ``2 * tf/base``
      parts each), so memory is bounded whatever the timeframe. A final part for an older bucket,
      and a bucket dropped before all its parts were final (a hole, or start-up without
      :meth:`seed`), cannot be derived here any more: they go to ``on_stale`` so the owner fetches
      that candle from the venue, and are counted in ``stale_parts`` / ``incomplete``.
    - Cost per base update is O(number of derived timeframes); a refold of a bucket's parts happens
      only when a part already folded changes (counted in ``refolds``).
    """

    def __init__(
        self,
        base: str,
        derived: Iterable[str],
        on_final: ClosedSink,
        on_stale: StaleSink | None = None,
    ) -> None:
        """Raises ValueError (a :class:`~deltafeed.model.BadInput` for an unknown name) when a
        derived timeframe is not longer than the base or the base does not divide it."""
        base_tf = timeframe(base)
        if not base_tf.fixed:
            raise ValueError(f"base timeframe {base} has no fixed length; derive from a fixed one, e.g. 1d")
        self.base = base_tf.name
        self._base_tf = base_tf
        self._base_ms = base_ms = base_tf.ms
        series: list[_Series] = []
        for name in derived:
            tf = timeframe(name)
            if tf.ms <= base_ms:
                raise ValueError(f"cannot derive {name} from {base}: it must be longer than the base timeframe")
            if not base_tf.divides(tf):
                raise ValueError(
                    f"cannot derive {name} from {base}: the base does not divide it "
                    "(its candles are not whole runs of base candles)"
                )
            if any(s.name == tf.name for s in series):
                raise ValueError(f"timeframe {name} is given twice")
            series.append(_Series(tf, base_ms))
        self._series = sorted(series, key=lambda s: s.tf.ms)
        self._by_name = {s.name: s for s in self._series}
        self._on_final = on_final
        self._on_stale = on_stale
        self._seeding = False
        self.stale_parts = 0  # final parts for buckets no longer kept (reported via on_stale)
        self.incomplete = 0  # buckets dropped before all their parts were final (reported via on_stale)
        self.corrections = 0  # derived candles emitted again because a part of them changed
        self.refolds = 0  # buckets folded again from their parts

    @property
    def timeframes(self) -> list[str]:
        """The derived timeframes, shortest first."""
        return [s.name for s in self._series]

    @property
    def held_parts(self) -> int:
        """Final base parts kept in memory over all timeframes (bounded by 2 buckets each)."""
        return sum(b.finals for s in self._series for b in (s.cur, s.prev) if b is not None)

    # --- input ----------------------------------------------------------------------------------

    def seed(self, parts: Iterable[Candle]) -> None:
        """Load final base candles already stored (e.g. since the start of the current day), so the
        forming derived candles are whole from the first second after start-up.

        Seeded history is known to the caller, so nothing is emitted or reported while seeding:
        buckets it completes count as emitted (a later correction of them is emitted), buckets it
        passes are dropped quietly, and a seeded part never replaces a final part already held.
        Parts that are not final are ignored. Call it before the first live update, oldest first.
        """
        self._seeding = True
        try:
            for p in parts:
                if p.closed:
                    self.on_base(p)
        finally:
            self._seeding = False

    def on_base(self, candle: Candle, vouched_only: bool = False) -> None:
        """Fold one base candle update into every derived timeframe.

        ``candle.closed`` False: the forming base candle (may be a live object: it is copied).
        True: a closed one -- the next in line, a flat one, or a correction of one already seen.
        ``vouched_only``: a provisional part seen before, now final with the same values; a bucket
        no longer kept then needs nothing (the owner promotes that derived candle itself).
        """
        t = candle.open_time
        base_ms = self._base_ms
        if (t - self._base_tf.anchor) % base_ms:
            raise ValueError(f"base candle open time {t} is not aligned to {self.base}")
        p = Candle(
            t,
            candle.open,
            candle.high,
            candle.low,
            candle.close,
            candle.volume,
            candle.trades,
            candle.closed,
            candle.final,
        )
        final = p.closed  # a part that will not change any more (until corrected or vouched for)
        for s in self._series:
            b = t - (t - s.anchor) % s.fixed_ms if s.fixed_ms else s.tf.start(t)
            bk = s.cur
            if bk is None or b > bk.open_time:
                if vouched_only:
                    continue
                bk = self._move(s, b)
            elif b != bk.open_time:
                if b != s.tf.prev(bk.open_time):
                    if final and not vouched_only:  # a forming update this old carries no news
                        self._stale_part(s, b)
                    continue
                bk = s.prev
                if bk is None:
                    if vouched_only:
                        continue
                    bk = s.prev = s.bucket(b)
            i = (t - b) // base_ms
            if final:
                self._final_part(s, bk, i, p)
            elif bk.parts[i] is None:  # a forming update of a part already final is stale
                bk.forming = p
                bk.forming_i = i

    def _move(self, s: _Series, b: int) -> _Bucket:
        """The base reached bucket ``b`` (later than the current one): keep the one before it only."""
        cur = s.cur
        if cur is not None and b == s.tf.next(cur.open_time):
            self._drop(s, s.prev)
            s.prev = cur
        else:
            self._drop(s, s.prev)
            self._drop(s, cur)
            s.prev = None
        bk = s.cur = s.bucket(b)
        return bk

    def _drop(self, s: _Series, bk: _Bucket | None) -> None:
        if bk is not None and not bk.emitted and not self._seeding:
            self.incomplete += 1
            self._report(s, bk.open_time)

    def _stale_part(self, s: _Series, b: int) -> None:
        if not self._seeding:
            self.stale_parts += 1
            self._report(s, b)

    def _report(self, s: _Series, b: int) -> None:
        # Many parts of one old bucket (a repaired hour of minutes) make one report, not sixty.
        if s.reported != b:
            s.reported = b
            if self._on_stale is not None:
                self._on_stale(s.name, b)

    def _final_part(self, s: _Series, bk: _Bucket, i: int, p: Candle) -> None:
        old = bk.parts[i]
        if old is not None and (self._seeding or old == p):
            return  # a repeat changes nothing; seeded history never overrides live data
        bk.parts[i] = p
        bk.verified += p.final - (old is not None and old.final)
        if old is not None and old.row() == p.row():
            # Only its state changed (a provisional part vouched for): same fold, maybe a new state.
            if bk.finals == bk.n and bk.verified == bk.n and bk.emitted and not self._seeding:
                self._emit(s, bk)  # its last provisional part: the derived candle is final now
            return
        if bk.forming is not None and bk.forming_i <= i:
            bk.forming = None
        if old is None:
            bk.finals += 1
            if i > bk.hi and not bk.dirty:
                if bk.agg is None:
                    bk.agg = _start(bk.open_time, p)
                else:
                    _append(bk.agg, p)
                bk.hi = i
            else:
                bk.dirty = True  # landed before parts already folded: the order of the fold changes
        else:
            bk.dirty = True  # a correction of a part already folded
        if bk.finals == bk.n:
            if bk.emitted and not self._seeding:
                self.corrections += 1
            self._emit(s, bk)

    def _emit(self, s: _Series, bk: _Bucket) -> None:
        if bk.dirty:
            self._refold(bk)
        a = bk.agg
        assert a is not None
        bk.emitted = True
        bk.forming = None
        if not self._seeding:
            self._on_final(
                s.name,
                Candle(bk.open_time, a.open, a.high, a.low, a.close, a.volume, a.trades, True, bk.verified == bk.n),
            )

    def _refold(self, bk: _Bucket) -> None:
        agg: Candle | None = None
        hi = -1
        for i, p in enumerate(bk.parts):
            if p is not None:
                if agg is None:
                    agg = _start(bk.open_time, p)
                else:
                    _append(agg, p)
                hi = i
        bk.agg, bk.hi, bk.dirty = agg, hi, False
        self.refolds += 1

    # --- output ---------------------------------------------------------------------------------

    def open_candles(self) -> list[tuple[str, Candle]]:
        """The derived candles still forming, one per timeframe at most (fresh objects).

        Like :meth:`CandleBuilder.open_candles`, a timeframe is listed once its current bucket has
        trades (or a forming base part): a bucket of flat parts only, so far, is not a forming candle
        there either -- it becomes a flat final candle when it ends.
        """
        out: list[tuple[str, Candle]] = []
        for s in self._series:
            bk = s.cur
            if bk is None or bk.finals == bk.n:
                continue
            c = self._forming(bk)
            if c is not None and (c.trades or bk.forming is not None):
                out.append((s.name, c))
        return out

    def open_candle(self, timeframe: str) -> Candle | None:
        """The forming candle of ``timeframe``, as listed by :meth:`open_candles`, or None."""
        s = self._by_name[timeframe]
        bk = s.cur
        if bk is None or bk.finals == bk.n:
            return None
        c = self._forming(bk)
        return c if c is not None and (c.trades or bk.forming is not None) else None

    def _forming(self, bk: _Bucket) -> Candle | None:
        """Fold of the final parts so far plus the forming part: one copy and one append, normally."""
        if bk.dirty:
            self._refold(bk)
        f = bk.forming
        if f is not None and bk.forming_i < bk.hi:  # rare: a forming part before final ones
            c: Candle | None = None
            for i, p in enumerate(bk.parts):
                q = f if i == bk.forming_i else p
                if q is not None:
                    if c is None:
                        c = _start(bk.open_time, q)
                    else:
                        _append(c, q)
            return c
        a = bk.agg
        c = None if a is None else Candle(bk.open_time, a.open, a.high, a.low, a.close, a.volume, a.trades, False)
        if f is not None:
            if c is None:
                c = _start(bk.open_time, f)
            else:
                _append(c, f)
        return c
