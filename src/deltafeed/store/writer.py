"""Write-behind for the cold tier: conflate candle updates in memory, write them in batches off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from itertools import islice

from msgspec.structs import replace as _copy

from deltafeed.model import Candle
from deltafeed.store.cold import ColdStore, StoreError

_Key = tuple[str, str, int]
_Row = tuple[str, str, Candle]


class BacklogFull(StoreError):
    """The writer holds ``max_pending`` candles it could not write; refusing more instead of growing."""


class BatchWriter:
    """Collect candle updates and upsert them into a :class:`ColdStore` in batches.

    Overflow policy: *conflate to latest per key*. Pending candles are keyed by
    (instrument, timeframe, open_time); a repeated update replaces the pending copy (the latest wins)
    but keeps the position of its first arrival, so batches go out in arrival order. The number of
    distinct pending candles is bounded by ``max_pending``; beyond it :meth:`add` raises
    :class:`BacklogFull` rather than growing without end or dropping silently.

    :meth:`run` flushes once ``max_rows`` candles are pending, or ``max_delay_s`` after the previous
    flush, whichever comes first. The DuckDB write runs in a worker thread, so the event loop is never
    blocked. A write that fails with :class:`StoreError` (e.g. another process holds the file) keeps
    its batch ahead of newer data and is retried after a backoff that doubles from ``retry_min_s`` up
    to ``retry_max_s``.
    """

    def __init__(
        self,
        cold: ColdStore,
        max_rows: int = 500,
        max_delay_s: float = 1.0,
        *,
        max_pending: int = 1_000_000,
        max_batch: int = 100_000,
        retry_min_s: float = 0.1,
        retry_max_s: float = 5.0,
        on_written: Callable[[list[_Row], float], None] | None = None,
    ) -> None:
        if max_rows < 1 or max_pending < max_rows or max_batch < 1:
            raise ValueError("BatchWriter needs 1 <= max_rows <= max_pending and max_batch >= 1")
        self.cold = cold
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_pending = max_pending
        self.max_batch = max_batch
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        #: Called after every successful batch with its rows and how long the write took (seconds).
        self.on_written = on_written
        #: Rows successfully written so far.
        self.written = 0
        #: Failed write attempts so far (each failed batch counts once per attempt).
        self.failures = 0
        #: Updates that replaced a pending copy of the same candle (conflated, not lost).
        self.conflated = 0
        #: The most recent write failure, or None once a write has succeeded since.
        self.last_error: StoreError | None = None
        self._pending: dict[_Key, _Row] = {}
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._closed = False
        self._running = False
        self._retry_s = retry_min_s

    @property
    def pending(self) -> int:
        """Distinct candles waiting to be written."""
        return len(self._pending)

    def add(self, instrument: str, timeframe: str, candle: Candle) -> None:
        """Queue a copy of ``candle`` (the caller may keep mutating its own object)."""
        if self._closed:
            raise StoreError(f"BatchWriter for {self.cold.path} is closed; it accepts no more candles")
        key = (instrument, timeframe, candle.open_time)
        pending = self._pending
        if key in pending:
            self.conflated += 1
        elif len(pending) >= self.max_pending:
            raise BacklogFull(
                f"{len(pending)} candles are waiting to be written to {self.cold.path} and the limit is"
                f" {self.max_pending}; writes failed {self.failures} times, last error: {self.last_error}."
                " Free the database file (close other programs using it) or check the disk"
            )
        # Assigning to an existing key keeps its place in the dict: first-arrival order is preserved.
        pending[key] = (instrument, timeframe, _copy(candle))
        if len(pending) >= self.max_rows:
            self._wake.set()

    def _take(self) -> list[_Row]:
        """Remove and return up to ``max_batch`` of the oldest pending rows."""
        if len(self._pending) <= self.max_batch:
            rows = list(self._pending.values())
            self._pending = {}
            return rows
        keys = list(islice(self._pending, self.max_batch))
        return [self._pending.pop(k) for k in keys]

    def _put_back(self, rows: list[_Row]) -> None:
        """Return a failed batch to the front; a newer pending update of the same candle still wins."""
        merged: dict[_Key, _Row] = {(r[0], r[1], r[2].open_time): r for r in rows}
        merged.update(self._pending)
        self._pending = merged

    async def _write_once(self) -> bool:
        """Write one batch of pending rows; False (and the rows kept) if the store failed."""
        async with self._flush_lock:
            if not self._pending:
                return True
            rows = self._take()
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.cold.write, rows)
            except StoreError as e:
                self._put_back(rows)
                self.failures += 1
                self.last_error = e
                return False
            except BaseException:
                self._put_back(rows)  # a bug or a cancellation: keep the data, let the error surface
                raise
            self.written += len(rows)
            if self.on_written is not None:
                self.on_written(rows, time.monotonic() - started)
            self.last_error = None
            self._retry_s = self.retry_min_s
            return True

    def _backoff(self) -> float:
        delay = self._retry_s
        self._retry_s = min(self._retry_s * 2, self.retry_max_s)
        return delay

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run(self) -> None:
        """Flush in the background until :meth:`close`. Run it as a task."""
        if self._running:
            raise RuntimeError("BatchWriter.run() is already running")
        self._running = True
        try:
            next_flush = time.monotonic() + self.max_delay_s
            while not self._stop.is_set():
                if len(self._pending) < self.max_rows:
                    timeout = next_flush - time.monotonic()
                    if timeout > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), timeout)
                self._wake.clear()
                if self._stop.is_set():
                    break
                next_flush = time.monotonic() + self.max_delay_s
                while self._pending and not self._stop.is_set():
                    if not await self._write_once():
                        # Sleep through the backoff even if rows pile up; only close() cuts it short.
                        await self._sleep_unless_stopped(self._backoff())
                        next_flush = time.monotonic()  # retry as soon as the backoff is over
                        break
                    if len(self._pending) < self.max_rows:
                        break  # the rest waits for the timer, to write in bigger batches
        finally:
            self._running = False

    async def flush(self, retry_for_s: float = 10.0) -> None:
        """Write everything pending now, retrying failed writes with backoff for up to ``retry_for_s``.

        Raises the last :class:`StoreError` if the rows could not be written in time; they stay
        pending.
        """
        deadline = time.monotonic() + retry_for_s
        while self._pending:
            if await self._write_once():
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                assert self.last_error is not None
                raise self.last_error
            await asyncio.sleep(min(self._backoff(), remaining))

    async def close(self, retry_for_s: float = 10.0) -> None:
        """Stop accepting candles, stop :meth:`run`, and write what is pending (see :meth:`flush`)."""
        self._closed = True
        self._stop.set()
        self._wake.set()
        while self._running:  # let run() finish the write it may be in the middle of
            await asyncio.sleep(0.005)
        await self.flush(retry_for_s)
