"""The API keeps out who does not belong and stays up: header and body deadlines, the connection cap,
JSON for every error (those aiohttp answers itself included), WebSocket ops that cannot break a
connection, and a slowloris attack while the engine keeps writing candles.

Everything over real loopback sockets: a real engine collecting from the Binance replica, served by
the real server (:func:`start_api`), attacked with raw sockets and used by real aiohttp clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import resource
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from deltafeed.api.guard import BACKLOG, MAX_HEADER_BYTES, MAX_URL_BYTES, ApiLimits, default_max_connections
from deltafeed.api.hub import Hub
from deltafeed.api.server import api_guard, api_url, start_api, stop_api
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.binance.replica import BinanceReplica

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "guard-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BTC = "binance:BTCUSDT"
PARTIAL = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # a request head that never ends
FULL = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    """An engine streaming BTCUSDT from the replica at 60x: a 15s candle closes every quarter second."""
    tmp = tmp_path_factory.mktemp("guard")
    replica = BinanceReplica(symbols=["BTCUSDT"], seed=3, rate=4.0, speed=60.0, history_ms=1_800_000)
    await replica.start()
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["15s", "1m"],
        history="20m",
        db=str(tmp / "g.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    eng = Engine(settings)
    await eng.start()
    try:
        async with asyncio.timeout(20):
            while not all(st.trades > 5 for st in eng.states.values()):
                await asyncio.sleep(0.05)
        yield eng
    finally:
        await eng.stop()
        await replica.stop()


class Api:
    """A server over the module's engine with the given limits; ``port``, ``url`` and ``guard``."""

    def __init__(self, runner: Any, hub: Hub | None) -> None:
        self.runner = runner
        self.hub = hub
        self.url = api_url(runner)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.guard = api_guard(runner)


@pytest_asyncio.fixture(loop_scope="module")
async def serve(engine: Engine) -> AsyncIterator[Any]:
    """``await serve(**ApiLimits fields, hub=False)`` starts a server; all are stopped afterwards."""
    runners: list[Any] = []

    async def start(hub: bool = False, token: str | None = TOKEN, **limits: Any) -> Api:
        h = Hub(snapshot=engine.snapshot, instruments=engine.instrument_names) if hub else None
        runner = await start_api(engine, h, "127.0.0.1", 0, token, ApiLimits(**limits))
        runners.append(runner)
        return Api(runner, h)

    yield start
    for runner in runners:
        await stop_api(runner)


#: The attackers' address: another loopback address than the clients' (127.0.0.1), as an attacker
#: elsewhere on the network would have.
ATTACKER = "127.0.0.2"


async def connect(
    port: int, send: bytes = b"", source: str = "127.0.0.1"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    if send:
        writer.write(send)
        await writer.drain()
    return reader, writer


async def reply(reader: asyncio.StreamReader, timeout: float = 5.0) -> tuple[int, dict[str, str], Any]:
    """One HTTP response: (status, headers with lower-case names, the body as JSON or bytes)."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, json.loads(body) if headers.get("content-type", "").startswith("application/json") else body


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server still sends until it closes the connection (fails if it does not in time)."""
    out = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            out += chunk
    return out


def metric(text: str, name: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


async def get(session: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with session.get(url, **kw) as r:
        return r.status, await r.json() if r.content_type == "application/json" else await r.text()


# --- deadlines -------------------------------------------------------------------------------------


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_headers_must_arrive_within_the_header_timeout(serve: Any) -> None:
    api = await serve(header_timeout_s=1.0)
    t0 = time.monotonic()
    partial = await connect(api.port, PARTIAL)  # most of a request, never finished
    silent = await connect(api.port)  # nothing at all (like a browser's pre-connection)
    trickle = await connect(api.port, b"G")  # a byte every 0.2 s: still never a whole head

    async def keep_trickling() -> None:
        for ch in PARTIAL[1:]:
            await asyncio.sleep(0.2)
            if trickle[1].is_closing():
                return
            trickle[1].write(bytes([ch]))

    feeder = asyncio.create_task(keep_trickling())
    status, headers, doc = await reply(partial[0], timeout=3)
    took = time.monotonic() - t0
    assert status == 408 and headers["connection"] == "close" and 0.9 < took < 2.0, (status, took)
    assert "did not arrive within 1 s" in doc["error"]
    assert await closed_within(partial[0], 1) == b""
    assert await closed_within(silent[0], 1) == b""  # closed without a word: it never asked anything
    assert (await closed_within(trickle[0], 1)).startswith(b"HTTP/1.1 408 ")  # bytes flowing do not extend it
    assert time.monotonic() - t0 < 2.5
    feeder.cancel()

    # A kept-alive connection may idle longer than the header timeout between requests; the clock
    # starts again with the first byte of the next request.
    reader, writer = await connect(api.port, FULL)
    assert (await reply(reader))[0] == 200
    await asyncio.sleep(1.5)
    writer.write(FULL)
    assert (await reply(reader))[0] == 200
    writer.write(PARTIAL)
    t1 = time.monotonic()
    assert (await reply(reader, timeout=3))[0] == 408
    assert 0.9 < time.monotonic() - t1 < 2.0
    assert api.guard.header_timeouts == 4
    async with aiohttp.ClientSession(headers=AUTH) as s:
        _, text = await get(s, api.url + "/metrics")
    assert metric(text, "deltafeed_api_header_timeouts_total") == 4
    for _, w in (partial, silent, trickle, (reader, writer)):
        w.close()


async def test_idle_connections_are_closed_after_the_idle_timeout(serve: Any) -> None:
    api = await serve(idle_timeout_s=1.0, header_timeout_s=5.0)
    reader, writer = await connect(api.port, FULL)
    assert (await reply(reader))[0] == 200
    t0 = time.monotonic()
    assert await closed_within(reader, 3) == b""
    assert 0.9 < time.monotonic() - t0 < 2.5
    writer.close()


async def test_a_post_body_must_arrive_in_time(serve: Any, engine: Engine) -> None:
    api = await serve(header_timeout_s=1.0)
    head = (
        f"POST /streaming/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n"
    ).encode()
    reader, writer = await connect(api.port, head + b'{"instru')
    t0 = time.monotonic()
    status, _, doc = await reply(reader, timeout=4)
    assert status == 408 and "the request body did not arrive within 1 s" in doc["error"]
    assert 0.9 < time.monotonic() - t0 < 2.5
    assert engine.status()["instruments"][BTC]["streaming"] is True  # nothing was stopped
    writer.close()


# --- the connection cap ------------------------------------------------------------------------------


async def test_beyond_the_cap_the_oldest_half_open_connections_make_room(serve: Any) -> None:
    api = await serve(max_connections=20, header_timeout_s=30.0)
    attackers = [await connect(api.port, PARTIAL, ATTACKER) for _ in range(20)]
    await asyncio.sleep(0.1)
    assert api.guard.connections == 20 and api.guard.waiting_for_headers == 20
    # A client with a whole request still gets its answer: the oldest half-open connection makes room.
    async with aiohttp.ClientSession(headers=AUTH) as s:
        assert await get(s, api.url + "/health") == (200, {"status": "ok"})
    assert await closed_within(attackers[0][0], 2) == b""  # evicted, without an answer
    assert api.guard.evicted == 1
    # Forty more (the client's connection is gone: 19 attackers are left): never more than 20 open,
    # and the ones evicted are always the oldest.
    more = [await connect(api.port, PARTIAL, ATTACKER) for _ in range(40)]
    await asyncio.sleep(0.2)
    assert api.guard.connections == 20 and api.guard.evicted == 1 + 39
    for reader, _ in attackers[1:] + more[:20]:
        assert await closed_within(reader, 2) == b""
    for _, writer in more[20:]:
        assert not writer.is_closing()
    await asyncio.sleep(0.1)
    for reader, _ in more[20:]:
        assert not reader.at_eof()
    async with aiohttp.ClientSession(headers=AUTH) as s:
        _, text = await get(s, api.url + "/metrics")
    assert metric(text, "deltafeed_api_connections_evicted_total") >= 40
    assert metric(text, "deltafeed_api_max_connections") == 20
    assert metric(text, "deltafeed_api_connections") <= 20
    for _, writer in attackers + more:
        writer.close()


async def test_an_attacker_only_evicts_its_own_connections(serve: Any) -> None:
    """Beyond the cap the peer holding the most evictable connections loses one: another client's
    idle kept-alive connections and its half-sent request survive 200 half-open connections."""
    api = await serve(max_connections=10, header_timeout_s=30.0)
    idle = [await connect(api.port, FULL, "127.0.0.3") for _ in range(2)]
    for reader, _ in idle:
        assert (await reply(reader))[0] == 200
    slow = await connect(api.port, PARTIAL, "127.0.0.4")  # a client on a slow link, mid-request
    attackers = [await connect(api.port, PARTIAL, ATTACKER) for _ in range(200)]
    await asyncio.sleep(0.2)
    assert api.guard.connections == 10 and api.guard.evicted == 200 - 7
    for reader, writer in idle:
        writer.write(FULL)
        assert (await reply(reader))[0] == 200  # the same connections, still served
    slow[1].write(f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
    assert (await reply(slow[0]))[0] == 200
    alive = [r for r, _ in attackers if not r.at_eof()]
    assert len(alive) <= 7
    for _, writer in [*idle, slow, *attackers]:
        writer.close()
    await until_no_connections(api)


async def until_no_connections(api: Api) -> None:
    """Every connection closed by its client is forgotten by the guard (no bookkeeping leaks)."""
    async with asyncio.timeout(5):
        while api.guard.connections:
            await asyncio.sleep(0.02)


async def test_when_every_connection_is_busy_a_new_one_is_refused_with_503(serve: Any) -> None:
    api = await serve(hub=True, max_connections=3)
    async with aiohttp.ClientSession(headers=AUTH) as s:
        sockets = [await s.ws_connect(api.url + f"/ws/{BTC}") for _ in range(3)]  # busy for as long as they live
        reader, writer = await connect(api.port, FULL)
        status, headers, doc = await reply(reader)
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert "as many connections as it may (3), all of them busy" in doc["error"]
        assert "api_max_connections" in doc["error"]
        assert await closed_within(reader, 2) == b""
        writer.close()
        assert api.guard.refused == 1 and api.guard.evicted == 0
        for ws in sockets:
            assert not ws.closed  # none of the busy ones was touched
        await sockets.pop().close()
        for _ in range(50):
            if api.guard.connections < 3:
                break
            await asyncio.sleep(0.02)
        assert await get(s, api.url + "/health") == (200, {"status": "ok"})  # room again
        _, text = await get(s, api.url + "/metrics")
        assert metric(text, "deltafeed_api_connections_refused_total") == 1
        for ws in sockets:
            await ws.close()


async def test_the_default_cap_leaves_the_rest_of_the_process_as_many_descriptors() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert default_max_connections() == 64  # (256 - the backlog of 128) / 2
        assert ApiLimits().connection_cap() == 64
        assert ApiLimits(max_connections=7).connection_cap() == 7
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
        assert default_max_connections() == 448
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert default_max_connections() == min(1000, (soft - 128) // 2)


# --- every error is JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "needle"),
    [
        (
            b"GET /" + b"a" * (MAX_URL_BYTES + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            400,
            f"path and query are longer than {MAX_URL_BYTES} bytes",
        ),
        (
            b"GET /candles/binance:BTCUSDT/1m?token="
            + TOKEN.encode()
            + b"&x="
            + b"a" * MAX_URL_BYTES
            + b" HTTP/1.1\r\n\r\n",
            400,
            "path and query are longer",
        ),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n",
            431,
            f"header is longer than {MAX_HEADER_BYTES} bytes",
        ),
        (
            b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
            431,
            "more than 100 headers",
        ),
        (b"GARBAGE\r\n\r\n", 400, "malformed HTTP request"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n", 400, "not HTTPS"),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "malformed HTTP request"),
        (b"POST /streaming/stop HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "malformed"),
        (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "malformed HTTP request"),
    ],
    ids=[
        "long-path",
        "long-path-with-token",
        "long-header",
        "many-headers",
        "garbage",
        "tls",
        "bad-length",
        "bad-chunk",
        "bad-version",
    ],
)
async def test_requests_aiohttp_cannot_parse_get_json_errors(
    serve: Any, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int, needle: str
) -> None:
    api = await serve()
    caplog.set_level(logging.DEBUG)
    reader, writer = await connect(api.port, request_bytes)
    got, headers, doc = await reply(reader)
    assert got == status and headers["content-type"].startswith("application/json"), (got, doc)
    assert needle in doc["error"], doc
    assert await closed_within(reader, 2) == b""
    writer.close()
    assert api.guard.bad_requests == 1
    assert "Traceback" not in caplog.text and TOKEN not in caplog.text  # no stack, no token in the logs


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("since=²", "since='²' is neither epoch milliseconds nor an ISO-8601 time"),
        ("since=%C2%B2", "since='²' is neither"),
        ("until=%D9%A1%D9%A2", "until='١٢' is neither"),  # Arabic-Indic digits: int() would read 12
        ("since=1_000", "since='1_000' is neither"),
        ("since=%201000", None),  # a leading space is fine: it is stripped
        ("since=99999999999999999999999", "since='99999999999999999999999' is outside the years 1 to 9999"),
        ("until=-99999999999999999999", "is outside the years 1 to 9999"),
        ("since=9999-12-31T23:59:59-01:00", "is outside the years 1 to 9999"),
        ("since=%00", "since='\\x00' is neither"),
        ("since=1&since=2", "since given more than once"),
        ("limit=abc", "limit='abc' is not a whole number from 1 to 100000"),
        ("limit=²", "limit='²' is not a whole number"),
        ("limit=%D9%A1", "limit='١' is not a whole number"),
        ("limit=1_0", "limit='1_0' is not a whole number"),
        ("limit=99999999999999999999", "is not a whole number from 1 to 100000"),
        ("limit=", "limit='' is not a whole number"),
        ("format=%FF", "is not served; use format=json, format=csv or format=parquet"),
        ("price=%FF", "use one of"),
    ],
    ids=lambda v: str(v)[:30],
)
async def test_malformed_query_values_are_400_naming_the_parameter(
    serve: Any, caplog: pytest.LogCaptureFixture, query: str, needle: str | None
) -> None:
    api = await serve()
    caplog.set_level(logging.ERROR)
    async with aiohttp.ClientSession(headers=AUTH) as s, s.get(f"{api.url}/candles/{BTC}/1m?{query}") as r:
        doc = await r.json()
        if needle is None:
            assert r.status == 200, doc
        else:
            assert r.status == 400 and needle in doc["error"], (r.status, doc)
            assert r.content_type == "application/json"
    assert "failed" not in caplog.text  # no 500 was logged


async def test_a_body_that_cannot_be_read_is_a_400(
    serve: Any, engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    api = await serve()
    caplog.set_level(logging.ERROR)
    async with aiohttp.ClientSession(headers=AUTH) as s:
        # (br: refused before the body when the Brotli module is missing, unreadable when it is there)
        for encoding in ("gzip", "deflate", "br"):
            async with s.post(
                api.url + "/streaming/stop", data=b'{"instruments": []}', headers={"Content-Encoding": encoding}
            ) as r:
                doc = await r.json()
                assert r.status == 400, (encoding, doc)
                assert (
                    "the request body cannot be read" in doc["error"]
                    or "Content-Encoding cannot be decoded here" in doc["error"]
                ), (encoding, doc)
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
    assert engine.status()["instruments"][BTC]["streaming"] is True


async def test_unknown_paths_and_wrong_methods_are_json_too(serve: Any) -> None:
    api = await serve()
    async with aiohttp.ClientSession(headers=AUTH) as s:
        for method, path, status in [
            ("GET", "/nowhere", 404),
            ("GET", "/candles", 404),
            ("PUT", "/health", 405),
            ("POST", "/instruments", 405),
            ("GET", "/%FF%FE", 404),
            ("GET", "/candles/" + "A" * 1000 + "/1m", 400),
        ]:
            async with s.request(method, api.url + path) as r:
                assert r.status == status, (method, path)
                assert r.content_type == "application/json"
                assert (await r.json())["error"]


# --- WebSocket ops -----------------------------------------------------------------------------------


def _fuzz_frames(rng: random.Random) -> list[str | bytes]:
    """Text and binary frames no client should send: broken JSON, wrong types, huge numbers, deep
    nesting, escapes of lone surrogates and NULs, random bytes."""
    fixed: list[str | bytes] = [
        "",
        " ",
        "null",
        "0",
        "[]",
        "{}",
        '"op"',
        "[" * 1000,
        "{" * 1000,
        '{"op":' * 500,
        '{"op": "\\ud800"}',
        '{"op": "subscribe", "instrument": "\\udfff"}',
        '{"op": "sub\\u0000scribe"}',
        '{"op": "subscribe", "instrument": "binance:\\u0000BTCUSDT"}',
        '{"op": "subscribe", "snapshot": 1e999}',
        '{"op": "subscribe", "instrument": "binance:BTCUSDT", "snapshot": 99999999999999999999999}',
        '{"op": "subscribe", "instrument": "binance:BTCUSDT", "snapshot": 1.5}',
        '{"op": "subscribe", "instrument": "binance:BTCUSDT", "timeframe": "\\ud83d"}',
        '{"op": "subscribe", "instrument": ' + '"' + "A" * 3000 + '"}',
        '{"op": "unsubscribe_trades", "instrument": "binance:BTCUSDT"}',
        '{"op": ["subscribe"]}',
        '{"op": "subscribe", "instrument": {"$gt": ""}}',
        '{"op": "subscribe", "op": "subscribe"}',
        "\x00\x01\x02",
        '\u202e{"op":"subscribe"}',
        b"",
        b"\x00" * 100,
        b'{"op":"subscribe"}',
    ]
    alphabet = '{}[]":,\\ 0123456789eE.-+abcdefnulltrueop"subscribeinstrument\u00e9\U0001f600'
    for _ in range(150):
        n = rng.randint(1, 300)
        fixed.append("".join(rng.choice(alphabet) for _ in range(n)))
        fixed.append(rng.randbytes(rng.randint(1, 200)))
    return fixed


async def test_no_websocket_op_can_break_the_connection(serve: Any) -> None:
    """Every frame gets a reply (an error for all of these), is counted, and the connection carries on."""
    api = await serve(hub=True)
    assert api.hub is not None
    frames = _fuzz_frames(random.Random(7))
    async with aiohttp.ClientSession(headers=AUTH) as s, s.ws_connect(api.url + "/ws") as ws:
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
            while True:  # skip heartbeats and data, up to the reply to this frame
                msg = json.loads((await ws.receive(timeout=5)).data)
                if msg["type"] in ("error", "subscribed", "unsubscribed"):
                    break
            assert msg["type"] == "error", (frame, msg)
            assert msg["message"], frame
        assert api.hub.bad_ops == len(frames)
        # Still a working connection: a good op is applied.
        await ws.send_json({"op": "subscribe", "instrument": BTC, "timeframe": "1m", "snapshot": 1})
        while (msg := json.loads((await ws.receive(timeout=5)).data))["type"] not in ("subscribed", "error"):
            pass
        assert msg["type"] == "subscribed", msg
        _, text = await get(s, api.url + "/metrics")
        assert metric(text, "deltafeed_api_bad_ws_ops_total") == len(frames)
    # What the WebSocket protocol itself says ends a connection does, with its code, and is counted.
    async with aiohttp.ClientSession(headers=AUTH) as s:
        for frame, code in ((b"\xff\xfe not UTF-8", 1007), (b"x" * 5000, 1009)):
            async with s.ws_connect(api.url + "/ws") as ws:
                await ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
                msg = await ws.receive(timeout=5)
                while msg.type == aiohttp.WSMsgType.TEXT:  # a heartbeat may come first
                    msg = await ws.receive(timeout=5)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == code, msg
    async with asyncio.timeout(5):
        while api.hub.bad_ops < len(frames) + 2 or api.hub.clients:
            await asyncio.sleep(0.02)
    assert api.hub.bad_ops == len(frames) + 2


# --- under attack ------------------------------------------------------------------------------------


class Slowloris:
    """``tests/slowloris.py`` in its own process (its work must not slow the server down), attacking
    from :data:`ATTACKER`; ``await start()`` returns once it holds every connection once."""

    def __init__(self, port: int, connections: int, seconds: float, reopen_after: float = 0.5) -> None:
        self.args = [
            "--port",
            str(port),
            "--connections",
            str(connections),
            "--source",
            ATTACKER,
            "--seconds",
            str(seconds),
            "--reopen-after",
            str(reopen_after),
        ]
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # At a lower priority: an attacker's CPU is not the server's, as it would be on another host.
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).parents[1] / "slowloris.py"),
            *self.args,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=lambda: os.nice(5),
        )
        assert self.proc.stdout is not None
        assert await asyncio.wait_for(self.proc.stdout.readline(), 20) == b"ready\n"

    async def result(self) -> dict[str, int]:
        """The attacker's counts, once it is done."""
        assert self.proc is not None and self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), 30)
        assert await self.proc.wait() == 0
        stats: dict[str, int] = json.loads(out)
        return stats

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_a_slowloris_starves_neither_the_store_nor_clients_with_whole_requests(
    serve: Any, engine: Engine
) -> None:
    """1000 half-open connections held (re-opened half a second after each cut) against a cap of 100:
    every request a client sends whole is answered within a second, the engine keeps writing
    candles to the store, and the server never admits more than 100 connections."""
    api = await serve(max_connections=100, header_timeout_s=2.0)
    written_before = engine.writer.written
    market_start = engine.venue_clock.now_ms()
    attacker = Slowloris(api.port, 1000, seconds=7.0)
    latencies: list[float] = []
    written: list[int] = []
    most = most_admitted = 0
    try:
        await attacker.start()
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            # A new connection each time (no keep-alive), as a client arriving during the attack.
            async with aiohttp.ClientSession(headers=AUTH, connector=aiohttp.TCPConnector(force_close=True)) as s:
                t0 = time.monotonic()
                status, doc = await get(
                    s, f"{api.url}/candles/{BTC}/15s", params={"limit": "3"}, timeout=aiohttp.ClientTimeout(total=5)
                )
                latencies.append(time.monotonic() - t0)
                assert status == 200 and len(doc["candles"]) == 3, doc
            most = max(most, api.guard.connections)
            most_admitted = max(most_admitted, api.guard.established)
            written.append(engine.writer.written)
            await asyncio.sleep(0.1)
        stats = await attacker.result()
    finally:
        await attacker.kill()
    market_end = engine.venue_clock.now_ms()
    await until_no_connections(api)
    assert stats["opened"] >= 1000 and api.guard.evicted >= 900, (stats, api.guard.evicted)
    assert most_admitted <= 100 and most <= 100 + BACKLOG, (most_admitted, most)
    # Not starved: a starved request would wait out the 5 s timeout. Each is answered in under 1 s on a
    # quiet machine; with both cores busy elsewhere (load 7) the server accepts more slowly than the
    # attacker re-opens, a client's SYN can meet a full backlog and be resent after 1 s, and requests
    # took 2.4-2.8 s. Below 4.5 s each, and several of them, is what tells service from starvation.
    assert len(latencies) >= 3 and max(latencies) < 4.5, latencies
    # Candles kept being written all along: the store's row count rose in every 1.5 s of the
    # attack (the writer writes at least every second) ...
    per_window = [b - a for a, b in zip(written, written[15:], strict=False)]
    assert written[-1] > written_before and all(n > 0 for n in per_window), written
    # ... and every 15s candle of the market minutes the attack lasted is in the store, none missing.
    await engine.writer.flush()
    stored = [c.open_time for c in await engine.cold.query(BTC, "15s", market_start, market_end - 60_000)]
    assert len(stored) >= 8
    assert stored == list(range(stored[0], stored[-1] + 15_000, 15_000))
    assert stored[0] <= market_start + 15_000


# --- the real process, with few file descriptors ----------------------------------------------------


@pytest_asyncio.fixture(loop_scope="module")
async def replica() -> AsyncIterator[BinanceReplica]:
    r = BinanceReplica(symbols=["BTCUSDT"], seed=8, rate=4.0, speed=60.0, history_ms=1_200_000)
    await r.start()
    yield r
    await r.stop()


async def _run_under_attack(
    tmp_path: Path, replica: BinanceReplica, config: str
) -> tuple[list[int], list[float], dict[str, int], str]:
    """``deltafeed run`` limited to 256 file descriptors and attacked by 1000 half-open connections
    for four seconds: (/metrics statuses during the attack, store rows written as it reported them,
    the attacker's counts, the run's stderr)."""
    conf = tmp_path / "run.toml"
    conf.write_text(config)

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    src = str(Path(__file__).parents[2] / "src")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deltafeed",
        "run",
        "--config",
        str(conf),
        "--rest-url",
        replica.url,
        "--ws-url",
        replica.ws_url,
        "--symbols",
        "BTCUSDT",
        "--timeframes",
        "15s,1m",
        "--history",
        "10m",
        "--db",
        str(tmp_path / "run.duckdb"),
        "--api",
        "127.0.0.1:0",
        "--api-token",
        TOKEN,
        stderr=asyncio.subprocess.PIPE,
        preexec_fn=few_descriptors,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])},
    )
    assert proc.stderr is not None
    err = b""
    attacker: Slowloris | None = None
    try:
        async with asyncio.timeout(30):
            while b"serving the API on " not in err:
                line = await proc.stderr.readline()
                assert line, err.decode()
                err += line
        url = err.decode().split("serving the API on ")[1].split()[0]
        drain = asyncio.create_task(proc.stderr.read())
        statuses: list[int] = []
        rows: list[float] = []
        attacker = Slowloris(int(url.rsplit(":", 1)[1]), 1000, seconds=7.0)
        await attacker.start()
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            try:
                async with aiohttp.ClientSession(
                    headers=AUTH,
                    connector=aiohttp.TCPConnector(force_close=True),
                    timeout=aiohttp.ClientTimeout(total=2),
                ) as s:
                    status, text = await get(s, url + "/metrics")
                    statuses.append(status)
                    rows.append(metric(text, "deltafeed_store_written_candles_total"))
            except (aiohttp.ClientError, TimeoutError):
                statuses.append(0)
            await asyncio.sleep(0.2)
        stats = await attacker.result()
        with contextlib.suppress(ProcessLookupError):  # without the cap the attack may have ended it already
            proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.wait()
            err += await drain
        return statuses, rows, stats, err.decode()
    finally:
        if attacker is not None:
            await attacker.kill()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_the_process_keeps_its_descriptors_under_attack(tmp_path: Path, replica: BinanceReplica) -> None:
    """With ``ulimit -n 256`` the default cap is 64 connections: 1000 half-open ones do not take the
    descriptors the store and the venue need, and a client with a whole request is answered."""
    statuses, rows, stats, err = await _run_under_attack(tmp_path, replica, "")
    assert "at most 64 connections" in err
    assert stats["opened"] >= 1000
    assert len(statuses) >= 10 and all(s == 200 for s in statuses), statuses
    assert rows[-1] > rows[0], rows  # the store kept being written
    assert "Too many open files" not in err and "Traceback" not in err, err[-3000:]


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_without_the_cap_the_same_attack_starves_the_process(tmp_path: Path, replica: BinanceReplica) -> None:
    """The control of the test above: with the cap lifted (as aiohttp alone would serve), the same
    attack takes every descriptor and clients go unanswered (and the store, if it opens its file
    during the attack, cannot: "Too many open files")."""
    statuses, _, _, err = await _run_under_attack(tmp_path, replica, "api_max_connections = 100000\n")
    assert statuses.count(200) < len(statuses) / 2, (statuses, err[-3000:])
