"""``deltafeed replica NAME``: run a local replica of a venue, one sub-command per venue in the
registry that has one (its options and their checks are the venue's own)."""

from __future__ import annotations

import argparse
import asyncio

from deltafeed.cli import Subcommands, _asyncio_run, _Parser
from deltafeed.venues import registry


def add_parser(sub: Subcommands) -> None:
    rep = sub.add_parser("replica", help="run a local replica of a venue")
    rsub = rep.add_subparsers(dest="venue", required=True, parser_class=_Parser)
    for venue in registry.venues():
        if venue.replica_help is not None:
            venue.add_replica_args(rsub.add_parser(venue.name, help=venue.replica_help))


def command(args: argparse.Namespace) -> int:
    venue = registry.get(args.venue)
    # Built before the loop starts, so a bad value is a one-line error, not a traceback.
    replica = venue.make_replica(args)

    async def body(stop: asyncio.Event) -> int:
        # The venue's serve_replica owns SIGINT/SIGTERM while it runs and prints its summary on the way out.
        symbols = [x.strip() for x in str(getattr(args, "symbols", "") or "").split(",") if x.strip()]
        await venue.serve_replica(replica, symbols)
        return 0

    return _asyncio_run(body)
