"""Settings of a deltafeed run: defaults, the TOML config file, ``DELTAFEED_*`` environment
variables, and command-line overrides, in rising precedence (flags > environment > file > defaults).

Every setting has a variable: ``DELTAFEED_`` and the field's name in capitals (``DELTAFEED_SYMBOLS``,
``DELTAFEED_HOT_CAPACITY``), and a venue's own table ``DELTAFEED_VENUES__<VENUE>__<SETTING>``
(``DELTAFEED_VENUES__BINANCE__REST_URL``). Values convert by the field's type: a list is a comma
list (``BTCUSDT,ETHUSDT``), a whole number or a bool (``true``/``false``, ``1``/``0``, ``yes``/``no``,
``on``/``off``) is spelled as usual, and a table (``retention``, ``aliases``, ``failover``...) is a
TOML inline table (``{ "1m" = "30d" }``). An empty variable counts as unset. A value that does not
convert is a one-line :class:`BadInput` naming the variable. Containers and services set these
instead of writing a file; the file, when there is one, is ``--config`` or ``DELTAFEED_CONFIG``.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from deltafeed.model import (
    PRICE_SIDES,
    TIMEFRAME_FORMS,
    BadInput,
    Instrument,
    cluster_name,
    parse_duration_ms,
    parse_timeframes,
    set_week_start,
    timeframe,
)
from deltafeed.names import native
from deltafeed.store.base import check_db, is_postgres, missing_dir, redact
from deltafeed.store.ticks import parse_tick_retention
from deltafeed.venues import registry
from deltafeed.venues.base import VenueSettings

__all__ = ["ENV_PREFIX", "FailoverSettings", "Settings", "VenueSettings", "env_settings", "env_variables", "load"]

log = logging.getLogger("deltafeed.config")

_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

DEFAULT_TIMEFRAMES = ["1m", "5m", "15m", "1h"]


class FailoverSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A logical instrument served from ``primary`` and, while it is stale, from ``standby``."""

    primary: str
    standby: str


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Everything a run needs. Field names are the config file's keys."""

    venue: str = msgspec.field(default_factory=registry.default_name)  # the registry's default venue
    symbols: list[str] = msgspec.field(default_factory=lambda: ["BTCUSDT", "ETHUSDT"])
    timeframes: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_TIMEFRAMES))
    history: str = "1d"
    # Where ``1w`` candles start: a weekday and a UTC time. Monday 00:00 UTC (ISO weeks) by default;
    # a forex-only run may prefer its venues' weekly open, "sun 21:00" (Sunday 17:00 New York in
    # summer; in winter the market opens an hour after it, still inside the same week candle).
    # It applies to the whole process, and a store must keep one grid: pick it before collecting.
    week_start: str = "mon 00:00"
    # The cold tier: a DuckDB file (embedded, the default) or a postgresql:// URL. A password is
    # better given by PGPASSWORD or ~/.pgpass than in the URL; it is never logged either way.
    db: str = "deltafeed.duckdb"
    db_schema: str = "deltafeed"  # PostgreSQL schema holding deltafeed's tables
    # Where batches the cold tier could not take wait on disk until it is back ("off": keep them in
    # memory). "auto": <db>.spool beside a DuckDB file, deltafeed.spool in the working directory for
    # PostgreSQL.
    spool: str = "auto"
    # The Redis mirror of the hot tier (redis://host:6379/0), for other processes and programs; None
    # keeps the hot tier in this process only.
    hot: str | None = None
    hot_prefix: str = "deltafeed"  # Redis key prefix (see the README's key layout)
    # Derive longer timeframes from this one instead of aggregating every trade into each (None:
    # every timeframe from trades); ``rollups`` overrides it per instrument (a timeframe or "off").
    rollup_from: str | None = None
    rollups: dict[str, str] = msgspec.field(default_factory=dict)
    # Addresses of the default venue; other venues' go in ``venues`` (defaults: the venue's own).
    rest_url: str | None = None
    ws_url: str | None = None
    stream_url: str | None = None
    account: str | None = None
    prices: list[str] | None = None
    # ``[venues.NAME]`` tables, each checked against its venue's own settings type (or, from Python,
    # that type's instances).
    venues: dict[str, Any] = msgspec.field(default_factory=dict)
    # Quote-built instruments: which price candles to keep per instrument (``"oanda:EUR_USD" =
    # ["mid", "bid"]``), over the venue's ``prices``.
    instrument_prices: dict[str, list[str]] = msgspec.field(default_factory=dict)
    # Logical instruments with a primary and a standby source (``[failover."fx:EUR_USD"]``): when
    # the active source is silent for ``failover_after`` while its market is open and the other
    # is live, candles continue from the other one.
    failover: dict[str, FailoverSettings] = msgspec.field(default_factory=dict)
    # Other names for collected instruments, usable wherever one is named (symbols, the API, the
    # CLI): ``aliases = { "ETH-PERP" = "hyperliquid:ETH" }``. Case does not matter.
    aliases: dict[str, str] = msgspec.field(default_factory=dict)
    failover_after: str = "5s"
    hot_capacity: int = 1000
    weight_limit: int | None = None  # the default venue's REST budget, where it has one (Binance: 6000)
    # Merge the venue's own kline streams (final candles sooner; the forming candle complete after
    # start-up). Off, candles come from trades alone and REST repairs.
    venue_klines: bool = True
    retention: dict[str, str] = msgspec.field(default_factory=dict)
    # PostgreSQL: give each candle partition whose window has ended a covering index, so a long read of
    # one series is an index-only scan (~5x less server CPU when many series were written together);
    # it about doubles an ended partition's size. Off, ended partitions keep the plain key.
    postgres_cover_closed: bool = True
    # Keep the raw trades and quotes the stream delivers in the cold tier (GET /trades, `deltafeed
    # trades`, export), for ``tick_retention``, so a candle can be rebuilt and a second studied. Off
    # by default: it costs ~13 bytes a tick on disk (see bench/ticks.py) and a DuckDB file write a
    # second, which delays readers of the same file (`deltafeed candles` while a run writes); turn
    # it on where ticks are wanted.
    ticks: bool = False
    tick_retention: str = "7d"
    # Level-2 order books kept in sync from the venue's snapshots and deltas (docs/books.md):
    # ``books = ["binance:BTCUSDT"]`` (or --books), served to ``book_depth`` levels per side
    # (``book_depths`` per instrument, e.g. ``{"binance:BTCUSDT" = 1000}``).
    books: list[str] = msgspec.field(default_factory=list)
    book_depth: int = 100
    book_depths: dict[str, int] = msgspec.field(default_factory=dict)
    # Book history in the cold tier (GET /book/...?at=): a snapshot of every book every
    # ``book_snapshot_every`` ("off": none) to ``book_history_depth`` levels (default: book_depth),
    # every change too with ``book_deltas``, each kept for its retention.
    book_snapshot_every: str = "10s"
    book_history_depth: int | None = None
    book_deltas: bool = False
    book_snapshot_retention: str = "3h"
    book_delta_retention: str = "1h"
    # Keeping the stream alive and complete (durations as in "10s", "5m", "23h").
    stale_after: str = "10s"  # drop a connection that delivered nothing for this long
    rotate_after: str = "23h"  # replace a connection before the venue's 24 h cut-off
    connect_budget: int = 300  # connection attempts per 5 minutes (Binance's per-IP rule)
    unhealthy_after: str = "60s"  # an open market silent this long makes an instrument unhealthy
    audit_every: str = "10m"  # how often the store is checked for holes
    audit_window: str = "1d"  # how far back each audit looks
    stop_grace: str = "10s"  # on SIGINT/SIGTERM, how long repairs under way may take before the exit
    reconcile_every: str | None = None  # how often id-less venues' candles are reconciled (venue default)
    status_file: str | None = None  # if set, the status as JSON, rewritten every second
    api: str = "127.0.0.1:8080"  # HOST:PORT of the HTTP/WebSocket API, or "off"
    # The token every API request must carry; --api-token and DELTAFEED_API_TOKEN override it (and
    # keep it out of a file others may read). Required to serve beyond loopback; blank is refused.
    api_token: str | None = None
    # The API's connection limits (see the README's Security paragraph).
    api_header_timeout: str = "5s"  # a request's headers (and a POST's body) must arrive within this
    api_idle_timeout: str = "75s"  # a kept-alive connection with no request for this long is closed
    api_max_connections: int | None = None  # default 1000, or half of `ulimit -n` when that is smaller
    # Scale-out (docs/cluster.md): the NATS (JetStream) server of a cluster of collectors, and its
    # name; with them, `run` collects its share of the instruments and publishes to the cluster.
    cluster: str | None = None
    cluster_name: str = "default"
    cluster_trades: bool = False  # publish trades too (on deltafeed.<cluster>.trades.<venue>.<symbol>)
    cluster_metrics: str | None = None  # HOST:PORT where a collector serves /metrics and /livez (None: off)
    # The outgoing address a collector's venue budgets are kept for (None: found per venue by a UDP
    # connect to its REST host); collectors on one address share them.
    cluster_address: str | None = None
    # How long a larger part of a shared venue budget must stand before a collector takes it (the
    # longest window of the venues' limits; tests shorten it).
    cluster_grow_after: str = "5m"

    def venue_settings(self, venue: str) -> VenueSettings:
        """``venue``'s settings, of its own type: its ``[venues.NAME]`` table, with the top-level keys
        for the default venue, and the venue's public addresses for whatever neither names."""
        v = registry.get(venue)
        own = self.venues.get(venue)
        data = msgspec.to_builtins(own) if isinstance(own, msgspec.Struct) else dict(own or {})
        data = {k: val for k, val in data.items() if val is not None}
        if venue == self.venue:
            names = set(v.settings_type.__struct_fields__)
            for name in ("rest_url", "ws_url", "stream_url", "account", "prices", "weight_limit"):
                value = getattr(self, name)
                if value and name in names:
                    data[name] = value
        try:
            return msgspec.convert(data, v.settings_type)
        except msgspec.ValidationError as exc:
            raise BadInput(f"settings of venue {venue}: {exc}; see the README's configuration section") from None

    def prices_for(self, instrument: Instrument) -> list[str]:
        """The price sides kept for a quote-built ``instrument``."""
        own = self.instrument_prices.get(str(instrument), self.instrument_prices.get(instrument.symbol))
        return list(own) if own else list(self.venue_settings(instrument.venue).prices)

    def venues_used(self) -> list[str]:
        """The venues of the configured instruments, in order of first mention."""
        return list(dict.fromkeys(i.venue for i in self.instruments()))

    def spool_path(self) -> str | None:
        """The spool file this run uses, or None when spooling is off."""
        if self.spool.strip().lower() == "off":
            return None
        if self.spool != "auto":
            return self.spool
        if self.db == ":memory:":
            return None  # nothing outlives the process anyway
        return "deltafeed.spool" if is_postgres(self.db) else f"{self.db}.spool"

    def rollup_base(self, instrument: Instrument) -> str | None:
        """The timeframe ``instrument``'s longer timeframes are derived from, or None."""
        base = self.rollups.get(str(instrument), self.rollups.get(instrument.symbol, self.rollup_from))
        if base is None or base.strip().lower() == "off":
            return None
        try:
            return timeframe(base.strip()).name
        except BadInput:
            return base.strip()  # validate() words the error

    def seconds(self, name: str) -> float:
        """A duration setting in seconds."""
        return parse_duration_ms(str(getattr(self, name))) / 1000

    def _distinct_symbols(self) -> list[str]:
        """The symbols, each an instrument's own name: an alias or a unified symbol (``BTC/USDT``)
        becomes the venue's spelling, and names of one instrument (any case) are collected once."""
        aliases = {k.strip().upper(): v for k, v in self.aliases.items()}
        for alias, target in aliases.items():
            if not alias or ":" in alias:
                raise BadInput(f"alias {alias!r} must be a plain name without a venue, e.g. ETH-PERP")
            native(target, self.venue)  # BadInput for a malformed target
        out: dict[str, str] = {}  # canonical -> the name as written
        for raw in self.symbols:
            if not raw.strip():
                raise BadInput("an empty symbol among the symbols; write them like BTCUSDT,ETHUSDT")
            name = native(aliases.get(raw.strip().upper(), raw), self.venue)
            if name in out:
                log.info("%s and %s are the same instrument, %s; collecting it once", out[name], raw.strip(), name)
                continue
            out[name] = raw.strip()
        for alias, target in aliases.items():
            if native(target, self.venue) not in out:
                raise BadInput(f"alias {alias} names {target}, which this run does not collect; add it to the symbols")
        return list(out)

    def _check_books(self) -> None:
        """``books`` as ``venue:SYMBOL`` names (each once), ``book_depth(s)`` between 1 and 5000."""
        out: list[str] = []
        for raw in self.books:
            if not raw.strip():
                raise BadInput('an empty name among books; write them like books = ["binance:BTCUSDT"]')
            name = native(raw, self.venue)
            if "@" in name:
                raise BadInput(f"books names {raw!r}: an order book has no price side; write it like binance:BTCUSDT")
            if name not in out:
                out.append(name)
        self.books = out
        depths = {native(k, self.venue): v for k, v in self.book_depths.items()}
        for who, d in [("book_depth", self.book_depth), *((f"book_depths[{k}]", v) for k, v in depths.items())]:
            if not 1 <= d <= 5000:
                raise BadInput(f"{who} = {d}: give a depth between 1 and 5000 levels per side")
        for k in depths:
            if k not in out:
                raise BadInput(f"book_depths names {k}, which is not in books; add it to books or leave it out")
        self.book_depths = depths
        if self.book_history_depth is not None and not 1 <= self.book_history_depth <= 5000:
            raise BadInput(f"book_history_depth = {self.book_history_depth}: give 1 to 5000 levels per side")
        if self.book_snapshot_every != "off" and self.seconds("book_snapshot_every") <= 0:
            raise BadInput('book_snapshot_every must be longer than 0, e.g. "10s" (or "off")')
        for name in ("book_snapshot_retention", "book_delta_retention"):
            if self.seconds(name) < 60:
                raise BadInput(f'{name} must be at least a minute, e.g. {name} = "3h"')

    def instruments(self) -> list[Instrument]:
        return [Instrument.parse(s, default_venue=self.venue) for s in self.symbols]

    @property
    def history_ms(self) -> int:
        return parse_duration_ms(self.history)

    def validate(self) -> Settings:
        """Check every value, raising :class:`BadInput` with the fix; returns self."""
        registry.get(self.venue)  # BadInput naming the known venues
        if not self.symbols:
            raise BadInput("no symbols to collect; pass --symbols BTCUSDT,ETHUSDT or set symbols in the config")
        self.symbols = self._distinct_symbols()
        for venue in [*self.venues, *self.venues_used()]:
            registry.get(venue)
        set_week_start(self.week_start)
        self.timeframes = parse_timeframes(self.timeframes)
        self.history_ms  # noqa: B018 - parses, raising BadInput
        for venue in self.venues_used():
            vs = self.venue_settings(venue)
            checks = [
                (getattr(vs, name), "--" + name.replace("_", "-"), schemes)
                for name, schemes in registry.get(venue).urls.items()
            ]
            for url, flag, schemes in checks:
                if not url or "://" not in url:
                    raise BadInput(f"{flag} {url!r} of {venue} is not a URL; write it like {schemes[0]}127.0.0.1:9001")
                if not url.startswith(schemes):
                    raise BadInput(f"{flag} {url!r} of {venue} must start with {' or '.join(schemes)}")
            for side in vs.prices:
                if side not in PRICE_SIDES:
                    raise BadInput(f"prices of {venue}: {side!r} is not one of {', '.join(PRICE_SIDES)}")
        names = {str(i) for i in self.instruments()} | {i.symbol for i in self.instruments()}
        for who, sides in self.instrument_prices.items():
            if who not in names:
                raise BadInput(f"instrument_prices names {who!r}, which this run does not collect")
            bad = [p for p in sides if p not in PRICE_SIDES] or ([] if sides else ["(none)"])
            if bad:
                raise BadInput(f"instrument_prices for {who}: {', '.join(bad)}; use some of {', '.join(PRICE_SIDES)}")
        if self.hot_capacity < 1:
            raise BadInput("hot_capacity must be at least 1")
        self._check_books()
        for name in (
            "stale_after",
            "rotate_after",
            "unhealthy_after",
            "audit_every",
            "audit_window",
            "api_header_timeout",
            "api_idle_timeout",
        ):
            if self.seconds(name) <= 0:
                raise BadInput(f'{name} must be longer than 0, e.g. {name} = "10s"')
        self.seconds("stop_grace")  # "0" is allowed: exit without waiting for repairs
        self.seconds("cluster_grow_after")
        if self.reconcile_every is not None and self.seconds("reconcile_every") <= 0:
            raise BadInput('reconcile_every must be longer than 0, e.g. reconcile_every = "30s"')
        if self.api_max_connections is not None and self.api_max_connections < 1:
            raise BadInput(
                "api_max_connections must be at least 1; leave it out for the default (1000, or half"
                " of the file descriptor limit when that is smaller)"
            )
        if self.connect_budget < 1:
            raise BadInput("connect_budget must be at least 1 connection attempt per 5 minutes")
        # The database first: with the spool beside it, a bad --db would otherwise surface as a spool error.
        self.db = check_db(self.db)
        spool = self.spool_path()
        if spool is not None and self.spool != "auto":
            missing = missing_dir(spool)
            if missing is not None:
                problem, create = missing
                raise BadInput(
                    f"--spool {spool}: {problem}; {create + ' or ' if create else ''}pass --spool with a"
                    " path in an existing directory (or --spool off)"
                )
        if not _SCHEMA_RE.fullmatch(self.db_schema):
            raise BadInput(f"db_schema {self.db_schema!r} must be a plain identifier (letters, digits, _)")
        if self.hot is not None and not self.hot.startswith(("redis://", "rediss://", "unix://")):
            raise BadInput(f"--hot {redact(self.hot)!r} is not a Redis URL; write it like redis://127.0.0.1:6379/0")
        if not self.hot_prefix or any(ch in self.hot_prefix for ch in " {}"):
            raise BadInput(f"hot_prefix {self.hot_prefix!r} must be a non-empty word, e.g. deltafeed")
        names = {str(i) for i in self.instruments()} | {i.symbol for i in self.instruments()}
        for who in self.rollups:
            if who not in names:
                raise BadInput(f"rollups names {who!r}, which this run does not collect; use one of its symbols")
        for inst in self.instruments():
            base = self.rollup_base(inst)
            if base is None:
                continue
            try:
                timeframe(base)
            except BadInput:
                raise BadInput(f"rollup base {base!r} for {inst} is not a timeframe; use {TIMEFRAME_FORMS}") from None
            if base not in self.timeframes:
                raise BadInput(
                    f"rollups from {base} for {inst} need {base} among the timeframes; add it to --timeframes"
                )
        collected = {str(i) for i in self.instruments()}
        for name, fo in self.failover.items():
            logical = str(Instrument.parse(name))
            if logical in collected:
                raise BadInput(
                    f"failover {name!r} is also a collected instrument; name the logical one apart, e.g. fx:EUR_USD"
                )
            for role, source in (("primary", fo.primary), ("standby", fo.standby)):
                if str(Instrument.parse(source, default_venue=self.venue)) not in collected:
                    raise BadInput(f"failover {name}: {role} {source!r} is not among the symbols; add it to --symbols")
            if str(Instrument.parse(fo.primary, default_venue=self.venue)) == str(
                Instrument.parse(fo.standby, default_venue=self.venue)
            ):
                raise BadInput(f"failover {name}: primary and standby are the same instrument")
        if self.seconds("failover_after") <= 0:
            raise BadInput('failover_after must be longer than 0, e.g. failover_after = "5s"')
        parse_tick_retention(self.tick_retention)
        for tf, text in self.retention.items():
            parse_timeframes([tf])
            if text != "forever":
                parse_duration_ms(text)
        if self.cluster is not None:
            if not self.cluster.startswith(("nats://", "tls://")):
                raise BadInput(f"cluster {self.cluster!r} is not a NATS address; write e.g. nats://127.0.0.1:4222")
            cluster_name(self.cluster_name)
        return self


#: The prefix of deltafeed's environment variables.
ENV_PREFIX = "DELTAFEED_"
#: ``DELTAFEED_*`` variables that are not settings: the command line reads them itself.
ENV_NOT_SETTINGS = frozenset({"DELTAFEED_CONFIG", "DELTAFEED_LOG_FORMAT", "DELTAFEED_LOG_LEVEL"})
#: Variables of the test and bench scripts, never settings (no warning for them).
_ENV_OTHER_PREFIXES = ("DELTAFEED_TEST_", "DELTAFEED_BENCH_")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
#: Settings whose values are secrets: never repeated in an error message.
_SECRET_WORDS = ("token", "password", "secret", "key")


def _field_types(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """A settings struct's fields and their (resolved) types."""
    hints = typing.get_type_hints(struct)
    return {name: hints[name] for name in struct.__struct_fields__}


def env_variables() -> dict[str, str]:
    """Every setting's variable name and what it holds, for the documentation and ``--help``:
    ``{"DELTAFEED_SYMBOLS": "list of str (comma list)", ...}``; venue tables are one pattern."""
    out: dict[str, str] = {}
    for name, tp in _field_types(Settings).items():
        if name == "venues":
            out[f"{ENV_PREFIX}VENUES__<VENUE>__<SETTING>"] = "a venue's own setting, e.g. its rest_url"
            continue
        out[f"{ENV_PREFIX}{name.upper()}"] = _describe(tp)
    return out


def _describe(tp: Any) -> str:
    info = _unoptional(msgspec.inspect.type_info(tp))
    if isinstance(info, msgspec.inspect.ListType) and isinstance(info.item_type, msgspec.inspect.StrType):
        return "comma list"
    if isinstance(info, msgspec.inspect.IntType):
        return "whole number"
    if isinstance(info, msgspec.inspect.BoolType):
        return "true or false"
    if isinstance(info, msgspec.inspect.StrType):
        return "text"
    return "TOML inline table"


def _unoptional(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """``X | None`` as ``X`` (an empty variable is how to leave a setting unset)."""
    if isinstance(info, msgspec.inspect.UnionType):
        rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        if len(rest) == 1:
            return rest[0]
    return info


def _env_value(var: str, raw: str, tp: Any) -> Any:
    """The text of variable ``var`` as a value of type ``tp``; :class:`BadInput` naming ``var``."""
    secret = any(w in var.lower() for w in _SECRET_WORDS)
    shown = "(its value)" if secret else repr(raw)
    info = _unoptional(msgspec.inspect.type_info(tp))
    text = raw.strip()
    value: Any
    if isinstance(info, msgspec.inspect.StrType):
        value = text
    elif isinstance(info, msgspec.inspect.ListType) and isinstance(info.item_type, msgspec.inspect.StrType):
        value = [item.strip() for item in text.split(",")]
    elif isinstance(info, msgspec.inspect.IntType):
        try:
            value = int(text)
        except ValueError:
            raise BadInput(f"{var}={shown} is not a whole number; write e.g. {var}=1000") from None
    elif isinstance(info, msgspec.inspect.FloatType):
        try:
            value = float(text)
        except ValueError:
            raise BadInput(f"{var}={shown} is not a number; write e.g. {var}=2.5") from None
    elif isinstance(info, msgspec.inspect.BoolType):
        if text.lower() not in _TRUE | _FALSE:
            raise BadInput(f"{var}={shown} is not true or false; write {var}=true or {var}=false")
        value = text.lower() in _TRUE
    else:  # a table, or a list of something other than text: a TOML value
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(
                f'{var} is not a TOML value ({exc}); write a table like {var}=\'{{ "1m" = "30d" }}\''
            ) from None
    try:
        return msgspec.convert(value, tp)
    except msgspec.ValidationError as exc:
        raise BadInput(f"{var}={shown}: {exc}; see the README's configuration section") from None


def env_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The settings ``DELTAFEED_*`` variables give (``os.environ`` by default), converted to their
    fields' types, as a partial config: ``{"symbols": [...], "venues": {"binance": {...}}}``.

    An unknown variable close to a setting's name is warned about (a typo would otherwise be
    silently ignored); others are left alone, since tools may keep their own ``DELTAFEED_*``.
    """
    env = os.environ if environ is None else environ
    fields = _field_types(Settings)
    out: dict[str, Any] = {}
    for var in sorted(env):
        raw = env[var]
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS or var.startswith(_ENV_OTHER_PREFIXES):
            continue
        if not raw.strip():
            continue  # empty: unset (compose's `VAR=`, a unit's `Environment=VAR=`)
        name = var[len(ENV_PREFIX) :].lower()
        if name.startswith("venues__"):
            venue, _, key = name.removeprefix("venues__").partition("__")
            if not venue or not key or "__" in key:
                raise BadInput(
                    f"{var}: a venue's setting is DELTAFEED_VENUES__<VENUE>__<SETTING>,"
                    " e.g. DELTAFEED_VENUES__BINANCE__REST_URL"
                )
            try:
                own = _field_types(registry.get(venue).settings_type)
            except BadInput as exc:
                raise BadInput(f"{var}: {exc}") from None
            if key not in own:
                raise BadInput(f"{var}: {venue} has no setting {key}; its settings are {', '.join(sorted(own))}")
            out.setdefault("venues", {}).setdefault(venue, {})[key] = _env_value(var, raw, own[key])
        elif name in fields and name != "venues":
            out[name] = _env_value(var, raw, fields[name])
        else:
            known = [f"{ENV_PREFIX}{f.upper()}" for f in fields if f != "venues"]
            close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
            if close:
                log.warning("%s is not a setting and is ignored; did you mean %s?", var, close[0])
    return out


def load(path: str | None, overrides: dict[str, object], environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, then the TOML file at ``path``, then the ``DELTAFEED_*`` variables of ``environ``
    (``os.environ`` by default; see the module's docstring), then every override that is not None."""
    data: dict[str, object] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise BadInput(f"config file {path} does not exist; check the path given to --config") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise BadInput(f"config file {path} is not valid TOML ({exc}); fix that line") from None
    env = env_settings(environ)
    venues_env: dict[str, dict[str, Any]] = env.pop("venues", {})
    data.update(env)
    if venues_env:
        # One variable sets one key of a venue's table: the file's other keys stay.
        tables = data.get("venues")
        merged: dict[str, Any] = dict(tables) if isinstance(tables, dict) else {}
        for venue, keys in venues_env.items():
            own = merged.get(venue)
            merged[venue] = {**(own if isinstance(own, dict) else {}), **keys}
        data["venues"] = merged
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        where = f"config file {path}" if path else "settings"
        raise BadInput(f"{where}: {exc}; see the README's configuration section") from None
    return settings.validate()
