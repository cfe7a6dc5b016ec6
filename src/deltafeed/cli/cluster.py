"""``deltafeed cluster ...``: operating a cluster of collectors on NATS JetStream (``status``)."""

from __future__ import annotations

import argparse
import asyncio
import os

import msgspec

from deltafeed.cli import Subcommands
from deltafeed.model import BadInput


def _add_cluster_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cluster",
        default=os.environ.get("DELTAFEED_CLUSTER"),
        help="the cluster's NATS server, e.g. nats://127.0.0.1:4222 (or DELTAFEED_CLUSTER)",
    )
    p.add_argument(
        "--cluster-name",
        default=os.environ.get("DELTAFEED_CLUSTER_NAME", "default"),
        help="the cluster's name (default 'default', or DELTAFEED_CLUSTER_NAME)",
    )


def add_parser(sub: Subcommands) -> None:
    """The ``cluster`` sub-command and its own sub-commands."""
    cluster = sub.add_parser("cluster", help="operate a cluster of collectors on NATS JetStream (docs/cluster.md)")
    actions = cluster.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="collectors, what each collects, leases, the stream and each consumer's lag"
    )
    _add_cluster_flags(status)
    status.add_argument("--format", choices=("table", "json"), default="table")


def command(args: argparse.Namespace) -> int:
    from deltafeed.cluster.status import cluster_status, status_table

    if not args.cluster:
        raise BadInput("no cluster given; pass --cluster nats://HOST:4222 (or set DELTAFEED_CLUSTER)")
    if not args.cluster.startswith(("nats://", "tls://")):
        raise BadInput(f"--cluster {args.cluster!r} is not a NATS address; write e.g. nats://127.0.0.1:4222")
    doc = asyncio.run(cluster_status(args.cluster, args.cluster_name))
    print(msgspec.json.encode(doc).decode() if args.format == "json" else status_table(doc))
    return 0
