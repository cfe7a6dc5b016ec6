"""The OANDA v20 client side: codec on PROTOCOLS.md section 5's verbatim lines, LineStream and OandaHistory
against small aiohttp servers written here (chunked bodies, silence, 401, 429, paging past 5000 candles)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest
from aiohttp import web

from deltafeed.model import BadInput, Candle, Quote
from deltafeed.net.http import VenueError, http_date_ms
from deltafeed.net.lines import LineStream, StreamUnauthorized
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.venues.oanda import codec as o
from deltafeed.venues.oanda.rest import OandaHistory
from helpers import ms, serve_app, until
from reference import oanda_candles_from_tape, read_quote_tape

# Verbatim from PROTOCOLS.md section 5 (oandapyV20 fixtures); the PRICE line joined onto one line.
DOC_PRICE = (
    b'{"type":"PRICE","instrument":"EUR_USD","time":"2016-10-27T08:38:45.664613867Z","status":"tradeable",'
    b'"bids":[{"price":"1.09177","liquidity":10000000},{"price":"1.09175","liquidity":10000000}],'
    b'"asks":[{"price":"1.09188","liquidity":10000000},{"price":"1.09190","liquidity":10000000}],'
    b'"closeoutBid":"1.09173","closeoutAsk":"1.09192"}'
)
DOC_HEARTBEAT = b'{"type":"HEARTBEAT","time":"2016-10-27T08:38:44.327443673Z"}'
DOC_CANDLES = b'{"instrument":"DE30_EUR","granularity":"M5","candles":[{"complete":true,"volume":132,"time":"2016-10-17T19:35:00.000000000Z","mid":{"o":"10503.8","h":"10508.0","l":"10503.8","c":"10506.0"}}]}'

TOKEN = "s3cr3t-0123456789abcdef-token"
UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


# --- codec: stream lines ------------------------------------------------------------------------


def test_price_line_becomes_a_quote_field_by_field() -> None:
    d = o.PriceDecoder()
    q = d.decode(DOC_PRICE)
    assert isinstance(q, Quote)
    assert q.symbol == "EUR_USD"
    assert q.time_ms == ms(2016, 10, 27, 8, 38, 45, 664)
    assert (q.bid, q.ask) == (1.09177, 1.09188)  # the first (best) levels, not 1.09175 / 1.09190
    assert (q.bid_size, q.ask_size) == (10_000_000.0, 10_000_000.0)
    assert not d.errors


def test_heartbeat_line_and_memoryview_input() -> None:
    d = o.PriceDecoder()
    assert d.decode(memoryview(DOC_HEARTBEAT)) == o.Heartbeat(ms(2016, 10, 27, 8, 38, 44, 327))
    q = d.decode(memoryview(DOC_PRICE))
    assert isinstance(q, Quote) and q.bid == 1.09177
    assert not d.errors


def test_times_are_truncated_to_the_millisecond_never_rounded_into_the_next_minute() -> None:
    line = DOC_PRICE.replace(b"08:38:45.664613867", b"08:38:59.999999999")
    q = o.PriceDecoder().decode(line)
    assert isinstance(q, Quote) and q.time_ms == ms(2016, 10, 27, 8, 38, 59, 999)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2016-10-27T08:38:45.664613867Z", ms(2016, 10, 27, 8, 38, 45, 664)),
        ("2016-10-27T08:38:45Z", ms(2016, 10, 27, 8, 38, 45)),
        ("2016-10-27T08:38:45.5Z", ms(2016, 10, 27, 8, 38, 45, 500)),
        ("2016-10-27T08:38:45.012345Z", ms(2016, 10, 27, 8, 38, 45, 12)),
        ("2024-02-29T23:59:59.999000000Z", ms(2024, 2, 29, 23, 59, 59, 999)),
        ("1477557525.664613867", ms(2016, 10, 27, 8, 38, 45, 664)),  # Accept-Datetime-Format: UNIX
        ("1477557525", ms(2016, 10, 27, 8, 38, 45)),
    ],
)
def test_time_forms(text: str, expected: int) -> None:
    assert o.time_ms(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2016-10-27T08:38:45.664613867",
        "2016-10-27 08:38:45.664613867Z",
        "2016-10-27T24:00:00.000000000Z",
        "2016-10-27T08:60:00.000000000Z",
        "2016-13-01T08:38:45.664613867Z",
        "2016-10-27T08:38:4x.664613867Z",
        "2016-10-27T08:38:+5.664613867Z",
        "2016-10-27T08:38:45.66461386xZ",
        "2016-10-27T08:38:45.1_3456789Z",
        "2016-10-27T08:38:61.000000000Z",
        "",
        "yesterday",
    ],
)
def test_bad_times_raise(text: str) -> None:
    with pytest.raises(ValueError):
        o.time_ms(text)


def test_rfc3339_round_trips() -> None:
    t = ms(2016, 10, 17, 19, 35, 0, 7)
    assert o.rfc3339(t) == "2016-10-17T19:35:00.007000000Z"
    assert o.time_ms(o.rfc3339(t)) == t


def _price(**fields: Any) -> bytes:
    msg = msgspec.json.decode(DOC_PRICE)
    msg.update(fields)
    return msgspec.json.encode(msg)


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (b"{not json", "malformed"),
        (b"[1,2,3]", "malformed"),
        (b"", "malformed"),
        (b'{"type":"PRICE","instrument":"EUR_USD"}', "bad_field"),
        (b'{"type":"HEARTBEAT"}', "bad_field"),
        (b'{"type":"HEARTBEAT","time":"noon"}', "bad_field"),
        (_price(bids=[{"price": "abc", "liquidity": 1}]), "bad_field"),
        (_price(asks=[{"price": "NaN", "liquidity": 1}]), "impossible_value"),
        (_price(asks=[{"price": "1e400", "liquidity": 1}]), "impossible_value"),
        (_price(bids=[{"price": "-0", "liquidity": 1}]), "impossible_value"),
        (_price(bids=[{"price": "1.1", "liquidity": -5}]), "impossible_value"),
        (
            _price(bids=[{"price": "1.1", "liquidity": 1}]).replace(b'"liquidity":1', b'"liquidity":1e400'),
            "impossible_value",
        ),
        (b'{"type":"PRICE",' + b"[" * 100_000, "malformed"),
        (_price(asks="1.0"), "bad_field"),
        (b'{"type":"MARKET_ORDER","time":"2016-10-27T08:38:44.327443673Z"}', "unknown_type"),
        (b'{"errorMessage":"Invalid value specified for instruments"}', "unknown_type"),
        (_price(tradeable=False), "not_tradeable"),
        (_price(status="non-tradeable"), "not_tradeable"),
        (_price(bids=[]), "empty_book"),
    ],
)
def test_bad_lines_are_counted_by_kind_and_skipped(line: bytes, kind: str) -> None:
    d = o.PriceDecoder()
    assert d.decode(line) is None
    assert d.errors == {kind: 1}
    assert d.last_error
    assert isinstance(d.decode(DOC_PRICE), Quote)  # the next good line still decodes
    assert d.errors == {kind: 1}


def test_tradeable_flag_wins_over_the_legacy_status() -> None:
    d = o.PriceDecoder()
    assert isinstance(d.decode(_price(tradeable=True, status="non-tradeable")), Quote)
    assert isinstance(d.decode(_price(tradeable=True)), Quote)
    assert not d.errors


# --- codec: candles, granularities, URLs --------------------------------------------------------


def test_doc_candles_body_field_by_field() -> None:
    [c] = o.decode_candles(DOC_CANDLES, "mid")
    assert c.open_time == ms(2016, 10, 17, 19, 35)
    assert (c.open, c.high, c.low, c.close) == (10503.8, 10508.0, 10503.8, 10506.0)
    assert (c.volume, c.trades, c.closed) == (132.0, 132, True)
    with pytest.raises(o.BadCandles, match="no 'bid'"):
        o.decode_candles(DOC_CANDLES, "bid")


MBA_BODY = (
    b'{"instrument":"EUR_USD","granularity":"M1","candles":['
    b'{"complete":true,"volume":7,"time":"2016-10-17T19:35:00.000000000Z",'
    b'"bid":{"o":"1.10001","h":"1.10011","l":"1.09991","c":"1.10005"},'
    b'"mid":{"o":"1.10006","h":"1.10016","l":"1.09996","c":"1.10010"},'
    b'"ask":{"o":"1.10011","h":"1.10021","l":"1.10001","c":"1.10015"}},'
    b'{"complete":false,"volume":2,"time":"2016-10-17T19:36:00.000000000Z",'
    b'"bid":{"o":"1.1","h":"1.2","l":"1.0","c":"1.1"},"mid":{"o":"2.1","h":"2.2","l":"2.0","c":"2.1"},'
    b'"ask":{"o":"3.1","h":"3.2","l":"3.0","c":"3.1"}}]}'
)


def test_candles_of_every_side_from_one_mba_body() -> None:
    t = ms(2016, 10, 17, 19, 35)
    all_sides = o.decode_candles_all(MBA_BODY)
    assert all_sides == {
        "mid": [
            Candle(t, 1.10006, 1.10016, 1.09996, 1.10010, 7.0, 7, True),
            Candle(t + 60_000, 2.1, 2.2, 2.0, 2.1, 2.0, 2, False),
        ],
        "bid": [
            Candle(t, 1.10001, 1.10011, 1.09991, 1.10005, 7.0, 7, True),
            Candle(t + 60_000, 1.1, 1.2, 1.0, 1.1, 2.0, 2, False),
        ],
        "ask": [
            Candle(t, 1.10011, 1.10021, 1.10001, 1.10015, 7.0, 7, True),
            Candle(t + 60_000, 3.1, 3.2, 3.0, 3.1, 2.0, 2, False),
        ],
    }
    assert o.decode_candles(MBA_BODY, "ask") == all_sides["ask"]


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"not json",
        b'{"candles":[{"time":"x","volume":1,"complete":true,"mid":{"o":"1","h":"1","l":"1","c":"1"}}]}',
    ],
)
def test_bad_candle_bodies_raise(body: bytes) -> None:
    with pytest.raises(o.BadCandles):
        o.decode_candles(body)


def test_granularities() -> None:
    assert [o.granularity(tf) for tf in ("5s", "15s", "1m", "5m", "15m", "1h", "4h", "1d")] == [
        "S5",
        "S15",
        "M1",
        "M5",
        "M15",
        "H1",
        "H4",
        "D",
    ]
    with pytest.raises(BadInput, match="finest is 5s"):
        o.granularity("1s")
    with pytest.raises(BadInput, match="unknown timeframe"):
        o.granularity("2m")


def test_urls() -> None:
    assert (
        o.stream_url("https://stream-fxtrade.oanda.com/", "101-004-1234567-001", ["EUR_USD", "usd_jpy"])
        == "https://stream-fxtrade.oanda.com/v3/accounts/101-004-1234567-001/pricing/stream"
        "?instruments=EUR_USD,USD_JPY"
    )
    path = o.candles_path("EUR_USD", "D", ms(2016, 10, 17), 5000, "MBA")
    split = urlsplit(path)
    assert split.path == "/v3/instruments/EUR_USD/candles"
    assert parse_qs(split.query) == {
        "price": ["MBA"],
        "granularity": ["D"],
        "from": ["2016-10-17T00:00:00.000000000Z"],
        "count": ["5000"],
        "dailyAlignment": ["0"],
        "alignmentTimezone": ["UTC"],
    }
    with pytest.raises(ValueError):
        o.candles_path("EUR_USD", "M1", 0, 5001)


def test_venue_now_from_date_header_and_newest_candle() -> None:
    t = ms(2016, 10, 17, 19, 35, 5)
    forming = Candle(t, 1, 1, 1, 1, 1, 1, False)
    assert o.venue_now_ms(t + 3000, forming) == t + 3000  # the market is open: Date refines the candle
    assert o.venue_now_ms(ms(2026, 1, 1), forming) == t  # Date is not the market's clock (a replay)
    assert o.venue_now_ms(ms(2026, 1, 1), Candle(t, 1, 1, 1, 1, 1, 1, True)) == ms(2026, 1, 1)  # weekend
    assert o.venue_now_ms(t, Candle(t, 1, 1, 1, 1, 1, 1, True)) == t + 5000  # Date before the candle's end
    assert o.venue_now_ms(None, None) is None
    assert http_date_ms("Mon, 17 Oct 2016 19:35:08 GMT") == ms(2016, 10, 17, 19, 35, 8)
    assert http_date_ms("garbage") is None


# --- small servers --------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    async with serve_app(app) as url:
        yield url


async def chunked(request: web.Request, pieces: list[bytes], pause: float = 0.03) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    resp.content_type = "application/octet-stream"
    await resp.prepare(request)
    for p in pieces:
        await resp.write(p)
        await asyncio.sleep(pause)  # each write reaches the client as its own read
    return resp


STREAM_PATH = "/v3/accounts/{account}/pricing/stream"
FAST = ConnectBudget(100, 1.0)  # tests that are not about the connection budget skip OANDA's 2/s


# --- LineStream -------------------------------------------------------------------------------------


async def test_lines_split_across_chunks_and_many_per_chunk_then_reconnect_after_the_server_ends() -> None:
    pieces = [
        DOC_HEARTBEAT[:10],
        DOC_HEARTBEAT[10:30],
        DOC_HEARTBEAT[30:] + b"\n" + DOC_PRICE[:50],  # split 3 ways
        DOC_PRICE[50:] + b"\r\n" + DOC_HEARTBEAT + b"\n\n" + DOC_PRICE + b"\n" + DOC_HEARTBEAT[:5],  # 3 lines
        DOC_HEARTBEAT[5:] + b"\n",
    ]
    seen_auth: list[str | None] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen_auth.append(request.headers.get("Authorization"))
        return await chunked(request, pieces if len(seen_auth) == 1 else [DOC_HEARTBEAT + b"\n"])

    got: list[bytes] = []
    events: list[str] = []
    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(
            lambda: o.stream_url(base, "acc-1", ["EUR_USD"]),
            got.append,
            headers=o.auth_headers(TOKEN),
            budget=FAST,
            backoff_base_s=0.01,
            on_connect=lambda s: events.append("up"),
            on_disconnect=lambda s, why: events.append(f"down: {why}"),
        )
        task = asyncio.create_task(stream.run())
        await until(lambda: stream.connects >= 2 and len(got) >= 6)
        await stream.close()
        await task
    assert got[:5] == [DOC_HEARTBEAT, DOC_PRICE, DOC_HEARTBEAT, DOC_PRICE, DOC_HEARTBEAT]
    assert got[5] == DOC_HEARTBEAT
    assert all(type(line) is bytes for line in got)
    assert stream.frames == len(got)
    assert seen_auth[0] == f"Bearer {TOKEN}"
    assert events[:3] == ["up", "down: the server ended the stream", "up"]
    assert stream.stale_drops == 0
    assert not stream.connected.is_set() and stream.connected_at == 0.0


async def test_heartbeats_alone_keep_a_connection_alive() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await chunked(request, [DOC_HEARTBEAT + b"\n"] * 100, pause=0.1)

    lines: list[bytes] = []
    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(
            lambda: o.stream_url(base, "acc-1", ["EUR_USD"]), lines.append, stale_after_s=0.4, budget=FAST
        )
        task = asyncio.create_task(stream.run())
        await asyncio.sleep(1.5)
        assert stream.connected.is_set()
        await stream.close()
        await task
    assert stream.connects == 1 and stream.stale_drops == 0
    assert len(lines) >= 8


async def test_a_silent_server_is_dropped_and_reconnected() -> None:
    connections: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        connections.append(time.monotonic())
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(DOC_HEARTBEAT + b"\n")
        await asyncio.sleep(3600)  # then nothing, as a stalled venue
        return resp

    reasons: list[str] = []
    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(
            lambda: o.stream_url(base, "acc-1", ["EUR_USD"]),
            lambda line: None,
            stale_after_s=0.5,
            budget=FAST,
            backoff_base_s=0.01,
            on_disconnect=lambda s, why: reasons.append(why),
        )
        task = asyncio.create_task(stream.run())
        await until(lambda: len(connections) >= 3)
        await stream.close()
        await task
    assert stream.stale_drops >= 2
    assert reasons[:2] == ["no data for 0.5 s"] * 2
    gaps = [b - a for a, b in itertools.pairwise(connections)]
    assert all(0.45 <= g < 2.0 for g in gaps), gaps


async def test_401_stops_with_one_error_line_naming_the_variable_never_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(1)  # a proxy that echoes the credentials back must not leak them either
        return web.json_response(
            {"errorMessage": f"Insufficient authorization: {request.headers['Authorization']}"}, status=401
        )

    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(
            lambda: o.stream_url(base, "acc-1", ["EUR_USD"]),
            lambda line: None,
            headers=o.auth_headers(TOKEN),
            budget=FAST,
            backoff_base_s=0.01,
        )
        with caplog.at_level(logging.WARNING, logger="deltafeed.lines"), pytest.raises(StreamUnauthorized) as err:
            await asyncio.wait_for(stream.run(), 5)
    assert calls == [1]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "OANDA_TOKEN" in errors[0].getMessage()
    assert TOKEN not in caplog.text and TOKEN not in str(err.value) and TOKEN not in repr(stream)
    assert err.value.status == 401 and stream.error is err.value
    assert stream.connects == 0


async def test_5xx_and_429_back_off_and_honour_retry_after() -> None:
    attempts: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            return web.Response(status=503, text="down")
        if len(attempts) == 2:
            return web.Response(status=429, headers={"Retry-After": "0.6"}, text="slow down")
        return await chunked(request, [DOC_PRICE + b"\n"] * 3 + [DOC_HEARTBEAT + b"\n"] * 50, pause=0.05)

    got: list[bytes] = []
    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(
            lambda: o.stream_url(base, "acc-1", ["EUR_USD"]), got.append, budget=FAST, backoff_base_s=0.01
        )
        task = asyncio.create_task(stream.run())
        await until(lambda: len(got) >= 3)
        await stream.close()
        await task
    assert stream.refusals == {503: 1, 429: 1}
    assert stream.connects == 1 and stream.attempts == 3
    assert attempts[2] - attempts[1] >= 0.55  # Retry-After, not the 10 ms backoff
    assert got[:3] == [DOC_PRICE] * 3


async def test_close_interrupts_a_long_backoff_and_an_open_connection() -> None:
    stream = LineStream(
        lambda: "http://127.0.0.1:9/nothing", lambda line: None, budget=FAST, backoff_base_s=30.0, backoff_cap_s=30.0
    )
    task = asyncio.create_task(stream.run())
    await until(lambda: stream.attempts >= 1)
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await stream.close()
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - t0 < 1.0

    async def handler(request: web.Request) -> web.StreamResponse:
        return await chunked(request, [DOC_HEARTBEAT + b"\n"] * 1000, pause=0.05)

    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(lambda: o.stream_url(base, "acc-1", ["EUR_USD"]), lambda line: None, budget=FAST)
        task = asyncio.create_task(stream.run())
        await asyncio.wait_for(stream.connected.wait(), 5)
        t0 = time.monotonic()
        await stream.close()
        await asyncio.wait_for(task, 2)
        assert time.monotonic() - t0 < 1.0 and stream.connects == 1


async def test_new_connections_wait_for_the_budget() -> None:
    connections: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        connections.append(time.monotonic())
        return await chunked(request, [DOC_HEARTBEAT + b"\n"], pause=0)  # ends at once: reconnect

    async with serve({STREAM_PATH: handler}) as base:
        stream = LineStream(
            lambda: o.stream_url(base, "acc-1", ["EUR_USD"]),
            lambda line: None,
            budget=ConnectBudget(2, 0.5),
            backoff_base_s=0.001,
            backoff_cap_s=0.001,
        )
        task = asyncio.create_task(stream.run())
        await until(lambda: len(connections) >= 5)
        await stream.close()
        await task
    assert connections[4] - connections[0] >= 0.95  # 2 per 0.5 s: the 5th waits two windows
    assert all(b - a >= 0.45 for a, b in zip(connections, connections[2:], strict=False))


# --- OandaHistory -----------------------------------------------------------------------------------


def _fmt_time(t: int) -> str:
    return dt.datetime.fromtimestamp(t / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


GRAN_MS = {"S5": 5_000, "M1": 60_000, "H4": 14_400_000, "D": 86_400_000}


class CandleVenue:
    """Serves M1 (and S5) candles over a time range with a hole, as OANDA does: no candle without prices."""

    def __init__(self, first: int, minutes: int, hole: tuple[int, int] | None = None, now_open: bool = True) -> None:
        self.times = [
            first + i * 60_000 for i in range(minutes) if hole is None or not hole[0] <= first + i * 60_000 < hole[1]
        ]
        self.now_open = now_open  # the newest candle is still forming
        self.queries: list[dict[str, str]] = []
        self.auth: list[str | None] = []
        self.script: list[web.Response] = []  # answers to give before the real ones
        self.shift_ms = 0  # a server that ignores dailyAlignment

    @staticmethod
    def ohlc(t: int, side: str) -> dict[str, str]:
        base = 1.1 + (t // 60_000 % 997) * 1e-5 + {"M": 0.0, "B": -5e-5, "A": 5e-5}[side]
        return {"o": f"{base:.5f}", "h": f"{base + 2e-4:.5f}", "l": f"{base - 1e-4:.5f}", "c": f"{base + 1e-4:.5f}"}

    def expected(self, t: int, side: str = "M") -> Candle:
        v = self.ohlc(t, side)
        return Candle(
            t,
            float(v["o"]),
            float(v["h"]),
            float(v["l"]),
            float(v["c"]),
            float(t // 60_000 % 50 + 1),
            t // 60_000 % 50 + 1,
            t != self.times[-1] or not self.now_open,
        )

    async def candles(self, request: web.Request) -> web.StreamResponse:
        q = dict(request.query)
        self.queries.append(q)
        self.auth.append(request.headers.get("Authorization"))
        if self.script:
            return self.script.pop(0)
        count = int(q.get("count", "500"))
        if not 1 <= count <= 5000:
            return web.json_response({"errorMessage": "Maximum value for 'count' exceeded"}, status=400)
        if q.get("dailyAlignment") != "0" or q.get("alignmentTimezone") != "UTC":
            return web.json_response({"errorMessage": "not UTC aligned"}, status=400)
        gran = q.get("granularity", "S5")
        if gran != "M1":
            times = [self.times[-1]]  # S5 for server_time: the newest candle only
        elif "from" in q:
            start = (dt.datetime.fromisoformat(q["from"]) - EPOCH) // dt.timedelta(milliseconds=1)
            if self.now_open and start > self.times[-1] + 59_999:
                return web.json_response(
                    {"errorMessage": "Invalid value specified for 'from'. Time is in the future"}, status=400
                )
            i = bisect.bisect_left(self.times, start)
            times = self.times[i : i + count]
        else:
            times = self.times[-count:]
        sides = {"M": "mid", "B": "bid", "A": "ask"}
        out = []
        for t in times:
            c: dict[str, Any] = {
                "complete": t != self.times[-1] or not self.now_open,
                "volume": t // 60_000 % 50 + 1,
                "time": _fmt_time(t + self.shift_ms),
            }
            for letter in q.get("price", "M"):
                c[sides[letter]] = self.ohlc(t, letter)
            out.append(c)
        return web.Response(
            body=msgspec.json.encode(
                {"instrument": request.match_info["instrument"], "granularity": gran, "candles": out}
            ),
            content_type="application/json",
            headers={"Date": "Mon, 17 Oct 2016 19:35:08 GMT"},
        )

    async def instruments(self, request: web.Request) -> web.StreamResponse:
        self.auth.append(request.headers.get("Authorization"))
        return web.json_response(
            {"instruments": [{"name": "EUR_USD", "type": "CURRENCY"}, {"name": "XAU_USD", "type": "METAL"}]}
        )

    def routes(self, with_instruments: bool = True) -> dict[str, Handler]:
        r: dict[str, Handler] = {"/v3/instruments/{instrument}/candles": self.candles}
        if with_instruments:
            r["/v3/accounts/{account}/instruments"] = self.instruments
        return r


T0 = ms(2016, 10, 14, 0, 0)


async def test_history_pages_past_5000_candles_across_a_hole_with_the_token_header() -> None:
    venue = CandleVenue(T0, 14_000, hole=(T0 + 4_000 * 60_000, T0 + 7_000 * 60_000))  # 3000 missing minutes
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN, "acc-1")
        try:
            start, end = T0 + 30_000 + 60_000 * 10, T0 + 13_000 * 60_000 - 1  # starts mid-minute
            got = await h.candles("EUR_USD", "1m", start, end)
            pages = len(venue.queries)
            # A page whose end falls in the hole: OANDA answers candles past it, which are dropped.
            in_hole = await h.candles("EUR_USD", "1m", T0, T0 + 5_000 * 60_000)
        finally:
            await h.close()
    want = [venue.expected(t) for t in venue.times if T0 + 11 * 60_000 <= t <= end]
    assert got == want
    assert len(got) == 13_000 - 11 - 3_000
    assert all(c.closed for c in got)
    # 5000, then the 4989 intervals left: the hole means the first page already reached minute 8010.
    assert [int(q["count"]) for q in venue.queries[:pages]] == [5000, 4989]
    assert in_hole == [venue.expected(t) for t in venue.times if t < T0 + 4_000 * 60_000]
    assert len(venue.queries) == pages + 1
    assert all(q["granularity"] == "M1" and q["price"] == "M" for q in venue.queries)
    assert set(venue.auth) == {f"Bearer {TOKEN}"}
    assert h.stats["requests"] == 3 and h.stats["throttled"] == 0


async def test_history_stops_at_the_venue_now_and_keeps_the_forming_candle_open() -> None:
    venue = CandleVenue(T0, 100)
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN)
        try:
            got = await h.candles("EUR_USD", "1m", T0, T0 + 10_000 * 60_000)  # far past the venue's now
            clipped = await h.candles("EUR_USD", "1m", T0, T0 + 10_000 * 60_000, now_ms=T0 + 49 * 60_000)
        finally:
            await h.close()
    assert got == [venue.expected(t) for t in venue.times]
    assert got[-1].closed is False and got[-2].closed is True
    assert clipped == got[:50]
    assert len(venue.queries) == 2


async def test_a_full_page_ending_in_the_forming_candle_is_the_last() -> None:
    venue = CandleVenue(T0, 5_000)  # exactly one page, the last candle still forming
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN)
        try:
            got = await h.candles("EUR_USD", "1m", T0, T0 + 6_000 * 60_000)  # no now_ms: asks for more than exists
        finally:
            await h.close()
    assert len(got) == 5_000 and got[-1].closed is False
    assert len(venue.queries) == 1  # not a second one "from" the future, which the venue refuses


async def test_all_sides_in_one_request_per_page() -> None:
    venue = CandleVenue(T0, 6_000)
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN)
        try:
            got = await h.candles_all_sides("EUR_USD", "1m", T0, T0 + 6_000 * 60_000)
        finally:
            await h.close()
    assert len(venue.queries) == 2 and all(q["price"] == "MBA" for q in venue.queries)
    for side, letter in (("mid", "M"), ("bid", "B"), ("ask", "A")):
        assert got[side] == [venue.expected(t, letter) for t in venue.times]
    assert got["bid"][0].close < got["mid"][0].close < got["ask"][0].close


async def test_429_waits_retry_after_and_errors_never_carry_the_token() -> None:
    venue = CandleVenue(T0, 10)
    venue.script = [web.Response(status=429, headers={"Retry-After": "0.5"}, text="{}")]
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN)
        try:
            t0 = time.monotonic()
            got = await h.candles("EUR_USD", "1m", T0, T0 + 9 * 60_000)
            assert time.monotonic() - t0 >= 0.5
            assert len(got) == 10 and h.http.throttled == 1
            venue.script = [web.json_response({"errorMessage": f"bad {TOKEN}"}, status=401)]
            with pytest.raises(VenueError) as err:
                await h.candles("EUR_USD", "1m", T0, T0 + 9 * 60_000)
        finally:
            await h.close()
    assert err.value.status == 401
    assert "OANDA_TOKEN" in str(err.value) and TOKEN not in str(err.value) and TOKEN not in repr(h)
    assert TOKEN not in repr(err.value.body)


async def test_misaligned_candles_are_refused() -> None:
    venue = CandleVenue(T0, 10)
    venue.shift_ms = 3_600_000 * 17 % 86_400_000  # not a whole day: dailyAlignment ignored
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN)
        try:
            with pytest.raises(VenueError, match="dailyAlignment"):
                await h.candles("EUR_USD", "1d", T0, T0 + 86_400_000 * 3)
        finally:
            await h.close()


async def test_server_time_symbols_and_page_span() -> None:
    venue = CandleVenue(T0, 10)
    async with serve(venue.routes()) as base:
        h = OandaHistory(base, TOKEN, "acc-1")
        try:
            # The newest S5 candle is forming in 2016 and Date says 2016-10-17 19:35:08 (not in it): a replay.
            assert await h.server_time() == venue.times[-1]
            venue.now_open = False  # the market is closed: Date is the only clock
            assert await h.server_time() == ms(2016, 10, 17, 19, 35, 8)
            assert await h.symbols() == {"EUR_USD", "XAU_USD"} and h.symbols_source == "account"
            with pytest.raises(BadInput):
                await h.candles("EUR_USD", "1s", T0, T0 + 1000)
        finally:
            await h.close()
    async with serve(venue.routes(with_instruments=False)) as base:
        h = OandaHistory(base, TOKEN, "acc-1")
        try:
            assert await h.symbols() == set(o.FALLBACK_INSTRUMENTS) and h.symbols_source == "fallback"
        finally:
            await h.close()
    assert OandaHistory.page_span_ms("1m") == 5000 * 60_000
    assert OandaHistory.page_span_ms("1d") == 5000 * 86_400_000


# --- against the OANDA replica ----------------------------------------------------------------------


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_history_and_stream_against_the_oanda_replica(tmp_path: Path) -> None:
    from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica

    start = ms(2024, 3, 13, 12)  # a Wednesday noon: the FX market is open
    replica = OandaReplica(
        ["EUR_USD", "USD_JPY"], seed=7, rate=2.0, speed=30.0, history_ms=8 * 3_600_000, start_ms=start, heartbeat_s=0.3,
        tape=tmp_path / "tape.csv",
    )  # fmt: skip
    await replica.start()
    h = OandaHistory(replica.url, DEV_TOKEN, DEFAULT_ACCOUNT)
    dec = o.PriceDecoder()
    quotes: list[Quote] = []
    beats: list[o.Heartbeat] = []

    def on_line(line: bytes) -> None:
        ev = dec.decode(line)
        if isinstance(ev, Quote):
            quotes.append(ev)
        elif isinstance(ev, o.Heartbeat):
            beats.append(ev)

    stream = LineStream(
        lambda: o.stream_url(replica.url, DEFAULT_ACCOUNT, ["EUR_USD", "USD_JPY"], snapshot=False),
        on_line,
        headers=o.auth_headers(DEV_TOKEN),
        name="oanda",
    )
    task: asyncio.Task[None] | None = None
    try:
        assert {"EUR_USD", "USD_JPY"} <= await h.symbols() and h.symbols_source == "account"
        now = await h.server_time()
        assert replica.clock.now_ms() - 10_000 <= now <= replica.clock.now_ms()
        # 7.5 hours of 5s candles: 5400 intervals, two pages, every one present at 2 quotes per second.
        s5 = await h.candles("EUR_USD", "5s", start - 27_000_000, start - 1, now)
        assert [c.open_time for c in s5] == list(range(start - 27_000_000, start, 5_000))
        assert all(
            c.closed and c.trades > 0 and c.low <= min(c.open, c.close) <= max(c.open, c.close) <= c.high for c in s5
        )
        sides = await h.candles_all_sides("USD_JPY", "15m", start - 8 * 3_600_000, start - 1, now)
        assert [c.open_time for c in sides["mid"]] == list(range(start - 8 * 3_600_000, start, 900_000))
        assert all(
            b.close < a.close and b.trades == m.trades == a.trades
            for b, m, a in zip(sides["bid"], sides["mid"], sides["ask"], strict=True)
        )

        # 4h and 1d: OANDA aligns them to 17:00 New York unless asked; the client asks for 00:00 UTC,
        # and gets the candles of the tape on deltafeed's UTC grid (4h: 04:00, 08:00, 12:00 forming,
        # with the quotes released when it was asked for: the first ``trades`` of its interval).
        grids = {"4h": 4 * 3_600_000, "1d": 86_400_000}
        got_tf = {tf: await h.candles("EUR_USD", tf, start - start % 86_400_000, start, now) for tf in grids}
        assert replica.options.tape is not None  # read after the requests: it has every quote they saw
        rows = [r for r in read_quote_tape(replica.options.tape) if r.symbol == "EUR_USD"]
        for tf, g in grids.items():
            assert [c.open_time for c in got_tf[tf]] == sorted(
                {r.time_ms - r.time_ms % g for r in rows if r.time_ms <= now}
            )
            for c in got_tf[tf]:
                head = [r for r in rows if r.time_ms - r.time_ms % g == c.open_time][: c.trades]
                x = oanda_candles_from_tape(head, lambda t, g=g: t - t % g)[c.open_time]
                assert (c.open, c.high, c.low, c.close) == tuple(float(v) for v in x.ohlc["mid"]), (tf, c)
                assert c.trades == x.volume and c.closed == (c.open_time + g <= now), (tf, c)

        task = asyncio.create_task(stream.run())
        await asyncio.wait_for(stream.connected.wait(), 5)
        minute = (replica.clock.now_ms() // 60_000 + 1) * 60_000  # the first minute wholly streamed
        await until(lambda: any(q.time_ms >= minute + 60_000 for q in quotes if q.symbol == "EUR_USD"), 10)
        got = await h.candles_all_sides("EUR_USD", "1m", minute, minute)
        seen = [q for q in quotes if q.symbol == "EUR_USD" and minute <= q.time_ms < minute + 60_000]
        for side in ("bid", "ask"):
            px = [getattr(q, side) for q in seen]
            assert got[side] == [Candle(minute, px[0], max(px), min(px), px[-1], float(len(px)), len(px), True)]
        assert all(a.time_ms <= b.time_ms for a, b in itertools.pairwise(q for q in quotes if q.symbol == "USD_JPY"))
        assert all(q.bid < q.ask for q in quotes)
        assert beats and not dec.errors
        assert stream.connects == 1 and stream.stale_drops == 0
        assert replica.stats["rejected_connections"] == 0 and replica.stats["429"] == 0
    finally:
        await stream.close()
        if task is not None:
            await task
        await h.close()
        await replica.stop()
