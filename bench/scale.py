"""How the engine scales in instruments: 1, 100 and 1000 symbols at a realistic trade rate.

The Binance replica runs in its own process; the engine runs here with one timeframe per symbol
(1m, kline streams on: two streams per symbol, so 1000 symbols need several connections). For each
size it prints:

- start-up time (``Engine.start``: checks, bootstrap of the history, connecting);
- the engine's CPU share while streaming (process CPU seconds over wall seconds, this process only),
  and the replica process's beside it;
- RSS per instrument (the RSS growth from before the engine started, over the instrument count);
- the writer backlog (candles held in memory) sampled every second: it must stay bounded.

    python bench/scale.py [--sizes 1,100,1000] [--seconds 20] [--rate 10] [--runs 3]

``--rate`` is trades per wall second per symbol. With ``--runs`` above one the figures are medians.
The machine is shared: print the load average beside the figures and read them as noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine

SPEED = 10.0  # market seconds per wall second at the replica


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_replica(symbols: list[str], rate: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable, "-m", "deltafeed", "replica", "binance", "--symbols", ",".join(symbols),
        "--rate", str(rate / SPEED), "--speed", str(SPEED), "--history", "2m", "--port", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip().removeprefix("listening on ")
    return proc, url


async def one_run(n: int, seconds: float, rate: float) -> dict[str, float | list[int]]:
    symbols = [f"Z{i:04d}USDT" for i in range(n)]
    replica, url = start_replica(symbols, rate)
    tmp = tempfile.TemporaryDirectory()
    try:
        settings = Settings(
            symbols=symbols,
            timeframes=["1m"],
            history="2m",
            db=str(Path(tmp.name) / "scale.duckdb"),
            rest_url=url,
            ws_url=url.replace("http://", "ws://"),
        ).validate()
        rss0 = rss_bytes()
        engine = Engine(settings)
        t0 = time.perf_counter()
        await engine.start()
        startup = time.perf_counter() - t0
        try:
            await asyncio.sleep(2.0)  # connections up, first trades in
            backlog: list[int] = []
            cpu0, w0, rcpu0 = time.process_time(), time.perf_counter(), proc_cpu_s(replica.pid)
            trades0 = sum(st.trades for st in engine.states.values())
            for _ in range(int(seconds)):
                await asyncio.sleep(1.0)
                backlog.append(engine.writer.in_memory)
            cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - w0)
            replica_share = (proc_cpu_s(replica.pid) - rcpu0) / (time.perf_counter() - w0)
            trades_s = (sum(st.trades for st in engine.states.values()) - trades0) / (time.perf_counter() - w0)
            rss_per = (rss_bytes() - rss0) / n
            silent = sum(1 for st in engine.states.values() if st.trades == 0)
        finally:
            await engine.stop()
    finally:
        replica.terminate()
        replica.wait(10)
        tmp.cleanup()
    return {
        "startup_s": startup,
        "cpu_share": cpu_share,
        "replica_cpu_share": replica_share,
        "rss_per_instrument_kb": rss_per / 1024,
        "trades_s": trades_s,
        "silent": silent,
        "backlog": backlog,
    }


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,100,1000", help="instrument counts, comma separated")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured streaming time per run")
    ap.add_argument("--rate", type=float, default=10.0, help="trades per wall second per symbol")
    ap.add_argument("--runs", type=int, default=3, help="runs per size; medians are printed")
    args = ap.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores; figures are noisy)")
    for n in (int(s) for s in args.sizes.split(",")):
        runs = [await one_run(n, args.seconds, args.rate) for _ in range(args.runs)]

        def med(key: str, runs: list[dict[str, float | list[int]]] = runs) -> float:
            return statistics.median(float(r[key]) for r in runs)  # type: ignore[arg-type]

        print(
            f"{n:>5} instruments: start-up {med('startup_s'):.2f} s, CPU share {100 * med('cpu_share'):.0f}% "
            f"(replica {100 * med('replica_cpu_share'):.0f}%), "
            f"RSS/instrument {med('rss_per_instrument_kb'):.0f} KB, trades {med('trades_s'):,.0f}/s, "
            f"silent instruments {med('silent'):.0f}"
        )
        print(f"       writer backlog each second (last run): {runs[-1]['backlog']}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")


if __name__ == "__main__":
    asyncio.run(main())
