"""Coinbase Advanced Trade public market data: trades over WebSocket, candles over REST, reconciled."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings
from deltafeed.venues.coinbase import codec
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.books import BookFeed, BookKeeper
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class CoinbaseSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.coinbase]``: the public Advanced Trade hosts by default, and the REST pace."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL
    requests_per_s: int = codec.REQUESTS_PER_S  # public REST requests per second per IP


class Coinbase(Venue):
    name = "coinbase"
    pair_form = "{base}-{quote}"
    description = "Coinbase Advanced Trade public market data: REST and WebSocket"
    settings_type = CoinbaseSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    timeframes = tuple(codec.GRANULARITY)  # what its REST candles serve (1m and up)
    omits_empty = True  # no candle for an interval without trades
    # Trade ids are per-product counters in practice but not documented as contiguous, and a
    # sequence_num break does not say which product lost what: every candle the stream builds is
    # checked against the REST candles before it is final.
    sequenced = False
    reconcile_every_s = 30.0
    #: Unauthenticated messages: 8 a second per IP (3 at once, then 5 a second); connections: 8 a
    #: second per IP (one page says 750; the smaller is used). Chosen, as Coinbase documents none:
    #: 100 product-channel subscriptions per connection.
    stream_limits = StreamLimits(
        per_connection=codec.SUBSCRIPTIONS_PER_CONNECTION,
        venue_messages_per_s=5.0,
        message_burst=3,
        connects=8,
        connect_window_s=1.0,
        source="Coinbase Advanced Trade WebSocket rate limits; per connection chosen",
    )
    history_trades = False  # its REST candles carry no trade count

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.coinbase.feed import CoinbaseFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, CoinbaseSettings)  # its settings_type
        return CoinbaseFeed(
            vs,
            venue_candles=settings.venue_klines,
            stale_after_s=settings.seconds("stale_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )

    def make_book_feed(self, settings: Settings, keepers: dict[str, BookKeeper]) -> BookFeed:
        from deltafeed.venues.coinbase.book import CoinbaseBookFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, CoinbaseSettings)  # its settings_type
        return CoinbaseBookFeed(vs, keepers, stale_after_s=settings.seconds("stale_after"))

    replica_help = "Coinbase Advanced Trade public market data: REST and WebSocket on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="BTC-USD,ETH-USD,SOL-USD",
            symbols_help="Coinbase product ids, e.g. BTC-USD",
            rate=10.0,
            rate_help="trades per second of market time, per product",
            start_help=None,
            history="1h",
            history_help="market history generated before start-up",
            tape_help="write every trade to this CSV file (symbol,trade_id,time_ms,price,qty,side)",
            fault_kinds="close, reset, stall, drop, dup, reorder, garbage, seqgap, noheartbeat (WebSocket), "
            "http500, http429, slow (REST), e.g. close=1,seqgap=5",
        )
        parser.add_argument(
            "--requests-per-s", type=int, default=codec.REQUESTS_PER_S, help="public REST requests per second per IP"
        )

    replica_example = "BTC-USD"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.coinbase.replica import CoinbaseReplica

        return CoinbaseReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.requests_per_s < 1:
            raise BadInput("--requests-per-s must be at least 1")
        return {"requests_per_s": args.requests_per_s}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.coinbase.samples import fuzz_targets

        return fuzz_targets()


VENUE = Coinbase()
__all__ = ["VENUE", "Coinbase", "CoinbaseSettings"]
