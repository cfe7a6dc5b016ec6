"""Bybit through chaos: every fault kind its replica injects, a kill -9 and a restart, and every stored
final 1m and 5m candle over the whole window equals the tape's (open, high, low, close, volume: Bybit's
klines have no trade count), with no hole and no duplicate.

Bybit's trade ids are not a counter, so nothing in the stream vouches for a candle: the kline
stream's ``confirm:true`` does, or reconciliation with REST klines every 20 s; a lost connection skips
a synthetic id and is repaired from klines."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import PROFILES, bybit_profile, candle_kinds, register, run_chaos
from deltafeed.venues.bybit.replica import FAULT_KINDS

SYMBOLS = PROFILES["bybit"].symbols


PROFILE = PROFILES["bybit"]


@pytest.mark.slow
@pytest.mark.timeout(200)
@pytest.mark.parametrize("category", ["spot", "linear"])
async def test_bybit_final_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path, category: str) -> None:
    register(bybit_profile(category))  # the harness keeps one profile per venue name: this category's
    # 60 wall seconds at x120: two market hours of streaming after 30 minutes of history.
    try:
        r = await run_chaos(
            tmp_path, venue="bybit", wall_s=60.0, speed=120.0, faults_per_minute=4.0, kill_at_s=28.0, seed=6
        )
    finally:
        register(PROFILE)
    faults = sum(r.faults.values())
    print(
        f"\nbybit {category} chaos: faults {faults} over {len(r.faults)} kinds {r.faults}; final candles {r.final_compared}; "
        f"mismatches {r.final_mismatched}; provisional left {r.provisional_left}; forming {r.forming}; "
        f"problems {len(r.problems)}; startup {r.startup_s:.1f} s, settled {r.settled_s:.1f} s"
    )
    assert r.exit_codes == [-9, 0]  # killed once, stopped cleanly at the end
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert set(r.faults) == set(candle_kinds(FAULT_KINDS))
    assert all(n >= 1 for n in r.faults.values()), r.faults
    assert faults >= 30, r.faults
    assert not r.problems, "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.market_ms >= 2 * 3_600_000
    assert r.final_compared >= len(SYMBOLS) * (120 + 24)
    assert r.provisional_left <= 3 * r.series, (r.provisional_left, r.series)
    assert r.forming <= r.series
    assert r.behind_ms <= 10 * 60_000
    # The faults were noticed and dealt with, not dodged.
    assert r.total("reconnects") >= 3
    assert r.per_instrument_total("repaired") + r.per_instrument_total("reconciled") > 0
    assert sum(sum(s["skipped_frames"].values()) for s in r.statuses) >= 1
