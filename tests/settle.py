"""End a fault storm in an end-to-end test: the replica stops injecting, and the engine is given
the time a real deployment would have to reconnect and repair what the last fault broke."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from deltafeed.engine import Engine


async def end_storm(replica: Any, engine: Engine, *, quiet_s: float, timeout_s: float = 90.0) -> dict[str, int]:
    """Stop ``replica``'s faults; wait until ``engine`` stayed connected without a new connection
    for ``quiet_s`` (longer than its stale-data limit, so a stall in progress has been noticed) and
    has no repair pending. Returns the faults injected. Fails if that takes over ``timeout_s``."""
    injected: dict[str, int] = replica.faults_injected()
    replica.faults = None
    deadline = time.monotonic() + timeout_s
    while True:
        before = engine.status()["connects"]
        await asyncio.sleep(quiet_s)
        status = engine.status()
        if status["connected"] and status["connects"] == before:
            break
        assert time.monotonic() < deadline, f"the engine did not reconnect for good: {status['connects']} connects"
    while engine.status()["pending_repairs"]:
        assert time.monotonic() < deadline, f"repairs still pending: {engine.status()['pending_repairs']}"
        await asyncio.sleep(0.2)
    return injected
