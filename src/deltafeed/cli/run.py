"""``deltafeed run``: collect candles from the venues into the store and serve the API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from deltafeed import config
from deltafeed.cli import Subcommands, _asyncio_run
from deltafeed.model import BadInput, Unavailable

log = logging.getLogger("deltafeed")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        help="TOML file with settings (or DELTAFEED_CONFIG); DELTAFEED_* variables override it, flags override both",
    )
    p.add_argument("--venue", help="default venue of the symbols: binance or oanda (symbols may say VENUE:SYMBOL)")
    p.add_argument("--symbols", help="comma list, e.g. BTCUSDT,ETHUSDT (or binance:BTCUSDT)")
    p.add_argument("--books", help="keep level-2 order books of these instruments, comma list, e.g. binance:BTCUSDT")
    p.add_argument(
        "--timeframes",
        help="comma list of Ns Nm Nh Nd 1w 1M, e.g. 30s,1m,3m,1h,1w (default 1m,5m,15m,1h)",
    )
    p.add_argument(
        "--week-start",
        help="where 1w candles start: a weekday and a UTC time (default 'mon 00:00'; FX: 'sun 21:00')",
    )
    p.add_argument("--history", help="how far back to bootstrap when nothing is stored (default 1d)")
    p.add_argument(
        "--db",
        help="cold store: a DuckDB file (default deltafeed.duckdb) or postgresql://USER@HOST:PORT/DB"
        " (or DELTAFEED_DB; passwords from PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument("--db-schema", help="PostgreSQL schema for deltafeed's tables (default deltafeed)")
    p.add_argument("--hot", help="mirror the hot tier into Redis, e.g. redis://127.0.0.1:6379/0 (or DELTAFEED_HOT)")
    p.add_argument("--spool", help="file where batches wait while the cold store is down (default: auto; 'off')")
    p.add_argument(
        "--rollup-from", help="derive the timeframes it divides from this one (e.g. 1m) instead of from trades"
    )
    p.add_argument("--rest-url", help="REST base address (default Binance's market-data host)")
    p.add_argument("--ws-url", help="WebSocket base address (default Binance's market-data host)")
    p.add_argument(
        "--stream-url",
        help="OANDA pricing-stream base address (default OANDA's practice host); the "
        "token comes from OANDA_TOKEN, the account from OANDA_ACCOUNT",
    )
    p.add_argument("--prices", help="forex: which price candles to keep, comma list of mid,bid,ask (default mid)")
    p.add_argument(
        "--cluster",
        help="collect as one of a cluster on this NATS JetStream server, e.g. nats://127.0.0.1:4222"
        " (its share of the instruments, published there; see docs/cluster.md)",
    )
    p.add_argument("--cluster-name", help="the cluster's name (default 'default'); several share one NATS")
    p.add_argument("--api", help="serve the HTTP/WebSocket API on HOST:PORT (default 127.0.0.1:8080; 'off' to disable)")
    p.add_argument(
        "--api-token",
        help="token every API request must carry (or DELTAFEED_API_TOKEN, or api_token in"
        " the config); required beyond loopback",
    )


def add_parser(sub: Subcommands) -> None:
    """The ``run`` sub-command and its options."""
    run = sub.add_parser("run", help="collect candles from a venue into the store")
    _add_run_args(run)


def command(args: argparse.Namespace) -> int:
    settings = config.load(
        args.config or os.environ.get("DELTAFEED_CONFIG") or None,
        {
            "venue": args.venue,
            "symbols": args.symbols.split(",") if args.symbols is not None else None,
            "timeframes": args.timeframes.split(",") if args.timeframes else None,
            "history": args.history,
            "week_start": args.week_start,
            "db": args.db,
            "db_schema": args.db_schema,
            "hot": args.hot,
            "spool": args.spool,
            "rollup_from": args.rollup_from,
            "rest_url": args.rest_url,
            "stream_url": args.stream_url,
            "prices": args.prices.split(",") if args.prices else None,
            "ws_url": args.ws_url,
            "api": args.api,
            "books": [b for b in args.books.split(",") if b.strip()] if args.books is not None else None,
            "cluster": args.cluster,
            "cluster_name": args.cluster_name,
        },
    )
    if settings.cluster is not None:
        return collect(settings)
    token = api_token(args.api_token, settings.api_token)
    api = parse_api_address(settings.api)
    limits = None
    if api is not None:
        from deltafeed.api.auth import check_bind
        from deltafeed.api.guard import ApiLimits

        check_bind(api[0], token)  # before anything starts: exit 2 without a token beyond loopback
        raise_fd_limit()  # before the limits: the default connection cap follows it
        limits = ApiLimits(
            header_timeout_s=settings.seconds("api_header_timeout"),
            idle_timeout_s=settings.seconds("api_idle_timeout"),
            max_connections=settings.api_max_connections,
        )

    async def body(stop: asyncio.Event) -> int:
        from deltafeed.engine import Engine
        from deltafeed.store.base import StoreError, StoreUnavailable

        try:
            engine = Engine(settings)  # opens the spool
        except StoreError as exc:  # e.g. a corrupt spool: the message names it and the fix
            raise BadInput(str(exc)) from None
        runner = None

        async def shut_down() -> int:
            """Stop the engine and the API; 1 (with one line saying so) if candles could not be kept."""
            try:
                await engine.stop()
            except StoreError as exc:
                log.error("stopped: %s", exc)
                return 1
            finally:
                if runner is not None:
                    await runner.cleanup()
            return 0

        try:
            if api is not None:
                from deltafeed.api.hub import Hub
                from deltafeed.api.server import api_url, start_api

                engine.hub = Hub(
                    snapshot=engine.snapshot,
                    instruments=engine.instrument_names,
                    aliases=settings.aliases,
                    default_venue=settings.venue,
                    timeframes=lambda: list(engine.timeframes),  # 45s, 1w, ... when collected
                )
                try:
                    runner = await start_api(engine, engine.hub, api[0], api[1], token, limits)
                except OSError as exc:
                    raise BadInput(
                        f"cannot serve the API on {settings.api} ({exc.strerror or exc}); pass "
                        "--api HOST:PORT with a free port, or --api off"
                    ) from None
                # The first line a supervisor (or a test) can read the real port from, as the replica's;
                # /health answers during start-up too (a bootstrap waiting for a full disk says so).
                log.info("serving the API on %s", api_url(runner))
            # Start-up can wait long (a deep history, a cold store that fails): Ctrl-C still stops it.
            starting = asyncio.ensure_future(engine.start())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                if not starting.done():
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
            if starting.cancelled():
                log.info("stopping during start-up")
                code = await shut_down()
                log.info("stopped during start-up")
                return code
            try:
                starting.result()
            except StoreUnavailable as exc:  # exit 69: a supervisor retries
                raise Unavailable(f"cannot start: {exc}") from None
            except StoreError as exc:
                raise BadInput(f"cannot start: {exc}") from None
        except BaseException:
            await shut_down()
            raise
        log.info(
            "streaming %s (%s) into %s; Ctrl-C to stop",
            ", ".join(map(str, engine.instruments)),
            ",".join(settings.timeframes),
            engine.cold.name,
        )
        await stop.wait()
        code = await shut_down()
        if code == 0 and engine.spool is not None and engine.spool.rows:
            log.warning(
                "stopped; %d candles wait in the spool %s and are written to %s at the next start",
                engine.spool.rows,
                engine.spool.path,
                engine.cold.name,
            )
        elif code == 0:
            log.info("stopped; everything written to %s", engine.cold.name)
        return code

    return _asyncio_run(body)


def collect(settings: config.Settings) -> int:
    """``run --cluster``: one collector of the cluster, until SIGINT/SIGTERM."""
    from deltafeed.cluster.collector import Collector

    assert settings.cluster is not None
    collector = Collector(settings, settings.cluster, settings.cluster_name)
    metrics_at = parse_api_address(settings.cluster_metrics)

    async def body(stop: asyncio.Event) -> int:
        runner = None
        try:
            await collector.start()
            if metrics_at is not None:
                from deltafeed.api.server import api_url
                from deltafeed.cluster.metrics import serve_metrics

                try:
                    runner = await serve_metrics(collector, *metrics_at)
                except OSError as exc:
                    raise BadInput(
                        f"cannot serve metrics on {settings.cluster_metrics} ({exc.strerror or exc}); "
                        "set cluster_metrics to a free HOST:PORT"
                    ) from None
                log.info("serving the collector's metrics on %s/metrics", api_url(runner))
        except BaseException:
            await collector.close()
            raise
        try:
            await collector.run(stop)
        finally:
            if runner is not None:
                await runner.cleanup()
        log.info("collector %s left cluster %s", collector.id, collector.cluster)
        return 0

    return _asyncio_run(body)


#: The soft file descriptor limit ``run`` asks for (never above the hard limit).
FD_LIMIT = 65536


def raise_fd_limit() -> None:
    """Raise the soft ``RLIMIT_NOFILE`` towards the hard one (at most :data:`FD_LIMIT`), as servers
    do: a default soft limit of 1024 is soon short for the API's connections plus the store, the
    databases and the venues. Where the hard limit is lower, the API's default cap shrinks instead."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            log.debug("raised the file descriptor limit from %d to %d", soft, want)
    except (ImportError, OSError, ValueError) as exc:  # pragma: no cover - Windows, or not allowed
        log.debug("cannot raise the file descriptor limit: %s", exc)


def api_token(flag: str | None, configured: str | None = None) -> str | None:
    """The API token: ``--api-token``, else ``DELTAFEED_API_TOKEN``, else the config's ``api_token``.

    A blank one (empty or spaces), wherever it comes from, is :class:`BadInput` (exit 2) rather than
    quietly meaning "no token": whoever set it meant to protect the API.
    """
    from deltafeed.api.auth import TOKEN_ENV, check_token

    check_token(configured, "api_token in the config file")
    if flag is not None:
        return check_token(flag, "--api-token")
    env = os.environ.get(TOKEN_ENV)
    if env is not None:
        return check_token(env, TOKEN_ENV)
    return configured


def parse_api_address(text: str | None) -> tuple[str, int] | None:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) or ``off``."""
    if text is None or text.strip().lower() == "off":
        return None
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BadInput(f"--api {text!r} is not HOST:PORT; write e.g. 127.0.0.1:8080, or off")
    return host, int(port)
