"""IB through every fault its replica injects (close, reset, stall, garbage and a "connectivity lost /
restored" episode), a kill -9 and a restart: every stored final 1m and 5m candle of a stock (trades)
and a forex pair (MID and BID quotes) equals the replica's tape, with no hole and no duplicate, and
deltafeed's history requests never break IB's pacing rules (the harness of tests/chaos.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import PROFILES, run_chaos
from deltafeed.venues.ib.replica import FAULT_KINDS

SYMBOLS = PROFILES["ib"].symbols


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_ib_final_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    # 40 wall seconds at x60: 40 market minutes of streaming after 30 minutes of history, inside the
    # stock session (10:00 New York on a Wednesday) and the FX week.
    r = await run_chaos(
        tmp_path,
        venue="ib",
        wall_s=40.0,
        speed=60.0,
        faults_per_minute=4.0,
        kill_at_s=20.0,
        rate=2.0,
        seed=5,
        faults_seed=12,
    )
    pacing = [s.get("venues", {}).get("ib", {}).get("rest_throttled", 0) for s in r.statuses]
    print(
        f"\nib chaos: faults {sum(r.faults.values())} {r.faults}; final candles {r.final_compared}; "
        f"mismatches {r.final_mismatched}; provisional left {r.provisional_left}; problems {len(r.problems)}; "
        f"pacing violations seen {pacing}, replica {r.replica_stats.get('pacing_violations')}; "
        f"startup {r.startup_s:.1f} s, settled {r.settled_s:.1f} s"
    )
    assert r.exit_codes == [-9, 0]
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(FAULT_KINDS)
    assert all(n >= 1 for n in r.faults.values()), r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    # 1m and 5m of one stock and of a pair's MID and BID: at least most of the 70 market minutes.
    assert r.final_compared >= 3 * (60 + 12)
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    assert r.total("reconnects") >= 2
    # The connectivity episodes reached the engines as IB's codes, counted in the status.
    codes = [s.get("venues", {}).get("ib", {}).get("venue_errors", {}) for s in r.statuses]
    assert sum(c.get("1100", 0) for c in codes) >= 1
    assert sum(c.get("1101", 0) + c.get("1102", 0) for c in codes) >= 1
    assert sum(sum(s["skipped_frames"].values()) for s in r.statuses) >= 1
    # deltafeed never broke IB's pacing rules: the replica refused nothing, the feeds saw no 162.
    assert r.replica_stats["history_requests"] > 0
    assert r.replica_stats["pacing_violations"] == 0
    assert pacing and all(p == 0 for p in pacing), pacing
