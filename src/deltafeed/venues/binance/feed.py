"""Binance's live side for the engine: combined WebSocket streams of trades and klines for the
Binance instruments of a run, split over as many connections as Binance's per-connection limits
need, each kept alive and rotated before the 24 h cut-off on its own, decoded into the
instruments' candle builders."""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Event, ServerShutdown, Trade, VenueCandle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.venues.base import FeedStatus, SharedLimits, SkipLog
from deltafeed.venues.binance import VENUE, BinanceSettings
from deltafeed.venues.binance import codec as binance
from deltafeed.venues.binance.codec import BinanceTrade, SoundTrade
from deltafeed.venues.binance.rest import BinanceHistory
from deltafeed.venues.checks import unknown_symbols_message
from deltafeed.venues.links import Link, LinkPool, Stream, forget_member

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.binance")

_decode_sound = binance.decode_sound

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible
#: Longest combined-stream URL we open. Binance documents no URL limit, but a 16 KB URL is refused
#: with a 400 and common servers stop at 8 KB request lines; 4 KB keeps a wide margin and still
#: carries ~200 streams per connection.
MAX_URL_BYTES = 4096


class BinanceFeed(SharedLimits):
    """Streams trades (and, with ``venue_klines``, klines) of its instruments into their builders.

    ``on_trade(state, trade)`` is called after a trade went into the builder, so the engine can
    publish it. The instruments are spread over as many connections ("links" of a
    :class:`~deltafeed.venues.links.LinkPool`) as Binance's limits need: at most 1024 streams and
    :data:`MAX_URL_BYTES` of URL per connection; every connection attempt goes through one budget
    (Binance: 300 attempts per 5 minutes per IP) and control messages are paced (5 per second per
    connection). Reconnects are handled by :class:`WsStream`; a ``serverShutdown`` or a connection
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
        self.shutdown_notices = 0
        self._in_url: dict[int, set[str]] = {}  # link index -> the streams its latest URL carried
        base = len(binance.combined_url(self.ws_url, []))
        limits = dataclasses.replace(VENUE.stream_limits, chars_per_connection=MAX_URL_BYTES - base)
        self.pool: LinkPool[Series] = LinkPool(
            self.venue,
            limits,
            url=self.url,
            on_frame=self.on_frame,
            on_connect=self.on_connect,
            connect_budget=connect_budget,
            rotate_after_s=rotate_after_s,
            stale_after_s=stale_after_s,
        )
        self._skips = SkipLog(log, "frames")
        self._ts_low = 0
        self._ts_high = 2**62

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    @property
    def links(self) -> list[Link[Series]]:
        return self.pool.links

    @property
    def ws(self) -> Stream:
        """The first link's current connection (the only one for runs of up to ~30 instruments)."""
        return self.pool.links[0].ws

    def url(self, link: Link[Series]) -> str:
        """The combined-stream URL of the link's instruments streaming now (a reconnect resubscribes them)."""
        streams = self._streams(st for st in link.members if st.active)
        self._in_url[link.index] = set(streams)
        if not streams:
            return self.ws_url.rstrip("/") + "/stream"
        return binance.combined_url(self.ws_url, streams)

    def on_connect(self, link: Link[Series], ws: Stream) -> None:
        """An instrument that started streaming while the connection was being made (after its URL
        was written, before it was up) is subscribed now: its SUBSCRIBE had no connection to go on."""
        missing = [
            s for s in self._streams(st for st in link.members if st.active) if s not in self._in_url[link.index]
        ]
        for part in self.pool.limits.chunks(missing) if missing else []:
            self._request_id += 1
            link.send(ws, binance.subscribe(list(part), self._request_id))

    def add(self, st: Series) -> None:
        """Put an instrument on the last link, or on a new one when that would pass a limit."""
        streams = self._streams([st])
        self.pool.place(st, len(streams), sum(len(s) + 1 for s in streams))
        self.states.append(st)
        self.by_symbol[st.instrument.symbol] = st

    def remove(self, st: Series) -> None:
        """Forget an instrument the engine dropped (unsubscribed already): its link has room again."""
        forget_member(self.pool, self.states, self.by_symbol, st.instrument.symbol, st)

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
        return self.pool.connected()

    def start(self) -> None:
        self.pool.start()

    def update_skew_bounds(self) -> None:
        """Trades further than MAX_SKEW_MS from the venue's clock are refused as impossible."""
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        """Learn the venue's time from the trades, and rotate connections when due."""
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self.update_skew_bounds()
        await self.pool.tick(mono)

    def control(self, subscribe: bool, states: list[Series]) -> None:
        """Subscribe or unsubscribe ``states`` on the live connection(s) of their links: one control
        message per link and connection, paced (Binance allows 5 inbound messages per second each)."""
        for link, group in self.pool.by_link(states):
            streams = self._streams(group)
            for part in self.pool.limits.chunks(streams) if streams else []:
                self._request_id += 1
                make = binance.subscribe if subscribe else binance.unsubscribe
                link.broadcast(make(list(part), self._request_id))

    def activate(self, st: Series, active: bool) -> None:
        if active:
            self.by_symbol[st.instrument.symbol] = st
        else:
            self.by_symbol.pop(st.instrument.symbol, None)

    async def stop(self) -> None:
        await self.pool.stop()
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview) -> None:
        """Decode one frame and fold it in (the hot path: no await, no log, no allocation or call to
        spare). A combined-stream trade with a possible price and quantity (msgspec checks them) is
        decoded and folded here, in line; any other frame goes to the decoder, which classifies it
        (and counts it when it is skipped)."""
        try:
            ev: object = _decode_sound(frame).data
        except Exception:  # not a sound payload of ours: the decoder says what it is
            ev = None
        if type(ev) is not SoundTrade:
            ev = self.decoder.decode(frame)
            if not isinstance(ev, BinanceTrade):
                self._on_event(ev)
                return
        try:
            st = self.by_symbol[ev.symbol]  # a subscript costs less than a call of get()
        except KeyError:  # an instrument no longer streaming
            return
        # The price and quantity are checked (finite, above zero); the time needs the venue's clock.
        if not self._ts_low <= ev.time_ms <= self._ts_high:
            self.decoder.errors["impossible_value"] += 1
            self.decoder.last_error = f"trade time far from the venue's clock: {ev}"
            self._log_decode_errors()
            return
        # Series.on_trade, in line (one Python call less a trade): into the builder, counted.
        st.builder.on_trade(ev)
        st.trades += 1
        st.last_trade_ms = ev.time_ms
        if st.tick_buffer is not None:
            st.tick_buffer.append(ev)
        if st.publish_trades:
            self._on_trade(st, ev.plain())

    def _on_event(self, ev: Event | None) -> None:
        """A frame's event other than a trade (None: nothing to use, perhaps counted as skipped)."""
        if ev is None:
            self._log_decode_errors()
        elif type(ev) is VenueCandle:
            st = self.by_symbol.get(ev.symbol)
            if st is not None:
                self.clock.observe(ev.event_ms)
                st.on_venue_candle(ev.timeframe, ev.candle, ev.last_trade_id)
        elif type(ev) is ServerShutdown:
            self.shutdown_notices += 1
            log.warning("binance announced a server shutdown; moving to new connections")
            # The frame does not say which connection it came on: a shutdown takes the server
            # down, so every link moves (each waits for its replacement to deliver first).
            self.pool.rotate_all()

    def _log_decode_errors(self) -> None:
        self._skips.report(self.decoder.errors, self.decoder.last_error)

    # --- visibility -----------------------------------------------------------------------------

    def report(self) -> FeedStatus:
        return FeedStatus(
            **self.pool.counts(),
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
