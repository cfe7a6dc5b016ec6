"""A venue's depth-limited view of a simulated book (:class:`~deltafeed.replicas.books.SimBook`): the
top levels it last sent, and the changes that bring a client from there to the book as it is now.

Venues stream books to a depth (Bybit ``orderbook.50``, Kraken ``depth=10``, Hyperliquid's 20 levels):
a client that applies every change keeps exactly the top ``depth`` levels of the venue's book. Levels
that leave the view are either sent with size 0 (``prune=True``: Bybit, Coinbase) or left to the
client, which truncates its book to the depth (``prune=False``: Kraken, whose docs say a level
falling out of scope is not sent; only a level gone from the book is). :class:`KeyLog` remembers the
venue key of each recent book state, for a stale snapshot that carries its own, older, key.
"""

from __future__ import annotations

from collections import OrderedDict

from deltafeed.replicas.books import SimBook

Side = dict[int, int]  # price in ticks -> size in lots


def top(side: Side, depth: int, desc: bool) -> Side:
    """The best ``depth`` levels of ``side`` (bids: ``desc``), best first."""
    return {t: side[t] for t in sorted(side, reverse=desc)[:depth]}


def _changes(old: Side, new: Side, book: Side, prune: bool) -> Side:
    ch = {t: q for t, q in new.items() if old.get(t) != q}
    for t in old:
        if t not in new and (prune or t not in book):
            ch[t] = 0
    return ch


class View:
    """The top ``depth`` levels per side of ``book`` as last sent (see the module docstring)."""

    def __init__(self, book: SimBook, depth: int, prune: bool = True) -> None:
        self.book, self.depth, self.prune = book, depth, prune
        self.bids, self.asks = self.now()

    def now(self) -> tuple[Side, Side]:
        """The view of the book as it is now."""
        return top(self.book.bids, self.depth, True), top(self.book.asks, self.depth, False)

    def advance(self) -> tuple[Side, Side] | None:
        """Move the view to the book as it is now; the changed levels (size 0: removed), or None."""
        bids, asks = self.now()
        db = _changes(self.bids, bids, self.book.bids, self.prune)
        da = _changes(self.asks, asks, self.book.asks, self.prune)
        self.bids, self.asks = bids, asks
        return (db, da) if db or da else None

    def texts(self, side: Side, desc: bool) -> list[tuple[str, str]]:
        """Levels of ``side`` as the venue's ``(price, size)`` texts, best first."""
        b = self.book
        return [(b.price(t), b.qty(side[t])) for t in sorted(side, reverse=desc)]


class KeyLog:
    """The venue key of each recent book state (by the book's update id), the newest ``keep``."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self._keys: OrderedDict[int, int] = OrderedDict()

    def add(self, update_id: int, key: int) -> None:
        self._keys[update_id] = key
        if len(self._keys) > self.keep:
            self._keys.popitem(last=False)

    def get(self, update_id: int) -> int | None:
        return self._keys.get(update_id)
