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
