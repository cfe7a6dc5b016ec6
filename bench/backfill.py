"""Backfill speed: one weekday of EUR_USD tick files from the Dukascopy replica (2 quotes/s, about
170k quotes), built into 1m 5m 15m 1h candles and stored in a fresh DuckDB file, as
`deltafeed backfill oanda:EUR_USD --source dukascopy` does. Mid alone, then mid, bid and ask.

Run: ``.venv/bin/python bench/backfill.py [--runs N]``. Prints quotes/s of every run and the median;
this machine is shared, so compare figures from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from deltafeed.backfill import backfill
from deltafeed.model import time_ms
from deltafeed.venues.dukascopy.replica import DukascopyReplica

SINCE, UNTIL = time_ms("2026-01-06T00:00"), time_ms("2026-01-07T00:00")  # a Tuesday: the market is open all day
TIMEFRAMES = "1m,5m,15m,1h"


async def main(runs: int) -> None:
    async with DukascopyReplica(
        ["EURUSD"], seed=3, rate=2.0, start_ms=time_ms("2026-01-09T06:00"), history_ms=7 * 86_400_000
    ) as replica:
        for prices in ("mid", "mid,bid,ask"):
            rates = []
            for _ in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    r = await backfill(
                        "oanda:EUR_USD",
                        SINCE,
                        UNTIL,
                        timeframes=TIMEFRAMES,
                        prices=prices,
                        db=str(Path(tmp) / "fx.duckdb"),
                        url=replica.url,
                        requests_per_s=1000,
                        concurrency=4,
                    )
                rates.append(r.quotes / r.seconds)
                print(
                    f"  {prices:12} {r.quotes:,} quotes -> {sum(r.candles.values()):,} candles in {r.seconds:.3f} s: "
                    f"{rates[-1]:,.0f} quotes/s",
                    flush=True,
                )
            print(f"prices={prices}: median {statistics.median(rates):,.0f} quotes/s over {runs} runs", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    asyncio.run(main(ap.parse_args().runs))
