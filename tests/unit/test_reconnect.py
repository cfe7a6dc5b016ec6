"""The reconnect policy (Backoff, ConnectBudget, Watchdog, Retry-After), driven by a TestClock: no real sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import random

from deltafeed.clock import TestClock
from deltafeed.net.reconnect import Backoff, ConnectBudget, Watchdog, retry_after_s, sleep_unless


def test_full_jitter_stays_within_the_doubling_ceiling() -> None:
    b = Backoff(0.5, 30.0, rng=random.Random(7), clock=TestClock())
    for n in range(1, 12):
        ceiling = min(30.0, 0.5 * 2**n)
        assert b.ceiling(n) == ceiling
        delays = [b.delay(n) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # full jitter: spread over the whole range, not bunched at the top
        assert min(delays) < ceiling * 0.1 and max(delays) > ceiling * 0.9


def test_seeded_jitter_is_repeatable_and_without_jitter_the_ceiling() -> None:
    a = Backoff(0.5, 30.0, rng=random.Random(42), clock=TestClock())
    b = Backoff(0.5, 30.0, rng=random.Random(42), clock=TestClock())
    assert [a.failed() for _ in range(6)] == [b.failed() for _ in range(6)]
    plain = Backoff(0.05, 1.0, jitter=False, clock=TestClock())
    assert [plain.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    plain.reset()
    assert plain.failures == 0 and plain.until == 0.0 and plain.failed() == 0.1


def test_a_connection_up_for_the_stable_period_resets_the_backoff() -> None:
    clock = TestClock()
    b = Backoff(1.0, 60.0, stable_after_s=30.0, jitter=False, clock=clock)
    for _ in range(4):
        b.failed()
    assert b.failures == 4
    b.connected()
    clock.advance(5.0)  # dropped soon: it counts as one more failure
    assert b.dropped() == 32.0 and b.failures == 5
    b.connected()
    clock.advance(30.0)  # up long enough: this drop is the first again
    assert b.up_for() == 30.0
    assert b.dropped() == 2.0 and b.failures == 1
    assert b.up_for() is None


def test_retry_after_is_a_floor_and_sets_until() -> None:
    clock = TestClock()
    clock.advance(100.0)
    b = Backoff(0.5, 30.0, rng=random.Random(1), clock=clock)
    d = b.failed(retry_after=45.0)
    assert d == 45.0 and b.until == 145.0  # longer than the cap: the server's word wins
    assert b.failed(retry_after=0.0) <= b.ceiling(2)


def test_retry_after_header_forms() -> None:
    assert retry_after_s("7") == 7.0
    assert retry_after_s("2.5") == 2.5
    assert retry_after_s("-3") == 0.0
    assert retry_after_s(None) == 1.0 and retry_after_s(None, default=4.0) == 4.0
    assert retry_after_s("soon") == 1.0
    # an HTTP date, measured from "now"
    assert retry_after_s("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0


async def test_connect_budget_waits_for_the_window_on_the_clock() -> None:
    clock = TestClock()
    budget = ConnectBudget(2, 1.0, clock=clock)
    await budget.acquire()
    await budget.acquire()
    third = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    assert not third.done() and budget.waits == 1
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert not third.done()
    await clock.advance_async(0.5)  # the first attempt leaves the window
    assert third.done()
    assert clock.monotonic() == 1.0


async def test_watchdog_fires_after_stale_period_and_not_while_data_flows() -> None:
    clock = TestClock()
    frames = 0
    stale: list[float] = []
    dog = Watchdog(4.0, lambda: frames, lambda: True, stale.append, clock)
    task = asyncio.create_task(dog.run())
    for _ in range(10):  # a frame every second: never stale
        frames += 1
        await clock.advance_async(1.0)
    assert stale == []
    await clock.advance_async(4.0)  # silence
    assert stale == [4.0] and dog.fired == 1
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_watchdog_ignores_silence_while_disconnected() -> None:
    clock = TestClock()
    stale: list[float] = []
    dog = Watchdog(2.0, lambda: 0, lambda: False, stale.append, clock)
    task = asyncio.create_task(dog.run())
    await clock.advance_async(20.0)
    assert stale == []
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_sleep_unless_is_cut_short_by_the_event() -> None:
    clock = TestClock()
    stop = asyncio.Event()
    task = asyncio.create_task(sleep_unless(clock, 30.0, stop))
    await asyncio.sleep(0)
    stop.set()
    assert await task is True
    assert clock.sleepers == 0 and clock.monotonic() == 0.0
    other = asyncio.create_task(sleep_unless(clock, 3.0, asyncio.Event()))
    await clock.advance_async(3.0)
    assert await other is False


async def test_a_share_of_the_connect_budget_allows_that_fraction_of_the_attempts() -> None:
    clock = TestClock()
    budget = ConnectBudget(10, 1.0, clock=clock)
    budget.share(0.25)
    assert budget.limit == 2
    await budget.acquire()
    await budget.acquire()
    third = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    assert not third.done()  # the third waits for the window, as with a budget of 2
    budget.share(0.01)
    assert budget.limit == 1  # at least one attempt a window
    budget.share(1.0)
    await asyncio.sleep(0)
    await clock.advance_async(0.0)
    assert budget.limit == 10
    await clock.advance_async(1.0)
    assert third.done()
