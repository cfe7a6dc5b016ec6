"""Tick storage: bytes per stored tick and ticks/s written, for the DuckDB file and PostgreSQL; and
what recording costs the engine per trade.

Writes ``--ticks`` simulated trades (a random walk of prices on a 0.01 grid, sizes of 1 to 5
significant digits, ids consecutive, a few trades per millisecond: what a busy Binance symbol
sends) in batches of ``--batch`` through the store's own ``write_ticks`` (the engine's tick
recorder writes one batch per second), then measures the file (DuckDB, after a CHECKPOINT) or the
table's total relation size (PostgreSQL). Prints medians over ``--repeat`` runs, and the cost of
re-writing a batch already stored (a replayed or overlapping batch: skipped, not doubled).

The recorder figures feed ``--ticks`` trades through a real series (an unstarted engine's, five
timeframes) with ticks off and on: the extra cost of the hot path (one list append), then of
the recorder's batch (swap the lists, turn the objects into columns, find gaps: off the loop, in a
worker thread) and of the store write, per trade.

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
    """Seconds to write every row in batches, and seconds to write the last batch once more. The
    batches are columns, as the engine's recorder hands them over (its cost is measured apart)."""
    batches = [
        TickBatch(trade_arrays=TickBatch(trades=rows[i : i + batch]).arrays()[0]) for i in range(0, len(rows), batch)
    ]
    t0 = time.perf_counter()
    for b in batches:
        await tier.write_ticks(b)
    took = time.perf_counter() - t0
    t1 = time.perf_counter()
    await tier.write_ticks(batches[-1])
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


async def recorder_costs(n: int, repeat: int) -> None:
    from deltafeed.config import Settings
    from deltafeed.engine import Engine
    from deltafeed.model import Trade
    from deltafeed.store.ticks import TickRecorder

    rows = trades(n, 11)
    objs = [Trade("BTCUSDT", i, t, p, q, m) for _, i, t, p, q, m in rows]
    with tempfile.TemporaryDirectory() as tmp:
        per: dict[str, list[float]] = {}
        for k in range(2 * repeat):
            on = k % 2 == 1
            settings = Settings(
                symbols=["BTCUSDT"],
                timeframes=["1s", "1m", "5m", "15m", "1h"],
                db=os.path.join(tmp, "e.duckdb"),
                spool="off",
            ).validate()
            st = Engine(settings).states["binance:BTCUSDT"]
            rec = None
            if on:
                rec = TickRecorder(DuckDBTier(ColdStore(os.path.join(tmp, f"r{k}.duckdb"))))
                rec.attach(st)
            t0 = time.perf_counter()
            for t in objs:
                st.on_trade(t)
            per.setdefault("on_trade, ticks " + ("on" if on else "off"), []).append((time.perf_counter() - t0) / n)
            if rec is not None:
                t1 = time.perf_counter()
                taken = rec._swap()
                batch = await asyncio.to_thread(rec._convert, taken, [])
                t2 = time.perf_counter()
                await rec.tier.write_ticks(batch)
                t3 = time.perf_counter()
                per.setdefault("recorder batch (swap, columns, gaps)", []).append((t2 - t1) / n)
                per.setdefault("store write (DuckDB)", []).append((t3 - t2) / n)
                await rec.tier.close()  # type: ignore[attr-defined]
    for name, values in per.items():
        print(f"{name:40s} median {statistics.median(values) * 1e9:7.0f} ns per trade")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pg", help="also measure PostgreSQL at this URL")
    ap.add_argument("--no-recorder", action="store_true", help="skip the per-trade recorder figures")
    args = ap.parse_args()
    if not args.no_recorder:
        await recorder_costs(min(args.ticks, 300_000), args.repeat)
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
