"""Coinbase Advanced Trade market-data codec: subscribe messages, WebSocket frames and REST bodies, without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
Coinbase's ``websocket-channels`` and ``get-public-product-candles`` pages; see
../shared/PROTOCOLS-wave2.md section 1.
"""

from __future__ import annotations

import time as _time
from collections.abc import Iterable
from typing import Annotated, Any

import msgspec

from deltafeed.model import Candle, Trade, fmt
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
from deltafeed.venues.rfc3339 import iso_ms, iso_us, us_iso

VENUE = "coinbase"

#: Public market data: no JWT needed (PROTOCOLS-wave2.md 1.1, 1.4).
DEFAULT_REST_URL = "https://api.coinbase.com"
DEFAULT_WS_URL = "wss://advanced-trade-ws.coinbase.com"

MARKET = "/api/v3/brokerage/market"
TIME_PATH = "/api/v3/brokerage/time"
PRODUCTS_PATH = MARKET + "/products"

#: REST candle granularities, by their length in seconds (every value the venue accepts).
GRANULARITY_S = {
    "ONE_MINUTE": 60, "FIVE_MINUTE": 300, "FIFTEEN_MINUTE": 900, "THIRTY_MINUTE": 1800, "ONE_HOUR": 3600,
    "TWO_HOUR": 7200, "FOUR_HOUR": 14400, "SIX_HOUR": 21600, "ONE_DAY": 86400,
}  # fmt: skip
#: deltafeed timeframes the REST candles serve, and the granularity of each.
GRANULARITY = {"1m": "ONE_MINUTE", "5m": "FIVE_MINUTE", "15m": "FIFTEEN_MINUTE", "1h": "ONE_HOUR",
               "4h": "FOUR_HOUR", "1d": "ONE_DAY"}  # fmt: skip
#: Candles asked for in one request: the venue rejects a span of 350 or more (and reports differ on
#: 349); ccxt uses 300 too.
CANDLES_PAGE = 300
#: The span (in candles) past which the venue answers 400 instead of truncating.
#: Product-channel subscriptions one connection carries (heartbeats aside). Coinbase documents no
#: cap; this one is chosen (docs/scaling.md), and the replica refuses past it.
SUBSCRIPTIONS_PER_CONNECTION = 100
MAX_SPAN = 349
#: Public REST requests per second per IP (the Exchange API's documented figure; Advanced Trade's
#: public one is [UNVERIFIED]), and its burst.
REQUESTS_PER_S = 10
BURST = 15

CHANNELS = ("heartbeats", "candles", "market_trades", "ticker", "ticker_batch", "level2", "status")


# --- control messages -----------------------------------------------------------------------------


def subscribe(channel: str, product_ids: Iterable[str] = ()) -> bytes:
    """One channel per message, as the venue requires; ``heartbeats`` takes no products."""
    msg: dict[str, Any] = {"type": "subscribe", "channel": channel}
    ids = list(product_ids)
    if ids:
        msg["product_ids"] = ids
    return msgspec.json.encode(msg)


def unsubscribe(channel: str, product_ids: Iterable[str] = ()) -> bytes:
    msg: dict[str, Any] = {"type": "unsubscribe", "channel": channel}
    ids = list(product_ids)
    if ids:
        msg["product_ids"] = ids
    return msgspec.json.encode(msg)


# --- times -----------------------------------------------------------------------------------------


def ms_iso(ms: int, digits: int = 3) -> str:
    """``2019-08-14T20:42:27.265Z`` for epoch ms (``digits`` of fraction, padded with zeros)."""
    sec, frac = divmod(ms, 1000)
    head = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(sec))
    return f"{head}.{(f'{frac:03d}' + '0' * digits)[:digits]}Z"


# --- decoding stream frames -----------------------------------------------------------------------

_N = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]


class _Envelope(msgspec.Struct):
    channel: str
    timestamp: str
    sequence_num: _N
    events: list[msgspec.Raw] = []
    client_id: str = ""


class _TradeItem(msgspec.Struct):
    trade_id: str
    product_id: str
    price: str  # decimal strings, read with float(): "1e400" is then an infinity, refused as impossible
    size: str
    side: str
    time: str


class _TradesEvent(msgspec.Struct):
    trades: list[_TradeItem]
    type: str = "update"


class _CandleItem(msgspec.Struct):
    start: str
    high: float
    low: float
    open: float
    close: float
    volume: float
    product_id: str


class _CandlesEvent(msgspec.Struct):
    candles: list[_CandleItem]
    type: str = "update"


class _HeartbeatEvent(msgspec.Struct):
    current_time: str = ""
    heartbeat_counter: int | str = 0


class _L2Update(msgspec.Struct):
    side: str
    price_level: float
    new_quantity: float
    event_time: str = ""


class _L2Event(msgspec.Struct):
    type: str
    product_id: str
    updates: list[_L2Update]


class _SubscriptionsEvent(msgspec.Struct):
    subscriptions: dict[str, list[str]] = {}


_envelope = msgspec.json.Decoder(_Envelope)
# strict=False reads Coinbase's decimal strings ("1260.01") straight into floats.
_trades_ev = msgspec.json.Decoder(_TradesEvent, strict=False)
_candles_ev = msgspec.json.Decoder(_CandlesEvent, strict=False)
_heartbeat_ev = msgspec.json.Decoder(_HeartbeatEvent)
_l2_ev = msgspec.json.Decoder(_L2Event, strict=False)
_subs_ev = msgspec.json.Decoder(_SubscriptionsEvent)


class Message(msgspec.Struct):
    """One decoded frame: its channel, the connection's ``seq``, and what it carries.

    ``trades`` are in trade id order (the venue sends each event newest first); ``candles`` are
    ``(product, candle)`` pairs of the 5-minute ``candles`` channel (never ``closed``: the venue
    does not say); ``snapshot`` is True for the first message of a subscription. ``books`` are the
    ``l2_data`` events, one :class:`~deltafeed.venues.bookmsg.BookMsg` each, keyed by the frame's
    ``timestamp`` in microseconds (Coinbase's book carries no sequence of its own)."""

    channel: str
    seq: int
    time_ms: int
    trades: list[Trade] = []
    candles: list[tuple[str, Candle]] = []
    snapshot: bool = False
    subscriptions: dict[str, list[str]] | None = None
    heartbeat: int | None = None
    books: list[BookMsg] = []


class VenueErrorFrame(msgspec.Struct):
    """An ``{"type":"error","message":...}`` frame: the venue refused a request (a subscription)."""

    message: str
    reason: str = ""


class StreamDecoder(Skips):
    """Turns Advanced Trade WebSocket frames into :class:`Message` (or :class:`VenueErrorFrame`);
    counts and skips what it cannot use, never raises.

    Skip kinds: ``malformed`` (not JSON or not an object), ``bad_field`` (a missing, mistyped or out
    of range field: the whole frame is refused, since its sequence number cannot be trusted either),
    ``impossible_value`` (a trade or candle price not finite and above zero, a size not finite and
    above zero, a volume negative: that item alone is skipped and counted, the rest of the frame is
    used), ``error_frame`` (the venue's error message), ``unknown_channel``, ``unknown_frame`` and
    ``decoder_bug``.
    """

    def decode(self, frame: bytes | memoryview | str) -> Message | VenueErrorFrame | None:
        try:
            try:
                env = _envelope.decode(frame)
            except JSON_ERRORS:
                return self._slow_path(frame)
            return self._message(env)
        except Exception as exc:  # never let a frame end the stream: see checks.DECODER_BUG
            self._bug(exc, frame)
        return None

    def _message(self, env: _Envelope) -> Message | None:
        try:
            t = iso_ms(env.timestamp)
        except ValueError as exc:
            self._skip(BAD_FIELD, f"{env.channel[:20]} frame with a bad timestamp ({exc})")
            return None
        ch = env.channel
        try:
            if ch == "market_trades":
                return self._trades(env, t)
            if ch == "candles":
                return self._candles(env, t)
            if ch == "heartbeats":
                counter = None
                for raw in env.events:
                    hb = _heartbeat_ev.decode(raw)
                    counter = int(hb.heartbeat_counter)
                return Message(ch, env.sequence_num, t, heartbeat=counter)
            if ch == "subscriptions":
                subs: dict[str, list[str]] = {}
                for raw in env.events:
                    subs.update(_subs_ev.decode(raw).subscriptions)
                return Message(ch, env.sequence_num, t, subscriptions=subs)
        except (*JSON_ERRORS, ValueError) as exc:
            self._skip(BAD_FIELD, f"{ch[:20]} frame with a missing, mistyped or out-of-range field ({exc})")
            return None
        if ch == "l2_data":
            return self._books(env, t)
        if ch in ("ticker", "ticker_batch", "status"):
            return Message(ch, env.sequence_num, t)  # channels deltafeed does not use: only the sequence counts
        self._skip("unknown_channel", f"unknown channel {ch[:40]!r}")
        return Message("unknown", env.sequence_num, t)  # still a frame of the connection's sequence

    def _trades(self, env: _Envelope, t: int) -> Message:
        out: list[Trade] = []
        snapshot = False
        for raw in env.events:
            ev = _trades_ev.decode(raw)
            snapshot = snapshot or ev.type == "snapshot"
            for x in ev.trades:
                tid = int(x.trade_id)
                if not 0 <= tid <= MAX_INT64:
                    raise ValueError(f"trade id {x.trade_id[:30]!r} out of range")
                ts = iso_ms(x.time)
                if x.side not in ("BUY", "SELL"):
                    raise ValueError(f"trade side {x.side[:20]!r}")
                price, size = float(x.price), float(x.size)
                if not (price_ok(price) and price_ok(size)):
                    self._skip(IMPOSSIBLE, f"trade {tid} of {x.product_id[:20]} with price {price!r} size {size!r}")
                    continue
                # ``side`` is the maker's: a BUY maker means the buyer was the maker.
                out.append(Trade(x.product_id, tid, ts, price, size, x.side == "BUY"))
        out.sort(key=lambda tr: tr.trade_id)
        return Message("market_trades", env.sequence_num, t, trades=out, snapshot=snapshot)

    def _books(self, env: _Envelope, t: int) -> Message:
        """An ``l2_data`` frame: each event one book message. An event that cannot be used is a
        :func:`~deltafeed.venues.bookmsg.broken` message of its product (of "" when unreadable)."""
        key = iso_us(env.timestamp)
        out: list[BookMsg] = []
        for raw in env.events:
            try:
                ev = _l2_ev.decode(raw)
                if ev.type not in ("snapshot", "update") or any(u.side not in ("bid", "offer") for u in ev.updates):
                    raise ValueError(f"l2_data event type {ev.type[:20]!r} or a side not bid/offer")
            except (*JSON_ERRORS, ValueError) as exc:
                self._skip(BAD_FIELD, f"l2_data event with a missing, mistyped or out-of-range field ({exc})")
                try:
                    obj = ANY_JSON.decode(raw)
                except JSON_ERRORS:
                    obj = None  # not even JSON (bad UTF-8 inside the event): no product to name
                product = obj.get("product_id") if isinstance(obj, dict) else None
                # "" when the product cannot be read: every book of the connection is then suspect.
                out.append(broken(product if isinstance(product, str) else "", t))
                continue
            bids = [(u.price_level, u.new_quantity) for u in ev.updates if u.side == "bid"]
            asks = [(u.price_level, u.new_quantity) for u in ev.updates if u.side == "offer"]
            if not (levels_ok(bids) and levels_ok(asks)):
                self._skip(IMPOSSIBLE, f"l2_data event of {ev.product_id[:20]} with an impossible price or size")
                out.append(broken(ev.product_id, t))
                continue
            out.append(BookMsg(ev.product_id, ev.type == "snapshot", bids, asks, key, t))
        return Message("l2_data", env.sequence_num, t, books=out)

    def _candles(self, env: _Envelope, t: int) -> Message:
        out: list[tuple[str, Candle]] = []
        snapshot = False
        for raw in env.events:
            ev = _candles_ev.decode(raw)
            snapshot = snapshot or ev.type == "snapshot"
            for c in ev.candles:
                start = int(c.start)
                if not 0 <= start <= MAX_INT64 // 1000:
                    raise ValueError(f"candle start {c.start[:30]!r} out of range")
                if not (price_ok(c.open) and price_ok(c.high) and price_ok(c.low) and price_ok(c.close)):
                    self._skip(IMPOSSIBLE, f"candle {start} of {c.product_id[:20]} with an impossible price")
                    continue
                if not size_ok(c.volume):
                    self._skip(IMPOSSIBLE, f"candle {start} of {c.product_id[:20]} with volume {c.volume!r}")
                    continue
                out.append((c.product_id, Candle(start * 1000, c.open, c.high, c.low, c.close, c.volume, 0)))
        return Message("candles", env.sequence_num, t, candles=out, snapshot=snapshot)

    def _slow_path(self, frame: bytes | memoryview | str) -> VenueErrorFrame | None:
        """Classify a frame without the envelope: the venue's error message, or a bad frame."""
        try:
            msg = ANY_JSON.decode(frame)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc})")
            return None
        if not isinstance(msg, dict):
            self._skip(MALFORMED, f"not a JSON object: {_text(frame)[:80]!r}")
            return None
        if msg.get("type") == "error":
            text = msg.get("message")
            reason = msg.get("reason", "")
            err = VenueErrorFrame(str(text)[:300], str(reason)[:300])
            self._skip("error_frame", f"the venue refused a request: {err.message} {err.reason}".strip())
            return err
        if "channel" in msg:
            self._skip(BAD_FIELD, f"frame with a bad envelope field: {_text(frame)[:120]!r}")
            return None
        self._skip("unknown_frame", f"unrecognised frame {_text(frame)[:80]!r}")
        return None


def _text(frame: bytes | memoryview | str) -> str:
    return frame if isinstance(frame, str) else bytes(frame[:200]).decode("utf-8", "replace")


# --- REST -----------------------------------------------------------------------------------------


def candles_path(product: str, granularity: str, start_s: int, end_s: int, limit: int | None = None) -> str:
    """Path and query of a public ``GET .../market/products/{id}/candles`` request."""
    q = f"start={start_s}&end={end_s}&granularity={granularity}"
    if limit is not None:
        q += f"&limit={limit}"
    return f"{PRODUCTS_PATH}/{product}/candles?{q}"


class BadAnswer(ValueError):
    """A REST body that is not what the endpoint answers, or holds an impossible value."""


class _RestCandle(msgspec.Struct):
    start: str
    low: float
    high: float
    open: float
    close: float
    volume: float


class _Candles(msgspec.Struct):
    candles: list[_RestCandle]


_rest_candles = msgspec.json.Decoder(_Candles, strict=False)


def decode_candles(body: bytes, granularity_s: int, now_ms: int) -> list[Candle]:
    """A candles body, oldest first (the venue answers newest first); a candle is closed when the
    venue's ``now_ms`` has passed its end; ``trades`` is 0 (the venue gives no count).

    Raises :class:`BadAnswer` for a body that is not a candles body and for a candle with an
    impossible value: a page is taken whole or not at all."""
    try:
        rows = _rest_candles.decode(body).candles
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Coinbase candles body ({exc}): {body[:120]!r}") from None
    out = []
    iv = granularity_s * 1000
    for r in rows:
        try:
            start = int(r.start)
        except ValueError:
            raise BadAnswer(f"candle start {r.start[:30]!r} is not a number") from None
        o, h, lo, c, v = r.open, r.high, r.low, r.close, r.volume
        if not (0 <= start <= MAX_INT64 // 1000) or start % granularity_s:
            raise BadAnswer(f"candle start {start} is not on the {granularity_s} s grid")
        if not (price_ok(o) and price_ok(h) and price_ok(lo) and price_ok(c) and size_ok(v)):
            raise BadAnswer(f"candle at {start} has an impossible value: o={o!r} h={h!r} l={lo!r} c={c!r} v={v!r}")
        t = start * 1000
        out.append(Candle(t, o, h, lo, c, v, 0, t + iv <= now_ms))
    out.sort(key=lambda c: c.open_time)
    return out


class _Time(msgspec.Struct):
    epochMillis: str | int  # the venue's field names; strings on the wire, integers in the SDK's types
    iso: str = ""
    epochSeconds: str | int = ""


def decode_time(body: bytes) -> int:
    """Epoch ms of a ``/api/v3/brokerage/time`` body; :class:`BadAnswer` for any other body."""
    try:
        ms = int(msgspec.json.decode(body, type=_Time).epochMillis)
    except (*JSON_ERRORS, ValueError) as exc:
        raise BadAnswer(f"not a Coinbase time body ({exc}): {body[:120]!r}") from None
    if not 0 <= ms <= MAX_INT64:
        raise BadAnswer(f"time {ms} out of range")
    return ms


class _Product(msgspec.Struct):
    product_id: str
    status: str = "online"
    trading_disabled: bool = False


class _Products(msgspec.Struct):
    products: list[_Product]


def products_from_body(body: bytes) -> set[str]:
    """Product ids that trade, from a ``.../market/products`` body; :class:`BadAnswer` otherwise."""
    try:
        ps = msgspec.json.decode(body, type=_Products).products
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Coinbase products body ({exc}): {body[:120]!r}") from None
    return {p.product_id for p in ps if not p.trading_disabled}


def decode_error(body: bytes) -> str | None:
    """The text of a REST error body (``{"error":..,"error_details":..,"message":..}``), or None."""
    try:
        msg = ANY_JSON.decode(body)
    except JSON_ERRORS:
        return None
    if not isinstance(msg, dict) or "error" not in msg:
        return None
    return str(msg.get("error_details") or msg.get("message") or msg.get("error"))[:300]


# --- encoding (used by the replica) ----------------------------------------------------------------


def envelope(channel: str, seq: int, time_ms: int, events: bytes) -> bytes:
    """A frame of ``channel`` with the connection's ``seq`` around ``events`` (a JSON list)."""
    return b'{"channel":"%s","client_id":"","timestamp":"%s","sequence_num":%d,"events":%s}' % (
        channel.encode(),
        ms_iso(time_ms, 6).encode(),
        seq,
        events,
    )


def envelope_us(channel: str, seq: int, time_us: int, events: bytes) -> bytes:
    """:func:`envelope` with a time in microseconds (``l2_data`` frames: their time is the book's key)."""
    return b'{"channel":"%s","client_id":"","timestamp":"%s","sequence_num":%d,"events":%s}' % (
        channel.encode(),
        us_iso(time_us).encode(),
        seq,
        events,
    )


def l2_event(kind: str, product: str, time_ms: int, bids: list[tuple[str, str]], asks: list[tuple[str, str]]) -> bytes:
    """An ``l2_data`` event (``snapshot`` or ``update``) of levels as decimal text; a snapshot's updates
    carry the epoch as ``event_time``, as the docs' example does."""
    when = b"1970-01-01T00:00:00Z" if kind == "snapshot" else ms_iso(time_ms, 6).encode()
    items = [
        b'{"side":"%s","event_time":"%s","price_level":"%s","new_quantity":"%s"}' % (side, when, p.encode(), q.encode())
        for side, levels in ((b"bid", bids), (b"offer", asks))
        for p, q in levels
    ]
    return b'{"type":"%s","product_id":"%s","updates":[%s]}' % (kind.encode(), product.encode(), b",".join(items))


def trades_event(kind: str, trades: list[tuple[int, str, int, float, float, bool]]) -> bytes:
    """A ``market_trades`` event of ``(trade_id, product, time_ms, price, size, buyer_maker)``,
    newest first as the venue sends them."""
    items = b",".join(
        b'{"trade_id":"%d","product_id":"%s","price":"%s","size":"%s","side":"%s","time":"%s"}'
        % (tid, prod.encode(), fmt(p).encode(), fmt(q).encode(), b"BUY" if m else b"SELL", ms_iso(ts, 6).encode())
        for tid, prod, ts, p, q, m in reversed(trades)
    )
    return b'{"type":"%s","trades":[%s]}' % (kind.encode(), items)


def candles_event(kind: str, product: str, candles: list[Candle]) -> bytes:
    items = b",".join(
        b'{"start":"%d","high":"%s","low":"%s","open":"%s","close":"%s","volume":"%s","product_id":"%s"}'
        % (
            c.open_time // 1000,
            fmt(c.high).encode(),
            fmt(c.low).encode(),
            fmt(c.open).encode(),
            fmt(c.close).encode(),
            fmt(c.volume).encode(),
            product.encode(),
        )
        for c in candles
    )
    return b'{"type":"%s","candles":[%s]}' % (kind.encode(), items)


def heartbeat_event(time_ms: int, counter: int) -> bytes:
    sec, frac = divmod(time_ms, 1000)
    head = _time.strftime("%Y-%m-%d %H:%M:%S", _time.gmtime(sec))
    return b'{"current_time":"%s.%03d000000 +0000 UTC m=+%d.000000001","heartbeat_counter":%d}' % (
        head.encode(),
        frac,
        counter,
        counter,
    )


def subscriptions_event(subs: dict[str, list[str]]) -> bytes:
    return msgspec.json.encode({"subscriptions": subs})


def error_frame(message: str) -> bytes:
    return msgspec.json.encode({"type": "error", "message": message})


def candle_row(c: Candle) -> dict[str, str]:
    """One candle of a REST candles body."""
    return {
        "start": str(c.open_time // 1000),
        "low": fmt(c.low),
        "high": fmt(c.high),
        "open": fmt(c.open),
        "close": fmt(c.close),
        "volume": fmt(c.volume),
    }


def error_body(error: str, details: str) -> bytes:
    """A REST error body as the venue writes it."""
    return msgspec.json.encode({"error": error, "error_details": details, "message": details})
