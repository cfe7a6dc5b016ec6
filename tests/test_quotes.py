"""QuoteCandleBuilder: BID/ASK/MID candles from quotes against the Decimal reference over a weekend,
breaks in the stream, refused and out-of-order quotes, late quotes, seeds."""

from __future__ import annotations

import math
import random
from decimal import Decimal
from pathlib import Path

import pytest

from deltafeed.candles.calendar import FxCalendar
from deltafeed.candles.quotes import QuoteCandleBuilder
from deltafeed.model import BadInput, Candle, Quote, time_ms
from reference import QUOTE_TAPE_COLUMNS, quote_candles_from_tape, read_quote_tape

MIN = 60_000
HOUR = 3_600_000
# The last EST Friday close and the first EDT Sunday open of 2026, in UTC, written out by hand.
FRI_CLOSE = time_ms("2026-03-06T22:00")
SUN_OPEN = time_ms("2026-03-08T21:00")
TFS = {"1m": MIN, "5m": 5 * MIN, "1h": HOUR}


class Recorder:
    def __init__(self) -> None:
        self.closed: dict[tuple[str, str], dict[int, Candle]] = {}
        self.repairs: list[tuple[str, int, int]] = []

    def on_closed(self, side: str, tf: str, c: Candle) -> None:
        self.closed.setdefault((side, tf), {})[c.open_time] = c  # upsert, like the stores

    def on_repair(self, tf: str, first: int, last: int) -> None:
        self.repairs.append((tf, first, last))


def make(tfs: list[str], sides: tuple[str, ...] = ("mid", "bid", "ask"),
         calendar: FxCalendar | None = None) -> tuple[QuoteCandleBuilder, Recorder]:
    r = Recorder()
    return QuoteCandleBuilder(tfs, sides, r.on_closed, r.on_repair, calendar), r


def q(t: int, bid: float, ask: float) -> Quote:
    return Quote("EUR_USD", t, bid, ask)


def price(units: int) -> str:
    """A price in 1e-5 units as the tape writes it: 108012 -> 1.08012."""
    return str(Decimal(units).scaleb(-5))


class Tape:
    """A seeded quote sequence over the weekend of the US spring switch: Friday afternoon up to a last
    quote at 21:56:30 UTC, nothing while closed, Sunday from 21:00:07.5 UTC. Quiet minutes, repeated
    timestamps, and bad and older quotes mixed in (counted, to check the builder's counters)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.rows: list[tuple[int, str, str]] = []
        self.refused = 0
        self.older = 0
        self._px = 108_000  # in 1e-5
        self.session(time_ms("2026-03-06T19:00"), time_ms("2026-03-06T21:56"))
        self.quote(time_ms("2026-03-06T21:56:30"))
        self.first_sunday = SUN_OPEN + 7_500
        self.quote(self.first_sunday)
        self.session(self.first_sunday, time_ms("2026-03-08T23:30"))

    def session(self, start: int, end: int) -> None:
        rng = self.rng
        t = start
        while True:
            t += int(rng.expovariate(1 / 2500))
            if rng.random() < 0.004:
                t += rng.randrange(3, 15) * MIN  # a quiet stretch: flat candles
            if t >= end:
                return
            self.quote(t)
            if rng.random() < 0.02:
                self.quote(t)  # same millisecond: accepted
            if rng.random() < 0.01:
                self.older += 1
                self.rows.append((t - rng.randint(1, 4000), price(self._px), price(self._px + 1)))
            if rng.random() < 0.01:
                self.refused += 1
                bid, ask = rng.choice([(0, self._px), (-self._px, self._px), (self._px, 0), (self._px + 5, self._px)])
                self.rows.append((t + 1, price(bid), price(ask)))  # newer, yet refused: must not move the clock

    def quote(self, t: int) -> None:
        self._px += self.rng.randint(-4, 4)
        self.rows.append((t, price(self._px), price(self._px + self.rng.randint(0, 3))))

    def write(self, path: Path) -> Path:
        with open(path, "w", encoding="ascii") as f:
            f.write(",".join(QUOTE_TAPE_COLUMNS) + "\n")
            for t, bid, ask in self.rows:
                f.write(f"EUR_USD,{t},{bid},{ask}\n")
        return path


def test_quote_candles_equal_the_reference_across_a_weekend(tmp_path: Path) -> None:
    tape = Tape(seed=7)
    rows = read_quote_tape(tape.write(tmp_path / "quotes.csv"))
    cal = FxCalendar()
    builder, rec = make(list(TFS), calendar=cal)
    now = rows[0].time_ms
    for r in rows:
        while now + MIN < r.time_ms:  # the venue's clock ticks through quiet stretches and the weekend
            now += MIN
            builder.advance(now)
        builder.advance(r.time_ms)
        builder.on_quote(q(r.time_ms, float(r.bid), float(r.ask)))
    until = rows[-1].time_ms + 2 * HOUR
    builder.advance(until)
    assert builder.refused == tape.refused > 0 and builder.out_of_order == tape.older > 0
    assert builder.quotes == len(rows) - tape.refused - tape.older
    assert builder.late == 0 and builder.gaps == 0
    # Start-up: the first quote's candles (and only those) are reported, their start was not seen.
    first = rows[0].time_ms
    assert rec.repairs == [(tf, first - first % ms, first - first % ms) for tf, ms in TFS.items()]

    for tf, ms in TFS.items():
        for side in ("mid", "bid", "ask"):
            got = rec.closed[(side, tf)]
            want = quote_candles_from_tape(rows, ms, side, cal, until_ms=until)
            assert sorted(got) == [c.open_time for c in want], (side, tf)
            for w in want:
                g = got[w.open_time]
                assert g.closed and (g.volume, g.trades) == (float(w.trades), w.trades), (side, tf, w)
                for name in ("open", "high", "low", "close"):
                    a, b = getattr(g, name), getattr(w, name)
                    # mid is (bid + ask) / 2 in float: within one unit in the last place of the exact one
                    assert a == b if side != "mid" else abs(a - b) <= math.ulp(b), (side, tf, name, w)
            # Nothing while the market is closed; the week's first candle starts at the first quote.
            assert not [t for t in got if FRI_CLOSE <= t < SUN_OPEN], (side, tf)
            after = min(t for t in got if t >= FRI_CLOSE)
            assert after == tape.first_sunday - tape.first_sunday % ms and got[after].trades > 0
            r = next(r for r in rows if r.time_ms == tape.first_sunday)
            first_px = float({"bid": r.bid, "ask": r.ask, "mid": (r.bid + r.ask) / 2}[side])
            assert got[after].open == pytest.approx(first_px, rel=1e-15)
    # A flat candle may end exactly at the close (21:59 after the last quote at 21:56:30), not later.
    mid_1m = rec.closed[("mid", "1m")]
    assert mid_1m[FRI_CLOSE - MIN].trades == 0 and FRI_CLOSE not in mid_1m
    assert max(t for t in mid_1m if t < SUN_OPEN) == FRI_CLOSE - MIN


def test_without_the_fx_calendar_the_weekend_fills_with_flat_candles() -> None:
    """The control for the test above: the crypto default makes flats over the weekend."""
    builder, rec = make(["1h"], ("mid",))
    builder.on_quote(q(FRI_CLOSE - 30 * MIN, 1.0, 1.5))
    builder.advance(SUN_OPEN)
    assert len([t for t in rec.closed[("mid", "1h")] if FRI_CLOSE <= t < SUN_OPEN]) == 47


def test_gap_reports_once_for_every_side_and_makes_no_flats_across_it() -> None:
    builder, rec = make(["1m", "5m"])
    assert builder.on_quote(q(60_500, 1.0, 1.5)) and builder.on_quote(q(61_000, 1.125, 1.375))
    assert rec.repairs == [("1m", 60_000, 60_000), ("5m", 0, 0)]
    builder.gap()
    builder.gap()  # one break, however often it is said
    assert builder.gaps == 1
    builder.advance(400_000)  # the candles that had quotes close; nothing is made after them
    assert {k: sorted(v) for k, v in rec.closed.items()} == {
        (s, tf): [0 if tf == "5m" else 60_000] for s in ("mid", "bid", "ask") for tf in ("1m", "5m")}
    builder.on_quote(q(430_000, 1.25, 1.75))
    assert rec.repairs[2:] == [("1m", 60_000, 420_000), ("5m", 0, 300_000)]
    assert sorted(rec.closed[("bid", "1m")]) == [60_000]  # no flats 120_000 .. 360_000
    builder.advance(600_000)  # a quiet market again: flats after the new quote
    assert sorted(rec.closed[("bid", "1m")]) == [60_000, 420_000, 480_000, 540_000]
    assert rec.closed[("ask", "1m")][540_000].row() == (540_000, 1.75, 1.75, 1.75, 1.75, 0.0, 0)
    assert rec.closed[("mid", "1m")][420_000].row() == (420_000, 1.5, 1.5, 1.5, 1.5, 1.0, 1)


def test_gap_inside_the_open_candle_keeps_it_and_reports_it() -> None:
    builder, rec = make(["1m"], ("mid",))
    builder.on_quote(q(60_500, 1.0, 1.5))
    builder.gap()
    builder.on_quote(q(61_000, 2.0, 2.5))
    assert rec.repairs == [("1m", 60_000, 60_000)] * 2
    assert builder.open_candle("mid", "1m") == Candle(60_000, 1.25, 2.25, 1.25, 2.25, 2.0, 2, False)


def test_refused_and_out_of_order_quotes_change_nothing() -> None:
    builder, rec = make(["1m"])
    for bid, ask in ((1.1, 1.0), (0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, math.inf)):
        assert builder.on_quote(q(1_000, bid, ask)) is False
    assert builder.refused == 6 and builder.quotes == 0
    assert builder.open_candles() == [] and rec.repairs == []
    builder.advance(10 * MIN)
    assert rec.closed == {}
    assert builder.on_quote(q(2_000, 1.0, 1.0))  # a locked market (bid == ask) is possible
    assert builder.on_quote(q(1_999, 5.0, 5.0)) is False and builder.out_of_order == 1
    assert builder.on_quote(q(2_000, 2.0, 2.5))  # the same millisecond again is not older
    assert builder.open_candle("mid", "1m") == Candle(0, 1.0, 2.25, 1.0, 2.25, 2.0, 2, False)
    assert builder.open_candle("bid", "1m") == Candle(0, 1.0, 2.0, 1.0, 2.0, 2.0, 2, False)
    assert builder.open_candle("ask", "1m") == Candle(0, 1.0, 2.5, 1.0, 2.5, 2.0, 2, False)
    assert builder.on_quote(q(3_000, 0.5, 0.4)) is False  # refused: does not move the clock
    assert builder.on_quote(q(2_500, 1.5, 1.5))
    assert builder.quotes == 3 and builder.refused == 7 and builder.out_of_order == 1


def test_late_quote_for_a_candle_the_timer_closed_is_repaired() -> None:
    builder, rec = make(["1m", "5m"], ("mid",))
    builder.on_quote(q(60_500, 1.0, 1.0))
    builder.advance(120_000)
    assert 60_000 in rec.closed[("mid", "1m")]
    builder.on_quote(q(119_000, 2.0, 2.0))  # newer than the last quote, older than the timer
    assert builder.late == 1 and rec.repairs[-1] == ("1m", 60_000, 60_000)
    assert rec.closed[("mid", "1m")][60_000].trades == 1  # final here; the venue's record replaces it
    assert builder.open_candle("mid", "5m") == Candle(0, 1.0, 2.0, 1.0, 2.0, 2.0, 2, False)


def test_first_quote_repairs_from_the_earliest_seeded_side() -> None:
    builder, rec = make(["1m"], ("mid", "bid"))
    builder.seed("mid", "1m", Candle(120_000, 1.0, 1.0, 1.0, 1.0, 3.0, 3, True))
    builder.seed("bid", "1m", Candle(0, 1.0, 1.0, 1.0, 1.0, 3.0, 3, True))
    builder.seed("bid", "1m", Candle(60_000, 1.0, 1.0, 1.0, 1.0, 3.0, 3, True))  # later wins per side
    builder.advance(600_000)
    assert rec.closed == {}  # no quote yet: quiet or disconnected, nobody knows
    builder.on_quote(q(300_500, 1.0, 1.5))
    assert rec.repairs == [("1m", 120_000, 300_000)]
    assert rec.closed == {}  # and no flats from the seeds


def test_sides_are_kept_in_price_order_and_any_subset_works() -> None:
    builder, _ = make(["5m", "1m"], ("ask", "bid"))
    assert builder.sides == ("bid", "ask") and builder.timeframes == ["1m", "5m"]
    builder.on_quote(q(1_000, 1.0, 1.5))
    assert [(s, tf, c.close) for s, tf, c in builder.open_candles()] == [
        ("bid", "1m", 1.0), ("ask", "1m", 1.5), ("bid", "5m", 1.0), ("ask", "5m", 1.5)]
    one, _ = make(["1m"], ("ask",))
    one.on_quote(q(1_000, 1.0, 1.5))
    assert one.open_candles() == [("ask", "1m", Candle(0, 1.5, 1.5, 1.5, 1.5, 1.0, 1, False))]
    with pytest.raises(BadInput, match="price sides"):
        make(["1m"], ("last",))
    with pytest.raises(BadInput, match="price sides"):
        make(["1m"], ())
    with pytest.raises(BadInput, match="unknown timeframe"):
        make(["1w"])


def test_flats_stop_at_a_midweek_holiday_and_resume_after_a_quote() -> None:
    cal = FxCalendar(["2026-07-15"])  # a Wednesday: closed 04:00 to 04:00 UTC next day (EDT)
    start, end = time_ms("2026-07-15T04:00"), time_ms("2026-07-16T04:00")
    builder, rec = make(["1h"], ("mid",), cal)
    builder.on_quote(q(start - 90 * MIN, 1.0, 1.0))  # 02:30
    builder.advance(end + 3 * HOUR)
    assert sorted(rec.closed[("mid", "1h")]) == [start - 2 * HOUR, start - HOUR]  # 02:00 quotes, 03:00 flat
    builder.on_quote(q(end + 3 * HOUR + 10, 2.0, 2.0))
    builder.advance(end + 6 * HOUR)
    assert sorted(rec.closed[("mid", "1h")])[2:] == [end + 3 * HOUR, end + 4 * HOUR, end + 5 * HOUR]


def test_quote_candle_straddling_the_close_is_made_only_with_quotes() -> None:
    close = time_ms("2026-03-13T21:00")  # the first EDT Friday: inside the 20:00-24:00 4h candle
    builder, rec = make(["4h"], ("bid",), FxCalendar())
    builder.on_quote(q(time_ms("2026-03-13T15:30"), 1.0, 1.5))
    builder.advance(close + 3 * 86_400_000)
    assert sorted(rec.closed[("bid", "4h")]) == [time_ms("2026-03-13T12:00"), time_ms("2026-03-13T16:00")]
