"""``deltafeed backfill``: fill forex candle history from tick files, with progress on stderr."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from deltafeed.cli import Subcommands, _asyncio_run, _parse_time
from deltafeed.model import BadInput


def add_parser(sub: Subcommands) -> None:
    """The ``backfill`` sub-command and its options."""
    bf = sub.add_parser("backfill", help="fill forex candle history from Dukascopy tick files")
    bf.add_argument("instrument", help="the series to fill, e.g. oanda:EUR_USD (the Dukascopy name EURUSD is derived)")
    from deltafeed.backfill import sources

    known = sources()
    bf.add_argument(
        "--source", help=f"where the ticks come from: {', '.join(known)} (default {known[0] if known else 'none'})"
    )
    bf.add_argument(
        "--since",
        required=True,
        metavar="ISO",
        help="ISO-8601 start, UTC unless it says otherwise; rounded down to the longest timeframe",
    )
    bf.add_argument(
        "--until",
        required=True,
        metavar="ISO",
        help="ISO-8601 end (exclusive), rounded down to the longest timeframe: only whole candles",
    )
    bf.add_argument(
        "--timeframes",
        default="1m,5m,15m,1h",
        help="comma list of Ns Nm Nh Nd 1w 1M, e.g. 1m,30m,1h (default 1m,5m,15m,1h)",
    )
    bf.add_argument(
        "--prices", default="mid", help="which price candles to build, comma list of mid,bid,ask (default mid)"
    )
    bf.add_argument("--db", help="DuckDB file (default deltafeed.duckdb) or postgresql:// URL (or DELTAFEED_DB)")
    bf.add_argument("--db-schema", default="deltafeed", help="PostgreSQL schema (default deltafeed)")
    bf.add_argument("--url", help="base address of the tick files (default https://datafeed.dukascopy.com/datafeed)")
    bf.add_argument(
        "--rps",
        type=float,
        default=10.0,
        help="requests per second (default 10, what Dukascopy tolerates; raise it for a replica)",
    )
    bf.add_argument("--retries", type=int, default=5, help="retries of a failed request (default 5)")


def command(args: argparse.Namespace) -> int:
    from deltafeed.backfill import BackfillProgress, backfill, plan_backfill
    from deltafeed.store.base import StoreError

    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    assert since is not None and until is not None  # required by the parser
    # Checked before anything is opened: a bad request is one line and exit 2, with no file created.
    plan = plan_backfill(
        args.instrument, since, until, source=args.source, timeframes=args.timeframes, prices=args.prices
    )
    if not args.rps > 0:
        raise BadInput("--rps must be greater than 0")
    if args.retries < 0:
        raise BadInput("--retries must not be negative")
    db = args.db or os.environ.get("DELTAFEED_DB") or "deltafeed.duckdb"
    title = f"{plan.instrument} {','.join(plan.timeframes)}"
    # Progress on stderr: a rich bar on a terminal, a plain line per 10 % of the hours on a pipe (from
    # the first quote on, so a source that fails or has nothing says one line only).
    last: list[BackfillProgress] = []
    printed = [0]  # tenths of the hours last printed
    bar: Any = None
    task: Any = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("hours, {task.fields[quotes]:,} quotes, {task.fields[candles]:,} candles written"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task(title, total=plan.hours, quotes=0, candles=0)

    def progress(p: BackfillProgress) -> None:
        tenth = 10 * p.hours_done // max(1, p.hours_total)
        if bar is not None:
            bar.update(task, completed=p.hours_done, total=p.hours_total, quotes=p.quotes, candles=p.candles_written)
        elif p.quotes and tenth > printed[0]:
            printed[0] = tenth
            print(
                f"deltafeed backfill: {title}: {p.hours_done}/{p.hours_total} hours, {p.quotes} quotes, "
                f"{p.candles_written} candles written",
                file=sys.stderr,
                flush=True,
            )
        last[:] = [p]

    async def body(stop: asyncio.Event) -> int:
        job = asyncio.ensure_future(
            backfill(
                args.instrument,
                since,
                until,
                source=args.source,
                timeframes=plan.timeframes,
                prices=plan.sides,
                db=db,
                db_schema=args.db_schema,
                url=args.url,
                requests_per_s=args.rps,
                retries=args.retries,
                progress=progress,
            )
        )
        stopped = asyncio.ensure_future(stop.wait())
        if bar is not None:
            bar.start()
        try:
            await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not job.done():
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
            if bar is not None:
                bar.stop()
        if job.cancelled():
            print(
                f"deltafeed backfill: interrupted after {last[-1].hours_done if last else 0} of {plan.hours} "
                "hours; the candles written so far are kept, run the same command again to finish",
                file=sys.stderr,
            )
            return 130
        try:
            result = job.result()
        except StoreError as exc:
            raise BadInput(f"cannot write candles: {exc}") from None
        print(result.summary(), flush=True)
        return 0

    return _asyncio_run(body)
