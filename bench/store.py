"""Measure the storage tiers: bulk upsert paths, per-batch cost, open/close cost, read latency.

Run: ``.venv/bin/python bench/store.py [--rows 1000000] [--repeat 9]``. ``--rows`` is the size of
the table the per-batch and read figures are measured against (an existing history makes the
primary-key index and the checkpoints cost more than on an empty file).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import numpy as np

from deltafeed.model import Candle
from deltafeed.store.cold import ColdStore
from deltafeed.store.hot import HotStore

M = 60_000
Row = tuple[str, str, Candle]
DDL = """CREATE TABLE candles (instrument VARCHAR, timeframe VARCHAR, open_time BIGINT, open DOUBLE,
    high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, trades BIGINT, closed BOOLEAN,
    PRIMARY KEY (instrument, timeframe, open_time))"""


def make_rows(n: int, instruments: int = 1, start: int = 0, salt: float = 0.0) -> list[Row]:
    """``n`` candles spread over ``instruments`` series of 1m candles."""
    per = max(1, n // instruments)
    out: list[Row] = []
    for i in range(n):
        t = start + (i % per) * M
        c = Candle(t, 100.0 + salt, 101.0, 99.0, 100.5, 3.0 + i, 7, True)
        out.append((f"binance:S{i // per}", "1m", c))
    return out


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def med_ms(ts: Sequence[float]) -> str:
    return f"{statistics.median(ts) * 1e3:8.2f} ms"


def pct(ts: Sequence[float], q: float) -> float:
    s = sorted(ts)
    return s[min(len(s) - 1, int(q * len(s)))]


def fresh(path: str) -> None:
    for p in (path, path + ".wal"):
        if os.path.exists(p):
            os.remove(p)


# -- alternative bulk-upsert paths, raw duckdb, to justify the one ColdStore uses ------------------


def tuples(rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    return [(i, tf, *c.row(), c.closed) for i, tf, c in rows]


def up_executemany(con: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    con.executemany("INSERT OR REPLACE INTO candles VALUES (?,?,?,?,?,?,?,?,?,?)", tuples(rows))


def up_unnest(con: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    cols = [list(c) for c in zip(*tuples(rows), strict=True)]
    types = ["VARCHAR", "VARCHAR", "BIGINT", *["DOUBLE"] * 5, "BIGINT", "BOOLEAN"]
    sel = ", ".join(f"unnest(${k + 1}::{t}[])" for k, t in enumerate(types))
    con.execute(f"INSERT OR REPLACE INTO candles SELECT {sel}", cols).fetchall()


def up_appender(con: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    with con.appender("candles", action="upsert") as app:
        app.append_rows(tuples(rows))


def up_numpy(con: duckdb.DuckDBPyConnection, rows: Sequence[Row]) -> None:
    cs = [r[2] for r in rows]
    n = len(cs)
    cols = {
        "instrument": np.array([r[0] for r in rows], dtype=object),
        "timeframe": np.array([r[1] for r in rows], dtype=object),
        "open_time": np.fromiter((c.open_time for c in cs), np.int64, n),
        "open": np.fromiter((c.open for c in cs), np.float64, n),
        "high": np.fromiter((c.high for c in cs), np.float64, n),
        "low": np.fromiter((c.low for c in cs), np.float64, n),
        "close": np.fromiter((c.close for c in cs), np.float64, n),
        "volume": np.fromiter((c.volume for c in cs), np.float64, n),
        "trades": np.fromiter((c.trades for c in cs), np.int64, n),
        "closed": np.fromiter((c.closed for c in cs), np.bool_, n),
    }
    con.register("_batch", cols)
    con.execute("INSERT OR REPLACE INTO candles SELECT * FROM _batch").fetchall()
    con.unregister("_batch")


def bench_paths(tmp: str, repeat: int) -> None:
    print("bulk upsert paths, raw duckdb, one open connection (rows/s, median):")
    paths: list[tuple[str, Callable[[duckdb.DuckDBPyConnection, Sequence[Row]], None], int]] = [
        ("executemany INSERT OR REPLACE", up_executemany, 500),
        ("unnest(list params) INSERT OR REPLACE", up_unnest, 10_000),
        ("appender(action='upsert')", up_appender, 10_000),
        ("numpy dict register + INSERT OR REPLACE", up_numpy, 10_000),
    ]
    for name, fn, n in paths:
        path = os.path.join(tmp, "paths.duckdb")
        fresh(path)
        con = duckdb.connect(path)
        con.execute(DDL)
        k = [0]

        def insert(fn: Any = fn, n: int = n, con: duckdb.DuckDBPyConnection = con, k: list[int] = k) -> None:
            k[0] += 1
            fn(con, make_rows(n, instruments=10, start=k[0] * 10 * n * M))

        def update(fn: Any = fn, n: int = n, con: duckdb.DuckDBPyConnection = con, k: list[int] = k) -> None:
            k[0] += 1
            fn(con, make_rows(n, instruments=10, start=0, salt=float(k[0])))

        reps = 3 if n < 10_000 else repeat
        new = timed(insert, reps)
        upd = timed(update, reps)
        con.close()
        print(
            f"  {name:42s} n={n:>6}  new keys {n / statistics.median(new):>10,.0f}"
            f"  existing keys {n / statistics.median(upd):>10,.0f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="existing rows for the per-batch/read figures")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--skip-paths", action="store_true", help="skip the raw duckdb path comparison")
    args = ap.parse_args()
    repeat: int = args.repeat
    print(f"duckdb {duckdb.__version__}, numpy {np.__version__}, {os.cpu_count()} cpus")

    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_paths:
            bench_paths(tmp, repeat)

        # -- ColdStore bulk upsert of 10k candles ----------------------------------------------------
        path = os.path.join(tmp, "bulk.duckdb")
        cold = ColdStore(path)
        new_batches = iter([make_rows(10_000, instruments=10, start=k * 100_000 * M) for k in range(repeat)])
        same_batches = iter([make_rows(10_000, instruments=10, salt=float(k)) for k in range(repeat)])
        held_batches = iter([make_rows(10_000, instruments=10, start=(k + 50) * 100_000 * M) for k in range(repeat)])
        new = timed(lambda: cold.write(next(new_batches)), repeat)
        same = timed(lambda: cold.write(next(same_batches)), repeat)
        with cold.session():
            held = timed(lambda: cold.write(next(held_batches)), repeat)
        cold.close()
        print("\nColdStore.write, bulk upsert of 10k candles (median rows/s, Candle objects to rows on disk):")
        print(f"  new keys, attach+checkpoint+detach      {10_000 / statistics.median(new):>10,.0f} rows/s")
        print(f"  existing keys, attach+checkpoint+detach {10_000 / statistics.median(same):>10,.0f} rows/s")
        print(f"  new keys, file held in a session        {10_000 / statistics.median(held):>10,.0f} rows/s")

        # -- a history of --rows candles, then live-sized batches ------------------------------------
        path = os.path.join(tmp, "live.duckdb")
        cold = ColdStore(path)
        t = time.perf_counter()
        chunk = 200_000  # 100 series x 2000 minutes per write, series grow chunk after chunk
        with cold.session():
            for j, s in enumerate(range(0, args.rows, chunk)):
                n = min(chunk, args.rows - s)
                cold.write(make_rows(n, instruments=100, start=j * (chunk // 100) * M))
        build = time.perf_counter() - t
        total = sum(n for _, _, n in cold.instruments())
        print(
            f"\nhistory: {total:,} rows in {len(cold.instruments())} series built in {build:.1f}s,"
            f" file {os.path.getsize(path) / 1e6:.0f} MB"
        )
        live_start = 10**8 * M
        b = [0]

        def batch500() -> list[Row]:
            b[0] += 1
            # 100 series x 5 minutes of candles, like a live flush after a quiet second
            return make_rows(500, instruments=100, start=live_start + b[0] * 5 * M)

        it = iter([batch500() for _ in range(repeat * 3)])
        per_op = timed(lambda: cold.write(next(it)), repeat * 3)
        it2 = iter([batch500() for _ in range(repeat * 3)])
        with cold.session():
            held = timed(lambda: cold.write(next(it2)), repeat * 3)
        print("per-batch cost of upserting 500 candles:")
        p90 = pct(per_op, 0.9) * 1e3
        print(f"  attach + upsert + checkpoint + detach   {med_ms(per_op)}  (p90 {p90:.2f} ms)")
        print(f"  upsert only, file held in a session    {med_ms(held)}")

        # -- open/close cost -------------------------------------------------------------------------
        cold.close()
        mem = duckdb.connect(":memory:")
        q = path.replace("'", "''")

        def attach_detach(ro: bool) -> None:
            mem.execute(f"ATTACH '{q}' AS x" + (" (READ_ONLY)" if ro else "")).fetchall()
            mem.execute("DETACH x").fetchall()

        print("open/close cost (median):")
        rw = timed(lambda: duckdb.connect(path).close(), repeat)
        print(f"  duckdb.connect(file) + close           {med_ms(rw)}")
        print(
            f"  duckdb.connect(file, read_only) + close"
            f" {med_ms(timed(lambda: duckdb.connect(path, read_only=True).close(), repeat))}"
        )
        print(f"  ATTACH + DETACH (read-write)           {med_ms(timed(lambda: attach_detach(False), repeat))}")
        print(f"  ATTACH + DETACH (read-only)            {med_ms(timed(lambda: attach_detach(True), repeat))}")
        memory = timed(lambda: duckdb.connect().close(), repeat)
        print(f"  duckdb.connect(':memory:') + close     {med_ms(memory)}")
        print(
            f"  ColdStore.open_reader() + close        "
            f"{med_ms(timed(lambda: ColdStore.open_reader(path).close(), repeat))}"
        )
        mem.close()

        # -- last-1000 reads ---------------------------------------------------------------------------
        reader = ColdStore.open_reader(path)
        names = [i for i, _, _ in reader.instruments()]
        n_reads = max(100, repeat * 20)
        pick = iter(names[j % len(names)] for j in range(10 * n_reads))
        per_op_q = timed(lambda: reader.query(next(pick), "1m", last=1000), n_reads)
        with reader.session():
            held_q = timed(lambda: reader.query(next(pick), "1m", last=1000), n_reads)
        got = reader.query(names[0], "1m", last=1000)
        reader.close()
        hot = HotStore(capacity=1000)
        for c in got:
            hot.put(names[0], "1m", c)
        hot_q = timed(lambda: hot.last(names[0], "1m", 1000), n_reads)
        print(f"last-1000 query latency over {n_reads} reads ({len(got)} candles each):")
        for label, ts in (
            ("ColdStore.query(last=1000), attach per read", per_op_q),
            ("ColdStore.query(last=1000), in a session", held_q),
            ("HotStore.last(1000)", hot_q),
        ):
            print(f"  {label:44s} p50 {pct(ts, 0.5) * 1e3:7.3f} ms  p99 {pct(ts, 0.99) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
