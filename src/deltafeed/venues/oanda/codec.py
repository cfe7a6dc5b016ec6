"""OANDA v20 market-data codec: builds request URLs and decodes stream lines and candle bodies, without I/O.

Formats follow ../shared/PROTOCOLS.md section 5 (OANDA's development guide, and oandapyV20's fixtures for
the field shapes). Only decoding lives here: the replica writes its own encoders.

Semantics chosen here, and why:

- **Best bid/ask** is the first entry of ``bids``/``asks`` (OANDA lists the book best first); its
  ``liquidity`` becomes the quote's size.
- **Non-tradeable prices are skipped** (counted as ``not_tradeable``). OANDA marks prices outside the
  trading session, or while an instrument is halted, as ``tradeable: false`` (newer servers) or
  ``status: "non-tradeable"`` (older ones). They are indicative, not dealable, so they must not move a
  candle; the heartbeats keep the connection alive meanwhile. ``tradeable`` wins when both are present.
- **Times** are RFC 3339 with nanoseconds (``2016-10-27T08:38:45.664613867Z``) and are *truncated* to the
  millisecond, so a price at ``…:59.9999996`` stays in the minute OANDA puts it in (msgspec's datetime
  decoding rounds to the microsecond and would move it to the next one). The parse caches the minute
  prefix, so a stream line costs a few string slices and one ``int()`` (see :func:`time_ms`).
- **Candles**: ``volume`` is OANDA's count of prices in the interval; it is both the candle's volume and
  its ``trades`` count. ``closed`` is OANDA's ``complete``. OANDA sends no candle for an interval
  without prices; nothing is filled in here.
- **Alignment**: every candle request carries ``dailyAlignment=0&alignmentTimezone=UTC``, so ``D`` (and
  the hour granularities, which OANDA also aligns to the daily alignment hour) start at UTC midnight like
  deltafeed's buckets. OANDA's defaults (17:00 America/New_York) would shift them.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated
from urllib.parse import quote, urlencode

import msgspec

from deltafeed.model import PRICE_SIDES, TIMEFRAMES, BadInput, Candle, Quote
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

VENUE = "oanda"

DEFAULT_REST_URL = "https://api-fxtrade.oanda.com"
DEFAULT_STREAM_URL = "https://stream-fxtrade.oanda.com"
PRACTICE_REST_URL = "https://api-fxpractice.oanda.com"
PRACTICE_STREAM_URL = "https://stream-fxpractice.oanda.com"

REST_LIMIT_PER_S = 120  # beyond it OANDA answers 429 (per IP)
MAX_STREAMS = 20  # active streams per IP
#: Instruments one pricing stream carries: OANDA documents no cap; this one is chosen (docs/scaling.md)
#: and keeps the stream's URL short. The replica refuses a stream past it.
INSTRUMENTS_PER_STREAM = 50
NEW_CONNECTIONS_PER_S = 2  # excess connections are rejected
CANDLES_PAGE = 5000  # max ``count`` of one candles request

#: deltafeed timeframe -> OANDA granularity. OANDA's finest is S5, so 1s cannot be served (nor derived).
GRANULARITY: dict[str, str] = {
    "5s": "S5", "15s": "S15", "1m": "M1", "5m": "M5", "15m": "M15", "1h": "H1", "4h": "H4", "1d": "D",
}  # fmt: skip

#: Query parameters that make day (and multi-hour) candles start at 00:00 UTC, like deltafeed's.
UTC_ALIGNMENT = {"dailyAlignment": "0", "alignmentTimezone": "UTC"}

_PRICE_LETTER = {"mid": "M", "bid": "B", "ask": "A"}
_LETTER_SIDE = {v: k for k, v in _PRICE_LETTER.items()}


def granularity(timeframe: str) -> str:
    """OANDA's granularity for a deltafeed timeframe; :class:`BadInput` for one OANDA cannot serve."""
    try:
        return GRANULARITY[timeframe]
    except KeyError:
        if timeframe in TIMEFRAMES:
            raise BadInput(
                f"OANDA has no {timeframe} candles (its finest is 5s); use one of {' '.join(GRANULARITY)}"
            ) from None
        raise BadInput(f"unknown timeframe {timeframe!r}; use one of {' '.join(GRANULARITY)}") from None


def price_letters(sides: str | list[str] | tuple[str, ...]) -> str:
    """OANDA's ``price`` parameter (``M``, ``B``, ``A`` or a combination) for deltafeed price sides."""
    names = [sides] if isinstance(sides, str) else list(sides)
    try:
        return "".join(_PRICE_LETTER[s] for s in names)
    except KeyError:
        raise BadInput(f"unknown price side in {names}; use {', '.join(PRICE_SIDES)}") from None


# --- times --------------------------------------------------------------------------------------

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_minute_ms: dict[str, int] = {}  # "2016-10-27T08:38" -> epoch ms; bounded, see _minute()
_MINUTE_CACHE_MAX = 8192
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?Z")
_UNIX = re.compile(r"(\d{1,12})(?:\.(\d{1,9}))?")


def _minute(prefix: str) -> int:
    """Epoch ms of ``YYYY-MM-DDTHH:MM`` (validated strictly), remembered for the next line."""
    if len(prefix) != 16 or prefix[10] != "T" or prefix[13] != ":" or not prefix.isascii():
        raise ValueError(f"not an RFC 3339 time: {prefix!r}")
    hh, mm = prefix[11:13], prefix[14:16]
    if not (hh.isdecimal() and mm.isdecimal()) or int(hh) > 23 or int(mm) > 59:
        raise ValueError(f"not an RFC 3339 time: {prefix!r}")
    day = dt.date.fromisoformat(prefix[:10])
    ms = (day.toordinal() - _EPOCH_ORDINAL) * 86_400_000 + int(hh) * 3_600_000 + int(mm) * 60_000
    if len(_minute_ms) >= _MINUTE_CACHE_MAX:
        _minute_ms.clear()
    _minute_ms[prefix] = ms
    return ms


def time_ms(text: str) -> int:
    """Epoch ms of an OANDA time, truncated: RFC 3339 with 0-9 fraction digits and ``Z``, or UNIX seconds.

    The fast path is OANDA's own shape (``…:SS.nnnnnnnnnZ``, 30 characters): a cached minute prefix plus
    ``int("SSmmm")``, about 0.5 µs. Other shapes go through a regex; the UNIX form
    (``1477557525.664613867``) is what OANDA sends under ``Accept-Datetime-Format: UNIX``. Raises
    ValueError for anything else.
    """
    if len(text) == 30 and text[16] == ":" and text[19] == "." and text[29] == "Z":
        base = _minute_ms.get(text[:16])
        if base is None:
            base = _minute(text[:16])
        sec_ms = text[17:19] + text[20:23]  # "SSmmm" -> seconds * 1000 + ms in one int()
        if sec_ms.isascii() and sec_ms.isdecimal() and text[23:29].isdecimal() and text[17] < "6":
            return base + int(sec_ms)
    return _time_ms_slow(text)


def _time_ms_slow(text: str) -> int:
    m = _RFC3339.fullmatch(text)
    if m is not None:
        ms = _minute_ms.get(text[:16])
        if ms is None:
            ms = _minute(text[:16])
        sec = int(m.group(4))
        if sec > 60:  # 60: a leap second, as RFC 3339 allows
            raise ValueError(f"not an RFC 3339 time: {text!r}")
        frac = m.group(5) or ""
        return ms + sec * 1000 + int((frac + "00")[:3])
    m = _UNIX.fullmatch(text)
    if m is not None:
        frac = m.group(2) or ""
        return int(m.group(1)) * 1000 + int((frac + "00")[:3])
    raise ValueError(f"not an OANDA time: {text[:40]!r}")


def rfc3339(ms: int) -> str:
    """OANDA's RFC 3339 form of epoch ms (nine fraction digits), for the ``from`` parameter."""
    t = dt.datetime.fromtimestamp(ms // 1000, dt.UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}000000Z"


def venue_now_ms(date_ms: int | None, newest: Candle | None, granularity_ms: int = 5_000) -> int | None:
    """The venue's "now" from what one candles answer tells (OANDA has no time endpoint).

    Two observations: the HTTP ``Date`` header (the venue's wall clock, whole seconds) and the newest
    candle of a short granularity (S5). While the market is open the newest candle is still forming
    (``closed`` False), so now is in ``[open_time, open_time + granularity_ms)``: a ``Date`` inside
    that window refines it; a ``Date`` outside it is not the market's clock (a replica replaying
    another time), and the candle wins. When the market is closed the newest candle is old (Friday's
    at the weekend), and ``Date`` is the only clock, unless it is earlier than that candle's end.
    None when neither is known.
    """
    if newest is not None and not newest.closed:
        lo = newest.open_time
        if date_ms is not None and lo <= date_ms < lo + granularity_ms + 1000:
            return date_ms
        return lo
    ended = newest.open_time + granularity_ms if newest is not None else None
    if date_ms is None:
        return ended
    return date_ms if ended is None else max(date_ms, ended)  # a Date before a finished candle is not the venue's


# --- URLs ---------------------------------------------------------------------------------------


def stream_url(stream_base: str, account: str, instruments: list[str], snapshot: bool = True) -> str:
    """URL of the pricing stream of ``instruments`` (``EUR_USD,USD_JPY``: commas kept literal)."""
    names = ",".join(quote(i.upper(), safe="_") for i in instruments)
    url = f"{stream_base.rstrip('/')}/v3/accounts/{quote(account, safe='-')}/pricing/stream?instruments={names}"
    return url if snapshot else url + "&snapshot=false"


def candles_path(
    instrument: str, granularity_name: str, from_ms: int | None = None, count: int = CANDLES_PAGE, price: str = "M"
) -> str:
    """Path and query of ``GET /v3/instruments/{instrument}/candles`` (``from`` + ``count``, UTC-aligned).

    Without ``from`` OANDA answers the newest ``count`` candles. Never sends ``to``: OANDA refuses
    ``count`` together with both ``from`` and ``to``.
    """
    if not 1 <= count <= CANDLES_PAGE:
        raise ValueError(f"count must be 1..{CANDLES_PAGE}, not {count}")
    params: dict[str, str | int] = {"price": price, "granularity": granularity_name}
    if from_ms is not None:
        params["from"] = rfc3339(from_ms)
    params["count"] = count
    params.update(UTC_ALIGNMENT)
    return f"/v3/instruments/{quote(instrument.upper(), safe='_')}/candles?" + urlencode(params)


def auth_headers(token: str) -> dict[str, str]:
    """Headers of every OANDA request: the Bearer token, and times in RFC 3339 (what the decoders read)."""
    return {"Authorization": f"Bearer {token}", "Accept-Datetime-Format": "RFC3339"}


def instruments_path(account: str) -> str:
    return f"/v3/accounts/{quote(account, safe='-')}/instruments"


# --- the pricing stream -------------------------------------------------------------------------


class Heartbeat(msgspec.Struct, gc=False):
    """A pricing-stream HEARTBEAT: the venue is alive and its clock reads ``time_ms``."""

    time_ms: int


class _Level(msgspec.Struct, gc=False):
    price: str  # float() in Python beats msgspec's lax str->float mode by ~0.25 µs a line
    liquidity: float = 0.0


class _Price(msgspec.Struct, tag="PRICE", tag_field="type", gc=False):
    instrument: str
    time: str
    bids: list[_Level]
    asks: list[_Level]
    status: str | None = None
    tradeable: bool | None = None


class _Heartbeat(msgspec.Struct, tag="HEARTBEAT", tag_field="type", gc=False):
    time: str


_line = msgspec.json.Decoder(_Price | _Heartbeat)


class PriceDecoder(Skips):
    """Turns pricing-stream lines into :class:`Quote` and :class:`Heartbeat`; counts and skips the rest.

    ``decode`` returns None for a line that carries nothing usable; ``errors`` counts those by kind:
    ``malformed`` (not a JSON object), ``unknown_type`` (a ``type`` other than PRICE/HEARTBEAT),
    ``bad_field`` (a field missing or of the wrong type, a bad time, a price that is not a number),
    ``impossible_value`` (a best bid or ask that is not finite and above zero, a liquidity that is not
    finite and not negative), ``empty_book`` (a tradeable PRICE without bids or asks),
    ``not_tradeable`` (see the module docstring) and ``decoder_bug`` (see
    :mod:`deltafeed.venues.checks`). ``last_error`` describes the latest one for the caller's
    rate-limited log. Never raises.
    """

    def decode(self, line: bytes | memoryview) -> Quote | Heartbeat | None:
        try:
            return self._decode(line)
        except Exception as exc:  # never let a line end the stream: see checks.DECODER_BUG
            self._bug(exc, bytes(line[:80]))
            return None

    def _decode(self, line: bytes | memoryview) -> Quote | Heartbeat | None:
        try:
            msg = _line.decode(line)
        except JSON_ERRORS:
            self._slow_path(line)
            return None
        return self._message(msg)

    def _message(self, msg: _Price | _Heartbeat) -> Quote | Heartbeat | None:
        try:
            t = time_ms(msg.time)
        except ValueError as exc:
            self._skip(BAD_FIELD, str(exc))
            return None
        if type(msg) is _Heartbeat:
            return Heartbeat(t)
        assert type(msg) is _Price
        if msg.tradeable is False or (msg.tradeable is None and msg.status not in (None, "tradeable")):
            self._skip(
                "not_tradeable", f"{msg.instrument[:20]} is not tradeable ({(msg.status or 'tradeable: false')[:40]})"
            )
            return None
        if not msg.bids or not msg.asks:
            self._skip("empty_book", f"{msg.instrument[:20]} PRICE without bids or asks")
            return None
        b, a = msg.bids[0], msg.asks[0]
        try:
            bid, ask = float(b.price), float(a.price)
        except ValueError:
            self._skip(
                BAD_FIELD,
                f"{msg.instrument[:20]} PRICE with a price that is not a number ({b.price[:30]!r}, {a.price[:30]!r})",
            )
            return None
        if not (price_ok(bid) and price_ok(ask) and size_ok(b.liquidity) and size_ok(a.liquidity)):
            self._skip(
                IMPOSSIBLE,
                f"{msg.instrument[:20]} PRICE with an impossible value (bid {b.price[:30]!r} "
                f"ask {a.price[:30]!r}, liquidity {b.liquidity!r} {a.liquidity!r})",
            )
            return None
        return Quote(msg.instrument, t, bid, ask, b.liquidity, a.liquidity)

    def _slow_path(self, line: bytes | memoryview) -> None:
        """Classify a line the typed decoder rejected."""
        try:
            msg = ANY_JSON.decode(line)
        except JSON_ERRORS as exc:
            self._skip(MALFORMED, f"not JSON ({exc}): {bytes(line[:80])!r}")
            return
        if not isinstance(msg, dict):
            self._skip(MALFORMED, f"not a JSON object: {bytes(line[:80])!r}")
            return
        kind = msg.get("type")
        if kind == "PRICE":
            try:  # a liquidity beyond float range (1e400) is read as an infinity here, and refused
                price = msgspec.convert(msg, _Price)
            except msgspec.ValidationError:
                pass
            else:
                if self._message(price) is None:
                    return  # counted there
        if kind in ("PRICE", "HEARTBEAT"):
            self._skip(BAD_FIELD, f"{kind} line with a missing or mistyped field: {bytes(line[:120])!r}")
        else:
            self._skip("unknown_type", f"unknown line type {str(kind)[:40]!r}")


# --- candles ------------------------------------------------------------------------------------


class BadCandles(ValueError):
    """A candles body that does not have the promised shape (a missing price side, a bad time)."""


class _OHLC(msgspec.Struct, gc=False):
    o: float
    h: float
    l: float  # noqa: E741 - OANDA's field name
    c: float


class _Candle(msgspec.Struct, gc=False):
    time: str
    volume: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
    complete: bool
    mid: _OHLC | None = None
    bid: _OHLC | None = None
    ask: _OHLC | None = None


class _Candles(msgspec.Struct):
    candles: list[_Candle]
    instrument: str = ""
    granularity: str = ""


_candles = msgspec.json.Decoder(_Candles, strict=False)


def decode_candles_all(body: bytes, sides: str | list[str] | tuple[str, ...] = PRICE_SIDES) -> dict[str, list[Candle]]:
    """Candles of every side in ``sides`` from one body (``price=MBA`` gives all three), oldest first.

    Raises :class:`BadCandles` when the body is not a candles answer, a candle lacks a side asked for or
    holds an impossible value (a price not finite and above zero): a page is taken whole or not at all.
    """
    names = [sides] if isinstance(sides, str) else list(sides)
    for s in names:
        if s not in PRICE_SIDES:
            raise BadInput(f"unknown price side {s!r}; use {', '.join(PRICE_SIDES)}")
    try:
        rows = _candles.decode(body).candles
    except JSON_ERRORS as exc:
        raise BadCandles(f"not an OANDA candles body ({exc}): {body[:120]!r}") from None
    out: dict[str, list[Candle]] = {s: [] for s in names}
    for r in rows:
        try:
            t = time_ms(r.time)
        except ValueError as exc:
            raise BadCandles(str(exc)) from None
        for s in names:
            p = getattr(r, s)
            if p is None:
                raise BadCandles(f"candle at {r.time[:40]} has no {s!r} prices (request price={price_letters(names)})")
            if not (price_ok(p.o) and price_ok(p.h) and price_ok(p.l) and price_ok(p.c)):
                raise BadCandles(
                    f"candle at {r.time[:40]} has an impossible {s} price: o={p.o!r} h={p.h!r} l={p.l!r} c={p.c!r}"
                )
            out[s].append(Candle(t, p.o, p.h, p.l, p.c, float(r.volume), r.volume, r.complete))
    return out


def decode_candles(body: bytes, side: str = "mid") -> list[Candle]:
    """Candles of one price side (``mid``, ``bid`` or ``ask``) from a candles body, oldest first."""
    return decode_candles_all(body, (side,))[side]


# --- instruments --------------------------------------------------------------------------------


class _Instrument(msgspec.Struct):
    name: str
    type: str = ""


class _Instruments(msgspec.Struct):
    instruments: list[_Instrument]


def decode_instruments(body: bytes) -> set[str]:
    """Instrument names (``EUR_USD``) of a ``/v3/accounts/{id}/instruments`` answer."""
    try:
        return {i.name for i in msgspec.json.decode(body, type=_Instruments).instruments}
    except JSON_ERRORS as exc:
        raise BadCandles(f"not an OANDA instruments body ({exc})") from None


#: Used by :meth:`OandaHistory.symbols` when the account's instrument list cannot be read (no account
#: given, or a server without that endpoint): the FX majors and their common crosses, plus gold and
#: silver. Every OANDA account offers these.
FALLBACK_INSTRUMENTS = frozenset(
    {
        "EUR_USD",
        "GBP_USD",
        "USD_JPY",
        "USD_CHF",
        "USD_CAD",
        "AUD_USD",
        "NZD_USD",
        "EUR_GBP",
        "EUR_JPY",
        "EUR_CHF",
        "EUR_CAD",
        "EUR_AUD",
        "EUR_NZD",
        "GBP_JPY",
        "GBP_CHF",
        "GBP_CAD",
        "GBP_AUD",
        "GBP_NZD",
        "AUD_JPY",
        "AUD_CHF",
        "AUD_CAD",
        "AUD_NZD",
        "NZD_JPY",
        "NZD_CHF",
        "NZD_CAD",
        "CAD_JPY",
        "CAD_CHF",
        "CHF_JPY",
        "XAU_USD",
        "XAG_USD",
    }
)
