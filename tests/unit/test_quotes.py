"""Quote candles by the one mechanism the live engine and the backfill share: a QuoteRouter feeding one
CandleBuilder per price side. BID/ASK/MID candles against the Decimal reference over a weekend, breaks in
the stream, refused and out-of-order quotes, late quotes, seeds, holidays, any subset of sides."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest

from deltafeed.backfill import plan_backfill
from deltafeed.candles.aggregator import CandleBuilder, ClosedSink, RepairSink
from deltafeed.candles.calendar import FxCalendar
from deltafeed.candles.quotes import QuoteRouter, QuoteSide
from deltafeed.model import BadInput, Candle, Instrument, Trade, time_ms
from reference import QUOTE_TAPE_COLUMNS, quote_candles_from_tape, read_quote_tape

MIN = 60_000
HOUR = 3_600_000
# The last EST Friday close and the first EDT Sunday open of 2026, in UTC, written out by hand.
FRI_CLOSE = time_ms("2026-03-06T22:00")
SUN_OPEN = time_ms("2026-03-08T21:00")
TFS = {"1m": MIN, "5m": 5 * MIN, "1h": HOUR}
EUR_USD = Instrument.parse("oanda:EUR_USD")


class Side:
    """One price side as the router feeds it (a QuoteSide, like deltafeed.series.Series)."""

    def __init__(self, price: str, builder: CandleBuilder) -> None:
        self.instrument = EUR_USD
        self.price = price
        self.active = True
        self.builder = builder
        self.trades = 0
        self.last_trade_ms = 0

    def on_trade(self, trade: Trade) -> None:
        self.builder.on_trade(trade)
        self.trades += 1
        self.last_trade_ms = trade.time_ms

    def on_quote(self, seq: int, time_ms: int, bid: float, ask: float) -> None:
        """Raw quotes are the engine's tick recorder's business; not kept here."""


class Fx:
    """A QuoteRouter over EUR_USD's price sides, one CandleBuilder each; records what every side closes
    (upserted, like the stores) and reports for repair. ``hold_max=0`` as in the backfill: the quote
    after a break is applied at once, where the live engine releases it on its next tick."""

    def __init__(
        self,
        tfs: list[str],
        sides: Sequence[str] = ("mid", "bid", "ask"),
        calendar: FxCalendar | None = None,
        hold_max: int = 0,
    ) -> None:
        self.router = QuoteRouter()
        self.closed: dict[tuple[str, str], dict[int, Candle]] = {}
        self.repairs: dict[str, list[tuple[str, int, int]]] = {s: [] for s in sides}
        self.sides: dict[str, Side] = {}
        for price in sides:
            builder = CandleBuilder(
                tfs, self._closed_sink(price), self._repair_sink(price), hold_max=hold_max, calendar=calendar
            )
            st: QuoteSide = self.sides.setdefault(price, Side(price, builder))  # Side is a QuoteSide
            self.router.add(st)

    def _closed_sink(self, price: str) -> ClosedSink:
        def closed(tf: str, c: Candle) -> None:
            self.closed.setdefault((price, tf), {})[c.open_time] = c

        return closed

    def _repair_sink(self, price: str) -> RepairSink:
        def repair(tf: str, first: int, last: int) -> None:
            self.repairs[price].append((tf, first, last))

        return repair

    def quote(self, t: int, bid: float, ask: float) -> bool:
        return self.router.quote("EUR_USD", t, bid, ask)

    def advance(self, now_ms: int) -> None:
        for st in self.sides.values():
            st.builder.advance(now_ms)

    def builder(self, side: str) -> CandleBuilder:
        return self.sides[side].builder

    def open_candle(self, side: str, tf: str) -> Candle | None:
        return self.builder(side).open_candle(tf)


def price(units: int) -> str:
    """A price in 1e-5 units as the tape writes it: 108012 -> 1.08012."""
    return str(Decimal(units).scaleb(-5))


class Tape:
    """A seeded quote sequence over the weekend of the US spring switch: Friday afternoon up to a last
    quote at 21:56:30 UTC, nothing while closed, Sunday from 21:00:07.5 UTC. Quiet minutes, repeated
    timestamps, and bad and older quotes mixed in (counted, to check the router's counters)."""

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
    fx = Fx(list(TFS), calendar=cal)
    now = rows[0].time_ms
    for r in rows:
        while now + MIN < r.time_ms:  # the venue's clock ticks through quiet stretches and the weekend
            now += MIN
            fx.advance(now)
        fx.advance(r.time_ms)
        fx.quote(r.time_ms, float(r.bid), float(r.ask))
    until = rows[-1].time_ms + 2 * HOUR
    fx.advance(until)
    assert fx.router.refused == tape.refused > 0 and fx.router.out_of_order == tape.older > 0
    first = rows[0].time_ms
    for side, st in fx.sides.items():
        assert st.trades == len(rows) - tape.refused - tape.older, side
        assert st.builder.late_trades == 0 and st.builder.gaps == 0 and st.builder.held == 0, side
        # Start-up: the first quote's candles (and only those) are reported, their start was not seen.
        assert fx.repairs[side] == [(tf, first - first % ms, first - first % ms) for tf, ms in TFS.items()], side

    for tf, ms in TFS.items():
        for side in ("mid", "bid", "ask"):
            got = fx.closed[(side, tf)]
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
    mid_1m = fx.closed[("mid", "1m")]
    assert mid_1m[FRI_CLOSE - MIN].trades == 0 and FRI_CLOSE not in mid_1m
    assert max(t for t in mid_1m if t < SUN_OPEN) == FRI_CLOSE - MIN


def test_without_the_fx_calendar_the_weekend_fills_with_flat_candles() -> None:
    """The control for the test above: the crypto default makes flats over the weekend."""
    fx = Fx(["1h"], ("mid",))
    fx.quote(FRI_CLOSE - 30 * MIN, 1.0, 1.5)
    fx.advance(SUN_OPEN)
    assert len([t for t in fx.closed[("mid", "1h")] if FRI_CLOSE <= t < SUN_OPEN]) == 47


def test_gap_is_reported_by_every_side_and_makes_no_flats_across_it() -> None:
    fx = Fx(["1m", "5m"])
    assert fx.quote(60_500, 1.0, 1.5) and fx.quote(61_000, 1.125, 1.375)
    for side in ("mid", "bid", "ask"):
        assert fx.repairs[side] == [("1m", 60_000, 60_000), ("5m", 0, 0)], side
    fx.router.gap()
    fx.router.gap()  # one break, however often it is said (two ids skipped: one hole)
    assert fx.quote(430_000, 1.25, 1.75)
    for side in ("mid", "bid", "ask"):
        # Each side's builder reports the break for its own series: the same ranges, once per side.
        assert fx.repairs[side][2:] == [("1m", 60_000, 420_000), ("5m", 0, 300_000)], side
        assert fx.builder(side).gaps == 1 and fx.builder(side).missed_trades == 2
        assert sorted(fx.closed[(side, "1m")]) == [60_000] and sorted(fx.closed[(side, "5m")]) == [0]
    fx.advance(600_000)  # a quiet market again: flats after the new quote, none 120_000 .. 360_000
    assert sorted(fx.closed[("bid", "1m")]) == [60_000, 420_000, 480_000, 540_000]
    assert fx.closed[("ask", "1m")][540_000].row() == (540_000, 1.75, 1.75, 1.75, 1.75, 0.0, 0)
    assert fx.closed[("mid", "1m")][420_000].row() == (420_000, 1.5, 1.5, 1.5, 1.5, 1.0, 1)


def test_flats_made_before_a_break_shows_lie_inside_its_repair() -> None:
    """A builder learns of a break from the quote after it, so the clock ticking through the silence
    still makes flat candles; the next quote reports them all for repair (the backfill, which has no
    repair, does not write a flat candle that follows a missing hour before any quote does)."""
    fx = Fx(["1m"], ("mid", "ask"))
    fx.quote(60_500, 1.0, 1.5)
    fx.router.gap()
    fx.advance(400_000)
    assert sorted(fx.closed[("ask", "1m")]) == [60_000, 120_000, 180_000, 240_000, 300_000]
    fx.quote(430_000, 1.25, 1.75)
    for side in ("mid", "ask"):
        assert fx.repairs[side] == [("1m", 60_000, 60_000), ("1m", 60_000, 420_000)], side
        assert sorted(fx.closed[(side, "1m")]) == [60_000, 120_000, 180_000, 240_000, 300_000]  # none after


def test_live_builders_hold_the_quote_after_a_break_until_the_tick_releases_it() -> None:
    """The engine's configuration (trades after a hole held for a tick): nothing moves until released."""
    fx = Fx(["1m"], ("mid", "bid"), hold_max=256)
    fx.quote(60_500, 1.0, 1.5)
    fx.router.gap()
    assert fx.quote(61_000, 2.0, 2.5)
    assert [fx.builder(s).held for s in ("mid", "bid")] == [1, 1]
    assert fx.open_candle("bid", "1m") == Candle(60_000, 1.0, 1.0, 1.0, 1.0, 1.0, 1, False)
    for side in ("mid", "bid"):
        fx.builder(side).release_held()  # what the engine's tick does a tick later
        assert fx.repairs[side] == [("1m", 60_000, 60_000)] * 2
    assert fx.open_candle("bid", "1m") == Candle(60_000, 1.0, 2.0, 1.0, 2.0, 2.0, 2, False)


def test_gap_inside_the_open_candle_keeps_it_and_reports_it() -> None:
    fx = Fx(["1m"], ("mid",))
    fx.quote(60_500, 1.0, 1.5)
    fx.router.gap()
    fx.quote(61_000, 2.0, 2.5)
    assert fx.repairs["mid"] == [("1m", 60_000, 60_000)] * 2
    assert fx.open_candle("mid", "1m") == Candle(60_000, 1.25, 2.25, 1.25, 2.25, 2.0, 2, False)


def test_refused_and_out_of_order_quotes_change_nothing() -> None:
    fx = Fx(["1m"])
    for bid, ask in ((1.1, 1.0), (0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.nan, 1.0), (1.0, math.inf)):
        assert fx.quote(1_000, bid, ask) is False
    assert fx.router.refused == 6 and all(st.trades == 0 for st in fx.sides.values())
    assert fx.router.quote("USD_JPY", 1_000, 1.0, 1.0) is False  # not routed here: not counted either
    assert fx.router.refused == 6
    assert all(st.builder.open_candles() == [] for st in fx.sides.values())
    assert fx.repairs == {"mid": [], "bid": [], "ask": []}
    fx.advance(10 * MIN)
    assert fx.closed == {}
    assert fx.quote(2_000, 1.0, 1.0)  # a locked market (bid == ask) is possible
    assert fx.quote(1_999, 5.0, 5.0) is False and fx.router.out_of_order == 1
    assert fx.quote(2_000, 2.0, 2.5)  # the same millisecond again is not older
    assert fx.open_candle("mid", "1m") == Candle(0, 1.0, 2.25, 1.0, 2.25, 2.0, 2, False)
    assert fx.open_candle("bid", "1m") == Candle(0, 1.0, 2.0, 1.0, 2.0, 2.0, 2, False)
    assert fx.open_candle("ask", "1m") == Candle(0, 1.0, 2.5, 1.0, 2.5, 2.0, 2, False)
    assert fx.quote(3_000, 0.5, 0.4) is False  # refused: does not move the clock
    assert fx.quote(2_500, 1.5, 1.5)
    assert fx.router.refused == 7 and fx.router.out_of_order == 1
    assert all(st.trades == 3 and st.last_trade_ms == 2_500 for st in fx.sides.values())


def test_late_quote_for_a_candle_the_timer_closed_is_repaired() -> None:
    fx = Fx(["1m", "5m"], ("mid",))
    fx.quote(60_500, 1.0, 1.0)
    fx.advance(120_000)
    assert 60_000 in fx.closed[("mid", "1m")]
    fx.quote(119_000, 2.0, 2.0)  # newer than the last quote, older than the timer
    assert fx.builder("mid").late_trades == 1 and fx.repairs["mid"][-1] == ("1m", 60_000, 60_000)
    assert fx.closed[("mid", "1m")][60_000].trades == 1  # final here; the venue's record replaces it
    assert fx.open_candle("mid", "5m") == Candle(0, 1.0, 2.0, 1.0, 2.0, 2.0, 2, False)


def test_first_quote_repairs_each_side_from_its_own_seed() -> None:
    fx = Fx(["1m"], ("mid", "bid"))
    fx.builder("mid").seed("1m", Candle(120_000, 1.0, 1.0, 1.0, 1.0, 3.0, 3, True))
    fx.builder("bid").seed("1m", Candle(0, 1.0, 1.0, 1.0, 1.0, 3.0, 3, True))
    fx.builder("bid").seed("1m", Candle(60_000, 1.0, 1.0, 1.0, 1.0, 3.0, 3, True))  # the later one wins
    fx.advance(600_000)
    assert fx.closed == {}  # no quote yet: quiet or disconnected, nobody knows
    fx.quote(300_500, 1.0, 1.5)
    # Each side's series is repaired from after its own last stored candle.
    assert fx.repairs == {"mid": [("1m", 180_000, 300_000)], "bid": [("1m", 120_000, 300_000)]}
    assert fx.closed == {}  # and no flats from the seeds


def test_any_subset_of_sides_works_and_an_inactive_side_gets_nothing() -> None:
    fx = Fx(["5m", "1m"], ("ask", "bid"))
    assert fx.builder("bid").timeframes == ["1m", "5m"]
    fx.quote(1_000, 1.0, 1.5)
    assert [(s, tf, c.close) for s in fx.sides for tf, c in fx.builder(s).open_candles()] == [
        ("ask", "1m", 1.5),
        ("ask", "5m", 1.5),
        ("bid", "1m", 1.0),
        ("bid", "5m", 1.0),
    ]
    one = Fx(["1m"], ("ask",))
    one.quote(1_000, 1.0, 1.5)
    assert one.builder("ask").open_candles() == [("1m", Candle(0, 1.5, 1.5, 1.5, 1.5, 1.0, 1, False))]
    fx.sides["bid"].active = False  # the engine's POST /streaming/stop
    fx.quote(2_000, 0.5, 2.0)
    assert fx.open_candle("bid", "1m") == Candle(0, 1.0, 1.0, 1.0, 1.0, 1.0, 1, False)
    assert fx.open_candle("ask", "1m") == Candle(0, 1.5, 2.0, 1.5, 2.0, 2.0, 2, False)
    assert (fx.sides["bid"].trades, fx.sides["ask"].trades) == (1, 2)
    # Sides are checked and put in price order where a request names them (the backfill's plan).
    since, until = time_ms("2026-01-05T00:00"), time_ms("2026-01-05T01:00")
    assert plan_backfill("oanda:EUR_USD", since, until, prices="ask,bid").sides == ("bid", "ask")
    with pytest.raises(BadInput, match="unknown price 'last'"):
        plan_backfill("oanda:EUR_USD", since, until, prices="mid,last")
    with pytest.raises(BadInput, match="no prices given"):
        plan_backfill("oanda:EUR_USD", since, until, prices="")
    with pytest.raises(BadInput, match="unknown timeframe"):
        plan_backfill("oanda:EUR_USD", since, until, timeframes="1m,7x")


def test_flats_stop_at_a_midweek_holiday_and_resume_after_a_quote() -> None:
    cal = FxCalendar(["2026-07-15"])  # a Wednesday: closed 04:00 to 04:00 UTC next day (EDT)
    start, end = time_ms("2026-07-15T04:00"), time_ms("2026-07-16T04:00")
    fx = Fx(["1h"], ("mid",), cal)
    fx.quote(start - 90 * MIN, 1.0, 1.0)  # 02:30
    fx.advance(end + 3 * HOUR)
    assert sorted(fx.closed[("mid", "1h")]) == [start - 2 * HOUR, start - HOUR]  # 02:00 quotes, 03:00 flat
    fx.quote(end + 3 * HOUR + 10, 2.0, 2.0)
    fx.advance(end + 6 * HOUR)
    assert sorted(fx.closed[("mid", "1h")])[2:] == [end + 3 * HOUR, end + 4 * HOUR, end + 5 * HOUR]


def test_quote_candle_straddling_the_close_is_made_only_with_quotes() -> None:
    close = time_ms("2026-03-13T21:00")  # the first EDT Friday: inside the 20:00-24:00 4h candle
    fx = Fx(["4h"], ("bid",), FxCalendar())
    fx.quote(time_ms("2026-03-13T15:30"), 1.0, 1.5)
    fx.advance(close + 3 * 86_400_000)
    assert sorted(fx.closed[("bid", "4h")]) == [time_ms("2026-03-13T12:00"), time_ms("2026-03-13T16:00")]
