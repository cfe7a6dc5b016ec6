"""Measure the memory hot tier: bytes per instrument, put latency and read latency.

One instrument is 5 timeframes of ``--capacity`` (1000) candles. Bytes per instrument come from
tracemalloc: the growth of traced memory while ``--instruments`` instruments are filled, over the
instrument count, at the fullest the rings get (measured after every tenth of a further
``capacity`` // 4 candles a series: the list rings before the columnar ones held up to 25 % more
than their capacity between trims).

Put latency is timed in batches of ``--batch`` puts (one put is too short for the clock) and given
per put: the forming candle again (same open_time, the hot path), ``put_many`` and single puts of
new candles into empty rings (a start-up filling the tier from the store), a new candle on a full
ring, a candle's life on a full ring (put new, 8 updates, closed: 10 puts), and a late candle
inserted inside a full ring. Read latency is timed per call: ``last(1000)`` (also in CPU time of
this thread, which leaves out the time other processes had the core), ``range`` over the whole ring
and ``get`` of one candle.

    python bench/hot.py [--runs 3] [--instruments 20] [--capacity 1000]

To measure another checkout's code (e.g. main's, "before"), put its ``src`` first on the path:
``PYTHONPATH=/work/main/src python bench/hot.py``. The machine is shared: the load average is
printed beside the figures; read them as noisy.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable

import deltafeed.store.hot as hot_module
from deltafeed.model import Candle
from deltafeed.store.hot import HotStore

TIMEFRAMES = {"1s": 1_000, "5s": 5_000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
T0 = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000


def candle(t: int, k: int, closed: bool = True) -> Candle:
    p = 100.0 + (k % 97) * 0.01
    return Candle(t, p, p + 0.5, p - 0.5, p + 0.1, 1.5 + k, k % 50 + 1, closed, closed)


def fill(hot: HotStore, name: str, count: int, start: int = 0) -> None:
    for tf, ms in TIMEFRAMES.items():
        for k in range(start, start + count):
            hot.put(name, tf, candle(T0 + k * ms, k))


def bytes_per_instrument(instruments: int, capacity: int) -> tuple[float, float]:
    """(at exactly ``capacity`` candles a series, the most over a further quarter of a ring)."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    hot = HotStore(capacity)
    names = [f"binance:S{i}" for i in range(instruments)]
    for name in names:
        fill(hot, name, capacity)
    gc.collect()
    at_capacity = tracemalloc.get_traced_memory()[0] - base
    most = at_capacity
    step = max(1, capacity // 40)
    done = capacity
    for _ in range(10):
        for name in names:
            fill(hot, name, step, done)
        done += step
        gc.collect()
        most = max(most, tracemalloc.get_traced_memory()[0] - base)
    tracemalloc.stop()
    assert len(hot) == instruments * len(TIMEFRAMES) * capacity
    return at_capacity / instruments, most / instruments


def per_put_ns(fn: Callable[[int], None], batch: int, batches: int) -> list[float]:
    out = []
    for b in range(batches):
        t = time.perf_counter_ns()
        fn(b)
        out.append((time.perf_counter_ns() - t) / batch)
    return out


def put_latency(capacity: int, batch: int, batches: int) -> dict[str, list[float]]:
    hot = HotStore(capacity)
    name = "binance:BTCUSDT"
    fill(hot, name, capacity)
    forming = candle(T0 + capacity * 60_000, 1, closed=False)
    hot.put(name, "1m", forming)
    nxt = [capacity + 1]

    def same(_: int) -> None:
        for k in range(batch):
            forming.close = 100.0 + k
            forming.trades = k
            hot.put(name, "1m", forming)

    fresh = [candle(T0 + (capacity + 1 + k) * 60_000, k) for k in range(batch * batches)]

    def new(b: int) -> None:
        for c in fresh[b * batch : (b + 1) * batch]:
            hot.put(name, "1m", c)
        nxt[0] += batch

    life_hot = HotStore(capacity)
    fill(life_hot, name, capacity)
    life_next = [T0 + capacity * 60_000]

    def life(_: int) -> None:  # each candle: new, 8 more puts as trades come, closed; 10 puts
        for _k in range(batch // 10):
            c = candle(life_next[0], 0, closed=False)
            life_hot.put(name, "1m", c)
            for j in range(8):
                c.close = 100.0 + j
                c.trades += 1
                life_hot.put(name, "1m", c)
            c.closed = c.final = True
            life_hot.put(name, "1m", c)
            life_next[0] += 60_000

    # late candles: a full ring of even minutes, then the odd minutes inside it, oldest first
    late_hot = HotStore(capacity)
    for k in range(capacity):
        late_hot.put(name, "1m", candle(T0 + 2 * k * 60_000, k))
    late = [candle(T0 + (2 * k + 1) * 60_000, k) for k in range(capacity - 1)]
    late_batch = min(batch, max(1, len(late) // batches))

    def insert(b: int) -> None:
        for c in late[(b * late_batch) % len(late) :][:late_batch]:
            late_hot.put(name, "1m", c)

    grow_hot = HotStore(capacity)
    grow = [candle(T0 + k * 60_000, k) for k in range(capacity)]
    grow_batch = min(batch, capacity)

    def growing(b: int) -> None:  # what a start-up does: fill empty rings from the store, oldest first
        series = f"binance:G{b}"
        for c in grow[:grow_batch]:
            grow_hot.put(series, "1m", c)

    def growing_many(b: int) -> None:
        grow_hot.put_many(f"binance:H{b}", "1m", grow[:grow_batch])  # type: ignore[attr-defined,unused-ignore]

    out = {"put forming (same open_time)": per_put_ns(same, batch, batches)}
    if hasattr(HotStore, "put_many"):  # not in the code before the columnar rings
        out["put_many into an empty ring (start-up)"] = per_put_ns(growing_many, grow_batch, batches)
    return out | {
        "a candle's life: new, 8 updates, closed": per_put_ns(life, batch // 10 * 10, batches),
        "put new candle, growing ring (start-up)": per_put_ns(growing, grow_batch, batches),
        "put new candle, full ring": per_put_ns(new, batch, batches),
        "put late candle inside a full ring": per_put_ns(insert, late_batch, batches),
    }


def read_latency(capacity: int, calls: int) -> dict[str, list[float]]:
    hot = HotStore(capacity)
    name = "binance:BTCUSDT"
    fill(hot, name, capacity + capacity // 3)  # a ring that has wrapped
    first = hot.last(name, "1m", capacity)[0].open_time
    mid = first + (capacity // 2) * 60_000
    out: dict[str, list[float]] = {f"last({capacity})": [], f"last({capacity}) CPU": [], "range(whole ring)": []}
    out["get(one)"] = []
    for _ in range(calls):
        t, cpu = time.perf_counter_ns(), time.thread_time_ns()
        got = hot.last(name, "1m", capacity)
        out[f"last({capacity}) CPU"].append(time.thread_time_ns() - cpu)
        out[f"last({capacity})"].append(time.perf_counter_ns() - t)
        assert len(got) == capacity
        t = time.perf_counter_ns()
        got2 = hot.range(name, "1m", first, 2**62)
        out["range(whole ring)"].append(time.perf_counter_ns() - t)
        assert got2 is not None and len(got2) == capacity
        t = time.perf_counter_ns()
        one = hot.get(name, "1m", mid)
        out["get(one)"].append(time.perf_counter_ns() - t)
        assert one is not None
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--instruments", type=int, default=20)
    ap.add_argument("--capacity", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=1000, help="puts timed together")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--calls", type=int, default=1000, help="timed calls of each read")
    a = ap.parse_args()
    print(f"hot tier from {hot_module.__file__}")
    print(f"load average before: {os.getloadavg()}")
    mem: list[tuple[float, float]] = []
    puts: dict[str, list[float]] = {}
    reads: dict[str, list[float]] = {}
    for run in range(a.runs):
        m = bytes_per_instrument(a.instruments, a.capacity)
        mem.append(m)
        p = put_latency(a.capacity, a.batch, a.batches)
        r = read_latency(a.capacity, a.calls)
        print(f"run {run + 1}: {m[0] / 1e6:.3f} MB/instrument at capacity, {m[1] / 1e6:.3f} MB at most", end="")
        for k, v in {**p, **r}.items():
            print(f"; {k} median {statistics.median(v):.0f} ns", end="")
        print()
        for k, v in p.items():
            puts.setdefault(k, []).append(statistics.median(v))
            puts.setdefault(k + " p99", []).append(pct(v, 0.99))
        for k, v in r.items():
            reads.setdefault(k, []).append(statistics.median(v))
            reads.setdefault(k + " p99", []).append(pct(v, 0.99))
    print(f"\nmedians of {a.runs} runs ({len(TIMEFRAMES)} timeframes x {a.capacity} candles an instrument):")
    print(f"  bytes per instrument at capacity   {statistics.median(m[0] for m in mem) / 1e6:8.3f} MB")
    print(f"  bytes per instrument at most       {statistics.median(m[1] for m in mem) / 1e6:8.3f} MB")
    for k, v in puts.items():
        print(f"  {k:42s} {statistics.median(v):10.0f} ns/put")
    for k, v in reads.items():
        print(f"  {k:42s} {statistics.median(v) / 1e3:10.1f} us")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
