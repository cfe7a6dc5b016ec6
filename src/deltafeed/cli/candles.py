"""``deltafeed candles``: print stored candles, from Redis or a cluster's stream (recent) and the cold store."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

from deltafeed.cli import Subcommands, _parse_time
from deltafeed.cli.cluster import add_cluster_args
from deltafeed.extras import require
from deltafeed.fmt import write_candles
from deltafeed.model import PRICE_SIDES, BadInput, Candle, Switch, canonical_series, parse_timeframes, timeframe
from deltafeed.names import UnknownName, resolve

log = logging.getLogger("deltafeed")


def add_parser(sub: Subcommands) -> None:
    """The ``candles`` sub-command and its options."""
    q = sub.add_parser("candles", help="print stored candles")
    q.add_argument("instrument", help="VENUE:SYMBOL, e.g. binance:BTCUSDT")
    q.add_argument("timeframe", help="1s 5s 15s 1m 5m 15m 1h 4h 1d")
    add_cluster_args(q)
    q.add_argument("--db", help="DuckDB file (default deltafeed.duckdb) or postgresql:// URL (or DELTAFEED_DB)")
    q.add_argument("--db-schema", default="deltafeed", help="PostgreSQL schema (default deltafeed)")
    q.add_argument("--hot", help="read recent candles from this Redis (redis://...) first (or DELTAFEED_HOT)")
    q.add_argument("--hot-prefix", default="deltafeed", help="Redis key prefix (default deltafeed)")
    q.add_argument("--since", help="ISO-8601 time, UTC unless it says otherwise")
    q.add_argument("--until", help="ISO-8601 time, UTC unless it says otherwise")
    q.add_argument("--last", type=int, help="only the newest N candles")
    q.add_argument("--price", choices=PRICE_SIDES, help="forex: mid (default), bid or ask candles")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.add_argument(
        "--final-only",
        action="store_true",
        help="only final candles (verified), no provisional or forming ones; --last counts those",
    )


def command(args: argparse.Namespace) -> int:
    from deltafeed.store.base import ColdTier, StoreError
    from deltafeed.store.open import open_cold
    from deltafeed.store.reader import HotReader, read_candles

    asked = args.instrument if args.price is None else f"{args.instrument}@{args.price}"
    if ":" in asked:
        canonical_series(asked)  # a malformed VENUE:SYMBOL is refused before the store is opened
    tf = parse_timeframes([args.timeframe])[0]
    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    if args.last is not None and args.last < 1:
        raise BadInput("--last must be at least 1")
    cluster = None
    if args.cluster is not None or args.cluster_name is not None:
        from deltafeed.cli.cluster import cluster_of

        cluster = cluster_of(args)
        require("nats", "cluster", "--cluster (NATS JetStream)")
    # With --cluster the stream is the hot tier and the cold store is optional.
    db = args.db or os.environ.get("DELTAFEED_DB") or (None if cluster else "deltafeed.duckdb")
    hot_url = args.hot or os.environ.get("DELTAFEED_HOT")
    if hot_url is not None and not hot_url.startswith(("redis://", "rediss://", "unix://")):
        raise BadInput("--hot is not a Redis URL; write it like redis://127.0.0.1:6379/0")
    if hot_url is not None and cluster is not None:
        raise BadInput("--hot and --cluster both name a hot tier; pass one of them")

    async def series_of(cold: ColdTier | None, js: Any) -> str:
        """The stored series ``asked`` names (any of its names); BadInput listing the stored ones."""
        stored = await cold.instruments() if cold is not None else []
        where = [cold.name] if cold is not None else []
        if cluster is not None:
            from deltafeed.cluster.read import stream_series

            stored = sorted({*stored, *await stream_series(js, cluster[1])})
            where.append(f"cluster {cluster[1]}")
        names = sorted({i for i, _, _ in stored})
        # The asked instrument's own series first: the likely fix is among them.
        near = asked.partition("@")[0].upper()
        have = list(
            dict.fromkeys(f"{i} {t}" for i, t, n in sorted(stored, key=lambda r: near not in r[0].upper()) if n)
        )
        listing = ", ".join(have[:12]) + (f" ({len(have)} in all)" if len(have) > 12 else "") or "none"
        try:
            inst = resolve(asked, names)
        except UnknownName:
            raise BadInput(
                f"no {asked} {tf} candles in {' or '.join(where)}; the series stored there: {listing}"
            ) from None
        if not any(i == inst and t == tf and n for i, t, n in stored):
            raise BadInput(f"no {inst} {tf} candles in {' or '.join(where)}; the series stored there: {listing}")
        return inst

    async def rows_of(inst: str, hot: HotReader | None, cold: ColdTier | None) -> list[Candle]:
        if hot is not None:
            try:
                if getattr(hot, "degraded", None) is None:
                    return await read_candles(hot, cold, inst, tf, since, until, args.last, final_only=args.final_only)
                log.warning("Redis %s unavailable (%s); reading %s alone", hot_url, getattr(hot, "degraded", ""), db)
            except StoreError as exc:
                log.warning("Redis unavailable (%s); reading %s alone", exc, db)
        return await read_candles(None, cold, inst, tf, since, until, args.last, final_only=args.final_only)

    async def read() -> tuple[str, list[Candle], list[Switch]]:
        cold = await open_cold(db, read_only=True, schema=args.db_schema) if db is not None else None
        redis_hot = None
        nc = None
        try:
            js = None
            if cluster is not None:
                from deltafeed.cluster.node import connect

                nc = await connect(cluster[0], "deltafeed-candles")
                js = nc.jetstream()
            inst = await series_of(cold, js)
            hot: HotReader | None = None
            if cluster is not None:
                from deltafeed.cluster.read import read_series
                from deltafeed.store.hot import HotStore
                from deltafeed.store.reader import MemoryHot

                held, bad = await read_series(js, cluster[1], inst, tf)
                if bad:
                    log.warning("skipped %d unreadable messages of %s %s in cluster %s", bad, inst, tf, cluster[1])
                ring = HotStore(max(1, len(held)))
                ring.put_many(inst, tf, held)
                hot = MemoryHot(ring)
            elif hot_url is not None:
                redis_mod = require("deltafeed.store.redis_hot", "redis", "--hot (reading the Redis hot tier)")
                redis_hot = redis_mod.RedisHot(hot_url, prefix=args.hot_prefix)
                await redis_hot.open(warn=False)
                hot = redis_hot
            rows = await rows_of(inst, hot, cold)
            switches = []
            if rows and cold is not None:
                switches = await cold.switches(inst, rows[0].open_time, grid.next(rows[-1].open_time) - 1)
            return inst, rows, switches
        finally:
            if redis_hot is not None:
                await redis_hot.close()
            if nc is not None:
                await nc.close()
            if cold is not None:
                await cold.close()

    grid = timeframe(tf)
    try:
        inst, rows, switches = asyncio.run(read())
    except StoreError as exc:
        raise BadInput(f"cannot read candles: {exc}") from None
    write_candles(rows, args.format, f"{inst} {tf}", {w.spanning(grid): w for w in switches})
    return 0
