"""Every storage tier side by side: bootstrap insert rate, live upsert rate, and the latency of the
two reads consumers make most: the newest 1000 candles, and 30 days of 1m candles (43,200).

Tiers: the in-memory hot rings, the Redis mirror, DuckDB (embedded cold) and PostgreSQL (cold for
teams). Needs the local PostgreSQL (127.0.0.1:5432, database test) and Redis (127.0.0.1:6379); it
works in a scratch schema, key prefix and temporary DuckDB file, and removes them at the end.

Run: ``.venv/bin/python bench/storage.py [--quick]``. Figures are medians (rates) and p50/p99
(latencies) of repeated runs; this machine is shared, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

import asyncpg  # type: ignore[import-untyped]
import redis.asyncio as aioredis

from deltafeed.model import Candle
from deltafeed.store.base import ColdTier, Row
from deltafeed.store.hot import HotStore
from deltafeed.store.open import open_cold
from deltafeed.store.redis_hot import RedisHot

PG = os.environ.get("DELTAFEED_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("DELTAFEED_BENCH_REDIS", "redis://127.0.0.1:6379/0")
M = 60_000
MONTH = 43_200  # 1m candles in 30 days
START = 1_780_000_000_000 - 1_780_000_000_000 % (86_400_000)


def series(instrument: str, n: int, salt: float = 0.0) -> list[Row]:
    return [
        (
            instrument,
            "1m",
            Candle(
                START + i * M, 100.0 + salt + i % 7, 101.0 + i % 5, 99.0, 100.5 + salt, 3.0 + i % 11, 7 + i % 3, True
            ),
        )
        for i in range(n)
    ]


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def latencies(fn: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    for _ in range(min(20, repeat)):
        await fn()  # warm caches and connections
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


def ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:8.3f} / {pct(xs, 0.99) * 1e3:8.3f}"


class Result:
    def __init__(self, tier: str) -> None:
        self.tier = tier
        self.boot = 0.0
        self.live = 0.0
        self.last1000: list[float] = []
        self.month: list[float] = []


async def bench_cold(tier: ColdTier, label: str, instruments: int, repeat: int) -> Result:
    res = Result(label)
    # Bootstrap: 30 days of 1m per instrument, handed over in bootstrap-sized batches (50k rows).
    rows = [r for k in range(instruments) for r in series(f"bench:B{k}", MONTH)]
    t = time.perf_counter()
    for i in range(0, len(rows), 50_000):
        await tier.write(rows[i : i + 50_000])
    res.boot = len(rows) / (time.perf_counter() - t)
    # Live: batches of 500 updates (the write-behind's size), each candle changed.
    rates = []
    for k in range(5):
        batch = [(f"bench:B{j % instruments}", "1m", c) for j, (_, _, c) in enumerate(series("x", 500, salt=k + 1))]
        t = time.perf_counter()
        await tier.write(batch)
        rates.append(len(batch) / (time.perf_counter() - t))
    res.live = statistics.median(rates)
    res.last1000 = await latencies(lambda: tier.query("bench:B0", "1m", last=1000), repeat)
    got = await tier.query("bench:B0", "1m", START, START + (MONTH - 1) * M)
    assert len(got) == MONTH, len(got)
    res.month = await latencies(
        lambda: tier.query("bench:B0", "1m", START, START + (MONTH - 1) * M), max(10, repeat // 5)
    )
    return res


async def bench_memory(instruments: int, repeat: int) -> Result:
    res = Result("memory (HotStore)")
    hot = HotStore(capacity=MONTH)
    rows = [r for k in range(instruments) for r in series(f"bench:B{k}", MONTH)]
    t = time.perf_counter()
    for inst, tf, c in rows:
        hot.put(inst, tf, c)
    res.boot = len(rows) / (time.perf_counter() - t)
    upd = series("bench:B0", 500, salt=1)
    t = time.perf_counter()
    for inst, tf, c in upd:
        hot.put(inst, tf, c)
    res.live = len(upd) / (time.perf_counter() - t)

    async def last() -> list[Candle]:
        return hot.last("bench:B0", "1m", 1000)

    async def month() -> list[Candle] | None:
        return hot.range("bench:B0", "1m", START, START + (MONTH - 1) * M)

    res.last1000 = await latencies(last, repeat)
    res.month = await latencies(month, max(10, repeat // 5))
    return res


async def bench_redis(instruments: int, repeat: int, prefix: str) -> Result:
    res = Result("Redis (RedisHot)")
    hot = RedisHot(REDIS, capacity=MONTH, retention={}, prefix=prefix)
    await hot.open()
    flusher = asyncio.create_task(hot.run())

    async def drain(expected: int) -> None:
        while hot.pending or hot.written < expected:
            await asyncio.sleep(0.001)

    rows = [r for k in range(instruments) for r in series(f"bench:B{k}", MONTH)]
    t = time.perf_counter()
    for inst, tf, c in rows:
        hot.put(inst, tf, c)
    await drain(len(rows))
    res.boot = len(rows) / (time.perf_counter() - t)
    rates = []
    for k in range(5):
        upd = series("bench:B0", 500, salt=k + 1)
        before = hot.written
        t = time.perf_counter()
        for inst, tf, c in upd:
            hot.put(inst, tf, c)
        await drain(before + len(upd))
        rates.append(len(upd) / (time.perf_counter() - t))
    res.live = statistics.median(rates)
    res.last1000 = await latencies(lambda: hot.last("bench:B0", "1m", 1000), repeat)
    res.month = await latencies(
        lambda: hot.range("bench:B0", "1m", START, START + (MONTH - 1) * M), max(10, repeat // 5)
    )
    flusher.cancel()
    await hot.close()
    return res


async def main(quick: bool) -> None:
    instruments = 2 if quick else 5
    repeat = 200 if quick else 1000
    tag = f"{os.getpid()}"
    schema, prefix = f"deltafeed_bench_{tag}", f"dfbench{tag}"
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(await bench_memory(instruments, repeat))
        try:
            results.append(await bench_redis(instruments, repeat, prefix))
        finally:
            r = aioredis.from_url(REDIS)
            keys = [k async for k in r.scan_iter(match=f"{prefix}:*")]
            if keys:
                await r.delete(*keys)
            await r.aclose()
        duck = await open_cold(os.path.join(tmp, "bench.duckdb"), {})
        try:
            results.append(await bench_cold(duck, "DuckDB (attach per op)", instruments, repeat))
        finally:
            await duck.close()
        pg = await open_cold(PG, {}, schema=schema)
        try:
            results.append(await bench_cold(pg, "PostgreSQL (asyncpg)", instruments, repeat))
        finally:
            await pg.close()
            con = await asyncpg.connect(PG)
            await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await con.close()
    print(
        f"\n{instruments} instruments x 30 days of 1m ({instruments * MONTH:,} candles) per tier; "
        f"reads of one series, {repeat} repeats (43,200-candle reads: {max(10, repeat // 5)})\n"
    )
    print(
        f"{'tier':<24} {'bootstrap rows/s':>17} {'live upsert rows/s':>19} "
        f"{'last 1000 ms p50 / p99':>24} {'30d of 1m ms p50 / p99':>24}"
    )
    for res in results:
        print(f"{res.tier:<24} {res.boot:17,.0f} {res.live:19,.0f} {ms(res.last1000):>24} {ms(res.month):>24}")
    print(
        "\nbootstrap: batches of 50,000 (cold tiers; PostgreSQL takes them through COPY), puts then one"
        " pipelined flush (Redis);\nlive: batches of 500 changed candles (the write-behind's size)."
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer instruments and repeats (~30 s)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(main(args.quick))
