"""The ``deltafeed`` command: the parser, the dispatch to one module per sub-command, and the
helpers they share (an asyncio runner that turns SIGINT/SIGTERM into a stop event, time parsing).

Each sub-command module (``run``, ``candles``, ``backfill``, ``replica``, ``status``, ``demo``) has
``add_parser(sub)`` and ``command(args) -> int``; they are imported when the parser is built, after
the helpers below exist, so they can import them from here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeAlias

from deltafeed.fmt import CSV_COLUMNS, iso, num, write_candles
from deltafeed.model import BadInput, time_ms

__all__ = ["CSV_COLUMNS", "build_parser", "iso", "main", "num", "write_candles"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming it and pointing at --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


#: The sub-parsers action each command module adds its parser to.
Subcommands: TypeAlias = "argparse._SubParsersAction[_Parser]"

#: The sub-commands, in the order ``--help`` lists them; each names a module of this package.
COMMANDS = ("run", "candles", "trades", "export", "backfill", "replica", "status", "demo")


def _modules() -> dict[str, Any]:
    """The command modules by name (imported here, not at the top: they import this package)."""
    import importlib

    return {name: importlib.import_module(f"deltafeed.cli.{name}") for name in COMMANDS}


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="deltafeed", description="Complete local candle history: bootstrap, stream, store, serve.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in _modules().values():
        module.add_parser(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("picows").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        command: Callable[[argparse.Namespace], int] = _modules()[args.command].command
        return command(args)
    except BadInput as exc:
        print(f"deltafeed {args.command}: {exc}", file=sys.stderr)
        return 2


def _asyncio_run(body: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``body(stop)`` on the fastest loop available; SIGINT/SIGTERM set ``stop``."""

    async def wrapper() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await body(stop)

    try:
        import uvloop

        return uvloop.run(wrapper())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(wrapper())


def _parse_time(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return time_ms(text)
    except ValueError:
        raise BadInput(f"{flag} {text!r} is not an ISO-8601 time; write e.g. 2026-11-21T08:00:00Z") from None
