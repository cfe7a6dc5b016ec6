"""Order books: deltas per second per core into a book, memory per book, and delta -> consumer latency.

1. **Throughput.** ``--frames`` Binance ``depthUpdate`` frames made by the replicas' simulated book
   (:class:`deltafeed.replicas.books.SimBook`, 1000 levels a side, each frame ``--merge`` steps of a
   random walk merged as a 100 ms push does) are decoded and applied on one core, as the Binance
   book feed does (``venues/binance/book.py``: msgspec decode, the U/u rule, the keeper's book). The
   same decoded changes are also applied to a book on ``sortedcontainers.SortedDict`` (when
   installed) to compare the sorted structure alone, and, when ``.venv-cryptofeed`` exists (``make
   clients``), the same frames go through cryptofeed's own book structure (``order_book.SortedDict``,
   a C extension) parsed with the JSON library cryptofeed uses, in that venv.
2. **Memory** of one book (the keeper's :class:`~deltafeed.books.book.L2Book`) holding 100 and 1000
   levels a side (``tracemalloc``, bytes allocated by filling it).
3. **Latency** from a delta applied to the keeper to a WebSocket consumer holding it: the Binance
   replica (its own process, three symbols) -> the book feed -> the hub -> a ``subscribe_book``
   client over loopback, the feed, hub and client in this one process and event loop (so the figure
   includes the loop's scheduling), for ``--seconds``.

Each figure is the median of ``--repeat`` runs.

    python bench/books.py [--frames 20000] [--merge 6] [--repeat 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

from deltafeed.books import BookKeeper, L2Book
from deltafeed.replicas.books import SimBook
from deltafeed.replicas.sim import SymbolSpec
from deltafeed.venues.binance import book as binance_book

SPEC = SymbolSpec("BTCUSDT", "BTC", "USDT", 2, 6_500_000)
CRYPTOFEED_PY = Path(__file__).resolve().parent.parent / ".venv-cryptofeed" / "bin" / "python"


def make_frames(n: int, merge: int, seed: int) -> tuple[bytes, list[bytes]]:
    """A REST snapshot and ``n`` combined-stream depth frames, as the Binance replica sends them."""
    rng = random.Random(seed)
    ticks = SPEC.start_ticks
    book = SimBook(SPEC, ticks, True, 1_000_000)
    bids, asks = book.levels(1000)
    snapshot = msgspec.json.encode({"lastUpdateId": book.u, "bids": bids, "asks": asks})
    frames = []
    for i in range(n):
        first = book.u
        for _ in range(merge):
            ticks += rng.choice((-3, -2, -1, 0, 0, 1, 2, 3))
            book.step(ticks, rng.random() < 0.5)
        ev = book.merged(first)
        assert ev is not None
        book.trim(ev.last)
        data = {"e": "depthUpdate", "E": 1_780_000_000_000 + i * 100, "s": "BTCUSDT", "U": ev.first, "u": ev.last,
                "b": book.changes(ev.bids, True), "a": book.changes(ev.asks, False)}  # fmt: skip
        frames.append(msgspec.json.encode({"stream": "btcusdt@depth@100ms", "data": data}))
    return snapshot, frames


def deltafeed_rate(snapshot: bytes, frames: list[bytes]) -> float:
    """Frames per second through the Binance rule into a keeper (decode included)."""
    keeper = BookKeeper("binance:BTCUSDT", depth=100, keep=1000)
    sync = binance_book.DepthSync(keeper)
    sync.on_snapshot(binance_book._snapshot.decode(snapshot), 0)
    decode = binance_book._diff.decode
    t0 = time.perf_counter()
    for f in frames:
        sync.on_diff(decode(f).data)
    took = time.perf_counter() - t0
    assert keeper.in_sync and keeper.deltas == len(frames), (keeper.in_sync, keeper.deltas, dict(keeper.resyncs))
    return len(frames) / took


def apply_rates(frames: list[bytes]) -> tuple[float, float | None]:
    """Frames per second applying the decoded changes alone: to the keeper's L2Book, and to a book on
    sortedcontainers' SortedDict (None when it is not installed)."""
    decoded = [binance_book._diff.decode(f).data for f in frames]
    l2 = L2Book(1000)
    t1 = time.perf_counter()
    for d in decoded:
        l2.update(d.b, d.a)
    ours = len(frames) / (time.perf_counter() - t1)
    try:
        from sortedcontainers import SortedDict
    except ImportError:
        return ours, None
    bids: Any = SortedDict()
    asks: Any = SortedDict()
    t0 = time.perf_counter()
    for d in decoded:
        for side, changes, sign in ((bids, d.b, -1.0), (asks, d.a, 1.0)):
            for p, q in changes:
                if q:
                    side[sign * p] = q
                else:
                    side.pop(sign * p, None)
            while len(side) > 1000:
                side.popitem()
    return ours, len(frames) / (time.perf_counter() - t0)


_CRYPTOFEED_SCRIPT = r"""
import sys, time, json
from order_book import SortedDict
try:
    from yapic import json as fast
except ImportError:
    fast = json
frames = open(sys.argv[1], "rb").read().split(b"\n")
snap = fast.loads(open(sys.argv[2], "rb").read())
bids = SortedDict(ordering="DESC"); asks = SortedDict()
for p, q in snap["bids"]: bids[float(p)] = float(q)
for p, q in snap["asks"]: asks[float(p)] = float(q)
t0 = time.perf_counter()
for f in frames:
    d = fast.loads(f)["data"]
    for side, ch in ((bids, d["b"]), (asks, d["a"])):
        for p, q in ch:
            price, size = float(p), float(q)
            if size == 0:
                if price in side:
                    del side[price]
            else:
                side[price] = size
print(len(frames) / (time.perf_counter() - t0))
"""


def cryptofeed_rate(snapshot: bytes, frames: list[bytes]) -> float | None:
    """Frames per second through cryptofeed's book structure in its own venv, or None without it."""
    if not CRYPTOFEED_PY.exists():
        return None
    with tempfile.TemporaryDirectory() as d:
        fp, sp = Path(d) / "frames", Path(d) / "snap"
        fp.write_bytes(b"\n".join(frames))
        sp.write_bytes(snapshot)
        out = subprocess.run(
            [str(CRYPTOFEED_PY), "-c", _CRYPTOFEED_SCRIPT, str(fp), str(sp)],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode != 0:
        print("  cryptofeed run failed:", out.stderr.strip().splitlines()[-1:])
        return None
    return float(out.stdout.strip())


def book_bytes(levels: int) -> int:
    """Bytes allocated by a keeper's book filled with ``levels`` levels a side."""
    prices = [65_000.0 + i * 0.01 for i in range(levels)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    book = L2Book(levels)
    book.update(
        [(p - levels * 0.01, 1.5 + i) for i, p in enumerate(prices)],
        [(p + 0.01, 2.5 + i) for i, p in enumerate(prices)],
    )
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(book) == 2 * levels
    return after - before


async def latency(seconds: float) -> tuple[float, float, int]:
    """p50 and p99 ms from a keeper applying a delta to a subscribe_book client receiving it (three books)."""
    import aiohttp
    from aiohttp import web

    from deltafeed.api.hub import Hub
    from deltafeed.api.ws import add_ws_routes
    from deltafeed.books import BookEvent
    from deltafeed.venues.binance import BinanceSettings

    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]  # a delta of each every 100 ms
    # The replica in a process of its own: its market simulation does not share this event loop.
    replica = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "deltafeed", "replica", "binance", "--symbols", ",".join(symbols),
        "--rate", "50", "--history", "1m", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert replica.stdout is not None
    url = (await replica.stdout.readline()).decode().split()[-1]  # "listening on http://127.0.0.1:PORT"
    keepers = {f"binance:{s}": BookKeeper(f"binance:{s}", depth=20, keep=1000) for s in symbols}
    applied: dict[tuple[str, int], float] = {}

    def stamp(ev: BookEvent) -> None:
        applied[ev.instrument, ev.sequence] = time.perf_counter()

    for k in keepers.values():
        k.listeners.append(stamp)
    vs = BinanceSettings(rest_url=url, ws_url=url.replace("http://", "ws://"))
    feed = binance_book.BinanceBookFeed(vs, {k.partition(":")[2]: v for k, v in keepers.items()})
    feed_task = asyncio.create_task(feed.run())

    class Kept:
        def __init__(self) -> None:
            self.keepers = keepers

    hub = Hub(snapshot=lambda i, tf, n: [], instruments=lambda: [], heartbeat_s=60.0)
    hub.attach_books(Kept())  # type: ignore[arg-type]
    app = web.Application()
    add_ws_routes(app, hub)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    lat: list[float] = []
    try:
        while not all(k.in_sync for k in keepers.values()):
            await asyncio.sleep(0.05)
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"http://127.0.0.1:{runner.addresses[0][1]}/ws") as ws,
        ):
            for name in keepers:
                await ws.send_str(json.dumps({"op": "subscribe_book", "instrument": name}))
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                msg = await ws.receive(timeout=5)
                now = time.perf_counter()
                m = json.loads(msg.data)
                if m["type"] == "book_delta":
                    lat.append((now - applied[m["instrument"], m["data"]["sequence"]]) * 1000)
    finally:
        feed_task.cancel()
        await asyncio.gather(feed_task, return_exceptions=True)
        await runner.cleanup()
        replica.terminate()
        await replica.wait()
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)], len(lat)


def _med(xs: list[float]) -> str:
    """The median, and the runs."""
    return f"median {statistics.median(xs):,.0f} (runs {', '.join(f'{x:,.0f}' for x in xs)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=20_000)
    ap.add_argument("--merge", type=int, default=6, help="book steps per frame (a 100 ms push at ~60 steps/s)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    a = ap.parse_args()
    snapshot, frames = make_frames(a.frames, a.merge, 1)
    docs = [msgspec.json.decode(f)["data"] for f in frames]
    per = sum(len(d["b"]) + len(d["a"]) for d in docs) / len(frames)
    print(f"{a.frames} frames, {per:.1f} level changes per frame on average; {os.cpu_count()} cores, one used")
    ours = [deltafeed_rate(snapshot, frames) for _ in range(a.repeat)]
    print(
        f"deltafeed (decode + U/u rule + keeper): {_med(ours)} frames/s"
        f" = {_med([x * per for x in ours])} level changes/s"
    )
    applied = [apply_rates(frames) for _ in range(a.repeat)]
    print(f"  the book alone (decoded changes applied): L2Book (bisect) {_med([x for x, _ in applied])} frames/s")
    sd = [y for _, y in applied if y is not None]
    print(
        f"  the same on sortedcontainers.SortedDict: {_med(sd)} frames/s" if sd else "  sortedcontainers: not installed"
    )
    cf = [x for x in (cryptofeed_rate(snapshot, frames) for _ in range(a.repeat)) if x is not None]
    if cf:
        print(f"cryptofeed 2.4.1's structure (yapic.json + order_book.SortedDict, its venv): {_med(cf)} frames/s")
    else:
        print("cryptofeed: no .venv-cryptofeed (make clients); skipped")
    for n in (100, 1000):
        sizes = [book_bytes(n) for _ in range(a.repeat)]
        print(f"memory of one book at {n} levels a side: {statistics.median(sizes) / 1024:,.0f} KiB")
    runs = [asyncio.run(latency(a.seconds)) for _ in range(a.repeat)]
    p50 = statistics.median(r[0] for r in runs)
    p99 = statistics.median(r[1] for r in runs)
    print(f"delta -> WebSocket consumer: p50 {p50:.2f} ms, p99 {p99:.2f} ms (medians of {a.repeat} runs of"
          f" {a.seconds:g} s, {', '.join(str(r[2]) for r in runs)} deltas)")  # fmt: skip


if __name__ == "__main__":
    main()
