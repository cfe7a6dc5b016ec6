"""Hands every candle of the engine on to the hot tier, the cold store and the API's consumers,
the same candle to all three, so they agree; and remembers which closed candles are not final yet."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import msgspec

from deltafeed.candles.aggregator import ClosedSink
from deltafeed.model import Candle, Trade, timeframe
from deltafeed.store.writer import BacklogFull

if TYPE_CHECKING:
    from deltafeed.engine.core import Engine
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.engine")

PROVISIONAL_MAX = 50_000  # provisional candles remembered per series and timeframe (the store keeps all)
LIVE_PENDING_MAX = 100_000  # live candles closed and not yet stored, timed for the latency figures


class Publisher:
    """The engine's outlet: where closed and forming candles, trades and prices go."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: Candle updates the store's backlog had no room for (memory's bound was reached).
        self.store_dropped = 0
        #: Live candles closed and not yet stored: (series, timeframe, open time) -> (monotonic
        #: time closed, seconds from the candle's end to its close). Only the stream's closes are
        #: here, so the latency figures leave history from REST out.
        self._live: dict[tuple[str, str, int], tuple[float, float]] = {}
        #: The latest open time the stream closed per (series, timeframe): a candle closed again
        #: (vouched final after a provisional close, corrected) is timed at its first close only.
        self._last_closed: dict[tuple[str, str], int] = {}

    def closed_sink(self, key: str) -> ClosedSink:
        """What the builders of series ``key`` call with each candle they close."""

        def closed(tf: str, candle: Candle) -> None:
            self._closed_live(key, tf, candle)
            self.final(key, tf, candle)

        return closed

    def _closed_live(self, key: str, tf: str, candle: Candle) -> None:
        """Time a candle the stream closed: how long after its end (venue clock, in the venue's
        seconds scaled to wall time when a replica's clock runs fast), and when, for its store."""
        e = self.engine
        if e.streaming_since is None:
            return  # the bootstrap seeding a rollup with history: not live
        last = self._last_closed.get((key, tf))
        if last is not None and candle.open_time <= last:
            return  # closed before: its first close was timed
        self._last_closed[(key, tf)] = candle.open_time
        clock = e.states[key].feed.clock
        late_s = max(0.0, (clock.now_ms() - timeframe(tf).next(candle.open_time)) / 1000 / clock.rate)
        e.metrics.candle_close.observe(late_s)
        live = self._live
        if len(live) >= LIVE_PENDING_MAX:
            del live[next(iter(live))]  # the store is far behind: forget the oldest timing
        live[(key, tf, candle.open_time)] = (e.clock.monotonic(), late_s)

    def trade(self, st: Series, trade: Trade) -> None:
        """A trade of a series some consumer wants (the feeds call this)."""
        hub = self.engine.hub
        if hub is not None:
            hub.trade(st.key, trade)

    def final(self, key: str, timeframe: str, candle: Candle) -> None:
        """A closed candle, final or provisional (closed by the builder, from REST, a correction of
        an earlier one, or one vouched for later): to the hot tier, the store and every consumer,
        so all three agree; and on to the rollup and the logical series it feeds. Provisional ones
        are remembered until they are final (see :meth:`Completeness.reconcile_due` and
        :meth:`Completeness.final_marks`)."""
        e = self.engine
        st = e.states[key]
        prov = st.provisional.get(timeframe)
        if prov is None:
            prov = st.provisional[timeframe] = {}
        if candle.final and e.completeness.busy():
            hole = e.completeness.hole_start(key, timeframe)
            if hole is not None and candle.open_time > hole:
                waiting = st.held.setdefault(timeframe, {})
                if candle.open_time not in waiting and len(waiting) >= PROVISIONAL_MAX:
                    del waiting[min(waiting)]  # stays provisional in the store: the audit fetches it
                waiting[candle.open_time] = candle
                candle = msgspec.structs.replace(candle, final=False)
        if candle.final:
            held = st.held.get(timeframe)
            if held:
                held.pop(candle.open_time, None)
            old = prov.pop(candle.open_time, None)
        else:
            old = None
            if candle.open_time not in prov and len(prov) >= PROVISIONAL_MAX:
                # Forgotten here, still provisional in the store: the audit finds it there.
                del prov[min(prov)]
            prov[candle.open_time] = msgspec.structs.replace(candle)
        self.put(key, timeframe, candle)
        rollup = st.rollup
        if rollup is not None and st.rolling and timeframe == rollup.base:
            vouched = old is not None and old.row() == candle.row()
            rollup.on_base(candle, vouched_only=vouched)
            if candle.final:
                self._promote_derived(st, candle.open_time)
        logical = e.failover.logical_of(key)
        if logical is not None:
            self.put(logical, timeframe, candle)

    def _promote_derived(self, st: Series, base_open: int) -> None:
        """A base candle became final: each provisional derived candle holding it whose parts are
        now all final becomes final too (the rollup does this for the buckets it still keeps)."""
        rollup = st.rollup
        assert rollup is not None
        base = st.provisional.get(rollup.base, {})
        for tf in rollup.timeframes:
            grid = timeframe(tf)
            b = grid.start(base_open)
            end = grid.next(b)
            c = st.provisional.get(tf, {}).get(b)
            if c is not None and not any(b <= t < end for t in base):
                self.final(st.key, tf, msgspec.structs.replace(c, final=True))

    def put(self, key: str, timeframe: str, candle: Candle, *, publish: bool = True) -> None:
        """A candle of series ``key`` to the hot tier, the store and (``publish``) every consumer."""
        e = self.engine
        e.hot.put(key, timeframe, candle)
        if e.redis is not None:
            e.redis.put(key, timeframe, candle)
        self._store(key, timeframe, candle)
        if publish and e.hub is not None:
            e.hub.candle(key, timeframe, candle)

    def _store(self, key: str, timeframe: str, candle: Candle) -> None:
        try:
            self.engine.writer.add(key, timeframe, candle)
        except BacklogFull as exc:
            # Memory's bound is reached: say so loudly, keep streaming into the hot tier. Nothing is
            # lost for good: the final marks stop moving, so a restart fetches these candles again.
            if not self.store_dropped:
                log.error("cold store is not keeping up: %s", exc)
            self.store_dropped += 1

    def hot_contents(self) -> Iterable[tuple[str, str, list[Candle]]]:
        """Everything the memory hot tier holds, to re-fill Redis after an outage."""
        e = self.engine
        for key, tf in e.hot.keys():  # noqa: SIM118 - a HotStore, not a dict
            yield key, tf, e.hot.last(key, tf, e.settings.hot_capacity)

    def open(self, st: Series) -> None:
        """The forming candles of a series that changed since the last tick to every tier and to
        consumers, and its latest price. An unchanged candle is not put again: the work per tick
        follows the trades, not the number of instruments."""
        e = self.engine
        key = st.key
        hub = e.hub
        rollup = st.rollup
        if rollup is not None and st.rolling:
            forming = st.builder.open_candle(rollup.base)
            if forming is not None:
                rollup.on_base(forming)
        logical = e.failover.logical_of(key)
        keys = (key, logical) if logical is not None else (key,)
        for tf, c in st.open_candles():
            # A trade moves the volume or the trade count; a venue's candle may move any field; a
            # failover moves the logical series to another source.
            seen = (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, logical)
            if st._published.get(tf) == seen:
                continue
            st._published[tf] = seen
            for k in keys:
                self.put(k, tf, c)
        if hub is not None and st.last_trade_ms != st._published_price_ms:
            st._published_price_ms = st.last_trade_ms
            first = st.open_candles()
            if first:
                hub.price(key, st.last_trade_ms, first[0][1].close)

    def written(self, rows: Sequence[tuple[str, str, Candle]], seconds: float) -> None:
        """The writer stored a batch: record how long it took, and for each live candle closed by
        the stream, how long it took from its close to the store and from its end to the store."""
        e = self.engine
        e.metrics.store_write.observe(seconds)
        live = self._live
        if not live:
            return
        mono = e.clock.monotonic()
        for key, tf, c in rows:
            timing = live.pop((key, tf, c.open_time), None) if c.closed else None
            if timing is not None:
                closed_at, late_s = timing
                store_s = max(0.0, mono - closed_at)
                e.metrics.candle_store.observe(store_s)
                e.metrics.candle_latency.observe(late_s + store_s)
