"""Issue 21 across addresses: three collectors, each in a network namespace of its own joined to the
host by a veth pair (as on three machines), a NATS JetStream server and a Binance replica on the
host's side of the bridge, and a serving node on the host. The replica sees each collector's
requests and connections come from that collector's own address, within Binance's per-IP limits;
every instrument is collected by exactly one collector; ``kill -9`` of one moves its instruments
within the stated time; every final candle served equals the tape, with no hole.

Needs root for ``ip netns`` (CI runs as root here); without it the test skips, saying why, and
``test_cluster_e2e.py`` covers the same over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clustering import assert_equal_to_tape, final_candles_until, held, node_url, start, stop, wait_for
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import free_port
from netns import Lan, lan
from reference import read_tape

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT", "ADAUSDT"]
INSTRUMENTS = {f"binance:{s}" for s in SYMBOLS}
WEIGHT_LIMIT = 1200  # REST weight per minute and IP the replica allows
MOVE_LIMIT_S = 10.0
CLUSTER = "netns"


@pytest.fixture
def three() -> Iterator[Lan]:
    with lan(3) as net:
        yield net


@pytest.fixture
def private_nats(three: Lan, tmp_path: Path) -> Iterator[str]:
    """A NATS server with JetStream on the bridge's address (the shared one listens on 127.0.0.1 only,
    which a namespace cannot reach)."""
    port = free_port()
    proc = subprocess.Popen(
        ["nats-server", "-js", "-a", three.host_ip, "-p", str(port), "-sd", str(tmp_path / "nats")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((three.host_ip, port), 0.5).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "nats-server did not start"
                time.sleep(0.1)
        yield f"nats://{three.host_ip}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_collectors_on_three_addresses_share_kill_one_and_equal_the_tape(
    three: Lan, private_nats: str, tmp_path: Path
) -> None:
    tape = tmp_path / "tape.csv"
    async with BinanceReplica(
        symbols=SYMBOLS, rate=2.0, speed=10.0, history_ms=15 * 60_000, tape=str(tape), weight_limit=WEIGHT_LIMIT,
        host=three.host_ip,
    ) as replica:  # fmt: skip
        config = tmp_path / "cluster.toml"
        config.write_text(
            f'venue = "binance"\nsymbols = {SYMBOLS!r}\ntimeframes = ["1m"]\nhistory = "10m"\n'
            f'rest_url = "{replica.url}"\nws_url = "{replica.ws_url}"\nweight_limit = {WEIGHT_LIMIT}\n'
            f'cluster = "{private_nats}"\ncluster_name = "{CLUSTER}"\n'.replace("'", '"')
        )
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(3):
                log = tmp_path / f"collector{i}.log"
                procs.append(start(["run", "--config", str(config)], log, prefix=three.command(i, [])))
            node_log = tmp_path / "node.log"
            node = start(
                ["serve", "--cluster", private_nats, "--cluster-name", CLUSTER, "--api", "127.0.0.1:0"], node_log
            )
            procs.append(node)
            url = await node_url(node, node_log)

            async def shared() -> dict[str, Any] | None:
                doc = await held(private_nats, CLUSTER)
                counts = sorted(len(c["instruments"]) for c in doc["collectors"] if c["alive"])
                return doc if set(doc["held"]) == INSTRUMENTS and counts == [2, 2, 2] else None

            doc = await wait_for("the instruments shared by three collectors", 60, shared)
            await asyncio.sleep(4)

            victim = next(c for c in doc["collectors"] if c["instruments"])
            moved = set(victim["instruments"])
            os.kill(victim["pid"], signal.SIGKILL)
            killed_ms = time.time() * 1000

            async def taken_over() -> dict[str, Any] | None:
                d = await held(private_nats, CLUSTER)
                owners = {d["held"].get(i) for i in moved}
                return d if None not in owners and victim["id"] not in owners else None

            after = await wait_for("the victim's instruments to move", 25, taken_over)
            taken_ms = [c["since_ms"][i] for c in after["collectors"] if c["alive"] for i in moved & set(c["since_ms"])]
            assert len(taken_ms) == len(moved), after
            move_s = (max(taken_ms) - killed_ms) / 1000
            assert move_s <= MOVE_LIMIT_S, f"instruments moved after {move_s:.1f} s"

            await asyncio.sleep(12)
            end = replica.clock.now_ms()
            until = (end - 120_000) - (end - 120_000) % 60_000

            async def served_until() -> dict[str, list[Any]] | None:
                return await final_candles_until(url, sorted(INSTRUMENTS), until)

            served = await wait_for("final candles up to the end", 40, served_until)
        finally:
            stop(procs)
        stats = dict(replica.stats)
        rest_ips = set(replica.limiter.ips())
        ws_ips = dict(replica.peer_connections)
    assert_equal_to_tape(served, read_tape(str(tape)))
    # The venue saw three clients, one per namespace, and never the host (the node reads NATS only).
    assert rest_ips == set(three.ips), rest_ips
    assert set(ws_ips) == set(three.ips), ws_ips
    # Each address within Binance's limits: no 429 or 418, and a handful of connections each (its
    # first, the taken-over instruments' and rotations), far below 300 per 5 minutes per IP.
    assert stats["429"] == 0 and stats["418"] == 0, stats
    assert all(n <= 10 for n in ws_ips.values()), ws_ips
