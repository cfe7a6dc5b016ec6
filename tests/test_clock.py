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
    vc.observe(1_010_000)  # a replica running fast: event times pull it ahead
    assert vc.now_ms() == 1_010_000
