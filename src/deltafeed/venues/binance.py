"""Binance spot market data codec: builds requests and decodes frames and REST bodies, without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
Binance's ``web-socket-streams.md`` and ``rest-api.md``; see ../shared/PROTOCOLS.md section 1.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any
from urllib.parse import urlencode

import msgspec

from deltafeed.model import Candle, Event, ServerShutdown, Trade, VenueCandle

VENUE = "binance"

#: Market-data-only hosts: no API key, no account endpoints.
DEFAULT_REST_URL = "https://data-api.binance.vision"
DEFAULT_WS_URL = "wss://data-stream.binance.vision:443"

#: Kline intervals Binance serves, among deltafeed's timeframes. 5s and 15s are rolled up from 1s.
NATIVE_INTERVALS = ("1s", "1m", "5m", "15m", "1h", "4h", "1d")
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
    out += [kline_stream(symbol, tf) for tf in timeframes if tf in NATIVE_INTERVALS]
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


class _TradeMsg(msgspec.Struct, tag="trade", tag_field="e"):
    E: int
    s: str
    t: int
    p: float
    q: float
    T: int
    m: bool


class _K(msgspec.Struct):
    t: int
    T: int
    s: str
    i: str
    f: int
    L: int
    o: float
    c: float
    h: float
    l: float  # noqa: E741 - Binance's field name
    v: float
    n: int
    x: bool


class _KlineMsg(msgspec.Struct, tag="kline", tag_field="e"):
    E: int
    s: str
    k: _K


class _ShutdownMsg(msgspec.Struct, tag="serverShutdown", tag_field="e"):
    E: int


_Payload = _TradeMsg | _KlineMsg | _ShutdownMsg


class _Combined(msgspec.Struct):
    stream: str
    data: _Payload


# strict=False lets msgspec read Binance's decimal strings ("0.001") straight into floats.
_combined = msgspec.json.Decoder(_Combined, strict=False)
_raw = msgspec.json.Decoder(_Payload, strict=False)
_any = msgspec.json.Decoder()


def _event(p: _TradeMsg | _KlineMsg | _ShutdownMsg) -> Event:
    if type(p) is _TradeMsg:
        return Trade(p.s, p.t, p.T, p.p, p.q, p.m)
    if type(p) is _KlineMsg:
        k = p.k
        candle = Candle(k.t, k.o, k.h, k.l, k.c, k.v, k.n, k.x)
        return VenueCandle(k.s, k.i, p.E, candle, k.f, k.L)
    assert type(p) is _ShutdownMsg
    return ServerShutdown(p.E)


class StreamDecoder:
    """Turns WebSocket text frames into model events; counts and skips what it cannot use.

    ``decode`` returns an event, or None for a frame that carries none (a reply to SUBSCRIBE, an
    unknown event, a malformed frame). ``errors`` counts the skipped frames by kind, and
    ``last_error`` describes the latest one for the caller's (rate-limited) log.
    """

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.replies: deque[dict[str, Any]] = deque(maxlen=64)  # latest control replies
        self.last_error = ""

    def decode(self, frame: bytes | memoryview | str) -> Event | None:
        try:
            return _event(_combined.decode(frame).data)
        except msgspec.DecodeError:
            pass
        try:
            return _event(_raw.decode(frame))
        except msgspec.DecodeError:
            pass
        self._slow_path(frame)
        return None

    def _slow_path(self, frame: bytes | memoryview | str) -> None:
        """Classify a frame the typed decoders rejected: a control reply, or a bad frame."""
        try:
            msg = _any.decode(frame)
        except msgspec.DecodeError as exc:
            self._skip("malformed", f"not JSON ({exc})")
            return
        if isinstance(msg, dict):
            if "id" in msg and ("result" in msg or "code" in msg or "error" in msg):
                self.replies.append(msg)
                if "code" in msg or "error" in msg:
                    self._skip("error_reply", f"venue refused a request: {msg}")
                return
            data = msg.get("data", msg)
            if isinstance(data, dict) and data.get("e") in ("trade", "kline", "serverShutdown"):
                self._skip("bad_field", f"{data.get('e')} event with a missing or non-numeric field")
                return
            if isinstance(data, dict) and "e" in data:
                self._skip("unknown_event", f"unknown event type {data.get('e')!r}")
                return
        self._skip("unknown_frame", f"unrecognised frame {str(frame)[:80]!r}")

    def _skip(self, kind: str, why: str) -> None:
        self.errors[kind] += 1
        self.last_error = why


# --- REST ---------------------------------------------------------------------------------------


def klines_query(symbol: str, interval: str, start_ms: int | None = None,
                 end_ms: int | None = None, limit: int = KLINES_PAGE) -> str:
    """Path and query of a ``GET /api/v3/klines`` request."""
    params: dict[str, str | int] = {"symbol": symbol.upper(), "interval": interval}
    if start_ms is not None:
        params["startTime"] = start_ms
    if end_ms is not None:
        params["endTime"] = end_ms
    params["limit"] = limit
    return "/api/v3/klines?" + urlencode(params)


# open time, o, h, l, c, volume, close time, quote volume, trades, taker base, taker quote, ignore
_KlineRow = tuple[int, float, float, float, float, float, int, float, int, float, float, str]
_klines = msgspec.json.Decoder(list[_KlineRow], strict=False)


def decode_klines(body: bytes, interval_ms: int, now_ms: int) -> list[Candle]:
    """Decode a klines body; a kline is closed when the venue's ``now_ms`` has passed its end."""
    return [
        Candle(r[0], r[1], r[2], r[3], r[4], r[5], r[8], r[0] + interval_ms <= now_ms)
        for r in _klines.decode(body)
    ]


class ServerTime(msgspec.Struct):
    serverTime: int


class ErrorBody(msgspec.Struct):
    code: int
    msg: str


def decode_server_time(body: bytes) -> int:
    return msgspec.json.decode(body, type=ServerTime).serverTime


def decode_error(body: bytes) -> ErrorBody | None:
    try:
        return msgspec.json.decode(body, type=ErrorBody)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def symbols_from_exchange_info(body: bytes) -> set[str]:
    info = msgspec.json.decode(body)
    return {s["symbol"] for s in info.get("symbols", []) if s.get("status", "TRADING") == "TRADING"}


# --- encoding (used by the replica) -------------------------------------------------------------


def fmt(x: float) -> str:
    """Binance's decimal string with 8 places."""
    return f"{x:.8f}"


def encode_trade(symbol: str, trade_id: int, time_ms: int, price: float, qty: float,
                 buyer_maker: bool, event_ms: int | None = None) -> bytes:
    """A raw ``trade`` payload as Binance sends it."""
    return (
        b'{"e":"trade","E":%d,"s":"%s","t":%d,"p":"%s","q":"%s","T":%d,"m":%s,"M":true}'
        % (event_ms if event_ms is not None else time_ms, symbol.encode(), trade_id,
           fmt(price).encode(), fmt(qty).encode(), time_ms, b"true" if buyer_maker else b"false")
    )


def kline_payload(symbol: str, interval: str, event_ms: int, c: Candle, first_id: int,
                  last_id: int, quote_volume: float = 0.0, taker_base: float = 0.0,
                  taker_quote: float = 0.0) -> bytes:
    """A raw ``kline`` payload as Binance sends it."""
    close_time = c.open_time + INTERVAL_MS[interval] - 1
    return msgspec.json.encode({
        "e": "kline", "E": event_ms, "s": symbol,
        "k": {"t": c.open_time, "T": close_time, "s": symbol, "i": interval, "f": first_id, "L": last_id,
              "o": fmt(c.open), "c": fmt(c.close), "h": fmt(c.high), "l": fmt(c.low), "v": fmt(c.volume),
              "n": c.trades, "x": c.closed, "q": fmt(quote_volume), "V": fmt(taker_base),
              "Q": fmt(taker_quote), "B": "0"},
    })


def wrap_combined(stream: str, payload: bytes) -> bytes:
    """Wrap a raw payload for a combined-stream connection."""
    return b'{"stream":"%s","data":%s}' % (stream.encode(), payload)


def kline_row(c: Candle, interval_ms: int, quote_volume: float = 0.0, taker_base: float = 0.0,
              taker_quote: float = 0.0) -> list[Any]:
    """One row of a ``/api/v3/klines`` body."""
    return [c.open_time, fmt(c.open), fmt(c.high), fmt(c.low), fmt(c.close), fmt(c.volume),
            c.open_time + interval_ms - 1, fmt(quote_volume), c.trades, fmt(taker_base),
            fmt(taker_quote), "0"]


def error_body(code: int, msg: str) -> bytes:
    return msgspec.json.encode({"code": code, "msg": msg})
