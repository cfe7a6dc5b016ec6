"""The Binance replica over real loopback sockets, checked against its own tape.

Every expectation about candles comes from ``reference.py``, which rebuilds candles from the tape in
plain Decimal arithmetic; nothing here reuses the simulator's numpy roll-up.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import time
from decimal import Decimal
from typing import Any

import aiohttp
import numpy as np
import pytest

from conftest import MakeReplica
from deltafeed.replicas.sim import MarketSim, fmt
from deltafeed.venues.binance.replica import BinanceReplica, WeightLimiter
from reference import RefCandle, TapeRow, candles_from_tape, read_tape, rows_by_symbol

MINUTE, FIVE = 60_000, 300_000


# --- helpers -------------------------------------------------------------------------------------


async def get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any, Any]:
    async with http.get(url, params={k: str(v) for k, v in params.items()}) as r:
        body = await r.read()
        return r.status, json.loads(body) if body else None, r.headers


async def server_time(http: aiohttp.ClientSession, replica: BinanceReplica) -> int:
    _, body, _ = await get(http, replica.url + "/api/v3/time")
    return int(body["serverTime"])


async def page_klines(
    http: aiohttp.ClientSession, replica: BinanceReplica, symbol: str, interval: str, start: int, limit: int
) -> tuple[list[list[Any]], int]:
    """All klines from ``start`` by paging on startTime; also returns how many pages it took."""
    rows: list[list[Any]] = []
    pages = 0
    while True:
        status, page, headers = await get(
            http,
            replica.url + "/api/v3/klines",
            symbol=symbol,
            interval=interval,
            startTime=start,
            limit=limit,
        )
        assert status == 200, page
        assert "X-MBX-USED-WEIGHT-1M" in headers
        pages += 1
        rows += page
        if len(page) < limit:
            return rows, pages
        start = page[-1][0] + 1


def assert_row_equals(row: list[Any], ref: RefCandle, tf_ms: int) -> None:
    """A REST kline row against a reference candle: every field, prices and volume to 8 decimals."""
    assert row[0] == ref.open_time
    assert row[1:6] == [fmt(ref.open), fmt(ref.high), fmt(ref.low), fmt(ref.close), fmt(ref.volume)], (
        row,
        ref,
    )
    assert Decimal(row[5]) == ref.exact_volume
    assert row[6] == ref.open_time + tf_ms - 1
    assert row[8] == ref.trades
    assert Decimal(row[9]) == ref.exact_taker_base
    # Quote volumes are sums of price x qty; the replica rounds them to 8 decimals through a float.
    assert abs(Decimal(row[7]) - ref.exact_quote_volume) <= Decimal("1e-6") * max(1, ref.exact_quote_volume)
    assert abs(Decimal(row[10]) - ref.exact_taker_quote) <= Decimal("1e-6") * max(1, ref.exact_taker_quote)
    assert row[11] == "0"


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> Any:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def recv_reply(ws: aiohttp.ClientWebSocketResponse, request_id: Any, timeout: float = 5.0) -> Any:
    """Skip data messages until the reply carrying ``request_id``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        m = await recv_json(ws, max(0.01, deadline - loop.time()))
        if "id" in m and m["id"] == request_id and ("result" in m or "error" in m):
            return m


async def collect(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    out = []
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            break
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.append(json.loads(msg.data))
    return out


def assert_trade_equals(data: dict[str, Any], row: TapeRow) -> None:
    assert data["e"] == "trade" and data["s"] == row.symbol and data["t"] == row.trade_id
    assert (data["p"], data["q"], data["T"], data["m"]) == (
        row.price_text,
        row.qty_text,
        row.time_ms,
        row.buyer_maker,
    )
    assert data["E"] >= data["T"] and data["M"] is True


# --- the simulator -------------------------------------------------------------------------------


@pytest.mark.slow  # over 10 s: not in the everyday subset
def test_sim_sequence_does_not_depend_on_how_it_is_advanced(tmp_path: Any) -> None:
    start = 1_700_000_000_000
    one = MarketSim(
        ["BTCUSDT", "SOLUSDT"],
        seed=5,
        rate=20,
        start_ms=start,
        history_ms=2 * 3_600_000,
        tape=tmp_path / "one.csv",
    )
    steps = MarketSim(
        ["BTCUSDT", "SOLUSDT"],
        seed=5,
        rate=20,
        start_ms=start - 3_600_000,
        history_ms=3_600_000,
        tape=tmp_path / "steps.csv",
    )
    rng = np.random.default_rng(1)
    t = steps.released_ms
    while t < start:
        t = min(start, t + int(rng.integers(1, 90_000)))
        steps.advance_to(t)
    one.close()
    steps.close()
    # The tape interleaves symbols batch by batch; per symbol the sequences are identical.
    rows = rows_by_symbol(read_tape(tmp_path / "one.csv"))
    assert rows == rows_by_symbol(read_tape(tmp_path / "steps.csv"))
    for sym, sym_rows in rows.items():
        assert [r.trade_id for r in sym_rows] == list(range(1, len(sym_rows) + 1))
        times = [r.time_ms for r in sym_rows]
        assert times == sorted(times) and start - 2 * 3_600_000 <= times[0] and times[-1] <= start
        assert all(r.price > 0 and r.qty > 0 for r in sym_rows)
        # One trade per 50 ms on average.
        assert abs(len(sym_rows) - 2 * 3600 * 20) < 2 * 3600 * 20 * 0.05, sym
    other_seed = MarketSim(["BTCUSDT"], seed=6, rate=20, start_ms=start, history_ms=60_000)
    assert other_seed.klines("BTCUSDT", MINUTE, None, None, 1, start) != one.klines(
        "BTCUSDT", MINUTE, None, None, 1, start
    )


def test_sim_weekly_and_monthly_klines_are_calendar_aligned() -> None:
    start = 1_700_000_000_000  # 2023-11-14, a Tuesday
    sim = MarketSim(["ETHUSDT"], seed=1, rate=0.01, start_ms=start, history_ms=40 * 86_400_000)
    weeks = sim.klines("ETHUSDT", 604_800_000, None, None, 10, start)
    assert all(time.gmtime(c.open_time / 1000).tm_wday == 0 for c in weeks)  # Mondays
    from deltafeed.replicas.sim import Grid

    months = sim.kline_table("ETHUSDT", Grid.month(), None, None, 10, start)
    assert [time.strftime("%Y-%m-%d", time.gmtime(t / 1000)) for t in months.open_time.tolist()] == [
        "2023-10-01",
        "2023-11-01",
    ]
    assert months.closed.tolist() == [True, False]
    assert int(months.trades.sum()) == sim.trades_released


# --- REST klines against the tape ----------------------------------------------------------------


async def test_rest_klines_page_through_history_equal_to_the_tape(
    make_replica: MakeReplica, http: aiohttp.ClientSession
) -> None:
    replica = await make_replica(symbols=["BTCUSDT", "SOLUSDT"], seed=3, rate=2.0, speed=30.0, history_ms=5 * 3_600_000)
    cutoff = await server_time(http, replica)
    got: dict[tuple[str, int], list[list[Any]]] = {}
    for sym in ("BTCUSDT", "SOLUSDT"):
        # startTime=0: from the very first kline, the one holding the first trade.
        got[sym, MINUTE], pages_1m = await page_klines(http, replica, sym, "1m", 0, 120)
        got[sym, FIVE], pages_5m = await page_klines(http, replica, sym, "5m", 0, 25)
        assert pages_1m >= 3 and pages_5m >= 3
    tape = rows_by_symbol(read_tape(replica.sim.tape.path))  # type: ignore[union-attr]
    for (sym, tf), rows in got.items():
        opens = [r[0] for r in rows]
        assert opens == list(range(opens[0], opens[-1] + tf, tf)), "pages must join without gaps"
        ref = {c.open_time: c for c in candles_from_tape(tape[sym], tf)}
        assert opens[0] == min(ref), "klines start at the candle holding the first trade"
        closed = [r for r in rows if r[0] + tf <= cutoff]
        assert len(closed) >= 5 * 3_600_000 // tf - 1
        for r in closed:
            assert_row_equals(r, ref[r[0]], tf)
        assert rows[-1][6] >= cutoff - 1, "the last page ends with the candle still open"


async def test_rest_klines_of_a_quiet_market_are_flat(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    # One trade per ~200 s: most minutes have none and must come back flat, at the previous close.
    replica = await make_replica(symbols=["ETHUSDT"], seed=9, rate=0.005, history_ms=4 * 3_600_000)
    status, rows, _ = await get(http, replica.url + "/api/v3/klines", symbol="ETHUSDT", interval="1m", limit=1000)
    assert status == 200
    cutoff = await server_time(http, replica)
    tape = read_tape(replica.sim.tape.path)  # type: ignore[union-attr]
    ref = {c.open_time: c for c in candles_from_tape(tape, MINUTE, until_ms=cutoff)}
    assert rows[0][0] == min(ref)
    flat = 0
    for prev, r in itertools.pairwise(rows):
        if r[0] + MINUTE <= cutoff:
            assert_row_equals(r, ref[r[0]], MINUTE)
        if r[8] == 0:
            flat += 1
            assert r[1] == r[2] == r[3] == r[4] == prev[4] and r[5] == fmt(0.0), r
    assert flat > len(rows) // 2


async def test_rest_klines_selection_and_errors(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], rate=5.0, history_ms=3_600_000)
    url = replica.url + "/api/v3/klines"
    now = await server_time(http, replica)
    status, recent, _ = await get(http, url, symbol="BTCUSDT", interval="1m", limit=5)
    assert status == 200 and len(recent) == 5
    assert recent[-1][0] == now - now % MINUTE  # most recent, ending with the open candle
    _, default, _ = await get(http, url, symbol="BTCUSDT", interval="1s")
    assert len(default) == 500  # default limit
    start = recent[1][0] + 1  # mid-candle: the first kline returned opens at or after startTime
    _, from_start, _ = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=start, limit=2)
    assert [r[0] for r in from_start] == [recent[2][0], recent[3][0]]
    _, to_end, _ = await get(http, url, symbol="BTCUSDT", interval="1m", endTime=recent[2][0], limit=2)
    assert [r[0] for r in to_end] == [recent[1][0], recent[2][0]]
    _, future, _ = await get(http, url, symbol="BTCUSDT", interval="1m", startTime=now + 3_600_000)
    assert future == []
    cases = [
        ({"symbol": "NOPEUSDT", "interval": "1m"}, -1121, "Invalid symbol."),
        ({"symbol": "btcusdt", "interval": "1m"}, -1121, "Invalid symbol."),
        ({"symbol": "BTCUSDT", "interval": "1H"}, -1120, "Invalid interval."),
        (
            {"symbol": "BTCUSDT"},
            -1102,
            "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.",
        ),
        (
            {"interval": "1m"},
            -1102,
            "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.",
        ),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": "ten"}, -1100, None),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": 1001}, -1130, None),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": 2, "endTime": 1}, -1023, None),
    ]
    for params, code, msg in cases:
        status, body, headers = await get(http, url, **params)
        assert status == 400 and body["code"] == code, (params, body)
        assert msg is None or body["msg"] == msg
        assert "X-MBX-USED-WEIGHT-1M" in headers
    status, body, _ = await get(http, replica.url + "/api/v3/klines/nope")
    assert status == 404
    for path, want in (("/api/v3/ping", {}), ("/api/v3/time", None)):
        status, body, headers = await get(http, replica.url + path)
        assert status == 200 and (want is None or body == want)
    assert abs(body["serverTime"] - now) < 5_000
    status, info, _ = await get(http, replica.url + "/api/v3/exchangeInfo", symbol="BTCUSDT")
    assert status == 200 and [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
    assert info["symbols"][0]["baseAsset"] == "BTC" and info["symbols"][0]["quoteAsset"] == "USDT"
    status, book, _ = await get(http, replica.url + "/api/v3/depth", symbol="BTCUSDT", limit=5)
    assert status == 200 and len(book["bids"]) == len(book["asks"]) == 5
    assert Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0])


# --- request weight ----------------------------------------------------------------------------


async def test_weight_limit_gives_429_then_418(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], history_ms=60_000, weight_limit=10)
    if 60 - time.time() % 60 < 3:  # the window is the wall-clock minute; do not straddle its end
        await asyncio.sleep(60 - time.time() % 60 + 0.05)
    url = replica.url + "/api/v3/klines"
    for i in range(1, 6):
        status, _, headers = await get(http, url, symbol="BTCUSDT", interval="1m", limit=1)
        assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == str(2 * i)
    status, body, headers = await get(http, url, symbol="BTCUSDT", interval="1m", limit=1)
    assert status == 429
    assert body == {
        "code": -1003,
        "msg": "Too much request weight used; current limit is 10 request weight per "
        "1 MINUTE. Please use WebSocket Streams for live updates to avoid polling the API.",
    }
    assert 1 <= int(headers["Retry-After"]) <= 60 and int(headers["X-MBX-USED-WEIGHT-1M"]) > 10
    # Sending again before Retry-After has passed: banned for two minutes.
    status, body, headers = await get(http, replica.url + "/api/v3/ping")
    assert status == 418 and body["code"] == -1003 and "IP banned until" in body["msg"]
    assert 118 <= int(headers["Retry-After"]) <= 120 and "X-MBX-USED-WEIGHT-1M" in headers
    status, _, headers = await get(http, replica.url + "/api/v3/time")
    assert status == 418 and int(headers["Retry-After"]) <= 120
    assert replica.stats["429"] == 1 and replica.stats["418"] == 2


def test_weight_limiter_bans_double_on_repeat() -> None:
    now = [600.0]  # the start of a wall-clock minute
    lim = WeightLimiter(10, wall=lambda: now[0])
    assert lim.charge("a", 10)[0] == 200
    assert lim.charge("b", 10)[0] == 200  # per IP
    status, used, until = lim.charge("a", 1)
    assert (status, used, until) == (429, 11, 660.0)
    now[0] = 610.0
    status, _, until = lim.charge("a", 1)
    assert status == 418 and until == 610.0 + 120
    now[0] = 731.0  # ban over, new window
    assert lim.charge("a", 10)[0] == 200
    assert lim.charge("a", 1)[0] == 429
    now[0] = 735.0
    status, _, until = lim.charge("a", 1)
    assert status == 418 and until == 735.0 + 240


# --- WebSocket ---------------------------------------------------------------------------------


async def test_ws_combined_trades_equal_the_tape(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica = await make_replica(symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], rate=50.0, speed=10.0, history_ms=60_000)
    async with (
        http.ws_connect(replica.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade") as ws,
        http.ws_connect(replica.ws_url + "/ws/solusdt@trade") as raw,
    ):
        combined_msgs = await collect(ws, 1.0)
        raw_msgs = await collect(raw, 0.2)
    tape = {(r.symbol, r.trade_id): r for r in read_tape(replica.sim.tape.path)}  # type: ignore[union-attr]
    ids: dict[str, list[int]] = {}
    for m in combined_msgs:
        assert set(m) == {"stream", "data"} and m["stream"] == m["data"]["s"].lower() + "@trade"
        assert_trade_equals(m["data"], tape[m["data"]["s"], m["data"]["t"]])
        ids.setdefault(m["data"]["s"], []).append(m["data"]["t"])
    assert set(ids) == {"BTCUSDT", "ETHUSDT"}
    for sym_ids in ids.values():
        assert len(sym_ids) > 200
        assert sym_ids == list(range(sym_ids[0], sym_ids[0] + len(sym_ids))), "consecutive ids"
    assert raw_msgs and all("stream" not in m for m in raw_msgs)
    for m in raw_msgs:
        assert_trade_equals(m, tape["SOLUSDT", m["t"]])
    assert replica.stats["frames_dropped"] == 0


async def test_ws_control_messages(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    # Eleven control messages in quick succession: past Binance's 5 per second, which the replica
    # enforces by default (tests/e2e/test_scale_e2e.py checks that); off here, the replies are tested.
    replica = await make_replica(
        symbols=["BTCUSDT", "ETHUSDT"], rate=20.0, speed=5.0, history_ms=60_000, inbound_limit=0
    )
    async with http.ws_connect(replica.ws_url + "/ws") as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@kline_1m"],"id":1}')
        assert await recv_reply(ws, 1) == {"result": None, "id": 1}
        first = await recv_json(ws)
        assert first.get("e") in ("trade", "kline") and "stream" not in first
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":"list2"}')
        assert await recv_reply(ws, "list2") == {
            "result": ["btcusdt@trade", "ethusdt@kline_1m"],
            "id": "list2",
        }
        await ws.send_str('{"method":"GET_PROPERTY","params":["combined"],"id":3}')
        assert await recv_reply(ws, 3) == {"result": False, "id": 3}
        await ws.send_str('{"method":"SET_PROPERTY","params":["combined",true],"id":4}')
        assert await recv_reply(ws, 4) == {"result": None, "id": 4}
        wrapped = await recv_json(ws)
        assert set(wrapped) == {"stream", "data"} or wrapped.get("id") is not None
        await ws.send_str('{"method":"SET_PROPERTY","params":["combined","yes"],"id":5}')
        assert (await recv_reply(ws, 5))["error"] == {
            "code": 1,
            "msg": "Invalid value type: expected Boolean",
        }
        await ws.send_str('{"method":"GET_PROPERTY","params":["colour"],"id":6}')
        assert (await recv_reply(ws, 6))["error"]["code"] == 0
        await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@nonsense"],"id":7}')
        assert await recv_reply(ws, 7) == {
            "error": {"code": 2, "msg": "Invalid request: invalid stream"},
            "id": 7,
        }
        await ws.send_str('{"method":"PUBLISH","id":8}')
        err = (await recv_reply(ws, 8))["error"]
        assert err["code"] == 2 and err["msg"].startswith("Invalid request: unknown variant `PUBLISH`")
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":[1]}')
        assert (await recv_reply(ws, None))["error"]["code"] == 2
        await ws.send_str("{not json")
        err = (await recv_reply(ws, None))["error"]
        assert err["code"] == 3 and err["msg"].startswith("Invalid JSON: expected value at line 1 column")
        await ws.send_str('{"method":"UNSUBSCRIBE","params":["btcusdt@trade","ethusdt@kline_1m"],"id":9}')
        assert await recv_reply(ws, 9) == {"result": None, "id": 9}
        await collect(ws, 0.1)  # frames already in flight
        assert await collect(ws, 0.3) == []  # and nothing after
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":10}')
        assert await recv_reply(ws, 10) == {"result": [], "id": 10}
    # A stream name outside Binance's syntax in the URL refuses the upgrade; a well-formed one of a symbol
    # that does not exist is accepted and stays silent, as at Binance (counted in idle_streams).
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await http.ws_connect(replica.ws_url + "/stream?streams=btcusdt@depthy")
    idle = replica.stats["idle_streams"]
    async with http.ws_connect(replica.ws_url + "/ws/nopeusdt@trade") as ws:
        assert await collect(ws, 0.3) == []
    assert replica.stats["idle_streams"] == idle + 1
    # ccxt appends /<n> to the combined URL.
    async with http.ws_connect(replica.ws_url + "/stream/3") as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["ethusdt@trade"],"id":1}')
        assert await recv_reply(ws, 1) == {"result": None, "id": 1}
        m = await recv_json(ws)
        assert m["stream"] == "ethusdt@trade"


async def test_ws_closed_klines_equal_tape_candles(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    # One trade per market second on average: many 1s candles are empty and must be pushed flat.
    replica = await make_replica(symbols=["BTCUSDT"], rate=1.0, speed=20.0, history_ms=60_000)
    async with http.ws_connect(replica.ws_url + "/stream?streams=btcusdt@kline_1s/btcusdt@kline_1m") as ws:
        msgs = await collect(ws, 1.5)
    tape = read_tape(replica.sim.tape.path)  # type: ignore[union-attr]
    closed = [m["data"] for m in msgs if m["stream"] == "btcusdt@kline_1s" and m["data"]["k"]["x"]]
    assert len(closed) >= 15
    opens = [k["k"]["t"] for k in closed]
    # up to the last closed kline: the seconds after the tape's last trade are flat ones too
    ref_1s = {c.open_time: c for c in candles_from_tape(tape, 1000, until_ms=opens[-1])}
    assert opens == list(range(opens[0], opens[-1] + 1000, 1000)), "one closed kline per second, in order"
    flat = 0
    for ev in closed:
        k, ref = ev["k"], ref_1s[ev["k"]["t"]]
        assert ev["e"] == "kline" and ev["s"] == "BTCUSDT" and ev["E"] >= k["T"]
        assert (k["i"], k["s"], k["T"], k["n"], k["f"], k["L"]) == (
            "1s",
            "BTCUSDT",
            ref.open_time + 999,
            ref.trades,
            ref.first_id,
            ref.last_id,
        )
        assert [k["o"], k["h"], k["l"], k["c"], k["v"]] == [
            fmt(ref.open),
            fmt(ref.high),
            fmt(ref.low),
            fmt(ref.close),
            fmt(ref.volume),
        ]
        assert Decimal(k["V"]) == ref.exact_taker_base
        flat += ref.trades == 0
    assert 0 < flat < len(closed)
    # The open 1m kline is pushed too (at least the first push on subscribing).
    assert any(m["stream"] == "btcusdt@kline_1m" and not m["data"]["k"]["x"] for m in msgs)


async def test_ws_server_pings_and_drops_silent_clients(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], history_ms=60_000, ping_interval=0.1, pong_timeout=0.3)
    async with (
        http.ws_connect(replica.ws_url + "/ws", autoping=False) as silent,
        http.ws_connect(replica.ws_url + "/ws", autoping=True) as polite,
    ):
        # aiohttp answers pings while the application reads; keep the polite client reading.
        replies: asyncio.Queue[Any] = asyncio.Queue()

        async def read_polite() -> None:
            async for m in polite:
                await replies.put(json.loads(m.data))

        reader = asyncio.create_task(read_polite())
        pings = 0
        while True:
            msg = await asyncio.wait_for(silent.receive(), 3.0)
            if msg.type == aiohttp.WSMsgType.PING:
                pings += 1
                continue
            break
        assert pings >= 2
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008
        assert not polite.closed  # it answered every ping
        await polite.send_str('{"method":"LIST_SUBSCRIPTIONS","id":1}')
        assert await asyncio.wait_for(replies.get(), 2) == {"result": [], "id": 1}
        reader.cancel()


async def test_ws_slow_client_is_skipped_not_buffered(make_replica: MakeReplica) -> None:
    replica = await make_replica(
        symbols=["BTCUSDT"], rate=100_000.0, history_ms=0, max_send_buffer=64 * 1024, tape=None
    )
    # A client that completes the handshake and then never reads.
    sock = socket.create_connection(("127.0.0.1", replica.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"GET /ws/btcusdt@trade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            if replica.stats["frames_dropped"]:
                break
        assert replica.stats["frames_dropped"] > 0 and replica.stats["slow_skips"] > 0
        conn = next(iter(replica._conns))
        assert conn.transport.get_write_buffer_size() < 64 * 1024 + 4 * 1024 * 1024  # bounded
    finally:
        sock.close()


# --- the CLI entry -------------------------------------------------------------------------------


async def test_serve_prints_its_url_first_and_exits_cleanly_on_sigterm(http: aiohttp.ClientSession) -> None:
    code = (
        "import asyncio; from deltafeed.venues.binance.replica import BinanceReplica; from deltafeed.replicas.server import serve; "
        "asyncio.run(serve(BinanceReplica(symbols=['BTCUSDT'], history_ms=60_000, rate=5.0)))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = first.split()[-1]
        status, body, _ = await get(http, url + "/api/v3/ping")
        assert (status, body) == (200, {})
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip().splitlines()[-1].startswith("binance replica stopped: trades=")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- encoding fast paths -----------------------------------------------------------------------


def test_trade_template_matches_the_codec_and_frames_parse_back() -> None:
    from deltafeed.venues.binance.codec import encode_trade, wrap_combined
    from deltafeed.venues.binance.replica import _TradeTemplate, text_frames

    sim = MarketSim(["SOLUSDT"], seed=2, rate=50, start_ms=1_700_000_000_000, history_ms=60_000)
    batch = sim.advance_to(1_700_000_010_000)["SOLUSDT"]
    raw, comb = _TradeTemplate("SOLUSDT", None), _TradeTemplate("SOLUSDT", "solusdt@trade")
    assert raw.template is not None and comb.template is not None  # the fast path is in use
    expected = [
        encode_trade("SOLUSDT", t.trade_id, t.time_ms, t.price, t.qty, t.buyer_maker, 1_700_000_010_005)
        for t in batch.trades()
    ]
    assert raw.payloads(batch, 1_700_000_010_005) == expected
    assert comb.payloads(batch, 1_700_000_010_005) == [wrap_combined("solusdt@trade", p) for p in expected]

    payloads = [b"x" * 5, b"y" * 200, b"z" * 70_000, b""]
    data, out = text_frames(payloads), []
    while data:
        assert data[0] == 0x81 and data[1] & 0x80 == 0  # FIN + text, unmasked
        n, skip = data[1], 2
        if n == 126:
            n, skip = int.from_bytes(data[2:4], "big"), 4
        elif n == 127:
            n, skip = int.from_bytes(data[2:10], "big"), 10
        out.append(data[skip : skip + n])
        data = data[skip + n :]
    assert out == payloads
