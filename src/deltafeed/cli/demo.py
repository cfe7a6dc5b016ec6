"""``deltafeed demo``: replica, engine and live candles in the terminal, offline."""

from __future__ import annotations

import argparse

from deltafeed.cli import Subcommands, _asyncio_run


def add_parser(sub: Subcommands) -> None:
    """The ``demo`` sub-command and its options."""
    demo = sub.add_parser("demo", help="replica + engine + live candles in the terminal, offline")
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--speed", type=float, default=30.0, help="replica market speed (default 30x)")
    demo.add_argument("--db", help="DuckDB file (default deltafeed-demo.duckdb, started afresh each time)")


def command(args: argparse.Namespace) -> int:
    from deltafeed.demo import run_demo

    return _asyncio_run(lambda stop: run_demo(stop, args.duration, args.speed, args.db))
