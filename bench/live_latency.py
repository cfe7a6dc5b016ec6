"""Live candle latency as ``/metrics`` reports it: an engine collecting from the Binance replica
(in this process, over loopback) for a while, then the three live-latency histograms read.

Printed per histogram (end -> closed, closed -> stored, end -> stored): how many live candles it
counted, and p50/p99 as Grafana's ``histogram_quantile`` estimates them from the buckets (linear
within a bucket), next to how many candles the bootstrap fetched (which the histograms leave out).
Durations are wall seconds: the replica's clock runs ``--speed`` times as fast, and the engine
scales venue time back by that rate.

    python bench/live_latency.py [--seconds 30] [--speed 60] [--symbols BTCUSDT,ETHUSDT]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.stats import Histogram
from deltafeed.venues.binance.replica import BinanceReplica


def quantile(q: float, hist: Histogram) -> float:
    """Prometheus' histogram_quantile over one histogram: linear interpolation within the bucket."""
    rank = q * hist.count
    lower, below = 0.0, 0
    for bound, cumulative in hist.cumulative():
        if cumulative >= rank:
            if bound == float("inf"):
                return lower
            inside = cumulative - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = bound, cumulative
    return float("nan")


async def main(seconds: float, speed: float, symbols: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        replica = BinanceReplica(
            symbols=symbols, seed=11, rate=4.0, speed=speed, history_ms=2 * 3_600_000, tape=str(Path(tmp) / "t.csv")
        )
        await replica.start()
        settings = Settings(
            symbols=symbols,
            timeframes=["1m", "5m"],
            history="2h",
            db=str(Path(tmp) / "b.duckdb"),
            rest_url=replica.url,
            ws_url=replica.ws_url,
        ).validate()
        engine = Engine(settings)
        try:
            await engine.start()
            await asyncio.sleep(seconds)
            await engine.writer.flush()
        finally:
            await engine.stop()
            await replica.stop()
    m = engine.metrics
    boot = sum(st.bootstrapped for st in engine.states.values())
    print(
        f"{len(symbols)} instruments, 1m and 5m, replica at {speed:g}x, {seconds:g} s streamed;"
        f" {boot} candles bootstrapped"
    )
    for name, hist in (
        ("end -> closed", m.candle_close),
        ("closed -> stored", m.candle_store),
        ("end -> stored", m.candle_latency),
    ):
        print(
            f"{name:17} {hist.count:5d} live candles"
            f"  p50 {quantile(0.5, hist):6.3f} s  p99 {quantile(0.99, hist):6.3f} s"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--speed", type=float, default=60.0)
    ap.add_argument("--symbols", default="BTCUSDT,ETHUSDT")
    args = ap.parse_args()
    asyncio.run(main(args.seconds, args.speed, args.symbols.split(",")))
