"""The true order book, rebuilt from a replica's book tape independently of deltafeed's book code.

The tape (see ``deltafeed.replicas.books``) has rows ``symbol,seq,time_ms,side,price,size``; the true
book at venue key ``seq`` is every row of the symbol with a key ``<= seq`` applied in file order (a
size of 0 removes the level). Prices and sizes are compared as numbers (``float`` of the text).
"""

from __future__ import annotations

import csv
from pathlib import Path

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
