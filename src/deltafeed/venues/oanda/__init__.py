"""OANDA v20: bid/ask prices over a chunked HTTP stream, candles per price side over REST."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from deltafeed.venues.base import HTTP_SCHEMES, Venue, VenueSettings
from deltafeed.venues.links import StreamLimits
from deltafeed.venues.oanda import codec

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class OandaSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.oanda]``: the practice hosts by default, and the account (else OANDA_ACCOUNT)."""

    rest_url: str | None = codec.PRACTICE_REST_URL
    stream_url: str | None = codec.PRACTICE_STREAM_URL
    account: str | None = None


class Oanda(Venue):
    name = "oanda"
    pair_form = "{base}_{quote}"
    description = "OANDA v20: REST candles and the HTTP pricing stream (forex)"
    settings_type = OandaSettings
    urls = {"rest_url": HTTP_SCHEMES, "stream_url": HTTP_SCHEMES}  # noqa: RUF012
    quotes = True
    timeframes = tuple(codec.GRANULARITY)
    omits_empty = True  # no candle for an interval without prices
    sequenced = False  # no ids: closed candles are provisional until reconciled with history
    reconcile_every_s = 5.0
    #: Per IP: 20 active streams, 2 new connections a second [OANDA development guide]; a stream's
    #: instruments are named in its URL, and OANDA documents no cap on them: 50 are chosen.
    stream_limits = StreamLimits(
        per_connection=codec.INSTRUMENTS_PER_STREAM,
        max_connections=codec.MAX_STREAMS,
        connects=2,
        connect_window_s=1.0,
        source="OANDA v20 development guide (limits); instruments per stream chosen",
    )

    def calendar_name(self, symbol: str) -> str:
        return "fx"

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.oanda.feed import OandaFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, OandaSettings)  # its settings_type
        return OandaFeed(vs, stale_after_s=settings.seconds("stale_after"))

    replica_help = "OANDA v20 market data: REST candles and the pricing stream on one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import FX_START_HELP, add_common_args

        add_common_args(
            parser,
            symbols="EUR_USD,USD_JPY,GBP_USD",
            symbols_help="OANDA names, e.g. EUR_USD,USD_JPY",
            rate_help="quotes per second of open market time, per instrument",
            start_help=FX_START_HELP,
            history="1d",
            tape_help="write every quote to this CSV file (symbol,time_ms,bid,ask)",
            fault_kinds="close, reset, stall, drop, dup, reorder, garbage (stream), http500, http429, slow (REST)",
        )
        parser.add_argument(
            "--token",
            default="deltafeed-oanda-dev-token",
            help="the bearer token every request must carry (default deltafeed-oanda-dev-token)",
        )

    replica_example = "EUR_USD"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.oanda.replica import OandaReplica

        return OandaReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"token": args.token}

    def replica_env(self, replica: ReplicaBase) -> dict[str, str]:
        from deltafeed.venues.oanda.feed import ACCOUNT_ENV, TOKEN_ENV
        from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN

        return {TOKEN_ENV: getattr(replica, "token", None) or DEV_TOKEN, ACCOUNT_ENV: DEFAULT_ACCOUNT}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.oanda.samples import fuzz_targets

        return fuzz_targets()


VENUE = Oanda()
