"""``deltafeed demo``: a replica, the engine against it, and the candles as they form, offline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.fmt import iso, num
from deltafeed.replicas.server import ReplicaBase
from deltafeed.venues import registry

_HOUR_MS = 3_600_000


def _fx_start(now_ms: int) -> int:
    """Now, or when the FX market is closed or about to close (a weekend), the last moment it was
    open with six open hours of history before it and two more ahead."""
    cal, t = FxCalendar(), now_ms
    while not (cal.is_open(t - _HOUR_MS * 6) and cal.is_open(t) and cal.next_close(t) >= t + 2 * _HOUR_MS):
        t -= _HOUR_MS
    return t


#: What the demo streams: (venue, symbols as the venue spells them, trades or quotes per market second).
DEMO_VENUES: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("binance", ("BTCUSDT", "ETHUSDT", "SOLUSDT"), 8.0),
    ("coinbase", ("BTC-USD", "ETH-USD"), 6.0),
    ("oanda", ("EUR_USD", "USD_JPY"), 4.0),
)
DEFAULT_DB = "deltafeed-demo.duckdb"
TIMEFRAMES = ["1m", "5m", "15m", "1h"]
#: Seconds between two snapshots of the view when stdout is no terminal (a pipe, a CI log).
PIPE_SNAPSHOT_S = 5.0


def _view(engine: Engine, started: float, trades_before: int) -> Group:
    status = engine.report()
    insts = status.instruments
    table = Table(title="deltafeed demo: crypto from trades, forex from quotes (mid), forming live", expand=False)
    for col in (
        "instrument",
        "tf",
        "open_time (UTC)",
        "state",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trades",
        "stored",
        "final",
    ):
        table.add_column(col, justify="left" if col in ("instrument", "tf", "open_time (UTC)", "state") else "right")
    for key, st in engine.states.items():
        for i, tf in enumerate(engine.timeframes):
            c = st.open_candle(tf)
            recent = engine.hot.last(key, tf, 1)
            shown = c or (recent[-1] if recent else None)
            held = engine.hot.last(key, tf, engine.settings.hot_capacity)
            stored = len(held)
            finals = sum(1 for h in held if h.final)
            if shown is None:
                table.add_row(key if i == 0 else "", tf, "…", "", "", "", "", "", "", "", str(stored), str(finals))
                continue
            style = "bold green" if shown.close >= shown.open else "bold red"
            table.add_row(
                key if i == 0 else "",
                tf,
                iso(shown.open_time),
                shown.state,
                num(shown.open),
                num(shown.high),
                num(shown.low),
                Text(num(shown.close), style=style),
                num(shown.volume),
                str(shown.trades),
                str(stored),
                str(finals),
            )
        table.add_section()
    trades = sum(v.trades for v in insts.values())
    elapsed = max(time.monotonic() - started, 1e-9)
    repaired = sum(v.repaired for v in insts.values())
    footer = Text(
        f"venue time {iso(status.venue_time_ms)}   connected={status.connected}   "
        f"trades {trades} ({(trades - trades_before) / elapsed:,.0f}/s)   bootstrapped+repaired "
        f"{sum(v.bootstrapped for v in insts.values())}+{repaired}   written {status.store_written}"
        f"   provisional {status.provisional}   reconciled {status.reconciled} (corrected {status.corrected})"
        f"   skipped frames {sum(status.skipped_frames.values())}"
        "   Ctrl-C to stop"
    )
    return Group(table, footer)


async def run_demo(stop: asyncio.Event, duration: float | None, speed: float, db: str | None) -> int:
    """Start the replica and the engine in-process and show candles until ``stop`` or ``duration``."""
    logging.getLogger("deltafeed").setLevel(logging.WARNING)
    # A pipe or CI log gets a table wide enough to read, not one squeezed into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(f"deltafeed demo: starting replicas of {', '.join(name for name, _, _ in DEMO_VENUES)} ...")
    console.file.flush()
    db_path = db or DEFAULT_DB
    if db is None:
        # Each demo has its own simulated market: its own file starts afresh rather than mix two
        # markets. A file named with --db is never removed.
        for stale in (Path(db_path), Path(db_path + ".wal")):
            stale.unlink(missing_ok=True)
    now_ms = int(time.time() * 1000)
    replicas: dict[str, ReplicaBase] = {}
    venues: dict[str, dict[str, Any]] = {}
    symbols: list[str] = []
    for name, syms, rate in DEMO_VENUES:
        venue = registry.get(name)
        # Forex opens Sunday evening and closes Friday evening: its market starts where it is open.
        start_ms = _fx_start(now_ms) if venue.calendar_name(syms[0]) == "fx" else None
        replica = venue.build_replica(
            symbols=syms, seed=7, rate=rate, speed=speed, history_ms=6 * _HOUR_MS, start_ms=start_ms
        )
        replicas[name] = replica
        await replica.start()
        venues[name] = venue.replica_settings(replica)
        os.environ.update(venue.replica_env(replica))  # the replica's dev credentials, this process only
        symbols += [f"{name}:{s}" for s in syms]
    console.print(
        "replicas: "
        + ", ".join(f"{name} on {r.url}" for name, r in replicas.items())
        + f" (market clocks x{speed:g}); store {db_path}"
    )
    settings = Settings(
        symbols=symbols,
        timeframes=TIMEFRAMES,
        history="6h",
        db=db_path,
        venues=venues,
    ).validate()
    engine = Engine(settings)
    try:
        console.print(
            f"bootstrapping {len(symbols)} instruments ({', '.join(TIMEFRAMES)}) from the replicas' history ..."
        )
        await engine.start()
        started = time.monotonic()
        before = sum(st.trades for st in engine.states.values())
        deadline = None if duration is None else started + duration
        if console.is_terminal:
            with Live(_view(engine, started, before), console=console, refresh_per_second=4) as live:
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(stop.wait(), 0.25)
                    live.update(_view(engine, started, before))
        else:
            # A pipe or a CI log cannot redraw in place: a plain snapshot now and every few seconds.
            while True:
                console.print(_view(engine, started, before))
                console.file.flush()
                wait = PIPE_SNAPSHOT_S if deadline is None else min(PIPE_SNAPSHOT_S, deadline - time.monotonic())
                if stop.is_set() or wait <= 0:
                    break
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
    finally:
        await engine.stop()
        for replica in replicas.values():
            await replica.stop()
    exe = "deltafeed" if shutil.which("deltafeed") else f"{sys.executable} -m deltafeed"
    console.line()
    lines = [f"stopped; {engine.writer.written} candle writes to {db_path}. Look at them with:"]
    for name, syms, _ in DEMO_VENUES:
        quotes = registry.get(name).quotes
        lines.append(
            f"  {exe} candles {name}:{syms[0]} 1m --db {db_path} --last 20"
            + ("   (mid; --price bid|ask)" if quotes else "")
        )
    console.print("\n".join(lines))
    return 0
