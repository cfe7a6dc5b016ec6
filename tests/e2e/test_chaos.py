"""Never lose a candle, never vouch for a wrong one: every fault kind, a kill -9 and a restart, and
every stored candle marked final, over the whole stored window, still equals the venue's tape.

Binance (trades with ids) and OANDA (quotes without ids: drop, dup and reorder cannot be seen in the
stream, only reconciliation with the venue's history catches them) each get a short run; bench/chaos.py
runs the same harness for minutes."""

from __future__ import annotations

import csv
from pathlib import Path

import msgspec
import pytest

from chaos import FX_PRICES, SYMBOLS, TIMEFRAMES_COMPARED, VENUE_FAULT_KINDS, ChaosResult, compare_window, run_chaos
from deltafeed.model import TIMEFRAMES, Candle
from deltafeed.store.base import open_cold
from reference import TAPE_COLUMNS, candles_from_tape, read_tape


def _check_window(r: ChaosResult, *, market_ms: int, compared: int) -> None:
    """What both venues must show: the right exits, faults of every kind, the whole stored window
    consecutive and every final candle equal to the tape, and nearly everything final at the end."""
    assert r.exit_codes == [-9, 0]  # killed once, stopped cleanly at the end
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(VENUE_FAULT_KINDS[r.venue])
    assert all(n >= 1 for n in r.faults.values()), r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.market_ms >= market_ms
    assert r.final_compared >= compared
    # With the faults off for the last 16 market minutes and a stop grace, the engine settles: only
    # the newest candles of each series may be left provisional or forming at the stop.
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    assert r.forming <= r.series
    assert r.behind_ms <= 10 * 60_000  # the final marks reach (nearly) the end of the run


@pytest.mark.timeout(180)
async def test_binance_final_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    # 60 wall seconds at x120 is two market hours of streaming (plus 30 minutes of history).
    r = await run_chaos(
        tmp_path, venue="binance", wall_s=60.0, speed=120.0, faults_per_minute=7.0, kill_at_s=28.0, seed=4
    )
    _check_window(r, market_ms=2 * 3_600_000, compared=len(SYMBOLS["binance"]) * (120 + 24))
    assert sum(r.faults.values()) >= 50, r.faults
    # The faults were noticed and dealt with, not dodged.
    assert r.total("reconnects") + r.total("rotations") >= 3
    assert r.per_instrument_total("gaps") >= 3
    assert r.per_instrument_total("repaired") > 0
    assert r.per_instrument_total("duplicates") >= 1
    assert sum(sum(s["skipped_frames"].values()) for s in r.statuses) >= 1


@pytest.mark.timeout(180)
async def test_oanda_final_candles_equal_the_quote_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    # 50 wall seconds at x120, from a Wednesday: 100 market minutes of MID and BID quotes.
    r = await run_chaos(
        tmp_path, venue="oanda", wall_s=50.0, speed=120.0, faults_per_minute=7.0, kill_at_s=23.0, seed=5
    )
    series = len(SYMBOLS["oanda"]) * len(FX_PRICES)
    assert r.series == series * len(TIMEFRAMES_COMPARED)
    _check_window(r, market_ms=100 * 60_000, compared=series * (100 + 20))
    # Drop, dup and reorder changed candles the stream built (quotes carry no ids, so nothing on the
    # stream shows it); every final candle equals the tape all the same (_check_window): reconciliation
    # replaced them, or a repair that covered them first (reconciliation does not ask twice).
    assert all(r.faults[k] >= 1 for k in ("drop", "dup", "reorder")), r.faults
    assert r.total("reconciled") > 0
    assert r.per_instrument_total("corrected") + r.per_instrument_total("repaired") > 0
    assert r.total("reconnects") >= 2  # close, reset and stall ended streams, and they came back


async def test_the_window_check_catches_a_wrong_final_candle_a_hole_and_a_late_start(tmp_path: Path) -> None:
    """The harness itself: a store equal to the tape passes; a final candle one tick off is a mismatch,
    a provisional one is only counted, a missing candle is a hole, and a late first candle is reported."""
    tape = tmp_path / "tape.csv"
    t0 = 1_796_000_000_000 - 1_796_000_000_000 % 300_000
    with open(tape, "w", newline="", encoding="ascii") as f:
        w = csv.writer(f)
        w.writerow(TAPE_COLUMNS)
        for i in range(180):  # 30 minutes, a trade every 10 s per symbol
            for n, sym in enumerate(SYMBOLS["binance"]):
                w.writerow(
                    [
                        sym,
                        i + 1,
                        t0 + i * 10_000 + n,
                        f"{100 + (i * 7 + n) % 13}.50000000",
                        "0.10000000",
                        "true" if i % 2 else "false",
                    ]
                )
    rows = read_tape(tape)

    async def store(db: str, change: dict[tuple[str, str, int], Candle | None]) -> ChaosResult:
        """The tape's candles (the newest of each series forming) with ``change`` applied, checked."""
        cold = await open_cold(db)
        try:
            out = []
            for sym in SYMBOLS["binance"]:
                for tf in TIMEFRAMES_COMPARED:
                    refs = candles_from_tape([r for r in rows if r.symbol == sym], TIMEFRAMES[tf])
                    for i, c in enumerate(refs):
                        last = i == len(refs) - 1  # the newest candle is still forming
                        candle: Candle | None = Candle(
                            c.open_time,
                            c.open,
                            c.high,
                            c.low,
                            c.close,
                            c.volume,
                            c.trades,
                            closed=not last,
                            final=not last,
                        )
                        candle = change.get((f"binance:{sym}", tf, c.open_time), candle)
                        if candle is not None:
                            out.append((f"binance:{sym}", tf, candle))
            await cold.write(out)
        finally:
            await cold.close()
        r = ChaosResult(venue="binance", faults={}, statuses=[])
        await compare_window(r, db, tape, t0 + 1_800_000, (t0, t0 + 60_000))
        return r

    clean = await store(str(tmp_path / "clean.duckdb"), {})
    assert clean.ok and clean.final_mismatched == 0, (clean.problems, clean.mismatches)
    assert clean.final_compared == 3 * (30 + 6 - 2) and clean.forming == 6 and clean.provisional_left == 0

    key = "binance:ETHUSDT"
    stored = {c.open_time: c for c in await _query(str(tmp_path / "clean.duckdb"), key, "1m")}
    off = msgspec.structs.replace(stored[t0 + 600_000], close=stored[t0 + 600_000].close + 0.01)
    unsure = msgspec.structs.replace(stored[t0 + 720_000], high=stored[t0 + 720_000].high + 1, final=False)
    bad = await store(
        str(tmp_path / "bad.duckdb"),
        {
            (key, "1m", t0 + 600_000): off,
            (key, "1m", t0 + 720_000): unsure,
            (key, "1m", t0 + 900_000): None,
            ("binance:BTCUSDT", "5m", t0): None,
        },
    )
    assert bad.final_mismatched == 1 and f"{key} 1m {t0 + 600_000}" in bad.mismatches[0], bad.mismatches
    assert bad.provisional_left == 1 and bad.provisional_differ == 1
    assert any(p.startswith(f"{key} 1m: 1 candles missing, first {t0 + 900_000}") for p in bad.problems), bad.problems
    assert any(p.startswith("binance:BTCUSDT 5m: history starts at") for p in bad.problems), bad.problems
    assert not bad.ok


async def _query(db: str, key: str, tf: str) -> list[Candle]:
    cold = await open_cold(db, read_only=True)
    try:
        return await cold.query(key, tf)
    finally:
        await cold.close()
