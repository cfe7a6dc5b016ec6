"""Coinbase through every fault its replica injects (the shared ones, sequence_num gaps and stopped
heartbeats), a kill -9 and a restart: every stored final 1m and 5m candle equals the tape's candle,
field by field (trade counts aside: Coinbase's REST candles carry none), with no hole and no duplicate."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import PROFILES, TIMEFRAMES_COMPARED, candle_kinds, run_chaos
from deltafeed.venues.coinbase.replica import FAULT_KINDS

SYMBOLS = PROFILES["coinbase"].symbols


@pytest.mark.slow
@pytest.mark.timeout(200)
async def test_coinbase_final_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    # 50 wall seconds at x120: 100 market minutes of streaming after 30 minutes of history.
    r = await run_chaos(
        tmp_path, venue="coinbase", wall_s=50.0, speed=120.0, faults_per_minute=5.0, kill_at_s=24.0, seed=7
    )
    gaps = sum(int(s.get("venues", {}).get("coinbase", {}).get("sequence_gaps") or 0) for s in r.statuses)
    print(
        f"\ncoinbase chaos: faults {sum(r.faults.values())} over {len(r.faults)} kinds {r.faults}; "
        f"final candles {r.final_compared}; mismatches {r.final_mismatched}; provisional left {r.provisional_left}; "
        f"forming {r.forming}; sequence gaps seen {gaps}; settled {r.settled_s:.0f} s"
    )
    assert r.exit_codes == [-9, 0]
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(candle_kinds(FAULT_KINDS)) and all(n >= 1 for n in r.faults.values()), r.faults
    assert sum(r.faults.values()) >= 30, r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.series == len(SYMBOLS) * len(TIMEFRAMES_COMPARED)
    assert r.final_compared >= len(SYMBOLS) * (100 + 20)
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    assert r.total("reconciled") > 0
    assert gaps >= 1  # sequence_num breaks were seen (seqgap, drop, reorder), not dodged
