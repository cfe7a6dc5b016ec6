"""Never lose a candle: every fault kind, a kill -9 and a restart, and the store still equals the tape."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import run_chaos
from deltafeed.replicas.faults import KINDS


@pytest.mark.timeout(180)
async def test_stored_candles_equal_the_tape_through_faults_and_a_kill(tmp_path: Path) -> None:
    # 60 wall seconds at x120 is two market hours of streaming (plus 30 minutes of history).
    r = await run_chaos(tmp_path, wall_s=60.0, speed=120.0, faults_per_minute=7.0, kill_at_s=28.0, seed=4)
    assert r.exit_codes == [-9, 0]  # killed once, stopped cleanly at the end
    assert set(r.faults) == set(KINDS)
    assert all(n >= 1 for n in r.faults.values()), r.faults
    assert sum(r.faults.values()) >= 50, r.faults
    assert r.market_ms >= 2 * 3_600_000
    assert r.behind_ms <= 10 * 60_000  # the final marks reach (nearly) the end of the run
    assert r.compared >= 3 * (120 + 24)
    assert not r.mismatches, "\n".join(r.mismatches[:20])
    # The faults were noticed and dealt with, not dodged.
    assert r.total("reconnects") + r.total("rotations") >= 3
    assert r.per_instrument_total("gaps") >= 3
    assert r.per_instrument_total("repaired") > 0
    assert r.per_instrument_total("duplicates") >= 1
    assert sum(sum(s["skipped_frames"].values()) for s in r.statuses) >= 1
