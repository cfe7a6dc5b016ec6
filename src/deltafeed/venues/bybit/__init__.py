"""Bybit v5 public market data, spot and linear: trades and klines over WebSocket, klines over REST;
trade ids are not a counter, so candles are vouched for by the venue's klines."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings
from deltafeed.venues.bybit import codec
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.books import BookFeed, BookKeeper
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class BybitSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.bybit]``: Bybit's public hosts by default, its IP request limit, and how long to wait
    after a 403 "access too frequent" that names no time (Bybit: at least 10 minutes)."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL  # /v5/public/<category> is appended
    category: str = "spot"  # the category of symbols that name none (linear:BTCUSDT names its own)
    requests_per_5s: int = codec.REQUESTS_PER_WINDOW
    ban_wait_s: float = 600.0


class Bybit(Venue):
    name = "bybit"
    prefixed_symbols = True
    pair_form = "{base}{quote}"

    def unified_symbol(self, symbol: str) -> str | None:
        """Spot ``BTCUSDT`` is ``BTC/USDT``; linear ``LINEAR:BTCUSDT`` settles in its quote, ``BTC/USDT:USDT``."""
        category, _, name = symbol.rpartition(":")
        pair = super().unified_symbol(name)
        if pair is None or category.lower() not in ("", "spot", "linear"):
            return None
        return f"{pair}:{pair.partition('/')[2]}" if category.lower() == "linear" else pair

    def native_symbol(self, unified: str) -> str | None:
        pair, _, settle = unified.upper().partition(":")
        name = super().native_symbol(pair)
        if name is None or (settle and settle != pair.partition("/")[2]):
            return None
        return f"LINEAR:{name}" if settle else name

    description = "Bybit v5 public market data (spot, and linear as linear:SYMBOL): REST and WebSocket"
    settings_type = BybitSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    timeframes = tuple(codec.INTERVAL_OF)  # klines start at 1 minute
    omits_empty = False  # a quiet interval is a flat kline at the previous close
    # Trade ids are UUIDs (linear) or non-consecutive decimals (spot): a run of them vouches for
    # nothing. Closed candles become final through the kline stream's confirm:true, or through
    # reconciliation with REST klines; a reconnect skips a synthetic id so its hole is repaired.
    sequenced = False
    reconcile_every_s = 20.0
    #: Per public connection, args of at most 21,000 characters; spot takes 10 args per request (used
    #: for both categories); 500 connections per 5 minutes per domain. Chosen, as Bybit documents
    #: none: 500 topics per connection, 10 control messages per second.
    stream_limits = StreamLimits(
        per_connection=codec.TOPICS_PER_CONNECTION,
        chars_per_connection=codec.ARGS_CHARS_PER_CONNECTION,
        per_message=codec.SPOT_MAX_ARGS,
        messages_per_s=10.0,
        connects=500,
        connect_window_s=300.0,
        source="Bybit v5 WebSocket connect and rate-limit docs; topics per connection chosen",
    )
    history_trades = False  # Bybit's klines carry no trade count

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.bybit.feed import BybitFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, BybitSettings)  # its settings_type
        return BybitFeed(
            vs,
            venue_klines=settings.venue_klines,
            stale_after_s=settings.seconds("stale_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )

    def make_book_feed(self, settings: Settings, keepers: dict[str, BookKeeper]) -> BookFeed:
        from deltafeed.venues.bybit.book import BybitBookFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, BybitSettings)  # its settings_type
        return BybitBookFeed(vs, keepers, stale_after_s=settings.seconds("stale_after"))

    replica_help = "Bybit v5 public market data (spot and linear): REST and WebSocket on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="BTCUSDT,ETHUSDT,LINEAR:BTCUSDT",
            symbols_help="symbols of --category, and of another category as CATEGORY:SYMBOL (e.g. LINEAR:BTCUSDT)",
            rate=10.0,
            rate_help="trades per second of market time, per symbol",
            start_help=None,
            history="1h",
            history_help="market history generated before start-up",
            tape_help="write every trade to this CSV file (symbol as deltafeed names the market)",
            fault_kinds=", ".join(_fault_kinds()) + " (e.g. close=1,drop=10)",
        )
        parser.add_argument("--category", default="spot", choices=codec.CATEGORIES, help="category of bare symbols")
        parser.add_argument("--requests-per-5s", type=int, default=600, help="REST requests per 5 s per IP")
        parser.add_argument("--ban", type=float, default=600.0, help="seconds an IP over the limit gets 403")

    replica_example = "BTCUSDT"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.bybit.replica import BybitReplica

        return BybitReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.requests_per_5s < 1:
            raise BadInput("--requests-per-5s must be at least 1")
        if not args.ban >= 0:
            raise BadInput("--ban must be 0 or more seconds")
        return {"requests_per_5s": args.requests_per_5s, "ban_s": args.ban, "category": args.category}

    def replica_settings(self, replica: ReplicaBase) -> dict[str, Any]:
        return {
            "rest_url": replica.url,
            "ws_url": getattr(replica, "ws_url", replica.url),
            "category": getattr(replica, "category", "spot"),
        }

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.bybit.samples import fuzz_targets

        return fuzz_targets()


def _fault_kinds() -> tuple[str, ...]:
    from deltafeed.venues.bybit.replica import FAULT_KINDS

    return FAULT_KINDS


VENUE = Bybit()
__all__ = ["VENUE", "Bybit", "BybitSettings"]
