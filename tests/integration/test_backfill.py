"""``deltafeed backfill``: candles built from a Dukascopy replica's tick files over real sockets, into a
real DuckDB file, checked against the independent reference builder fed with a tape of the same quotes.

The tape is written by QuoteTapeWriter from a QuoteSim of the replica's seed and rate, which is
what the replica encodes into its hour files (test_dukascopy checks that link byte for byte).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deltafeed.backfill import BackfillProgress, BackfillResult, SourceError, backfill
from deltafeed.candles.calendar import FxCalendar
from deltafeed.model import TIMEFRAMES, Candle, series_key
from deltafeed.replicas.quotes import QuoteSim, QuoteTapeWriter
from deltafeed.store.base import open_cold
from deltafeed.venues.dukascopy.replica import DukascopyReplica
from helpers import free_port, ms
from reference import RefCandle, quote_candles_from_tape, read_quote_tape

CLI = [sys.executable, "-m", "deltafeed"]
H = 3_600_000
SEED = 11
# 0.05 quotes a second: about 3 a minute, so one minute in twenty is empty and becomes a flat candle.
RATE = 0.05


# The replica's clock stands at Monday 2026-01-12 06:00 UTC (the 06:00 hour is not published yet);
# its market opened four days before, on Thursday.
START = ms("2026-01-12T06:00")
# The FX weekend in January (EST): Friday 17:00 to Sunday 17:00 New York = 22:00 to 22:00 UTC.
WEEKEND = (ms("2026-01-09T22:00"), ms("2026-01-11T22:00"))


def replica(**kw: Any) -> DukascopyReplica:
    return DukascopyReplica(["EURUSD"], seed=SEED, rate=RATE, start_ms=START, history_ms=4 * 86_400_000, **kw)


def tape(path: Path, since: int, until: int) -> list[Any]:
    """The quotes the replica serves for [since, until), through a tape and back as the reference reads it."""
    writer = QuoteTapeWriter(path)
    writer.write([QuoteSim(["EUR_USD"], seed=SEED, rate=RATE).batch("EUR_USD", since, until)])
    writer.close()
    return read_quote_tape(path)


def check_equal(stored: list[Candle], want: list[RefCandle], side: str, what: str) -> None:
    assert [c.open_time for c in stored] == [c.open_time for c in want], what
    for c, w in zip(stored, want, strict=True):
        assert c.closed, (what, c.open_time)
        assert (c.trades, c.volume) == (w.trades, w.volume), (what, c.open_time)
        got, exp = (c.open, c.high, c.low, c.close), (w.open, w.high, w.low, w.close)
        if side == "mid":  # (bid + ask) * 0.5 in floats against the exact decimal mid
            assert got == pytest.approx(exp, rel=1e-12), (what, c.open_time)
        else:  # a side's price is the file's integer over the scale: exactly the tape's decimal
            assert got == exp, (what, c.open_time)


async def test_backfill_across_a_weekend_equals_the_reference_and_is_idempotent(tmp_path: Path) -> None:
    since, until = ms("2026-01-09T15:00"), ms("2026-01-12T05:00")  # Friday afternoon to Monday morning
    db = str(tmp_path / "fx.duckdb")
    rows = tape(tmp_path / "quotes.csv", since, until)
    assert len(rows) > 1000
    seen: list[BackfillProgress] = []
    async with replica() as rep:
        # since/until off the hour: rounded down to 1h, the longest timeframe.
        first = await backfill(
            "oanda:EUR_USD",
            since + 17 * 60_000,
            until + 59 * 60_000,
            timeframes="1m,5m,1h",
            prices="mid,bid",
            db=db,
            url=rep.url,
            requests_per_s=1000,
            batch_rows=500,
            progress=seen.append,
        )
        second = await backfill(
            "oanda:EUR_USD",
            since,
            until,
            timeframes=["5m", "1h", "1m"],
            prices=["bid", "mid"],
            db=db,
            url=rep.url,
            requests_per_s=1000,
        )
    p = first.plan
    assert (p.since_ms, p.until_ms, p.timeframes, p.sides, p.symbol) == (
        since,
        until,
        ("1m", "5m", "1h"),
        ("mid", "bid"),
        "EURUSD",
    )
    assert first.hours == 62 and first.empty_hours == 48 and first.missing_hours == []
    assert first.quotes == len(rows) and first.skipped == 0
    assert seen[0] == BackfillProgress(0, 62, 0, 0)
    assert seen[-1] == BackfillProgress(62, 62, len(rows), first.candles_written)
    assert len([s for s in seen if s.candles_written != seen[0].candles_written]) > 3  # written in several batches

    calendar = FxCalendar()
    cold = await open_cold(db, read_only=True)
    try:
        stored_first: dict[tuple[str, str], list[Candle]] = {}
        for side in ("mid", "bid"):
            for tf in ("1m", "5m", "1h"):
                stored = await cold.query(series_key("oanda:EUR_USD", side), tf)
                want = quote_candles_from_tape(rows, TIMEFRAMES[tf], side, calendar, until_ms=until)
                check_equal(stored, want, side, f"{side} {tf}")
                assert first.candles[(side, tf)] == len(stored)
                assert not [c for c in stored if WEEKEND[0] <= c.open_time < WEEKEND[1]], "a weekend candle"
                assert stored[0].open_time == since and stored[-1].open_time + TIMEFRAMES[tf] == until
                stored_first[(side, tf)] = stored
        assert any(c.trades == 0 for c in stored_first[("mid", "1m")])  # flat candles were made (and checked)
        assert not [k for k, *_ in await cold.instruments() if k == "oanda:EUR_USD@ask"]
    finally:
        await cold.close()
    # The second run, with the same request spelt differently, wrote the same rows over them: nothing changed.
    assert second.candles == first.candles and second.quotes == first.quotes
    cold = await open_cold(db, read_only=True)
    try:
        for (side, tf), before in stored_first.items():
            assert await cold.query(series_key("oanda:EUR_USD", side), tf) == before
        assert sum(n for *_, n in await cold.instruments()) == first.candles_written
    finally:
        await cold.close()


async def test_unpublished_hours_make_no_candles_and_cut_the_ones_around_them(tmp_path: Path) -> None:
    # The replica's 06:00 and 07:00 hours are not over: 404. The market is open all morning, so a builder
    # that took them for a quiet market would write flat 1m candles there and a 04:00 4h candle from half its quotes.
    since, until = ms("2026-01-12T00:00"), ms("2026-01-12T08:00")
    db = str(tmp_path / "fx.duckdb")
    async with replica() as rep:
        result = await backfill(
            "oanda:EUR_USD", since, until, timeframes="1s,1m,4h", db=db, url=rep.url, requests_per_s=1000
        )
    assert result.missing_hours == [START, START + H]
    assert result.hours == 8 and result.skipped == 1  # the 04:00-08:00 4h candle
    assert "missing_hours=2" in result.summary() and "skipped_incomplete=1" in result.summary()
    rows = tape(tmp_path / "quotes.csv", since, START)
    cold = await open_cold(db, read_only=True)
    try:
        # Up to the first unpublished hour, every candle is there, flat ones included (1s: most are flat).
        for tf in ("1s", "1m"):
            want = quote_candles_from_tape(rows, TIMEFRAMES[tf], "mid", FxCalendar(), until_ms=START)
            check_equal(await cold.query("oanda:EUR_USD", tf), want, "mid", tf)
            assert want[-1].open_time + TIMEFRAMES[tf] == START
        four = await cold.query("oanda:EUR_USD", "4h")
        assert [c.open_time for c in four] == [since] and four[0].trades == sum(
            1 for r in rows if r.time_ms < since + 4 * H
        )
    finally:
        await cold.close()


async def test_no_flat_candle_follows_a_missing_hour_before_a_quote_does(tmp_path: Path, monkeypatch: Any) -> None:
    # Tuesday, market open: quotes at 10:00, 11:00 missing, 12:00 served empty, 13:00 missing, a quote at 14:05.
    # The candle builders learn of the break only from the 14:05 quote, so nothing they make after 11:00 and
    # before it may be written: the 12:00 hour touches no missing hour, yet its quotes are unknown too.
    from deltafeed.model import Quote
    from deltafeed.venues.dukascopy import rest as dukascopy_history

    day = ms("2026-01-06T00:00")
    served = {
        day + 10 * H: [
            Quote("EURUSD", day + 10 * H + 30_000, 1.1, 1.1002),
            Quote("EURUSD", day + 10 * H + 20 * 60_000, 1.1004, 1.1006),
        ],
        day + 12 * H: [],
        day + 14 * H: [Quote("EURUSD", day + 14 * H + 5 * 60_000, 1.2, 1.2002)],
        day + 15 * H: [],
    }

    class Source:
        def __init__(self, *args: Any, **kw: Any) -> None:
            self.missing: list[tuple[str, int]] = []
            self.hours = self.empty_hours = 0

        async def quotes(self, symbol: str, start: int, end: int, progress: Any = None) -> Any:
            hours = range(start, end, H)
            progress(0, len(hours))
            for done, hour in enumerate(hours, 1):
                self.hours += 1
                if hour not in served:
                    self.missing.append((symbol, hour))
                progress(done, len(hours))
                if served.get(hour):
                    yield served[hour]

        async def close(self) -> None:
            pass

    monkeypatch.setattr(dukascopy_history, "DukascopyHistory", Source)
    db = str(tmp_path / "fx.duckdb")
    result = await backfill("oanda:EUR_USD", day + 10 * H, day + 16 * H, timeframes="1m,1h", prices="mid,bid", db=db)
    assert result.missing_hours == [day + 11 * H, day + 13 * H] and result.skipped == 0 and result.quotes == 3
    cold = await open_cold(db, read_only=True)
    try:
        for key in ("oanda:EUR_USD", "oanda:EUR_USD@bid"):
            one = [c.open_time for c in await cold.query(key, "1m")]
            assert one == [
                *range(day + 10 * H, day + 11 * H, 60_000),
                *range(day + 14 * H + 300_000, day + 16 * H, 60_000),
            ]
            hour = await cold.query(key, "1h")
            assert [(c.open_time, c.trades) for c in hour] == [(day + 10 * H, 2), (day + 14 * H, 1), (day + 15 * H, 0)]
    finally:
        await cold.close()


async def test_a_source_without_the_instrument_or_unreachable_is_a_source_error(tmp_path: Path) -> None:
    db = str(tmp_path / "fx.duckdb")
    async with replica() as rep:
        with pytest.raises(SourceError, match="no tick files for GBPUSD"):
            await backfill("oanda:GBP_USD", START - 6 * H, START, db=db, url=rep.url, requests_per_s=1000)
    with pytest.raises(SourceError, match="cannot reach"):
        await backfill(
            "oanda:EUR_USD", START - 6 * H, START, db=db, url=f"http://127.0.0.1:{free_port()}/datafeed", retries=0
        )


# --- the command --------------------------------------------------------------------------------------


async def test_cli_backfills_and_prints_one_summary_line(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    async with replica() as rep:
        proc = await asyncio.create_subprocess_exec(
            *CLI,
            "backfill",
            "oanda:EUR_USD",
            "--since",
            "2026-01-09T18:00:00Z",
            "--until",
            "2026-01-12T02:00Z",
            "--timeframes",
            "1m,15m",
            "--prices",
            "bid",
            "--db",
            db,
            "--url",
            rep.url,
            "--rps",
            "1000",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 1, lines
    cold = await open_cold(db, read_only=True)
    try:
        n1 = len(await cold.query("oanda:EUR_USD@bid", "1m"))
        n15 = len(await cold.query("oanda:EUR_USD@bid", "15m"))
    finally:
        await cold.close()
    # Friday 18:00-22:00 and Sunday 22:00-Monday 02:00; a 1m series starts at its first quote, which at
    # this rate may come a minute late.
    assert 8 * 60 - 2 <= n1 <= 8 * 60 and n15 == 8 * 4
    assert lines[0].startswith(
        "backfilled oanda:EUR_USD from dukascopy EURUSD 2026-01-09T18:00:00Z..2026-01-12T02:00:00Z"
    )
    assert "hours=56 empty_hours=48 missing_hours=0" in lines[0]
    assert f"candles={n1 + n15} (bid 1m={n1} 15m={n15})" in lines[0]
    # On a pipe, progress is a few plain lines on stderr, not a bar.
    assert 1 <= len(err.decode().splitlines()) <= 10 and "hours" in err.decode()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "truefx"], "unknown source 'truefx'"),
        (["--since", "2026-01-09T02:00Z", "--until", "2026-01-09T01:00Z"], "must be before until"),
        (["--since", "last friday"], "--since 'last friday' is not an ISO-8601 time"),
        (["--timeframes", "1m,7x"], "unknown timeframe '7x'"),
        (["--prices", "mid,last"], "unknown price 'last'"),
        (["--since", "2026-01-09T00:10Z", "--until", "2026-01-09T00:50Z"], "holds no whole 1h candle"),
        (["--instrument", "EUR_USD"], "has no venue"),
        (["--instrument", "binance:BTCUSDT"], "not a forex series"),
    ],
)
def test_cli_bad_usage_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    opts = {
        "--instrument": "oanda:EUR_USD",
        "--since": "2026-01-09T00:00Z",
        "--until": "2026-01-09T06:00Z",
        "--db": str(tmp_path / "bad.duckdb"),
    }
    # An unreachable source is not bad usage: exit 69 (tests/integration/test_ops.py).
    opts.update(zip(args[::2], args[1::2], strict=True))
    argv = [opts.pop("--instrument"), *(x for kv in opts.items() for x in kv)]
    proc = subprocess.run([*CLI, "backfill", *argv], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("deltafeed backfill: ") and message in proc.stderr
    assert not (tmp_path / "bad.duckdb").exists()  # refused before anything was opened


def test_result_summary_names_every_side_and_timeframe() -> None:
    from deltafeed.backfill import plan_backfill

    plan = plan_backfill(
        "oanda:usd_jpy", ms("2026-01-05T10:30"), ms("2026-01-06T00:00"), timeframes="1h,4h", prices="ask,mid"
    )
    assert (plan.instrument, plan.symbol, plan.since_ms, plan.sides) == (
        "oanda:USD_JPY",
        "USDJPY",
        ms("2026-01-05T08:00"),
        ("mid", "ask"),
    )
    r = BackfillResult(plan, hours=16, quotes=5, candles={("mid", "1h"): 3, ("ask", "4h"): 1}, seconds=1.25)
    assert r.summary() == (
        "backfilled oanda:USD_JPY from dukascopy USDJPY 2026-01-05T08:00:00Z..2026-01-06T00:00:00Z: hours=16 "
        "empty_hours=0 missing_hours=0 quotes=5 candles=4 (mid 1h=3 4h=0; ask 1h=0 4h=1) in 1.2 s"
    )
