"""Kraken spot codec: WebSocket v2 frames and REST (``/0/public``) bodies, built and decoded without I/O.

The same module serves the live client (decoding), the replica (encoding) and tests. Formats follow
docs.kraken.com (``websocket-v2/trade``, ``websocket-v2/ohlc``, ``api-reference/market-data``); see
../shared/PROTOCOLS-wave2.md section 4. WS v2 spells instruments ``BTC/USD``; REST takes the pair's
``altname`` (``XBTUSD``) and answers under its internal name (``XXBTZUSD``): :func:`rest_names` maps one
to the other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import zlib
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec

from deltafeed.model import Candle, Event, Trade, VenueCandle, fmt
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
from deltafeed.venues.rfc3339 import iso_us, us_iso

VENUE = "kraken"

DEFAULT_REST_URL = "https://api.kraken.com"
DEFAULT_WS_URL = "wss://ws.kraken.com/v2"

#: ``ohlc`` / REST OHLC intervals (minutes) among deltafeed's timeframes.
OHLC_INTERVALS = {"1m": 1, "5m": 5, "15m": 15, "1h": 60, "4h": 240, "1d": 1440}
#: Every interval Kraken accepts, in minutes.
ALL_INTERVALS = (1, 5, 15, 30, 60, 240, 1440, 10080, 21600)
OHLC_KEEP = 720  # REST OHLC serves only the most recent 720 entries, whatever ``since`` says
TRADES_PAGE = 1000  # max rows of one /0/public/Trades answer
#: Public REST calls per second Kraken tolerates per IP (not published; ~1/s observed) [UNVERIFIED],
#: and the burst its call counter allows before it answers ``EGeneral:Too many requests``.
#: Subscriptions (pair-channel pairs) one WebSocket connection carries. Kraken documents no cap; this
#: one is chosen (docs/scaling.md), and the replica refuses past it.
SUBSCRIPTIONS_PER_CONNECTION = 200
PUBLIC_RATE_PER_S = 1.0
PUBLIC_BURST = 15
RATE_LIMIT_ERRORS = ("EGeneral:Too many requests", "EAPI:Rate limit exceeded")

#: Asset codes REST still spells the old way (X/Z-prefixed internal pair names, XBT for BTC).
_LEGACY_BASES = {"XBT", "ETH", "LTC", "XRP", "XLM", "ETC", "ZEC", "XMR", "MLN", "REP", "XDG"}
_LEGACY_QUOTES = {"USD", "EUR", "GBP", "JPY", "CAD"}
_OLD_CODES = {"BTC": "XBT", "DOGE": "XDG"}
_NEW_CODES = {v: k for k, v in _OLD_CODES.items()}


def rest_names(symbol: str) -> tuple[str, str]:
    """``BTC/USD`` -> (``XBTUSD``, ``XXBTZUSD``): the REST ``altname`` and the internal pair name."""
    base, _, quote = symbol.partition("/")
    b, q = _OLD_CODES.get(base, base), _OLD_CODES.get(quote, quote)
    alt = b + q
    if b in _LEGACY_BASES and q in _LEGACY_QUOTES:
        return alt, f"X{b}Z{q}"
    return alt, alt


def v2_name(wsname: str) -> str:
    """An AssetPairs ``wsname`` (``XBT/USD``, WS v1's spelling) as WS v2 spells it (``BTC/USD``)."""
    base, _, quote = wsname.partition("/")
    return f"{_NEW_CODES.get(base, base)}/{_NEW_CODES.get(quote, quote)}"


# --- time -------------------------------------------------------------------------------------------


def rfc3339_ms(text: str) -> int:
    """``2023-09-25T07:48:36.925533Z`` -> epoch ms (sub-ms digits dropped); ValueError if not one."""
    head, dot, frac = text.rstrip("Z").partition(".")
    if not text.endswith("Z") or len(head) != 19:
        raise ValueError(f"not an RFC 3339 UTC time: {text[:40]!r}")
    d = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
    if dot and not (frac.isdigit() and len(frac) <= 9):
        raise ValueError(f"bad fraction in {text[:40]!r}")
    return int(d.timestamp()) * 1000 + (int((frac + "000")[:3]) if dot else 0)


def ms_rfc3339(ms: int, digits: int = 6) -> str:
    """Epoch ms as Kraken writes times (``...T07:48:36.925000Z``; ``interval_begin`` has 9 digits)."""
    d = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    return f"{d:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}{'0' * (digits - 3)}Z"


# --- requests --------------------------------------------------------------------------------------


def subscribe(channel: str, symbols: list[str], req_id: int, **params: Any) -> bytes:
    return msgspec.json.encode(
        {"method": "subscribe", "params": {"channel": channel, "symbol": symbols, **params}, "req_id": req_id}
    )


def unsubscribe(channel: str, symbols: list[str], req_id: int, **params: Any) -> bytes:
    return msgspec.json.encode(
        {"method": "unsubscribe", "params": {"channel": channel, "symbol": symbols, **params}, "req_id": req_id}
    )


def ping(req_id: int) -> bytes:
    return b'{"method":"ping","req_id":%d}' % req_id


# --- decoding stream frames --------------------------------------------------------------------------


_N = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]


class _TradeItem(msgspec.Struct):
    symbol: str
    side: str
    price: float
    qty: float
    trade_id: _N
    timestamp: str
    ord_type: str = "limit"


class _TradeMsg(msgspec.Struct, tag="trade", tag_field="channel"):
    type: str
    data: list[_TradeItem]


class _OhlcItem(msgspec.Struct):
    symbol: str
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: _N
    interval_begin: str
    interval: int
    vwap: float = 0.0


class _OhlcMsg(msgspec.Struct, tag="ohlc", tag_field="channel"):
    type: str
    data: list[_OhlcItem]


class _Heartbeat(msgspec.Struct, tag="heartbeat", tag_field="channel"):
    pass


class _Level(msgspec.Struct, array_like=False):
    price: float
    qty: float


class _BookItem(msgspec.Struct):
    symbol: str
    bids: list[_Level]
    asks: list[_Level]
    checksum: Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
    timestamp: str = ""


class _BookMsg(msgspec.Struct, tag="book", tag_field="channel"):
    type: str
    data: list[_BookItem]


_Channel = _TradeMsg | _OhlcMsg | _Heartbeat | _BookMsg
_channel = msgspec.json.Decoder(_Channel)

_MINUTES_TF = {v: k for k, v in OHLC_INTERVALS.items()}


class Refusal(msgspec.Struct):
    """A request the venue refused (``success:false``): its method, symbol (if any) and reason."""

    method: str
    symbol: str | None
    error: str


class StreamDecoder(Skips):
    """Turns WS v2 text frames into model events; counts and skips what it cannot use.

    ``decode`` returns the frame's events (a ``trade`` message batches several trades; an ``ohlc``
    one several candles, given as forming: Kraken's ``ohlc`` says nothing of a candle being closed),
    in order, and never raises. Skipped frames or items are counted in ``errors`` by kind:
    ``malformed``, ``bad_field``, ``impossible_value``, ``venue_error`` (a ``success:false`` answer),
    ``unknown_channel``, ``unknown_frame``, ``decoder_bug``. Refused requests are also kept in
    ``refusals`` (the feed names symbol and reason), and ``venue_errors`` counts them by their
    error text; heartbeats, status updates and acks are counted in ``heartbeats`` / ``acks``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[Refusal] = []
        self.venue_errors: dict[str, int] = {}
        self.heartbeats = 0
        self.acks = 0
        #: The venue's time of its latest answer (``time_out`` of an ack or a pong), ms; 0 before one.
        self.server_ms = 0

    def decode(self, frame: bytes | memoryview | str) -> list[Event | BookMsg]:
        try:
            try:
                msg = _channel.decode(frame)
            except JSON_ERRORS:
                return self._slow_path(frame)
            if type(msg) is _TradeMsg:
                return self._trades(msg)
            if type(msg) is _OhlcMsg:
                return self._ohlc(msg)
            if type(msg) is _BookMsg:
                return self._book(msg)
            self.heartbeats += 1
        except Exception as exc:  # never let a frame end the stream
            self._bug(exc, frame)
        return []

    def _book(self, msg: _BookMsg) -> list[Event | BookMsg]:
        """``book`` items: ``key`` is the item's ``timestamp`` in microseconds (-1 when it has none, as
        a snapshot may), ``checksum`` Kraken's CRC32 of the top 10 levels after the item."""
        out: list[Event | BookMsg] = []
        for d in msg.data:
            bids = [(lv.price, lv.qty) for lv in d.bids]
            asks = [(lv.price, lv.qty) for lv in d.asks]
            try:
                key = iso_us(d.timestamp) if d.timestamp else -1
            except ValueError as exc:
                self._skip(BAD_FIELD, f"book item of {d.symbol[:20]}: {exc}")
                out.append(broken(d.symbol))
                continue
            if msg.type not in ("snapshot", "update"):
                self._skip(BAD_FIELD, f"book message of type {msg.type[:20]!r}")
                out.append(broken(d.symbol))
                continue
            if not (levels_ok(bids) and levels_ok(asks)):
                self._skip(IMPOSSIBLE, f"book item of {d.symbol[:20]} with an impossible price or qty")
                out.append(broken(d.symbol))
                continue
            out.append(BookMsg(d.symbol, msg.type == "snapshot", bids, asks, key, max(key, 0) // 1000, -1, d.checksum))
        return out

    def _trades(self, msg: _TradeMsg) -> list[Event | BookMsg]:
        out: list[Event | BookMsg] = []
        for t in msg.data:
            if not (price_ok(t.price) and 0.0 < t.qty < float("inf")):
                self._skip(IMPOSSIBLE, f"trade {t.trade_id} of {t.symbol[:20]} with price {t.price!r} qty {t.qty!r}")
                continue
            try:
                ms = rfc3339_ms(t.timestamp)
            except ValueError as exc:
                self._skip(BAD_FIELD, str(exc))
                continue
            # ``side`` is the taker's: a taker buy means the buyer was not the maker.
            out.append(Trade(t.symbol, t.trade_id, ms, t.price, t.qty, t.side == "sell"))
        return out

    def _server_time(self, msg: dict[str, Any]) -> None:
        t = msg.get("time_out")
        if isinstance(t, str):
            with contextlib.suppress(ValueError):
                self.server_ms = rfc3339_ms(t)

    def _ohlc(self, msg: _OhlcMsg) -> list[Event | BookMsg]:
        out: list[Event | BookMsg] = []
        for c in msg.data:
            tf = _MINUTES_TF.get(c.interval)
            if tf is None:
                continue  # an interval deltafeed does not keep (30 minutes, a week)
            if not (
                price_ok(c.open) and price_ok(c.high) and price_ok(c.low) and price_ok(c.close) and size_ok(c.volume)
            ):
                self._skip(IMPOSSIBLE, f"ohlc {c.interval_begin[:30]} of {c.symbol[:20]} with an impossible value")
                continue
            try:
                begin = rfc3339_ms(c.interval_begin)
            except ValueError as exc:
                self._skip(BAD_FIELD, str(exc))
                continue
            candle = Candle(begin, c.open, c.high, c.low, c.close, c.volume, c.trades, False)
            out.append(VenueCandle(c.symbol, tf, begin, candle))
        return out

    def _slow_path(self, frame: bytes | memoryview | str) -> list[Event | BookMsg]:
        """Classify a frame the typed decoder refused: an ack, a refusal, another channel, or a bad frame."""
        try:
            msg = ANY_JSON.decode(frame)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc})")
            return []
        if not isinstance(msg, dict):
            self._skip(MALFORMED, "not a JSON object")
            return []
        if "method" in msg and "success" in msg:
            if msg["success"] is True:
                self.acks += 1
                self._server_time(msg)
                return []
            error = str(msg.get("error", "?"))[:200]
            symbol = msg.get("symbol")
            self.refusals.append(Refusal(str(msg["method"])[:40], symbol if isinstance(symbol, str) else None, error))
            if len(self.refusals) > 256:  # nobody reads them (a fuzz run): keep the newest
                del self.refusals[:-16]
            self.venue_errors[error] = self.venue_errors.get(error, 0) + 1
            self._skip("venue_error", f"kraken refused {str(msg['method'])[:40]}: {error}")
            return []
        if msg.get("method") == "pong":
            self.acks += 1
            self._server_time(msg)
            return []
        channel = msg.get("channel")
        if channel in ("status", "instrument"):
            self.acks += 1  # known channels deltafeed does not use
            return []
        if channel in ("trade", "ohlc", "heartbeat", "book"):
            # A number beyond float range (1e400) fails the typed decoder but is read as an infinity
            # here: the item holding it is refused as impossible, the others are kept.
            try:
                m = msgspec.convert(msg, _Channel)
            except msgspec.ValidationError as exc:
                self._skip(BAD_FIELD, f"{channel} message with a missing, mistyped or out-of-range field ({exc})")
                return self._broken_books(msg) if channel == "book" else []
            if type(m) is _TradeMsg:
                return self._trades(m)
            if type(m) is _OhlcMsg:
                return self._ohlc(m)
            if type(m) is _BookMsg:
                return self._book(m)
            self.heartbeats += 1
            return []
        if isinstance(channel, str):
            self._skip("unknown_channel", f"unknown channel {channel[:40]!r}")
            return []
        self._skip("unknown_frame", f"unrecognised frame {str(msg)[:80]!r}")
        return []

    @staticmethod
    def _broken_books(msg: dict[str, Any]) -> list[Event | BookMsg]:
        """The books an unusable ``book`` message names, each :func:`~deltafeed.venues.bookmsg.broken`."""
        data = msg.get("data")
        items = data if isinstance(data, list) else []
        return [broken(d["symbol"]) for d in items if isinstance(d, dict) and isinstance(d.get("symbol"), str)]


# --- REST ------------------------------------------------------------------------------------------


class BadAnswer(ValueError):
    """A REST body that is not what the endpoint answers, or holds an impossible value."""


class KrakenError(Exception):
    """A REST answer whose ``error`` array is not empty (``EQuery:Unknown asset pair``...)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors)[:300])

    @property
    def throttled(self) -> bool:
        return any(e.startswith(RATE_LIMIT_ERRORS) for e in self.errors)


class _Envelope(msgspec.Struct):
    error: list[str] = []
    result: msgspec.Raw = msgspec.Raw(b"")


def _result(body: bytes) -> msgspec.Raw:
    """The ``result`` of a Kraken answer; :class:`KrakenError` for a non-empty ``error`` array."""
    try:
        env = msgspec.json.decode(body, type=_Envelope)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Kraken answer ({exc}): {body[:120]!r}") from None
    if env.error:
        raise KrakenError(env.error)
    if not env.result:
        raise BadAnswer(f"Kraken answer without a result: {body[:120]!r}")
    return env.result


def error_of(body: bytes) -> KrakenError | None:
    """The error array of a (non-200) body, or None."""
    try:
        env = msgspec.json.decode(body, type=_Envelope)
    except JSON_ERRORS:
        return None
    return KrakenError(env.error) if env.error else None


class _Time(msgspec.Struct):
    unixtime: _N


def decode_time(body: bytes) -> int:
    """``/0/public/Time`` -> epoch ms (Kraken gives whole seconds)."""
    try:
        return msgspec.json.decode(_result(body), type=_Time).unixtime * 1000
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Kraken Time result ({exc})") from None


class _Pair(msgspec.Struct):
    altname: str
    wsname: str = ""
    status: str = "online"
    pair_decimals: Annotated[int, msgspec.Meta(ge=0, le=18)] = 0
    lot_decimals: Annotated[int, msgspec.Meta(ge=0, le=18)] = 0


def decode_asset_pairs(body: bytes) -> dict[str, str]:
    """``/0/public/AssetPairs`` -> {WS v2 symbol: REST altname} of the pairs online."""
    try:
        pairs = msgspec.json.decode(_result(body), type=dict[str, _Pair])
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Kraken AssetPairs result ({exc})") from None
    return {v2_name(p.wsname): p.altname for p in pairs.values() if p.wsname and p.status == "online"}


def decode_pair_precisions(body: bytes) -> dict[str, tuple[int, int]]:
    """``/0/public/AssetPairs`` -> {WS v2 symbol: (price decimals, qty decimals)}: the precisions the
    ``book`` checksum writes prices and quantities at (``pair_decimals``, ``lot_decimals``)."""
    try:
        pairs = msgspec.json.decode(_result(body), type=dict[str, _Pair])
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Kraken AssetPairs result ({exc})") from None
    return {v2_name(p.wsname): (p.pair_decimals, p.lot_decimals) for p in pairs.values() if p.wsname}


_OhlcRow = tuple[int, float, float, float, float, float, float, _N]


#: Trades times are JSON numbers with 100 ns digits: read them exactly, not as floats.
_EXACT_JSON = msgspec.json.Decoder(float_hook=Decimal)


def _pair_rows(raw: msgspec.Raw, what: str, decoder: msgspec.json.Decoder[Any] = ANY_JSON) -> tuple[list[Any], Any]:
    try:
        res = decoder.decode(raw)
    except JSON_ERRORS as exc:
        raise BadAnswer(f"not a Kraken {what} result ({exc})") from None
    if not isinstance(res, dict):
        raise BadAnswer(f"not a Kraken {what} result: {bytes(raw)[:120]!r}")
    keys = [k for k in res if k != "last"]
    if len(keys) != 1 or not isinstance(res[keys[0]], list):
        raise BadAnswer(f"a Kraken {what} result holds one pair and 'last', not {keys[:4]}")
    return res[keys[0]], res.get("last")


def decode_ohlc(body: bytes, interval_ms: int, now_ms: int | None = None) -> list[Candle]:
    """``/0/public/OHLC`` rows ``[time s, open, high, low, close, vwap, volume, count]``. A row is
    closed when the venue says it is committed (its time is at most ``last``, "the since of the next
    poll for committed data"), else, without a ``last``, when ``now_ms`` has passed its end.
    :class:`BadAnswer` for a bad body or an impossible value (a page is taken whole or not at all);
    :class:`KrakenError` for errors."""
    rows, last = _pair_rows(_result(body), "OHLC")
    try:
        typed = msgspec.convert(rows, list[_OhlcRow], strict=False)
    except msgspec.ValidationError as exc:
        raise BadAnswer(f"bad OHLC row ({exc})") from None
    committed = last * 1000 if isinstance(last, int) and not isinstance(last, bool) else None
    out = []
    for t, o, h, lo, c, _vwap, v, n in typed:
        if not (price_ok(o) and price_ok(h) and price_ok(lo) and price_ok(c) and size_ok(v)) or t < 0:
            raise BadAnswer(f"OHLC row at {t} has an impossible value: o={o!r} h={h!r} l={lo!r} c={c!r} v={v!r}")
        ms = t * 1000
        closed = ms <= committed if committed is not None else now_ms is not None and ms + interval_ms <= now_ms
        out.append(Candle(ms, o, h, lo, c, v, n, closed))
    return out


def decode_trades(body: bytes) -> tuple[list[Trade], int]:
    """``/0/public/Trades`` rows ``[price, volume, time s, b|s, m|l, misc, trade_id]`` as trades of
    the pair, and ``last`` (ns, the ``since`` of the next page). Rows without a ``trade_id`` (older
    answers have 6 elements) get id -1. :class:`BadAnswer` for a bad body or an impossible value."""
    rows, last = _pair_rows(_result(body), "Trades", _EXACT_JSON)
    try:
        last_ns = int(last)
    except (TypeError, ValueError):
        raise BadAnswer(f"Trades result with a bad 'last': {str(last)[:40]!r}") from None
    out = []
    for r in rows:
        if not isinstance(r, list) or len(r) < 6:
            raise BadAnswer(f"bad Trades row {str(r)[:80]}")
        try:
            price, qty, t = float(r[0]), float(r[1]), Decimal(r[2])
            tid = int(r[6]) if len(r) > 6 and not isinstance(r[6], bool) else -1
            ok = price_ok(price) and 0.0 < qty < float("inf") and 0 <= t < 10**11 and -1 <= tid <= MAX_INT64
        except (TypeError, ValueError, InvalidOperation, ArithmeticError):
            raise BadAnswer(f"bad Trades row {str(r)[:80]}") from None
        if not ok:
            raise BadAnswer(f"Trades row with an impossible value: {str(r)[:80]}")
        out.append(Trade("", tid, int(t * 1000), price, qty, r[3] == "s"))
    return out, last_ns


def ohlc_query(pair: str, interval_min: int, since_s: int | None = None) -> str:
    params: dict[str, str | int] = {"pair": pair, "interval": interval_min}
    if since_s is not None:
        params["since"] = since_s
    return "/0/public/OHLC?" + urlencode(params)


def trades_query(pair: str, since_ns: int, count: int = TRADES_PAGE) -> str:
    return "/0/public/Trades?" + urlencode({"pair": pair, "since": since_ns, "count": count})


# --- the book channel's checksum -----------------------------------------------------------------


#: Depths the ``book`` channel accepts.
BOOK_DEPTHS = (10, 25, 100, 500, 1000)


def book_checksum(asks: list[tuple[str, str]], bids: list[tuple[str, str]]) -> int:
    """The ``book`` channel's CRC32 (docs.kraken.com ``book-checksum-v2``): over the top 10 asks low to
    high, then the top 10 bids high to low, each level's price and qty as decimal text at the pair's
    precisions, without the point and leading zeros, as an unsigned 32-bit integer."""

    def level(price: str, qty: str) -> str:
        return price.replace(".", "").lstrip("0") + qty.replace(".", "").lstrip("0")

    text = "".join(level(p, q) for p, q in asks[:10]) + "".join(level(p, q) for p, q in bids[:10])
    return zlib.crc32(text.encode()) & 0xFFFFFFFF


# --- encoding (the replica) --------------------------------------------------------------------------


def book_message(
    symbol: str,
    snapshot: bool,
    bids: list[tuple[str, str]],
    asks: list[tuple[str, str]],
    checksum: int,
    time_us: int,
) -> bytes:
    """A ``book`` message with one item, levels as JSON numbers written at the pair's precisions
    (``bids`` best first, then ``asks`` best first, as Kraken lists them)."""

    def side(levels: list[tuple[str, str]]) -> bytes:
        return b",".join(b'{"price":%s,"qty":%s}' % (p.encode(), q.encode()) for p, q in levels)

    return (
        b'{"channel":"book","type":"%s","data":[{"symbol":"%s","bids":[%s],"asks":[%s],"checksum":%d,"timestamp":"%s"}]}'
        % (
            b"snapshot" if snapshot else b"update",
            symbol.encode(),
            side(bids),
            side(asks),
            checksum,
            us_iso(time_us).encode(),
        )
    )


def _num(x: float) -> str:
    """A JSON number as Kraken sends them (no trailing zeros: 0.5147, 30306.1)."""
    s = fmt(x).rstrip("0").rstrip(".")
    return s or "0"


def trade_item(symbol: str, trade_id: int, time_ms: int, price: float, qty: float, taker_sells: bool) -> bytes:
    return b'{"symbol":"%s","side":"%s","price":%s,"qty":%s,"ord_type":"market","trade_id":%d,"timestamp":"%s"}' % (
        symbol.encode(),
        b"sell" if taker_sells else b"buy",
        _num(price).encode(),
        _num(qty).encode(),
        trade_id,
        ms_rfc3339(time_ms).encode(),
    )


def trade_message(items: list[bytes], snapshot: bool = False) -> bytes:
    kind = b"snapshot" if snapshot else b"update"
    return b'{"channel":"trade","type":"%s","data":[%s]}' % (kind, b",".join(items))


def ohlc_item(symbol: str, interval_min: int, c: Candle, vwap: float, now_ms: int) -> bytes:
    return msgspec.json.encode(
        {
            "symbol": symbol,
            "open": msgspec.Raw(_num(c.open).encode()),
            "high": msgspec.Raw(_num(c.high).encode()),
            "low": msgspec.Raw(_num(c.low).encode()),
            "close": msgspec.Raw(_num(c.close).encode()),
            "trades": c.trades,
            "volume": msgspec.Raw(_num(c.volume).encode()),
            "vwap": msgspec.Raw(_num(vwap).encode()),
            "interval_begin": ms_rfc3339(c.open_time, 9),
            "interval": interval_min,
            # Deprecated; the doc's example shows the interval's end here (PROTOCOLS-wave2 4.1).
            "timestamp": ms_rfc3339(c.open_time + interval_min * 60_000),
        }
    )


def ohlc_message(items: list[bytes], now_ms: int, snapshot: bool = False) -> bytes:
    kind = b"snapshot" if snapshot else b"update"
    return b'{"channel":"ohlc","type":"%s","timestamp":"%s","data":[%s]}' % (
        kind,
        ms_rfc3339(now_ms).encode(),
        b",".join(items),
    )


def ohlc_row(c: Candle, vwap: float) -> list[Any]:
    return [c.open_time // 1000, fmt(c.open), fmt(c.high), fmt(c.low), fmt(c.close), fmt(vwap), fmt(c.volume), c.trades]


def ok_body(result: Any) -> bytes:
    return msgspec.json.encode({"error": [], "result": result})


def error_body(*errors: str) -> bytes:
    return msgspec.json.encode({"error": list(errors)})
