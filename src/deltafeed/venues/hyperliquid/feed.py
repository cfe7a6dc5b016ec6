"""Hyperliquid's live side for the engine: WebSockets of ``trades`` (and ``candle``) subscriptions for
the Hyperliquid coins of a run, as many as its stream limits need, each kept alive with pings,
folded into the coins' candle builders."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Trade, VenueCandle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.venues.base import FeedStatus, SharedLimits, SkipLog, unmade
from deltafeed.venues.checks import unknown_symbols_message
from deltafeed.venues.hyperliquid import VENUE, HyperliquidSettings
from deltafeed.venues.hyperliquid import codec as hl
from deltafeed.venues.hyperliquid.rest import HyperliquidHistory
from deltafeed.venues.links import Link, LinkPool, Stream, forget_member

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.hyperliquid")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible
CLOCK_READ_EVERY_S = 2.0  # at most this often, the venue's time is read again over REST


class HyperliquidFeed(SharedLimits):
    """Streams the trades of its coins into their builders.

    Hyperliquid's ``tid`` is unique across all coins and not contiguous, so it cannot show a lost
    trade: each coin gets synthetic consecutive ids, and every reconnect skips one, so the builder
    sees a hole there and the candles around it are repaired from history. A ``tid`` not above the
    coin's last one is a repeat (or arrived out of order) and is left out. Nothing the stream builds
    is final by itself (``sequenced`` False): the venue's own candle is merged as final when the venue
    has moved on to a later candle and its trade count equals ours, the rest is reconciled with
    ``candleSnapshot`` history every ``reconcile_every_s``.
    """

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(
        self,
        vs: HyperliquidSettings,
        *,
        venue_candles: bool,
        stale_after_s: float,
        connect_budget: int,
        on_trade: Callable[[Series, Trade], None],
    ) -> None:
        self.rest_url = vs.rest_url or hl.DEFAULT_REST_URL
        self.ws_url = vs.ws_url or hl.DEFAULT_WS_URL
        self.ping_every_s = vs.ping_every_s
        self.clock = VenueClock()
        self.history = HyperliquidHistory(self.rest_url, vs.weight_limit)
        self.decoder = hl.StreamDecoder()
        self.states: list[Series] = []
        self.by_coin: dict[str, Series] = {}
        self.venue_candles = venue_candles
        self._on_trade = on_trade
        self._next_id: dict[str, int] = {}
        self._last_tid: dict[str, int] = {}
        self._venue_candle: dict[tuple[str, str], VenueCandle] = {}  # latest candle message per coin, interval
        self.out_of_order = 0
        self.venue_candles_merged = 0
        self.venue_candles_unequal = 0
        self.refused: dict[str, str] = {}
        self._history_tfs: set[str] = set()  # timeframes asked for: their history depth is in the status
        self._capped_logged: set[str] = set()
        self._skips = SkipLog(log, "frames")
        self._last_ping: dict[int, float] = {}  # link index -> when its connection was last pinged
        self.pings = 0
        self._ts_low = 0
        self._ts_high = 2**62
        self.pool: LinkPool[Series] = LinkPool.for_venue(
            VENUE,
            url=self.ws_url,
            on_frame=self.on_frame,
            on_connect=self._on_connect,
            connect_budget=connect_budget,
            stale_after_s=stale_after_s,
        )
        self._task: asyncio.Task[None] | None = None
        self._clock_coin: str | None = None  # a coin whose trade looked too far ahead of our clock
        self._clock_read = 0.0
        self._clock_task: asyncio.Task[None] | None = None

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    @property
    def ws(self) -> Stream:
        """The first connection (the only one for runs of up to ~50 coins)."""
        return self.pool.links[0].ws

    def remove(self, st: Series) -> None:
        """Forget a coin the engine dropped (unsubscribed already): its link has room again."""
        forget_member(self.pool, self.states, self.by_coin, st.instrument.symbol, st)

    def add(self, st: Series) -> None:
        bad = unmade(st.builder.timeframes, hl.TIMEFRAMES)
        if bad:
            raise BadInput(
                f"Hyperliquid has no {', '.join(bad)} candles; use {' '.join(hl.TIMEFRAMES)} (or a timeframe one"
                " of them divides, e.g. 3m, 2h, 1w) for Hyperliquid coins"
            )
        self.pool.place(st, len(self._subscriptions(st)))
        self.states.append(st)
        coin = st.instrument.symbol
        self.by_coin[coin] = st
        self._next_id.setdefault(coin, 1)
        subs = sum(len(self._subscriptions(s)) for s in self.states)
        if subs > hl.MAX_SUBSCRIPTIONS:
            raise BadInput(f"{subs} subscriptions exceed Hyperliquid's {hl.MAX_SUBSCRIPTIONS}; collect fewer coins")

    def _subscriptions(self, st: Series) -> list[bytes]:
        coin = st.instrument.symbol
        out = [hl.subscribe("trades", coin)]
        if self.venue_candles:
            out += [hl.subscribe("candle", coin, tf) for tf in st.builder.timeframes if tf in hl.TIMEFRAMES]
        return out

    async def check(self) -> None:
        """Check every coin is listed and learn the venue's time from a coin's latest trade."""
        try:
            known = await self.history.coins()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that the venue (or replica) is running") from None
        except VenueError as exc:
            raise BadInput(f"the venue refused our first request ({exc}); check --rest-url") from None
        unknown = [st.instrument.symbol for st in self.states if st.instrument.symbol not in known]
        if unknown:
            raise BadInput(unknown_symbols_message("hyperliquid", self.rest_url, unknown, known))
        if self.states:
            with contextlib.suppress(VenueError):
                t = await self.history.last_trade_ms(self.states[0].instrument.symbol)
                if t is not None:
                    self.clock.observe(t)
        self._update_skew_bounds()

    def start(self) -> None:
        async def run() -> None:
            if self.states:  # the bootstrap took a while: read the venue's time again before trades come
                await self._read_clock(self.states[0].instrument.symbol)
            self.pool.start()

        self._task = asyncio.create_task(run(), name="hyperliquid-ws")

    def connected(self) -> bool:
        return self.pool.connected()

    def _on_connect(self, link: Link[Series], ws: Stream) -> None:
        # What traded while the link was away is unknown: skip an id so each of its coins' next
        # trade shows the hole. Then subscribe again: a subscription lives as long as its connection.
        coins = {st.instrument.symbol for st in link.members}
        if ws.connects > 1:
            for coin in coins:
                self._next_id[coin] += 1
        for key in [k for k in self._venue_candle if k[0] in coins]:
            del self._venue_candle[key]
        self._last_ping[link.index] = ws.connected_at
        for st in link.members:
            if st.active:
                for msg in self._subscriptions(st):
                    link.send(ws, msg)

    def _update_skew_bounds(self) -> None:
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        """Learn the venue's time from the trades; ping so the venue keeps a quiet connection open."""
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self._update_skew_bounds()
        if self._clock_coin is not None and mono - self._clock_read >= CLOCK_READ_EVERY_S:
            self._clock_read = mono
            self._spawn_clock_read(self._clock_coin)
            self._clock_coin = None
        for link in self.pool.links:
            if link.ws.connected.is_set() and mono - self._last_ping.get(link.index, 0.0) >= self.ping_every_s:
                self._last_ping[link.index] = mono
                self.pings += 1
                link.send(link.ws, hl.PING)
        await self.pool.tick(mono)

    def _spawn_clock_read(self, coin: str) -> None:
        """Read the venue's time from ``coin``'s latest trade (Hyperliquid has no time request), in a
        task: trades refused as too far ahead of our estimate are usually our estimate lagging (a
        long start-up against a venue whose clock runs fast)."""

        if self._clock_task is None or self._clock_task.done():
            self._clock_task = asyncio.create_task(self._read_clock(coin), name="hyperliquid-clock")

    async def _read_clock(self, coin: str) -> None:
        with contextlib.suppress(VenueError, VenueUnreachable):
            t = await self.history.last_trade_ms(coin)
            if t is not None:
                self.clock.observe(t)
                self._update_skew_bounds()

    def control(self, subscribe: bool, states: list[Series]) -> None:
        for link, group in self.pool.by_link(states):
            if not link.ws.connected.is_set():
                continue  # the next connection subscribes what is active
            for st in group:
                if subscribe:  # what traded while it was off is unknown: a hole, as after a reconnect
                    self._next_id[st.instrument.symbol] += 1
                for msg in self._subscriptions(st):
                    link.send(link.ws, msg if subscribe else msg.replace(b'"subscribe"', b'"unsubscribe"', 1))

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    def history_start(self, timeframe: str, now_ms: int) -> int:
        """Open time of the oldest candle of ``timeframe`` the venue still serves (its newest 5000)."""
        iv = hl.INTERVAL_MS[timeframe]
        self._history_tfs.add(timeframe)
        return now_ms - now_ms % iv - (hl.HISTORY_CANDLES - 1) * iv

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        now = now_ms if now_ms is not None else self.clock.now_ms()
        oldest = self.history_start(timeframe, now)
        if start_ms < oldest and timeframe not in self._capped_logged:
            self._capped_logged.add(timeframe)
            log.warning(
                "hyperliquid keeps only its newest %d %s candles: history asked from %d starts at %d (%.1f days back)",
                hl.HISTORY_CANDLES,
                timeframe,
                start_ms,
                oldest,
                (now - oldest) / 86_400_000,
            )
        if end_ms < oldest:
            return []
        out = await self.history.candles(st.instrument.symbol, timeframe, max(start_ms, oldest), end_ms, now)
        if out:
            self.clock.observe(out[-1].open_time)  # the venue's time is at least that
        return out

    async def stop(self) -> None:
        if self._clock_task is not None:
            self._clock_task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.pool.stop()
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview) -> None:
        ev = self.decoder.decode(frame)
        if type(ev) is list:
            for t in ev:
                self._trade(t)
        elif type(ev) is VenueCandle:
            self._candle(ev)
        elif ev is None:
            if self.decoder.venue_errors and self.decoder.errors.get("venue_error"):
                self._venue_error(self.decoder.venue_errors[-1])
            self._skips.report(self.decoder.errors, self.decoder.last_error)

    def _trade(self, t: hl.HlTrade) -> None:
        st = self.by_coin.get(t.coin)
        if st is None or not st.active:
            return
        if t.tid <= self._last_tid.get(t.coin, -1):
            self.out_of_order += 1  # a repeat, or older than a trade already folded in
            return
        if not self._ts_low <= t.time_ms <= self._ts_high:
            if t.time_ms > self._ts_high:
                self._clock_coin = t.coin  # our estimate of the venue's time may lag: read it again
            self.decoder.errors["impossible_value"] += 1
            self.decoder.last_error = f"trade time far from the venue's clock: {t}"
            self._skips.report(self.decoder.errors, self.decoder.last_error)
            return
        self._last_tid[t.coin] = t.tid
        tid = self._next_id[t.coin]
        self._next_id[t.coin] = tid + 1
        trade = Trade(t.coin, tid, t.time_ms, t.price, t.qty, t.side == "A")
        st.on_trade(trade)
        if st.publish_trades:
            self._on_trade(st, trade)

    def _candle(self, ev: VenueCandle) -> None:
        """Keep the coin's latest candle message; once the venue moves on to a later candle, the one
        before is whole, and is merged as final if it holds exactly the trades we folded in."""
        st = self.by_coin.get(ev.symbol)
        if st is None or not st.active or ev.timeframe not in st.builder.timeframes:
            return
        self.clock.observe(ev.candle.open_time)
        key = (ev.symbol, ev.timeframe)
        prev = self._venue_candle.get(key)
        if prev is not None and ev.candle.open_time < prev.candle.open_time:
            return  # an older update out of order
        self._venue_candle[key] = ev
        if prev is None or ev.candle.open_time == prev.candle.open_time:
            return
        done = prev.candle
        ours = st.open_candle(ev.timeframe)
        if ours is None or ours.open_time != done.open_time:
            ours = st.provisional.get(ev.timeframe, {}).get(done.open_time)
        if ours is None or ours.trades != done.trades or done.trades == 0:
            self.venue_candles_unequal += 1
            return
        self.venue_candles_merged += 1
        st.on_venue_candle(ev.timeframe, Candle(*done.row(), True, True), -1)

    def _venue_error(self, text: str) -> None:
        coin = hl.refused_coin(text, list(self.by_coin))
        if coin is not None and coin not in self.refused:
            self.refused[coin] = text
            log.error("hyperliquid refused the subscription of %s: %s; the other coins keep streaming", coin, text)

    # --- visibility -----------------------------------------------------------------------------

    def report(self) -> FeedStatus:
        venue_errors = self.decoder.errors.get("venue_error", 0)
        return FeedStatus(
            **self.pool.counts(),
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
            heartbeats=self.decoder.acks.get("pong", 0),
            out_of_order=self.out_of_order,
            history_from={tf: self.history_start(tf, self.clock.now_ms()) for tf in sorted(self._history_tfs)} or None,
            venue_errors={"error": venue_errors} if venue_errors else None,
            refused_symbols=dict(self.refused) or None,
        )

    def status(self) -> dict[str, Any]:
        out = self.report().as_dict()
        out["venue_candles_merged"] = self.venue_candles_merged
        out["venue_candles_unequal"] = self.venue_candles_unequal
        out["rest_weight"] = self.history.weight
        return out
