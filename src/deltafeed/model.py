"""Market events, candles, instrument names and timeframes shared by every part of deltafeed."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

import msgspec

#: Timeframes deltafeed builds, with their length in milliseconds. Each one divides the next,
#: so any configured subset can be rolled up from its smallest member.
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


class BadInput(ValueError):
    """A user-facing mistake (bad name, bad flag, bad file); its message names the problem and the fix."""


def timeframe_ms(name: str) -> int:
    """Length of timeframe ``name`` in ms, or :class:`BadInput` naming the valid choices."""
    try:
        return TIMEFRAMES[name]
    except KeyError:
        raise BadInput(f"unknown timeframe {name!r}; use one of {' '.join(TIMEFRAMES)}") from None


def parse_timeframes(spec: str | list[str]) -> list[str]:
    """Parse ``"1m,5m"`` (or a list) into timeframe names sorted from shortest to longest."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    if not names:
        raise BadInput("no timeframes given; use for example --timeframes 1m,5m")
    for n in names:
        timeframe_ms(n)
    return sorted(set(names), key=TIMEFRAMES.__getitem__)


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

    def spanning(self, tf_ms: int) -> int:
        """Open time of the candle of a ``tf_ms`` timeframe that spans the switch."""
        return self.since_ms - self.since_ms % tf_ms


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
