"""Dukascopy: free forex tick history as one ``.bi5`` file per instrument and hour (a history source)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from deltafeed.venues.base import HTTP_SCHEMES, TickHistory, TickSource, Venue, VenueSettings
from deltafeed.venues.dukascopy import codec

if TYPE_CHECKING:
    from deltafeed.replicas.server import ReplicaBase
    from deltafeed.venues.base import FuzzTarget


class DukascopySettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    """``[venues.dukascopy]``: the public tick-file host by default."""

    rest_url: str | None = codec.DEFAULT_BASE_URL


class _Ticks:
    """Dukascopy's hour files as a :class:`~deltafeed.venues.base.TickSource`."""

    file_ms = codec.HOUR_MS
    default_url = codec.DEFAULT_BASE_URL
    decode_error: type[Exception] = codec.Bi5Error

    def symbol(self, symbol: str) -> str:
        name = codec.dukascopy_symbol(symbol)
        codec.price_scale(name)  # BadInput for an instrument whose files we cannot decode
        return name

    def history(self, url: str, *, concurrency: int, requests_per_s: float, retries: int) -> TickHistory:
        from deltafeed.venues.dukascopy.rest import DukascopyHistory

        return DukascopyHistory(url, concurrency=concurrency, requests_per_s=requests_per_s, retries=retries)


class Dukascopy(Venue):
    name = "dukascopy"
    pair_form = None
    description = "Dukascopy tick history: .bi5 hour files (forex), a history source for backfill"
    settings_type = DukascopySettings
    urls = {"rest_url": HTTP_SCHEMES}  # noqa: RUF012
    quotes = True

    def calendar_name(self, symbol: str) -> str:
        return "fx"

    def tick_source(self) -> TickSource:
        return _Ticks()

    replica_help = "Dukascopy tick history: .bi5 hour files from a seeded FX quote market"

    def add_replica_args(self, parser: argparse.ArgumentParser) -> None:
        from deltafeed.replicas.cli import add_common_args

        add_common_args(
            parser,
            symbols="EURUSD,USDJPY,GBPUSD",
            symbols_help="Dukascopy names, e.g. EURUSD,USDJPY",
            rate_help="quotes per second of open market time, per symbol",
            start_help="market time at start-up (default now), e.g. 2026-01-09T12:00:00Z",
            history="7d",
            history_help="market history before --start that hour files cover",
            tape_help="write every quote it serves to this CSV file (symbol,time_ms,bid,ask)",
            fault_kinds="http500, http429, slow (e.g. http500=2)",
        )

    replica_example = "EURUSD"

    def replica_class(self) -> type[ReplicaBase]:
        from deltafeed.venues.dukascopy.replica import DukascopyReplica

        return DukascopyReplica

    async def serve_replica(self, replica: ReplicaBase, symbols: list[str] | None = None) -> None:
        from deltafeed.venues.dukascopy.replica import DukascopyReplica, serve

        assert isinstance(replica, DukascopyReplica)
        await serve(replica)

    def fuzz_targets(self) -> list[FuzzTarget]:
        from deltafeed.venues.dukascopy.samples import fuzz_targets

        return fuzz_targets()


VENUE = Dukascopy()
