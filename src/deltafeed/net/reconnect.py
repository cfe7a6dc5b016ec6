"""The one reconnect policy: jittered exponential backoff, connect budget, stale-data watchdog, Retry-After.

Every loop that reconnects or retries (WebSocket and line streams, IG's TLCP pool, the REST client,
the batch writer) uses these pieces instead of its own arithmetic, so the rules are the same
everywhere and tests drive them with a :class:`~deltafeed.clock.TestClock` and a seeded
:class:`random.Random` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
from collections import deque
from collections.abc import Callable

from deltafeed.clock import LIVE, Clock

#: The jitter source when none is injected.
_RNG = random.Random()

__all__ = ["Backoff", "ConnectBudget", "Watchdog", "retry_after_s", "sleep_unless"]


class Backoff:
    """Exponential backoff with full jitter, reset after a stable period.

    After the ``n``-th consecutive failure the delay is uniform over
    ``[0, min(cap_s, base_s * 2**n)]`` (full jitter, so many clients dropped at once do not return
    at once); with ``jitter=False`` it is that ceiling itself. A connection that stayed up at least
    ``stable_after_s`` counts as a success: the next drop starts the count over at one.

    A ``Retry-After`` the server sent is a floor: the delay is never shorter than it.

    ``rng`` supplies the jitter (a seeded :class:`random.Random` in tests; the module's shared one
    otherwise) and ``clock`` measures how long a connection stayed up and does the sleeping.
    """

    def __init__(
        self,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        stable_after_s: float = 30.0,
        *,
        jitter: bool = True,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        if base_s < 0 or cap_s < 0:
            raise ValueError("backoff base and cap must not be negative")
        self.base_s = base_s
        self.cap_s = cap_s
        self.stable_after_s = stable_after_s
        self.jitter = jitter
        self.clock: Clock = clock or LIVE
        self._rng: random.Random | None = rng
        #: Consecutive failures so far (0 after :meth:`reset`).
        self.failures = 0
        #: Monotonic time before which the failed operation should not be tried again.
        self.until = 0.0
        self._up_since: float | None = None

    def ceiling(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures."""
        return min(self.cap_s, self.base_s * 2.0 ** min(max(failures, 0), 30))

    def delay(self, failures: int) -> float:
        """A delay for the ``failures``-th consecutive failure (jittered unless ``jitter=False``)."""
        top = self.ceiling(failures)
        if not self.jitter:
            return top
        rng = self._rng
        return float((rng or _RNG).uniform(0, top))

    def failed(self, retry_after: float = 0.0) -> float:
        """One more failure (a connect refused, an error answer): the delay to wait before the next try."""
        self._up_since = None
        self.failures += 1
        return self._schedule(retry_after)

    def connected(self) -> None:
        """A connection is up; when it drops, :meth:`dropped` checks how long it stayed up."""
        self._up_since = self.clock.monotonic()

    def dropped(self, retry_after: float = 0.0) -> float:
        """The connection that :meth:`connected` reported went down: the delay before reconnecting.
        A connection that stayed up ``stable_after_s`` resets the count (this drop is the first)."""
        up = self.up_for()
        self._up_since = None
        self.failures = 1 if up is not None and up >= self.stable_after_s else self.failures + 1
        return self._schedule(retry_after)

    def up_for(self) -> float | None:
        """Seconds the current connection has been up, or None when none is."""
        return None if self._up_since is None else self.clock.monotonic() - self._up_since

    def reset(self) -> None:
        """A success: the next failure waits the shortest delay again."""
        self.failures = 0
        self.until = 0.0

    def _schedule(self, retry_after: float) -> float:
        d = max(self.delay(self.failures), retry_after)
        self.until = self.clock.monotonic() + d
        return d

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this policy's clock."""
        await self.clock.sleep(seconds)


class ConnectBudget:
    """At most ``limit`` connection attempts per ``window_s`` (Binance: 300 per 5 minutes per IP).

    Shared by every connection to one venue; an attempt waits rather than break the venue's rule.
    """

    def __init__(self, limit: int, window_s: float, clock: Clock | None = None) -> None:
        self.limit = limit
        #: The limit as made: :meth:`share` scales it.
        self.full = limit
        self.window_s = window_s
        self.clock: Clock = clock or LIVE
        self._attempts: deque[float] = deque()
        self.waits = 0

    def share(self, fraction: float) -> None:
        """Allow ``fraction`` of the attempts it was made with from now on (at least one per window):
        this process's part of a budget it shares with others."""
        if not 0 < fraction <= 1:
            raise ValueError("a share is a fraction in (0, 1]")
        self.limit = max(1, int(self.full * fraction))

    async def acquire(self) -> None:
        """Wait until one more attempt fits in the window, then count it."""
        while True:
            now = self.clock.monotonic()
            while self._attempts and now - self._attempts[0] >= self.window_s:
                self._attempts.popleft()
            if len(self._attempts) < self.limit:
                self._attempts.append(now)
                return
            self.waits += 1
            await self.clock.sleep(self.window_s - (now - self._attempts[0]))


class Watchdog:
    """Notices a connection that delivers nothing for ``stale_after_s``.

    :meth:`run` samples ``count()`` (frames received so far) four times per ``stale_after_s``;
    when it has not moved for ``stale_after_s`` while ``alive()`` is true it calls
    ``on_stale(quiet_seconds)`` (which drops the connection) and starts timing again.
    """

    def __init__(
        self,
        stale_after_s: float,
        count: Callable[[], int],
        alive: Callable[[], bool],
        on_stale: Callable[[float], None],
        clock: Clock | None = None,
    ) -> None:
        self.stale_after_s = stale_after_s
        self._count = count
        self._alive = alive
        self._on_stale = on_stale
        self.clock: Clock = clock or LIVE
        self.fired = 0

    async def run(self) -> None:
        """Watch until cancelled."""
        seen = self._count()
        quiet_since = self.clock.monotonic()
        while True:
            await self.clock.sleep(self.stale_after_s / 4)
            now = self.clock.monotonic()
            n = self._count()
            if n != seen or not self._alive():
                seen = n
                quiet_since = now
            elif now - quiet_since >= self.stale_after_s:
                self.fired += 1
                self._on_stale(now - quiet_since)
                quiet_since = now


def retry_after_s(value: str | None, default: float = 1.0, now: float | None = None) -> float:
    """Seconds a ``Retry-After`` header asks us to wait: delta-seconds or an HTTP date (measured
    from ``now``, epoch seconds, default the machine's clock); ``default`` when absent or unreadable."""
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    if when.tzinfo is None:
        return default
    return max(0.0, when.timestamp() - (LIVE.time() if now is None else now))


async def sleep_unless(clock: Clock, seconds: float, stop: asyncio.Event) -> bool:
    """Sleep ``seconds`` on ``clock``, or less if ``stop`` is set meanwhile; True when it was set."""
    if stop.is_set():
        return True
    if seconds <= 0:
        await asyncio.sleep(0)
        return stop.is_set()
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, waiter):
            if not t.done():
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
    return stop.is_set()
