"""The hot tier: the most recent candles of every (instrument, timeframe) in bounded memory rings."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any

from msgspec.structs import replace as _copy

from deltafeed.model import BadInput, Candle
from deltafeed.model import timeframe as timeframe_of


class _Ring:
    """Candles of one series, ascending by open_time, at most ``capacity`` of them, held as one typed
    array per field and built into :class:`Candle` objects only when read.

    The arrays grow to ``capacity`` and then keep that size as a circular buffer: ``head`` is the
    slot of the oldest candle and ``tail`` that of the newest; a new candle overwrites the oldest.
    ``head`` stays 0 while the arrays are not full, so a growing ring is plain ascending arrays. The
    rare changes that move candles (a late candle inserted inside the covered span, :meth:`drop_before`)
    first rotate the arrays back to ``head == 0``. Positions count from the oldest candle; slots are
    indices into the arrays.

    The forming candle is put again and again (every tick of every open candle). Writing nine array
    items costs several times a struct copy, so the newest candle of a full ring, and any put that
    repeats the newest open_time, only keeps a copy in ``top``: it stands for the tail slot (whose
    open_time is always right) until :meth:`_settle` writes it there; every other operation settles first.
    """

    __slots__ = ("capacity", "cols", "head", "tail", "times", "top")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.head = 0  # slot of the oldest candle
        self.tail = -1  # slot of the newest candle
        self.top: Candle | None = None  # the newest candle, when newer than what its slot holds
        #: One array per field of :class:`Candle`, in its order: 58 bytes a candle.
        self.cols: tuple[array[Any], ...] = tuple(array(code) for code in "qdddddqbb")
        self.times: array[int] = self.cols[0]

    def put(self, c: Candle) -> bool:
        t = c.open_time
        top = self.top
        if top is not None and t == top.open_time:  # the forming candle again: the hot path
            self.top = _copy(c)
            return True
        times = self.times
        size = len(times)
        if size and t == times[self.tail]:
            self.top = _copy(c)
            return True
        self._settle()
        if not size or t > times[self.tail]:
            if size < self.capacity:  # still growing, so head == 0
                self._append(c)
                self.tail = size
            else:  # full: the newest takes the oldest's slot (written when it settles: it may change)
                self.tail = self.head
                self.head = (self.head + 1) % size
                times[self.tail] = t
                self.top = _copy(c)
            return True
        if size >= self.capacity and t < times[self.head]:
            return False  # older than anything the full ring holds: that is the cold tier's business
        k = self._find(bisect_left, t)
        i = (self.head + k) % size
        if times[i] == t:  # k < size: t is older than the newest
            self._write(i, c)
            return True
        # A candle missing inside the covered span (e.g. a late backfill): insert it in order.
        self._unwrap()
        if size < self.capacity:
            for col, v in zip(self.cols, _values(c), strict=True):
                col.insert(k, v)
            self.tail = size
        else:  # full: the oldest falls off (k >= 1, as t is newer than the oldest)
            for col, v in zip(self.cols, _values(c), strict=True):
                col[0 : k - 1] = col[1:k]
                col[k - 1] = v
        return True

    def put_many(self, candles: Sequence[Candle]) -> int:
        """:meth:`put` each of ``candles`` in turn; returns how many were kept. A run of ascending
        candles newer than the newest that fits in a growing ring (a start-up's fill from the store)
        goes in whole arrays at a time."""
        self._settle()
        times = self.times
        prev = times[self.tail] if times else None
        room = self.capacity - len(times)
        k = 0
        while k < room and k < len(candles) and (prev is None or candles[k].open_time > prev):
            prev = candles[k].open_time
            k += 1
        if k:
            run = candles[:k]
            for col, field in zip(self.cols, _FIELDS, strict=True):
                col.fromlist(list(map(field, run)))
            self.tail = len(times) - 1
        return k + sum(self.put(c) for c in candles[k:])

    def _append(self, c: Candle) -> None:
        t, o, h, lo, cl, v, n, closed, final = self.cols
        t.append(c.open_time)
        o.append(c.open)
        h.append(c.high)
        lo.append(c.low)
        cl.append(c.close)
        v.append(c.volume)
        n.append(c.trades)
        closed.append(c.closed)
        final.append(c.final)

    def _write(self, i: int, c: Candle) -> None:
        t, o, h, lo, cl, v, n, closed, final = self.cols
        t[i] = c.open_time
        o[i] = c.open
        h[i] = c.high
        lo[i] = c.low
        cl[i] = c.close
        v[i] = c.volume
        n[i] = c.trades
        closed[i] = c.closed
        final[i] = c.final

    def _settle(self) -> None:
        """Write ``top`` into the newest candle's slot."""
        if self.top is not None:
            self._write(self.tail, self.top)
            self.top = None

    def _find(self, search: Callable[..., int], t: int) -> int:
        """``search`` (``bisect_left`` or ``bisect_right``) for ``t``, as a position from the oldest."""
        times, head, size = self.times, self.head, len(self.times)
        if head == 0:
            return search(times, t, 0, size)
        if t <= times[size - 1]:  # among the older run, slots head .. size-1
            return search(times, t, head, size) - head
        return search(times, t, 0, head) + size - head

    def _unwrap(self) -> None:
        """Rotate the arrays so that the oldest candle is in slot 0."""
        h = self.head
        if h:
            for col in self.cols:
                col[:] = col[h:] + col[:h]
            self.head = 0
            self.tail = len(self.times) - 1

    def _candles(self, lo: int, hi: int) -> list[Candle]:
        """The candles at positions ``lo`` to ``hi`` (exclusive), built anew."""
        if hi <= lo:
            return []
        self._settle()
        size = len(self.times)
        a, b = (self.head + lo) % size, (self.head + hi - 1) % size + 1
        if a < b:
            return _build(self.cols, a, b)
        return _build(self.cols, a, size) + _build(self.cols, 0, b)

    def last(self, n: int) -> list[Candle]:
        size = len(self.times)
        return self._candles(max(0, size - n), size)

    def oldest(self) -> int:
        return self.times[self.head]

    def get(self, open_time: int) -> Candle | None:
        size = len(self.times)
        k = self._find(bisect_left, open_time)
        i = (self.head + k) % size if k < size else -1
        if i < 0 or self.times[i] != open_time:
            return None
        if i == self.tail and self.top is not None:
            return _copy(self.top)
        t, o, h, lo, c, v, n, closed, final = (col[i] for col in self.cols)
        return Candle(t, o, h, lo, c, v, n, _BOOL[closed], _BOOL[final])

    def between(self, since_ms: int, until_ms: int) -> list[Candle]:
        return self._candles(self._find(bisect_left, since_ms), self._find(bisect_right, until_ms))

    def drop_before(self, cutoff: int) -> int:
        """Remove every candle with open_time < ``cutoff``; returns how many."""
        k = self._find(bisect_left, cutoff)
        if k:
            self._settle()
            self._unwrap()
            for col in self.cols:
                del col[:k]
            self.tail = len(self.times) - 1
        return k

    def __len__(self) -> int:
        return len(self.times)


#: Readers of each field of a :class:`Candle`, in its order.
_FIELDS = tuple(attrgetter(name) for name in Candle.__struct_fields__)


def _values(c: Candle) -> tuple[int, float, float, float, float, float, int, bool, bool]:
    return (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed, c.final)


def _build(cols: tuple[array[Any], ...], a: int, b: int) -> list[Candle]:
    """Candles from slots ``a`` to ``b`` (exclusive) of the field arrays ``cols``."""
    t, o, h, lo, c, v, n, closed, final = (col[a:b] for col in cols)
    flag = _BOOL.__getitem__
    return list(map(Candle, t, o, h, lo, c, v, n, map(flag, closed), map(flag, final)))


#: A flag as stored (0 or 1) to the bool a :class:`Candle` holds (so JSON says true, not 1).
_BOOL = (False, True)


class HotStore:
    """Bounded rings of recent candles per (instrument, timeframe), for fast reads of "the latest N".

    Every ``put`` is an upsert keyed by open_time and stores the candle's values, because the
    aggregator keeps mutating the candle object it passed in. The store is meant for one thread (the
    event loop); it does no locking. Every read builds new :class:`Candle` objects: the caller owns them.
    """

    def __init__(self, capacity: int = 1000) -> None:
        if capacity < 1:
            raise ValueError(f"HotStore capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._rings: dict[tuple[str, str], _Ring] = {}

    def put(self, instrument: str, timeframe: str, candle: Candle) -> bool:
        """Upsert a copy of ``candle``; returns False when it is older than a full ring and was ignored.

        Same open_time as the newest → replaced; newer → appended (the oldest falls off when full);
        older but inside the ring → replaced or inserted in place (a correction or late backfill).
        """
        key = (instrument, timeframe)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self.capacity)
        return ring.put(candle)

    def put_many(self, instrument: str, timeframe: str, candles: Sequence[Candle]) -> int:
        """:meth:`put` each of ``candles`` in turn (faster for an ascending run, such as a start-up's
        fill from the store); returns how many were kept."""
        key = (instrument, timeframe)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = _Ring(self.capacity)
        return ring.put_many(candles)

    def last(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        """The newest ``n`` candles (fewer if the ring holds fewer), oldest first."""
        ring = self._rings.get((instrument, timeframe))
        return [] if ring is None else ring.last(n)

    def get(self, instrument: str, timeframe: str, open_time: int) -> Candle | None:
        """The held candle opening at ``open_time``, if any."""
        ring = self._rings.get((instrument, timeframe))
        return None if ring is None else ring.get(open_time)

    def range(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[Candle] | None:
        """Candles with ``since_ms <= open_time <= until_ms``, oldest first.

        Returns None when the ring cannot answer alone because it does not reach back to
        ``since_ms`` (older candles may exist in the cold tier). For a known timeframe the ring
        covers ``since_ms`` when no candle boundary lies between ``since_ms`` and its oldest candle.
        """
        ring = self._rings.get((instrument, timeframe))
        if ring is None or not len(ring):
            return None
        first_needed = _first_boundary(timeframe, since_ms)
        if ring.oldest() > first_needed:
            return None
        if until_ms < since_ms:
            return []
        return ring.between(since_ms, until_ms)

    def apply_retention(self, now_ms: int, retention: dict[str, int | None]) -> int:
        """Drop candles with ``open_time < now_ms - retention[timeframe]`` (the venue's clock); returns
        how many. Timeframes kept forever (None) or absent from ``retention`` are left alone.

        Memory must not serve what the cold tier has already deleted by age, or a read would show
        candles that a re-read a moment later (from the store) no longer has. A series that empties
        stays known to :meth:`keys`.
        """
        removed = 0
        for (_, timeframe), ring in self._rings.items():
            ret = retention.get(timeframe)
            if ret is not None:
                removed += ring.drop_before(now_ms - ret)
        return removed

    def keys(self) -> list[tuple[str, str]]:
        """Every (instrument, timeframe) that has received a candle."""
        return list(self._rings)

    def __len__(self) -> int:
        """Total number of candles held."""
        return sum(len(r) for r in self._rings.values())


def _first_boundary(timeframe: str, since_ms: int) -> int:
    """The first candle open time at or after ``since_ms`` (``since_ms`` itself for an unknown name)."""
    try:
        return timeframe_of(timeframe).ceil(since_ms)
    except BadInput:
        return since_ms
