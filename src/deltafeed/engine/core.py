"""The engine's wiring and lifecycle: one series per instrument and price side, the stores, and the
parts that keep them (bootstrap, publishing, completeness, failover); start, tick, stop; and what
the API reads (the engine is a :class:`~deltafeed.engine.view.EngineView`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import deque
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import msgspec

from deltafeed.api.protocol import LiveSink
from deltafeed.books import Books
from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.calendar import calendar_for
from deltafeed.candles.rollup import RollupBuilder
from deltafeed.clock import LIVE, Clock, VenueClock
from deltafeed.config import Settings
from deltafeed.engine import status as status_view
from deltafeed.engine.bootstrap import Bootstrap
from deltafeed.engine.completeness import Completeness
from deltafeed.engine.failover import FailoverPair, Failovers
from deltafeed.engine.history import source
from deltafeed.engine.publish import Publisher
from deltafeed.engine.status import EngineStatus, SwitchDoc
from deltafeed.extras import require
from deltafeed.model import BadInput, Candle, Instrument, Switch, Unavailable, series_key, timeframe
from deltafeed.net.http import VenueUnreachable
from deltafeed.series import Series
from deltafeed.stats import EngineMetrics
from deltafeed.store.base import ColdTier, StoreError, Unopened, redact
from deltafeed.store.hot import HotStore
from deltafeed.store.open import open_cold
from deltafeed.store.reader import MemoryHot, read_candles
from deltafeed.store.retention import parse_retention
from deltafeed.store.spool import Spool
from deltafeed.store.ticks import TickPage, TickRecorder, parse_tick_retention, tick_tier
from deltafeed.store.writer import BatchWriter
from deltafeed.venues import registry
from deltafeed.venues.base import Feed
from deltafeed.venues.registry import make_feed

if TYPE_CHECKING:
    from deltafeed.config import FailoverSettings
    from deltafeed.store.redis_hot import RedisHot

log = logging.getLogger("deltafeed.engine")

TICK_S = 0.2  # how often quiet candles are closed and open candles handed to the stores
CLOSE_GRACE_MS = 2_000  # how far past its end a quiet candle waits for a late trade or venue kline
REPORT_EVERY_S = 60.0  # how often a progress line is logged
#: The writer flushes early once this many rows per forming candle wait (see Engine._make_series):
#: a second of every forming candle's updates and the candles that closed in it fit below that.
WRITER_ROWS_PER_FORMING = 2


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

    The jobs are split into parts that hold a reference to the engine and share its series and
    stores: :attr:`publisher` (candles to the tiers and consumers), :attr:`completeness` (repairs,
    reconciliation, audits, final marks), :attr:`failover` (logical series) and :attr:`bootstrap`.
    """

    def __init__(self, settings: Settings, *, clock: Clock = LIVE) -> None:
        self.settings = settings
        #: What every engine loop waits on and measures with (a TestClock in tests that drive time).
        self.clock = clock
        self.instruments = settings.instruments()
        self.timeframes = settings.timeframes
        self.retention = parse_retention(settings.retention, timeframes=settings.timeframes)
        self.hot = HotStore(settings.hot_capacity)
        self.started = clock.monotonic()  # reset when streaming starts
        self.publisher = Publisher(self)
        self.completeness = Completeness(self)
        self.bootstrap = Bootstrap(self)
        # The cold tier opens in start() (PostgreSQL needs the loop); until then every call says so.
        self.cold: ColdTier = Unopened(redact(settings.db))
        spool_path = settings.spool_path()
        self.spool = Spool(spool_path) if spool_path else None
        self.writer = BatchWriter(self.cold, spool=self.spool, on_written=self.publisher.written)
        #: Records raw ticks into the cold tier (None: ``ticks = false``, or a tier without tick tables).
        self.ticks: TickRecorder | None = None
        self.tick_retention_ms = parse_tick_retention(settings.tick_retention)
        self.redis: RedisHot | None = None
        if settings.hot:
            redis_hot = require("deltafeed.store.redis_hot", "redis", "--hot (the Redis hot tier)")
            self.redis = redis_hot.RedisHot(
                settings.hot,
                capacity=settings.hot_capacity,
                retention=self.retention,
                prefix=settings.hot_prefix,
                refill=self.publisher.hot_contents,
            )
        self.metrics = EngineMetrics()
        self.hub: LiveSink | None = None  # set by the API server; receives candles, trades and prices
        # One feed per venue (its connection, decoder and REST history); one state per series.
        self.feeds: dict[str, Feed] = {}
        self.states: dict[str, Series] = {}
        #: Keys of series added while the engine runs whose history is still being fetched: the tick
        #: and the audit leave them alone until they stream (see :meth:`add_instrument`).
        self.joining: set[str] = set()
        #: Parts of the venues' limits given by :meth:`set_share`: (REST pace, connection attempts).
        self.shares: dict[str, tuple[float, float]] = {}
        self._unstarted: set[str] = set()  # venues whose feed was made by add_instrument, not started yet
        self._forming = 0  # forming candles of the series made so far (one per timeframe)
        for inst in self.instruments:
            self._make_series(inst)
        self.failover = Failovers(self)
        #: The run's order books (``books`` setting); started with the streams.
        self.books = Books(settings)
        self._tasks: list[asyncio.Task[None]] = []
        #: Monotonic time start() finished (history bootstrapped, streams started); None before.
        self.streaming_since: float | None = None

    def _make_series(self, inst: Instrument) -> list[Series]:
        """The series of ``inst`` (one per price side), in :attr:`states` and on the venue's feed
        (made when it is the venue's first instrument)."""
        settings = self.settings
        feed = self.feeds.get(inst.venue)
        if feed is None:
            feed = self.feeds[inst.venue] = make_feed(inst.venue, settings, self.publisher.trade)
            if inst.venue in self.shares:  # within the part of the venue's limits given so far
                feed.set_share(*self.shares[inst.venue])
        vs = settings.venue_settings(inst.venue)
        venue = registry.get(inst.venue)
        cal_name = venue.calendar_name(inst.symbol)
        calendar = calendar_for(cal_name, holidays=(vs.holidays or None) if cal_name != "crypto" else None)
        base = settings.rollup_base(inst)
        # Derived: what the base divides (its candles are whole runs of base candles); the rest
        # (e.g. 45s beside a 1m base) are built from the trades.
        derived = [tf for tf in self.timeframes if base is not None and _derivable(base, tf)]
        built = [tf for tf in self.timeframes if tf not in derived]
        made = []
        for side in venue.sides(settings.prices_for(inst), inst.symbol):
            key = series_key(str(inst), side)
            closed = self.publisher.closed_sink(key)
            repair = self.completeness.repair_sink(key)
            st = Series(
                inst,
                CandleBuilder(built, closed, repair, calendar=calendar, vouch=feed.sequenced),
                calendar,
                feed,
                side,
            )
            if base is not None and derived:
                st.rollup = RollupBuilder(base, derived, closed, on_stale=self.completeness.stale_sink(key))
            self.states[key] = st
            feed.add(st)
            made.append(st)
        for tf in self.timeframes:  # after the feed's own check, which words it for its venue
            source(inst.venue, tf)  # BadInput when the venue's history cannot make it at all
        # Keep the writer's early flush (at ``max_rows`` pending) above the forming candles: each
        # tick puts every forming candle that changed, and those conflate in the writer only until
        # its next flush. Below their number, a thousand busy instruments made a flush of ~500 rows
        # every few milliseconds (25,000 rows a second at 5 timeframes, most of a core in DuckDB:
        # ~20 µs a row in 500-row statements, ~4 µs in 5000-row ones) where the timed flush writes
        # each forming candle once a second. (A dropped instrument leaves the bound as it is.)
        self._forming += sum(len(st.timeframes) + (len(st.rollup.timeframes) if st.rollup else 0) for st in made)
        self.writer.max_rows = max(self.writer.max_rows, WRITER_ROWS_PER_FORMING * self._forming)
        return made

    def now_ms(self) -> int:
        """The latest of the venues' clocks (retention and latency figures)."""
        return max((f.clock.now_ms() for f in self.feeds.values()), default=self.clock.time_ms())

    @property
    def venue_clock(self) -> VenueClock:
        """The clock of the run's first venue."""
        return next(iter(self.feeds.values())).clock

    # --- the parts' figures, by their old names ---------------------------------------------------

    @property
    def failovers(self) -> dict[str, FailoverPair]:
        """The logical series of this run, by key."""
        return self.failover.pairs

    @property
    def store_wait(self) -> str | None:
        """What start-up waits for the failing cold store to do, or None."""
        return self.bootstrap.waiting_for

    @property
    def store_dropped(self) -> int:
        """Candle updates the store's full backlog could not take."""
        return self.publisher.store_dropped

    @property
    def audits(self) -> int:
        """Store audits run so far."""
        return self.completeness.audits

    @property
    def audit_gaps(self) -> int:
        """Holes the audits found (each fetched as a repair)."""
        return self.completeness.audit_gaps

    @property
    def recovery_s(self) -> deque[float]:
        """Seconds from a hole found to its candles repaired, the latest 10 000."""
        return self.completeness.recovery_s

    def final_marks(self) -> dict[tuple[str, str], int]:
        """See :meth:`Completeness.final_marks`."""
        return self.completeness.final_marks()

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the venues and the symbols, bootstrap and audit history, then start streaming.

        A venue that cannot be reached is :class:`Unavailable` (retry later), unlike a venue that
        refuses a symbol (:class:`BadInput`: fix the settings)."""
        for feed in self.feeds.values():
            try:
                await feed.check()
            except BadInput as exc:
                if not isinstance(exc, Unavailable) and _unreachable(exc):
                    raise Unavailable(str(exc)) from None
                raise
        self.cold = await open_cold(self.settings.db, self.retention, schema=self.settings.db_schema)
        if hasattr(self.cold, "cover_closed"):  # PostgreSQL's
            self.cold.cover_closed = self.settings.postgres_cover_closed
        self.writer.cold = self.cold
        if self.redis is not None:
            await self.redis.open()
            self._tasks.append(asyncio.create_task(self.redis.run(), name="redis"))
        self._tasks.append(asyncio.create_task(self.writer.run(), name="writer"))
        await self._start_ticks()
        if self.writer.spooled_pending:
            log.info(
                "replaying %d candles spooled by an earlier run into %s", self.writer.spooled_pending, self.cold.name
            )
            try:
                await self.writer.flush(retry_for_s=30.0)
            except StoreError as exc:
                # They are safe in the spool, and the writer replays it before anything newer.
                log.warning("spool replay postponed, the cold store fails: %s", exc)
        marks = await self.bootstrap.patiently("read the final marks", self.cold.final_marks)
        await self.bootstrap.prefetch()
        await asyncio.gather(*(self.bootstrap.series(st, marks) for st in self.states.values()))
        self.failover.seed()
        try:
            await self.writer.flush()  # the audit reads the store: the bootstrap's candles first
            await self.completeness.audit()
        except StoreError as exc:
            log.warning("store audit postponed: %s", exc)
        for feed in self.feeds.values():
            feed.start()
        # A series is silent (health, failover) from here: the bootstrap is not the venue's silence.
        self.started = self.clock.monotonic()
        self.books.start(self.cold)
        self._tasks.append(asyncio.create_task(self._tick(), name="tick"))
        self._tasks.append(asyncio.create_task(self.completeness.repair_loop(), name="repairs"))
        for feed in self.feeds.values():
            self._start_reconciling(feed)
        self._tasks.append(asyncio.create_task(self.completeness.mark_loop(), name="marks"))
        self._tasks.append(asyncio.create_task(self.completeness.audit_loop(), name="audit"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))
        if self.settings.status_file:
            self._tasks.append(asyncio.create_task(self._status_file_loop(), name="status-file"))
        self.streaming_since = self.clock.monotonic()

    async def add_instrument(self, inst: Instrument, *, history_ms: int | None = None, book: bool = False) -> list[str]:
        """Start collecting ``inst`` while the engine runs; returns its series' keys ([] when it is
        collected already).

        As at start-up, but for it alone: the venue checks the symbol, its history is fetched from
        where its stored candles stop being known final (``history_ms`` back when none are, instead
        of ``history``), and only then does it stream: subscribed on the venue's open connection
        (the feed's :meth:`~deltafeed.venues.base.Feed.control`), or on a new one when it is the
        venue's first instrument. The tick leaves it alone meanwhile. With ``book``, its order book
        is kept too (see :meth:`Books.add`). On failure (the venue refuses the symbol, or the call
        is cancelled) it is dropped again and the error raised."""
        if self.streaming_since is None:
            raise RuntimeError("add_instrument() is for a running engine; start() it first")
        name = str(inst)
        if any(str(st.instrument) == name for st in self.states.values()):
            return []
        made: list[Series] = []
        try:
            if inst.venue not in self.feeds:
                self._unstarted.add(inst.venue)
            made = self._make_series(inst)
            self.instruments.append(inst)
            self.joining.update(st.key for st in made)
            for st in made:  # routed nowhere until its history is in (a reconnect leaves it out too)
                st.active = False
                st.feed.activate(st, False)
            feed = made[0].feed
            await feed.check()
            if self.ticks is not None:
                for st in made:
                    self.ticks.attach(st)
            marks = await self.bootstrap.patiently("read the final marks", self.cold.final_marks)
            await asyncio.gather(*(self.bootstrap.series(st, marks, history_ms=history_ms) for st in made))
            if book:
                await self.books.add(name)
        except BaseException:
            await self.drop_instrument(inst)
            raise
        self.joining.difference_update(st.key for st in made)
        if feed.venue in self._unstarted:  # the venue's first instrument in (of those added at once)
            for st in made:
                feed.activate(st, True)
                st.active = True
            feed.start()
            self._unstarted.discard(feed.venue)
            self._start_reconciling(feed)
        else:
            self._control(True, made)
        log.info("%s added: streaming", name)
        return [st.key for st in made]

    async def drop_instrument(self, inst: Instrument) -> list[str]:
        """Stop collecting ``inst`` while the engine runs; returns the keys of the series dropped.

        Unsubscribed on the open connection (the venue's last instrument closes the feed), its book
        no longer kept, its forming candles handed on as they are (forming, never final), its waiting repairs
        forgotten, and its final marks written as they stand: they vouch only for what this engine
        verified, so whoever collects it next fetches the rest again."""
        name = str(inst)
        gone = [st for st in self.states.values() if str(st.instrument) == name]
        self.instruments = [i for i in self.instruments if str(i) != name]
        self.joining = {k for k in self.joining if k.partition("@")[0] != name}
        if not gone:
            await self.books.drop(name)
            return []
        self._control(False, [st for st in gone if st.active])
        await self.books.drop(name)
        keys = [st.key for st in gone]
        marks = {k: v for k, v in self.final_marks().items() if k[0] in keys}
        for st in gone:
            if st.key not in self.joining:
                self.publisher.open(st)
            del self.states[st.key]
            self.joining.discard(st.key)
            remove = getattr(st.feed, "remove", None)
            if remove is not None:
                remove(st)
        self.completeness.forget(keys)
        feed = gone[0].feed
        if not any(st.feed is feed for st in self.states.values()):
            del self.feeds[feed.venue]
            self._unstarted.discard(feed.venue)
            for t in [t for t in self._tasks if t.get_name() == f"reconcile-{feed.venue}"]:
                t.cancel()
                self._tasks.remove(t)
            await feed.stop()
        if marks:
            with contextlib.suppress(StoreError):
                await self.writer.flush(retry_for_s=0.0)
                await self.cold.set_final_marks(marks)
        log.info("%s dropped", name)
        return keys

    async def add_failover(
        self, name: str, fo: FailoverSettings, *, history_ms: int | None = None, books: Collection[str] = ()
    ) -> list[str]:
        """Start serving failover ``name`` while the engine runs: its two sources added (see
        :meth:`add_instrument`), then its logical series, started as the primary's recent candles
        and following the primary until it goes silent; the books of the sources named in ``books``
        kept too. Returns the logical series' keys."""
        settings = self.settings
        sources = [Instrument.parse(s, default_venue=settings.venue) for s in (fo.primary, fo.standby)]
        try:
            await asyncio.gather(
                *(self.add_instrument(i, history_ms=history_ms, book=str(i) in books) for i in sources)
            )
            pairs = self.failover.add(name, fo)
        except BaseException:
            await self.drop_failover(name, fo)
            raise
        self.failover.seed(pairs)
        log.info("failover %s added: %s", name, ", ".join(f.key for f in pairs))
        return [f.key for f in pairs]

    async def drop_failover(self, name: str, fo: FailoverSettings) -> list[str]:
        """Stop serving failover ``name`` and drop its sources (see :meth:`drop_instrument`); its
        switches not yet stored are stored first. Returns the logical series' keys."""
        gone = self.failover.drop(name)
        unsaved = [w for f in gone for w in f.unsaved]
        if unsaved:
            with contextlib.suppress(StoreError):
                await self.cold.record_switches(unsaved)
        for s in (fo.primary, fo.standby):
            await self.drop_instrument(Instrument.parse(s, default_venue=self.settings.venue))
        return [f.key for f in gone]

    def set_share(self, venue: str, rest: float, connects: float) -> None:
        """Keep ``venue`` to the fraction ``rest`` of its REST pace and ``connects`` of its connection
        attempts from now on (its feed made later included): e.g. a collector's part of the budget it
        shares with the other collectors on its address (see :class:`~deltafeed.venues.base.SharedLimits`)."""
        self.shares[venue] = (rest, connects)
        feed = self.feeds.get(venue)
        if feed is not None:
            feed.set_share(rest, connects)
        self.books.set_share(venue, rest, connects)  # its order books' connections and snapshots too

    def _start_reconciling(self, feed: Feed) -> None:
        """Reconcile ``feed``'s provisional candles with its history, when it is not sequenced."""
        every = self.settings.seconds("reconcile_every") if self.settings.reconcile_every else feed.reconcile_every_s
        if not feed.sequenced and every > 0:
            self._tasks.append(
                asyncio.create_task(self.completeness.reconcile_loop(feed, every), name=f"reconcile-{feed.venue}")
            )

    async def _start_ticks(self) -> None:
        """Record every series' ticks when ``ticks`` is on and the cold tier keeps them."""
        tier = tick_tier(self.cold)
        if not self.settings.ticks or tier is None:
            return
        rec = TickRecorder(tier, clock=self.clock)
        try:
            rec.previous = await tier.last_tick_ms()
        except StoreError as exc:  # the span since the last run is then simply not reported
            log.warning("cannot read where the stored ticks end: %s", exc)
        for st in self.states.values():
            rec.attach(st)
        self.ticks = rec
        self._tasks.append(asyncio.create_task(rec.run(), name="ticks"))

    async def trades(
        self, instrument: str, since_ms: int | None = None, until_ms: int | None = None, limit: int | None = None
    ) -> TickPage | None:
        """Stored raw ticks of an instrument (see :meth:`TickTier.read_ticks`), the ones still
        buffered included; None when this run keeps no ticks."""
        tier = tick_tier(self.cold)
        if self.ticks is None or tier is None:
            return None
        with contextlib.suppress(StoreError):
            await self.ticks.flush()  # what the stream delivered up to now
        return await tier.read_ticks(instrument, since_ms, until_ms, limit)

    async def _tick(self) -> None:
        """Every TICK_S: settle held trades, close quiet candles, publish open candles, rotate."""
        next_report = self.clock.monotonic() + REPORT_EVERY_S
        held_last_tick: set[str] = set()
        while True:
            await self.clock.sleep(TICK_S)
            mono = self.clock.monotonic()
            if mono >= next_report:
                next_report += REPORT_EVERY_S
                self._report()
            joining = self.joining
            for key, st in self.states.items():
                if key in joining:
                    continue
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
            for feed in list(self.feeds.values()):
                if feed.venue in self._unstarted:
                    continue
                await feed.tick(mono)  # learns the venue's time, rotates connections
            self.failover.check(mono)
            for key, st in list(self.states.items()):
                if key in joining:
                    continue
                clock = st.feed.clock
                # At least a second of wall time for the last trades of a candle to arrive, however
                # fast the venue's clock runs (a replica's may run 120 times as fast).
                st.builder.advance(clock.now_ms() - max(CLOSE_GRACE_MS, int(1000 * clock.rate)))
                self.publisher.open(st)

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

    # --- serving --------------------------------------------------------------------------------

    def instrument_names(self) -> list[str]:
        """Every series served: the collected ones, then the logical (failover) ones."""
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

    def switch_doc(self, w: Switch, silent_s: float | None = None) -> SwitchDoc:
        """A switch as the status view and the API show it (see :meth:`Failovers.switch_doc`)."""
        return self.failover.switch_doc(w, silent_s)

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """Failover switches of a logical instrument (see :meth:`Failovers.switches`)."""
        return await self.failover.switches(instrument, since_ms, until_ms)

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

    def _control(self, active: bool, states: list[Series]) -> None:
        for feed in self.feeds.values():
            mine = [st for st in states if st.feed is feed]
            for st in mine:
                st.active = active
                feed.activate(st, active)
            if mine:
                feed.control(active, mine)

    def _pick(self, instruments: list[str] | None) -> list[Series]:
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

    async def apply_retention(self, now_ms: int) -> dict[str, int]:
        """Drop what each tier keeps past its timeframe's retention, by the venue's ``now_ms``;
        returns how many candles each tier removed (a tier that is down is skipped and says so)."""
        removed = {"memory": self.hot.apply_retention(now_ms, self.retention)}
        try:
            removed["cold"] = await self.cold.apply_retention(now_ms)
        except StoreError as exc:
            log.warning("retention in the cold store postponed: %s", exc)
        tier = tick_tier(self.cold)
        if self.ticks is not None and tier is not None:
            try:
                removed["ticks"] = await tier.apply_tick_retention(now_ms - self.tick_retention_ms)
            except StoreError as exc:
                log.warning("tick retention postponed: %s", exc)
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
            await self.clock.sleep(3600)

    def write_status_file(self) -> None:
        """Write :meth:`status` (and the recovery times) as JSON, replacing the file atomically."""
        path = self.settings.status_file
        if not path:
            return
        doc = status_view.StatusFile(**msgspec.structs.asdict(self.report()), recovery_s=list(self.recovery_s))
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as f:
            f.write(msgspec.json.encode(doc))
        os.replace(tmp, path)

    async def _status_file_loop(self) -> None:
        while True:
            await self.clock.sleep(1.0)
            try:
                self.write_status_file()
            except OSError as exc:
                log.warning("cannot write the status file: %s", exc)

    async def stop(self) -> None:
        """Let repairs under way finish (at most ``stop_grace``), stop streaming and write
        everything out (meant to take well under 2 seconds after the grace)."""
        if any(t.get_name() == "repairs" and not t.done() for t in self._tasks):
            await self.completeness.grace(self.settings.seconds("stop_grace"))
        # The engine's own tasks end first: a tick running during a feed's stop could open a new
        # connection (a rotation), whose frames would then reach a closed writer.
        for t in self._tasks:
            if t.get_name() not in ("writer", "ticks"):
                t.cancel()
        await asyncio.gather(self.books.stop(), *(feed.stop() for feed in self.feeds.values()))
        for st in self.states.values():
            self.publisher.open(st)
        if self.hub is not None:
            await self.hub.close()
        if self.ticks is not None:
            await self.ticks.close()
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
            await self.failover.save()
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

    # --- visibility -----------------------------------------------------------------------------

    def health(self) -> list[str]:
        """Reasons the collector is not healthy; empty when it is."""
        return status_view.health(self)

    def readiness(self) -> list[str]:
        """Reasons the collector is not ready to serve (see :func:`status.readiness`); empty when it is."""
        return status_view.readiness(self)

    def report(self) -> EngineStatus:
        """A snapshot of counters for the terminal view, the API, the metrics and the status file."""
        return status_view.engine_status(self)

    def status(self) -> dict[str, Any]:
        """:meth:`report` as plain JSON-ready values (what ``GET /streaming/status`` sends)."""
        out: dict[str, Any] = msgspec.to_builtins(self.report())
        return out


#: The most base candles one derived candle may hold: a rollup keeps two derived candles' parts in
#: memory, so a longer one (a week of seconds) is built from the trades instead. A day of 1s parts
#: (86 400) and a month of 1m parts (44 640) fit.
MAX_ROLLUP_PARTS = 100_000


def _derivable(base: str, tf: str) -> bool:
    """Whether ``tf`` is rolled up from ``base``: longer, the base divides it, and not too many parts."""
    b, t = timeframe(base), timeframe(tf)
    return t.ms > b.ms and b.fixed and b.divides(t) and t.ms // b.ms <= MAX_ROLLUP_PARTS


def _unreachable(exc: BaseException) -> bool:
    """Whether a venue's check failed because the venue could not be reached: the feeds turn
    :class:`VenueUnreachable` (or a socket error) into a :class:`BadInput` naming the fix, raised
    while handling it, so it is the error's context."""
    seen: BaseException | None = exc
    for _ in range(8):  # a short chain; never a cycle
        seen = seen.__cause__ or seen.__context__ if seen is not None else None
        if seen is None:
            return False
        if isinstance(seen, VenueUnreachable | ConnectionError | TimeoutError):
            return True
    return False
