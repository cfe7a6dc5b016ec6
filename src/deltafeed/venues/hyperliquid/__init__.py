"""Hyperliquid perpetuals market data: trades (and candles) over WebSocket, candles from ``POST /info``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings
from deltafeed.venues.hyperliquid import codec
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.books import BookFeed, BookKeeper
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class HyperliquidSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.hyperliquid]``: its public API by default, the REST weight budget and the ping period."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL
    weight_limit: int = codec.WEIGHT_LIMIT_1M  # REST weight per minute per IP
    ping_every_s: float = codec.PING_EVERY_S  # the venue closes a connection silent for 60 s


class Hyperliquid(Venue):
    name = "hyperliquid"
    pair_form = None

    def unified_symbol(self, symbol: str) -> str | None:
        """A perpetual ``BTC`` quotes and settles in USDC: ``BTC/USDC:USDC``, as ccxt names it."""
        return f"{symbol}/USDC:USDC" if symbol.isalnum() else None

    def native_symbol(self, unified: str) -> str | None:
        base, _, rest = unified.upper().partition("/")
        return base if rest == "USDC:USDC" and base.isalnum() else None

    description = "Hyperliquid perpetuals market data: POST /info and WebSocket"
    settings_type = HyperliquidSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    timeframes = codec.TIMEFRAMES
    omits_empty = False  # candleSnapshot has a candle for every interval, quiet ones too
    # tids are unique across all coins, not a per-coin sequence: they cannot vouch for a candle, so
    # the stream's candles stay provisional until the venue's own candle or its history confirms them.
    sequenced = False
    reconcile_every_s = 30.0
    #: Per IP: 1000 subscriptions, 100 connections (a 2026 client README says 10, and 30 new
    #: connections a minute: the tighter figures are used), 2000 messages a minute across connections
    #: (30 at once, then 30 a second here: at most 1830 a minute); none per connection is documented,
    #: 100 subscriptions each is chosen.
    stream_limits = StreamLimits(
        per_connection=codec.SUBSCRIPTIONS_PER_CONNECTION,
        venue_messages_per_s=30.0,
        message_burst=30,
        max_connections=10,
        connects=30,
        connect_window_s=60.0,
        source="Hyperliquid rate-limits page; per connection chosen",
    )
    history_trades = True  # candles carry their trade count ``n``
    replica_example = "BTC"

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.hyperliquid.feed import HyperliquidFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, HyperliquidSettings)  # its settings_type
        if vs.weight_limit < 1 or not vs.ping_every_s > 0:
            raise BadInput("[venues.hyperliquid] weight_limit must be at least 1 and ping_every_s above 0")
        return HyperliquidFeed(
            vs,
            venue_candles=settings.venue_klines,
            stale_after_s=settings.seconds("stale_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )

    def make_book_feed(self, settings: Settings, keepers: dict[str, BookKeeper]) -> BookFeed:
        from deltafeed.venues.hyperliquid.book import HyperliquidBookFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, HyperliquidSettings)  # its settings_type
        return HyperliquidBookFeed(vs, keepers, stale_after_s=settings.seconds("stale_after"))

    replica_help = "Hyperliquid perps: POST /info and WebSocket /ws on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args
        from deltafeed.venues.hyperliquid.replica import FAULT_KINDS

        add_common_args(
            parser,
            symbols="BTC,ETH,SOL",
            rate=5.0,
            rate_help="trades per second of market time, per coin",
            start_help=None,
            history="1h",
            history_help="market history generated before start-up (the venue serves its newest 5000 candles)",
            tape_help="write every trade to this CSV file (symbol,trade_id,time_ms,price,qty,side)",
            fault_kinds=", ".join(FAULT_KINDS) + " (e.g. close=1,drop=10)",
        )
        parser.add_argument("--weight-limit", type=int, default=codec.WEIGHT_LIMIT_1M, help="REST weight per minute")

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.hyperliquid.replica import HyperliquidReplica

        return HyperliquidReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.weight_limit < 1:
            raise BadInput("--weight-limit must be at least 1")
        return {"weight_limit": args.weight_limit}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.hyperliquid.samples import fuzz_targets

        return fuzz_targets()


VENUE = Hyperliquid()
__all__ = ["VENUE", "Hyperliquid", "HyperliquidSettings"]
