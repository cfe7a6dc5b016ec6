"""Start-up: each series filled from where its stored candles stop being known final up to now,
over REST and page by page; and start-up's patience with a cold store that fails meanwhile."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, TypeVar

from deltafeed.engine.history import history, page_span_ms
from deltafeed.model import timeframe
from deltafeed.net.http import VenueError
from deltafeed.net.reconnect import Backoff
from deltafeed.store.base import StartupRead, StoreError

if TYPE_CHECKING:
    from deltafeed.engine.core import Engine
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.engine")

_T = TypeVar("_T")

BOOTSTRAP_FLUSH_ROWS = 50_000  # bootstrap waits for the store when this many candles are pending


class Bootstrap:
    """Fills the history of an engine's series at start-up."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: What start-up is waiting for the cold store to do while it fails (a full disk, a server
        #: down), e.g. "read the final marks"; None while it is not waiting.
        self.waiting_for: str | None = None
        self.wait_error: StoreError | None = None
        self._read: dict[tuple[str, str], StartupRead] = {}  # (series, timeframe) -> what prefetch read
        self._now: dict[str, int] = {}  # series -> the venue's time when prefetch began

    async def prefetch(self) -> None:
        """Read every series' newest candles with one query per timeframe, where the cold tier can
        (``recent_many``); :meth:`series` falls back to reads of its own for the others."""
        cold = self.engine.cold
        many = getattr(cold, "recent_many", None)
        if many is None:
            return
        # The history window is measured from now, before the reads (as when each series read its own).
        self._now = {key: st.feed.clock.now_ms() for key, st in self.engine.states.items()}
        keys = list(self.engine.states)
        for tf in self.engine.timeframes:
            got: dict[str, StartupRead] = await self.patiently(
                f"read the newest {tf} candles", partial(many, tf, keys, self.engine.settings.hot_capacity)
            )
            for key, read in got.items():
                self._read[(key, tf)] = read

    async def series(self, st: Series, marks: dict[tuple[str, str], int], *, history_ms: int | None = None) -> None:
        """Fill each timeframe from where stored candles stop being known final, up to now
        (``history_ms`` back, default the ``history`` setting, where none are)."""
        key = st.key
        back = self.engine.settings.history_ms if history_ms is None else history_ms
        now = self._now.pop(key, None) or st.feed.clock.now_ms()
        for tf in self.engine.timeframes:
            grid = timeframe(tf)
            # Warm the hot tier from the store, so readers see history from the first second.
            read = self._read.pop((key, tf), None)
            if read is None:
                recent = partial(self.engine.cold.query, key, tf, None, None, self.engine.settings.hot_capacity)
                read = StartupRead(await self.patiently(f"read {key} {tf}", recent), None)
                read.last_closed = await self.patiently(
                    f"read {key} {tf}", partial(self.engine.cold.last_closed, key, tf)
                )
            self.engine.hot.put_many(key, tf, read.recent)
            if self.engine.redis is not None:
                for c in read.recent:
                    self.engine.redis.put(key, tf, c)
            last = read.last_closed
            start = grid.next(last.open_time) if last else now - back
            mark = marks.get((key, tf))
            if last is not None and mark is None:
                # Candles but no mark: the run that stored them died before vouching for any (a
                # kill -9 during its bootstrap, whose deferred history may never have come).
                log.info("%s %s: stored candles were never confirmed; fetching the history again", key, tf)
                start = now - back
            elif last is not None and mark is not None and mark < start:
                # The previous run ended without vouching for these (a kill -9, a crash, a store
                # outage): fetch them again rather than trust them.
                log.info(
                    "%s %s: re-fetching %d candles the last run did not confirm", key, tf, (start - mark) // grid.ms
                )
                start = mark
            start = grid.start(start)
            built = tf in st.builder.timeframes
            if last is not None and built:
                st.builder.seed(tf, last)
            st.bootstrap_marks[tf] = start
            # Page by page, handing each to the store, so a deep history (30 days of 1s candles)
            # never sits in memory whole.
            span = page_span_ms(st, tf)
            count = 0
            # Up to the last closed candle: the forming one comes from the stream. (Every price side
            # of an instrument then asks for the same ranges, which a feed may answer once.)
            last_open = grid.prev(grid.start(now))
            t = start
            while t <= last_open:
                page_end = min(grid.next(last_open) - 1, max(t + span, grid.next(t)) - 1)
                try:
                    candles = await history(st, tf, t, page_end, now)
                except VenueError as exc:
                    # E.g. IG's weekly allowance is spent: stream now, fetch the rest when it can be.
                    log.warning("%s %s: history from %d deferred (%s); it is fetched as a repair", key, tf, t, exc)
                    if t <= last_open:
                        self.engine.completeness.repair_sink(key)(tf, t, last_open)
                    break
                closed = [c for c in candles if c.closed]
                for c in closed:
                    c.final = True  # the venue's own history
                    self.engine.publisher.final(key, tf, c)
                if closed and built:
                    st.builder.seed(tf, closed[-1])
                    st.bootstrap_marks[tf] = grid.next(closed[-1].open_time)
                count += len(closed)
                t = grid.ceil(page_end + 1)
                await self._make_room()
            st.bootstrapped += count
            log.info("%s %s: %d candles from REST history", key, tf, count)
        if st.rollup is not None:
            # The derived candles forming now start before the stream: give the rollup the final
            # base candles of their current and previous buckets, so they are whole at once.
            await self.patiently("write the bootstrap's candles", self.engine.writer.flush)
            since = min(timeframe(tf).prev(timeframe(tf).start(now)) for tf in st.rollup.timeframes)
            base = partial(self.engine.cold.query, key, st.rollup.base, since, None)
            st.rollup.seed(await self.patiently(f"read {key} {st.rollup.base}", base))
            st.rolling = True

    def _waiting(self, what: str, exc: StoreError) -> None:
        if self.waiting_for is None:
            log.warning("start-up waits for the cold store %s to %s: %s", self.engine.cold.name, what, exc)
        self.waiting_for, self.wait_error = what, exc

    def _resumed(self) -> None:
        if self.waiting_for is not None:
            log.info("the cold store %s works again; start-up goes on", self.engine.cold.name)
            self.waiting_for = self.wait_error = None

    async def patiently(self, what: str, op: Callable[[], Awaitable[_T]]) -> _T:
        """``op()``, a store operation start-up cannot go on without, retried while the store fails
        (a full disk, a server restarting): start-up waits, the engine's health says why, nothing is
        lost."""
        backoff = Backoff(0.1, 5.0, jitter=False, clock=self.engine.clock)  # 0.2 s, 0.4 s, ... 5 s
        while True:
            try:
                result = await op()
            except StoreError as exc:
                self._waiting(what, exc)
                await backoff.sleep(backoff.failed())
                continue
            self._resumed()
            return result

    async def _make_room(self) -> None:
        """Bootstrap back-pressure: while BOOTSTRAP_FLUSH_ROWS candles wait in memory, write them (or
        let the writer spool them). While neither the store nor the spool takes them (a full disk),
        wait, so that memory stays bounded however deep the history."""
        while self.engine.writer.in_memory >= BOOTSTRAP_FLUSH_ROWS:
            try:
                await self.engine.writer.flush(retry_for_s=2.0)
            except StoreError as exc:
                self._waiting("write the bootstrap's candles", exc)
        self._resumed()
