"""The Hyperliquid replica keeps the venue's limits: only the newest 5000 candles per interval, the
1200/minute weight (429 beyond), a greeting on connect, pong to ping, and a connection the server has
sent nothing on for the idle limit dropped without a close frame."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from deltafeed.venues.hyperliquid import codec as hl
from deltafeed.venues.hyperliquid.replica import HyperliquidReplica

DAY = 86_400_000


@pytest.fixture
async def replica() -> AsyncIterator[HyperliquidReplica]:
    r = HyperliquidReplica(
        symbols=["BTC"], rate=0.05, history_ms=4 * DAY, weight_limit=300, idle_close_s=1.0, weight_window_s=3600.0
    )
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def info(http: aiohttp.ClientSession, r: HyperliquidReplica, body: dict[str, Any]) -> tuple[int, Any]:
    async with http.post(r.url + "/info", json=body) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_only_the_newest_5000_candles_exist_and_weight_is_charged(replica: HyperliquidReplica) -> None:
    async with aiohttp.ClientSession() as http:
        req = {"coin": "BTC", "interval": "1m", "startTime": 0, "endTime": 2**53}
        status, rows = await info(http, replica, {"type": "candleSnapshot", "req": req})
        assert status == 200 and len(rows) == hl.HISTORY_CANDLES
        assert rows[0]["t"] == replica.history_start("1m") and rows == sorted(rows, key=lambda c: c["t"])
        hour = (await info(http, replica, {"type": "candleSnapshot", "req": {**req, "interval": "1h"}}))[1]
        assert len(hour) >= 4 * 24  # a longer interval reaches further back
        assert replica.stats["weight"] == hl.candles_weight(5000) + hl.candles_weight(len(hour))
        left = 300 - replica.stats["weight"]
        codes = [(await info(http, replica, {"type": "meta"}))[0] for _ in range(12)]
        assert codes == [200] * (left // 20) + [429] * (12 - left // 20)
        assert replica.stats["429"] == 12 - left // 20
        assert (await info(http, replica, {"type": "nonsense"}))[0] in (422, 429)


async def test_greeting_pong_and_the_idle_drop(replica: HyperliquidReplica) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(replica.ws_url) as ws:
            assert (await ws.receive_str()).encode() == hl.GREETING
            for _ in range(6):  # pinging keeps a connection without data open past the idle limit
                await ws.send_str('{"method":"ping"}')
                assert await ws.receive_str() == '{"channel":"pong"}'
                await asyncio.sleep(0.4)
            msg = await ws.receive(timeout=5.0)  # now silent: dropped, no close frame
            assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE)
        assert replica.stats["idle_closes"] == 1
