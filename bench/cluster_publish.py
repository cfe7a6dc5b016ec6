"""How fast a collector publishes candles to JetStream: the collector's outlet (deltafeed.cluster.outlet)
with 1, 50 and 500 acknowledgements in flight, and ``js.publish`` awaited one at a time for comparison.
Each run publishes N distinct candle messages (200 series x N/200 open times, deduplication ids and
all) into a throwaway cluster's stream on the NATS at 127.0.0.1:4222, deleted afterwards.

Run: ``.venv/bin/python bench/cluster_publish.py [--runs 3] [--n 20000]``. Prints messages/s of every
run and the median; this machine is shared, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import nats

from deltafeed.cluster import subjects
from deltafeed.cluster.outlet import Outlet
from deltafeed.model import Candle

URL = "nats://127.0.0.1:4222"


def _candles(n: int) -> list[tuple[str, Candle]]:
    return [
        (f"binance:S{i % 200}USDT", Candle(60_000 * (i // 200), 1.0, 2.0, 0.5, 1.5 + i, 10.0, 7, True, True))
        for i in range(n)
    ]


async def _outlet(js: nats.js.JetStreamContext, cluster: str, batch: list[tuple[str, Candle]]) -> float:
    out = Outlet(js, cluster, "bench")
    t = time.perf_counter()
    for series, c in batch:
        out.candle(series, "1m", c)
    await out.flush()
    took = time.perf_counter() - t
    assert out.published == len(batch) and out.failed == 0, (out.published, out.failed)
    return len(batch) / took


async def _one_at_a_time(js: nats.js.JetStreamContext, cluster: str, batch: list[tuple[str, Candle]]) -> float:
    t = time.perf_counter()
    for series, c in batch:
        data, headers = subjects.encode(subjects.candle_msg(series, "1m", c, source="bench"))
        await js.publish(subjects.subject(cluster, subjects.CANDLES, series, "1m"), data, headers=headers)
    return len(batch) / (time.perf_counter() - t)


async def main(runs: int, n: int) -> None:
    nc = await nats.connect(URL)
    try:
        results: dict[str, list[float]] = {}
        for run in range(runs):
            for label, in_flight in (("js.publish, 1 at a time", 0), ("outlet, 1 in flight", 1),
                                     ("outlet, 50 in flight", 50), ("outlet, 500 in flight", 500)):  # fmt: skip
                cluster = f"bench{uuid.uuid4().hex[:8]}"
                js = nc.jetstream(publish_async_max_pending=max(1, in_flight))
                await subjects.ensure_stream(js, cluster)
                try:
                    # A new price per run: never a duplicate of an earlier run's message.
                    batch = [
                        (s, Candle(c.open_time, 1, 2, 0.5, c.close + run, 10, 7, True, True)) for s, c in _candles(n)
                    ]
                    rate = await (_one_at_a_time(js, cluster, batch) if in_flight == 0 else _outlet(js, cluster, batch))
                finally:
                    await js.delete_stream(subjects.stream_name(cluster))
                results.setdefault(label, []).append(rate)
                print(f"run {run + 1}: {label:<26} {rate:>9,.0f} candles/s")
        print(f"\nmedians of {runs} runs, {n} candle messages each:")
        for label, rates in results.items():
            print(f"  {label:<26} {statistics.median(rates):>9,.0f} candles/s")
    finally:
        await nc.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=20_000)
    a = p.parse_args()
    asyncio.run(main(a.runs, a.n))
