"""Binance order books over real loopback sockets: deltafeed's book feed against the replica's
``@depth@100ms`` stream and ``/api/v3/depth`` snapshot, under dropped, duplicated and reordered
deltas, stale snapshots and dropped connections; at every sampled moment a book in sync equals the
true book rebuilt from the replica's book tape at the book's ``venue_seq``, level by level."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from books import true_books
from deltafeed.books import BookKeeper
from deltafeed.replicas.books import book_tape_path
from deltafeed.venues.binance import BinanceSettings
from deltafeed.venues.binance.book import BinanceBookFeed
from deltafeed.venues.binance.replica import BinanceReplica

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
DEPTH = 50


@pytest.mark.slow
async def test_binance_books_equal_the_tape_under_book_faults(tmp_path: Path) -> None:
    tape = tmp_path / "trades.csv"
    faults = {"bookdrop": 10.0, "bookdup": 10.0, "bookreorder": 10.0, "stalebook": 30.0, "close": 5.0, "reset": 5.0}
    replica = BinanceReplica(symbols=SYMBOLS, rate=20.0, history_ms=60_000, tape=tape, faults=faults, faults_seed=5)
    samples: list[tuple[str, int, list[list[float]], list[list[float]]]] = []
    async with replica:
        keepers = {s: BookKeeper(f"binance:{s}", depth=DEPTH, keep=1000) for s in SYMBOLS}
        feed = BinanceBookFeed(BinanceSettings(rest_url=replica.url, ws_url=replica.ws_url), keepers, stale_after_s=5)
        task = asyncio.create_task(feed.run())
        try:
            for _ in range(120):  # 12 s
                await asyncio.sleep(0.1)
                for s, k in keepers.items():
                    v = k.view()
                    if v["in_sync"]:
                        samples.append((s, v["venue_seq"], v["bids"], v["asks"]))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        injected = replica.faults_injected()
    assert injected["bookdrop"] + injected["bookdup"] + injected["bookreorder"] >= 2, injected
    assert len(samples) >= 150, f"in sync too rarely: {len(samples)} samples of 240"
    path = book_tape_path(tape)
    truth = {s: true_books(path, s, [seq for sym, seq, _, _ in samples if sym == s], DEPTH) for s in SYMBOLS}
    for s, seq, bids, asks in samples:
        tb, ta = truth[s][seq]
        assert [tuple(x) for x in bids] == tb, (s, seq)
        assert [tuple(x) for x in asks] == ta, (s, seq)
    for k in keepers.values():
        st = k.status()
        assert st["longest_out_of_sync_s"] < 3.0, st
    if injected["close"] + injected["reset"]:  # a dropped connection resyncs its books, then they are right again
        assert any(k.resyncs["disconnect"] for k in keepers.values()), [dict(k.resyncs) for k in keepers.values()]
    lost = sum(sum(k.resyncs.values()) for k in keepers.values())
    assert lost >= 1, "no fault broke a book: the test would not notice a feed that never resyncs"
