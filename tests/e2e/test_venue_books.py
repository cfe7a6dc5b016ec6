"""Order books of Bybit, Coinbase, Kraken and Hyperliquid against their replicas under book faults.

Each case runs the venue's replica with its book faults (a delta message lost, sent twice or sent after
the next one, a stale snapshot, a wrong checksum: whichever the venue can have) and deltafeed's book feed
for that venue over loopback, and records the served book (what ``GET /book`` answers: the keeper's
view) after every change. Afterwards every recorded book that was ``in_sync`` must equal, level by
level, the true book rebuilt from the replica's book tape at the venue key the book was at
(``tests/books.py``, which shares no code with deltafeed's books); the faults must have been injected
and noticed (resyncs), and the periods out of sync must be short.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest

from books import true_books
from deltafeed.books import BookEvent, Books
from deltafeed.config import Settings
from deltafeed.replicas.faults import parse_faults
from deltafeed.venues import registry


@dataclass(frozen=True)
class Case:
    symbols: tuple[str, ...]
    depth: int  # levels served and compared per side
    faults: str
    wall_s: float = 20.0
    extras: tuple[tuple[str, float], ...] = ()  # the replica's own options
    min_resyncs: int = 3
    #: Whether the venue can tell every stale book: then the served key never goes back.
    monotonic: bool = False


CASES = {
    "bybit": Case(
        ("BTCUSDT", "LINEAR:BTCUSDT"),
        50,
        "bookdrop=12,bookdup=12,bookreorder=12,stalebook=20,bookrestart=9,drop=4",
    ),
    # No stalebook: Coinbase's book has no sequence to tell a stale snapshot by (its replica has none).
    "coinbase": Case(("BTC-USD", "ETH-USD"), 50, "bookdrop=12,bookdup=12,bookreorder=12,seqgap=4", monotonic=True),
    # Depth 10: Kraken's checksum covers the top 10 levels, all that is served and compared here.
    "kraken": Case(("BTC/USD", "ETH/USD"), 10, "bookdrop=12,bookdup=12,bookreorder=12,stalebook=20,badchecksum=12"),
    # Snapshots only (20 levels), pushed every 50 ms here (0.5 s on the venue): a lost frame costs
    # nothing, a copy or a late or stale frame is skipped.
    "hyperliquid": Case(
        ("BTC", "ETH"),
        20,
        "bookdrop=12,bookdup=12,bookreorder=12,stalebook=20",
        20.0,
        (("book_push_s", 0.05),),
        min_resyncs=0,
        monotonic=True,
    ),
}


@dataclass
class Seen:
    symbol: str
    in_sync: bool
    venue_seq: int | None
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("venue", list(CASES))
async def test_served_books_equal_the_tape_under_book_faults(tmp_path: Path, venue: str) -> None:
    case = CASES[venue]
    v = registry.get(venue)
    tape = tmp_path / "trades.csv"
    replica = v.build_replica(
        symbols=list(case.symbols), seed=5, rate=20.0, speed=1.0, history_ms=120_000, tape=tape,
        faults=parse_faults(case.faults), faults_seed=11, **dict(case.extras),
    )  # fmt: skip
    await replica.start()
    seen: list[Seen] = []
    try:
        names = [f"{venue}:{s}" for s in case.symbols]
        settings = Settings(
            symbols=names, books=names, book_depth=case.depth, venues={venue: v.replica_settings(replica)}
        ).validate()
        books = Books(settings)
        for inst, k in books.keepers.items():
            sym = inst.partition(":")[2]

            def record(ev: BookEvent, k=k, sym=sym) -> None:  # type: ignore[no-untyped-def]
                view = k.view(case.depth)
                seen.append(Seen(sym, view["in_sync"], view["venue_seq"], view["bids"], view["asks"]))

            k.listeners.append(record)
        books.start()
        try:
            await asyncio.sleep(case.wall_s)
        finally:
            status = books.status()
            await books.stop()
    finally:
        await replica.stop()
    injected = {k: n for k, n in replica.faults_injected().items() if n}
    book_tape = tmp_path / "trades.book.csv"
    compared = mismatched = 0
    problems: list[str] = []
    for sym in case.symbols:
        mine = [s for s in seen if s.symbol == sym and s.in_sync and s.venue_seq is not None]
        if case.monotonic:
            keys = [s.venue_seq for s in mine]
            assert keys == sorted(keys), f"{sym}: the served book went back in time"
        truth = true_books(book_tape, sym, [s.venue_seq for s in mine if s.venue_seq is not None], case.depth)
        for s in mine:
            assert s.venue_seq is not None
            tb, ta = truth[s.venue_seq]
            compared += 1
            if [tuple(x) for x in s.bids] != tb or [tuple(x) for x in s.asks] != ta:
                mismatched += 1
                if len(problems) < 5:
                    problems.append(
                        f"{sym} at {s.venue_seq}: served {s.bids[:3]} / {s.asks[:3]}, true {tb[:3]} / {ta[:3]}"
                    )
    per = status["books"]
    longest = max(b["longest_out_of_sync_s"] for b in per.values())
    out_s = sum(b["out_of_sync_s"] for b in per.values())
    resyncs = {k: sum(b["resyncs"].get(k, 0) for b in per.values()) for b in per.values() for k in b["resyncs"]}
    print(
        f"\n{venue} books: compared {compared} served books, {mismatched} mismatched; faults {injected}; "
        f"resyncs {resyncs}; out of sync {out_s:.2f} s in all, longest {longest:.2f} s; feed {status['book_feeds']}"
    )
    assert not problems, "\n".join(problems)
    assert compared >= 200 * len(case.symbols)
    want = set(parse_faults(case.faults))
    assert want <= set(injected), injected
    assert sum(resyncs.values()) >= case.min_resyncs, resyncs
    assert longest < 2.0
    assert out_s < 0.2 * case.wall_s * len(case.symbols)
