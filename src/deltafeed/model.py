"""Market events, candles, instrument names and timeframes shared by every part of deltafeed."""

from __future__ import annotations

import datetime as dt
import functools
import re
import zoneinfo
from dataclasses import dataclass

import msgspec

#: The standard timeframes, with their length in milliseconds: the ones every venue's history and
#: every store serve, and the choices offered first. Any other name of the forms ``Ns``, ``Nm``,
#: ``Nh``, ``Nd``, ``1w`` and ``1M`` is a timeframe too (see :class:`Timeframe`).
TIMEFRAMES: dict[str, int] = {
    "1s": 1_000,
    "5s": 5_000,
    "15s": 15_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}

#: What a timeframe name may look like, for error messages (and as a regular expression, for schemas).
TIMEFRAME_FORMS = (
    "Ns, Nm, Nh or Nd (N a whole number, e.g. 30s, 45s, 3m, 30m, 2h, 12h, 3d), 1w or 1M, "
    "and 1d-CITY for the day of a time zone (e.g. 1d-new_york)"
)
TIMEFRAME_PATTERN = r"^([1-9][0-9]{0,6}[smhd]|1w|1M|1d-[a-z][a-z_]{1,40})$"

_DAY_MS = 86_400_000
_WEEK_MS = 7 * _DAY_MS
#: 1970-01-05 00:00 UTC, the first Monday after the epoch (a Thursday): the default week grid's origin.
MONDAY_MS = 4 * _DAY_MS
_TF_RE = re.compile(r"^([1-9][0-9]{0,6})([smhd])$")
_ZONED_DAY_RE = re.compile(r"^1d-([a-z][a-z_]{1,40})$")
_TF_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": _DAY_MS}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EPOCH_DAY = dt.date(1970, 1, 1).toordinal()


class BadInput(ValueError):
    """A user-facing mistake (bad name, bad flag, bad file); its message names the problem and the fix."""


@dataclass(frozen=True, slots=True)
class Timeframe:
    """A candle length and the grid its candles open on, all in UTC epoch milliseconds.

    ``Ns``, ``Nm``, ``Nh`` and ``Nd`` are fixed lengths on the grid that starts at the epoch (so
    ``45s`` candles open at every multiple of 45 s since 1970, as ``5m`` ones do at multiples of 5
    minutes). ``1w`` is 7 days on a grid anchored at :data:`week_start` (Monday 00:00 UTC unless
    set otherwise): the epoch was a Thursday, so weeks are *not* epoch aligned. ``1M`` is the
    calendar month, with no fixed length: code that needs the candle after one asks :meth:`next`,
    never adds a length. ``1d-CITY`` is the local day of a time zone (``1d-new_york``: midnight to
    midnight in America/New_York): 24 hours but 23 or 25 across a daylight-saving change, so it too
    has no fixed length (``ms`` is 24 h, nominal).
    """

    name: str
    #: Length in ms; for ``1M`` the longest month (31 days), an upper bound only.
    ms: int
    #: The grid's offset from the epoch in ms (0 but for weeks).
    anchor: int = 0
    monthly: bool = False
    #: For a zoned day, the IANA time zone whose midnights open the candles ("" for a fixed grid).
    zone: str = ""

    @property
    def fixed(self) -> bool:
        """Whether every candle lasts ``ms`` on a grid offset ``anchor`` from the epoch."""
        return not self.monthly and not self.zone

    def start(self, t: int) -> int:
        """Open time of the candle that holds time ``t``."""
        if self.zone:
            return _zone_midnight(self.zone, _local_date(self.zone, t))
        if self.monthly:
            d = dt.date.fromordinal(_EPOCH_DAY + t // _DAY_MS)
            return (dt.date(d.year, d.month, 1).toordinal() - _EPOCH_DAY) * _DAY_MS
        return t - (t - self.anchor) % self.ms

    def next(self, open_time: int) -> int:
        """Open time of the candle after the one opening at ``open_time`` (its exclusive end)."""
        if self.zone:
            return _zone_midnight(self.zone, _local_date(self.zone, open_time) + dt.timedelta(days=1))
        if self.monthly:
            d = dt.date.fromordinal(_EPOCH_DAY + open_time // _DAY_MS)
            y, m = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
            return (dt.date(y, m, 1).toordinal() - _EPOCH_DAY) * _DAY_MS
        return open_time + self.ms

    def end(self, t: int) -> int:
        """Exclusive end of the candle that holds time ``t``."""
        return self.next(self.start(t))

    def prev(self, open_time: int) -> int:
        """Open time of the candle before the one opening at ``open_time``."""
        return open_time - self.ms if self.fixed else self.start(open_time - 1)

    @property
    def shortest_ms(self) -> int:
        """The shortest a candle of it lasts (28 days for ``1M``, 23 hours for a zoned day)."""
        if self.monthly:
            return 28 * _DAY_MS
        return self.ms - 3_600_000 if self.zone else self.ms

    def ceil(self, t: int) -> int:
        """The first open time at or after ``t``."""
        b = self.start(t)
        return b if b == t else self.next(b)

    def aligned(self, t: int) -> bool:
        """Whether ``t`` is an open time of this timeframe."""
        return self.start(t) == t

    def opens(self, first: int, last: int) -> list[int]:
        """Open times of the candles from the one holding ``first`` to the one holding ``last``."""
        out: list[int] = []
        t = self.start(first)
        while t <= last:
            out.append(t)
            t = self.next(t)
        return out

    def divides(self, other: Timeframe) -> bool:
        """Whether every candle of ``other`` is a whole run of candles of this one (so ``other`` can
        be rolled up from it): a fixed grid divides another when its length divides the other's
        length and its grid holds the other's origin; it divides the month when it divides a day, and
        a zoned day when it divides a day and every UTC offset of the zone."""
        if self.monthly:
            return other.monthly
        if self.zone:
            return self.name == other.name
        if other.zone:
            return (
                _DAY_MS % self.ms == 0
                and self.anchor % self.ms == 0
                and all(off % self.ms == 0 for off in _zone_offsets(other.zone))
            )
        if other.monthly:
            return _DAY_MS % self.ms == 0 and self.anchor % self.ms == 0
        return other.ms % self.ms == 0 and (other.anchor - self.anchor) % self.ms == 0

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def _local_date(zone: str, t: int) -> dt.date:
    """The date in ``zone`` at epoch ms ``t``."""
    return dt.datetime.fromtimestamp(t // 1000, _zone(zone)).date()


def _zone_midnight(zone: str, day: dt.date) -> int:
    """Epoch ms of the first moment of ``day`` in ``zone`` (00:00, or the first valid time after
    it where a daylight-saving change skips midnight)."""
    local = dt.datetime(day.year, day.month, day.day, tzinfo=_zone(zone))
    t = int(local.timestamp()) * 1000
    # A skipped midnight resolves to a time of the day before in some zones: step to the day itself.
    while _local_date(zone, t) < day:
        t += 1_800_000
    return t


@functools.lru_cache(maxsize=64)
def _zone_offsets(zone: str) -> frozenset[int]:
    """The UTC offsets (ms) ``zone`` has used at midnights since 1970, and will by its rules."""
    out = set()
    for year in range(1970, 2040):
        for month in (1, 4, 7, 10):
            off = dt.datetime(year, month, 1, tzinfo=_zone(zone)).utcoffset()
            if off is not None:
                out.add(int(off.total_seconds() * 1000))
    return frozenset(out)


@functools.lru_cache(maxsize=64)
def zone_of(city: str) -> str:
    """The IANA time zone whose city is ``city`` (``new_york`` is America/New_York), or
    :class:`BadInput` naming the form."""
    found = sorted(
        (z for z in zoneinfo.available_timezones() if z.rsplit("/", 1)[-1].lower() == city and "/" in z),
        key=lambda z: (z.count("/"), z),
    )
    if not found:
        raise BadInput(f"no time zone for the city {city!r} in 1d-{city}; write e.g. 1d-new_york, 1d-london, 1d-tokyo")
    return found[0]


def day_timeframe(zone: str) -> str:
    """The name of the daily timeframe of IANA zone ``zone`` (``1d`` for UTC, else ``1d-CITY``)."""
    if zone in ("UTC", "Etc/UTC", ""):
        return "1d"
    name = f"1d-{zone.rsplit('/', 1)[-1].lower()}"
    if zone_of(name[3:]) != zone:
        raise BadInput(f"time zone {zone!r} is not the first of its city; choose another zone")
    return name


#: The week grid's origin (ms after the epoch, within the first week): Monday 00:00 UTC by default.
#: Set it with :func:`set_week_start` (the ``week_start`` setting).
_week_anchor = MONDAY_MS
_parsed: dict[str, Timeframe] = {}


def monday_weeks() -> bool:
    """Whether ``1w`` candles start Monday 00:00 UTC (as the venues' own weekly candles do)."""
    return _week_anchor == MONDAY_MS


def _canonical(n: int, unit: str) -> tuple[int, str]:
    """``60s`` is ``1m``, ``120m`` is ``2h``, ``24h`` is ``1d``: one name per length, one series."""
    for small, big, k in (("s", "m", 60), ("m", "h", 60), ("h", "d", 24)):
        if unit == small and n % k == 0:
            n, unit = n // k, big
    return n, unit


def timeframe(name: str) -> Timeframe:
    """The :class:`Timeframe` called ``name`` (``60s`` is given as ``1m``: one name per length),
    or :class:`BadInput` listing the accepted forms."""
    tf = _parsed.get(name)
    if tf is not None:
        return tf
    text = name.strip() if isinstance(name, str) else ""
    if text == "1w":
        tf = Timeframe("1w", _WEEK_MS, _week_anchor)
    elif text == "1M":
        tf = Timeframe("1M", 31 * _DAY_MS, 0, True)
    elif (z := _ZONED_DAY_RE.match(text)) is not None:
        tf = Timeframe(text, _DAY_MS, 0, False, zone_of(z.group(1)))
    else:
        m = _TF_RE.match(text)
        if m is None:
            raise BadInput(f"unknown timeframe {name!r}; use {TIMEFRAME_FORMS}")
        n, unit = _canonical(int(m.group(1)), m.group(2))
        tf = Timeframe(f"{n}{unit}", n * _TF_UNIT_MS[unit])
    _parsed[name] = tf
    return tf


class Unavailable(BadInput):
    """A venue or store the run needs cannot be reached now (refused, timed out, starting up): the
    settings may well be right, so the command exits 69 (``EX_UNAVAILABLE``), which a supervisor
    retries, rather than 2, which means "fix the command or the config". A :class:`BadInput`, so
    every handler of user-facing errors still shows its one line."""


def timeframe_ms(name: str) -> int:
    """Length of timeframe ``name`` in ms (for ``1M`` the longest month), or :class:`BadInput`."""
    return timeframe(name).ms


def parse_timeframes(spec: str | list[str]) -> list[str]:
    """Parse ``"1m,5m"`` (or a list) into canonical timeframe names sorted from shortest to longest."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise BadInput("no timeframes given; use for example --timeframes 1m,5m")
    return sorted({timeframe(n).name for n in names}, key=timeframe_ms)


def set_week_start(spec: str) -> int:
    """Anchor the ``1w`` grid at ``spec`` (``"mon 00:00"``, the default; ``"sun 21:00"`` for FX's
    weekly open), a weekday and a UTC time of day; returns the anchor in ms. It applies to the
    whole process: every week candle of a run (and of a store) must share one grid."""
    global _week_anchor
    m = re.fullmatch(r"\s*([a-z]{3})[a-z]*\s+(\d{1,2}):(\d{2})\s*", spec.lower())
    if m is None or m.group(1) not in _WEEKDAYS or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise BadInput(f"week_start {spec!r} is not a weekday and a UTC time; write e.g. 'mon 00:00' or 'sun 21:00'")
    day = _WEEKDAYS.index(m.group(1))
    anchor = MONDAY_MS + day * _DAY_MS + int(m.group(2)) * 3_600_000 + int(m.group(3)) * 60_000
    anchor %= _WEEK_MS
    if anchor != _week_anchor:
        _week_anchor = anchor
        for key in [k for k, v in _parsed.items() if v.name == "1w"]:
            del _parsed[key]
    return anchor


def time_ms(value: str | dt.datetime) -> int:
    """Epoch milliseconds of an ISO-8601 time or a datetime, UTC unless it says otherwise.

    Raises ValueError for text that is not ISO-8601; callers word the error for their users.
    """
    t = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def bucket_start(time_ms: int, tf_ms: int) -> int:
    """Open time of the candle of length ``tf_ms`` that contains ``time_ms`` (UTC epoch aligned)."""
    return time_ms - time_ms % tf_ms


_SYMBOL_RE = re.compile(r"^[A-Za-z0-9._\-/:]{1,40}$")  # ":" for Finnhub's EXCHANGE:SYMBOL


@dataclass(frozen=True, slots=True)
class Instrument:
    """An instrument named ``venue:SYMBOL``, e.g. ``binance:BTCUSDT``."""

    venue: str
    symbol: str

    @classmethod
    def parse(cls, name: str, default_venue: str | None = None) -> Instrument:
        venue, sep, symbol = name.partition(":")
        if not sep:
            if default_venue is None:
                raise BadInput(f"instrument {name!r} has no venue; write it as VENUE:SYMBOL, e.g. binance:BTCUSDT")
            venue, symbol = default_venue, name
        venue = venue.strip().lower()
        symbol = symbol.strip().upper()
        if not venue.isalnum() or not _SYMBOL_RE.match(symbol):
            raise BadInput(f"instrument {name!r} is not a valid name; write it as VENUE:SYMBOL, e.g. binance:BTCUSDT")
        return cls(venue, symbol)

    def __str__(self) -> str:
        return f"{self.venue}:{self.symbol}"


#: The price candles of a quote-built (forex) instrument: mid = (bid + ask) / 2, the default.
PRICE_SIDES = ("mid", "bid", "ask")


def series_key(instrument: str, price: str | None = None) -> str:
    """The name a candle series is stored and served under.

    Trade-built candles and quote-built MID candles use the instrument's name (``oanda:EUR_USD``);
    BID and ASK candles append the side (``oanda:EUR_USD@bid``), so every store keeps one key
    layout for all of them.
    """
    if price is None or price == "mid" or price == "trade":
        return instrument
    if price not in PRICE_SIDES:
        raise BadInput(f"unknown price {price!r}; use one of {', '.join(PRICE_SIDES)}")
    return f"{instrument}@{price}"


def canonical_series(name: str) -> str:
    """The canonical series key of ``name`` (``oanda:eur_usd@BID`` → ``oanda:EUR_USD@bid``);
    :class:`BadInput` when it is malformed."""
    inst, sep, price = name.partition("@")
    canonical = str(Instrument.parse(inst))
    return series_key(canonical, price.strip().lower()) if sep else canonical


class Trade(msgspec.Struct, gc=False):
    """One trade as the venue reported it. ``time_ms`` is the venue's trade time."""

    symbol: str
    trade_id: int
    time_ms: int
    price: float
    qty: float
    buyer_maker: bool


class Quote(msgspec.Struct, gc=False):
    """Best bid and ask at the venue's ``time_ms``."""

    symbol: str
    time_ms: int
    bid: float
    ask: float
    bid_size: float = 0.0
    ask_size: float = 0.0


class Switch(msgspec.Struct, frozen=True):
    """A logical instrument's move from one source to another (failover).

    The old source's data ends at ``since_ms``; the candle of each timeframe holding it, and every
    later one, come from ``source_to``. That candle spans the switch: before it the series is the
    old source's, from it on the new one's.
    """

    instrument: str
    since_ms: int  # the old source's last data, by the venue's clock
    at_ms: int  # when the switch was made, by the new source's clock
    source_from: str
    source_to: str

    def spanning(self, tf: Timeframe | int) -> int:
        """Open time of the candle of timeframe ``tf`` (or a length in ms, epoch aligned) that spans
        the switch."""
        return tf.start(self.since_ms) if isinstance(tf, Timeframe) else self.since_ms - self.since_ms % tf


#: The three states of a candle, as every read path names them (see :attr:`Candle.state`).
FORMING, PROVISIONAL, FINAL = "forming", "provisional", "final"
CANDLE_STATES = (FORMING, PROVISIONAL, FINAL)


class Candle(msgspec.Struct, gc=False):
    """One OHLCV candle; ``open_time`` is its start in epoch ms.

    ``closed`` says its interval is over; ``final`` says deltafeed vouches for it: an unbroken run
    of the venue's sequence ids covers it, or it equals the venue's own closed candle, or it came
    from (or was reconciled with) the venue's history. A closed candle that is not final is
    *provisional*: the timer closed it, it was built while the stream was down or behind a hole,
    or it waits for a repair or a reconciliation. ``final`` implies ``closed``.

    Mutable on purpose: the aggregator updates the open candle in place on every trade.
    """

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    closed: bool = False
    final: bool = False

    @property
    def state(self) -> str:
        """``forming``, ``provisional`` or ``final``."""
        return FINAL if self.final else PROVISIONAL if self.closed else FORMING

    def row(self) -> tuple[int, float, float, float, float, float, int]:
        return (self.open_time, self.open, self.high, self.low, self.close, self.volume, self.trades)


def state_flags(state: str) -> tuple[bool, bool]:
    """``(closed, final)`` of a state name; :class:`BadInput` for any other name."""
    if state == FINAL:
        return True, True
    if state == PROVISIONAL:
        return True, False
    if state == FORMING:
        return False, False
    raise BadInput(f"unknown candle state {state!r}; use one of {', '.join(CANDLE_STATES)}")


class VenueCandle(msgspec.Struct, gc=False):
    """A candle reported by the venue itself (a kline), with its timeframe and event time."""

    symbol: str
    timeframe: str
    event_ms: int
    candle: Candle
    first_trade_id: int = -1
    last_trade_id: int = -1


class ServerShutdown(msgspec.Struct, gc=False):
    """The venue announced that it will close this connection soon."""

    event_ms: int


Event = Trade | Quote | VenueCandle | ServerShutdown


_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(text: str) -> int:
    """Parse ``90s``, ``15m``, ``6h``, ``2d``, ``1w`` (or ``0``) into milliseconds."""
    t = text.strip().lower()
    if t == "0":
        return 0
    m = _DURATION_RE.match(t)
    if not m:
        raise BadInput(f"cannot read duration {text!r}; write a number and a unit, e.g. 90s, 15m, 6h, 2d")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def fmt(x: float) -> str:
    """A price or quantity as decimal text with 8 places, as Binance writes them: a replica's tape
    and its wire use this one function, so a trade's text on the tape is exactly its text on the wire."""
    return f"{x:.8f}"


_CLUSTER_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def cluster_name(name: str) -> str:
    """``name`` if it can name a cluster (letters, digits, ``_`` and ``-``: it is a NATS subject token
    and part of stream and bucket names, see :mod:`deltafeed.cluster.subjects`), else :class:`BadInput`."""
    if not isinstance(name, str) or not _CLUSTER_RE.match(name):
        raise BadInput(f"cluster name {name!r} is not valid; use letters, digits, '_' and '-' (e.g. prod-eu)")
    return name
