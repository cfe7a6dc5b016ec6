"""Keeps one instrument's book: applies a venue's snapshots and deltas, says whether it is in sync,
numbers what it applied, and tells listeners (the API) about every change.

A venue's book feed (``venues/<name>/book.py``) decides, by the venue's sequencing rule, whether a
message continues the book; the keeper only applies what it is given and tracks the state:

- :meth:`BookKeeper.snapshot` replaces the book and makes it in sync; :meth:`BookKeeper.apply`
  applies a delta; each adds 1 to :attr:`BookKeeper.sequence` (ours: a consumer of the deltas checks
  that it grows by exactly 1) and sets :attr:`BookKeeper.venue_seq` (the venue's key of the last
  applied message, the same key as the replicas' book tape ``seq``) and :attr:`BookKeeper.time_ms`.
- :meth:`BookKeeper.lost` marks the book out of sync (a gap, a bad checksum, a dropped connection):
  counted per kind in :attr:`BookKeeper.resyncs`, logged at warning the first time a kind happens
  for the instrument and at debug after; the feed then resynchronises this instrument only. An
  out-of-sync book is never served as valid (:meth:`BookKeeper.view` says ``in_sync: false``).
- Out-of-sync periods are measured (:attr:`BookKeeper.out_of_sync_s`, :attr:`BookKeeper.periods`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from deltafeed.books.book import L2Book, Level

log = logging.getLogger("deltafeed.books")


@dataclass(slots=True)
class BookEvent:
    """What a listener hears: a ``snapshot`` (the whole book, after which deltas continue), a ``delta``
    (the changed levels, size 0 removed), or ``lost`` (the book went out of sync; no levels)."""

    kind: str
    instrument: str
    sequence: int
    venue_seq: int | None
    time_ms: int
    bids: list[Level]
    asks: list[Level]


BookListener = Callable[[BookEvent], None]


class BookKeeper:
    """One instrument's book (see the module docstring). ``depth`` is the most levels served per side,
    ``keep`` the most kept (>= depth; a venue's snapshot depth), ``clock`` gives wall seconds."""

    def __init__(
        self, instrument: str, depth: int = 100, keep: int | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.instrument = instrument
        self.depth = depth
        self.book = L2Book(max(depth, keep or depth))
        self.in_sync = False
        self.sequence = 0
        self.venue_seq: int | None = None
        self.time_ms = 0
        #: Resynchronisations per kind (``gap``, ``checksum``, ``stale_snapshot``, ``disconnect``, ...).
        self.resyncs: Counter[str] = Counter()
        self.snapshots = 0
        self.deltas = 0
        self._clock = clock
        self._lost_at: float | None = clock()  # out of sync until the first snapshot
        #: Closed out-of-sync periods, seconds each (the newest 100).
        self.periods: deque[float] = deque(maxlen=100)
        self._out_total = 0.0
        self.listeners: list[BookListener] = []

    def _emit(self, kind: str, bids: list[Level], asks: list[Level]) -> None:
        if self.listeners:
            ev = BookEvent(kind, self.instrument, self.sequence, self.venue_seq, self.time_ms, bids, asks)
            for fn in list(self.listeners):
                fn(ev)

    def snapshot(self, bids: Iterable[Level], asks: Iterable[Level], venue_seq: int | None, time_ms: int) -> None:
        """Replace the book with a snapshot at venue key ``venue_seq``; the book is in sync after it."""
        self.book.clear()
        self.book.update(bids, asks)
        self.sequence += 1
        self.snapshots += 1
        self.venue_seq, self.time_ms = venue_seq, time_ms
        if self._lost_at is not None:
            d = self._clock() - self._lost_at
            self.periods.append(d)
            self._out_total += d
            self._lost_at = None
        self.in_sync = True
        if self.listeners:
            b, a = self.book.top(self.depth)
            self._emit("snapshot", b, a)

    def apply(self, bids: list[Level], asks: list[Level], venue_seq: int | None, time_ms: int) -> None:
        """Apply a delta (the venue's feed has checked that it continues the book)."""
        self.book.update(bids, asks)
        self.sequence += 1
        self.deltas += 1
        self.venue_seq, self.time_ms = venue_seq, time_ms
        self._emit("delta", bids, asks)

    def lost(self, kind: str, detail: str = "") -> None:
        """The book is out of sync (``kind``: what broke it); counted, logged once per kind."""
        self.resyncs[kind] += 1
        level = logging.WARNING if self.resyncs[kind] == 1 else logging.DEBUG
        log.log(
            level, "%s book out of sync (%s)%s; resynchronising", self.instrument, kind, f": {detail}" if detail else ""
        )
        if self.in_sync:
            self.in_sync = False
            self._lost_at = self._clock()
            self._emit("lost", [], [])

    @property
    def out_of_sync_s(self) -> float:
        """Seconds out of sync so far (the current period included)."""
        now = self._clock()
        return self._out_total + (now - self._lost_at if self._lost_at is not None else 0.0)

    def view(self, depth: int | None = None) -> dict[str, Any]:
        """What ``GET /book/{instrument}`` answers: best ``depth`` levels (at most :attr:`depth`) per
        side as ``[price, size]``, ``in_sync``, our ``sequence``, the venue's key and the book's time (ms)."""
        d = self.depth if depth is None else min(depth, self.depth)
        bids, asks = self.book.top(d) if self.in_sync else ([], [])
        return {
            "instrument": self.instrument,
            "bids": [list(x) for x in bids],
            "asks": [list(x) for x in asks],
            "in_sync": self.in_sync,
            "sequence": self.sequence,
            "venue_seq": self.venue_seq,
            "time": self.time_ms,
        }

    def status(self) -> dict[str, Any]:
        """Best bid/ask and spread (when in sync) and the sync counters, for ``/streaming/status``."""
        out: dict[str, Any] = {"in_sync": self.in_sync, "sequence": self.sequence, "venue_seq": self.venue_seq}
        bid, ask = self.book.best() if self.in_sync else (None, None)
        if bid is not None and ask is not None:
            out.update(best_bid=bid[0], best_ask=ask[0], spread=ask[0] - bid[0])
        out.update(
            snapshots=self.snapshots,
            deltas=self.deltas,
            resyncs=dict(self.resyncs),
            out_of_sync_s=round(self.out_of_sync_s, 3),
            longest_out_of_sync_s=round(max(self.periods, default=0.0), 3),
        )
        return out
