"""Clocks: the live wall clock, a clock tests drive by hand, and a model of a venue's clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Anything that tells the time in epoch milliseconds and monotonic seconds."""

    def time_ms(self) -> int: ...

    def monotonic(self) -> float: ...


class LiveClock:
    """The machine's clock."""

    def time_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class TestClock:
    """A clock that moves only when a test calls :meth:`advance`."""

    __test__ = False  # not a pytest test class

    def __init__(self, start_ms: int = 0) -> None:
        self._ms = start_ms
        self._mono = 0.0

    def time_ms(self) -> int:
        return self._ms

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._ms += int(seconds * 1000)
        self._mono += seconds


class VenueClock:
    """The venue's "now", estimated from what the venue told us.

    Every server-time answer and every event time is an observation; between observations the
    estimate runs at the local clock's pace. It never runs ahead of the venue by more than the local
    clock's drift, so nothing that waits on it (closing a quiet candle) acts too early. A replica
    whose market runs faster than the wall clock is still tracked, through its event times.
    """

    def __init__(self, local: Clock | None = None) -> None:
        self._local = local or LiveClock()
        self._venue_ms = 0
        self._at = self._local.monotonic()

    def observe(self, venue_ms: int) -> None:
        """Record that the venue's clock read ``venue_ms`` just now (ignored if it would go back;
        the first reading always counts, however far the local clock is from it)."""
        if self._venue_ms == 0 or venue_ms >= self.now_ms():
            self._venue_ms = venue_ms
            self._at = self._local.monotonic()

    def now_ms(self) -> int:
        if self._venue_ms == 0:
            return self._local.time_ms()
        return self._venue_ms + int((self._local.monotonic() - self._at) * 1000)
