"""Seeded forex quotes for replicas: a bid/ask simulator, a market that releases them over time, a tape.

Why it is built like this:

* **Random access.** A quote of ``(seed, symbol)`` at any instant is a pure function of that instant:
  quotes are generated per UTC *minute*, each minute from its own generator seeded by
  ``(seed, symbol, minute)``. Asking for one minute in 2026 generates that minute only, so the
  same seed gives the same quotes however a range is sliced, and a replica can answer any request
  without replaying history quote by quote.
* **A continuous price path.** The log mid-price at every whole hour comes from a mean-reverting
  (Ornstein-Uhlenbeck) walk over hours counted from 2000-01-01, computed in vectorised blocks of
  :data:`BLOCK_HOURS` hours and cached per symbol (a few thousand normals per block, ~60 blocks to
  reach today: milliseconds, once). Inside an hour, minute anchors form a Brownian bridge between
  the two hour anchors, and quotes form a Brownian bridge between their minute's two anchors, so
  the path is continuous across minutes and hours, and the hourly volatility is about the pair's
  real one (~0.1 %, i.e. ~0.5 % a day). Mean reversion keeps prices in a realistic band for decades.
* **Calendar.** Quote *generation* ignores the calendar; the calendar only filters: no quote exists
  while the FX market is closed (open Sunday 17:00 to Friday 17:00 America/New_York, DST-aware,
  minus holidays: :class:`~deltafeed.candles.calendar.FxCalendar`, PROTOCOLS.md section 8). Hours
  when the market is usually closed get a quarter of the hourly volatility, so Sunday opens gap by a
  realistic amount, not by two days of volatility.
* **Exact prices.** Prices are integers on the pair's price step (10**-5, 10**-3 for ``*_JPY`` and
  gold, as Dukascopy and OANDA quote them). The spread is a whole number of points, about one pip,
  so ``bid < ask`` always holds. Strings are formatted once, the same way for the stream and the tape.

:class:`QuoteMarket` releases a :class:`QuoteSim`'s quotes up to a market time (as the Binance
replica's ``MarketSim`` does for trades), writes them to a :class:`QuoteTapeWriter`, and folds them
into one row per 5 seconds holding bid, ask and mid open/high/low/close and the quote count, from
which any candle of 5 s or a multiple of it is an exact roll-up.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from deltafeed.candles.calendar import FxCalendar
from deltafeed.model import BadInput, Candle, Quote
from deltafeed.replicas.table import GrowableTable, bucket_starts
from deltafeed.replicas.tape import QUOTE_COLUMNS, TapeWriter

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
#: The simulator's market starts here: no quote exists before 2000-01-01T00:00:00Z.
ORIGIN_MS = 946_684_800_000
_ORIGIN_HOUR = ORIGIN_MS // HOUR_MS
#: Hours per vectorised block of the hourly walk. Part of the sequence's definition.
BLOCK_HOURS = 4096
#: Mean-reversion time of the hourly walk, in hours (a year): the stationary spread of log prices is
#: about vol * sqrt(TAU_HOURS / 2), ~7 % for EUR_USD.
TAU_HOURS = 8760.0
#: Volatility multiplier for hours when the market is usually closed (see the module docstring).
CLOSED_HOUR_VOL = 0.25
#: Candle roll-up rows: every OANDA granularity from S5 up is a whole number of these.
ROW_MS = 5_000
#: Liquidity of a quote's best level (OANDA's fixture shows 10000000 on every level).
LIQUIDITY = 10_000_000
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
# Generator "kinds" inside a (seed, symbol) key: part of the sequence's definition.
_HOURS, _MINUTES, _QUOTES = 1, 2, 3


# --- pairs ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PairSpec:
    """An FX instrument as the simulator and the OANDA replica's instrument list need it.

    Prices are integer *points* of ``10**-decimals``; a pip is ten points.
    """

    symbol: str  # OANDA form, e.g. EUR_USD
    base: str
    quote: str
    decimals: int
    start_points: int  # mid price the hourly walk reverts to
    spread_min: int  # points
    spread_extra: float  # mean of the Poisson part of the spread, points
    vol_per_hour: float  # standard deviation of the log price over one market hour

    @property
    def scale(self) -> int:
        return int(10**self.decimals)

    @property
    def pip_location(self) -> int:
        """OANDA's ``pipLocation``: -4 for 5-decimal pairs, -2 for 3-decimal ones."""
        return 1 - self.decimals

    @property
    def kind(self) -> str:
        """OANDA's instrument ``type``."""
        return "METAL" if self.base in ("XAU", "XAG") else "CURRENCY"

    def price(self, points: int) -> str:
        """A price as served and taped, e.g. ``"1.08494"``."""
        return f"{points / self.scale:.{self.decimals}f}"

    def mid_prices(self, sums: I64) -> list[str]:
        """Mid prices from bid + ask sums (in points), exact: one decimal more than the pair's."""
        f = f"%.{self.decimals + 1}f"
        return [f % x for x in (sums * 5 / float(self.scale * 10)).tolist()]

    def prices(self, points: I64) -> list[str]:
        # points / scale is the double nearest the decimal price, so %.Nf prints it exactly.
        f = f"%.{self.decimals}f"
        return [f % x for x in (points / float(self.scale)).tolist()]

    @classmethod
    def for_symbol(cls, symbol: str) -> PairSpec:
        """The spec of ``EUR_USD`` and the like; any ``AAA_BBB`` is accepted (unknown pairs start at 1)."""
        sym = symbol.strip().upper()
        base, sep, quote = sym.partition("_")
        if not (
            sep
            and len(base) == 3
            and len(quote) == 3
            and base.isalpha()
            and quote.isalpha()
            and base.isascii()
            and quote.isascii()
        ):
            raise BadInput(f"instrument {symbol!r} is not an OANDA pair name; write it like EUR_USD")
        known = _KNOWN.get(sym)
        if known is not None:
            price, smin, sextra, vol = known
        else:
            price = "100.000" if quote == "JPY" else "1.00000"
            smin, sextra, vol = 8, 4.0, 0.001
        decimals = len(price.partition(".")[2])
        return cls(sym, base, quote, decimals, int(price.replace(".", "")), smin, sextra, vol)


#: Start price (its decimals are the pair's precision), minimum spread and mean extra spread in
#: points, hourly volatility. Spreads average about a pip (OANDA's majors: 1.0-1.5 pips).
_KNOWN: dict[str, tuple[str, int, float, float]] = {
    "EUR_USD": ("1.08500", 8, 3.0, 0.0010),
    "GBP_USD": ("1.27000", 9, 4.0, 0.0011),
    "USD_JPY": ("150.000", 8, 4.0, 0.0012),
    "USD_CHF": ("0.88000", 9, 4.0, 0.0010),
    "AUD_USD": ("0.66000", 8, 4.0, 0.0012),
    "USD_CAD": ("1.36000", 9, 4.0, 0.0009),
    "NZD_USD": ("0.60000", 9, 5.0, 0.0012),
    "EUR_GBP": ("0.85500", 9, 4.0, 0.0008),
    "EUR_JPY": ("162.000", 10, 5.0, 0.0012),
    "GBP_JPY": ("190.000", 14, 8.0, 0.0014),
    "XAU_USD": ("2300.000", 200, 100.0, 0.0025),
}


# --- the FX calendar ----------------------------------------------------------------------------------


@runtime_checkable
class SessionCalendar(Protocol):
    """What the simulator needs of a market calendar: the state at an instant and the next change.

    ``next_close`` is asked only while the market is open and ``next_open`` only while it is closed,
    so both return an instant after the one given (``None`` or a huge value: no change ahead).
    :class:`~deltafeed.candles.calendar.FxCalendar` and ``AlwaysOpen`` qualify.
    """

    def is_open(self, time_ms: int) -> bool: ...

    def next_open(self, time_ms: int) -> int | None: ...

    def next_close(self, time_ms: int) -> int | None: ...


def fx_calendar() -> SessionCalendar:
    """A fresh :class:`~deltafeed.candles.calendar.FxCalendar` (the shared FX week and holidays).

    Not the shared ``CALENDARS["fx"]`` instance: that one caches its last answer in plain
    attributes, and a simulator may run in a worker thread (the Dukascopy replica's) while the engine
    asks the shared calendar on the event loop.
    """
    return FxCalendar()


def _usually_closed(hours: I64) -> npt.NDArray[np.bool_]:
    """Hours (since the epoch) inside the FX weekend, approximated in UTC as Friday 21:00 to Sunday
    21:00. Only scales the hourly volatility, so it must not depend on a calendar object."""
    day = hours // 24
    hod = hours % 24
    wd = (day + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
    closed: npt.NDArray[np.bool_] = (wd == 5) | ((wd == 4) & (hod >= 21)) | ((wd == 6) & (hod < 21))
    return closed


# --- generation ------------------------------------------------------------------------------------


@dataclass(slots=True)
class QuoteBatch:
    """Consecutive quotes of one symbol, as arrays; prices in integer points of ``spec``."""

    spec: PairSpec
    times: I64
    bid: I64
    ask: I64

    def __len__(self) -> int:
        return len(self.times)

    @property
    def symbol(self) -> str:
        return self.spec.symbol

    def quotes(self) -> list[Quote]:
        s = float(self.spec.scale)
        sym = self.spec.symbol
        size = float(LIQUIDITY)
        return [
            Quote(sym, t, b, a, size, size)
            for t, b, a in zip(self.times.tolist(), (self.bid / s).tolist(), (self.ask / s).tolist(), strict=True)
        ]


def _empty_batch(spec: PairSpec) -> QuoteBatch:
    e = np.empty(0, np.int64)
    return QuoteBatch(spec, e, e, e)


def _concat(spec: PairSpec, parts: list[tuple[I64, I64, I64]]) -> QuoteBatch:
    if not parts:
        return _empty_batch(spec)
    if len(parts) == 1:
        return QuoteBatch(spec, *parts[0])
    return QuoteBatch(
        spec,
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


class _Lru(OrderedDict[int, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: int, value: Any) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


class _SymbolState:
    """Caches of one symbol: block starts of the hourly walk, and recent blocks, hours and minutes."""

    def __init__(self, spec: PairSpec, seed: int) -> None:
        self.spec = spec
        self.key = [seed & _MASK64, zlib.crc32(spec.symbol.encode())]
        self.block_starts: list[float] = [0.0]  # log offset at the first hour of each block
        self.blocks = _Lru(2)
        self.hours = _Lru(4)
        self.minutes = _Lru(8)


class QuoteSim:
    """Seeded bid/ask quotes for FX ``symbols`` (OANDA names, e.g. ``EUR_USD``), or for instruments
    of any kind given as their :class:`PairSpec` (a stock's price steps and spread).

    ``rate`` is the mean number of quotes per second per symbol while the market is open;
    ``calendar`` says when it is (default :func:`fx_calendar`: Sunday 17:00 to Friday 17:00
    America/New_York, closed on 25 Dec and 1 Jan). The same ``(seed, rate)`` gives the
    same quotes for any slicing of time; the calendar only decides which of them exist.

    Not thread-safe (it caches recent hours and minutes): call it from one thread at a time.
    """

    def __init__(
        self,
        symbols: Iterable[str | PairSpec],
        seed: int = 1,
        rate: float = 2.0,
        calendar: SessionCalendar | None = None,
    ) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise BadInput(f"quote rate must be a positive number of quotes per second, got {rate}")
        self.specs: dict[str, PairSpec] = {}
        for s in symbols:  # an FX pair's name, or the spec of any other instrument
            spec = s if isinstance(s, PairSpec) else PairSpec.for_symbol(s)
            self.specs[spec.symbol] = spec
        if not self.specs:
            raise BadInput("no instruments to simulate; give at least one, e.g. EUR_USD")
        self.seed = seed
        self.rate = float(rate)
        self.calendar: SessionCalendar = calendar if calendar is not None else fx_calendar()
        self._state = {s: _SymbolState(spec, seed) for s, spec in self.specs.items()}
        self._spans: list[tuple[int, int, bool]] = []  # recent calendar spans [a, b) and whether open
        #: Quotes generated so far (minutes served from cache are not counted again).
        self.generated = 0

    @property
    def symbols(self) -> list[str]:
        return list(self.specs)

    # -- public --

    def batch(self, symbol: str, start_ms: int, end_ms: int) -> QuoteBatch:
        """Quotes of ``symbol`` with ``start_ms <= time_ms < end_ms``, as arrays, in time order."""
        st = self._state[symbol]
        parts: list[tuple[I64, I64, I64]] = []
        for a, b in self.open_spans(max(start_ms, ORIGIN_MS), end_ms):
            for m in range(a // MINUTE_MS, (b - 1) // MINUTE_MS + 1):
                times, bid, ask = self._minute(st, m)
                m0 = m * MINUTE_MS
                lo = 0 if a <= m0 else int(np.searchsorted(times, a, "left"))
                hi = len(times) if b >= m0 + MINUTE_MS else int(np.searchsorted(times, b, "left"))
                if hi > lo:
                    parts.append((times[lo:hi], bid[lo:hi], ask[lo:hi]))
        return _concat(st.spec, parts)

    def quotes(self, symbol: str, start_ms: int, end_ms: int) -> list[Quote]:
        """Quotes of ``symbol`` with ``start_ms <= time_ms < end_ms`` (sizes are the top level's liquidity)."""
        return self.batch(symbol, start_ms, end_ms).quotes()

    def open_spans(self, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """The parts of ``[start_ms, end_ms)`` when the market is open, as ``[a, b)`` pairs."""
        out: list[tuple[int, int]] = []
        t = start_ms
        while t < end_ms:
            _, b, is_open = self._span_at(t)
            b = min(b, end_ms)
            if is_open:
                if out and out[-1][1] == t:
                    out[-1] = (out[-1][0], b)
                else:
                    out.append((t, b))
            t = b
        return out

    # -- calendar --

    def _span_at(self, t: int) -> tuple[int, int, bool]:
        for span in self._spans:
            if span[0] <= t < span[1]:
                return span
        cal = self.calendar
        is_open = cal.is_open(t)
        nxt = cal.next_close(t) if is_open else cal.next_open(t)
        end = 2**62 if nxt is None else int(nxt)
        if end <= t:
            raise RuntimeError(f"calendar {cal!r} returned a change at {nxt} that is not after {t}")
        span = (t, end, is_open)
        self._spans = [span, *self._spans[:3]]
        return span

    # -- the hourly walk --

    def _block(self, st: _SymbolState, b: int) -> F64:
        """Log offsets at hours ``b * BLOCK_HOURS .. (b + 1) * BLOCK_HOURS`` after the origin (inclusive)."""
        x: F64 | None = st.blocks.get(b)
        if x is not None:
            return x
        while len(st.block_starts) <= b:
            k = len(st.block_starts) - 1
            st.block_starts.append(float(self._walk_block(st, k)[-1]))
        x = self._walk_block(st, b)
        st.blocks.put(b, x)
        return x

    def _walk_block(self, st: _SymbolState, b: int) -> F64:
        cached: F64 | None = st.blocks.get(b)
        if cached is not None:
            return cached
        rng = np.random.default_rng([*st.key, _HOURS, b])
        n = BLOCK_HOURS
        hours = _ORIGIN_HOUR + b * n + np.arange(n, dtype=np.int64)
        scale = np.where(_usually_closed(hours), CLOSED_HOUR_VOL * st.spec.vol_per_hour, st.spec.vol_per_hour)
        e = rng.standard_normal(n) * scale
        # x[i+1] = phi x[i] + e[i], vectorised: x[i] = phi^i (x[0] + sum_{j<i} e[j] phi^-(j+1)).
        # phi^-n is about e^0.47 for these constants, so nothing overflows or cancels badly.
        i = np.arange(n + 1, dtype=np.float64)
        decay = np.exp(-i / TAU_HOURS)
        acc = np.concatenate([[st.block_starts[b]], st.block_starts[b] + np.cumsum(e / decay[1:])])
        x: F64 = decay * acc
        st.blocks.put(b, x)
        return x

    def _hour_anchor(self, st: _SymbolState, hour: int) -> float:
        b, i = divmod(hour - _ORIGIN_HOUR, BLOCK_HOURS)
        return float(self._block(st, b)[i])

    def _minute_anchors(self, st: _SymbolState, hour: int) -> F64:
        """Log offsets at the 61 minute boundaries of ``hour``: a Brownian bridge between its anchors."""
        y: F64 | None = st.hours.get(hour)
        if y is not None:
            return y
        x0, x1 = self._hour_anchor(st, hour), self._hour_anchor(st, hour + 1)
        rng = np.random.default_rng([*st.key, _MINUTES, hour])
        w = np.cumsum(rng.standard_normal(60) * (st.spec.vol_per_hour / math.sqrt(60.0)))
        k = np.arange(1, 61, dtype=np.float64) / 60.0
        y = np.empty(61, np.float64)
        y[0] = x0
        y[1:] = x0 + w - k * w[-1] + k * (x1 - x0)
        y[60] = x1  # exactly the next hour's first anchor
        st.hours.put(hour, y)
        return y

    def _minute(self, st: _SymbolState, minute: int) -> tuple[I64, I64, I64]:
        """All quotes of one UTC minute (calendar ignored): times, bid and ask points."""
        cached: tuple[I64, I64, I64] | None = st.minutes.get(minute)
        if cached is not None:
            return cached
        spec = st.spec
        hour, k = divmod(minute, 60)
        y = self._minute_anchors(st, hour)
        ya, yb = float(y[k]), float(y[k + 1])
        rng = np.random.default_rng([*st.key, _QUOTES, minute])
        # The order of the draws below is part of the sequence's definition.
        n = int(rng.poisson(self.rate * 60.0))
        offs = np.sort(rng.integers(0, MINUTE_MS, n, dtype=np.int64))
        dt_ = np.diff(offs, prepend=0, append=MINUTE_MS).astype(np.float64)
        w = np.cumsum(rng.standard_normal(n + 1) * np.sqrt(dt_ / MINUTE_MS)) * (spec.vol_per_hour / math.sqrt(60.0))
        frac = offs / float(MINUTE_MS)
        x = ya + w[:-1] - frac * w[-1] + frac * (yb - ya)
        spread = spec.spread_min + rng.poisson(spec.spread_extra, n).astype(np.int64)
        mid = spec.start_points * np.exp(x)
        bid = np.rint(mid - spread / 2.0).astype(np.int64)
        out = (minute * MINUTE_MS + offs, bid, bid + spread)
        st.minutes.put(minute, out)
        self.generated += n
        return out


# --- tape ---------------------------------------------------------------------------------------------

QUOTE_TAPE_HEADER = ",".join(QUOTE_COLUMNS) + "\n"


class QuoteTapeWriter:
    """Writes every released quote as a CSV row ``symbol,time_ms,bid,ask`` (a shared quote
    :class:`~deltafeed.replicas.tape.TapeWriter`), prices formatted exactly as the replica serves them;
    flushes after each write."""

    def __init__(self, path: str | Path) -> None:
        self._w = TapeWriter.quotes(path)
        self.path = self._w.path

    @property
    def rows(self) -> int:
        return self._w.rows

    def write(self, batches: Iterable[QuoteBatch]) -> None:
        for b in batches:
            if len(b):
                self._w.write(b.symbol, b.times.tolist(), b.spec.prices(b.bid), b.spec.prices(b.ask))

    def close(self) -> None:
        self._w.close()


# --- released quotes and candles -------------------------------------------------------------------

_ROW_DTYPE = np.dtype([
    ("t", np.int64), ("n", np.int64),
    ("bo", np.int64), ("bh", np.int64), ("bl", np.int64), ("bc", np.int64),
    ("ao", np.int64), ("ah", np.int64), ("al", np.int64), ("ac", np.int64),
    ("mo", np.int64), ("mh", np.int64), ("ml", np.int64), ("mc", np.int64),
])  # fmt: skip
_SIDES = {"b": "bid", "a": "ask", "m": "mid"}


def _merge_row(last: Any, first: Any) -> None:
    last["n"] += first["n"]
    for p in "bam":
        last[p + "h"] = max(last[p + "h"], first[p + "h"])
        last[p + "l"] = min(last[p + "l"], first[p + "l"])
        last[p + "c"] = first[p + "c"]


class _Rows(GrowableTable):
    """One row per 5 s that has quotes (a :class:`GrowableTable`); ``m*`` hold bid + ask (twice the
    mid) so every field is an exact integer and a 5 s split across two batches merges without loss."""

    def __init__(self) -> None:
        super().__init__(_ROW_DTYPE)

    def append(self, b: QuoteBatch) -> None:
        if not len(b):
            return
        t5 = b.times - b.times % ROW_MS
        starts, ends = bucket_starts(t5)
        m = b.bid + b.ask
        new = np.empty(len(starts), _ROW_DTYPE)
        new["t"] = t5[starts]
        new["n"] = ends - starts
        for p, arr in (("b", b.bid), ("a", b.ask), ("m", m)):
            new[p + "o"] = arr[starts]
            new[p + "h"] = np.maximum.reduceat(arr, starts)
            new[p + "l"] = np.minimum.reduceat(arr, starts)
            new[p + "c"] = arr[ends - 1]
        self.add_buckets(new, _merge_row)


@dataclass(slots=True)
class QuoteCandles:
    """Candles as columns, prices in integer points. Mid prices are ``(bid + ask) / 2`` per quote,
    rounded half up to the pair's precision (OANDA's rounding is not documented [UNVERIFIED])."""

    spec: PairSpec
    open_time: I64
    volume: I64  # number of quotes
    complete: npt.NDArray[np.bool_]
    ohlc: dict[str, tuple[I64, I64, I64, I64]]  # "bid" | "ask" | "mid" -> open, high, low, close

    def __len__(self) -> int:
        return len(self.open_time)

    def candles(self, side: str = "mid") -> list[Candle]:
        """Model candles of one side (``trades`` and ``volume`` are both the quote count)."""
        s = float(self.spec.scale) * (2 if side == "mid" else 1)  # "mid" holds bid + ask
        o, h, lo, c = (x / s for x in self.ohlc[side])
        return [
            Candle(*row)
            for row in zip(
                self.open_time.tolist(), o.tolist(), h.tolist(), lo.tolist(), c.tolist(),
                self.volume.astype(np.float64).tolist(), self.volume.tolist(), self.complete.tolist(), strict=True,
            )
        ]  # fmt: skip


class QuoteMarket:
    """A :class:`QuoteSim`'s quotes released up to a market time, with candle queries and a tape.

    At construction the history ``[start_ms - history_ms, start_ms]`` is released (and taped).
    """

    def __init__(
        self, sim: QuoteSim, start_ms: int, history_ms: int = 86_400_000, tape: str | Path | None = None
    ) -> None:
        if history_ms < 0:
            raise BadInput(f"history must not be negative, got {history_ms} ms")
        self.sim = sim
        self.start_ms = int(start_ms)
        self.origin_ms = self.start_ms - history_ms
        self.released_ms = self.origin_ms - 1  # every quote with time <= released_ms is out
        self.quotes_released = 0
        self._rows = {s: _Rows() for s in sim.specs}
        self._last: dict[str, tuple[int, int, int]] = {}
        self.tape = QuoteTapeWriter(tape) if tape is not None else None
        self.advance_to(self.start_ms)

    @property
    def specs(self) -> dict[str, PairSpec]:
        return self.sim.specs

    def advance_to(self, market_ms: int) -> dict[str, QuoteBatch]:
        """Release every quote with ``time_ms <= market_ms``; returns the new ones per symbol."""
        out: dict[str, QuoteBatch] = {}
        if market_ms <= self.released_ms:
            return out
        for sym in self.sim.specs:
            b = self.sim.batch(sym, self.released_ms + 1, market_ms + 1)
            if len(b):
                out[sym] = b
                self._rows[sym].append(b)
                self._last[sym] = (int(b.times[-1]), int(b.bid[-1]), int(b.ask[-1]))
                self.quotes_released += len(b)
        self.released_ms = market_ms
        if out and self.tape is not None:
            self.tape.write(out.values())
        return out

    def last_quote(self, symbol: str) -> tuple[int, int, int] | None:
        """Time, bid and ask points of the symbol's last released quote, or None."""
        return self._last.get(symbol)

    def candles(
        self,
        symbol: str,
        granularity_ms: int,
        lo_ms: int | None,
        hi_ms: int | None,
        count: int,
        from_start: bool,
        now_ms: int,
        *,
        edges: I64 | None = None,
        smooth: bool = False,
    ) -> QuoteCandles:
        """Candles of ``granularity_ms`` (a multiple of 5 s, aligned to the epoch) whose open time is in
        ``[lo_ms, hi_ms)``: the first ``count`` of them if ``from_start``, else the last ``count``.

        ``edges`` (sorted open times, each a multiple of 5 s, spanning every released quote) replaces the
        epoch grid, for candles of uneven length (days in a time zone, weeks, months); ``granularity_ms``
        is then ignored. ``smooth``: each candle opens at the close of the quote before it, if any.
        Only intervals with quotes have a candle, as on OANDA. A candle is complete once its end is
        at or before ``now_ms``.
        """
        g = granularity_ms
        if edges is None and (g <= 0 or g % ROW_MS):
            raise ValueError(f"granularity must be a positive multiple of {ROW_MS} ms, got {g}")
        spec = self.sim.specs[symbol]
        rows = self._rows[symbol].view()
        t = rows["t"]

        def ceil(x: int) -> int:  # the first open time at or after x
            if edges is None:
                return x + (-x % g)
            i = int(np.searchsorted(edges, x, "left"))
            return int(edges[i]) if i < len(edges) else x

        def opens_of(times: I64) -> I64:
            if edges is None:
                return times - times % g
            return edges[np.searchsorted(edges, times, "right") - 1]

        # A candle opens at or after x exactly when its rows are at or after x rounded up to the grid.
        i0 = 0 if lo_ms is None else int(np.searchsorted(t, ceil(lo_ms), "left"))
        i1 = len(t) if hi_ms is None else int(np.searchsorted(t, ceil(hi_ms), "left"))
        seg = rows[i0:i1]
        if not len(seg) or count <= 0:
            e = np.empty(0, np.int64)
            return QuoteCandles(spec, e, e, np.empty(0, np.bool_), {s: (e, e, e, e) for s in _SIDES.values()})
        ot = opens_of(seg["t"])
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ot)) + 1]).astype(np.int64)
        if len(starts) > count:
            if from_start:
                seg = seg[: starts[count]]
                starts = starts[:count]
            else:
                first = starts[-count]
                seg = seg[first:]
                i0 += int(first)
                starts = starts[-count:] - first
            ot = opens_of(seg["t"])
        ends = np.append(starts[1:], len(seg))
        opens = ot[starts]
        # The row before each candle's first row, in the whole history (-1: none).
        before = starts + i0 - 1
        ohlc: dict[str, tuple[I64, I64, I64, I64]] = {}
        for p, side in _SIDES.items():
            o, h = seg[p + "o"][starts], np.maximum.reduceat(seg[p + "h"], starts)
            lo, c = np.minimum.reduceat(seg[p + "l"], starts), seg[p + "c"][ends - 1]
            if smooth:
                o = np.where(before >= 0, rows[p + "c"][np.maximum(before, 0)], o)
            # "m" keeps bid + ask (twice the mid): the mid is served exactly, see PairSpec.mid_prices.
            ohlc[side] = (o, h, lo, c)
        volume = np.add.reduceat(seg["n"], starts)
        if edges is None:
            closes = opens + g
        else:
            nxt = np.searchsorted(edges, opens, "right")
            closes = np.where(nxt < len(edges), edges[np.minimum(nxt, len(edges) - 1)], np.iinfo(np.int64).max)
        return QuoteCandles(spec, opens, volume, closes <= now_ms, ohlc)

    def close(self) -> None:
        if self.tape is not None:
            self.tape.close()
