"""Coinbase's live side for the engine: Advanced Trade WebSockets, as many as Coinbase's stream
limits need, each carrying ``heartbeats``, ``market_trades`` (and the 5-minute ``candles`` as a
cross-check) for its share of the Coinbase products of a run.

Every candle the stream builds stays provisional until reconciled with the REST candles (trade ids
are only a hint on Coinbase). A break in the connection's ``sequence_num``, a reconnection, or a
``candles`` update holding more volume than the trades seen has the span since the last good
point repaired at once rather than at the next reconciliation.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.ws import FrameSink
from deltafeed.venues.base import FeedStatus, SharedLimits, SkipLog, TradeSink
from deltafeed.venues.checks import unknown_symbols_message
from deltafeed.venues.coinbase import VENUE, CoinbaseSettings
from deltafeed.venues.coinbase import codec as coinbase
from deltafeed.venues.coinbase.rest import CoinbaseHistory
from deltafeed.venues.links import Link, LinkPool, Stream, forget_member

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.coinbase")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible
#: Reconnect backoff cap: a channel left without updates closes within 60-90 s anyway, and a
#: disconnected feed only accumulates repairs.
BACKOFF_CAP_S = 10.0


class _Conn:
    """One link's sequence and heartbeat state (``sequence_num`` counts per connection)."""

    __slots__ = ("good_ms", "heartbeat_at", "link", "seq")

    def __init__(self, link: Link[Series]) -> None:
        self.link = link
        self.seq = -1  # the connection's last sequence_num (per connection, across channels)
        self.good_ms = 0  # venue time of the last frame that followed on in sequence
        self.heartbeat_at = 0.0  # monotonic time of the last heartbeat (or of the connection)


class CoinbaseFeed(SharedLimits):
    """Streams trades of its products into their builders; see the module docstring."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(
        self,
        vs: CoinbaseSettings,
        *,
        venue_candles: bool,
        stale_after_s: float,
        connect_budget: int,
        on_trade: TradeSink,
    ) -> None:
        self.rest_url = vs.rest_url or coinbase.DEFAULT_REST_URL
        self.ws_url = vs.ws_url or coinbase.DEFAULT_WS_URL
        self.clock = VenueClock()
        self.history = CoinbaseHistory(self.rest_url, vs.requests_per_s)
        self.decoder = coinbase.StreamDecoder()
        self.states: list[Series] = []
        self.by_symbol: dict[str, Series] = {}
        self.venue_candles = venue_candles
        self._on_trade = on_trade
        # Heartbeats come every second; a connection without one for this long is replaced.
        self.heartbeat_timeout_s = max(3.0, 2 * stale_after_s)
        self._conns: dict[int, _Conn] = {}  # link index -> its state
        self.pool: LinkPool[Series] = LinkPool.for_venue(
            VENUE,
            url=self.ws_url,
            frames_of=self._sink,
            on_connect=self._on_connect,
            connect_budget=connect_budget,
            stale_after_s=stale_after_s,
            backoff_cap_s=BACKOFF_CAP_S,
        )
        self.sequence_gaps = 0
        self.heartbeat_drops = 0
        self.heartbeats = 0
        self.venue_errors: Counter[str] = Counter()
        self.refused: dict[str, str] = {}
        self._skips = SkipLog(log, "frames")
        self._ts_low = 0
        self._ts_high = 2**62

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    @property
    def ws(self) -> Stream:
        """The first connection (the only one for runs of up to 50 products)."""
        return self.pool.links[0].ws

    def _sink(self, link: Link[Series]) -> FrameSink:
        c = self._conns.setdefault(link.index, _Conn(link))
        return lambda frame: self.on_frame(frame, c)

    def _channels(self, st: Series) -> list[str]:
        with5m = self.venue_candles and "5m" in st.builder.timeframes
        return ["market_trades", "candles"] if with5m else ["market_trades"]

    def remove(self, st: Series) -> None:
        """Forget an instrument the engine dropped (unsubscribed already): its link has room again."""
        forget_member(self.pool, self.states, self.by_symbol, st.instrument.symbol, st)

    def add(self, st: Series) -> None:
        self.pool.place(st, len(self._channels(st)))
        self.states.append(st)
        self.by_symbol[st.instrument.symbol] = st

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        out = await self.history.candles(
            st.instrument.symbol, timeframe, start_ms, end_ms, now_ms if now_ms is not None else self.clock.now_ms()
        )
        # The venue's candles carry no trade count: one equal to the candle the stream built keeps its count.
        built = st.provisional.get(timeframe, {})
        for c in out:
            b = built.get(c.open_time)
            same = b is not None and (b.open, b.high, b.low, b.close) == (c.open, c.high, c.low, c.close)
            if same and b is not None and round(b.volume, 8) == round(c.volume, 8):
                c.trades = b.trades
        return out

    # --- connection -----------------------------------------------------------------------------

    async def check(self) -> None:
        """Read the venue's time and check every product exists; :class:`BadInput` naming the fix."""
        try:
            self.clock.observe(await self.history.server_time())
            known = await self.history.products()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check rest_url and that the venue (or replica) is running") from None
        except VenueError as exc:
            raise BadInput(f"the venue refused our first request ({exc}); check rest_url") from None
        unknown = [st.instrument.symbol for st in self.states if st.instrument.symbol not in known]
        if unknown:
            raise BadInput(unknown_symbols_message("coinbase", self.rest_url, unknown, known))
        self._update_skew_bounds()

    def start(self) -> None:
        self.pool.start()

    def connected(self) -> bool:
        return self.pool.connected()

    def _on_connect(self, link: Link[Series], ws: Stream) -> None:
        # A new connection starts its own sequence; whatever traded on it while it was away may be lost.
        now = self.clock.now_ms()
        for st in link.members:
            if st.active and st.last_trade_ms:
                st.on_loss(st.last_trade_ms, now)
        c = self._conns[link.index]
        c.seq = -1
        c.heartbeat_at = self.pool.clock.monotonic()
        link.send(ws, coinbase.subscribe("heartbeats"))
        self._send(link, ws, True, [st for st in link.members if st.active])

    def _send(self, link: Link[Series], ws: Stream, subscribe: bool, states: list[Series]) -> None:
        """(Un)subscribe ``states``: one message per channel, all their products in it."""
        states = [st for st in states if st.instrument.symbol not in self.refused]
        make = coinbase.subscribe if subscribe else coinbase.unsubscribe
        for channel in ("market_trades", "candles"):
            products = [st.instrument.symbol for st in states if channel in self._channels(st)]
            for part in self.pool.limits.chunks(products) if products else []:
                link.send(ws, make(channel, list(part)))

    def control(self, subscribe: bool, states: list[Series]) -> None:
        for link, group in self.pool.by_link(states):
            if link.ws.connected.is_set():
                self._send(link, link.ws, subscribe, group)

    def activate(self, st: Series, active: bool) -> None:
        if active:
            self.by_symbol[st.instrument.symbol] = st
        else:
            self.by_symbol.pop(st.instrument.symbol, None)

    def _update_skew_bounds(self) -> None:
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        """Learn the venue's time from the trades; replace a connection whose heartbeats stopped."""
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self._update_skew_bounds()
        for link in self.pool.links:
            c = self._conns[link.index]
            if link.ws.connected.is_set() and mono - c.heartbeat_at > self.heartbeat_timeout_s:
                self.heartbeat_drops += 1
                c.heartbeat_at = mono
                link.ws.drop(f"no heartbeat for {self.heartbeat_timeout_s:.0f} s")
        await self.pool.tick(mono)

    async def stop(self) -> None:
        await self.pool.stop()
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview, c: _Conn | None = None) -> None:
        """Decode one frame of the connection ``c`` (the first link's by default) and fold it in."""
        if c is None:
            c = self._conns[0]
        msg = self.decoder.decode(frame)
        if msg is None:
            self._skips.report(self.decoder.errors, self.decoder.last_error)
            return
        if type(msg) is coinbase.VenueErrorFrame:
            self._venue_error(msg)
            return
        assert type(msg) is coinbase.Message
        if c.seq >= 0 and msg.seq > c.seq + 1:
            self._sequence_gap(msg, c)
        if msg.seq > c.seq:
            c.seq = msg.seq
            c.good_ms = msg.time_ms
        if msg.trades:
            self._trades(msg)
        elif msg.channel == "heartbeats":
            self.heartbeats += 1
            c.heartbeat_at = self.pool.clock.monotonic()
            self.clock.observe(msg.time_ms)
        elif msg.candles and not msg.snapshot:
            self._cross_check(msg.candles)

    def _trades(self, msg: coinbase.Message) -> None:
        for t in msg.trades:
            st = self.by_symbol.get(t.symbol)
            if st is None:
                continue
            if msg.snapshot and st.trades == 0:
                continue  # trades from before start-up: the bootstrap and the first hole's repair cover them
            if not self._ts_low <= t.time_ms <= self._ts_high:
                self.decoder.errors["impossible_value"] += 1
                self.decoder.last_error = f"trade time far from the venue's clock: {t}"
                self._skips.report(self.decoder.errors, self.decoder.last_error)
                continue
            st.on_trade(t)
            if st.publish_trades:
                self._on_trade(st, t)

    def _sequence_gap(self, msg: coinbase.Message, c: _Conn) -> None:
        """Frames were lost on this connection: any of its products' data since its last good frame may be."""
        self.sequence_gaps += 1
        log.debug("sequence_num jumped from %d to %d; repairing since %d", c.seq, msg.seq, c.good_ms)
        until = max(msg.time_ms, c.good_ms)
        for st in c.link.members:
            if st.active:
                st.on_loss(min(c.good_ms, st.last_trade_ms or c.good_ms), until)

    def _cross_check(self, candles: list[tuple[str, Candle]]) -> None:
        """A venue 5m candle with more volume than the one built from trades: trades were lost."""
        for product, vc in candles:
            st = self.by_symbol.get(product)
            if st is None or st.trades == 0 or "5m" not in st.builder.timeframes:
                continue
            cur = st.builder.open_candle("5m")
            if cur is not None and cur.open_time == vc.open_time and vc.volume > cur.volume + 1e-8:
                log.debug("%s: venue 5m candle holds more volume than the trades seen", product)
                st.on_loss(vc.open_time, max(vc.open_time, st.last_trade_ms))

    def _venue_error(self, err: coinbase.VenueErrorFrame) -> None:
        kind = err.message.split(":")[0].strip()[:60] or "error"
        first = kind not in self.venue_errors
        self.venue_errors[kind] += 1
        text = f"{err.message} {err.reason}".strip()
        for st in self.states:
            sym = st.instrument.symbol
            if sym in text and sym not in self.refused:
                self.refused[sym] = text
                log.warning("coinbase refused the subscription of %s: %s; the other products keep streaming", sym, text)
                return
        if first:
            log.warning("coinbase error frame (%s); counted in status", text)

    # --- visibility -----------------------------------------------------------------------------

    def report(self) -> FeedStatus:
        counts = self.pool.counts()
        counts["stale_drops"] += self.heartbeat_drops
        return FeedStatus(
            **counts,
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
            heartbeats=self.heartbeats,
            sequence_gaps=self.sequence_gaps,
            venue_errors=dict(self.venue_errors) or None,
            refused_symbols=dict(self.refused) or None,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
