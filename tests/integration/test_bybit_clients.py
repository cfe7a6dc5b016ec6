"""Third-party clients judge the Bybit replica: ccxt.pro's ``bybit`` (spot and linear) with only its URLs
changed, and pybit (``HTTP`` with its endpoint set after construction; ``WebSocket`` through a subclass
that replaces the URL it connects to, since its URL is fixed in its constructor). What they receive is
compared with the replica's tape. Then the replica's own protocol rules (spot's 10-args cap, pings
without a req_id, the IP limit) and deltafeed's handling of bad input (unknown symbols, a refused
subscription)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from pybit.unified_trading import HTTP, WebSocket

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import BadInput
from deltafeed.venues import registry
from deltafeed.venues.bybit.replica import BybitReplica
from reference import candles_from_tape, read_venue_tape

MINUTE = 60_000
SYMBOLS = ["BTCUSDT", "ETHUSDT", "LINEAR:BTCUSDT"]


@pytest.fixture
async def replica(tmp_path: Path) -> Any:
    # pybit records a subscription after sending it: an ack faster than that (loopback, a busy machine)
    # fails its receive thread, which then closes the connection (see BybitReplica.ack_delay_s).
    r = BybitReplica(
        symbols=SYMBOLS,
        seed=4,
        rate=5.0,
        speed=20.0,
        history_ms=3 * 3_600_000,
        tape=tmp_path / "t.csv",
        ack_delay_s=0.05,
    )
    await r.start()
    yield r
    await r.stop()


def tape_of(r: BybitReplica, symbol: str) -> list[Any]:
    assert r.options.tape is not None
    return [row for row in read_venue_tape(r.options.tape) if row.symbol == symbol]


def tape_ids(r: BybitReplica, symbol: str) -> list[tuple[str, int, str, str]]:
    """(venue id, time, price, qty) of every taped trade of ``symbol``, in order."""
    assert r.options.tape is not None
    lines = Path(r.options.tape).read_text().splitlines()[1:]
    return [(c[1], int(c[2]), c[3], c[4]) for c in (line.split(",") for line in lines) if c[0] == symbol]


def bybit_for(r: BybitReplica) -> Any:
    """ccxt.pro bybit pointed at the replica: its REST hosts and its public WebSocket URLs."""
    rest = {k: r.url for k in ("spot", "futures", "v2", "public", "private")}
    ws = {"public": {c: f"{r.ws_url}/v5/public/{c}" for c in ("spot", "linear")}}
    return ccxtpro.bybit(
        {
            "urls": {"api": rest | {"ws": ws}},
            "options": {"fetchMarkets": {"types": ["spot", "linear"]}, "tradesLimit": 100_000},
            "enableRateLimit": False,
        }
    )


def assert_ohlcv_equal_tape(got: list[list[float]], r: BybitReplica, symbol: str, now: int) -> None:
    ref = {c.open_time: c for c in candles_from_tape(tape_of(r, symbol), MINUTE)}
    closed = [c for c in got if c[0] + MINUTE <= now]
    assert len(closed) >= 3 * 60 - 1
    assert [c[0] for c in got] == list(range(got[0][0], got[-1][0] + MINUTE, MINUTE))
    for c in closed:
        w = ref[c[0]]
        assert c == [w.open_time, w.open, w.high, w.low, w.close, w.volume], c


@pytest.mark.parametrize(
    ("market", "symbol", "sim"), [("BTC/USDT", "BTCUSDT", "spot"), ("BTC/USDT:USDT", "LINEAR:BTCUSDT", "linear")]
)
async def test_ccxt_markets_and_fetch_ohlcv_equal_the_tape(
    replica: BybitReplica, market: str, symbol: str, sim: str
) -> None:
    ex = bybit_for(replica)
    try:
        markets = await ex.load_markets()
        assert {"BTC/USDT", "ETH/USDT", "BTC/USDT:USDT"} <= set(markets)
        assert markets["BTC/USDT"]["spot"] and markets["BTC/USDT:USDT"]["linear"]
        now = await ex.fetch_time()
        since = replica.sim(sim).origin_ms
        got: list[list[float]] = []
        while True:  # page forward like a ccxt user would
            page = await ex.fetch_ohlcv(market, "1m", since=since, limit=100)
            got += [c for c in page if not got or c[0] > got[-1][0]]
            if len(page) < 100:
                break
            since = page[-1][0] + MINUTE
    finally:
        await ex.close()
    assert_ohlcv_equal_tape(got, replica, symbol, now)


@pytest.mark.parametrize(("market", "symbol"), [("ETH/USDT", "ETHUSDT"), ("BTC/USDT:USDT", "LINEAR:BTCUSDT")])
async def test_ccxt_watch_trades_equal_the_tape(replica: BybitReplica, market: str, symbol: str) -> None:
    ex = bybit_for(replica)
    trades: list[dict[str, Any]] = []
    try:
        await ex.load_markets()
        async with asyncio.timeout(20):
            while len(trades) < 150:
                trades += await ex.watch_trades(market)
    finally:
        await ex.close()
    tape = tape_ids(replica, symbol)
    pos = {t[0]: i for i, t in enumerate(tape)}
    at = [pos[t["id"]] for t in trades]
    assert at == list(range(at[0], at[0] + len(at))), "no trade missing or repeated"
    for t in trades:
        _, ms, price, qty = tape[pos[t["id"]]]
        assert (t["timestamp"], t["price"], t["amount"]) == (ms, float(price), float(qty))


async def test_pybit_http_kline_equals_the_tape(replica: BybitReplica) -> None:
    session = HTTP(testnet=False)
    # pybit builds https://api.bybit.com from testnet/domain/tld (pybit/_http_manager.py:125-126); its
    # endpoint attribute is the only way to a local http:// address.
    session.endpoint = replica.url
    now = replica.clock.now_ms()
    got: list[list[float]] = []
    start = replica.sim("spot").origin_ms
    while True:
        res = await asyncio.to_thread(
            session.get_kline, category="spot", symbol="BTCUSDT", interval="1", start=start, limit=200
        )
        assert res["retCode"] == 0
        page = [[float(x) for x in row] for row in reversed(res["result"]["list"])]
        got += [[int(c[0]), *c[1:6]] for c in page]
        if len(page) < 200:
            break
        start = int(page[-1][0]) + MINUTE
    assert_ohlcv_equal_tape(got, replica, "BTCUSDT", now)


class LocalWebSocket(WebSocket):  # type: ignore[misc]
    """pybit's WebSocket connecting to ``url``: its constructor sets WS_URL from a wss://...bybit.com
    template and connects at once (pybit/unified_trading.py:108 and :120), so the URL is swapped where
    it is used (_connect, pybit/_websocket_stream.py:114)."""

    local_url = ""

    def _connect(self, url: str) -> None:
        super()._connect(self.local_url)


async def test_pybit_websocket_trades_and_klines_equal_the_tape(replica: BybitReplica) -> None:
    trades: list[dict[str, Any]] = []
    klines: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_trade(msg: dict[str, Any]) -> None:
        with lock:
            trades.extend(msg["data"])

    def on_kline(msg: dict[str, Any]) -> None:
        with lock:
            klines.extend(msg["data"])

    LocalWebSocket.local_url = f"{replica.ws_url}/v5/public/linear"
    ws = await asyncio.to_thread(LocalWebSocket, testnet=False, channel_type="linear", ping_interval=3, ping_timeout=2)
    try:
        await asyncio.to_thread(ws.trade_stream, "BTCUSDT", on_trade)
        await asyncio.to_thread(ws.kline_stream, 1, "BTCUSDT", on_kline)
        async with asyncio.timeout(20):
            while len(trades) < 150 or not any(k["confirm"] for k in klines):
                await asyncio.sleep(0.1)
        await asyncio.sleep(4.0)  # pybit's own {"op":"ping"} (no req_id) went out and the socket lived on
        assert ws.is_connected()
    finally:
        await asyncio.to_thread(ws.exit)
    tape = tape_ids(replica, "LINEAR:BTCUSDT")
    pos = {t[0]: i for i, t in enumerate(tape)}
    at = [pos[t["i"]] for t in trades]
    assert at == list(range(at[0], at[0] + len(at)))
    assert all((t["T"], t["p"], t["v"]) == tape[pos[t["i"]]][1:] for t in trades)
    ref = {c.open_time: c for c in candles_from_tape(tape_of(replica, "LINEAR:BTCUSDT"), MINUTE)}
    for k in klines:
        if k["confirm"]:
            w = ref[k["start"]]
            assert [float(k[f]) for f in ("open", "high", "low", "close", "volume")] == [
                w.open,
                w.high,
                w.low,
                w.close,
                w.volume,
            ]


async def recv_json(ws: aiohttp.ClientWebSocketResponse) -> Any:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.receive_str(), 5))
        if "topic" not in msg:
            return msg


async def test_replica_protocol_rules(replica: BybitReplica) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{replica.ws_url}/v5/public/spot") as ws:
            await ws.send_str(json.dumps({"op": "ping"}))  # as pybit sends it
            pong = await recv_json(ws)
            assert pong["success"] and pong["ret_msg"] == "pong" and pong["op"] == "ping" and "req_id" not in pong
            args = [f"kline.{i}.BTCUSDT" for i in ("1", "3", "5", "15", "30", "60", "120", "240", "360", "720")]
            await ws.send_str(json.dumps({"req_id": "a", "op": "subscribe", "args": [*args, "publicTrade.BTCUSDT"]}))
            assert (await recv_json(ws))["success"] is False  # spot: at most 10 args
            await ws.send_str(json.dumps({"req_id": "b", "op": "subscribe", "args": ["publicTrade.BTCUSDX"]}))
            refused = await recv_json(ws)
            assert refused["success"] is False and "BTCUSDX" in refused["ret_msg"] and refused["req_id"] == "b"
            await ws.send_str(json.dumps({"req_id": "c", "op": "subscribe", "args": args}))
            assert await recv_json(ws) == {
                "success": True,
                "ret_msg": "subscribe",
                "conn_id": pong["conn_id"],
                "req_id": "c",
                "op": "subscribe",
            }
        async with s.ws_connect(f"{replica.ws_url}/v5/public/linear") as ws:
            await ws.send_str(json.dumps({"req_id": "d", "op": "ping"}))
            assert (await recv_json(ws))["req_id"] == "d"
        async with s.get(f"{replica.url}/v5/market/kline?symbol=BTCUSDT&interval=1&limit=1") as resp:
            body = await resp.json()
            assert body["result"]["category"] == "linear"  # Bybit's default category


async def test_ip_limit_answers_403(tmp_path: Path) -> None:
    r = BybitReplica(symbols=["BTCUSDT"], history_ms=60_000, requests_per_5s=5, ban_s=1.0)
    async with r, aiohttp.ClientSession() as s:
        codes = []
        for _ in range(7):
            async with s.get(f"{r.url}/v5/market/time") as resp:
                codes.append(resp.status)
        assert codes[:5] == [200] * 5 and codes[5:] == [403, 403]


async def test_unknown_symbols_are_refused_with_near_matches(replica: BybitReplica, tmp_path: Path) -> None:
    venue = registry.get("bybit")
    settings = Settings(
        symbols=["bybit:BTCUSDT", "bybit:ETHUSTD", "bybit:linear:ETHUSDT"],
        timeframes=["1m"],
        history="10m",
        db=str(tmp_path / "x.duckdb"),
        venues={"bybit": venue.replica_settings(replica)},
    ).validate()
    with pytest.raises(BadInput) as e:
        await Engine(settings).start()
    msg = str(e.value)
    assert "ETHUSTD (did you mean ETHUSDT" in msg and "LINEAR:ETHUSDT (did you mean LINEAR:BTCUSDT" in msg, msg


async def test_a_refused_subscription_is_one_line_and_the_others_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    venue = registry.get("bybit")
    reason = "Invalid symbol :[publicTrade.ETHUSDT]"
    replica = venue.build_replica(symbols=SYMBOLS, rate=5.0, speed=10.0, history_ms=600_000, refuse={"ETHUSDT": reason})
    await replica.start()
    try:
        settings = Settings(
            symbols=[f"bybit:{s}" for s in SYMBOLS],
            timeframes=["1m"],
            history="5m",
            db=str(tmp_path / "r.duckdb"),
            venues={"bybit": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        with caplog.at_level(logging.WARNING, logger="deltafeed.bybit"):
            await engine.start()
            try:
                await asyncio.sleep(3.0)
                status = engine.status()
            finally:
                await engine.stop()
    finally:
        await replica.stop()
    feed = status["venues"]["bybit"]
    assert feed["refused_symbols"] == {"ETHUSDT": reason}
    assert feed["venue_errors"] == {"subscribe_refused": 1}
    assert status["instruments"]["bybit:BTCUSDT"]["trades"] > 0
    assert status["instruments"]["bybit:LINEAR:BTCUSDT"]["trades"] > 0
    lines = [r.getMessage() for r in caplog.records if "ETHUSDT" in r.getMessage()]
    assert len(lines) == 1 and reason in lines[0], lines


@pytest.mark.parametrize(
    ("market", "symbol", "limit"), [("BTC/USDT", "BTCUSDT", 60), ("BTC/USDT:USDT", "LINEAR:BTCUSDT", 500)]
)
async def test_ccxt_fetch_trades_are_the_tapes_newest(
    replica: BybitReplica, market: str, symbol: str, limit: int
) -> None:
    ex = bybit_for(replica)
    try:
        await ex.load_markets()
        got = await ex.fetch_trades(market, limit=limit)
    finally:
        await ex.close()
    tape = tape_ids(replica, symbol)
    pos = {t[0]: i for i, t in enumerate(tape)}
    at = [pos[t["id"]] for t in got]
    # Consecutive trades of the tape (ccxt sorts by time: trades of one millisecond may swap).
    assert len(at) == limit and sorted(at) == list(range(min(at), min(at) + limit))
    assert all(
        (t["timestamp"], t["price"], t["amount"])
        == (tape[pos[t["id"]]][1], float(tape[pos[t["id"]]][2]), float(tape[pos[t["id"]]][3]))
        for t in got
    )


async def test_a_connection_without_ping_or_data_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    import deltafeed.venues.bybit.replica as replica_module

    monkeypatch.setattr(replica_module, "IDLE_CUT_S", 0.5)  # Bybit: 10 minutes
    r = BybitReplica(symbols=["BTCUSDT"], history_ms=60_000)
    async with r, aiohttp.ClientSession() as s, s.ws_connect(f"{r.ws_url}/v5/public/spot") as ws:
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
