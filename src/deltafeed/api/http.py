"""The HTTP endpoints: health, streaming status and control, instruments, candles, ticks, switches.

Every error is JSON, ``{"error": "..."}``, with a message that names the problem and the fix, and
the status that fits: 400 for a bad parameter, 404 for an unknown instrument, timeframe or path,
405 for a wrong method, 408 for a body that does not arrive, 413 for a body too large, 503 when the
collector cannot answer. The router's own errors (unknown path, wrong method, body too large) are
turned into the same shape by :func:`error_middleware`; requests too malformed to reach it (a path
or header too long) by the connection guard (:mod:`deltafeed.api.guard`).

Candles are served from the engine's hot tier when it covers the range and from the cold store
otherwise (``Engine.candles``). Every candle carries its state: ``forming`` (its interval is not
over), ``provisional`` (closed, but deltafeed does not vouch for it yet: it may still be repaired) or
``final``. The candle still forming is included, last, and also named in the response
(``"forming"`` in JSON, the ``Deltafeed-Forming`` header in both formats); ``final=true`` returns
only final candles.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
from typing import TYPE_CHECKING, cast

import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from deltafeed.api import schema
from deltafeed.api.guard import HEADER_TIMEOUT_S
from deltafeed.fmt import clean, iso, num
from deltafeed.model import PRICE_SIDES, BadInput, Candle, Instrument, time_ms
from deltafeed.model import timeframe as timeframe_of
from deltafeed.names import UnknownName, native, resolve
from deltafeed.store.base import StoreError
from deltafeed.venues import registry

if TYPE_CHECKING:
    from deltafeed.engine.status import EngineStatus
    from deltafeed.engine.view import EngineView

log = logging.getLogger("deltafeed.api.http")

#: Most candles one response holds. A range holding more, asked without ``limit``, is refused (400)
#: rather than cut silently.
MAX_CANDLES = 100_000
#: Largest request body accepted (the control endpoints take a short JSON list).
MAX_BODY_BYTES = 64 * 1024
#: Columns of a candle row, in JSON and CSV (``state``: forming, provisional or final).
COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "trades", "state")
#: Response header naming the open times (epoch ms, comma separated) of the candles in the
#: response that are still forming; absent when none is (the state column tells provisional ones).
FORMING_HEADER = "Deltafeed-Forming"
#: Response header naming the open times of the candles in the response that span a failover
#: switch of a logical instrument (see ``model.Switch``); absent when none does.
SWITCH_HEADER = "Deltafeed-Switch"

_CANDLE_PARAMS = ("since", "until", "limit", "format", "price", "final", "token")
_JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
_TRADE_PARAMS = ("since", "until", "limit", "token")
_BOOK_PARAMS = ("depth", "at", "token")
#: Columns of a trade row and a quote row in ``GET /trades`` (side: the taker's, as ccxt gives it).
TRADE_COLUMNS = ("time", "id", "price", "amount", "side")
QUOTE_COLUMNS = ("time", "seq", "bid", "ask")

# --- errors -------------------------------------------------------------------------------------


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """``{"error": message}`` with ``status``."""
    return web.Response(
        status=status, body=msgspec.json.encode({"error": message}), content_type=_JSON, headers=headers
    )


def http_error(cls: type[web.HTTPException], message: str) -> web.HTTPException:
    """An aiohttp HTTP exception whose body is ``{"error": message}`` (raise it from a handler)."""
    return cls(text=msgspec.json.encode({"error": message}).decode(), content_type=_JSON)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Gives the router's and aiohttp's own errors (404, 405, 413, ...) the JSON error shape, and
    refuses a query parameter given twice (which one would count is a guess)."""
    repeated = sorted({k for k in request.query if len(request.query.getall(k)) > 1})
    if repeated:
        return error_response(400, f"query parameter(s) {', '.join(repeated)} given more than once; give each once")
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == _JSON:
            raise
        what = f"{request.method} {request.path}"
        if isinstance(exc, web.HTTPNotFound):
            message = f"no endpoint {what}; GET /openapi.json describes the API"
        elif isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = f"{request.method} is not allowed on {request.path}; use {allowed}"
            return error_response(405, message, {"Allow": allowed})
        elif isinstance(exc, web.HTTPRequestEntityTooLarge):
            message = f"{what}: the request body is larger than {MAX_BODY_BYTES} bytes; send a smaller one"
        else:
            message = f"{what}: {exc.text or exc.reason}"
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
        return error_response(exc.status, message, headers)
    except web.RequestPayloadError as exc:  # a body that cannot be read: bad chunks, bad gzip, cut short
        cause = exc.__cause__ or exc
        detail = (str(getattr(cause, "message", "")) or str(cause)).strip().splitlines()
        resp = error_response(
            400,
            f"{request.method} {request.path}: the request body cannot be read"
            f" ({detail[0].rstrip(':') if detail else 'malformed'}); send it whole, as plain"
            " JSON (or valid gzip or deflate with the Content-Encoding saying so)",
        )
        resp.force_close()  # the rest of that body cannot be skipped reliably: no next request on it
        return resp
    except StoreError as exc:  # before BadInput: a busy store (StoreBusy) is both
        return error_response(503, f"the candle store cannot answer now ({exc}); retry shortly")
    except BadInput as exc:
        return error_response(400, str(exc))
    except Exception:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            raise  # a WebSocket's handler has answered already; aiohttp deals with it
        log.exception("%s %s failed", request.method, request.path)
        return error_response(
            500, f"{request.method} {request.path} failed on the server; it was logged, please report it"
        )


# --- parameters ---------------------------------------------------------------------------------


#: The times ``since`` and ``until`` may name: the years 1 to 9999, as ISO-8601 can write them.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999


def _is_integer(text: str) -> bool:
    """An optional ``-`` and ASCII digits only (``str.isdigit`` also takes ``²`` and ``١``, which
    ``int`` then refuses or reads as digits; ``int`` alone takes ``1_000`` and spaces)."""
    digits = text[1:] if text.startswith("-") else text
    return digits.isascii() and digits.isdigit()


def parse_time(text: str, name: str) -> int:
    """``since``/``until``: epoch milliseconds, or an ISO-8601 time (UTC unless it says otherwise).

    A ``+`` in a query string means a space, so ``...T08:00:00+01:00`` sent unescaped arrives as
    ``...T08:00:00 01:00``; that form is read as the offset it was meant to be. Anything else, or a
    time outside the years 1 to 9999, is a 400 naming the parameter.
    """
    t = text.strip()
    ms: int | None = None
    if _is_integer(t):
        ms = int(t)
    else:
        for candidate in (t, _plus_back(t)):
            try:
                ms = time_ms(candidate)
                break
            except (ValueError, OverflowError):
                continue
    if ms is None:
        raise http_error(
            web.HTTPBadRequest,
            f"{name}={text!r} is neither epoch milliseconds nor an ISO-8601 time;"
            f" write e.g. {name}=1767225600000 or {name}=2026-01-01T00:00:00Z",
        )
    if not MIN_TIME_MS <= ms <= MAX_TIME_MS:
        raise http_error(
            web.HTTPBadRequest,
            f"{name}={text!r} is outside the years 1 to 9999; write a time"
            f" between {MIN_TIME_MS} and {MAX_TIME_MS} (epoch ms)",
        )
    return ms


def _plus_back(t: str) -> str:
    head, sep, tail = t.rpartition(" ")
    return f"{head}+{tail}" if sep and "T" in head and ":" in tail else t


def parse_limit(text: str) -> int:
    n = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
    if not 1 <= n <= MAX_CANDLES:
        raise http_error(
            web.HTTPBadRequest, f"limit={text!r} is not a whole number from 1 to {MAX_CANDLES}; write e.g. limit=500"
        )
    return n


def parse_bool(text: str, name: str) -> bool:
    """A boolean query parameter: ``true``/``false`` (also ``1``/``0``, any case)."""
    value = text.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise http_error(web.HTTPBadRequest, f"{name}={text!r} is not a boolean; write {name}=true or {name}=false")


def parse_instrument(name: str, engine: EngineView) -> str:
    """A collected series' stored name for any name of it (see :mod:`deltafeed.names`): 400 when
    ``name`` is malformed, 404 when nothing collected answers to it."""
    settings = engine.settings
    try:
        return resolve(name, engine.instrument_names(), aliases=settings.aliases, default_venue=settings.venue)
    except UnknownName as exc:
        raise http_error(web.HTTPNotFound, f"{exc}; GET /instruments lists them") from None
    except BadInput as exc:
        raise http_error(web.HTTPBadRequest, str(exc)) from None


def parse_timeframe(name: str, collected: list[str]) -> str:
    """A collected timeframe: 400 when ``name`` is no timeframe at all, 404 when not collected."""
    try:
        name = timeframe_of(name).name  # 60s is 1m
    except BadInput:
        raise http_error(
            web.HTTPBadRequest, f"unknown timeframe {name!r}; use one of {' '.join(collected)} (collected here)"
        ) from None
    if name not in collected:
        raise http_error(web.HTTPNotFound, f"timeframe {name} is not collected here; use one of {' '.join(collected)}")
    return name


# --- the endpoints ------------------------------------------------------------------------------


def _json(doc: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(doc), content_type=_JSON, headers=headers)


class _Routes:
    def __init__(self, engine: EngineView, body_timeout_s: float) -> None:
        self.engine = engine
        self.body_timeout_s = body_timeout_s

    async def health(self, request: web.Request) -> web.Response:
        reasons = self.engine.health()
        if reasons:
            return _json(schema.Health("degraded", reasons), status=503)
        return _json(schema.Health("ok"))

    async def status(self, request: web.Request) -> web.Response:
        return _json(streaming_status(self.engine))

    async def instruments(self, request: web.Request) -> web.Response:
        per = self.engine.report().instruments
        settings = self.engine.settings
        aliases = {a: native(t, settings.venue) for a, t in settings.aliases.items()}
        out = []
        for name in self.engine.instrument_names():
            base, _, price = name.partition("@")
            inst = Instrument.parse(base)
            st = per.get(name)  # None for a logical (failover) series
            venue = registry.find(inst.venue)
            out.append(
                schema.InstrumentInfo(
                    name=name,
                    venue=inst.venue,
                    symbol=inst.symbol,
                    # ccxt's unified symbol (BTC/USDT), None when the venue's symbol names no pair
                    unified=venue.unified_symbol(inst.symbol) if venue is not None else None,
                    aliases=sorted(a for a, target in aliases.items() if target == base),
                    price=st.price if st is not None else price or None,
                    streaming=st.streaming if st is not None else True,
                )
            )
        return _json(schema.Instruments(out, list(self.engine.timeframes)))

    async def start(self, request: web.Request) -> web.Response:
        names = await self._control_body(request)
        return _json(schema.Streaming(await self.engine.start_streaming(names)))

    async def stop(self, request: web.Request) -> web.Response:
        names = await self._control_body(request)
        return _json(schema.Streaming(await self.engine.stop_streaming(names)))

    async def _control_body(self, request: web.Request) -> list[str] | None:
        """``{"instruments": [...]}`` (optional; absent or null = every instrument), validated."""
        try:
            async with asyncio.timeout(self.body_timeout_s):
                raw = await request.read()
        except TimeoutError:
            raise http_error(
                web.HTTPRequestTimeout,
                f"the request body did not arrive within {self.body_timeout_s:g} s; send it with the request",
            ) from None
        if not raw.strip():
            return None
        usage = 'send {"instruments": ["binance:BTCUSDT", ...]}, or no body for every instrument'
        try:
            body = msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise http_error(web.HTTPBadRequest, f"the request body is not JSON ({exc}); {usage}") from None
        if not isinstance(body, dict) or set(body) - {"instruments"}:
            raise http_error(web.HTTPBadRequest, f"unexpected request body; {usage}")
        names = body.get("instruments")
        if names is None:
            return None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise http_error(web.HTTPBadRequest, f"instruments must be a list of names; {usage}")
        return [parse_instrument(n, self.engine) for n in names]

    async def candles(self, request: web.Request) -> web.Response:
        # Names first, before anything is looked up with them.
        q = request.query
        name = request.match_info["instrument"]
        if "price" in q:  # a forex instrument's BID or ASK candles: the same as NAME@bid
            if q["price"] not in PRICE_SIDES:
                raise http_error(web.HTTPBadRequest, f"price={q['price']!r}; use one of {', '.join(PRICE_SIDES)}")
            name = f"{name.partition('@')[0]}@{q['price']}"
        instrument = parse_instrument(name, self.engine)
        timeframe = parse_timeframe(request.match_info["timeframe"], list(self.engine.timeframes))
        unknown = sorted(set(q) - set(_CANDLE_PARAMS))
        if unknown:
            raise http_error(
                web.HTTPBadRequest,
                f"unknown parameter(s) {', '.join(unknown)}; use since, until, limit, format, price and final",
            )
        since = parse_time(q["since"], "since") if "since" in q else None
        until = parse_time(q["until"], "until") if "until" in q else None
        if since is not None and until is not None and since > until:
            raise http_error(web.HTTPBadRequest, f"since ({iso(since)}) is after until ({iso(until)}); swap them")
        limit = parse_limit(q["limit"]) if "limit" in q else None
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv", "parquet"):
            raise http_error(
                web.HTTPBadRequest, f"format={fmt!r} is not served; use format=json, format=csv or format=parquet"
            )
        final_only = parse_bool(q["final"], "final") if "final" in q else False
        rows = await self.engine.candles(
            instrument, timeframe, since, until, MAX_CANDLES + 1 if limit is None else limit, final_only=final_only
        )
        if len(rows) > MAX_CANDLES:
            raise http_error(
                web.HTTPBadRequest,
                f"{instrument} {timeframe} holds more than {MAX_CANDLES} candles"
                " in that range; narrow it with since and until, or pass"
                f" limit (up to {MAX_CANDLES}) for the newest ones",
            )
        forming = [c.open_time for c in rows if not c.closed]
        provisional = [c.open_time for c in rows if c.closed and not c.final]
        headers = {FORMING_HEADER: ",".join(map(str, forming))} if forming else {}
        switches = await self._spanning(instrument, timeframe, rows)
        if switches:
            headers[SWITCH_HEADER] = ",".join(str(w.open_time) for w in switches)
        if fmt == "csv":
            return web.Response(text=candles_csv(rows), content_type="text/csv", charset="utf-8", headers=headers)
        if fmt == "parquet":
            from deltafeed.store.export import candles_parquet

            body = await asyncio.to_thread(candles_parquet, rows, instrument, timeframe)
            return web.Response(body=body, content_type=PARQUET, headers=headers)
        return _json(
            schema.Candles(
                instrument, timeframe, list(COLUMNS), [_json_row(c) for c in rows], forming, provisional, switches
            ),
            headers=headers,
        )

    async def _spanning(self, instrument: str, timeframe: str, rows: list[Candle]) -> list[schema.SpanningCandle]:
        """The candles of ``rows`` that span a failover switch, with the switch."""
        if not rows:
            return []
        grid = timeframe_of(timeframe)
        found = await self.engine.switches(instrument, rows[0].open_time, grid.next(rows[-1].open_time) - 1)
        return [schema.SpanningCandle(w.spanning(grid), w.since_ms, w.at_ms, w.source_from, w.source_to) for w in found]

    async def trades(self, request: web.Request) -> web.Response:
        q = request.query
        instrument = parse_instrument(request.match_info["instrument"], self.engine)
        unknown = sorted(set(q) - set(_TRADE_PARAMS))
        if unknown:
            raise http_error(
                web.HTTPBadRequest, f"unknown parameter(s) {', '.join(unknown)}; use since, until and limit"
            )
        since = parse_time(q["since"], "since") if "since" in q else None
        until = parse_time(q["until"], "until") if "until" in q else None
        if since is not None and until is not None and since > until:
            raise http_error(web.HTTPBadRequest, f"since ({iso(since)}) is after until ({iso(until)}); swap them")
        limit = parse_limit(q["limit"]) if "limit" in q else MAX_CANDLES
        page = await self.engine.trades(instrument.partition("@")[0], since, until, limit)
        if page is None:
            raise http_error(
                web.HTTPNotFound, "this collector keeps no ticks; set ticks = true in its config (and restart it)"
            )
        return _json(
            schema.Trades(
                instrument=page.instrument,
                trade_columns=list(TRADE_COLUMNS),
                trades=[(t, i, p, a, "sell" if m else "buy") for t, i, p, a, m in page.trades],
                quote_columns=list(QUOTE_COLUMNS),
                quotes=page.quotes,
                missing=[schema.MissingTicks(g.since_ms, g.until_ms, g.why) for g in page.missing],
                kept_from=page.kept_from,
                next_since=page.next_since,
            )
        )

    async def book(self, request: web.Request) -> web.Response:
        q = request.query
        unknown = sorted(set(q) - set(_BOOK_PARAMS))
        if unknown:
            raise http_error(web.HTTPBadRequest, f"unknown parameter(s) {', '.join(unknown)}; use depth and at")
        books = self.engine.books
        settings = self.engine.settings
        if not books.keepers:
            raise http_error(web.HTTPNotFound, "this collector keeps no order books; set books = [...] in its config")
        try:
            raw = request.match_info["instrument"]
            name = resolve(raw, list(books.keepers), aliases=settings.aliases, default_venue=settings.venue)
        except UnknownName as exc:
            raise http_error(web.HTTPNotFound, f"{exc}; books are kept of {', '.join(books.keepers)}") from None
        keeper = books.keepers[name]
        text = q.get("depth", str(keeper.depth))
        depth = int(text) if text.isascii() and text.isdigit() and len(text) <= 6 else 0
        if not 1 <= depth <= keeper.depth:
            raise http_error(
                web.HTTPBadRequest, f"depth={text!r}: give a whole number from 1 to {keeper.depth} (its book_depth)"
            )
        if "at" not in q:
            return _json(msgspec.convert(keeper.view(depth), schema.Book))
        at = parse_time(q["at"], "at")
        doc = await books.at(name, at, depth)
        if doc is None:
            raise http_error(
                web.HTTPNotFound, f"no stored book of {name} at or before {iso(at)}; {await books.history_span(name)}"
            )
        return _json(msgspec.convert(doc, schema.Book))

    async def switches(self, request: web.Request) -> web.Response:
        instrument = parse_instrument(request.match_info["instrument"], self.engine)
        if instrument not in self.engine.failovers:
            raise http_error(
                web.HTTPNotFound,
                f"{instrument} is not a logical instrument (it has no failover"
                " sources); switches exist only for those under [failover]",
            )
        found = await self.engine.switches(instrument)
        docs = [self.engine.switch_doc(w) for w in found]
        switches = [schema.SwitchInfo(d.since_ms, d.at_ms, d.source_from, d.source_to, d.spanning) for d in docs]
        return _json(schema.Switches(instrument, switches))


def candles_csv(rows: list[Candle]) -> str:
    """The CLI's CSV: header ``open_time,open,high,low,close,volume,trades,state``, ISO-8601 UTC times."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for c in rows:
        w.writerow(
            [iso(c.open_time), num(c.open), num(c.high), num(c.low), num(c.close), num(c.volume), c.trades, c.state]
        )
    return out.getvalue()


def streaming_status(engine: EngineView) -> EngineStatus:
    """What ``GET /streaming/status`` sends: the engine's status, ``venues`` section included."""
    return engine.report()


def add_http_routes(app: web.Application, engine: EngineView, body_timeout_s: float = HEADER_TIMEOUT_S) -> None:
    """Add the HTTP endpoints (see :data:`deltafeed.api.openapi.ENDPOINTS`) serving ``engine`` to ``app``.

    ``body_timeout_s`` bounds the wait for a POST's body: a client trickling it holds a connection.
    """
    r = _Routes(engine, body_timeout_s)
    app.router.add_get("/health", r.health)
    app.router.add_get("/streaming/status", r.status)
    app.router.add_post("/streaming/start", r.start)
    app.router.add_post("/streaming/stop", r.stop)
    app.router.add_get("/instruments", r.instruments)
    app.router.add_get("/candles/{instrument:.+}/{timeframe}", r.candles)
    app.router.add_get("/switches/{instrument:.+}", r.switches)
    app.router.add_get("/trades/{instrument:.+}", r.trades)
    app.router.add_get("/book/{instrument:.+}", r.book)


def _json_row(c: Candle) -> schema.CandleRow:
    """``[open_time_ms, o, h, l, c, volume, trades, state]``, prices and volume without float noise
    (:func:`deltafeed.fmt.clean`, as in ``deltafeed candles --format json``)."""
    state = cast("schema.StateName", c.state)
    return (c.open_time, clean(c.open), clean(c.high), clean(c.low), clean(c.close), clean(c.volume), c.trades, state)
