"""Tick storage: bytes per stored tick and ticks/s written, for the DuckDB file and PostgreSQL.

Writes ``--ticks`` simulated trades (a random walk of prices on a 0.01 grid, sizes of 1 to 5
significant digits, ids consecutive, a few trades per millisecond: what a busy Binance symbol
sends) in batches of ``--batch`` through the store's own ``write_ticks`` (the engine's tick
recorder writes one batch per second), then measures the file (DuckDB, after a CHECKPOINT) or the
table's total relation size (PostgreSQL). Prints medians over ``--repeat`` runs, and the cost of
re-writing a batch already stored (a replayed or overlapping batch: skipped, not doubled).

    python bench/ticks.py [--ticks 1000000] [--batch 20000] [--repeat 3] [--pg postgresql://...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import numpy as np

from deltafeed.store.cold import ColdStore, DuckDBTier
from deltafeed.store.ticks import TickBatch, TickTier, TradeRow


def trades(n: int, seed: int, instrument: str = "binance:BTCUSDT") -> list[TradeRow]:
    rng = np.random.default_rng(seed)
    t0 = 1_780_000_000_000
    times = t0 + np.cumsum(rng.poisson(0.3, n))  # ~3 trades per ms
    prices = np.round(65_000 + np.cumsum(rng.integers(-3, 4, n)) * 0.01, 2)
    qtys = np.round(rng.lognormal(-4, 1.5, n), 5)
    qtys[qtys <= 0] = 0.00001
    makers = rng.random(n) < 0.5
    return [
        (instrument, 4_000_000_000 + i, int(t), float(p), float(q), bool(m))
        for i, (t, p, q, m) in enumerate(zip(times, prices, qtys, makers, strict=True))
    ]


async def write_all(tier: TickTier, rows: list[TradeRow], batch: int) -> tuple[float, float]:
    """Seconds to write every row in batches, and seconds to write the last batch once more."""
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        await tier.write_ticks(TickBatch(trades=rows[i : i + batch]))
    took = time.perf_counter() - t0
    t1 = time.perf_counter()
    await tier.write_ticks(TickBatch(trades=rows[-batch:]))
    return took, time.perf_counter() - t1


async def duckdb_run(rows: list[TradeRow], batch: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ticks.duckdb")
        store = ColdStore(path)
        empty = os.path.getsize(path)
        tier = DuckDBTier(store)
        took, again = await write_all(tier, rows, batch)
        stored = store.tick_instruments()[0][1]
        assert stored == len(rows), (stored, len(rows))
        store.close()
        size = os.path.getsize(path) - empty
    return len(rows) / took, size / len(rows), again


async def pg_run(url: str, rows: list[TradeRow], batch: int) -> tuple[float, float, float]:
    from deltafeed.store.postgres import PostgresStore

    schema = f"bench_ticks_{os.getpid()}"
    store = await PostgresStore.open(url, None, schema=schema)
    try:
        took, again = await write_all(store, rows, batch)
        size = await store.tick_bytes()
    finally:
        async with store._pool.acquire() as con:
            await con.execute(f"DROP SCHEMA {schema} CASCADE")
        await store.close()
    return len(rows) / took, size / len(rows), again


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", help="also measure PostgreSQL at this URL")
    args = ap.parse_args()
    rows = trades(args.ticks, 7)
    raw = 8 + 8 + 8 + 8 + 1  # id, time, price, qty, side as fixed-width binary, without the name
    print(f"{args.ticks:,} trades in batches of {args.batch:,}; raw fixed-width size {raw} bytes per trade")
    targets = [("duckdb", lambda: duckdb_run(rows, args.batch))]
    if args.pg:
        targets.append(("postgresql", lambda: pg_run(args.pg, rows, args.batch)))
    for name, run in targets:
        results = [await run() for _ in range(args.repeat)]
        rate = statistics.median(r[0] for r in results)
        per = statistics.median(r[1] for r in results)
        again = statistics.median(r[2] for r in results)
        print(
            f"{name:10s} ticks/s written median {rate:,.0f}   bytes per stored tick median {per:.1f}"
            f"   re-writing a stored batch of {args.batch:,}: {again * 1000:.0f} ms (skipped, not doubled)"
        )


if __name__ == "__main__":
    asyncio.run(main())
