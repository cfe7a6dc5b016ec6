"""Trade frames from a pre-encoded source over loopback into the engine, as fast as the engine takes them.

The frames come from bench/frame_source.py in a process of its own: blocks of Binance trade frames
encoded and framed once, of which serving the next costs a few numpy operations per few thousand
frames, so the engine, not the source, is the bottleneck. A Binance replica (another process,
almost idle) answers the REST start-up (time, symbols, history). The engine runs here with five
timeframes per symbol, klines on (the source sends none), candles stored in DuckDB.

Printed per run and as medians over runs: trades/s into candles (the median of the windows) and
CPU µs per trade (this process's CPU time, every thread, over the trades of the same windows; the
event loop's thread alone is printed beside it).
With ``--peers``, the same frames (the same source, the same symbols) also go through cryptofeed
(``.venv-cryptofeed``, ``make clients``; it reads ``@aggTrade`` streams, one trade per aggregate)
and ccxt.pro (``watch_trades``), whichever is installed, each in its own process with a callback
that only counts; the ratios of their figures to the engine's are from the same run.

    python bench/throughput.py [--symbols 1] [--seconds 10] [--windows 5] [--runs 1] [--peers]
                               [--ticks on|off] [--tls on|off]

cryptofeed connects to ``wss://`` only, so with ``--peers`` every client, the engine too, reads
over TLS (the source and the replica serve it with a CA made for the run).

``--symbols 1`` is BTCUSDT; more are Z0000USDT, Z0001USDT, ... The machine is shared: print the
load average beside the figures (done at the start and the end) and read them as noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TIMEFRAMES = ["1s", "1m", "5m", "15m", "1h"]
HERE = Path(__file__).resolve().parent
CRYPTOFEED_PYTHON = Path(
    os.environ.get("DELTAFEED_CRYPTOFEED_PYTHON", HERE.parent / ".venv-cryptofeed" / "bin" / "python")
)
WEIGHT = 600_000  # REST weight per minute at both ends: the bootstrap's pacing is not measured here
WARMUP_S = 2.0


def start(cmd: list[str], tls: bool) -> tuple[subprocess.Popen[str], str, str | None]:
    """A server process, the address it prints first (``listening on URL``) and with ``tls`` the
    CA file it prints next (``TLS CA certificate: PATH ...``)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"{cmd[1]} did not start: {line!r}")
    ca = proc.stdout.readline().split()[3] if tls else None
    return proc, line.removeprefix("listening on "), ca


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(samples: list[tuple[int, float, float]]) -> tuple[float, float]:
    """(median trades/s over the windows, CPU µs per trade over them) from running totals
    ``(trades, cpu_s, wall_s)`` sampled at the window edges."""
    rates = [(b[0] - a[0]) / (b[2] - a[2]) for a, b in itertools.pairwise(samples)]
    trades = samples[-1][0] - samples[0][0]
    cpu = samples[-1][1] - samples[0][1]
    return statistics.median(rates), cpu / trades * 1e6 if trades else float("inf")


async def run_engine(
    symbols: list[str], rest: str, ws: str, seconds: float, windows: int, ticks: bool, source_pid: int
) -> tuple[float, float, dict[str, object]]:
    # Imported here, once SSL_CERT_FILE names the run's CAs: aiohttp makes its default TLS context
    # when it is first imported.
    from deltafeed.config import Settings
    from deltafeed.engine import Engine

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            symbols=symbols,
            timeframes=TIMEFRAMES,
            history="1m",
            db=str(Path(tmp) / "bench.duckdb"),
            rest_url=rest,
            ws_url=ws,
            weight_limit=WEIGHT,
            ticks=ticks,
        ).validate()
        engine = Engine(settings)
        started = time.monotonic()
        try:
            await engine.start()
            startup_s = time.monotonic() - started
            states = list(engine.states.values())
            await asyncio.sleep(WARMUP_S)

            def sample() -> tuple[int, float, float]:
                return sum(st.trades for st in states), time.process_time(), time.monotonic()

            samples = [sample()]
            loop0 = time.thread_time()  # the event loop's thread alone
            source0 = proc_cpu_s(source_pid)
            for _ in range(windows):
                await asyncio.sleep(seconds / windows)
                samples.append(sample())
            status = engine.status()
            served = samples[-1][0] - samples[0][0]
            status["source_us"] = (proc_cpu_s(source_pid) - source0) / served * 1e6 if served else 0.0
            status["loop_us"] = (time.thread_time() - loop0) / served * 1e6 if served else 0.0
            status["silent"] = sum(1 for st in states if st.trades == 0)
            status["startup_s"] = startup_s
        finally:
            await engine.stop()
    rate, cpu_us = figures(samples)
    return rate, cpu_us, status


def peers_available() -> dict[str, list[str]]:
    """The peers installed: name -> the command that runs bench/peers.py for it."""
    out = {}
    probe = [str(CRYPTOFEED_PYTHON), "-c", "import cryptofeed"]
    if CRYPTOFEED_PYTHON.exists() and subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
        out["cryptofeed 2.4.1" if _version(probe[0], "cryptofeed") == "2.4.1" else "cryptofeed"] = [
            str(CRYPTOFEED_PYTHON),
            str(HERE / "peers.py"),
            "cryptofeed",
        ]
    try:
        import ccxt

        out[f"ccxt.pro {ccxt.__version__}"] = [sys.executable, str(HERE / "peers.py"), "ccxt"]
    except ImportError:
        pass
    return out


def _version(python: str, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout.strip()


def run_peer(
    cmd: list[str], rest: str, ws: str, seconds: float, windows: int, symbols: list[str]
) -> tuple[float, float]:
    """Run one peer for warm-up + ``seconds``; its figures over the last ``windows`` seconds-long
    edges after the warm-up (it reports once a second)."""
    total = WARMUP_S + seconds + 1
    out = subprocess.run([*cmd, rest, ws, str(total), *symbols], capture_output=True, text=True, timeout=total + 120)
    docs = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    rows = [(d["trades"], d["cpu_s"], d["wall_s"]) for d in docs if "trades" in d]
    if out.returncode != 0 or len(rows) < 3:
        raise RuntimeError(f"{cmd[2]} failed (exit {out.returncode}): {out.stderr[-800:]}")
    rows = rows[int(WARMUP_S) :]
    step = max(1, (len(rows) - 1) // windows)
    return figures(rows[::step])


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--symbols", type=int, default=1, help="instruments (1: BTCUSDT)")
    ap.add_argument("--seconds", type=float, default=10.0, help="measuring time per client and run")
    ap.add_argument("--windows", type=int, default=5, help="windows to take the median trades/s over")
    ap.add_argument("--runs", type=int, default=1, help="runs (every client once per run, interleaved)")
    ap.add_argument("--peers", action="store_true", help="also run cryptofeed and ccxt.pro, where installed")
    ap.add_argument("--ticks", choices=("on", "off"), default="off", help="record raw ticks or not (the default)")
    ap.add_argument("--tls", choices=("on", "off"), default="off", help="wss:// and https:// (on with --peers)")
    args = ap.parse_args()
    if args.symbols < 1 or args.seconds <= 0 or args.windows < 1 or args.runs < 1:
        print("--symbols, --seconds, --windows and --runs must be positive; e.g. --symbols 1000", file=sys.stderr)
        sys.exit(2)
    symbols = ["BTCUSDT"] if args.symbols == 1 else [f"Z{i:04d}USDT" for i in range(args.symbols)]
    peers = peers_available() if args.peers else {}
    tls = args.tls == "on" or bool(peers)  # cryptofeed takes wss:// only: everyone gets TLS then
    tmp = tempfile.TemporaryDirectory()
    load0 = os.getloadavg()
    replica_cmd = [
        sys.executable, "-m", "deltafeed", "replica", "binance", "--symbols", ",".join(symbols),
        "--rate", "0.01", "--history", "2m", "--port", "0", "--weight-limit", str(WEIGHT),
    ]  # fmt: skip
    replica, rest, ca1 = start(replica_cmd + (["--tls", f"{tmp.name}/replica"] if tls else []), tls)
    source_cmd = [sys.executable, str(HERE / "frame_source.py"), "--port", "0", "--expect", str(len(symbols))]
    source, ws, ca2 = start(source_cmd + (["--tls", f"{tmp.name}/source"] if tls else []), tls)
    if ca1 and ca2:  # every client here (and its subprocesses) trusts both CAs
        bundle = Path(tmp.name) / "cas.pem"
        bundle.write_text(Path(ca1).read_text() + Path(ca2).read_text())
        os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)
    results: dict[str, list[tuple[float, float]]] = {"deltafeed": [], **{p: [] for p in peers}}
    try:
        for run in range(1, args.runs + 1):
            rate, cpu_us, status = await run_engine(
                symbols, rest, ws, args.seconds, args.windows, args.ticks == "on", source.pid
            )
            results["deltafeed"].append((rate, cpu_us))
            print(
                f"run {run}  deltafeed  {rate:>10,.0f} trades/s  {cpu_us:5.2f} us CPU/trade  "
                f"(event loop thread {status['loop_us']:.2f} us; start-up {status['startup_s']:.1f} s; "
                f"source {status['source_us']:.2f} us CPU/trade; "
                f"connections {status.get('connections', '?')}, "
                f"skipped frames {status.get('skipped_frames', {})}, instruments without trades {status['silent']})",
                flush=True,
            )
            for name, cmd in peers.items():
                try:
                    prate, pcpu = run_peer(cmd, rest, ws, args.seconds, args.windows, symbols)
                except RuntimeError as exc:
                    print(f"run {run}  {name}: {exc}", flush=True)
                    continue
                results[name].append((prate, pcpu))
                print(f"run {run}  {name:<10} {prate:>10,.0f} trades/s  {pcpu:5.2f} us CPU/trade", flush=True)
    finally:
        stop(source)
        stop(replica)
        tmp.cleanup()
    load1 = os.getloadavg()
    print()
    print(
        f"{len(symbols)} symbol(s), timeframes {','.join(TIMEFRAMES)}, {args.seconds:g} s x {args.runs} run(s), "
        f"ticks {args.ticks}, TLS {'on' if tls else 'off'}; "
        f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end; "
        f"{os.cpu_count()} CPUs"
    )
    ours = results["deltafeed"]
    med_rate = statistics.median(r for r, _ in ours)
    med_cpu = statistics.median(c for _, c in ours)
    print(f"{'client':<18} {'trades/s (median)':>18} {'CPU us/trade':>13}   deltafeed's trades/s and CPU ratios")
    print(f"{'deltafeed':<18} {med_rate:>18,.0f} {med_cpu:>13.2f}")
    for name in peers:
        got = results[name]
        if not got:
            print(f"{name:<18} {'failed':>18}")
            continue
        rate = statistics.median(r for r, _ in got)
        cpu = statistics.median(c for _, c in got)
        ratios = f"{med_rate / rate:.2f}x the trades/s, {med_cpu / cpu:.2f}x the CPU per trade"
        print(f"{name:<18} {rate:>18,.0f} {cpu:>13.2f}   {ratios}")
    if args.peers and not peers:
        print("no peer installed: `make clients` builds .venv-cryptofeed; ccxt comes with the test extra")


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
