"""The ccxt feed's estimate of the venue's clock against trades far ahead of it: one outlier is
refused and never moves the clock; ten in a row (our estimate lags, e.g. after a bootstrap at a slow
exchange's pace) move it to them, the trades from then on are taken, and the span the refused ones
held is reported for repair."""

from __future__ import annotations

from typing import Any

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.calendar import AlwaysOpen
from deltafeed.model import Candle, Instrument
from deltafeed.series import Series
from deltafeed.venues.ccxt import CcxtSettings
from deltafeed.venues.ccxt.bridge import Continuity
from deltafeed.venues.ccxt.feed import AHEAD_CONFIRM, MAX_SKEW_MS, CcxtFeed

T0 = 1_794_582_000_000
SYM = "BTC/USDC:USDC"


def setup() -> tuple[CcxtFeed, Any, Series, list[tuple[str, int, int]]]:
    repairs: list[tuple[str, int, int]] = []
    closed: list[tuple[str, Candle]] = []
    feed = CcxtFeed(CcxtSettings(), stale_after_s=5.0, on_trade=lambda s, t: None)
    builder = CandleBuilder(
        ["1m"], lambda tf, c: closed.append((tf, c)), lambda tf, a, b: repairs.append((tf, a, b)), vouch=False
    )
    st = Series(Instrument.parse(f"ccxt:hyperliquid:{SYM}"), builder, AlwaysOpen(), feed)
    feed.add(st)
    ex = feed.exchanges["hyperliquid"]
    ex.series[SYM], ex.cont[SYM] = st, Continuity(False)  # what check() does once the markets are loaded
    feed.clock.observe(T0)
    feed._update_skew_bounds()
    return feed, ex, st, repairs


def trade(n: int, t: int) -> dict[str, Any]:
    return {"id": str(n), "timestamp": t, "price": 100.0 + n, "amount": 1.0, "symbol": SYM, "side": "buy"}


def test_one_trade_far_ahead_is_refused_and_the_clock_stays() -> None:
    feed, ex, st, _ = setup()
    ex.clock_read_at = 1e18  # (no clock read is spawned: there is no running loop here)
    feed.on_batch(ex, [SYM], [trade(1, T0 + 1_000), trade(2, T0 + 3_600_000), trade(3, T0 + 2_000)])
    assert st.trades == 2 and feed.decode_errors["impossible_value"] == 1
    assert feed.clock.now_ms() < T0 + MAX_SKEW_MS


def test_ten_trades_in_a_row_far_ahead_move_the_clock_and_the_gap_is_repaired() -> None:
    feed, ex, st, repairs = setup()
    ex.clock_read_at = 1e18
    feed.on_batch(ex, [SYM], [trade(1, T0 + 1_000)])
    ahead = T0 + 3_600_000
    feed.on_batch(ex, [SYM], [trade(10 + i, ahead + i * 500) for i in range(AHEAD_CONFIRM - 1)])
    assert st.trades == 1 and feed.decode_errors["impossible_value"] == AHEAD_CONFIRM - 1
    repairs.clear()
    last = ahead + AHEAD_CONFIRM * 500
    feed.on_batch(ex, [SYM], [trade(99, last), trade(100, last + 500)])
    assert st.trades == 3 and feed.decode_errors["impossible_value"] == AHEAD_CONFIRM - 1
    assert feed.clock.now_ms() >= ahead
    # What the refused trades held is repaired: from the last trade taken before them on.
    assert repairs and repairs[0][1] <= T0 and repairs[0][2] >= ahead - ahead % 60_000, repairs
