"""Measure the PostgreSQL cold tier: bulk insert rates (new keys, overlapping keys), upsert rates of the
unnest and COPY paths by batch size, and read latency for the newest 1000 candles and for 30 days of 1m
candles (43,200): of a series written alone (its candles together on the heap pages), and of one of 50
series written minute by minute as the engine writes them, before and after its partitions are covered
(:meth:`PostgresStore.cover_closed_partitions`).

Run: ``.venv/bin/python bench/storage_pg.py [--url postgresql://postgres@127.0.0.1:5432/test] [--uvloop]
[--heap 2000000] [--only bulk,sizes,reads]``.
It works in a scratch schema (``deltafeed_bench_<pid>``) that it drops at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable

import deltafeed.store.postgres.store as pgmod
from deltafeed.model import Candle
from deltafeed.store.postgres import PostgresStore

M = 60_000
Row = tuple[str, str, Candle]
SECTIONS = ("bulk", "sizes", "reads")
POOL = 4  # the store's default pool size


def rows_1m(n: int, instrument: str, start: int = 0, salt: float = 0.0) -> list[Row]:
    return [
        (instrument, "1m", Candle(start + i * M, 100.0 + salt, 101.0, 99.0, 100.5, 3.0 + i, 7, True)) for i in range(n)
    ]


def pct(ts: list[float], q: float) -> float:
    s = sorted(ts)
    return s[min(len(s) - 1, int(q * len(s)))]


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


class Cpu:
    """CPU seconds used by this process and by the store's server processes (read from /proc when the
    server runs on this machine): a busy machine distorts them far less than wall time."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = [p for p in pids if os.path.exists(f"/proc/{p}/stat")]

    @classmethod
    async def of(cls, store: PostgresStore, size: int) -> Cpu:
        """Hold all ``size`` connections of the pool at once to learn their server processes."""
        cons = [await store._pool.acquire() for _ in range(size)]
        try:
            return cls([con.get_server_pid() for con in cons])
        finally:
            for con in cons:
                await store._pool.release(con)

    def now(self) -> tuple[float, float]:
        server = 0.0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            server += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return time.process_time(), server

    async def timed(self, fn: Callable[[], Awaitable[object]], repeat: int) -> tuple[list[float], list[float]]:
        """:func:`timed`, and the CPU seconds [client, server] the calls used in all."""
        before = self.now()
        ts = await timed(fn, repeat)
        return ts, [b - a for a, b in zip(before, self.now(), strict=True)]

    def per(self, spent: list[float], n: int, unit: str, scale: float = 1e6) -> str:
        """``spent`` CPU per one of ``n`` (in µs, or ms with ``scale`` 1e3)."""
        server = f"{spent[1] * scale / n:.2f}" if self.pids else "n/a"
        return f"CPU client {spent[0] * scale / n:.2f}, server {server} {'us' if scale == 1e6 else 'ms'}/{unit}"


async def bulk(store: PostgresStore, cpu: Cpu, series: int = 50, per: int = 2000, repeat: int = 5) -> None:
    """Batches of ``series`` x ``per`` 1m candles into series that already hold 100 candles each: 'new keys'
    are all newer than every stored candle (a backfill, a writer catching up), 'overlapping keys' are the
    same keys again with every row changed (corrections, a replayed spool)."""
    n = series * per
    print(f"\nbulk insert: batches of {n:,} 1m candles ({series} series x {per}), rows/s over {repeat} batches")
    found: dict[str, tuple[list[float], list[float]]] = {
        "new keys": ([], [0.0, 0.0]),
        "overlapping keys": ([], [0.0, 0.0]),
    }
    for k in range(repeat):
        names = [f"bulk:{k}_{i}" for i in range(series)]
        await store.write([r for name in names for r in rows_1m(100, name)])
        for label, salt in (("new keys", 0.0), ("overlapping keys", 1.0)):
            batch = [r for name in names for r in rows_1m(per, name, 100 * M, salt=salt)]
            ts, used = await cpu.timed(lambda batch=batch: store.write(batch), 1)
            found[label][0].extend(ts)
            found[label][1][:] = [a + b for a, b in zip(found[label][1], used, strict=True)]
    for label, (ts, spent) in found.items():
        rates = sorted(n / t for t in ts)
        print(
            f"{label:>18}: median {statistics.median(rates):9,.0f}  min {rates[0]:9,.0f}  max {rates[-1]:9,.0f};"
            f" {cpu.per(spent, n * repeat, 'row')}"
        )


async def sizes(store: PostgresStore) -> None:
    print("\nupsert rate by batch size (rows/s, median of 5; 'new' = fresh keys, 'upd' = every row changed)")
    print(f"{'rows':>7} {'unnest new':>12} {'COPY new':>12} {'unnest upd':>12} {'COPY upd':>12}")
    base = 10**12
    threshold0 = pgmod.COPY_THRESHOLD
    for n in (100, 500, 1000, 2000, 5000, 20000, 100000):
        res = {}
        for path, threshold in (("unnest", 10**9), ("COPY", 0)):
            pgmod.COPY_THRESHOLD = threshold
            new, upd = [], []
            for k in range(5):
                inst = f"bench:{path}{n}_{k}"
                rows = rows_1m(n, inst, base)
                new += await timed(lambda rows=rows: store.write(rows), 1)
                rows2 = rows_1m(n, inst, base, salt=1.0)
                upd += await timed(lambda rows2=rows2: store.write(rows2), 1)
            res[path] = (n / statistics.median(new), n / statistics.median(upd))
        print(
            f"{n:>7} {res['unnest'][0]:>12,.0f} {res['COPY'][0]:>12,.0f} {res['unnest'][1]:>12,.0f}"
            f" {res['COPY'][1]:>12,.0f}"
        )
    pgmod.COPY_THRESHOLD = threshold0


async def reads(store: PostgresStore, cpu: Cpu, schema: str, heap: int) -> None:
    # 3 instruments x 60 days of 1m candles; read 30 days (43,200) of one of them.
    for inst in ("read:A", "read:B", "read:C"):
        await store.write(rows_1m(86_400, inst))
    await store._pool.execute(f"VACUUM ANALYZE {schema}.candles_1m")
    since, until = 30 * 1440 * M, 60 * 1440 * M - M
    got = await store.query("read:B", "1m", since, until)
    assert len(got) == 43_200, len(got)
    hour = 60 * 1440 * M - 60 * M

    async def records(since_ms: int, until_ms: int | None = None) -> list[Candle]:
        """The same query forced onto the asyncpg records path."""
        pgmod.COPY_READ_ROWS = 10**9
        try:
            return await store.query("read:B", "1m", since_ms, until_ms)
        finally:
            pgmod.COPY_READ_ROWS = copy_read_rows

    copy_read_rows = pgmod.COPY_READ_ROWS
    junk = [[i] for i in range(heap)]  # objects the GC tracks, as in a running service
    print(f"\nread latency (ms), with {len(junk):,} GC-tracked objects alive in the process")
    for label, fn, repeat in (
        ("last 1000", lambda: store.query("read:B", "1m", last=1000), 1000),
        ("43,200 rows: COPY path", lambda: store.query("read:B", "1m", since, until), 200),
        ("43,200 rows: COPY to arrays", lambda: store.query_records("read:B", "1m", since, until), 200),
        ("43,200 rows: asyncpg records", lambda: records(since, until), 50),
        ("since 1h ago: COPY path", lambda: store.query("read:B", "1m", hour), 500),
        ("since 1h ago: asyncpg records", lambda: records(hour), 500),
        ("last_closed", lambda: store.last_closed("read:B", "1m"), 1000),
        ("find_gaps 30 days", lambda: store.find_gaps("read:B", "1m", M, since, until), 100),
    ):
        await timed(fn, 5)  # warm the statement cache and the buffers
        raw, spent = await cpu.timed(fn, repeat)
        ts = [t * 1e3 for t in raw]
        print(
            f"{label:>29}: p50 {statistics.median(ts):7.2f}  p99 {pct(ts, 0.99):7.2f}  max {max(ts):7.2f}"
            f"  (n={repeat}); {cpu.per(spent, repeat, 'read', 1e3)}"
        )
    await interleaved(store, cpu, schema)
    del junk


async def interleaved(store: PostgresStore, cpu: Cpu, schema: str, series: int = 50, days: int = 30) -> None:
    """The 43,200-candle read where the writer put it: ``series`` series written minute by minute (a day
    of all of them per batch, as a running engine stores them), so one series' candles are spread over
    the heap pages; read before and after :meth:`PostgresStore.cover_closed_partitions`."""
    start = 70 * 1440 * M  # after the reads above, in partitions of its own
    names = [f"mix:{k:02d}" for k in range(series)]
    t0 = time.perf_counter()
    for day in range(days):
        base = start + day * 1440 * M
        await store.write(
            [
                (name, "1m", Candle(base + i * M, 100.0 + k, 101.0, 99.0, 100.5, 3.0 + i, 7, True, True))
                for i in range(1440)
                for k, name in enumerate(names)
            ]
        )
    await store._pool.execute(f"VACUUM ANALYZE {schema}.candles_1m")
    n = series * days * 1440
    print(
        f"\n{series} series x {days} days of 1m candles written minute by minute ({n:,} rows in"
        f" {time.perf_counter() - t0:.1f} s); read 43,200 of one series (COPY path):"
    )
    since, until = start, start + days * 1440 * M - M
    assert len(await store.query(names[7], "1m", since, until)) == days * 1440
    for label, repeat in (("heap order", 50), ("covered", 200)):
        if label == "covered":
            size = await table_mb(store, schema)
            t0 = time.perf_counter()
            covered = await store.cover_closed_partitions(int(time.time() * 1000))
            print(
                f"  cover_closed_partitions: {len(covered)} partitions in {time.perf_counter() - t0:.1f} s;"
                f" candles_1m {size:.0f} -> {await table_mb(store, schema):.0f} MB (heap and indexes)"
            )
        fn = lambda: store.query(names[7], "1m", since, until)  # noqa: E731
        await timed(fn, 3)
        raw, spent = await cpu.timed(fn, repeat)
        ts = [t * 1e3 for t in raw]
        print(
            f"{label:>29}: p50 {statistics.median(ts):7.2f}  p99 {pct(ts, 0.99):7.2f}  max {max(ts):7.2f}"
            f"  (n={repeat}); {cpu.per(spent, repeat, 'read', 1e3)}"
        )


async def table_mb(store: PostgresStore, schema: str) -> float:
    """The size of every partition of candles_1m, indexes included, in MB."""
    sql = (
        "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
        f" WHERE inhparent = '{schema}.candles_1m'::regclass"
    )
    return float(await store._pool.fetchval(sql)) / 1e6


async def main(url: str, heap: int, only: set[str]) -> None:
    schema = f"deltafeed_bench_{os.getpid()}"
    store = await PostgresStore.open(url, schema=schema, retention={}, pool_size=POOL)
    try:
        print(f"store {store.name}, timescale={store.timescale}, load average {os.getloadavg()[0]:.2f}")
        cpu = await Cpu.of(store, POOL)
        if "bulk" in only:
            await bulk(store, cpu)
        if "sizes" in only:
            await sizes(store)
        if "reads" in only:
            await reads(store, cpu, schema, heap)
        print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    finally:
        await store._pool.execute(f"DROP SCHEMA {schema} CASCADE")
        await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    ap.add_argument("--uvloop", action="store_true", help="run on uvloop (as deltafeed run does)")
    ap.add_argument(
        "--heap",
        type=int,
        default=2_000_000,
        help="GC-tracked objects kept alive during the reads (a service's heap; 0 for none)",
    )
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if not only <= set(SECTIONS):
        ap.exit(2, f"storage_pg.py: --only takes {', '.join(SECTIONS)}, not {args.only}; e.g. --only bulk,reads\n")
    if args.uvloop:
        import uvloop

        uvloop.run(main(args.url, args.heap, only))
    else:
        asyncio.run(main(args.url, args.heap, only))
