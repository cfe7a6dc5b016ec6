"""Wires one collector together: REST bootstrap, the stream, candle builders, stores and repairs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec

from deltafeed.candles.aggregator import CandleBuilder, ClosedSink, RepairSink
from deltafeed.candles.calendar import CALENDARS, VENUE_CALENDAR, Calendar
from deltafeed.clock import VenueClock
from deltafeed.config import Settings
from deltafeed.model import TIMEFRAMES, BadInput, Candle, Instrument, ServerShutdown, Trade, VenueCandle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.ws import ConnectBudget, WsStream
from deltafeed.stats import EngineMetrics
from deltafeed.store.cold import ColdStore, StoreError
from deltafeed.store.hot import HotStore
from deltafeed.store.retention import parse_retention
from deltafeed.store.writer import BacklogFull, BatchWriter
from deltafeed.venues import binance
from deltafeed.venues.binance_rest import BinanceHistory

if TYPE_CHECKING:
    from deltafeed.api.hub import Hub

log = logging.getLogger("deltafeed.engine")

TICK_S = 0.2  # how often quiet candles are closed and open candles handed to the stores
CLOSE_GRACE_MS = 2_000  # how far past its end a quiet candle waits for a late trade or venue kline
REPAIR_SETTLE_MS = 1_000  # how long after a candle's end the venue's kline for it is trusted
REPORT_EVERY_S = 60.0  # how often a progress line is logged
BOOTSTRAP_FLUSH_ROWS = 50_000  # bootstrap waits for the store when this many candles are pending
MARK_EVERY_S = 2.0  # how often the "final until" marks are written (after the candles they cover)
MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible


@dataclass
class _Repair:
    """Candles of one series to fetch again over REST, once the venue has closed them."""

    instrument: Instrument
    timeframe: str
    first: int  # open time of the first candle to fetch
    last: int  # open time of the last one
    found: float = field(default_factory=time.monotonic)  # when the hole was found


@dataclass
class InstrumentState:
    """Per-instrument counters the status view and the API read."""

    instrument: Instrument
    builder: CandleBuilder
    calendar: Calendar
    trades: int = 0
    venue_candles: int = 0
    last_trade_ms: int = 0
    last_message: float = 0.0  # monotonic time of the latest trade or kline
    repaired: int = 0
    bootstrapped: int = 0
    # Open time up to which stored candles are known final, per timeframe, from the bootstrap;
    # once trades flow, the builder's position takes over (see Engine.final_marks).
    bootstrap_marks: dict[str, int] = field(default_factory=dict)
    active: bool = True  # streaming; POST /streaming/stop turns it off
    publish_trades: bool = False  # a consumer wants this instrument's trades
    messages_per_s: float = 0.0  # trades and venue candles, smoothed over ~5 s
    _seen: int = 0
    _published: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    _published_price_ms: int = 0

    @property
    def key(self) -> str:
        return str(self.instrument)


class Engine:
    """Collects candles for every configured instrument of one venue, and never loses one.

    Start-up: read the venue's time, check the symbols, fill history over REST from the point
    where stored candles stop being known final (the mark written while running; otherwise the last
    closed candle, or ``history`` back), audit the store for holes, then stream.

    While streaming, candles whose trades were not all seen (the one forming when the stream
    started, every one a trade-id hole touches, every one an audit finds missing) are fetched again
    over REST once the venue has closed them, under the same rate limiter as the bootstrap. The
    connection is watched (no data for ``stale_after`` drops it), rebuilt with backoff, and
    replaced without a gap before the venue's 24 h cut-off or when it announces a shutdown.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instruments = settings.instruments()
        self.timeframes = settings.timeframes
        self.venue_clock = VenueClock()
        self.hot = HotStore(settings.hot_capacity)
        self.cold = ColdStore(settings.db, parse_retention(settings.retention))
        self.writer = BatchWriter(self.cold, on_written=self._written)
        self.metrics = EngineMetrics()
        self.hub: Hub | None = None  # set by the API server; receives candles, trades and prices
        self.history = BinanceHistory(settings.rest_url, settings.weight_limit)
        self.decoder = binance.StreamDecoder()
        self.states: dict[str, InstrumentState] = {}
        self._by_symbol: dict[str, InstrumentState] = {}
        calendar = CALENDARS[VENUE_CALENDAR[settings.venue]]
        for inst in self.instruments:
            st = InstrumentState(inst, CandleBuilder(self.timeframes, self._closed_sink(inst),
                                                     self._repair_sink(inst)), calendar)
            self.states[str(inst)] = st
            self._by_symbol[inst.symbol] = st
        streams = self._streams(self.states.values())
        if len(streams) > binance.MAX_STREAMS_PER_CONNECTION:
            raise BadInput(f"{len(streams)} streams exceed Binance's {binance.MAX_STREAMS_PER_CONNECTION} "
                           "per connection; collect fewer symbols or timeframes per run")
        self._request_id = 0
        self.budget = ConnectBudget(settings.connect_budget, 300.0)
        self.ws = self._new_stream()
        self._ws_task: asyncio.Task[None] | None = None
        self._next: WsStream | None = None  # the replacement during a rotation
        self._next_task: asyncio.Task[None] | None = None
        self.rotations = 0
        self.past_connects = 0  # connections made by streams already rotated away
        self._repairs: deque[_Repair] = deque()
        self._repair_inflight: _Repair | None = None
        self._repair_wakeup = asyncio.Event()
        self.recovery_s: deque[float] = deque(maxlen=10_000)  # hole found -> candles repaired
        self._tasks: list[asyncio.Task[None]] = []
        self._logged_error_kinds: set[str] = set()
        self._ts_low = 0
        self._ts_high = 2**62
        self.store_dropped = 0
        self.audits = 0
        self.audit_gaps = 0
        self.shutdown_notices = 0
        self._started = time.monotonic()

    def _streams(self, states: Iterable[InstrumentState]) -> list[str]:
        kline_tfs = self.timeframes if self.settings.venue_klines else []
        return [s for st in states for s in binance.streams_for(st.instrument.symbol, kline_tfs)]

    def _url(self) -> str:
        """The combined-stream URL of the instruments streaming now (a reconnect resubscribes them)."""
        streams = self._streams(st for st in self.states.values() if st.active)
        if not streams:
            return self.settings.ws_url.rstrip("/") + "/stream"
        return binance.combined_url(self.settings.ws_url, streams)

    def _new_stream(self) -> WsStream:
        return WsStream(self._url, self.on_frame, name=self.settings.venue,
                        stale_after_s=self.settings.seconds("stale_after"), budget=self.budget)

    # --- sinks the candle builders call ---------------------------------------------------------

    def _closed_sink(self, inst: Instrument) -> ClosedSink:
        key = str(inst)

        def closed(timeframe: str, candle: Candle) -> None:
            self._final(key, timeframe, candle)

        return closed

    def _final(self, key: str, timeframe: str, candle: Candle) -> None:
        """A final candle (closed by the builder, from REST, or a correction of an earlier one):
        to the hot tier, the store and every consumer, so all three agree."""
        self.hot.put(key, timeframe, candle)
        self._store(key, timeframe, candle)
        if self.hub is not None:
            self.hub.candle(key, timeframe, candle)

    def _store(self, key: str, timeframe: str, candle: Candle) -> None:
        try:
            self.writer.add(key, timeframe, candle)
        except BacklogFull as exc:
            # Memory's bound is reached: say so loudly, keep streaming into the hot tier. Nothing is
            # lost for good: the final marks stop moving, so a restart fetches these candles again.
            if not self.store_dropped:
                log.error("cold store is not keeping up: %s", exc)
            self.store_dropped += 1

    def _repair_sink(self, inst: Instrument) -> RepairSink:
        def repair(timeframe: str, first: int, last: int) -> None:
            self._repairs.append(_Repair(inst, timeframe, first, last))
            self._repair_wakeup.set()

        return repair

    # --- the stream -----------------------------------------------------------------------------

    def on_frame(self, frame: bytes | memoryview) -> None:
        """Decode one frame and fold it in (the hot path: no await, no log, no allocation to spare)."""
        ev = self.decoder.decode(frame)
        if type(ev) is Trade:
            st = self._by_symbol.get(ev.symbol)
            if st is None:
                return
            if ev.price <= 0 or ev.qty <= 0 or not self._ts_low <= ev.time_ms <= self._ts_high:
                self.decoder.errors["impossible_value"] += 1
                self.decoder.last_error = f"impossible trade {ev}"
                self._log_decode_errors()
                return
            st.builder.on_trade(ev)
            st.trades += 1
            st.last_trade_ms = ev.time_ms
            if st.publish_trades and self.hub is not None:
                self.hub.trade(st.key, ev)
            return
        if ev is None:
            self._log_decode_errors()
        elif type(ev) is VenueCandle:
            st = self._by_symbol.get(ev.symbol)
            if st is not None:
                self.venue_clock.observe(ev.event_ms)
                st.venue_candles += 1
                st.builder.on_venue_candle(ev.timeframe, ev.candle, ev.last_trade_id)
        elif type(ev) is ServerShutdown:
            self.shutdown_notices += 1
            log.warning("%s announced a server shutdown; moving to a new connection", self.settings.venue)
            self._rotate()

    def _log_decode_errors(self) -> None:
        for kind in self.decoder.errors.keys() - self._logged_error_kinds:
            self._logged_error_kinds.add(kind)
            log.warning("skipping %s frames (first: %s); counted in status", kind, self.decoder.last_error)

    # --- rotation -------------------------------------------------------------------------------

    def _rotate(self) -> None:
        """Open a second connection; the first is closed once the second delivers (see _tick)."""
        if self._next is not None:
            return
        self._next = self._new_stream()
        self._next_task = asyncio.create_task(self._next.run(), name="ws-next")

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
        log.info("rotated to a new %s connection without a gap", self.settings.venue)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the venue and the symbols, bootstrap and audit history, then start streaming."""
        try:
            self.venue_clock.observe(await self.history.server_time())
            known = await self.history.symbols()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that the venue (or replica) is running") from None
        except VenueError as exc:
            raise BadInput(f"the venue refused our first request ({exc}); check --rest-url") from None
        unknown = [i.symbol for i in self.instruments if i.symbol not in known]
        if unknown:
            raise BadInput(f"unknown symbol(s) on {self.settings.venue} at {self.settings.rest_url}: "
                           f"{', '.join(unknown)}; check --symbols")
        self.update_skew_bounds()
        self._tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        marks = await asyncio.to_thread(self.cold.final_marks)
        await asyncio.gather(*(self._bootstrap(st, marks) for st in self.states.values()))
        await self._audit()
        self._ws_task = asyncio.create_task(self.ws.run(), name="ws")
        self._tasks.append(asyncio.create_task(self._tick(), name="tick"))
        self._tasks.append(asyncio.create_task(self._repair_loop(), name="repairs"))
        self._tasks.append(asyncio.create_task(self._mark_loop(), name="marks"))
        self._tasks.append(asyncio.create_task(self._audit_loop(), name="audit"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
        if self.settings.status_file:
            self._tasks.append(asyncio.create_task(self._status_file_loop(), name="status-file"))

    async def _bootstrap(self, st: InstrumentState, marks: dict[tuple[str, str], int]) -> None:
        """Fill each timeframe from where stored candles stop being known final, up to now."""
        now = self.venue_clock.now_ms()
        key = str(st.instrument)
        for tf in self.timeframes:
            ms = TIMEFRAMES[tf]
            # Warm the hot tier from the store, so readers see history from the first second.
            for c in await asyncio.to_thread(self.cold.query, key, tf, None, None, self.settings.hot_capacity):
                self.hot.put(key, tf, c)
            last = await asyncio.to_thread(self.cold.last_closed, key, tf)
            start = last.open_time + ms if last else now - self.settings.history_ms
            mark = marks.get((key, tf))
            if last is not None and mark is not None and mark < start:
                # The previous run ended without vouching for these (a kill -9, a crash, a store
                # outage): fetch them again rather than trust them.
                log.info("%s %s: re-fetching %d candles the last run did not confirm", key, tf,
                         (start - mark) // ms)
                start = mark
            start -= start % ms
            if last is not None:
                st.builder.seed(tf, last)
            st.bootstrap_marks[tf] = start
            # Page by page, handing each to the store, so a deep history (30 days of 1s candles)
            # never sits in memory whole.
            span = self.history.page_span_ms(tf)
            count = 0
            for t in range(start, now + 1, span):
                candles = await self.history.candles(st.instrument.symbol, tf, t, min(now, t + span - 1), now)
                closed = [c for c in candles if c.closed]
                for c in closed:
                    self._final(key, tf, c)
                if closed:
                    st.builder.seed(tf, closed[-1])
                    st.bootstrap_marks[tf] = closed[-1].open_time + ms
                count += len(closed)
                if self.writer.pending >= BOOTSTRAP_FLUSH_ROWS:
                    await self.writer.flush()
            st.bootstrapped += count
            log.info("%s %s: %d candles from REST history", st.instrument, tf, count)

    async def _tick(self) -> None:
        """Every TICK_S: settle held trades, close quiet candles, publish open candles, rotate."""
        next_report = time.monotonic() + REPORT_EVERY_S
        rotate_after = self.settings.seconds("rotate_after")
        held_last_tick: set[str] = set()
        while True:
            await asyncio.sleep(TICK_S)
            mono = time.monotonic()
            if mono >= next_report:
                next_report += REPORT_EVERY_S
                self._report()
            for key, st in self.states.items():
                seen = st.trades + st.venue_candles
                st.messages_per_s += ((seen - st._seen) / TICK_S - st.messages_per_s) * (TICK_S / 5.0)
                if seen != st._seen:
                    st._seen = seen
                    st.last_message = mono
                st.publish_trades = self.hub is not None and self.hub.wants_trades(key)
                if st.last_trade_ms:
                    self.venue_clock.observe(st.last_trade_ms)
                # A trade held back for a hole before it gets one more tick for the hole to fill.
                if st.builder.held:
                    if key in held_last_tick:
                        st.builder.release_held()
                        held_last_tick.discard(key)
                    else:
                        held_last_tick.add(key)
                else:
                    held_last_tick.discard(key)
            self.update_skew_bounds()
            now = self.venue_clock.now_ms()
            # At least a second of wall time for the last trades of a candle to arrive, however
            # fast the venue's clock runs (a replica's may run 120 times as fast).
            grace = max(CLOSE_GRACE_MS, int(1000 * self.venue_clock.rate))
            for st in self.states.values():
                st.builder.advance(now - grace)
                self._publish_open(st)
            if self._next is not None and self._next.frames > 0:
                await self._finish_rotation()
            elif self._next is None and self.ws.connected_at and mono - self.ws.connected_at > rotate_after:
                log.info("connection is %.0f s old; rotating before the venue cuts it", mono - self.ws.connected_at)
                self._rotate()

    def update_skew_bounds(self) -> None:
        """Trades further than MAX_SKEW_MS from the venue's clock are refused as impossible."""
        now = self.venue_clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    def _publish_open(self, st: InstrumentState) -> None:
        key = st.key
        hub = self.hub
        for tf, c in st.builder.open_candles():
            self.hot.put(key, tf, c)
            self._store(key, tf, c)
            if hub is not None:
                seen = (c.open_time, c.close, c.volume)
                if st._published.get(tf) != seen:
                    st._published[tf] = seen
                    hub.candle(key, tf, c)
        if hub is not None and st.last_trade_ms != st._published_price_ms:
            st._published_price_ms = st.last_trade_ms
            first = st.builder.open_candles()
            if first:
                hub.price(key, st.last_trade_ms, first[0][1].close)

    def _written(self, rows: Sequence[tuple[str, str, Candle]], seconds: float) -> None:
        """The writer stored a batch: record how long it took, and how long after its end each
        final candle reached the store (by the venue's clock)."""
        self.metrics.store_write.observe(seconds)
        now = self.venue_clock.now_ms()
        for _, tf, c in rows:
            if c.closed:
                self.metrics.candle_latency.observe(max(0.0, (now - c.open_time - TIMEFRAMES[tf]) / 1000))

    def _report(self) -> None:
        """One log line of progress for whoever watches the process."""
        trades = sum(st.trades for st in self.states.values())
        gaps = sum(st.builder.gaps for st in self.states.values())
        repaired = sum(st.repaired for st in self.states.values())
        state = "connected" if self.ws.connected.is_set() else "DISCONNECTED"
        log.info("%s; %d trades, %d candles written (%d pending), %d gaps, %d candles repaired, %d frames skipped",
                 state, trades, self.writer.written, self.writer.pending, gaps, repaired,
                 sum(self.decoder.errors.values()))

    # --- repairs, marks and audits --------------------------------------------------------------

    async def _repair_loop(self) -> None:
        """Fetch from REST every candle a builder could not vouch for, once the venue closed it."""
        while True:
            if not self._repairs:
                self._repair_wakeup.clear()
                await self._repair_wakeup.wait()
                continue
            job = self._repairs.popleft()
            self._repair_inflight = job
            try:
                again = await self._repair(job)
            finally:
                self._repair_inflight = None
            if again is not None:
                self._repairs.append(again)
                if again is job:  # not ready yet: look again shortly
                    await asyncio.sleep(0.1)

    async def _repair(self, job: _Repair) -> _Repair | None:
        """Repair what of ``job`` is ready; returns what is left to do (``job`` itself if nothing was)."""
        tf_ms = TIMEFRAMES[job.timeframe]
        st = self.states[str(job.instrument)]
        # Ready: the venue's clock is past the candle's end and our builder has moved on from it.
        ready_until = self.venue_clock.now_ms() - REPAIR_SETTLE_MS
        ready_until -= ready_until % tf_ms
        open_c = st.builder.open_candle(job.timeframe)
        limit = min(job.last, ready_until - tf_ms)
        if open_c is not None:
            limit = min(limit, open_c.open_time - tf_ms)
        if limit < job.first:
            return job
        try:
            candles = await self.history.candles(job.instrument.symbol, job.timeframe, job.first, limit)
        except (VenueError, VenueUnreachable) as exc:
            log.warning("repair of %s %s failed (%s); will retry", job.instrument, job.timeframe, exc)
            await asyncio.sleep(1.0)
            return job
        key = str(job.instrument)
        done = job.first
        for c in candles:
            if not c.closed:
                break
            self._final(key, job.timeframe, c)
            st.repaired += 1
            done = c.open_time + tf_ms
        if done <= job.last:
            return _Repair(job.instrument, job.timeframe, done, job.last, job.found)
        self.recovery_s.append(time.monotonic() - job.found)
        return None

    def final_marks(self) -> dict[tuple[str, str], int]:
        """Per series, the open time before which every candle handed to the store is final.

        A candle is final when it came from the venue (REST, a closed kline) or was built from an
        unbroken run of trades that continued past it. So the mark is the candle holding the last
        trade, pulled back to the first candle still waiting for a repair; before any trade it is
        where the bootstrap got to.
        """
        marks: dict[tuple[str, str], int] = {}
        for key, st in self.states.items():
            b = st.builder
            for tf in self.timeframes:
                ms = TIMEFRAMES[tf]
                if b.last_trade_ms >= 0:
                    marks[(key, tf)] = b.last_trade_ms - b.last_trade_ms % ms
                elif tf in st.bootstrap_marks:
                    marks[(key, tf)] = st.bootstrap_marks[tf]
        waiting = list(self._repairs)
        if self._repair_inflight is not None:
            waiting.append(self._repair_inflight)
        for job in waiting:
            k = (str(job.instrument), job.timeframe)
            if k in marks:
                marks[k] = min(marks[k], job.first)
        return marks

    async def _write_marks(self) -> None:
        """Write the candles handed over so far, then the marks that vouch for them."""
        marks = self.final_marks()
        await self.writer.flush()
        await asyncio.to_thread(self.cold.set_final_marks, marks)

    async def _mark_loop(self) -> None:
        while True:
            await asyncio.sleep(MARK_EVERY_S)
            try:
                await self._write_marks()
            except StoreError as exc:
                log.warning("cannot write to the store yet (%s); candles stay queued and are retried", exc)

    async def _audit(self) -> None:
        """Check the stored series for holes and unfinished candles; each becomes a repair."""
        now = self.venue_clock.now_ms()
        since = now - int(self.settings.seconds("audit_window") * 1000)
        self.audits += 1
        for key, st in self.states.items():
            for tf in self.timeframes:
                ms = TIMEFRAMES[tf]
                for first, last in await asyncio.to_thread(self.cold.find_gaps, key, tf, ms, since, now):
                    if st.calendar.open_between(first, last + ms):
                        self.audit_gaps += 1
                        log.warning("audit: %s %s has a hole from %d to %d; fetching it", key, tf, first, last)
                        self._repair_sink(st.instrument)(tf, first, last)

    async def _audit_loop(self) -> None:
        every = self.settings.seconds("audit_every")
        while True:
            await asyncio.sleep(every)
            try:
                await self.writer.flush()
                await self._audit()
            except StoreError as exc:
                log.warning("store audit postponed: %s", exc)

    async def _retention_loop(self) -> None:
        while True:
            try:
                deleted = await asyncio.to_thread(self.cold.apply_retention, self.venue_clock.now_ms())
            except StoreError as exc:
                log.warning("retention postponed: %s", exc)
            else:
                if deleted:
                    log.info("retention removed %d old candles", deleted)
            await asyncio.sleep(3600)

    def write_status_file(self) -> None:
        """Write :meth:`status` (and the recovery times) as JSON, replacing the file atomically."""
        path = self.settings.status_file
        if not path:
            return
        doc = {**self.status(), "recovery_s": list(self.recovery_s)}
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(doc))
        os.replace(tmp, path)

    async def _status_file_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                self.write_status_file()
            except OSError as exc:
                log.warning("cannot write the status file: %s", exc)

    async def stop(self) -> None:
        """Stop streaming and write everything out; meant to finish well inside 2 seconds."""
        streams = [(self.ws, self._ws_task), (self._next, self._next_task)]
        await asyncio.gather(*(s.close() for s, _ in streams if s is not None))
        for t in self._tasks:
            if t.get_name() != "writer":
                t.cancel()
        for _, task in streams:
            if task is not None:
                task.cancel()
        for st in self.states.values():
            self._publish_open(st)
        if self.hub is not None:
            await self.hub.close()
        marks = self.final_marks()
        await self.writer.close()
        with contextlib.suppress(StoreError):
            await asyncio.to_thread(self.cold.set_final_marks, marks)
        for t in [*self._tasks, *(task for _, task in streams if task is not None)]:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.history.close()
        await asyncio.to_thread(self.cold.close)
        with contextlib.suppress(OSError):
            self.write_status_file()

    # --- serving --------------------------------------------------------------------------------

    def instrument_names(self) -> list[str]:
        return list(self.states)

    def snapshot(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        """The last ``n`` candles of a series from the hot tier, the forming one last (copies)."""
        st = self.states.get(instrument)
        if st is None or timeframe not in self.timeframes or n <= 0:
            return []
        # The hot tier holds every closed candle and the forming one as of the last tick; the
        # builder's forming candle is newer still.
        out = self.hot.last(instrument, timeframe, n + 1)
        live = st.builder.open_candle(timeframe)
        if live is not None:
            out = [c for c in out if c.open_time < live.open_time]
            out.append(msgspec.structs.replace(live))
        return out[-n:]

    async def candles(self, instrument: str, timeframe: str, since_ms: int | None = None,
                      until_ms: int | None = None, limit: int | None = None) -> list[Candle]:
        """Candles of a series, oldest first, the forming one included: from the hot tier when it
        covers the range, else from the cold store. ``limit`` keeps the newest ``limit``."""
        hi = until_ms if until_ms is not None else 2**62
        rows: list[Candle] | None = None
        if since_ms is not None:
            rows = self.hot.range(instrument, timeframe, since_ms, hi)  # None: the ring starts later
        elif until_ms is None and limit is not None:
            recent = self.hot.last(instrument, timeframe, limit)
            rows = recent if len(recent) >= limit else None
        if rows is None:
            await self.writer.flush()  # so the store has everything the hot tier has
            rows = await asyncio.to_thread(self.cold.query, instrument, timeframe, since_ms, until_ms, limit)
        st = self.states.get(instrument)
        live = st.builder.open_candle(timeframe) if st is not None else None
        if live is not None and (since_ms is None or since_ms <= live.open_time) and live.open_time <= hi:
            rows = [c for c in rows if c.open_time != live.open_time] + [msgspec.structs.replace(live)]
        return rows[-limit:] if limit is not None else rows

    @property
    def hot_capacity(self) -> int:
        return self.settings.hot_capacity

    def _control(self, method: str, states: list[InstrumentState]) -> None:
        streams = self._streams(states)
        if not streams:
            return
        for ws in (self.ws, self._next):
            if ws is not None and ws.connected.is_set():
                self._request_id += 1
                body = binance.subscribe(streams, self._request_id) if method == "SUBSCRIBE" else \
                    binance.unsubscribe(streams, self._request_id)
                ws.send(body)

    def _pick(self, instruments: list[str] | None) -> list[InstrumentState]:
        if instruments is None:
            return list(self.states.values())
        unknown = [i for i in instruments if i not in self.states]
        if unknown:
            raise BadInput(f"unknown instrument(s) {', '.join(unknown)}; this run collects "
                           f"{', '.join(self.states)}")
        return [self.states[i] for i in instruments]

    async def start_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Resume streaming the named instruments (all when None); returns those streaming now.
        Whatever was missed meanwhile is repaired: their next trade reveals the hole."""
        picked = [st for st in self._pick(instruments) if not st.active]
        for st in picked:
            st.active = True
            self._by_symbol[st.instrument.symbol] = st
        self._control("SUBSCRIBE", picked)
        return [k for k, st in self.states.items() if st.active]

    async def stop_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Stop streaming the named instruments (all when None); returns those still streaming."""
        picked = [st for st in self._pick(instruments) if st.active]
        for st in picked:
            st.active = False
            self._by_symbol.pop(st.instrument.symbol, None)
        self._control("UNSUBSCRIBE", picked)
        return [k for k, st in self.states.items() if st.active]

    # --- visibility -----------------------------------------------------------------------------

    def health(self) -> list[str]:
        """Reasons the collector is not healthy; empty when it is."""
        reasons = []
        if not self.ws.connected.is_set():
            reasons.append(f"{self.settings.venue} disconnected")
        if self.writer.last_error is not None:
            reasons.append(f"store failing: {self.writer.last_error}")
        if self.store_dropped:
            reasons.append(f"store backlog full: {self.store_dropped} candle updates not queued")
        limit = self.settings.seconds("unhealthy_after")
        mono = time.monotonic()
        now = self.venue_clock.now_ms()
        for key, st in self.states.items():
            silent = mono - (st.last_message or self._started)
            if st.active and silent > limit and st.calendar.is_open(now):
                reasons.append(f"{key} stale: no data for {silent:.0f} s while its market is open")
        return reasons

    def status(self) -> dict[str, object]:
        """A snapshot of counters for the terminal view, the API and the chaos benchmark."""
        mono = time.monotonic()
        connects = self.past_connects + self.ws.connects + (self._next.connects if self._next else 0)
        return {
            "venue_time_ms": self.venue_clock.now_ms(),
            "connected": self.ws.connected.is_set(),
            "connections": 1 + (self._next is not None and self._next.connected.is_set()),
            "connects": connects,
            "reconnects": max(0, connects - 1 - self.rotations),
            "rotations": self.rotations,
            "stale_drops": self.ws.stale_drops + (self._next.stale_drops if self._next else 0),
            "connect_budget_waits": self.budget.waits,
            "frames": self.ws.frames,
            "skipped_frames": dict(self.decoder.errors),
            "rest_requests": self.history.http.requests,
            "rest_throttled": self.history.http.throttled,
            "rest_server_errors": self.history.http.server_errors,
            "rest_limiter_waits": self.history.limiter.waits,
            "store_pending": self.writer.pending,
            "store_written": self.writer.written,
            "store_failures": self.writer.failures,
            "store_dropped": self.store_dropped,
            "pending_repairs": len(self._repairs) + (self._repair_inflight is not None),
            "audits": self.audits,
            "audit_gaps": self.audit_gaps,
            "healthy": not self.health(),
            "instruments": {
                k: {
                    "streaming": st.active,
                    "connected": st.active and self.ws.connected.is_set(),
                    "messages_per_s": round(st.messages_per_s, 2),
                    "trades": st.trades,
                    "last_trade_ms": st.last_trade_ms,
                    "last_message_age_s": round(mono - st.last_message, 3) if st.last_message else None,
                    "duplicates": st.builder.duplicates,
                    "gaps": st.builder.gaps,
                    "missed_trades": st.builder.missed_trades,
                    "late_trades": st.builder.late_trades,
                    "held": st.builder.held,
                    "bootstrapped": st.bootstrapped,
                    "repaired": st.repaired,
                }
                for k, st in self.states.items()
            },
        }
