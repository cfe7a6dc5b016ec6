"""The memory hot tier against a reference: a dict of candles keyed by open_time, kept in the plainest
way (sorted on every read), driven by fixed cases and by seeded random sequences of every operation.

The reference's rules are the hot tier's promises: an upsert by open_time; a candle older than a
full ring is refused; a new candle in a full ring pushes out the oldest (also when it lands inside
the covered span); retention drops by age; reads return every field, ascending by open_time.
"""

from __future__ import annotations

import random

import pytest

from deltafeed.model import Candle
from deltafeed.model import timeframe as timeframe_of
from deltafeed.store.hot import HotStore

M = 60_000
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"


class Reference:
    """What one series of the hot tier must hold, as a dict of copies."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: dict[int, Candle] = {}

    def put(self, c: Candle) -> bool:
        t = c.open_time
        if t not in self.held and len(self.held) >= self.capacity and t < min(self.held):
            return False
        self.held[t] = Candle(t, c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed, c.final)
        if len(self.held) > self.capacity:
            del self.held[min(self.held)]
        return True

    def ordered(self) -> list[Candle]:
        return [self.held[t] for t in sorted(self.held)]

    def last(self, n: int) -> list[Candle]:
        return self.ordered()[-n:] if n > 0 else []

    def range(self, since: int, until: int) -> list[Candle] | None:
        if not self.held or min(self.held) > timeframe_of("1m").ceil(since):
            return None
        return [c for c in self.ordered() if since <= c.open_time <= until]

    def drop_before(self, cutoff: int) -> int:
        old = [t for t in self.held if t < cutoff]
        for t in old:
            del self.held[t]
        return len(old)


def rand_candle(rng: random.Random, t: int) -> Candle:
    closed = rng.random() < 0.7
    final = closed and rng.random() < 0.6
    return Candle(
        t,
        rng.uniform(1, 1e5),
        rng.uniform(1, 1e5),
        rng.uniform(1, 1e5),
        rng.uniform(1, 1e5),
        rng.choice([0.0, rng.uniform(0, 1e9), 1e-8]),
        rng.randrange(0, 2**40),
        closed,
        final,
    )


def assert_same(got: list[Candle] | None, want: list[Candle] | None) -> None:
    assert (got is None) == (want is None)
    if got is None or want is None:
        return
    assert [c.open_time for c in got] == [c.open_time for c in want]
    for g, w in zip(got, want, strict=True):
        assert g == w, f"candle at {g.open_time}: {g} != {w}"
        assert type(g.closed) is bool and type(g.final) is bool  # JSON must say true/false, not 1/0
        assert g.state == w.state


def test_every_field_round_trips_and_reads_are_independent_copies() -> None:
    hot = HotStore(capacity=3)
    c = Candle(5 * M, 1.1, 2.2, 0.3, 1.7, 123.456789, 42, True, True)
    hot.put(BTC, "1m", c)
    c.close = 9.9  # the aggregator keeps mutating the candle it passed in
    (got,) = hot.last(BTC, "1m", 5)
    assert got == Candle(5 * M, 1.1, 2.2, 0.3, 1.7, 123.456789, 42, True, True)
    assert got.state == "final"
    got.high = 0.0  # a reader changing its candle changes nothing held
    assert hot.get(BTC, "1m", 5 * M) == Candle(5 * M, 1.1, 2.2, 0.3, 1.7, 123.456789, 42, True, True)
    hot.put(BTC, "1m", Candle(6 * M, 1.0, 1.0, 1.0, 1.0, 0.0, 0, True, False))
    hot.put(BTC, "1m", Candle(7 * M, 1.0, 1.0, 1.0, 1.0, 0.0, 0))
    assert [c.state for c in hot.last(BTC, "1m", 3)] == ["final", "provisional", "forming"]


def test_the_forming_candle_put_again_and_again_is_held_as_it_was_at_each_put() -> None:
    hot = HotStore(capacity=2)
    forming = Candle(1 * M, 10.0, 10.0, 10.0, 10.0, 0.0, 0)
    for k in range(1, 6):  # the aggregator folds trades into one object and puts it every tick
        forming.close = forming.high = 10.0 + k
        forming.volume += 1.0
        forming.trades += 1
        hot.put(BTC, "1m", forming)
        assert hot.last(BTC, "1m", 1) == [Candle(1 * M, 10.0, 10.0 + k, 10.0, 10.0 + k, float(k), k)]
    forming.close = 99.0  # changed, not put
    assert hot.get(BTC, "1m", 1 * M) == Candle(1 * M, 10.0, 15.0, 10.0, 15.0, 5.0, 5)
    forming.closed = forming.final = True
    hot.put(BTC, "1m", forming)
    forming.open_time, forming.close, forming.closed, forming.final = 2 * M, 1.0, False, False
    hot.put(BTC, "1m", forming)
    forming.close = 2.0
    hot.put(BTC, "1m", forming)
    forming.close = 3.0
    assert [(c.close, c.state) for c in hot.last(BTC, "1m", 5)] == [(99.0, "final"), (2.0, "forming")]


def test_a_full_ring_takes_a_late_candle_in_order_and_drops_its_oldest() -> None:
    hot = HotStore(capacity=4)
    for k in (0, 2, 4, 6, 8, 10):  # wraps: holds 4, 6, 8, 10
        hot.put(BTC, "1m", Candle(k * M, k, k, k, k, 1.0, 1))
    assert hot.put(BTC, "1m", Candle(7 * M, 7, 7, 7, 7, 1.0, 1)) is True
    assert [c.open_time // M for c in hot.last(BTC, "1m", 9)] == [6, 7, 8, 10]
    assert hot.put(BTC, "1m", Candle(5 * M, 5, 5, 5, 5, 1.0, 1)) is False  # older than the full ring
    assert hot.put(BTC, "1m", Candle(6 * M, 66, 66, 66, 66, 1.0, 1)) is True  # its oldest, replaced
    assert [c.open for c in hot.last(BTC, "1m", 9)] == [66, 7, 8, 10]
    hot.put(BTC, "1m", Candle(12 * M, 12, 12, 12, 12, 1.0, 1))
    assert [c.open_time // M for c in hot.last(BTC, "1m", 9)] == [7, 8, 10, 12]
    assert hot.range(BTC, "1m", 8 * M, 11 * M) == hot.last(BTC, "1m", 3)[:2]
    assert hot.range(BTC, "1m", 6 * M, 11 * M) is None  # 6 is no longer held: the cold tier must answer


def test_put_many_fills_an_empty_ring_and_goes_on_one_by_one_past_its_room() -> None:
    hot = HotStore(capacity=4)
    hot.put(BTC, "1m", Candle(1 * M, 1.0, 1.0, 1.0, 1.0, 1.0, 1))
    hot.put(BTC, "1m", Candle(1 * M, 1.5, 1.5, 1.5, 1.5, 1.0, 1))  # held as the forming candle
    batch = [Candle(k * M, k, k, k, k, 1.0, k, True, k % 2 == 0) for k in (2, 3, 4, 5, 6, 0, 5)]
    assert hot.put_many(BTC, "1m", batch) == 6  # 0 is older than the full ring
    assert hot.last(BTC, "1m", 9) == [Candle(k * M, k, k, k, k, 1.0, k, True, k % 2 == 0) for k in (3, 4, 5, 6)]
    assert hot.put_many(ETH, "1m", []) == 0 and hot.last(ETH, "1m", 1) == []


def test_retention_empties_a_series_which_then_fills_again() -> None:
    hot = HotStore(capacity=3)
    for k in range(5):
        hot.put(BTC, "1m", Candle(k * M, k, k, k, k, 1.0, 1))
    assert hot.apply_retention(11 * M, {"1m": 8 * M}) == 1  # holds 2, 3, 4: drops 2
    assert [c.open_time // M for c in hot.last(BTC, "1m", 9)] == [3, 4]
    assert hot.apply_retention(100 * M, {"1m": 8 * M}) == 2
    assert len(hot) == 0 and hot.last(BTC, "1m", 9) == [] and hot.range(BTC, "1m", 0, 10) is None
    assert hot.keys() == [(BTC, "1m")]
    for k in (20, 22, 21, 23):
        hot.put(BTC, "1m", Candle(k * M, k, k, k, k, 1.0, 1))
    assert [c.open_time // M for c in hot.last(BTC, "1m", 9)] == [21, 22, 23]


@pytest.mark.parametrize("seed", range(40))
def test_random_sequences_match_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    capacity = rng.choice([1, 2, 3, 5, 8, 17, 64])
    hot = HotStore(capacity)
    ref = Reference(capacity)
    newest = rng.randrange(0, 50)
    for step in range(600):
        op = rng.random()
        if op < 0.6:
            # mostly the forming candle or the next; sometimes late, old, or a jump ahead
            kind = rng.random()
            if kind < 0.35:
                k = newest
            elif kind < 0.6:
                newest += 1
                k = newest
            elif kind < 0.9:
                k = newest - rng.randrange(0, 2 * capacity + 3)
            else:
                newest += rng.randrange(1, 3 * capacity + 2)
                k = newest
            c = rand_candle(rng, k * M)
            assert hot.put(BTC, "1m", c) is ref.put(c), f"step {step}: put {k}"
        elif op < 0.7:
            n = rng.randrange(-1, capacity + 3)
            assert_same(hot.last(BTC, "1m", n), ref.last(n))
        elif op < 0.8:
            k = newest - rng.randrange(-1, capacity + 3)
            want = ref.held.get(k * M)
            got = hot.get(BTC, "1m", k * M)
            assert_same(None if got is None else [got], None if want is None else [want])
        elif op < 0.9:
            since = (newest - rng.randrange(-1, capacity + 4)) * M + rng.choice([0, 0, 1, -1])
            until = since + rng.randrange(-2, capacity + 2) * M + rng.choice([0, 1, -1])
            assert_same(hot.range(BTC, "1m", since, until), ref.range(since, until))
        elif op < 0.93:
            # several at once: mostly an ascending run from somewhere near the newest, as a start-up
            # fills from the store; sometimes in any order
            first = newest - rng.randrange(-2, 2 * capacity + 3)
            ks = list(range(first, first + rng.randrange(0, 2 * capacity + 2)))
            if rng.random() < 0.3:
                rng.shuffle(ks)
            newest = max([newest, *ks])
            batch = [rand_candle(rng, k * M) for k in ks]
            assert hot.put_many(BTC, "1m", batch) == sum(ref.put(c) for c in batch), f"step {step}: put_many {ks}"
        elif op < 0.96:
            cutoff = (newest - rng.randrange(-1, capacity + 4)) * M
            now = cutoff + 5 * M
            assert hot.apply_retention(now, {"1m": 5 * M}) == ref.drop_before(cutoff)
        assert len(hot) == len(ref.held)
    assert_same(hot.last(BTC, "1m", capacity), ref.ordered())
