"""The command-line options every ``deltafeed replica NAME`` has, and their checks.

Each venue adds its replica's own options and defaults in its :class:`~deltafeed.venues.base.Venue`;
the CLI generates one sub-command per venue that has a replica.
"""

from __future__ import annotations

import argparse

from deltafeed.model import BadInput, parse_duration_ms, time_ms

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
) -> None:
    """The options every replica has, with its own defaults and help texts; a help of None leaves
    out --start or --tape (a replica without it). ``fault_kinds`` lists the kinds it injects."""
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


def common(args: argparse.Namespace, example: str) -> tuple[list[str], int]:
    """The options every replica shares, checked: (symbols, history in ms)."""
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if not symbols:
        raise BadInput(f"--symbols is empty; give at least one, e.g. {example}")
    for name, value in (("--rate", args.rate), ("--speed", args.speed)):
        if not value > 0:
            raise BadInput(f"{name} must be greater than 0")
    if not 0 <= args.port <= 65535:
        raise BadInput(f"--port {args.port} is not a TCP port; use 0 (any free port) to 65535")
    return symbols, parse_duration_ms(args.history)


def start_ms(args: argparse.Namespace) -> int | None:
    """``--start`` in ms, or None (now)."""
    text = getattr(args, "start", None)
    if text is None:
        return None
    try:
        return time_ms(text)
    except ValueError:
        raise BadInput(f"--start {text!r} is not an ISO-8601 time; write e.g. 2026-11-21T08:00:00Z") from None
