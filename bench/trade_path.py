"""The trade path alone: pre-encoded Binance trade frames replayed in-process through the feed's frame handler.

An engine is made as a run makes it (five timeframes per symbol, klines on, DuckDB in a temporary
directory) but not started: no socket, no REST. The WebSocket listener of a connection of its
Binance feed gets combined-stream trade frames encoded and made into picows frames beforehand, one
after the other, the symbols taking turns, as picows hands them over. The real
decoder, series, candle builders and publisher (hot tier, store queue) do the work, so the figure is
the per-trade cost of the code path a live trade takes after the WebSocket layer, without the
machine's noise of sockets and a second process.

Trade times advance at ``--rate`` trades per second across all symbols (as a source at that rate
would stamp them), so candles close as often as they do in ``bench/throughput.py``.

    python bench/trade_path.py [--symbols 1] [--trades 500000] [--runs 3] [--rate 500000]
    python bench/trade_path.py --callgrind [--symbols 1] [--trades 20000]

Printed: µs of CPU per trade (this process's CPU time over the replay; median of ``--runs``).
With ``--callgrind`` the script runs itself twice under ``valgrind --tool=callgrind``, replaying
``--trades`` and then twice as many of the same encoded frames, and prints the difference of the two
instruction totals divided by ``--trades``: "instructions per trade", repeatable on a busy machine
(set-up, encoding and start-up cancel out).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import picows

TIMEFRAMES = ["1s", "1m", "5m", "15m", "1h"]
FIRST_ID = 100_000_000_000


def symbols_of(n: int) -> list[str]:
    return ["BTCUSDT"] if n == 1 else [f"Z{i:04d}USDT" for i in range(n)]


def encode_frames(symbols: list[str], count: int, rate: float, start_ms: int) -> list[bytes]:
    """``count`` combined-stream trade frames, the symbols in turn, ids consecutive per symbol."""
    from deltafeed.venues.binance import codec

    streams = [codec.trade_stream(s) for s in symbols]
    price, out = 100.0, []
    for i in range(count):
        k = i % len(symbols)
        price = max(1.0, price + ((i * 7919) % 13 - 6) * 0.01)  # a fixed walk, the same every run
        ts = start_ms + int(i * 1000 / rate)
        payload = codec.encode_trade(
            symbols[k], FIRST_ID + i // len(symbols), ts, round(price, 2), 0.001 + (i % 7) * 0.01, i % 2 == 0
        )
        out.append(codec.wrap_combined(streams[k], payload))
    return out


async def replay(symbols: list[str], frames: list[Any], count: int, start_ms: int) -> tuple[float, int]:
    """Feed the first ``count`` frames to a fresh engine's Binance feed; (CPU seconds, trades folded)."""
    from deltafeed.config import Settings
    from deltafeed.engine import Engine
    from deltafeed.net.ws import WsStream, _Listener

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            symbols=symbols, timeframes=TIMEFRAMES, history="1m", db=str(Path(tmp) / "bench.duckdb")
        ).validate()
        engine = Engine(settings)
        feed = engine.feeds["binance"]
        feed.clock.observe(start_ms)  # type: ignore[attr-defined]
        feed.update_skew_bounds()  # type: ignore[attr-defined]
        engine.streaming_since = time.monotonic()
        # The listener a connection of the feed's gets, as picows calls it for each frame.
        on_ws_frame = _Listener(WsStream(lambda: "", feed.on_frame)).on_ws_frame  # type: ignore[attr-defined]
        gc.collect()
        t0 = time.process_time()
        for f in itertools.islice(frames, count):
            on_ws_frame(None, f)  # type: ignore[arg-type]
        cpu = time.process_time() - t0
        folded = sum(st.trades for st in engine.states.values())
    return cpu, folded


def callgrind_total(args: argparse.Namespace, count: int) -> int:
    """Instructions of a run of this script under callgrind that replays ``count`` frames."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            sys.executable, __file__, "--symbols", str(args.symbols), "--trades", str(count),
            "--encode", str(2 * args.trades), "--rate", str(args.rate), "--runs", "1", "--quiet",
        ]  # fmt: skip
        # A fixed hash seed: string hashing (and so the dicts' work) the same in both runs. One BLAS
        # thread: numpy's OpenBLAS threads spin while idle, and their spinning counted as instructions.
        env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        m = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
        assert m, "no instruction total in callgrind's output"
        return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, default=1)
    ap.add_argument("--trades", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=500_000.0, help="trades per second of venue time, all symbols")
    ap.add_argument("--callgrind", action="store_true", help="print instructions per trade (valgrind)")
    ap.add_argument("--encode", type=int, default=0, help=argparse.SUPPRESS)  # frames to encode (callgrind runs)
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.symbols < 1 or args.trades < 1 or args.runs < 1 or args.rate <= 0:
        raise SystemExit("trade_path.py: --symbols, --trades, --runs and --rate must be above 0")
    cmdline = "python bench/trade_path.py " + " ".join(sys.argv[1:])
    if args.callgrind:
        print(f"$ {cmdline}\nload average {os.getloadavg()[0]:.2f} (instruction counts do not depend on it)")
        one, two = callgrind_total(args, args.trades), callgrind_total(args, 2 * args.trades)
        per_trade = (two - one) / args.trades
        print(f"{args.symbols} symbol(s), {len(TIMEFRAMES)} timeframes: {per_trade:,.0f} instructions per trade")
        return
    symbols = symbols_of(args.symbols)
    start_ms = (int(time.time() * 1000) // 3_600_000) * 3_600_000 + 1  # just after an hour starts
    # WebSocket frames made once, as picows hands them over; a callgrind run makes them all in both runs.
    text = picows.WSMsgType.TEXT
    frames = [
        picows.picows._make_test_ws_frame(text, f, True, False)
        for f in encode_frames(symbols, max(args.encode, args.trades), args.rate, start_ms)
    ]
    figures = []
    for _ in range(args.runs):
        cpu, folded = asyncio.run(replay(symbols, frames, args.trades, start_ms))
        if folded != args.trades:
            raise SystemExit(f"only {folded} of {args.trades} trades were folded into candles")
        figures.append(cpu / args.trades * 1e6)
    if not args.quiet:
        print(f"$ {cmdline}\nload average {os.getloadavg()[0]:.2f}")
        runs = ", ".join(f"{f:.3f}" for f in figures)
        median = statistics.median(figures)
        print(f"{args.symbols} symbol(s), {len(TIMEFRAMES)} timeframes: {median:.3f} µs CPU per trade (runs {runs})")


if __name__ == "__main__":
    main()
