"""Alpaca (a stock and a crypto pair, two WebSockets) through every fault its replica injects, a kill -9
and a restart, with late trades that make "updated bars": every stored final 1m and 5m candle equals
the tape's candle, field by field (trade counts included: Alpaca's bars carry them), with no hole and
no duplicate, and corrected minutes were seen and published."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import PROFILES, TIMEFRAMES_COMPARED, run_chaos
from deltafeed.venues.alpaca.replica import FAULT_KINDS

SYMBOLS = PROFILES["alpaca"].symbols


@pytest.mark.slow
@pytest.mark.timeout(200)
async def test_alpaca_final_candles_equal_the_tape_through_faults_late_trades_and_a_kill(tmp_path: Path) -> None:
    # 40 wall seconds at x120: 80 market minutes of streaming after 30 minutes of history.
    r = await run_chaos(
        tmp_path, venue="alpaca", wall_s=40.0, speed=120.0, faults_per_minute=6.0, kill_at_s=20.0, seed=7
    )
    feeds = [s.get("venues", {}).get("alpaca", {}) for s in r.statuses]
    updated = sum(int(f.get("venue_corrections") or 0) for f in feeds)
    late = sum(int(f.get("out_of_order") or 0) for f in feeds)
    print(
        f"\nalpaca chaos: faults {sum(r.faults.values())} over {len(r.faults)} kinds {r.faults}; "
        f"final candles {r.final_compared}; mismatches {r.final_mismatched}; provisional left {r.provisional_left}; "
        f"forming {r.forming}; updated bars applied {updated}; late trades seen {late}; "
        f"corrected {r.per_instrument_total('corrected')}; settled {r.settled_s:.0f} s"
    )
    assert r.exit_codes == [-9, 0]
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(FAULT_KINDS) and all(n >= 1 for n in r.faults.values()), r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.series == len(SYMBOLS) * len(TIMEFRAMES_COMPARED)
    assert r.final_compared >= len(SYMBOLS) * (80 + 16)
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    assert r.total("reconciled") > 0
    assert updated >= 1  # a corrected minute bar reached the store as the venue's own candle
    assert late >= 1  # late trades were delivered after their minute, not dodged
