"""The Hyperliquid feed's verification policy without a network: synthetic per-coin ids (repeats left out,
a hole after every reconnect), and the venue's candle merged as final only once the venue moved on
and its trade count equals ours."""

from __future__ import annotations

import asyncio
from typing import Any

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.calendar import AlwaysOpen
from deltafeed.model import Candle, Instrument
from deltafeed.series import Series
from deltafeed.venues.hyperliquid import HyperliquidSettings
from deltafeed.venues.hyperliquid import codec as hl
from deltafeed.venues.hyperliquid.feed import HyperliquidFeed
from helpers import until

T0 = 1_794_582_000_000


class _Ws:
    def __init__(self, connects: int) -> None:
        self.connects = connects
        self.connected_at = 0.0
        self.connected = asyncio.Event()
        self.connected.set()
        self.sent: list[bytes] = []

    def send(self, body: bytes) -> None:
        self.sent.append(body)


def setup() -> tuple[HyperliquidFeed, Series, list[tuple[str, Candle]], list[tuple[str, int, int]]]:
    closed: list[tuple[str, Candle]] = []
    repairs: list[tuple[str, int, int]] = []
    feed = HyperliquidFeed(
        HyperliquidSettings(), venue_candles=True, stale_after_s=10.0, connect_budget=10, on_trade=lambda s, t: None
    )
    builder = CandleBuilder(
        ["1m"], lambda tf, c: closed.append((tf, c)), lambda tf, a, b: repairs.append((tf, a, b)), vouch=False
    )
    st = Series(Instrument.parse("hyperliquid:BTC"), builder, AlwaysOpen(), feed)
    feed.add(st)
    feed.clock.observe(T0)
    feed._update_skew_bounds()
    return feed, st, closed, repairs


def trades(*rows: tuple[int, int, float]) -> bytes:
    return hl.trades_frame([hl.trade_obj("BTC", tid, t, px, 1.0, "B") for tid, t, px in rows])


def candle(t: int, n: int, **kw: Any) -> bytes:
    c = Candle(t, kw.get("o", 10.0), kw.get("h", 12.0), kw.get("l", 10.0), kw.get("c", 12.0), float(n), n)
    return hl.candle_frame("BTC", "1m", c)


async def test_repeats_are_left_out_and_a_reconnect_is_a_hole() -> None:
    feed, st, _, repairs = setup()
    frame = trades((100, T0 + 1, 10.0), (340, T0 + 2, 11.0))
    feed.on_frame(frame)
    feed.on_frame(frame)  # a dup
    assert st.trades == 2 and feed.out_of_order == 2
    ws = _Ws(connects=2)
    feed._on_connect(feed.pool.links[0], ws)  # type: ignore[arg-type]
    await until(lambda: len(ws.sent) == 2, 5.0, "both subscriptions sent (paced)")
    assert hl.subscribe("trades", "BTC") in ws.sent and hl.subscribe("candle", "BTC", "1m") in ws.sent
    repairs.clear()
    feed.on_frame(trades((900, T0 + 70_000, 12.0)))
    st.builder.release_held()  # the engine's next tick: the hole is declared
    assert st.builder.gaps == 1 and repairs and repairs[0][0] == "1m"


def test_the_venue_candle_is_final_only_when_the_venue_moved_on_and_counts_match() -> None:
    feed, _, closed, _ = setup()
    feed.on_frame(trades((1, T0 + 1, 10.0), (2, T0 + 2, 12.0)))
    feed.on_frame(candle(T0, 2))
    assert not [c for _, c in closed if c.final]  # the venue has not moved on yet
    feed.on_frame(candle(T0 + 60_000, 0))
    finals = [c for _, c in closed if c.final]
    assert len(finals) == 1 and finals[0].open_time == T0 and finals[0].trades == 2
    assert feed.venue_candles_merged == 1

    feed, _, closed, _ = setup()
    feed.on_frame(trades((1, T0 + 1, 10.0), (2, T0 + 2, 12.0)))
    feed.on_frame(candle(T0, 3))  # the venue counted a trade we did not get (a dropped frame)
    feed.on_frame(candle(T0 + 60_000, 0))
    assert not [c for _, c in closed if c.final] and feed.venue_candles_unequal == 1
