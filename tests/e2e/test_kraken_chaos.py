"""Kraken through every fault its replica injects, a kill -9 and a restart: every stored final 1m and
5m candle equals the tape, with no hole and no duplicate (the harness of tests/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import PROFILES, candle_kinds, run_chaos
from deltafeed.venues.kraken import FAULT_KINDS

SYMBOLS = PROFILES["kraken"].symbols


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_kraken_final_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    # 48 wall seconds at x120: 96 market minutes of streaming after 30 minutes of history. The fault
    # seed is one whose schedule gives every kind at least three events between 3 s and 46 s. Half a trade a
    # market second is 60 a wall second: a short reconnect is covered by the 50-trade snapshot, a
    # longer one (or a drop, a seqgap) is a hole repaired under Kraken's ~1 call/s public REST limit.
    r = await run_chaos(
        tmp_path,
        venue="kraken",
        wall_s=48.0,
        speed=120.0,
        faults_per_minute=5.0,
        kill_at_s=23.0,
        rate=0.5,
        seed=7,
        faults_seed=173,
    )
    print(
        f"\nkraken chaos: faults {sum(r.faults.values())} {r.faults}; final candles {r.final_compared}; "
        f"mismatches {r.final_mismatched}; provisional left {r.provisional_left}; problems {len(r.problems)}; "
        f"startup {r.startup_s:.1f} s, settled {r.settled_s:.1f} s"
    )
    assert r.exit_codes == [-9, 0]
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(candle_kinds(FAULT_KINDS))
    assert all(n >= 1 for n in r.faults.values()), r.faults
    assert sum(r.faults.values()) >= 30, r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.final_compared >= len(SYMBOLS) * (90 + 18)
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    # The faults were seen and dealt with: reconnects, holes repaired, repeats dropped, frames skipped.
    assert r.total("reconnects") >= 3
    assert r.per_instrument_total("gaps") >= 3
    assert r.per_instrument_total("repaired") > 0
    assert r.per_instrument_total("duplicates") >= 1
    assert sum(sum(s["skipped_frames"].values()) for s in r.statuses) >= 1
