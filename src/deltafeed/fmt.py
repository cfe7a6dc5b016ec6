"""How candles are written as text: CSV, JSON or a table, with times and numbers as the venues print them.

Shared by the ``deltafeed candles`` command, the HTTP API's CSV answers and the demo, so all three
agree on what a candle looks like on the page."""

from __future__ import annotations

import csv
import datetime as dt
import sys
from typing import Any

import msgspec

from deltafeed.model import Candle, Switch


def iso(ms: int) -> str:
    """A time in ms since the epoch as ISO-8601 UTC to the second, e.g. ``2026-11-21T08:00:00Z``."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


#: Decimals of every price and size deltafeed prints or serves: venues quote at most 8 (a mid price of
#: 5-decimal quotes has 6), while sums and means of binary floats carry noise past that
#: (``2.822820000000001``, ``1.0353249999999998``).
DECIMALS = 8


def clean(x: float) -> float:
    """A price or size without float noise: rounded to :data:`DECIMALS` decimals."""
    return round(x, DECIMALS)


def num(x: float) -> str:
    """A price or volume as the venue would print it: up to 8 decimals, no float noise."""
    s = f"{x:.8f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


#: The CSV columns of ``deltafeed candles`` (``state`` is forming, provisional or final).
CSV_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "trades", "state")


def write_candles(rows: list[Candle], fmt: str, title: str, spanning: dict[int, Switch] | None = None) -> None:
    """Candles to stdout as CSV, JSON or a table, each with its state (forming, provisional or final).
    A candle of a logical instrument that spans a failover switch (``spanning``: open time -> switch)
    is marked: a ``switch`` field in JSON, its state in the table, and a note on stderr beside the
    CSV, whose columns stay fixed."""
    out = sys.stdout
    spanning = spanning or {}

    def moved(t: int) -> str | None:
        w = spanning.get(t)
        return None if w is None else f"{w.source_from} -> {w.source_to}"

    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for c in rows:
            w.writerow(
                [iso(c.open_time), num(c.open), num(c.high), num(c.low), num(c.close), num(c.volume), c.trades, c.state]
            )
        for t in sorted(spanning):
            print(f"note: the candle at {iso(t)} spans a failover switch ({moved(t)})", file=sys.stderr)
    elif fmt == "json":
        # Rounded to the venue's 8 decimals: sums of floats carry noise past that.
        docs: list[dict[str, Any]] = []
        for c in rows:
            doc: dict[str, Any] = {
                "open_time": iso(c.open_time),
                "open": round(c.open, 8),
                "high": round(c.high, 8),
                "low": round(c.low, 8),
                "close": round(c.close, 8),
                "volume": round(c.volume, 8),
                "trades": c.trades,
                "closed": c.closed,
                "state": c.state,
            }
            if c.open_time in spanning:
                doc["switch"] = moved(c.open_time)
            docs.append(doc)
        out.write(msgspec.json.encode(docs).decode() + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{title} ({len(rows)} candles)")
        for name in ("open_time", "open", "high", "low", "close", "volume", "trades", "state"):
            table.add_column(name, justify="right" if name != "open_time" else "left")
        for c in rows:
            state = c.state
            if c.open_time in spanning:
                state += f", switch {moved(c.open_time)}"
            table.add_row(
                iso(c.open_time),
                num(c.open),
                num(c.high),
                num(c.low),
                num(c.close),
                num(c.volume),
                str(c.trades),
                state,
            )
        # A pipe gets the whole table, not one cut to a guessed 80 columns.
        Console(width=None if out.isatty() else 200).print(table)
