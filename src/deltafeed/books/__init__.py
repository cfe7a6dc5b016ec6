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
from deltafeed.books.keeper import BookEvent, BookKeeper, BookListener
from deltafeed.model import BadInput, Instrument

if TYPE_CHECKING:
    from deltafeed.config import Settings

__all__ = ["BookEvent", "BookFeed", "BookKeeper", "BookListener", "Books", "L2Book", "Level"]


class BookFeed(Protocol):
    """A venue's live order books for some of its instruments (see the module docstring)."""

    async def run(self) -> None:
        """Keep every instrument's book in sync until cancelled (reconnecting and resyncing itself)."""

    def status(self) -> dict[str, Any]:
        """The feed's own counters (connections, malformed messages skipped, ...)."""


class Books:
    """The run's books: one :class:`BookKeeper` per instrument of ``settings.books`` (by ``venue:SYMBOL``)
    and one :class:`BookFeed` per venue, run by :meth:`start` until :meth:`stop`."""

    def __init__(self, settings: Settings) -> None:
        from deltafeed.names import native
        from deltafeed.venues import registry

        self.keepers: dict[str, BookKeeper] = {}
        for name in settings.books:
            inst = Instrument.parse(native(name, settings.venue))
            depth = settings.book_depths.get(str(inst), settings.book_depth)
            self.keepers[str(inst)] = BookKeeper(str(inst), depth)
        self.feeds: dict[str, BookFeed] = {}
        for venue in sorted({k.partition(":")[0] for k in self.keepers}):
            mine = {k.partition(":")[2]: v for k, v in self.keepers.items() if k.startswith(venue + ":")}
            feed = registry.get(venue).make_book_feed(settings, mine)
            if feed is None:
                raise BadInput(f"{venue} has no order books here; leave {', '.join(mine)} out of books")
            self.feeds[venue] = feed
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for venue, feed in self.feeds.items():
            self._tasks.append(asyncio.create_task(feed.run(), name=f"books-{venue}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def get(self, instrument: str) -> BookKeeper | None:
        return self.keepers.get(instrument)

    def status(self) -> dict[str, Any]:
        """Per instrument: best bid/ask, spread and the sync counters; per venue: the feed's counters."""
        return {
            "books": {k: v.status() for k, v in self.keepers.items()},
            "book_feeds": {v: f.status() for v, f in self.feeds.items()},
        }
