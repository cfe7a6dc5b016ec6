"""Issue 21: a cluster survives its NATS server going away and coming back. Two collectors and a
serving node with the cold-store writer, each a process of its own, on a private ``nats-server``
(its own port and store directory, so the shared one is not disturbed) against a Binance replica.
The server is killed (SIGKILL) mid-run and started again on the same port and store after 2 or 6
seconds: afterwards every final candle the node serves and every final candle the writer stored
equals the candle computed from the replica's tape, with no hole and no duplicate; the order book
the node serves is in sync again and equals the tape's true book at its venue key."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from books import check_served
from clustering import assert_equal_to_tape, final_candles_until, node_url, start, stop, wait_for
from deltafeed.replicas.books import book_tape_path
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import free_port
from reference import read_tape

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
BTC = "binance:BTCUSDT"
PG_URL = os.environ.get("DELTAFEED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nats-server") is None, reason="no nats-server binary to start a private one"),
]


class PrivateNats:
    """``nats-server -js`` on a free loopback port with its store in ``store``: stopped and started
    again on the same port and store."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["nats-server", "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        with (self.store.parent / "nats.log").open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.store.parent / "nats.log").read_text()
                assert time.monotonic() < deadline, "nats-server did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    server = PrivateNats(tmp_path / "jetstream")
    server.store.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


#: 2 s: the collectors keep collecting and publish again what was not acknowledged; 6 s: longer than
#: a collector collects without renewing its leases (4 s), so they stop, take the leases again when
#: NATS is back and fill the outage from the venue's history.
@pytest.mark.parametrize("outage_s", [2.0, 6.0], ids=["short", "past-the-leases"])
@pytest.mark.timeout(240)
async def test_cluster_survives_a_nats_restart(tmp_path: Path, private_nats: PrivateNats, outage_s: float) -> None:
    import asyncpg

    from deltafeed.store.postgres import PostgresStore

    cluster = "restart"
    schema = f"deltafeed_t_{uuid.uuid4().hex}"
    tape = tmp_path / "tape.csv"
    async with BinanceReplica(symbols=SYMBOLS, rate=2.0, speed=10.0, history_ms=15 * 60_000, tape=str(tape)) as replica:
        config = tmp_path / "cluster.toml"
        config.write_text(
            f'venue = "binance"\nsymbols = {SYMBOLS!r}\ntimeframes = ["1m"]\nhistory = "10m"\n'
            f'rest_url = "{replica.url}"\nws_url = "{replica.ws_url}"\nbooks = ["{BTC}"]\nbook_depth = 10\n'
            f'cluster = "{private_nats.url}"\ncluster_name = "{cluster}"\n'.replace("'", '"')
        )
        procs = [start(["run", "--config", str(config)], tmp_path / f"collector{i}.log") for i in range(2)]
        node_log = tmp_path / "node.log"
        node = start(
            ["serve", "--cluster", private_nats.url, "--cluster-name", cluster, "--db", PG_URL,
             "--db-schema", schema, "--writer", "--api", "127.0.0.1:0"],
            node_log,
        )  # fmt: skip
        procs.append(node)
        try:
            url = await node_url(node, node_log)

            def finals_after(t: int) -> Any:
                return final_candles_until(url, [f"binance:{s}" for s in SYMBOLS], t)

            async def book_in_sync() -> dict[str, Any] | None:
                async with aiohttp.ClientSession() as http, http.get(f"{url}/book/{BTC}") as r:
                    doc: dict[str, Any] = await r.json() if r.status == 200 else {}
                return doc if doc.get("in_sync") else None

            await wait_for("final candles before the outage", 60, lambda: finals_after(0))
            await wait_for("the book in sync before the outage", 30, book_in_sync)
            await asyncio.sleep(3)

            private_nats.kill()
            await asyncio.sleep(outage_s)
            private_nats.start()
            restarted = replica.clock.now_ms()

            async with aiohttp.ClientSession() as http:

                async def ready() -> bool:
                    async with http.get(f"{url}/readyz") as r:
                        return r.status == 200

                await wait_for("the node ready again", 60, ready)
            # Candles closed 2 minutes of market time after the restart are final by now (or soon).
            while replica.clock.now_ms() < restarted + 4 * 60_000:
                await asyncio.sleep(0.5)
            end = replica.clock.now_ms()
            until = (end - 120_000) - (end - 120_000) % 60_000
            assert until > restarted, "the run after the restart is too short to say anything"
            served = await wait_for("final candles after the restart", 60, lambda: finals_after(until))
            book = await wait_for("the book in sync after the restart", 30, book_in_sync)
            # The writer has everything the stream holds.
            await asyncio.sleep(3)
        finally:
            stop(procs)
        for i in range(2):
            log = (tmp_path / f"collector{i}.log").read_text(errors="replace")
            assert "Traceback" not in log, log
        node_text = node_log.read_text(errors="replace")
        assert "Traceback" not in node_text and "skipped a" not in node_text, node_text
    rows = read_tape(str(tape))
    assert_equal_to_tape(served, rows)
    cold = await PostgresStore.open(PG_URL, schema=schema)
    try:
        for inst, got in served.items():
            opens = [c.open_time for c in got]
            assert opens[0] < restarted - 60_000 and opens[-1] >= until, (inst, "the outage is not covered")
            stored = await cold.query(inst, "1m", final_only=True)
            assert [c.open_time for c in stored if c.open_time <= until] == [t for t in opens if t <= until], inst
            assert_equal_to_tape({inst: stored}, rows)
    finally:
        await cold.close()
        con = await asyncpg.connect(PG_URL)
        try:
            await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await con.close()
    assert check_served(book_tape_path(tape), "BTCUSDT", [book], 10) == [book]


@pytest.mark.timeout(120)
async def test_outlet_writer_and_node_follow_a_nats_that_lost_its_store(
    tmp_path: Path, private_nats: PrivateNats
) -> None:
    """NATS restarted with an empty store (its stream and the writer's consumer gone). An outlet
    alone makes the stream again and publishes what was not acknowledged; then, with a writer and a
    node running, the writer reads the new stream from its start and the node follows it: the store
    and the node end with every candle published since the first restart, as published."""
    import asyncpg

    from deltafeed.cluster import collector, node, subjects
    from deltafeed.cluster.node import ClusterView, StreamFeed
    from deltafeed.cluster.outlet import Outlet
    from deltafeed.cluster.writer import ColdWriter
    from deltafeed.config import Settings
    from deltafeed.model import Candle
    from deltafeed.store.postgres import PostgresStore

    cluster, series = "lost", "binance:BTCUSDT"
    schema = f"deltafeed_t_{uuid.uuid4().hex}"
    t0 = 1_795_000_000_000 - 1_795_000_000_000 % 60_000

    def candle(i: int) -> Candle:
        return Candle(t0 + i * 60_000, 100.0 + i, 102.0 + i, 99.0 + i, 101.0 + i, 1.0 + i, 3 + i, True, True)

    pub = await collector.connect(private_nats.url, "collector")
    outlet = Outlet(pub.jetstream(publish_async_max_pending=500), cluster, "collector")
    await subjects.ensure_stream(pub.jetstream(), cluster)
    outlet.start()
    cold = await PostgresStore.open(PG_URL, schema=schema)
    view = ClusterView(Settings(), cluster, None)
    nc = await node.connect(private_nats.url, "node", view)
    view.nats_connected = True
    writer = ColdWriter(nc, cluster, cold, batch=20)
    feed = StreamFeed(view, nc)

    def lose_the_store() -> None:
        private_nats.kill()
        shutil.rmtree(private_nats.store)
        private_nats.store.mkdir()
        private_nats.start()

    async def published(n: int) -> bool:
        return outlet.published >= n

    async def in_stream(n: int) -> bool:
        """Whether the stream is there and holds ``n`` messages."""
        try:
            info = await nc.jetstream().stream_info(subjects.stream_name(cluster))
        except Exception:  # not there (yet)
            return False
        return int(info.state.messages) == n

    try:
        for i in range(10):
            outlet.candle(series, "1m", candle(i))
        await wait_for("the first candles published", 30, lambda: published(10))
        lose_the_store()
        for i in range(10, 20):
            outlet.candle(series, "1m", candle(i))
        # Nothing else runs: the outlet makes the stream again and publishes the ten.
        await wait_for("the outlet to make the stream again with the ten", 60, lambda: in_stream(10))

        await writer.start()
        await feed.start()
        for i in range(20, 40):
            outlet.candle(series, "1m", candle(i))

        async def has(n: int) -> bool:
            stored = await cold.query(series, "1m")
            return len(stored) == n and len(view.hot.last(series, "1m", 1000)) == n

        await wait_for("the candles stored and served", 30, lambda: has(30))
        lose_the_store()
        for i in range(40, 60):
            outlet.candle(series, "1m", candle(i))
        await wait_for("the later candles stored and served", 60, lambda: has(50))
        want = [candle(i).row() for i in range(10, 60)]
        assert [c.row() for c in await cold.query(series, "1m")] == want
        assert [c.row() for c in await view.candles(series, "1m", limit=1000)] == want
        assert writer.resumed >= 1
    finally:
        await feed.stop()
        await writer.stop()
        await outlet.close()
        await pub.close()
        await nc.close()
        await cold.close()
        con = await asyncpg.connect(PG_URL)
        try:
            await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await con.close()


@pytest.mark.timeout(120)
async def test_collectors_make_their_buckets_again_after_nats_lost_its_store(
    tmp_path: Path, private_nats: PrivateNats
) -> None:
    """NATS restarted with an empty store: the leases, collectors and budgets buckets are gone.
    The collector makes them again, holds its instruments again and goes on publishing; a second
    collector joining afterwards finds them and takes its fair share, each instrument held by one."""
    from clustering import held
    from deltafeed.cluster.collector import Collector
    from deltafeed.cluster.status import cluster_status
    from deltafeed.config import Settings

    cluster = "kvlost"

    def lose_the_store() -> None:
        private_nats.kill()
        shutil.rmtree(private_nats.store)
        private_nats.store.mkdir()
        private_nats.start()

    async with BinanceReplica(symbols=SYMBOLS, rate=4.0, speed=20.0, history_ms=30 * 60_000) as replica:
        settings = Settings(
            symbols=SYMBOLS,
            timeframes=["1m"],
            history="10m",
            rest_url=replica.url,
            ws_url=replica.ws_url,
            cluster=private_nats.url,
            cluster_name=cluster,
        ).validate()
        a, b = (Collector(settings, private_nats.url, cluster, ttl_s=2.0) for _ in range(2))
        stops = {id(x): asyncio.Event() for x in (a, b)}
        runs: list[asyncio.Task[None]] = []
        try:
            await a.start()
            runs.append(asyncio.create_task(a.run(stops[id(a)])))

            async def holds(x: Collector, n: int) -> bool:
                doc = await held(private_nats.url, cluster)
                return sum(1 for who in doc["held"].values() if who == x.id) == n and len(doc["held"]) == len(SYMBOLS)

            await wait_for("a to hold every instrument", 30, lambda: holds(a, len(SYMBOLS)))
            lose_the_store()
            before = a.outlet.published if a.outlet else 0

            async def recovered() -> bool:
                try:
                    doc = await cluster_status(private_nats.url, cluster)
                except Exception:  # not there yet
                    return False
                return (
                    a.buckets_made_again >= 1
                    and {c["id"] for c in doc["collectors"]} == {a.id}
                    and sorted(doc["leases"]) == sorted(f"binance:{s}" for s in SYMBOLS)
                    and all(v["holder"] == a.id for v in doc["leases"].values())
                    and "127.0.0.1" in doc["budgets"].get("binance", {})
                    and a.outlet is not None
                    and a.outlet.published > before
                )

            await wait_for("the buckets made again, the leases held and candles published", 40, recovered)
            # A collector joining now takes its fair share through the new buckets, and the budget's half.
            await b.start()
            runs.append(asyncio.create_task(b.run(stops[id(b)])))

            async def shared() -> bool:
                half = len(SYMBOLS) // 2
                split = a.parts["binance"].applied == b.parts["binance"].applied == (0.5, 0.5)
                return split and await holds(a, half) and await holds(b, half)

            await wait_for("the instruments and the budget shared", 40, shared)
        finally:
            for x in (a, b):
                stops[id(x)].set()
            for t in runs:
                with contextlib.suppress(Exception):
                    await t
