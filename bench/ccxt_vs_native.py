"""The native ``binance:`` feed against the ``ccxt:binance:`` feed, on the same Binance replica and run:
one engine collects ``binance:BTCUSDT`` and ``ccxt:binance:BTC/USDT`` side by side from one replica
market, at a trade rate stepped up run by run. Per rate it prints the trades/s each feed took (what
reached its candle builder, over the streaming wall time) against the replica's own rate, and a
field-by-field diff of the two stored 1m series (open, high, low, close, volume to 8 decimals; the
final ones, then any).

Run: ``.venv/bin/python bench/ccxt_vs_native.py [--runs N] [--seconds S] [--rates 500,2000,8000]``.
Prints every run and the medians; the machine is shared, so compare figures from one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.store.base import open_cold
from deltafeed.venues import registry

NATIVE, BRIDGED = "binance:BTCUSDT", "ccxt:BINANCE:BTC/USDT"


async def one_run(rate: float, seconds: float, seed: int) -> tuple[float, float, float, int, int, int]:
    """(replica trades/s, native trades/s, ccxt trades/s, 1m candles compared, final ones differing,
    any differing) of one run."""
    binance = registry.get("binance")
    replica = binance.build_replica(symbols=["BTCUSDT"], seed=seed, rate=rate, speed=1.0, history_ms=600_000)
    await replica.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            db = str(Path(tmp) / "bench.duckdb")
            settings = Settings(
                symbols=["binance:BTCUSDT", "ccxt:binance:BTC/USDT"],
                timeframes=["1m"],
                history="5m",
                db=db,
                venues={
                    "binance": binance.replica_settings(replica),
                    "ccxt": registry.get("ccxt").replica_settings(replica),
                },
            ).validate()
            engine = Engine(settings)
            await engine.start()
            try:
                before = {k: st.trades for k, st in engine.states.items()}
                tape0 = replica.stats.get("trades", 0)
                t0 = time.monotonic()
                await asyncio.sleep(seconds)
                wall = time.monotonic() - t0
                took = {k: (st.trades - before[k]) / wall for k, st in engine.states.items()}
                made = (replica.stats.get("trades", 0) - tape0) / wall
                await asyncio.sleep(3.0)  # let the last minute close and the reconciliation run
            finally:
                await engine.stop()
            store = await open_cold(db, read_only=True)
            try:
                a = {c.open_time: c for c in await store.query(NATIVE, "1m")}
                b = {c.open_time: c for c in await store.query(BRIDGED, "1m")}
            finally:
                await store.close()
    finally:
        await replica.stop()

    def fields(c: object) -> tuple[float, ...]:
        return (c.open, c.high, c.low, c.close, round(c.volume, 8))  # type: ignore[attr-defined]

    both = [t for t in a if t in b and a[t].closed and b[t].closed]
    final_diff = sum(1 for t in both if a[t].final and b[t].final and fields(a[t]) != fields(b[t]))
    any_diff = sum(1 for t in both if fields(a[t]) != fields(b[t]))
    return made, took[NATIVE], took[BRIDGED], len(both), final_diff, any_diff


async def main(runs: int, seconds: float, rates: list[float]) -> None:
    for rate in rates:
        rows = []
        for i in range(runs):
            r = await one_run(rate, seconds, seed=i + 1)
            rows.append(r)
            print(
                f"rate {rate:>7.0f}/s run {i + 1}: replica {r[0]:8.0f}/s  native {r[1]:8.0f}/s  ccxt {r[2]:8.0f}/s  "
                f"1m candles compared {r[3]}  final differing {r[4]}  any differing {r[5]}",
                flush=True,
            )
        med = [statistics.median(x[j] for x in rows) for j in range(6)]
        print(
            f"rate {rate:>7.0f}/s MEDIAN: replica {med[0]:8.0f}/s  native {med[1]:8.0f}/s  ccxt {med[2]:8.0f}/s  "
            f"final differing {med[4]:.0f}  any differing {med[5]:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rates", default="500,2000,8000", help="replica trades per second, comma separated")
    args = ap.parse_args()
    asyncio.run(main(args.runs, args.seconds, [float(x) for x in args.rates.split(",")]))
