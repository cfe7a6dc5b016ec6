"""The ccxt bridge's pure parts: instrument spelling, the ``urls`` setting mapped onto each exchange's
own ``urls`` (read from the installed ccxt's classes, offline), the continuity checks on ccxt's
unified trade dicts (PROTOCOLS-wave2.md 7: repeats, reorders, id gaps, an overflowing cache), and
OHLCV rows into candles, rolled up for a timeframe an exchange lacks."""

from __future__ import annotations

from collections import Counter
from typing import Any

import ccxt.pro
import pytest

from deltafeed.model import BadInput, Instrument
from deltafeed.venues.ccxt.bridge import (
    Continuity,
    Market,
    base_timeframe,
    candles_from_rows,
    exchange_urls,
    resolve_symbol,
    roll_up,
    trade_from,
)
from deltafeed.venues.ccxt.samples import _trade

T0 = 1_794_582_060_000


def test_instruments_name_the_exchange_and_the_unified_symbol() -> None:
    inst = Instrument.parse("ccxt:okx:BTC/USDT:USDT")
    assert (inst.venue, inst.symbol) == ("ccxt", "OKX:BTC/USDT:USDT")
    assert Market.parse(inst.symbol) == Market("okx", "BTC/USDT:USDT")
    assert Market.parse("kucoin:ETH/USDT") == Market("kucoin", "ETH/USDT")
    for bad in ("okx", "okx:", ":BTC/USDT"):
        with pytest.raises(BadInput, match="is not EXCHANGE:SYMBOL; write it as ccxt:okx:BTC/USDT"):
            Market.parse(bad)
    # deltafeed upper-cases symbols; ccxt's own spelling is found again (Hyperliquid's kPEPE).
    assert resolve_symbol("KPEPE/USDC:USDC", ["kPEPE/USDC:USDC", "BTC/USDC:USDC"]) == "kPEPE/USDC:USDC"
    assert resolve_symbol("BTC/USDT", ["BTC/USDT"]) == "BTC/USDT"
    assert resolve_symbol("XYZ/USDT", ["BTC/USDT"]) is None


def test_simple_urls_rewrite_every_address_of_a_kind_keeping_ccxts_paths() -> None:
    ex = ccxt.pro.binance()
    urls = exchange_urls("binance", ex.urls, {"rest": "http://127.0.0.1:9001", "ws": "ws://127.0.0.1:9001"})
    api = urls["api"]
    assert api["public"] == "http://127.0.0.1:9001/api/v3"
    assert api["sapi"] == "http://127.0.0.1:9001/sapi/v1"
    assert api["fapiPublic"] == "http://127.0.0.1:9001/fapi/v1"
    assert api["ws"]["spot"] == "ws://127.0.0.1:9001/ws"
    assert urls["www"] == ex.urls["www"]  # only urls['api'] is pointed elsewhere
    # A value with a path replaces the addresses whole (the form).
    urls = exchange_urls(
        "binance", ex.urls, {"rest": "http://127.0.0.1:9001/api/v3", "ws": "ws://127.0.0.1:9001/stream"}
    )
    assert urls["api"]["public"] == "http://127.0.0.1:9001/api/v3" and urls["api"]["ws"]["spot"].endswith("/stream")
    # Bybit's {hostname} placeholders go with the host.
    by = exchange_urls("bybit", ccxt.pro.bybit().urls, {"rest": "http://h:1", "ws": "ws://h:1"})["api"]
    assert by["public"] == "http://h:1" and by["ws"]["public"]["spot"] == "ws://h:1/v5/public/spot"


def test_a_raw_urls_override_is_deep_merged_and_a_bad_url_is_one_line() -> None:
    ex = ccxt.pro.kraken()
    urls = exchange_urls("kraken", ex.urls, {"api": {"ws": {"publicV2": "ws://127.0.0.1:1/v2"}}})
    assert urls["api"]["ws"]["publicV2"] == "ws://127.0.0.1:1/v2"
    assert urls["api"]["ws"]["public"] == ex.urls["api"]["ws"]["public"]  # the rest stays
    assert urls["api"]["public"] == ex.urls["api"]["public"]
    with pytest.raises(BadInput, match=r"urls.kraken.ws = 'http://x' is not a ws/wss URL; write it like ws://"):
        exchange_urls("kraken", ex.urls, {"ws": "http://x"})


def batch(*specs: tuple[str, int]) -> list[tuple[str, Any]]:
    """(venue id, Trade) pairs from verbatim ccxt trade dicts of (id, time offset)."""
    errors: Counter[str] = Counter()
    out = []
    for tid, dt in specs:
        got = trade_from(_trade(tid, T0 + dt, 60000.0, 0.1, "sell"), errors)
        assert got is not None
        out.append((got[1], got[2]))
    assert not errors
    return out


def test_ccxt_trade_dicts_become_trades_and_bad_ones_are_counted() -> None:
    errors: Counter[str] = Counter()
    got = trade_from(_trade("7", T0, 60000.5, 0.25, "sell", "BTC/USDT:USDT"), errors)
    assert got is not None
    sym, vid, t = got
    assert (sym, vid, t.time_ms, t.price, t.qty, t.buyer_maker) == ("BTC/USDT:USDT", "7", T0, 60000.5, 0.25, True)
    assert trade_from({**_trade("8", T0, 1.0, 1.0, "buy"), "timestamp": None}, errors) is None
    assert trade_from({**_trade("9", T0, 1.0, 1.0, "buy"), "price": float("nan")}, errors) is None
    assert trade_from("not a dict", errors) is None
    assert errors == Counter({"bad_trade": 2, "impossible_value": 1})


def test_continuity_by_id_where_ids_are_consecutive() -> None:
    c = Continuity(sequential=True)
    trades, loss = c.take(batch(("100", 0), ("101", 10)), 1000)
    assert [t.trade_id for t in trades] == [1, 2] and loss is None  # the builder's own consecutive ids
    trades, loss = c.take(batch(("101", 10), ("102", 20)), 1000)  # ccxt handing one out again
    assert [t.trade_id for t in trades] == [3] and loss is None and c.duplicates == 1
    trades, loss = c.take(
        batch(
            ("105", 50),
        ),
        1000,
    )  # 103 and 104 never came: a hole
    assert len(trades) == 1 and loss == (T0 + 20, T0 + 50) and c.id_gaps == 1
    # A poisoned id far ahead is a hole, and never makes the next trades look like repeats.
    trades, loss = c.take(batch(("9999999", 60), ("106", 70)), 1000)
    assert len(trades) == 2 and loss == (T0 + 50, T0 + 70)


def test_continuity_by_time_elsewhere_and_an_overflowing_cache() -> None:
    c = Continuity(sequential=False)
    trades, loss = c.take(batch(("a", 0), ("c", 30)), 1000)
    assert len(trades) == 2 and loss is None  # ids that are no sequence are not judged
    trades, loss = c.take(batch(("b", 20), ("d", 40)), 1000)  # an older trade: dropped, its span a hole
    assert [t.time_ms for t in trades] == [T0 + 40] and loss == (T0 + 20, T0 + 30) and c.out_of_order == 1
    # As many trades as ccxt's cache holds: some may have been overwritten before this batch.
    full = batch(*((f"x{i}", 100 + i) for i in range(5)))
    trades, loss = c.take(full, 5)
    assert len(trades) == 5 and loss == (T0 + 40, T0 + 100)


def test_ohlcv_rows_become_candles_and_roll_up_for_a_timeframe_the_exchange_lacks() -> None:
    errors: Counter[str] = Counter()
    m = 60_000
    rows = [
        [T0, 10.0, 12.0, 9.0, 11.0, 1.5],
        [T0 + m, 11.0, 11.0, 10.0, 10.5, 2.0],
        [T0 + m + 1, 1.0, 1.0, 1.0, 1.0, 1.0],  # misaligned
        [T0 + 2 * m, 10.5, 13.0, 10.5, 12.0, None],  # ccxt's None volume: 0
        "junk",
    ]
    got = candles_from_rows(rows, m, T0 + 2 * m + 30_000, errors)
    assert [(c.open_time, c.close, c.volume, c.closed) for c in got] == [
        (T0, 11.0, 1.5, True),
        (T0 + m, 10.5, 2.0, True),
        (T0 + 2 * m, 12.0, 0.0, False),
    ]
    assert errors == Counter({"impossible_value": 1, "bad_ohlcv": 1})
    assert base_timeframe("4h", ["1m", "5m", "1h", "2h", "6h"]) == "1h"  # Coinbase has no 4h
    assert base_timeframe("1m", ["1m", "1h"]) == "1m"
    assert base_timeframe("1s", ["1m"]) is None
    five = roll_up(got, 5 * m, T0 + 10 * m)
    assert len(five) == 1
    c = five[0]
    assert (c.open_time, c.open, c.high, c.low, c.close, c.volume) == (T0 - T0 % (5 * m), 10.0, 13.0, 9.0, 12.0, 3.5)


def test_hyperliquid_requests_weigh_what_the_venue_charges() -> None:
    """ccxt paces Hyperliquid at 50 ms a unit (1200 units a minute, the venue's weight budget), so
    each request must cost its weight: 20, 2 for the light kinds, a candleSnapshot one more per 60
    candles its span may answer (at most 5000), with a tenth of margin."""
    from deltafeed.venues.ccxt.bridge import WEIGHT_MARGIN, hyperliquid_weight

    def snapshot(start: int, end: int, interval: str = "1m") -> dict[str, object]:
        return {
            "type": "candleSnapshot",
            "req": {"coin": "BTC", "interval": interval, "startTime": start, "endTime": end},
        }

    assert hyperliquid_weight(snapshot(0, 59 * 60_000)) == 21 * WEIGHT_MARGIN  # 60 candles
    assert hyperliquid_weight(snapshot(0, 10 * 60_000)) == 20 * WEIGHT_MARGIN
    assert hyperliquid_weight(snapshot(0, 10**12)) == (20 + 5000 // 60) * WEIGHT_MARGIN  # the page's most
    assert hyperliquid_weight(snapshot(0, 599 * 300_000, "5m")) == 30 * WEIGHT_MARGIN
    assert hyperliquid_weight({"type": "l2Book", "coin": "BTC"}) == 2 * WEIGHT_MARGIN
    assert hyperliquid_weight({"type": "metaAndAssetCtxs"}) == 20 * WEIGHT_MARGIN
    assert hyperliquid_weight({"coin": "BTC"}) is None and hyperliquid_weight(None) is None
