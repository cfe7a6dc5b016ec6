"""Binance spot market data codec: builds requests and decodes frames and REST bodies, without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
Binance's ``web-socket-streams.md`` and ``rest-api.md``; see ../shared/PROTOCOLS.md section 1.
"""

from __future__ import annotations

import operator
import sys
from collections import deque
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec

from deltafeed.model import Candle, Event, ServerShutdown, Trade, VenueCandle, fmt, monday_weeks
from deltafeed.venues.checks import (
    ANY_JSON,
    BAD_FIELD,
    IMPOSSIBLE,
    INF,
    JSON_ERRORS,
    MALFORMED,
    MAX_INT64,
    Skips,
    price_ok,
    size_ok,
)

VENUE = "binance"

#: Market-data-only hosts: no API key, no account endpoints.
DEFAULT_REST_URL = "https://data-api.binance.vision"
DEFAULT_WS_URL = "wss://data-stream.binance.vision:443"

#: Kline intervals Binance serves, among deltafeed's timeframes (its weeks start Monday 00:00 UTC,
#: deltafeed's default). 5s and 15s are rolled up from 1s; 3d and 1M (its 3d grid is not documented,
#: its months have no fixed length) are rolled up from 1d by the engine, like any other timeframe.
NATIVE_INTERVALS = ("1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w")
#: The timeframes Binance's history serves: the native intervals and those rolled up from 1s here.
TIMEFRAMES = (*NATIVE_INTERVALS, "5s", "15s")
#: All intervals Binance accepts on ``/api/v3/klines`` and kline streams, with their length in ms.
INTERVAL_MS = {
    "1s": 1_000, "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000, "1w": 604_800_000,
}  # fmt: skip

KLINES_PAGE = 1000  # max rows per /api/v3/klines request
KLINES_WEIGHT = 2  # request weight of /api/v3/klines since 2023-08-25
WEIGHT_LIMIT_1M = 6000  # REQUEST_WEIGHT per minute per IP
MAX_STREAMS_PER_CONNECTION = 1024


# --- streams and control messages -------------------------------------------------------------


def trade_stream(symbol: str) -> str:
    return f"{symbol.lower()}@trade"


def kline_stream(symbol: str, interval: str) -> str:
    return f"{symbol.lower()}@kline_{interval}"


def streams_for(symbol: str, timeframes: list[str], trades: bool = True) -> list[str]:
    """The streams that feed candles of ``timeframes`` for ``symbol``: trades plus native klines."""
    out = [trade_stream(symbol)] if trades else []
    out += [kline_stream(symbol, tf) for tf in timeframes if tf in NATIVE_INTERVALS and (tf != "1w" or monday_weeks())]
    return out


def combined_url(ws_base: str, streams: list[str]) -> str:
    """URL of a combined-stream connection (payloads wrapped as ``{"stream":…,"data":…}``)."""
    return f"{ws_base.rstrip('/')}/stream?streams={'/'.join(streams)}"


def subscribe(streams: list[str], request_id: int) -> bytes:
    return msgspec.json.encode({"method": "SUBSCRIBE", "params": streams, "id": request_id})


def unsubscribe(streams: list[str], request_id: int) -> bytes:
    return msgspec.json.encode({"method": "UNSUBSCRIBE", "params": streams, "id": request_id})


def list_subscriptions(request_id: int) -> bytes:
    return msgspec.json.encode({"method": "LIST_SUBSCRIPTIONS", "id": request_id})


# --- decoding stream frames ---------------------------------------------------------------------


#: Ids, counts and epoch times: int64, not negative (a larger one could not be stored).
_N = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
#: A kline's first and last trade id: -1 when it has no trade.
_TradeId = Annotated[int, msgspec.Meta(ge=-1, le=MAX_INT64)]


class BinanceTrade(
    Trade,
    tag="trade",
    tag_field="e",
    rename={"symbol": "s", "trade_id": "t", "time_ms": "T", "price": "p", "qty": "q", "buyer_maker": "m"},
    gc=False,
):
    """A ``trade`` payload decoded straight into the model's event: a :class:`Trade` (equal to the
    Trade of the same six fields). The frame makes this and the combined-stream wrapper, nothing
    else, on its way into the candle builder; the event time ``E`` is skipped unread (the trade time
    ``T`` places the trade, and reading one number fewer saves ~3% of the instructions of a trade)."""

    symbol: str
    trade_id: _N
    time_ms: _N
    price: float
    qty: float
    buyer_maker: bool

    def plain(self) -> Trade:
        """The same trade as a plain :class:`Trade`: what consumers are sent (encoded, this one
        would carry Binance's field names)."""
        return Trade(self.symbol, self.trade_id, self.time_ms, self.price, self.qty, self.buyer_maker)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trade):
            return NotImplemented
        return _trade_fields(self) == _trade_fields(other)

    def __ne__(self, other: object) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq


#: A price or quantity that can be: finite and above zero.
_Positive = Annotated[float, msgspec.Meta(gt=0.0, le=sys.float_info.max)]


class SoundTrade(BinanceTrade, tag="trade", tag_field="e", gc=False):
    """A :class:`BinanceTrade` whose price and quantity msgspec has checked (finite, above zero)
    while decoding: the feed's hot path takes these without a comparison of its own. A frame with
    an impossible value fails that decode and goes to :class:`StreamDecoder`, which counts it."""

    price: _Positive
    qty: _Positive


_trade_fields = operator.attrgetter("symbol", "trade_id", "time_ms", "price", "qty", "buyer_maker")


class _K(msgspec.Struct):
    t: _N
    T: _N
    s: str
    i: str
    f: _TradeId
    L: _TradeId
    o: float
    c: float
    h: float
    l: float  # noqa: E741 - Binance's field name
    v: float
    n: _N
    x: bool


class _KlineMsg(msgspec.Struct, tag="kline", tag_field="e"):
    E: _N
    s: str
    k: _K


class _ShutdownMsg(msgspec.Struct, tag="serverShutdown", tag_field="e"):
    E: _N


_Payload = BinanceTrade | _KlineMsg | _ShutdownMsg


class _Combined(msgspec.Struct, gc=False):
    data: _Payload  # the stream's name is not read: the payload names its symbol


class _SoundCombined(msgspec.Struct, gc=False):
    data: SoundTrade | _KlineMsg | _ShutdownMsg


# strict=False lets msgspec read Binance's decimal strings ("0.001") straight into floats.
_combined = msgspec.json.Decoder(_Combined, strict=False)
_raw = msgspec.json.Decoder(_Payload, strict=False)
#: A combined-stream frame to its wrapper (``.data``: a :class:`SoundTrade`, or another payload),
#: raising msgspec's errors for anything else, an impossible price or quantity among them: the
#: feed's hot path, which hands every frame but a sound trade to :meth:`StreamDecoder.decode`.
decode_sound = msgspec.json.Decoder(_SoundCombined, strict=False).decode


class StreamDecoder(Skips):
    """Turns WebSocket text frames into model events; counts and skips what it cannot use.

    ``decode`` returns an event, or None for a frame that carries none (a reply to SUBSCRIBE, an
    unknown event, a malformed frame). It never raises. ``errors`` counts the skipped frames by
    kind: ``malformed`` (not JSON), ``bad_field`` (a trade, kline or shutdown event with a missing,
    mistyped or out-of-range field), ``impossible_value`` (a price that is not finite and above
    zero, a quantity that is not finite and above zero, a volume that is not finite and not
    negative), ``error_reply``,
    ``unknown_event``, ``unknown_frame`` and ``decoder_bug`` (see :mod:`deltafeed.venues.checks`).
    ``last_error`` describes the latest one for the caller's (rate-limited) log.

    An impossible price must be refused here, not downstream: a ``"p":"NaN"`` trade carrying the id
    of the next real trade would otherwise take that id in the candle builder, and the real trade
    would then be dropped as its duplicate.
    """

    def __init__(self) -> None:
        super().__init__()
        self.replies: deque[dict[str, Any]] = deque(maxlen=64)  # latest control replies

    def decode(self, frame: bytes | memoryview | str) -> Event | None:
        try:
            try:
                p = _combined.decode(frame).data
            except JSON_ERRORS:
                pass
            else:
                # A trade, the hot path, in line: what _checked does for it, one call less.
                if type(p) is BinanceTrade and 0.0 < p.price < INF and 0.0 < p.qty < INF:
                    return p
                return self._checked(p, frame)
            try:
                return self._checked(_raw.decode(frame), frame)
            except JSON_ERRORS:
                pass
            self._slow_path(frame)
        except Exception as exc:  # never let a frame end the stream: see checks.DECODER_BUG
            self._bug(exc, frame)
        return None

    def _checked(self, p: _Payload, frame: bytes | memoryview | str) -> Event | None:
        """The event of a typed payload, or None (counted) when a value in it is impossible."""
        if type(p) is BinanceTrade:
            if price_ok(p.price) and 0.0 < p.qty < INF:
                return p
            self._skip(
                IMPOSSIBLE, f"trade {p.trade_id} of {p.symbol[:20]} with price {p.price!r} and quantity {p.qty!r}"
            )
            return None
        if type(p) is _KlineMsg:
            k = p.k
            if price_ok(k.o) and price_ok(k.h) and price_ok(k.l) and price_ok(k.c) and size_ok(k.v):
                return VenueCandle(k.s, k.i, p.E, Candle(k.t, k.o, k.h, k.l, k.c, k.v, k.n, k.x), k.f, k.L)
            self._skip(
                IMPOSSIBLE,
                f"kline {k.i[:8]} {k.t} of {k.s[:20]} with o={k.o!r} h={k.h!r} l={k.l!r} c={k.c!r} v={k.v!r}",
            )
            return None
        assert type(p) is _ShutdownMsg
        return ServerShutdown(p.E)

    def _slow_path(self, frame: bytes | memoryview | str) -> None:
        """Classify a frame the typed decoders rejected: a control reply, or a bad frame."""
        try:
            msg = ANY_JSON.decode(frame)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc})")
            return
        if isinstance(msg, dict):
            if "id" in msg and ("result" in msg or "code" in msg or "error" in msg):
                self.replies.append(msg)
                if "code" in msg or "error" in msg:
                    self._skip("error_reply", f"venue refused a request: {str(msg)[:200]}")
                return
            data = msg.get("data", msg)
            if isinstance(data, dict) and "e" in data:
                e = data["e"]
                if isinstance(e, str) and e in ("trade", "kline", "serverShutdown"):
                    try:  # a number beyond float range (1e400) is read as an infinity here
                        payload = msgspec.convert(data, _Payload, strict=False)
                    except msgspec.ValidationError as exc:
                        self._skip(BAD_FIELD, f"{e} event with a missing, mistyped or out-of-range field ({exc})")
                        return
                    if self._checked(payload, frame) is not None:  # the typed decoders would have taken it
                        self._skip(BAD_FIELD, f"{e} event that decodes only without its wrapper")
                else:
                    self._skip("unknown_event", f"unknown event type {str(e)[:40]!r}")
                return
        self._skip("unknown_frame", f"unrecognised frame {_text(frame)[:80]!r}")


def _text(frame: bytes | memoryview | str) -> str:
    """A frame as text for an error message (undecodable bytes replaced)."""
    return frame if isinstance(frame, str) else bytes(frame[:200]).decode("utf-8", "replace")


# --- REST ---------------------------------------------------------------------------------------


def klines_query(
    symbol: str, interval: str, start_ms: int | None = None, end_ms: int | None = None, limit: int = KLINES_PAGE
) -> str:
    """Path and query of a ``GET /api/v3/klines`` request."""
    params: dict[str, str | int] = {"symbol": symbol.upper(), "interval": interval}
    if start_ms is not None:
        params["startTime"] = start_ms
    if end_ms is not None:
        params["endTime"] = end_ms
    params["limit"] = limit
    return "/api/v3/klines?" + urlencode(params)


class BadAnswer(ValueError):
    """A REST body that is not what the endpoint answers, or holds an impossible value; the history
    client turns it into a :class:`~deltafeed.net.http.VenueError` (the request failed, and is retried)."""


# open time, o, h, l, c, volume, close time, quote volume, trades, taker base, taker quote, ignore
_KlineRow = tuple[_N, float, float, float, float, float, int, float, _N, float, float, str]
_klines = msgspec.json.Decoder(list[_KlineRow], strict=False)


def decode_klines(body: bytes, interval_ms: int, now_ms: int) -> list[Candle]:
    """Decode a klines body; a kline is closed when the venue's ``now_ms`` has passed its end.

    Raises :class:`BadAnswer` for a body that is not a klines list, and for a row with an impossible
    value (a price not finite and above zero, a negative or non-finite volume): a page is taken whole
    or not at all, since a row left out would look like a candle the venue does not have.
    """
    try:
        rows = _klines.decode(body)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Binance klines body ({exc}): {body[:120]!r}") from None
    out = []
    for r in rows:
        o, h, lo, c, v = r[1], r[2], r[3], r[4], r[5]
        if not (price_ok(o) and price_ok(h) and price_ok(lo) and price_ok(c) and size_ok(v)):
            raise BadAnswer(f"kline at {r[0]} has an impossible value: o={o!r} h={h!r} l={lo!r} c={c!r} v={v!r}")
        out.append(Candle(r[0], o, h, lo, c, v, r[8], r[0] + interval_ms <= now_ms))
    return out


class ServerTime(msgspec.Struct):
    serverTime: _N


class ErrorBody(msgspec.Struct):
    code: int
    msg: str


def decode_server_time(body: bytes) -> int:
    """The ``serverTime`` of a ``/api/v3/time`` body; :class:`BadAnswer` for any other body."""
    try:
        return msgspec.json.decode(body, type=ServerTime).serverTime
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Binance time body ({exc}): {body[:120]!r}") from None


def decode_error(body: bytes) -> ErrorBody | None:
    try:
        return msgspec.json.decode(body, type=ErrorBody)
    except JSON_ERRORS:
        return None


class _Symbol(msgspec.Struct):
    symbol: str
    status: str = "TRADING"


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_Symbol] = []


def symbols_from_exchange_info(body: bytes) -> set[str]:
    """Symbols TRADING in an ``/api/v3/exchangeInfo`` body; :class:`BadAnswer` for any other body."""
    try:
        info = msgspec.json.decode(body, type=_ExchangeInfo)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Binance exchangeInfo body ({exc}): {body[:120]!r}") from None
    return {s.symbol for s in info.symbols if s.status == "TRADING"}


# --- encoding (used by the replica) -------------------------------------------------------------


def encode_trade(
    symbol: str, trade_id: int, time_ms: int, price: float, qty: float, buyer_maker: bool, event_ms: int | None = None
) -> bytes:
    """A raw ``trade`` payload as Binance sends it."""
    return b'{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}' % (
        event_ms if event_ms is not None else time_ms,
        symbol.encode(),
        trade_id,
        fmt(price).encode(),
        fmt(qty).encode(),
        time_ms,
        b"true" if buyer_maker else b"false",
    )


def kline_payload(
    symbol: str,
    interval: str,
    event_ms: int,
    c: Candle,
    first_id: int,
    last_id: int,
    quote_volume: float = 0.0,
    taker_base: float = 0.0,
    taker_quote: float = 0.0,
) -> bytes:
    """A raw ``kline`` payload as Binance sends it."""
    close_time = c.open_time + INTERVAL_MS[interval] - 1
    return msgspec.json.encode(
        {
            "e": "kline",
            "E": event_ms,
            "s": symbol,
            "k": {
                "t": c.open_time,
                "T": close_time,
                "s": symbol,
                "i": interval,
                "f": first_id,
                "L": last_id,
                "o": fmt(c.open),
                "c": fmt(c.close),
                "h": fmt(c.high),
                "l": fmt(c.low),
                "v": fmt(c.volume),
                "n": c.trades,
                "x": c.closed,
                "q": fmt(quote_volume),
                "V": fmt(taker_base),
                "Q": fmt(taker_quote),
                "B": "0",
            },
        }
    )


def wrap_combined(stream: str, payload: bytes) -> bytes:
    """Wrap a raw payload for a combined-stream connection."""
    return b'{"stream":"%s","data":%s}' % (stream.encode(), payload)


def kline_row(
    c: Candle, interval_ms: int, quote_volume: float = 0.0, taker_base: float = 0.0, taker_quote: float = 0.0
) -> list[Any]:
    """One row of a ``/api/v3/klines`` body."""
    return [
        c.open_time,
        fmt(c.open),
        fmt(c.high),
        fmt(c.low),
        fmt(c.close),
        fmt(c.volume),
        c.open_time + interval_ms - 1,
        fmt(quote_volume),
        c.trades,
        fmt(taker_base),
        fmt(taker_quote),
        "0",
    ]


def error_body(code: int, msg: str) -> bytes:
    return msgspec.json.encode({"code": code, "msg": msg})
