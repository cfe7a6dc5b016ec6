"""What the cluster's end-to-end tests share: starting deltafeed processes, the cluster status with
the one-collector-per-instrument check, waiting, and comparing served final candles with the tape."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deltafeed.client import ApiError, Client
from deltafeed.cluster.status import cluster_status
from deltafeed.model import Candle
from reference import candles_from_tape


def start(args: list[str], log: Path, prefix: list[str] | None = None, **env_vars: str) -> subprocess.Popen[bytes]:
    """``python -m deltafeed ARGS`` in its own process (run through ``prefix``, e.g. ``ip netns exec``),
    its output in ``log``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_vars}
    with log.open("wb") as out:
        return subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "deltafeed", *args], stdout=out, stderr=out, env=env
        )


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, then wait (kill after 15 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


async def held(url: str, cluster: str) -> dict[str, Any]:
    """The cluster's status, with the check that holds at every moment: no instrument is in two
    live collectors' lists. ``held`` maps each held instrument to its collector."""
    doc = await cluster_status(url, cluster)
    seen: dict[str, str] = {}
    for c in doc["collectors"]:
        if not c["alive"]:
            continue
        for inst in c["instruments"]:
            assert inst not in seen, f"{inst} collected by {seen[inst]} and {c['id']}"
            seen[inst] = c["id"]
    doc["held"] = seen
    return doc


async def wait_for(what: str, timeout: float, check: Any) -> Any:
    """Poll ``await check()`` every 0.25 s until it is truthy; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.25)


async def node_url(node: subprocess.Popen[bytes], log: Path) -> str:
    """The serving node's API address, once its log says it serves."""

    async def found() -> str | None:
        m = re.search(r"serving the API on (http://\S+)", log.read_text(errors="replace"))
        assert node.poll() is None, log.read_text()
        return m.group(1) if m else None

    url: str = await wait_for("the serving node", 30, found)
    return url


async def final_candles_until(url: str, instruments: list[str], until: int) -> dict[str, list[Candle]] | None:
    """Every instrument's final 1m candles served by ``url``, once each reaches ``until``; else None."""
    out = {}
    async with Client(url) as df:
        for inst in instruments:
            try:
                got = await df.fetch_candles(inst, "1m", final=True)
            except ApiError as e:  # 404 until the node has seen a candle of it: not yet
                if e.status != 404:
                    raise
                return None
            if not got or got[-1].open_time < until:
                return None
            out[inst] = got
    return out


def assert_equal_to_tape(served: dict[str, list[Candle]], rows: list[Any]) -> None:
    """Each series is contiguous (no hole, no repeat) and every candle equals the tape's, field by field."""
    for inst, got in served.items():
        sym = inst.split(":", 1)[1]
        opens = [c.open_time for c in got]
        assert opens == list(range(opens[0], opens[-1] + 60_000, 60_000)), (inst, "hole or repeat")
        want = {c.open_time: c for c in candles_from_tape([r for r in rows if r[0] == sym], 60_000)}
        for c in got:
            w = want[c.open_time]
            assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
            ), (inst, c.open_time)  # fmt: skip
