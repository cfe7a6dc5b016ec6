"""A seeded market simulator for venue replicas: trades per symbol, a market clock, kline queries, a tape.

The trade sequence of a symbol is a pure function of ``(seed, symbol, rate, origin)``, where
``origin = start_ms - history_ms`` is the time the market opened. Trades are generated in
fixed-size vectorised chunks (``CHUNK`` trades) and *released* up to the market time a caller asks
for, so how often and in what steps the simulator is advanced never changes what it produces.

Released trades are folded into one row per second that has trades (open/high/low/close in price
ticks, volume in lots, counts, first/last trade id). Every Binance interval is a whole number of
seconds aligned to whole seconds, so any kline is an exact roll-up of these rows, memory stays
proportional to market seconds rather than to trades (a benchmark at 300k trades/s would otherwise
keep ~7 MB of raw trades per second), and kline queries are a few numpy calls.

All sums are exact: prices are integers on the symbol's tick grid and quantities integers on a lot
step of 10**-5, converted to floats only when a candle is built.
"""

from __future__ import annotations

import calendar
import math
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from deltafeed.model import BadInput, Candle, Timeframe, Trade, fmt
from deltafeed.replicas.table import GrowableTable, bucket_starts
from deltafeed.replicas.tape import TRADE_COLUMNS, TapeWriter

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
B8 = npt.NDArray[np.bool_]

#: Trades generated per vectorised step. Part of the definition of the sequence: changing it
#: changes every seeded market.
CHUNK = 4096
LOT_DECIMALS = 5  # quantities are integers of 0.00001
_LOT_SCALE = 10**LOT_DECIMALS
#: Volatility of the random walk per second of market time, as a fraction of the start price
#: (about 3 % a day). The per-trade step is scaled by 1/sqrt(rate) so that the price path over market
#: time looks the same whatever the trade rate.
VOL_PER_SECOND = 1e-4
MEAN_NOTIONAL = 500.0  # mean trade size in quote currency at the start price

#: Start price in dollars and number of price decimals (the tick is 10**-decimals) of well-known base
#: assets, for any dollar quote: BTCUSDT, BTCUSD (Coinbase's BTC-USD, Kraken's BTC/USD) alike.
KNOWN_BASES: dict[str, tuple[str, int]] = {
    "BTC": ("60000.00", 2),
    "ETH": ("3000.00", 2),
    "SOL": ("150.000", 3),
}
DEFAULT_SYMBOL = ("100.00", 2)
_QUOTES = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL", "JPY")
_DOLLARS = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "USD")


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """What the simulator and the replicas' instrument lists need to know about a symbol."""

    symbol: str
    base: str
    quote: str
    price_decimals: int
    start_ticks: int
    lot_decimals: int = LOT_DECIMALS

    @property
    def price_scale(self) -> int:
        return int(10**self.price_decimals)

    @property
    def tick(self) -> str:
        """The tick size as a decimal string, e.g. ``"0.01"``."""
        return f"{1 / self.price_scale:.{self.price_decimals}f}"

    @property
    def lot(self) -> str:
        return f"{1 / 10**self.lot_decimals:.{self.lot_decimals}f}"

    @classmethod
    def for_symbol(cls, symbol: str) -> SymbolSpec:
        sym = symbol.strip().upper()
        if not sym.isalnum() or not 2 <= len(sym) <= 20:
            raise BadInput(f"symbol {symbol!r} is not valid for the simulator; use letters and digits, e.g. BTCUSDT")
        quote = next((q for q in _QUOTES if sym.endswith(q) and len(sym) > len(q)), sym[-3:])
        base = sym[: len(sym) - len(quote)]
        price, decimals = KNOWN_BASES.get(base, DEFAULT_SYMBOL) if quote in _DOLLARS else DEFAULT_SYMBOL
        return cls(sym, base, quote, decimals, int(price.replace(".", "")))


class MarketClock:
    """The replica's "now": ``start_ms`` plus the monotonic time elapsed since creation, times ``speed``."""

    def __init__(
        self, speed: float = 1.0, start_ms: int | None = None, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if not speed > 0:
            raise BadInput(f"market speed must be positive, got {speed}")
        self.speed = float(speed)
        self.start_ms = int(start_ms) if start_ms is not None else time.time_ns() // 1_000_000
        self._monotonic = monotonic
        self._t0 = monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((self._monotonic() - self._t0) * self.speed * 1000.0)

    def wall_seconds_until(self, market_ms: int) -> float:
        """Wall seconds until the market clock reads ``market_ms`` (0 if it already has)."""
        return max(0.0, (market_ms - self.now_ms()) / 1000.0 / self.speed)


@dataclass(slots=True)
class TradeBatch:
    """Consecutive trades of one symbol, as arrays. Ids run from ``first_id`` without gaps."""

    spec: SymbolSpec
    first_id: int
    times: I64
    ticks: I64  # price in ticks
    lots: I64  # quantity in lots
    maker: B8  # buyer is the maker

    def __len__(self) -> int:
        return len(self.times)

    @property
    def symbol(self) -> str:
        return self.spec.symbol

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.times) - 1

    def ids(self) -> I64:
        return np.arange(self.first_id, self.first_id + len(self.times), dtype=np.int64)

    @staticmethod
    def join(batches: list[TradeBatch]) -> TradeBatch:
        """Consecutive batches of one symbol as one."""
        if len(batches) == 1:
            return batches[0]
        return TradeBatch(
            batches[0].spec,
            batches[0].first_id,
            np.concatenate([b.times for b in batches]),
            np.concatenate([b.ticks for b in batches]),
            np.concatenate([b.lots for b in batches]),
            np.concatenate([b.maker for b in batches]),
        )

    def prices(self) -> F64:
        # Integer / power of ten gives the double nearest the decimal price, which fmt() prints exactly.
        return self.ticks / float(self.spec.price_scale)

    def qtys(self) -> F64:
        return self.lots / float(_LOT_SCALE)

    def trades(self) -> list[Trade]:
        sym = self.symbol
        return [
            Trade(sym, i, t, p, q, m)
            for i, t, p, q, m in zip(
                range(self.first_id, self.last_id + 1),
                self.times.tolist(),
                self.prices().tolist(),
                self.qtys().tolist(),
                self.maker.tolist(),
                strict=True,
            )
        ]


# --- trade generation -------------------------------------------------------------------------


class _Generator:
    """The trade source of one symbol: a private RNG producing ``CHUNK`` trades at a time."""

    def __init__(self, spec: SymbolSpec, seed: int, rate: float, origin_ms: int) -> None:
        self.spec = spec
        # An independent stream per (seed, symbol); crc32 is stable across processes, unlike hash().
        self._rng = np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, zlib.crc32(spec.symbol.encode())])
        self._origin = origin_ms
        self._mean_gap_ms = 1000.0 / rate
        self._t_off = 0.0  # float ms since origin of the last generated trade
        self._walk = spec.start_ticks  # unreflected random walk position in ticks
        self._floor = max(1, spec.start_ticks // 100)  # the price is reflected off this floor
        start_price = spec.start_ticks / spec.price_scale
        self._sigma = max(0.5, spec.start_ticks * VOL_PER_SECOND / math.sqrt(rate))
        mean_lots = max(1.0, MEAN_NOTIONAL / start_price * _LOT_SCALE)
        self._mu = math.log(mean_lots) - 0.5  # lognormal with sigma 1 has mean exp(mu + 0.5)
        self._next_id = 1
        # The current chunk and how much of it has been released.
        self._times: I64 = np.empty(0, np.int64)
        self._ticks: I64 = np.empty(0, np.int64)
        self._lots: I64 = np.empty(0, np.int64)
        self._maker: B8 = np.empty(0, np.bool_)
        self._pos = 0
        self.generated = 0

    def _generate(self) -> None:
        rng = self._rng
        # The order of the draws below is part of the sequence's definition.
        offs = self._t_off + np.cumsum(rng.exponential(self._mean_gap_ms, CHUNK))
        self._t_off = float(offs[-1])
        walk = self._walk + np.cumsum(np.rint(rng.normal(0.0, self._sigma, CHUNK)).astype(np.int64))
        self._walk = int(walk[-1])
        lots = np.rint(rng.lognormal(self._mu, 1.0, CHUNK)).astype(np.int64)
        maker = rng.random(CHUNK) < 0.5
        self._times = self._origin + np.floor(offs).astype(np.int64)
        self._ticks = self._floor + np.abs(walk - self._floor)  # reflection keeps prices positive
        self._lots = np.maximum(lots, 1)
        self._maker = maker
        self._pos = 0
        self.generated += CHUNK

    def next_ms(self) -> int:
        """The time of the next trade not yet released (generating the next chunk when needed)."""
        if self._pos == len(self._times):
            self._generate()
        return int(self._times[self._pos])

    def release(self, until_ms: int) -> TradeBatch | None:
        """All not yet released trades with ``time_ms <= until_ms``, or None."""
        pieces: list[tuple[I64, I64, I64, B8]] = []
        while True:
            if self._pos == len(self._times):
                self._generate()
            end = int(np.searchsorted(self._times, until_ms, side="right"))
            if end <= self._pos:
                break
            pieces.append(
                (
                    self._times[self._pos : end],
                    self._ticks[self._pos : end],
                    self._lots[self._pos : end],
                    self._maker[self._pos : end],
                )
            )
            self._pos = end
            if end < len(self._times):
                break
        if not pieces:
            return None
        batch = TradeBatch.join([TradeBatch(self.spec, self._next_id, *x) for x in pieces])
        self._next_id += len(batch)
        return batch


# --- per-second store and klines ---------------------------------------------------------------

_SEC_DTYPE = np.dtype([
    ("t", np.int64), ("o", np.int64), ("h", np.int64), ("l", np.int64), ("c", np.int64),
    ("v", np.int64), ("n", np.int64), ("q", np.int64), ("tv", np.int64), ("tq", np.int64),
    ("f", np.int64), ("L", np.int64),
])  # fmt: skip


def _merge_second(last: Any, first: Any) -> None:
    last["h"] = max(last["h"], first["h"])
    last["l"] = min(last["l"], first["l"])
    last["c"] = first["c"]
    for k in ("v", "n", "q", "tv", "tq"):
        last[k] += first[k]
    last["L"] = first["L"]


class _Seconds(GrowableTable):
    """One row per second that has trades (a :class:`GrowableTable`). Quote volumes are in ticks x lots,
    so every field is an exact integer and merging a second split across two batches changes nothing.

    Batches are folded lazily: :meth:`append` only queues a batch, and the queue is folded (as one
    batch: the result is the same) when the rows are read or the queue reaches ``PENDING`` batches. A
    symbol nobody asks about then costs no numpy work per release, which is what lets one replica
    serve a thousand symbols."""

    PENDING = 64

    def __init__(self) -> None:
        super().__init__(_SEC_DTYPE)
        self._pending: list[TradeBatch] = []

    def append(self, b: TradeBatch) -> None:
        self._pending.append(b)
        if len(self._pending) >= self.PENDING:
            self._fold()

    def view(self) -> npt.NDArray[Any]:
        self._fold()
        return super().view()

    def first_t(self) -> int | None:
        self._fold()
        return super().first_t()

    def _fold(self) -> None:
        if not self._pending:
            return
        b = TradeBatch.join(self._pending)
        self._pending = []
        sec = b.times - b.times % 1000
        starts, ends = bucket_starts(sec)
        notional = b.ticks * b.lots  # exact: at most ~1e11 per trade
        taker = ~b.maker
        add = np.add.reduceat
        new = np.empty(len(starts), _SEC_DTYPE)
        new["t"] = sec[starts]
        new["o"] = b.ticks[starts]
        new["h"] = np.maximum.reduceat(b.ticks, starts)
        new["l"] = np.minimum.reduceat(b.ticks, starts)
        new["c"] = b.ticks[ends - 1]
        new["v"] = add(b.lots, starts)
        new["n"] = ends - starts
        new["q"] = add(notional, starts)
        new["tv"] = add(b.lots * taker, starts)
        new["tq"] = add(notional * taker, starts)
        new["f"] = b.first_id + starts
        new["L"] = b.first_id + ends - 1
        self.add_buckets(new, _merge_second)


class Grid:
    """Open times of a kline interval: fixed lengths aligned to the epoch (weeks to Mondays), or months."""

    def __init__(self, length_ms: int, offset_ms: int = 0, months: bool = False) -> None:
        self.length = length_ms
        self.offset = offset_ms
        self.months = months

    @classmethod
    def for_ms(cls, interval_ms: int) -> Grid:
        if interval_ms <= 0 or interval_ms % 1000:
            raise ValueError(f"kline interval must be a positive whole number of seconds, got {interval_ms} ms")
        # Binance's weekly klines open on Monday 00:00 UTC; 1970-01-05 was the first Monday.
        # 3d klines are taken as aligned to the epoch like the shorter ones [UNVERIFIED].
        return cls(interval_ms, 345_600_000 if interval_ms == 604_800_000 else 0)

    @classmethod
    def month(cls, tz_ms: int = 0) -> Grid:
        """Calendar months, in a time zone ``tz_ms`` east of UTC (0: UTC months)."""
        return cls(0, tz_ms, months=True)

    def floor(self, t: int) -> int:
        if self.months:
            d = datetime.fromtimestamp((t + self.offset) // 1000, UTC)
            return calendar.timegm((d.year, d.month, 1, 0, 0, 0)) * 1000 - self.offset
        return t - (t - self.offset) % self.length

    def ceil(self, t: int) -> int:
        f = self.floor(t)
        return f if f == t else self.step(f, 1)

    def step(self, open_ms: int, k: int) -> int:
        """The open time ``k`` candles after (or before, for negative ``k``) ``open_ms``."""
        if self.months:
            d = datetime.fromtimestamp((open_ms + self.offset) // 1000, UTC)
            m = d.year * 12 + d.month - 1 + k
            return calendar.timegm((m // 12, m % 12 + 1, 1, 0, 0, 0)) * 1000 - self.offset
        return open_ms + k * self.length

    def opens(self, first: int, last: int, limit: int, from_start: bool) -> I64:
        """Open times from ``first`` to ``last`` (both aligned), at most ``limit`` of them, taken from
        the start or from the end."""
        if last < first or limit <= 0:
            return np.empty(0, np.int64)
        if not self.months:
            count = min(limit, (last - first) // self.length + 1)
            base = first if from_start else last - (count - 1) * self.length
            return base + self.length * np.arange(count, dtype=np.int64)
        out: list[int] = []
        t = first if from_start else last
        while len(out) < limit and first <= t <= last:
            out.append(t)
            t = self.step(t, 1 if from_start else -1)
        return np.array(sorted(out), dtype=np.int64)

    def ends(self, opens: I64) -> I64:
        if not self.months:
            return opens + self.length
        return np.array([self.step(int(t), 1) for t in opens], dtype=np.int64)


class TimeframeGrid(Grid):
    """The grid of any :class:`~deltafeed.model.Timeframe` with no fixed length (a month, the day of
    a time zone), stepping with its ``start``/``next``."""

    def __init__(self, tf: Timeframe) -> None:
        super().__init__(0, 0, months=True)  # "months": the stepping, not fixed-length, code paths
        self.tf = tf

    def floor(self, t: int) -> int:
        return self.tf.start(t)

    def step(self, open_ms: int, k: int) -> int:
        for _ in range(abs(k)):
            open_ms = self.tf.next(open_ms) if k > 0 else self.tf.prev(open_ms)
        return open_ms


def grid_of(tf: Timeframe) -> Grid:
    """The kline grid of a deltafeed timeframe."""
    return Grid(tf.ms, tf.anchor) if tf.fixed else TimeframeGrid(tf)


@dataclass(slots=True)
class KlineTable:
    """Klines as columns: everything a Binance kline row or kline stream payload carries."""

    open_time: I64
    close_time: I64  # end of the interval minus 1 ms, as Binance reports it
    open: F64
    high: F64
    low: F64
    close: F64
    volume: F64
    trades: I64
    quote_volume: F64
    taker_base: F64
    taker_quote: F64
    first_id: I64  # -1 for a candle without trades
    last_id: I64
    closed: B8

    def __len__(self) -> int:
        return len(self.open_time)

    def candles(self) -> list[Candle]:
        return [
            Candle(*row)
            for row in zip(
                self.open_time.tolist(),
                self.open.tolist(),
                self.high.tolist(),
                self.low.tolist(),
                self.close.tolist(),
                self.volume.tolist(),
                self.trades.tolist(),
                self.closed.tolist(),
                strict=True,
            )
        ]

    def extras(self) -> list[tuple[float, float, float, int, int, int]]:
        """Per candle: quote volume, taker-buy base and quote volume, first and last trade id,
        interval length in ms."""
        return list(
            zip(
                self.quote_volume.tolist(),
                self.taker_base.tolist(),
                self.taker_quote.tolist(),
                self.first_id.tolist(),
                self.last_id.tolist(),
                (self.close_time - self.open_time + 1).tolist(),
                strict=True,
            )
        )


def _empty_table() -> KlineTable:
    i, f = np.empty(0, np.int64), np.empty(0, np.float64)
    return KlineTable(i, i, f, f, f, f, f, i, f, f, f, i, i, np.empty(0, np.bool_))


# --- tape ----------------------------------------------------------------------------------------


#: The Binance tape's columns: the shared trade columns, then who was the maker.
TAPE_COLUMNS: tuple[str, ...] = (*TRADE_COLUMNS, "is_buyer_maker")
TAPE_HEADER = ",".join(TAPE_COLUMNS) + "\n"


class TradeTape:
    """Writes every released trade as a CSV row of :data:`TAPE_COLUMNS` (a shared :class:`TapeWriter`),
    prices and quantities as the Binance replica sends them; flushes after each batch."""

    def __init__(self, path: str | Path) -> None:
        self._w = TapeWriter.trades(path, extra=("is_buyer_maker",))
        self.path = self._w.path

    @property
    def rows(self) -> int:
        return self._w.rows

    def write(self, batches: Iterable[TradeBatch]) -> None:
        if self._w.closed:
            return
        # One write (and flush) for every batch of a release: a release may carry a thousand symbols.
        lines = [
            f"{b.symbol},{i},{t},{fmt(p)},{fmt(q)},{'true' if m else 'false'}\n"
            for b in batches
            for i, t, p, q, m in zip(
                range(b.first_id, b.last_id + 1),
                b.times.tolist(),
                b.prices().tolist(),
                b.qtys().tolist(),
                b.maker.tolist(),
                strict=True,
            )
        ]
        self._w.write_text("".join(lines), len(lines))

    def close(self) -> None:
        self._w.close()


# --- the simulator -------------------------------------------------------------------------------


class MarketSim:
    """Seeded trades for several symbols, released up to a market time, with kline queries.

    ``rate`` is the mean number of trades per second of market time, per symbol. At construction the
    history from ``start_ms - history_ms`` to ``start_ms`` is released (and taped).
    """

    def __init__(
        self,
        symbols: Iterable[str],
        seed: int = 1,
        rate: float = 10.0,
        start_ms: int | None = None,
        history_ms: int = 3_600_000,
        tape: str | Path | None = None,
    ) -> None:
        if not rate > 0:
            raise BadInput(f"trade rate must be positive, got {rate}")
        if history_ms < 0:
            raise BadInput(f"history must not be negative, got {history_ms} ms")
        self.specs: dict[str, SymbolSpec] = {}
        for s in symbols:
            spec = SymbolSpec.for_symbol(s)
            self.specs[spec.symbol] = spec
        if not self.specs:
            raise BadInput("no symbols to simulate; give at least one, e.g. BTCUSDT")
        self.seed = seed
        self.rate = float(rate)
        self.start_ms = int(start_ms) if start_ms is not None else time.time_ns() // 1_000_000
        self.origin_ms = self.start_ms - history_ms
        self._gens = {s: _Generator(spec, seed, self.rate, self.origin_ms) for s, spec in self.specs.items()}
        # The time of each symbol's next unreleased trade, in symbol order: an advance touches only the
        # symbols with a trade due (one vectorised comparison), so an idle tick costs ~nothing per symbol.
        self._order = list(self._gens.items())
        self._index = {sym: i for i, (sym, _) in enumerate(self._order)}
        self._released_at = np.full(len(self._order), self.origin_ms - 1, np.int64)
        self._next_ms = np.array([g.next_ms() for g in self._gens.values()], np.int64)
        self._secs = {s: _Seconds() for s in self.specs}
        self._last = {s: -1 for s in self.specs}  # last released trade id, and its price
        self._last_ticks = {s: spec.start_ticks for s, spec in self.specs.items()}
        self.released_ms = self.origin_ms - 1
        self.trades_released = 0
        self.tape = TradeTape(tape) if tape is not None else None
        self.advance_to(self.start_ms)

    @property
    def symbols(self) -> list[str]:
        return list(self.specs)

    def advance_to(self, market_ms: int, symbols: Iterable[str] | None = None) -> dict[str, TradeBatch]:
        """Release every trade with ``time_ms <= market_ms``; returns the new ones per symbol.

        With ``symbols``, only theirs: a request about one symbol need not advance a thousand
        (:attr:`released_ms`, the time up to which every symbol is out, then stays where it was)."""
        out: dict[str, TradeBatch] = {}
        if market_ms <= self.released_ms:
            return out
        nxt = self._next_ms
        if symbols is None:
            due = np.flatnonzero(nxt <= market_ms)
            self._released_at[:] = market_ms
        else:
            asked = np.unique(np.array([self._index[s] for s in symbols], np.int64))
            due = asked[nxt[asked] <= market_ms]
            self._released_at[asked] = np.maximum(self._released_at[asked], market_ms)
        for i in due.tolist():
            sym, gen = self._order[i]
            b = gen.release(market_ms)
            nxt[i] = gen.next_ms()
            if b is not None:
                out[sym] = b
                self._secs[sym].append(b)
                self._last[sym] = b.last_id
                self._last_ticks[sym] = int(b.ticks[-1])
                self.trades_released += len(b)
        if symbols is None:
            self.released_ms = market_ms
        if out and self.tape is not None:
            self.tape.write(out.values())
        return out

    def released_until(self, symbol: str) -> int:
        """The market time up to which ``symbol``'s trades are out (:attr:`released_ms` or later)."""
        return int(self._released_at[self._index[symbol]])

    def last_trade(self, symbol: str) -> tuple[int, float]:
        """Id and price of the symbol's last released trade (id -1 and the start price if none)."""
        return self._last[symbol], self._last_ticks[symbol] / self.specs[symbol].price_scale

    def first_trade_ms(self, symbol: str) -> int | None:
        return self._secs[symbol].first_t()

    def kline_table(
        self,
        symbol: str,
        interval: int | Grid,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        now_ms: int,
    ) -> KlineTable:
        """Klines with Binance's selection rules, from the trades released so far.

        With ``start_ms``: the oldest klines whose open time is ``>= start_ms``; otherwise the most
        recent ones; ``end_ms`` bounds the open time from above. The kline containing ``now_ms`` is
        included with ``closed`` False. Klines start at the one holding the symbol's first trade;
        from there on an interval without trades is a flat kline at the previous close with volume 0.
        """
        grid = interval if isinstance(interval, Grid) else Grid.for_ms(interval)
        rows = self._secs[symbol].view()
        if not len(rows) or now_ms < rows["t"][0]:
            return _empty_table()
        lo_open = grid.floor(int(rows["t"][0]))
        hi_open = grid.floor(now_ms)
        if start_ms is not None:
            lo_open = max(lo_open, grid.ceil(start_ms))
        if end_ms is not None:
            hi_open = min(hi_open, grid.floor(end_ms))
        opens = grid.opens(lo_open, hi_open, limit, from_start=start_ms is not None)
        if not len(opens):
            return _empty_table()
        ends = grid.ends(opens)
        return self._table(symbol, rows, opens, ends, now_ms)

    def klines(
        self, symbol: str, interval_ms: int, start_ms: int | None, end_ms: int | None, limit: int, now_ms: int
    ) -> list[Candle]:
        """:meth:`kline_table` as model candles."""
        return self.kline_table(symbol, interval_ms, start_ms, end_ms, limit, now_ms).candles()

    def _table(self, symbol: str, rows: npt.NDArray[Any], opens: I64, ends: I64, now_ms: int) -> KlineTable:
        spec = self.specs[symbol]
        t = rows["t"]
        lo = np.searchsorted(t, opens, side="left")
        hi = np.searchsorted(t, ends, side="left")
        full = hi > lo
        k = len(opens)
        o = np.empty(k, np.int64)
        h = np.empty(k, np.int64)
        lw = np.empty(k, np.int64)
        c = np.empty(k, np.int64)
        v = np.zeros(k, np.int64)
        n = np.zeros(k, np.int64)
        q = np.zeros(k, np.float64)
        tv = np.zeros(k, np.int64)
        tq = np.zeros(k, np.float64)
        f = np.full(k, -1, np.int64)
        last = np.full(k, -1, np.int64)
        if full.any():
            # The candles tile [opens[0], ends[-1]), so the seconds of the non-empty ones are contiguous
            # and each segment runs up to the start of the next: reduceat applies directly.
            base, top = int(lo[0]), int(hi[-1])
            seg = rows[base:top]
            idx = lo[full] - base
            o[full] = rows["o"][lo[full]]
            c[full] = rows["c"][hi[full] - 1]
            h[full] = np.maximum.reduceat(seg["h"], idx)
            lw[full] = np.minimum.reduceat(seg["l"], idx)
            v[full] = np.add.reduceat(seg["v"], idx)
            n[full] = np.add.reduceat(seg["n"], idx)
            # Quote sums in float: an int64 sum could overflow for a long candle at benchmark rates.
            q[full] = np.add.reduceat(seg["q"].astype(np.float64), idx)
            tv[full] = np.add.reduceat(seg["tv"], idx)
            tq[full] = np.add.reduceat(seg["tq"].astype(np.float64), idx)
            f[full] = rows["f"][lo[full]]
            last[full] = rows["L"][hi[full] - 1]
        empty = ~full
        if empty.any():
            # Flat candle: every price is the close of the last second before it (there is one,
            # since klines start at the candle holding the first trade).
            prev = rows["c"][lo[empty] - 1]
            o[empty] = h[empty] = lw[empty] = c[empty] = prev
        ps, ls = float(spec.price_scale), float(_LOT_SCALE)
        qs = ps * ls
        return KlineTable(
            open_time=opens,
            close_time=ends - 1,
            open=o / ps,
            high=h / ps,
            low=lw / ps,
            close=c / ps,
            volume=v / ls,
            trades=n,
            quote_volume=q / qs,
            taker_base=tv / ls,
            taker_quote=tq / qs,
            first_id=f,
            last_id=last,
            closed=ends <= now_ms,
        )

    def close(self) -> None:
        if self.tape is not None:
            self.tape.close()
