"""What deltafeed asks of a venue: its declaration (:class:`Venue`), its settings, and its live side (a feed).

A feed owns everything venue-specific: the streaming connection(s), the decoder, the REST history
client and the venue's clock. It folds events into the candle builders of its series
(:class:`~deltafeed.series.Series`) and answers the engine's history requests. Everything
else (stores, repairs, marks, audits, serving) is the engine's and is the same for every venue.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Quote, Trade, timeframe

if TYPE_CHECKING:
    from deltafeed.books import BookFeed, BookKeeper
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.series import Series
    from deltafeed.venues.links import StreamLimits


class FeedStatus(msgspec.Struct, omit_defaults=True):
    """A feed's counters, as ``venues.<venue>`` of the engine's status (the one schema the HTTP
    status, the metrics, the status file and ``deltafeed status`` read). The fields after
    ``rest_limiter_waits`` are only some venues'; those a venue leaves at None are not sent."""

    connected: bool
    connections: int  # live connections (two while a rotation overlaps)
    connects: int
    reconnects: int  # connects after a lost connection (rotations excluded)
    rotations: int  # planned replacements without a gap
    stale_drops: int  # connections dropped for going silent
    connect_budget_waits: int
    frames: int
    skipped_frames: dict[str, int]  # frames or lines skipped, by kind
    rest_requests: int
    rest_throttled: int
    rest_server_errors: int
    rest_limiter_waits: int
    heartbeats: int | None = None  # OANDA
    out_of_order: int | None = None  # id-less venues: items older than the last one applied
    repeated_quotes: int | None = None  # quote venues
    refused: int | None = None  # quote venues: impossible prices
    max_open_connections: int | None = None  # IG
    chart_candles: int | None = None  # IG
    allowance: list[int | None] | None = None  # IG: the weekly history allowance
    rest_shared_answers: int | None = None  # IG
    lost_quotes: int | None = None  # IG
    sequence_gaps: int | None = None  # venues with a per-connection message sequence (Coinbase)
    #: Per timeframe, the oldest candle open time (ms) the venue's history still serves, for venues
    #: whose history is capped (Hyperliquid's newest 5000 candles, Kraken's 720 OHLC rows); keyed
    #: ``exchange:timeframe`` for a bridge of several exchanges (ccxt).
    history_from: dict[str, int] | None = None
    #: The venue's error frames, by kind (Coinbase ``error``, Bybit ``success:false``, Kraken ``error``).
    venue_errors: dict[str, int] | None = None
    #: Subscriptions the venue refused: symbol -> its reason (the other symbols keep streaming).
    refused_symbols: dict[str, str] | None = None
    #: The venue's corrections of candles it had already closed (late-trade updates of a bar), applied.
    venue_corrections: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (what a feed's ``status()`` gives)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class Feed(Protocol):
    venue: str
    clock: VenueClock
    #: True when the venue's history has no candle for an interval without prices (OANDA): a
    #: REST answer then covers its whole range, whatever candles it holds.
    omits_empty: bool
    #: True when trade ids are the venue's own consecutive sequence (Binance): the candle builder
    #: then vouches for what an unbroken run covers. False (quotes, Finnhub): every candle the
    #: stream builds stays provisional until reconciled with the venue's history.
    sequenced: bool
    #: How often (wall seconds) closed provisional candles are reconciled with the venue's history;
    #: 0 for a sequenced venue.
    reconcile_every_s: float
    # Optional: ``history_settle_ms`` (int), how long after a candle's end the venue's history of
    # it stops changing (see Venue.history_settle_ms); read by the engine with a default of 1 s.

    @property
    def errors(self) -> Counter[str]:
        """Frames or lines skipped, by kind."""
        ...

    def add(self, st: Series) -> None:
        """Take a series to stream (before :meth:`check`)."""
        ...

    async def check(self) -> None:
        """Read the venue's time and check the symbols; :class:`BadInput` naming the fix."""
        ...

    def start(self) -> None:
        """Start streaming (a task)."""
        ...

    async def tick(self, mono: float) -> None:
        """Called every engine tick: learn the venue's time, keep connections fresh."""
        ...

    def connected(self) -> bool: ...

    def activate(self, st: Series, active: bool) -> None:
        """Route (or stop routing) events to ``st``."""
        ...

    def control(self, subscribe: bool, states: list[Series]) -> None:
        """Subscribe to or unsubscribe from ``states`` on the live connection."""
        ...

    def page_span_ms(self, timeframe: str) -> int: ...

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """``st``'s candles from the venue's history, ``closed`` as the venue says."""
        ...

    async def stop(self) -> None: ...

    def report(self) -> FeedStatus:
        """The feed's counters (see :class:`FeedStatus`)."""
        ...

    def status(self) -> dict[str, Any]:
        """:meth:`report` as plain values."""
        ...

    def set_share(self, rest: float, connects: float) -> None:
        """Keep to fractions of the REST pace and connection attempts (see :class:`SharedLimits`)."""
        ...


TradeSink = Callable[["Series", Trade], None]


class Shareable(Protocol):
    """A limit a process may keep only part of (:class:`~deltafeed.net.ratelimit.WeightLimiter`,
    :class:`~deltafeed.net.reconnect.ConnectBudget`, IB's pacer...): ``share(f)`` keeps it to the
    fraction ``f`` of the limit it was made with, from now on."""

    def share(self, fraction: float) -> None: ...


class SharedLimits:
    """What lets a feed keep to a part of its venue's limits while it runs: every feed has it.

    :meth:`set_share` scales every REST pacer of the feed (:meth:`rest_limits`) and every connection
    budget (:meth:`connect_limits`) to a fraction of the limits it was made with (a collector's part
    of a budget it shares with the other collectors on one outgoing address or account). The
    defaults find the usual layout, a ``history`` with a ``limiter`` and a
    :class:`~deltafeed.venues.links.LinkPool` ``pool`` (or a ``budget`` of its own, as the book
    feeds have); a feed laid out otherwise names its own.
    A pacer or budget made after the call (a connection's, made later) is scaled when it is made,
    through :attr:`shares`."""

    #: The fractions of the REST pace and of the connection attempts kept, as last set.
    shares: tuple[float, float] = (1.0, 1.0)

    def rest_limits(self) -> Iterable[Shareable]:
        limiter = getattr(getattr(self, "history", None), "limiter", None)
        return [limiter] if limiter is not None else []

    def connect_limits(self) -> Iterable[Shareable]:
        pool = getattr(self, "pool", None)
        budget = pool.budget if pool is not None else getattr(self, "budget", None)
        return [budget] if budget is not None else []

    def set_share(self, rest: float, connects: float) -> None:
        """Keep to ``rest`` of the REST pace and ``connects`` of the connection attempts (fractions
        in (0, 1]) from now on."""
        self.shares = (rest, connects)
        for lim in self.rest_limits():
            lim.share(rest)
        for budget in self.connect_limits():
            budget.share(connects)


class SkipLog:
    """Logs each kind of skipped frame or line once; the counts live in the decoder's ``errors``
    (and reach the status), so a stream of bad input never floods the log."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._seen: set[str] = set()

    def report(self, errors: Counter[str], first: str) -> None:
        for kind in errors.keys() - self._seen:
            self._seen.add(kind)
            self._log.warning("skipping %s %s (first: %s); counted in status", kind, self._what, first)


class TickHistory(Protocol):
    """Quotes of a range read from a tick-history source, one file (a fixed span) at a time."""

    hours: int  # files fetched, including empty and missing ones
    empty_hours: int
    missing: list[tuple[str, int]]  # (symbol, file start) of every file the source does not have

    def quotes(
        self, symbol: str, start_ms: int, end_ms: int, *, progress: Callable[[int, int], None] | None = None
    ) -> AsyncIterator[list[Quote]]:
        """The quotes of ``[start_ms, end_ms)`` in time order, a file's worth at a time."""
        ...

    async def close(self) -> None: ...


class TickSource(Protocol):
    """A venue's tick history as :mod:`deltafeed.backfill` reads it."""

    file_ms: int  # the span of one file; missing files are whole spans
    default_url: str
    decode_error: type[Exception]  # what a file that is not tick data raises

    def symbol(self, symbol: str) -> str:
        """The source's name for an instrument's ``symbol``; :class:`BadInput` when it has none."""
        ...

    def history(self, url: str, *, concurrency: int, requests_per_s: float, retries: int) -> TickHistory: ...


#: The time the decoder samples decode against: an hour of Friday 2026-11-13, and half past it.
SAMPLE_HOUR_MS = 1_794_582_000_000 - 1_794_582_000_000 % 3_600_000
SAMPLE_NOW_MS = SAMPLE_HOUR_MS + 1_800_000


@dataclass(kw_only=True)
class FuzzTarget:
    """One of a venue's decoders with its samples, as ``bench/fuzz.py`` and the contract suite feed it.

    ``run`` feeds one input to the target's decoder(s), built with the target and shared by its
    inputs; whatever the input, it raises nothing but ``declared`` (a REST body or file decoder
    refuses a bad input by raising one). ``skips`` gives the decoder's error Counter: inputs (frames,
    lines) skipped, by kind; a ``decoder_bug`` is one its safety net caught, which is a bug.
    """

    #: The target's name on the bench's command line, e.g. ``binance_stream``.
    name: str
    #: Verbatim inputs (the venue's documented frames and bodies), the ones the mutator starts from.
    seeds: list[bytes]
    run: Callable[[bytes], object]
    declared: tuple[type[BaseException], ...] = ()
    skips: Callable[[], Counter[str]] = Counter
    #: The seeds that are bad on purpose (a NaN price, a cut frame, an error reply): each one is
    #: refused, with a declared error or counted in ``skips``. Every other seed decodes cleanly.
    bad_seeds: list[bytes] = field(default_factory=list)
    #: ``run`` feeds every input to several decoders, each seed meant for one of them: the others
    #: refusing it (their declared error, or a skip kind named ``refused_<decoder>``) is no skip.
    several_decoders: bool = False
    #: A structure-aware step before the decoder (bi5: compress the mutated records), or None.
    prepare: Callable[[bytes], bytes] | None = None
    #: Inputs fed once, before the seeds, but not mutated (too costly to repeat: the bi5 bomb).
    once: list[bytes] = field(default_factory=list)


class VenueSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The settings every venue has (a ``[venues.NAME]`` table; the top-level keys describe the
    run's default ``venue``). A venue with more subclasses it and names the subclass in its
    :class:`Venue`; its addresses default to the venue's public ones."""

    rest_url: str | None = None
    ws_url: str | None = None  # WebSocket venues
    stream_url: str | None = None  # streaming-HTTP venues
    # Quote-built (forex) venues: which price candles to keep, of mid, bid and ask.
    prices: list[str] = msgspec.field(default_factory=lambda: ["mid"])
    holidays: list[str] = msgspec.field(default_factory=list)  # extra closed days (YYYY-MM-DD, New York)


#: Quote assets of pairs spelled without a separator (BTCUSDT), longest first: USDT before USD.
QUOTE_ASSETS = (
    "FDUSD",
    "USDT",
    "USDC",
    "BUSD",
    "TUSD",
    "USDE",
    "EUR",
    "GBP",
    "JPY",
    "TRY",
    "BRL",
    "DAI",
    "USD",
    "BTC",
    "ETH",
    "BNB",
)


def joined_pair(symbol: str) -> str | None:
    """``BTCUSDT`` as ``BTC/USDT``: a pair spelled without a separator, split at a known quote asset."""
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[: -len(quote)]}/{quote}"
    return None


#: The URL schemes a setting of each kind of address accepts.
HTTP_SCHEMES = ("http://", "https://")
WS_SCHEMES = ("ws://", "wss://")


def account_scope(*credentials: str) -> str | None:
    """A budget scope naming an account by a digest of its credentials (the same for every
    collector holding them, revealing none); None when there are none."""
    if not any(credentials):
        return None
    digest = hashlib.sha256("\x00".join(credentials).encode()).hexdigest()[:12]
    return f"account-{digest}"


class Venue:
    """One venue, declared once in its package's ``__init__.py`` as ``VENUE``: what the rest of
    deltafeed (config, CLI, engine, calendars, backfill, docs) needs to know about it. Everything it
    answers with is the venue's own; nothing outside ``venues/<name>/`` names a venue.

    Subclass it, set the class attributes, and override the methods the venue supports: a live
    venue makes a feed, a venue with a replica adds its options and builds it, a tick-history
    source (Dukascopy) offers :meth:`backfill_source`.
    """

    #: The name used in settings, symbols (``NAME:SYMBOL``) and on the command line.
    name: str = ""
    #: One line for ``--help`` and the docs.
    description: str = ""
    #: The venue of symbols that name none, when settings name no ``venue`` (one venue says so).
    default: bool = False
    #: The type of its ``[venues.NAME]`` settings (defaults carry its public addresses).
    settings_type: type[VenueSettings] = VenueSettings
    #: The address settings it uses and the schemes each accepts, e.g. {"rest_url": HTTP_SCHEMES}.
    urls: dict[str, tuple[str, ...]] = {}  # noqa: RUF012 - read-only by convention
    #: Quote-built (bid/ask, candles per price side) rather than trade-built.
    quotes: bool = False
    #: A trade-built venue that streams quotes too: the price sides it can build from them beside
    #: the trades' candles, when ``prices`` asks for them (Alpaca: bid and ask, as ``NAME@bid``; not
    #: mid, whose series would be the plain name, the trades').
    quote_sides: tuple[str, ...] = ()
    #: The timeframes its history can serve (None: every deltafeed timeframe).
    timeframes: tuple[str, ...] | None = None
    #: True when its history has no candle for an interval without prices: a REST answer then covers
    #: its whole range, whatever candles it holds.
    omits_empty: bool = False
    #: How its candles become final. True: trade ids are the venue's consecutive sequence, so the
    #: candle builder vouches for what an unbroken run covers. False: every candle the stream builds
    #: stays provisional until reconciled with the venue's history, every ``reconcile_every_s``.
    sequenced: bool = False
    reconcile_every_s: float = 0.0
    #: How long (venue ms) after a candle's end its history candle stops changing; repairs and
    #: reconciliation wait this long before they take a candle from history as final. 1 s for most
    #: venues; longer for one whose bars take late trades after they close.
    history_settle_ms: int = 1_000
    #: What it allows its market-data connections (subscriptions per connection and per message,
    #: message rates, connection attempts): its feed spreads subscriptions over as many connections
    #: as these need (:mod:`deltafeed.venues.links`). None for venues that stream no WebSocket.
    stream_limits: StreamLimits | None = None
    #: Whether its history's candles carry their number of trades. False (Finnhub, and venues whose
    #: REST candles have no count): a candle from history, or corrected by it, has ``trades`` 0, so a
    #: comparison with the venue's tape leaves the count out.
    history_trades: bool = True

    #: How the venue spells a pair, for ccxt-style unified names (``BTC/USDT``): ``"{base}{quote}"``
    #: (Binance's BTCUSDT), ``"{base}-{quote}"`` (Coinbase), ``"{base}/{quote}"`` (Kraken),
    #: ``"{base}_{quote}"`` (OANDA), or None when its symbols are no pairs (IG's epics).
    pair_form: str | None = "{base}/{quote}"
    #: Whether its symbols carry a prefix of their own before a colon (Finnhub's ``BINANCE:BTCUSDT``,
    #: Bybit's ``LINEAR:BTCUSDT``): with this venue as the default, an upper-case prefix, or one that
    #: names no venue, is read as part of the symbol, not as a venue.
    prefixed_symbols: bool = False

    def calendar_name(self, symbol: str) -> str:
        """The market calendar ``symbol`` follows on this venue (see ``candles/calendar.py``)."""
        return "crypto"

    def unified_symbol(self, symbol: str) -> str | None:
        """ccxt's unified name of the venue's ``symbol`` (``BTCUSDT`` -> ``BTC/USDT``; a derivative
        adds its settlement asset, ``BTC/USDT:USDT``), or None when it names no pair."""
        if self.pair_form is None:
            return None
        sep = self.pair_form[len("{base}") : -len("{quote}")]
        if sep:
            base, found, quote = symbol.partition(sep)
            return f"{base}/{quote}" if found and base and quote and sep not in quote else None
        return joined_pair(symbol)

    def native_symbol(self, unified: str) -> str | None:
        """The venue's symbol for ccxt's unified name ``BASE/QUOTE`` (the inverse of
        :meth:`unified_symbol`), or None when it has no such spelling."""
        base, found, quote = unified.upper().partition("/")
        if self.pair_form is None or not found or not base or not quote or ":" in quote:
            return None
        return self.pair_form.format(base=base, quote=quote)

    def quoted(self, symbol: str) -> bool:
        """Whether ``symbol`` is quote-built here: :attr:`quotes`, unless the venue has both kinds
        (IB: forex pairs quote, stocks and futures trade) and says so per symbol."""
        return self.quotes

    def sides(self, wanted: list[str], symbol: str | None = None) -> list[str]:
        """The price sides to build for an instrument (``symbol``, or any when None) whose settings
        ask for ``wanted``: for a trade-built one "trade", and those of its :attr:`quote_sides` in
        ``wanted``; else ``wanted`` (some of mid, bid, ask) in the usual order."""
        if not (self.quotes if symbol is None else self.quoted(symbol)):
            return ["trade", *(p for p in self.quote_sides if p in wanted)]
        return [p for p in ("mid", "bid", "ask") if p in wanted]

    def budget_scope(self, vs: VenueSettings) -> str | None:
        """What the venue counts its limits by, when it is not the outgoing IP address: a token
        naming the account, key or session (never a secret: see :func:`account_scope`), so that the
        collectors of a cluster split the budget of what they share. None: per outgoing address."""
        return None

    def held_together(self, vs: VenueSettings) -> bool:
        """Whether a cluster leases all of the venue's instruments as one unit: True for a venue
        that streams on one connection per account or key (:meth:`budget_scope`), so that one
        collector holds that connection rather than each opening one the venue refuses."""
        return False

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        """Its live side, with the run's settings; :class:`BadInput` when it has none."""
        raise BadInput(f"{self.name} is a history source, not a live venue; collect from another venue")

    def make_book_feed(self, settings: Settings, keepers: dict[str, BookKeeper]) -> BookFeed | None:
        """Its live order books for ``keepers`` (its symbol -> keeper; see :mod:`deltafeed.books`), or
        None when the venue keeps no books."""
        return None

    # The replica: ``deltafeed replica NAME`` is generated from these.
    replica_help: str | None = None  # None: the venue has no replica

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        """Add the replica's options to ``deltafeed replica NAME``'s parser."""

    #: A symbol for the example in ``--symbols`` errors.
    replica_example: str = "ABC"

    def replica_class(self) -> type[ReplicaBase] | None:
        """Its replica's class (a :class:`~deltafeed.replicas.server.ReplicaBase` taking ``options=``
        and its own extras), or None; the CLI and the pytest plugin build replicas from it."""
        return None

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        """The replica's own constructor arguments from its parsed options, checked (:class:`BadInput`)."""
        return {}

    def make_replica(self, args: argparse.Namespace) -> ReplicaBase:
        """Build (not start) the replica the parsed options describe; :class:`BadInput` for a bad value."""
        from deltafeed.replicas.options import ReplicaOptions

        cls = self.replica_class()
        if cls is None:
            raise BadInput(f"{self.name} has no replica")
        extras = self.replica_extras(args)
        make: Callable[..., ReplicaBase] = cls
        return make(options=ReplicaOptions.from_args(args, self.replica_example), **extras)

    def replica_settings(self, replica: ReplicaBase) -> dict[str, Any]:
        """The ``[venues.NAME]`` settings that point a feed at the started ``replica``: each address
        setting of :attr:`urls` from the replica's attribute of that name, else its base URL."""
        return {key: getattr(replica, key, None) or replica.url for key in self.urls}

    def replica_env(self, replica: ReplicaBase) -> dict[str, str]:
        """The environment (credentials) a feed needs for ``replica``: the replica's development ones."""
        return {}

    def build_replica(self, **options: Any) -> ReplicaBase:
        """An unstarted replica on a free loopback port from :class:`ReplicaOptions` fields (``symbols``,
        ``seed``, ``rate``, ``speed``, ``history_ms``, ``start_ms``, ``tape``, ``faults``, ...) and the
        replica's own extras (the keywords that are not options); :class:`BadInput` for a bad value."""
        import dataclasses

        from deltafeed.replicas.options import ReplicaOptions

        cls = self.replica_class()
        if cls is None:
            raise BadInput(f"{self.name} has no replica")
        fields = {f.name for f in dataclasses.fields(ReplicaOptions)}
        opts = {k: options.pop(k) for k in list(options) if k in fields}
        make: Callable[..., ReplicaBase] = cls
        return make(options=ReplicaOptions(**opts).check(self.replica_example), **options)

    async def serve_replica(self, replica: Any, symbols: list[str] | None = None) -> None:
        """Run ``replica`` until SIGINT/SIGTERM: print where it listens and the ``deltafeed run``
        line that collects ``symbols`` from it, and its summary on the way out."""
        from deltafeed.replicas.server import serve

        await serve(replica, banner=lambda url: [f"listening on {url}", *self.run_lines(replica, symbols)])

    def run_lines(self, replica: ReplicaBase, symbols: list[str] | None = None) -> list[str]:
        """How to collect from the started ``replica``: the environment to export, the config
        lines for settings without a flag, and the ``deltafeed run`` command."""
        flags = {"rest_url": "--rest-url", "ws_url": "--ws-url", "stream_url": "--stream-url"}
        command = f"deltafeed run --venue {self.name}" + (f" --symbols {','.join(symbols)}" if symbols else "")
        config = []
        for key, value in self.replica_settings(replica).items():
            if key in flags:
                command += f" {flags[key]} {value}"
            else:
                config.append(f'  {key} = "{value}"')
        lines = ["collect from it with:"]
        lines += [f"  export {k}={v}" for k, v in self.replica_env(replica).items()]
        if config:
            lines += ["  cat > replica.toml <<'EOF'", f"  [venues.{self.name}]", *config, "  EOF"]
            command += " --config replica.toml"
        return [*lines, f"  {command}"]

    def fuzz_targets(self) -> list[FuzzTarget]:
        """Its decoders with their samples (fresh decoders on every call), for ``bench/fuzz.py`` and
        the contract suite; a live venue and a tick-history source have at least one."""
        return []

    def catalog(self) -> list[str] | None:
        """Lines ``deltafeed venues NAME`` prints about what the venue offers (a bridge venue's
        exchanges), or None when it has nothing to list beyond its description."""
        return None

    def tick_source(self) -> TickSource | None:
        """Where ``deltafeed backfill --source NAME`` reads this venue's tick history, or None."""
        return None

    def __repr__(self) -> str:
        return f"<Venue {self.name}>"


def unmade(timeframes: Iterable[str], served: Iterable[str]) -> list[str]:
    """The ``timeframes`` no timeframe of ``served`` (a venue's history) divides: the ones whose
    history cannot be had from the venue at all, not even rolled up (e.g. ``45s`` from minutes)."""
    grids = [timeframe(s) for s in served]
    return [tf for tf in timeframes if not any(g.divides(timeframe(tf)) for g in grids)]
