"""A collector's outlet on the real JetStream: a candle changed several times between two flushes is
published once, as its latest version; versions of one candle stay in order across flushes; the same
candle again is dropped as a duplicate; trades and switches reach their own subjects."""

from __future__ import annotations

import nats
import pytest

from conftest import NATS_URL
from deltafeed.api.protocol import SwitchData
from deltafeed.cluster import subjects as s
from deltafeed.cluster.outlet import EngineSink, Outlet
from deltafeed.model import Candle, Trade

pytestmark = pytest.mark.asyncio


async def _all(js: nats.js.JetStreamContext, subj: str) -> list[bytes]:
    sub = await js.subscribe(subj, ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                out.append((await sub.next_msg(timeout=0.5)).data)
            except nats.errors.TimeoutError:
                return out
    finally:
        await sub.unsubscribe()


async def test_outlet_coalesces_orders_dedups_and_routes(nats_cluster: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream(publish_async_max_pending=50)
        await s.ensure_stream(js, nats_cluster)
        out = Outlet(js, nats_cluster, "c1", trades=True)
        sink = EngineSink(out)
        series = "binance:BTC/USDT"
        forming = Candle(60_000, 1.0, 1.0, 1.0, 1.0, 1.0, 1)
        for i in range(2, 6):  # the engine changes the forming candle in place, tick after tick
            forming.high = forming.close = float(i)
            forming.trades = i
            sink.candle(series, "1m", forming)
        sink.candle(series, "1m", Candle(0, 9.0, 9.0, 9.0, 9.0, 1.0, 1, True, True))
        await out.flush()
        forming.closed = forming.final = True
        sink.candle(series, "1m", forming)
        sink.candle(series, "1m", Candle(0, 9.0, 9.0, 9.0, 9.0, 1.0, 1, True, True))  # the same again
        assert sink.wants_trades(series)
        sink.trade(series, Trade("BTC/USDT", 7, 61_000, 5.0, 0.1, False))
        sink.switch("fx:EUR_USD", 62_000, SwitchData(61_500, "oanda:EUR_USD", "ig:EURUSD"))
        await sink.close()
        assert (out.published, out.duplicates, out.failed) == (6, 1, 0)

        got = [s.decode_candle(m) for m in await _all(js, s.subject(nats_cluster, s.CANDLES, series, "1m"))]
        assert [(m.open_time, m.state, m.candle.close, m.source) for m in got] == [
            (60_000, "forming", 5.0, "c1"),  # four versions in one flush: the latest only
            (0, "final", 9.0, "c1"),
            (60_000, "final", 5.0, "c1"),  # then final, after the forming one
        ]
        trades = [s.decode_trade(m) for m in await _all(js, s.subject(nats_cluster, s.TRADES, series))]
        assert [t.trade.trade_id for t in trades] == [7]
        switches = [s.decode_switch(m) for m in await _all(js, s.subject(nats_cluster, s.SWITCHES, "fx:EUR_USD"))]
        assert [(w.switch.since_ms, w.switch.at_ms, w.switch.source_to) for w in switches] == [
            (61_500, 62_000, "ig:EURUSD")
        ]
    finally:
        await nc.close()
