"""Candles through a cluster (NATS JetStream), and latency to a consumer on another node.

A serving node with the cold-store writer (``deltafeed serve --writer --db PG``) runs as its own
process, as on another machine; this process plays the collectors, publishing with their own
:class:`~deltafeed.cluster.outlet.Outlet` (changed candles, many acknowledgements in flight). Per run,
on a fresh cluster and schema:

- throughput: ``--series`` x ``--candles`` final 1m candles published at once; printed: candles/s
  acknowledged by JetStream, candles/s until the serving node has applied them all (read from its
  ``/streaming/status``), and candles/s until the writer has them all in PostgreSQL (counted there);
- replay: a second serving node started on the filled stream; printed: messages/s of its replay
  (from its log line);
- latency, collector to consumer: a WebSocket client of the serving node subscribes to one series;
  a forming candle's new version is handed to the outlet every 10 ms (as an engine tick hands its
  changed candles) for ``--seconds``; each version's close is its number, so the client tells when
  it was handed over. Printed: p50/p99 from the hand-over to the client's receipt (one wall clock:
  same machine);
- latency, venue event to consumer (``--venue``): a Binance replica at real speed (its clock is the
  wall clock), a collector (``deltafeed run --cluster``, publishing trades and the BTCUSDT book) as a
  third process, and the same WebSocket client subscribed to the node's trades, then to its book (10
  levels): from the trade's, or the book change's, venue time to receipt.

Medians of ``--runs`` runs (default 3) are printed last.

With ``--engines N`` it measures one collector's cost instead: a Binance replica with N symbols (its
own process) and one collector (``deltafeed run --cluster``, run by ``--python``, e.g. an older
install for a before/after) holding all N; printed per run: seconds until it streams all N, then
the TCP connections open to the replica (WebSocket and REST), and over ``--seconds`` the
collector's CPU share and its RSS.

    python bench/cluster.py [--series 200] [--candles 50] [--seconds 5] [--runs 3] [--venue]
                            [--db postgresql://postgres@127.0.0.1:5432/test] [--nats nats://127.0.0.1:4222]
    python bench/cluster.py --engines 50 [--seconds 20] [--runs 3] [--python PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec
import nats

from deltafeed.cluster import subjects
from deltafeed.cluster.outlet import Outlet
from deltafeed.cluster.writer import DURABLE
from deltafeed.model import Candle

M = 60_000
T0 = 1_795_000_000_000 - 1_795_000_000_000 % M
CLI = [sys.executable, "-m", "deltafeed"]


def start(args: list[str], log: Path, ready: str = "serving the API on ") -> tuple[subprocess.Popen[bytes], str]:
    """``deltafeed ARGS`` as its own process logging into ``log``; its API's URL once ``ready`` shows."""
    with log.open("wb") as f:
        proc = subprocess.Popen([*CLI, *args], stderr=f, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if ready in line:
                return proc, line.split(ready, 1)[1].split()[0] if ready.endswith("on ") else ""
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"deltafeed {' '.join(args)} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def poll(what: str, cond: Any, timeout: float = 120.0) -> float:
    """Wait until ``await cond()`` is true; the perf_counter then."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return time.perf_counter()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def throughput(args: argparse.Namespace, js: Any, cluster: str, base: str, schema: str) -> dict[str, float]:
    n = args.series * args.candles
    outlet = Outlet(js, cluster, "bench")
    outlet.start()
    async with aiohttp.ClientSession() as http:

        async def node_has() -> int:
            async with http.get(f"{base}/streaming/status") as r:
                return int((await r.json())["stream"]["candles"])

        before = await node_has()
        t0 = time.perf_counter()
        for s in range(args.series):
            for k in range(args.candles):
                c = Candle(T0 + k * M, 100.0, 101.0, 99.0, 100.0 + k, 1.0 + s, 10, True, True)
                outlet.candle(f"binance:B{s:04d}USDT", "1m", c)
        t_pub = await poll("the acknowledgements", lambda: _true(outlet.published >= n))
        t_node = await poll("the serving node", lambda: _ge(node_has(), before + n))
    con = await asyncpg.connect(args.db)
    try:

        async def stored() -> bool:
            return int(await con.fetchval(f"SELECT count(*) FROM {schema}.candles_1m")) >= n

        t_pg = await poll("the writer", stored)
    finally:
        await con.close()
    await outlet.close()
    return {"publish": n / (t_pub - t0), "node": n / (t_node - t0), "writer": n / (t_pg - t0)}


async def _true(v: bool) -> bool:
    return v


async def _ge(v: Any, target: int) -> bool:
    return int(await v) >= target


async def ws_latency(base: str, op: dict[str, Any], send: Any, seconds: float) -> list[float]:
    """Subscribe with ``op`` on the node's WebSocket, run ``send(stop)`` and return, per message
    received, ``now - sent`` (s) as ``send``'s ``sent_of(msg)`` tells."""
    got: list[float] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(base.replace("http", "ws", 1) + "/ws") as ws:
        await ws.send_str(msgspec.json.encode(op).decode())
        done = asyncio.Event()

        async def read() -> None:
            async for msg in ws:
                now = time.time()
                doc = msgspec.json.decode(msg.data)
                if os.environ.get("BENCH_DEBUG"):
                    print(doc)
                sent = send.sent_of(doc)
                if sent is not None:
                    got.append(now - sent)

        reader = asyncio.create_task(read())
        await asyncio.sleep(0.3)  # subscribed
        await send.run(seconds)
        await asyncio.sleep(0.5)  # the last ones arrive
        done.set()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
    return got


class Versions:
    """Hands a forming candle's new version to an outlet every 10 ms; its close is its number."""

    def __init__(self, outlet: Outlet, series: str) -> None:
        self.outlet = outlet
        self.series = series
        self.sent: dict[int, float] = {}

    async def run(self, seconds: float) -> None:
        i = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            i += 1
            c = Candle(T0 + 10**6 * M, 100.0, 1e9, 0.0, float(i), float(i), i)
            self.sent[i] = time.time()
            self.outlet.candle(self.series, "1m", c)
            await asyncio.sleep(0.01)

    def sent_of(self, doc: Any) -> float | None:
        if doc.get("type") != "candle":
            return None
        return self.sent.get(int(doc["data"]["close"]))


class VenueTimed:
    """Messages of one ``kind`` (``trade``, ``book_delta``) whose timestamp is the venue's time of
    the event: a replica at real speed, whose clock is the wall clock."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    async def run(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def sent_of(self, doc: Any) -> float | None:
        return doc["timestamp"] / 1000 if doc.get("type") == self.kind else None


async def venue_latency(args: argparse.Namespace, cluster: str, base: str, tmp: Path) -> dict[str, list[float]]:
    """A replica at real speed and a collector publishing trades and the book, as processes; latency
    of trades and of book deltas (venue event -> the node's WebSocket consumer)."""
    replica = subprocess.Popen(
        [*CLI, "replica", "binance", "--symbols", "BTCUSDT", "--speed", "1", "--rate", "50", "--history", "10m"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert replica.stdout is not None
    url = replica.stdout.readline().strip().removeprefix("listening on ")
    ws_url = url.replace("http", "ws", 1)
    env = {**os.environ, "DELTAFEED_CLUSTER_TRADES": "true"}
    log = tmp / "collector.log"
    with log.open("wb") as f:
        collector = subprocess.Popen(
            [
                *CLI,
                "run",
                "--cluster",
                args.nats,
                "--cluster-name",
                cluster,
                "--symbols",
                "BTCUSDT",
                "--timeframes",
                "1m",
                "--history",
                "10m",
                "--rest-url",
                url,
                "--ws-url",
                ws_url,
                "--db",
                str(tmp / "c.duckdb"),
                "--api",
                "off",
                "--books",
                "binance:BTCUSDT",
            ],
            stderr=f,
            stdout=subprocess.DEVNULL,
            env=env,
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def collected() -> bool:
                async with http.get(f"{base}/instruments") as r:
                    return "binance:BTCUSDT" in {i["name"] for i in (await r.json())["instruments"]}

            await poll("the collector's first candle", collected, timeout=60)

            async def book() -> bool:
                async with http.get(f"{base}/book/binance:BTCUSDT") as r:
                    return r.status == 200 and bool((await r.json())["in_sync"])

            await poll("the node's book in sync", book, timeout=60)
        out = {}
        for kind, op in (
            ("trade", {"op": "subscribe_trades", "instrument": "binance:BTCUSDT"}),
            ("book_delta", {"op": "subscribe_book", "instrument": "binance:BTCUSDT", "depth": 10}),
        ):
            out[kind] = got = await ws_latency(base, op, VenueTimed(kind), args.seconds)
            if not got:
                print(f"no {kind} reached the consumer; the collector's log:\n{log.read_text()[-3000:]}")
        return out
    finally:
        stop(collector)
        stop(replica)


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def venue_connections(port: int) -> int:
    """TCP connections established to ``port`` on this machine (/proc/net/tcp and tcp6), WebSocket and
    REST alike: the collector is the only client of the replica."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port:
                    n += 1
    return n


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


async def collector_run(args: argparse.Namespace, run: int) -> dict[str, float]:
    """One collector holding ``--engines`` instruments: time to stream them all, connections, CPU, RSS."""
    from deltafeed.cluster.status import cluster_status

    n = args.engines
    symbols = [f"Z{i:04d}USDT" for i in range(n)]
    cluster = f"bench{uuid.uuid4().hex[:10]}"
    replica = subprocess.Popen(
        [*CLI, "replica", "binance", "--symbols", ",".join(symbols), "--rate", "1", "--speed", "1", "--history", "10m"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert replica.stdout is not None
    url = replica.stdout.readline().strip().removeprefix("listening on ")
    with tempfile.TemporaryDirectory() as d:
        log = Path(d) / "collector.log"
        argv = [
            args.python, "-m", "deltafeed", "run", "--cluster", args.nats, "--cluster-name", cluster,
            "--symbols", ",".join(symbols), "--timeframes", "1m", "--history", "5m",
            "--rest-url", url, "--ws-url", url.replace("http", "ws", 1), "--api", "off",
        ]  # fmt: skip
        with log.open("wb") as f:
            t0 = time.perf_counter()
            collector = subprocess.Popen(argv, stderr=f, stdout=subprocess.DEVNULL)
        try:

            async def streaming() -> bool:
                assert collector.poll() is None, log.read_text()[-3000:]
                return log.read_text(errors="replace").count("collecting binance:Z") >= n

            ready = await poll(f"the collector streaming {n} instruments", streaming, timeout=600) - t0
            doc = await cluster_status(args.nats, cluster)
            held = sum(len(c["instruments"]) for c in doc["collectors"])
            cpu0, w0 = proc_cpu_s(collector.pid), time.perf_counter()
            await asyncio.sleep(args.seconds)
            cpu = (proc_cpu_s(collector.pid) - cpu0) / (time.perf_counter() - w0)
            rss = proc_rss_mb(collector.pid)
            conns = venue_connections(int(url.rsplit(":", 1)[1].split("/")[0]))
        finally:
            stop(collector)
            replica.terminate()
            replica.wait(20)
            nc = await nats.connect(args.nats)
            with contextlib.suppress(Exception):
                js = nc.jetstream()
                await js.delete_stream(subjects.stream_name(cluster))
                for b in subjects.BUCKETS:
                    await js.delete_stream(f"KV_{subjects.bucket_name(cluster, b)}")
            await nc.close()
    out = {
        "held": float(held),
        "ready_s": ready,
        "connections": float(conns),
        "cpu_pct": 100 * cpu,
        "rss_mb": rss,
    }
    print(f"run {run}: " + "  ".join(f"{k} {v:,.1f}" for k, v in out.items()), flush=True)
    return out


async def one_run(args: argparse.Namespace, run: int) -> dict[str, float]:
    cluster = f"bench{uuid.uuid4().hex[:10]}"
    schema = f"deltafeed_bench_{uuid.uuid4().hex[:10]}"
    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    await subjects.ensure_stream(js, cluster)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        node, base = start(
            [
                "serve",
                "--cluster",
                args.nats,
                "--cluster-name",
                cluster,
                "--db",
                args.db,
                "--db-schema",
                schema,
                "--writer",
                "--api",
                "127.0.0.1:0",
            ],
            tmp / "serve.log",
        )
        try:
            out = await throughput(args, js, cluster, base, schema)
            # Another node started on the filled stream: how fast it replays it.
            replay, _ = start(
                ["serve", "--cluster", args.nats, "--cluster-name", cluster, "--api", "127.0.0.1:0"],
                tmp / "replay.log",
                ready="replayed the cluster's stream (",
            )
            stop(replay)
            found = re.search(r"\((\d+) messages in ([\d.]+) s\)", (tmp / "replay.log").read_text())
            if found:
                out["replay"] = int(found[1]) / max(float(found[2]), 1e-6)
            outlet = Outlet(js, cluster, "bench-latency")
            outlet.start()
            op = {"op": "subscribe", "instrument": "binance:LATENCYUSDT", "timeframe": "1m"}
            outlet.candle("binance:LATENCYUSDT", "1m", Candle(T0, 1, 1, 1, 1, 1, 1))  # the series exists
            await asyncio.sleep(0.5)
            lat = await ws_latency(base, op, Versions(outlet, "binance:LATENCYUSDT"), args.seconds)
            await outlet.close()
            out |= {"pub_p50_ms": 1000 * pct(lat, 0.5), "pub_p99_ms": 1000 * pct(lat, 0.99), "pub_n": len(lat)}
            if args.venue:
                got = await venue_latency(args, cluster, base, tmp)
                vl, bl = got["trade"], got["book_delta"]
                out |= {"venue_p50_ms": 1000 * pct(vl, 0.5), "venue_p99_ms": 1000 * pct(vl, 0.99), "venue_n": len(vl)}
                out |= {"book_p50_ms": 1000 * pct(bl, 0.5), "book_p99_ms": 1000 * pct(bl, 0.99), "book_n": len(bl)}
        finally:
            stop(node)
            with contextlib.suppress(Exception):
                info = await js.consumer_info(subjects.stream_name(cluster), DURABLE)
                out["writer_left"] = info.num_pending
            await js.delete_stream(subjects.stream_name(cluster))
            await nc.close()
            con = await asyncpg.connect(args.db)
            await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            await con.close()
    line = "  ".join(f"{k} {v:,.1f}" for k, v in out.items())
    print(f"run {run}: {line}", flush=True)
    return out


async def main(args: argparse.Namespace) -> None:
    if args.engines:
        print(f"one collector, {args.engines} instruments, {args.python}; {args.runs} runs; NATS {args.nats}")
        rs = [await collector_run(args, i + 1) for i in range(args.runs)]
        print("medians: " + "  ".join(f"{k} {statistics.median(r[k] for r in rs):,.1f}" for k in rs[0]))
        return
    n = args.series * args.candles
    print(f"{args.series} series x {args.candles} final 1m candles = {n} per run; {args.runs} runs; NATS {args.nats}")
    results = [await one_run(args, i + 1) for i in range(args.runs)]
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print("medians:")
    print(f"  published (acked by JetStream)      {med['publish']:>10,.0f} candles/s")
    print(f"  applied by the serving node         {med['node']:>10,.0f} candles/s (from the first publish)")
    print(f"  in PostgreSQL via the writer        {med['writer']:>10,.0f} candles/s (from the first publish)")
    if "replay" in med:
        print(f"  replayed by a node started later    {med['replay']:>10,.0f} candles/s (the stream's messages)")
    print(
        f"  collector hand-over -> WS consumer  p50 {med['pub_p50_ms']:.1f} ms  p99 {med['pub_p99_ms']:.1f} ms"
        f"  ({med['pub_n']:.0f} versions per run)"
    )
    if args.venue:
        print(
            f"  venue trade -> WS consumer          p50 {med['venue_p50_ms']:.1f} ms  p99 {med['venue_p99_ms']:.1f} ms"
            f"  ({med['venue_n']:.0f} trades per run)"
        )
        print(
            f"  venue book change -> WS consumer    p50 {med['book_p50_ms']:.1f} ms  p99 {med['book_p99_ms']:.1f} ms"
            f"  ({med['book_n']:.0f} book deltas per run)"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--candles", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--venue", action="store_true", help="also a replica and a collector: venue event -> consumer")
    ap.add_argument("--db", default=os.environ.get("DELTAFEED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--nats", default="nats://127.0.0.1:4222")
    ap.add_argument("--engines", type=int, default=0, help="measure one collector holding this many instruments")
    ap.add_argument("--python", default=sys.executable, help="the interpreter running the collector (--engines)")
    asyncio.run(main(ap.parse_args()))
