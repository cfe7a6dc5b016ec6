"""The serving node, the cold-store writer and ``deltafeed candles --cluster`` against the real NATS
JetStream at 127.0.0.1:4222 and the real PostgreSQL of ``$DELTAFEED_TEST_PG``.

Candles are published the way collectors publish them (:mod:`deltafeed.cluster.subjects`: the
subject, the JSON, the ``Nats-Msg-Id``), versions of the same candle in order: forming, then
provisional, then final, a correction, and a stale provisional after the final one. The truth each
test compares with is computed here from what was published (the latest version of each candle, a
final one replaced only by a final one), independently of the code under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

nats = pytest.importorskip("nats")

from deltafeed.api.hub import Hub  # noqa: E402
from deltafeed.api.server import api_url, start_api  # noqa: E402
from deltafeed.client import Client  # noqa: E402
from deltafeed.cluster import subjects  # noqa: E402
from deltafeed.cluster.node import ClusterView, StreamFeed  # noqa: E402
from deltafeed.cluster.writer import DURABLE, ColdWriter  # noqa: E402
from deltafeed.config import Settings  # noqa: E402
from deltafeed.model import Candle, time_ms  # noqa: E402

NATS_URL = "nats://127.0.0.1:4222"
PG_URL = os.environ.get("DELTAFEED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
CLI = [sys.executable, "-m", "deltafeed"]
M = 60_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % M
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"
ODD = "ccxt:KRAKEN:BTC.D/USD"  # a dot, a slash and a colon in the symbol
FX = "oanda:EUR_USD@bid"


def _up(url: str, port: int) -> bool:
    try:
        with socket.create_connection((urlsplit(url).hostname or "127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _up(NATS_URL, 4222), reason="no NATS at 127.0.0.1:4222 (scripts/services.sh starts it)"),
    pytest.mark.skipif(not _up(PG_URL, urlsplit(PG_URL).port or 5432), reason=f"no PostgreSQL at {PG_URL}"),
]


def version(series: str, tf: str, t: int, close: float, state: str, trades: int = 3) -> subjects.CandleMsg:
    c = Candle(t, 100.0, max(100.0, close) + 1, min(100.0, close) - 1, close, 1.0 + close / 4, trades)
    c.closed, c.final = state != "forming", state == "final"
    return subjects.candle_msg(series, tf, c, source="test", sent_ms=int(time.time() * 1000))


def history(series: str, tf: str = "1m", n: int = 30) -> list[subjects.CandleMsg]:
    """What a collector publishes for ``n`` candles: each forming twice, provisional, then final;
    every 7th corrected after; every 5th gets a late provisional after its final (to be ignored);
    the last one still forming."""
    out: list[subjects.CandleMsg] = []
    for i in range(n):
        t = T0 + i * M
        out += [version(series, tf, t, 100 + i, "forming"), version(series, tf, t, 100.5 + i, "forming")]
        if i == n - 1:
            break
        out += [version(series, tf, t, 101 + i, "provisional"), version(series, tf, t, 101 + i, "final")]
        if i % 7 == 3:
            out.append(version(series, tf, t, 102 + i, "final", trades=4))  # a correction
        if i % 5 == 2:
            out.append(version(series, tf, t, 99 + i, "provisional"))  # stale: the final one stands
    return out


def truth(published: list[subjects.CandleMsg]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """The latest version of each candle, a final one replaced only by a final one; per series,
    as rows (open_time, o, h, l, c, v, trades, state), oldest first."""
    best: dict[tuple[str, str, int], subjects.CandleMsg] = {}
    for m in published:
        key = (m.series, m.tf, m.open_time)
        if key not in best or best[key].state != "final" or m.state == "final":
            best[key] = m
    out: dict[tuple[str, str], list[tuple[Any, ...]]] = {}
    for (s, tf, _), m in sorted(best.items()):
        out.setdefault((s, tf), []).append((*m.candle.row(), m.state))
    return out


async def publish(js: Any, cluster: str, msgs: list[subjects.CandleMsg]) -> None:
    for m in msgs:
        data, headers = subjects.encode(m)
        await js.publish(subjects.subject(cluster, subjects.CANDLES, m.series, m.tf), data, headers=headers)


def printed(out: str) -> list[tuple[Any, ...]]:
    """The rows ``deltafeed candles --format json`` printed, as :func:`rows` gives them."""
    keys = ("open", "high", "low", "close", "volume", "trades", "state")
    return [(time_ms(d["open_time"]), *(d[k] for k in keys)) for d in json.loads(out)]


def rows(candles: list[Candle]) -> list[tuple[Any, ...]]:
    return [(c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, c.state) for c in candles]


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[str, Any]]:
    """A fresh cluster on the shared NATS, its stream created; deleted afterwards."""
    name = f"t{uuid.uuid4().hex[:12]}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await subjects.ensure_stream(js, name)
    yield name, nc
    try:
        await js.delete_stream(subjects.stream_name(name))
    finally:
        await nc.close()


@pytest.fixture
async def pg_schema() -> AsyncIterator[str]:
    import asyncpg

    name = f"deltafeed_t_{uuid.uuid4().hex}"
    yield name
    con = await asyncpg.connect(PG_URL)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await con.close()


async def wait_for(cond: Any, timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_serving_node_serves_what_collectors_publish(cluster: tuple[str, Any]) -> None:
    """History published before the node starts is replayed, live updates after it reach the
    HTTP API and a WebSocket subscriber; bad messages are counted and skipped."""
    name, nc = cluster
    js = nc.jetstream()
    before = history(BTC) + history(ODD, "5m", 12) + history(FX, "1m", 8)
    await publish(js, name, before)
    await js.publish(subjects.subject(name, subjects.CANDLES, BTC, "1m"), b"{not json")

    view = ClusterView(Settings(), name, None)
    view.nats_connected = True
    hub = Hub(snapshot=view.snapshot, instruments=view.instrument_names, timeframes=lambda: view.timeframes)
    view.hub = hub
    runner = await start_api(view, hub, "127.0.0.1", 0, None)
    feed = StreamFeed(view, nc)
    try:
        await feed.start()
        await wait_for(lambda: view.caught_up, what="the replay")
        assert view.bad == 1
        base = api_url(runner)
        async with Client(base) as df:
            info = await df.instruments()
            assert {i["name"] for i in info["instruments"]} == {BTC, ODD, FX}
            assert info["timeframes"] == ["1m", "5m"]
            for (series, tf), want in truth(before).items():
                got = await df.fetch_candles(series, tf, limit=1000)
                assert rows(got) == want, (series, tf)
            finals = await df.fetch_candles(BTC, "1m", final=True, limit=1000)
            assert rows(finals) == [r for r in truth(before)[(BTC, "1m")] if r[-1] == "final"]
            async with aiohttp.ClientSession() as http:
                r = await http.post(f"{base}/streaming/stop")
                assert r.status in (400, 403), await r.text()
                status = await (await http.get(f"{base}/streaming/status")).json()
                assert status["stream"]["caught_up"] is True and status["stream"]["bad_messages"] == 1
                ready = await http.get(f"{base}/readyz")
                assert ready.status == 200
                metrics = await (await http.get(f"{base}/metrics")).text()
                assert f'deltafeed_cluster_messages_total{{kind="candles"}} {float(view.candles_in)}' in metrics
                assert "deltafeed_cluster_bad_messages_total 1.0" in metrics
                assert "deltafeed_cluster_caught_up 1.0" in metrics

            # Live: a WebSocket subscriber gets the snapshot, then the candles published after it.
            got: list[Candle] = []

            async def watch() -> None:
                async for c in df.watch_candles(BTC, "1m"):
                    got.append(c)

            task = asyncio.create_task(watch())
            await wait_for(lambda: bool(got), what="the snapshot")
            later = [
                version(BTC, "1m", T0 + 29 * M, 130, "final"),
                version(BTC, "1m", T0 + 30 * M, 131, "forming"),
                version(BTC, "1m", T0 + 30 * M, 131.5, "forming"),
            ]
            await publish(js, name, later)
            await wait_for(lambda: any(c.open_time == T0 + 30 * M and c.close == 131.5 for c in got), what="live")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert any(c.open_time == T0 + 29 * M and c.final and c.close == 130 for c in got)
            served = await df.fetch_candles(BTC, "1m", limit=1000)
            assert rows(served) == truth(before + later)[(BTC, "1m")]
    finally:
        await feed.stop()
        await runner.cleanup()


async def test_writer_stores_exactly_the_published_closed_candles(cluster: tuple[str, Any], pg_schema: str) -> None:
    """The writer's upserts equal the published closed candles (final state and corrections kept,
    forming ones left to the stream); a writer stopped and started again resumes its durable
    consumer without loss; its lag reaches 0."""
    from deltafeed.store.postgres import PostgresStore

    name, nc = cluster
    js = nc.jetstream()
    first = history(BTC, n=40) + history(ODD, "5m", 10)
    second = [*history(FX, n=20), version(BTC, "1m", T0 + 39 * M, 140, "final")]
    cold = await PostgresStore.open(PG_URL, schema=pg_schema)
    try:
        await publish(js, name, first)
        writer = ColdWriter(nc, name, cold, batch=37)  # batches that split versions of a candle
        await writer.start()
        await wait_for(lambda: writer.lag == 0 and writer.written > 0, what="the first part written")
        await writer.stop()
        await publish(js, name, second)
        writer = ColdWriter(nc, name, cold)
        await writer.start()
        await asyncio.sleep(0.5)
        info = await js.consumer_info(subjects.stream_name(name), DURABLE)
        await wait_for(lambda: writer.lag == 0, what="the rest written")
        await writer.stop()
        info = await js.consumer_info(subjects.stream_name(name), DURABLE)
        assert info.num_pending == 0 and info.num_ack_pending == 0
        for (series, tf), want in truth(first + second).items():
            stored = await cold.query(series, tf)
            assert rows(stored) == [r for r in want if r[-1] != "forming"], (series, tf)
        assert writer.bad == 0
    finally:
        await cold.close()


def _start(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``deltafeed ARGS`` logging into ``log``; the process and its API's base URL."""
    with log.open("wb") as f:
        proc = subprocess.Popen([*CLI, *args], stderr=f, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if "serving the API on " in line:
                return proc, line.split("serving the API on ", 1)[1].split()[0]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"deltafeed {' '.join(args)} did not start: {log.read_text()}")


@pytest.mark.slow
async def test_serve_command_and_candles_cluster(cluster: tuple[str, Any], pg_schema: str, tmp_path: Path) -> None:
    """``deltafeed serve --writer`` as its own process serves what is published and writes it to
    PostgreSQL; ``deltafeed candles --cluster`` reads stream and store; bad usage is one line, exit 2."""
    name, nc = cluster
    js = nc.jetstream()
    published = history(BTC, n=25)
    await publish(js, name, published)
    db = ["--db", PG_URL, "--db-schema", pg_schema]
    proc, base = _start(
        ["serve", "--cluster", NATS_URL, "--cluster-name", name, *db, "--writer", "--api", "127.0.0.1:0"],
        tmp_path / "serve.log",
    )
    try:
        want = truth(published)[(BTC, "1m")]
        async with aiohttp.ClientSession() as http:  # ready: the stream is replayed
            deadline = time.monotonic() + 20
            while (await http.get(f"{base}/readyz")).status != 200:
                assert time.monotonic() < deadline, "the node never became ready"
                await asyncio.sleep(0.1)
        async with Client(base) as df:
            assert rows(await df.fetch_candles(BTC, "1m", limit=1000)) == want
            metrics = await (await df._http().get(f"{base}/metrics")).text()
            assert "deltafeed_cluster_writer_candles_total" in metrics
        # the writer has caught up when the durable consumer has nothing left
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            info = await js.consumer_info(subjects.stream_name(name), DURABLE)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)

    # The stream and the store together; then the store alone (everything closed is there).
    out = cli("candles", "BTCUSDT", "1m", "--cluster", NATS_URL, "--cluster-name", name, *db, "--format", "json")
    assert out.returncode == 0, out.stderr
    assert printed(out.stdout) == want
    alone = cli("candles", BTC, "1m", *db, "--format", "json")
    assert printed(alone.stdout) == [r for r in want if r[-1] != "forming"]
    last = cli("candles", BTC, "1m", "--cluster", NATS_URL, "--cluster-name", name, "--last", "3", "--format", "json")
    assert printed(last.stdout) == want[-3:]

    for args, words in (
        (["serve", "--cluster-name", name], "no cluster given"),
        (["serve", "--cluster", "http://x", "--cluster-name", name], "is not a NATS address"),
        (["serve", "--cluster", NATS_URL, "--cluster-name", "a.b"], "is not valid"),
        (["serve", "--cluster", NATS_URL, "--cluster-name", name, "--writer"], "--writer needs --db"),
        (["candles", "binance:NOPE", "1m", "--cluster", NATS_URL, "--cluster-name", name], "no binance:NOPE 1m"),
    ):
        r = cli(*args)
        assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    down = cli("serve", "--cluster", "nats://127.0.0.1:1", "--cluster-name", name, "--api", "127.0.0.1:0")
    assert down.returncode == 69 and "cannot reach NATS" in down.stderr, down.stderr


@pytest.mark.slow
async def test_writer_rides_out_a_cold_store_outage(cluster: tuple[str, Any]) -> None:
    """A private PostgreSQL stopped while candles are published: the writer keeps its batch,
    retries, and once the server is back the store holds exactly the published closed candles;
    nothing was acknowledged before it was written (the consumer has nothing pending at the end)."""
    from deltafeed.store.postgres import PostgresStore
    from pg_server import PrivatePostgres, available

    if not available():
        pytest.skip("no PostgreSQL binaries to start a private server")
    name, nc = cluster
    js = nc.jetstream()
    first, second = history(BTC, n=10), history(ETH, n=15)
    with PrivatePostgres() as pg:
        cold = await PostgresStore.open(pg.url, command_timeout_s=5, connect_timeout_s=2)
        writer = ColdWriter(nc, name, cold)
        try:
            await writer.start()
            await publish(js, name, first)
            await wait_for(lambda: writer.written > 0 and writer.lag == 0, what="the first part written")
            await asyncio.to_thread(pg.stop)
            await publish(js, name, second)
            await wait_for(lambda: writer.failures > 0, what="a refused write")
            info = await js.consumer_info(subjects.stream_name(name), DURABLE)
            assert info.num_ack_pending > 0  # the refused batch is not acknowledged
            await asyncio.to_thread(pg.start)
            deadline = time.monotonic() + 60
            while True:  # everything delivered and acknowledged, which the writer does only once written
                info = await js.consumer_info(subjects.stream_name(name), DURABLE)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                assert time.monotonic() < deadline, f"the writer did not catch up: {info}"
                await asyncio.sleep(0.1)
            assert writer.store_error is None
            for (series, tf), want in truth(first + second).items():
                assert rows(await cold.query(series, tf)) == [r for r in want if r[-1] != "forming"], series
        finally:
            await writer.stop()
            await cold.close()


async def test_writer_killed_and_restarted_never_downgrades_a_final_candle(
    cluster: tuple[str, Any], pg_schema: str, tmp_path: Path
) -> None:
    """A writer process killed with SIGKILL mid-run and a new writer started: versions published
    meanwhile that are not final (a late collector's, after a handover) never replace a final candle
    the first writer stored, and the store ends equal to the published truth."""
    import signal

    from deltafeed.store.postgres import PostgresStore

    name, nc = cluster
    js = nc.jetstream()
    first = history(BTC, n=60)
    db = ["--db", PG_URL, "--db-schema", pg_schema]
    with (tmp_path / "writer.log").open("wb") as f:
        proc = subprocess.Popen(
            [*CLI, "serve", "--cluster", NATS_URL, "--cluster-name", name, *db, "--writer", "--api", "off"],
            stderr=f,
            stdout=subprocess.DEVNULL,
        )
    cold = await PostgresStore.open(PG_URL, schema=pg_schema)
    writer = None
    try:
        await publish(js, name, first[:100])
        deadline = time.monotonic() + 30
        while True:  # the first writer has acknowledged (so written) part of it
            info = None
            with contextlib.suppress(Exception):  # not created yet
                info = await js.consumer_info(subjects.stream_name(name), DURABLE)
            if info is not None and info.ack_floor.stream_seq > 0:
                break
            assert proc.poll() is None, (tmp_path / "writer.log").read_text()
            assert time.monotonic() < deadline, "the first writer wrote nothing"
            await asyncio.sleep(0.05)
        await publish(js, name, first[100:])
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stored_final = [c for c in await cold.query(BTC, "1m") if c.final]
        assert stored_final, "the killed writer stored no final candle"
        # After the kill: a late provisional (and a forming) version of every final candle stored.
        late = [version(BTC, "1m", c.open_time, c.close - 3, "provisional") for c in stored_final]
        late += [version(BTC, "1m", c.open_time, c.close - 4, "forming") for c in stored_final[:3]]
        await publish(js, name, late)
        writer = ColdWriter(nc, name, cold, batch=50)  # a new process's writer: it remembers nothing
        await writer.start()
        deadline = time.monotonic() + 30
        while True:
            info = await js.consumer_info(subjects.stream_name(name), DURABLE)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                break
            assert time.monotonic() < deadline, f"the new writer did not catch up: {info}"
            await asyncio.sleep(0.1)
        want = truth(first + late)[(BTC, "1m")]
        assert rows(await cold.query(BTC, "1m")) == [r for r in want if r[-1] != "forming"]
        assert writer.stale_skipped >= len(stored_final)
    finally:
        if proc.poll() is None:
            proc.kill()
        if writer is not None:
            await writer.stop()
        await cold.close()
