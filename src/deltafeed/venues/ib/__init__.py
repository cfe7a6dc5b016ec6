"""Interactive Brokers through TWS / IB Gateway: tick-by-tick trades and quotes, bars from history.

Instruments name IB contracts: ``ib:AAPL`` (a stock on SMART in USD), ``ib:EUR.USD`` (IDEALPRO
forex: MID, BID and ASK candles from bid/ask ticks) and ``ib:ES.202703`` (a future by root and
contract month, on its CME Group exchange). ``[venues.ib] exchange`` and ``currency`` tables give
another exchange or currency per instrument, e.g. ``exchange = {"SAP" = "IBIS"}``,
``currency = {"SAP" = "EUR"}``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import msgspec

from deltafeed.model import BadInput
from deltafeed.venues.base import Venue, VenueSettings
from deltafeed.venues.ib import codec

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import Feed, FuzzTarget, TradeSink

TWS_SCHEMES = ("tws://",)
#: TWS's paper-trading API port (live TWS: 7496; IB Gateway: 4002 paper, 4001 live).
DEFAULT_TWS_URL = "tws://127.0.0.1:7497"


def tws_address(url: str | None) -> tuple[str, int]:
    """(host, port) of a ``tws://HOST:PORT`` address; :class:`BadInput` naming the fix."""
    text = url or DEFAULT_TWS_URL
    host, sep, port = text.removeprefix("tws://").rstrip("/").rpartition(":")
    if not text.startswith("tws://") or not sep or not port.isdigit() or not host:
        raise BadInput(f"[venues.ib] tws_url {text!r} is not like tws://127.0.0.1:7497 (TWS's API socket port)")
    return host.strip("[]"), int(port)


class IbSettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.ib]``: where TWS or IB Gateway listens, our client id, and per-instrument contracts."""

    tws_url: str | None = DEFAULT_TWS_URL
    #: Every API client of one TWS needs its own id (0 also receives orders placed in TWS itself).
    client_id: int = 17
    #: Instruments streamed tick by tick; the others stream 5-second real-time bars. IB allows at
    #: least 3 tick-by-tick subscriptions (more with market-depth lines).
    tick_by_tick_lines: int = 3
    #: The account's concurrent market-data lines (IB's floor is 100): every instrument streamed takes
    #: one (a forex pair on real-time bars three, one per price), and a run needing more is refused.
    market_data_lines: int = 100
    exchange: dict[str, str] = msgspec.field(default_factory=dict)
    currency: dict[str, str] = msgspec.field(default_factory=dict)


class Ib(Venue):
    name = "ib"
    description = "Interactive Brokers via TWS / IB Gateway: tick-by-tick trades and forex quotes, history bars"
    settings_type = IbSettings
    urls = {"tws_url": TWS_SCHEMES}  # noqa: RUF012
    quotes = False  # stocks and futures; forex pairs say so per symbol (quoted)
    timeframes = tuple(codec.BAR_SIZES)
    omits_empty = True  # IB has no bar for an interval without trades (or quotes)
    sequenced = False  # ticks carry no id and whole seconds: reconciled with history
    reconcile_every_s = 5.0

    def quoted(self, symbol: str) -> bool:
        try:
            return codec.contract_for(symbol).quotes
        except BadInput:
            return False

    def calendar_name(self, symbol: str) -> str:
        try:
            kind = codec.contract_for(symbol).sec_type
        except BadInput:
            return "us_equity"
        return {"CASH": "fx", "FUT": "cme_globex"}.get(kind, "us_equity")

    def budget_scope(self, vs: VenueSettings) -> str | None:
        """Per TWS / IB Gateway session (its pacing rules are the session's): the ``tws_url``'s host
        and port, with this machine's name when the host is a loopback address (each machine's own)."""
        import ipaddress
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(getattr(vs, "tws_url", None) or DEFAULT_TWS_URL)
        host = parts.hostname or "127.0.0.1"
        try:
            local = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            local = False
        where = f"{socket.gethostname()}/{host}" if local else host
        return f"tws-{where}:{parts.port or 7497}"

    def make_feed(self, settings: Settings, on_trade: TradeSink) -> Feed:
        from deltafeed.venues.ib.feed import IbFeed

        vs = settings.venue_settings(self.name)
        assert isinstance(vs, IbSettings)  # its settings_type
        return IbFeed(vs, stale_after_s=settings.seconds("stale_after"))

    replica_help = "a TWS / IB Gateway socket API (ib_async connects to it): ticks, bars, history, pacing"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="AAPL,EUR.USD,ES.202703",
            symbols_help="IB names: stocks AAPL, forex EUR.USD, futures ES.202703",
            rate_help="trades (stocks, futures) or quotes (forex) per second of open market time, per instrument",
            start_help="market time at start-up, ISO-8601 (default now); stocks trade only in their regular "
            "session (09:30-16:00 New York, weekdays), futures in the CME Globex week, forex in the FX week",
            history="1h",
            tape_help="write every trade to this CSV file (symbol,trade_id,time_ms,price,qty), forex quotes "
            "beside it as <name>.quotes.csv (symbol,time_ms,bid,ask)",
            fault_kinds="close, reset, stall, garbage, connectivity (IB's 1100 then 1101/1102)",
        )
        parser.add_argument(
            "--tick-by-tick-limit",
            type=int,
            default=5,
            help="tick-by-tick subscriptions allowed per connection, then error 10190 (default 5)",
        )

    replica_example = "AAPL"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.ib.replica import IbReplica

        return IbReplica

    def replica_extras(self, args: argparse.Namespace) -> dict[str, Any]:
        if args.tick_by_tick_limit < 0:
            raise BadInput("--tick-by-tick-limit must be 0 or more")
        return {"max_tick_by_tick": args.tick_by_tick_limit}

    def replica_settings(self, replica: ReplicaBase) -> dict[str, Any]:
        return {"tws_url": f"tws://{replica.netloc}"}

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.ib.samples import fuzz_targets

        return fuzz_targets()


VENUE = Ib()
