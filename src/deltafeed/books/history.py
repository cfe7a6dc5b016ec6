"""Book history: periodic snapshots of every kept book and, optionally, every change, in the cold tier
with their own retention; and a book as of a time, rebuilt from them.

Rows (:class:`BookRow`) go to two tables, ``book_snapshots`` and ``book_deltas``, with ``time_ms`` the
moment deltafeed recorded them (its clock, so snapshots and deltas order together) and ``book_ms`` the
book's own (venue) time. Both are taken at the history depth from one :class:`~deltafeed.books.view.TopView`
per book, so a delta row holds exactly the levels of that depth that changed and names the
``sequence`` it follows (``prev``). A snapshot row is written every ``every_s``, and at once when a book
is resynchronised or goes out of sync (then with ``in_sync`` false and no levels: a time inside an
out-of-sync period never reads as a valid book).

The book at time T (:meth:`BookHistory.at`): the newest snapshot recorded at or before T, then the
deltas recorded after it up to T, applied while each names the previous one's ``sequence``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import msgspec

from deltafeed.books.book import L2Book, Level
from deltafeed.books.keeper import BookEvent, BookKeeper
from deltafeed.books.view import TopView
from deltafeed.store.base import BookRow, StoreError

log = logging.getLogger("deltafeed.books.history")

_levels = msgspec.json.Encoder()
_read_levels = msgspec.json.Decoder(list[tuple[float, float]])


@runtime_checkable
class BookTier(Protocol):
    """What a cold tier offers for book history (DuckDB and PostgreSQL implement it)."""

    async def write_books(self, snapshots: list[BookRow], deltas: list[BookRow]) -> None:
        """Store rows (one transaction)."""
        ...

    async def read_book(self, instrument: str, at_ms: int) -> tuple[BookRow | None, list[BookRow]]:
        """The newest snapshot recorded at or before ``at_ms`` (greatest ``(time_ms, sequence)``), and the
        deltas recorded from its time to ``at_ms``, in ``(time_ms, sequence)`` order."""
        ...

    async def book_span(self, instrument: str) -> tuple[int, int] | None:
        """The times of the oldest and newest stored snapshot of ``instrument``, or None."""
        ...

    async def apply_book_retention(self, snapshots_before_ms: int, deltas_before_ms: int) -> int:
        """Delete snapshots and deltas recorded before their cut-offs; returns rows deleted."""
        ...


def book_tier(cold: object) -> BookTier | None:
    """``cold`` as a :class:`BookTier`, or None when that tier keeps no book history."""
    return cold if isinstance(cold, BookTier) else None


def _json(levels: list[Level]) -> str:
    return _levels.encode(levels).decode()


class BookHistory:
    """Records ``keepers``' books into ``tier`` (see the module docstring) until :meth:`close`.

    ``depth`` levels per side (None: each book's served depth), a snapshot every ``every_s``, every
    change too when ``deltas``; rows older than ``snapshot_retention_ms`` / ``delta_retention_ms`` are
    deleted every minute. ``wall_ms`` is the clock rows are recorded by."""

    def __init__(
        self,
        keepers: dict[str, BookKeeper],
        tier: BookTier,
        *,
        every_s: float,
        depth: int | None,
        deltas: bool,
        snapshot_retention_ms: int,
        delta_retention_ms: int,
        wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self.tier = tier
        self.every_s = every_s
        self.deltas = deltas
        self.snapshot_retention_ms = snapshot_retention_ms
        self.delta_retention_ms = delta_retention_ms
        self._wall_ms = wall_ms
        self.views = {name: TopView(k, min(depth or k.depth, k.book.max_levels)) for name, k in keepers.items()}
        self._snapshots: list[BookRow] = []
        self._deltas: list[BookRow] = []
        self.written = 0
        self.failures = 0
        for k in keepers.values():
            k.listeners.append(self._event)

    def _snapshot(self, view: TopView) -> None:
        view.reset()
        self._snapshots.append(
            BookRow(
                view.keeper.instrument,
                self._wall_ms(),
                view.sequence,
                -1,
                view.in_sync,
                view.time_ms,
                _json(list(view.bids.items())),
                _json(list(view.asks.items())),
            )
        )

    def _event(self, ev: BookEvent) -> None:
        view = self.views[ev.instrument]
        if ev.kind != "delta":
            self._snapshot(view)
            return
        if not self.deltas:
            return
        moved = view.diff()
        if moved is not None:
            prev, bids, asks = moved
            self._deltas.append(
                BookRow(
                    ev.instrument, self._wall_ms(), view.sequence, prev, True, view.time_ms, _json(bids), _json(asks)
                )
            )

    async def flush(self) -> None:
        """Write the rows recorded so far (kept for the next try when the store fails)."""
        snaps, deltas = self._snapshots, self._deltas
        if not snaps and not deltas:
            return
        self._snapshots, self._deltas = [], []
        try:
            await self.tier.write_books(snaps, deltas)
        except StoreError as exc:
            self.failures += 1
            log.warning("book history not written (kept for the next try): %s", exc)
            self._snapshots[:0], self._deltas[:0] = snaps, deltas
            return
        self.written += len(snaps) + len(deltas)

    async def run(self) -> None:
        """Snapshot every ``every_s``, write every second, apply retention every minute, until cancelled."""
        loop = asyncio.get_running_loop()
        next_snap = loop.time()
        next_retention = loop.time() + 60.0
        while True:
            now = loop.time()
            if now >= next_snap:
                for view in self.views.values():
                    self._snapshot(view)
                next_snap = now + self.every_s
            await self.flush()
            if now >= next_retention:
                next_retention = now + 60.0
                wall = self._wall_ms()
                with contextlib.suppress(StoreError):
                    await self.tier.apply_book_retention(
                        wall - self.snapshot_retention_ms, wall - self.delta_retention_ms
                    )
            await asyncio.sleep(min(1.0, self.every_s))

    async def close(self) -> None:
        for view in self.views.values():
            with contextlib.suppress(ValueError):
                view.keeper.listeners.remove(self._event)
        await self.flush()

    async def at(self, instrument: str, at_ms: int, depth: int) -> dict[str, Any] | None:
        """The book of ``instrument`` as recorded at ``at_ms`` (``GET /book?at=``'s document), or None."""
        await self.flush()
        snap, deltas = await self.tier.read_book(instrument, at_ms)
        if snap is None:
            return None
        book = L2Book(max(depth, self.views[instrument].depth) if instrument in self.views else depth)
        book.update(_read_levels.decode(snap.bids), _read_levels.decode(snap.asks))
        row = snap
        for d in deltas:
            if d.prev != row.sequence:
                continue  # not the next one of this chain (another run's, or one before the snapshot)
            book.update(_read_levels.decode(d.bids), _read_levels.decode(d.asks))
            row = d
        bids, asks = book.top(depth) if snap.in_sync else ([], [])
        return {
            "instrument": instrument,
            "bids": [list(x) for x in bids],
            "asks": [list(x) for x in asks],
            "in_sync": snap.in_sync,
            "sequence": row.sequence,
            "venue_seq": None,
            "time": row.book_ms,
        }

    async def span(self, instrument: str) -> tuple[int, int] | None:
        return await self.tier.book_span(instrument)
