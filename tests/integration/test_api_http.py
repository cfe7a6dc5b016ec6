"""The HTTP API over real loopback sockets: a real engine collecting from the Binance replica, served
by the real aiohttp server; every endpoint, the errors, /metrics and the token rules."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import io
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import aiohttp
import msgspec
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from deltafeed.api import page as page_module
from deltafeed.api import schema
from deltafeed.api import ws as ws_module
from deltafeed.api.auth import PUBLIC_PATHS, PUBLIC_PREFIX, check_bind, is_loopback
from deltafeed.api.http import _CANDLE_PARAMS, _TRADE_PARAMS, COLUMNS, FORMING_HEADER, MAX_BODY_BYTES, MAX_CANDLES
from deltafeed.api.openapi import ENDPOINTS, EngineStatusType
from deltafeed.api.protocol import ServerMessage
from deltafeed.api.server import api_url, build_app, start_api, stop_api
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.engine.status import EngineStatus
from deltafeed.fmt import iso, num
from deltafeed.model import CANDLE_STATES, PRICE_SIDES, BadInput, Candle
from deltafeed.venues.base import FeedStatus
from deltafeed.venues.binance.replica import BinanceReplica

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "s3cret-token-for-tests"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
BTC = "binance:BTCUSDT"
HAVE_WS = importlib.util.find_spec("deltafeed.api.ws") is not None


@dataclass
class Served:
    replica: BinanceReplica
    engine: Engine
    hub: Any
    url: str  # the API, on loopback with TOKEN configured


def make_hub(engine: Engine) -> Any:
    if not HAVE_WS:
        return None
    from deltafeed.api.hub import Hub

    return Hub(snapshot=engine.snapshot, instruments=engine.instrument_names)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    tmp = tmp_path_factory.mktemp("api")
    replica = BinanceReplica(
        symbols=SYMBOLS, seed=5, rate=4.0, speed=30.0, history_ms=2 * 3_600_000, tape=str(tmp / "tape.csv")
    )
    await replica.start()
    # A small hot tier, so that an hour of 15s candles (240) reaches past it into the cold store.
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["15s", "1m", "5m"],
        history="1h",
        db=str(tmp / "api.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        hot_capacity=100,
    ).validate()
    engine = Engine(settings)
    await engine.start()
    hub = make_hub(engine)
    runner = await start_api(engine, hub, "127.0.0.1", 0, TOKEN)
    try:
        # Streaming for a few market minutes, so that every counter has moved, and the candles that
        # were forming when streaming began repaired (so the store no longer changes under a test).
        async with asyncio.timeout(20):
            while (
                not all(st.trades > 20 and st.repaired > 0 for st in engine.states.values())
                or engine.status()["pending_repairs"]
            ):
                await asyncio.sleep(0.05)
        yield Served(replica, engine, hub, api_url(runner))
    finally:
        await stop_api(runner)
        await engine.stop()
        await replica.stop()


async def call(method: str, url: str, *, token: str | None = TOKEN, **kwargs: Any) -> tuple[int, Any, dict[str, str]]:
    """(status, body as JSON or text, headers); with the test token unless ``token`` says otherwise."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers.update(kwargs.pop("headers", {}))
    async with aiohttp.ClientSession() as s, s.request(method, url, headers=headers, **kwargs) as r:
        text = await r.text()
        body: Any = text
        if r.content_type == "application/json":
            body = await r.json()
        return r.status, body, dict(r.headers)


async def stored(engine: Engine, instrument: str, timeframe: str, **kw: Any) -> list[Candle]:
    await engine.writer.flush()
    return await engine.cold.query(instrument, timeframe, kw.get("since"), kw.get("until"), kw.get("last"))


# --- health, status, instruments ----------------------------------------------------------------


async def test_health_ok(served: Served) -> None:
    status, body, _ = await call("GET", served.url + "/health")
    assert (status, body) == (200, {"status": "ok"})
    assert (await call("HEAD", served.url + "/health"))[0] == 200  # HEAD works too


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_health_degraded_when_the_venue_is_gone(tmp_path: Path) -> None:
    replica = BinanceReplica(symbols=["BTCUSDT"], seed=2, rate=2.0, speed=60.0, history_ms=600_000)
    await replica.start()
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m"],
        history="10m",
        db=str(tmp_path / "h.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    engine = Engine(settings)
    await engine.start()
    runner = await start_api(engine, None, "127.0.0.1", 0, None)
    try:
        await replica.stop()
        for _ in range(50):
            status, body, _ = await call("GET", api_url(runner) + "/health")
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert status == 503
        assert body["status"] == "degraded"
        assert "binance disconnected" in body["reasons"]
    finally:
        await stop_api(runner)
        await engine.stop()


async def test_streaming_status(served: Served) -> None:
    status, body, _ = await call("GET", served.url + "/streaming/status")
    assert status == 200
    assert set(body["instruments"]) == {BTC, "binance:ETHUSDT"}
    for st in body["instruments"].values():
        assert st["connected"] is True
        assert st["last_message_age_s"] is not None and st["last_message_age_s"] < 5
        assert st["messages_per_s"] > 0
        assert st["trades"] > 0
        for key in ("gaps", "repaired", "bootstrapped"):
            assert isinstance(st[key], int)
        assert st["bootstrapped"] > 0
    venue = body["venues"]["binance"]
    assert venue["connected"] is True
    assert venue["connects"] >= 1 and venue["reconnects"] >= 0 and venue["connections"] >= 1


async def test_instruments(served: Served) -> None:
    status, body, _ = await call("GET", served.url + "/instruments")
    assert status == 200
    assert body == {
        "instruments": [
            {
                "name": f"binance:{s}",
                "venue": "binance",
                "symbol": s,
                "unified": s.replace("USDT", "/USDT"),
                "aliases": [],
                "price": "trade",
                "streaming": True,
            }
            for s in SYMBOLS
        ],
        "timeframes": ["15s", "1m", "5m"],
    }


async def test_stop_and_start_streaming(served: Served) -> None:
    url = served.url
    status, body, _ = await call(
        "POST", url + "/streaming/stop", token=TOKEN, json={"instruments": ["binance:ethusdt"]}
    )
    assert (status, body) == (200, {"streaming": [BTC]})
    _, inst, _ = await call("GET", url + "/instruments")
    assert [i["streaming"] for i in inst["instruments"]] == [True, False]
    # No body: every instrument.
    status, body, _ = await call("POST", url + "/streaming/start", token=TOKEN)
    assert (status, body) == (200, {"streaming": [BTC, "binance:ETHUSDT"]})
    status, body, _ = await call("POST", url + "/streaming/start", token=TOKEN, json={"instruments": None})
    assert (status, body) == (200, {"streaming": [BTC, "binance:ETHUSDT"]})


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        (b"{not json", 400, "not JSON"),
        (b'["binance:BTCUSDT"]', 400, "unexpected request body"),
        (b'{"instruments": ["binance:BTCUSDT"], "extra": 1}', 400, "unexpected request body"),
        (b'{"instruments": "binance:BTCUSDT"}', 400, "must be a list"),
        (b'{"instruments": ["binance:BTC$USDT"]}', 400, "is not a valid name"),
        (b'{"instruments": ["binance:XRPUSDT"]}', 404, "not collected here"),
    ],
    ids=["not-json", "not-object", "extra-key", "not-list", "malformed", "unknown"],
)
async def test_control_bad_bodies(served: Served, body: bytes, status: int, needle: str) -> None:
    got, doc, _ = await call("POST", served.url + "/streaming/stop", token=TOKEN, data=body)
    assert got == status and needle in doc["error"], doc
    assert served.engine.status()["instruments"][BTC]["streaming"] is True  # nothing was stopped


async def test_control_body_too_large(served: Served) -> None:
    status, doc, _ = await call("POST", served.url + "/streaming/stop", token=TOKEN, data=b" " * (MAX_BODY_BYTES + 1))
    assert status == 413 and "larger than" in doc["error"]


# --- candles ------------------------------------------------------------------------------------


async def test_candles_json_equal_the_store(served: Served) -> None:
    engine = served.engine
    status, doc, headers = await call("GET", served.url + f"/candles/{BTC}/1m")
    assert status == 200
    assert doc["instrument"] == BTC and doc["timeframe"] == "1m"
    assert doc["columns"] == ["open_time", "open", "high", "low", "close", "volume", "trades", "state"]
    rows = doc["candles"]
    assert len(rows) >= 60  # the hour of history, and what streamed since
    times = [r[0] for r in rows]
    assert times == list(range(times[0], times[-1] + 60_000, 60_000))  # oldest first, no hole
    # The forming candle is the last row, and named as such.
    assert doc["forming"] == [times[-1]]
    assert headers[FORMING_HEADER] == str(times[-1])
    assert rows[-1][7] == "forming"
    db = {c.open_time: c for c in await stored(engine, BTC, "1m")}
    for r in rows[:-1]:
        c = db[r[0]]
        assert c.closed
        if r[7] == "final":  # a provisional candle may be repaired meanwhile; a final one never changes
            assert r == [c.open_time, c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades, c.state]
    assert sum(r[7] == "final" for r in rows) >= 60
    assert doc["provisional"] == [r[0] for r in rows if r[7] == "provisional"]


async def test_candles_range_and_limit(served: Served) -> None:
    url = served.url + f"/candles/{BTC}/1m"
    _, full, _ = await call("GET", url)
    times = [r[0] for r in full["candles"]]
    since, until = times[5], times[15]
    _, by_ms, _ = await call("GET", url, params={"since": str(since), "until": str(until)})
    assert [r[0] for r in by_ms["candles"]] == times[5:16]
    assert by_ms["forming"] == []
    assert FORMING_HEADER not in (await call("GET", url, params={"since": str(since), "until": str(until)}))[2]
    # The same bounds as ISO-8601, with a Z, with an offset, and with the offset's '+' unescaped.
    for s_text in (iso(since), iso(since).replace("Z", "+00:00"), iso(since).replace("Z", " 00:00")):
        _, by_iso, _ = await call("GET", url + f"?since={s_text}&until={until}")
        assert by_iso["candles"] == by_ms["candles"], s_text
    # `limit` alone means the newest: asked between two full reads that agree on the newest candle
    # (a new 1m candle opens every market minute, so a read that straddles one is retried).
    for _ in range(10):
        newest = (await call("GET", url))[1]["candles"][-1][0]
        _, last3, _ = await call("GET", url, params={"limit": "3"})
        _, after, _ = await call("GET", url)
        if after["candles"][-1][0] == newest:
            assert [r[0] for r in last3["candles"]] == [r[0] for r in after["candles"][-3:]]
            break
    else:
        pytest.fail("the newest candle changed during every one of 10 tries")
    _, newest_in_range, _ = await call("GET", url, params={"since": str(since), "until": str(until), "limit": "2"})
    assert [r[0] for r in newest_in_range["candles"]] == times[14:16]


async def test_candles_from_the_cold_store(served: Served) -> None:
    """An hour of 15s candles does not fit the hot tier of 100: the old ones come from DuckDB."""
    engine = served.engine
    oldest_hot = engine.hot.last(BTC, "15s", 1_000)[0].open_time
    since = oldest_hot - 50 * 15_000
    status, doc, _ = await call("GET", served.url + f"/candles/{BTC}/15s", params={"since": str(since)})
    assert status == 200
    rows = doc["candles"]
    assert rows[0][0] == since
    times = [r[0] for r in rows]
    assert times == list(range(times[0], times[-1] + 15_000, 15_000))
    db = {c.open_time: c for c in await stored(engine, BTC, "15s", since=since)}
    assert set(times[:-1]) <= set(db)
    finals = [r for r in rows if r[7] == "final"]  # a provisional candle may be repaired meanwhile
    assert len(finals) >= 50  # all the cold ones at least
    for r in finals:
        c = db[r[0]]
        assert r == [c.open_time, c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades, c.state]


async def test_candles_csv_like_the_cli(served: Served) -> None:
    url = served.url + f"/candles/{BTC}/5m"
    _, doc, _ = await call("GET", url)
    final = {"until": str(doc["candles"][-2][0])}  # final candles only: the same in both answers
    _, doc, _ = await call("GET", url, params=final)
    status, text, headers = await call("GET", url, params={**final, "format": "csv"})
    assert status == 200 and headers["Content-Type"].startswith("text/csv")
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["open_time", "open", "high", "low", "close", "volume", "trades", "state"]
    assert len(lines) > 5
    assert lines[1:] == [
        [iso(r[0]), num(r[1]), num(r[2]), num(r[3]), num(r[4]), num(r[5]), str(r[6]), r[7]] for r in doc["candles"]
    ]
    assert FORMING_HEADER not in headers
    # Unbounded, the forming candle is the last row, and the header names it.
    _, text, headers = await call("GET", url, params={"format": "csv"})
    last = list(csv.reader(io.StringIO(text)))[-1]
    assert iso(int(headers[FORMING_HEADER])) == last[0]
    assert last[-1] == "forming"


async def test_candle_states_and_final_only(served: Served) -> None:
    """Every row carries its state, as stored in the hot tier and in the database alike; final=true
    keeps only the final ones, and limit then counts those. (The states are set here, on a stretch of
    15s candles that spans the hot tier's oldest candle, so the test does not depend on when the
    engine declares candles final.)"""
    engine = served.engine
    url = served.url + f"/candles/{BTC}/15s"
    # A stretch the engine has already declared final, so that it will not write those candles again
    # while the test restates them (on a loaded machine repairs can lag the hot tier's window).
    async with asyncio.timeout(20):
        while True:
            oldest_hot = engine.hot.last(BTC, "15s", 1_000)[0].open_time
            since, until = oldest_hot - 30 * 15_000, oldest_hot + 30 * 15_000
            if engine.final_marks().get((BTC, "15s"), 0) > until + 15_000:
                break
            await asyncio.sleep(0.05)
    hot = engine.hot.range(BTC, "15s", oldest_hot, until) or []
    await engine.writer.flush()
    cold = await engine.cold.query(BTC, "15s", since, until)
    assert len(cold) > 30 and len(hot) == 31

    def restated(c: Candle) -> Candle:
        k = (c.open_time - since) // 15_000
        return msgspec.structs.replace(c, closed=True, final=k % 3 != 0)

    await engine.cold.write([(BTC, "15s", restated(c)) for c in cold])
    for c in hot:
        engine.hot.put(BTC, "15s", restated(c))
    bounds = {"since": str(since), "until": str(until)}
    status, doc, headers = await call("GET", url, params=bounds)
    assert status == 200 and len(doc["candles"]) == 61
    states = [r[7] for r in doc["candles"]]
    assert states == ["provisional" if k % 3 == 0 else "final" for k in range(61)]
    assert doc["provisional"] == [r[0] for r in doc["candles"] if r[7] == "provisional"]
    assert doc["forming"] == [] and FORMING_HEADER not in headers

    status, finals, _ = await call("GET", url, params={**bounds, "final": "true"})
    assert status == 200 and finals["provisional"] == [] and finals["forming"] == []
    assert finals["candles"] == [r for r in doc["candles"] if r[7] == "final"]
    _, newest, _ = await call("GET", url, params={**bounds, "final": "true", "limit": "25"})
    assert newest["candles"] == finals["candles"][-25:]  # the newest 25 final ones, across both tiers
    _, older, _ = await call("GET", url, params={"until": str(oldest_hot - 1), "final": "1", "limit": "5"})
    assert older["candles"] == [r for r in finals["candles"] if r[0] < oldest_hot][-5:]  # the database alone
    _, plain, _ = await call("GET", url, params={**bounds, "final": "false"})
    assert plain["candles"] == doc["candles"]
    status, text, headers = await call("GET", url, params={**bounds, "final": "true", "format": "csv"})
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][-1] == "state" and {line[-1] for line in lines[1:]} == {"final"}
    assert [line[0] for line in lines[1:]] == [iso(r[0]) for r in finals["candles"]]

    # Unbounded, with final=true the forming candle is left out too.
    _, everything, headers = await call("GET", url, params={"final": "true", "limit": "3"})
    assert FORMING_HEADER not in headers and {r[7] for r in everything["candles"]} <= {"final"}
    status, err, _ = await call("GET", url, params={"final": "abc"})
    assert status == 400 and "final='abc'" in err["error"] and "final=true" in err["error"]


@pytest.mark.parametrize(
    ("path", "status", "needle"),
    [
        (f"/candles/{BTC}/1m?since=yesterday", 400, "neither epoch milliseconds nor an ISO-8601"),
        (f"/candles/{BTC}/1m?until=2026-13-01", 400, "neither epoch milliseconds nor an ISO-8601"),
        (f"/candles/{BTC}/1m?since=2000&until=1000", 400, "is after until"),
        (f"/candles/{BTC}/1m?limit=0", 400, "limit='0'"),
        (f"/candles/{BTC}/1m?limit=ten", 400, "limit='ten'"),
        (f"/candles/{BTC}/1m?limit=100001", 400, "from 1 to 100000"),
        (f"/candles/{BTC}/1m?format=xml", 400, "format=json, format=csv or format=parquet"),
        (f"/candles/{BTC}/1m?limt=5", 400, "unknown parameter(s) limt"),
        ("/candles/binance:XRPUSDT/1m", 404, "not collected here"),
        ("/candles/BTC$USDT/1m", 400, "is not a valid name"),
        ("/candles/binance:BTC$USDT/1m", 400, "is not a valid name"),
        (f"/candles/{BTC}/7x", 400, "unknown timeframe '7x'"),
        (f"/candles/{BTC}/1h", 404, "timeframe 1h is not collected here"),
        ("/nowhere", 404, "no endpoint GET /nowhere"),
        (f"/candles/{BTC}", 404, "no endpoint"),
    ],
    ids=lambda v: str(v)[:40],
)
async def test_candles_errors(served: Served, path: str, status: int, needle: str) -> None:
    got, doc, headers = await call("GET", served.url + path)
    assert got == status, doc
    assert headers["Content-Type"].startswith("application/json")
    assert needle in doc["error"], doc


async def test_method_not_allowed(served: Served) -> None:
    status, doc, headers = await call("GET", served.url + "/streaming/start")
    assert status == 405 and headers["Allow"] == "POST"
    assert doc == {"error": "GET is not allowed on /streaming/start; use POST"}
    status, doc, _ = await call("DELETE", served.url + "/health", token=TOKEN)
    assert status == 405 and "use GET" in doc["error"]


# --- OpenAPI ------------------------------------------------------------------------------------


async def test_openapi_lists_every_route_and_every_parameter(served: Served) -> None:
    """Every route the application registers (WebSockets, pages and assets included) is in the
    document, every documented path is registered, every handler's query parameters are documented."""
    status, spec, _ = await call("GET", served.url + "/openapi.json")
    assert status == 200 and spec["openapi"] == "3.1.0"
    app = build_app(served.engine, make_hub(served.engine), TOKEN)
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in app.router.routes()
        if r.resource is not None and r.method != "HEAD"
    }
    documented = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert routes == documented
    schemas = spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] and {"200", "101"} & set(op["responses"]), (method, path)
            for ref in _refs(op):
                assert ref.removeprefix("#/components/schemas/") in schemas, ref
            named = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert named == set(re.findall(r"{(\w+)}", path)), path
            public = op["security"] == []
            assert public == (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)), path
            assert public or "401" in op["responses"], path
    candles = spec["paths"]["/candles/{instrument}/{timeframe}"]["get"]
    query = {p["name"]: p for p in candles["parameters"] if p["in"] == "query"}
    assert set(query) == set(_CANDLE_PARAMS) - {"token"}  # the token is a security scheme
    assert {"price", "final", "format", "since", "until", "limit"} <= set(query)
    assert query["price"]["schema"]["enum"] == list(PRICE_SIDES)
    assert sorted(query["format"]["schema"]["enum"]) == ["csv", "json", "parquet"]
    assert query["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": MAX_CANDLES}
    trades = spec["paths"]["/trades/{instrument}"]["get"]
    assert {p["name"] for p in trades["parameters"] if p["in"] == "query"} == set(_TRADE_PARAMS) - {"token"}
    # Derived from the types: the candle row's columns, the state names, the status' venue counters.
    row = schemas["Candles"]["properties"]["candles"]["items"]
    assert len(row["prefixItems"]) == len(COLUMNS) and sorted(row["prefixItems"][-1]["enum"]) == sorted(CANDLE_STATES)
    assert set(schemas["FeedStatus"]["properties"]) == set(FeedStatus.__struct_encode_fields__)


async def test_documented_bodies_are_what_is_served(served: Served) -> None:
    """Each JSON answer decodes strictly into the type its schema was derived from (so a field added to
    a response without its type, or a type changed without the handler, fails here)."""
    samples = {
        "/health": "/health",
        "/livez": "/livez",
        "/readyz": "/readyz",
        "/streaming/status": "/streaming/status",
        "/instruments": "/instruments",
        "/candles/{instrument}/{timeframe}": f"/candles/{BTC}/1m?limit=50",
        "/switches/{instrument}": f"/switches/{BTC}",  # not a logical instrument: 404, an Error
        "/trades/{instrument}": f"/trades/{BTC}?limit=5",
        "/book/{instrument}": f"/book/{BTC}",  # no books kept here: 404, an Error (tests/e2e/test_books_e2e.py: 200s)
        "/streaming/start": "/streaming/start",
        "/streaming/stop": "/streaming/stop",  # names no instrument: stops nothing
    }
    checked = 0
    for ep in ENDPOINTS:
        if ep.path not in samples:
            assert not any(r.body for s, r in ep.replies.items() if s < 300), f"no sample for {ep.path}"
            continue
        kw: dict[str, Any] = (
            {"json": {"instruments": [BTC] if "start" in ep.path else []}} if ep.method == "post" else {}
        )
        async with (
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as s,
            s.request(ep.method.upper(), served.url + samples[ep.path], **kw) as r,
        ):
            raw = await r.read()
            status = r.status
        assert status in ep.replies, (ep.path, status, raw[:200])
        body_type = ep.replies[status].body
        body_type = EngineStatus if body_type is EngineStatusType else body_type
        assert body_type is not None, ep.path
        msgspec.json.decode(raw, type=body_type, strict=True)  # raises when the answer is not the type
        checked += 1
        if ep.path.startswith("/candles/"):
            doc = msgspec.json.decode(raw, type=schema.Candles)
            assert len(doc.candles) == 50 and doc.candles[-1][7] == "forming"
    assert checked == len(samples)


async def test_docs_pages_and_their_assets_are_served_offline(served: Served) -> None:
    """/docs (Swagger UI), /docs/websocket and the chart page: served without the token, every asset
    they name served from the package (the very bytes), nothing loaded from another host."""
    static = Path(page_module.__file__).parent / "static"
    seen = set()
    for path, needles in {
        "/docs": ("swagger-ui-bundle.js", "docs.js"),
        "/": ("lightweight-charts.standalone.production.js", "page.js"),
        "/chart": ("page.js",),
    }.items():
        status, html, headers = await call("GET", served.url + path, token=None)
        assert status == 200 and headers["Content-Type"].startswith("text/html"), path
        refs = re.findall(r'(?:src|href)="([^"#]+)"', html)
        assert all(not ref.startswith(("http:", "https:", "//")) for ref in refs), refs  # offline
        for needle in needles:
            assert f'src="/static/{needle}"' in html, (path, needle)
        for ref in [r for r in refs if r.startswith("/static/")]:
            async with aiohttp.ClientSession() as s, s.get(served.url + ref) as r:
                assert r.status == 200, ref
                assert await r.read() == (static / ref.removeprefix("/static/")).read_bytes()
                etag = r.headers["ETag"]
            async with aiohttp.ClientSession() as s, s.get(served.url + ref, headers={"If-None-Match": etag}) as r:
                assert r.status == 304
            seen.add(ref)
    assert {"/static/swagger-ui.css", "/static/page.css"} <= seen
    for name in ("LICENSE-lightweight-charts.txt", "LICENSE-swagger-ui.txt"):
        status, text, _ = await call("GET", served.url + "/static/" + name, token=None)
        assert status == 200 and "Apache License" in text
    for bad in ("/static/nope.js", "/static/..%2Fauth.py", "/static/../http.py", "/static/"):
        status, doc, _ = await call("GET", served.url + bad, token=None)
        assert status in (401, 404) and "error" in doc, bad  # 401: normalised out of /static/


async def test_websocket_page_describes_every_message_and_op(served: Served) -> None:
    status, html, headers = await call("GET", served.url + "/docs/websocket", token=None)
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for t in get_args(ServerMessage):
        tag = t.__struct_config__.tag
        row = re.search(rf"<tr id='msg-{tag}'>(.*?)</tr>", html, re.S)
        assert row, tag
        for name in t.__struct_encode_fields__:
            assert f"<code>{name}</code>" in row.group(1), (tag, name)
        assert f"&quot;{t.__name__}&quot;" in html  # its JSON schema
    for op in ws_module.OPS:
        assert f"<code>{op}</code>" in html


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [node["$ref"]] if "$ref" in node else [x for v in node.values() for x in _refs(v)]
    if isinstance(node, list):
        return [x for v in node for x in _refs(v)]
    return []


# --- metrics ------------------------------------------------------------------------------------


async def test_metrics(served: Served) -> None:
    await served.engine.writer.flush()  # at least one batch written: the store histogram has data
    status, text, headers = await call("GET", served.url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # A private registry: the engine's families, and the process' and interpreter's own.
    assert all(name.startswith(("deltafeed_", "process_", "python_")) for name in families), sorted(families)

    def samples(name: str, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
        return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples if s.name == name + suffix}

    trades = samples("deltafeed_trades", "_total")
    assert families["deltafeed_trades"].type == "counter"
    assert set(trades) == {(("instrument", BTC),), (("instrument", "binance:ETHUSDT"),)}
    assert all(v > 0 for v in trades.values())
    assert all(v > 0 for v in samples("deltafeed_venue_candles", "_total").values())
    for name in ("deltafeed_gaps", "deltafeed_candles_backfilled", "deltafeed_candles_bootstrapped"):
        assert families[name].type == "counter" and len(samples(name, "_total")) == 2
    for name in (
        "deltafeed_reconnects",
        "deltafeed_connects",
        "deltafeed_rest_rate_limited",
        "deltafeed_rest_rate_limit_waits",
    ):
        assert families[name].type == "counter"
        assert list(samples(name, "_total")) == [(("venue", "binance"),)]
    assert samples("deltafeed_connects", "_total")[(("venue", "binance"),)] >= 1
    assert samples("deltafeed_healthy") == {(): 1.0}
    assert samples("deltafeed_connected") == {(("venue", "binance"),): 1.0}
    for name in ("deltafeed_candle_latency_seconds", "deltafeed_store_write_seconds"):
        fam = families[name]
        assert fam.type == "histogram"
        buckets = [s for s in fam.samples if s.name == name + "_bucket"]
        assert buckets[-1].labels["le"] == "+Inf"
        counts = [s.value for s in buckets]
        assert counts == sorted(counts)  # cumulative
        assert samples(name, "_count")[()] == counts[-1] > 0
    assert samples("deltafeed_store_write_seconds", "_sum")[()] > 0
    assert samples("deltafeed_store_up") == {(): 1.0}
    assert samples("deltafeed_store_spool_pending_candles") == {(): 0.0}
    assert samples("deltafeed_store_spooled_candles", "_total") == {(): 0.0}
    assert samples("deltafeed_hot_redis_up") == {}  # no --hot: no sample, rather than a misleading 0
    assert "deltafeed_api_clients" in families and "deltafeed_api_messages_dropped" in families
    assert "deltafeed_api_slow_clients_disconnected" in families
    if served.hub is not None:
        assert samples("deltafeed_api_clients") == {(): 0.0}
        assert samples("deltafeed_api_messages_dropped", "_total") == {(): 0.0}


async def test_metrics_per_server_registry(served: Served) -> None:
    """Two servers over one engine each have their own registry: no clash, the same numbers."""
    runner = await start_api(served.engine, None, "127.0.0.1", 0, None)
    try:
        _, text, _ = await call("GET", api_url(runner) + "/metrics")
    finally:
        await stop_api(runner)
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"deltafeed_trades", "deltafeed_candle_latency_seconds", "deltafeed_healthy"} <= families


# --- authentication -----------------------------------------------------------------------------


async def test_loopback_without_token_reads_open_posts_refused(served: Served) -> None:
    runner = await start_api(served.engine, None, "127.0.0.1", 0, None)
    url = api_url(runner)
    try:
        for path in ("/instruments", "/streaming/status", f"/candles/{BTC}/1m?limit=1", "/metrics", "/health"):
            assert (await call("GET", url + path, token=None))[0] == 200, path
        for path in ("/streaming/stop", "/streaming/start"):
            status, doc, _ = await call("POST", url + path, token=None)
            assert status == 403
            assert "--api-token" in doc["error"] and "DELTAFEED_API_TOKEN" in doc["error"]
            # A token does not help when none is configured.
            assert (await call("POST", url + path, token="anything"))[0] == 403
    finally:
        await stop_api(runner)
    assert served.engine.status()["instruments"][BTC]["streaming"] is True


#: Every HTTP route, with what it answers given the token (the WebSocket is tested on its own).
ROUTES = [
    ("GET", "/health", 200),
    ("HEAD", "/health", 200),
    ("GET", "/streaming/status", 200),
    ("GET", "/instruments", 200),
    ("GET", f"/candles/{BTC}/1m?limit=1", 200),
    ("GET", "/metrics", 200),
    ("GET", "/openapi.json", 200),
    ("GET", "/nowhere", 404),
    ("GET", "/staticx/page.js", 404),
    ("POST", "/streaming/start", 200),
    ("POST", "/streaming/stop", 200),
    ("DELETE", "/health", 405),
]


async def test_with_a_token_every_endpoint_needs_it_on_loopback_too(served: Served) -> None:
    """Loopback, token configured: no endpoint answers without it, not even /health or an unknown path."""
    url = served.url
    for method, path, ok in ROUTES:
        kw: dict[str, Any] = {"json": {"instruments": []}} if method == "POST" else {}  # stops nothing
        status, doc, headers = await call(method, url + path, token=None, **kw)
        assert status == 401, (method, path, status)
        assert headers["Content-Type"].startswith("application/json") and headers["WWW-Authenticate"]
        if method != "HEAD":
            assert "needs the API token" in doc["error"] and "Authorization: Bearer" in doc["error"], doc
        for wrong in ("wrong", TOKEN + "x", TOKEN[:-1], "ü" * 5):
            status, doc, _ = await call(
                method, url + path, headers={"Authorization": f"Bearer {wrong}"}, token=None, **kw
            )
            assert status == 401, (method, path, wrong)
        assert (await call(method, url + path, headers={"Authorization": f"Basic {TOKEN}"}, token=None, **kw))[0] == 401
        assert (await call(method, url + path, headers={"Authorization": "Bearer"}, token=None, **kw))[0] == 401
        assert (await call(method, url + path, **kw))[0] == ok, (method, path)
    assert served.engine.status()["instruments"][BTC]["streaming"] is True


async def test_the_query_token_is_taken_on_get_never_on_post(served: Served) -> None:
    url = served.url
    assert (await call("GET", url + "/instruments", params={"token": TOKEN}, token=None))[0] == 200
    assert (await call("HEAD", url + "/health", params={"token": TOKEN}, token=None))[0] == 200
    assert (await call("GET", url + "/instruments", params={"token": "nope"}, token=None))[0] == 401
    # POST: even the right token is refused in the query, alone or next to the right header.
    for token in (None, TOKEN):
        status, doc, _ = await call("POST", url + "/streaming/stop", params={"token": TOKEN}, token=token)
        assert status == 401, token
        assert "never takes the token from the query string" in doc["error"]
        assert "Authorization: Bearer TOKEN" in doc["error"]
    assert served.engine.status()["instruments"][BTC]["streaming"] is True  # nothing was stopped


@pytest.mark.skipif(not HAVE_WS, reason="deltafeed.api.ws is not written yet")
async def test_websocket_handshake_needs_the_token(served: Served) -> None:
    async with aiohttp.ClientSession() as s:
        for kwargs in ({}, {"params": {"token": "wrong"}}, {"headers": {"Authorization": "Bearer wrong"}}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await s.ws_connect(served.url + f"/ws/{BTC}", **kwargs)
            assert info.value.status == 401, kwargs
        clients = served.hub.clients
        for kwargs in ({"params": {"token": TOKEN}}, {"headers": {"Authorization": f"Bearer {TOKEN}"}}):
            async with s.ws_connect(served.url + f"/ws/{BTC}", **kwargs) as ws:
                assert (await ws.receive_json(timeout=5))["instrument"] == BTC
                assert served.hub.clients == clients + 1


async def test_beyond_loopback_every_endpoint_needs_the_token(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """Bound to every interface (reached here over loopback): as on loopback, and the log keeps the token."""
    runner = await start_api(served.engine, None, "0.0.0.0", 0, TOKEN)
    port = api_url(runner).rsplit(":", 1)[1]
    url = f"http://127.0.0.1:{port}"
    caplog.set_level(logging.DEBUG)
    try:
        for path in (
            "/instruments",
            "/streaming/status",
            f"/candles/{BTC}/1m",
            "/metrics",
            "/ws",
            "/health",
            "/openapi.json",
            "/nowhere",
            "/chart/x",
            "/docsx",
        ):
            status, doc, _ = await call("GET", url + path, token=None)
            assert status == 401, path
            assert "needs the API token" in doc["error"]
            assert (await call("GET", url + path, token="nope"))[0] == 401
        assert (await call("GET", url + "/instruments"))[0] == 200
        assert (await call("GET", url + f"/candles/{BTC}/1m", params={"limit": "1", "token": TOKEN}, token=None))[
            0
        ] == 200
        assert (await call("GET", url + f"/candles/{BTC}/1m", params={"limit": "x", "token": TOKEN}, token=None))[
            0
        ] == 400
        long_path = f"/candles/{BTC}/1m?token={TOKEN}&pad=" + "x" * 9000  # over the limit: the guard answers
        assert (await call("GET", url + long_path, token=None))[0] == 400
    finally:
        await stop_api(runner)
    assert "/candles/" in caplog.text  # the access log is on ...
    assert TOKEN not in caplog.text  # ... and never shows the token, nor does any other line


@pytest.mark.parametrize("token", ["", " ", "\t\n", "two words", "tab\tin", "naïve"])
async def test_start_api_refuses_a_blank_or_unsendable_token(served: Served, token: str) -> None:
    with pytest.raises(BadInput, match=r"is blank|holds spaces, control or non-ASCII"):
        await start_api(served.engine, None, "127.0.0.1", 0, token)


async def test_check_bind() -> None:
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "example.com"):
        with pytest.raises(BadInput, match="needs a token: pass --api-token or set DELTAFEED_API_TOKEN"):
            check_bind(host, None)
        check_bind(host, TOKEN)
        assert not is_loopback(host)
    with pytest.raises(BadInput, match=r"binding 0\.0\.0\.0 needs a token"):
        check_bind("0.0.0.0", "")
    for host in ("127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"):
        check_bind(host, None)
        assert is_loopback(host)


async def test_start_api_refuses_wide_bind_without_token(served: Served) -> None:
    with pytest.raises(BadInput, match=r"binding 0\.0\.0\.0 needs a token"):
        await start_api(served.engine, None, "0.0.0.0", 0, None)


async def test_start_api_on_a_busy_port(served: Served) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    with pytest.raises(BadInput, match=r"cannot serve the API on 127\.0\.0\.1"):
        await start_api(served.engine, None, "127.0.0.1", port, None)


@pytest.mark.skipif(not HAVE_WS, reason="deltafeed.api.ws is not written yet")
async def test_ws_endpoint_is_served_with_a_hub(served: Served) -> None:
    async with aiohttp.ClientSession() as s, s.ws_connect(served.url + "/ws", params={"token": TOKEN}) as ws:
        await ws.send_json({"op": "subscribe", "instrument": BTC, "timeframe": "1m", "snapshot": 2})
        first = await ws.receive_json(timeout=5)
        assert first["type"] == "subscribed" and first["snapshot"] == 2
        candle = await ws.receive_json(timeout=5)
        assert candle["type"] == "candle" and candle["data"]["timeframe"] == "1m"
        # The hub's counters reach /metrics while a client is connected.
        _, text, _ = await call("GET", served.url + "/metrics")
        clients = {f.name: f for f in text_string_to_metric_families(text)}["deltafeed_api_clients"]
        assert clients.samples[0].value == 1.0


async def test_build_app_without_hub_has_no_ws(served: Served) -> None:
    app = build_app(served.engine, None, None)
    assert not any(r.resource is not None and r.resource.canonical.startswith("/ws") for r in app.router.routes())
    assert isinstance(app, web.Application)
