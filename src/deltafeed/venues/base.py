"""What the engine asks of a venue's live side (a feed), and which feed serves which venue.

A feed owns everything venue-specific: the streaming connection(s), the decoder, the REST history
client and the venue's clock. It folds events into the candle builders of its series
(:class:`~deltafeed.series.Series`) and answers the engine's history requests. Everything
else (stores, repairs, marks, audits, serving) is the engine's and is the same for every venue.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Trade

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.series import Series


class FeedStatus(msgspec.Struct, omit_defaults=True):
    """A feed's counters, as ``venues.<venue>`` of the engine's status (the one schema the HTTP
    status, the metrics, the status file and ``deltafeed status`` read). The fields after
    ``rest_limiter_waits`` are only some venues'; those a venue leaves at None are not sent."""

    connected: bool
    connections: int  # live connections (two while a rotation overlaps)
    connects: int
    reconnects: int  # connects after a lost connection (rotations excluded)
    rotations: int  # planned replacements without a gap
    stale_drops: int  # connections dropped for going silent
    connect_budget_waits: int
    frames: int
    skipped_frames: dict[str, int]  # frames or lines skipped, by kind
    rest_requests: int
    rest_throttled: int
    rest_server_errors: int
    rest_limiter_waits: int
    heartbeats: int | None = None  # OANDA
    out_of_order: int | None = None  # id-less venues: items older than the last one applied
    repeated_quotes: int | None = None  # quote venues
    refused: int | None = None  # quote venues: impossible prices
    max_open_connections: int | None = None  # IG
    chart_candles: int | None = None  # IG
    allowance: list[int | None] | None = None  # IG: the weekly history allowance
    rest_shared_answers: int | None = None  # IG
    lost_quotes: int | None = None  # IG

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (what a feed's ``status()`` gives)."""
        out: dict[str, Any] = msgspec.to_builtins(self)
        return out


class Feed(Protocol):
    venue: str
    clock: VenueClock
    #: True when the venue's history has no candle for an interval without prices (OANDA): a
    #: REST answer then covers its whole range, whatever candles it holds.
    omits_empty: bool
    #: True when trade ids are the venue's own consecutive sequence (Binance): the candle builder
    #: then vouches for what an unbroken run covers. False (quotes, Finnhub): every candle the
    #: stream builds stays provisional until reconciled with the venue's history.
    sequenced: bool
    #: How often (wall seconds) closed provisional candles are reconciled with the venue's history;
    #: 0 for a sequenced venue.
    reconcile_every_s: float

    @property
    def errors(self) -> Counter[str]:
        """Frames or lines skipped, by kind."""
        ...

    def calendar_name(self, symbol: str) -> str:
        """The market calendar ``symbol`` follows on this venue (see ``candles/calendar.py``)."""
        ...

    def sides(self, wanted: list[str]) -> list[str]:
        """The price sides to build for an instrument whose settings ask for ``wanted``: ["trade"]
        for a trade-built venue, else ``wanted`` (some of mid, bid, ask)."""
        ...

    def add(self, st: Series) -> None:
        """Take a series to stream (before :meth:`check`)."""
        ...

    async def check(self) -> None:
        """Read the venue's time and check the symbols; :class:`BadInput` naming the fix."""
        ...

    def start(self) -> None:
        """Start streaming (a task)."""
        ...

    async def tick(self, mono: float) -> None:
        """Called every engine tick: learn the venue's time, keep connections fresh."""
        ...

    def connected(self) -> bool: ...

    def activate(self, st: Series, active: bool) -> None:
        """Route (or stop routing) events to ``st``."""
        ...

    def control(self, subscribe: bool, states: list[Series]) -> None:
        """Subscribe to or unsubscribe from ``states`` on the live connection."""
        ...

    def page_span_ms(self, timeframe: str) -> int: ...

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """``st``'s candles from the venue's history, ``closed`` as the venue says."""
        ...

    async def stop(self) -> None: ...

    def report(self) -> FeedStatus:
        """The feed's counters (see :class:`FeedStatus`)."""
        ...

    def status(self) -> dict[str, Any]:
        """:meth:`report` as plain values."""
        ...


TradeSink = Callable[["Series", Trade], None]


class SkipLog:
    """Logs each kind of skipped frame or line once; the counts live in the decoder's ``errors``
    (and reach the status), so a stream of bad input never floods the log."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._seen: set[str] = set()

    def report(self, errors: Counter[str], first: str) -> None:
        for kind in errors.keys() - self._seen:
            self._seen.add(kind)
            self._log.warning("skipping %s %s (first: %s); counted in status", kind, self._what, first)


def make_feed(venue: str, settings: Settings, on_trade: TradeSink) -> Feed:
    """The feed for ``venue`` with the run's settings."""
    vs = settings.venue_settings(venue)
    if venue == "binance":
        from deltafeed.venues.binance.feed import BinanceFeed

        return BinanceFeed(
            vs,
            venue_klines=settings.venue_klines,
            stale_after_s=settings.seconds("stale_after"),
            rotate_after_s=settings.seconds("rotate_after"),
            connect_budget=settings.connect_budget,
            on_trade=on_trade,
        )
    if venue == "oanda":
        from deltafeed.venues.oanda.feed import OandaFeed

        return OandaFeed(vs, stale_after_s=settings.seconds("stale_after"))
    if venue == "ig":
        from deltafeed.venues.ig.feed import IGFeed

        return IGFeed(vs, stale_after_s=settings.seconds("stale_after"))
    if venue == "finnhub":
        from deltafeed.venues.finnhub.feed import FinnhubFeed

        return FinnhubFeed(vs, stale_after_s=settings.seconds("stale_after"))
    raise BadInput(f"unknown venue {venue!r}")
