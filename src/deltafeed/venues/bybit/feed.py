"""Bybit's live side for the engine: WebSockets per category (``/v5/public/spot``, ``/v5/public/linear``),
as many as Bybit's stream limits need, carrying ``publicTrade`` and ``kline`` topics of its
instruments, each pinged every 20 s, decoded into the instruments' candle builders.

Bybit's trade ids are not a counter, so each series is fed synthetic consecutive ids, and every
(re)connection skips one: whatever traded while a connection was down becomes a hole that the engine
repairs from REST klines. A repeated trade (the same venue id) is dropped; a trade older than the
series' last one is dropped and the span from it to the last one is repaired from history.
Closed candles are vouched for by the kline stream's ``confirm:true`` or by reconciliation.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Trade
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import FrameSink
from deltafeed.venues.base import FeedStatus, Shareable, SharedLimits, SkipLog
from deltafeed.venues.bybit import VENUE, BybitSettings
from deltafeed.venues.bybit import codec as bybit
from deltafeed.venues.bybit.rest import BybitHistory
from deltafeed.venues.checks import unknown_symbols_message
from deltafeed.venues.links import Link, LinkPool, Stream

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.bybit")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible
RECENT_IDS = 8192  # venue trade ids remembered per series, to drop repeats
BACKOFF_CAP_S = 5.0  # a lost connection is a hole until it is back: come back soon


class _Series:
    """What the feed keeps per series: its Bybit name, next synthetic id and recent venue ids."""

    __slots__ = ("category", "ids", "name", "next_id", "order", "st")

    def __init__(self, st: Series, category: str, name: str) -> None:
        self.st = st
        self.category = category
        self.name = name
        self.next_id = 1
        self.ids: set[str] = set()
        self.order: deque[str] = deque()

    def seen(self, venue_id: str) -> bool:
        """Whether ``venue_id`` came before (remembering it if not)."""
        if venue_id in self.ids:
            return True
        self.ids.add(venue_id)
        self.order.append(venue_id)
        if len(self.order) > RECENT_IDS:
            self.ids.discard(self.order.popleft())
        return False


class BybitFeed(SharedLimits):
    """Streams Bybit trades (and, with ``venue_klines``, klines) of its instruments into their builders."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(
        self,
        vs: BybitSettings,
        *,
        venue_klines: bool,
        stale_after_s: float,
        connect_budget: int,
        on_trade: Callable[[Series, Trade], None],
    ) -> None:
        if vs.category not in bybit.CATEGORIES:
            raise BadInput(
                f"[venues.bybit] category {vs.category!r} is not streamed; use {' or '.join(bybit.CATEGORIES)}"
            )
        self.category = vs.category
        self.rest_url = vs.rest_url or bybit.DEFAULT_REST_URL
        self.ws_url = (vs.ws_url or bybit.DEFAULT_WS_URL).rstrip("/")
        self.clock = VenueClock()
        self.history = BybitHistory(self.rest_url, vs.requests_per_5s, ban_wait_s=vs.ban_wait_s)
        self.decoder = bybit.StreamDecoder()
        self.venue_klines = venue_klines
        self.stale_after_s = stale_after_s
        self.connect_budget = connect_budget
        self._on_trade = on_trade
        self.states: list[Series] = []
        self._series: dict[tuple[str, str], _Series] = {}  # (category, Bybit name)
        self._of: dict[int, _Series] = {}  # id(Series) -> its state
        self.pools: dict[str, LinkPool[_Series]] = {}  # category -> its connections
        self._budget: ConnectBudget | None = None  # one for every category's connections
        self._last_ping: dict[int, float] = {}  # id(link) -> when its connection was last pinged
        self._req = 0
        self._pending: dict[str, list[str]] = {}  # subscribe req_id -> the series symbols it asked for
        self.out_of_order = 0
        self.duplicates = 0
        self.venue_errors: Counter[str] = Counter()
        self.refused_symbols: dict[str, str] = {}
        self.pings = 0
        self._skips = SkipLog(log, "frames")
        self._kinds_logged = 0
        self._ts_low = 0
        self._ts_high = 2**62

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    def add(self, st: Series) -> None:
        try:
            category, name = bybit.parse_symbol(st.instrument.symbol, self.category)
        except ValueError as exc:
            raise BadInput(f"{st.instrument}: {exc}") from None
        s = _Series(st, category, name)
        pool = self.pools.get(category) or self._new_pool(category)
        topics = self._topics(s)
        pool.place(s, len(topics), sum(len(t) for t in topics))
        self.states.append(st)
        self._series[(category, name)] = s
        self._of[id(st)] = s

    def _new_pool(self, category: str) -> LinkPool[_Series]:
        assert VENUE.stream_limits is not None

        def sink(link: Link[_Series]) -> FrameSink:
            return lambda frame: self.on_frame(category, frame)

        pool: LinkPool[_Series] = LinkPool(
            f"bybit-{category}",
            VENUE.stream_limits,
            url=self.ws_url + bybit.ws_path(category),
            frames_of=sink,
            on_connect=self._on_connect,
            connect_budget=self.connect_budget,
            stale_after_s=self.stale_after_s,
            budget=self._budget,
            backoff_cap_s=BACKOFF_CAP_S,
        )
        if self._budget is None:  # made now: within the part of the venue's budget kept so far
            pool.budget.share(self.shares[1])
        self._budget = pool.budget
        self.pools[category] = pool
        return pool

    @property
    def streams(self) -> dict[str, Stream]:
        """Each category's first connection."""
        return {c: pool.links[0].ws for c, pool in self.pools.items() if pool.links}

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        s = self._of[id(st)]
        now = now_ms if now_ms is not None else self.clock.now_ms()
        return await self.history.candles(s.category, s.name, timeframe, start_ms, end_ms, now)

    # --- connection -----------------------------------------------------------------------------

    async def check(self) -> None:
        """Read the venue's time and check every symbol exists in its category; :class:`BadInput` naming the fix."""
        try:
            self.clock.observe(await self.history.server_time())
            unknown: list[str] = []
            known: list[str] = []
            for category in self.pools:
                names = await self.history.symbols(category)
                known += [bybit.series_symbol(category, n, self.category) for n in names]
                unknown += [
                    bybit.series_symbol(category, s.name, self.category)
                    for s in self._series.values()
                    if s.category == category and s.name not in names
                ]
        except VenueUnreachable as exc:
            await self.history.close()
            raise BadInput(f"{exc}; check --rest-url and that the venue (or replica) is running") from None
        except VenueError as exc:
            await self.history.close()
            raise BadInput(f"the venue refused our first request ({exc}); check --rest-url") from None
        if unknown:
            await self.history.close()  # the run ends here: leave no session open
            raise BadInput(unknown_symbols_message("bybit", self.rest_url, unknown, known))
        self._update_skew_bounds()

    def _topics(self, s: _Series) -> list[str]:
        topics = [bybit.trade_topic(s.name)]
        if self.venue_klines:
            topics += [bybit.kline_topic(s.name, tf) for tf in s.st.builder.timeframes if tf in bybit.INTERVAL_OF]
        return topics

    def _send_subscribe(self, link: Link[_Series], ws: Stream, states: list[_Series], subscribe: bool) -> None:
        # One request per series: a refusal then names its symbol, and spot's 10-args cap holds.
        for s in states:
            for part in link.pool.limits.chunks(self._topics(s)):
                self._req += 1
                rid = f"df{self._req}"
                if subscribe:
                    self._pending[rid] = [s.st.instrument.symbol]
                    if len(self._pending) > 1024:
                        self._pending.pop(next(iter(self._pending)))
                link.send(ws, (bybit.subscribe if subscribe else bybit.unsubscribe)(list(part), rid))

    def _on_connect(self, link: Link[_Series], ws: Stream) -> None:
        # Whatever traded while the link was away is unknown: skip an id so each of its series' next
        # trade reveals the hole; then subscribe (Bybit remembers nothing across connections).
        for s in link.members:
            s.next_id += 1
        self._last_ping[id(link)] = ws.connected_at
        self._send_subscribe(
            link,
            ws,
            [s for s in link.members if s.st.active and s.st.instrument.symbol not in self.refused_symbols],
            True,
        )

    def connected(self) -> bool:
        return bool(self.pools) and all(pool.connected() for pool in self.pools.values())

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start()

    def _update_skew_bounds(self) -> None:
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        """Learn the venue's time from the trades, and ping every connection every 20 s."""
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self._update_skew_bounds()
        for pool in self.pools.values():
            for link in pool.links:
                ws = link.ws
                if ws.connected.is_set() and mono - self._last_ping.get(id(link), 0.0) >= bybit.PING_EVERY_S:
                    self._last_ping[id(link)] = mono
                    self._req += 1
                    self.pings += 1
                    link.send(ws, bybit.ping(f"df{self._req}"))
            await pool.tick(mono)

    def control(self, subscribe: bool, states: list[Series]) -> None:
        """Subscribe or unsubscribe ``states`` on the live connections of their links."""
        mine = [self._of[id(st)] for st in states]
        for pool in self.pools.values():
            for link, group in pool.by_link(mine):
                if link.ws.connected.is_set():
                    self._send_subscribe(link, link.ws, group, subscribe)

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``

    async def stop(self) -> None:
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, category: str, frame: bytes | memoryview) -> None:
        ev = self.decoder.decode(frame)
        if len(self.decoder.errors) > self._kinds_logged:  # a new kind, maybe from an item of a message
            self._kinds_logged = len(self.decoder.errors)
            self._log_errors()
        if type(ev) is bybit.Trades:
            s = self._series.get((category, ev.symbol))
            if s is None or not s.st.active:
                return
            st = s.st
            late = 0  # the oldest trade time dropped as out of order, 0 for none
            for t, vid in zip(ev.trades, ev.ids, strict=True):
                if s.seen(vid):
                    self.duplicates += 1
                    continue
                if not self._ts_low <= t.time_ms <= self._ts_high:
                    self.decoder.errors["impossible_value"] += 1
                    self.decoder.last_error = f"trade time far from the venue's clock: {t}"
                    self._log_errors()
                    continue
                if t.time_ms < st.last_trade_ms:
                    # Its candle may be closed already: it is repaired from history instead.
                    self.out_of_order += 1
                    late = t.time_ms if not late else min(late, t.time_ms)
                    continue
                t.trade_id = s.next_id
                s.next_id += 1
                st.on_trade(t)
                if st.publish_trades:
                    self._on_trade(st, t)
            if late:
                st.on_loss(late, st.last_trade_ms)
            self.clock.observe(ev.ts)
        elif type(ev) is list:
            if not self.venue_klines or not ev:
                return
            s = self._series.get((category, ev[0].symbol))
            if s is None or not s.st.active:
                return
            for vc in ev:
                self.clock.observe(vc.event_ms)
                s.st.on_venue_candle(vc.timeframe, vc.candle, -1)
        elif type(ev) is bybit.Reply and not ev.success:
            self._refused(category, ev)

    def _refused(self, category: str, r: bybit.Reply) -> None:
        kind = f"{r.op}_refused"
        first = kind not in self.venue_errors
        self.venue_errors[kind] += 1
        symbols = self._pending.pop(r.req_id, [])
        for sym in symbols:
            if sym not in self.refused_symbols:
                self.refused_symbols[sym] = r.ret_msg
                log.error(
                    "bybit refused the subscription to %s (%s): %s; the other symbols keep streaming",
                    sym,
                    category,
                    r.ret_msg,
                )
        if first and not symbols:
            log.warning("bybit refused %s on %s: %s (counted in status, logged once)", r.op, category, r.ret_msg)

    def _log_errors(self) -> None:
        self._skips.report(self.decoder.errors, self.decoder.last_error)

    # --- visibility -----------------------------------------------------------------------------

    def connect_limits(self) -> list[Shareable]:
        return [self._budget] if self._budget is not None else []  # one for every category's connections

    def report(self) -> FeedStatus:
        skipped = dict(self.decoder.errors)
        if self.duplicates:
            skipped["duplicate_trade"] = self.duplicates
        counts = [pool.counts() for pool in self.pools.values()]
        keys = ("connections", "connects", "reconnects", "stale_drops", "frames")
        total = {k: sum(c[k] for c in counts) for k in keys}
        return FeedStatus(
            **total,
            connected=self.connected(),
            rotations=0,
            connect_budget_waits=self._budget.waits if self._budget is not None else 0,
            skipped_frames=skipped,
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
            out_of_order=self.out_of_order,
            venue_errors=dict(self.venue_errors) or None,
            refused_symbols=dict(self.refused_symbols) or None,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
