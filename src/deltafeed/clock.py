"""Clocks: the live wall clock, a clock tests drive by hand, and a model of a venue's clock."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the time and can wait.

    Code that waits (reconnect backoff, transports, the batch writer) takes a ``Clock`` instead of
    calling :mod:`time` and :func:`asyncio.sleep`, so a test can drive time with a :class:`TestClock`.
    """

    def time(self) -> float:
        """Seconds since the epoch (wall clock)."""
        ...

    def time_ms(self) -> int:
        """Milliseconds since the epoch (wall clock)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's time have passed."""
        ...


class LiveClock:
    """The machine's clock; :meth:`sleep` is :func:`asyncio.sleep`."""

    def time(self) -> float:
        return time.time()

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


#: The clock used wherever none is injected.
LIVE = LiveClock()


class TestClock:
    """A clock that moves only when a test calls :meth:`advance`.

    :meth:`sleep` parks the caller until the clock has been advanced past its wake-up time; sleepers
    wake in wake-up order (ties in the order they went to sleep), each seeing the clock at its own
    wake-up time, so a loop that sleeps again on waking is stepped correctly through a long
    :meth:`advance`. No real time passes.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, start_ms: int = 0) -> None:
        self._ms = start_ms
        self._mono = 0.0
        self._seq = itertools.count()
        # (wake-up monotonic time, sequence, future) — a heap, earliest first
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def time(self) -> float:
        return self._ms / 1000

    def time_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._mono

    @property
    def sleepers(self) -> int:
        """How many callers are parked in :meth:`sleep` (cancelled ones not counted)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # still a scheduling point, as asyncio.sleep(0) is
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    def _step(self, seconds: float) -> None:
        self._ms += round(seconds * 1000)
        self._mono += seconds

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and wake every sleeper due by then (synchronous: the
        woken tasks run at the next scheduling point). Use :meth:`advance_async` to let each woken
        sleeper run, and possibly sleep again, before time moves on."""
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            at, _, fut = heapq.heappop(self._sleepers)
            if at > self._mono:
                self._step(at - self._mono)
            if not fut.done():
                fut.set_result(None)
        if target > self._mono:
            self._step(target - self._mono)

    async def advance_async(self, seconds: float) -> None:
        """Move time forward by ``seconds`` one wake-up at a time, letting the woken tasks run
        (and sleep again) at each step, so loops see every intermediate time."""
        target = self._mono + seconds
        while True:
            await _settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled sleepers
            if not self._sleepers or self._sleepers[0][0] > target:
                break
            at, _, fut = heapq.heappop(self._sleepers)
            if at > self._mono:
                self._step(at - self._mono)
            fut.set_result(None)
        if target > self._mono:
            self._step(target - self._mono)
        await _settle()


async def _settle(rounds: int = 20) -> None:
    """Let ready tasks run: a few passes through the event loop."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class VenueClock:
    """The venue's "now", estimated from what the venue told us.

    Every server-time answer and every event time is an observation. Between observations the
    estimate runs on at the venue's pace, measured over the whole run (the slope from the first
    observation to the latest, once they are ``baseline_s`` apart): 1.0 for a real venue, 120 for a
    replica whose market runs 120 times fast, so a silence (a disconnect) does not leave the
    estimate behind. The pace is never taken below the local clock's, and "now" never goes back.
    """

    def __init__(self, local: Clock | None = None, baseline_s: float = 10.0) -> None:
        self._local = local or LiveClock()
        self._baseline_s = baseline_s
        self._first: tuple[int, float] | None = None  # (venue ms, local monotonic s)
        self._venue_ms = 0
        self._at = 0.0
        self._rate = 1.0
        self._floor = 0

    @property
    def rate(self) -> float:
        """Venue milliseconds per local millisecond."""
        return self._rate

    def observe(self, venue_ms: int) -> None:
        """Record that the venue's clock read ``venue_ms`` just now. An older reading than the
        latest one changes nothing; the first reading always counts, however far the local clock is."""
        mono = self._local.monotonic()
        if self._first is None:
            self._first = (venue_ms, mono)
        elif venue_ms <= self._venue_ms:
            return
        self._venue_ms, self._at = venue_ms, mono
        v0, m0 = self._first
        if mono - m0 >= self._baseline_s:
            self._rate = min(100_000.0, max(1.0, (venue_ms - v0) / ((mono - m0) * 1000)))

    def now_ms(self) -> int:
        if self._first is None:
            return self._local.time_ms()
        now = self._venue_ms + int((self._local.monotonic() - self._at) * 1000 * self._rate)
        self._floor = max(self._floor, now)
        return self._floor
