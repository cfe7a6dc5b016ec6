"""Order books end to end: ``deltafeed``'s engine keeps the Binance replica's BTCUSDT book (under
dropped, duplicated and reordered deltas and stale snapshots) and serves it over HTTP (``GET /book``,
``?at=``), over WebSocket (``subscribe_book`` through the Python client's ``watch_books``) and in
``/streaming/status``. Every book shown as in sync equals the true book rebuilt from the replica's book
tape at the venue key of the state it shows, level by level."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from books import BOOK_FAULTS, book_settings, check_rebuilt, check_served, levels, true_books
from deltafeed import Client, SyncClient
from deltafeed.api.hub import Hub
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.books import BookEvent
from deltafeed.engine import Engine
from deltafeed.replicas.books import book_tape_path
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import until

pytestmark = pytest.mark.slow

BTC = "binance:BTCUSDT"
DEPTH = 20


async def test_books_served_equal_the_tape(tmp_path: Path) -> None:
    tape = tmp_path / "trades.csv"
    replica = BinanceReplica(
        symbols=["BTCUSDT"], seed=3, rate=20.0, history_ms=600_000, tape=tape, faults=BOOK_FAULTS, faults_seed=2
    )
    await replica.start()
    settings = book_settings(replica, DEPTH, db=str(tmp_path / "c.duckdb"), book_snapshot_every="1s", book_deltas=True)
    engine = Engine(settings)
    keeper = engine.books.keepers[BTC]
    venue_seq: dict[int, int] = {}  # our sequence -> the venue's key of that state

    def remember(ev: BookEvent) -> None:
        if ev.venue_seq is not None:
            venue_seq[ev.sequence] = ev.venue_seq

    keeper.listeners.append(remember)
    await engine.start()
    runner = await start_api(
        engine, Hub(snapshot=engine.snapshot, instruments=engine.instrument_names), "127.0.0.1", 0, None
    )
    url = api_url(runner)
    http_books: list[dict[str, Any]] = []
    ws_books: list[dict[str, Any]] = []
    at_times: list[int] = []
    try:
        await until(lambda: keeper.in_sync, 15, "the book in sync")

        async def watch() -> None:
            async with Client(url) as df:
                async for b in df.watch_books(BTC, 10):
                    ws_books.append(b)

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession() as http:
            for i in range(60):  # 12 s
                async with http.get(f"{url}/book/{BTC}", params={"depth": "15"}) as r:
                    assert r.status == 200
                    doc = await r.json()
                http_books.append(doc)
                if i % 10 == 5:
                    at_times.append(int(time.time() * 1000))
                await asyncio.sleep(0.2)
            async with http.get(f"{url}/streaming/status") as r:
                status = (await r.json())["books"][BTC]
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "deltafeed", "status", "--api", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            cli_out = (await cli.communicate())[0].decode()
            async with http.get(f"{url}/metrics") as r:
                metrics = await r.text()
            async with http.get(f"{url}/book/binance:NOPE") as r:
                assert r.status == 404
            async with http.get(f"{url}/book/{BTC}", params={"depth": "21"}) as r:
                assert r.status == 400 and "1 to 20" in (await r.json())["error"]
            # The blocking client (its own loop in a thread): ccxt's fetch_order_book and watch_order_book.
            sync = SyncClient(url)
            try:
                fetched = await asyncio.to_thread(sync.fetch_order_book, "BTC/USDT", 5)
                watched = [await asyncio.to_thread(sync.watch_order_book, BTC, 5) for _ in range(3)]
            finally:
                await asyncio.to_thread(sync.close)
            await engine.books.history.flush() if engine.books.history else None
            at_docs = []
            for t in at_times:
                async with http.get(f"{url}/book/{BTC}", params={"at": str(t), "depth": "20"}) as r:
                    assert r.status == 200, await r.text()
                    at_docs.append(await r.json())
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        await stop_api(runner)
        await engine.stop()
        await replica.stop()

    injected = replica.faults_injected()
    assert sum(injected.values()) >= 2, injected
    assert sum(keeper.resyncs.values()) >= 1, "no fault broke the book: nothing here would notice a missed resync"
    path = book_tape_path(tape)

    # HTTP: every in-sync answer equals the tape at its venue_seq; out-of-sync answers show no levels.
    synced = check_served(path, "BTCUSDT", http_books, 15)
    assert len(synced) >= 45, f"in sync in only {len(synced)} of {len(http_books)} answers"

    # WebSocket: every book the client rebuilt from snapshot + deltas equals the tape at that state.
    assert len(ws_books) >= 30, len(ws_books)
    check_rebuilt(path, "BTCUSDT", ws_books, venue_seq, 10)

    # ccxt's shapes: fetch_order_book (5 levels, nonce = our sequence), watch_order_book (the next change each call).
    assert set(fetched) >= {"symbol", "bids", "asks", "timestamp", "datetime", "nonce"} and fetched["symbol"] == BTC
    assert len(fetched["bids"]) == 5 or not fetched["in_sync"]
    nonces = [w["nonce"] for w in watched]
    assert nonces == sorted(set(nonces)), nonces
    for b in [fetched, *watched]:
        if b["in_sync"]:
            seq = venue_seq[b["nonce"]]
            assert (levels(b["bids"]), levels(b["asks"])) == true_books(path, "BTCUSDT", [seq], 5)[seq]

    # History: the book as of a past moment is the tape's at the state it names.
    assert all(d["in_sync"] for d in at_docs) or len(at_docs) > 1
    kept = [d for d in at_docs if d["in_sync"]]
    assert kept
    truth = true_books(path, "BTCUSDT", [venue_seq[d["sequence"]] for d in kept], DEPTH)
    for d in kept:
        assert (levels(d["bids"]), levels(d["asks"])) == truth[venue_seq[d["sequence"]]]

    assert f"{BTC} book: " in cli_out and "resyncs" in cli_out, cli_out  # deltafeed status
    assert f'deltafeed_book_in_sync{{instrument="{BTC}"}}' in metrics
    assert f'deltafeed_book_messages_total{{instrument="{BTC}",kind="delta"}}' in metrics
    assert "deltafeed_book_resyncs_total{" in metrics

    # Status: best bid/ask and spread of the book in sync, how often it resynchronised and for how long.
    assert status["resyncs"] and status["longest_out_of_sync_s"] < 3.0, status
    if status["in_sync"]:
        assert status["spread"] == pytest.approx(status["best_ask"] - status["best_bid"])
