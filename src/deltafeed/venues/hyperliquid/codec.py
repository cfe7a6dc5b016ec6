"""Hyperliquid market-data codec: builds requests and decodes WebSocket frames and ``/info`` bodies, without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
Hyperliquid's ``api/websocket``, ``websocket/subscriptions`` and ``info-endpoint`` pages; see
../shared/PROTOCOLS-wave2.md section 3.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from deltafeed.model import Candle, VenueCandle
from deltafeed.venues.bookmsg import BookMsg, broken, levels_ok
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

VENUE = "hyperliquid"

DEFAULT_REST_URL = "https://api.hyperliquid.xyz"
DEFAULT_WS_URL = "wss://api.hyperliquid.xyz/ws"
INFO_PATH = "/info"

#: Candle intervals Hyperliquid serves with their length in ms ("1M", a calendar month, is left out).
INTERVAL_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000,
    "2h": 7_200_000, "4h": 14_400_000, "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000,
    "3d": 259_200_000, "1w": 604_800_000,
}  # fmt: skip
#: deltafeed's timeframes that Hyperliquid serves (it has no candle shorter than a minute).
TIMEFRAMES = ("1m", "5m", "15m", "1h", "4h", "1d")

#: "Only the most recent 5000 candles are available" per coin and interval [V info-endpoint].
HISTORY_CANDLES = 5000
#: Candles one ``candleSnapshot`` answers at most (ccxt's fetchOHLCV limit; the docs' 500 cap on
#: time-range answers is unverified for candles, so the client pages by the last open time anyway).
CANDLES_PAGE = 5000
WEIGHT_LIMIT_1M = 1200  # REST weight per minute per IP [V rate-limits]
INFO_WEIGHT = 20  # "All other documented info requests have weight 20"
LIGHT_INFO = ("l2Book", "allMids", "clearinghouseState", "orderStatus", "spotClearinghouseState", "exchangeStatus")
CANDLES_PER_WEIGHT = 60  # candleSnapshot costs one more per 60 candles answered
MAX_SUBSCRIPTIONS = 1000  # per IP
#: Subscriptions one connection carries: Hyperliquid documents none per connection (only 1000 per IP
#: over at most 10 connections, the tighter figure quoted); chosen so 10 connections carry the 1000.
SUBSCRIPTIONS_PER_CONNECTION = 100
IDLE_CLOSE_S = 60.0  # the server closes a connection it has sent nothing on for this long
PING_EVERY_S = 20.0  # what ccxt does; the SDK pings every 50 s
#: The text the server sends first on every new connection (not JSON).
GREETING = b"Websocket connection established."


def candles_weight(n: int) -> int:
    """The weight of a ``candleSnapshot`` that answered ``n`` candles."""
    return INFO_WEIGHT + n // CANDLES_PER_WEIGHT


def info_weight(kind: str) -> int:
    return 2 if kind in LIGHT_INFO else INFO_WEIGHT


# --- requests -----------------------------------------------------------------------------------


def subscribe(kind: str, coin: str, interval: str | None = None, method: str = "subscribe") -> bytes:
    """A ``subscribe`` (or ``unsubscribe``) message: one coin per message, no batching."""
    sub: dict[str, str] = {"type": kind, "coin": coin}
    if interval is not None:
        sub["interval"] = interval
    return msgspec.json.encode({"method": method, "subscription": sub})


PING = b'{"method":"ping"}'


def candles_request(coin: str, interval: str, start_ms: int, end_ms: int) -> bytes:
    req = {"coin": coin, "interval": interval, "startTime": start_ms, "endTime": end_ms}
    return msgspec.json.encode({"type": "candleSnapshot", "req": req})


def info_request(kind: str, **fields: Any) -> bytes:
    return msgspec.json.encode({"type": kind, **fields})


# --- stream frames ------------------------------------------------------------------------------

_N = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]


class _WsTrade(msgspec.Struct):
    coin: str
    side: str
    px: float
    sz: float
    time: _N
    tid: _N
    hash: str = ""


class _WsCandle(msgspec.Struct):
    t: _N
    T: _N
    s: str
    i: str
    o: float
    c: float
    h: float
    l: float  # noqa: E741 - Hyperliquid's field name
    v: float
    n: _N


class _Trades(msgspec.Struct, tag="trades", tag_field="channel"):
    data: list[_WsTrade]


class _CandleMsg(msgspec.Struct, tag="candle", tag_field="channel"):
    data: _WsCandle


class _WsLevel(msgspec.Struct):
    px: float
    sz: float
    n: _N = 0


class _WsBook(msgspec.Struct):
    coin: str
    time: _N
    levels: tuple[list[_WsLevel], list[_WsLevel]]


class _BookFrame(msgspec.Struct, tag="l2Book", tag_field="channel"):
    data: _WsBook


_Frame = _Trades | _CandleMsg | _BookFrame
# strict=False reads Hyperliquid's decimal strings ("68517.0") straight into floats.
_frames = msgspec.json.Decoder(_Frame, strict=False)


class HlTrade(msgspec.Struct, gc=False):
    """A trade as Hyperliquid sends it: ``tid`` is unique across every coin, not a per-coin counter."""

    coin: str
    tid: int
    time_ms: int
    price: float
    qty: float
    side: str  # "B": the aggressor bought, "A": sold


class StreamDecoder(Skips):
    """Turns WebSocket text frames into trades (a list per frame) and venue candles; counts and skips
    what it cannot use, never raises.

    ``decode`` returns a list of :class:`HlTrade` for a ``trades`` frame (impossible ones left out and
    counted), a :class:`VenueCandle` (never closed: Hyperliquid's candle message is the current state
    of a forming candle) for a ``candle`` frame, a :class:`~deltafeed.venues.bookmsg.BookMsg` snapshot
    keyed by its ``time`` for an ``l2Book`` frame (a :func:`~deltafeed.venues.bookmsg.broken` one when
    unusable), or None. Skip kinds: ``malformed``, ``bad_field``,
    ``impossible_value``, ``venue_error`` (an ``error`` channel frame: the venue refused a message;
    ``last_venue_error`` keeps its text), ``unknown_channel``, ``unknown_frame``, ``decoder_bug``.
    Replies that carry nothing (the greeting, ``subscriptionResponse``, ``pong``) are counted in
    ``acks`` by kind.
    """

    def __init__(self) -> None:
        super().__init__()
        self.acks: dict[str, int] = {}
        self.venue_errors: list[str] = []  # the latest error texts (for refused subscriptions)

    def decode(self, frame: bytes | memoryview | str) -> list[HlTrade] | VenueCandle | BookMsg | None:
        try:
            try:
                msg = _frames.decode(frame)
            except JSON_ERRORS:
                return self._slow_path(frame)
            if type(msg) is _Trades:
                return self._trades(msg.data)
            if type(msg) is _BookFrame:
                return self._book(msg.data)
            assert type(msg) is _CandleMsg
            return self._candle(msg.data)
        except Exception as exc:  # never let a frame end the stream: see checks.DECODER_BUG
            self._bug(exc, frame)
        return None

    def _trades(self, rows: list[_WsTrade]) -> list[HlTrade]:
        out = []
        for r in rows:
            if price_ok(r.px) and 0.0 < r.sz < float("inf") and r.side in ("A", "B"):
                out.append(HlTrade(r.coin, r.tid, r.time, r.px, r.sz, r.side))
            else:
                why = f"trade {r.tid} of {r.coin[:20]} with px {r.px!r} sz {r.sz!r} side {r.side[:4]!r}"
                self._skip(IMPOSSIBLE, why)
        return out

    def _candle(self, k: _WsCandle) -> VenueCandle | None:
        iv = INTERVAL_MS.get(k.i)
        if iv is None or k.t % 60_000:
            self._skip(BAD_FIELD, f"candle of unknown interval {k.i[:8]!r} or open time {k.t}")
            return None
        if not (price_ok(k.o) and price_ok(k.h) and price_ok(k.l) and price_ok(k.c) and size_ok(k.v)):
            self._skip(IMPOSSIBLE, f"candle {k.i} {k.t} of {k.s[:20]} o={k.o!r} h={k.h!r} l={k.l!r} c={k.c!r}")
            return None
        return VenueCandle(k.s, k.i, k.t, Candle(k.t, k.o, k.h, k.l, k.c, k.v, k.n, False))

    def _book(self, b: _WsBook) -> BookMsg:
        """An ``l2Book`` frame: always a full snapshot (bids best first, then asks), keyed by ``time``."""
        bids = [(lv.px, lv.sz) for lv in b.levels[0]]
        asks = [(lv.px, lv.sz) for lv in b.levels[1]]
        if not (levels_ok(bids) and levels_ok(asks)):
            self._skip(IMPOSSIBLE, f"l2Book of {b.coin[:20]} at {b.time} with an impossible px or sz")
            return broken(b.coin, b.time)
        return BookMsg(b.coin, True, bids, asks, b.time, b.time)

    def _ack(self, kind: str) -> None:
        self.acks[kind] = self.acks.get(kind, 0) + 1

    def _slow_path(self, frame: bytes | memoryview | str) -> BookMsg | None:
        raw = frame.encode() if isinstance(frame, str) else bytes(frame)
        if raw == GREETING:
            self._ack("greeting")
            return None
        try:
            msg = ANY_JSON.decode(raw)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc}): {raw[:80]!r}")
            return None
        if not isinstance(msg, dict) or not isinstance(msg.get("channel"), str):
            self._skip("unknown_frame", f"unrecognised frame {raw[:80]!r}")
            return None
        ch = msg["channel"]
        if ch == "l2Book":
            data = msg.get("data")
            try:  # 1e400 is an infinity here: the snapshot is refused as impossible
                return self._book(msgspec.convert(data, _WsBook, strict=False))
            except msgspec.ValidationError as exc:
                self._skip(BAD_FIELD, f"l2Book frame with a missing, mistyped or out-of-range field ({exc})")
                coin = data.get("coin") if isinstance(data, dict) else None
                return broken(coin) if isinstance(coin, str) else None
        if ch in ("subscriptionResponse", "pong"):
            self._ack(ch)
        elif ch == "error":
            text = str(msg.get("data"))[:300]
            self.venue_errors = [*self.venue_errors[-15:], text]
            self._skip("venue_error", f"the venue refused a message: {text}")
        elif ch in ("trades", "candle"):
            n = sum(self.errors.values())
            got: object
            try:  # a number beyond float range (1e400) is an infinity here: refused where it stands
                if ch == "trades":
                    got = self._trades(msgspec.convert(msg.get("data"), list[_WsTrade], strict=False))
                else:
                    got = self._candle(msgspec.convert(msg.get("data"), _WsCandle, strict=False))
            except msgspec.ValidationError as exc:
                self._skip(BAD_FIELD, f"{ch} frame with a missing, mistyped or out-of-range field ({exc})")
                return None
            if sum(self.errors.values()) == n:  # the typed decoder should have taken it
                self._skip(BAD_FIELD, f"{ch} frame that decodes only loosely ({got!r:.80})")
        else:
            self._skip("unknown_channel", f"unknown channel {ch[:40]!r}")
        return None


def refused_coin(error_text: str, coins: list[str]) -> str | None:
    """The coin an ``error`` frame's text names (e.g. a subscription refused for it), if any."""
    for c in coins:
        if f'"coin":"{c}"' in error_text or f"'coin': '{c}'" in error_text or f"coin {c}" in error_text:
            return c
    return None


# --- REST ---------------------------------------------------------------------------------------


class BadAnswer(ValueError):
    """An ``/info`` body that is not what the request answers, or holds an impossible value; the
    history client turns it into a :class:`~deltafeed.net.http.VenueError` (retried later)."""


class _RestCandle(msgspec.Struct):
    t: _N
    T: _N
    s: str
    i: str
    o: float
    c: float
    h: float
    l: float  # noqa: E741
    v: float
    n: _N


_candles = msgspec.json.Decoder(list[_RestCandle], strict=False)


def decode_candles(body: bytes, interval_ms: int, now_ms: int) -> list[Candle]:
    """A ``candleSnapshot`` body (oldest first) as candles; closed when the venue's ``now_ms`` is past
    the end. :class:`BadAnswer` for another body or an impossible value (a page is taken whole)."""
    try:
        rows = _candles.decode(body)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Hyperliquid candleSnapshot body ({exc}): {body[:120]!r}") from None
    out = []
    for r in rows:
        if not (price_ok(r.o) and price_ok(r.h) and price_ok(r.l) and price_ok(r.c) and size_ok(r.v)):
            raise BadAnswer(f"candle at {r.t} has an impossible value: o={r.o!r} h={r.h!r} l={r.l!r} c={r.c!r}")
        if r.t % interval_ms:
            raise BadAnswer(f"candle at {r.t} is not on the {interval_ms} ms grid")
        out.append(Candle(r.t, r.o, r.h, r.l, r.c, r.v, r.n, r.t + interval_ms <= now_ms))
    return out


class _Asset(msgspec.Struct):
    name: str
    szDecimals: int = 0
    isDelisted: bool = False


class _Meta(msgspec.Struct):
    universe: list[_Asset]


def coins_from_meta(body: bytes) -> set[str]:
    """Perp coins listed (and not delisted) in a ``meta`` body; :class:`BadAnswer` for any other body."""
    try:
        meta = msgspec.json.decode(body, type=_Meta)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Hyperliquid meta body ({exc}): {body[:120]!r}") from None
    return {a.name for a in meta.universe if not a.isDelisted}


class _RecentTrade(msgspec.Struct):
    time: _N


def last_trade_ms(body: bytes) -> int | None:
    """The newest trade time of a ``recentTrades`` body (None when it lists none)."""
    try:
        rows = msgspec.json.decode(body, type=list[_RecentTrade])
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Hyperliquid recentTrades body ({exc}): {body[:120]!r}") from None
    return max((r.time for r in rows), default=None)


# --- encoding (used by the replica) -------------------------------------------------------------


def num(x: float) -> str:
    """A price or size as Hyperliquid writes it: shortest decimal text with at least one decimal
    ("68517.0", "0.005"); the replica's tape and wire share it."""
    text = f"{x:.8f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def trade_hash(tid: int) -> str:
    """A stand-in for the L1 transaction hash of a trade (64 hex digits)."""
    return "0x" + f"{(tid * 0x9E3779B97F4A7C15) & (2**256 - 1):064x}"[-64:]


def trade_obj(coin: str, tid: int, time_ms: int, price: float, qty: float, side: str) -> dict[str, Any]:
    return {
        "coin": coin,
        "side": side,
        "px": num(price),
        "sz": num(qty),
        "time": time_ms,
        "hash": trade_hash(tid),
        "tid": tid,
        "users": ["0x" + "0" * 40, "0x" + "0" * 40],
    }


def trades_frame(trades: list[dict[str, Any]]) -> bytes:
    return msgspec.json.encode({"channel": "trades", "data": trades})


def candle_obj(coin: str, interval: str, c: Candle) -> dict[str, Any]:
    return {
        "t": c.open_time,
        "T": c.open_time + INTERVAL_MS[interval] - 1,
        "s": coin,
        "i": interval,
        "o": num(c.open),
        "c": num(c.close),
        "h": num(c.high),
        "l": num(c.low),
        "v": num(c.volume),
        "n": c.trades,
    }


def candle_frame(coin: str, interval: str, c: Candle) -> bytes:
    """A ``candle`` channel frame: one candle object, as the venue sends it (not a list)."""
    return msgspec.json.encode({"channel": "candle", "data": candle_obj(coin, interval, c)})


def error_frame(text: str) -> bytes:
    return msgspec.json.encode({"channel": "error", "data": text})


def subscription_response(method: str, subscription: Any) -> bytes:
    return msgspec.json.encode(
        {"channel": "subscriptionResponse", "data": {"method": method, "subscription": subscription}}
    )


PONG = b'{"channel":"pong"}'


def book_frame(coin: str, time_ms: int, bids: list[tuple[str, str, int]], asks: list[tuple[str, str, int]]) -> bytes:
    """An ``l2Book`` frame: ``levels`` = [bids best first, asks best first] of (px, sz, n)."""

    def side(levels: list[tuple[str, str, int]]) -> bytes:
        return b",".join(b'{"px":"%s","sz":"%s","n":%d}' % (p.encode(), q.encode(), n) for p, q, n in levels)

    return b'{"channel":"l2Book","data":{"coin":"%s","time":%d,"levels":[[%s],[%s]]}}' % (
        coin.encode(),
        time_ms,
        side(bids),
        side(asks),
    )
