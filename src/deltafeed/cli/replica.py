"""``deltafeed replica VENUE``: run a local replica of a venue (moved verbatim from the one-file CLI)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from deltafeed.cli import Subcommands, _asyncio_run, _parse_time, _Parser
from deltafeed.model import BadInput, parse_duration_ms


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


def add_parser(sub: Subcommands) -> None:
    """The ``replica`` sub-command, one sub-command of it per venue."""
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


def command(args: argparse.Namespace) -> int:
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
