"""Finnhub market-data codec: builds WebSocket messages and candle URLs, decodes frames and candle bodies, no I/O.

Formats follow ../shared/PROTOCOLS.md section 3 (Finnhub's websocket-trades page for the trade message,
finnhub-python for the REST paths, third parties for ``ping`` and ``error``).

Semantics chosen here, and why:

- **One trade message, several trades.** ``{"data":[...],"type":"trade"}`` carries any number of items
  (Finnhub: "a message can contain multiple trades"), of one or several symbols; :meth:`StreamDecoder.decode`
  returns them all, in the message's order.
- **No trade id.** Finnhub's items have none (``p``, ``s``, ``t``, ``v`` and optional conditions ``c``), so
  ``Trade.trade_id`` is 0 for every Finnhub trade. Nothing downstream may de-duplicate Finnhub trades by id;
  a repeated message cannot be told from two equal trades.
- **Price updates.** Where an exchange has no trades (forex, some crypto) Finnhub sends ``v = 0``: a price,
  not a trade. It is kept as a :class:`~deltafeed.model.Trade` with ``qty`` 0, so candles move on it but
  volume does not; :attr:`StreamDecoder.price_updates` counts them. ``buyer_maker`` is unknown and False.
- **Bad items, not bad messages.** A trade message with one malformed item loses that item only (counted
  as ``bad_field``); the other items of the message are still returned.
- **Errors are counted, never raised**: ``malformed`` (not JSON, truncated, not an object), ``bad_field`` (a
  trade item with a missing, mistyped or out-of-range field), ``impossible_value`` (a trade item whose price is
  not finite and above zero, or whose volume is not finite and not negative: ``"p":1e400`` is one),
  ``unknown_type``, ``error_message`` (the venue's ``{"type":"error","msg":...}``, whose text is kept in
  ``last_error``), and ``decoder_bug`` (see :mod:`deltafeed.venues.checks`).
- **Candles**: column arrays ``{c,h,l,o,s,t,v}``; ``t`` is UNIX seconds and becomes ms; ``volume`` is
  ``v``; ``trades`` is 0 because Finnhub does not say how many trades a candle holds; ``closed`` is left
  False for the caller, which knows the venue's now (Finnhub sends no completeness flag).
- **Symbol kinds.** Finnhub names forex and crypto symbols ``EXCHANGE:SYMBOL`` (``OANDA:EUR_USD``,
  ``BINANCE:BTCUSDT``) and stocks by ticker (``AAPL``); the exchange prefix picks the candle endpoint.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import msgspec

from deltafeed.model import TIMEFRAMES, BadInput, Candle, Trade
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

VENUE = "finnhub"

DEFAULT_WS_URL = "wss://ws.finnhub.io"
#: finnhub-python uses https://api.finnhub.io/api/v1; the docs show https://finnhub.io/api/v1.
DEFAULT_REST_URL = "https://finnhub.io/api/v1"
TOKEN_HEADER = "X-Finnhub-Token"

CALLS_PER_MINUTE = 60  # free plan [3P: a note quoting the pricing page]
CALLS_PER_SECOND = 30  # "on top of all plan's limit" [V docs intro]
MAX_SYMBOLS = 50  # free plan WebSocket symbols [3P]

#: deltafeed timeframe -> Finnhub resolution. Finnhub's finest is 1 minute, and it has no 4-hour one.
RESOLUTION: dict[str, str] = {"1m": "1", "5m": "5", "15m": "15", "1h": "60", "1d": "D"}
#: Fixed-length Finnhub resolutions in ms (``M``, a calendar month, has no fixed length).
RESOLUTION_MS: dict[str, int] = {
    "1": 60_000, "5": 300_000, "15": 900_000, "30": 1_800_000, "60": 3_600_000,
    "D": 86_400_000, "W": 604_800_000,
}  # fmt: skip
RESOLUTIONS = (*RESOLUTION_MS, "M")

#: Exchange prefixes of Finnhub's forex symbols (its forex exchange list: oanda, fxcm, forex.com,
#: ic markets, octafx, fxpig, pepperstone, fxpro, icmtrader [3P finnhubr docs]; fhfx [V PROTOCOLS]).
FOREX_EXCHANGES = frozenset({
    "OANDA", "FXCM", "FOREX.COM", "IC MARKETS", "OCTAFX", "FXPIG", "PEPPERSTONE", "FXPRO", "ICMTRADER", "FHFX",
})  # fmt: skip
KINDS = ("forex", "stock", "crypto")


def resolution(timeframe: str) -> str:
    """Finnhub's ``resolution`` for a deltafeed timeframe; :class:`BadInput` for one Finnhub cannot serve."""
    try:
        return RESOLUTION[timeframe]
    except KeyError:
        if timeframe in TIMEFRAMES:
            raise BadInput(
                f"Finnhub has no {timeframe} candles (its resolutions are 1, 5, 15, 30, 60 minutes, "
                f"D, W, M); use one of {' '.join(RESOLUTION)}"
            ) from None
        raise BadInput(f"unknown timeframe {timeframe!r}; use one of {' '.join(RESOLUTION)}") from None


def symbol_kind(symbol: str) -> str:
    """``forex``, ``crypto`` or ``stock``: which candle endpoint serves ``symbol``.

    No ``EXCHANGE:`` prefix is a stock (``AAPL``, ``BMW.DE``); a forex exchange prefix is forex
    (``OANDA:EUR_USD``); any other prefix is crypto (``BINANCE:BTCUSDT``, ``COINBASE:BTC-USD``): Finnhub
    lists more crypto exchanges than forex ones, and adds them more often.
    """
    exchange, sep, rest = symbol.partition(":")
    if not sep:
        if not symbol.strip():
            raise BadInput("empty Finnhub symbol; write AAPL, OANDA:EUR_USD or BINANCE:BTCUSDT")
        return "stock"
    if not exchange.strip() or not rest.strip():
        raise BadInput(f"Finnhub symbol {symbol!r} is incomplete; write EXCHANGE:SYMBOL, e.g. BINANCE:BTCUSDT")
    return "forex" if exchange.strip().upper() in FOREX_EXCHANGES else "crypto"


def candle_path(kind: str, symbol: str, resolution: str, from_s: int, to_s: int) -> str:
    """Path and query of ``GET /{kind}/candle``, relative to the REST base (``…/api/v1``).

    The token is not part of it: :class:`~deltafeed.venues.finnhub.rest.FinnhubHistory` sends it in
    the ``X-Finnhub-Token`` header, so no URL that may be logged carries it.
    """
    if kind not in KINDS:
        raise BadInput(f"unknown Finnhub candle kind {kind!r}; use one of {', '.join(KINDS)}")
    if resolution not in RESOLUTIONS:
        raise BadInput(f"unknown Finnhub resolution {resolution!r}; use one of {', '.join(RESOLUTIONS)}")
    return f"/{kind}/candle?" + urlencode({"symbol": symbol, "resolution": resolution, "from": from_s, "to": to_s})


# --- WebSocket ------------------------------------------------------------------------------------


def stream_url(ws_base: str, token: str) -> str:
    """``wss://ws.finnhub.io?token=…``: the WebSocket takes the token in its URL only. Never log this
    URL; log :func:`redact` of it."""
    sep = "&" if "?" in ws_base else "?"
    return f"{ws_base}{sep}{urlencode({'token': token})}"


def redact(url: str) -> str:
    """``url`` with the value of any ``token=`` parameter replaced by ``***``."""
    head, sep, query = url.partition("?")
    if not sep:
        return url
    parts = [("token=***" if p.startswith("token=") else p) for p in query.split("&")]
    return head + "?" + "&".join(parts)


def subscribe(symbol: str) -> bytes:
    """``{"type":"subscribe","symbol":…}``. Finnhub sends no acknowledgement."""
    return msgspec.json.encode({"type": "subscribe", "symbol": symbol})


def unsubscribe(symbol: str) -> bytes:
    return msgspec.json.encode({"type": "unsubscribe", "symbol": symbol})


class Ping(msgspec.Struct, frozen=True):
    """The server's ``{"type":"ping"}`` keep-alive; clients need not answer it."""


PING = Ping()


class _Item(msgspec.Struct, gc=False):
    p: float
    s: Annotated[str, msgspec.Meta(min_length=1)]
    t: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
    v: float
    c: list[Any] | None = None


class _TradeMsg(msgspec.Struct, tag="trade", tag_field="type"):
    data: list[_Item]


class _PingMsg(msgspec.Struct, tag="ping", tag_field="type"):
    pass


class _ErrorMsg(msgspec.Struct, tag="error", tag_field="type"):
    msg: str = ""


_Msg = _TradeMsg | _PingMsg | _ErrorMsg
_typed = msgspec.json.Decoder(_Msg)


class StreamDecoder(Skips):
    """Turns Finnhub WebSocket text frames into trades; counts and skips what it cannot use.

    ``decode`` returns a non-empty list of :class:`~deltafeed.model.Trade` for a trade message, :data:`PING`
    for a ping, and None for anything else (an error message, an unknown type, a malformed frame, a trade
    message without a usable item). It never raises. ``errors`` counts skipped frames and items by kind
    (see the module docstring, and ``impossible_value`` for an item whose price is not finite and above zero
    or whose volume is not finite and not negative, ``1e400`` included); ``last_error`` describes the latest
    one for the caller's (rate-limited) log.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trades = 0  # items with v > 0
        self.price_updates = 0  # items with v == 0
        self.pings = 0

    def decode(self, frame: bytes | memoryview | str) -> list[Trade] | Ping | None:
        try:
            try:
                msg = _typed.decode(frame)
            except msgspec.ValidationError:
                return self._slow_path(frame)
            except JSON_ERRORS as exc:
                self._skip(MALFORMED, f"not JSON ({exc})")
                return None
            if type(msg) is _TradeMsg:
                return self._trades(msg.data)
            if type(msg) is _PingMsg:
                self.pings += 1
                return PING
            assert type(msg) is _ErrorMsg
            self._skip("error_message", f"Finnhub sent an error: {msg.msg[:200]}")
        except Exception as exc:  # never let a frame end the stream: see checks.DECODER_BUG
            self._bug(exc, frame)
        return None

    def _trades(self, items: list[_Item]) -> list[Trade] | None:
        out = []
        for i in items:
            if price_ok(i.p) and size_ok(i.v):
                out.append(Trade(i.s, 0, i.t, i.p, i.v, False))
            else:
                self._skip(IMPOSSIBLE, f"trade item of {i.s[:20]} with price {i.p!r} and volume {i.v!r}")
        zero = sum(1 for t in out if t.qty == 0)
        self.price_updates += zero
        self.trades += len(out) - zero
        return out or None

    def _slow_path(self, frame: bytes | memoryview | str) -> list[Trade] | None:
        """A frame the typed decoder rejected: a trade message with bad items, an unknown type, or junk.

        The typed decoder checks types before it reaches the end of the text, so a frame it rejected may
        still be truncated (``{"type":"news",``): that is ``malformed`` here, never an exception.
        """
        try:
            msg = ANY_JSON.decode(frame)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc})")
            return None
        if not isinstance(msg, dict):
            self._skip(MALFORMED, f"not a JSON object: {_text(frame)[:80]!r}")
            return None
        kind = msg.get("type")
        if kind == "trade":
            data = msg.get("data")
            if not isinstance(data, list):
                self._skip(BAD_FIELD, "trade message without a data list")
                return None
            good: list[_Item] = []
            for raw in data:
                try:
                    good.append(msgspec.convert(raw, _Item))
                except msgspec.ValidationError as exc:
                    self._skip(BAD_FIELD, f"trade item skipped ({exc}): {str(raw)[:80]}")
            return self._trades(good)
        if kind in ("ping", "error"):  # only a wrong field type (e.g. a numeric msg) gets here
            self._skip(BAD_FIELD, f"{kind} message with a bad field: {_text(frame)[:80]!r}")
            return None
        self._skip("unknown_type", f"unknown message type {str(kind)[:40]!r}")
        return None


def _text(frame: bytes | memoryview | str) -> str:
    """A frame as text for an error message (undecodable bytes replaced)."""
    return frame if isinstance(frame, str) else bytes(frame[:200]).decode("utf-8", "replace")


# --- candles --------------------------------------------------------------------------------------


class BadCandles(ValueError):
    """A candles body that does not have the promised shape (columns of unequal length, no status)."""


_Secs = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64 // 1000)]


class _Candles(msgspec.Struct):
    s: str
    t: list[_Secs] = []
    o: list[float] = []
    h: list[float] = []
    l: list[float] = []  # noqa: E741 - Finnhub's field name
    c: list[float] = []
    v: list[float] = []


_candles = msgspec.json.Decoder(_Candles)


def decode_candles(body: bytes) -> list[Candle]:
    """Candles of a ``/{kind}/candle`` body, in the venue's order; ``no_data`` gives [].

    ``open_time`` is ``t`` in ms, ``volume`` is ``v``, ``trades`` 0 (unknown), ``closed`` False (set by the
    caller from the venue's now). :class:`BadCandles` for any other shape, e.g. ``{"error": …}``, and for a
    candle with an impossible value (a price not finite and above zero, a negative volume): a page is
    taken whole or not at all.
    """
    try:
        b = _candles.decode(body)
    except JSON_ERRORS as exc:
        raise BadCandles(f"not a Finnhub candles body ({exc}): {body[:120]!r}") from None
    if b.s == "no_data":
        return []
    if b.s != "ok":
        raise BadCandles(f"candles status {b.s[:40]!r}, expected 'ok' or 'no_data': {body[:120]!r}")
    n = len(b.t)
    if not all(len(col) == n for col in (b.o, b.h, b.l, b.c, b.v)):
        raise BadCandles(
            f"candle columns differ in length (t={n}, o={len(b.o)}, h={len(b.h)}, l={len(b.l)}, "
            f"c={len(b.c)}, v={len(b.v)})"
        )
    out = []
    for t, o, h, lo, c, v in zip(b.t, b.o, b.h, b.l, b.c, b.v, strict=True):
        if not (price_ok(o) and price_ok(h) and price_ok(lo) and price_ok(c) and size_ok(v)):
            raise BadCandles(f"candle at {t} has an impossible value: o={o!r} h={h!r} l={lo!r} c={c!r} v={v!r}")
        out.append(Candle(t * 1000, o, h, lo, c, v, 0, False))
    return out


class _Error(msgspec.Struct):
    error: str


def decode_error(body: bytes) -> str | None:
    """The text of Finnhub's ``{"error": "..."}`` body, or None for any other body."""
    try:
        return msgspec.json.decode(body, type=_Error).error
    except JSON_ERRORS:
        return None
