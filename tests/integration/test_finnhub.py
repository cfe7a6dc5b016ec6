"""Finnhub: the codec on the documented frames, the REST history client and the replica over loopback.

Expectations come from Finnhub's documented sample frames (PROTOCOLS.md section 3) and from the replica's
tape (CSV), rebuilt here with Decimal arithmetic: candles grouped by hand, US session hours checked with
zoneinfo, forex prices checked against the quote simulator's bid and ask.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from conftest import StartReplica
from deltafeed.model import BadInput, Candle, Trade
from deltafeed.net.http import VenueError
from deltafeed.replicas.faults import FaultSchedule
from deltafeed.replicas.quotes import QuoteSim
from deltafeed.venues.finnhub import codec as codec
from deltafeed.venues.finnhub import rest as finnhub_rest
from deltafeed.venues.finnhub.replica import MAX_ITEMS, TAPE_HEADER, FinnhubReplica, check_faults
from deltafeed.venues.finnhub.rest import FinnhubHistory
from reference import read_trade_tape

M1, M5, H1, D1 = 60_000, 300_000, 3_600_000, 86_400_000
# Wednesday 2026-03-04 15:00 UTC = 10:00 in New York (EST): US stocks in session, FX market open.
START = int(dt.datetime(2026, 3, 4, 15, tzinfo=dt.UTC).timestamp() * 1000)
# An item's conditions come first: ["1"] for stocks, null otherwise (the replica's choice).
ITEM = re.compile(r'\{"c":(?:null|\["1"\]),"p":([^,]+),"s":"([^"]+)","t":(\d+),"v":([^}]+)\}')
SAMPLE = b'{"data":[{"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467}],"type":"trade"}'
NY = ZoneInfo("America/New_York")

Make = Callable[..., Awaitable[FinnhubReplica]]
Row = tuple[str, int, str, str]


@pytest.fixture
def make(replicas: StartReplica) -> Make:
    """``await make(**kwargs)`` starts a replica (market time START unless given) with a tape in
    tmp_path; all are stopped after the test."""

    async def make(**kwargs: Any) -> FinnhubReplica:
        kwargs.setdefault("start_ms", START)
        return await replicas(FinnhubReplica, **kwargs)

    return make


def read_tape(path: str | Path) -> list[Row]:
    """(symbol, time, price text, volume text) of every tape row; the header is the shared trade columns
    (``TAPE_HEADER`` is them) and each symbol's trade ids count 1, 2, 3, ... (checked by read_trade_tape)."""
    assert Path(path).read_text().splitlines()[0] == TAPE_HEADER.strip()
    return [(r.symbol, r.time_ms, r.price, r.qty) for r in read_trade_tape(path)]


def ref_candles(
    rows: list[Row], symbol: str, tf: int, lo: int, hi: int, now: int, count: bool
) -> list[tuple[Any, ...]]:
    """Candles with open time in [lo, hi], complete by ``now``: o/h/l/c of the prices, volume summed (or
    the number of prices, for forex price updates)."""
    groups: dict[int, list[tuple[Decimal, Decimal]]] = {}
    for s, t, p, v in rows:
        o = t - t % tf
        if s == symbol and lo <= o <= hi and o + tf <= now:
            groups.setdefault(o, []).append((Decimal(p), Decimal(v)))
    out = []
    for o in sorted(groups):
        ps = [p for p, _ in groups[o]]
        vol = Decimal(len(ps)) if count else sum((v for _, v in groups[o]), Decimal(0))
        out.append((o, ps[0], max(ps), min(ps), ps[-1], vol))
    return out


def as_rows(candles: list[Candle]) -> list[tuple[Any, ...]]:
    assert all(c.closed and c.trades == 0 for c in candles)
    return [(c.open_time, *(Decimal(repr(x)) for x in (c.open, c.high, c.low, c.close, c.volume))) for c in candles]


# --- codec ----------------------------------------------------------------------------------------------


def test_decode_the_documented_sample() -> None:
    d = codec.StreamDecoder()
    assert d.decode(SAMPLE) == [Trade("BINANCE:BTCUSDT", 0, 1575526691134, 7296.89, 0.011467, False)]
    assert not d.errors and d.trades == 1 and d.price_updates == 0


def test_decode_several_items_conditions_and_price_updates() -> None:
    frame = (
        b'{"data":[{"c":["1","12"],"p":261.74,"s":"AAPL","t":1582641000123,"v":100},'
        b'{"p":1.08495,"s":"OANDA:EUR_USD","t":1582641000200,"v":0},'
        b'{"p":261.75,"s":"AAPL","t":1582641000300,"v":5}],"type":"trade"}'
    )
    d = codec.StreamDecoder()
    assert d.decode(frame) == [
        Trade("AAPL", 0, 1582641000123, 261.74, 100.0, False),
        Trade("OANDA:EUR_USD", 0, 1582641000200, 1.08495, 0.0, False),
        Trade("AAPL", 0, 1582641000300, 261.75, 5.0, False),
    ]
    assert (d.trades, d.price_updates) == (2, 1) and not d.errors


def test_decode_ping_error_and_bad_frames_are_counted_and_skipped() -> None:
    d = codec.StreamDecoder()
    assert d.decode(b'{"type":"ping"}') is codec.PING and d.pings == 1
    assert d.decode(b'{"type":"error","msg":"Subscribing to too many symbols"}') is None
    assert d.errors["error_message"] == 1 and "too many symbols" in d.last_error
    for junk in (b"<html>502</html>", b'{"data":[{"p":1,', b"[1,2]", b'"trade"'):
        assert d.decode(junk) is None
    assert d.errors["malformed"] == 4
    assert d.decode(b'{"type":"news","data":[]}') is None and d.errors["unknown_type"] == 1
    # One bad item costs that item only: a string price, a missing time, a negative volume, a zero price.
    frame = (
        b'{"data":[{"p":"7296.89","s":"X","t":1,"v":1},{"p":1.5,"s":"X","v":1},{"p":2.5,"s":"X","t":2,"v":-1},'
        b'{"p":0,"s":"X","t":3,"v":1},{"p":3.5,"s":"X","t":4,"v":2}],"type":"trade"}'
    )
    assert d.decode(frame) == [Trade("X", 0, 4, 3.5, 2.0, False)]
    assert d.errors["bad_field"] == 2 and d.errors["impossible_value"] == 2
    assert d.decode(b'{"data":[{"p":-1,"s":"X","t":1,"v":1}],"type":"trade"}') is None
    assert d.decode(b'{"data":[],"type":"trade"}') is None
    assert d.decode(b'{"data":{},"type":"trade"}') is None and d.errors["bad_field"] == 3
    assert d.errors["impossible_value"] == 3


def test_poison_frames_are_counted_never_raised() -> None:
    """The frames that used to escape the decoder and force a reconnect: a truncated message of an
    unknown type, and a price beyond float range (which costs its item only)."""
    d = codec.StreamDecoder()
    assert d.decode(b'{"type":"news",') is None and d.errors == {"malformed": 1}
    frame = b'{"data":[{"p":1e400,"s":"X","t":1,"v":1},{"p":2.5,"s":"X","t":2,"v":1e400},{"p":3.5,"s":"X","t":3,"v":1}],"type":"trade"}'
    assert d.decode(frame) == [Trade("X", 0, 3, 3.5, 1.0, False)]
    assert d.errors["impossible_value"] == 2
    assert d.decode(b'{"data":[{"p":1,"s":"X","t":99999999999999999999,"v":1}],"type":"trade"}') is None
    assert d.errors["bad_field"] == 1
    assert d.decode(b"[" * 100_000) is None and d.errors["malformed"] == 2
    assert d.decode(b"\xff\xfe") is None and d.errors["malformed"] == 3
    assert not d.errors["decoder_bug"]


def test_control_messages_urls_and_resolutions() -> None:
    assert codec.subscribe("AAPL") == b'{"type":"subscribe","symbol":"AAPL"}'
    assert codec.unsubscribe("BINANCE:BTCUSDT") == b'{"type":"unsubscribe","symbol":"BINANCE:BTCUSDT"}'
    url = codec.stream_url("wss://ws.finnhub.io", "s3cr&t")
    assert url == "wss://ws.finnhub.io?token=s3cr%26t" and codec.redact(url) == "wss://ws.finnhub.io?token=***"
    assert [codec.resolution(t) for t in ("1m", "5m", "15m", "1h", "1d")] == ["1", "5", "15", "60", "D"]
    for tf in ("1s", "5s", "15s", "4h", "2m"):
        with pytest.raises(BadInput):
            codec.resolution(tf)
    kinds = {
        s: codec.symbol_kind(s)
        for s in (
            "OANDA:EUR_USD",
            "FXCM:EUR/USD",
            "IC MARKETS:1",
            "BINANCE:BTCUSDT",
            "COINBASE:BTC-USD",
            "AAPL",
            "BMW.DE",
        )
    }
    assert kinds == {
        "OANDA:EUR_USD": "forex",
        "FXCM:EUR/USD": "forex",
        "IC MARKETS:1": "forex",
        "BINANCE:BTCUSDT": "crypto",
        "COINBASE:BTC-USD": "crypto",
        "AAPL": "stock",
        "BMW.DE": "stock",
    }
    assert (
        codec.candle_path("forex", "OANDA:EUR_USD", "D", 1572651390, 1575243390)
        == "/forex/candle?symbol=OANDA%3AEUR_USD&resolution=D&from=1572651390&to=1575243390"
    )
    with pytest.raises(BadInput):
        codec.candle_path("bond", "X", "1", 0, 1)
    with pytest.raises(BadInput):
        codec.symbol_kind("OANDA:")


def test_decode_candles() -> None:
    body = (
        b'{"c":[1.10713,1.10288],"h":[1.10733,1.10805],"l":[1.10583,1.10109],"o":[1.10658,1.10713],'
        b'"s":"ok","t":[1568667600,1568754000],"v":[75789,96035]}'
    )
    assert codec.decode_candles(body) == [
        Candle(1568667600000, 1.10658, 1.10733, 1.10583, 1.10713, 75789.0, 0, False),
        Candle(1568754000000, 1.10713, 1.10805, 1.10109, 1.10288, 96035.0, 0, False),
    ]
    assert codec.decode_candles(b'{"s":"no_data"}') == []
    for bad in (
        b'{"error":"You don\'t have access to this resource."}',
        b'{"s":"ok","t":[1],"o":[1]}',
        b'{"s":"weird"}',
        b"nope",
    ):
        with pytest.raises(codec.BadCandles):
            codec.decode_candles(bad)
    assert codec.decode_error(b'{"error":"Invalid API key"}') == "Invalid API key"


# --- REST history against the replica ---------------------------------------------------------------------


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_history_candles_equal_the_tape(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finnhub_rest, "PAGE_INTERVALS", 200)  # 1440 one-minute candles take 8 pages
    r = await make(history_ms=2 * D1, calls_per_minute=100_000)
    h = FinnhubHistory(r.rest_url, "key", calls_per_minute=100_000)
    now = r.clock.now_ms()
    cases = [
        ("OANDA:EUR_USD", "1m", M1, START - D1),
        ("BINANCE:BTCUSDT", "5m", M5, START - D1),
        ("AAPL", "1h", H1, START - 2 * D1),
        ("BINANCE:BTCUSDT", "1d", D1, START - 2 * D1),
        ("AAPL", "1m", M1, START - D1),
    ]
    try:
        got = [await h.candles(sym, tf, lo, START - 1, now_ms=now) for sym, tf, _, lo in cases]
    finally:
        await h.close()
    rows = read_tape(r.tape_path or "")
    for (sym, tf, tf_ms, lo), candles in zip(cases, got, strict=True):
        want = ref_candles(rows, sym, tf_ms, lo, START - 1, now, sym.startswith("OANDA:"))
        assert want, (sym, tf)
        assert as_rows(candles) == want, (sym, tf)
    assert h.requests == 8 + 2 + 1 + 1 + 8 and h.throttled == 0
    # Stocks trade in whole shares during the regular session only; forex price updates have no volume.
    aapl = [(t, v) for s, t, _, v in rows if s == "AAPL"]
    local = [dt.datetime.fromtimestamp(t / 1000, NY) for t, _ in aapl]
    assert all(x.weekday() < 5 and dt.time(9, 30) <= x.time() < dt.time(16) for x in local)
    assert {x.date() for x in local} == {dt.date(2026, 3, 2), dt.date(2026, 3, 3), dt.date(2026, 3, 4)}
    assert all(v.isdigit() and int(v) >= 1 for _, v in aapl)
    assert {v for s, _, _, v in rows if s == "OANDA:EUR_USD"} == {"0"}


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_history_paces_under_a_small_limit_and_handles_429(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """10 calls per 2 s: the paced client gets no 429; a client that ignores the limit gets 429s, pauses as
    Retry-After says, and ends with the same candles."""
    monkeypatch.setattr(finnhub_rest, "PAGE_INTERVALS", 10)
    r = await make(symbols=["BINANCE:BTCUSDT"], history_ms=2 * H1, rate=1.0, calls_per_minute=10, window_s=2.0)
    lo, hi, now = START - 2 * H1, START - 1, r.clock.now_ms()
    paced = FinnhubHistory(r.rest_url, "k1", calls_per_minute=10, window_s=2.0)
    greedy = FinnhubHistory(r.rest_url, "k2", calls_per_minute=1000, window_s=2.0)
    try:
        t0 = time.monotonic()
        a = await paced.candles("BINANCE:BTCUSDT", "1m", lo, hi, now_ms=now)
        took = time.monotonic() - t0
        assert (paced.requests, paced.throttled, r.stats["429"]) == (12, 0, 0)
        assert took >= 2.0  # 12 calls cannot fit in one 2 s window
        b = await greedy.candles("BINANCE:BTCUSDT", "1m", lo, hi, now_ms=now)
    finally:
        await paced.close()
        await greedy.close()
    assert len(a) == 120 and b == a
    assert greedy.throttled >= 1 and r.stats["429"] == greedy.throttled and greedy.requests == 12 + greedy.throttled
    assert greedy.paused_s >= 1.0


async def test_history_survives_injected_429_and_500(make: Make) -> None:
    # The seed whose first http429 and http500 both fall in the first second: deterministic, no flake.
    seed = next(
        s
        for s in range(10_000)
        if (t := FaultSchedule({"http429": 6, "http500": 6}, s)).times("http429", 1.0)
        and t.times("http500", 1.0)
        and len(t.times("http429", 30)) <= 3
    )
    r = await make(
        symbols=["AAPL"], history_ms=D1, faults={"http429": 6, "http500": 6}, faults_seed=seed, calls_per_minute=10_000
    )
    await asyncio.sleep(1.05)
    h = FinnhubHistory(r.rest_url, "key", calls_per_minute=10_000)
    try:
        got = await h.candles("AAPL", "15m", START - D1, START - 1, now_ms=r.clock.now_ms())
    finally:
        await h.close()
    assert h.throttled >= 1 and h.server_errors >= 1 and r.faults_injected()["http429"] >= 1
    want = ref_candles(read_tape(r.tape_path or ""), "AAPL", 900_000, START - D1, START - 1, r.clock.now_ms(), False)
    assert as_rows(got) == want and want


async def test_rest_needs_the_key_and_speaks_finnhub(make: Make) -> None:
    r = await make(symbols=["AAPL", "BINANCE:BTCUSDT"], history_ms=D1, token="secret")
    q = {"symbol": "AAPL", "resolution": "60", "from": str((START - D1) // 1000), "to": str(START // 1000)}
    url = f"{r.rest_url}/stock/candle"
    async with aiohttp.ClientSession() as http:

        async def get(u: str, params: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, Any]:
            async with http.get(u, params=params, headers=headers) as resp:
                return resp.status, json.loads(await resp.read())

        assert (await get(url, q))[0] == 401
        assert (await get(url, {**q, "token": "wrong"}))[0] == 401
        s1, b1 = await get(url, {**q, "token": "secret"})
        s2, b2 = await get(url, q, {"X-Finnhub-Token": "secret"})
        assert s1 == s2 == 200 and b1 == b2 and b1["s"] == "ok" and list(b1) == ["c", "h", "l", "o", "s", "t", "v"]
        assert all(t % 3600 == 0 for t in b1["t"]) and len(b1["t"]) == 7  # 14:00-20:00 UTC, the session's hours
        assert (await get(f"{r.rest_url}/crypto/candle", {**q, "token": "secret"})) == (200, {"s": "no_data"})
        assert (await get(url, {**q, "from": q["to"], "to": q["from"], "token": "secret"})) == (200, {"s": "no_data"})
        assert (await get(url, {**q, "resolution": "2", "token": "secret"}))[0] == 422
        assert (await get(f"{r.rest_url}/quote", {"symbol": "AAPL", "token": "secret"}))[0] == 404
        for bad in ("", "?token=wrong"):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(r.ws_url + "/" + bad)
            assert e.value.status == 401
    h = FinnhubHistory(r.rest_url, "wrong-key-123")
    try:
        with pytest.raises(VenueError) as err:
            await h.candles("AAPL", "1h", START - D1, START - 1)
    finally:
        await h.close()
    assert err.value.status == 401 and "wrong-key-123" not in str(err.value) and "wrong-key-123" not in repr(h)


# --- the replica's WebSocket ------------------------------------------------------------------------------


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> Any:
    m = await ws.receive(timeout=timeout)
    assert m.type == aiohttp.WSMsgType.TEXT, (m.type, m.data)
    return json.loads(m.data)


async def test_ws_messages_match_the_tape(make: Make) -> None:
    r = await make(speed=20.0, rate=5.0, history_ms=M1, ping_s=0.25)
    symbols = ["OANDA:EUR_USD", "BINANCE:BTCUSDT", "AAPL"]
    got: dict[str, list[tuple[int, str, str]]] = {s: [] for s in symbols}  # time, price and volume as sent
    dec = codec.StreamDecoder()
    pings = batched = 0
    async with aiohttp.ClientSession() as http, http.ws_connect(codec.stream_url(r.ws_url, "k")) as ws:
        for s in symbols:
            await ws.send_bytes(codec.subscribe(s))
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            m = await ws.receive(timeout=3)
            assert m.type == aiohttp.WSMsgType.TEXT
            msg = json.loads(m.data)
            out = dec.decode(m.data)
            if msg == {"type": "ping"}:
                assert out is codec.PING
                pings += 1
                continue
            assert msg["type"] == "trade" and list(msg) == ["data", "type"] and 1 <= len(msg["data"]) <= MAX_ITEMS
            assert len({i["s"] for i in msg["data"]}) == 1  # one symbol per message
            batched += len(msg["data"]) > 1
            items = ITEM.findall(m.data)
            assert isinstance(out, list) and len(out) == len(items) == len(msg["data"])
            for (p, s, t, v), trade in zip(items, out, strict=True):
                assert trade == Trade(s, 0, int(t), float(p), float(v), False)
                got[s].append((int(t), p, v))
    assert not dec.errors and pings >= 3 and batched > 0
    await r.stop()  # closes the tape
    tape = read_tape(r.tape_path or "")
    for s in symbols:
        rows = [(t, p, v) for sym, t, p, v in tape if sym == s]
        n = len(got[s])
        assert n > 20, s
        # Received: a contiguous run of the tape, with the same texts (several items may share a millisecond).
        assert any(rows[k : k + n] == got[s] for k, row in enumerate(rows) if row[0] == got[s][0][0]), s
    # Forex price updates carry the mid of the simulated quote, and no volume.
    sim = QuoteSim(["EUR_USD"], seed=1, rate=5.0)
    for t, p, v in got["OANDA:EUR_USD"][:20]:
        q = sim.batch("EUR_USD", t, t + 1)
        assert v == "0" and float(p) in {(b + a) / 200_000 for b, a in zip(q.bid.tolist(), q.ask.tolist(), strict=True)}


async def test_one_connection_per_key(make: Make) -> None:
    r = await make(symbols=["BINANCE:BTCUSDT"], history_ms=M1, ping_s=0.2)
    async with aiohttp.ClientSession() as http:
        first = await http.ws_connect(codec.stream_url(r.ws_url, "k1"))
        second = await http.ws_connect(r.ws_url + "/ws?token=k1")  # /ws is the same endpoint
        msg = await recv_json(second)
        assert msg["type"] == "error" and "one connection" in msg["msg"]
        m = await second.receive(timeout=3)
        assert m.type == aiohttp.WSMsgType.CLOSE and second.close_code == 1008
        other = await http.ws_connect(codec.stream_url(r.ws_url, "k2"))  # another key is another account
        assert await recv_json(other) == {"type": "ping"}
        assert await recv_json(first) == {"type": "ping"}  # the first connection is kept
        assert r.stats["refused_connections"] == 1 and r.stats["open_connections"] == 2
        await first.close()
        for _ in range(100):
            if r.stats["open_connections"] == 1:
                break
            await asyncio.sleep(0.01)
        again = await http.ws_connect(codec.stream_url(r.ws_url, "k1"))
        assert await recv_json(again) == {"type": "ping"}
        assert r.stats["refused_connections"] == 1
        await again.close()
        await other.close()


async def test_symbol_cap_and_unsubscribe(make: Make) -> None:
    r = await make(
        symbols=["BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT"],
        history_ms=M1,
        speed=20.0,
        rate=5.0,
        max_symbols=2,
        ping_s=60,
    )
    async with aiohttp.ClientSession() as http, http.ws_connect(codec.stream_url(r.ws_url, "k")) as ws:

        async def symbols_for(seconds: float) -> tuple[set[str], list[str]]:
            seen: set[str] = set()
            errors: list[str] = []
            end = time.monotonic() + seconds
            while (left := end - time.monotonic()) > 0:
                try:
                    msg = await recv_json(ws, left)
                except TimeoutError:
                    break
                if msg["type"] == "error":
                    errors.append(msg["msg"])
                else:
                    seen |= {i["s"] for i in msg["data"]}
            return seen, errors

        for s in ("BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT"):
            await ws.send_bytes(codec.subscribe(s))
        seen, errors = await symbols_for(0.5)
        assert seen == {"BINANCE:BTCUSDT", "BINANCE:ETHUSDT"}
        assert len(errors) == 1 and "limit of 2 symbols" in errors[0] and r.stats["symbol_cap_errors"] == 1
        await ws.send_bytes(codec.unsubscribe("BINANCE:BTCUSDT"))
        await ws.send_bytes(codec.subscribe("BINANCE:SOLUSDT"))
        await symbols_for(0.1)  # what was on its way before the unsubscribe
        seen, errors = await symbols_for(0.5)
        assert seen == {"BINANCE:ETHUSDT", "BINANCE:SOLUSDT"} and not errors


async def test_ws_faults_garbage_and_close(make: Make) -> None:
    rates = {"garbage": 120, "close": 30}
    seed = next(
        s
        for s in range(10_000)
        if (t := FaultSchedule(rates, s)).times("garbage", 0.5) and 0.7 < min(t.times("close", 1.5), default=9) < 1.5
    )
    r = await make(symbols=["BINANCE:BTCUSDT"], history_ms=M1, speed=20.0, rate=5.0, faults=rates, faults_seed=seed)
    dec = codec.StreamDecoder()
    trades = 0
    async with aiohttp.ClientSession() as http, http.ws_connect(codec.stream_url(r.ws_url, "k")) as ws:
        await ws.send_bytes(codec.subscribe("BINANCE:BTCUSDT"))
        async for m in ws:
            out = dec.decode(m.data)
            trades += len(out) if isinstance(out, list) else 0
    assert ws.close_code in (1000, 1001) and dec.errors["malformed"] >= 1 and trades > 10
    assert r.faults_injected()["close"] == 1 and r.faults_injected()["garbage"] == dec.errors["malformed"]
    with pytest.raises(BadInput, match="no id"):
        check_faults("drop=1")


# --- CLI --------------------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "deltafeed", "replica", "finnhub"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--faults", "reorder=1"], "reorder"),
        (["--symbols", "FXCM:EUR/USD"], "OANDA pairs"),
        (["--start", "Friday"], "--start"),
        (["--token", ""], "--token"),
        (["--rate", "0"], "--rate"),
    ],
)
def test_cli_bad_usage_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_cli_serves_until_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *CLI,
            "--start",
            "2026-03-04T15:00:00Z",
            "--history",
            "2h",
            "--token",
            "t0k",
            "--tape",
            str(tmp_path / "t.csv"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = first.removeprefix("listening on ")

        async def fetch() -> list[Candle]:
            h = FinnhubHistory(url + "/api/v1", "t0k")
            try:
                return await h.candles("BINANCE:BTCUSDT", "15m", START - 2 * H1, START - 1, now_ms=START)
            finally:
                await h.close()

        assert len(asyncio.run(fetch())) == 8
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "finnhub replica stopped: items=" in out and "requests=1 " in out


async def test_a_rest_base_without_api_v1_is_refused_at_start_naming_the_fix(
    make: Make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--venue finnhub --symbols BINANCE:BTCUSDT`` is Finnhub's BINANCE exchange (not our Binance
    venue), and a REST base missing ``/api/v1`` is one line at start-up, not a stream of 404 repairs."""
    from deltafeed.config import Settings
    from deltafeed.engine import Engine

    r = await make(symbols=["BINANCE:BTCUSDT"])
    monkeypatch.setenv("FINNHUB_TOKEN", "deltafeed-dev-key")
    settings = Settings(
        venue="finnhub",
        symbols=["BINANCE:BTCUSDT"],
        history="1h",
        rest_url=r.url,  # the replica's root, without /api/v1
        ws_url=r.ws_url,
        db=str(tmp_path / "f.duckdb"),
    ).validate()
    assert settings.symbols == ["finnhub:BINANCE:BTCUSDT"]
    engine = Engine(settings)
    try:
        with pytest.raises(BadInput, match=r"has no Finnhub candle endpoint \(404\); the REST base ends in /api/v1"):
            await engine.start()
    finally:
        await engine.stop()
