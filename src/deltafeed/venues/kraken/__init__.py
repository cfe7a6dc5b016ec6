"""Kraken spot market data: trades (and forming ohlc candles) over WebSocket v2, OHLC and Trades over REST."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings
from deltafeed.venues.kraken import codec
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.books import BookFeed, BookKeeper
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink

#: The fault kinds the replica injects: every shared kind but ``shutdown`` (Kraken announces none),
#: plus ``seqgap`` (a trade_id skipped, nothing else lost) and ``noheartbeat``, and the book faults.
FAULT_KINDS = (
    "close", "reset", "stall", "drop", "dup", "reorder", "garbage", "poison", "http500", "http429", "slow",
    "seqgap", "noheartbeat", "bookdrop", "bookdup", "bookreorder", "stalebook", "badchecksum",
)  # fmt: skip


class KrakenSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.kraken]``: its public hosts by default, and the pace of public REST calls."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL
    rest_rate_per_s: float = 0.9  # inside Kraken's ~1/s public limit [UNVERIFIED: not published]
    rest_burst: int = 10


class Kraken(Venue):
    name = "kraken"
    description = "Kraken spot market data: WebSocket v2 and REST (OHLC, Trades)"
    settings_type = KrakenSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    omits_empty = False  # a quiet interval is a flat row, as the replica serves it [UNVERIFIED on Kraken]
    sequenced = True  # trade_id is "a sequence number, unique per book": a jump is a hole
    reconcile_every_s = 0.0
    history_trades = True  # OHLC rows carry their count, and Trades rebuild it exactly
    #: Kraken documents no per-connection cap for public WebSocket v2 subscriptions: these are
    #: chosen conservatively (200 subscriptions and 5 control messages/s per connection, 50 pairs per
    #: request, 100 connection attempts per 10 minutes).
    stream_limits = StreamLimits(
        per_connection=codec.SUBSCRIPTIONS_PER_CONNECTION,
        per_message=50,
        messages_per_s=5.0,
        connects=100,
        connect_window_s=600.0,
        source="chosen: Kraken documents no limit",
    )

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.kraken.feed import KrakenFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, KrakenSettings)
        return KrakenFeed(
            vs,
            venue_klines=settings.venue_klines,
            stale_after_s=settings.seconds("stale_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )

    def make_book_feed(self, settings: Settings, keepers: dict[str, BookKeeper]) -> BookFeed:
        from deltafeed.venues.kraken.book import KrakenBookFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, KrakenSettings)  # its settings_type
        return KrakenBookFeed(vs, keepers, stale_after_s=settings.seconds("stale_after"))

    replica_help = "Kraken spot: WebSocket v2 and REST (/0/public) on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="BTC/USD,ETH/USD,SOL/USD",
            symbols_help="pairs as WS v2 spells them (REST also takes their altnames, XBTUSD)",
            rate=2.0,
            rate_help="trades per second of market time, per pair",
            start_help=None,
            history="1h",
            history_help="market history generated before start-up",
            tape_help="write every trade to this CSV file (symbol,trade_id,time_ms,price,qty,side)",
            fault_kinds=", ".join(FAULT_KINDS) + " (e.g. close=1,seqgap=5)",
        )
        parser.add_argument(
            "--rest-rate", type=float, default=codec.PUBLIC_RATE_PER_S, help="public REST calls per second per IP"
        )
        parser.add_argument(
            "--rest-burst", type=int, default=codec.PUBLIC_BURST, help="public REST calls allowed in a burst"
        )

    replica_example = "BTC/USD"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.kraken.replica import KrakenReplica

        return KrakenReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if not args.rest_rate > 0 or args.rest_burst < 1:
            raise BadInput("--rest-rate must be greater than 0 and --rest-burst at least 1")
        return {"rest_rate": args.rest_rate, "rest_burst": args.rest_burst}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.kraken.samples import fuzz_targets

        return fuzz_targets()


VENUE = Kraken()
__all__ = ["FAULT_KINDS", "VENUE", "Kraken", "KrakenSettings"]
