"""IG Markets: REST login and price history, Lightstreamer TLCP over WebSocket (forex CFDs)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from deltafeed.venues.base import HTTP_SCHEMES, Venue, VenueSettings, account_scope
from deltafeed.venues.links import StreamLimits

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink


class IGSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.ig]``: IG's demo hosts by default (credentials come from IG_API_KEY, IG_USERNAME,
    IG_PASSWORD; the streaming address from the login answer)."""

    rest_url: str | None = "https://demo-api.ig.com/gateway/deal"
    stream_url: str | None = "https://demo-apd.marketdatasystems.com"


class IG(Venue):
    name = "ig"
    pair_form = None

    def unified_symbol(self, symbol: str) -> str | None:
        """A currency epic (``CS.D.EURUSD.MINI.IP``) names its pair in its third part: ``EUR/USD``."""
        parts = symbol.split(".")
        pair = parts[2] if len(parts) >= 3 and parts[0] == "CS" else ""
        return f"{pair[:3]}/{pair[3:]}" if len(pair) == 6 and pair.isalpha() else None

    description = "IG Markets: REST prices and Lightstreamer streaming (forex)"
    settings_type = IGSettings
    urls = {"rest_url": HTTP_SCHEMES, "stream_url": HTTP_SCHEMES}  # noqa: RUF012
    quotes = True
    timeframes = ("1m", "5m", "15m", "1h", "4h", "1d")
    omits_empty = True  # no price row for an interval without prices
    sequenced = False  # no ids: closed candles are provisional until reconciled with history
    reconcile_every_s = 60.0
    #: "By default, up to 40 simultaneous subscriptions per connection" (IG's Streaming API Guide);
    #: its sessions are packed by :class:`~deltafeed.venues.ig.pool.TlcpPool` (Lightstreamer, not
    #: :mod:`deltafeed.venues.links`), which takes this figure.
    stream_limits = StreamLimits(per_connection=40, source="IG Streaming API Guide")

    def calendar_name(self, symbol: str) -> str:
        return "fx"

    def budget_scope(self, vs: VenueSettings) -> str | None:
        """Per account (API key and user name): IG's request allowances and Lightstreamer sessions are the account's."""
        from deltafeed.venues.ig.feed import CREDENTIAL_ENVS

        key, user, _password = (os.environ.get(name, "").strip() for name in CREDENTIAL_ENVS)
        return account_scope(key, user)

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.ig.feed import IGFeed

        return IGFeed(settings.venue_settings(self.name), stale_after_s=settings.seconds("stale_after"))

    replica_help = "IG Markets: REST login and prices, Lightstreamer TLCP over WebSocket, one port"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import FX_START_HELP, add_common_args

        add_common_args(
            parser,
            symbols="CS.D.EURUSD.CFD.IP,CS.D.USDJPY.CFD.IP,CS.D.GBPUSD.CFD.IP",
            symbols_metavar="EPICS",
            symbols_help="IG FX epics, CS.D.<BASE><QUOTE>.<product>.IP (CS.D.EURUSD.CFD.IP is the pair EUR_USD)",
            rate_help="quotes per second of open market time, per epic",
            start_help=FX_START_HELP,
            history="1d",
            tape_help="write every quote to this CSV file (symbol,time_ms,bid,ask; symbol = the epic)",
            fault_kinds="close, reset, stall, overflow (streaming sessions), http500, http429, slow (REST)",
        )
        parser.add_argument("--api-key", help="the X-IG-API-KEY logins must carry (default: any non-empty key)")
        parser.add_argument("--username", help="the login identifier (default: any non-empty one)")
        parser.add_argument("--password", help="the login password (default: any non-empty one)")

    replica_example = "CS.D.EURUSD.CFD.IP"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.ig.replica import IGReplica

        return IGReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"api_key": args.api_key, "username": args.username, "password": args.password}

    def replica_env(self, replica: ReplicaBase) -> dict[str, str]:
        from deltafeed.venues.ig.feed import CREDENTIAL_ENVS

        # The replica's own credentials, or any non-empty ones where it accepts any (None).
        own = (
            getattr(replica, "api_key", None),
            getattr(replica, "username", None),
            getattr(replica, "password", None),
        )
        return {env: value or "deltafeed-dev" for env, value in zip(CREDENTIAL_ENVS, own, strict=True)}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.ig.samples import fuzz_targets

        return fuzz_targets()


VENUE = IG()
