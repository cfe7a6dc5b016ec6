"""Binance's live side for the engine: one combined WebSocket stream of trades and klines for every
Binance instrument of a run, kept alive, rotated before the 24 h cut-off, decoded into the
instruments' candle builders."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, ServerShutdown, Trade, VenueCandle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import WsStream
from deltafeed.venues.base import FeedStatus, SkipLog
from deltafeed.venues.binance import VENUE, BinanceSettings
from deltafeed.venues.binance import codec as binance
from deltafeed.venues.binance.rest import BinanceHistory
from deltafeed.venues.checks import unknown_symbols_message

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.binance")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible


class BinanceFeed:
    """Streams trades (and, with ``venue_klines``, klines) of its instruments into their builders.

    ``on_trade(state, trade)`` is called after a trade went into the builder, so the engine can
    publish it. Reconnects are handled by :class:`WsStream`; a ``serverShutdown`` or a connection
    older than ``rotate_after`` is replaced by a second one that takes over once it delivers.
    """

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(
        self,
        vs: BinanceSettings,
        *,
        venue_klines: bool,
        stale_after_s: float,
        rotate_after_s: float,
        connect_budget: int,
        on_trade: Callable[[Series, Trade], None],
    ) -> None:
        self.settings = vs
        self.rest_url = vs.rest_url or binance.DEFAULT_REST_URL
        self.ws_url = vs.ws_url or binance.DEFAULT_WS_URL
        self.clock = VenueClock()
        self.history = BinanceHistory(self.rest_url, vs.weight_limit)
        self.decoder = binance.StreamDecoder()
        self.states: list[Series] = []
        self.by_symbol: dict[str, Series] = {}
        self.venue_klines = venue_klines
        self.rotate_after_s = rotate_after_s
        self.stale_after_s = stale_after_s
        self._on_trade = on_trade
        self._request_id = 0
        self.budget = ConnectBudget(connect_budget, 300.0)
        self.ws = self._new_stream()
        self._ws_task: asyncio.Task[None] | None = None
        self._next: WsStream | None = None  # the replacement during a rotation
        self._next_task: asyncio.Task[None] | None = None
        self.rotations = 0
        self.past_connects = 0  # connections made by streams already rotated away
        self.shutdown_notices = 0
        self._skips = SkipLog(log, "frames")
        self._ts_low = 0
        self._ts_high = 2**62

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    def add(self, st: Series) -> None:
        self.states.append(st)
        self.by_symbol[st.instrument.symbol] = st
        streams = self._streams(self.states)
        if len(streams) > binance.MAX_STREAMS_PER_CONNECTION:
            raise BadInput(
                f"{len(streams)} streams exceed Binance's {binance.MAX_STREAMS_PER_CONNECTION} "
                "per connection; collect fewer symbols or timeframes per run"
            )

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        return await self.history.candles(st.instrument.symbol, timeframe, start_ms, end_ms, now_ms)

    # --- connection -----------------------------------------------------------------------------

    def _streams(self, states: Iterable[Series]) -> list[str]:
        # Derived timeframes need no kline stream: they are rolled up from the base's candles.
        return [
            s
            for st in states
            for s in binance.streams_for(st.instrument.symbol, st.builder.timeframes if self.venue_klines else [])
        ]

    def _url(self) -> str:
        """The combined-stream URL of the instruments streaming now (a reconnect resubscribes them)."""
        streams = self._streams(st for st in self.states if st.active)
        if not streams:
            return self.ws_url.rstrip("/") + "/stream"
        return binance.combined_url(self.ws_url, streams)

    def _new_stream(self) -> WsStream:
        return WsStream(self._url, self.on_frame, name=self.venue, stale_after_s=self.stale_after_s, budget=self.budget)

    async def check(self) -> None:
        """Read the venue's time and check every symbol exists; :class:`BadInput` naming the fix."""
        try:
            self.clock.observe(await self.history.server_time())
            known = await self.history.symbols()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that the venue (or replica) is running") from None
        except VenueError as exc:
            raise BadInput(f"the venue refused our first request ({exc}); check --rest-url") from None
        unknown = [st.instrument.symbol for st in self.states if st.instrument.symbol not in known]
        if unknown:
            raise BadInput(unknown_symbols_message("binance", self.rest_url, unknown, known))
        self.update_skew_bounds()

    def connected(self) -> bool:
        return self.ws.connected.is_set()

    def start(self) -> None:
        self._ws_task = asyncio.create_task(self.ws.run(), name="binance-ws")

    def update_skew_bounds(self) -> None:
        """Trades further than MAX_SKEW_MS from the venue's clock are refused as impossible."""
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        """Learn the venue's time from the trades, and rotate the connection when it is due."""
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self.update_skew_bounds()
        if self._next is not None and self._next.frames > 0:
            await self._finish_rotation()
        elif self._next is None and self.ws.connected_at and mono - self.ws.connected_at > self.rotate_after_s:
            log.info("connection is %.0f s old; rotating before the venue cuts it", mono - self.ws.connected_at)
            self._rotate()

    def control(self, subscribe: bool, states: list[Series]) -> None:
        """Subscribe or unsubscribe ``states`` on the live connection(s)."""
        streams = self._streams(states)
        if not streams:
            return
        for ws in (self.ws, self._next):
            if ws is not None and ws.connected.is_set():
                self._request_id += 1
                body = (
                    binance.subscribe(streams, self._request_id)
                    if subscribe
                    else binance.unsubscribe(streams, self._request_id)
                )
                ws.send(body)

    def activate(self, st: Series, active: bool) -> None:
        if active:
            self.by_symbol[st.instrument.symbol] = st
        else:
            self.by_symbol.pop(st.instrument.symbol, None)

    async def stop(self) -> None:
        streams = [(self.ws, self._ws_task), (self._next, self._next_task)]
        await asyncio.gather(*(s.close() for s, _ in streams if s is not None))
        for _, task in streams:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview) -> None:
        """Decode one frame and fold it in (the hot path: no await, no log, no allocation to spare)."""
        ev = self.decoder.decode(frame)
        if type(ev) is Trade:
            st = self.by_symbol.get(ev.symbol)
            if st is None:
                return
            # Prices and quantities were checked by the decoder (finite, above zero); the time
            # needs the venue's clock.
            if not self._ts_low <= ev.time_ms <= self._ts_high:
                self.decoder.errors["impossible_value"] += 1
                self.decoder.last_error = f"trade time far from the venue's clock: {ev}"
                self._log_decode_errors()
                return
            st.on_trade(ev)
            if st.publish_trades:
                self._on_trade(st, ev)
            return
        if ev is None:
            self._log_decode_errors()
        elif type(ev) is VenueCandle:
            st = self.by_symbol.get(ev.symbol)
            if st is not None:
                self.clock.observe(ev.event_ms)
                st.on_venue_candle(ev.timeframe, ev.candle, ev.last_trade_id)
        elif type(ev) is ServerShutdown:
            self.shutdown_notices += 1
            log.warning("binance announced a server shutdown; moving to a new connection")
            self._rotate()

    def _log_decode_errors(self) -> None:
        self._skips.report(self.decoder.errors, self.decoder.last_error)

    # --- rotation -------------------------------------------------------------------------------

    def _rotate(self) -> None:
        """Open a second connection; the first is closed once the second delivers (see tick)."""
        if self._next is not None:
            return
        self._next = self._new_stream()
        self._next_task = asyncio.create_task(self._next.run(), name="binance-ws-next")

    async def _finish_rotation(self) -> None:
        assert self._next is not None and self._next_task is not None
        old, old_task = self.ws, self._ws_task
        self.ws, self._ws_task = self._next, self._next_task
        self._next = self._next_task = None
        self.rotations += 1
        self.past_connects += old.connects
        await old.close()
        if old_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await old_task
        log.info("rotated to a new binance connection without a gap")

    # --- visibility -----------------------------------------------------------------------------

    def report(self) -> FeedStatus:
        connects = self.past_connects + self.ws.connects + (self._next.connects if self._next else 0)
        return FeedStatus(
            connected=self.ws.connected.is_set(),
            connections=1 + (self._next is not None and self._next.connected.is_set()),
            connects=connects,
            reconnects=max(0, connects - 1 - self.rotations),
            rotations=self.rotations,
            stale_drops=self.ws.stale_drops + (self._next.stale_drops if self._next else 0),
            connect_budget_waits=self.budget.waits,
            frames=self.ws.frames,
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
