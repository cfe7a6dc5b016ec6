"""Trade frames from the replica over loopback into the engine, as fast as the engine takes them.

The replica runs in its own process (one core) with a market far busier than any real one; the
engine runs here on the other core with five timeframes. Printed: trades/s ingested into candles
(median of several windows), latency from frame received to candle updated (p50/p99, sampled),
and peak RSS.

    python bench/throughput.py [--seconds 20] [--rate 400000] [--windows 5] [--ticks on|off]

``--ticks on`` measures with raw ticks recorded (``ticks = true``; off is the default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.binance.feed import BinanceFeed

TIMEFRAMES = ["1s", "1m", "5m", "15m", "1h"]
SAMPLE_EVERY = 64  # time one frame in 64: timing every frame would cost more than the frame


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="total measuring time")
    ap.add_argument("--windows", type=int, default=5, help="windows to take the median over")
    ap.add_argument("--rate", type=float, default=400_000, help="replica trades per second (one symbol)")
    ap.add_argument("--ticks", choices=("on", "off"), default="off", help="record raw ticks or not (the default)")
    args = ap.parse_args()

    replica = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deltafeed",
            "replica",
            "binance",
            "--symbols",
            "BTCUSDT",
            "--rate",
            str(args.rate),
            "--history",
            "1m",
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert replica.stdout is not None
    url = replica.stdout.readline().strip().removeprefix("listening on ")
    tmp = tempfile.TemporaryDirectory()
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=TIMEFRAMES,
        history="1m",
        db=str(Path(tmp.name) / "bench.duckdb"),
        rest_url=url,
        ws_url=url.replace("http://", "ws://"),
        ticks=args.ticks == "on",
    ).validate()
    engine = Engine(settings)
    feed = engine.feeds["binance"]
    assert isinstance(feed, BinanceFeed)
    latencies: list[int] = []
    inner = feed.on_frame
    count = 0

    def timed(frame: bytes | memoryview) -> None:
        nonlocal count
        count += 1
        if count % SAMPLE_EVERY:
            inner(frame)
            return
        t0 = time.perf_counter_ns()
        inner(frame)
        latencies.append(time.perf_counter_ns() - t0)

    feed.ws.on_frame = timed
    try:
        await engine.start()
        st = next(iter(engine.states.values()))
        await asyncio.sleep(2.0)  # warm-up: connection up, bootstrap done
        rates = []
        window = args.seconds / args.windows
        for _ in range(args.windows):
            n0, t0 = st.trades, time.perf_counter()
            await asyncio.sleep(window)
            rates.append((st.trades - n0) / (time.perf_counter() - t0))
        status = engine.status()
    finally:
        await engine.stop()
        replica.terminate()
        replica.wait(5)
        tmp.cleanup()
    lat = sorted(latencies)
    p50 = lat[len(lat) // 2] / 1000
    p99 = lat[int(len(lat) * 0.99)] / 1000
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    inst = status["instruments"]
    assert isinstance(inst, dict)
    s = inst["binance:BTCUSDT"]
    print(f"timeframes            {','.join(TIMEFRAMES)} (one symbol, replica rate {args.rate:,.0f}/s)")
    rec = engine.ticks
    print(f"raw ticks             {args.ticks}" + (f" ({rec.written:,} written, {rec.dropped} dropped)" if rec else ""))
    print(
        f"trades/s into candles median {statistics.median(rates):,.0f}  "
        f"(windows: {', '.join(f'{r:,.0f}' for r in rates)})"
    )
    print(f"frame->candle latency p50 {p50:.2f} us  p99 {p99:.2f} us  ({len(lat)} samples)")
    print(f"peak RSS              {rss_mb:.0f} MiB")
    print(
        f"trades {s['trades']:,}  gaps {s['gaps']}  duplicates {s['duplicates']}  "
        f"skipped frames {status['skipped_frames']}  cpu count {os.cpu_count()}"
    )


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
