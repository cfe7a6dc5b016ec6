"""What ccxt hands the bridge, as fuzz seeds: batches of unified trade dicts (``watch_trades``) and
OHLCV rows (``fetch_ohlcv``), in ccxt's unified structures (the Manual's "Trade structure" and
"OHLCV structure"), serialized as JSON. The bridge's converters must take any of it without raising.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import msgspec

from deltafeed.venues.base import SAMPLE_HOUR_MS, FuzzTarget
from deltafeed.venues.ccxt.bridge import Continuity, candles_from_rows, trade_from


def _trade(tid: str, ms: int, price: float, amount: float, side: str, symbol: str = "BTC/USDT") -> dict[str, Any]:
    """A trade as ccxt's unified structure has it (``info`` holds the exchange's raw item)."""
    return {
        "info": {"e": "trade", "s": symbol.replace("/", ""), "t": tid, "p": str(price), "q": str(amount)},
        "timestamp": ms,
        "datetime": None,
        "symbol": symbol,
        "id": tid,
        "order": None,
        "type": None,
        "side": side,
        "takerOrMaker": None,
        "price": price,
        "amount": amount,
        "cost": price * amount,
        "fee": None,
        "fees": [],
    }


T0 = SAMPLE_HOUR_MS + 60_000
TRADE_BATCHES: list[bytes] = [
    json.dumps([_trade("12345", T0, 60000.5, 0.01, "buy"), _trade("12346", T0 + 5, 60001.0, 0.2, "sell")]).encode(),
    json.dumps([_trade("12347", T0 + 900, 59999.0, 1.5, "buy", "BTC/USDT:USDT")]).encode(),
    json.dumps([]).encode(),
]
BAD_TRADE_BATCHES: list[bytes] = [
    # ccxt returns NaN-free floats, but an exchange's "0" price or a missing timestamp reaches it as is.
    json.dumps([{**_trade("1", T0, 60000.0, 0.1, "buy"), "price": 0}]).encode(),
    json.dumps([{**_trade("2", T0, 60000.0, 0.1, "buy"), "timestamp": None}]).encode(),
    b'[{"symbol": "BTC/USDT", "price": 1.0',  # cut short
]
OHLCV_PAGES: list[bytes] = [
    json.dumps(
        [[T0, 60000.0, 60010.5, 59990.0, 60005.0, 12.5], [T0 + 60_000, 60005.0, 60005.0, 60005.0, 60005.0, 0.0]]
    ).encode(),
    json.dumps([]).encode(),
]
BAD_OHLCV_PAGES: list[bytes] = [
    json.dumps([[T0 + 1, 1.0, 2.0, 0.5, 1.5, 3.0]]).encode(),  # not aligned to the minute
    json.dumps([[T0, 1.0, 0.5, 2.0, 1.5, 3.0]]).encode(),  # high below low
    b"{}",
]


_UNREADABLE = object()


def _decoded(data: bytes, errors: Counter[str], kind: str) -> Any:
    """A sample's JSON, or :data:`_UNREADABLE` counted as ``kind`` (the JSON around the sample is
    the harness's, not the bridge's: ccxt hands the bridge Python objects)."""
    try:
        return msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        errors[kind] += 1
        return _UNREADABLE


def fuzz_targets() -> list[FuzzTarget]:
    trade_errors: Counter[str] = Counter()
    cont = Continuity(sequential=True)

    def run_trades(data: bytes) -> object:
        batch = _decoded(data, trade_errors, "bad_batch")
        if batch is _UNREADABLE:
            return None
        if not isinstance(batch, list):
            trade_errors["bad_batch"] += 1
            return None
        items = []
        for item in batch:
            got = trade_from(item, trade_errors)
            if got is not None:
                items.append((got[1], got[2]))
        return cont.take(items, 100_000)

    ohlcv_errors: Counter[str] = Counter()

    def run_ohlcv(data: bytes) -> object:
        rows = _decoded(data, ohlcv_errors, "bad_ohlcv")
        if rows is _UNREADABLE:
            return None
        return candles_from_rows(rows, 60_000, T0 + 3_600_000, ohlcv_errors)

    return [
        FuzzTarget(
            name="ccxt_trades",
            seeds=TRADE_BATCHES + BAD_TRADE_BATCHES,
            bad_seeds=BAD_TRADE_BATCHES,
            run=run_trades,
            skips=lambda: trade_errors,
        ),
        FuzzTarget(
            name="ccxt_ohlcv",
            seeds=OHLCV_PAGES + BAD_OHLCV_PAGES,
            bad_seeds=BAD_OHLCV_PAGES,
            run=run_ohlcv,
            skips=lambda: ohlcv_errors,
        ),
    ]
