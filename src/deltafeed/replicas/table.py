"""One growable table for the replicas' simulators: append-only rows of a numpy structured dtype.

The simulators fold what their market released into one row per time bucket (Binance: a second,
OANDA/IG: 5 s, Finnhub: a minute) and answer candle queries from those rows. :class:`GrowableTable`
is that store: capacity doubles when full (amortised O(1) appends, no per-row Python objects), rows
stay sorted by their ``t`` field because markets release in time order, and :meth:`search` finds
bucket ranges with a binary search. :meth:`add_buckets` appends a batch's buckets, merging the first
into the last row when the batch continues the bucket the previous one ended in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[Any]
#: ``merge(last, first)``: fold row ``first`` (of the new batch) into ``last`` (the table's), in place.
Merge = Callable[[Any, Any], None]


class GrowableTable:
    """Append-only rows of ``dtype`` (which must have an int64 ``t`` field, the bucket start), sorted by ``t``.

    Invariant: ``rows[:n]`` are the rows, ``rows[n:]`` spare capacity; :meth:`view` is a view, valid
    until the next append (a grown table moves to a new array).
    """

    def __init__(self, dtype: np.dtype[Any], capacity: int = 1024) -> None:
        self.rows: Rows = np.zeros(max(1, capacity), dtype)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def view(self) -> Rows:
        """The rows so far (a view: do not keep it across appends)."""
        return self.rows[: self.n]

    def extend(self, new: Rows) -> None:
        """Append ``new`` rows, doubling the capacity as often as needed."""
        need = self.n + len(new)
        if need > len(self.rows):
            grown = np.zeros(max(need, 2 * len(self.rows)), self.rows.dtype)
            grown[: self.n] = self.rows[: self.n]
            self.rows = grown
        self.rows[self.n : need] = new
        self.n = need

    def add_buckets(self, new: Rows, merge: Merge) -> None:
        """Append one batch's bucket rows; if the first continues the table's last bucket (same ``t``),
        ``merge`` folds it into that row instead of appending it, so a bucket split across two
        batches gives the row one batch would have given."""
        if not len(new):
            return
        if self.n and self.rows["t"][self.n - 1] == new["t"][0]:
            merge(self.rows[self.n - 1], new[0])
            new = new[1:]
        self.extend(new)

    def first_t(self) -> int | None:
        """The first bucket's start, or None while the table is empty."""
        return int(self.rows["t"][0]) if self.n else None

    def search(self, times: Any, side: Literal["left", "right"] = "left") -> Any:
        """Indexes where ``times`` would go among the rows' ``t`` (``numpy.searchsorted``)."""
        return np.searchsorted(self.rows["t"][: self.n], times, side=side)


def bucket_starts(keys: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Start and end index of each run of equal ``keys`` (sorted bucket starts of a batch's items)."""
    starts = np.concatenate([np.zeros(1, np.int64), np.flatnonzero(np.diff(keys)) + 1]).astype(np.int64)
    ends = np.append(starts[1:], len(keys)).astype(np.int64)
    return starts, ends
