"""Write-behind for the cold tier: conflate candle updates in memory, write them in batches, and ride out
store outages in a durable on-disk spool."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from itertools import islice

from msgspec.structs import replace as _copy

from deltafeed.clock import LIVE, Clock
from deltafeed.model import Candle
from deltafeed.net.reconnect import Backoff, sleep_unless
from deltafeed.store.base import ColdTier, Row, StoreError
from deltafeed.store.spool import Spool

log = logging.getLogger("deltafeed.writer")

_Key = tuple[str, str, int]


class BacklogFull(StoreError):
    """The writer holds ``max_pending`` candles it could not write; refusing more instead of growing."""


class BatchWriter:
    """Collect candle updates and upsert them into a :class:`~deltafeed.store.base.ColdTier` in batches.

    Overflow policy: *conflate to latest per key*. Pending candles are keyed by
    (instrument, timeframe, open_time); a repeated update replaces the pending copy (the latest wins)
    but keeps the position of its first arrival, so batches go out in arrival order. The number of
    distinct pending candles is bounded by ``max_pending``; beyond it :meth:`add` raises
    :class:`BacklogFull` rather than growing without end or dropping silently.

    :meth:`run` flushes once ``max_rows`` candles are pending, or ``max_delay_s`` after the previous
    flush, whichever comes first. A write that fails with :class:`StoreError` is retried after the
    :class:`~deltafeed.net.reconnect.Backoff` policy's delay: full jitter under a ceiling that
    doubles from ``retry_min_s`` up to ``retry_max_s``. ``clock`` (default the live one) does all
    timing and waiting, so tests can drive it. Where the failed batch waits
    meanwhile depends on ``spool``:

    * Without a spool, it stays in memory ahead of newer data (bounded by ``max_pending``).
    * With a :class:`~deltafeed.store.spool.Spool`, it goes to disk and the writer is
      :attr:`degraded`. While the spool holds anything, every new batch is appended behind it, never
      written around it, so the store receives batches in their original order and memory stays
      small however long the outage. :meth:`run` replays the spool oldest-first (several batches per
      write) once the backoff allows, and writes directly again once the spool is empty. A spool
      left by a previous run is replayed first. If the spool itself fails (disk full), the batch
      stays in memory instead, bounded by ``max_pending``, and :attr:`last_error` says so.

    The caller opens and closes the spool; one writer (one process) uses it at a time.
    """

    def __init__(
        self,
        cold: ColdTier,
        max_rows: int = 500,
        max_delay_s: float = 1.0,
        *,
        max_pending: int = 1_000_000,
        max_batch: int = 100_000,
        retry_min_s: float = 0.1,
        retry_max_s: float = 5.0,
        spool: Spool | None = None,
        on_written: Callable[[list[Row], float], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if max_rows < 1 or max_pending < max_rows or max_batch < 1:
            raise ValueError("BatchWriter needs 1 <= max_rows <= max_pending and max_batch >= 1")
        self.cold = cold
        self.spool = spool
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        #: Called after every batch written to the store (replayed ones too) with its rows and how
        #: long the write took (seconds).
        self.on_written = on_written
        #: Rows written to the store so far, replayed ones included.
        self.written = 0
        #: Failed store writes so far (each failed batch counts once per attempt, replays too).
        self.failures = 0
        #: Updates that replaced a pending copy of the same candle (conflated, not lost).
        self.conflated = 0
        #: Rows appended to the spool.
        self.spooled = 0
        #: Rows replayed from the spool into the store (by this writer; a previous run's count too).
        self.replayed = 0
        #: Failed spool operations (append, read, commit) so far.
        self.spool_failures = 0
        #: The most recent failure, or None once a write has succeeded since.
        self.last_error: StoreError | None = None
        self._store_error: StoreError | None = None  # the store's own last failure, for messages
        #: The spool's most recent failure (append, read, commit), or None once it has worked since
        #: or the store takes candles directly again: the spool's problems apart from the store's
        #: (see :attr:`store_error`).
        self.spool_error: StoreError | None = None
        self._pending: dict[_Key, Row] = {}
        # Rows of the batch being written or spooled right now (one at a time, under _flush_lock):
        # out of _pending but still only in memory (see ``in_memory``).
        self._in_flight = 0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._running = False
        self.clock: Clock = clock or LIVE
        # The first failure's ceiling is retry_min_s (the policy's is base * 2**failures).
        self._store_retry = Backoff(retry_min_s / 2, retry_max_s, clock=self.clock)
        self._spool_retry = Backoff(retry_min_s / 2, retry_max_s, clock=self.clock)

    # -- state ------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Distinct candles waiting in memory (not counting a batch being written right now)."""
        return len(self._pending)

    @property
    def in_memory(self) -> int:
        """Candles only in memory: those :attr:`pending` and the batch being written or spooled now."""
        return len(self._pending) + self._in_flight

    @property
    def store_error(self) -> StoreError | None:
        """The store's own most recent failure, or None once a write has succeeded since (unlike
        :attr:`last_error`, never a failure of the spool)."""
        return self._store_error

    @property
    def spooled_pending(self) -> int:
        """Candles waiting in the spool (0 without one)."""
        return 0 if self.spool is None else self.spool.rows

    @property
    def degraded(self) -> str | None:
        """Why candles are not going straight to the store (None when they are)."""
        spool = self.spool
        if spool is not None and spool.rows:
            why = f"store failing: {self.last_error}" if self.last_error is not None else "replaying"
            return f"{spool.rows} candles wait in the spool {spool.path} ({why})"
        if self.last_error is not None:
            return f"{self.last_error}; {self.pending} candles wait in memory"
        return None

    def _spooling(self) -> bool:
        """Whether the spool holds batches, which then go to the store before anything newer."""
        return self.spool is not None and self.spool.batches > 0

    # -- intake -----------------------------------------------------------------------------------

    def add(self, instrument: str, timeframe: str, candle: Candle) -> None:
        """Queue a copy of ``candle`` (the caller may keep mutating its own object)."""
        if self._closed:
            raise StoreError(f"BatchWriter for {self.cold.name} is closed; it accepts no more candles")
        key = (instrument, timeframe, candle.open_time)
        pending = self._pending
        if key in pending:
            self.conflated += 1
        elif len(pending) >= self.max_pending:
            raise BacklogFull(
                f"{len(pending)} candles are waiting to be written to {self.cold.name} and the limit is"
                f" {self.max_pending}; writes failed {self.failures} times, last error: {self.last_error}."
                " Free the database (close other programs using it, start the server) or check the disk"
            )
        # Assigning to an existing key keeps its place in the dict: first-arrival order is preserved.
        pending[key] = (instrument, timeframe, _copy(candle))
        if len(pending) >= self.max_rows:
            self._wake.set()

    def _take(self) -> list[Row]:
        """Remove and return up to ``max_batch`` of the oldest pending rows."""
        if len(self._pending) <= self.max_batch:
            rows = list(self._pending.values())
            self._pending = {}
        else:
            keys = list(islice(self._pending, self.max_batch))
            rows = [self._pending.pop(k) for k in keys]
        # In flight until it is written (_written), spooled (_append) or put back (_put_back).
        self._in_flight = len(rows)
        return rows

    def _put_back(self, rows: list[Row]) -> None:
        """Return a failed batch to the front; a newer pending update of the same candle still wins."""
        merged: dict[_Key, Row] = {(r[0], r[1], r[2].open_time): r for r in rows}
        merged.update(self._pending)
        self._pending = merged
        self._in_flight = 0

    # -- one step each (callers hold _flush_lock) -------------------------------------------------

    def _written(self, rows: list[Row], started: float) -> None:
        self._in_flight = 0
        self.written += len(rows)
        self.last_error = self._store_error = None
        if not self._spooling():
            self.spool_error = None  # nothing waits for the spool any more: its failure is moot
        self._store_retry.reset()
        if self.on_written is not None:
            self.on_written(rows, self.clock.monotonic() - started)

    def _store_failed(self, err: StoreError) -> None:
        self.failures += 1
        self.last_error = self._store_error = err
        self._store_retry.failed()

    async def _append(self, spool: Spool, rows: list[Row]) -> StoreError | None:
        """Append ``rows`` to the spool (fsync in a worker thread); the error if the spool failed, in
        which case the rows are back in memory."""
        try:
            await asyncio.to_thread(spool.append, rows)
        except StoreError as e:
            self._put_back(rows)
            self.spool_failures += 1
            self.spool_error = e
            self._spool_retry.failed()
            return e
        except BaseException:
            # A cancellation may still let the append finish: then the rows are in both places and
            # are written twice, which the idempotent upsert makes harmless.
            self._put_back(rows)
            raise
        self._in_flight = 0
        self.spooled += len(rows)
        self.spool_error = None
        self._spool_retry.reset()
        return None

    async def _write_direct(self) -> bool:
        """Write the oldest pending batch to the store; on failure spool it (or keep it in memory)."""
        rows = self._take()
        started = self.clock.monotonic()
        try:
            await self.cold.write(rows)
        except StoreError as e:
            self._store_failed(e)
            if self.spool is None:
                self._put_back(rows)
                return False
            was_empty = not self._spooling()
            spool_error = await self._append(self.spool, rows)
            if spool_error is not None:
                self.last_error = StoreError(
                    f"{e}; the spool failed too, so the candles are kept in memory: {spool_error}"
                )
            elif was_empty:
                log.warning(
                    "cold store %s is failing (%s); spooling candles to %s until it is back",
                    self.cold.name,
                    e,
                    self.spool.path,
                )
            return False
        except BaseException:
            self._put_back(rows)  # a bug or a cancellation: keep the data, let the error surface
            raise
        self._written(rows, started)
        return True

    async def _replay(self) -> bool:
        """Write the oldest spooled batches to the store and commit them; False if that failed."""
        spool = self.spool
        assert spool is not None
        try:
            rows = await asyncio.to_thread(spool.peek, self.max_batch)
        except StoreError as e:
            self.spool_failures += 1
            self.last_error = self.spool_error = e
            self._store_retry.failed()
            return False
        if rows is None:
            return True
        started = self.clock.monotonic()
        try:
            await self.cold.write(rows)
        except StoreError as e:
            self._store_failed(e)
            return False
        try:
            await asyncio.to_thread(spool.commit)
        except StoreError as e:
            # The rows are in the store but will be replayed again (harmless); count them then.
            self.spool_failures += 1
            self.last_error = self.spool_error = e
            self._store_retry.failed()
            return False
        self.spool_error = None
        self.replayed += len(rows)
        self._written(rows, started)
        if not spool.batches:
            log.info(
                "spool %s is drained (%d candles replayed); writing %s directly again",
                spool.path,
                self.replayed,
                self.cold.name,
            )
        return True

    async def _spool_one(self) -> bool:
        """Append the oldest pending batch to the spool, behind what it already holds."""
        assert self.spool is not None
        err = await self._append(self.spool, self._take())
        if err is not None:
            self.last_error = StoreError(
                f"{self._store_error or 'the spool is being replayed'}; the spool failed too, so"
                f" {self.pending} candles are kept in memory: {err}"
            )
            return False
        return True

    async def _write_once(self) -> bool:
        """One unit of work towards an empty writer: replay the spool's head while it holds anything,
        else write a batch of pending rows. False if the store (or the spool) failed."""
        async with self._flush_lock:
            # Holding the lock, no batch can be in flight: whoever took one has finished with it.
            assert not self._in_flight, "a batch left in flight"
            if self._spooling():
                return await self._replay()
            if self._pending:
                return await self._write_direct()
            return True

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        await sleep_unless(self.clock, seconds, self._stop)

    # -- background -------------------------------------------------------------------------------

    def _next_due(self, now: float, next_flush: float) -> tuple[float, bool]:
        """When :meth:`run` next has work, and whether a new row (``_wake``) can bring that forward."""
        spooling = self._spooling()
        # Pending rows go to the spool while it holds anything, else to the store; either way not
        # before that target's backoff is over.
        gate = self._spool_retry.until if spooling else self._store_retry.until
        if len(self._pending) >= self.max_rows:
            due, wakeable = max(now, gate), False
        else:
            due, wakeable = max(next_flush, gate), gate <= now
        if spooling:
            due = min(due, self._store_retry.until)  # the replay
        return due, wakeable

    async def run(self) -> None:
        """Write in the background until :meth:`close`; replays a spool left by a previous run first.
        Run it as a task."""
        if self._running:
            raise RuntimeError("BatchWriter.run() is already running")
        self._running = True
        try:
            next_flush = self.clock.monotonic() + self.max_delay_s
            while not self._stop.is_set():
                now = self.clock.monotonic()
                due, wakeable = self._next_due(now, next_flush)
                if due > now:
                    if wakeable:
                        await sleep_unless(self.clock, due - now, self._wake)
                    else:
                        # Sleep through a backoff even if rows pile up; only close() cuts it short.
                        await self._sleep_unless_stopped(due - now)
                self._wake.clear()
                if self._stop.is_set():
                    break
                now = self.clock.monotonic()
                if self._pending and (len(self._pending) >= self.max_rows or now >= next_flush):
                    async with self._flush_lock:
                        if self._spooling():
                            ok = now < self._spool_retry.until or await self._spool_one()
                        elif now >= self._store_retry.until:
                            ok = await self._write_direct()
                        else:
                            ok = True
                    # After a failure retry as soon as the backoff is over; else the rest waits for
                    # the timer, to go out in bigger batches.
                    next_flush = now if not ok else now + self.max_delay_s
                elif now >= next_flush:
                    next_flush = now + self.max_delay_s
                if self._spooling() and self.clock.monotonic() >= self._store_retry.until and not self._stop.is_set():
                    async with self._flush_lock:
                        if self._spooling():
                            await self._replay()
        finally:
            self._running = False

    # -- foreground -------------------------------------------------------------------------------

    async def flush(self, retry_for_s: float = 10.0) -> None:
        """Write everything pending and drain the spool, retrying with backoff for up to ``retry_for_s``.

        The spool goes first (it is older), then the rows in memory. Raises the last
        :class:`StoreError` if that could not finish in time; the rows stay pending or spooled.
        """
        deadline = self.clock.monotonic() + retry_for_s
        # A batch in flight (run() writing it now) counts: _write_once waits for it under the lock.
        while self._pending or self._spooling() or self._in_flight:
            if await self._write_once():
                continue
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                assert self.last_error is not None
                raise self.last_error
            await self.clock.sleep(min(max(self._store_retry.until - self.clock.monotonic(), 0.0), remaining))

    async def close(self, retry_for_s: float = 10.0) -> None:
        """Stop accepting candles, stop :meth:`run`, and write what is pending (see :meth:`flush`).

        With a spool, candles the store still refuses after ``retry_for_s`` are appended to it and
        this returns normally: they are on disk and the next run replays them. Raises only when they
        cannot be kept (no spool, or the spool failing too).
        """
        self._closed = True
        self._stop.set()
        self._wake.set()
        while self._running:  # let run() finish the write it may be in the middle of
            await asyncio.sleep(0.005)
        try:
            await self.flush(retry_for_s)
        except StoreError as e:
            spool = self.spool
            if spool is None:
                raise
            async with self._flush_lock:
                while self._pending:
                    err = await self._append(spool, self._take())
                    if err is not None:
                        raise StoreError(
                            f"{self._store_error or e}; and the spool {spool.path} failed too, so {self.pending}"
                            f" candles are lost when this process ends: {err}"
                        ) from err
            log.warning(
                "cold store %s still failing at close (%s): %d candles are kept in the spool %s"
                " and written at the next start",
                self.cold.name,
                e,
                spool.rows,
                spool.path,
            )
