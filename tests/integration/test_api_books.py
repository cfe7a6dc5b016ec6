"""WebSocket order-book subscriptions over real loopback sockets: a keeper driven like a venue feed
drives it, and an aiohttp client rebuilds the book from the snapshot and deltas, checking that each
delta follows the previous message (``prev``). A client too slow for the deltas gets a fresh snapshot,
never a stream with a hole."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from deltafeed.api.hub import Hub
from deltafeed.api.ws import add_ws_routes
from deltafeed.books import BookKeeper

BTC = "binance:BTCUSDT"


class Kept:
    """What the hub reads of the run's books: the keepers by instrument."""

    def __init__(self, *keepers: BookKeeper) -> None:
        self.keepers = {k.instrument: k for k in keepers}


@asynccontextmanager
async def serve(queue_max: int) -> AsyncIterator[tuple[Hub, BookKeeper, str]]:
    """A hub with one kept book on a free port (a small send buffer: a client that does not read shows soon)."""
    keeper = BookKeeper(BTC, depth=5, keep=50)
    hub = Hub(snapshot=lambda i, tf, n: [], instruments=lambda: [BTC], heartbeat_s=60.0, queue_max=queue_max)
    hub.attach_books(Kept(keeper))  # type: ignore[arg-type]
    app = web.Application()
    add_ws_routes(app, hub, send_buffer=4096)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield hub, keeper, f"http://127.0.0.1:{runner.addresses[0][1]}/ws"
    finally:
        await runner.cleanup()


class Model:
    """The venue's book as the test drives it, independent of deltafeed's book code."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.bids = {100.0 - i: float(i + 1) for i in range(20)}
        self.asks = {101.0 + i: float(i + 1) for i in range(20)}

    def step(self, keeper: BookKeeper, n: int) -> None:
        db: list[tuple[float, float]] = []
        da: list[tuple[float, float]] = []
        for _ in range(3):
            bid = self.rng.random() < 0.5
            side, ch = (self.bids, db) if bid else (self.asks, da)
            p = float(self.rng.randrange(94, 101) if bid else self.rng.randrange(101, 108))
            q = 0.0 if self.rng.random() < 0.3 else float(self.rng.randrange(1, 9))
            ch.append((p, q))
            if q:
                side[p] = q
            else:
                side.pop(p, None)
        keeper.apply(db, da, n, n)

    def top(self, depth: int) -> tuple[list[list[float]], list[list[float]]]:
        return (
            [[p, q] for p, q in sorted(self.bids.items(), reverse=True)[:depth]],
            [[p, q] for p, q in sorted(self.asks.items())[:depth]],
        )


class Rebuilt:
    """The client's book: snapshot, then deltas that must each follow the previous message."""

    def __init__(self) -> None:
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.seq: int | None = None
        self.snapshots = 0
        self.deltas = 0

    def take(self, m: dict[str, Any]) -> None:
        d = m["data"]
        if m["type"] == "book_snapshot":
            self.bids = {p: q for p, q in d["bids"]}
            self.asks = {p: q for p, q in d["asks"]}
            self.snapshots += 1
        else:
            assert m["type"] == "book_delta", m
            assert d["prev"] == self.seq, (d["prev"], self.seq)
            for side, ch in ((self.bids, d["bids"]), (self.asks, d["asks"])):
                for p, q in ch:
                    if q:
                        side[p] = q
                    else:
                        side.pop(p, None)
            self.deltas += 1
        self.seq = d["sequence"]

    def top(self) -> tuple[list[list[float]], list[list[float]]]:
        return [[p, q] for p, q in sorted(self.bids.items(), reverse=True)], [
            [p, q] for p, q in sorted(self.asks.items())
        ]


async def _read_until_quiet(ws: aiohttp.ClientWebSocketResponse, book: Rebuilt, timeout: float = 0.5) -> None:
    while True:
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            return
        assert msg.type == WSMsgType.TEXT, msg
        book.take(json.loads(msg.data))


async def test_subscribe_book_snapshot_then_deltas_equal_the_book() -> None:
    model = Model(1)
    async with serve(1000) as (_, keeper, url), aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.send_json({"op": "subscribe_book", "instrument": "binance:btcusdt", "depth": 9})
        assert "1 to 5" in json.loads((await ws.receive(timeout=3)).data)["message"]
        await ws.send_json({"op": "subscribe_book", "instrument": "binance:ETHUSDT"})
        assert json.loads((await ws.receive(timeout=3)).data)["type"] == "error"
        await ws.send_json({"op": "subscribe_book", "instrument": BTC})
        assert json.loads((await ws.receive(timeout=3)).data)["type"] == "subscribed"
        first = json.loads((await ws.receive(timeout=3)).data)
        assert first["type"] == "book_snapshot" and first["data"]["in_sync"] is False and first["data"]["bids"] == []
        book = Rebuilt()
        book.take(first)
        keeper.snapshot(list(model.bids.items()), list(model.asks.items()), 1, 1)
        for n in range(2, 40):
            model.step(keeper, n)
        await _read_until_quiet(ws, book)
        assert book.top() == model.top(5) and book.snapshots == 2 and book.deltas > 10
        keeper.lost("gap")  # out of sync: a snapshot with no levels, then a fresh one
        await _read_until_quiet(ws, book)
        assert book.top() == ([], []) and book.snapshots == 3
        keeper.snapshot(list(model.bids.items()), list(model.asks.items()), 50, 50)
        model.step(keeper, 51)
        await _read_until_quiet(ws, book)
        assert book.top() == model.top(5)
        await ws.send_json({"op": "unsubscribe_book", "instrument": BTC})
        assert json.loads((await ws.receive(timeout=3)).data)["type"] == "unsubscribed"
        model.step(keeper, 52)
        with pytest.raises(TimeoutError):
            await ws.receive(timeout=0.3)


def _small_receive_buffer(addr_info: Any) -> socket.socket:
    sock = socket.socket(addr_info[0], addr_info[1], addr_info[2])
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    return sock


async def test_a_slow_client_gets_a_fresh_snapshot_not_a_hole() -> None:
    model = Model(2)
    connector = aiohttp.TCPConnector(socket_factory=_small_receive_buffer)
    async with (
        serve(8) as (hub, keeper, url),
        aiohttp.ClientSession(connector=connector) as http,
        http.ws_connect(url) as ws,
    ):
        keeper.snapshot(list(model.bids.items()), list(model.asks.items()), 1, 1)
        await ws.send_json({"op": "subscribe_book", "instrument": BTC})
        await asyncio.sleep(0.1)
        for n in range(2, 3000):  # the client reads nothing meanwhile
            model.step(keeper, n)
            if n % 50 == 0:
                await asyncio.sleep(0)
        book = Rebuilt()
        assert json.loads((await ws.receive(timeout=3)).data)["type"] == "subscribed"
        await _read_until_quiet(ws, book)  # the fresh snapshot comes once the queue has room
        assert hub.book_resnapshots >= 1 and book.snapshots >= 2, (hub.book_resnapshots, book.snapshots)
        assert book.top() == model.top(5)
        assert not ws.closed and hub.disconnected_slow == 0
