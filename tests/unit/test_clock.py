"""VenueClock: the venue's now, from what the venue said, driven here by a TestClock."""

from __future__ import annotations

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
