"""What consumers expect, over real sockets against a real engine and the Binance replica:
ccxt-compatible calls (``fetch_ohlcv(symbol, timeframe, since, limit, params)``, unified symbols,
``load_markets``, awaitable ``watch_ohlcv``), the blocking ``SyncClient``, the seeds' service shape
(aliases, ``/ws/ETH-PERP`` with ``symbol`` and ``?compat=seed``, ping/pong) and its
``RealtimeMarketData`` helper, and output without float noise."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import websockets

from deltafeed import RealtimeMarketData, SyncClient
from deltafeed.api.hub import Hub
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.client import Client
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import Candle
from deltafeed.venues.binance.replica import BinanceReplica
from reference import candles_from_tape, read_tape, rows_by_symbol

pytestmark = pytest.mark.asyncio(loop_scope="module")

MINUTE = 60_000
ALIASES = {"ETH-PERP": "binance:ETHUSDT"}


class Served:
    def __init__(self, replica: BinanceReplica, engine: Engine, url: str, tape: Path) -> None:
        self.replica, self.engine, self.url, self.tape = replica, engine, url, tape

    @property
    def ws(self) -> str:
        return "ws" + self.url.removeprefix("http")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    tmp = tmp_path_factory.mktemp("consumer")
    replica = BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT"], seed=12, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tmp / "t.csv")
    )
    await replica.start()
    # The same instrument three ways, an alias and a unified symbol: two instruments collected.
    settings = Settings(
        symbols=["BTC/USDT", "ethusdt", "binance:ETHUSDT", "ETH-PERP"],
        aliases=ALIASES,
        timeframes=["1m", "5m"],
        history="30m",
        db=str(tmp / "c.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    engine = Engine(settings)
    await engine.start()
    await settled(engine)
    hub = Hub(
        snapshot=engine.snapshot,
        instruments=engine.instrument_names,
        aliases=settings.aliases,
        default_venue=settings.venue,
    )
    engine.hub = hub
    runner = await start_api(engine, hub, "127.0.0.1", 0, None)
    try:
        yield Served(replica, engine, api_url(runner), tmp / "t.csv")
    finally:
        await stop_api(runner)
        await engine.stop()
        await replica.stop()


async def settled(engine: Engine) -> None:
    """Until the candles forming at start-up have been repaired (the store then holds the venue's)."""
    async with asyncio.timeout(20):
        while not (all(st.repaired > 0 for st in engine.states.values()) and engine.status()["pending_repairs"] == 0):
            await asyncio.sleep(0.05)


def tape_candles(served: Served, symbol: str) -> dict[int, Candle]:
    rows = rows_by_symbol(read_tape(served.tape))[symbol]
    return {c.open_time: c for c in candles_from_tape(rows, MINUTE)}


def noiseless(x: float) -> bool:
    return round(x, 8) == x


async def test_one_instrument_named_several_ways_is_collected_once(served: Served) -> None:
    assert sorted(served.engine.instrument_names()) == ["binance:BTCUSDT", "binance:ETHUSDT"]


async def test_ccxt_fetch_ohlcv_signature_and_unified_symbols(served: Served) -> None:
    async with Client(served.url) as df:
        full = await df.fetch_candles("binance:BTCUSDT", "1m", final=True)
        since = full[2].open_time + 1  # inside a candle: ccxt starts at the next open
        rows = await df.fetch_ohlcv("BTC/USDT", "1m", since, 3)  # ccxt: symbol, timeframe, since, limit
        assert [r[0] for r in rows] == [full[3].open_time, full[4].open_time, full[5].open_time]
        truth = tape_candles(served, "BTCUSDT")
        for r in rows:
            t = truth[r[0]]
            assert r[1:6] == pytest.approx([t.open, t.high, t.low, t.close, t.volume], rel=1e-12)
        same = [
            await df.fetch_ohlcv("binance:BTC/USDT", "1m", since, 3),
            await df.fetch_ohlcv("binance:BTCUSDT", "1m", since, 3),
            await df.fetch_ohlcv("BTC/USDT", "1m", since, params={"until": full[5].open_time}),
        ]
        assert all(s == rows for s in same)
        with pytest.raises(ValueError, match="params"):
            await df.fetch_ohlcv("BTC/USDT", "1m", since, 3, {"paginate": True})
    async with Client(served.url, default_venue="binance") as df:
        assert await df.fetch_ohlcv("BTC/USDT", "1m", since, 3) == rows


async def test_unified_symbols_and_aliases_over_http(served: Served) -> None:
    async with Client(served.url) as df:
        until = (await df.fetch_candles("binance:ETHUSDT", "1m", final=True))[-2].open_time  # fixed, final
    async with aiohttp.ClientSession() as http:
        bodies = []
        for name in ("ETH-PERP", "binance:ETHUSDT", "ETH/USDT", "binance:ETH/USDT", "eth-perp"):
            async with http.get(f"{served.url}/candles/{name}/1m?final=true&until={until}") as r:
                assert r.status == 200, (name, await r.text())
                doc = await r.json()
                assert doc["instrument"] == "binance:ETHUSDT"
                bodies.append(doc["candles"])
        assert all(b == bodies[0] for b in bodies) and bodies[0]
        for row in bodies[0]:
            assert all(noiseless(x) for x in row[1:6]), row
        async with http.get(f"{served.url}/candles/SOL-PERP/1m") as r:
            assert r.status == 404 and "is not collected here" in (await r.json())["error"]


async def test_load_markets(served: Served) -> None:
    async with Client(served.url) as df:
        markets = await df.load_markets()
    assert markets["BTC/USDT"]["instrument"] == "binance:BTCUSDT"
    assert markets["BTC/USDT"]["base"] == "BTC" and markets["BTC/USDT"]["quote"] == "USDT"
    assert markets["ETH/USDT"]["aliases"] == ["ETH-PERP"] and markets["binance:ETHUSDT"]["id"] == "ETHUSDT"


async def test_seed_shape_on_the_alias_path_with_ping(served: Served) -> None:
    seen: dict[str, list[dict[str, Any]]] = {}
    async with websockets.connect(f"{served.ws}/ws/ETH-PERP?compat=seed") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        pong = None
        async with asyncio.timeout(15):
            while pong is None or not {"trade", "price_update", "candle", "heartbeat"} <= seen.keys():
                msg = json.loads(await ws.recv())
                if msg["type"] == "pong":
                    pong = msg
                    continue
                seen.setdefault(msg["type"], []).append(msg)
    assert isinstance(pong["timestamp"], float)
    for kind in ("trade", "price_update", "candle"):
        for msg in seen[kind]:
            assert list(msg)[:4] == ["type", "instrument", "symbol", "timestamp"], msg
            assert msg["instrument"] == "binance:ETHUSDT" and msg["symbol"] == "ETH-PERP"
            assert isinstance(msg["timestamp"], float) and msg["timestamp"] < 1e11  # seconds, not ms
    assert seen["heartbeat"][0]["symbol"] == "ETH-PERP"
    trade = seen["trade"][0]
    assert noiseless(trade["data"]["price"]) and noiseless(trade["data"]["qty"])


async def test_multi_path_names_each_symbol_as_asked_in_milliseconds(served: Served) -> None:
    symbols: dict[str, str] = {}
    async with websockets.connect(f"{served.ws}/ws/multi/ETH-PERP,BTC/USDT") as ws:
        async with asyncio.timeout(15):
            while len(symbols) < 2:
                msg = json.loads(await ws.recv())
                if msg["type"] in ("trade", "candle", "price_update"):
                    assert isinstance(msg["timestamp"], int)
                    symbols[msg["instrument"]] = msg["symbol"]
        with pytest.raises(websockets.exceptions.InvalidHandshake, match="400"):
            async with websockets.connect(f"{served.ws}/ws/ETH-PERP?compat=nope"):
                pass
    assert symbols == {"binance:ETHUSDT": "ETH-PERP", "binance:BTCUSDT": "BTC/USDT"}


async def test_awaitable_watch_ohlcv_like_ccxt_pro(served: Served) -> None:
    async with Client(served.url) as df:
        first = await df.watch_ohlcv("ETH-PERP", "1m")
        assert first and all(len(r) == 6 for r in first)
        later = await df.watch_ohlcv("ETH-PERP", "1m", limit=2)  # the rows since the first call
        assert 1 <= len(later) <= 2 and later[-1][0] >= first[-1][0]
        assert all(noiseless(x) for r in later for x in r[1:])


async def test_sync_client_in_a_script(served: Served) -> None:
    def script() -> tuple[list[list[float]], list[list[float]], dict[str, Any]]:
        with SyncClient(served.url) as df:
            rows = df.fetch_ohlcv("BTC/USDT", "1m", None, 3)
            live = df.watch_ohlcv("BTC/USDT", "1m")
            return rows, live, df.health()

    rows, live, health = await asyncio.to_thread(script)
    assert len(rows) == 3 and live and health["status"] in ("ok", "degraded")


async def test_realtime_market_data_helper(served: Served) -> None:
    updates: list[tuple[str, Candle]] = []
    async with RealtimeMarketData(served.url, "ETH-PERP") as md:
        md.subscribe_to_candles(lambda tf, c: updates.append((tf, c)))
        await md.wait_ready()
        async with asyncio.timeout(10):
            while len(md.get_recent_ticks(1000)) < 5 or not updates:
                await asyncio.sleep(0.05)
        ticks = md.get_recent_ticks(5)
        assert len(ticks) == 5 and [t["id"] for t in ticks] == sorted(t["id"] for t in ticks)
        assert md.get_current_price() is not None and md.instrument == "binance:ETHUSDT"
        history = await md.get_candle_history("1m", 5)
        assert len(history) == 5 and {tf for tf, _ in updates} <= {"1m", "5m"}
        assert [c.open_time for c in history] == [history[0].open_time + i * MINUTE for i in range(5)]
        frame = await md.to_dataframe("1m", 5)  # a fresh read: the market has moved on meanwhile
        assert len(frame) == 5 and list(frame.columns[:5]) == ["open", "high", "low", "close", "volume"]
        assert frame.index.is_monotonic_increasing and frame.index[0].value // 1_000_000 >= history[0].open_time
