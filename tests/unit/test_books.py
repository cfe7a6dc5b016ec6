"""The order-book pieces without sockets: the engine's L2 book and keeper against a plain model, the
replica's simulated book against its own book tape (rebuilt by tests/books.py), and the book faults."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from books import tape_keys, true_book
from deltafeed.books import BookEvent, BookKeeper, L2Book
from deltafeed.replicas.books import STALE_STEPS, BookTape, DeltaFaults, SimBook, book_tape_path
from deltafeed.replicas.faults import FaultSchedule
from deltafeed.replicas.sim import SymbolSpec


def test_l2book_matches_a_dict_model_and_bounds_depth() -> None:
    rng = random.Random(7)
    book = L2Book(max_levels=50)
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    for _ in range(5_000):
        bid = rng.random() < 0.5
        price = float(rng.randrange(900, 1100)) if bid else float(rng.randrange(1000, 1200))
        size = 0.0 if rng.random() < 0.3 else float(rng.randrange(1, 100))
        book.set(bid, price, size)
        side = bids if bid else asks
        if size == 0:
            side.pop(price, None)
        else:
            side[price] = size
        # The model keeps everything; the book only the best 50, so drop the model's worst too.
        for s, rev in ((bids, True), (asks, False)):
            for p in sorted(s, reverse=not rev)[: max(0, len(s) - 50)]:
                del s[p]
    b, a = book.top(50)
    assert b == sorted(bids.items(), key=lambda kv: -kv[0])
    assert a == sorted(asks.items())
    assert len(book.bids.keys) <= 50 and len(book.asks.keys) <= 50
    assert book.best() == (b[0], a[0])


def test_keeper_numbers_changes_and_never_serves_out_of_sync() -> None:
    t = [0.0]
    k = BookKeeper("binance:BTCUSDT", depth=2, keep=10, clock=lambda: t[0])
    heard: list[BookEvent] = []
    k.listeners.append(heard.append)
    assert k.view()["in_sync"] is False and k.view()["bids"] == []
    t[0] = 1.5
    k.snapshot([(100.0, 1.0), (99.0, 2.0), (98.0, 3.0)], [(101.0, 1.0)], 10, 1000)
    assert k.view() == {
        "instrument": "binance:BTCUSDT", "bids": [[100.0, 1.0], [99.0, 2.0]], "asks": [[101.0, 1.0]],
        "in_sync": True, "sequence": 1, "venue_seq": 10, "time": 1000,
    }  # fmt: skip
    k.apply([(100.0, 0.0)], [(100.5, 4.0)], 12, 1100)
    assert k.view(1)["bids"] == [[99.0, 2.0]] and k.view(1)["asks"] == [[100.5, 4.0]]
    assert k.status()["spread"] == 1.5
    k.lost("gap", "U 14 after u 12")
    k.lost("gap")
    assert k.view()["in_sync"] is False and k.view()["bids"] == [] and k.resyncs["gap"] == 2
    t[0] = 2.0
    k.snapshot([(99.0, 1.0)], [(100.0, 1.0)], 20, 1200)
    assert [(e.kind, e.sequence) for e in heard] == [("snapshot", 1), ("delta", 2), ("lost", 2), ("snapshot", 3)]
    assert list(k.periods) == [1.5, 0.5] and k.out_of_sync_s == 2.0


def test_sim_book_tape_rebuilds_every_step(tmp_path: Path) -> None:
    spec = SymbolSpec("BTCUSDT", "BTC", "USDT", 2, 5_000_000)
    path = book_tape_path(tmp_path / "trades.csv")
    assert path.name == "trades.book.csv"
    tape = BookTape(path)
    book = SimBook(spec, 5_000_000, True, 100, levels=30)
    tape.write_book("BTCUSDT", book.u, 0, book)
    rng = random.Random(3)
    ticks = 5_000_000
    states = {book.u: book.levels(30)}
    for i in range(200):
        ticks += rng.randrange(-40, 41)
        ev = book.step(ticks, rng.random() < 0.5)
        tape.write("BTCUSDT", ev.last, i, book, ev.bids, ev.asks)
        states[book.u] = book.levels(30)
    tape.close()
    keys = tape_keys(path, "BTCUSDT")
    assert keys[0] == 100 and len(keys) > 150
    for u in rng.sample(sorted(states), 25):
        bids, asks = true_book(path, "BTCUSDT", u, 30)
        want_b, want_a = states[u]
        assert [(float(p), float(q)) for p, q in want_b] == bids
        assert [(float(p), float(q)) for p, q in want_a] == asks
    # A stale snapshot is an older true state, with its own id.
    u, sb, sa = book.stale_levels(30)
    assert u <= book.u and u in states and (sb, sa) == states[u]
    assert sum(1 for k in states if k > u) >= STALE_STEPS


def test_delta_faults_drop_dup_reorder() -> None:
    now = [0.0]
    injected: list[str] = []
    sched = FaultSchedule({"bookdrop": 60.0, "bookdup": 60.0, "bookreorder": 60.0}, seed=1, clock=lambda: now[0])
    f = DeltaFaults(sched, injected.append)
    assert f.deltas("s", [b"1", b"2"]) == [b"1", b"2"]  # nothing due yet
    now[0] = 30.0  # everything due (once: the events meanwhile join it)
    out = f.deltas("s", [b"1", b"2", b"3", b"4"])
    assert sorted(injected) == ["bookdrop", "bookdup", "bookreorder"]
    assert len(out) == 4 and out != [b"1", b"2", b"3", b"4"]
    # A single message reordered is held back and sent after the next one.
    now[0] = 0.0
    sched2 = FaultSchedule({"bookreorder": 60.0}, seed=1, clock=lambda: now[0])
    g = DeltaFaults(sched2, injected.append)
    now[0] = 30.0
    assert g.deltas("s", [b"a"]) == []
    assert g.deltas("s", [b"b"]) == [b"b", b"a"]


def test_binance_depth_rule_on_crafted_events() -> None:
    """The documented recipe, case by case: buffered events before the snapshot, a stale snapshot, the
    first event straddling lastUpdateId, an old copy skipped, a gap resynchronising."""
    from deltafeed.venues.binance.book import DepthSync, Diff, Snapshot

    def diff(first: int, last: int, bid: float = 0.0) -> Diff:
        return Diff(E=last, s="BTCUSDT", U=first, u=last, b=[(100.0, bid)] if bid else [], a=[])

    k = BookKeeper("binance:BTCUSDT", depth=5, keep=10)
    sync = DepthSync(k)
    for ev in (diff(90, 95, 1.0), diff(96, 101, 2.0), diff(102, 104, 3.0)):
        sync.on_diff(ev)  # buffered: no snapshot yet
    assert not k.in_sync and len(sync.buffer) == 3
    # A snapshot from before the first buffered event: stale, fetched again.
    assert sync.on_snapshot(Snapshot(80, [(99.0, 1.0)], [(101.0, 1.0)]), 0) is False
    assert k.resyncs["stale_snapshot"] == 1 and not k.in_sync
    # lastUpdateId 98 falls inside 96..101: that event applies first, then 102..104.
    assert sync.on_snapshot(Snapshot(98, [(99.0, 1.0)], [(101.0, 1.0)]), 0) is True
    assert k.in_sync and k.venue_seq == 104 and k.view()["bids"] == [[100.0, 3.0], [99.0, 1.0]]
    sync.on_diff(diff(103, 104, 9.0))  # an old copy (a duplicate): skipped
    assert k.venue_seq == 104 and sync.old == 1 and k.in_sync
    sync.on_diff(diff(105, 110, 4.0))
    assert k.view()["bids"][0] == [100.0, 4.0]
    sync.on_diff(diff(112, 115, 5.0))  # 111 missing: a gap
    assert not k.in_sync and k.resyncs["gap"] == 1 and k.view()["bids"] == []
    assert [(d.U, d.u) for d in sync.buffer] == [(112, 115)]  # buffered for the next snapshot


def test_binance_book_symbols_are_split_within_the_url_limit() -> None:
    from deltafeed.venues.binance import codec
    from deltafeed.venues.binance.book import _groups, _stream
    from deltafeed.venues.binance.feed import MAX_URL_BYTES

    symbols = [f"SYM{i:04d}USDT" for i in range(500)]
    groups = _groups("ws://127.0.0.1:9", symbols)
    assert [s for g in groups for s in g] == symbols and len(groups) > 1
    for g in groups:
        assert len(codec.combined_url("ws://127.0.0.1:9", [_stream(s) for s in g])) <= MAX_URL_BYTES
    assert _groups("ws://127.0.0.1:9", ["BTCUSDT"]) == [["BTCUSDT"]]


def test_binance_book_frames_with_impossible_levels_are_counted_and_skipped() -> None:
    from deltafeed.venues.binance import BinanceSettings
    from deltafeed.venues.binance.book import BinanceBookFeed, Snapshot

    k = BookKeeper("binance:BTCUSDT", depth=5, keep=10)
    feed = BinanceBookFeed(BinanceSettings(rest_url="http://127.0.0.1:9", ws_url="ws://127.0.0.1:9"), {"BTCUSDT": k})
    feed.syncs["BTCUSDT"].on_snapshot(Snapshot(10, [(99.0, 1.0)], [(101.0, 1.0)]), 0)
    frame = b'{"stream":"btcusdt@depth@100ms","data":{"E":1,"s":"BTCUSDT","U":11,"u":12,"b":[[%s,"1"]],"a":[]}}'
    for bad in (b'"NaN"', b'"-5"', b'"0"', b'"inf"'):
        feed._on_frame(frame % bad)
    feed._on_frame(b"<html>502</html>")
    feed._on_frame(frame[:40])
    assert feed.errors == {"bad_level": 4, "malformed": 2}
    assert k.view()["bids"] == [[99.0, 1.0]] and k.venue_seq == 10
    feed._on_frame(frame % b'"100.5"')  # the stream goes on
    assert k.view()["bids"][0] == [100.5, 1.0] and k.venue_seq == 12


def test_book_feeds_keep_to_a_share_of_their_venues_limits_made_again_too() -> None:
    """The order books' connections (and Binance's REST snapshots) keep a collector's part of the
    venue's limits, also when the book feed is made again for a book added later."""
    from deltafeed.books import Books
    from deltafeed.config import Settings

    books = Books(Settings(books=["binance:BTCUSDT", "kraken:BTC/USD"]).validate())
    binance: Any = books.feeds["binance"]
    full = (binance.history.limiter.limit, binance.budget.limit)
    books.set_share("binance", 0.5, 0.1)
    books.set_share("kraken", 1.0, 0.5)
    assert (binance.history.limiter.limit, binance.budget.limit) == (full[0] / 2, full[1] // 10)
    kraken: Any = books.feeds["kraken"]
    assert kraken.budget.limit == kraken.budget.full // 2
    books.keepers.clear()
    books._keeper("binance:ETHUSDT")
    books._make_feed("binance")  # made again (a book added while running): still within the part
    again: Any = books.feeds["binance"]
    assert again is not binance and (again.history.limiter.limit, again.budget.limit) == (full[0] / 2, full[1] // 10)
