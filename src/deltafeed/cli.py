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
from deltafeed.model import BadInput, Candle, Instrument, parse_duration_ms, parse_timeframes, time_ms

log = logging.getLogger("deltafeed")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line naming it and pointing at --help (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML file with settings; flags override it")
    p.add_argument("--venue", help="venue to collect from (binance)")
    p.add_argument("--symbols", help="comma list, e.g. BTCUSDT,ETHUSDT (or binance:BTCUSDT)")
    p.add_argument("--timeframes", help="comma list of 1s 5s 15s 1m 5m 15m 1h 4h 1d (default 1m,5m,15m,1h)")
    p.add_argument("--history", help="how far back to bootstrap when nothing is stored (default 1d)")
    p.add_argument("--db", help="DuckDB file for the cold store (default deltafeed.duckdb)")
    p.add_argument("--rest-url", help="REST base address (default Binance's market-data host)")
    p.add_argument("--ws-url", help="WebSocket base address (default Binance's market-data host)")
    p.add_argument("--api", help="serve the HTTP/WebSocket API on HOST:PORT (default 127.0.0.1:8080; 'off' to disable)")
    p.add_argument("--api-token", help="token for the API (or DELTAFEED_API_TOKEN); required beyond loopback")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="deltafeed", description="Complete local candle history: bootstrap, stream, store, serve.")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="collect candles from a venue into the store")
    _add_run_args(run)

    q = sub.add_parser("candles", help="print stored candles")
    q.add_argument("instrument", help="VENUE:SYMBOL, e.g. binance:BTCUSDT")
    q.add_argument("timeframe", help="1s 5s 15s 1m 5m 15m 1h 4h 1d")
    q.add_argument("--db", default="deltafeed.duckdb", help="DuckDB file (default deltafeed.duckdb)")
    q.add_argument("--since", help="ISO-8601 time, UTC unless it says otherwise")
    q.add_argument("--until", help="ISO-8601 time, UTC unless it says otherwise")
    q.add_argument("--last", type=int, help="only the newest N candles")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")

    rep = sub.add_parser("replica", help="run a local replica of a venue")
    rsub = rep.add_subparsers(dest="venue", required=True, parser_class=_Parser)
    rb = rsub.add_parser("binance", help="Binance spot market data: REST and WebSocket on one port")
    rb.add_argument("--host", default="127.0.0.1")
    rb.add_argument("--port", type=int, default=0, help="0 picks a free port")
    rb.add_argument("--symbols", default="BTCUSDT,ETHUSDT,SOLUSDT")
    rb.add_argument("--seed", type=int, default=1)
    rb.add_argument("--rate", type=float, default=10.0, help="trades per second of market time, per symbol")
    rb.add_argument("--speed", type=float, default=1.0, help="market seconds per wall second")
    rb.add_argument("--history", default="1h", help="market history generated before start-up")
    rb.add_argument("--weight-limit", type=int, default=6000, help="REST weight per minute")
    rb.add_argument("--tape", help="write every trade to this CSV file")
    rb.add_argument("--faults", metavar="SPEC",
                    help="inject faults: comma list of kind=rate, rate in events per minute of wall time; "
                         "kinds close, reset, stall, shutdown, drop, dup, reorder, garbage, http500, "
                         "http429, slow (e.g. close=1,drop=10)")
    rb.add_argument("--faults-seed", type=int, default=0, metavar="N",
                    help="seed of the fault schedule (default 0): the same seed gives the same fault times")

    stat = sub.add_parser("status", help="print the streaming status of a running deltafeed")
    stat.add_argument("--api", default="http://127.0.0.1:8080", help="the API's address (default http://127.0.0.1:8080)")
    stat.add_argument("--api-token", help="token, if the API needs one (or DELTAFEED_API_TOKEN)")
    stat.add_argument("--format", choices=("table", "json"), default="table")

    demo = sub.add_parser("demo", help="replica + engine + live candles in the terminal, offline")
    demo.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    demo.add_argument("--speed", type=float, default=30.0, help="replica market speed (default 30x)")
    demo.add_argument("--db", help="DuckDB file (default deltafeed-demo.duckdb, started afresh each time)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("picows").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "candles":
            return _candles(args)
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
    settings = config.load(args.config, {
        "venue": args.venue,
        "symbols": args.symbols.split(",") if args.symbols else None,
        "timeframes": args.timeframes.split(",") if args.timeframes else None,
        "history": args.history,
        "db": args.db,
        "rest_url": args.rest_url,
        "ws_url": args.ws_url,
        "api": args.api,
    })
    token = args.api_token or os.environ.get("DELTAFEED_API_TOKEN") or None
    api = parse_api_address(settings.api)
    if api is not None:
        from deltafeed.api.auth import check_bind

        check_bind(api[0], token)  # before anything starts: exit 2 without a token beyond loopback

    async def body(stop: asyncio.Event) -> int:
        from deltafeed.engine import Engine

        engine = Engine(settings)
        runner = None
        try:
            if api is not None:
                from deltafeed.api.hub import Hub
                from deltafeed.api.server import start_api

                engine.hub = Hub(snapshot=engine.snapshot, instruments=engine.instrument_names)
                try:
                    runner = await start_api(engine, engine.hub, api[0], api[1], token)
                except OSError as exc:
                    raise BadInput(f"cannot serve the API on {settings.api} ({exc.strerror or exc}); pass "
                                   "--api HOST:PORT with a free port, or --api off") from None
            await engine.start()
        except BaseException:
            await engine.stop()
            if runner is not None:
                await runner.cleanup()
            raise
        if runner is not None:
            from deltafeed.api.server import api_url

            # The first line a supervisor (or a test) can read the real port from, as the replica's.
            log.info("serving the API on %s", api_url(runner))
        log.info("streaming %s (%s) into %s; Ctrl-C to stop",
                 ", ".join(map(str, engine.instruments)), ",".join(settings.timeframes), settings.db)
        await stop.wait()
        await engine.stop()
        if runner is not None:
            await runner.cleanup()
        log.info("stopped; everything written to %s", settings.db)
        return 0

    return _asyncio_run(body)


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

    token = args.api_token or os.environ.get("DELTAFEED_API_TOKEN") or None
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
                        raise BadInput(f"{base} refused us ({body.get('error', resp.status)}); pass --api-token "
                                       "or set DELTAFEED_API_TOKEN")
                    if resp.status not in (200, 503):
                        raise BadInput(f"{base}{path} answered {resp.status}: {body}")
                    out.append(body)
            return out[0], out[1]

    try:
        status, health = asyncio.run(fetch())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise BadInput(f"cannot reach deltafeed at {base} ({exc or type(exc).__name__}); is `deltafeed run` "
                       "running with its API on? Pass --api URL") from None
    if args.format == "json":
        sys.stdout.write(msgspec.json.encode({"status": status, "health": health}).decode() + "\n")
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"deltafeed at {base}: {health.get('status')}")
    cols = ("instrument", "connected", "last message age (s)", "messages/s", "gaps", "backfilled")
    for col in cols:
        table.add_column(col, justify="left" if col == "instrument" else "right")
    for name, st in status.get("instruments", {}).items():
        age = st.get("last_message_age_s")
        table.add_row(name, "yes" if st.get("connected") else "NO", "-" if age is None else f"{age:.1f}",
                      f"{st.get('messages_per_s', 0):.1f}", str(st.get("gaps", 0)), str(st.get("repaired", 0)))
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table)
    venues = status.get("venues", {})
    for venue, v in venues.items():
        console.print(f"{venue}: {v.get('connections', 0)} connection(s), {v.get('reconnects', 0)} reconnects")
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
    from deltafeed.store.cold import ColdStore

    inst = str(Instrument.parse(args.instrument))
    tf = parse_timeframes([args.timeframe])[0]
    since = _parse_time(args.since, "--since")
    until = _parse_time(args.until, "--until")
    if args.last is not None and args.last < 1:
        raise BadInput("--last must be at least 1")
    store = ColdStore.open_reader(args.db)
    try:
        rows = store.query(inst, tf, since, until, args.last)
    finally:
        store.close()
    write_candles(rows, args.format, f"{inst} {tf}")
    return 0


def write_candles(rows: list[Candle], fmt: str, title: str) -> None:
    out = sys.stdout
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["open_time", "open", "high", "low", "close", "volume", "trades"])
        for c in rows:
            w.writerow([iso(c.open_time), num(c.open), num(c.high), num(c.low), num(c.close), num(c.volume),
                        c.trades])
    elif fmt == "json":
        # Rounded to the venue's 8 decimals: sums of floats carry noise past that.
        out.write(msgspec.json.encode([
            {"open_time": iso(c.open_time), "open": round(c.open, 8), "high": round(c.high, 8),
             "low": round(c.low, 8), "close": round(c.close, 8), "volume": round(c.volume, 8),
             "trades": c.trades, "closed": c.closed} for c in rows
        ]).decode() + "\n")
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{title} ({len(rows)} candles)")
        for name in ("open_time", "open", "high", "low", "close", "volume", "trades", "state"):
            table.add_column(name, justify="right" if name != "open_time" else "left")
        for c in rows:
            table.add_row(iso(c.open_time), num(c.open), num(c.high), num(c.low), num(c.close), num(c.volume),
                          str(c.trades), "final" if c.closed else "open")
        # A pipe gets the whole table, not one cut to a guessed 80 columns.
        Console(width=None if out.isatty() else 200).print(table)


def _replica(args: argparse.Namespace) -> int:
    from deltafeed.replicas.binance import BinanceReplica, serve
    from deltafeed.replicas.faults import parse_faults

    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
    if not symbols:
        raise BadInput("--symbols is empty; give at least one, e.g. BTCUSDT")
    for name, value in (("--rate", args.rate), ("--speed", args.speed)):
        if value <= 0:
            raise BadInput(f"{name} must be greater than 0")
    if not 0 <= args.port <= 65535:
        raise BadInput(f"--port {args.port} is not a TCP port; use 0 (any free port) to 65535")
    if args.weight_limit < 1:
        raise BadInput("--weight-limit must be at least 1")
    history_ms = parse_duration_ms(args.history)
    faults = parse_faults(args.faults) if args.faults else None

    async def body(stop: asyncio.Event) -> int:
        # serve() owns SIGINT/SIGTERM while it runs and prints its summary on the way out.
        await serve(BinanceReplica(symbols=symbols, seed=args.seed, rate=args.rate, speed=args.speed,
                                   history_ms=history_ms, weight_limit=args.weight_limit, tape=args.tape,
                                   host=args.host, port=args.port, faults=faults,
                                   faults_seed=args.faults_seed))
        return 0

    return _asyncio_run(body)


if __name__ == "__main__":
    raise SystemExit(main())
