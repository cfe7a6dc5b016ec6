"""The planner and pacer every streaming venue shares (venues/links.py): instruments packed in order
onto as few connections as a venue's declared limits allow, refused by name when they cannot fit,
and control messages no faster than the venue's rates (a test clock, no waiting)."""

from __future__ import annotations

import itertools

import pytest

from deltafeed.clock import TestClock
from deltafeed.model import BadInput
from deltafeed.venues import registry
from deltafeed.venues.links import LinkPool, Pace, StreamLimits


def pool(limits: StreamLimits) -> LinkPool[str]:
    return LinkPool("v", limits, url="ws://127.0.0.1:9/", on_frame=lambda frame: None)


def test_members_are_packed_in_order_within_the_subscriptions_and_characters_per_connection() -> None:
    p = pool(StreamLimits(per_connection=5, chars_per_connection=40))
    for name, subs in [("a", 2), ("b", 3), ("c", 1), ("d", 4), ("e", 1)]:
        p.place(name, subs, chars=10 * subs)
    # a+b fill 5 subscriptions but 50 characters: b opens a second link; c fits beside b; d needs a
    # third (4 subscriptions, 40 characters); e does not fit beside d (41 characters).
    assert [link.members for link in p.links] == [["a"], ["b", "c"], ["d"], ["e"]]
    assert [(link.load, link.chars) for link in p.links] == [(2, 20), (4, 40), (4, 40), (1, 10)]
    assert [link.name for link in p.links] == ["v", "v#1", "v#2", "v#3"]
    assert [(link.index, group) for link, group in p.by_link(["e", "a", "c", "x"])] == [
        (3, ["e"]),
        (0, ["a"]),
        (1, ["c"]),
    ]


def test_what_no_connection_may_carry_is_refused_naming_the_fix() -> None:
    with pytest.raises(BadInput, match="one instrument needs 6 subscriptions"):
        pool(StreamLimits(per_connection=5)).place("a", 6)
    p = pool(StreamLimits(per_connection=2, max_connections=2))
    p.place("a", 2)
    p.place("b", 2)
    with pytest.raises(BadInput, match=r"allows 2 connection\(s\) of 2 subscriptions at once.*collect fewer"):
        p.place("c", 1)


def test_no_limit_means_one_connection_and_one_message() -> None:
    p = pool(StreamLimits())
    for i in range(3000):
        p.place(str(i), 3, 20)
    assert len(p.links) == 1 and p.links[0].load == 9000
    assert StreamLimits().chunks(list(range(7))) == [list(range(7))]
    assert StreamLimits(per_message=3).chunks(list(range(7))) == [[0, 1, 2], [3, 4, 5], [6]]


def test_pace_spaces_messages_at_its_rate() -> None:
    clock = TestClock()
    pace = Pace(4.0, clock=clock)
    sent = []
    for _ in range(9):  # as many as may go, then wait as long as the pace asks
        wait = pace.delay()
        if wait > 0:
            clock.advance(wait)
            assert pace.delay() == 0
        pace.take()
        sent.append(clock.monotonic())
    assert sent[0] == 0.0
    assert all(b - a == pytest.approx(0.25) for a, b in itertools.pairwise(sent))


def test_every_streaming_venue_declares_its_limits() -> None:
    for name in ("binance", "bybit", "coinbase", "kraken", "hyperliquid", "oanda", "finnhub", "ig"):
        limits = registry.get(name).stream_limits
        assert limits is not None and limits.per_connection > 0 and limits.source, name
