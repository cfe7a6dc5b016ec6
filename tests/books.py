"""The true order book, rebuilt from a replica's book tape independently of deltafeed's book code.

The tape (see ``deltafeed.replicas.books``) has rows ``symbol,seq,time_ms,side,price,size``; the true
book at venue key ``seq`` is every row of the symbol with a key ``<= seq`` applied in file order (a
size of 0 removes the level). Prices and sizes are compared as numbers (``float`` of the text).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from deltafeed.config import Settings

Levels = list[tuple[float, float]]


def true_book(book_tape_path: str | Path, symbol: str, seq: int, depth: int) -> tuple[Levels, Levels]:
    """``(bids, asks)`` of ``symbol`` at venue key ``seq``, the best ``depth`` levels of each, best first."""
    return true_books(book_tape_path, symbol, [seq], depth)[seq]


def true_books(
    book_tape_path: str | Path, symbol: str, seqs: list[int], depth: int
) -> dict[int, tuple[Levels, Levels]]:
    """:func:`true_book` at each of ``seqs``, in one pass over the tape (its keys grow per symbol)."""
    want = sorted(set(seqs))
    out: dict[int, tuple[Levels, Levels]] = {}
    bids: dict[float, float] = {}
    asks: dict[float, float] = {}
    i = 0

    def take_upto(key: int | None) -> None:
        nonlocal i
        while i < len(want) and (key is None or want[i] < key):
            out[want[i]] = (sorted(bids.items(), key=lambda kv: -kv[0])[:depth], sorted(asks.items())[:depth])
            i += 1

    with open(book_tape_path, newline="", encoding="ascii") as f:
        for sym, seq, _t, side_name, price, size in csv.reader(f):
            if sym != symbol:
                continue
            take_upto(int(seq))  # every wanted key below this row's is complete
            side = bids if side_name == "b" else asks
            p, q = float(price), float(size)
            if q == 0:
                side.pop(p, None)
            else:
                side[p] = q
    take_upto(None)
    return out


def tape_keys(book_tape_path: str | Path, symbol: str) -> list[int]:
    """Every distinct venue key of ``symbol`` on the tape, in file order."""
    keys: list[int] = []
    with open(book_tape_path, newline="", encoding="ascii") as f:
        for row in csv.DictReader(f):
            if row["symbol"] == symbol:
                k = int(row["seq"])
                if not keys or keys[-1] != k:
                    keys.append(k)
    return keys


#: Every book fault of the Binance replica, at rates that break a book a few times a minute.
BOOK_FAULTS = {"bookdrop": 6.0, "bookdup": 6.0, "bookreorder": 6.0, "stalebook": 20.0}


def levels(rows: list[list[float]]) -> Levels:
    """``[[price, size], ...]`` as served, as tuples of floats."""
    return [(float(p), float(q)) for p, q in rows]


def check_served(
    book_tape_path: str | Path, symbol: str, docs: list[dict[str, Any]], depth: int
) -> list[dict[str, Any]]:
    """``GET /book`` answers of ``symbol`` at ``depth``: those out of sync have no levels, each in sync
    has ``depth`` levels a side, equal to the tape's true book at its ``venue_seq``. Returns those in sync."""
    assert all(d["bids"] == [] and d["asks"] == [] for d in docs if not d["in_sync"])
    synced = [d for d in docs if d["in_sync"]]
    truth = true_books(book_tape_path, symbol, [d["venue_seq"] for d in synced], depth)
    for d in synced:
        assert (levels(d["bids"]), levels(d["asks"])) == truth[d["venue_seq"]], d["sequence"]
        assert len(d["bids"]) == depth and d["bids"][0][0] < d["asks"][0][0]
    return synced


def check_rebuilt(
    book_tape_path: str | Path, symbol: str, books: list[dict[str, Any]], venue_seq: dict[int, int], depth: int
) -> None:
    """Books a client rebuilt from a server's snapshots and deltas (ccxt's shape, ``nonce`` = the
    server's sequence) equal the tape's true book at the venue key of that sequence (``venue_seq``)."""
    truth = true_books(book_tape_path, symbol, [venue_seq[b["nonce"]] for b in books], depth)
    for b in books:
        assert (levels(b["bids"]), levels(b["asks"])) == truth[venue_seq[b["nonce"]]], b["nonce"]


def book_settings(replica: Any, depth: int, **more: Any) -> Settings:
    """Settings of an engine keeping the Binance replica's BTCUSDT candles (1m) and book to ``depth``."""
    return Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m"],
        history="5m",
        rest_url=replica.url,
        ws_url=replica.ws_url,
        books=["binance:BTCUSDT"],
        book_depth=depth,
        **more,
    ).validate()
