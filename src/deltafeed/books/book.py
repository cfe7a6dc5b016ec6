"""One instrument's level-2 book: price -> size per side, prices kept sorted, depth bounded.

Each side is a dict (price -> size) beside a sorted list of its keys maintained with :mod:`bisect`
(bids keyed by the negated price, so both lists run best first). At the depths books are kept
(<= a few thousand levels) an insertion into a Python list is one ``memmove`` of a few KB, as fast
as a balanced structure (see bench/books.py, which measures it against sortedcontainers). A side
never holds more than ``max_levels`` after a change: the worst levels beyond it are then dropped.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable

Level = tuple[float, float]


class _Side:
    __slots__ = ("keys", "levels", "sign")

    def __init__(self, sign: float) -> None:
        self.sign = sign  # -1.0 for bids (best = highest), 1.0 for asks
        self.levels: dict[float, float] = {}
        self.keys: list[float] = []  # sign * price, ascending: best first

    def set(self, price: float, size: float) -> None:
        levels = self.levels
        if size <= 0.0:
            if levels.pop(price, None) is not None:
                keys = self.keys
                del keys[bisect_left(keys, self.sign * price)]
            return
        if price not in levels:
            insort(self.keys, self.sign * price)
        levels[price] = size

    def trim(self, max_levels: int) -> None:
        """Drop the worst levels beyond ``max_levels``."""
        keys = self.keys
        if len(keys) > max_levels:
            s, levels = self.sign, self.levels
            for k in keys[max_levels:]:
                del levels[s * k]
            del keys[max_levels:]

    def top(self, depth: int) -> list[Level]:
        s, lv = self.sign, self.levels
        return [(s * k, lv[s * k]) for k in self.keys[:depth]]

    def best(self) -> Level | None:
        if not self.keys:
            return None
        p = self.sign * self.keys[0]
        return p, self.levels[p]


class L2Book:
    """Bids and asks of one instrument, at most ``max_levels`` per side (sizes 0 remove a level)."""

    __slots__ = ("asks", "bids", "max_levels")

    def __init__(self, max_levels: int = 1000) -> None:
        self.max_levels = max_levels
        self.bids = _Side(-1.0)
        self.asks = _Side(1.0)

    def clear(self) -> None:
        self.bids = _Side(-1.0)
        self.asks = _Side(1.0)

    def set(self, bid: bool, price: float, size: float) -> None:
        """Set one level (``size`` 0 removes it)."""
        side = self.bids if bid else self.asks
        side.set(price, size)
        side.trim(self.max_levels)

    def update(self, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Set many levels, in order (a price changed twice ends at its later size), then drop the
        worst beyond the bound: a level removed and one added in one message never crowd each other out."""
        b, a = self.bids, self.asks
        bset, aset = b.set, a.set
        for p, s in bids:
            bset(p, s)
        for p, s in asks:
            aset(p, s)
        b.trim(self.max_levels)
        a.trim(self.max_levels)

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        """The best ``depth`` bids (highest first) and asks (lowest first)."""
        return self.bids.top(depth), self.asks.top(depth)

    def best(self) -> tuple[Level | None, Level | None]:
        """The best bid and ask (None for an empty side)."""
        return self.bids.best(), self.asks.best()

    def __len__(self) -> int:
        return len(self.bids.keys) + len(self.asks.keys)
