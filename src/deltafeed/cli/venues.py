"""``deltafeed venues [NAME]``: the registered venues, or what one venue offers (a bridge venue's
exchanges and their timeframes), read offline from the installed packages."""

from __future__ import annotations

import argparse

from deltafeed.cli import Subcommands
from deltafeed.venues import registry
from deltafeed.venues.base import Venue


def add_parser(sub: Subcommands) -> None:
    p = sub.add_parser("venues", help="list the venues, or what one venue offers")
    p.add_argument("name", nargs="?", help="a venue whose offer to list (e.g. a bridge's exchanges)")


def command(args: argparse.Namespace) -> int:
    if args.name is None:
        for v in registry.venues():
            kind = "live" if type(v).make_feed is not Venue.make_feed else "history"
            print(f"{v.name:<12} {kind:<8} {v.description}")
        return 0
    venue = registry.get(args.name.lower())  # BadInput naming the known venues
    lines = venue.catalog()
    print(f"{venue.name}: {venue.description}")
    for line in lines or []:
        print(line)
    return 0
