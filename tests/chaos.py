"""A chaos run, shared by tests/e2e/test_chaos.py and bench/chaos.py.

The engine runs as a real process (``deltafeed run``) against a venue replica that injects every
fault kind it knows: Binance (trades with ids) or OANDA (quotes without ids, MID and BID candles,
reconciled with the venue's history). The engine is killed with SIGKILL once and started again;
optional ``events`` (stopping and starting a private PostgreSQL or Redis) happen at given times; at
the end the replica stops injecting, the engine settles (until its status file says it streams
again with no repair waiting, within limits) and is stopped with SIGTERM.

Then the whole stored window is checked, not only what lies before the engine's final marks, because
"final" is a promise made candle by candle:

* every stored candle marked final equals, field by field (open, high, low, close, volume to 8
  decimals, trades), the candle computed independently from the replica's tape
  (tests/reference.py); each one that does not is a mismatch;
* closed candles that are not final (provisional) and candles still forming are counted;
* each stored series is consecutive from its first candle to its last (no hole while the market is
  open, no duplicate), and starts where the engine's history should.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltafeed.candles.calendar import AlwaysOpen, Calendar, FxCalendar, calendar_for
from deltafeed.model import TIMEFRAMES, Candle, Instrument, series_key
from deltafeed.replicas.books import BOOK_FAULTS
from deltafeed.replicas.faults import KINDS
from deltafeed.replicas.options import ReplicaOptions
from deltafeed.replicas.server import ReplicaBase
from deltafeed.store.base import ColdTier, open_cold
from deltafeed.venues import registry
from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, KEY_ENV, SECRET_ENV
from deltafeed.venues.alpaca.replica import FAULT_KINDS as ALPACA_FAULT_KINDS
from deltafeed.venues.alpaca.replica import AlpacaReplica
from deltafeed.venues.binance.replica import BinanceReplica
from deltafeed.venues.bybit.replica import FAULT_KINDS as BYBIT_FAULT_KINDS
from deltafeed.venues.bybit.replica import BybitReplica
from deltafeed.venues.coinbase.replica import FAULT_KINDS as COINBASE_FAULT_KINDS
from deltafeed.venues.coinbase.replica import CoinbaseReplica
from deltafeed.venues.hyperliquid.replica import FAULT_KINDS as HYPERLIQUID_FAULT_KINDS
from deltafeed.venues.hyperliquid.replica import HyperliquidReplica
from deltafeed.venues.ib.replica import FAULT_KINDS as IB_FAULT_KINDS
from deltafeed.venues.ib.replica import IbReplica
from deltafeed.venues.ib.replica import quote_tape_path as ib_quote_tape
from deltafeed.venues.kraken import FAULT_KINDS as KRAKEN_FAULT_KINDS
from deltafeed.venues.kraken.replica import KrakenReplica
from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, FAULT_KINDS, OandaReplica
from reference import (
    RefCandle,
    TapeRow,
    candles_from_tape,
    quote_candles_from_tape,
    read_quote_tape,
    read_tape,
    read_venue_tape,
)


@dataclass(frozen=True, kw_only=True)
class ChaosVenue:
    """What the chaos run needs to know of a venue: its replica, the engine settings that point at
    it, and how to read its tape. A venue's own test module registers one with :func:`register`."""

    name: str
    symbols: tuple[str, ...]  # as the venue (and its tape) spells them
    fault_kinds: tuple[str, ...]  # every fault kind its replica can inject
    #: Builds (not starts) the replica from the shared options (symbols, seed, rate, speed, history,
    #: tape, faults); venue-specific extras are the profile's own.
    make_replica: Callable[[ReplicaOptions], ReplicaBase]
    #: The engine's config lines for the venue, once the replica is started (its addresses known).
    config_lines: Callable[[ReplicaBase], list[str]]
    env: Mapping[str, str] = field(default_factory=dict)  # e.g. the venue's dev credentials
    quotes: bool = False  # a quote venue: MID and BID candles from a quote tape
    calendar: Calendar = field(default_factory=AlwaysOpen)
    start_ms: int | None = None  # the market's start time (None: now)
    #: Reads its tape (a trade venue's): any venue's shared columns by default.
    read_tape: Callable[[Path], list[TapeRow]] = read_venue_tape
    #: A venue with both kinds (IB): the symbols that quote, whose MID and BID candles come from the
    #: quote tape ``quote_tape(tape)`` while the others' come from the trade tape.
    quote_symbols: tuple[str, ...] = ()
    quote_tape: Callable[[Path], Path] | None = None
    #: Each symbol's calendar where they differ (None: ``calendar`` for every symbol).
    calendar_of: Callable[[str], Calendar] | None = None
    #: Whether quote candles' volume and count are compared: False where the venue's history has
    #: none (IB's MIDPOINT and BID bars), so a candle reconciled with it holds none either.
    quote_volume: bool = True
    #: The venue the engine collects from, when it is not ``name`` (a bridge: ccxt's profiles).
    venue: str = ""
    #: The instrument the engine collects for a tape symbol, when it is not ``VENUE:SYMBOL``.
    instrument: Callable[[str], str] | None = None

    @property
    def engine_venue(self) -> str:
        return self.venue or self.name

    def instrument_of(self, symbol: str) -> str:
        """The series name (``str(Instrument)``) the engine stores ``symbol``'s candles under."""
        if self.instrument is None:
            return f"{self.engine_venue}:{symbol}"
        return str(Instrument.parse(self.instrument(symbol)))


PROFILES: dict[str, ChaosVenue] = {}


def register(profile: ChaosVenue) -> ChaosVenue:
    PROFILES[profile.name] = profile
    return profile


def candle_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """A replica's fault kinds without the order-book ones: the chaos runs keep no books, so a book
    fault would never fall on anything (tests/e2e/test_venue_books.py runs those)."""
    return tuple(k for k in kinds if k not in (*BOOK_FAULTS, "bookrestart"))


def _binance_replica(o: ReplicaOptions) -> ReplicaBase:
    return BinanceReplica(options=o, shutdown_grace_s=1.0, slow_s=1.0)


def _oanda_replica(o: ReplicaOptions) -> ReplicaBase:
    return OandaReplica(options=o, heartbeat_s=0.5, slow_s=1.0)


FX_PRICES = ("mid", "bid")  # the OANDA run keeps MID and BID candles of every instrument
TIMEFRAMES_COMPARED = ("1m", "5m")
HISTORY_MS = 30 * 60_000
#: 2026-11-11 00:00 UTC, a Wednesday: the FX market is open from Sunday 17:00 to Friday 17:00
#: New York, so the run (and the 30 minutes of history before it) stays inside one trading week
#: for up to 70 market hours (35 wall minutes at x120).
WEDNESDAY_UTC = 1_794_355_200_000
STARTUP_TIMEOUT_S = 60.0  # wall seconds the first engine may take to start (a loaded machine is slow)
CAUGHT_UP_S = 3.0  # wall seconds the engine must stream without a break before it is stopped

register(
    ChaosVenue(
        name="binance",
        symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        fault_kinds=KINDS,
        make_replica=_binance_replica,
        read_tape=read_tape,  # with its maker column
        config_lines=lambda r: [f'rest_url = "{r.url}"', f'ws_url = "{r.ws_url}"'],  # type: ignore[attr-defined]
    )
)
register(
    ChaosVenue(
        name="oanda",
        symbols=("EUR_USD", "USD_JPY", "GBP_USD"),
        fault_kinds=FAULT_KINDS,  # no ``shutdown`` event
        make_replica=_oanda_replica,
        config_lines=lambda r: [
            'venue = "oanda"',
            f'rest_url = "{r.url}"',
            f'stream_url = "{r.url}"',
            f"prices = {json.dumps(list(FX_PRICES))}",
        ],
        env={"OANDA_TOKEN": DEV_TOKEN, "OANDA_ACCOUNT": DEFAULT_ACCOUNT},
        quotes=True,
        calendar=FxCalendar(),
        start_ms=WEDNESDAY_UTC,
    )
)


def _rest_and_ws(r: ReplicaBase) -> list[str]:
    """The config lines of a venue whose settings are a REST and a WebSocket address."""
    return [f'rest_url = "{r.url}"', f'ws_url = "{r.ws_url}"']  # type: ignore[attr-defined]


register(
    ChaosVenue(
        name="coinbase",
        symbols=("BTC-USD", "ETH-USD", "SOL-USD"),
        fault_kinds=candle_kinds(COINBASE_FAULT_KINDS),  # the shared kinds, seqgap and noheartbeat
        make_replica=lambda o: CoinbaseReplica(options=o, slow_s=1.0),
        config_lines=_rest_and_ws,
    )
)
register(
    ChaosVenue(
        name="kraken",
        symbols=("BTC/USD", "ETH/USD", "SOL/USD"),
        fault_kinds=candle_kinds(KRAKEN_FAULT_KINDS),
        make_replica=lambda o: KrakenReplica(options=o, slow_s=1.0),
        config_lines=_rest_and_ws,
    )
)
register(
    ChaosVenue(
        name="hyperliquid",
        symbols=("BTC", "ETH", "SOL"),
        fault_kinds=candle_kinds(HYPERLIQUID_FAULT_KINDS),  # the shared kinds but shutdown, and silence
        make_replica=lambda o: HyperliquidReplica(options=o, slow_s=1.0),
        config_lines=_rest_and_ws,
    )
)


def bybit_profile(category: str) -> ChaosVenue:
    """The chaos profile of one Bybit category (``spot`` is the registered one): its symbols are bare,
    so the replica and the engine both take ``category`` as the category of bare symbols."""

    def replica(o: ReplicaOptions) -> ReplicaBase:
        return BybitReplica(options=o, slow_s=1.0, ban_s=5.0, category=category)

    def config(r: ReplicaBase) -> list[str]:
        ws = r.ws_url  # type: ignore[attr-defined]
        return [f'venues = {{bybit = {{rest_url = "{r.url}", ws_url = "{ws}", category = "{category}"}}}}']

    return ChaosVenue(
        name="bybit",
        symbols=("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        fault_kinds=candle_kinds(BYBIT_FAULT_KINDS),
        make_replica=replica,
        config_lines=config,
    )


register(bybit_profile("spot"))
#: Alpaca: a stock and a crypto pair (two WebSockets), from 10:00 New York on a Wednesday so the
#: stock's run lies in the regular session; late trades make updated (corrected) minute bars.
register(
    ChaosVenue(
        name="alpaca",
        symbols=("AAPL", "BTC/USD"),
        fault_kinds=ALPACA_FAULT_KINDS,  # the shared kinds but shutdown and poison
        make_replica=lambda o: AlpacaReplica(options=o, slow_s=1.0),
        config_lines=_rest_and_ws,
        env={KEY_ENV: DEV_KEY, SECRET_ENV: DEV_SECRET},
        start_ms=WEDNESDAY_UTC + 15 * 3_600_000,
    )
)


def _ib_config(r: ReplicaBase) -> list[str]:
    prices = json.dumps(list(FX_PRICES))
    return [f'venues = {{ib = {{tws_url = "tws://{r.netloc}", prices = {prices}, tick_by_tick_lines = 5}}}}']


register(
    ChaosVenue(
        name="ib",
        # A stock (trades, the us_equity session) and a forex pair (quotes: MID and BID, the FX week).
        symbols=("AAPL", "EUR.USD"),
        fault_kinds=IB_FAULT_KINDS,  # close, reset, stall, garbage and a connectivity lost/restored episode
        make_replica=lambda o: IbReplica(options=o, stall_s=2.0, outage_s=1.5),
        config_lines=_ib_config,
        quote_symbols=("EUR.USD",),
        quote_tape=ib_quote_tape,
        calendar_of=lambda sym: calendar_for(registry.get("ib").calendar_name(sym)),
        quote_volume=False,
        start_ms=WEDNESDAY_UTC + 15 * 3_600_000,  # 10:00 New York: the stock session has run 30 minutes
    )
)
#: Kept for the callers that index by venue name.
SYMBOLS = {name: p.symbols for name, p in PROFILES.items()}
VENUE_FAULT_KINDS = {name: p.fault_kinds for name, p in PROFILES.items()}
VENUES = tuple(PROFILES)


@dataclass
class ChaosResult:
    venue: str
    faults: dict[str, int]
    statuses: list[dict[str, Any]]  # the last status of every engine process, in order
    final_compared: int = 0  # stored final candles compared with the tape
    final_mismatched: int = 0  # of those, how many differ from it (must be 0)
    provisional_left: int = 0  # stored closed candles that are not final at the end
    provisional_differ: int = 0  # of those, how many differ from the tape (fine: nobody vouched for them)
    forming: int = 0  # stored candles not closed (the stop leaves the newest ones forming)
    series: int = 0  # (series, timeframe) pairs checked
    mismatches: list[str] = field(default_factory=list)  # final candles unlike the tape
    problems: list[str] = field(default_factory=list)  # holes, duplicates, late or missing history
    market_ms: int = 0  # market time the stored window covers (first stored candle to the last), at most
    behind_ms: int = 0  # how far the stored final marks trail the market's end, at most
    #: Candles missing (see problems) before their series' final mark: the engine vouched past a
    #: hole (never allowed), and at or after it: a hole it had not repaired yet and said so.
    missing_vouched: int = 0
    missing_unvouched: int = 0
    exit_codes: list[int] = field(default_factory=list)
    tape_rows: int = 0  # trades or quotes on the tape, history included
    startup_s: float = 0.0  # wall seconds from the first engine's launch to its first status file
    settled_s: float = 0.0  # wall seconds from the faults' end to the SIGTERM
    caught_up: bool = False  # the engine streamed again before the SIGTERM (else max_settle_s ran out)
    workdir: Path | None = None  # where the tape, the store and engine.log are
    replica_stats: dict[str, int] = field(default_factory=dict)  # the replica's own counters at the end

    def total(self, key: str) -> int:
        """A top-level status counter, summed over the engine processes."""
        return sum(int(s.get(key, 0) or 0) for s in self.statuses)

    def per_instrument_total(self, key: str, price: str | None = None) -> int:
        """A per-series status counter, summed over every series (of one ``price`` side: trade, mid,
        bid, ask; None for all) and engine process."""
        return sum(
            int(i.get(key, 0))
            for s in self.statuses
            for i in s.get("instruments", {}).values()
            if price is None or i.get("price") == price
        )

    def streamed(self) -> int:
        """Trades or quotes the engines took from their streams (a quote counted once, not per price side)."""
        return sum(
            int(i.get("trades", 0))
            for s in self.statuses
            for i in s.get("instruments", {}).values()
            if i.get("price") in ("trade", "mid")
        )

    def recovery_s(self) -> list[float]:
        return sorted(x for s in self.statuses for x in s.get("recovery_s", []))

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.problems


def alpaca_engine(
    tmp_path: Path, replica: Any, symbols: list[str], timeframes: list[str], history: str, venue: str = ""
) -> subprocess.Popen[bytes]:
    """The engine collecting ``symbols`` from an Alpaca replica with its development key (``venue``:
    more of the ``[venues.alpaca]`` table, e.g. ``, mode = "poll"``), storing into
    ``tmp_path/engine.duckdb`` and writing ``tmp_path/status.json``; its log is ``engine.log``."""
    from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, KEY_ENV, SECRET_ENV

    config = tmp_path / "engine.toml"
    lines = [
        'venue = "alpaca"',
        f'venues = {{alpaca = {{rest_url = "{replica.url}", ws_url = "{replica.ws_url}"{venue}}}}}',
        f"symbols = {json.dumps(symbols)}",
        f"timeframes = {json.dumps(timeframes)}",
        f'history = "{history}"',
        f'db = "{tmp_path / "engine.duckdb"}"',
        f'spool = "{tmp_path / "spool"}"',
        'stale_after = "1.5s"',
        f'status_file = "{tmp_path / "status.json"}"',
        'api = "127.0.0.1:0"',
    ]
    config.write_text("\n".join(lines) + "\n")
    return _engine(config, tmp_path / "engine.log", dict(os.environ) | {KEY_ENV: DEV_KEY, SECRET_ENV: DEV_SECRET})


def _engine(config: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - handed to the child, closed with it
    return subprocess.Popen(
        [sys.executable, "-m", "deltafeed", "run", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
    )


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    return proc.returncode


async def _first_status_ms(
    status: Path, proc: subprocess.Popen[bytes], now_ms: Callable[[], int], timeout_s: float
) -> int | None:
    """The venue's time when the engine's first status file appears (the engine has started), or
    None if it exits or takes longer than ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not status.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.05)
    return now_ms()


def _streaming(doc: dict[str, Any]) -> bool:
    """Whether a status says the engine streams: connected, every series took a trade or quote
    within the last second, and no repair is waiting."""
    instruments = list(doc.get("instruments", {}).values())
    ages = [i.get("last_message_age_s") for i in instruments]
    return (
        bool(doc.get("connected"))
        and not doc.get("pending_repairs")
        and bool(ages)
        and all(a is not None and a <= 1.0 for a in ages)
    )


async def _settle(status: Path, min_s: float, max_s: float) -> tuple[float, bool]:
    """Wait at least ``min_s`` and at most ``max_s`` wall seconds, until the engine's status file has
    said for CAUGHT_UP_S in a row that it streams (a stream in its reconnect backoff may take up to
    30 s to come back, and a reconnect's first lines alone do not count); returns the seconds waited
    and whether it did catch up."""
    started = time.monotonic()
    await asyncio.sleep(min_s)
    since: float | None = None
    while time.monotonic() - started < max_s:
        try:
            doc = json.loads(status.read_text())
        except (OSError, ValueError):
            doc = {}
        if not _streaming(doc):
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= CAUGHT_UP_S:
            return time.monotonic() - started, True
        await asyncio.sleep(0.25)
    return time.monotonic() - started, False


def candle_fields(venue: str, c: Candle | RefCandle, key: str = "") -> tuple[float, ...]:
    """What is compared of a candle: open, high, low, close, volume to 8 decimals, and the number of
    trades where the venue's history gives it (``Venue.history_trades``); prices alone for a series
    ``key`` of a quote symbol of a profile whose ``quote_volume`` is False."""
    profile = PROFILES.get(venue)
    if (
        profile is not None
        and not profile.quote_volume
        and key.partition(":")[2].partition("@")[0] in profile.quote_symbols
    ):
        return (c.open, c.high, c.low, c.close)
    ohlcv = (c.open, c.high, c.low, c.close, round(c.volume, 8))
    name = PROFILES[venue].engine_venue if venue in PROFILES else venue
    return (*ohlcv, c.trades) if registry.get(name).history_trades else ohlcv


async def compare_finals_with_tape(
    cold: ColdTier, inst: Instrument, rows: list[TapeRow], timeframes: tuple[str, ...] = ("1m", "5m")
) -> int:
    """Check one instrument's stored series against candles computed from its tape ``rows``: no hole
    in the stored window, at least 25 final 1m (5 of longer) candles, and every final candle equal to
    the tape's field by field. Returns how many final candles were compared."""
    assert rows, f"{inst}: nothing on the tape"
    compared = 0
    for tf in timeframes:
        step = TIMEFRAMES[tf]
        want = {c.open_time: c for c in candles_from_tape(rows, step)}
        stored = await cold.query(str(inst), tf)
        keys = [c.open_time for c in stored]
        assert keys and keys == list(range(keys[0], keys[-1] + step, step)), (inst, tf, "a hole")
        finals = [c for c in stored if c.final]
        assert len(finals) >= (25 if tf == "1m" else 5), (inst, tf, len(finals))
        for c in finals:
            assert c.open_time in want, (inst, tf, c)
            assert candle_fields(inst.venue, c) == candle_fields(inst.venue, want[c.open_time]), (inst, tf, c)
        compared += len(finals)
    return compared


async def run_chaos(
    tmp: Path,
    *,
    venue: str = "binance",
    wall_s: float,
    speed: float = 120.0,
    faults_per_minute: float = 6.0,
    kill_at_s: float | None = None,
    seed: int = 1,
    faults_seed: int | None = None,
    rate: float = 2.0,
    settle_s: float = 8.0,
    max_settle_s: float = 45.0,
    fault_rates: Mapping[str, float] | None = None,
    db: str | None = None,
    hot: str | None = None,
    events: list[tuple[float, Callable[[], None]]] | None = None,
) -> ChaosResult:
    """Run the engine ``wall_s`` seconds against a faulty ``venue`` replica; see the module docstring.

    Times count from the first engine's start (its first status file): it is killed ``kill_at_s``
    later and started again, the faults stop at ``wall_s``, then the engine gets at least
    ``settle_s`` and at most ``max_settle_s`` to catch up (streaming again, no repair waiting)
    before its SIGTERM. ``seed`` seeds the market, ``faults_seed`` (default ``seed``) the fault
    schedule, each kind ``faults_per_minute`` times per wall minute (faults start with the replica)
    unless ``fault_rates`` gives its own rate (0 leaves a kind out).
    ``db`` is the cold store (default a DuckDB file in ``tmp``), ``hot`` an optional Redis URL, and
    ``events`` (wall seconds, function) run in a worker thread at their time. Everything (tape,
    store, engine.log, status files) is left in ``tmp``.
    """
    if venue not in PROFILES:
        raise ValueError(f"venue must be one of {', '.join(PROFILES)}, not {venue!r}")
    profile = PROFILES[venue]
    symbols = profile.symbols
    tape = tmp / "tape.csv"
    db = db or str(tmp / "chaos.duckdb")
    fseed = seed if faults_seed is None else faults_seed
    faults = {k: faults_per_minute for k in profile.fault_kinds} | dict(fault_rates or {})
    faults = {k: rate for k, rate in faults.items() if rate > 0}
    env = dict(os.environ) | dict(profile.env)
    replica = profile.make_replica(
        ReplicaOptions(
            symbols=symbols,
            seed=seed,
            rate=rate,
            speed=speed,
            history_ms=HISTORY_MS,
            tape=tape,
            start_ms=profile.start_ms,
            faults=faults,
            faults_seed=fseed,
        )
    )
    await replica.start()  # the replica's addresses are known from here on
    venue_lines = profile.config_lines(replica)
    statuses: list[dict[str, Any]] = []
    exit_codes: list[int] = []
    runs = 0

    def start_engine() -> tuple[subprocess.Popen[bytes], Path]:
        nonlocal runs
        runs += 1
        status = tmp / f"status-{runs}.json"
        config = tmp / f"engine-{runs}.toml"
        lines = [
            *([] if any(v.startswith("venue =") for v in venue_lines) else [f'venue = "{venue}"']),
            *venue_lines,
            f"symbols = {json.dumps([profile.instrument(s) for s in symbols] if profile.instrument else list(symbols))}",
            f"timeframes = {json.dumps(list(TIMEFRAMES_COMPARED))}",
            'history = "30m"',
            f'db = "{db}"',
            f'spool = "{tmp / "chaos.spool"}"',
            'stale_after = "1.5s"',
            'audit_every = "15s"',
            f'status_file = "{status}"',
            'api = "127.0.0.1:0"',
        ]
        if hot:
            lines.append(f'hot = "{hot}"')
        config.write_text("\n".join(lines) + "\n")
        return _engine(config, tmp / "engine.log", env), status

    def collect(status: Path) -> None:
        if status.exists():
            statuses.append(json.loads(status.read_text()))

    async def timeline(t0: float) -> None:
        for at, fn in sorted(events or [], key=lambda e: e[0]):
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))
            await asyncio.to_thread(fn)

    scheduled: asyncio.Task[None] | None = None
    try:
        launch_ms = replica.clock.now_ms()
        launched = time.monotonic()
        proc, status = start_engine()
        # The schedule counts from the first engine's start, however long a loaded machine takes to
        # get there: the kill then always hits an engine that is streaming.
        ready_ms = await _first_status_ms(status, proc, replica.clock.now_ms, STARTUP_TIMEOUT_S)
        t0 = time.monotonic()
        startup_s = t0 - launched
        scheduled = asyncio.create_task(timeline(t0))
        if kill_at_s is not None:
            await asyncio.sleep(kill_at_s)
            os.kill(proc.pid, signal.SIGKILL)  # no chance to flush anything
            exit_codes.append(await _wait_exit(proc, 5))
            collect(status)
            await asyncio.sleep(1.0)
            proc, status = start_engine()
        await asyncio.sleep(max(0.0, wall_s - (time.monotonic() - t0)))
        await scheduled
        injected = replica.faults_injected()
        replica.faults = None  # the storm is over: let the engine finish its repairs
        settled_s, caught_up = await _settle(status, settle_s, max(settle_s, max_settle_s))
        proc.send_signal(signal.SIGTERM)
        exit_codes.append(await _wait_exit(proc, 20))  # within the stop grace (10 s) and the write-out
        collect(status)
        end_ms = replica.clock.now_ms()
        replica_stats = dict(replica.stats)
    finally:
        if scheduled is not None and not scheduled.done():
            scheduled.cancel()
        await replica.stop()

    result = ChaosResult(
        venue=venue,
        faults=injected,
        statuses=statuses,
        exit_codes=exit_codes,
        workdir=tmp,
        startup_s=startup_s,
        settled_s=settled_s,
        caught_up=caught_up,
        replica_stats=replica_stats,
    )
    # The first engine asked for its history at a venue time between its launch and its first
    # status file (written once it has started): its series must start `history` before that.
    history_from = (launch_ms - HISTORY_MS, (end_ms if ready_ms is None else ready_ms) - HISTORY_MS)
    await compare_window(result, db, tape, end_ms, history_from)
    return result


def _references(venue: str, tape: Path) -> tuple[dict[tuple[str, str], tuple[list[RefCandle], Calendar]], int]:
    """Per (series key, timeframe), the candles computed from the tape and the series' calendar;
    and how many rows the tape holds."""
    profile = PROFILES[venue]
    out: dict[tuple[str, str], tuple[list[RefCandle], Calendar]] = {}
    if not profile.quotes:
        trades = profile.read_tape(tape)
        for sym in profile.symbols:
            if sym in profile.quote_symbols:
                continue
            rows = [r for r in trades if r.symbol == sym]
            cal = profile.calendar_of(sym) if profile.calendar_of else profile.calendar
            for tf in TIMEFRAMES_COMPARED:
                out[(profile.instrument_of(sym), tf)] = (candles_from_tape(rows, TIMEFRAMES[tf]), cal)
        if not profile.quote_symbols:
            return out, len(trades)
        assert profile.quote_tape is not None, f"{venue}: quote_symbols need a quote_tape"
        quotes = read_quote_tape(profile.quote_tape(tape))
        for sym in profile.quote_symbols:
            qrows = [r for r in quotes if r.symbol == sym]
            cal = profile.calendar_of(sym) if profile.calendar_of else profile.calendar
            for side in FX_PRICES:
                for tf in TIMEFRAMES_COMPARED:
                    out[(series_key(f"{venue}:{sym}", side), tf)] = (
                        quote_candles_from_tape(qrows, TIMEFRAMES[tf], side, cal),
                        cal,
                    )
        return out, len(trades) + len(quotes)
    quotes = read_quote_tape(tape)
    cal = profile.calendar
    for sym in profile.symbols:
        qrows = [r for r in quotes if r.symbol == sym]
        for side in FX_PRICES:
            for tf in TIMEFRAMES_COMPARED:
                out[(series_key(f"{venue}:{sym}", side), tf)] = (
                    quote_candles_from_tape(qrows, TIMEFRAMES[tf], side, cal),
                    cal,
                )
    return out, len(quotes)


async def compare_window(result: ChaosResult, db: str, tape: Path, end_ms: int, history_from: tuple[int, int]) -> None:
    """Check the whole stored window of every series against the tape (see the module docstring);
    each series must start in the candle holding a time of ``history_from`` (a range of venue times)."""
    refs, result.tape_rows = _references(result.venue, tape)
    store = await open_cold(db, read_only=True)
    try:
        marks = await store.final_marks()
        for (key, tf), (ref, calendar) in refs.items():
            result.series += 1
            tf_ms = TIMEFRAMES[tf]
            result.behind_ms = max(result.behind_ms, end_ms - marks.get((key, tf), 0))
            want = {c.open_time: c for c in ref}
            stored = await store.query(key, tf)
            if not stored:
                result.problems.append(f"{key} {tf}: nothing stored")
                continue
            if not want:
                result.problems.append(f"{key} {tf}: nothing on the tape")
                continue
            keys = [c.open_time for c in stored]
            if len(set(keys)) != len(keys) or keys != sorted(keys):
                result.problems.append(f"{key} {tf}: duplicate or unordered open times")
            have = set(keys)
            # A hole is a candle the market was open for (or the tape has) that is not stored.
            missing = [
                t
                for t in range(keys[0], keys[-1] + 1, tf_ms)
                if t not in have and (t in want or calendar.open_between(t, t + tf_ms))
            ]
            if missing:
                result.problems.append(f"{key} {tf}: {len(missing)} candles missing, first {missing[0]}")
                vouched = sum(t < marks.get((key, tf), 0) for t in missing)
                result.missing_vouched += vouched
                result.missing_unvouched += len(missing) - vouched
            lo, hi = (t - t % tf_ms for t in history_from)
            if not lo <= keys[0] <= hi:
                result.problems.append(f"{key} {tf}: history starts at {keys[0]}, not between {lo} and {hi}")
            result.market_ms = max(result.market_ms, keys[-1] + tf_ms - keys[0])
            for c in stored:
                w = want.get(c.open_time)
                same = w is not None and candle_fields(result.venue, c, key) == candle_fields(result.venue, w, key)
                if not c.closed:
                    result.forming += 1
                elif not c.final:
                    result.provisional_left += 1
                    result.provisional_differ += not same
                else:
                    result.final_compared += 1
                    if not same:
                        result.final_mismatched += 1
                        result.mismatches.append(
                            f"{key} {tf} {c.open_time}: final {candle_fields(result.venue, c, key)} != tape {None if w is None else candle_fields(result.venue, w, key)}"
                        )
    finally:
        await store.close()


def ccxt_profile(exchange: str, unified: Callable[[str], str], reconcile_s: int = 10, symbols: int = 3) -> ChaosVenue:
    """The chaos profile of the ``ccxt`` venue reading ``exchange``'s replica (registered as
    ``ccxt_<exchange>``): the exchange's own profile (replica, faults, its first ``symbols``
    symbols), with the engine collecting ``ccxt:<exchange>:<unified symbol>`` instruments pointed
    at the replica."""
    base = PROFILES[exchange]

    def config(r: ReplicaBase) -> list[str]:
        from deltafeed.venues.ccxt import toml_inline

        s = registry.get("ccxt").replica_settings(r)
        table = ", ".join(f"{k} = {toml_inline(v)}" for k, v in s.items() if v)
        return [
            'venue = "ccxt"',
            f"venues = {{ ccxt = {{ {table}, reconcile_every = {reconcile_s}, symbol_silence = 5 }} }}",
        ]

    return ChaosVenue(
        name=f"ccxt_{exchange}",
        symbols=base.symbols[:symbols],
        fault_kinds=base.fault_kinds,
        make_replica=base.make_replica,
        config_lines=config,
        read_tape=base.read_tape,
        venue="ccxt",
        instrument=lambda sym: f"ccxt:{exchange}:{unified(sym)}",
    )


#: ccxt's unified symbol of each replica's symbols (base/quote, and Hyperliquid's perpetual's settle).
CCXT_UNIFIED: dict[str, Callable[[str], str]] = {
    "binance": lambda s: f"{s[:-4]}/{s[-4:]}",
    "bybit": lambda s: f"{s[:-4]}/{s[-4:]}",
    "coinbase": lambda s: s.replace("-", "/"),
    "hyperliquid": lambda s: f"{s}/USDC:USDC",
    "kraken": lambda s: s,
}
for _exchange, _unified in CCXT_UNIFIED.items():
    # Kraken's public REST (and ccxt's pace for it) is one request a second, Hyperliquid's weight
    # about as slow (1200 a minute, 20 and more a candle request: ~1.3 s a call): reconciling six
    # series takes longer than 10 s there. At that pace two symbols keep a run (two bootstraps,
    # repairs) within CI's time.
    slow = _exchange in ("kraken", "hyperliquid")
    register(ccxt_profile(_exchange, _unified, 20 if slow else 10, 2 if slow else 3))
