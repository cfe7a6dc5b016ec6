"""``deltafeed cluster ...``: operating a cluster of collectors on NATS JetStream (``status``)."""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import TYPE_CHECKING

import msgspec

from deltafeed.cli import Subcommands
from deltafeed.model import BadInput

if TYPE_CHECKING:
    from deltafeed.config import Settings


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """``--cluster`` and ``--cluster-name``, as every command working with a cluster takes them."""
    p.add_argument("--cluster", help="the cluster's NATS server, e.g. nats://127.0.0.1:4222 (or DELTAFEED_CLUSTER)")
    p.add_argument(
        "--cluster-name",
        help="the cluster's name (default 'default', or DELTAFEED_CLUSTER_NAME); several share one NATS",
    )


def cluster_of(args: argparse.Namespace, settings: Settings | None = None) -> tuple[str, str]:
    """The NATS URL and cluster name: the flags, else ``settings`` (which read the environment and the
    config file), else the environment; :class:`BadInput` when the URL is missing or either is malformed."""
    from deltafeed.model import cluster_name

    env = os.environ
    url = args.cluster or (settings.cluster if settings is not None else env.get("DELTAFEED_CLUSTER"))
    name = args.cluster_name or (
        settings.cluster_name if settings is not None else env.get("DELTAFEED_CLUSTER_NAME", "default")
    )
    if not url:
        raise BadInput("no cluster given; pass --cluster nats://HOST:4222 (or set DELTAFEED_CLUSTER)")
    if not url.startswith(("nats://", "tls://")):
        raise BadInput(f"--cluster {url!r} is not a NATS address; write e.g. nats://127.0.0.1:4222")
    return url, cluster_name(name)


def add_parser(sub: Subcommands) -> None:
    """The ``cluster`` sub-command and its own sub-commands."""
    cluster = sub.add_parser("cluster", help="operate a cluster of collectors on NATS JetStream (docs/cluster.md)")
    actions = cluster.add_subparsers(dest="cluster_action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", help="collectors, what each collects, leases, the stream and each consumer's lag"
    )
    add_cluster_args(status)
    status.add_argument("--format", choices=("table", "json"), default="table")


def command(args: argparse.Namespace) -> int:
    from deltafeed.cluster.status import cluster_status, status_table

    url, name = cluster_of(args)
    doc = asyncio.run(cluster_status(url, name))
    print(msgspec.json.encode(doc).decode() if args.format == "json" else status_table(doc))
    return 0
