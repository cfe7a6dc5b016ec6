"""Kraken's live side for the engine: WebSocket v2 connections subscribed to ``trade`` (and
``ohlc`` for forming candles) of the Kraken pairs of a run, as many as Kraken's stream limits need,
decoded into the pairs' candle builders; history from REST OHLC or Trades."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Trade, VenueCandle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.venues.base import FeedStatus, SharedLimits, SkipLog
from deltafeed.venues.checks import unknown_symbols_message
from deltafeed.venues.kraken import VENUE, KrakenSettings
from deltafeed.venues.kraken import codec as kraken
from deltafeed.venues.kraken.rest import KrakenHistory
from deltafeed.venues.links import Link, LinkPool, Stream, forget_member

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.kraken")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible


class KrakenFeed(SharedLimits):
    """Streams trades of its pairs into their builders; ``on_trade(series, trade)`` is called after.

    Continuity comes from ``trade_id`` (sequential per pair): a reconnect resubscribes with a
    snapshot of the last 50 trades, the builder drops the ones it has and a jump beyond them is a
    hole the engine repairs from history. ``ohlc`` candles (with ``venue_klines``) are merged only
    as forming candles, and only when they hold exactly the trades seen: Kraken never says one is
    closed, and they carry no trade id.
    """

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(
        self,
        vs: KrakenSettings,
        *,
        venue_klines: bool,
        stale_after_s: float,
        connect_budget: int,
        on_trade: Callable[[Series, Trade], None],
    ) -> None:
        self.settings = vs
        self.rest_url = vs.rest_url or kraken.DEFAULT_REST_URL
        self.ws_url = vs.ws_url or kraken.DEFAULT_WS_URL
        self.clock = VenueClock()
        self.history = KrakenHistory(self.rest_url, vs.rest_rate_per_s, vs.rest_burst)
        self.decoder = kraken.StreamDecoder()
        self.states: list[Series] = []
        self.by_symbol: dict[str, Series] = {}
        self.pairs: dict[str, str] = {}  # WS v2 symbol -> REST altname
        self.venue_klines = venue_klines
        self.stale_after_s = stale_after_s
        self._on_trade = on_trade
        self._req_id = 0
        self.pool: LinkPool[Series] = LinkPool.for_venue(
            VENUE,
            url=self.ws_url,
            on_frame=self.on_frame,
            on_connect=self._on_connect,
            connect_budget=connect_budget,
            stale_after_s=stale_after_s,
        )
        self._skips = SkipLog(log, "frames")
        self._last_id: dict[str, int] = {}
        self.refused_symbols: dict[str, str] = {}
        self._server_ms = 0
        self._ts_low = 0
        self._ts_high = 2**62

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    @property
    def ws(self) -> Stream:
        """The first connection (the only one for runs of up to ~100 pairs)."""
        return self.pool.links[0].ws

    def remove(self, st: Series) -> None:
        """Forget an instrument the engine dropped (unsubscribed already): its link has room again."""
        forget_member(self.pool, self.states, self.by_symbol, st.instrument.symbol, st)

    def add(self, st: Series) -> None:
        self.pool.place(st, 1 + (len(self._native(st)) if self.venue_klines else 0))
        self.states.append(st)
        self.by_symbol[st.instrument.symbol] = st

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    def _pair(self, symbol: str) -> str:
        return self.pairs.get(symbol) or kraken.rest_names(symbol)[0]

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        # Our estimate of the venue's clock only places OHLC's 720-row window (a wrong guess falls back
        # to Trades); what is closed is the venue's word. So a repair costs one request, not two.
        now = now_ms if now_ms is not None else self.clock.now_ms()
        return await self.history.candles(self._pair(st.instrument.symbol), timeframe, start_ms, end_ms, now)

    async def check(self) -> None:
        """Read the venue's time and check every pair exists; :class:`BadInput` naming the fix."""
        try:
            self.clock.observe(await self.history.server_time())
            self.pairs = await self.history.pairs()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that the venue (or replica) is running") from None
        except VenueError as exc:
            raise BadInput(f"the venue refused our first request ({exc}); check --rest-url") from None
        unknown = [st.instrument.symbol for st in self.states if st.instrument.symbol not in self.pairs]
        if unknown:
            raise BadInput(unknown_symbols_message("kraken", self.rest_url, unknown, self.pairs))
        self.update_skew_bounds()

    def connected(self) -> bool:
        return self.pool.connected()

    def start(self) -> None:
        self.pool.start()

    def update_skew_bounds(self) -> None:
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self.update_skew_bounds()
        await self.pool.tick(mono)

    # --- subscriptions ------------------------------------------------------------------------------

    def _send(self, link: Link[Series], ws: Stream, subscribe: bool, states: list[Series]) -> None:
        """Subscribe (or unsubscribe) ``states`` on ``ws``: ``trade`` of each, ``ohlc`` of its native
        timeframes, as many pairs a request as Kraken's limits allow, paced."""
        if not states or not ws.connected.is_set():
            return
        make = kraken.subscribe if subscribe else kraken.unsubscribe
        chunks = self.pool.limits.chunks
        for part in chunks([st.instrument.symbol for st in states]):
            self._req_id += 1
            link.send(ws, make("trade", list(part), self._req_id, snapshot=True))
        if self.venue_klines:
            for minutes in sorted({kraken.OHLC_INTERVALS[tf] for st in states for tf in self._native(st)}):
                symbols = [
                    st.instrument.symbol
                    for st in states
                    if minutes in {kraken.OHLC_INTERVALS[tf] for tf in self._native(st)}
                ]
                for part in chunks(symbols):
                    self._req_id += 1
                    link.send(ws, make("ohlc", list(part), self._req_id, interval=minutes, snapshot=False))

    @staticmethod
    def _native(st: Series) -> list[str]:
        return [tf for tf in st.builder.timeframes if tf in kraken.OHLC_INTERVALS]

    def _on_connect(self, link: Link[Series], ws: Stream) -> None:
        self._send(link, ws, True, [st for st in link.members if st.active])

    def control(self, subscribe: bool, states: list[Series]) -> None:
        for link, group in self.pool.by_link(states):
            for ws in link.streams():
                self._send(link, ws, subscribe, group)

    def activate(self, st: Series, active: bool) -> None:
        if active:
            self.by_symbol[st.instrument.symbol] = st
        else:
            self.by_symbol.pop(st.instrument.symbol, None)

    async def stop(self) -> None:
        await self.pool.stop()
        await self.history.close()

    # --- frames -------------------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview) -> None:
        """Decode one frame and fold its trades in (the hot path)."""
        events = self.decoder.decode(frame)
        if not events:
            if self.decoder.refusals:
                self._refused()
            if self.decoder.server_ms > self._server_ms:
                # An ack's time_out: the venue's clock, before a (re)subscription's snapshot comes.
                self._server_ms = self.decoder.server_ms
                self.clock.observe(self._server_ms)
                self.update_skew_bounds()
            self._skips.report(self.decoder.errors, self.decoder.last_error)
            return
        for ev in events:
            if type(ev) is Trade:
                st = self.by_symbol.get(ev.symbol)
                if st is None:
                    continue
                if not self._ts_low <= ev.time_ms <= self._ts_high:
                    self.decoder.errors["impossible_value"] += 1
                    self.decoder.last_error = f"trade time far from the venue's clock: {ev}"
                    self._skips.report(self.decoder.errors, self.decoder.last_error)
                    continue
                st.on_trade(ev)
                self._last_id[ev.symbol] = ev.trade_id
                if st.publish_trades:
                    self._on_trade(st, ev)
            elif type(ev) is VenueCandle:
                self._forming(ev)
        if self.decoder.errors:
            self._skips.report(self.decoder.errors, self.decoder.last_error)

    def _forming(self, ev: VenueCandle) -> None:
        """Merge a forming ``ohlc`` candle when it holds exactly the trades this feed has seen."""
        st = self.by_symbol.get(ev.symbol)
        if st is None:
            return
        mine = st.open_candle(ev.timeframe)
        if mine is None or mine.open_time != ev.candle.open_time or mine.trades != ev.candle.trades:
            return
        st.on_venue_candle(ev.timeframe, ev.candle, self._last_id.get(ev.symbol, -1))

    def _refused(self) -> None:
        """One line per refused subscription, naming symbol and reason; the others keep streaming."""
        for r in self.decoder.refusals:
            if r.symbol is not None and r.symbol not in self.refused_symbols:
                self.refused_symbols[r.symbol] = r.error
                log.error(
                    "kraken refused the %s of %s: %s; the other symbols keep streaming", r.method, r.symbol, r.error
                )
        self.decoder.refusals.clear()

    # --- visibility ---------------------------------------------------------------------------------

    def report(self) -> FeedStatus:
        now = self.clock.now_ms()
        timeframes = {tf for st in self.states for tf in self._native(st)}
        errors = Counter(self.decoder.venue_errors) + Counter(self.history.venue_errors)
        return FeedStatus(
            **self.pool.counts(),
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled + self.history.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
            history_from={tf: self.history.ohlc_from(tf, now) for tf in sorted(timeframes)} or None,
            venue_errors=dict(errors) or None,
            refused_symbols=dict(self.refused_symbols) or None,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
