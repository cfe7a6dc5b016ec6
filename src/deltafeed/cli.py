"""The ``deltafeed`` command: run, candles, replica, demo."""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import msgspec

from deltafeed import config
from deltafeed.model import (
    PRICE_SIDES,
    TIMEFRAMES,
    BadInput,
    Candle,
    Switch,
    canonical_series,
    parse_duration_ms,
    parse_timeframes,
    time_ms,
)

log = logging.getLogger("deltafeed")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming it and pointing at --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with settings; flags override it")
    p.add_argument("--venue", help="default venue of the symbols: binance or oanda (symbols may say VENUE:SYMBOL)")
    p.add_argument("--symbols", help="comma list, e.g. BTCUSDT,ETHUSDT (or binance:BTCUSDT)")
    p.add_argument("--timeframes", help="comma list of 1s 5s 15s 1m 5m 15m 1h 4h 1d (default 1m,5m,15m,1h)")
    p.add_argument("--history", help="how far back to bootstrap when nothing is stored (default 1d)")
    p.add_argument(
        "--db",
        help="cold store: a DuckDB file (default deltafeed.duckdb) or postgresql://USER@HOST:PORT/DB"
        " (or DELTAFEED_DB; passwords from PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument("--db-schema", help="PostgreSQL schema for deltafeed's tables (default deltafeed)")
    p.add_argument("--hot", help="mirror the hot tier into Redis, e.g. redis://127.0.0.1:6379/0 (or DELTAFEED_HOT)")
    p.add_argument("--spool", help="file where batches wait while the cold store is down (default: auto; 'off')")
    p.add_argument("--rollup-from", help="derive longer timeframes from this one (e.g. 1m) instead of from trades")
    p.add_argument("--rest-url", help="REST base address (default Binance's market-data host)")
    p.add_argument("--ws-url", help="WebSocket base address (default Binance's market-data host)")
    p.add_argument(
        "--stream-url",
        help="OANDA pricing-stream base address (default OANDA's practice host); the "
        "token comes from OANDA_TOKEN, the account from OANDA_ACCOUNT",
    )
    p.add_argument("--prices", help="forex: which price candles to keep, comma list of mid,bid,ask (default mid)")
    p.add_argument("--api", help="serve the HTTP/WebSocket API on HOST:PORT (default 127.0.0.1:8080; 'off' to disable)")
    p.add_argument(
        "--api-token",
        help="token every API request must carry (or DELTAFEED_API_TOKEN, or api_token in"
        " the config); required beyond loopback",
    )


def _add_replica_args(
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
    """The options every ``replica`` sub-command has, with its own defaults and help texts; a help of None
    leaves out --start or --tape (a replica without it). ``fault_kinds`` lists the kinds it injects."""
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


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="deltafeed", description="Complete local candle history: bootstrap, stream, store, serve.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="collect candles from a venue into the store")
    _add_run_args(run)

    q = sub.add_parser("candles", help="print stored candles")
    q.add_argument("instrument", help="VENUE:SYMBOL, e.g. binance:BTCUSDT")
    q.add_argument("timeframe", help="1s 5s 15s 1m 5m 15m 1h 4h 1d")
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

    bf = sub.add_parser("backfill", help="fill forex candle history from Dukascopy tick files")
    bf.add_argument("instrument", help="the series to fill, e.g. oanda:EUR_USD (the Dukascopy name EURUSD is derived)")
    bf.add_argument("--source", default="dukascopy", help="where the ticks come from: dukascopy (the default)")
    bf.add_argument(
        "--since",
        required=True,
        metavar="ISO",
        help="ISO-8601 start, UTC unless it says otherwise; rounded down to the longest timeframe",
    )
    bf.add_argument(
        "--until",
        required=True,
        metavar="ISO",
        help="ISO-8601 end (exclusive), rounded down to the longest timeframe: only whole candles",
    )
    bf.add_argument(
        "--timeframes", default="1m,5m,15m,1h", help="comma list of 1s 5s 15s 1m 5m 15m 1h 4h 1d (default 1m,5m,15m,1h)"
    )
    bf.add_argument(
        "--prices", default="mid", help="which price candles to build, comma list of mid,bid,ask (default mid)"
    )
    bf.add_argument("--db", help="DuckDB file (default deltafeed.duckdb) or postgresql:// URL (or DELTAFEED_DB)")
    bf.add_argument("--db-schema", default="deltafeed", help="PostgreSQL schema (default deltafeed)")
    bf.add_argument("--url", help="base address of the tick files (default https://datafeed.dukascopy.com/datafeed)")
    bf.add_argument(
        "--rps",
        type=float,
        default=10.0,
        help="requests per second (default 10, what Dukascopy tolerates; raise it for a replica)",
    )
    bf.add_argument("--retries", type=int, default=5, help="retries of a failed request (default 5)")

    rep = sub.add_parser("replica", help="run a local replica of a venue")
    rsub = rep.add_subparsers(dest="venue", required=True, parser_class=_Parser)
    fx_start = (
        "market time at start-up (default now; the FX market is closed at weekends), e.g. "
        "2026-01-09T20:00:00Z, a Friday afternoon"
    )
    rb = rsub.add_parser("binance", help="Binance spot market data: REST and WebSocket on one port")
    _add_replica_args(
        rb,
        symbols="BTCUSDT,ETHUSDT,SOLUSDT",
        rate=10.0,
        rate_help="trades per second of market time, per symbol",
        start_help=None,
        history="1h",
        history_help="market history generated before start-up",
        tape_help="write every trade to this CSV file",
        fault_kinds="close, reset, stall, shutdown, drop, dup, reorder, garbage, http500, http429, slow "
        "(e.g. close=1,drop=10)",
    )
    rb.add_argument("--weight-limit", type=int, default=6000, help="REST weight per minute")
    rd = rsub.add_parser("dukascopy", help="Dukascopy tick history: .bi5 hour files from a seeded FX quote market")
    _add_replica_args(
        rd,
        symbols="EURUSD,USDJPY,GBPUSD",
        symbols_help="Dukascopy names, e.g. EURUSD,USDJPY",
        rate_help="quotes per second of open market time, per symbol",
        start_help="market time at start-up (default now), e.g. 2026-01-09T12:00:00Z",
        history="7d",
        history_help="market history before --start that hour files cover",
        tape_help=None,
        fault_kinds="http500, http429, slow (e.g. http500=2)",
    )

    ro = rsub.add_parser("oanda", help="OANDA v20 market data: REST candles and the pricing stream on one port")
    _add_replica_args(
        ro,
        symbols="EUR_USD,USD_JPY,GBP_USD",
        symbols_help="OANDA names, e.g. EUR_USD,USD_JPY",
        rate_help="quotes per second of open market time, per instrument",
        start_help=fx_start,
        history="1d",
        tape_help="write every quote to this CSV file (symbol,time_ms,bid,ask)",
        fault_kinds="close, reset, stall, drop, dup, reorder, garbage (stream), http500, http429, slow (REST)",
    )
    ro.add_argument(
        "--token",
        default="deltafeed-oanda-dev-token",
        help="the bearer token every request must carry (default deltafeed-oanda-dev-token)",
    )

    rf = rsub.add_parser("finnhub", help="Finnhub: trades WebSocket and REST candles on one port")
    _add_replica_args(
        rf,
        symbols="OANDA:EUR_USD,BINANCE:BTCUSDT,AAPL",
        symbols_help="Finnhub names: OANDA:AAA_BBB (forex), EXCHANGE:PAIR (crypto), TICKER (US stock)",
        rate_help="trades (or forex price updates) per second of open market time, per symbol",
        start_help="market time at start-up (default now; stocks trade 09:30-16:00 New York on "
        "weekdays), e.g. 2026-03-04T15:00:00Z",
        history="1d",
        tape_help="write every streamed item to this CSV file (symbol,time_ms,price,volume)",
        fault_kinds="close, reset, stall, garbage (WebSocket), http500, http429, slow (REST)",
    )
    rf.add_argument("--token", help="the API key every request must carry (default: any non-empty key)")

    ri = rsub.add_parser("ig", help="IG Markets: REST login and prices, Lightstreamer TLCP over WebSocket, one port")
    _add_replica_args(
        ri,
        symbols="CS.D.EURUSD.CFD.IP,CS.D.USDJPY.CFD.IP,CS.D.GBPUSD.CFD.IP",
        symbols_metavar="EPICS",
        symbols_help="IG FX epics, CS.D.<BASE><QUOTE>.<product>.IP (CS.D.EURUSD.CFD.IP is the pair EUR_USD)",
        rate_help="quotes per second of open market time, per epic",
        start_help=fx_start,
        history="1d",
        tape_help="write every quote to this CSV file (symbol,time_ms,bid,ask; symbol = the epic)",
        fault_kinds="close, reset, stall, overflow (streaming sessions), http500, http429, slow (REST)",
    )
    ri.add_argument("--api-key", help="the X-IG-API-KEY logins must carry (default: any non-empty key)")
    ri.add_argument("--username", help="the login identifier (default: any non-empty one)")
    ri.add_argument("--password", help="the login password (default: any non-empty one)")

    stat = sub.add_parser("status", help="print the streaming status of a running deltafeed")
    stat.add_argument(
        "--api", default="http://127.0.0.1:8080", help="the API's address (default http://127.0.0.1:8080)"
    )
    stat.add_argument("--api-token", help="token, if the API needs one (or DELTAFEED_API_TOKEN)")
    stat.add_argument("--format", choices=("table", "json"), default="table")

    demo = sub.add_parser("demo", help="replica + engine + live candles in the terminal, offline")
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--speed", type=float, default=30.0, help="replica market speed (default 30x)")
    demo.add_argument("--db", help="DuckDB file (default deltafeed-demo.duckdb, started afresh each time)")
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
        if args.command == "run":
            return _run(args)
        if args.command == "candles":
            return _candles(args)
        if args.command == "backfill":
            return _backfill(args)
        if args.command == "replica":
            return _replica(args)
        if args.command == "status":
            return _status(args)
        if args.command == "demo":
            from deltafeed.demo import run_demo

            return _asyncio_run(lambda stop: run_demo(stop, args.duration, args.speed, args.db))
    except BadInput as exc:
        print(f"deltafeed {args.command}: {exc}", file=sys.stderr)
        return 2
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


def _run(args: argparse.Namespace) -> int:
    settings = config.load(
        args.config,
        {
            "venue": args.venue,
            "symbols": args.symbols.split(",") if args.symbols else None,
            "timeframes": args.timeframes.split(",") if args.timeframes else None,
            "history": args.history,
            "db": args.db or os.environ.get("DELTAFEED_DB"),
            "db_schema": args.db_schema,
            "hot": args.hot or os.environ.get("DELTAFEED_HOT"),
            "spool": args.spool,
            "rollup_from": args.rollup_from,
            "rest_url": args.rest_url,
            "stream_url": args.stream_url,
            "prices": args.prices.split(",") if args.prices else None,
            "ws_url": args.ws_url,
            "api": args.api,
        },
    )
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
        from deltafeed.store.base import StoreError

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

                engine.hub = Hub(snapshot=engine.snapshot, instruments=engine.instrument_names)
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


def _status(args: argparse.Namespace) -> int:
    import aiohttp

    token = api_token(args.api_token)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = args.api.rstrip("/")

    async def fetch() -> tuple[dict[str, Any], dict[str, Any]]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            out = []
            for path in ("/streaming/status", "/health"):
                async with http.get(base + path) as resp:
                    body = await resp.json(content_type=None)
                    if resp.status in (401, 403):
                        raise BadInput(
                            f"{base} refused us ({body.get('error', resp.status)}); pass --api-token "
                            "or set DELTAFEED_API_TOKEN"
                        )
                    if resp.status not in (200, 503):
                        raise BadInput(f"{base}{path} answered {resp.status}: {body}")
                    out.append(body)
            return out[0], out[1]

    try:
        status, health = asyncio.run(fetch())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BadInput(
            f"cannot reach deltafeed at {base} ({exc or type(exc).__name__}); is `deltafeed run` "
            "running with its API on? Pass --api URL"
        ) from None
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode({"status": status, "health": health}).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    from deltafeed.engine.status import EngineStatus

    report = msgspec.convert(status, EngineStatus)  # the schema the server sends
    table = Table(title=f"deltafeed at {base}: {health.get('status')}")
    cols = ("instrument", "connected", "last message age (s)", "messages/s", "gaps", "backfilled")
    for col in cols:
        table.add_column(col, justify="left" if col == "instrument" else "right")
    for name, st in report.instruments.items():
        age = st.last_message_age_s
        table.add_row(
            name,
            "yes" if st.connected else "NO",
            "-" if age is None else f"{age:.1f}",
            f"{st.messages_per_s:.1f}",
            str(st.gaps),
            str(st.repaired),
        )
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for venue, v in report.venues.items():
        console.print(f"{venue}: {v.connections} connection(s), {v.reconnects} reconnects")
    for reason in health.get("reasons", []):
        console.print(f"[red]unhealthy:[/red] {reason}")
    return 0


def _parse_time(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return time_ms(text)
    except ValueError:
        raise BadInput(f"{flag} {text!r} is not an ISO-8601 time; write e.g. 2026-11-21T08:00:00Z") from None


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def num(x: float) -> str:
    """A price or volume as the venue would print it: up to 8 decimals, no float noise."""
    s = f"{x:.8f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


def _candles(args: argparse.Namespace) -> int:
    from deltafeed.store.base import ColdTier, StoreError, open_cold
    from deltafeed.store.reader import read_candles
    from deltafeed.store.redis_hot import RedisHot

    inst = canonical_series(args.instrument if args.price is None else f"{args.instrument}@{args.price}")
    tf = parse_timeframes([args.timeframe])[0]
    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    if args.last is not None and args.last < 1:
        raise BadInput("--last must be at least 1")
    db = args.db or os.environ.get("DELTAFEED_DB") or "deltafeed.duckdb"
    hot_url = args.hot or os.environ.get("DELTAFEED_HOT")
    if hot_url is not None and not hot_url.startswith(("redis://", "rediss://", "unix://")):
        raise BadInput("--hot is not a Redis URL; write it like redis://127.0.0.1:6379/0")

    async def rows_of(hot: RedisHot | None, cold: ColdTier) -> list[Candle]:
        if hot is not None:
            try:
                if hot.degraded is None:
                    return await read_candles(hot, cold, inst, tf, since, until, args.last, final_only=args.final_only)
                log.warning("Redis %s unavailable (%s); reading %s alone", hot.name, hot.degraded, cold.name)
            except StoreError as exc:
                log.warning("Redis unavailable (%s); reading %s alone", exc, cold.name)
        return await read_candles(None, cold, inst, tf, since, until, args.last, final_only=args.final_only)

    async def read() -> tuple[list[Candle], list[Switch]]:
        cold = await open_cold(db, read_only=True, schema=args.db_schema)
        hot = None
        try:
            if hot_url is not None:
                hot = RedisHot(hot_url, prefix=args.hot_prefix)
                await hot.open(warn=False)
            rows = await rows_of(hot, cold)
            switches = await cold.switches(inst, rows[0].open_time, rows[-1].open_time + tf_ms - 1) if rows else []
            return rows, switches
        finally:
            if hot is not None:
                await hot.close()
            await cold.close()

    tf_ms = TIMEFRAMES[tf]
    try:
        rows, switches = asyncio.run(read())
    except StoreError as exc:
        raise BadInput(f"cannot read candles: {exc}") from None
    write_candles(rows, args.format, f"{inst} {tf}", {w.spanning(tf_ms): w for w in switches})
    return 0


#: The CSV columns of ``deltafeed candles`` (``state`` is forming, provisional or final).
CSV_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "trades", "state")


def write_candles(rows: list[Candle], fmt: str, title: str, spanning: dict[int, Switch] | None = None) -> None:
    """Candles to stdout as CSV, JSON or a table, each with its state (forming, provisional or final).
    A candle of a logical instrument that spans a failover switch (``spanning``: open time -> switch)
    is marked: a ``switch`` field in JSON, its state in the table, and a note on stderr beside the
    CSV, whose columns stay fixed."""
    out = sys.stdout
    spanning = spanning or {}

    def moved(t: int) -> str | None:
        w = spanning.get(t)
        return None if w is None else f"{w.source_from} -> {w.source_to}"

    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(CSV_COLUMNS)
        for c in rows:
            w.writerow(
                [iso(c.open_time), num(c.open), num(c.high), num(c.low), num(c.close), num(c.volume), c.trades, c.state]
            )
        for t in sorted(spanning):
            print(f"note: the candle at {iso(t)} spans a failover switch ({moved(t)})", file=sys.stderr)
    elif fmt == "json":
        # Rounded to the venue's 8 decimals: sums of floats carry noise past that.
        docs: list[dict[str, Any]] = []
        for c in rows:
            doc: dict[str, Any] = {
                "open_time": iso(c.open_time),
                "open": round(c.open, 8),
                "high": round(c.high, 8),
                "low": round(c.low, 8),
                "close": round(c.close, 8),
                "volume": round(c.volume, 8),
                "trades": c.trades,
                "closed": c.closed,
                "state": c.state,
            }
            if c.open_time in spanning:
                doc["switch"] = moved(c.open_time)
            docs.append(doc)
        out.write(msgspec.json.encode(docs).decode() + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{title} ({len(rows)} candles)")
        for name in ("open_time", "open", "high", "low", "close", "volume", "trades", "state"):
            table.add_column(name, justify="right" if name != "open_time" else "left")
        for c in rows:
            state = c.state
            if c.open_time in spanning:
                state += f", switch {moved(c.open_time)}"
            table.add_row(
                iso(c.open_time),
                num(c.open),
                num(c.high),
                num(c.low),
                num(c.close),
                num(c.volume),
                str(c.trades),
                state,
            )
        # A pipe gets the whole table, not one cut to a guessed 80 columns.
        Console(width=None if out.isatty() else 200).print(table)


def _backfill(args: argparse.Namespace) -> int:
    from deltafeed.backfill import BackfillProgress, backfill, plan_backfill
    from deltafeed.store.base import StoreError
    from deltafeed.venues.dukascopy.codec import DEFAULT_BASE_URL

    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    assert since is not None and until is not None  # required by the parser
    # Checked before anything is opened: a bad request is one line and exit 2, with no file created.
    plan = plan_backfill(
        args.instrument, since, until, source=args.source, timeframes=args.timeframes, prices=args.prices
    )
    if not args.rps > 0:
        raise BadInput("--rps must be greater than 0")
    if args.retries < 0:
        raise BadInput("--retries must not be negative")
    db = args.db or os.environ.get("DELTAFEED_DB") or "deltafeed.duckdb"
    title = f"{plan.instrument} {','.join(plan.timeframes)}"
    # Progress on stderr: a rich bar on a terminal, a plain line per 10 % of the hours on a pipe (from
    # the first quote on, so a source that fails or has nothing says one line only).
    last: list[BackfillProgress] = []
    printed = [0]  # tenths of the hours last printed
    bar: Any = None
    task: Any = None
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("hours, {task.fields[quotes]:,} quotes, {task.fields[candles]:,} candles written"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task(title, total=plan.hours, quotes=0, candles=0)

    def progress(p: BackfillProgress) -> None:
        tenth = 10 * p.hours_done // max(1, p.hours_total)
        if bar is not None:
            bar.update(task, completed=p.hours_done, total=p.hours_total, quotes=p.quotes, candles=p.candles_written)
        elif p.quotes and tenth > printed[0]:
            printed[0] = tenth
            print(
                f"deltafeed backfill: {title}: {p.hours_done}/{p.hours_total} hours, {p.quotes} quotes, "
                f"{p.candles_written} candles written",
                file=sys.stderr,
                flush=True,
            )
        last[:] = [p]

    async def body(stop: asyncio.Event) -> int:
        job = asyncio.ensure_future(
            backfill(
                args.instrument,
                since,
                until,
                source=args.source,
                timeframes=plan.timeframes,
                prices=plan.sides,
                db=db,
                db_schema=args.db_schema,
                url=args.url or DEFAULT_BASE_URL,
                requests_per_s=args.rps,
                retries=args.retries,
                progress=progress,
            )
        )
        stopped = asyncio.ensure_future(stop.wait())
        if bar is not None:
            bar.start()
        try:
            await asyncio.wait({job, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not job.done():
                job.cancel()
                await asyncio.gather(job, return_exceptions=True)
            if bar is not None:
                bar.stop()
        if job.cancelled():
            print(
                f"deltafeed backfill: interrupted after {last[-1].hours_done if last else 0} of {plan.hours} "
                "hours; the candles written so far are kept, run the same command again to finish",
                file=sys.stderr,
            )
            return 130
        try:
            result = job.result()
        except StoreError as exc:
            raise BadInput(f"cannot write candles: {exc}") from None
        print(result.summary(), flush=True)
        return 0

    return _asyncio_run(body)


def _replica_args(args: argparse.Namespace, example: str) -> tuple[list[str], int]:
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


def _serve(make: Callable[[], Any], serve: Callable[[Any], Coroutine[Any, Any, None]] | None = None) -> int:
    """Run the replica ``make()`` builds until SIGINT/SIGTERM (its ``serve`` prints the summary)."""
    from deltafeed.replicas.server import serve as serve_replica

    async def body(stop: asyncio.Event) -> int:
        # serve() owns SIGINT/SIGTERM while it runs and prints its summary on the way out.
        await (serve or serve_replica)(make())
        return 0

    return _asyncio_run(body)


def _replica(args: argparse.Namespace) -> int:
    if args.venue == "ig":
        return _replica_ig(args)
    if args.venue == "finnhub":
        return _replica_finnhub(args)
    if args.venue == "oanda":
        return _replica_oanda(args)
    if args.venue == "dukascopy":
        return _replica_dukascopy(args)
    from deltafeed.replicas.faults import parse_faults
    from deltafeed.venues.binance.replica import BinanceReplica

    symbols, history_ms = _replica_args(args, "BTCUSDT")
    if args.weight_limit < 1:
        raise BadInput("--weight-limit must be at least 1")
    faults = parse_faults(args.faults) if args.faults else None
    return _serve(
        lambda: BinanceReplica(
            symbols=symbols,
            seed=args.seed,
            rate=args.rate,
            speed=args.speed,
            history_ms=history_ms,
            weight_limit=args.weight_limit,
            tape=args.tape,
            host=args.host,
            port=args.port,
            faults=faults,
            faults_seed=args.faults_seed,
        )
    )


def _replica_dukascopy(args: argparse.Namespace) -> int:
    from deltafeed.venues.dukascopy.replica import DukascopyReplica, check_faults, serve

    symbols, history_ms = _replica_args(args, "EURUSD")
    start_ms = _parse_time(args.start, "--start")
    faults = check_faults(args.faults) if args.faults else None
    # Built before the loop starts, so a bad symbol is a one-line error, not a traceback.
    replica = DukascopyReplica(
        symbols=symbols,
        seed=args.seed,
        rate=args.rate,
        speed=args.speed,
        history_ms=history_ms,
        start_ms=start_ms,
        host=args.host,
        port=args.port,
        faults=faults,
        faults_seed=args.faults_seed,
    )
    return _serve(lambda: replica, serve)


def _replica_oanda(args: argparse.Namespace) -> int:
    from deltafeed.venues.oanda.replica import OandaReplica, check_faults

    symbols, history_ms = _replica_args(args, "EUR_USD")
    start_ms = _parse_time(args.start, "--start")
    faults = check_faults(args.faults) if args.faults else None
    # Built before the loop starts, so a bad value is a one-line error, not a traceback.
    replica = OandaReplica(
        symbols=symbols,
        seed=args.seed,
        rate=args.rate,
        speed=args.speed,
        history_ms=history_ms,
        start_ms=start_ms,
        token=args.token,
        tape=args.tape,
        host=args.host,
        port=args.port,
        faults=faults,
        faults_seed=args.faults_seed,
    )
    return _serve(lambda: replica)


def _replica_finnhub(args: argparse.Namespace) -> int:
    from deltafeed.venues.finnhub.replica import FinnhubReplica, check_faults

    symbols, history_ms = _replica_args(args, "BINANCE:BTCUSDT")
    start_ms = _parse_time(args.start, "--start")
    faults = check_faults(args.faults) if args.faults else None
    if args.token is not None and not args.token:
        raise BadInput("--token is empty; give a key, or leave it out to accept any key")
    # Built before the loop starts, so a bad value is a one-line error, not a traceback.
    replica = FinnhubReplica(
        symbols=symbols,
        seed=args.seed,
        rate=args.rate,
        speed=args.speed,
        history_ms=history_ms,
        start_ms=start_ms,
        tape=args.tape,
        host=args.host,
        port=args.port,
        token=args.token,
        faults=faults,
        faults_seed=args.faults_seed,
    )
    return _serve(lambda: replica)


def _replica_ig(args: argparse.Namespace) -> int:
    from deltafeed.venues.ig.replica import IGReplica, check_faults

    epics, history_ms = _replica_args(args, "CS.D.EURUSD.CFD.IP")
    start_ms = _parse_time(args.start, "--start")
    faults = check_faults(args.faults) if args.faults else None
    # Built before the loop starts, so a bad epic or value is a one-line error, not a traceback.
    replica = IGReplica(
        epics=epics,
        seed=args.seed,
        rate=args.rate,
        speed=args.speed,
        history_ms=history_ms,
        start_ms=start_ms,
        tape=args.tape,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        username=args.username,
        password=args.password,
        faults=faults,
        faults_seed=args.faults_seed,
    )
    return _serve(lambda: replica)


if __name__ == "__main__":
    raise SystemExit(main())
