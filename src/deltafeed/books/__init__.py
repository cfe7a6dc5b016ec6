"""Order books: level-2 books kept exact from a venue's snapshots and deltas, verified continuously.

- :mod:`deltafeed.books.book`: :class:`L2Book`, one instrument's sorted, depth-bounded levels.
- :mod:`deltafeed.books.keeper`: :class:`BookKeeper`, one instrument's book with ``in_sync``, our
  ``sequence``, the venue's ``venue_seq``, resync counters and listeners.
- Here: :class:`BookFeed`, what a venue plugs in, and :class:`Books`, the run's keepers and feeds.

**How a venue plugs in.** ``Venue.make_book_feed(settings, keepers)`` (``venues/base.py``) returns a
:class:`BookFeed` for the venue's instruments in ``keepers`` (symbol -> keeper), or None when the
venue has no books. The feed lives in ``venues/<name>/book.py``: it connects, applies the venue's
sequencing rule (snapshot + deltas, sequence numbers, checksums), calls ``keeper.snapshot`` /
``keeper.apply`` for what continues the book and ``keeper.lost(kind)`` for what breaks it, then
resynchronises that instrument only. Settings: ``books = ["binance:BTCUSDT", ...]`` (``--books``),
``book_depth`` (levels served per side, default 100) and ``book_depths`` per instrument.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Protocol

from deltafeed.books.book import L2Book, Level
from deltafeed.books.history import BookHistory, book_tier
from deltafeed.books.keeper import BookEvent, BookKeeper, BookListener
from deltafeed.fmt import iso
from deltafeed.model import BadInput, Instrument

if TYPE_CHECKING:
    from deltafeed.config import Settings

#: Levels kept per side of every book (more when its served depth is larger): deeper than served, so a
#: level removed near the top uncovers the venue's next one rather than a hole. A venue whose book is
#: shallower by its own rules (a fixed-depth channel) sets ``keeper.book.max_levels`` itself.
KEEP_LEVELS = 1000

__all__ = ["BookEvent", "BookFeed", "BookKeeper", "BookListener", "Books", "L2Book", "Level"]


class BookFeed(Protocol):
    """A venue's live order books for some of its instruments (see the module docstring)."""

    async def run(self) -> None:
        """Keep every instrument's book in sync until cancelled (reconnecting and resyncing itself)."""
        ...

    def set_share(self, rest: float, connects: float) -> None:
        """Keep to fractions of its REST pace and connection attempts (see ``SharedLimits``)."""
        ...

    def status(self) -> dict[str, Any]:
        """The feed's own counters (connections, malformed messages skipped, ...)."""


class Books:
    """The run's books: one :class:`BookKeeper` per instrument of ``names`` (default ``settings.books``;
    by ``venue:SYMBOL``)
    and one :class:`BookFeed` per venue, run by :meth:`start` until :meth:`stop`."""

    def __init__(self, settings: Settings, names: list[str] | None = None) -> None:
        self.keepers: dict[str, BookKeeper] = {}
        self.settings = settings
        for name in settings.books if names is None else names:
            self._keeper(name)
        self.history: BookHistory | None = None
        self.feeds: dict[str, BookFeed] = {}
        #: Parts of the venues' limits the book feeds keep to (see :meth:`set_share`).
        self.shares: dict[str, tuple[float, float]] = {}
        for venue in sorted({k.partition(":")[0] for k in self.keepers}):
            self._make_feed(venue)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    def _keeper(self, name: str) -> BookKeeper:
        from deltafeed.names import native

        inst = Instrument.parse(native(name, self.settings.venue))
        depth = self.settings.book_depths.get(str(inst), self.settings.book_depth)
        keeper = self.keepers[str(inst)] = BookKeeper(str(inst), depth, keep=max(depth, KEEP_LEVELS))
        return keeper

    def _make_feed(self, venue: str) -> None:
        """The book feed of ``venue``'s keepers (none: its feed goes)."""
        from deltafeed.venues import registry

        mine = {k.partition(":")[2]: v for k, v in self.keepers.items() if k.startswith(venue + ":")}
        if not mine:
            self.feeds.pop(venue, None)
            return
        feed = registry.get(venue).make_book_feed(self.settings, mine)
        if feed is None:
            raise BadInput(f"{venue} has no order books here; leave {', '.join(mine)} out of books")
        if venue in self.shares:  # within the part of the venue's limits given so far
            feed.set_share(*self.shares[venue])
        self.feeds[venue] = feed

    def set_share(self, venue: str, rest: float, connects: float) -> None:
        """Keep ``venue``'s book feed (and those made later) to fractions of its REST pace and
        connection attempts (see :class:`~deltafeed.venues.base.SharedLimits`)."""
        self.shares[venue] = (rest, connects)
        feed = self.feeds.get(venue)
        if feed is not None:
            feed.set_share(rest, connects)

    async def add(self, name: str) -> BookKeeper:
        """Keep the book of ``name`` from now on, while the books run: its venue's book feed is made
        again with it (a new connection; every book of that venue resynchronises)."""
        inst = str(Instrument.parse(name))
        if inst in self.keepers:
            return self.keepers[inst]
        keeper = self._keeper(name)
        try:
            await self._refeed(inst.partition(":")[0])
        except BaseException:
            del self.keepers[inst]
            raise
        return keeper

    async def drop(self, name: str) -> None:
        """Stop keeping the book of ``name``: its venue's book feed is made again without it."""
        inst = str(Instrument.parse(name))
        if self.keepers.pop(inst, None) is not None:
            await self._refeed(inst.partition(":")[0])

    async def _refeed(self, venue: str) -> None:
        task = next((t for t in self._tasks if t.get_name() == f"books-{venue}"), None)
        if task is not None:
            self._tasks.remove(task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._make_feed(venue)
        feed = self.feeds.get(venue)
        if self._started and feed is not None:
            self._tasks.append(asyncio.create_task(feed.run(), name=f"books-{venue}"))

    def start(self, cold: object = None) -> None:
        """Run the feeds, and record the books' history into ``cold`` when it keeps one (see
        :mod:`deltafeed.books.history`) and ``book_snapshot_every`` is not off."""
        s = self.settings
        self._started = True
        tier = book_tier(cold)
        if self.keepers and tier is not None and s.book_snapshot_every != "off":
            self.history = BookHistory(
                self.keepers,
                tier,
                every_s=s.seconds("book_snapshot_every"),
                depth=s.book_history_depth,
                deltas=s.book_deltas,
                snapshot_retention_ms=round(s.seconds("book_snapshot_retention") * 1000),
                delta_retention_ms=round(s.seconds("book_delta_retention") * 1000),
            )
            self._tasks.append(asyncio.create_task(self.history.run(), name="book-history"))
        for venue, feed in self.feeds.items():
            self._tasks.append(asyncio.create_task(feed.run(), name=f"books-{venue}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self.history is not None:
            await self.history.close()

    async def at(self, instrument: str, at_ms: int, depth: int) -> dict[str, Any] | None:
        """The book as recorded at ``at_ms`` (None: nothing stored then); :class:`BadInput` without history."""
        if self.history is None:
            raise BadInput("this collector keeps no book history (book_snapshot_every is off, or the store keeps none)")
        return await self.history.at(instrument, at_ms, depth)

    async def history_span(self, instrument: str) -> str:
        """What book history of ``instrument`` is stored, in words (for a 404)."""
        span = None if self.history is None else await self.history.span(instrument)
        if span is None:
            return "none is stored yet"
        return f"snapshots are stored from {iso(span[0])} to {iso(span[1])}"

    def get(self, instrument: str) -> BookKeeper | None:
        return self.keepers.get(instrument)

    def status(self) -> dict[str, Any]:
        """Per instrument: best bid/ask, spread and the sync counters; per venue: the feed's counters."""
        return {
            "books": {k: v.status() for k, v in self.keepers.items()},
            "book_feeds": {v: f.status() for v, f in self.feeds.items()},
        }
