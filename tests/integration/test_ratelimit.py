"""The REST client against the replica's weight limit: paced to zero 429s, and obedient to Retry-After."""

from __future__ import annotations

import time

import pytest

from deltafeed.clock import TestClock
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.binance.replica import BinanceReplica
from deltafeed.venues.binance.rest import BinanceHistory
from reference import candles_from_tape, read_tape


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_bootstrap_is_paced_under_the_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tape = tmp_path / "tape.csv"
    # 40 weight per 2 s window; 1s klines over 3 h are 11 pages (weight 2 each) plus server time.
    async with BinanceReplica(
        symbols=["BTCUSDT"], rate=2.0, history_ms=3 * 3_600_000, weight_limit=40, weight_window_s=2.0, tape=str(tape)
    ) as replica:
        hist = BinanceHistory(replica.url, weight_limit=40, window_s=2.0)
        try:
            now = await hist.server_time()
            t0 = time.monotonic()
            for _ in range(3):  # the same bootstrap three times over: 70 weight, well past one window
                got = await hist.klines("BTCUSDT", "1s", now - 3 * 3_600_000, now)
            elapsed = time.monotonic() - t0
        finally:
            await hist.close()
        # The replica serves flat 1s klines up to its clock: the reference runs that far too (at 2
        # trades a second, a second without a trade is common).
        end_ms = replica.clock.now_ms()
        assert replica.stats["429"] == 0 and replica.stats["418"] == 0
        assert hist.http.throttled == 0
        assert hist.limiter.waits > 0 and elapsed > 2.0  # it had to pace itself
    want = {c.open_time: c for c in candles_from_tape(read_tape(str(tape)), 1000, until_ms=end_ms)}
    closed = [c for c in got if c.closed]
    assert len(closed) > 10_000
    for c in closed:
        w = want[c.open_time]
        assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
            w.open,
            w.high,
            w.low,
            w.close,
            round(w.volume, 8),
            w.trades,
        )


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_a_429_is_waited_out_without_a_ban() -> None:
    # The client believes in Binance's 6000 but the venue allows 10 per 2 s: it runs into 429s.
    async with BinanceReplica(
        symbols=["BTCUSDT"], rate=2.0, history_ms=3_600_000, weight_limit=10, weight_window_s=2.0
    ) as replica:
        hist = BinanceHistory(replica.url)
        try:
            now = await hist.server_time()
            for _ in range(12):
                got = await hist.klines("BTCUSDT", "1m", now - 3_600_000, now)
                assert len(got) >= 60
        finally:
            await hist.close()
        assert replica.stats["429"] >= 1 and hist.http.throttled == replica.stats["429"]
        assert replica.stats["418"] == 0  # it never sent again before Retry-After
        assert hist.limiter.penalties >= 1


async def test_limiter_never_spends_more_than_the_limit_in_a_window() -> None:
    clock = TestClock(start_ms=0)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    lim = WeightLimiter(100, 60.0, headroom=0.8, clock=clock, sleep=sleep)
    spent: dict[int, int] = {}
    for _ in range(300):
        await lim.acquire(2)
        w = clock.time_ms() // 60_000
        spent[w] = spent.get(w, 0) + 2
    assert max(spent.values()) <= 100
    # 600 weight at 80 per minute takes about 7.5 minutes of the injected clock, no less.
    assert clock.time_ms() >= (600 - lim.capacity) / lim.rate * 1000 - 1


async def test_limiter_waits_for_the_next_window_when_the_venue_says_it_is_spent() -> None:
    clock = TestClock(start_ms=10_000)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    lim = WeightLimiter(6000, 60.0, clock=clock, sleep=sleep)
    lim.observe_used(4799)  # other programs on our IP used nearly all of this minute
    await lim.acquire(2)
    assert clock.time_ms() >= 60_000 and sum(slept) >= 50
    lim.penalize(30.0)  # a 429 with Retry-After: 30
    t = clock.monotonic()
    await lim.acquire(1)
    assert clock.monotonic() - t >= 30.0


async def test_a_share_of_the_limit_paces_to_that_fraction_and_back() -> None:
    """Two processes each keeping half of one limit spend at most the limit together in any window;
    the whole share again paces at the whole limit."""
    clock = TestClock(start_ms=0)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    lim = WeightLimiter(100, 60.0, headroom=0.8, clock=clock, sleep=sleep)
    lim.share(0.5)
    assert (lim.limit, lim.full) == (50, 100)
    start = clock.monotonic()
    for _ in range(100):
        await lim.acquire(1)
    # 100 weight at 40 a minute (half of 80) takes about 2.5 minutes, less the burst.
    took = clock.monotonic() - start
    assert (100 - lim.capacity) / 40 * 60 - 1 <= took <= 100 / 40 * 60 + 1
    lim.share(1.0)
    start = clock.monotonic()
    for _ in range(80):
        await lim.acquire(1)
    assert clock.monotonic() - start <= 80 / 80 * 60 + 1
    with pytest.raises(ValueError):
        lim.share(0)
