"""What timeframes cost the candle builders: trades/s folded by :class:`CandleBuilder` into a set of
timeframes, and base updates/s folded by :class:`RollupBuilder` into derived ones (medians of
several runs, in process, no I/O). Compare the standard set with the new grids (weeks, months).

    python bench/timeframes.py [--trades 400000] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.rollup import RollupBuilder
from deltafeed.model import Candle, Trade

SETS = {
    "standard 1s 1m 5m 15m 1h": ["1s", "1m", "5m", "15m", "1h"],
    "new 30s 45s 3m 2h 1w 1M": ["30s", "45s", "3m", "2h", "1w", "1M"],
}
ROLLUPS = {
    "1m -> 5m 15m 1h 4h 1d": ["5m", "15m", "1h", "4h", "1d"],
    "1m -> 3m 30m 2h 1w 1M": ["3m", "30m", "2h", "1w", "1M"],
}


def trades(n: int) -> list[Trade]:
    rnd = random.Random(1)
    t, p, out = 1_780_000_000_000, 100.0, []
    for i in range(n):
        t += rnd.randrange(0, 40)  # ~50 trades a market second
        p += rnd.uniform(-0.01, 0.01)
        out.append(Trade("X", i + 1, t, p, 0.5, False))
    return out


def builder_rate(tfs: list[str], ts: list[Trade]) -> float:
    b = CandleBuilder(tfs, lambda tf, c: None, lambda tf, a, z: None)
    t0 = time.perf_counter()
    for t in ts:
        b.on_trade(t)
    return len(ts) / (time.perf_counter() - t0)


def rollup_rate(derived: list[str], n: int) -> float:
    r = RollupBuilder("1m", derived, lambda tf, c: None)
    t0 = time.perf_counter()
    base = 1_780_000_000_000 - 1_780_000_000_000 % 60_000
    for i in range(n):
        o = base + (i // 4) * 60_000  # three forming updates, then the closed part
        r.on_base(Candle(o, 1.0, 2.0, 0.5, 1.5, 1.0, 3, i % 4 == 3, i % 4 == 3))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trades", type=int, default=400_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    ts = trades(args.trades)
    for name, tfs in SETS.items():
        med = statistics.median(builder_rate(tfs, ts) for _ in range(args.runs))
        print(f"CandleBuilder  {name:28} {med / 1e3:8.0f} k trades/s (median of {args.runs})")
    for name, derived in ROLLUPS.items():
        med = statistics.median(rollup_rate(derived, args.trades) for _ in range(args.runs))
        print(f"RollupBuilder  {name:28} {med / 1e3:8.0f} k base updates/s (median of {args.runs})")


if __name__ == "__main__":
    main()
