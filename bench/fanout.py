"""Fan-out from the hub to many WebSocket clients: messages delivered per second, and latency.

The server (hub + aiohttp WebSocket endpoints, uvloop) runs here; the clients (picows, uvloop) run
in other processes, so that they do not share the server's core. Every client subscribes to
``/ws/binance:BTCUSDT`` and gets every trade; each trade carries its send time (monotonic ns, a
clock every process shares) in its ``id``, so clients measure delivery latency end to end.

For each client count:
- saturation: the producer publishes as fast as the clients take it (more whenever no client has
  over 200 messages waiting in the hub, so nothing is dropped); printed: messages delivered per
  second, summed over the clients, as they counted them (after a first second that fills the pipes);
- steady rates: the producer publishes so that the clients get ``--rates`` messages per second in
  all (default 100,000 then 500,000), in 10 ms ticks (as a busy engine would), once the clients
  have caught up with the phase before; printed: messages delivered per second and latency p50/p99
  (of one message in 16).

Also printed, per phase: the CPU the server and the client processes used (in cores). Each client
socket's kernel send buffer is capped (``--send-buffer``, 64 KiB), as ``add_ws_routes`` allows, so
that 1000 clients cannot hide gigabytes in the kernel.

    python bench/fanout.py [--clients 100,1000] [--procs 1] [--seconds 5] [--rates 100000,500000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import multiprocessing as mp
import os
import resource
import time
from multiprocessing.queues import Queue
from typing import Any

import msgspec
from aiohttp import web

from deltafeed.api.hub import Hub
from deltafeed.api.ws import add_ws_routes
from deltafeed.model import Trade

INST = "binance:BTCUSDT"
SAMPLE_EVERY = 16  # a client decodes one message in 16 for latency (decoding all would cost more than the frame)
BURST = 20  # trades per producer step in the saturation phase
BACKLOG = 200  # undelivered messages per client the saturation producer allows in the hub
TICK_S = 0.01  # the steady producer's period
SEND_BUFFER = 64 * 1024  # SO_SNDBUF per client: bounds what hides in kernel buffers with 1000 clients


# --- clients (child processes) ------------------------------------------------------------------------


class _Data(msgspec.Struct):
    id: int = 0


class _Msg(msgspec.Struct):
    type: str
    data: _Data


def client_process(url: str, n: int, results: Queue[Any], progress: Any, index: int) -> None:
    import uvloop

    uvloop.run(_clients(url, n, results, progress, index))


async def _clients(url: str, n: int, results: Queue[Any], progress: Any, index: int) -> None:
    import picows

    decode = msgspec.json.Decoder(_Msg).decode
    buckets: collections.Counter[int] = collections.Counter()  # 100 ms bucket -> frames received
    cpu: dict[int, float] = {}  # 100 ms bucket -> this process's CPU time when its first frame came
    latencies: list[tuple[int, int]] = []  # (received at, latency), both ns
    clock = time.monotonic_ns
    done = asyncio.Event()

    class State:
        def __init__(self) -> None:
            self.open = 0
            self.seen = 0
            self.codes: collections.Counter[int] = collections.Counter()

    state = State()

    class Listener(picows.WSListener):
        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type == picows.WSMsgType.TEXT:
                now = clock()
                bucket = now // 100_000_000
                if bucket not in buckets:
                    cpu[bucket] = time.process_time()
                buckets[bucket] += 1
                state.seen += 1
                if state.seen % SAMPLE_EVERY == 0:
                    m = decode(frame.get_payload_as_bytes())
                    if m.type == "trade":
                        latencies.append((now, now - m.data.id))
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                state.codes[frame.get_close_code().value] += 1
                transport.send_close(frame.get_close_code())
                transport.disconnect()

        def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
            state.open -= 1
            if state.open == 0:
                done.set()

    for first in range(0, n, 50):  # in chunks: the server's accept backlog is finite
        await asyncio.gather(*(picows.ws_connect(Listener, url) for _ in range(first, min(n, first + 50))))
        state.open += min(n, first + 50) - first
    results.put(("ready", os.getpid(), n))
    while not done.is_set():  # tell the server how far we got, so that it knows when we caught up
        progress[index] = state.seen
        await asyncio.sleep(0.05)
    results.put(("result", dict(buckets), latencies, cpu, dict(state.codes)))


# --- server and producer (this process) ---------------------------------------------------------------


async def saturate(hub: Hub, seconds: float) -> None:
    """Publish as fast as the clients take it: more whenever no client has BACKLOG messages waiting."""
    end = time.monotonic() + seconds
    clock = time.monotonic_ns
    while time.monotonic() < end:
        if hub.longest_queue() <= BACKLOG:
            for _ in range(BURST):
                hub.trade(INST, Trade("BTCUSDT", clock(), 0, 1.0, 1.0, False))
        await asyncio.sleep(0)


async def steady(hub: Hub, per_second: float, seconds: float) -> int:
    """Publish ``per_second`` trades in ticks of TICK_S; returns the number published."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    published = 0
    clock = time.monotonic_ns
    tick = 0
    while (now := loop.time()) < start + seconds:
        due = int((now - start) * per_second)
        for _ in range(due - published):
            hub.trade(INST, Trade("BTCUSDT", clock(), 0, 1.0, 1.0, False))
        published = due
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * TICK_S - loop.time()))
    return published


def _rate(buckets: collections.Counter[int], t0: int, t1: int) -> float:
    lo, hi = t0 // 100_000_000 + 1, t1 // 100_000_000  # whole buckets inside the window
    frames = sum(v for k, v in buckets.items() if lo <= k < hi)
    return frames / max(1e-9, (hi - lo) / 10)


def _cpu(cpu: dict[int, float], t0: int, t1: int) -> float:
    """Cores a client process used in [t0, t1), from its CPU time at the start of each bucket."""
    inside = sorted(k for k in cpu if t0 // 100_000_000 < k <= t1 // 100_000_000)
    if len(inside) < 2:
        return float("nan")
    return (cpu[inside[-1]] - cpu[inside[0]]) / ((inside[-1] - inside[0]) / 10)


def _pct(values: list[int], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))] / 1e6 if values else float("nan")


async def run_round(n: int, procs: int, seconds: float, rates: list[float], send_buffer: int) -> None:
    hub = Hub(
        snapshot=lambda i, tf, k: [],
        instruments=lambda: [INST],
        queue_max=BACKLOG * 4,
        max_clients=n + 10,
        max_lag_s=30.0,
    )
    app = web.Application()
    add_ws_routes(app, hub, send_buffer=send_buffer or None)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    url = f"ws://127.0.0.1:{runner.addresses[0][1]}/ws/{INST}"
    ctx = mp.get_context("spawn")
    results: Queue[Any] = ctx.Queue()
    progress = ctx.Array("q", procs, lock=False)  # frames each client process received so far
    shares = [n // procs + (i < n % procs) for i in range(procs)]
    children = [
        ctx.Process(target=client_process, args=(url, k, results, progress, i), daemon=True)
        for i, k in enumerate(shares)
        if k
    ]

    async def caught_up() -> None:
        """Until the clients have received everything the hub has written (and it has no backlog)."""
        while sum(progress) < hub.delivered or hub.longest_queue():
            await asyncio.sleep(0.05)

    for p in children:
        p.start()
    loop = asyncio.get_running_loop()
    for _ in children:
        await loop.run_in_executor(None, results.get, True, 120)
    while hub.clients < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)

    phases: list[tuple[str, float, int, int, float]] = []  # name, rate per client, t0, t1, server CPU
    cpu0, t0 = time.process_time(), time.monotonic_ns()
    await saturate(hub, seconds)
    t1, cpu1 = time.monotonic_ns(), time.process_time()
    phases.append(("saturation", float("nan"), t0 + 1_000_000_000, t1, (cpu1 - cpu0) / ((t1 - t0) / 1e9)))
    for total in rates:
        name, per_client = f"{total:,.0f}/s", total / n
        await caught_up()
        cpu0, t0 = time.process_time(), time.monotonic_ns()
        await steady(hub, per_client, seconds)
        t1, cpu1 = time.monotonic_ns(), time.process_time()
        phases.append((name, per_client, t0 + 1_000_000_000, t1, (cpu1 - cpu0) / ((t1 - t0) / 1e9)))
    await asyncio.sleep(0.5)
    await runner.cleanup()  # closes every client (1001): the client processes report and exit

    reports = [await loop.run_in_executor(None, results.get, True, 60) for _ in children]
    for p in children:
        p.join(10)
    codes: collections.Counter[int] = collections.Counter()
    for r in reports:
        codes.update(r[4])
    print(
        f"{n} clients ({len(children)} client process(es)); hub: dropped {hub.dropped}, slow-disconnected "
        f"{hub.disconnected_slow}; close codes {dict(sorted(codes.items()))}"
    )
    for name, per_client, t0, t1, server_cpu in phases:
        buckets: collections.Counter[int] = collections.Counter()
        for r in reports:
            buckets.update(r[1])
        lat = sorted(latency for r in reports for at, latency in r[2] if t0 <= at < t1)
        delivered = _rate(buckets, t0, t1)
        client_cpu = sum(_cpu(r[3], t0, t1) for r in reports)
        if name == "saturation":
            head, latency = "saturation", ""
        else:
            head = f"steady {name} ({per_client:,.0f}/client)"
            latency = f"latency p50 {_pct(lat, 0.5):5.1f} ms p99 {_pct(lat, 0.99):5.1f} ms"
        print(
            f"  {head:<33} delivered {delivered:>10,.0f} msgs/s ({delivered / n:>7,.0f} per client)  {latency:<34}"
            f"  CPU server {server_cpu:4.0%} clients {client_cpu:4.0%}",
            flush=True,
        )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="100,1000", help="client counts to measure, comma separated")
    ap.add_argument("--procs", type=int, default=1, help=f"client processes (the machine has {os.cpu_count()} cores)")
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    ap.add_argument(
        "--rates",
        default="100000,500000",
        help="steady phases: messages per second delivered in all (split over the clients)",
    )
    ap.add_argument("--send-buffer", type=int, default=SEND_BUFFER, help="SO_SNDBUF per client (0: the kernel's)")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    print(
        f"fan-out of trades (~130-byte JSON) to N WebSocket clients in {args.procs} other process(es); "
        f"{args.seconds:g} s per phase, {os.cpu_count()} cores"
    )
    for n in (int(x) for x in args.clients.split(",")):
        await run_round(n, args.procs, args.seconds, [float(r) for r in args.rates.split(",")], args.send_buffer)


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
