"""RollupBuilder: longer candles derived live from 1m candles equal the ones aggregated from the trades.

Float fields: open/high/low/close are picked, never computed, so they must be exactly equal. Volume
is compared with ``pytest.approx(rel=1e-12)``: the direct builder (and the reference) sums trade
quantities one by one, the roll-up sums per-minute sums, and float addition is not associative, so
the two differ in the last bits. Between two roll-ups (or a roll-up and its own forming fold) the sums
are in the same order and compared exactly.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from decimal import Decimal

import pytest

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.rollup import RollupBuilder
from deltafeed.model import TIMEFRAMES, BadInput, Candle, Trade
from deltafeed.replicas.sim import MarketSim, fmt
from reference import TapeRow, candles_from_tape

M = 60_000
H = 3_600_000
DAY = 86_400_000
DERIVED = ["5m", "15m", "1h", "4h", "1d"]
START = int(dt.datetime(2024, 3, 1, 22, 10, tzinfo=dt.UTC).timestamp() * 1000)
DAY2 = START - START % DAY + DAY
END = DAY2 + 26 * H + 30 * M  # 28 h 20 min of market time: one whole day, quiet stretches in it
FLAT_1H = (DAY2 + 1 * H + 50 * M, DAY2 + 3 * H + 5 * M)  # no trades in the 02:00 hour
FLAT_4H = (DAY2 + 7 * H + 40 * M, DAY2 + 12 * H + 20 * M)  # no trades in the 08:00-12:00 candle


@functools.cache
def market() -> tuple[Trade, ...]:
    """A seeded MarketSim tape with quiet stretches cut out, trade ids renumbered so that the builders
    see a quiet market (flat candles), not a lost stretch (a gap)."""
    sim = MarketSim(["BTCUSDT"], seed=11, rate=0.5, start_ms=START, history_ms=0)
    raw = sim.advance_to(END)["BTCUSDT"].trades()
    rng = random.Random(5)
    quiet = [FLAT_1H, FLAT_4H]
    for _ in range(40):  # short lulls: flat minutes, some flat 5m and 15m candles
        a = rng.randrange(START, END)
        quiet.append((a, a + rng.randint(1, 25) * M))
    kept = [t for t in raw if not any(a <= t.time_ms < b for a, b in quiet)]
    return tuple(Trade(t.symbol, i, t.time_ms, t.price, t.qty, t.buyer_maker) for i, t in enumerate(kept, 1))


def same(got: Candle, want: Candle) -> None:
    """Field by field: everything exact but the volume (summed in a different order, see above)."""
    assert (got.open_time, got.open, got.high, got.low, got.close, got.trades, got.closed) == (
        want.open_time,
        want.open,
        want.high,
        want.low,
        want.close,
        want.trades,
        want.closed,
    )
    assert got.volume == pytest.approx(want.volume, rel=1e-12, abs=0.0)


class Run:
    """The engine's order of events: trades into the 1m builder, whose final candles go to the roll-up
    as they close; every tick the quiet-market timer and then the forming 1m candle. A second
    CandleBuilder builds the derived timeframes directly from the same trades."""

    def __init__(self) -> None:
        self.base_finals: list[Candle] = []
        self.provisional: dict[int, Candle] = {}
        self.base = CandleBuilder(["1m"], self._base_closed, lambda tf, a, b: None)
        self.direct_final: dict[str, dict[int, Candle]] = {tf: {} for tf in DERIVED}
        self.direct = CandleBuilder(
            DERIVED, lambda tf, c: self.direct_final[tf].__setitem__(c.open_time, c), lambda tf, a, b: None
        )
        self.roll: RollupBuilder | None = None
        self.emitted: list[tuple[str, Candle]] = []
        self.stale: list[tuple[str, int]] = []
        self.open_checks = 0

    def attach(self) -> RollupBuilder:
        self.roll = RollupBuilder(
            "1m", DERIVED, lambda tf, c: self.emitted.append((tf, c)), lambda tf, b: self.stale.append((tf, b))
        )
        return self.roll

    def _base_closed(self, tf: str, c: Candle) -> None:
        # As the engine does: a provisional candle the builder vouches for later (same values, now
        # final) is only a change of state for the roll-up.
        old = self.provisional.pop(c.open_time, None)
        if not c.final:
            self.provisional[c.open_time] = c
        self.base_finals.append(c)
        if self.roll is not None:
            self.roll.on_base(c, vouched_only=old is not None and old.row() == c.row())

    def tick(self, trades: list[Trade], now: int) -> None:
        for t in trades:
            self.base.on_trade(t)
            self.direct.on_trade(t)
        self.base.advance(now)
        self.direct.advance(now)
        if self.roll is not None:
            for _, c in self.base.open_candles():
                self.roll.on_base(c)

    def check_open(self) -> None:
        assert self.roll is not None
        got = dict(self.roll.open_candles())
        want = dict(self.direct.open_candles())
        assert got.keys() == want.keys()
        for tf, c in want.items():
            same(got[tf], c)
        self.open_checks += 1

    def derived(self) -> dict[str, dict[int, Candle]]:
        out: dict[str, dict[int, Candle]] = {tf: {} for tf in DERIVED}
        for tf, c in self.emitted:
            seen = out[tf].get(c.open_time)
            # Again only when it became final (a provisional part vouched for later).
            assert seen is None or (not seen.final and c.final and seen.row() == c.row()), (
                f"{tf} {c.open_time} emitted twice without a correction"
            )
            out[tf][c.open_time] = c
        return out


def drive(run: Run, until: int = END, attach_at: int | None = None, seed_from: int = 0) -> None:
    """Release the market in ticks of 0.25 s to 30 s; check the forming candles at random ticks."""
    trades = market()
    rng = random.Random(17)
    i, now = 0, START
    if attach_at is None:
        run.attach()
    while now < until:
        now = min(until, now + rng.choice((250, 250, 1_000, 5_000, 12_000, 30_000)))
        j = i
        while j < len(trades) and trades[j].time_ms <= now:
            j += 1
        run.tick(list(trades[i:j]), now)
        i = j
        if run.roll is None and attach_at is not None and now >= attach_at:
            roll = run.attach()
            roll.seed([c for c in run.base_finals if c.open_time >= seed_from])
            assert not run.emitted and not run.stale  # seeding emits and reports nothing
            for _, c in run.base.open_candles():
                roll.on_base(c)
            run.check_open()  # the forming 1h, 4h and 1d are whole from the first tick
        elif run.roll is not None and rng.random() < 0.15:
            run.check_open()


@functools.cache
def full_run() -> Run:
    run = Run()
    drive(run)
    return run


def first_incomplete(tf: str) -> int | None:
    """The bucket of the first trade, unless that trade's minute opens it: its earlier parts are
    never seen, so it is reported stale instead of derived."""
    first_minute = market()[0].time_ms // M * M
    b = first_minute - first_minute % TIMEFRAMES[tf]
    return None if b == first_minute else b


def test_derived_finals_equal_direct_aggregation() -> None:
    run = full_run()
    got = run.derived()
    flat = {tf: 0 for tf in DERIVED}
    for tf in DERIVED:
        want = run.direct_final[tf]
        skip = first_incomplete(tf)
        assert set(got[tf]) == set(want) - {skip}, tf
        for b, c in got[tf].items():
            same(c, want[b])
            flat[tf] += c.trades == 0
    # The stretches the test is about were there: flat candles of every length up to 4h, a whole day.
    assert flat["5m"] > 10 and flat["15m"] >= 3 and flat["1h"] >= 1 and flat["4h"] >= 1, flat
    assert len(got["1d"]) == 1 and got["1d"][DAY2].trades > 0
    assert run.open_checks > 500


def test_forming_candles_are_incremental_and_memory_is_bounded() -> None:
    run = full_run()
    roll = run.roll
    assert roll is not None
    # Parts arrived in order and nothing was corrected: not one refold, however often polled.
    assert roll.refolds == 0 and roll.corrections == 0 and roll.stale_parts == 0
    assert roll.held_parts <= 2 * sum(TIMEFRAMES[tf] // M for tf in DERIVED)
    assert roll.held_parts > TIMEFRAMES["1d"] // M  # the previous day is still held whole


def test_first_bucket_seen_only_in_part_is_reported_stale() -> None:
    run = full_run()
    want = [(tf, b) for tf in DERIVED if (b := first_incomplete(tf)) is not None]
    assert want and sorted(run.stale) == sorted(want)
    assert run.roll is not None and run.roll.incomplete == len(want)


def test_derived_finals_equal_the_independent_tape_reference() -> None:
    rows = [
        TapeRow(
            t.symbol,
            t.trade_id,
            t.time_ms,
            Decimal(fmt(t.price)),
            Decimal(fmt(t.qty)),
            t.buyer_maker,
            fmt(t.price),
            fmt(t.qty),
        )
        for t in market()
    ]
    got = full_run().derived()
    for tf in DERIVED:
        ref = {c.open_time: c for c in candles_from_tape(rows, TIMEFRAMES[tf])}
        last = max(ref)  # holds the last trade: still forming at the end unless it ended
        assert set(ref) - set(got[tf]) <= {first_incomplete(tf), last}, tf
        for b, c in got[tf].items():
            if b in ref:
                r = ref[b]
                assert (c.open, c.high, c.low, c.close, c.trades) == (r.open, r.high, r.low, r.close, r.trades)
                assert c.volume == pytest.approx(r.volume, rel=1e-12, abs=0.0)


def test_seeded_mid_bucket_derives_whole_candles_from_the_start() -> None:
    run = Run()
    attach = DAY2 + 17 * H + 43 * M + 20_000  # inside a 5m, 15m, 1h, 4h and 1d candle
    drive(run, attach_at=attach, seed_from=DAY2)  # the store's 1m candles of the current day
    got = run.derived()
    assert not run.stale
    for tf in DERIVED:
        ms = TIMEFRAMES[tf]
        want = {b: c for b, c in run.direct_final[tf].items() if b >= attach - attach % ms}
        assert set(got[tf]) == set(want), tf
        first = min(want)
        same(got[tf][first], want[first])  # the bucket that was half over at start-up
        for b, c in got[tf].items():
            same(c, want[b])
    assert got["1d"][DAY2].trades == sum(1 for t in market() if DAY2 <= t.time_ms < DAY2 + DAY)


# --- corrections, holes, stale parts: small hand-made cases -----------------------------------------------------


def m(i: int, o: float, h: float, lo: float, c: float, v: float, n: int, closed: bool = True) -> Candle:
    return Candle(i * M, o, h, lo, c, v, n, closed)


def flat(i: int, px: float) -> Candle:
    return m(i, px, px, px, px, 0.0, 0)


class Sink:
    def __init__(self) -> None:
        self.final: list[tuple[str, Candle]] = []
        self.stale: list[tuple[str, int]] = []

    def builder(self, derived: list[str]) -> RollupBuilder:
        return RollupBuilder(
            "1m", derived, lambda tf, c: self.final.append((tf, c)), lambda tf, b: self.stale.append((tf, b))
        )


BUCKET0 = [
    m(0, 10, 12, 9, 11, 1.0, 3),
    flat(1, 11),
    m(2, 11, 15, 10, 14, 2.0, 4),
    m(3, 14, 14, 8, 9, 0.5, 1),
    m(4, 9, 10, 9, 10, 0.25, 2),
]


def test_correction_of_a_final_part_emits_the_derived_candle_again() -> None:
    sink = Sink()
    roll = sink.builder(["5m"])
    for p in BUCKET0:
        roll.on_base(p)
    assert sink.final == [("5m", Candle(0, 10, 15, 8, 10, 3.75, 10, True))]
    roll.on_base(m(2, 11, 20, 10, 14, 3.0, 5))  # the venue's record of minute 2 replaces ours
    assert sink.final[-1] == ("5m", Candle(0, 10, 20, 8, 10, 4.75, 11, True))
    roll.on_base(m(2, 11, 20, 10, 14, 3.0, 5))  # the same again: nothing new
    roll.on_base(m(2, 11, 30, 10, 14, 3.0, 5, closed=False))  # a forming update of a final part: stale
    assert len(sink.final) == 2 and roll.corrections == 1 and roll.refolds == 1
    # The next bucket: a correction after the base moved on is still derived (the previous bucket).
    for i in range(5, 10):
        roll.on_base(m(i, 10, 11, 10, 11, 1.0, 1))
    roll.on_base(m(10, 11, 11, 11, 11, 1.0, 1, closed=False))
    roll.on_base(m(7, 10, 11, 5, 11, 1.0, 1))
    assert sink.final[-1] == ("5m", Candle(5 * M, 10, 11, 5, 11, 5.0, 5, True))
    assert not sink.stale and roll.corrections == 2


def test_correction_older_than_the_previous_bucket_is_reported_stale() -> None:
    sink = Sink()
    roll = sink.builder(["5m"])
    for i in range(15):
        roll.on_base(m(i, 10, 11, 9, 10, 1.0, 1))
    assert [c.open_time for _, c in sink.final] == [0, 5 * M, 10 * M]
    roll.on_base(m(3, 10, 50, 9, 10, 1.0, 1))  # bucket 0 is gone: the venue's candle is needed
    roll.on_base(m(4, 10, 60, 9, 10, 1.0, 1))  # same bucket: counted, not reported twice
    roll.on_base(m(3, 10, 70, 9, 10, 1.0, 1, closed=False))  # a forming update carries no news
    assert sink.stale == [("5m", 0)] and roll.stale_parts == 2
    assert len(sink.final) == 3 and roll.incomplete == 0


def test_hole_holds_the_derived_candle_until_repaired_or_dropped() -> None:
    sink = Sink()
    roll = sink.builder(["5m"])
    for p in BUCKET0[:2] + BUCKET0[3:]:  # minute 2 lost
        roll.on_base(p)
    assert not sink.final
    assert roll.open_candle("5m") == Candle(0, 10, 14, 8, 10, 1.75, 6, False)
    roll.on_base(BUCKET0[2])  # the repair arrives
    assert sink.final == [("5m", Candle(0, 10, 15, 8, 10, 3.75, 10, True))]
    for i in (5, 6, 8, 9, 10):  # minute 7 lost for good
        roll.on_base(m(i, 10, 11, 10, 11, 1.0, 1))
    assert len(sink.final) == 1 and not sink.stale
    roll.on_base(m(15, 11, 11, 11, 11, 1.0, 1))  # bucket 5 is dropped without all its parts
    assert sink.stale == [("5m", 5 * M)] and roll.incomplete == 1


def test_forming_fold_flat_parts_and_corrections_in_the_current_bucket() -> None:
    sink = Sink()
    roll = sink.builder(["5m", "15m"])
    roll.on_base(flat(0, 7))
    roll.on_base(flat(1, 7))
    assert roll.open_candles() == []  # only flat parts so far: no forming candle, like CandleBuilder
    roll.on_base(m(2, 8, 9, 6, 8.5, 1.0, 2, closed=False))
    want = Candle(0, 8, 9, 6, 8.5, 1.0, 2, False)  # the first part with trades sets the open
    assert roll.open_candles() == [("5m", want), ("15m", want)]
    roll.on_base(m(2, 8, 9.5, 6, 9, 1.5, 3))
    roll.on_base(m(3, 9, 9, 9, 9, 0.5, 1, closed=False))
    roll.on_base(m(2, 8, 30, 6, 9, 9.0, 9, closed=False))  # a late forming update of a final part: ignored
    assert roll.open_candle("5m") == Candle(0, 8, 9.5, 6, 9, 2.0, 4, False)
    roll.on_base(m(1, 7, 7, 5, 7, 0.25, 1))  # a correction before the folded part: refold once
    assert roll.open_candle("15m") == Candle(0, 7, 9.5, 5, 9, 2.25, 5, False)
    roll.open_candles()
    assert roll.refolds == 2  # 5m and 15m, once each, not on every call
    roll.on_base(m(3, 9, 9, 9, 9, 0.5, 1))
    roll.on_base(flat(4, 9))
    assert sink.final == [("5m", Candle(0, 7, 9.5, 5, 9, 2.25, 5, True))]
    for i in range(5, 15):
        roll.on_base(flat(i, 9))
    assert sink.final[1:] == [
        ("5m", Candle(5 * M, 9, 9, 9, 9, 0.0, 0, True)),  # flat at the previous close
        ("5m", Candle(10 * M, 9, 9, 9, 9, 0.0, 0, True)),
        ("15m", Candle(0, 7, 9.5, 5, 9, 2.25, 5, True)),
    ]


def test_bad_timeframes_and_candles_are_refused() -> None:
    def sink(tf: str, c: Candle) -> None:
        pass

    with pytest.raises(ValueError, match="longer than the base"):
        RollupBuilder("5m", ["1m"], sink)
    with pytest.raises(ValueError, match="longer than the base"):
        RollupBuilder("1h", ["4h", "1h"], sink)
    with pytest.raises(ValueError, match="does not divide"):
        RollupBuilder("1m", ["90s"], sink)
    with pytest.raises(ValueError, match="does not divide"):
        RollupBuilder("2d", ["1w"], sink)  # 7 days are no whole number of 2-day candles
    with pytest.raises(ValueError, match="twice"):
        RollupBuilder("1m", ["5m", "5m"], sink)
    with pytest.raises(BadInput, match="unknown timeframe '7x'"):
        RollupBuilder("1m", ["7x"], sink)
    roll = RollupBuilder("1m", ["5m"], sink)
    with pytest.raises(ValueError, match="not aligned"):
        roll.on_base(Candle(30_000, 1, 1, 1, 1, 0.0, 0, True))


def test_history_without_trade_counts_rolls_up_every_parts_prices() -> None:
    """Parts with a count of 0 are flat placeholders by default; from a history that has none (it
    leaves out empty intervals) but no trade counts either (IB's quote bars, Coinbase), each part's
    prices count."""
    from deltafeed.candles.rollup import rollup

    parts = [
        Candle(0, 1.0, 1.5, 0.9, 1.2, 0.0, 0, True, True),
        Candle(H, 1.2, 2.0, 1.1, 1.3, 0.0, 0, True, True),
        Candle(2 * H, 1.3, 1.4, 0.5, 0.8, 0.0, 0, True, True),
    ]
    [priced] = rollup(parts, "1h", "4h", until_ms=4 * H, placeholders=False)
    assert (priced.open, priced.high, priced.low, priced.close, priced.closed, priced.final) == (
        1.0,
        2.0,
        0.5,
        0.8,
        True,
        True,
    )
    [flat] = rollup(parts, "1h", "4h", until_ms=4 * H)  # the default reads them as placeholders
    assert (flat.high, flat.low) == (1.5, 0.9)
