"""Timeframes of any size: parsing, the grids of weeks and months, what divides what, and the
builders, rollups, gap finding and retention on those grids (checked against tests/reference.py's
datetime-based grid, never against deltafeed's own arithmetic)."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from decimal import Decimal

import pytest

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.rollup import RollupBuilder, rollup
from deltafeed.model import TIMEFRAMES, BadInput, Candle, Trade, parse_timeframes, set_week_start, timeframe
from deltafeed.store.base import gaps_from_rows
from deltafeed.store.postgres.schema import table_suffix, timeframe_of_table
from deltafeed.store.retention import DEFAULT_RETENTION_MS, default_retention, parse_retention
from reference import TapeRow, candles_from_tape, next_open, open_of

DAY = 86_400_000


def ms(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=dt.UTC).timestamp() * 1000)  # type: ignore[misc]


@pytest.fixture
def week_start() -> Iterator[None]:
    """Tests that move the week grid put it back."""
    yield
    set_week_start("mon 00:00")


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical", "length"),
    [
        ("30s", "30s", 30_000),
        ("45s", "45s", 45_000),
        ("3m", "3m", 180_000),
        ("30m", "30m", 1_800_000),
        ("2h", "2h", 7_200_000),
        ("12h", "12h", 43_200_000),
        ("3d", "3d", 3 * DAY),
        ("1w", "1w", 7 * DAY),
        ("60s", "1m", 60_000),
        ("90s", "90s", 90_000),
        ("120m", "2h", 7_200_000),
        ("24h", "1d", DAY),
        ("3600s", "1h", 3_600_000),
    ],
)
def test_names_parse_to_one_canonical_name_and_length(name: str, canonical: str, length: int) -> None:
    tf = timeframe(name)
    assert (tf.name, tf.ms, tf.monthly) == (canonical, length, False)


def test_every_standard_timeframe_keeps_its_name_and_length() -> None:
    for name, length in TIMEFRAMES.items():
        assert (timeframe(name).name, timeframe(name).ms) == (name, length)


@pytest.mark.parametrize("bad", ["7x", "0s", "1.5m", "m", "1W", "2w", "2M", "1mo", "-1m", "", " ", "1 m", "01m"])
def test_bad_names_are_refused_with_the_accepted_forms(bad: str) -> None:
    with pytest.raises(BadInput) as info:
        timeframe(bad)
    msg = str(info.value)
    assert f"unknown timeframe {bad!r}" in msg and "Ns, Nm, Nh or Nd" in msg and "1w or 1M" in msg
    assert "\n" not in msg


def test_parse_timeframes_sorts_merges_aliases_and_keeps_the_month_last() -> None:
    assert parse_timeframes("1M,1w,45s,60s,1m,3m,2h") == ["45s", "1m", "3m", "2h", "1w", "1M"]
    with pytest.raises(BadInput, match="'7x'"):
        parse_timeframes("45s,7x")


# --- grids --------------------------------------------------------------------------------------------


def test_weeks_open_on_monday_midnight_utc_though_the_epoch_was_a_thursday() -> None:
    w = timeframe("1w")
    assert w.start(0) == ms(1969, 12, 29)  # the Monday before the epoch
    assert w.start(ms(2026, 6, 1)) == ms(2026, 6, 1)  # a Monday
    assert w.start(ms(2026, 6, 1) - 1) == ms(2026, 5, 25)
    assert w.start(ms(2026, 6, 7, 23, 59)) == ms(2026, 6, 1)  # Sunday night is the same week
    assert w.next(ms(2026, 6, 1)) == ms(2026, 6, 8) and w.prev(ms(2026, 6, 1)) == ms(2026, 5, 25)
    rnd = random.Random(1)
    for _ in range(2000):
        t = rnd.randrange(-5 * 365 * DAY, 80 * 365 * DAY)
        assert w.start(t) == open_of(t, "1w"), t
        assert w.end(t) == next_open(open_of(t, "1w"), "1w")


def test_months_open_on_the_first_and_have_their_own_lengths() -> None:
    m = timeframe("1M")
    assert m.monthly and m.name == "1M"
    assert m.start(ms(2024, 2, 29, 23, 59)) == ms(2024, 2, 1)
    assert m.next(ms(2024, 2, 1)) == ms(2024, 3, 1)  # a leap February: 29 days
    assert m.next(ms(2025, 2, 1)) - ms(2025, 2, 1) == 28 * DAY
    assert m.next(ms(2026, 12, 1)) == ms(2027, 1, 1)  # December to January
    assert m.prev(ms(2027, 1, 1)) == ms(2026, 12, 1)
    assert m.start(-1) == ms(1969, 12, 1) and m.ceil(ms(2026, 6, 1) + 1) == ms(2026, 7, 1)
    assert m.opens(ms(2026, 1, 15), ms(2026, 4, 1)) == [ms(2026, 1, 1), ms(2026, 2, 1), ms(2026, 3, 1), ms(2026, 4, 1)]
    rnd = random.Random(2)
    for _ in range(2000):
        t = rnd.randrange(-5 * 365 * DAY, 80 * 365 * DAY)
        assert m.start(t) == open_of(t, "1M"), t
        assert m.end(t) == next_open(open_of(t, "1M"), "1M")


def test_fixed_timeframes_are_epoch_aligned_whatever_their_length() -> None:
    rnd = random.Random(3)
    for name in ("30s", "45s", "7m", "90s", "2h", "5h", "3d"):
        tf = timeframe(name)
        for _ in range(200):
            t = rnd.randrange(0, 60 * 365 * DAY)
            assert tf.start(t) == open_of(t, tf.ms) and tf.next(tf.start(t)) == tf.start(t) + tf.ms


def test_the_week_start_is_settable_and_checked(week_start: None) -> None:
    assert set_week_start("sun 21:00") == 3 * DAY + 21 * 3_600_000  # 1970-01-04 was a Sunday
    w = timeframe("1w")
    assert w.start(ms(2026, 6, 1, 12)) == ms(2026, 5, 31, 21)  # FX's weekly open, Sunday 17:00 New York (EDT)
    assert w.next(ms(2026, 5, 31, 21)) == ms(2026, 6, 7, 21)
    assert timeframe("1d").divides(timeframe("1w")) is False  # a day does not divide a week from 21:00
    assert timeframe("1h").divides(timeframe("1w"))
    set_week_start("Monday 00:00")
    assert timeframe("1w").start(ms(2026, 6, 1, 12)) == ms(2026, 6, 1)
    for bad in ("someday 00:00", "mon 24:00", "mon", "mon 9"):
        with pytest.raises(BadInput, match="week_start"):
            set_week_start(bad)


def test_zoned_days_open_at_local_midnight_across_both_dst_changes() -> None:
    ny = timeframe("1d-new_york")
    assert (ny.name, ny.zone) == ("1d-new_york", "America/New_York") and not ny.fixed
    hour = 3_600_000
    # Spring forward (Sunday 2026-03-08): the day opens at 05:00Z (EST) and lasts 23 hours.
    spring = ms(2026, 3, 8, 5)
    assert ny.start(ms(2026, 3, 8, 12)) == spring and ny.start(ms(2026, 3, 9, 3, 59)) == spring
    assert ny.next(spring) == ms(2026, 3, 9, 4) and ny.next(spring) - spring == 23 * hour
    assert ny.prev(ms(2026, 3, 9, 4)) == spring and ny.prev(spring) == ms(2026, 3, 7, 5)
    # Fall back (Sunday 2026-11-01): the day opens at 04:00Z (EDT) and lasts 25 hours.
    fall = ms(2026, 11, 1, 4)
    assert ny.start(ms(2026, 11, 2, 4, 59)) == fall and ny.next(fall) == ms(2026, 11, 2, 5)
    assert ny.next(fall) - fall == 25 * hour and ny.shortest_ms == 23 * hour
    assert ny.opens(ms(2026, 3, 7, 12), ms(2026, 3, 9, 12)) == [ms(2026, 3, 7, 5), spring, ms(2026, 3, 9, 4)]
    assert ny.ceil(spring + 1) == ms(2026, 3, 9, 4) and ny.aligned(spring) and not ny.aligned(ms(2026, 3, 8))
    rnd = random.Random(5)
    for _ in range(3000):
        t = rnd.randrange(0, 70 * 365 * DAY)
        assert ny.start(t) == open_of(t, "1d-new_york"), t
        assert ny.end(t) == next_open(open_of(t, "1d-new_york"), "1d-new_york"), t
    assert timeframe("1d-london").zone == "Europe/London" and timeframe("1d-tokyo").next(ms(2026, 3, 7, 15)) == ms(
        2026, 3, 8, 15
    )
    with pytest.raises(BadInput, match="1d-new_york"):
        timeframe("1d-atlantis")
    # Its PostgreSQL table needs no quoting, and is recognised again.
    assert table_suffix("1d-new_york") == "1d_new_york" and timeframe_of_table("candles_1d_new_york") == "1d-new_york"
    assert timeframe_of_table("candles_1d_new_york_p1772946000000") is None  # a partition


def test_the_trade_builder_and_the_rollup_make_new_york_days_equal_to_the_reference() -> None:
    start = ms(2026, 3, 5, 9)  # a week across the spring change
    trades = _trades(start, start + 7 * DAY, 6, 1_200_000)
    out: list[Candle] = []
    b = CandleBuilder(["1h", "1d-new_york"], lambda name, c: out.append(c) if name == "1d-new_york" else None,
                      lambda *a: None)  # fmt: skip
    hours: list[Candle] = []
    hb = CandleBuilder(["1h"], lambda name, c: hours.append(c), lambda *a: None)
    for t in trades:
        b.on_trade(t)
        hb.on_trade(t)
    ref = candles_from_tape(_tape(trades), "1d-new_york")
    want = [(w.open_time, w.open, w.high, w.low, w.close, round(w.volume, 6), w.trades) for w in ref]
    assert [_row(c) for c in out] == want[:-1] and len(out) >= 6
    assert ms(2026, 3, 8, 5) in [c.open_time for c in out]  # the 23-hour day
    rolled = rollup(hours, "1h", "1d-new_york")
    assert [_row(c) for c in rolled[1:-1]] == want[1 : len(rolled) - 1]


@pytest.mark.parametrize(
    ("base", "target", "divides"),
    [
        ("15s", "45s", True),
        ("1m", "45s", False),
        ("45s", "1m", False),
        ("30s", "3m", True),
        ("1m", "3m", True),
        ("1h", "2h", True),
        ("2h", "12h", True),
        ("5h", "1d", False),
        ("1d", "1w", True),
        ("12h", "1w", True),
        ("2d", "1w", False),
        ("1w", "1M", False),
        ("1d", "1M", True),
        ("1h", "1M", True),
        ("7h", "1M", False),  # 7 h does not divide a day, so not every month either
        ("1M", "1M", True),
        ("1M", "1d", False),
        ("1h", "1d-new_york", True),  # New York is always a whole number of hours from UTC
        ("1m", "1d-new_york", True),
        ("3h", "1d-new_york", False),
        ("1d", "1d-new_york", False),
        ("1d-new_york", "1d", False),
        ("1d-new_york", "1d-new_york", True),
        ("1d-new_york", "1w", False),
        ("1d-new_york", "1M", False),
        ("30m", "1d-kolkata", True),  # India is 5:30 from UTC
        ("1h", "1d-kolkata", False),
    ],
)
def test_the_base_divides_the_target(base: str, target: str, divides: bool) -> None:
    assert timeframe(base).divides(timeframe(target)) is divides


# --- builders on the new grids ------------------------------------------------------------------------


def _trades(start: int, end: int, seed: int, every_ms: int) -> list[Trade]:
    rnd = random.Random(seed)
    out, t, p, tid = [], start, 100.0, 1
    while t < end:
        p = round(p * (1 + rnd.uniform(-0.002, 0.002)), 2)
        out.append(Trade("X", tid, t, p, round(rnd.uniform(0.001, 2.0), 3), False))
        tid += 1
        t += rnd.randrange(1, every_ms)
    return out


def _tape(trades: list[Trade]) -> list[TapeRow]:
    return [
        TapeRow("X", t.trade_id, t.time_ms, Decimal(str(t.price)), Decimal(str(t.qty)), False, "", "") for t in trades
    ]


def _row(c: Candle) -> tuple[int, float, float, float, float, float, int]:
    return (c.open_time, c.open, c.high, c.low, c.close, round(c.volume, 6), c.trades)


@pytest.mark.parametrize("tf", ["45s", "3m", "1w", "1M"])
def test_the_trade_builder_makes_candles_of_any_timeframe_equal_to_the_reference(tf: str) -> None:
    grid = timeframe(tf)
    span = 80 * DAY if grid.ms >= 7 * DAY else 3 * 3_600_000
    every = 3 * 3_600_000 if grid.ms >= 7 * DAY else 4_000
    start = ms(2025, 12, 20, 5)  # across a year's end, a leap-free February and a DST-free UTC
    trades = _trades(start, start + span, 4, every)
    out: list[Candle] = []
    b = CandleBuilder([tf], lambda name, c: out.append(c), lambda *a: None)
    for t in trades:
        b.on_trade(t)
    ref = candles_from_tape(_tape(trades), grid.name if grid.ms >= 7 * DAY else grid.ms)
    closed = [_row(c) for c in out]
    want = [(w.open_time, w.open, w.high, w.low, w.close, round(w.volume, 6), w.trades) for w in ref[: len(out)]]
    assert len(out) == len(ref) - 1 >= 3  # every candle but the forming one closed
    assert closed == want
    assert all(c.final for c in out[1:]) and not out[0].final  # the first follows start-up's hole
    forming = b.open_candle(tf)
    last = ref[-1]
    assert forming is not None and not forming.closed
    assert _row(forming) == (
        last.open_time,
        last.open,
        last.high,
        last.low,
        last.close,
        round(last.volume, 6),
        last.trades,
    )


def test_rollups_follow_the_grids_and_stay_provisional_until_every_part_is_final() -> None:
    start = ms(2026, 1, 26)  # a Monday, the last week of January
    days = [Candle(start + i * DAY, 10 + i, 12 + i, 9 + i, 11 + i, 1.0, 5, True, i != 9) for i in range(14)]
    got: list[tuple[str, Candle]] = []
    r = RollupBuilder("1d", ["1w", "1M"], lambda tf, c: got.append((tf, c)))
    for d in days:
        r.on_base(d)
    weeks = [c for tf, c in got if tf == "1w"]
    months = [c for tf, c in got if tf == "1M"]
    assert [c.open_time for c in weeks] == [ms(2026, 1, 26), ms(2026, 2, 2)]
    assert weeks[0].final and not weeks[1].final  # day 9 (Feb 4) is provisional
    assert weeks[1].trades == 35 and weeks[1].open == days[7].open and weeks[1].close == days[13].close
    # January's first days were never given: its month is never whole here, so it is not emitted
    # (the owner fetches it from the venue instead); February's is still forming.
    assert months == [] and r.open_candle("1M") is not None
    whole = RollupBuilder("1d", ["1M"], lambda tf, c: got.append((tf, c)))
    got.clear()
    feb = [Candle(ms(2026, 2, 1) + i * DAY, 1, 2, 0.5, 1.5, 1.0, 1, True, True) for i in range(29)]
    for d in feb:
        whole.on_base(d)
    assert [(tf, c.open_time, c.trades, c.final) for tf, c in got] == [("1M", ms(2026, 2, 1), 28, True)]
    assert whole.open_candle("1M") is not None  # March 1st's part opened March


def test_history_rollup_of_a_week_and_a_month_from_days() -> None:
    days = [Candle(ms(2026, 5, 25) + i * DAY, 1 + i, 3 + i, 0.5, 2 + i, 1.0, 2, True, True) for i in range(14)]
    weeks = rollup(days, "1d", "1w")
    assert [(c.open_time, c.closed, c.trades) for c in weeks] == [
        (ms(2026, 5, 25), True, 14),
        (ms(2026, 6, 1), True, 14),
    ]
    months = rollup(days, "1d", "1M")
    # May is whole (its last day is there, what came before had no candles); June is not over.
    assert [(c.open_time, c.closed) for c in months] == [(ms(2026, 5, 1), True), (ms(2026, 6, 1), False)]
    # A venue that leaves out empty intervals: June is closed once its end has passed.
    assert rollup(days, "1d", "1M", until_ms=ms(2026, 7, 1))[-1].closed
    with pytest.raises(ValueError, match="does not divide"):
        rollup(days, "2d", "1w")


def test_gaps_are_found_on_the_month_grid() -> None:
    m = timeframe("1M")
    jan, feb, mar, apr, may = (ms(2026, i, 1) for i in range(1, 6))
    rows = [(jan, True, None, feb), (feb, True, jan, mar), (may, True, mar, None)]
    assert gaps_from_rows(rows, m) == [(apr, apr)]
    assert gaps_from_rows([(mar, True, jan, None)], m) == [(feb, feb)]
    assert gaps_from_rows([(mar, True, feb, None)], m) == []


def test_retention_defaults_extend_by_length_and_overrides_take_any_name() -> None:
    assert {tf: default_retention(tf) for tf in TIMEFRAMES} == DEFAULT_RETENTION_MS
    assert default_retention("30s") == default_retention("45s") == DAY
    assert default_retention("3m") == 30 * DAY
    assert default_retention("30m") == 90 * DAY
    assert default_retention("2h") == default_retention("12h") == 365 * DAY
    assert default_retention("3d") is None and default_retention("1w") is None and default_retention("1M") is None
    r = parse_retention({"45s": "2d", "60s": "10d"}, timeframes=["45s", "3m", "1w"])
    assert r["45s"] == 2 * DAY and r["1m"] == 10 * DAY and r["3m"] == 30 * DAY and r["1w"] is None
    with pytest.raises(BadInput, match="shorter than one 1w candle"):
        parse_retention({"1w": "3d"})


def test_a_timeframe_a_venue_cannot_make_is_refused_before_anything_runs(tmp_path: object) -> None:
    from deltafeed.config import Settings
    from deltafeed.engine import Engine

    ok = Settings(symbols=["coinbase:BTC-USD"], timeframes=["3m", "1w", "1M"], db=f"{tmp_path}/x.duckdb").validate()
    assert Engine(ok).timeframes == ["3m", "1w", "1M"]  # rolled up from its 1m and 1d history
    bad = Settings(symbols=["coinbase:BTC-USD"], timeframes=["45s", "1m"], db=f"{tmp_path}/y.duckdb").validate()
    with pytest.raises(BadInput, match="coinbase has no history that makes 45s candles") as info:
        Engine(bad)
    assert "\n" not in str(info.value)


def test_rollups_take_what_the_base_divides_and_leave_the_rest_to_the_trades(tmp_path: object) -> None:
    from deltafeed.config import Settings
    from deltafeed.engine import Engine

    tfs = ["1s", "15s", "45s", "1m", "3m", "1d", "1w", "1M"]
    e = Engine(Settings(symbols=["BTCUSDT"], timeframes=tfs, rollup_from="15s", db=f"{tmp_path}/r.duckdb").validate())
    st = e.states["binance:BTCUSDT"]
    assert st.rollup is not None
    # 15s divides 45s, 1m, 3m and 1d (5 760 parts); a week (40 320) fits too; a month (178 560) does
    # not, and 1s is shorter than the base: those come from the trades.
    assert st.rollup.timeframes == ["45s", "1m", "3m", "1d", "1w"]
    assert st.builder.timeframes == ["1s", "15s", "1M"]


@pytest.mark.parametrize(("start", "weeks"), [("mon 00:00", 4), ("sun 21:00", 3)])
def test_fx_weeks_hold_one_trading_week_from_the_weekly_open(week_start: None, start: str, weeks: int) -> None:
    """Three FX trading weeks (Sunday 17:00 to Friday 17:00 New York), one trade an hour while the
    market is open: with weeks from Monday 00:00 UTC each Sunday evening's trades fall into the week
    before (four candles, the first and last made of Sunday evenings); from the weekly open, three
    candles, one per trading week, and nothing is made over a weekend."""
    from deltafeed.candles.calendar import calendar_for

    set_week_start(start)
    fx = calendar_for("fx")
    trades, tid, t = [], 1, ms(2026, 6, 7, 21)  # Sunday 17:00 EDT: the market opens
    while t < ms(2026, 6, 26, 21):  # Friday 17:00 EDT, three weeks on
        if fx.is_open(t):
            trades.append(Trade("EUR_USD", tid, t, 1.1 + tid * 1e-5, 1.0, False))
            tid += 1
        t += 3_600_000
    out: list[Candle] = []
    b = CandleBuilder(["1w"], lambda tf, c: out.append(c), lambda *a: None, calendar=fx)
    for tr in trades:
        b.on_trade(tr)
    b.advance(ms(2026, 6, 29))
    got = [*out, *([b.open_candle("1w")] if b.open_candle("1w") else [])]
    assert len(got) == weeks and sum(c.trades for c in got) == len(trades) == 3 * 120
    assert all(c.volume == c.trades for c in got) and all(c.trades for c in got)  # no flat weekend candle
    if start == "sun 21:00":
        assert [c.open_time for c in got] == [ms(2026, 6, 7, 21), ms(2026, 6, 14, 21), ms(2026, 6, 21, 21)]
        assert [c.trades for c in got] == [120, 120, 120]
    else:
        assert [c.trades for c in got] == [3, 120, 120, 117]  # Sunday 21:00-24:00 UTC goes to the week before
