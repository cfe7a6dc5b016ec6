"""The top ``depth`` levels of a kept book as a consumer last saw them, and what changed since: the one
diff behind the WebSocket book deltas and the stored book deltas.

A keeper's delta may touch levels beyond ``depth``, and a change inside it may pull a level from
beyond into view; diffing the top ``depth`` before and after gives exactly the levels a consumer of
that depth must change (size 0: gone from its view), so its copy stays equal to ours.
"""

from __future__ import annotations

from deltafeed.books.book import Level
from deltafeed.books.keeper import BookKeeper


def _diff(old: dict[float, float], new: list[Level]) -> list[Level]:
    """Levels of ``old`` gone from ``new`` (size 0), then those of ``new`` that differ from ``old``:
    removals first, so a consumer bounded to the depth has room for what comes into view."""
    seen = {p for p, _ in new}
    out = [(p, 0.0) for p in old if p not in seen]
    out += [(p, q) for p, q in new if old.get(p) != q]
    return out


class TopView:
    """The best ``depth`` levels of ``keeper`` as last taken (:meth:`reset`) or moved (:meth:`diff`),
    with the keeper's ``sequence`` and time then."""

    def __init__(self, keeper: BookKeeper, depth: int) -> None:
        self.keeper = keeper
        self.depth = depth
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.in_sync = False
        self.sequence = 0
        self.time_ms = 0

    def reset(self) -> None:
        """Take the keeper's book as it is now (no levels while it is out of sync)."""
        k = self.keeper
        bids, asks = k.book.top(self.depth) if k.in_sync else ([], [])
        self.bids, self.asks = dict(bids), dict(asks)
        self.in_sync, self.sequence, self.time_ms = k.in_sync, k.sequence, k.time_ms

    def diff(self) -> tuple[int, list[Level], list[Level]] | None:
        """Move to the keeper's book now: ``(prev sequence, changed bids, changed asks)``, or None
        when the top ``depth`` did not change (the view keeps its sequence then)."""
        k = self.keeper
        bids, asks = k.book.top(self.depth)
        db, da = _diff(self.bids, bids), _diff(self.asks, asks)
        if not db and not da:
            return None
        prev = self.sequence
        self.bids, self.asks = dict(bids), dict(asks)
        self.sequence, self.time_ms = k.sequence, k.time_ms
        return prev, db, da
