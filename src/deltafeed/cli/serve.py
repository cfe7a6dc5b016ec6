"""``deltafeed serve``: the HTTP/WebSocket API (and the live page) of a cluster, from its JetStream
stream and the shared cold store, on any machine and without a venue; ``--writer`` also runs the
cold-store writer (alone with ``--api off``)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from deltafeed import config
from deltafeed.cli import Subcommands, _asyncio_run
from deltafeed.cli.cluster import add_cluster_args, cluster_of
from deltafeed.cli.run import api_token, parse_api_address, raise_fd_limit
from deltafeed.extras import require
from deltafeed.model import BadInput

log = logging.getLogger("deltafeed")


def add_parser(sub: Subcommands) -> None:
    """The ``serve`` sub-command and its options."""
    p = sub.add_parser("serve", help="serve a cluster's candles (API and live page) from NATS JetStream and the store")
    add_cluster_args(p)
    p.add_argument("--config", help="TOML file with settings (aliases, default venue, API limits; or DELTAFEED_CONFIG)")
    p.add_argument(
        "--db",
        help="the shared cold store: postgresql://USER@HOST:PORT/DB (or DELTAFEED_DB); without it, only what the"
        " stream holds is served",
    )
    p.add_argument("--db-schema", help="PostgreSQL schema for deltafeed's tables (default deltafeed)")
    p.add_argument("--api", help="serve the HTTP/WebSocket API on HOST:PORT (default 127.0.0.1:8080; 'off' to disable)")
    p.add_argument("--api-token", help="token every API request must carry (or DELTAFEED_API_TOKEN)")
    p.add_argument(
        "--writer",
        action="store_true",
        help="also write the cluster's candles into --db (the cold-store writer role; alone with --api off)",
    )


def command(args: argparse.Namespace) -> int:
    settings = config.load(
        args.config or os.environ.get("DELTAFEED_CONFIG") or None,
        {"api": args.api, "db_schema": args.db_schema},
    )
    url, name = cluster_of(args, settings)
    require("nats", "cluster", "--cluster (NATS JetStream)")
    db = args.db or os.environ.get("DELTAFEED_DB") or None
    if args.writer and db is None:
        raise BadInput("--writer needs --db: the cold store to write the cluster's candles into")
    api = parse_api_address(settings.api)
    if api is None and not args.writer:
        raise BadInput("--api off leaves nothing to do; pass --writer (the cold-store writer) or an --api address")
    token = api_token(args.api_token, settings.api_token)
    limits = None
    if api is not None:
        from deltafeed.api.auth import check_bind
        from deltafeed.api.guard import ApiLimits

        check_bind(api[0], token)
        raise_fd_limit()
        limits = ApiLimits(
            header_timeout_s=settings.seconds("api_header_timeout"),
            idle_timeout_s=settings.seconds("api_idle_timeout"),
            max_connections=settings.api_max_connections,
        )

    async def body(stop: asyncio.Event) -> int:
        from deltafeed.cluster.node import ClusterView, StreamFeed, connect, load_cold_series
        from deltafeed.cluster.writer import ColdWriter
        from deltafeed.store.open import open_cold

        # A DuckDB file is opened read-only unless this process writes it (another may).
        cold = None
        if db is not None:
            cold = await open_cold(db, read_only=not args.writer, schema=settings.db_schema)
        view = ClusterView(settings, name, cold)
        nc = None
        runner = None
        feed = None
        writer = None
        try:
            await load_cold_series(view)
            nc = await connect(url, f"deltafeed-serve-{name}", view)
            view.nats_connected = True
            if args.writer and cold is not None:
                view.writer = writer = ColdWriter(nc, name, cold)
                await writer.start()
                log.info("writing cluster %s's candles into %s", name, cold.name)
            if api is not None:
                from deltafeed.api.hub import Hub
                from deltafeed.api.server import api_url, start_api

                view.hub = hub = Hub(
                    snapshot=view.snapshot,
                    instruments=view.instrument_names,
                    aliases=settings.aliases,
                    default_venue=settings.venue,
                    timeframes=lambda: view.timeframes,
                )
                runner = await start_api(view, hub, api[0], api[1], token, limits)
                log.info("serving the API on %s", api_url(runner))
                feed = StreamFeed(view, nc)
                await feed.start()
                log.info(
                    "serving cluster %s from %s%s; Ctrl-C to stop",
                    name,
                    url,
                    f" and {cold.name}" if cold is not None else " (no --db: only what the stream holds)",
                )
            await stop.wait()
        finally:
            if feed is not None:
                await feed.stop()
            if writer is not None:
                await writer.stop()
            if runner is not None:
                await runner.cleanup()
            if nc is not None:
                await nc.close()
            if cold is not None:
                await cold.close()
        log.info("stopped")
        return 0

    return _asyncio_run(body)
