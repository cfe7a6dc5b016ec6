"""The hot tier: the most recent candles of every (instrument, timeframe) in bounded memory rings."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from msgspec.structs import replace as _copy

from deltafeed.model import BadInput, Candle
from deltafeed.model import timeframe as timeframe_of


class _Ring:
    """Candles of one series, ascending by open_time, holding at most ``capacity`` of them.

    Two parallel lists (candles and their open times, for ``bisect``). Appending is amortised O(1):
    the lists may grow up to ``capacity + slack`` before the oldest surplus is cut in one ``del``,
    and everything before ``_off()`` is treated as already gone.
    """

    __slots__ = ("candles", "capacity", "slack", "times")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slack = max(16, capacity // 4)
        self.times: list[int] = []
        self.candles: list[Candle] = []

    def _off(self) -> int:
        return max(0, len(self.times) - self.capacity)

    def _trim(self) -> None:
        if len(self.times) >= self.capacity + self.slack:
            cut = len(self.times) - self.capacity
            del self.times[:cut]
            del self.candles[:cut]

    def put(self, candle: Candle) -> bool:
        t = candle.open_time
        times = self.times
        if not times or t > times[-1]:
            times.append(t)
            self.candles.append(_copy(candle))
            self._trim()
            return True
        if t == times[-1]:
            self.candles[-1] = _copy(candle)
            return True
        off = self._off()
        if len(times) - off >= self.capacity and t < times[off]:
            return False  # older than anything the full ring holds: that is the cold tier's business
        i = bisect_left(times, t, off)
        if times[i] == t:
            self.candles[i] = _copy(candle)
            return True
        # A candle missing inside the covered span (e.g. a late backfill): insert it in order.
        times.insert(i, t)
        self.candles.insert(i, _copy(candle))
        self._trim()
        return True

    def last(self, n: int) -> list[Candle]:
        if n <= 0:
            return []
        return self.candles[max(self._off(), len(self.candles) - n) :]

    def oldest(self) -> int:
        return self.times[self._off()]

    def get(self, open_time: int) -> Candle | None:
        off = self._off()
        i = bisect_left(self.times, open_time, off)
        return self.candles[i] if i < len(self.times) and self.times[i] == open_time else None

    def between(self, since_ms: int, until_ms: int) -> list[Candle]:
        lo = bisect_left(self.times, since_ms, self._off())
        hi = bisect_right(self.times, until_ms, lo)
        return self.candles[lo:hi]

    def drop_before(self, cutoff: int) -> int:
        """Remove every candle with open_time < ``cutoff``; returns how many were in the ring."""
        off = self._off()
        i = bisect_left(self.times, cutoff, off)
        if i > off:  # the stale prefix before ``off`` goes too
            del self.times[:i]
            del self.candles[:i]
        return i - off

    def __len__(self) -> int:
        return len(self.times) - self._off()


class HotStore:
    """Bounded rings of recent candles per (instrument, timeframe), for fast reads of "the latest N".

    Every ``put`` is an upsert keyed by open_time and stores a copy, because the aggregator keeps
    mutating the candle object it passed in. The store is meant for one thread (the event loop); it
    does no locking. The candles it returns are its own copies: treat them as read-only.
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
