"""Makes sure the stored candles are whole and final: repairs of what the stream could not vouch
for, reconciliation of provisional candles with the venue's history, audits of the store for holes
(and quiet stretches that are not), and the "final until" marks that say how far stored candles can
be trusted. These share one queue of repairs, which is why they live together."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

from deltafeed.candles.aggregator import RepairSink
from deltafeed.engine.history import history, source
from deltafeed.model import Candle, Timeframe, timeframe
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.store.base import StoreError

if TYPE_CHECKING:
    from deltafeed.engine.core import Engine
    from deltafeed.series import Series
    from deltafeed.venues.base import Feed

log = logging.getLogger("deltafeed.engine")

REPAIR_SETTLE_MS = 1_000  # how long after a candle's end the venue's kline for it is trusted
EMPTY_SETTLE_MS = 60_000  # how long after a range's end a venue's "no candle there" is trusted
QUIET_SETTLE_MS = 300_000  # how old a hole must be for an empty answer to make it a quiet stretch for good
MARK_EVERY_S = 2.0  # how often the "final until" marks are written (after the candles they cover)


def settle_ms(feed: Feed) -> int:
    """How long after a candle's end the venue's history of it is settled: the feed's
    ``history_settle_ms`` when it has one (a venue whose bars still change after they close,
    from late trades), else :data:`REPAIR_SETTLE_MS`. Repairs and reconciliations
    never take a candle from history earlier, so they never finalise one that can still change."""
    return int(getattr(feed, "history_settle_ms", REPAIR_SETTLE_MS))


@dataclass
class Repair:
    """Candles of one series to fetch again over REST, once the venue has closed them."""

    key: str  # the series (see Series.key)
    timeframe: str
    first: int  # open time of the first candle to fetch
    last: int  # open time of the last one
    found: float  # when the hole was found (the engine clock's monotonic time)
    reconcile: bool = False  # a check of provisional candles, not a known hole


class RepairQueue:
    """Repairs waiting their turn, first in first out, with each series' waiting repairs at hand:
    a thousand instruments queue thousands of repairs as they start streaming, and a scan of the
    whole queue for every repair queued or hole asked about made that quadratic."""

    def __init__(self, jobs: Iterable[Repair] = ()) -> None:
        self._order: deque[Repair] = deque()
        self._series: dict[tuple[str, str], list[Repair]] = {}
        for job in jobs:
            self.append(job)

    def append(self, job: Repair) -> None:
        self._order.append(job)
        self._series.setdefault((job.key, job.timeframe), []).append(job)

    def popleft(self) -> Repair:
        job = self._order.popleft()
        waiting = self._series[(job.key, job.timeframe)]
        del waiting[next(i for i, j in enumerate(waiting) if j is job)]
        if not waiting:
            del self._series[(job.key, job.timeframe)]
        return job

    def of(self, key: str, timeframe: str) -> list[Repair]:
        """The waiting repairs of one series, in queue order."""
        return self._series.get((key, timeframe), [])

    def __iter__(self) -> Iterator[Repair]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)


class Completeness:
    """The queue of repairs and reconciliations, the store audits and the final marks of one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.repairs = RepairQueue()
        self.inflight: Repair | None = None  # the repair being fetched now
        self._applying: Repair | None = None  # the repair whose candles are being handed on
        self._wakeup = asyncio.Event()
        self.recovery_s: deque[float] = deque(maxlen=10_000)  # hole found -> candles repaired
        self.audits = 0
        self.audit_gaps = 0
        self.merged = 0  # repairs that widened a waiting one instead of queueing their own
        self._written_marks: dict[tuple[str, str], int] = {}  # what write_marks last stored
        # Holes an audit asked a venue without empty candles (``omits_empty``) to fill, and those it
        # answered with nothing: a quiet interval, not a loss, so later audits leave it alone.
        self._asked: set[tuple[str, str, int, int]] = set()
        self._quiet: set[tuple[str, str, int, int]] = set()
        self._clipped: set[tuple[str, str]] = set()  # series whose repairs reached below the venue's history

    @property
    def pending(self) -> int:
        """Repairs and reconciliations waiting or under way."""
        return len(self.repairs) + (self.inflight is not None)

    @property
    def quiet_holes(self) -> int:
        """Holes in the store known to be quiet stretches of the market, not losses."""
        return len(self._quiet)

    def busy(self) -> bool:
        """Whether any repair or reconciliation is waiting or under way."""
        return bool(self.repairs) or self.inflight is not None

    def repair_sink(self, key: str) -> RepairSink:
        """What the builders of series ``key`` call with candles they could not vouch for."""

        def repair(timeframe: str, first: int, last: int) -> None:
            log.debug("repair queued: %s %s %d..%d", key, timeframe, first, last)
            if not self._merge(key, timeframe, first, last):
                self.repairs.append(Repair(key, timeframe, first, last, self.engine.clock.monotonic()))
            self._wakeup.set()

        return repair

    def _merge(self, key: str, tf: str, first: int, last: int) -> bool:
        """Widen a waiting repair of the series that ``[first, last]`` overlaps or adjoins to cover
        it too; False when there is none. Every loss a feed reports (each reconnect of a flaky
        connection, each gap) queues a repair: merged, they take one request where they would take
        one each, which is what keeps repairs abreast of the faults on a venue whose REST is slow
        (Kraken's one call a second through ccxt)."""
        grid = timeframe(tf)
        for job in self.repairs.of(key, tf):
            if not job.reconcile and first <= grid.next(job.last) and job.first <= grid.next(last):
                job.first, job.last = min(job.first, first), max(job.last, last)
                self.merged += 1
                return True
        return False

    def forget(self, keys: list[str]) -> None:
        """Series dropped from the engine: their waiting repairs go (one under way finds its
        series gone and hands nothing on), and so does the record of their written marks."""
        gone = set(keys)
        self.repairs = RepairQueue(j for j in self.repairs if j.key not in gone)
        self._written_marks = {k: v for k, v in self._written_marks.items() if k[0] not in gone}

    def stale_sink(self, key: str) -> Callable[[str, int], None]:
        """A derived candle the rollup cannot vouch for (a part it never saw whole): fetch it."""
        repair = self.repair_sink(key)

        def stale(timeframe: str, open_time: int) -> None:
            repair(timeframe, open_time, open_time)

        return stale

    async def repair_loop(self) -> None:
        """Fetch from REST every candle a builder could not vouch for, once the venue closed it."""
        while True:
            if not self.repairs:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            job = self.repairs.popleft()
            self.inflight = job
            try:
                again = await self._repair(job)
            finally:
                self.inflight = None
            if again is not None:
                self.repairs.append(again)
            if again is not job and not job.reconcile:
                self.release_held(job.key, job.timeframe)
            if again is job:  # not ready yet: look again shortly
                await self.engine.clock.sleep(0.1)

    def hole_start(self, key: str, timeframe: str) -> int | None:
        """Open time of the first candle of a series still waiting for a hole's repair (not counting
        the repair whose candles are being handed on now), or None."""
        firsts = [j.first for j in self._jobs_of(key, timeframe) if not j.reconcile and j is not self._applying]
        return min(firsts) if firsts else None

    def release_held(self, key: str, timeframe: str) -> None:
        """A repair of the series made progress: the candles held behind its hole that no hole
        precedes any more are final now, and go out again as such."""
        st = self.engine.states.get(key)
        if st is None:
            return  # dropped meanwhile
        held = st.held.get(timeframe)
        if not held:
            return
        hole = self.hole_start(key, timeframe)
        prov = st.provisional.get(timeframe, {})
        for t in sorted(held):
            if hole is not None and t > hole:
                break
            c = held.pop(t)
            now = prov.get(t)
            if now is not None and now.row() == c.row():  # not replaced meanwhile
                self.engine.publisher.final(key, timeframe, c)

    def ready_until(self, job: Repair) -> int:
        """Open time of the last candle of ``job`` that can be fetched now: the venue's clock is
        past its end and our builder has moved on from it (below ``job.first`` when none can)."""
        grid = timeframe(job.timeframe)
        st = self.engine.states[job.key]
        ready_until = grid.start(st.feed.clock.now_ms() - settle_ms(st.feed))
        open_c = st.open_candle(job.timeframe)
        limit = min(job.last, grid.prev(ready_until))
        if open_c is not None:
            limit = min(limit, grid.prev(open_c.open_time))
        return limit

    async def _repair(self, job: Repair) -> Repair | None:
        """Repair what of ``job`` is ready; returns what is left to do (``job`` itself if nothing was)."""
        st = self.engine.states.get(job.key)
        if st is None:
            return None  # its series was dropped
        if not self._within_history(st, job):
            return None
        limit = self.ready_until(job)
        if limit < job.first:
            return job
        try:
            candles = await history(st, job.timeframe, job.first, limit)
        except (VenueError, VenueUnreachable) as exc:
            if job.reconcile:  # asked again at the next reconciliation or audit, not in a loop
                log.debug("reconciliation of %s %s failed (%s)", job.key, job.timeframe, exc)
                return None
            log.warning("repair of %s %s failed (%s); will retry", job.key, job.timeframe, exc)
            await self.engine.clock.sleep(1.0)
            return job
        if job.key not in self.engine.states:
            return None  # dropped while its history was fetched
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
            return Repair(job.key, job.timeframe, done, job.last, job.found, job.reconcile)
        if not job.reconcile:
            self.recovery_s.append(self.engine.clock.monotonic() - job.found)
        return None

    def _within_history(self, st: Series, job: Repair) -> bool:
        """Clip ``job`` to the history the venue still serves (``FeedStatus.history_from``, for venues
        that keep only their newest candles): nothing older can ever be fetched, so a repair waiting
        for it would wait forever. False when none of the job is within it (dropped)."""
        own = getattr(st.feed, "series_history_from", None)  # a bridge's exchanges differ (ccxt)
        if own is not None:
            since = own(st, job.timeframe)
        else:
            parts = source(st.instrument.venue, job.timeframe) or job.timeframe  # what is fetched for it
            since = (st.feed.report().history_from or {}).get(parts)
        if since is None or job.first >= since:
            return True
        since = timeframe(job.timeframe).ceil(since)
        if (job.key, job.timeframe) not in self._clipped:
            self._clipped.add((job.key, job.timeframe))
            log.warning(
                "%s %s: the venue's history starts at %d; candles before it cannot be repaired",
                job.key,
                job.timeframe,
                since,
            )
        if job.last < since:
            return False
        job.first = since
        return True

    def _apply_history(self, job: Repair, candles: list[Candle], limit: int) -> int:
        """Hand on the venue's candles for ``job`` up to ``limit``; returns the open time up to
        which the job is done."""
        st = self.engine.states[job.key]
        grid = timeframe(job.timeframe)
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
            self.engine.publisher.final(job.key, job.timeframe, c)
            if old is None or not job.reconcile:
                st.repaired += 1
            done = grid.next(c.open_time)
        if (
            st.feed.omits_empty
            and (not candles or candles[-1].closed)
            and grid.next(limit) <= st.feed.clock.now_ms() - EMPTY_SETTLE_MS
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
                    self.engine.publisher.final(job.key, job.timeframe, msgspec.structs.replace(c, final=True))
                else:
                    st.unconfirmed += 1
                    st.unconfirmed_at.add((job.timeframe, t))
                    del prov[t]
            done = max(done, grid.next(limit))
        return done

    async def reconcile_loop(self, feed: Feed, every_s: float) -> None:
        while True:
            await self.engine.clock.sleep(every_s)
            self.reconcile_due(feed)

    def reconcile_due(self, feed: Feed) -> int:
        """Queue a reconciliation with the venue's history for each series of ``feed`` holding closed
        provisional candles the venue has settled: one request per series and timeframe covers them
        all, under the feed's rate limiter like every repair. Returns how many were queued."""
        now = feed.clock.now_ms() - settle_ms(feed)
        queued = 0
        for key, st in self.engine.states.items():
            if st.feed is not feed:
                continue
            derived = st.rollup.timeframes if st.rollup is not None else ()
            for tf, prov in st.provisional.items():
                if not prov or tf in derived:  # a derived candle is final once its parts are
                    continue
                grid = timeframe(tf)
                # What a waiting or running job of the series already covers is not asked twice; what
                # closed after it is (a slow round must not leave the newest candles to the next one).
                spans = self.spans(key, tf)
                due = [t for t in prov if grid.next(t) <= now and not any(a <= t <= b for a, b in spans)]
                if not due:
                    continue
                first, last = min(due), max(due)
                self.repairs.append(Repair(key, tf, first, last, self.engine.clock.monotonic(), reconcile=True))
                queued += 1
        if queued:
            self._wakeup.set()
        return queued

    async def grace(self, seconds: float) -> None:
        """Give repairs and reconciliations that can make progress now up to ``seconds`` to finish
        (the stop grace); what is left stays provisional in the store for the next run."""
        for feed in self.engine.feeds.values():
            if not feed.sequenced:
                self.reconcile_due(feed)
        deadline = self.engine.clock.monotonic() + seconds
        while self.engine.clock.monotonic() < deadline:
            jobs = [*self.repairs, *([self.inflight] if self.inflight is not None else [])]
            if not any(self.ready_until(j) >= j.first for j in jobs):
                return
            await self.engine.clock.sleep(0.05)
        log.info("stop grace of %.0f s over: %d repairs left for the next run", seconds, len(self.repairs))

    def final_marks(self) -> dict[tuple[str, str], int]:
        """Per series, the open time before which every candle handed to the store is final.

        A candle is final when it came from the venue (REST, a closed kline, a reconciliation) or
        the builder vouched for it. So the mark is the candle holding the last trade, pulled back to
        the first provisional candle and the first candle still waiting for a repair; before any
        trade it is where the bootstrap got to.
        """
        marks: dict[tuple[str, str], int] = {}
        for key, st in self.engine.states.items():
            b = st.builder
            for tf in self.engine.timeframes:
                if b.last_trade_ms >= 0:
                    marks[(key, tf)] = timeframe(tf).start(b.last_trade_ms)
                elif tf in st.bootstrap_marks:
                    marks[(key, tf)] = st.bootstrap_marks[tf]
                prov = st.provisional.get(tf)
                if prov and (key, tf) in marks:
                    marks[(key, tf)] = min(marks[(key, tf)], min(prov))
        waiting = list(self.repairs)
        if self.inflight is not None:
            waiting.append(self.inflight)
        for job in waiting:
            key = job.key
            rollup = self.engine.states[key].rollup
            pulled = [job.timeframe]
            if rollup is not None and job.timeframe == rollup.base:
                pulled += rollup.timeframes  # a derived candle is final only once its parts are
            for tf in pulled:
                k = (key, tf)
                if k in marks:
                    marks[k] = min(marks[k], timeframe(tf).start(job.first))
        return marks

    async def write_marks(self) -> None:
        """Write the candles handed over so far, then the marks that vouch for them."""
        marks = self.final_marks()
        await self.engine.writer.flush()
        if (
            not self.engine.publisher.store_dropped
        ):  # candles were dropped: the marks stay put, the next run fetches them
            # Only the marks that moved since the last write: at a thousand instruments most
            # marks stand still between two ticks, and rewriting them all was most of the cost.
            written = self._written_marks
            moved = {k: v for k, v in marks.items() if written.get(k) != v}
            if moved:
                await self.engine.cold.set_final_marks(moved)
                written.update(moved)
        await self.engine.failover.save()

    async def mark_loop(self) -> None:
        while True:
            await self.engine.clock.sleep(MARK_EVERY_S)
            try:
                await self.write_marks()
            except StoreError as exc:
                log.warning("cannot write to the store yet (%s); candles stay queued and are retried", exc)

    async def audit(self) -> None:
        """Check the stored series for holes and unfinished candles; each becomes a repair.

        A venue that has no candle for an interval without prices leaves holes in a quiet market:
        a hole it was asked to fill, whose repair is over, and that is still there is such a quiet
        stretch, and is not asked about again. The series of one venue are read together, with
        two queries per timeframe where the cold tier can (``find_gaps_many``, ``provisional_many``)."""
        self.audits += 1
        window_ms = int(self.engine.settings.seconds("audit_window") * 1000)
        by_feed: dict[int, list[Series]] = {}
        for st in self.engine.states.values():
            if st.key not in self.engine.joining:  # an instrument being added audits once it streams
                by_feed.setdefault(id(st.feed), []).append(st)
        for states in by_feed.values():
            feed = states[0].feed
            now = feed.clock.now_ms()
            since = now - window_ms
            keys = [st.key for st in states]
            holes: set[tuple[str, str, int, int]] = set()
            for tf in self.engine.timeframes:
                grid = timeframe(tf)
                gaps = await self._find_gaps(tf, grid, keys, since, now)
                # Provisional candles this run is not following (left by an earlier run, by a stop
                # during an outage, or forgotten past PROVISIONAL_MAX) are fetched from history.
                before = grid.prev(grid.start(now - settle_ms(feed)))
                provisional = await self._provisional(tf, keys, since, before)
                for st in states:
                    self._audit_gaps(st, tf, gaps[st.key], now, holes)
                    self._audit_provisional(st, tf, provisional[st.key])
            # Only what is still a hole is remembered (one filled since, or out of the window, is not).
            audited = set(keys)
            for known in (self._asked, self._quiet):
                known.difference_update([h for h in known if h[0] in audited and h not in holes])

    async def _find_gaps(
        self, tf: str, grid: Timeframe, keys: list[str], since: int, now: int
    ) -> dict[str, list[tuple[int, int]]]:
        cold = self.engine.cold
        many = getattr(cold, "find_gaps_many", None)
        if many is not None:
            found: dict[str, list[tuple[int, int]]] = await many(tf, grid, keys, since, now)
            return found
        return {key: await cold.find_gaps(key, tf, grid, since, now) for key in keys}

    async def _provisional(self, tf: str, keys: list[str], since: int, before: int) -> dict[str, list[tuple[int, int]]]:
        cold = self.engine.cold
        many = getattr(cold, "provisional_many", None)
        if many is not None:
            found: dict[str, list[tuple[int, int]]] = await many(tf, keys, since, before)
            return found
        return {key: await cold.provisional(key, tf, since, before) for key in keys}

    def _audit_gaps(
        self, st: Series, tf: str, gaps: list[tuple[int, int]], now: int, holes: set[tuple[str, str, int, int]]
    ) -> None:
        key, grid = st.key, timeframe(tf)
        for first, last in gaps:
            if not st.calendar.open_between(first, grid.next(last)):
                continue
            hole = (key, tf, first, last)
            holes.add(hole)
            if hole in self._quiet or self.repairing(key, tf, first, last):
                continue  # known quiet, or being fetched now
            if hole in self._asked:  # asked, answered, and still there: nothing to fetch
                self._asked.discard(hole)
                self._quiet.add(hole)
                continue
            self.audit_gaps += 1
            log.warning("audit: %s %s has a hole from %d to %d; fetching it", key, tf, first, last)
            self.repair_sink(key)(tf, first, last)
            if st.feed.omits_empty and grid.next(last) <= now - QUIET_SETTLE_MS:
                self._asked.add(hole)

    def _audit_provisional(self, st: Series, tf: str, runs: list[tuple[int, int]]) -> None:
        live = st.provisional.get(tf, {})
        for first, last in runs:
            if first in live or (tf, first) in st.unconfirmed_at or self.repairing(st.key, tf, first, last):
                continue
            self.repairs.append(Repair(st.key, tf, first, last, self.engine.clock.monotonic(), reconcile=True))
            self._wakeup.set()

    def spans(self, key: str, timeframe: str) -> list[tuple[int, int]]:
        """The [first, last] open times of the series' waiting and running jobs."""
        return [(j.first, j.last) for j in self._jobs_of(key, timeframe)]

    def _jobs_of(self, key: str, timeframe: str) -> list[Repair]:
        """The series' waiting jobs and the one under way, if it is the series'."""
        jobs = self.repairs.of(key, timeframe)
        run = self.inflight
        if run is not None and run.key == key and run.timeframe == timeframe:
            return [*jobs, run]
        return jobs

    def repairing(self, key: str, timeframe: str, first: int, last: int) -> bool:
        """Whether a repair waiting or under way touches [first, last] of the series."""
        return any(a <= last and first <= b for a, b in self.spans(key, timeframe))

    async def audit_loop(self) -> None:
        every = self.engine.settings.seconds("audit_every")
        while True:
            await self.engine.clock.sleep(every)
            try:
                await self.engine.writer.flush()
                await self.audit()
            except StoreError as exc:
                log.warning("store audit postponed: %s", exc)


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
