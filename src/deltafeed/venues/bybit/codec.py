"""Bybit v5 public market-data codec (spot and linear): requests, frames and REST bodies, without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
Bybit's v5 docs (``websocket/public/{trade,kline}.mdx``, ``market/{kline,time,instruments-info}.mdx``);
see ../shared/PROTOCOLS-wave2.md section 2.

Semantics chosen here, and why:

- **Trade ids are strings and not a counter** (UUIDs on linear, large decimals on spot): a decoded
  :class:`~deltafeed.model.Trade` carries ``trade_id`` 0 and the venue's id travels beside it
  (:class:`Trades`), for de-duplication only. The feed numbers trades itself.
- **One message, many trades**: ``publicTrade`` carries up to 1024 trades, ascending; a bad item loses
  that item only (counted), the others are kept.
- **Klines**: ``confirm`` is the candle's ``closed``; their ``trades`` is 0 (Bybit gives no count).
- **Replies** to ``subscribe``/``ping`` are :class:`Reply`, refusals (``"success":false``) included: they
  are well-formed frames, which the feed counts as the venue's errors (``venue_errors`` in its status).
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec

from deltafeed.model import TIMEFRAMES, Candle, Trade, VenueCandle, fmt
from deltafeed.venues.bookmsg import BookMsg, Level, broken, levels_ok
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

VENUE = "bybit"

DEFAULT_REST_URL = "https://api.bybit.com"
DEFAULT_WS_URL = "wss://stream.bybit.com"
#: The categories deltafeed streams; a symbol names one as ``LINEAR:BTCUSDT`` (spot by default).
CATEGORIES = ("spot", "linear")

#: Bybit kline interval -> deltafeed timeframe name (the ones deltafeed has no name for keep Bybit's
#: length in a name of their own, and are ignored by the candle builders).
INTERVALS: dict[str, str] = {
    "1": "1m", "3": "3m", "5": "5m", "15": "15m", "30": "30m", "60": "1h", "120": "2h", "240": "4h",
    "360": "6h", "720": "12h", "D": "1d", "W": "1w", "M": "1M",
}  # fmt: skip
#: deltafeed timeframe -> Bybit interval, for the timeframes both have.
INTERVAL_OF: dict[str, str] = {tf: iv for iv, tf in INTERVALS.items() if tf in TIMEFRAMES}
#: Interval lengths (ms) of the fixed-length intervals.
INTERVAL_MS: dict[str, int] = {
    "1": 60_000, "3": 180_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": 3_600_000,
    "120": 7_200_000, "240": 14_400_000, "360": 21_600_000, "720": 43_200_000, "D": 86_400_000,
    "W": 604_800_000,
}  # fmt: skip

KLINES_PAGE = 1000  # max rows per /v5/market/kline request (default 200)
REQUESTS_PER_WINDOW = 600  # HTTP requests per IP ...
WINDOW_S = 5.0  # ... within this window; beyond: 403 "access too frequent"
SPOT_MAX_ARGS = 10  # args per spot subscribe request
ARGS_CHARS_PER_CONNECTION = 21_000  # "you cannot have length of args array over 21,000 characters"
#: Topics one public connection carries: Bybit documents no count (only the 21,000 characters), so
#: this one is chosen (docs/scaling.md); the replica refuses past either.
TOPICS_PER_CONNECTION = 500
PING_EVERY_S = 20.0  # Bybit recommends a ping every 20 s
MAX_TRADES_PER_MESSAGE = 1024


def parse_symbol(symbol: str, default: str = "spot") -> tuple[str, str]:
    """``BTCUSDT`` -> (``default``, BTCUSDT); ``LINEAR:BTCUSDT`` -> (linear, BTCUSDT); the category in any
    case. ValueError for a category deltafeed does not stream."""
    cat, sep, name = symbol.rpartition(":")
    cat = cat.lower() if sep else default
    if cat not in CATEGORIES:
        raise ValueError(f"Bybit category {cat!r} is not streamed; use {' or '.join(CATEGORIES)} (e.g. linear:BTCUSDT)")
    return cat, name.upper()


def series_symbol(category: str, name: str, default: str = "spot") -> str:
    """The inverse of :func:`parse_symbol`: how deltafeed (and the replica's tape) names the market."""
    return name if category == default else f"{category.upper()}:{name}"


# --- WebSocket requests ----------------------------------------------------------------------------


def ws_path(category: str) -> str:
    return f"/v5/public/{category}"


def trade_topic(name: str) -> str:
    return f"publicTrade.{name}"


def kline_topic(name: str, timeframe: str) -> str:
    return f"kline.{INTERVAL_OF[timeframe]}.{name}"


#: ``orderbook.{depth}`` depths of spot and linear (1 is snapshot-only, re-sent every 3 s unchanged).
BOOK_DEPTHS = (1, 50, 200, 1000)


def book_topic(name: str, depth: int) -> str:
    return f"orderbook.{depth}.{name}"


def subscribe(args: list[str], req_id: str) -> bytes:
    return msgspec.json.encode({"req_id": req_id, "op": "subscribe", "args": args})


def unsubscribe(args: list[str], req_id: str) -> bytes:
    return msgspec.json.encode({"req_id": req_id, "op": "unsubscribe", "args": args})


def ping(req_id: str) -> bytes:
    return msgspec.json.encode({"req_id": req_id, "op": "ping"})


# --- decoding stream frames -------------------------------------------------------------------------

_N = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]


class _TradeItem(msgspec.Struct):
    T: _N
    s: str
    S: str
    v: float
    p: float
    i: str


class _KlineItem(msgspec.Struct):
    start: _N
    end: _N
    interval: str
    open: float
    close: float
    high: float
    low: float
    volume: float
    confirm: bool
    timestamp: _N = 0


class _BookData(msgspec.Struct):
    s: str
    b: list[Level]
    a: list[Level]
    u: _N
    seq: _N


class _BookMsg(msgspec.Struct):
    type: str
    ts: _N
    data: _BookData


class Trades(msgspec.Struct, gc=False):
    """The trades of one ``publicTrade`` message, in the venue's order, with the venue's ids."""

    symbol: str
    ts: int
    trades: list[Trade]
    ids: list[str]


class Reply(msgspec.Struct, gc=False):
    """A reply to ``subscribe``, ``unsubscribe`` or ``ping`` (``success`` False: refused)."""

    op: str
    success: bool
    ret_msg: str
    req_id: str


_any_trade_items = msgspec.json.Decoder(list[Any])


class StreamDecoder(Skips):
    """Turns Bybit public WebSocket frames into :class:`Trades`, lists of venue candles and
    :class:`Reply`, and ``orderbook`` messages into :class:`~deltafeed.venues.bookmsg.BookMsg`
    (``key`` = ``seq``, ``update_id`` = ``u``); never raises. Skip kinds: ``malformed``, ``bad_field``,
    ``impossible_value``, ``unknown_topic``, ``unknown_frame`` and ``decoder_bug``
    (see :mod:`deltafeed.venues.checks`)."""

    def decode(self, frame: bytes | memoryview | str) -> Trades | list[VenueCandle] | Reply | BookMsg | None:
        try:
            return self._decode(frame)
        except Exception as exc:  # never let a frame end the stream: see checks.DECODER_BUG
            self._bug(exc, frame)
        return None

    def _decode(self, frame: bytes | memoryview | str) -> Trades | list[VenueCandle] | Reply | BookMsg | None:
        try:
            msg = ANY_JSON.decode(frame)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc})")
            return None
        if not isinstance(msg, dict):
            self._skip(MALFORMED, f"not a JSON object: {_text(frame)[:80]!r}")
            return None
        topic = msg.get("topic")
        if isinstance(topic, str) and topic.startswith("orderbook."):
            return self._book(topic, msg)
        if isinstance(topic, str):
            data = msg.get("data")
            ts = msg.get("ts", 0)
            if not isinstance(data, list) or not (isinstance(ts, int) and not isinstance(ts, bool)):
                self._skip(BAD_FIELD, f"{topic[:40]} message without a data list or a ts")
                return None
            if topic.startswith("publicTrade."):
                return self._trades(topic[12:], ts, data)
            if topic.startswith("kline."):
                return self._klines(topic, ts, data)
            self._skip("unknown_topic", f"unknown topic {topic[:40]!r}")
            return None
        if "op" in msg and "success" in msg:
            op, ok = msg.get("op"), msg.get("success")
            if not isinstance(op, str) or not isinstance(ok, bool):
                self._skip(BAD_FIELD, f"reply with a mistyped op or success: {_text(frame)[:120]!r}")
                return None
            rid = msg.get("req_id", "")
            return Reply(op, ok, str(msg.get("ret_msg", ""))[:300], rid if isinstance(rid, str) else str(rid))
        if msg.get("op") == "pong":  # option/spread pong shape: nothing to do
            return None
        self._skip("unknown_frame", f"unrecognised frame {_text(frame)[:80]!r}")
        return None

    def _trades(self, symbol: str, ts: int, data: list[Any]) -> Trades | None:
        trades: list[Trade] = []
        ids: list[str] = []
        for raw in data:
            try:
                t = msgspec.convert(raw, _TradeItem, strict=False)
            except msgspec.ValidationError as exc:
                self._skip(BAD_FIELD, f"trade of {symbol[:20]} with a missing, mistyped or out-of-range field ({exc})")
                continue
            if not (price_ok(t.p) and 0.0 < t.v < float("inf")):
                self._skip(IMPOSSIBLE, f"trade {t.i[:40]} of {t.s[:20]} with price {t.p!r} and size {t.v!r}")
                continue
            if t.s != symbol:
                self._skip(BAD_FIELD, f"trade of {t.s[:20]} on the topic of {symbol[:20]}")
                continue
            # S is the taker's side: a taker selling means the buyer was the maker.
            trades.append(Trade(t.s, 0, t.T, t.p, t.v, t.S == "Sell"))
            ids.append(t.i)
        if not trades:
            return None
        return Trades(symbol, ts, trades, ids)

    def _book(self, topic: str, msg: dict[str, Any]) -> BookMsg | None:
        """An ``orderbook`` message: ``key`` is ``seq``, ``update_id`` is ``u``. A message that
        cannot be used is returned :func:`~deltafeed.venues.bookmsg.broken` (counted), since the
        book it changed can no longer be trusted."""
        name = topic.rpartition(".")[2]
        try:
            m = msgspec.convert(msg, _BookMsg, strict=False)
        except msgspec.ValidationError as exc:
            self._skip(BAD_FIELD, f"orderbook message of {name[:20]} with a missing or mistyped field ({exc})")
            return broken(name)
        d = m.data
        if d.s != name or m.type not in ("snapshot", "delta"):
            self._skip(BAD_FIELD, f"orderbook message of {d.s[:20]} ({m.type[:20]}) on the topic {topic[:40]!r}")
            return broken(name)
        if not (levels_ok(d.b) and levels_ok(d.a)):
            self._skip(IMPOSSIBLE, f"orderbook message {d.u} of {name[:20]} with an impossible price or size")
            return broken(name, m.ts)
        return BookMsg(name, m.type == "snapshot", d.b, d.a, d.seq, m.ts, d.u)

    def _klines(self, topic: str, ts: int, data: list[Any]) -> list[VenueCandle] | None:
        parts = topic.split(".")
        if len(parts) != 3 or parts[1] not in INTERVALS:
            self._skip("unknown_topic", f"unknown kline topic {topic[:40]!r}")
            return None
        tf, symbol = INTERVALS[parts[1]], parts[2]
        out: list[VenueCandle] = []
        for raw in data:
            try:
                k = msgspec.convert(raw, _KlineItem, strict=False)
            except msgspec.ValidationError as exc:
                self._skip(BAD_FIELD, f"kline of {symbol[:20]} with a missing, mistyped or out-of-range field ({exc})")
                continue
            if not (
                price_ok(k.open) and price_ok(k.high) and price_ok(k.low) and price_ok(k.close) and size_ok(k.volume)
            ):
                self._skip(
                    IMPOSSIBLE,
                    f"kline {tf} {k.start} of {symbol[:20]} with o={k.open!r} h={k.high!r} l={k.low!r} "
                    f"c={k.close!r} v={k.volume!r}",
                )
                continue
            c = Candle(k.start, k.open, k.high, k.low, k.close, k.volume, 0, k.confirm)
            out.append(VenueCandle(symbol, tf, ts, c))
        return out or None


def _text(frame: bytes | memoryview | str) -> str:
    """A frame as text for an error message (undecodable bytes replaced)."""
    return frame if isinstance(frame, str) else bytes(frame[:200]).decode("utf-8", "replace")


# --- REST --------------------------------------------------------------------------------------------


class BadAnswer(ValueError):
    """A REST body that is not what the endpoint answers, a ``retCode`` other than 0, or an impossible
    value; the history client turns it into a :class:`~deltafeed.net.http.VenueError`."""


def kline_query(
    category: str,
    name: str,
    interval: str,
    start_ms: int | None = None,
    end_ms: int | None = None,
    limit: int = KLINES_PAGE,
) -> str:
    """Path and query of a ``GET /v5/market/kline`` request (``category`` always sent: Bybit's default is linear)."""
    params: dict[str, str | int] = {"category": category, "symbol": name, "interval": interval}
    if start_ms is not None:
        params["start"] = start_ms
    if end_ms is not None:
        params["end"] = end_ms
    params["limit"] = limit
    return "/v5/market/kline?" + urlencode(params)


def instruments_query(category: str, cursor: str = "") -> str:
    params = {"category": category, "limit": 1000} if category != "spot" else {"category": category}
    if cursor:
        params["cursor"] = cursor
    return "/v5/market/instruments-info?" + urlencode(params)


_KlineRow = tuple[_N, float, float, float, float, float, float]


class _KlineResult(msgspec.Struct):
    rows: list[_KlineRow] = msgspec.field(name="list")
    symbol: str = ""
    category: str = ""


class _Envelope(msgspec.Struct):
    retCode: int
    retMsg: str
    result: msgspec.Raw = msgspec.Raw(b"{}")
    time: int = 0


_envelope = msgspec.json.Decoder(_Envelope)


def _result(body: bytes, what: str) -> tuple[msgspec.Raw, int]:
    try:
        env = _envelope.decode(body)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Bybit {what} body ({exc}): {body[:120]!r}") from None
    if env.retCode != 0:
        raise BadAnswer(f"Bybit refused the {what} request: retCode {env.retCode} {env.retMsg[:200]}")
    return env.result, env.time


def decode_klines(body: bytes, interval_ms: int, now_ms: int) -> list[Candle]:
    """Decode a kline body into candles, oldest first (Bybit sends them newest first); a candle is
    closed when the venue's ``now_ms`` has passed its end. :class:`BadAnswer` for anything else, and
    for a page with an impossible value (taken whole or not at all)."""
    raw, _ = _result(body, "kline")
    try:
        rows = msgspec.json.decode(raw, type=_KlineResult, strict=False).rows
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Bybit kline result ({exc}): {bytes(raw)[:120]!r}") from None
    out = []
    for r in reversed(rows):
        o, h, lo, c, v = r[1], r[2], r[3], r[4], r[5]
        if not (price_ok(o) and price_ok(h) and price_ok(lo) and price_ok(c) and size_ok(v)):
            raise BadAnswer(f"kline at {r[0]} has an impossible value: o={o!r} h={h!r} l={lo!r} c={c!r} v={v!r}")
        out.append(Candle(r[0], o, h, lo, c, v, 0, r[0] + interval_ms <= now_ms))
    for a, b in itertools.pairwise(out):
        if b.open_time <= a.open_time:
            raise BadAnswer(f"kline rows not newest first at {b.open_time}")
    return out


class _Time(msgspec.Struct):
    timeSecond: str
    timeNano: str = ""


def decode_server_time(body: bytes) -> int:
    """The venue's time (ms) of a ``/v5/market/time`` body: the envelope's ``time``, else ``timeNano``."""
    raw, t = _result(body, "time")
    try:
        r = msgspec.json.decode(raw, type=_Time)
        ms = int(r.timeNano) // 1_000_000 if r.timeNano else int(r.timeSecond) * 1000
    except (*JSON_ERRORS, ValueError) as exc:
        raise BadAnswer(f"not a Bybit time result ({exc}): {bytes(raw)[:120]!r}") from None
    return t if t > 0 else ms


class _Instrument(msgspec.Struct):
    symbol: str
    status: str = "Trading"


class _Instruments(msgspec.Struct):
    items: list[_Instrument] = msgspec.field(default_factory=list, name="list")
    nextPageCursor: str = ""


def decode_instruments(body: bytes) -> tuple[set[str], str]:
    """Symbols ``Trading`` in an ``instruments-info`` body, and the next page's cursor ("" at the end)."""
    raw, _ = _result(body, "instruments-info")
    try:
        r = msgspec.json.decode(raw, type=_Instruments)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Bybit instruments-info result ({exc}): {bytes(raw)[:120]!r}") from None
    return {i.symbol for i in r.items if i.status == "Trading"}, r.nextPageCursor


# --- encoding (used by the replica) ------------------------------------------------------------------


def envelope(result: Any, now_ms: int, ret_code: int = 0, ret_msg: str = "OK") -> bytes:
    return msgspec.json.encode(
        {"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {}, "time": now_ms}
    )


def kline_row(c: Candle, turnover: float) -> list[str]:
    """One row of a ``/v5/market/kline`` list: startTime, open, high, low, close, volume, turnover."""
    return [str(c.open_time), fmt(c.open), fmt(c.high), fmt(c.low), fmt(c.close), fmt(c.volume), fmt(turnover)]


def trade_message(name: str, ts: int, items: list[bytes]) -> bytes:
    """A ``publicTrade`` message of already encoded items (see :func:`trade_item`)."""
    return b'{"topic":"publicTrade.%s","type":"snapshot","ts":%d,"data":[%s]}' % (name.encode(), ts, b",".join(items))


def trade_item(
    name: str, trade_id: str, time_ms: int, price: float, qty: float, buyer_maker: bool, seq: int, linear: bool
) -> bytes:
    """One trade of a ``publicTrade`` message as Bybit sends it (``L`` on derivatives only)."""
    side = b"Sell" if buyer_maker else b"Buy"
    tick = b'"L":"%s",' % (b"MinusTick" if buyer_maker else b"PlusTick") if linear else b""
    return b'{"T":%d,"s":"%s","S":"%s","v":"%s","p":"%s",%s"i":"%s","BT":false,"RPI":false,"seq":%d}' % (
        time_ms,
        name.encode(),
        side,
        fmt(qty).encode(),
        fmt(price).encode(),
        tick,
        trade_id.encode(),
        seq,
    )


def kline_message(
    name: str, interval: str, ts: int, c: Candle, interval_ms: int, turnover: float, confirm: bool, last_trade_ms: int
) -> bytes:
    """A ``kline`` message with one candle as Bybit pushes it."""
    return msgspec.json.encode(
        {
            "topic": f"kline.{interval}.{name}",
            "data": [
                {
                    "start": c.open_time,
                    "end": c.open_time + interval_ms - 1,
                    "interval": interval,
                    "open": fmt(c.open),
                    "close": fmt(c.close),
                    "high": fmt(c.high),
                    "low": fmt(c.low),
                    "volume": fmt(c.volume),
                    "turnover": fmt(turnover),
                    "confirm": confirm,
                    "timestamp": last_trade_ms,
                }
            ],
            "ts": ts,
            "type": "snapshot",
        }
    )


def book_message(
    name: str,
    depth: int,
    snapshot: bool,
    ts: int,
    cts: int,
    bids: list[tuple[str, str]],
    asks: list[tuple[str, str]],
    u: int,
    seq: int,
) -> bytes:
    """An ``orderbook.{depth}.{name}`` message as Bybit pushes it (levels as decimal text; a snapshot's
    bids best first, asks best first)."""

    def side(levels: list[tuple[str, str]]) -> bytes:
        return b",".join(b'["%s","%s"]' % (p.encode(), q.encode()) for p, q in levels)

    return (
        b'{"topic":"orderbook.%d.%s","type":"%s","ts":%d,"data":{"s":"%s","b":[%s],"a":[%s],"u":%d,"seq":%d},"cts":%d}'
        % (
            depth,
            name.encode(),
            b"snapshot" if snapshot else b"delta",
            ts,
            name.encode(),
            side(bids),
            side(asks),
            u,
            seq,
            cts,
        )
    )
