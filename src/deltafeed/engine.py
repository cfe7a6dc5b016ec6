"""Wires one collector together: REST bootstrap, the stream, candle builders, stores and repairs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from deltafeed.api.hub import SwitchData
from deltafeed.candles.aggregator import CandleBuilder, ClosedSink, RepairSink
from deltafeed.candles.calendar import Calendar, calendar_for
from deltafeed.candles.rollup import RollupBuilder
from deltafeed.clock import VenueClock
from deltafeed.config import Settings
from deltafeed.model import PRICE_SIDES, TIMEFRAMES, BadInput, Candle, Instrument, Switch, Trade, series_key
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.stats import EngineMetrics
from deltafeed.store.base import ColdTier, StoreError, Unopened, redact
from deltafeed.store.hot import HotStore
from deltafeed.store.open import open_cold
from deltafeed.store.reader import MemoryHot, read_candles
from deltafeed.store.redis_hot import RedisHot
from deltafeed.store.retention import parse_retention
from deltafeed.store.spool import Spool
from deltafeed.store.writer import BacklogFull, BatchWriter
from deltafeed.venues.base import Feed, make_feed

if TYPE_CHECKING:
    from deltafeed.api.hub import Hub

log = logging.getLogger("deltafeed.engine")

_T = TypeVar("_T")

#: Per-venue counters the status also gives summed over every venue.
_VENUE_SUMS = (
    "connections",
    "connects",
    "reconnects",
    "rotations",
    "stale_drops",
    "connect_budget_waits",
    "frames",
    "rest_requests",
    "rest_throttled",
    "rest_server_errors",
    "rest_limiter_waits",
)

TICK_S = 0.2  # how often quiet candles are closed and open candles handed to the stores
CLOSE_GRACE_MS = 2_000  # how far past its end a quiet candle waits for a late trade or venue kline
REPAIR_SETTLE_MS = 1_000  # how long after a candle's end the venue's kline for it is trusted
EMPTY_SETTLE_MS = 60_000  # how long after a range's end a venue's "no candle there" is trusted
QUIET_SETTLE_MS = 300_000  # how old a hole must be for an empty answer to make it a quiet stretch for good
REPORT_EVERY_S = 60.0  # how often a progress line is logged
BOOTSTRAP_FLUSH_ROWS = 50_000  # bootstrap waits for the store when this many candles are pending
MARK_EVERY_S = 2.0  # how often the "final until" marks are written (after the candles they cover)
PROVISIONAL_MAX = 50_000  # provisional candles remembered per series and timeframe (the store keeps all)


@dataclass
class _Repair:
    """Candles of one series to fetch again over REST, once the venue has closed them."""

    key: str  # the series (see InstrumentState.key)
    timeframe: str
    first: int  # open time of the first candle to fetch
    last: int  # open time of the last one
    found: float = field(default_factory=time.monotonic)  # when the hole was found
    reconcile: bool = False  # a check of provisional candles, not a known hole


@dataclass
class _Failover:
    """A logical series (``fx:EUR_USD``) fed by whichever of two source series is active."""

    key: str
    sources: tuple[str, str]  # (primary, standby) series keys
    active: int = 0  # index into ``sources``
    switches: list[Switch] = field(default_factory=list)  # this run's, oldest first
    silent_s: list[float] = field(default_factory=list)  # how long the old source was silent, per switch
    unsaved: list[Switch] = field(default_factory=list)  # not yet in the cold store


@dataclass
class InstrumentState:
    """One candle series (an instrument, and for quote-built instruments one price side): its
    builders and the counters the status view and the API read."""

    instrument: Instrument
    builder: CandleBuilder
    calendar: Calendar
    feed: Feed
    price: str = "trade"  # "trade" for trade-built candles, else mid, bid or ask
    # Longer timeframes derived from the builder's base candles instead of from trades (rollups).
    rollup: RollupBuilder | None = None
    rolling: bool = False  # the rollup is seeded and takes base candles (not during the bootstrap)
    trades: int = 0
    venue_candles: int = 0
    last_trade_ms: int = 0
    last_message: float = 0.0  # monotonic time of the latest trade or kline
    repaired: int = 0
    bootstrapped: int = 0
    reconciled: int = 0  # provisional candles checked against the venue's history (made final)
    corrected: int = 0  # of those, how many the venue's history changed
    unconfirmed: int = 0  # provisional candles with prices that the venue's history has no candle for
    # Closed candles not yet final, per timeframe, by open time (copies): what reconciliation checks,
    # what a later vouch promotes, and where the final mark stops.
    provisional: dict[str, dict[int, Candle]] = field(default_factory=dict)
    unconfirmed_at: set[tuple[str, int]] = field(default_factory=set)  # (timeframe, open time), not asked again
    # Candles verified in themselves but after a hole still waiting for its repair, per timeframe:
    # provisional until the hole is repaired, so that the final candles of a series never skip one.
    held: dict[str, dict[int, Candle]] = field(default_factory=dict)
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
        return series_key(str(self.instrument), self.price)

    def open_candle(self, timeframe: str) -> Candle | None:
        """The forming candle of ``timeframe``, built from trades or rolled up from the base."""
        if self.rollup is not None and timeframe in self.rollup.timeframes:
            return self.rollup.open_candle(timeframe)
        return self.builder.open_candle(timeframe)

    def open_candles(self) -> list[tuple[str, Candle]]:
        """Every forming candle, shortest timeframe first."""
        out = self.builder.open_candles()
        return out if self.rollup is None else out + self.rollup.open_candles()


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
        self.retention = parse_retention(settings.retention)
        self.hot = HotStore(settings.hot_capacity)
        # The cold tier opens in start() (PostgreSQL needs the loop); until then every call says so.
        self.cold: ColdTier = Unopened(redact(settings.db))
        spool_path = settings.spool_path()
        self.spool = Spool(spool_path) if spool_path else None
        self.writer = BatchWriter(self.cold, spool=self.spool, on_written=self._written)
        self.redis: RedisHot | None = None
        if settings.hot:
            self.redis = RedisHot(
                settings.hot,
                capacity=settings.hot_capacity,
                retention=self.retention,
                prefix=settings.hot_prefix,
                refill=self._hot_contents,
            )
        self.metrics = EngineMetrics()
        self.hub: Hub | None = None  # set by the API server; receives candles, trades and prices
        # One feed per venue (its connection, decoder and REST history); one state per series.
        self.feeds: dict[str, Feed] = {}
        self.states: dict[str, InstrumentState] = {}
        for inst in self.instruments:
            feed = self.feeds.get(inst.venue)
            if feed is None:
                feed = self.feeds[inst.venue] = make_feed(inst.venue, settings, self._publish_trade)
            vs = settings.venue_settings(inst.venue)
            cal_name = feed.calendar_name(inst.symbol)
            calendar = calendar_for(cal_name, holidays=(vs.holidays or None) if cal_name != "crypto" else None)
            base = settings.rollup_base(inst)
            derived = [tf for tf in self.timeframes if base is not None and TIMEFRAMES[tf] > TIMEFRAMES[base]]
            built = [tf for tf in self.timeframes if tf not in derived]
            for side in feed.sides(settings.prices_for(inst)):
                key = series_key(str(inst), side)
                st = InstrumentState(
                    inst,
                    CandleBuilder(
                        built, self._closed_sink(key), self._repair_sink(key), calendar=calendar, vouch=feed.sequenced
                    ),
                    calendar,
                    feed,
                    side,
                )
                if base is not None and derived:
                    st.rollup = RollupBuilder(base, derived, self._closed_sink(key), on_stale=self._stale_sink(key))
                self.states[key] = st
                feed.add(st)
        self.failovers: dict[str, _Failover] = {}
        self._failover_of: dict[str, _Failover] = {}  # source series key -> its failover
        for name, fo in settings.failover.items():
            logical = str(Instrument.parse(name))
            primary = str(Instrument.parse(fo.primary, default_venue=settings.venue))
            standby = str(Instrument.parse(fo.standby, default_venue=settings.venue))
            for side in ("trade", *PRICE_SIDES):
                pair = (series_key(primary, side), series_key(standby, side))
                if all(k in self.states for k in pair):
                    f = self.failovers[series_key(logical, side)] = _Failover(series_key(logical, side), pair)
                    self._failover_of[pair[0]] = self._failover_of[pair[1]] = f
            if not any(f.sources[0].startswith(primary) for f in self.failovers.values()):
                raise BadInput(
                    f"failover {name}: {primary} and {standby} have no price side in common; give them the same prices"
                )
        self._repairs: deque[_Repair] = deque()
        self._repair_inflight: _Repair | None = None
        self._applying: _Repair | None = None  # the repair whose candles are being handed on
        self._repair_wakeup = asyncio.Event()
        self.recovery_s: deque[float] = deque(maxlen=10_000)  # hole found -> candles repaired
        self._tasks: list[asyncio.Task[None]] = []
        self.store_dropped = 0
        #: What start-up is waiting for the cold store to do while it fails (a full disk, a server
        #: down), e.g. "read the final marks"; None while it is not waiting.
        self.store_wait: str | None = None
        self._store_wait_error: StoreError | None = None
        self.audits = 0
        self.audit_gaps = 0
        # Holes an audit asked a venue without empty candles (``omits_empty``) to fill, and those it
        # answered with nothing: a quiet interval, not a loss, so later audits leave it alone.
        self._asked: set[tuple[str, str, int, int]] = set()
        self._quiet: set[tuple[str, str, int, int]] = set()
        self._started = time.monotonic()

    def now_ms(self) -> int:
        """The latest of the venues' clocks (retention and latency figures)."""
        return max(f.clock.now_ms() for f in self.feeds.values())

    @property
    def venue_clock(self) -> VenueClock:
        """The clock of the run's first venue."""
        return next(iter(self.feeds.values())).clock

    def _publish_trade(self, st: InstrumentState, trade: Trade) -> None:
        if self.hub is not None:
            self.hub.trade(st.key, trade)

    # --- sinks the candle builders call ---------------------------------------------------------

    def _closed_sink(self, key: str) -> ClosedSink:
        def closed(timeframe: str, candle: Candle) -> None:
            self._final(key, timeframe, candle)

        return closed

    def _final(self, key: str, timeframe: str, candle: Candle) -> None:
        """A closed candle, final or provisional (closed by the builder, from REST, a correction of
        an earlier one, or one vouched for later): to the hot tier, the store and every consumer,
        so all three agree; and on to the rollup and the logical series it feeds. Provisional ones
        are remembered until they are final (see :meth:`_reconcile_due` and :meth:`final_marks`)."""
        st = self.states[key]
        prov = st.provisional.get(timeframe)
        if prov is None:
            prov = st.provisional[timeframe] = {}
        if candle.final and (self._repairs or self._repair_inflight is not None):
            hole = self._hole_start(key, timeframe)
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
        self._put(key, timeframe, candle)
        rollup = st.rollup
        if rollup is not None and st.rolling and timeframe == rollup.base:
            vouched = old is not None and old.row() == candle.row()
            rollup.on_base(candle, vouched_only=vouched)
            if candle.final:
                self._promote_derived(st, candle.open_time)
        f = self._failover_of.get(key)
        if f is not None and f.sources[f.active] == key:
            self._put(f.key, timeframe, candle)

    def _promote_derived(self, st: InstrumentState, base_open: int) -> None:
        """A base candle became final: each provisional derived candle holding it whose parts are
        now all final becomes final too (the rollup does this for the buckets it still keeps)."""
        rollup = st.rollup
        assert rollup is not None
        base = st.provisional.get(rollup.base, {})
        for tf in rollup.timeframes:
            ms = TIMEFRAMES[tf]
            b = base_open - base_open % ms
            c = st.provisional.get(tf, {}).get(b)
            if c is not None and not any(b <= t < b + ms for t in base):
                self._final(st.key, tf, msgspec.structs.replace(c, final=True))

    def _put(self, key: str, timeframe: str, candle: Candle, *, publish: bool = True) -> None:
        """A candle of series ``key`` to the hot tier, the store and (``publish``) every consumer."""
        self.hot.put(key, timeframe, candle)
        if self.redis is not None:
            self.redis.put(key, timeframe, candle)
        self._store(key, timeframe, candle)
        if publish and self.hub is not None:
            self.hub.candle(key, timeframe, candle)

    def _hot_contents(self) -> Iterable[tuple[str, str, list[Candle]]]:
        """Everything the memory hot tier holds, to re-fill Redis after an outage."""
        for key, tf in self.hot.keys():  # noqa: SIM118 - a HotStore, not a dict
            yield key, tf, self.hot.last(key, tf, self.settings.hot_capacity)

    def _store(self, key: str, timeframe: str, candle: Candle) -> None:
        try:
            self.writer.add(key, timeframe, candle)
        except BacklogFull as exc:
            # Memory's bound is reached: say so loudly, keep streaming into the hot tier. Nothing is
            # lost for good: the final marks stop moving, so a restart fetches these candles again.
            if not self.store_dropped:
                log.error("cold store is not keeping up: %s", exc)
            self.store_dropped += 1

    def _stale_sink(self, key: str) -> Callable[[str, int], None]:
        """A derived candle the rollup cannot vouch for (a part it never saw whole): fetch it."""
        repair = self._repair_sink(key)

        def stale(timeframe: str, open_time: int) -> None:
            repair(timeframe, open_time, open_time)

        return stale

    def _repair_sink(self, key: str) -> RepairSink:
        def repair(timeframe: str, first: int, last: int) -> None:
            log.debug("repair queued: %s %s %d..%d", key, timeframe, first, last)
            self._repairs.append(_Repair(key, timeframe, first, last))
            self._repair_wakeup.set()

        return repair

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the venues and the symbols, bootstrap and audit history, then start streaming."""
        for feed in self.feeds.values():
            await feed.check()
        self.cold = await open_cold(self.settings.db, self.retention, schema=self.settings.db_schema)
        self.writer.cold = self.cold
        if self.redis is not None:
            await self.redis.open()
            self._tasks.append(asyncio.create_task(self.redis.run(), name="redis"))
        self._tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        if self.writer.spooled_pending:
            log.info(
                "replaying %d candles spooled by an earlier run into %s", self.writer.spooled_pending, self.cold.name
            )
            try:
                await self.writer.flush(retry_for_s=30.0)
            except StoreError as exc:
                # They are safe in the spool, and the writer replays it before anything newer.
                log.warning("spool replay postponed, the cold store fails: %s", exc)
        marks = await self._patiently("read the final marks", self.cold.final_marks)
        await asyncio.gather(*(self._bootstrap(st, marks) for st in self.states.values()))
        for f in self.failovers.values():
            # The logical series starts as the primary's recent history (what the hot tier holds).
            for tf in self.timeframes:
                for c in self.hot.last(f.sources[0], tf, self.settings.hot_capacity):
                    self._put(f.key, tf, c)
        try:
            await self.writer.flush()  # the audit reads the store: the bootstrap's candles first
            await self._audit()
        except StoreError as exc:
            log.warning("store audit postponed: %s", exc)
        for feed in self.feeds.values():
            feed.start()
        self._tasks.append(asyncio.create_task(self._tick(), name="tick"))
        self._tasks.append(asyncio.create_task(self._repair_loop(), name="repairs"))
        for feed in self.feeds.values():
            every = (
                self.settings.seconds("reconcile_every") if self.settings.reconcile_every else feed.reconcile_every_s
            )
            if not feed.sequenced and every > 0:
                self._tasks.append(
                    asyncio.create_task(self._reconcile_loop(feed, every), name=f"reconcile-{feed.venue}")
                )
        self._tasks.append(asyncio.create_task(self._mark_loop(), name="marks"))
        self._tasks.append(asyncio.create_task(self._audit_loop(), name="audit"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
        if self.settings.status_file:
            self._tasks.append(asyncio.create_task(self._status_file_loop(), name="status-file"))

    async def _bootstrap(self, st: InstrumentState, marks: dict[tuple[str, str], int]) -> None:
        """Fill each timeframe from where stored candles stop being known final, up to now."""
        now = st.feed.clock.now_ms()
        key = st.key
        for tf in self.timeframes:
            ms = TIMEFRAMES[tf]
            # Warm the hot tier from the store, so readers see history from the first second.
            recent = partial(self.cold.query, key, tf, None, None, self.settings.hot_capacity)
            for c in await self._patiently(f"read {key} {tf}", recent):
                self.hot.put(key, tf, c)
                if self.redis is not None:
                    self.redis.put(key, tf, c)
            last = await self._patiently(f"read {key} {tf}", partial(self.cold.last_closed, key, tf))
            start = last.open_time + ms if last else now - self.settings.history_ms
            mark = marks.get((key, tf))
            if last is not None and mark is None:
                # Candles but no mark: the run that stored them died before vouching for any (a
                # kill -9 during its bootstrap, whose deferred history may never have come).
                log.info("%s %s: stored candles were never confirmed; fetching the history again", key, tf)
                start = now - self.settings.history_ms
            elif last is not None and mark is not None and mark < start:
                # The previous run ended without vouching for these (a kill -9, a crash, a store
                # outage): fetch them again rather than trust them.
                log.info("%s %s: re-fetching %d candles the last run did not confirm", key, tf, (start - mark) // ms)
                start = mark
            start -= start % ms
            built = tf in st.builder.timeframes
            if last is not None and built:
                st.builder.seed(tf, last)
            st.bootstrap_marks[tf] = start
            # Page by page, handing each to the store, so a deep history (30 days of 1s candles)
            # never sits in memory whole.
            span = st.feed.page_span_ms(tf)
            count = 0
            # Up to the last closed candle: the forming one comes from the stream. (Every price side
            # of an instrument then asks for the same ranges, which a feed may answer once.)
            last_open = now - now % ms - ms
            for t in range(start, last_open + 1, span):
                try:
                    candles = await st.feed.candles(st, tf, t, min(last_open + ms - 1, t + span - 1), now)
                except VenueError as exc:
                    # E.g. IG's weekly allowance is spent: stream now, fetch the rest when it can be.
                    log.warning("%s %s: history from %d deferred (%s); it is fetched as a repair", key, tf, t, exc)
                    if t <= now - now % ms - ms:
                        self._repair_sink(key)(tf, t, now - now % ms - ms)
                    break
                closed = [c for c in candles if c.closed]
                for c in closed:
                    c.final = True  # the venue's own history
                    self._final(key, tf, c)
                if closed and built:
                    st.builder.seed(tf, closed[-1])
                    st.bootstrap_marks[tf] = closed[-1].open_time + ms
                count += len(closed)
                await self._make_room()
            st.bootstrapped += count
            log.info("%s %s: %d candles from REST history", key, tf, count)
        if st.rollup is not None:
            # The derived candles forming now start before the stream: give the rollup the final
            # base candles of their current and previous buckets, so they are whole at once.
            longest = max(TIMEFRAMES[tf] for tf in st.rollup.timeframes)
            await self._patiently("write the bootstrap's candles", self.writer.flush)
            since = now - now % longest - longest
            base = partial(self.cold.query, key, st.rollup.base, since, None)
            st.rollup.seed(await self._patiently(f"read {key} {st.rollup.base}", base))
            st.rolling = True

    def _waiting(self, what: str, exc: StoreError) -> None:
        if self.store_wait is None:
            log.warning("start-up waits for the cold store %s to %s: %s", self.cold.name, what, exc)
        self.store_wait, self._store_wait_error = what, exc

    def _resumed(self) -> None:
        if self.store_wait is not None:
            log.info("the cold store %s works again; start-up goes on", self.cold.name)
            self.store_wait = self._store_wait_error = None

    async def _patiently(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        """``op()``, a store operation start-up cannot go on without, retried while the store fails
        (a full disk, a server restarting): start-up waits, :meth:`health` says why, nothing is lost."""
        delay = 0.2
        while True:
            try:
                result = await op()
            except StoreError as exc:
                self._waiting(what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._resumed()
            return result

    async def _make_room(self) -> None:
        """Bootstrap back-pressure: while BOOTSTRAP_FLUSH_ROWS candles wait in memory, write them (or
        let the writer spool them). While neither the store nor the spool takes them (a full disk),
        wait, so that memory stays bounded however deep the history."""
        while self.writer.in_memory >= BOOTSTRAP_FLUSH_ROWS:
            try:
                await self.writer.flush(retry_for_s=2.0)
            except StoreError as exc:
                self._waiting("write the bootstrap's candles", exc)
        self._resumed()

    async def _tick(self) -> None:
        """Every TICK_S: settle held trades, close quiet candles, publish open candles, rotate."""
        next_report = time.monotonic() + REPORT_EVERY_S
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
                # A trade held back for a hole before it gets one more tick for the hole to fill.
                if st.builder.held:
                    if key in held_last_tick:
                        st.builder.release_held()
                        held_last_tick.discard(key)
                    else:
                        held_last_tick.add(key)
                else:
                    held_last_tick.discard(key)
            for feed in self.feeds.values():
                await feed.tick(mono)  # learns the venue's time, rotates connections
            for f in self.failovers.values():
                self._check_failover(f, mono)
            for st in self.states.values():
                clock = st.feed.clock
                # At least a second of wall time for the last trades of a candle to arrive, however
                # fast the venue's clock runs (a replica's may run 120 times as fast).
                st.builder.advance(clock.now_ms() - max(CLOSE_GRACE_MS, int(1000 * clock.rate)))
                self._publish_open(st)

    def _check_failover(self, f: _Failover, mono: float) -> None:
        """Switch ``f`` to its other source when the active one went silent while its market is open
        and the other one is live."""
        limit = self.settings.seconds("failover_after")
        act, other = self.states[f.sources[f.active]], self.states[f.sources[1 - f.active]]
        silent = mono - (act.last_message or self._started)
        if silent <= limit or not act.calendar.is_open(act.feed.clock.now_ms()):
            return
        if not other.last_message or mono - other.last_message > limit:
            return  # both silent: nothing better to switch to
        # The logical series continues from the candles holding the old source's last data: those
        # (and everything after) come whole from the new source, so there is no hole and nothing
        # the silent source made up (flat candles by the timer) stays.
        since = act.last_trade_ms or other.feed.clock.now_ms()
        spanning = {tf: since - since % TIMEFRAMES[tf] for tf in self.timeframes}
        f.active = 1 - f.active
        for tf, first in spanning.items():
            held = self.hot.range(other.key, tf, first, 2**62)
            if held is None:
                held = [c for c in self.hot.last(other.key, tf, self.settings.hot_capacity) if c.open_time >= first]
            for c in held:
                self._put(f.key, tf, c)
            live = other.open_candle(tf)
            if live is not None:
                self._put(f.key, tf, live)
        switch = Switch(f.key, since, other.feed.clock.now_ms(), act.key, other.key)
        f.switches.append(switch)
        f.unsaved.append(switch)
        f.silent_s.append(round(silent, 3))
        if self.hub is not None:
            self.hub.switch(f.key, switch.at_ms, SwitchData(since, act.key, other.key, spanning))
        log.warning(
            "%s: %s silent for %.1f s; candles continue from %s (the candles holding %d are spanning)",
            f.key,
            act.key,
            silent,
            other.key,
            since,
        )

    def _publish_open(self, st: InstrumentState) -> None:
        key = st.key
        hub = self.hub
        rollup = st.rollup
        if rollup is not None and st.rolling:
            forming = st.builder.open_candle(rollup.base)
            if forming is not None:
                rollup.on_base(forming)
        f = self._failover_of.get(key)
        keys = (key, f.key) if f is not None and f.sources[f.active] == key else (key,)
        for tf, c in st.open_candles():
            # Consumers hear of a forming candle only when it changed since the last tick.
            seen = (c.open_time, c.close, c.volume)
            fresh = st._published.get(tf) != seen
            if fresh:
                st._published[tf] = seen
            for k in keys:
                self._put(k, tf, c, publish=fresh)
        if hub is not None and st.last_trade_ms != st._published_price_ms:
            st._published_price_ms = st.last_trade_ms
            first = st.open_candles()
            if first:
                hub.price(key, st.last_trade_ms, first[0][1].close)

    def _written(self, rows: Sequence[tuple[str, str, Candle]], seconds: float) -> None:
        """The writer stored a batch: record how long it took, and how long after its end each
        final candle reached the store (by the venue's clock)."""
        self.metrics.store_write.observe(seconds)
        now = self.now_ms()
        for _, tf, c in rows:
            if c.closed:
                self.metrics.candle_latency.observe(max(0.0, (now - c.open_time - TIMEFRAMES[tf]) / 1000))

    def _report(self) -> None:
        """One log line of progress for whoever watches the process."""
        trades = sum(st.trades for st in self.states.values())
        gaps = sum(st.builder.gaps for st in self.states.values())
        repaired = sum(st.repaired for st in self.states.values())
        state = ", ".join(f"{v} {'connected' if f.connected() else 'DISCONNECTED'}" for v, f in self.feeds.items())
        log.info(
            "%s; %d trades, %d candles written (%d pending), %d gaps, %d candles repaired, %d frames skipped",
            state,
            trades,
            self.writer.written,
            self.writer.pending,
            gaps,
            repaired,
            sum(sum(f.errors.values()) for f in self.feeds.values()),
        )

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
            if again is not job and not job.reconcile:
                self._release_held(job.key, job.timeframe)
            if again is job:  # not ready yet: look again shortly
                await asyncio.sleep(0.1)

    def _hole_start(self, key: str, timeframe: str) -> int | None:
        """Open time of the first candle of a series still waiting for a hole's repair (not counting
        the repair whose candles are being handed on now), or None."""
        jobs = [*self._repairs, *([self._repair_inflight] if self._repair_inflight is not None else [])]
        firsts = [
            j.first
            for j in jobs
            if j.key == key and j.timeframe == timeframe and not j.reconcile and j is not self._applying
        ]
        return min(firsts) if firsts else None

    def _release_held(self, key: str, timeframe: str) -> None:
        """A repair of the series made progress: the candles held behind its hole that no hole
        precedes any more are final now, and go out again as such."""
        st = self.states[key]
        held = st.held.get(timeframe)
        if not held:
            return
        hole = self._hole_start(key, timeframe)
        prov = st.provisional.get(timeframe, {})
        for t in sorted(held):
            if hole is not None and t > hole:
                break
            c = held.pop(t)
            now = prov.get(t)
            if now is not None and now.row() == c.row():  # not replaced meanwhile
                self._final(key, timeframe, c)

    def _ready_until(self, job: _Repair) -> int:
        """Open time of the last candle of ``job`` that can be fetched now: the venue's clock is
        past its end and our builder has moved on from it (below ``job.first`` when none can)."""
        tf_ms = TIMEFRAMES[job.timeframe]
        st = self.states[job.key]
        ready_until = st.feed.clock.now_ms() - REPAIR_SETTLE_MS
        ready_until -= ready_until % tf_ms
        open_c = st.open_candle(job.timeframe)
        limit = min(job.last, ready_until - tf_ms)
        if open_c is not None:
            limit = min(limit, open_c.open_time - tf_ms)
        return limit

    async def _repair(self, job: _Repair) -> _Repair | None:
        """Repair what of ``job`` is ready; returns what is left to do (``job`` itself if nothing was)."""
        st = self.states[job.key]
        limit = self._ready_until(job)
        if limit < job.first:
            return job
        try:
            candles = await st.feed.candles(st, job.timeframe, job.first, limit)
        except (VenueError, VenueUnreachable) as exc:
            if job.reconcile:  # asked again at the next reconciliation or audit, not in a loop
                log.debug("reconciliation of %s %s failed (%s)", job.key, job.timeframe, exc)
                return None
            log.warning("repair of %s %s failed (%s); will retry", job.key, job.timeframe, exc)
            await asyncio.sleep(1.0)
            return job
        log.debug(
            "repair %s %s %d..%d: %d candles from %d",
            job.key,
            job.timeframe,
            job.first,
            limit,
            len(candles),
            candles[0].open_time if candles else -1,
        )
        self._applying = job
        try:
            done = self._apply_history(job, candles, limit)
        finally:
            self._applying = None
        if done <= job.last:
            return _Repair(job.key, job.timeframe, done, job.last, job.found, job.reconcile)
        if not job.reconcile:
            self.recovery_s.append(time.monotonic() - job.found)
        return None

    def _apply_history(self, job: _Repair, candles: list[Candle], limit: int) -> int:
        """Hand on the venue's candles for ``job`` up to ``limit``; returns the open time up to
        which the job is done."""
        st = self.states[job.key]
        tf_ms = TIMEFRAMES[job.timeframe]
        done = job.first
        prov = st.provisional.get(job.timeframe, {})
        for c in candles:
            if not c.closed:
                break
            c.final = True  # the venue's own history
            old = prov.get(c.open_time)
            if old is not None and job.reconcile:
                st.reconciled += 1
                if not _same(old, c):
                    st.corrected += 1
            self._final(job.key, job.timeframe, c)
            if old is None or not job.reconcile:
                st.repaired += 1
            done = c.open_time + tf_ms
        if (
            st.feed.omits_empty
            and (not candles or candles[-1].closed)
            and limit + tf_ms <= st.feed.clock.now_ms() - EMPTY_SETTLE_MS
        ):
            # The venue has no candle for an interval without prices: once the range is well over
            # by its clock (ours may run a little ahead of it), its answer covers the range. Our
            # flat candles there are confirmed; one with prices the venue does not know stays
            # provisional (counted), and is not asked about again.
            answered = {c.open_time for c in candles}
            for t in [t for t in prov if job.first <= t <= limit and t not in answered]:
                c = prov[t]
                if c.trades == 0:
                    st.reconciled += 1
                    self._final(job.key, job.timeframe, msgspec.structs.replace(c, final=True))
                else:
                    st.unconfirmed += 1
                    st.unconfirmed_at.add((job.timeframe, t))
                    del prov[t]
            done = max(done, limit + tf_ms)
        return done

    async def _reconcile_loop(self, feed: Feed, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self._reconcile_due(feed)

    def _reconcile_due(self, feed: Feed) -> int:
        """Queue a reconciliation with the venue's history for each series of ``feed`` holding closed
        provisional candles the venue has settled: one request per series and timeframe covers them
        all, under the feed's rate limiter like every repair. Returns how many were queued."""
        now = feed.clock.now_ms() - REPAIR_SETTLE_MS
        queued = 0
        for key, st in self.states.items():
            if st.feed is not feed:
                continue
            derived = st.rollup.timeframes if st.rollup is not None else ()
            for tf, prov in st.provisional.items():
                if not prov or tf in derived:  # a derived candle is final once its parts are
                    continue
                ms = TIMEFRAMES[tf]
                due = [t for t in prov if t + ms <= now]
                if not due:
                    continue
                first, last = min(due), max(due)
                if self._repairing(key, tf, first, last):
                    continue
                self._repairs.append(_Repair(key, tf, first, last, reconcile=True))
                queued += 1
        if queued:
            self._repair_wakeup.set()
        return queued

    async def _grace(self, seconds: float) -> None:
        """Give repairs and reconciliations that can make progress now up to ``seconds`` to finish
        (the stop grace); what is left stays provisional in the store for the next run."""
        for feed in self.feeds.values():
            if not feed.sequenced:
                self._reconcile_due(feed)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            jobs = [*self._repairs, *([self._repair_inflight] if self._repair_inflight is not None else [])]
            if not any(self._ready_until(j) >= j.first for j in jobs):
                return
            await asyncio.sleep(0.05)
        log.info("stop grace of %.0f s over: %d repairs left for the next run", seconds, len(self._repairs))

    def final_marks(self) -> dict[tuple[str, str], int]:
        """Per series, the open time before which every candle handed to the store is final.

        A candle is final when it came from the venue (REST, a closed kline, a reconciliation) or
        the builder vouched for it. So the mark is the candle holding the last trade, pulled back to
        the first provisional candle and the first candle still waiting for a repair; before any
        trade it is where the bootstrap got to.
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
                prov = st.provisional.get(tf)
                if prov and (key, tf) in marks:
                    marks[(key, tf)] = min(marks[(key, tf)], min(prov))
        waiting = list(self._repairs)
        if self._repair_inflight is not None:
            waiting.append(self._repair_inflight)
        for job in waiting:
            key = job.key
            rollup = self.states[key].rollup
            pulled = [job.timeframe]
            if rollup is not None and job.timeframe == rollup.base:
                pulled += rollup.timeframes  # a derived candle is final only once its parts are
            for tf in pulled:
                k = (key, tf)
                if k in marks:
                    marks[k] = min(marks[k], job.first - job.first % TIMEFRAMES[tf])
        return marks

    async def _write_marks(self) -> None:
        """Write the candles handed over so far, then the marks that vouch for them."""
        marks = self.final_marks()
        await self.writer.flush()
        if not self.store_dropped:  # candles were dropped: the marks stay put, the next run fetches them
            await self.cold.set_final_marks(marks)
        await self._save_switches()

    async def _save_switches(self) -> None:
        for f in self.failovers.values():
            if f.unsaved:
                await self.cold.record_switches(f.unsaved)
                f.unsaved.clear()

    async def _mark_loop(self) -> None:
        while True:
            await asyncio.sleep(MARK_EVERY_S)
            try:
                await self._write_marks()
            except StoreError as exc:
                log.warning("cannot write to the store yet (%s); candles stay queued and are retried", exc)

    async def _audit(self) -> None:
        """Check the stored series for holes and unfinished candles; each becomes a repair.

        A venue that has no candle for an interval without prices leaves holes in a quiet market:
        a hole it was asked to fill, whose repair is over, and that is still there is such a quiet
        stretch, and is not asked about again."""
        self.audits += 1
        for key, st in self.states.items():
            now = st.feed.clock.now_ms()
            since = now - int(self.settings.seconds("audit_window") * 1000)
            holes: set[tuple[str, str, int, int]] = set()
            for tf in self.timeframes:
                ms = TIMEFRAMES[tf]
                for first, last in await self.cold.find_gaps(key, tf, ms, since, now):
                    if not st.calendar.open_between(first, last + ms):
                        continue
                    hole = (key, tf, first, last)
                    holes.add(hole)
                    if hole in self._quiet or self._repairing(key, tf, first, last):
                        continue  # known quiet, or being fetched now
                    if hole in self._asked:  # asked, answered, and still there: nothing to fetch
                        self._asked.discard(hole)
                        self._quiet.add(hole)
                        continue
                    self.audit_gaps += 1
                    log.warning("audit: %s %s has a hole from %d to %d; fetching it", key, tf, first, last)
                    self._repair_sink(key)(tf, first, last)
                    if st.feed.omits_empty and last + ms <= now - QUIET_SETTLE_MS:
                        self._asked.add(hole)
                await self._audit_provisional(st, tf, since, now)
            # Only what is still a hole is remembered (one filled since, or out of the window, is not).
            for known in (self._asked, self._quiet):
                known.difference_update([h for h in known if h[0] == key and h not in holes])

    async def _audit_provisional(self, st: InstrumentState, tf: str, since: int, now: int) -> None:
        """Stored provisional candles this run is not following (left by an earlier run, by a stop
        during an outage, or forgotten past PROVISIONAL_MAX) are fetched from the venue's history."""
        ms = TIMEFRAMES[tf]
        live = st.provisional.get(tf, {})
        for first, last in await self.cold.provisional(st.key, tf, since, now - ms - REPAIR_SETTLE_MS):
            if first in live or (tf, first) in st.unconfirmed_at or self._repairing(st.key, tf, first, last):
                continue
            self._repairs.append(_Repair(st.key, tf, first, last, reconcile=True))
            self._repair_wakeup.set()

    def _repairing(self, key: str, timeframe: str, first: int, last: int) -> bool:
        """Whether a repair waiting or under way touches [first, last] of the series."""
        jobs = [*self._repairs, *([self._repair_inflight] if self._repair_inflight is not None else [])]
        return any(j.key == key and j.timeframe == timeframe and j.first <= last and first <= j.last for j in jobs)

    async def _audit_loop(self) -> None:
        every = self.settings.seconds("audit_every")
        while True:
            await asyncio.sleep(every)
            try:
                await self.writer.flush()
                await self._audit()
            except StoreError as exc:
                log.warning("store audit postponed: %s", exc)

    async def apply_retention(self, now_ms: int) -> dict[str, int]:
        """Drop what each tier keeps past its timeframe's retention, by the venue's ``now_ms``;
        returns how many candles each tier removed (a tier that is down is skipped and says so)."""
        removed = {"memory": self.hot.apply_retention(now_ms, self.retention)}
        try:
            removed["cold"] = await self.cold.apply_retention(now_ms)
        except StoreError as exc:
            log.warning("retention in the cold store postponed: %s", exc)
        if self.redis is not None:
            try:
                removed["redis"] = await self.redis.apply_retention(now_ms)
            except StoreError as exc:
                log.warning("retention in Redis postponed: %s", exc)
        return removed

    async def _retention_loop(self) -> None:
        while True:
            removed = await self.apply_retention(self.now_ms())
            if any(removed.values()):
                log.info("retention removed old candles: %s", ", ".join(f"{n} from {k}" for k, n in removed.items()))
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
        """Let repairs under way finish (at most ``stop_grace``), stop streaming and write
        everything out (meant to take well under 2 seconds after the grace)."""
        if any(t.get_name() == "repairs" and not t.done() for t in self._tasks):
            await self._grace(self.settings.seconds("stop_grace"))
        await asyncio.gather(*(feed.stop() for feed in self.feeds.values()))
        for t in self._tasks:
            if t.get_name() != "writer":
                t.cancel()
        for st in self.states.values():
            self._publish_open(st)
        if self.hub is not None:
            await self.hub.close()
        marks = self.final_marks()
        # With a spool, what the store still refuses after a second waits on disk for the next run.
        lost: StoreError | None = None
        try:
            await self.writer.close(retry_for_s=1.0 if self.spool is not None else 10.0)
        except StoreError as exc:
            lost = exc  # candles nothing could keep: raised once everything else is released
        if not self.writer.spooled_pending and not self.writer.pending and not self.store_dropped:
            with contextlib.suppress(StoreError):
                await self.cold.set_final_marks(marks)
        with contextlib.suppress(StoreError):
            await self._save_switches()
        if self.redis is not None:
            await self.redis.close()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.cold.close()
        if self.spool is not None:
            self.spool.close()
        with contextlib.suppress(OSError):
            self.write_status_file()
        if lost is not None:
            raise lost

    # --- serving --------------------------------------------------------------------------------

    def instrument_names(self) -> list[str]:
        return [*self.states, *self.failovers]

    def snapshot(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        """The last ``n`` candles of a series from the hot tier, the forming one last (copies)."""
        if instrument in self.failovers and timeframe in self.timeframes and n > 0:
            return self.hot.last(instrument, timeframe, n)  # the active source's candles, forming one last
        st = self.states.get(instrument)
        if st is None or timeframe not in self.timeframes or n <= 0:
            return []
        # The hot tier holds every closed candle and the forming one as of the last tick; the
        # builder's forming candle is newer still.
        out = self.hot.last(instrument, timeframe, n + 1)
        live = st.open_candle(timeframe)
        if live is not None:
            out = [c for c in out if c.open_time < live.open_time]
            out.append(msgspec.structs.replace(live))
        return out[-n:]

    def switch_doc(self, w: Switch, silent_s: float | None = None) -> dict[str, Any]:
        """A switch as the status view and the API show it, with each timeframe's spanning candle."""
        doc: dict[str, Any] = {
            "since_ms": w.since_ms,
            "at_ms": w.at_ms,
            "from": w.source_from,
            "to": w.source_to,
            "spanning": {tf: w.spanning(TIMEFRAMES[tf]) for tf in self.timeframes},
        }
        if silent_s is not None:
            doc["silent_s"] = silent_s
        return doc

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """Failover switches of a logical instrument with ``since_ms`` in the bounds, oldest first:
        from the cold store (every run's) and this run's not yet saved; [] for any other series."""
        f = self.failovers.get(instrument)
        if f is None:
            return []
        lo, hi = since_ms if since_ms is not None else -(2**62), until_ms if until_ms is not None else 2**62
        found = {w.since_ms: w for w in f.switches if lo <= w.since_ms <= hi}
        with contextlib.suppress(StoreError):  # a store that is down: this run's switches still show
            for w in await self.cold.switches(instrument, since_ms, until_ms):
                found.setdefault(w.since_ms, w)
        return [found[k] for k in sorted(found)]

    async def candles(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        final_only: bool = False,
    ) -> list[Candle]:
        """Candles of a series, oldest first, the forming one included: from the hot tier as far
        as it reaches, older ones from the cold store (see :func:`read_candles`). ``limit`` keeps
        the newest ``limit``. ``final_only`` keeps only final candles (``limit`` counts those)."""
        hi = until_ms if until_ms is not None else 2**62
        if self.writer.pending:
            # Candles older than the hot tier may still be on their way to the cold tier (a deep
            # bootstrap); a store that is down answers without them rather than making us wait.
            with contextlib.suppress(StoreError):
                await self.writer.flush(retry_for_s=0.0)
        rows = await read_candles(
            MemoryHot(self.hot), self.cold, instrument, timeframe, since_ms, until_ms, limit, final_only=final_only
        )
        if final_only:
            return rows  # the builder's live candle is forming: never final
        st = self.states.get(instrument)
        live = st.open_candle(timeframe) if st is not None else None
        if live is not None and (since_ms is None or since_ms <= live.open_time) and live.open_time <= hi:
            rows = [c for c in rows if c.open_time != live.open_time] + [msgspec.structs.replace(live)]
        return rows[-limit:] if limit is not None else rows

    @property
    def hot_capacity(self) -> int:
        return self.settings.hot_capacity

    def _control(self, active: bool, states: list[InstrumentState]) -> None:
        for feed in self.feeds.values():
            mine = [st for st in states if st.feed is feed]
            for st in mine:
                st.active = active
                feed.activate(st, active)
            if mine:
                feed.control(active, mine)

    def _pick(self, instruments: list[str] | None) -> list[InstrumentState]:
        if instruments is None:
            return list(self.states.values())
        unknown = [i for i in instruments if i not in self.states]
        if unknown:
            raise BadInput(f"unknown instrument(s) {', '.join(unknown)}; this run collects {', '.join(self.states)}")
        return [self.states[i] for i in instruments]

    async def start_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Resume streaming the named instruments (all when None); returns those streaming now.
        Whatever was missed meanwhile is repaired: their next trade reveals the hole."""
        self._control(True, [st for st in self._pick(instruments) if not st.active])
        return [k for k, st in self.states.items() if st.active]

    async def stop_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Stop streaming the named instruments (all when None); returns those still streaming."""
        self._control(False, [st for st in self._pick(instruments) if st.active])
        return [k for k, st in self.states.items() if st.active]

    # --- visibility -----------------------------------------------------------------------------

    def health(self) -> list[str]:
        """Reasons the collector is not healthy; empty when it is."""
        reasons = [f"{venue} disconnected" for venue, feed in self.feeds.items() if not feed.connected()]
        if self.store_wait is not None:
            # Why, unless the store's own reason below says it already.
            why = f" ({self._store_wait_error})" if self.writer.store_error is None else ""
            reasons.append(
                f"start-up waits for the cold store {self.cold.name} to {self.store_wait}{why}; streaming"
                " starts once it works again"
            )
        # The store's failures and the spool's apart, each naming its own file.
        if self.writer.store_error is not None:
            spooled = self.writer.spooled_pending
            where = (
                f"; {spooled} candles spooled at {self.spool.path}, replayed when it is back"
                if spooled and self.spool is not None
                else ""
            )
            reasons.append(f"cold store {self.cold.name} failing: {self.writer.store_error}{where}")
        if self.writer.spool_error is not None and self.spool is not None:
            reasons.append(
                f"spool {self.spool.path} failing: {self.writer.spool_error}; {self.writer.in_memory}"
                " candles wait in memory"
            )
        if self.redis is not None and self.redis.degraded is not None:
            reasons.append(
                f"hot tier {self.redis.name} unreachable ({self.redis.degraded}); serving from memory,"
                " Redis is re-filled when it is back"
            )
        if self.store_dropped:
            reasons.append(f"store backlog full: {self.store_dropped} candle updates not queued")
        limit = self.settings.seconds("unhealthy_after")
        mono = time.monotonic()
        for key, st in self.states.items():
            now = st.feed.clock.now_ms()
            silent = mono - (st.last_message or self._started)
            if st.active and silent > limit and st.calendar.is_open(now):
                reasons.append(f"{key} stale: no data for {silent:.0f} s while its market is open")
        return reasons

    def status(self) -> dict[str, object]:
        """A snapshot of counters for the terminal view, the API and the chaos benchmark."""
        mono = time.monotonic()
        venues = {venue: feed.status() for venue, feed in self.feeds.items()}
        totals: dict[str, object] = {}
        for key in _VENUE_SUMS:
            totals[key] = sum(int(v.get(key, 0)) for v in venues.values())
        skipped: Counter[str] = Counter()
        for v in venues.values():
            skipped.update(v.get("skipped_frames", {}))
        return {
            "venue_time_ms": self.now_ms(),
            "connected": all(feed.connected() for feed in self.feeds.values()),
            **totals,
            "skipped_frames": dict(skipped),
            "venues": venues,
            "store_pending": self.writer.pending,
            "store_written": self.writer.written,
            "store_failures": self.writer.failures,
            "store_dropped": self.store_dropped,
            "store": self.cold.name,
            "store_spooled": self.writer.spooled,
            "store_spool_pending": self.writer.spooled_pending,
            "store_replayed": self.writer.replayed,
            "store_up": self.writer.store_error is None,
            "hot_up": None if self.redis is None else self.redis.degraded is None,
            "hot_written": None if self.redis is None else self.redis.written,
            "hot_failures": None if self.redis is None else self.redis.failures,
            "hot_refills": None if self.redis is None else self.redis.refills,
            "hot": None
            if self.redis is None
            else {
                "name": self.redis.name,
                "degraded": self.redis.degraded,
                "written": self.redis.written,
                "failures": self.redis.failures,
                "refills": self.redis.refills,
                "pending": self.redis.pending,
            },
            "pending_repairs": len(self._repairs) + (self._repair_inflight is not None),
            "provisional": sum(len(p) for st in self.states.values() for p in st.provisional.values()),
            "reconciled": sum(st.reconciled for st in self.states.values()),
            "corrected": sum(st.corrected for st in self.states.values()),
            "audits": self.audits,
            "audit_gaps": self.audit_gaps,
            "quiet_holes": len(self._quiet),
            "healthy": not self.health(),
            "failover": {
                f.key: {
                    "active": f.sources[f.active],
                    "primary": f.sources[0],
                    "standby": f.sources[1],
                    "on_standby": f.active == 1,
                    "switches": len(f.switches),
                    "history": [
                        self.switch_doc(w, silent) for w, silent in list(zip(f.switches, f.silent_s, strict=True))[-20:]
                    ],
                }
                for f in self.failovers.values()
            },
            "instruments": {
                k: {
                    "streaming": st.active,
                    "venue": st.instrument.venue,
                    "price": st.price,
                    "connected": st.active and st.feed.connected(),
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
                    "provisional": sum(len(p) for p in st.provisional.values()),
                    "vouched_late": st.builder.vouched_late,
                    "suspect_trades": st.builder.suspect_trades,
                    "reconciled": st.reconciled,
                    "corrected": st.corrected,
                    "unconfirmed": st.unconfirmed,
                }
                for k, st in self.states.items()
            },
        }


def _same(a: Candle, b: Candle) -> bool:
    """Whether two candles hold the same prices (to float noise), volume (to the venues' 8
    decimals) and trades: what a reconciliation counts as a correction when it is not so."""
    return (
        a.trades == b.trades
        and round(a.volume, 8) == round(b.volume, 8)
        and all(
            math.isclose(x, y, rel_tol=1e-12)
            for x, y in ((a.open, b.open), (a.high, b.high), (a.low, b.low), (a.close, b.close))
        )
    )
