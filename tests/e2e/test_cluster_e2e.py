"""Issue 21 end to end: three collectors and a serving node, each a process of its own, on the real
NATS JetStream, against a Binance replica. Every instrument is collected by exactly one collector;
``kill -9`` of one moves its instruments to the others within the stated time; afterwards every
final candle the serving node serves equals the candle computed from the replica's tape, with no
hole; and the replica saw no request or connection beyond its limits (the budget is cluster-wide)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clustering import assert_equal_to_tape, final_candles_until, held, node_url, start, stop, wait_for
from conftest import NATS_URL
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import free_port
from reference import read_tape

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "ADAUSDT"]
INSTRUMENTS = {f"binance:{s}" for s in SYMBOLS}
WEIGHT_LIMIT = 1200  # REST weight per minute the replica allows, shared by the whole cluster
MOVE_LIMIT_S = 10.0  # the stated time within which a dead collector's instruments move


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_three_collectors_kill_one_and_the_served_candles_equal_the_tape(
    tmp_path: Path, nats_cluster: str
) -> None:
    tape = tmp_path / "tape.csv"
    async with BinanceReplica(
        symbols=SYMBOLS, rate=2.0, speed=10.0, history_ms=15 * 60_000, tape=str(tape), weight_limit=WEIGHT_LIMIT
    ) as replica:
        config = tmp_path / "cluster.toml"
        config.write_text(
            f'venue = "binance"\nsymbols = {SYMBOLS!r}\ntimeframes = ["1m"]\nhistory = "10m"\n'
            f'rest_url = "{replica.url}"\nws_url = "{replica.ws_url}"\nweight_limit = {WEIGHT_LIMIT}\n'
            f'cluster = "{NATS_URL}"\ncluster_name = "{nats_cluster}"\n'.replace("'", '"')
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            metrics = [free_port() for _ in range(3)]  # each collector's /metrics
            for i in range(3):
                procs.append(
                    start(
                        ["run", "--config", str(config)],
                        tmp_path / f"collector{i}.log",
                        DELTAFEED_CLUSTER_METRICS=f"127.0.0.1:{metrics[i]}",
                    )
                )
            node_log = tmp_path / "node.log"
            node = start(
                ["serve", "--cluster", NATS_URL, "--cluster-name", nats_cluster, "--api", "127.0.0.1:0"], node_log
            )
            procs.append(node)
            url = await node_url(node, node_log)

            # Every instrument held, by exactly one collector, and each collector its share (2).
            async def shared() -> dict[str, Any] | None:
                doc = await held(NATS_URL, nats_cluster)
                counts = sorted(len(c["instruments"]) for c in doc["collectors"] if c["alive"])
                return doc if set(doc["held"]) == INSTRUMENTS and counts == [2, 2, 2] else None

            doc = await wait_for("the instruments shared by three collectors", 40, shared)
            await asyncio.sleep(4)  # some candles (40 s of market time) from the first assignment

            victim = next(c for c in doc["collectors"] if c["instruments"])
            moved = set(victim["instruments"])
            os.kill(victim["pid"], signal.SIGKILL)
            killed_ms = time.time() * 1000

            async def taken_over() -> dict[str, Any] | None:
                d = await held(NATS_URL, nats_cluster)
                owners = {d["held"].get(i) for i in moved}
                return d if None not in owners and victim["id"] not in owners else None

            after = await wait_for("the victim's instruments to move", 20, taken_over)
            # When each was taken, by the taker's own record (the polls themselves take a while).
            taken_ms = [c["since_ms"][i] for c in after["collectors"] if c["alive"] for i in moved & set(c["since_ms"])]
            assert len(taken_ms) == len(moved), after
            move_s = (max(taken_ms) - killed_ms) / 1000
            assert move_s <= MOVE_LIMIT_S, f"instruments moved after {move_s:.1f} s"
            print(f"instruments {sorted(moved)} moved {move_s:.1f} s after kill -9")
            # The survivors' metrics say so: two leases taken over between them, six instruments held.
            scraped = {"taken": 0.0, "held": 0.0}
            async with aiohttp.ClientSession() as http:
                for i, p in enumerate(procs[:3]):
                    if p.pid == victim["pid"]:
                        continue
                    async with http.get(f"http://127.0.0.1:{metrics[i]}/metrics") as r:
                        text = await r.text()
                    for name, key in (("deltafeed_cluster_leases_taken_over_total", "taken"),
                                      ("deltafeed_cluster_instruments", "held")):  # fmt: skip
                        m = re.search(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M)
                        assert m, text
                        scraped[key] += float(m.group(1))
            assert scraped == {"taken": 2.0, "held": 6.0}, scraped

            await asyncio.sleep(12)  # 120 s of market time after the handover
            end = replica.clock.now_ms()
            # Candles closed 2 minutes of market time before the end are final by now (or soon).
            until = (end - 120_000) - (end - 120_000) % 60_000

            async def served_until() -> dict[str, list[Any]] | None:
                return await final_candles_until(url, sorted(INSTRUMENTS), until)

            served = await wait_for("final candles up to the end", 30, served_until)
        finally:
            stop(procs)
        stats = dict(replica.stats)
    # The replica has stopped: its tape is complete (and flushed).
    assert_equal_to_tape(served, read_tape(str(tape)))
    assert stats["429"] == 0 and stats["418"] == 0, stats
    # One engine per collector: one connection each (the instruments taken over are subscribed on
    # the taker's open connection), a reconnect or two at most on a loaded machine.
    print(f"the replica counted {stats['connections']} connections")
    assert stats["connections"] <= 6, stats
