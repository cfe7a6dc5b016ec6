"""Binance spot market data: trades and klines over WebSocket, klines over REST, ids in sequence."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings
from deltafeed.venues.binance import codec
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.books import BookFeed, BookKeeper
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class BinanceSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.binance]``: its public market-data hosts by default, and the REST weight budget."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL
    weight_limit: int = codec.WEIGHT_LIMIT_1M  # REQUEST_WEIGHT per minute per IP


class Binance(Venue):
    name = "binance"
    pair_form = "{base}{quote}"
    description = "Binance spot market data: REST and WebSocket"
    default = True  # the venue of symbols that name none
    settings_type = BinanceSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    omits_empty = False  # its klines cover every interval, quiet ones too
    timeframes = codec.TIMEFRAMES
    sequenced = True  # trade ids are the venue's consecutive sequence
    reconcile_every_s = 0.0  # never needed: ids, closed klines and repairs make candles final
    #: 1024 streams per connection, 5 inbound messages/s per connection (pings and pongs count: we
    #: send 4), 300 connection attempts per 5 minutes per IP; the URL cap is the feed's MAX_URL_BYTES.
    stream_limits = StreamLimits(
        per_connection=codec.MAX_STREAMS_PER_CONNECTION,
        messages_per_s=4.0,
        connects=300,
        connect_window_s=300.0,
        source="Binance WebSocket Streams docs (limits section)",
    )

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.binance.feed import BinanceFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, BinanceSettings)  # its settings_type
        return BinanceFeed(
            vs,
            venue_klines=settings.venue_klines,
            stale_after_s=settings.seconds("stale_after"),
            rotate_after_s=settings.seconds("rotate_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )

    def make_book_feed(self, settings: Settings, keepers: dict[str, BookKeeper]) -> BookFeed:
        from deltafeed.venues.binance.book import BinanceBookFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, BinanceSettings)  # its settings_type
        return BinanceBookFeed(vs, keepers, stale_after_s=settings.seconds("stale_after"))

    replica_help = "Binance spot market data: REST and WebSocket on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="BTCUSDT,ETHUSDT,SOLUSDT",
            rate=10.0,
            rate_help="trades per second of market time, per symbol",
            start_help=None,
            history="1h",
            history_help="market history generated before start-up",
            tape_help="write every trade to this CSV file",
            fault_kinds="close, reset, stall, shutdown, drop, dup, reorder, garbage, http500, http429, slow, "
            "bookdrop, bookdup, bookreorder, stalebook (e.g. close=1,drop=10)",
            books=True,
        )
        parser.add_argument("--weight-limit", type=int, default=6000, help="REST weight per minute")
        parser.add_argument(
            "--tls",
            nargs="?",
            const=True,
            default=False,
            metavar="DIR",
            help="serve https:// and wss:// with a certificate from a CA the replica makes (in DIR, default a "
            "temporary directory) and prints the path of; clients trust that CA file",
        )

    replica_example = "BTCUSDT"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.binance.replica import BinanceReplica

        return BinanceReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.weight_limit < 1:
            raise BadInput("--weight-limit must be at least 1")
        return {"weight_limit": args.weight_limit, "tls": getattr(args, "tls", False)}

    async def serve_replica(self, replica: Any, symbols: list[str] | None = None) -> None:
        """As every venue's, plus where the CA certificate is when the replica serves TLS."""
        from deltafeed.replicas.server import serve

        def banner(url: str) -> list[str]:
            ca = getattr(replica, "ca_file", None)
            lines = self.run_lines(replica, symbols)
            if ca is None:
                return [f"listening on {url}", *lines]
            # deltafeed (aiohttp, picows) and most Python clients build their TLS context from the
            # default verify paths, which SSL_CERT_FILE names.
            env = f"SSL_CERT_FILE={ca} "
            run = [ln.replace("deltafeed run", env + "deltafeed run", 1) for ln in lines]
            return [f"listening on {url}", f"TLS CA certificate: {ca} (trust it, e.g. SSL_CERT_FILE={ca})", *run]

        await serve(replica, banner=banner)

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.binance.samples import fuzz_targets

        return fuzz_targets()


VENUE = Binance()
__all__ = ["VENUE", "Binance", "BinanceSettings"]
