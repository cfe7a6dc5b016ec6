"""A Binance WebSocket endpoint that serves trade frames pre-encoded and pre-framed, at almost no cost.

bench/throughput.py runs it in a process of its own, so that the client under test, not the source,
is the bottleneck. Every frame of a connection has the same length (padding spaces inside the JSON),
so a block of frames is one byte array, already framed for WebSocket: serving the next block only
writes the new trade ids and the current time into their columns (a few numpy operations per
block) and hands the bytes to the socket, as fast as the client reads them.

- ``/stream?streams=a@trade/b@aggTrade`` (combined frames, ``{"stream":…,"data":…}``) and ``/ws``,
  ``/ws/<stream>`` (raw frames); ``SUBSCRIBE``/``UNSUBSCRIBE`` messages add and remove streams on
  any path (answered like Binance). ``@trade`` and ``@aggTrade`` streams are served (one trade per
  aggregate); other streams (klines) are accepted and stay silent.
- Trade ids are consecutive per symbol and connection, from 100,000,000,000; the trade time is the
  wall clock when the block is made; prices are a fixed random walk, the same in every block.

    python bench/frame_source.py [--port 0] [--frames 4096] [--tls DIR] [--expect 1]

prints ``listening on ws://127.0.0.1:PORT`` (``wss://`` with ``--tls``, then the CA's path, made
like a replica's) and serves until stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
from pathlib import Path
from urllib.parse import parse_qs

import numpy as np
from aiohttp import WSMsgType, web

from deltafeed.replicas.tls import server_context, write_certificates

FIRST_ID = 100_000_000_000  # 12 digits: every id of a run has the same width
ID_DIGITS = 12
TIME_DIGITS = 13  # epoch ms until 2286
_POW = 10 ** np.arange(ID_DIGITS - 1, -1, -1, dtype=np.int64)
HIGH_WATER = 1 << 20  # bytes waiting in the socket's buffer before the source waits


def _payload(kind: str, symbol: str, price: str, qty: str, maker: bool) -> tuple[str, list[int], list[int]]:
    """One trade payload as Binance sends it, with ``#`` for the id digits and ``@`` for the time
    digits; and where those are: (text, id offsets, time offsets)."""
    tid, ts = "#" * ID_DIGITS, "@" * TIME_DIGITS
    m = "true " if maker else "false"  # the same width either way: a space is JSON whitespace
    if kind == "trade":
        text = f'{{"e":"trade","E":{ts},"s":"{symbol}","t":{tid},"p":"{price}","q":"{qty}","T":{ts},"m":{m},"M":true}}'
    else:
        text = (
            f'{{"e":"aggTrade","E":{ts},"s":"{symbol}","a":{tid},"p":"{price}","q":"{qty}",'
            f'"f":{tid},"l":{tid},"T":{ts},"m":{m},"M":true}}'
        )
    return text, _offsets(text, "#", ID_DIGITS), _offsets(text, "@", TIME_DIGITS)


def _offsets(text: str, mark: str, width: int) -> list[int]:
    out, i = [], text.find(mark)
    while i >= 0:
        out.append(i)
        i = text.find(mark, i + width)
    return out


def _header(n: int) -> bytes:
    """A server's (unmasked) WebSocket text frame header for an ``n``-byte payload."""
    return bytes([0x81, n]) if n < 126 else bytes([0x81, 126, n >> 8, n & 0xFF])


class _Group:
    """The frames of streams whose frames have one length: a (rows, width) byte array, rows taking
    the streams in turn, with the columns of the ids and of the time."""

    def __init__(self, streams: list[tuple[str, str]], texts: list[str], ids: list[int], times: list[int]) -> None:
        self.n = len(streams)
        width = len(texts[0])
        self.arr = np.frombuffer("".join(texts).encode("latin-1"), dtype=np.uint8).reshape(-1, width).copy()
        self.id_cols = ids
        self.time_cols = times
        rows = self.arr.shape[0]
        self.seq = np.arange(rows, dtype=np.int64) // self.n  # the row's place in its stream's run
        self.stream_of = np.arange(rows, dtype=np.int64) % self.n
        self.next_id = np.full(self.n, FIRST_ID, dtype=np.int64)
        self.per_block = rows // self.n

    def fill(self, now_ms: int) -> int:
        ids = self.next_id[self.stream_of] + self.seq
        digits = ((ids[:, None] // _POW[None, :]) % 10 + 48).astype(np.uint8)
        for c in self.id_cols:
            self.arr[:, c : c + ID_DIGITS] = digits
        stamp = np.frombuffer(b"%013d" % now_ms, dtype=np.uint8)
        for c in self.time_cols:
            self.arr[:, c : c + TIME_DIGITS] = stamp
        self.next_id += self.per_block
        return self.arr.shape[0]


class Blocks:
    """Blocks of frames for a set of streams: ``(symbol, "trade" | "aggTrade")``, combined or raw."""

    def __init__(self, streams: list[tuple[str, str]], combined: bool, rows: int, seed: int = 7) -> None:
        rnd = random.Random(seed)
        by_width: dict[int, tuple[list[tuple[str, str]], list[list[str]], list[int], list[int]]] = {}
        for symbol, kind in streams:
            price, texts = 50_000.0, []
            for _ in range(rows):
                price = min(max(price + rnd.choice((-1, 1)) * rnd.randint(0, 50) / 100, 10_000.0), 99_999.0)
                qty = f"{rnd.uniform(0.00001, 2):.5f}"
                text, ids, times = _payload(kind, symbol, f"{price:8.2f}", qty, rnd.random() < 0.5)
                if combined:
                    head = f'{{"stream":"{symbol.lower()}@{kind}","data":'
                    text, ids, times = head + text + "}", [i + len(head) for i in ids], [i + len(head) for i in times]
                texts.append(text)
            frame_head = _header(len(texts[0]))
            n = len(frame_head)
            texts = [frame_head.decode("latin-1") + t for t in texts]
            g = by_width.setdefault(len(texts[0]), ([], [], [i + n for i in ids], [i + n for i in times]))
            g[0].append((symbol, kind))
            g[1].append(texts)
        self.groups = []
        for group_streams, per_stream, ids, times in by_width.values():
            interleaved = [per_stream[s][r] for r in range(rows) for s in range(len(group_streams))]
            self.groups.append(_Group(group_streams, interleaved, ids, times))

    def next(self) -> tuple[bytes, int]:
        """The next block of frames and how many trades it holds."""
        now = int(time.time() * 1000)
        n = sum(g.fill(now) for g in self.groups)
        return b"".join(g.arr.tobytes() for g in self.groups), n


def _streams(names: list[str]) -> set[tuple[str, str]]:
    out = set()
    for name in names:
        sym, _, kind = name.partition("@")
        if kind in ("trade", "aggTrade"):
            out.add((sym.upper(), kind))
    return out


class Source:
    """Serves every connection its streams' blocks; with ``expect``, only once the connections open
    carry that many symbols between them (a client that opens many connections gets them all up
    before the flood starts: a handshake behind a saturated event loop would time out)."""

    def __init__(self, frames: int, expect: int) -> None:
        self.frames = frames
        self.expect = expect
        self.served = 0
        self.live: dict[int, set[tuple[str, str]]] = {}

    def ready(self) -> bool:
        return len({sym for streams in self.live.values() for sym, _ in streams}) >= self.expect

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        combined = path == "/stream" or path.startswith("/stream/")
        names = parse_qs(request.query_string).get("streams", [""])[0].split("/") if combined else []
        if path.startswith("/ws/"):
            names = [s for s in path[4:].split("/") if s]
        streams = _streams(names)
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=1 << 20)
        await ws.prepare(request)
        transport = request.transport
        assert transport is not None
        changed = asyncio.Event()
        changed.set()

        async def control() -> None:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                params = [p for p in req.get("params", []) if isinstance(p, str)]
                if req.get("method") == "SUBSCRIBE":
                    streams.update(_streams(params))
                elif req.get("method") == "UNSUBSCRIBE":
                    streams.difference_update(_streams(params))
                changed.set()
                await ws.send_str(json.dumps({"result": None, "id": req.get("id")}))

        reader = asyncio.create_task(control())
        blocks: Blocks | None = None
        self.live[id(ws)] = streams
        try:
            while not reader.done() and not transport.is_closing():
                if changed.is_set():
                    changed.clear()
                    blocks = Blocks(sorted(streams), combined, max(4, self.frames // len(streams))) if streams else None
                if blocks is None or not self.ready():
                    await asyncio.sleep(0.01)
                    continue
                data, n = blocks.next()
                if transport.is_closing():
                    break
                transport.write(data)
                self.served += n
                await asyncio.sleep(0)  # the other connections, and new ones, take their turn
                while transport.get_write_buffer_size() > HIGH_WATER and not transport.is_closing():
                    await asyncio.sleep(0.001)
        finally:
            del self.live[id(ws)]
            reader.cancel()
        return ws


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--frames", type=int, default=4096, help="frames in a block (at least 4 per stream)")
    ap.add_argument("--tls", metavar="DIR", help="serve wss:// with a CA and certificate made in DIR")
    ap.add_argument("--expect", type=int, default=1, help="send once the connections carry this many symbols")
    args = ap.parse_args()
    certs = write_certificates(Path(args.tls)) if args.tls else None
    source = Source(args.frames, args.expect)
    app = web.Application()
    app.router.add_get("/{tail:.*}", source.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=server_context(certs) if certs else None)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on {'wss' if certs else 'ws'}://{args.host}:{port}", flush=True)
    if certs:
        print(f"TLS CA certificate: {certs.ca_file}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        try:
            import uvloop

            uvloop.run(main())
        except ImportError:
            asyncio.run(main())
