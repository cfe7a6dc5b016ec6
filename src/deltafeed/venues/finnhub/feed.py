"""Finnhub's live side for the engine: one WebSocket per API key (Finnhub allows no more), one
subscribe message per symbol, trade messages of several items folded into the symbols' builders.

Finnhub items carry no ids, so each symbol's builder is fed synthetic consecutive ids, and every
(re)connection skips one: the candles a disconnection may touch are fetched again from Finnhub's
candle history once complete, as OANDA's are. A price update (volume 0, how Finnhub sends forex)
counts as one, so forex candles have volume = number of updates, the FX convention; trades keep
their volume.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Trade
from deltafeed.net.http import VenueError, VenueUnreachable, http_date_ms
from deltafeed.venues.base import FeedStatus, Shareable, SharedLimits, SkipLog, unmade
from deltafeed.venues.finnhub import VENUE
from deltafeed.venues.finnhub import codec as finnhub
from deltafeed.venues.finnhub.rest import FinnhubHistory
from deltafeed.venues.links import Link, LinkPool, Stream

if TYPE_CHECKING:
    from deltafeed.series import Series
    from deltafeed.venues.base import VenueSettings

log = logging.getLogger("deltafeed.finnhub")

TOKEN_ENV = "FINNHUB_TOKEN"


class FinnhubFeed(SharedLimits):
    """Streams Finnhub trades and price updates of its instruments into their builders."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(self, vs: VenueSettings, *, stale_after_s: float) -> None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise BadInput(f"Finnhub needs an API key: set {TOKEN_ENV} (never put it on the command line)")
        self.rest_url = vs.rest_url or finnhub.DEFAULT_REST_URL
        self.ws_base = vs.ws_url or vs.stream_url or finnhub.DEFAULT_WS_URL
        self._token = token
        self.clock = VenueClock()
        self.history = FinnhubHistory(self.rest_url, token)
        self.decoder = finnhub.StreamDecoder()
        self.states: list[Series] = []
        self._by_symbol: dict[str, Series] = {}
        self._next_id: dict[str, int] = {}
        self.out_of_order = 0
        self._skips = SkipLog(log, "messages")
        # One connection per key is Finnhub's rule: the pool refuses more symbols than it carries.
        self.pool: LinkPool[Series] = LinkPool.for_venue(
            VENUE,
            url=lambda link: finnhub.stream_url(self.ws_base, self._token),
            on_frame=self.on_frame,
            on_connect=self._on_connect,
            stale_after_s=stale_after_s,
        )

    def __repr__(self) -> str:  # the stream URL carries the key
        return f"<FinnhubFeed {finnhub.redact(self.ws_base)} {len(self.states)} instruments>"

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    @property
    def ws(self) -> Stream:
        """The one connection."""
        return self.pool.links[0].ws

    def add(self, st: Series) -> None:
        bad = unmade(st.builder.timeframes, tuple(finnhub.RESOLUTION))
        if bad:
            raise BadInput(
                f"Finnhub has no {', '.join(bad)} candles; use 1m 5m 15m 1h 1d (or a timeframe one of them"
                " divides, e.g. 3m, 2h, 1w) for Finnhub instruments"
            )
        self.pool.place(st, 1)
        self.states.append(st)
        self._by_symbol[st.instrument.symbol] = st
        self._next_id[st.instrument.symbol] = 1

    async def check(self) -> None:
        # Finnhub has no time endpoint and no symbol list for every exchange: the venue's time is
        # learned from the stream; the history endpoint answering proves the key and the address.
        st = self.states[0]
        try:
            await self.history.get(
                finnhub.candle_path(finnhub.symbol_kind(st.instrument.symbol), st.instrument.symbol, "D", 0, 86_400)
            )
            date_ms = http_date_ms(self.history.last_date)
            if date_ms is not None:
                self.clock.observe(date_ms)
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that Finnhub (or its replica) is running") from None
        except VenueError as exc:
            if exc.status in (401, 403):
                raise BadInput(f"Finnhub refused the key ({exc.status}); check {TOKEN_ENV}") from None
            if exc.status == 404:
                raise BadInput(
                    f"{self.history.http.base_url} has no Finnhub candle endpoint (404); the REST base ends in"
                    f" /api/v1, e.g. --rest-url {finnhub.DEFAULT_REST_URL}"
                ) from None

    def _on_connect(self, link: Link[Series], ws: Stream) -> None:
        # Whatever traded while we were away is unknown: skip an id so each symbol's next trade
        # reveals the hole; then subscribe (Finnhub remembers nothing across connections).
        for sym in self._next_id:
            self._next_id[sym] += 1
        for st in link.members:
            if st.active:
                link.send(ws, finnhub.subscribe(st.instrument.symbol))

    def start(self) -> None:
        self.pool.start()

    def connected(self) -> bool:
        return self.pool.connected()

    async def tick(self, mono: float) -> None:
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        await self.pool.tick(mono)

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``

    def control(self, subscribe: bool, states: list[Series]) -> None:
        for link, group in self.pool.by_link(states):
            for st in group:
                link.broadcast((finnhub.subscribe if subscribe else finnhub.unsubscribe)(st.instrument.symbol))

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        return await self.history.candles(
            st.instrument.symbol, timeframe, start_ms, end_ms, now_ms if now_ms is not None else self.clock.now_ms()
        )

    async def stop(self) -> None:
        await self.pool.stop()
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview) -> None:
        ev = self.decoder.decode(frame)  # prices and volumes checked there (finite, possible)
        if type(ev) is list:
            for t in ev:
                st = self._by_symbol.get(t.symbol)
                if st is None or not st.active:
                    continue
                if t.time_ms < st.last_trade_ms:
                    self.out_of_order += 1  # no ids: an older item cannot be placed in built candles
                    continue
                tid = self._next_id[t.symbol]
                self._next_id[t.symbol] = tid + 1
                st.on_trade(Trade(t.symbol, tid, t.time_ms, t.price, t.qty or 1.0, t.buyer_maker))
                self.clock.observe(t.time_ms)
        elif ev is None:
            self._log_errors()

    def _log_errors(self) -> None:
        self._skips.report(self.decoder.errors, self.decoder.last_error)

    # --- visibility -----------------------------------------------------------------------------

    def rest_limits(self) -> list[Shareable]:
        return [self.history.minute, self.history.second]  # the key's plan and Finnhub's cap per second

    def report(self) -> FeedStatus:
        return FeedStatus(
            **self.pool.counts(),
            out_of_order=self.out_of_order,
            skipped_frames=dict(self.decoder.errors),
            rest_requests=int(self.history.stats.get("requests", 0)),
            rest_throttled=int(self.history.stats.get("throttled", 0)),
            rest_server_errors=int(self.history.stats.get("server_errors", 0)),
            rest_limiter_waits=int(self.history.stats.get("limiter_waits", 0)),
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
