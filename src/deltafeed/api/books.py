"""A book as one WebSocket book subscription sees it: a :class:`~deltafeed.books.view.TopView` of a
keeper turned into snapshot and delta frames, the deltas naming the ``sequence`` they follow (``prev``).

One :class:`BookView` per (instrument, depth) with subscribers: each keeper event is diffed once, and
the same frame goes to every subscriber. A keeper change outside the top ``depth`` sends nothing, so
``prev`` (not ``sequence - 1``) is what a consumer checks.
"""

from __future__ import annotations

import msgspec

from deltafeed.api.protocol import BookDeltaData, BookDeltaMsg, BookSnapshotData, BookSnapshotMsg
from deltafeed.books import BookKeeper
from deltafeed.books.view import TopView
from deltafeed.net.frames import text_frame

_encode = msgspec.json.Encoder().encode


class BookView:
    """The (``keeper``, ``depth``) stream's view and its frames."""

    def __init__(self, keeper: BookKeeper, depth: int) -> None:
        self.view = TopView(keeper, depth)
        self.key = (keeper.instrument, depth)
        self._snapshot: bytes | None = None

    def reset(self) -> bytes:
        """Take the keeper's book as it is now; returns its snapshot frame."""
        self.view.reset()
        self._snapshot = None
        return self.snapshot()

    def snapshot(self) -> bytes:
        """The snapshot frame of the view."""
        if self._snapshot is None:
            v = self.view
            data = BookSnapshotData(v.sequence, v.in_sync, v.depth, list(v.bids.items()), list(v.asks.items()))
            self._snapshot = text_frame(_encode(BookSnapshotMsg(v.keeper.instrument, v.time_ms, data)))
        return self._snapshot

    def delta(self) -> bytes | None:
        """The delta frame of the keeper's latest change (None when the top ``depth`` did not change)."""
        moved = self.view.diff()
        if moved is None:
            return None
        prev, bids, asks = moved
        self._snapshot = None
        v = self.view
        return text_frame(
            _encode(BookDeltaMsg(v.keeper.instrument, v.time_ms, BookDeltaData(v.sequence, prev, bids, asks)))
        )
