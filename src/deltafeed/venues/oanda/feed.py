"""OANDA's live side for the engine: chunked-HTTP pricing streams of the OANDA instruments of a run,
as many as OANDA's stream limits need (instruments per stream, 20 streams per IP), whose quotes
become BID, ASK and MID candles (volume = number of quotes, the FX convention); a reconnect is a hole
the history repairs (see :mod:`deltafeed.candles.quotes`)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deltafeed.candles.quotes import QuoteRouter
from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Quote
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.lines import PROCESS_BUDGET, LineStream, StreamUnauthorized
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import FrameSink
from deltafeed.venues.base import FeedStatus, SharedLimits, SkipLog
from deltafeed.venues.links import Link, LinkPool, Stream
from deltafeed.venues.oanda import VENUE, OandaSettings
from deltafeed.venues.oanda import codec as oanda
from deltafeed.venues.oanda.rest import OandaHistory

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.oanda")

TOKEN_ENV = "OANDA_TOKEN"
ACCOUNT_ENV = "OANDA_ACCOUNT"


class OandaFeed(SharedLimits):
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
        self.stale_after_s = stale_after_s
        self._headers = oanda.auth_headers(token)
        self.pool: LinkPool[str] = LinkPool.for_venue(  # members: instruments (each may have several price sides)
            VENUE,
            url=self._url,
            on_frame=lambda line: self.on_line(bytes(line)),  # lines are bytes: no copy
            budget=PROCESS_BUDGET,  # OANDA's 2 new connections a second, REST's included
            make_stream=self._new_stream,
        )

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    @property
    def stream(self) -> Stream:
        """The first stream (the only one for runs of up to 50 instruments)."""
        return self.pool.links[0].ws

    def add(self, st: Series) -> None:
        if "1s" in st.builder.timeframes:
            raise BadInput("OANDA's finest candles are 5 seconds: drop 1s from --timeframes for OANDA instruments")
        sym = st.instrument.symbol
        if all(s.instrument.symbol != sym for s in self.states):
            self.pool.place(sym, 1, len(sym) + 1)
        self.states.append(st)
        self.router.add(st)

    def _new_stream(
        self,
        link: Link[Any],
        url: Callable[[], str],
        sink: FrameSink,
        on_connect: Callable[[Any], None],
        budget: ConnectBudget,
    ) -> LineStream:
        def on_line(line: bytes) -> None:
            sink(line)

        # Whatever was priced while a stream was away is unknown: the next quote of each of its
        # instruments reveals the hole.
        return LineStream(
            url,
            on_line,
            headers=self._headers,
            name=link.name,
            stale_after_s=self.stale_after_s,
            budget=budget,
            on_connect=on_connect,
            on_disconnect=lambda stream, why: self.router.gap(link.members),
        )

    def _url(self, link: Link[str]) -> str:
        active = {st.instrument.symbol for st in self.states if st.active}
        symbols = sorted(s for s in link.members if s in active)
        # No snapshot: after a reconnect the last price would come again, counted twice; what was
        # missed is repaired from the candle history anyway.
        return oanda.stream_url(self.stream_url, self.account, symbols or link.members[:1], snapshot=False)

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
        self.pool.start()
        for link in self.pool.links:
            if link.task is not None:
                link.task.add_done_callback(self._ended)

    @staticmethod
    def _ended(task: Any) -> None:
        exc = None if task.cancelled() else task.exception()
        if isinstance(exc, StreamUnauthorized):
            log.error("OANDA refused the pricing stream (%s); set a valid %s", exc, TOKEN_ENV)

    def connected(self) -> bool:
        return self.pool.connected()

    async def tick(self, mono: float) -> None:
        await self.pool.tick(mono)

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``; the stream's URL is rebuilt by control()

    def control(self, subscribe: bool, states: list[Series]) -> None:
        # OANDA fixes the instruments per stream: reconnect their streams with the new lists (the hole
        # is repaired).
        for link, _ in self.pool.by_link(list(dict.fromkeys(st.instrument.symbol for st in states))):
            if link.ws.connected.is_set():
                link.ws.drop("instruments changed")

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        return await self.history.candles(st.instrument.symbol, timeframe, start_ms, end_ms, now_ms, side=st.price)

    async def stop(self) -> None:
        await self.pool.stop()
        await self.history.close()

    # --- lines ----------------------------------------------------------------------------------

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
        counts = self.pool.counts()
        counts["connect_budget_waits"] = 0  # the process's budget: REST's waits are not the stream's
        return FeedStatus(
            **counts,
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
