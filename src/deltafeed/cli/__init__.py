"""The ``deltafeed`` command: the parser, the dispatch to one module per sub-command, and the
helpers they share (an asyncio runner that turns SIGINT/SIGTERM into a stop event, time parsing).

Each sub-command module (``run``, ``candles``, ``backfill``, ``replica``, ``status``, ``demo``) has
``add_parser(sub)`` and ``command(args) -> int``; they are imported when the parser is built, after
the helpers below exist, so they can import them from here.

Global flags, before or after the sub-command: ``--version``, ``--log-level
debug|info|warning|error`` (or ``DELTAFEED_LOG_LEVEL``; ``-v`` is ``debug``) and ``--log-format
text|json`` (or ``DELTAFEED_LOG_FORMAT``).

Exit codes, so that a supervisor can tell "fix the command" from "try again" (systemd:
``Restart=on-failure`` with ``RestartPreventExitStatus=2``):

- 0: done (a ``run`` stopped by SIGINT/SIGTERM with everything written);
- 1: stopped, but candles could not be kept (the store failed to the end);
- 2 (:data:`EXIT_USAGE`): bad usage: a flag, a setting, a symbol, a file; retrying will not help;
- 69 (:data:`EXIT_UNAVAILABLE`, ``EX_UNAVAILABLE`` of sysexits.h): a venue or the store could not
  be reached; the same command may well work later.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeAlias

from deltafeed.buildinfo import version
from deltafeed.cli.logs import FORMATS, LEVELS, setup_logging
from deltafeed.fmt import CSV_COLUMNS, iso, num, write_candles
from deltafeed.model import BadInput, Unavailable, time_ms

__all__ = ["CSV_COLUMNS", "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser", "iso", "main", "num", "write_candles"]

#: Bad usage: the command, a setting or a file needs fixing.
EXIT_USAGE = 2
#: A venue or the store cannot be reached now (sysexits.h ``EX_UNAVAILABLE``): worth retrying.
EXIT_UNAVAILABLE = 69


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming it and pointing at --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


#: The sub-parsers action each command module adds its parser to.
Subcommands: TypeAlias = "argparse._SubParsersAction[_Parser]"

#: The sub-commands, in the order ``--help`` lists them; each names a module of this package.
COMMANDS = ("run", "serve", "candles", "trades", "export", "backfill", "replica", "status", "cluster", "venues", "demo")


def _modules() -> dict[str, Any]:
    """The command modules by name (imported here, not at the top: they import this package)."""
    import importlib

    return {name: importlib.import_module(f"deltafeed.cli.{name}") for name in COMMANDS}


def _add_global_flags(p: argparse.ArgumentParser, default: Any) -> None:
    """The logging flags, on the main parser and on every sub-command's (``default`` SUPPRESS there,
    so a sub-command's parser leaves what the main one read alone)."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="log more (--log-level debug)")
    p.add_argument(
        "--log-level", choices=list(LEVELS), default=default, help="least severe level logged (default info)"
    )
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default=default,
        help="text lines (default) or one JSON object per line, for a log collector",
    )


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="deltafeed",
        description="Complete local candle history: bootstrap, stream, store, serve.",
        epilog="Exit codes: 0 done, 1 candles could not be kept, 2 bad usage, 69 a venue or the store is unreachable.",
    )
    ap.add_argument("--version", action="version", version=f"deltafeed {version()}")
    _add_global_flags(ap, None)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in _modules().values():
        module.add_parser(sub)
    for parser in sub.choices.values():
        _add_global_flags(parser, argparse.SUPPRESS)
    return ap


def _log_choice(flag: str | None, env: str, choices: list[str] | tuple[str, ...], default: str) -> str:
    """A logging flag's value, else its environment variable's (:class:`BadInput` when not a choice)."""
    if flag is not None:
        return flag
    value = os.environ.get(env, "").strip().lower()
    if not value:
        return default
    if value not in choices:
        raise BadInput(f"{env}={value!r} is not one of {', '.join(choices)}; fix or unset it")
    return value


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--version"]:
        # Answered before the sub-commands' modules (and their venues, stores, numpy) are imported.
        print(f"deltafeed {version()}")
        return 0
    args = build_parser().parse_args(argv)
    try:
        level = "debug" if args.verbose else _log_choice(args.log_level, "DELTAFEED_LOG_LEVEL", list(LEVELS), "info")
        fmt = _log_choice(args.log_format, "DELTAFEED_LOG_FORMAT", FORMATS, "text")
    except BadInput as exc:
        print(f"deltafeed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(level, fmt)
    try:
        command: Callable[[argparse.Namespace], int] = _modules()[args.command].command
        return command(args)
    except BadInput as exc:
        # One line, the problem and its fix; in the log's own format, for a log collector.
        if fmt == "json":
            logging.getLogger("deltafeed").error("deltafeed %s: %s", args.command, exc)
        else:
            print(f"deltafeed {args.command}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE if isinstance(exc, Unavailable) else EXIT_USAGE


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
