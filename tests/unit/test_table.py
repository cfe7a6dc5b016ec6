"""GrowableTable: appends past the capacity keep every row, and a bucket split across batches merges."""

from __future__ import annotations

from typing import Any

import numpy as np

from deltafeed.replicas.table import GrowableTable, bucket_starts

DTYPE = np.dtype([("t", np.int64), ("n", np.int64)])


def rows(*pairs: tuple[int, int]) -> Any:
    return np.array(list(pairs), DTYPE)


def add(last: Any, first: Any) -> None:
    last["n"] += first["n"]


def test_grows_by_doubling_and_keeps_rows() -> None:
    t = GrowableTable(DTYPE, capacity=2)
    assert len(t) == 0 and t.first_t() is None
    for i in range(5):
        t.extend(rows((i * 10, i)))
    assert len(t) == 5 and len(t.rows) == 8
    assert t.view()["t"].tolist() == [0, 10, 20, 30, 40] and t.view()["n"].tolist() == [0, 1, 2, 3, 4]
    assert t.first_t() == 0
    assert t.search(np.array([10, 25]), side="left").tolist() == [1, 3]
    assert int(t.search(40, side="right")) == 5


def test_add_buckets_merges_a_continued_bucket_only() -> None:
    t = GrowableTable(DTYPE, capacity=1)
    t.add_buckets(rows((0, 1), (5, 2)), add)
    t.add_buckets(rows((5, 3), (10, 4)), add)  # continues bucket 5
    t.add_buckets(rows((15, 1)), add)
    t.add_buckets(rows(), add)
    assert [tuple(r) for r in t.view().tolist()] == [(0, 1), (5, 5), (10, 4), (15, 1)]


def test_bucket_starts() -> None:
    starts, ends = bucket_starts(np.array([0, 0, 5, 10, 10, 10], np.int64))
    assert starts.tolist() == [0, 2, 3] and ends.tolist() == [2, 3, 6]
