"""Hyperliquid through every fault its replica injects, a kill -9 and a restart: every final 1m and 5m
candle equals the candles computed from the replica's tape, with no hole and no duplicate.

Hyperliquid's tids cannot show a lost trade, so drops, duplicates and reorders are caught by the
venue's own candles (merged only when their trade count equals ours) and by reconciliation with
``candleSnapshot`` history; reconnects after close, reset, stall and silence skip a synthetic id and
are repaired."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chaos import PROFILES, candle_kinds, run_chaos
from deltafeed.venues.hyperliquid.replica import FAULT_KINDS

SYMBOLS = PROFILES["hyperliquid"].symbols


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_hyperliquid_final_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    started = time.monotonic()
    # 40 wall seconds at x120: 80 market minutes of streaming, plus 30 minutes of history.
    # Connection faults a little rarer than the rest: each one grows the reconnect backoff (30 s at
    # most), and the run should end streaming, not waiting out a backoff.
    r = await run_chaos(
        tmp_path,
        venue="hyperliquid",
        wall_s=40.0,
        speed=120.0,
        faults_per_minute=6.0,
        # Each one ends the only connection, and one that falls due while the engine waits out its
        # backoff waits too: with this fault seed they come one at a time, at 6, 15, 27 and 34 s
        # (FaultSchedule.times), around the kill.
        fault_rates={k: 3.0 for k in ("close", "reset", "stall", "silence")},
        kill_at_s=18.0,
        seed=7,
        faults_seed=233,
    )
    wall = time.monotonic() - started
    total = sum(r.faults.values())
    print(
        f"\nhyperliquid chaos: {total} faults over {sum(1 for n in r.faults.values() if n)} kinds {r.faults}; "
        f"final candles {r.final_compared}, mismatches {r.final_mismatched}, provisional left {r.provisional_left}, "
        f"forming {r.forming}, wall {wall:.1f} s (start-up {r.startup_s:.1f} s, settled in {r.settled_s:.1f} s)"
    )
    assert r.exit_codes == [-9, 0]
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(candle_kinds(FAULT_KINDS))
    assert all(n >= 1 for n in r.faults.values()), r.faults
    assert total >= 30, r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.final_compared >= len(SYMBOLS) * (80 + 16)
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    # The faults were noticed and dealt with, not dodged.
    assert r.total("reconnects") >= 3
    assert r.per_instrument_total("gaps") >= 3  # reconnects skip a synthetic id: the candles around are repaired
    assert r.per_instrument_total("repaired") > 0
    assert sum(sum(s["skipped_frames"].values()) for s in r.statuses) >= 1
