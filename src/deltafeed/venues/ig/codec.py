"""IG Markets streaming codec: item names and schemas, and MARKET / CHART:1MINUTE values → deltafeed events.

Sans-I/O and clock-free: the caller passes the venue's "now" where a value needs it. The values arrive as
full field dicts (``{"BID": "1.0912", ...}``) from :class:`~deltafeed.venues.ig.tlcp.ItemState`, so the MERGE
mode's "unchanged" fields are already filled in. Facts from ../shared/PROTOCOLS.md section 4.

Semantics chosen here, and why:

- **Symbols are epics** (``CS.D.EURUSD.CFD.IP``): a Quote's ``symbol`` is the epic, unchanged, so a
  quote, a streamed candle and a REST candle of one market share one name. :func:`fx_epic` and
  :func:`epic_pair` convert from and to deltafeed's FX names (``EUR_USD``).
- **Prices are IG's as they come.** Many IG FX epics quote in "points" (EUR/USD as ``11734.5``, a scaling
  factor of 10000 given by the market's details); REST history uses the same scale, so the series stay
  consistent. Nothing is rescaled here.
- **MARKET quotes are tradeable prices only**: a MARKET_STATE other than ``TRADEABLE`` (``CLOSED``,
  ``OFFLINE``, ``EDIT``, ``AUCTION``, ``AUCTION_NO_EDIT``, ``SUSPENDED``, or none yet) gives no quote and
  is counted as ``not_tradeable``: indicative prices must not move a candle (the OANDA codec skips its
  ``tradeable: false`` prices for the same reason).
- **UPDATE_TIME** is a time of day, ``HH:MM:SS``, without a date. IG's Streaming API Reference
  (net-labs.ig.com/streaming-api-reference.html) describes it as "UK local time, i.e. GMT or BST"
  (PROTOCOLS.md still lists it as a gap), so it is read in ``Europe/London`` by default; ``tz`` changes
  that (``UTC`` for deltafeed's IG replica, which sends UTC).
  The date comes from the venue's clock (``now_ms``): of the instants that read ``HH:MM:SS`` in that zone
  on the day before, the day of, and the day after ``now_ms`` (both readings of an hour repeated when
  the clocks go back), the one nearest ``now_ms`` wins. An update a little before midnight that arrives a
  little after it therefore stays on the day before. Resolution is the second: every quote of one second
  shares its ``time_ms``.
- **CHART:<epic>:1MINUTE** gives bid and ask candles (BID_* and OFR_* fields), never a mid one: IG does
  not send mid OHLC, and ``(bid_high + ask_high) / 2`` is not the high of the mid price (the two highs
  may come from different ticks), so a mid candle made that way would disagree with the exact mid
  candles deltafeed builds from MARKET quotes. ``open_time`` is ``UTM`` (epoch ms) floored to the
  minute, ``closed`` is ``CONS_END == "1"``, and ``volume`` = ``trades`` = ``CONS_TICK_COUNT`` (the
  number of price ticks, IG's volume for a quote-built candle; 0 when null).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import Counter
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from deltafeed.model import BadInput, Candle, Quote
from deltafeed.venues.checks import BAD_FIELD, DECODER_BUG, IMPOSSIBLE, price_ok

VENUE = "ig"

DEFAULT_REST_URL = "https://api.ig.com/gateway/deal"
DEMO_REST_URL = "https://demo-api.ig.com/gateway/deal"

#: Concurrent Lightstreamer connections an IG account may hold (the pool's default ceiling).
MAX_CONNECTIONS = 40

#: MARKET:<epic> (MERGE): only the fields a quote needs.
MARKET_FIELDS = ("BID", "OFFER", "UPDATE_TIME", "MARKET_STATE")
MARKET_MODE = "MERGE"

#: CHART:<epic>:1MINUTE (MERGE): bid and offer OHLC, the candle's time, completeness and tick count.
CHART_FIELDS = (
    "BID_OPEN",
    "BID_HIGH",
    "BID_LOW",
    "BID_CLOSE",
    "OFR_OPEN",
    "OFR_HIGH",
    "OFR_LOW",
    "OFR_CLOSE",
    "UTM",
    "CONS_END",
    "CONS_TICK_COUNT",
)
CHART_MODE = "MERGE"
CHART_SCALE = "1MINUTE"
MINUTE_MS = 60_000

MARKET_STATES = ("CLOSED", "OFFLINE", "TRADEABLE", "EDIT", "AUCTION", "AUCTION_NO_EDIT", "SUSPENDED")

_SIDES = (
    ("bid", "BID_OPEN", "BID_HIGH", "BID_LOW", "BID_CLOSE"),
    ("ask", "OFR_OPEN", "OFR_HIGH", "OFR_LOW", "OFR_CLOSE"),
)


# --- epics and items ----------------------------------------------------------------------------

_EPIC_RE = re.compile(r"^[A-Z0-9_\-]+(\.[A-Z0-9_\-]+){2,6}$")
_FX_EPIC_RE = re.compile(r"^CS\.D\.([A-Z]{3})([A-Z]{3})\.[A-Z0-9_]+\.IP$")


def check_epic(epic: str) -> str:
    """``epic`` in upper case if it looks like an IG epic (``CS.D.EURUSD.CFD.IP``), else :class:`BadInput`."""
    e = epic.strip().upper()
    if not _EPIC_RE.match(e):
        raise BadInput(f"{epic!r} is not an IG epic; write it like CS.D.EURUSD.CFD.IP")
    return e


def fx_epic(pair: str, product: str = "CFD") -> str:
    """IG's epic of an FX pair: ``EUR_USD`` / ``EUR/USD`` / ``eurusd`` → ``CS.D.EURUSD.CFD.IP``.

    ``product`` is the epic's fourth part: ``CFD`` (the default), ``MINI`` or ``TODAY`` for spread bets.
    """
    p = pair.strip().upper().replace("_", "").replace("/", "")
    if len(p) != 6 or not p.isalpha() or not product.isalnum():
        raise BadInput(f"{pair!r} is not an FX pair; write it like EUR_USD")
    return f"CS.D.{p}.{product.upper()}.IP"


def epic_pair(epic: str) -> str | None:
    """The FX pair of an FX epic (``CS.D.EURUSD.CFD.IP`` → ``EUR_USD``), None for other epics."""
    m = _FX_EPIC_RE.match(epic)
    return f"{m.group(1)}_{m.group(2)}" if m else None


def market_item(epic: str) -> str:
    return f"MARKET:{epic}"


def chart_item(epic: str, scale: str = CHART_SCALE) -> str:
    return f"CHART:{epic}:{scale}"


def parse_item(item: str) -> tuple[str, str, str | None]:
    """``MARKET:<epic>`` → ``("MARKET", epic, None)``; ``CHART:<epic>:<scale>`` → ``("CHART", epic, scale)``.

    Raises ValueError for other names.
    """
    kind, _, rest = item.partition(":")
    if kind == "MARKET" and rest:
        return kind, rest, None
    if kind == "CHART":
        epic, _, scale = rest.rpartition(":")
        if epic and scale:
            return kind, epic, scale
    raise ValueError(f"not an IG MARKET or CHART item: {item!r}")


# --- times --------------------------------------------------------------------------------------

UK = ZoneInfo("Europe/London")
_DAY = dt.timedelta(days=1)


def update_time_ms(text: str, now_ms: int, tz: dt.tzinfo = UK) -> int:
    """Epoch ms of a time of day ``HH:MM:SS`` in ``tz``, on the day that puts it nearest ``now_ms``.

    Candidates: that time on the day before, the day of and the day after ``now_ms`` (in ``tz``), with
    both folds of a repeated hour. Raises ValueError for text that is not ``HH:MM:SS``.
    """
    if len(text) != 8 or text[2] != ":" or text[5] != ":":
        raise ValueError(f"not an HH:MM:SS time: {text[:20]!r}")
    t = dt.time.fromisoformat(text)
    day = dt.datetime.fromtimestamp(now_ms / 1000, tz).date()
    best = 0
    best_gap = math.inf
    for d in (day - _DAY, day, day + _DAY):
        for fold in (0, 1):
            ms = int(dt.datetime.combine(d, t, tz).replace(fold=fold).timestamp()) * 1000
            gap = abs(ms - now_ms)
            if gap < best_gap:
                best, best_gap = ms, gap
    return best


class _TimeCache:
    """Remembers the epoch ms of each ``HH:MM`` resolved lately, so a quote costs a dict lookup.

    Entries are resolved against ``now_ms`` and thrown away once ``now_ms`` moved ``max_age_ms`` (10
    minutes) from when the cache started: the nearest day of a time of day changes only when ``now_ms``
    moves ~12 hours, and a day or an offset change (midnight, DST) is picked up within 10 minutes.
    """

    def __init__(self, tz: dt.tzinfo, max_age_ms: int = 600_000) -> None:
        self.tz = tz
        self.max_age_ms = max_age_ms
        self._since = 0
        self._minutes: dict[str, int] = {}

    def ms(self, text: str, now_ms: int) -> int:
        if not 0 <= now_ms - self._since < self.max_age_ms:
            self._minutes.clear()
            self._since = now_ms
        base = self._minutes.get(text[:5])
        ss = text[6:8]
        if base is None or len(text) != 8 or text[5] != ":" or not (ss.isdecimal() and ss < "60"):
            t = update_time_ms(text, now_ms, self.tz)
            self._minutes[text[:5]] = t - t % MINUTE_MS
            return t
        return base + int(ss) * 1000


# --- decoding -----------------------------------------------------------------------------------


def _price(text: str | None) -> float | None:
    """The number in a price field; None when there is none (null, empty, not a number). Whether it is a
    possible price is the caller's check (:func:`~deltafeed.venues.checks.price_ok`)."""
    if not text or len(text) > 40:
        return None
    try:
        return float(text)
    except ValueError:
        return None


#: UTM, an epoch time in ms, is refused beyond the year 5000 (and before 1970): a time a store could not
#: hold, or no time at all.
MAX_UTM_MS = 95_617_584_000_000


class IGDecoder:
    """Turns IG MARKET and CHART field dicts into :class:`Quote` and :class:`Candle`; counts what it skips.

    ``errors`` counts skipped values by kind: ``not_tradeable`` (see the module docstring), ``bad_field``
    (a missing, null or unreadable price or time), ``impossible_value`` (a price that is not finite and
    above zero) and ``decoder_bug`` (see :mod:`deltafeed.venues.checks`). ``last_error`` describes the
    latest for a rate-limited log. Never raises. ``tz`` is the zone UPDATE_TIME is read in (UK time by
    default).
    """

    def __init__(self, tz: str | dt.tzinfo = UK) -> None:
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self._times = _TimeCache(self.tz)
        self.errors: Counter[str] = Counter()
        self.last_error = ""

    def market_quote(self, epic: str, fields: Mapping[str, str | None], now_ms: int) -> Quote | None:
        """The quote of a MARKET item's current values, or None (counted) when not tradeable or unreadable.

        ``now_ms`` is the venue's now (e.g. :class:`~deltafeed.clock.VenueClock`); it only supplies the date
        of UPDATE_TIME.
        """
        try:
            return self._market_quote(epic, fields, now_ms)
        except Exception as exc:  # never let an update end the stream: see checks.DECODER_BUG
            self._skip(DECODER_BUG, f"{epic} MARKET: decoder error {type(exc).__name__}: {str(exc)[:120]}")
            return None

    def _market_quote(self, epic: str, fields: Mapping[str, str | None], now_ms: int) -> Quote | None:
        state = fields.get("MARKET_STATE")
        if state != "TRADEABLE":
            self._skip("not_tradeable", f"{epic} is {(state or 'in no known state')[:40]}, not TRADEABLE")
            return None
        bid, ask = _price(fields.get("BID")), _price(fields.get("OFFER"))
        if bid is None or ask is None:
            self._skip(
                BAD_FIELD,
                f"{epic} MARKET without a BID/OFFER number ({str(fields.get('BID'))[:40]!r}, "
                f"{str(fields.get('OFFER'))[:40]!r})",
            )
            return None
        if not (price_ok(bid) and price_ok(ask)):
            self._skip(IMPOSSIBLE, f"{epic} MARKET with an impossible BID/OFFER ({bid!r}, {ask!r})")
            return None
        text = fields.get("UPDATE_TIME")
        try:
            if text is None:
                raise ValueError("no UPDATE_TIME")
            t = self._times.ms(text, now_ms)
        except ValueError as exc:
            self._skip(BAD_FIELD, f"{epic} MARKET with a bad UPDATE_TIME: {str(exc)[:80]}")
            return None
        return Quote(epic, t, bid, ask)

    def chart_candles(self, epic: str, fields: Mapping[str, str | None]) -> dict[str, Candle]:
        """The bid and ask candles of a CHART:<epic>:1MINUTE item's current values (see the module docstring).

        A side whose OHLC is incomplete is left out (counted as ``bad_field``), and one with an impossible
        price (``impossible_value``); no UTM gives ``{}``.
        """
        try:
            return self._chart_candles(epic, fields)
        except Exception as exc:  # never let an update end the stream: see checks.DECODER_BUG
            self._skip(DECODER_BUG, f"{epic} CHART: decoder error {type(exc).__name__}: {str(exc)[:120]}")
            return {}

    def _chart_candles(self, epic: str, fields: Mapping[str, str | None]) -> dict[str, Candle]:
        utm = fields.get("UTM")
        t = _count(utm, MAX_UTM_MS)
        if t is None:
            self._skip(BAD_FIELD, f"{epic} CHART with a bad UTM {str(utm)[:40]!r}")
            return {}
        t -= t % MINUTE_MS
        closed = fields.get("CONS_END") == "1"
        ticks_text = fields.get("CONS_TICK_COUNT")
        ticks = _count(ticks_text, 2**31 - 1) if ticks_text else 0
        if ticks is None:
            ticks = 0
            self._skip(BAD_FIELD, f"{epic} CHART with a bad CONS_TICK_COUNT {str(ticks_text)[:40]!r}; taken as 0")
        out: dict[str, Candle] = {}
        for side, fo, fh, fl, fc in _SIDES:
            o, h, lo, c = (
                _price(fields.get(fo)),
                _price(fields.get(fh)),
                _price(fields.get(fl)),
                _price(fields.get(fc)),
            )
            if o is None or h is None or lo is None or c is None:
                self._skip(BAD_FIELD, f"{epic} CHART without usable {fo[:3]} prices")
                continue
            if not (price_ok(o) and price_ok(h) and price_ok(lo) and price_ok(c)):
                self._skip(IMPOSSIBLE, f"{epic} CHART with an impossible {fo[:3]} price ({o!r}, {h!r}, {lo!r}, {c!r})")
                continue
            out[side] = Candle(t, o, h, lo, c, float(ticks), ticks, closed)
        return out

    def _skip(self, kind: str, why: str) -> None:
        self.errors[kind] += 1
        self.last_error = why


def _count(text: str | None, high: int) -> int | None:
    """A decimal integer field within [0, high], or None (ASCII digits only: ``int()`` would also take
    other scripts' digits, and a field of thousands of digits)."""
    if not text or len(text) > 19 or not (text.isascii() and text.isdecimal()):
        return None
    v = int(text)
    return v if v <= high else None
