"""A chaos run, shared by tests/test_chaos.py and bench/chaos.py.

The engine runs as a real process (`deltafeed run`) against a Binance replica that injects every
fault kind; the engine is killed with SIGKILL once and started again; optional ``events`` (stopping
and starting a private PostgreSQL or Redis) happen at given times; at the end the replica stops
injecting, the engine settles and stops, and every stored 1m and 5m candle up to the engine's
"final" marks is compared, field by field, with candles computed from the replica's tape.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltafeed.model import TIMEFRAMES
from deltafeed.replicas.binance import BinanceReplica
from deltafeed.replicas.faults import KINDS
from deltafeed.store.base import open_cold
from reference import candles_from_tape, read_tape

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
TIMEFRAMES_COMPARED = ("1m", "5m")


@dataclass
class ChaosResult:
    faults: dict[str, int]
    statuses: list[dict[str, Any]]  # the last status of every engine process, in order
    compared: int = 0  # candles compared with the tape
    mismatches: list[str] = field(default_factory=list)
    market_ms: int = 0  # market time the run covered (first compared candle to the last)
    behind_ms: int = 0  # how far the final marks trail the market's end, at most
    exit_codes: list[int] = field(default_factory=list)

    def total(self, key: str) -> int:
        return sum(int(s.get(key, 0)) for s in self.statuses)

    def per_instrument_total(self, key: str) -> int:
        return sum(int(i.get(key, 0)) for s in self.statuses for i in s.get("instruments", {}).values())

    def recovery_s(self) -> list[float]:
        return sorted(x for s in self.statuses for x in s.get("recovery_s", []))


def _engine(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed with it
    return subprocess.Popen([sys.executable, "-m", "deltafeed", "run", "--config", str(config)],
                            stdout=out, stderr=subprocess.STDOUT)


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.returncode


async def run_chaos(tmp: Path, *, wall_s: float, speed: float = 120.0, faults_per_minute: float = 6.0,
                    kill_at_s: float | None = None, seed: int = 1, rate: float = 2.0,
                    settle_s: float = 8.0, db: str | None = None, hot: str | None = None,
                    events: list[tuple[float, Callable[[], None]]] | None = None) -> ChaosResult:
    """Run the engine ``wall_s`` seconds against a faulty replica; see the module docstring.

    ``db`` is the cold store (default a DuckDB file in ``tmp``), ``hot`` an optional Redis URL, and
    ``events`` (wall seconds from the start, function) run in a worker thread at their time.
    """
    tape = tmp / "tape.csv"
    db = db or str(tmp / "chaos.duckdb")
    replica = BinanceReplica(symbols=SYMBOLS, seed=seed, rate=rate, speed=speed, history_ms=30 * 60_000,
                             tape=str(tape), faults={k: faults_per_minute for k in KINDS}, faults_seed=seed,
                             shutdown_grace_s=1.0, slow_s=1.0)
    await replica.start()
    statuses: list[dict[str, Any]] = []
    exit_codes: list[int] = []
    runs = 0

    def start_engine() -> tuple[subprocess.Popen[bytes], Path]:
        nonlocal runs
        runs += 1
        status = tmp / f"status-{runs}.json"
        config = tmp / f"engine-{runs}.toml"
        lines = [f"symbols = {json.dumps(list(SYMBOLS))}", 'timeframes = ["1m", "5m"]', 'history = "30m"',
                 f'db = "{db}"', f'spool = "{tmp / "chaos.spool"}"', f'rest_url = "{replica.url}"',
                 f'ws_url = "{replica.ws_url}"', 'stale_after = "1.5s"', 'audit_every = "15s"',
                 f'status_file = "{status}"', 'api = "127.0.0.1:0"']
        if hot:
            lines.append(f'hot = "{hot}"')
        config.write_text("\n".join(lines) + "\n")
        return _engine(config, tmp / "engine.log"), status

    def collect(status: Path) -> None:
        if status.exists():
            statuses.append(json.loads(status.read_text()))

    async def timeline(t0: float) -> None:
        for at, fn in sorted(events or [], key=lambda e: e[0]):
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            await asyncio.to_thread(fn)

    scheduled: asyncio.Task[None] | None = None
    try:
        t0 = time.monotonic()
        scheduled = asyncio.create_task(timeline(t0))
        proc, status = start_engine()
        if kill_at_s is not None:
            await asyncio.sleep(kill_at_s)
            os.kill(proc.pid, signal.SIGKILL)  # no chance to flush anything
            exit_codes.append(await _wait_exit(proc, 5))
            collect(status)
            await asyncio.sleep(1.0)
            proc, status = start_engine()
        await asyncio.sleep(max(0.0, wall_s - (time.monotonic() - t0)))
        await scheduled
        faults = replica.faults_injected()
        replica.faults = None  # the storm is over: let the engine finish its repairs
        await asyncio.sleep(settle_s)
        proc.send_signal(signal.SIGTERM)
        exit_codes.append(await _wait_exit(proc, 10))
        collect(status)
        end_ms = replica.clock.now_ms()
    finally:
        if scheduled is not None and not scheduled.done():
            scheduled.cancel()
        await replica.stop()

    result = ChaosResult(faults=faults, statuses=statuses, exit_codes=exit_codes)
    rows = read_tape(str(tape))
    store = await open_cold(db, read_only=True)
    try:
        marks = await store.final_marks()
        for sym in SYMBOLS:
            key = f"binance:{sym}"
            sym_rows = [r for r in rows if r[0] == sym]
            for tf in TIMEFRAMES_COMPARED:
                tf_ms = TIMEFRAMES[tf]
                mark = marks.get((key, tf), 0)
                result.behind_ms = max(result.behind_ms, end_ms - mark)
                want = {c.open_time: c for c in candles_from_tape(sym_rows, tf_ms)}
                stored = [c for c in await store.query(key, tf) if c.open_time < mark]
                keys = [c.open_time for c in stored]
                if not keys:
                    result.mismatches.append(f"{key} {tf}: nothing stored before the mark {mark}")
                    continue
                missing = sorted(set(range(keys[0], mark, tf_ms)) - set(keys))
                if missing:
                    result.mismatches.append(f"{key} {tf}: {len(missing)} candles missing, first {missing[0]}")
                if keys[0] > min(want) + tf_ms:
                    result.mismatches.append(f"{key} {tf}: history starts late at {keys[0]}")
                result.market_ms = max(result.market_ms, mark - keys[0])
                for c in stored:
                    w = want.get(c.open_time)
                    got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades, c.closed)
                    exp = None if w is None else (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades, True)
                    result.compared += 1
                    if got != exp:
                        result.mismatches.append(f"{key} {tf} {c.open_time}: stored {got} != tape {exp}")
    finally:
        await store.close()
    return result
