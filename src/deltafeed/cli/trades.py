"""``deltafeed trades``: print the raw trades (or quotes) stored for an instrument, and the spans of
the window the store lacks."""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys

import msgspec

from deltafeed.cli import Subcommands, _parse_time
from deltafeed.fmt import iso, num
from deltafeed.model import BadInput, canonical_series


def add_parser(sub: Subcommands) -> None:
    """The ``trades`` sub-command and its options."""
    t = sub.add_parser("trades", help="print stored raw trades (or quotes) and the spans missing from them")
    t.add_argument("instrument", help="VENUE:SYMBOL, e.g. binance:BTCUSDT")
    t.add_argument("--since", help="ISO-8601 time, UTC unless it says otherwise")
    t.add_argument("--until", help="ISO-8601 time, UTC unless it says otherwise")
    t.add_argument("--limit", type=int, help="at most N ticks (the first N from --since, else the newest N)")
    t.add_argument("--format", choices=("table", "csv", "json"), default="table")
    t.add_argument("--db", help="DuckDB file (default deltafeed.duckdb) or postgresql:// URL (or DELTAFEED_DB)")
    t.add_argument("--db-schema", default="deltafeed", help="PostgreSQL schema (default deltafeed)")


def command(args: argparse.Namespace) -> int:
    from deltafeed.store.base import StoreError
    from deltafeed.store.open import open_cold
    from deltafeed.store.ticks import TickPage, tick_tier

    inst = canonical_series(args.instrument).partition("@")[0]
    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    if args.limit is not None and args.limit < 1:
        raise BadInput("--limit must be at least 1")
    db = args.db or os.environ.get("DELTAFEED_DB") or "deltafeed.duckdb"

    async def read() -> TickPage:
        cold = await open_cold(db, read_only=True, schema=args.db_schema)
        try:
            tier = tick_tier(cold)
            if tier is None:
                raise BadInput(f"{cold.name} keeps no ticks")
            page = await tier.read_ticks(inst, since, until, args.limit)
            if not page.trades and not page.quotes and page.kept_from is None:
                held = [f"{i} ({n} ticks)" for i, n, _, _ in await tier.tick_instruments()]
                raise BadInput(
                    f"no ticks of {inst} in {cold.name}; it holds "
                    + (", ".join(held) if held else "none yet (run `deltafeed run` with ticks = true)")
                )
            return page
        finally:
            await cold.close()

    try:
        page = asyncio.run(read())
    except StoreError as exc:
        raise BadInput(f"cannot read ticks: {exc}") from None
    out = sys.stdout
    if args.format == "json":
        out.write(msgspec.json.encode(page).decode() + "\n")
    else:
        rows: list[list[str]]
        if page.trades:
            head = ["time", "id", "price", "amount", "side"]
            rows = [[iso(t), str(i), num(p), num(q), "sell" if m else "buy"] for t, i, p, q, m in page.trades]
        else:
            head = ["time", "seq", "bid", "ask"]
            rows = [[iso(t), str(i), num(b), num(a)] for t, i, b, a in page.quotes]
        if args.format == "csv":
            w = csv.writer(out, lineterminator="\n")
            w.writerow(head)
            w.writerows(rows)
        else:
            widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(head)]
            print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)), file=out)
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)), file=out)
    for g in page.missing:
        print(f"note: ticks missing between {iso(g.since_ms)} and {iso(g.until_ms)} ({g.why})", file=sys.stderr)
    if page.kept_from is not None and since is not None and since < page.kept_from:
        print(
            f"note: ticks are kept from {iso(page.kept_from)} on (retention, or when recording began)", file=sys.stderr
        )
    if page.next_since is not None:
        print(f"note: --limit reached; continue with --since {iso(page.next_since)}", file=sys.stderr)
    return 0
