"""OANDA's live side for the engine: one chunked-HTTP pricing stream for every OANDA instrument of a
run, whose quotes become BID, ASK and MID candles (volume = number of quotes, the FX convention);
a reconnect is a hole the history repairs (see :mod:`deltafeed.candles.quotes`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from deltafeed.candles.quotes import QuoteRouter
from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Quote
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.lines import LineStream, StreamUnauthorized
from deltafeed.venues.base import FeedStatus, SkipLog
from deltafeed.venues.oanda import VENUE, OandaSettings
from deltafeed.venues.oanda import codec as oanda
from deltafeed.venues.oanda.rest import OandaHistory

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.oanda")

TOKEN_ENV = "OANDA_TOKEN"
ACCOUNT_ENV = "OANDA_ACCOUNT"


class OandaFeed:
    """Streams OANDA prices of its instruments into their price sides' builders."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(self, vs: OandaSettings, *, stale_after_s: float) -> None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise BadInput(f"OANDA needs an API token: set {TOKEN_ENV} (never put it on the command line)")
        self.account = (vs.account or os.environ.get(ACCOUNT_ENV, "")).strip()
        if not self.account:
            raise BadInput(f"OANDA needs an account id: set {ACCOUNT_ENV} or account in the config")
        self.rest_url = vs.rest_url or oanda.PRACTICE_REST_URL
        self.stream_url = vs.stream_url or oanda.PRACTICE_STREAM_URL
        self.clock = VenueClock()
        self.history = OandaHistory(self.rest_url, token, self.account)
        self.decoder = oanda.PriceDecoder()
        self.states: list[Series] = []
        self.router = QuoteRouter()
        self.heartbeats = 0
        self._skips = SkipLog(log, "lines")
        self.stream = LineStream(
            self._url,
            self.on_line,
            headers=oanda.auth_headers(token),
            name="oanda",
            stale_after_s=stale_after_s,
            on_disconnect=self._on_disconnect,
        )
        self._task: asyncio.Task[None] | None = None

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    def add(self, st: Series) -> None:
        if "1s" in st.builder.timeframes:
            raise BadInput("OANDA's finest candles are 5 seconds: drop 1s from --timeframes for OANDA instruments")
        self.states.append(st)
        self.router.add(st)

    def _url(self) -> str:
        symbols = sorted({st.instrument.symbol for st in self.states if st.active})
        # No snapshot: after a reconnect the last price would come again, counted twice; what was
        # missed is repaired from the candle history anyway.
        return oanda.stream_url(
            self.stream_url, self.account, symbols or [self.states[0].instrument.symbol], snapshot=False
        )

    async def check(self) -> None:
        try:
            self.clock.observe(await self.history.server_time())
            known = await self.history.symbols()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that OANDA (or its replica) is running") from None
        except VenueError as exc:
            raise BadInput(
                f"OANDA refused our first request ({exc}); check {TOKEN_ENV}, the account and --rest-url"
            ) from None
        unknown = sorted({st.instrument.symbol for st in self.states} - known)
        if unknown:
            raise BadInput(
                f"unknown instrument(s) on oanda at {self.rest_url}: {', '.join(unknown)}; "
                "OANDA writes them like EUR_USD"
            )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oanda-stream")

    async def _run(self) -> None:
        try:
            await self.stream.run()
        except StreamUnauthorized as exc:
            log.error("OANDA refused the pricing stream (%s); set a valid %s", exc, TOKEN_ENV)

    def connected(self) -> bool:
        return self.stream.connected.is_set()

    async def tick(self, mono: float) -> None:
        return None

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``; the stream's URL is rebuilt by control()

    def control(self, subscribe: bool, states: list[Series]) -> None:
        # OANDA fixes the instruments per stream: reconnect with the new list (the hole is repaired).
        if self.stream.connected.is_set():
            self.stream.drop("instruments changed")

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        return await self.history.candles(st.instrument.symbol, timeframe, start_ms, end_ms, now_ms, side=st.price)

    async def stop(self) -> None:
        await self.stream.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.history.close()

    # --- lines ----------------------------------------------------------------------------------

    def _on_disconnect(self, stream: LineStream, why: str) -> None:
        # Whatever was priced while we were away is unknown: the next quote of every instrument
        # reveals the hole.
        self.router.gap()

    def on_line(self, line: bytes) -> None:
        ev = self.decoder.decode(line)
        if type(ev) is Quote:
            if self.router.quote(ev.symbol, ev.time_ms, ev.bid, ev.ask):
                self.clock.observe(ev.time_ms)
        elif type(ev) is oanda.Heartbeat:
            self.heartbeats += 1
            self.clock.observe(ev.time_ms)
        elif ev is None:
            self._log_errors()

    def _log_errors(self) -> None:
        self._skips.report(self.decoder.errors, self.decoder.last_error)

    # --- visibility -----------------------------------------------------------------------------

    def report(self) -> FeedStatus:
        s = self.stream
        return FeedStatus(
            connected=s.connected.is_set(),
            connections=int(s.connected.is_set()),
            connects=s.connects,
            reconnects=max(0, s.connects - 1),
            rotations=0,
            stale_drops=s.stale_drops,
            connect_budget_waits=0,
            frames=s.frames,
            heartbeats=self.heartbeats,
            out_of_order=self.router.out_of_order,
            repeated_quotes=self.router.repeated,
            refused=self.router.refused,
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
