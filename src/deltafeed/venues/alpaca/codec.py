"""Alpaca market-data codec: stream frames (JSON and msgpack), control messages and REST bars, without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
Alpaca's ``streaming-market-data``, ``real-time-stock-pricing-data`` and historical bars pages; see
../shared/PROTOCOLS-wave2.md section 6.

A frame is a JSON (or msgpack) array of messages, each tagged by ``T``: ``t`` trade, ``q`` quote,
``b`` minute bar, ``u`` updated (late-trade corrected) minute bar, ``d`` daily bar, and the control
messages ``success``, ``subscription`` and ``error``. In msgpack the times ``t`` are msgpack Timestamp
extensions (type -1), in JSON RFC 3339 strings with up to nanoseconds.
"""

from __future__ import annotations

import calendar
import datetime as dt
import time as _time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from deltafeed.model import Candle, Quote, Timeframe, Trade
from deltafeed.venues.checks import (
    ANY_JSON,
    BAD_FIELD,
    IMPOSSIBLE,
    JSON_ERRORS,
    MALFORMED,
    MAX_INT64,
    Skips,
    price_ok,
    size_ok,
)
from deltafeed.venues.rfc3339 import iso_ms

VENUE = "alpaca"

DEFAULT_REST_URL = "https://data.alpaca.markets"
DEFAULT_WS_URL = "wss://stream.data.alpaca.markets"
#: Stock streams by feed (``v2/iex`` is the free plan's), and the crypto stream.
STOCK_FEEDS = ("iex", "sip", "delayed_sip", "test")
CRYPTO_STREAM_PATH = "/v1beta3/crypto/us"
STOCK_BARS_PATH = "/v2/stocks/bars"
CRYPTO_BARS_PATH = "/v1beta3/crypto/us/bars"
#: Historical quotes, multi-symbol (what alpaca-py's ``get_stock_quotes``/``get_crypto_quotes`` ask):
#: ``symbols``, ``start``, ``end``, ``limit`` (up to 10 000 over all symbols), ``page_token``.
STOCK_QUOTES_PATH = "/v2/stocks/quotes"
CRYPTO_QUOTES_PATH = "/v1beta3/crypto/us/quotes"

#: Historical API calls per minute on the free (Basic) plan; Algo Trader Plus has 10 000.
REQUESTS_PER_MIN = 200
#: The largest ``limit`` of a bars request (the total over every symbol of a multi-symbol one).
PAGE_LIMIT = 10_000
#: The day of a stock's daily bar (REST ``1Day`` and the stream's ``d``): midnight to midnight New
#: York time, extended hours included ("The daily bars' starting timestamp is midnight in New York",
#: forum.alpaca.markets/t/15637), so 04:00Z in summer and 05:00Z in winter.
STOCK_DAY = "1d-new_york"
#: The day of a crypto daily bar: the UTC day since Alpaca's change of July 2025 (it was midnight
#: Chicago time before; see docs/venues/alpaca.md).
CRYPTO_DAY = "1d"
#: deltafeed timeframes and Alpaca's names for them; a daily bar is served for the kind whose day
#: it is (:func:`serves`).
TIMEFRAME = {"1m": "1Min", "5m": "5Min", "15m": "15Min", "1h": "1Hour", STOCK_DAY: "1Day", CRYPTO_DAY: "1Day"}
#: Alpaca's accepted spellings of those, for the replica: ``1Min``/``1T``, ``1Hour``/``1H``, ``1Day``/``1D``.
TIMEFRAME_MS = {"Min": 60_000, "T": 60_000, "Hour": 3_600_000, "H": 3_600_000, "Day": 86_400_000, "D": 86_400_000}
#: A minute bar can still change until its "updated bar" goes out, after the half-minute mark past
#: the next minute mark ("Updated bars are emitted after each half-minute mark if a late trade
#: arrived after the previous minute mark"): a bar ending at E is settled at E + 30 s. The
#: margin covers the bar's delivery.
UPDATE_AFTER_MS = 30_000
SETTLE_MS = UPDATE_AFTER_MS + 5_000

#: The documented error codes of the stream, and what each means for a client.
ERRORS = {
    400: "invalid syntax",
    401: "not authenticated",
    402: "auth failed",
    403: "already authenticated",
    404: "auth timeout",
    405: "symbol limit exceeded",
    406: "connection limit exceeded",
    407: "slow client",
    409: "insufficient subscription",
    410: "invalid subscribe action for this feed",
    500: "internal error",
}
#: Errors that end the session for good: retrying at once cannot help (wrong key, a second
#: connection of the same account, a plan without the feed).
FATAL_ERRORS = (402, 404, 406, 409)


def is_crypto(symbol: str) -> bool:
    """Alpaca writes crypto pairs with a slash (``BTC/USD``) and stock tickers without (``AAPL``)."""
    return "/" in symbol


def day_of(symbol: str) -> str:
    """The timeframe of ``symbol``'s daily bars: :data:`STOCK_DAY` or :data:`CRYPTO_DAY`."""
    return CRYPTO_DAY if is_crypto(symbol) else STOCK_DAY


def serves(symbol: str, tf: str) -> bool:
    """Whether Alpaca's bars of ``symbol`` are ``tf`` candles (a daily bar only in the symbol's own day)."""
    return tf in TIMEFRAME and (TIMEFRAME[tf] != "1Day" or tf == day_of(symbol))


def stock_stream_path(feed: str) -> str:
    return f"/v2/{feed}"


# --- control messages -----------------------------------------------------------------------------


def auth(key: str, secret: str, msgpack: bool = False) -> bytes:
    """The ``auth`` action: JSON, or msgpack (a binary frame) on a msgpack connection, as alpaca-py sends it."""
    return _encode({"action": "auth", "key": key, "secret": secret}, msgpack)


def action(name: str, channels: Mapping[str, Iterable[str]], msgpack: bool = False) -> bytes:
    """A ``subscribe`` or ``unsubscribe`` action for ``channels`` (Alpaca's channel names, e.g.
    ``trades``, ``bars``, ``updatedBars``, ``dailyBars``, each with its symbols; an empty one is left
    out). Subscriptions add up: the venue adds these to what the connection has."""
    msg: dict[str, Any] = {"action": name}
    for channel, syms in channels.items():
        lst = list(syms)
        if lst:
            msg[channel] = lst
    return _encode(msg, msgpack)


def _encode(msg: dict[str, Any], msgpack: bool) -> bytes:
    return msgspec.msgpack.encode(msg) if msgpack else msgspec.json.encode(msg)


# --- times -----------------------------------------------------------------------------------------


def ms_iso(ms: int, digits: int = 0) -> str:
    """``2021-02-22T15:51:44Z`` (``digits`` of fraction, e.g. 9 as the stream writes trade times)."""
    sec, frac = divmod(ms, 1000)
    head = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec))
    if digits <= 0:
        return head + "Z"
    return f"{head}.{(f'{frac:03d}' + '0' * digits)[:digits]}Z"


def ms_datetime(ms: int) -> dt.datetime:
    """A UTC datetime (what msgpack encodes as a Timestamp extension)."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).replace(microsecond=(ms % 1000) * 1000)


def parse_time_param(v: str) -> int:
    """Epoch ms of a REST ``start``/``end``: RFC 3339 (any offset) or ``YYYY-MM-DD``; ValueError otherwise."""
    t = dt.datetime.fromisoformat(v.replace(" ", "+"))  # a '+' left unescaped in a query reads as a space
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


# --- decoding stream frames -----------------------------------------------------------------------


class BarEvent(msgspec.Struct):
    """A bar message: ``kind`` ``b`` (minute), ``u`` (updated minute) or ``d`` (daily); ``candle`` is closed
    (its minute is over when the venue sends it) and never final by itself."""

    kind: str
    symbol: str
    candle: Candle
    vwap: float = 0.0


class Control(msgspec.Struct):
    """A control message: ``success`` (``msg`` connected/authenticated), ``subscription`` (``subs``,
    the connection's whole set), or ``error`` (``code`` and ``msg``)."""

    kind: str
    msg: str = ""
    code: int = 0
    subs: dict[str, list[str]] | None = None


_N = msgspec.Meta(ge=0, le=MAX_INT64)


class _T(msgspec.Struct, tag_field="T", tag="t"):
    i: int
    S: str
    p: float
    s: float
    t: str
    tks: str = ""


class _B(msgspec.Struct, tag_field="T", tag="b"):
    S: str
    o: float
    h: float
    l: float  # noqa: E741 - the venue's field name
    c: float
    v: float
    t: str
    n: int = 0
    vw: float = 0.0


class _U(_B, tag="u"):
    pass


class _D(_B, tag="d"):
    pass


class _Q(msgspec.Struct, tag_field="T", tag="q"):
    S: str
    bp: float
    ap: float
    t: str
    bs: float = 0.0
    as_: float = msgspec.field(default=0.0, name="as")


class _Success(msgspec.Struct, tag_field="T", tag="success"):
    msg: str = ""


class _Error(msgspec.Struct, tag_field="T", tag="error"):
    code: int = 0
    msg: str = ""


class _Subscription(msgspec.Struct, tag_field="T", tag="subscription"):
    trades: list[str] = []
    quotes: list[str] = []
    bars: list[str] = []
    updatedBars: list[str] = []
    dailyBars: list[str] = []


_Item = _T | _B | _U | _D | _Q | _Success | _Error | _Subscription
_frame = msgspec.json.Decoder(list[_Item])
_MSGPACK = msgspec.msgpack.Decoder()
SUB_CHANNELS = ("trades", "quotes", "bars", "updatedBars", "dailyBars")
#: Message types deltafeed does not use; passed over without a count.
IGNORED = {"s", "l", "c", "x", "o", "n"}

Event = Trade | Quote | BarEvent | Control


class StreamDecoder(Skips):
    """Turns stream frames (JSON text or msgpack binary) into events; counts and skips what it cannot
    use, never raises.

    Skip kinds: ``malformed`` (not JSON/msgpack, not an array of objects), ``bad_field`` (a message
    with a missing, mistyped or out of range field: that message alone is skipped),
    ``impossible_value`` (a price not finite and above zero, a size or volume negative or not
    finite), ``unknown_message`` (a ``T`` the decoder does not know) and ``decoder_bug``.
    """

    def decode(self, frame: bytes | memoryview | str, binary: bool = False) -> list[Event] | None:
        try:
            if binary:
                return self._items(self._unpack(frame))
            try:
                items = _frame.decode(frame)
            except JSON_ERRORS:
                return self._slow(frame)
            return self._typed(items)
        except Exception as exc:  # never let a frame end the stream: see checks.DECODER_BUG
            self._bug(exc, frame)
        return None

    def _typed(self, items: list[Any]) -> list[Event]:
        out: list[Event] = []
        for m in items:
            ev = self._event(m)
            if ev is not None:
                out.append(ev)
        return out

    def _event(self, m: Any) -> Event | None:
        tm = type(m)
        try:
            if tm is _T:
                if not 0 <= m.i <= MAX_INT64:
                    raise ValueError(f"trade id {m.i} out of range")
                ts = iso_ms(m.t)
                if not (price_ok(m.p) and price_ok(m.s)):
                    self._skip(IMPOSSIBLE, f"trade {m.i} of {m.S[:20]} with price {m.p!r} size {m.s!r}")
                    return None
                return Trade(m.S, m.i, ts, m.p, m.s, m.tks == "S")
            if tm is _Q:
                ts = iso_ms(m.t)
                if not (price_ok(m.bp) and price_ok(m.ap) and size_ok(m.bs) and size_ok(m.as_)):
                    self._skip(IMPOSSIBLE, f"quote {m.t[:30]} of {m.S[:20]} with bid {m.bp!r} ask {m.ap!r}")
                    return None
                return Quote(m.S, ts, m.bp, m.ap, m.bs, m.as_)
            if tm is _B or tm is _U or tm is _D:
                ts = iso_ms(m.t)
                if not (price_ok(m.o) and price_ok(m.h) and price_ok(m.l) and price_ok(m.c)):
                    self._skip(IMPOSSIBLE, f"bar {m.t[:30]} of {m.S[:20]} with an impossible price")
                    return None
                if not size_ok(m.v) or not 0 <= m.n <= MAX_INT64:
                    self._skip(IMPOSSIBLE, f"bar {m.t[:30]} of {m.S[:20]} with volume {m.v!r}, count {m.n!r}")
                    return None
                kind = "b" if tm is _B else "u" if tm is _U else "d"
                return BarEvent(kind, m.S, Candle(ts, m.o, m.h, m.l, m.c, m.v, m.n, True), m.vw)
        except ValueError as exc:
            self._skip(BAD_FIELD, f"message with a bad field ({exc})")
            return None
        if tm is _Success:
            return Control("success", msg=m.msg[:200])
        if tm is _Error:
            return Control("error", msg=m.msg[:300], code=m.code)
        if tm is _Subscription:
            return Control("subscription", subs={ch: list(getattr(m, ch)) for ch in SUB_CHANNELS})
        return None

    def _slow(self, frame: bytes | memoryview | str) -> list[Event] | None:
        """A frame the typed decoder refused: judge each message alone."""
        try:
            doc = ANY_JSON.decode(frame)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc})")
            return None
        return self._items(doc)

    def _unpack(self, frame: bytes | memoryview | str) -> Any:
        if isinstance(frame, str):
            frame = frame.encode()
        try:
            return _MSGPACK.decode(frame)
        except (msgspec.DecodeError, RecursionError) as exc:
            self._skip(MALFORMED, f"not msgpack ({exc})")
            return None

    def _items(self, doc: Any) -> list[Event] | None:
        if doc is None:
            return None
        if not isinstance(doc, list):
            self._skip(MALFORMED, f"not an array of messages: {str(doc)[:80]!r}")
            return None
        out: list[Event] = []
        for m in doc:
            if not isinstance(m, dict):
                self._skip(MALFORMED, f"a message that is not an object: {str(m)[:80]!r}")
                continue
            kind = m.get("T")
            if isinstance(kind, str) and kind in IGNORED:
                continue
            if not isinstance(kind, str) or kind not in ("t", "q", "b", "u", "d", "success", "error", "subscription"):
                self._skip("unknown_message", f"unknown message type {str(kind)[:30]!r}")
                continue
            if isinstance(m.get("t"), dt.datetime):  # msgpack's Timestamp extension
                t = m["t"]
                ms = calendar.timegm(t.utctimetuple()) * 1000 + t.microsecond // 1000
                m = dict(m, t=ms_iso(ms, 3))
            try:
                item = msgspec.convert(m, _Item, strict=False)
            except (msgspec.ValidationError, TypeError) as exc:
                self._skip(BAD_FIELD, f"{kind} message with a missing or mistyped field ({exc})")
                continue
            ev = self._event(item)
            if ev is not None:
                out.append(ev)
        return out


# --- encoding (the replica) ------------------------------------------------------------------------


def trade_msg(
    symbol: str, tid: int, time_ms: int, price: float, size: float, crypto: bool, taker_sells: bool
) -> dict[str, Any]:
    """One trade message (its ``t`` still epoch ms: :func:`encode_frame` writes it per encoding)."""
    if crypto:
        return {
            "T": "t",
            "S": symbol,
            "p": price,
            "s": size,
            "t": time_ms,
            "i": tid,
            "tks": "S" if taker_sells else "B",
        }
    return {"T": "t", "i": tid, "S": symbol, "x": "V", "p": price, "s": size, "t": time_ms, "c": ["@"], "z": "C"}


def quote_msg(symbol: str, time_ms: int, bid: float, ask: float, size: float, crypto: bool) -> dict[str, Any]:
    """One quote message (``t`` as in :func:`trade_msg`); stocks name the exchange and conditions."""
    if crypto:
        return {"T": "q", "S": symbol, "bp": bid, "bs": size, "ap": ask, "as": size, "t": time_ms}
    return {"T": "q", "S": symbol, "bx": "V", "bp": bid, "bs": size, "ax": "V", "ap": ask, "as": size,
            "t": time_ms, "c": ["R"], "z": "C"}  # fmt: skip


def bar_msg(kind: str, symbol: str, c: Candle, vwap: float) -> dict[str, Any]:
    return {"T": kind, "S": symbol, "o": c.open, "h": c.high, "l": c.low, "c": c.close, "v": c.volume,
            "t": c.open_time, "n": c.trades, "vw": vwap}  # fmt: skip


def encode_frame(msgs: list[dict[str, Any]], msgpack: bool) -> bytes:
    """A frame of ``msgs`` whose ``t`` are epoch ms: RFC 3339 strings in JSON (nanosecond digits, as the
    venue writes them), Timestamp extensions in msgpack."""
    out = []
    for m in msgs:
        t = m.get("t")
        if isinstance(t, int):
            m = dict(m, t=ms_datetime(t) if msgpack else ms_iso(t, 9 if m["T"] in ("t", "q") else 0))
        out.append(m)
    return msgspec.msgpack.encode(out) if msgpack else msgspec.json.encode(out)


def control_frame(kind: str, msgpack: bool, **fields: Any) -> bytes:
    msg = {"T": kind, **fields}
    return msgspec.msgpack.encode([msg]) if msgpack else msgspec.json.encode([msg])


def error_frame(code: int, msgpack: bool) -> bytes:
    return control_frame("error", msgpack, code=code, msg=ERRORS.get(code, "error"))


def decode_action(frame: bytes | str, msgpack: bool) -> dict[str, Any] | None:
    """A client's action message (auth, subscribe, unsubscribe), or None when it is not one."""
    try:
        doc = (
            msgspec.msgpack.decode(frame.encode() if isinstance(frame, str) else frame)
            if msgpack
            else ANY_JSON.decode(frame)
        )
    except (msgspec.DecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


# --- REST ------------------------------------------------------------------------------------------


class BadAnswer(ValueError):
    """A REST body that is not what the endpoint answers, or holds an impossible value."""


def bars_path(symbols: Iterable[str], timeframe: str, start_ms: int, end_ms: int | None = None,
              limit: int = PAGE_LIMIT, page_token: str | None = None, feed: str | None = None) -> str:  # fmt: skip
    """Path and query of a multi-symbol bars request (stocks or crypto by the first symbol's kind).
    ``end_ms`` is inclusive, as the venue reads it."""
    syms = list(symbols)
    path = CRYPTO_BARS_PATH if is_crypto(syms[0]) else STOCK_BARS_PATH
    end = [] if end_ms is None else [f"end={ms_iso(end_ms)}"]
    return _history_path(path, syms, [f"timeframe={TIMEFRAME[timeframe]}", f"start={ms_iso(start_ms)}", *end],
                         limit, page_token, feed)  # fmt: skip


def _history_path(path: str, syms: list[str], params: list[str], limit: int, page_token: str | None,
                  feed: str | None) -> str:  # fmt: skip
    """A multi-symbol history request: ``symbols``, then ``params``, ``limit``, the stock ``feed``
    and the page token."""
    q = [f"symbols={quote(','.join(syms), safe=',')}", *params, f"limit={limit}"]
    if feed is not None and not is_crypto(syms[0]):
        q.append(f"feed={feed}")
    if page_token:
        q.append(f"page_token={quote(page_token, safe='')}")
    return f"{path}?{'&'.join(q)}"


class _RestBar(msgspec.Struct):
    t: str
    o: float
    h: float
    l: float  # noqa: E741
    c: float
    v: float
    n: int = 0
    vw: float = 0.0


class _MultiBars(msgspec.Struct):
    bars: dict[str, list[_RestBar]] | None = None
    next_page_token: str | None = None


class _SingleBars(msgspec.Struct):
    bars: list[_RestBar] | None = None
    symbol: str = ""
    next_page_token: str | None = None


_multi = msgspec.json.Decoder(_MultiBars)
_single = msgspec.json.Decoder(_SingleBars)


def decode_bars(body: bytes, grid: Timeframe, settled_before_ms: int) -> tuple[dict[str, list[Candle]], str | None]:
    """A bars body (multi-symbol, or single-symbol under its ``symbol``): candles per symbol, oldest
    first, on ``grid``, and the next page token. A bar is ``closed`` when it has settled: it ended at least
    :data:`SETTLE_MS` before the venue's ``settled_before_ms`` (a late trade can still change it
    until then). :class:`BadAnswer` for anything else: a page is taken whole or not at all."""
    try:
        try:
            m = _multi.decode(body)
            rows, token = dict(m.bars or {}), m.next_page_token
        except msgspec.ValidationError:
            s = _single.decode(body)
            rows, token = {s.symbol: list(s.bars or [])}, s.next_page_token
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not an Alpaca bars body ({exc}): {body[:120]!r}") from None
    out: dict[str, list[Candle]] = {}
    for sym, bars in rows.items():
        cs = []
        for b in bars:
            try:
                t = iso_ms(b.t)
            except ValueError as exc:
                raise BadAnswer(f"bar of {sym[:20]} with a bad time ({exc})") from None
            if not grid.aligned(t):
                raise BadAnswer(f"bar of {sym[:20]} at {b.t[:30]} is not on the {grid.name} grid")
            if not (price_ok(b.o) and price_ok(b.h) and price_ok(b.l) and price_ok(b.c) and size_ok(b.v)) or b.n < 0:
                raise BadAnswer(f"bar of {sym[:20]} at {b.t[:30]} has an impossible value")
            cs.append(Candle(t, b.o, b.h, b.l, b.c, b.v, b.n, grid.next(t) + SETTLE_MS <= settled_before_ms))
        cs.sort(key=lambda c: c.open_time)
        out[sym] = cs
    return out, token


def bars_body(bars: Mapping[str, list[tuple[Candle, float]]], token: str | None, single: str | None = None) -> bytes:
    """A bars body: multi-symbol, or single-symbol for ``single``; bars as ``(candle, vwap)``."""

    def row(c: Candle, vw: float) -> dict[str, Any]:
        return {"t": ms_iso(c.open_time), "o": c.open, "h": c.high, "l": c.low, "c": c.close, "v": c.volume,
                "n": c.trades, "vw": vw}  # fmt: skip

    if single is not None:
        lst = [row(c, vw) for c, vw in bars.get(single, [])]
        return msgspec.json.encode({"bars": lst, "symbol": single, "next_page_token": token})
    return msgspec.json.encode(
        {"bars": {s: [row(c, vw) for c, vw in rows] for s, rows in bars.items()}, "next_page_token": token}
    )


def quotes_path(symbols: Iterable[str], start_ms: int, end_ms: int, limit: int = PAGE_LIMIT,
                page_token: str | None = None, feed: str | None = None) -> str:  # fmt: skip
    """Path and query of a multi-symbol historical quotes request; ``end_ms`` inclusive."""
    syms = list(symbols)
    path = CRYPTO_QUOTES_PATH if is_crypto(syms[0]) else STOCK_QUOTES_PATH
    return _history_path(path, syms, [f"start={ms_iso(start_ms, 3)}", f"end={ms_iso(end_ms, 3)}"], limit,
                         page_token, feed)  # fmt: skip


class _RestQuote(msgspec.Struct):
    t: str
    bp: float
    ap: float
    bs: float = 0.0
    as_: float = msgspec.field(default=0.0, name="as")


class _MultiQuotes(msgspec.Struct):
    quotes: dict[str, list[_RestQuote]] | None = None
    next_page_token: str | None = None


_multi_quotes = msgspec.json.Decoder(_MultiQuotes)


def decode_quotes(body: bytes) -> tuple[dict[str, list[Quote]], str | None]:
    """A historical quotes body: quotes per symbol in the answer's order, and the next page token.
    :class:`BadAnswer` for a body of another shape or a quote with a bad time (a page is taken whole
    or not at all); a quote with an impossible price is kept, for the candle builder to refuse as it
    refuses the stream's."""
    try:
        m = _multi_quotes.decode(body)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not an Alpaca quotes body ({exc}): {body[:120]!r}") from None
    out: dict[str, list[Quote]] = {}
    for sym, rows in (m.quotes or {}).items():
        try:
            out[sym] = [Quote(sym, iso_ms(r.t), r.bp, r.ap, r.bs, r.as_) for r in rows]
        except ValueError as exc:
            raise BadAnswer(f"quote of {sym[:20]} with a bad time ({exc})") from None
    return out, m.next_page_token


def quotes_body(quotes: Mapping[str, list[dict[str, Any]]], token: str | None) -> bytes:
    """A historical quotes body from quote messages (:func:`quote_msg`, ``t`` in epoch ms)."""
    rows = {s: [{k: (ms_iso(v, 9) if k == "t" else v) for k, v in q.items() if k not in ("T", "S")} for q in qs]
            for s, qs in quotes.items()}  # fmt: skip
    return msgspec.json.encode({"quotes": rows, "next_page_token": token})


def error_body(message: str, code: int | None = None) -> bytes:
    """A REST error body as the venue writes it (``{"code":..,"message":..}``)."""
    return msgspec.json.encode({"code": code, "message": message} if code is not None else {"message": message})


def decode_error(body: bytes) -> str | None:
    """The text of a REST error body, or None."""
    try:
        msg = ANY_JSON.decode(body)
    except JSON_ERRORS:
        return None
    if not isinstance(msg, dict) or "message" not in msg:
        return None
    return str(msg["message"])[:300]
