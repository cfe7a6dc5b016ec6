"""Finnhub: trades (and forex price updates) over WebSocket, candles over REST; no trade ids."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from deltafeed.model import BadInput
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, Venue, VenueSettings, account_scope, joined_pair
from deltafeed.venues.finnhub import codec
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class FinnhubSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.finnhub]``: Finnhub's public hosts by default (the key comes from FINNHUB_TOKEN)."""

    rest_url: str | None = codec.DEFAULT_REST_URL
    ws_url: str | None = codec.DEFAULT_WS_URL


class Finnhub(Venue):
    name = "finnhub"
    prefixed_symbols = True
    pair_form = None

    def unified_symbol(self, symbol: str) -> str | None:
        """``OANDA:EUR_USD`` is ``EUR/USD`` and ``BINANCE:BTCUSDT`` ``BTC/USDT`` (the pair as its
        source exchange spells it); a stock has none."""
        _, found, name = symbol.partition(":")
        if not found:
            return None
        for sep in ("_", "-", "/"):
            base, hit, quote = name.partition(sep)
            if hit and base and quote:
                return f"{base}/{quote}"
        return joined_pair(name)

    description = "Finnhub: trades WebSocket and REST candles (forex, crypto, US stocks)"
    settings_type = FinnhubSettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    timeframes = tuple(codec.RESOLUTION)
    omits_empty = True  # no candle for an interval without prices
    sequenced = False  # no ids: closed candles are provisional until reconciled with history
    reconcile_every_s = 60.0
    #: "1 API key can only open 1 connection at a time", 50 symbols on the free plan [3P]; one
    #: subscribe message per symbol; connection attempts: 60 a minute (chosen).
    stream_limits = StreamLimits(
        per_connection=codec.MAX_SYMBOLS,
        per_message=1,
        max_connections=1,
        connects=60,
        connect_window_s=60.0,
        source="Finnhub WebSocket trades docs (one connection per key); symbol cap from the pricing page [3P]",
    )
    history_trades = False  # its REST candles have no trade count

    def calendar_name(self, symbol: str) -> str:
        """Forex follows the FX week, US stocks their exchanges' regular sessions, crypto never closes."""
        kind = codec.symbol_kind(symbol)
        suffix = symbol.rpartition(".")[2] if "." in symbol else ""
        if kind == "stock" and len(suffix) >= 2:  # BRK.B is a US share class; BMW.DE, 7203.T are not US
            return "crypto"  # no calendar for other countries' exchanges yet: always expected
        return {"forex": "fx", "stock": "us_equity"}.get(kind, "crypto")

    def held_together(self, vs: VenueSettings) -> bool:
        """One WebSocket per API key: one collector holds every Finnhub instrument."""
        return True

    def budget_scope(self, vs: VenueSettings) -> str | None:
        """Per API key: one connection and the plan's calls a minute per key."""
        from deltafeed.venues.finnhub.feed import TOKEN_ENV

        return account_scope(os.environ.get(TOKEN_ENV, "").strip())

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.finnhub.feed import FinnhubFeed

        return FinnhubFeed(settings.venue_settings(self.name), stale_after_s=settings.seconds("stale_after"))

    replica_help = "Finnhub: trades WebSocket and REST candles on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="OANDA:EUR_USD,BINANCE:BTCUSDT,AAPL",
            symbols_help="Finnhub names: OANDA:AAA_BBB (forex), EXCHANGE:PAIR (crypto), TICKER (US stock)",
            rate_help="trades (or forex price updates) per second of open market time, per symbol",
            start_help="market time at start-up (default now; stocks trade 09:30-16:00 New York on "
            "weekdays), e.g. 2026-03-04T15:00:00Z",
            history="1d",
            tape_help="write every streamed item to this CSV file (symbol,trade_id,time_ms,price,qty)",
            fault_kinds="close, reset, stall, garbage (WebSocket), http500, http429, slow (REST)",
        )
        parser.add_argument("--token", help="the API key every request must carry (default: any non-empty key)")

    replica_example = "BINANCE:BTCUSDT"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.finnhub.replica import FinnhubReplica

        return FinnhubReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.token is not None and not args.token:
            raise BadInput("--token is empty; give a key, or leave it out to accept any key")
        return {"token": args.token}

    def replica_env(self, replica: ReplicaBase) -> dict[str, str]:
        from deltafeed.venues.finnhub.feed import TOKEN_ENV

        return {TOKEN_ENV: getattr(replica, "token", None) or "deltafeed-dev-key"}  # None: any key passes

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.finnhub.samples import fuzz_targets

        return fuzz_targets()


VENUE = Finnhub()
