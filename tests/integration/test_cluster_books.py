"""Order books through a cluster, on the real NATS JetStream: an engine keeps the Binance replica's
BTCUSDT book (under dropped, duplicated and reordered deltas and stale snapshots) and publishes it
through a collector's outlet; a serving node that starts later serves it over HTTP (``GET /book``)
and WebSocket (``watch_books``). Every book the node shows as in sync equals the true book rebuilt
from the replica's book tape at the venue key of that state, level by level; a publisher that stops
takes the node's book out of sync (no levels)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from books import BOOK_FAULTS, book_settings, check_rebuilt, check_served
from conftest import NATS_URL
from deltafeed import Client
from deltafeed.api.hub import Hub
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.books import BookEvent
from deltafeed.cluster import subjects
from deltafeed.cluster.node import ClusterView, StreamFeed
from deltafeed.cluster.outlet import BOOK_SNAPSHOT_S, EngineSink, Outlet
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.replicas.books import book_tape_path
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import until

pytestmark = pytest.mark.slow

BTC = "binance:BTCUSDT"
DEPTH = 20


@pytest.mark.timeout(120)
async def test_books_served_by_a_node_equal_the_tape(tmp_path: Path, nats_cluster: str) -> None:
    tape = tmp_path / "trades.csv"
    replica = BinanceReplica(
        symbols=["BTCUSDT"], seed=5, rate=20.0, history_ms=600_000, tape=tape, faults=BOOK_FAULTS, faults_seed=4
    )
    await replica.start()
    settings = book_settings(replica, DEPTH, db=":memory:")
    pub = await nats.connect(NATS_URL)
    sub = await nats.connect(NATS_URL)
    engine = Engine(settings)
    outlet = Outlet(pub.jetstream(publish_async_max_pending=500), nats_cluster, "collector-1")
    await subjects.ensure_stream(pub.jetstream(), nats_cluster)
    outlet.start()
    sink = EngineSink(outlet)
    engine.hub = sink
    sink.attach_books(engine.books)
    await engine.start()
    view = ClusterView(Settings(), nats_cluster, None)
    view.nats_connected = True
    hub = Hub(snapshot=view.snapshot, instruments=view.instrument_names, timeframes=lambda: view.timeframes)
    view.hub = hub
    runner = await start_api(view, hub, "127.0.0.1", 0, None)
    url = api_url(runner)
    feed = StreamFeed(view, sub)
    http_books: list[dict[str, Any]] = []
    ws_books: list[dict[str, Any]] = []
    venue_seq: dict[int, int] = {}  # the node's sequence -> the venue's key of that state
    try:
        await until(lambda: engine.books.keepers[BTC].in_sync, 20, "the collector's book in sync")
        await asyncio.sleep(2)  # the node starts late: it must start from a periodic snapshot
        await feed.start()
        await until(lambda: BTC in view.books.keepers, 2 * BOOK_SNAPSHOT_S + 5, "the node to hear of the book")
        keeper = view.books.keepers[BTC]

        def remember(ev: BookEvent) -> None:
            if ev.venue_seq is not None:
                venue_seq[ev.sequence] = ev.venue_seq

        keeper.listeners.append(remember)
        await until(lambda: keeper.in_sync, 2 * BOOK_SNAPSHOT_S + 5, "the node's book in sync")

        async def watch() -> None:
            async with Client(url) as df:
                async for b in df.watch_books(BTC, 10):
                    ws_books.append(b)

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession() as http:
            for _ in range(60):  # 12 s
                async with http.get(f"{url}/book/{BTC}", params={"depth": "15"}) as r:
                    assert r.status == 200, await r.text()
                    http_books.append(await r.json())
                await asyncio.sleep(0.2)
            async with http.get(f"{url}/streaming/status") as r:
                status = await r.json()
            # The collector stops publishing the book: the node's goes out of sync at once.
            sink_books = list(outlet.books)
            outlet.drop_book(BTC)
            await until(lambda: not keeper.in_sync, 10, "the node's book out of sync after its publisher stopped")
            async with http.get(f"{url}/book/{BTC}") as r:
                gone = await r.json()
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await feed.stop()
        await stop_api(runner)
        await engine.stop()
        await outlet.close()
        await replica.stop()
        await pub.close()
        await sub.close()

    assert sink_books == [BTC]
    assert gone["in_sync"] is False and gone["bids"] == [] and gone["asks"] == []
    injected = replica.faults_injected()
    assert sum(injected.values()) >= 2, injected
    path = book_tape_path(tape)

    # HTTP: every in-sync answer equals the tape at its venue_seq; out-of-sync answers show no levels.
    synced = check_served(path, "BTCUSDT", http_books, 15)
    assert len(synced) >= 40, f"in sync in only {len(synced)} of {len(http_books)} answers"
    assert len({d["venue_seq"] for d in synced}) >= 10, "the node's book did not move"

    # WebSocket: every book the client rebuilt from the node's snapshot + deltas equals the tape then.
    assert len(ws_books) >= 30, len(ws_books)
    check_rebuilt(path, "BTCUSDT", ws_books, venue_seq, 10)

    assert status["stream"]["books"] > 0 and BTC in status["books"], status
