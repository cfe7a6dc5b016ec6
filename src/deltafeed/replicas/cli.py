"""The command-line options every ``deltafeed replica NAME`` has (checked by ``ReplicaOptions.from_args``).

Each venue adds its replica's own options and defaults in its :class:`~deltafeed.venues.base.Venue`;
the CLI generates one sub-command per venue that has a replica.
"""

from __future__ import annotations

import argparse

FX_START_HELP = (
    "market time at start-up (default now; the FX market is closed at weekends), e.g. "
    "2026-01-09T20:00:00Z, a Friday afternoon"
)


def add_common_args(
    p: argparse.ArgumentParser,
    *,
    symbols: str,
    symbols_help: str | None = None,
    symbols_metavar: str | None = None,
    rate: float = 2.0,
    rate_help: str,
    start_help: str | None,
    history: str,
    history_help: str = "market history generated before --start",
    tape_help: str | None,
    fault_kinds: str,
    books: bool = False,
) -> None:
    """The options every replica has, with its own defaults and help texts; a help of None leaves
    out --start or --tape (a replica without it). ``fault_kinds`` lists the kinds it injects;
    ``books``: it serves order books (``--book-tape``)."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--symbols", default=symbols, metavar=symbols_metavar, help=symbols_help)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rate", type=float, default=rate, help=rate_help)
    p.add_argument("--speed", type=float, default=1.0, help="market seconds per wall second")
    if start_help is not None:
        p.add_argument("--start", metavar="ISO", help=start_help)
    p.add_argument("--history", default=history, help=history_help)
    if tape_help is not None:
        p.add_argument("--tape", help=tape_help)
    if books:
        p.add_argument(
            "--book-tape",
            metavar="CSV",
            help="write every order-book change to this CSV (default: beside --tape, X.csv -> X.book.csv)",
        )
    p.add_argument(
        "--faults",
        metavar="SPEC",
        help=f"inject faults: comma list of kind=rate, rate in events per minute of wall time; kinds {fault_kinds}",
    )
    p.add_argument(
        "--faults-seed",
        type=int,
        default=0,
        metavar="N",
        help="seed of the fault schedule (default 0): the same seed gives the same fault times",
    )
