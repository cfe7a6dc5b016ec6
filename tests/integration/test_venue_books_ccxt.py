"""ccxt.pro's ``watch_order_book`` judges the Bybit, Coinbase, Kraken and Hyperliquid replicas' books, with
only its URLs changed: every book it shows equals the true book rebuilt from the replica's book tape
(``tests/books.py``) at some key of the run, level by level, and it follows the book as it moves."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ccxt.pro
import pytest
from test_bybit_clients import bybit_for
from test_coinbase_clients import coinbase_for
from test_hyperliquid_clients import ccxt_for as hyperliquid_for

from books import tape_keys, true_books
from deltafeed.venues import registry


def kraken_for(r: Any) -> Any:
    # ccxt's own checksum check stays off (its default): in ccxt 4.5's Python it calls str.split on the
    # float prices it parsed (ccxt/pro/kraken.py format_number), an AttributeError on any book.
    ex = ccxt.pro.kraken({"enableRateLimit": True})
    ex.urls["api"]["public"] = r.url
    ex.urls["api"]["ws"]["publicV2"] = r.ws_url
    return ex


#: venue -> (replica symbol, ccxt symbol, levels compared, ccxt client, replica extras)
CASES: dict[str, tuple[str, str, int, Callable[[Any], Any], dict[str, Any]]] = {
    "bybit": ("BTCUSDT", "BTC/USDT", 50, bybit_for, {}),
    "coinbase": ("BTC-USD", "BTC/USD", 50, coinbase_for, {}),
    "kraken": ("BTC/USD", "BTC/USD", 10, kraken_for, {}),
    "hyperliquid": ("BTC", "BTC/USDC:USDC", 20, hyperliquid_for, {"book_push_s": 0.1}),
}


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("venue", list(CASES))
async def test_ccxt_watch_order_book_equals_the_tape(tmp_path: Path, venue: str) -> None:
    sym, unified, depth, client, extras = CASES[venue]
    r = registry.get(venue).build_replica(
        symbols=[sym], seed=4, rate=10.0, speed=1.0, history_ms=600_000, tape=tmp_path / "t.csv", **extras
    )
    await r.start()
    ex = client(r)
    seen: list[tuple[list[tuple[float, float]], list[tuple[float, float]]]] = []
    try:
        await ex.load_markets()
        for _ in range(25):
            ob = await asyncio.wait_for(ex.watch_order_book(unified, depth), 10)
            seen.append(([(b[0], b[1]) for b in ob["bids"][:depth]], [(a[0], a[1]) for a in ob["asks"][:depth]]))
    finally:
        await ex.close()
        await r.stop()
    tape = tmp_path / "t.book.csv"
    truths = {tuple(map(tuple, v)) for v in true_books(tape, sym, tape_keys(tape, sym), depth).values()}
    missing = [s for s in seen if (tuple(s[0]), tuple(s[1])) not in truths]
    assert not missing, f"{len(missing)} of {len(seen)} ccxt books are no true book, e.g. {missing[0][0][:3]}"
    assert len({s[0][0] for s in seen}) >= 2 or len({s[1][0] for s in seen}) >= 2  # it followed the moves
