"""Keeps a venue's REST request weight inside its limit: paces requests and obeys Retry-After."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from deltafeed.clock import Clock, LiveClock

Sleep = Callable[[float], Awaitable[None]]


class WeightLimiter:
    """A token bucket for request weight, kept in step with what the venue says we have used.

    - Pacing: weight is spent at most ``limit * headroom`` per ``window_s``, spread evenly with a
      small burst, so a long bootstrap never runs into the limit (zero 429s is the goal).
    - Sync: the venue's own count (Binance's ``X-MBX-USED-WEIGHT-1M``) includes other programs on
      the same IP; when it says the window is nearly spent, we wait for the next window.
    - Penalty: on 429/418 every caller waits the venue's ``Retry-After`` before trying again.
    """

    def __init__(
        self,
        limit: int,
        window_s: float = 60.0,
        headroom: float = 0.8,
        burst_fraction: float = 0.05,
        clock: Clock | None = None,
        sleep: Sleep | None = None,
    ) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.window_s = window_s
        self.headroom = headroom
        self.burst_fraction = burst_fraction
        #: The limit as made (the venue's, for one outgoing address or account): :meth:`share` scales it.
        self.full = float(limit)
        self.resize(limit)
        self._clock = clock or LiveClock()
        self._sleep = sleep or self._clock.sleep  # waits on the clock that measures the pace
        self._tokens = self.capacity
        self._stamp = self._clock.monotonic()
        self._blocked_until = 0.0
        self._venue_used = 0
        self._venue_window = -1
        self._lock = asyncio.Lock()
        self.waits = 0
        self.waited_s = 0.0
        self.penalties = 0

    def resize(self, limit: float) -> None:
        """Pace to ``limit`` from now on."""
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.budget = limit * self.headroom
        self.rate = self.budget / self.window_s  # weight per second
        self.capacity = max(1.0, self.budget * self.burst_fraction)
        if hasattr(self, "_tokens"):
            self._tokens = min(self._tokens, self.capacity)

    def share(self, fraction: float) -> None:
        """Keep to ``fraction`` of the limit it was made with from now on (this process's part of a
        limit it shares with others, e.g. collectors on one outgoing address); the burst shrinks
        with it, so that the parts' bursts together stay within the venue's."""
        if not 0 < fraction <= 1:
            raise ValueError("a share is a fraction in (0, 1]")
        self.resize(self.full * fraction)

    def _window(self) -> int:
        return int(self._clock.time_ms() // int(self.window_s * 1000))

    async def acquire(self, weight: int = 1) -> None:
        """Wait until ``weight`` may be spent, then spend it."""
        async with self._lock:  # first come, first served
            while True:
                delay = self._delay(weight)
                if delay <= 0:
                    break
                self.waits += 1
                self.waited_s += delay
                await self._sleep(delay)
            self._tokens -= weight
            if self._venue_window == self._window():
                self._venue_used += weight

    def _delay(self, weight: int) -> float:
        now = self._clock.monotonic()
        if now < self._blocked_until:
            return self._blocked_until - now
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._venue_window == self._window() and self._venue_used + weight > self.budget:
            window_ms = int(self.window_s * 1000)
            return (window_ms - self._clock.time_ms() % window_ms) / 1000 + 0.05
        # A request heavier than the whole burst waits for a full bucket and overdraws it: the
        # debt is paid by the next callers' waits, so the long-run pace still holds.
        need = min(weight, self.capacity)
        if self._tokens < need:
            return (need - self._tokens) / self.rate
        return 0.0

    def observe_used(self, used: int) -> None:
        """Record the venue's count of weight used in the current window."""
        w = self._window()
        if w != self._venue_window or used > self._venue_used:
            self._venue_window = w
            self._venue_used = used

    def penalize(self, retry_after_s: float) -> None:
        """The venue refused us (429/418): nobody sends before ``retry_after_s`` from now."""
        self.penalties += 1
        self._blocked_until = max(self._blocked_until, self._clock.monotonic() + retry_after_s)
        self._tokens = 0.0
