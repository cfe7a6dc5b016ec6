"""``deltafeed export``: stored candles (or ticks) of one series to a Parquet, CSV or feather file, in a
plain layout or the one freqtrade loads (see :mod:`deltafeed.store.export`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys

from deltafeed.cli import Subcommands, _parse_time
from deltafeed.fmt import iso
from deltafeed.model import TIMEFRAMES, BadInput, canonical_series, parse_timeframes

_TICK_KINDS = ("trades", "quotes", "book_snapshots", "book_deltas")


def add_parser(sub: Subcommands) -> None:
    """The ``export`` sub-command and its options."""
    e = sub.add_parser("export", help="write stored candles or ticks to a parquet, csv or feather file")
    e.add_argument("instrument", help="VENUE:SYMBOL, e.g. binance:BTCUSDT (NAME@bid for a forex side)")
    e.add_argument(
        "timeframe",
        help="a stored timeframe (1m, 1h, ...), trades / quotes for the raw ticks,"
        " or book_snapshots / book_deltas for the order-book history",
    )
    e.add_argument("out", help="the file to write; with --layout freqtrade the data directory, nautilus the catalog")
    e.add_argument("--since", help="ISO-8601 time, UTC unless it says otherwise")
    e.add_argument("--until", help="ISO-8601 time, UTC unless it says otherwise")
    e.add_argument("--format", default="parquet", help="parquet (default), csv or feather (feather needs pyarrow)")
    e.add_argument(
        "--layout",
        default="plain",
        help="plain (default: every column and the state), freqtrade (<dir>/<PAIR>-<tf>.<format>,"
        " date,open,high,low,close,volume) or nautilus (bars in the ParquetDataCatalog rooted at OUT)",
    )
    e.add_argument("--pair", help="freqtrade pair name (default from the symbol, e.g. BTCUSDT -> BTC/USDT)")
    e.add_argument("--final-only", action="store_true", help="only final (verified) candles")
    e.add_argument("--db", help="DuckDB file (default deltafeed.duckdb) or postgresql:// URL (or DELTAFEED_DB)")
    e.add_argument("--db-schema", default="deltafeed", help="PostgreSQL schema (default deltafeed)")


def command(args: argparse.Namespace) -> int:
    from deltafeed.store import export
    from deltafeed.store.base import ColdTier, StoreError
    from deltafeed.store.cold import DuckDBTier
    from deltafeed.store.open import open_cold
    from deltafeed.store.reader import read_candles
    from deltafeed.store.ticks import tick_tier

    inst = canonical_series(args.instrument)
    kind = args.timeframe.strip().lower()
    ticks = kind in _TICK_KINDS
    tf = kind if ticks else parse_timeframes([args.timeframe])[0]
    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    if since is not None and until is not None and since > until:
        raise BadInput(f"--since ({iso(since)}) is after --until ({iso(until)}); swap them")
    export.check_format(args.format, args.layout)
    if ticks and args.layout != "plain":
        raise BadInput(f"--layout {args.layout} is for candles; ticks are written in the plain layout")
    db = args.db or os.environ.get("DELTAFEED_DB") or "deltafeed.duckdb"
    to = export.target(args.out, inst, tf, args.format, args.layout, args.pair)

    async def existing(cold: ColdTier) -> str:
        if kind.startswith("book_"):
            return "no such rows (order books are kept with books = [...], their history with book_snapshot_every)"
        if ticks:
            tier = tick_tier(cold)
            held = await tier.tick_instruments() if tier is not None else []
            names = [f"{i} ({n} ticks)" for i, n, _, _ in held]
        else:
            names = [f"{i} {t} ({n} candles)" for i, t, n in await cold.instruments()]
        return ", ".join(names) if names else "nothing yet (run `deltafeed run` first)"

    written: list[str] = []

    async def run() -> int:
        cold = await open_cold(db, read_only=True, schema=args.db_schema)
        try:
            if args.layout == "nautilus":
                rows = await read_candles(None, cold, inst, tf, since, until, final_only=args.final_only)
                path, n = await asyncio.to_thread(export.write_nautilus, rows, inst, tf, args.out)
                written.append(path)
            elif isinstance(cold, DuckDBTier):
                if ticks:
                    n = await asyncio.to_thread(export.copy_ticks_from_duckdb, cold.store, tf, inst, since, until, to)
                else:
                    n = await asyncio.to_thread(
                        export.copy_from_duckdb, cold.store, inst, tf, since, until, args.final_only, to
                    )
            elif ticks:
                raise BadInput(
                    f"exporting {tf} reads a DuckDB file; {cold.name} is not one (use GET /trades or GET /book?at=)"
                )
            else:
                # A tier with query_records (PostgreSQL) hands the rows over as arrays, no Candle each.
                by_records = getattr(cold, "query_records", None)
                if by_records is not None:
                    rows = await by_records(inst, tf, since, until, final_only=args.final_only)
                else:
                    rows = await read_candles(None, cold, inst, tf, since, until, final_only=args.final_only)
                n = await asyncio.to_thread(export.write_candles_file, rows, inst, tf, to)
            if n == 0:
                with contextlib.suppress(OSError):
                    os.remove(to.path)
                window = "" if since is None and until is None else f" between {iso(since or 0)} and {iso(until or 0)}"
                what = f"{inst} {tf}" if not ticks else f"{tf} of {inst}"
                raise BadInput(f"no {what}{window} in {cold.name}; it holds {await existing(cold)}")
            return n
        finally:
            await cold.close()

    try:
        n = asyncio.run(run())
    except StoreError as exc:
        raise BadInput(f"cannot export: {exc}") from None
    unit = "rows" if kind.startswith("book_") else "ticks" if ticks else "candles"
    print(f"wrote {n} {unit} of {inst} {tf} to {written[0] if written else to.path}", file=sys.stderr)
    return 0


__all__ = ["TIMEFRAMES", "add_parser", "command"]
