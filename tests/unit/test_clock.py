"""VenueClock: the venue's now, from what the venue said, driven here by a TestClock; and TestClock itself."""

from __future__ import annotations

import asyncio
import contextlib

from deltafeed.clock import TestClock, VenueClock


def test_venue_clock_follows_observations_and_never_goes_back() -> None:
    local = TestClock(start_ms=5_000_000)  # the local clock is far ahead of the venue
    vc = VenueClock(local)
    assert vc.now_ms() == 5_000_000  # nothing heard yet: the local clock is all there is
    vc.observe(1_000_000)  # the first reading counts even though it is "behind"
    assert vc.now_ms() == 1_000_000
    local.advance(2.5)
    assert vc.now_ms() == 1_002_500  # runs on at the local pace between readings
    vc.observe(1_001_000)  # an older event time does not move it back
    assert vc.now_ms() == 1_002_500
    vc.observe(1_010_000)  # a venue reading ahead of the estimate pulls it ahead
    assert vc.now_ms() == 1_010_000


def test_venue_clock_learns_the_pace_of_a_fast_replica() -> None:
    local = TestClock(start_ms=0)
    vc = VenueClock(local, baseline_s=10.0)
    vc.observe(1_000_000)
    for _ in range(20):  # a market running 120 times as fast as the wall clock
        local.advance(1.0)
        vc.observe(vc_market := 1_000_000 + int(local.monotonic() * 120_000))
    assert abs(vc.rate - 120.0) < 0.01
    local.advance(10.0)  # ten seconds of silence (a reconnect): the estimate keeps pace
    assert abs(vc.now_ms() - (vc_market + 1_200_000)) <= 1


def test_venue_clock_pace_is_never_slower_than_the_local_clock() -> None:
    local = TestClock(start_ms=0)
    vc = VenueClock(local, baseline_s=1.0)
    vc.observe(1_000)
    local.advance(5.0)
    vc.observe(2_000)  # event times lag (a quiet market): the pace stays 1.0, not 0.2
    assert vc.rate == 1.0


# --- TestClock: sleepers wake when a test advances time, never by real time -----------------------


async def test_test_clock_wakes_sleepers_in_order_when_advanced() -> None:
    clock = TestClock(start_ms=1_000)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, s: float) -> None:
        await clock.sleep(s)
        woke.append((name, clock.monotonic()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("late", 3.0), ("early", 1.0), ("tie", 1.0))]
    await asyncio.sleep(0)
    assert clock.sleepers == 3 and woke == []
    clock.advance(0.5)
    await asyncio.sleep(0)
    assert woke == []  # not due yet
    clock.advance(1.0)  # synchronous: both due sleepers wake, and run once the test yields
    await asyncio.gather(*tasks[1:])
    assert woke == [("early", 1.5), ("tie", 1.5)]  # in wake-up order, ties in the order they slept
    assert clock.monotonic() == 1.5 and clock.time_ms() == 2_500 and clock.time() == 2.5
    await clock.advance_async(5.0)  # step by step: the late sleeper sees its own wake-up time
    await tasks[0]
    assert woke[-1] == ("late", 3.0) and clock.monotonic() == 6.5


async def test_advance_async_steps_a_loop_through_every_wake_up() -> None:
    clock = TestClock()
    ticks: list[float] = []

    async def loop() -> None:
        while True:
            await clock.sleep(0.25)
            ticks.append(clock.monotonic())

    task = asyncio.create_task(loop())
    await clock.advance_async(1.0)
    assert ticks == [0.25, 0.5, 0.75, 1.0]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0  # a cancelled sleeper is not waiting any more


async def test_zero_sleep_does_not_wait_for_the_clock() -> None:
    clock = TestClock()
    await clock.sleep(0)
    await clock.sleep(-1)
    assert clock.monotonic() == 0.0
