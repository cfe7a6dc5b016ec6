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

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.fmt import iso, num
from deltafeed.venues.binance import VENUE as BINANCE
from deltafeed.venues.binance.replica import BinanceReplica
from deltafeed.venues.oanda import VENUE as OANDA
from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica

_HOUR_MS = 3_600_000


def _fx_start(now_ms: int) -> int:
    """Now, or when the FX market is closed or about to close (a weekend), the last moment it was
    open with six open hours of history before it and two more ahead."""
    cal, t = FxCalendar(), now_ms
    while not (cal.is_open(t - _HOUR_MS * 6) and cal.is_open(t) and cal.next_close(t) >= t + 2 * _HOUR_MS):
        t -= _HOUR_MS
    return t


SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
FX_SYMBOLS = ("EUR_USD", "USD_JPY")
DEFAULT_DB = "deltafeed-demo.duckdb"
TIMEFRAMES = ["1m", "5m", "15m", "1h"]


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
    db_path = db or DEFAULT_DB
    if db is None:
        # Each demo has its own simulated market: its own file starts afresh rather than mix two
        # markets. A file named with --db is never removed.
        for stale in (Path(db_path), Path(db_path + ".wal")):
            stale.unlink(missing_ok=True)
    replica = BinanceReplica(symbols=SYMBOLS, seed=7, rate=8.0, speed=speed, history_ms=6 * 3_600_000)
    await replica.start()
    fx = OandaReplica(
        symbols=FX_SYMBOLS,
        seed=7,
        rate=4.0,
        speed=speed,
        history_ms=6 * 3_600_000,
        start_ms=_fx_start(int(time.time() * 1000)),
    )
    await fx.start()
    os.environ["OANDA_TOKEN"] = DEV_TOKEN  # the replica's, for this process only
    os.environ["OANDA_ACCOUNT"] = DEFAULT_ACCOUNT
    console.print(f"replicas: binance on {replica.url}, oanda on {fx.url} (market clocks x{speed:g}); store {db_path}")
    settings = Settings(
        symbols=[f"{BINANCE.name}:{s}" for s in SYMBOLS] + [f"{OANDA.name}:{s}" for s in FX_SYMBOLS],
        timeframes=TIMEFRAMES,
        history="6h",
        db=db_path,
        venues={
            BINANCE.name: {"rest_url": replica.url, "ws_url": replica.ws_url},
            OANDA.name: {"rest_url": fx.url, "stream_url": fx.url},
        },
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        started = time.monotonic()
        before = sum(st.trades for st in engine.states.values())
        deadline = None if duration is None else started + duration
        with Live(_view(engine, started, before), console=console, refresh_per_second=4) as live:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.25)
                live.update(_view(engine, started, before))
    finally:
        await engine.stop()
        await replica.stop()
        await fx.stop()
    exe = "deltafeed" if shutil.which("deltafeed") else f"{sys.executable} -m deltafeed"
    console.line()
    console.print(
        f"stopped; {engine.writer.written} candle writes to {db_path}. Look at them with:\n"
        f"  {exe} candles binance:BTCUSDT 1m --db {db_path} --last 20\n"
        f"  {exe} candles oanda:EUR_USD 1m --db {db_path} --last 20   (forex: mid; --price bid|ask)"
    )
    return 0
