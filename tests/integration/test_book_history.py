"""Book history in both cold tiers: a keeper driven through snapshots, deltas and an out-of-sync spell,
recorded by BookHistory; the book read back as of each recorded moment equals the book the keeper
served then (kept independently here, as plain dicts), and retention deletes each kind by its own age."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from deltafeed.books import BookKeeper
from deltafeed.books.history import BookHistory, BookTier
from deltafeed.store.cold import ColdStore, DuckDBTier
from deltafeed.store.postgres import PostgresStore

PG_URL = os.environ.get("DELTAFEED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DEPTH = 5


@pytest.fixture(params=["duckdb", "postgres"])
async def tier(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BookTier]:
    if request.param == "duckdb":
        t = DuckDBTier(ColdStore(tmp_path / "b.duckdb"))
        yield t
        await t.close()
        return
    schema = f"deltafeed_t_{uuid.uuid4().hex}"
    st = await PostgresStore.open(PG_URL, schema=schema)
    try:
        yield st
    finally:
        await st.close()
        con = await asyncpg.connect(PG_URL)
        await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await con.close()


def _top(bids: dict[float, float], asks: dict[float, float]) -> tuple[list[list[float]], list[list[float]]]:
    return (
        [[p, q] for p, q in sorted(bids.items(), reverse=True)[:DEPTH]],
        [[p, q] for p, q in sorted(asks.items())[:DEPTH]],
    )


@pytest.mark.parametrize("deltas", [True, False])
async def test_book_as_of_each_moment(tier: BookTier, deltas: bool) -> None:
    now = [1_000_000]
    k = BookKeeper("binance:BTCUSDT", depth=DEPTH, keep=50)
    h = BookHistory(
        {k.instrument: k}, tier, every_s=10, depth=None, deltas=deltas,
        snapshot_retention_ms=3_600_000, delta_retention_ms=600_000, wall_ms=lambda: now[0],
    )  # fmt: skip
    rng = random.Random(1)
    bids = {100.0 - i: float(i + 1) for i in range(20)}
    asks = {101.0 + i: float(i + 1) for i in range(20)}
    k.snapshot(list(bids.items()), list(asks.items()), 7, now[0])
    served: dict[int, tuple[bool, tuple[list[list[float]], list[list[float]]]]] = {now[0]: (True, _top(bids, asks))}
    snap_at = {now[0]}
    for step in range(200):
        now[0] += 10
        if step == 120:
            k.lost("gap")
            served[now[0]] = (False, ([], []))
            snap_at.add(now[0])
            continue
        if step == 125:
            k.snapshot(list(bids.items()), list(asks.items()), 900, now[0])
            served[now[0]] = (True, _top(bids, asks))
            snap_at.add(now[0])
            continue
        if 120 < step < 125:
            continue
        db: list[tuple[float, float]] = []
        da: list[tuple[float, float]] = []
        for _ in range(3):
            side, ch = (bids, db) if rng.random() < 0.5 else (asks, da)
            p = float(rng.randrange(95, 100) if side is bids else rng.randrange(101, 106))
            q = 0.0 if rng.random() < 0.3 else float(rng.randrange(1, 9))
            ch.append((p, q))
            if q:
                side[p] = q
            else:
                side.pop(p, None)
        k.apply(db, da, 1000 + step, now[0])
        served[now[0]] = (True, _top(bids, asks))
        if step % 50 == 0:  # the periodic snapshot
            h._snapshot(h.views[k.instrument])
            snap_at.add(now[0])
    await h.flush()
    last_snap = 0
    checked = 0
    for t in sorted(served):
        last_snap = t if t in snap_at else last_snap
        doc = await h.at(k.instrument, t, DEPTH)
        assert doc is not None
        # With deltas the book at every moment; without, as of the last snapshot.
        in_sync, (want_b, want_a) = served[t if deltas else last_snap]
        assert doc["in_sync"] is in_sync, t
        assert (doc["bids"], doc["asks"]) == (want_b, want_a), t
        checked += 1
    assert checked == len(served)
    assert await h.at(k.instrument, 999_999, DEPTH) is None
    span = await tier.book_span(k.instrument)
    assert span is not None and span[0] == 1_000_000
    # Retention: deltas older than their cut-off go, snapshots stay until theirs.
    deleted = await tier.apply_book_retention(1_000_000, now[0] + 1)
    snap, rest = await tier.read_book(k.instrument, now[0])
    assert snap is not None and rest == [] and (deleted > 0) is deltas
    assert await tier.apply_book_retention(now[0] + 1, now[0] + 1) > 0
    assert await tier.read_book(k.instrument, now[0]) == (None, [])


@pytest.mark.slow  # three CLI processes
def test_book_history_exports(tmp_path: Path) -> None:
    """``deltafeed export INSTRUMENT book_snapshots|book_deltas OUT``: the stored rows, levels as lists."""
    import asyncio
    import subprocess
    import sys

    import duckdb

    db = tmp_path / "x.duckdb"

    async def record() -> None:
        tier = DuckDBTier(ColdStore(db))
        k = BookKeeper("binance:BTCUSDT", depth=3, keep=10)
        h = BookHistory(
            {k.instrument: k}, tier, every_s=10, depth=None, deltas=True,
            snapshot_retention_ms=3_600_000, delta_retention_ms=600_000, wall_ms=lambda: 1_780_000_000_000,
        )  # fmt: skip
        k.snapshot([(100.0, 1.0), (99.5, 2.0)], [(101.0, 3.0)], 5, 1_779_999_999_000)
        k.apply([(100.0, 0.0)], [(100.5, 4.0)], 6, 1_779_999_999_100)
        await h.close()
        await tier.close()

    asyncio.run(record())
    for kind, want in (("book_snapshots", [[[100.0, 1.0], [99.5, 2.0]]]), ("book_deltas", [[[100.0, 0.0]]])):
        out = tmp_path / f"{kind}.parquet"
        done = subprocess.run(
            [sys.executable, "-m", "deltafeed", "export", "binance:BTCUSDT", kind, str(out), "--db", str(db)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "wrote 1 rows" in done.stderr
        rows = duckdb.connect().execute(f"SELECT bids, sequence FROM '{out}'").fetchall()
        assert [r[0] for r in rows] == want and rows[0][1] == (1 if kind == "book_snapshots" else 2)
    done = subprocess.run(
        [sys.executable, "-m", "deltafeed", "export", "binance:ETHUSDT", "book_deltas", str(tmp_path / "n.csv"),
         "--db", str(db), "--format", "csv"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "no such rows" in done.stderr and "Traceback" not in done.stderr
