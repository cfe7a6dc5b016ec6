"""Wires one collector together: REST bootstrap, the stream, candle builders, stores and repairs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass

from deltafeed.candles.aggregator import CandleBuilder, ClosedSink, RepairSink
from deltafeed.clock import VenueClock
from deltafeed.config import Settings
from deltafeed.model import TIMEFRAMES, BadInput, Candle, Instrument, ServerShutdown, Trade, VenueCandle
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.ws import WsStream
from deltafeed.store.cold import ColdStore
from deltafeed.store.hot import HotStore
from deltafeed.store.retention import parse_retention
from deltafeed.store.writer import BatchWriter
from deltafeed.venues import binance
from deltafeed.venues.binance_rest import BinanceHistory

log = logging.getLogger("deltafeed.engine")

TICK_S = 0.2  # how often quiet candles are closed and open candles handed to the stores
CLOSE_GRACE_MS = 2_000  # how far past its end a quiet candle waits for a late trade or venue kline
REPAIR_SETTLE_MS = 1_000  # how long after a candle's end the venue's kline for it is trusted
REPORT_EVERY_S = 60.0  # how often a progress line is logged
BOOTSTRAP_FLUSH_ROWS = 50_000  # bootstrap waits for the store when this many candles are pending


@dataclass
class _Repair:
    instrument: Instrument
    timeframe: str
    first: int  # open time of the first candle to fetch
    last: int  # open time of the last one


@dataclass
class InstrumentState:
    """Per-instrument counters the status view and the API read."""

    instrument: Instrument
    builder: CandleBuilder
    trades: int = 0
    venue_candles: int = 0
    last_trade_ms: int = 0
    repaired: int = 0
    bootstrapped: int = 0


class Engine:
    """Collects candles for every configured instrument of one venue.

    Start-up: read the venue's time, check the symbols, fill history from the last stored candle
    (or ``history`` back) over REST, then stream. Candles whose trades were not all seen (the one
    that was forming when the stream started, or any after a trade-id jump) are fetched again
    from REST once the venue has closed them, so stored history equals the venue's.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instruments = settings.instruments()
        self.timeframes = settings.timeframes
        self.venue_clock = VenueClock()
        self.hot = HotStore(settings.hot_capacity)
        self.cold = ColdStore(settings.db, parse_retention(settings.retention))
        self.writer = BatchWriter(self.cold)
        self.history = BinanceHistory(settings.rest_url, settings.weight_limit)
        self.decoder = binance.StreamDecoder()
        self.states: dict[str, InstrumentState] = {}
        self._by_symbol: dict[str, InstrumentState] = {}
        for inst in self.instruments:
            st = InstrumentState(inst, CandleBuilder(self.timeframes, self._closed_sink(inst),
                                                     self._repair_sink(inst)))
            self.states[str(inst)] = st
            self._by_symbol[inst.symbol] = st
        kline_tfs = self.timeframes if settings.venue_klines else []
        streams = [s for inst in self.instruments for s in binance.streams_for(inst.symbol, kline_tfs)]
        if len(streams) > binance.MAX_STREAMS_PER_CONNECTION:
            raise BadInput(f"{len(streams)} streams exceed Binance's {binance.MAX_STREAMS_PER_CONNECTION} "
                           "per connection; collect fewer symbols or timeframes per run")
        self._url = binance.combined_url(settings.ws_url, streams)
        self.ws = WsStream(lambda: self._url, self.on_frame, name="binance")
        self._repairs: deque[_Repair] = deque()
        self._repair_wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._logged_error_kinds: set[str] = set()
        self.started_at = time.monotonic()
        self.shutdown_notices = 0

    # --- sinks the candle builders call ---------------------------------------------------------

    def _closed_sink(self, inst: Instrument) -> ClosedSink:
        key = str(inst)

        def closed(timeframe: str, candle: Candle) -> None:
            self.hot.put(key, timeframe, candle)
            self.writer.add(key, timeframe, candle)

        return closed

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
            if st is not None:
                st.builder.on_trade(ev)
                st.trades += 1
                st.last_trade_ms = ev.time_ms
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
            log.warning("binance announced a server shutdown; the connection will be re-established")

    def _log_decode_errors(self) -> None:
        for kind in self.decoder.errors.keys() - self._logged_error_kinds:
            self._logged_error_kinds.add(kind)
            log.warning("skipping %s frames (first: %s); counted in status", kind, self.decoder.last_error)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the venue and the symbols, bootstrap history, then start streaming."""
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
        self._tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        await asyncio.gather(*(self._bootstrap(st) for st in self.states.values()))
        self._tasks.append(asyncio.create_task(self.ws.run(), name="ws"))
        self._tasks.append(asyncio.create_task(self._tick(), name="tick"))
        self._tasks.append(asyncio.create_task(self._repair_loop(), name="repairs"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))

    async def _bootstrap(self, st: InstrumentState) -> None:
        """Fill each timeframe from its last stored closed candle (or ``history`` back) to now."""
        now = self.venue_clock.now_ms()
        for tf in self.timeframes:
            ms = TIMEFRAMES[tf]
            key = str(st.instrument)
            # Warm the hot tier from the store, so readers see history from the first second.
            for c in await asyncio.to_thread(self.cold.query, key, tf, None, None, self.settings.hot_capacity):
                self.hot.put(key, tf, c)
            last = await asyncio.to_thread(self.cold.last_closed, key, tf)
            start = last.open_time + ms if last else now - self.settings.history_ms
            start -= start % ms
            if last is not None:
                st.builder.seed(tf, last)
            # Page by page, handing each to the store, so a deep history (30 days of 1s candles)
            # never sits in memory whole.
            span = self.history.page_span_ms(tf)
            count = 0
            for t in range(start, now + 1, span):
                candles = await self.history.candles(st.instrument.symbol, tf, t, min(now, t + span - 1), now)
                closed = [c for c in candles if c.closed]
                for c in closed:
                    self.hot.put(key, tf, c)
                    self.writer.add(key, tf, c)
                if closed:
                    st.builder.seed(tf, closed[-1])
                count += len(closed)
                if self.writer.pending >= BOOTSTRAP_FLUSH_ROWS:
                    await self.writer.flush()
            st.bootstrapped += count
            log.info("%s %s: %d candles from REST history", st.instrument, tf, count)

    async def _tick(self) -> None:
        """Close quiet candles by the venue's clock and hand open candles to the stores."""
        next_report = time.monotonic() + REPORT_EVERY_S
        while True:
            await asyncio.sleep(TICK_S)
            if time.monotonic() >= next_report:
                next_report += REPORT_EVERY_S
                self._report()
            for st in self.states.values():
                if st.last_trade_ms:
                    self.venue_clock.observe(st.last_trade_ms)
            now = self.venue_clock.now_ms()
            for st in self.states.values():
                st.builder.advance(now - CLOSE_GRACE_MS)
                self._publish_open(st)

    def _report(self) -> None:
        """One log line of progress for whoever watches the process."""
        trades = sum(st.trades for st in self.states.values())
        gaps = sum(st.builder.gaps for st in self.states.values())
        repaired = sum(st.repaired for st in self.states.values())
        state = "connected" if self.ws.connected.is_set() else "DISCONNECTED"
        log.info("%s; %d trades, %d candles written (%d pending), %d gaps, %d candles repaired, %d frames skipped",
                 state, trades, self.writer.written, self.writer.pending, gaps, repaired,
                 sum(self.decoder.errors.values()))

    def _publish_open(self, st: InstrumentState) -> None:
        key = str(st.instrument)
        for tf, c in st.builder.open_candles():
            self.hot.put(key, tf, c)
            self.writer.add(key, tf, c)

    async def _repair_loop(self) -> None:
        """Fetch from REST every candle a builder could not vouch for, once the venue closed it."""
        while True:
            if not self._repairs:
                self._repair_wakeup.clear()
                await self._repair_wakeup.wait()
                continue
            job = self._repairs.popleft()
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
                self._repairs.append(job)
                await asyncio.sleep(0.25)
                continue
            try:
                candles = await self.history.candles(job.instrument.symbol, job.timeframe, job.first, limit)
            except (VenueError, VenueUnreachable) as exc:
                log.warning("repair of %s %s failed (%s); will retry", job.instrument, job.timeframe, exc)
                self._repairs.append(job)
                await asyncio.sleep(1.0)
                continue
            key = str(job.instrument)
            done = job.first
            for c in candles:
                if not c.closed:
                    break
                self.hot.put(key, job.timeframe, c)
                self.writer.add(key, job.timeframe, c)
                st.repaired += 1
                done = c.open_time + tf_ms
            if done <= job.last:
                self._repairs.append(_Repair(job.instrument, job.timeframe, done, job.last))

    async def _retention_loop(self) -> None:
        while True:
            deleted = await asyncio.to_thread(self.cold.apply_retention, self.venue_clock.now_ms())
            if deleted:
                log.info("retention removed %d old candles", deleted)
            await asyncio.sleep(3600)

    async def stop(self) -> None:
        """Stop streaming and write everything out; meant to finish well inside 2 seconds."""
        await self.ws.close()
        for t in self._tasks:
            if t.get_name() != "writer":
                t.cancel()
        for st in self.states.values():
            self._publish_open(st)
        await self.writer.close()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.history.close()
        await asyncio.to_thread(self.cold.close)

    def status(self) -> dict[str, object]:
        """A snapshot of counters for the terminal view and the API."""
        return {
            "venue_time_ms": self.venue_clock.now_ms(),
            "connected": self.ws.connected.is_set(),
            "connects": self.ws.connects,
            "frames": self.ws.frames,
            "skipped_frames": dict(self.decoder.errors),
            "rest_requests": self.history.http.requests,
            "rest_throttled": self.history.http.throttled,
            "store_pending": self.writer.pending,
            "store_written": self.writer.written,
            "pending_repairs": len(self._repairs),
            "instruments": {
                k: {
                    "trades": st.trades,
                    "last_trade_ms": st.last_trade_ms,
                    "duplicates": st.builder.duplicates,
                    "gaps": st.builder.gaps,
                    "late_trades": st.builder.late_trades,
                    "bootstrapped": st.bootstrapped,
                    "repaired": st.repaired,
                }
                for k, st in self.states.items()
            },
        }
