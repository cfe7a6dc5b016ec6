"""The API's documentation: the OpenAPI document, its interactive page, and the WebSocket protocol.

- ``GET /openapi.json``: OpenAPI 3.1, built from :data:`ENDPOINTS`. Every schema in it (responses,
  the request body, each parameter's) is derived from Python types with
  ``msgspec.json.schema_components``: the response types in :mod:`deltafeed.api.schema` (the ones
  the handlers encode their answers from) and the engine's status structs, so the document cannot
  drift from what is served. A test checks that every route the application registers is listed
  here and every path listed is registered.
- ``GET /docs``: Swagger UI (vendored from npm, served from ``/static/``: it works offline) over
  that document. The page itself holds no data and is served without the token; it fetches
  ``/openapi.json`` with the ``?token=`` of its own URL, and says how to supply one when the
  server wants it.
- ``GET /docs/websocket``: the WebSocket protocol, generated from the message types of
  :mod:`deltafeed.api.protocol` and the ops :mod:`deltafeed.api.ws` accepts.
"""

from __future__ import annotations

import functools
import html
import inspect
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import msgspec
import msgspec.inspect
from aiohttp import web
from msgspec import Meta

from deltafeed.api import schema
from deltafeed.api.http import FORMING_HEADER, MAX_BODY_BYTES, MAX_CANDLES, PARQUET, SWITCH_HEADER
from deltafeed.api.protocol import ServerMessage
from deltafeed.model import PRICE_SIDES, TIMEFRAME_PATTERN

if TYPE_CHECKING:
    from deltafeed.engine.view import EngineView

_JSON = "application/json"
_HTML = "text/html"

# --- parameter types (their schemas are derived like the bodies') -------------------------------

Instrument = Annotated[
    str,
    Meta(
        description="Any name of a collected instrument: VENUE:SYMBOL, ccxt's unified symbol, an alias, or a "
        "bare symbol on the default venue; a slash in the symbol (kraken:BTC/USD) may be sent as is or "
        "escaped as %2F",
        examples=["binance:BTCUSDT"],
    ),
]
BookDepth = Annotated[int, Meta(ge=1, le=5000, examples=[20])]
Timeframe = Annotated[
    str,
    Meta(
        pattern=TIMEFRAME_PATTERN,
        description="Ns, Nm, Nh, Nd, 1w (weeks from Monday) or 1M (calendar months); one collected here",
        examples=["1m"],
    ),
]
Time = Annotated[int | datetime, Meta(description="Epoch milliseconds, or ISO-8601 (UTC unless an offset is given)")]
Limit = Annotated[int, Meta(ge=1, le=MAX_CANDLES)]
PriceSide = Annotated[
    str,
    Meta(
        extra_json_schema={"enum": list(PRICE_SIDES)},
        description="A forex instrument's price side: its BID, ASK or MID candles (the same as NAME@bid)",
    ),
]
Final = Annotated[
    bool,
    Meta(
        extra_json_schema={"default": False},
        description="true: only final (verified) candles, neither provisional nor forming ones",
    ),
]
Format = Annotated[
    Literal["json", "csv", "parquet"],
    Meta(
        extra_json_schema={"default": "json"},
        description="parquet: the plain export layout (see `deltafeed export`), UTC timestamps",
    ),
]
Instruments = Annotated[str, Meta(description="Instrument names separated by commas", examples=["binance:BTCUSDT"])]
AssetName = Annotated[str, Meta(examples=["page.js"])]


class EngineStatusType:
    """Stands for the engine's status struct (``deltafeed.engine.status.EngineStatus``) in
    :data:`ENDPOINTS`: the API may not import the engine (the engine imports the API's protocol), so
    :func:`openapi_spec` is given the type, taken from the running engine's ``report()``."""


@dataclass(frozen=True)
class Param:
    """One parameter of an endpoint; ``type`` is a Python type its schema is derived from."""

    name: str
    where: Literal["path", "query"]
    type: Any
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One response: ``body`` a type of :mod:`deltafeed.api.schema` (JSON), or ``media`` naming
    non-JSON media types (their body is a string, an example beside it when given)."""

    description: str
    body: Any = None
    media: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoint:
    """One route of the application, as the OpenAPI document describes it."""

    method: str
    path: str
    summary: str
    replies: dict[int, Reply]
    description: str = ""
    params: tuple[Param, ...] = ()
    body: Any = None  # the request body's type
    secured: bool = True  # False: served without the token (pages and their assets, holding no data)
    tag: str = "data"


def _err(description: str) -> Reply:
    return Reply(description, schema.Error)


_SINCE = Param("since", "query", Time, "Earliest open time (inclusive)")
_UNTIL = Param("until", "query", Time, "Latest open time (inclusive)")
_READ = {400: _err("A query parameter given twice, a malformed name, or a request too long to parse")}
_WRITE = {
    400: _err('Bad body: not JSON, or not {"instruments": [...]}, or a malformed name'),
    403: _err("No token is configured: start with --api-token or DELTAFEED_API_TOKEN"),
    404: _err("An instrument this run does not collect"),
    408: _err("The body did not arrive in time"),
    413: _err(f"Body larger than {MAX_BODY_BYTES} bytes"),
}
_WS = {
    101: Reply("Switching Protocols: the connection is a WebSocket; its messages are described at /docs/websocket"),
    400: _err("Not a WebSocket handshake, or a malformed instrument name"),
    404: _err("An instrument this collector does not serve"),
    503: _err("Too many clients, or the server is shutting down"),
}
_CSV_EXAMPLE = (
    "open_time,open,high,low,close,volume,trades,state\n2026-01-01T00:00:00Z,100.5,101,100,100.75,12.5,42,final\n"
)

#: Every route the application registers (:func:`deltafeed.api.server.build_app`).
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "get",
        "/health",
        "Health of the collector",
        {200: Reply("Healthy", schema.Health), 503: Reply("Degraded, with the reasons", schema.Health), **_READ},
        tag="operations",
    ),
    Endpoint(
        "get",
        "/livez",
        "Liveness: the process answers (a supervisor restarts it when it does not)",
        {200: Reply("Alive", schema.Liveness), **_READ},
        tag="operations",
    ),
    Endpoint(
        "get",
        "/readyz",
        "Readiness: history bootstrapped, every venue connected, the cold store writable",
        {200: Reply("Ready", schema.Readiness), 503: Reply("Not ready, with the reasons", schema.Readiness), **_READ},
        tag="operations",
    ),
    Endpoint(
        "get",
        "/streaming/status",
        "Counters of the collector",
        {200: Reply("Status", EngineStatusType), **_READ},
        description="Per instrument (instruments), per venue (venues), the store's and the REST client's counters.",
        tag="operations",
    ),
    Endpoint(
        "post",
        "/streaming/start",
        "Start (resume) streaming instruments",
        {200: Reply("The instruments streaming now", schema.Streaming), **_WRITE},
        body=schema.ControlRequest,
        tag="operations",
    ),
    Endpoint(
        "post",
        "/streaming/stop",
        "Stop streaming instruments (whatever is missed meanwhile is repaired after a start)",
        {200: Reply("The instruments streaming now", schema.Streaming), **_WRITE},
        body=schema.ControlRequest,
        tag="operations",
    ),
    Endpoint(
        "get",
        "/instruments",
        "The instruments and timeframes this collector serves",
        {200: Reply("Instruments", schema.Instruments), **_READ},
    ),
    Endpoint(
        "get",
        "/candles/{instrument}/{timeframe}",
        "Candles of one series, oldest first, the forming one included (last), each with its state",
        {
            200: Reply(
                "Candles",
                schema.Candles,
                media={"text/csv": _CSV_EXAMPLE, PARQUET: None},
                headers={
                    FORMING_HEADER: "Open times (ms, comma separated) of the candles still forming",
                    SWITCH_HEADER: "Open times (ms) of the candles that span a failover switch",
                },
            ),
            400: _err("A bad parameter (time, limit, format, final, price, malformed name, range too wide)"),
            404: _err("An instrument or timeframe this collector does not serve"),
            503: _err("The database cannot answer now; retry"),
        },
        description="From memory when the recent candles cover the range, else from the database. Each "
        "candle's state is forming, provisional or final; final=true returns only final ones. At most "
        f"{MAX_CANDLES} candles: a wider range without limit is refused (400).",
        params=(
            Param("instrument", "path", Instrument),
            Param("timeframe", "path", Timeframe),
            _SINCE,
            _UNTIL,
            Param(
                "limit",
                "query",
                Limit,
                "Only the newest N candles of the range (with final=true, the newest N final ones)",
            ),
            Param("format", "query", Format),
            Param("price", "query", PriceSide),
            Param("final", "query", Final),
        ),
    ),
    Endpoint(
        "get",
        "/switches/{instrument}",
        "Failover switches of a logical instrument, oldest first",
        {200: Reply("Switches", schema.Switches), 404: _err("Not a logical instrument of this collector"), **_READ},
        params=(Param("instrument", "path", Instrument),),
    ),
    Endpoint(
        "get",
        "/trades/{instrument}",
        "Raw trades (or quotes) the stream delivered, oldest first, and the spans missing",
        {
            200: Reply("Ticks", schema.Trades),
            400: _err("A bad parameter"),
            404: _err("An instrument not collected here, or a run that keeps no ticks"),
            503: _err("The database cannot answer now; retry"),
        },
        description="A span the stream lost is repaired in the candles from the venue's candle history, "
        "which holds no trades, so it is listed in missing. With since, the first limit ticks from it "
        "(continue from next_since; ticks at that very millisecond repeat, tell them by id); without, "
        "the newest limit.",
        params=(
            Param("instrument", "path", Instrument),
            _SINCE,
            _UNTIL,
            Param("limit", "query", Limit, "At most this many ticks"),
        ),
    ),
    Endpoint(
        "get",
        "/book/{instrument}",
        "An order book kept here (books setting), best levels first; as of a past time with at",
        {
            200: Reply("The book", schema.Book),
            400: _err("A bad parameter"),
            404: _err("No book kept of that instrument, or none stored at that time"),
            503: _err("The database cannot answer now; retry"),
        },
        description="in_sync false means the book is being resynchronised with the venue: no levels are "
        "shown then. sequence grows by one with every change applied; venue_seq is the venue's own key "
        "of the last message applied. With at, the book recorded at that time (periodic snapshots, and "
        "every change with book_deltas), kept for book_snapshot_retention (book_delta_retention).",
        params=(
            Param("instrument", "path", Instrument),
            Param("depth", "query", BookDepth, "Levels per side (default and most: the book's book_depth)"),
            Param("at", "query", Time, "The book as it was at this time (from the stored history)"),
        ),
    ),
    Endpoint(
        "get",
        "/metrics",
        "Prometheus metrics (text exposition format)",
        {200: Reply("Metrics", media={"text/plain": None}), **_READ},
        tag="operations",
    ),
    Endpoint(
        "get",
        "/ws",
        "WebSocket: subscribe ops (see /docs/websocket)",
        _WS,
        description="Nothing is sent until the client subscribes, e.g. "
        '{"op":"subscribe","instrument":"binance:BTCUSDT","timeframe":"1m","snapshot":100}.',
        tag="websocket",
    ),
    Endpoint(
        "get",
        "/ws/{instrument}",
        "WebSocket: everything for one instrument (trades, prices, candles of every timeframe)",
        _WS,
        params=(Param("instrument", "path", Instrument),),
        tag="websocket",
    ),
    Endpoint(
        "get",
        "/ws/multi/{instruments}",
        "WebSocket: everything for several instruments",
        _WS,
        params=(Param("instruments", "path", Instruments),),
        tag="websocket",
    ),
    Endpoint(
        "get",
        "/openapi.json",
        "This document",
        {200: Reply("OpenAPI 3.1", media={_JSON: None}), **_READ},
        tag="docs",
    ),
    Endpoint(
        "get",
        "/docs",
        "This document as an interactive page (Swagger UI)",
        {200: Reply("HTML", media={_HTML: None})},
        secured=False,
        tag="docs",
    ),
    Endpoint(
        "get",
        "/docs/websocket",
        "The WebSocket protocol: ops and messages",
        {200: Reply("HTML", media={_HTML: None})},
        secured=False,
        tag="docs",
    ),
    Endpoint(
        "get",
        "/",
        "The live chart page",
        {200: Reply("HTML", media={_HTML: None})},
        description="Candles and volume of an instrument, price side and timeframe: history over HTTP, then "
        "live over the WebSocket. Open it as /?token=TOKEN when a token is configured.",
        secured=False,
        tag="pages",
    ),
    Endpoint(
        "get",
        "/chart",
        "The live chart page (same as /)",
        {200: Reply("HTML", media={_HTML: None})},
        secured=False,
        tag="pages",
    ),
    Endpoint(
        "get",
        "/static/{name}",
        "Scripts, styles and licenses of the pages",
        {200: Reply("The file"), 404: _err("No such asset")},
        params=(Param("name", "path", AssetName),),
        secured=False,
        tag="pages",
    ),
)


def _version() -> str:
    try:
        return version("deltafeed")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"


_DESCRIPTION = (
    "Candles a deltafeed collector keeps: live and complete. Errors are JSON "
    '{"error": message} naming the problem and the fix.\n\n'
    "Authentication: a bearer token (Authorization: Bearer TOKEN, or ?token=TOKEN on a GET such as a "
    "browser's WebSocket). With a token configured every endpoint holding data needs it; without one only "
    "loopback is served, reads are open and POST endpoints are refused (403). The pages (/, /chart, /docs, "
    "/docs/websocket) and their assets (/static/) hold no data and are served without it.\n\n"
    "Live candles stream over the WebSocket: see /docs/websocket."
)


@functools.cache
def openapi_spec(status_type: type[msgspec.Struct]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of :data:`ENDPOINTS`, ``status_type`` the engine's status struct
    (built once per type; treat it as read-only)."""
    # Every type the document names, parameters included: one call derives them all, sharing components.
    types: list[Any] = []
    for ep in ENDPOINTS:
        types += [p.type for p in ep.params]
        types += [status_type if r.body is EngineStatusType else r.body for r in ep.replies.values() if r.body]
        if ep.body is not None:
            types.append(ep.body)
    schemas, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    of = iter(schemas)
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {"query": []}]
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        op: dict[str, Any] = {"tags": [ep.tag], "summary": ep.summary, "security": secured if ep.secured else []}
        if ep.description:
            op["description"] = ep.description
        params = []
        for p in ep.params:
            param: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.where == "path", "schema": next(of)}
            description = p.description or param["schema"].get("description")
            if description:
                param["description"] = description
            params.append(param)
        if params:
            op["parameters"] = params
        responses: dict[str, Any] = {}
        for status, reply in ep.replies.items():
            doc: dict[str, Any] = {"description": reply.description}
            content: dict[str, Any] = {}
            if reply.body is not None:
                content[_JSON] = {"schema": next(of)}
            for media, example in reply.media.items():
                content[media] = {"schema": {"type": "string"}} | ({"example": example} if example else {})
            if content:
                doc["content"] = content
            if reply.headers:
                doc["headers"] = {
                    name: {"schema": {"type": "string"}, "description": text} for name, text in reply.headers.items()
                }
            responses[str(status)] = doc
        if ep.secured:
            responses["401"] = {
                "description": "Token missing or wrong (every request needs it when one is configured)"
                + (", or sent as ?token= (a POST takes it only as a header)" if ep.method == "post" else ""),
                "content": {_JSON: {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        if ep.body is not None:
            op["requestBody"] = {
                "required": False,
                "description": inspect.getdoc(ep.body) or "",
                "content": {_JSON: {"schema": next(of)}},
            }
        op["responses"] = responses
        paths.setdefault(ep.path, {})[ep.method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "deltafeed", "version": _version(), "description": _DESCRIPTION},
        "tags": [
            {"name": "data", "description": "Instruments, candles, ticks, switches"},
            {"name": "operations", "description": "Health, counters, streaming control, metrics"},
            {"name": "websocket", "description": "Live data; the protocol is at /docs/websocket"},
            {"name": "docs", "description": "This documentation"},
            {"name": "pages", "description": "The live chart page and its assets"},
        ],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
            "schemas": components,
        },
        "paths": paths,
    }


# --- the WebSocket protocol page ----------------------------------------------------------------


def _struct_tag(t: type[msgspec.Struct]) -> str:
    tag = t.__struct_config__.tag
    return str(tag) if tag is not None else t.__name__


@functools.cache
def websocket_html() -> str:
    """The WebSocket protocol as a page: the ops a client sends (from :mod:`deltafeed.api.ws`) and
    every message the server sends (each member of :data:`~deltafeed.api.protocol.ServerMessage`,
    with its JSON schema derived from the type)."""
    from deltafeed.api import ws

    members: tuple[type[msgspec.Struct], ...] = get_args(ServerMessage)
    _, components = msgspec.json.schema_components([*members, ws._Op], ref_template="#/components/schemas/{name}")
    rows = []
    for t in members:
        info = msgspec.inspect.type_info(t)
        assert isinstance(info, msgspec.inspect.StructType)
        names = ["<code>type</code>"]
        for f in info.fields:
            inner = f.type
            if isinstance(inner, msgspec.inspect.StructType):  # data: list its fields too
                sub = ", ".join(f"<code>{html.escape(g.encode_name)}</code>" for g in inner.fields)
                names.append(f"<code>{html.escape(f.encode_name)}</code>: {{{sub}}}")
            else:
                names.append(f"<code>{html.escape(f.encode_name)}</code>")
        meaning = html.escape((inspect.getdoc(t) or "").replace("``", ""))
        tag = html.escape(_struct_tag(t))
        rows.append(f"<tr id='msg-{tag}'><td><code>{tag}</code></td><td>{', '.join(names)}</td><td>{meaning}</td></tr>")
    ops = "".join(f"<li><code>{html.escape(op)}</code></li>" for op in ws.OPS)
    doc = html.escape(inspect.getdoc(ws) or "")
    schema_json = html.escape(msgspec.json.format(msgspec.json.encode({"$defs": components}), indent=2).decode())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>deltafeed WebSocket protocol</title>
<link rel="stylesheet" href="/static/docs.css"></head>
<body class="wsdoc">
<h1>deltafeed WebSocket protocol</h1>
<p>Endpoints: <code>/ws</code> (ops only), <code>/ws/{{instrument}}</code>, <code>/ws/multi/{{i1}},{{i2}}</code>.
With a token configured, the handshake carries it as <code>Authorization: Bearer TOKEN</code> or
<code>?token=TOKEN</code> (a browser cannot set headers on a WebSocket). The HTTP API: <a href="/docs">/docs</a>.</p>
<h2>Ops the client sends</h2>
<p>JSON text frames, e.g. <code>{html.escape(ws.EXAMPLE)}</code>. The ops: </p><ul>{ops}</ul>
<p>Fields of an op (schema <code>_Op</code> below): <code>op</code>, <code>instrument</code>,
<code>timeframe</code>, <code>snapshot</code> (0 to 1000 candles), <code>final</code>.
<code>{{"type":"ping"}}</code> is answered with a <code>pong</code>.</p>
<h2>Messages the server sends</h2>
<table><thead><tr><th>type</th><th>fields</th><th>meaning</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Details</h2><pre class="prose">{doc}</pre>
<h2>JSON schemas</h2><p>Derived from the message types (<code>deltafeed.api.protocol</code>).</p>
<pre>{schema_json}</pre>
</body></html>
"""


# --- routes -------------------------------------------------------------------------------------


async def _websocket(request: web.Request) -> web.Response:
    return web.Response(text=websocket_html(), content_type=_HTML)


def add_docs_routes(app: web.Application, engine: EngineView) -> None:
    """``/openapi.json``, ``/docs`` (Swagger UI, from :mod:`deltafeed.api.page`'s assets) and ``/docs/websocket``."""
    from deltafeed.api.page import asset_page

    async def _openapi(request: web.Request) -> web.Response:
        spec = openapi_spec(type(engine.report()))
        return web.Response(body=msgspec.json.encode(spec), content_type=_JSON)

    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/docs", asset_page("docs.html"))
    app.router.add_get("/docs/websocket", _websocket)
