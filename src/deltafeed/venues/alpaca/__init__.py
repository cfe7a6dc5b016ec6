"""Alpaca market data: US stocks (IEX or SIP) and crypto, over the v2 WebSocket or by polling REST bars."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.alpaca import codec
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings, account_scope

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink

KEY_ENV = "APCA_API_KEY_ID"
SECRET_ENV = "APCA_API_SECRET_KEY"
#: The replica's development credentials (it refuses any other key).
DEV_KEY = "PKDEVELOPMENTKEY0001"
DEV_SECRET = "development-secret-not-for-production"
MODES = ("stream", "poll")
ENCODINGS = ("json", "msgpack")


class AlpacaSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.alpaca]``: the public hosts by default; the stock feed; streaming or polling."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL
    feed: str = "iex"  # stocks: "iex" (free plan) or "sip"
    mode: str = "stream"  # "poll": REST bars only, for accounts or networks without the stream
    encoding: str = "json"  # stream frames: "json" text, or "msgpack" binary (what alpaca-py asks for)
    poll_every_s: float = 60.0  # poll mode: seconds between two polls of the latest bars
    poll_share: float = 0.5  # poll mode: the share of the REST budget polling may spend (repairs get the rest)
    requests_per_min: int = codec.REQUESTS_PER_MIN  # historical API calls per minute of the plan
    #: Seconds before the next attempt after a refusal an immediate retry cannot fix (406: another
    #: connection of the key streams; 402: the key is refused).
    refused_retry_s: float = 60.0


class Alpaca(Venue):
    name = "alpaca"
    description = "Alpaca market data: US stocks (IEX/SIP) and crypto, WebSocket v2 or REST polling"
    settings_type = AlpacaSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    timeframes = tuple(codec.TIMEFRAME)
    omits_empty = True  # no bar for a minute without trades
    # Trade ids are not a per-symbol consecutive sequence: every candle the stream builds is checked
    # against the REST bars, once they have settled (see history_settle_ms).
    sequenced = False
    reconcile_every_s = 30.0
    history_trades = True  # bars carry ``n``
    #: A minute bar can change until the "updated bar" after the next half-minute mark.
    history_settle_ms = codec.SETTLE_MS

    #: BID and ASK candles from the ``quotes`` channel beside the trades' (``prices = ["bid", "ask"]``):
    #: the series ``alpaca:AAPL@bid`` and ``@ask``. No MID: the plain name is the trades' candles.
    quote_sides = ("bid", "ask")

    def calendar_name(self, symbol: str) -> str:
        # Extended-hours trades still make candles; the calendar only says where a quiet stretch
        # is a closed market rather than a hole (pre-market silence is not a loss).
        return "crypto" if codec.is_crypto(symbol) else "us_equity"

    def held_together(self, vs: VenueSettings) -> bool:
        """Streaming: one connection per account and feed, so one collector holds them all (not when polling)."""
        return getattr(vs, "mode", "stream") == "stream"

    def budget_scope(self, vs: VenueSettings) -> str | None:
        """Per account (its key): one connection per account and feed, 200 calls a minute per key."""
        return account_scope(os.environ.get(KEY_ENV, "").strip())

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.alpaca.feed import AlpacaFeed, AlpacaPollFeed, credentials

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, AlpacaSettings)  # its settings_type
        check_settings(vs)
        key, secret = credentials()
        if vs.mode == "poll":
            return AlpacaPollFeed(vs, key, secret)
        return AlpacaFeed(
            vs,
            key,
            secret,
            stale_after_s=settings.seconds("stale_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )

    replica_help = "Alpaca market data: REST bars and the stock and crypto WebSockets (JSON and msgpack) on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="AAPL,MSFT,BTC/USD",
            symbols_help="stock tickers (AAPL) and crypto pairs (BTC/USD)",
            rate=2.0,
            rate_help="trades per second of market time, per symbol",
            start_help=None,
            history="1h",
            history_help="market history generated before start-up",
            tape_help="write every trade to this CSV file (symbol,trade_id,time_ms,price,qty), at its event time",
            fault_kinds="close, reset, stall, drop, dup, reorder, garbage (WebSocket), http500, http429, slow (REST)",
        )
        parser.add_argument(
            "--requests-per-min", type=int, default=codec.REQUESTS_PER_MIN, help="historical API calls per minute"
        )
        parser.add_argument(
            "--late-every", type=int, default=7, help="one trade in N of the last second of a minute arrives late"
        )

    replica_example = "AAPL"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.alpaca.replica import AlpacaReplica

        return AlpacaReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.requests_per_min < 1:
            raise BadInput("--requests-per-min must be at least 1")
        if args.late_every < 0:
            raise BadInput("--late-every must be 0 (no late trades) or more")
        return {"requests_per_min": args.requests_per_min, "late_every": args.late_every}

    def replica_env(self, replica: ReplicaBase) -> dict[str, str]:
        return {KEY_ENV: DEV_KEY, SECRET_ENV: DEV_SECRET}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.alpaca.samples import fuzz_targets

        return fuzz_targets()


def check_settings(vs: AlpacaSettings) -> None:
    """:class:`BadInput` naming the fix for a setting Alpaca cannot use."""
    if vs.feed not in codec.STOCK_FEEDS:
        raise BadInput(
            f"[venues.alpaca] feed = {vs.feed!r} is not a stock feed; use one of {', '.join(codec.STOCK_FEEDS)}"
        )
    if vs.encoding not in ENCODINGS:
        raise BadInput(f'[venues.alpaca] encoding = {vs.encoding!r}; use "json" or "msgpack"')
    if vs.mode not in MODES:
        raise BadInput(f'[venues.alpaca] mode = {vs.mode!r}; use "stream" or "poll"')
    if not vs.poll_every_s >= 1.0:
        raise BadInput("[venues.alpaca] poll_every_s must be at least 1 (seconds between polls)")
    if not 0.0 < vs.poll_share < 1.0:
        raise BadInput("[venues.alpaca] poll_share must be above 0 and below 1 (repairs need the rest of the budget)")
    if vs.requests_per_min < 1:
        raise BadInput("[venues.alpaca] requests_per_min must be at least 1 (200 on the free plan)")
    if not vs.refused_retry_s >= 1.0:
        raise BadInput("[venues.alpaca] refused_retry_s must be at least 1 (seconds to wait after a refusal)")


VENUE = Alpaca()
__all__ = ["DEV_KEY", "DEV_SECRET", "KEY_ENV", "SECRET_ENV", "VENUE", "Alpaca", "AlpacaSettings"]
