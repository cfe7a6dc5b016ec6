"""An independent candle builder for tests: reads a replica's tape and builds candles in plain Python.

It shares no code with the simulator's numpy roll-up: prices and quantities are parsed as Decimal,
every candle is built trade by trade, and an interval without trades after the first trade is a flat
candle at the previous close with volume 0 (the rule deltafeed and Binance klines follow).

Quote tapes (forex) get the same treatment: :func:`quote_candles_from_tape` builds BID, ASK or MID
candles quote by quote in Decimal, asking the market calendar only when flat candles are allowed.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple, Protocol
from zoneinfo import ZoneInfo

#: The leading columns of every trade venue's tape (``deltafeed.replicas.tape.TRADE_COLUMNS``, written
#: out here so a change there shows up as a test failure).
TRADE_TAPE_COLUMNS = ["symbol", "trade_id", "time_ms", "price", "qty"]
#: The Binance tape: the trade columns, then who was the maker.
TAPE_COLUMNS = [*TRADE_TAPE_COLUMNS, "is_buyer_maker"]


class TapeRow(NamedTuple):
    """One tape row; a tuple, so ``row[0]`` is the symbol."""

    symbol: str
    trade_id: int
    time_ms: int
    price: Decimal
    qty: Decimal
    buyer_maker: bool
    price_text: str  # exactly as written on the tape (and sent on the wire)
    qty_text: str


@dataclass(slots=True)
class RefCandle:
    """A candle built from the tape. The float fields are the exact decimal sums converted once, so
    they equal what a correct float-based builder or the venue's 8-decimal strings give; the exact
    values are kept alongside."""

    open_time: int
    exact_open: Decimal
    exact_high: Decimal
    exact_low: Decimal
    exact_close: Decimal
    exact_volume: Decimal = Decimal(0)
    trades: int = 0
    exact_quote_volume: Decimal = Decimal(0)
    exact_taker_base: Decimal = Decimal(0)
    exact_taker_quote: Decimal = Decimal(0)
    first_id: int = -1  # -1 for a candle without trades, as in Binance's kline payload
    last_id: int = -1

    @property
    def open(self) -> float:
        return float(self.exact_open)

    @property
    def high(self) -> float:
        return float(self.exact_high)

    @property
    def low(self) -> float:
        return float(self.exact_low)

    @property
    def close(self) -> float:
        return float(self.exact_close)

    @property
    def volume(self) -> float:
        return float(self.exact_volume)

    def row(self) -> tuple[int, float, float, float, float, float, int]:
        return (self.open_time, self.open, self.high, self.low, self.close, self.volume, self.trades)


def read_tape(path: str | Path) -> list[TapeRow]:
    """All rows of a tape file, in file order."""
    with open(path, newline="", encoding="ascii") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == TAPE_COLUMNS, header
        rows = []
        for sym, tid, t, p, q, m in reader:
            assert m in ("true", "false"), m
            rows.append(TapeRow(sym, int(tid), int(t), Decimal(p), Decimal(q), m == "true", p, q))
    return rows


def read_venue_tape(path: str | Path) -> list[TapeRow]:
    """All rows of any trade venue's tape (its header starts with :data:`TRADE_TAPE_COLUMNS`), in file
    order, which is the venue's trade order. Venues whose ids are not a per-symbol counter (Bybit's
    UUIDs, Hyperliquid's tids shared by every coin) are read alike: ``trade_id`` is each row's
    position among its symbol's rows (1, 2, 3, ...) and the venue's own id is only checked unique;
    ``buyer_maker`` is False (no venue but Binance tapes it)."""
    with open(path, newline="", encoding="ascii") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header[: len(TRADE_TAPE_COLUMNS)] == TRADE_TAPE_COLUMNS, header
        rows = []
        seen: dict[str, set[str]] = {}
        for r in reader:
            sym, tid, t, p, q = r[:5]
            ids = seen.setdefault(sym, set())
            assert tid not in ids, f"trade id {tid} of {sym} twice on the tape"
            ids.add(tid)
            rows.append(TapeRow(sym, len(ids), int(t), Decimal(p), Decimal(q), False, p, q))
    return rows


class TradeTapeRow(NamedTuple):
    """One row of any trade venue's tape: the shared columns, exactly as written, and the extra ones."""

    symbol: str
    trade_id: int
    time_ms: int
    price: str
    qty: str
    extra: tuple[str, ...]


def read_trade_tape(path: str | Path, extra: list[str] | None = None) -> list[TradeTapeRow]:
    """All rows of a trade tape whose header is :data:`TRADE_TAPE_COLUMNS` then ``extra`` (default none),
    in file order; the trade ids of each symbol must run 1, 2, 3, ... without gaps."""
    with open(path, newline="", encoding="ascii") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == [*TRADE_TAPE_COLUMNS, *(extra or [])], header
        rows = [TradeTapeRow(r[0], int(r[1]), int(r[2]), r[3], r[4], tuple(r[5:])) for r in reader]
    last: dict[str, int] = {}
    for r in rows:
        assert r.trade_id == last.get(r.symbol, 0) + 1, r
        last[r.symbol] = r.trade_id
    return rows


def rows_by_symbol(rows: list[TapeRow]) -> dict[str, list[TapeRow]]:
    out: dict[str, list[TapeRow]] = {}
    for r in rows:
        out.setdefault(r.symbol, []).append(r)
    return out


def _utc(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ms)


def _ms(t: dt.datetime) -> int:
    return (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


#: The zoned days the tests build, by their deltafeed name.
DAY_ZONES = {"1d": "UTC", "1d-new_york": "America/New_York"}


def open_of(time_ms: int, tf: int | str) -> int:
    """Open time of the candle holding ``time_ms``: a length in ms is epoch aligned; ``"1w"`` is the
    ISO week (from Monday 00:00 UTC); ``"1M"`` the calendar month (from the 1st, 00:00 UTC); a name of
    :data:`DAY_ZONES` the local day of its zone (from local midnight). Worked out with
    :mod:`datetime` calendar fields, not deltafeed's arithmetic."""
    if isinstance(tf, int):
        return time_ms // tf * tf
    if tf in DAY_ZONES:
        zone = ZoneInfo(DAY_ZONES[tf])
        d = _utc(time_ms).astimezone(zone).date()
        return _ms(dt.datetime(d.year, d.month, d.day, tzinfo=zone))
    t = _utc(time_ms)
    if tf == "1w":
        monday = t.date() - dt.timedelta(days=t.isocalendar().weekday - 1)
        return _ms(dt.datetime(monday.year, monday.month, monday.day, tzinfo=dt.UTC))
    assert tf == "1M", tf
    return _ms(dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC))


def next_open(open_ms: int, tf: int | str) -> int:
    """Open time of the candle after the one opening at ``open_ms`` (see :func:`open_of`)."""
    if isinstance(tf, int):
        return open_ms + tf
    if tf in DAY_ZONES:
        zone = ZoneInfo(DAY_ZONES[tf])
        d = _utc(open_ms).astimezone(zone).date() + dt.timedelta(days=1)
        return _ms(dt.datetime(d.year, d.month, d.day, tzinfo=zone))
    t = _utc(open_ms)
    if tf == "1w":
        return _ms(t + dt.timedelta(weeks=1))
    return _ms(dt.datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=dt.UTC))


def candles_from_tape(rows: list[TapeRow], tf_ms: int | str, until_ms: int | None = None) -> list[RefCandle]:
    """Candles of length ``tf_ms`` (epoch aligned), or of ``"1w"``, ``"1M"`` or a zoned day (see :func:`open_of`),
    for one symbol's ``rows``.

    They run from the candle holding the first trade to the one holding the last trade, or to the one
    holding ``until_ms`` if that is later.
    """
    if not rows:
        return []
    assert len({r.symbol for r in rows}) == 1, "pass the rows of one symbol"
    rows = sorted(rows, key=lambda r: r.trade_id)
    by_open: dict[int, list[TapeRow]] = {}
    for r in rows:
        by_open.setdefault(open_of(r.time_ms, tf_ms), []).append(r)
    first = open_of(rows[0].time_ms, tf_ms)
    last = open_of(rows[-1].time_ms, tf_ms)
    if until_ms is not None:
        last = max(last, open_of(until_ms, tf_ms))
    out: list[RefCandle] = []
    t = first
    prev_close = rows[0].price
    while t <= last:
        trades = by_open.get(t, [])
        if not trades:
            out.append(RefCandle(t, prev_close, prev_close, prev_close, prev_close))
        else:
            c = RefCandle(t, trades[0].price, trades[0].price, trades[0].price, trades[-1].price)
            for r in trades:
                c.exact_high = max(c.exact_high, r.price)
                c.exact_low = min(c.exact_low, r.price)
                c.exact_volume += r.qty
                c.exact_quote_volume += r.price * r.qty
                if not r.buyer_maker:  # the buyer took liquidity: a taker buy
                    c.exact_taker_base += r.qty
                    c.exact_taker_quote += r.price * r.qty
            c.trades = len(trades)
            c.first_id, c.last_id = trades[0].trade_id, trades[-1].trade_id
            prev_close = c.exact_close
            out.append(c)
        t = next_open(t, tf_ms)
    return out


# --- quote tapes (forex) --------------------------------------------------------------------------

QUOTE_TAPE_COLUMNS = ["symbol", "time_ms", "bid", "ask"]


class QuoteRow(NamedTuple):
    """One quote tape row: best bid and ask at ``time_ms``, exactly as written."""

    symbol: str
    time_ms: int
    bid: Decimal
    ask: Decimal


class _Closes(Protocol):
    """The one thing the reference asks of a market calendar."""

    def next_close(self, time_ms: int) -> int: ...


def read_quote_tape(path: str | Path) -> list[QuoteRow]:
    """All rows of a quote tape (``symbol,time_ms,bid,ask``), in file order, prices as Decimal."""
    with open(path, newline="", encoding="ascii") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == QUOTE_TAPE_COLUMNS, header
        return [QuoteRow(sym, int(t), Decimal(b), Decimal(a)) for sym, t, b, a in reader]


def quote_candles_from_tape(
    rows: list[QuoteRow], tf_ms: int, side: str, calendar: _Closes, until_ms: int | None = None
) -> list[RefCandle]:
    """Candles of length ``tf_ms`` (epoch aligned) of one symbol's quotes, priced by ``side``.

    The rules, written out plainly: quotes are taken in file order; one with bid <= 0, ask <= 0 or
    ask < bid is skipped, and so is one older than the last quote taken. ``side`` is ``mid``
    ((bid + ask) / 2, exact in Decimal), ``bid`` or ``ask``. volume = trades = the number of quotes.
    An interval without quotes after a quote is a flat candle at the previous close only if it ends by
    the calendar's first close after the last quote before it; so nothing is made while the market is
    closed, and the first candle after a reopening starts from its first quote. Flat candles after the
    last quote run up to those that end by ``until_ms`` (what a timer at that time closes).
    """
    assert side in ("mid", "bid", "ask"), side
    taken: list[tuple[int, Decimal]] = []
    for r in rows:
        if r.bid <= 0 or r.ask <= 0 or r.ask < r.bid:
            continue
        if taken and r.time_ms < taken[-1][0]:
            continue
        price = (r.bid + r.ask) / 2 if side == "mid" else r.bid if side == "bid" else r.ask
        taken.append((r.time_ms, price))
    if not taken:
        return []
    assert len({r.symbol for r in rows}) == 1, "pass the rows of one symbol"
    by_open: dict[int, list[tuple[int, Decimal]]] = {}
    for t, p in taken:
        by_open.setdefault(t // tf_ms * tf_ms, []).append((t, p))
    last = taken[-1][0] // tf_ms * tf_ms
    if until_ms is not None:
        last = max(last, until_ms // tf_ms * tf_ms - tf_ms)
    out: list[RefCandle] = []
    t = taken[0][0] // tf_ms * tf_ms
    prev_close = taken[0][1]
    prev_time = taken[0][0]
    while t <= last:
        quotes = by_open.get(t)
        if quotes:
            c = RefCandle(t, quotes[0][1], quotes[0][1], quotes[0][1], quotes[-1][1])
            c.exact_high = max(p for _, p in quotes)
            c.exact_low = min(p for _, p in quotes)
            c.exact_volume = Decimal(len(quotes))
            c.trades = len(quotes)
            out.append(c)
            prev_close, prev_time = c.exact_close, quotes[-1][0]
        elif t + tf_ms <= calendar.next_close(prev_time):
            out.append(RefCandle(t, prev_close, prev_close, prev_close, prev_close))
        t += tf_ms
    return out


def oanda_candle_open(
    time_ms: int, granularity: str, hour: int = 17, tz: str = "America/New_York", weekday: int = 4
) -> int:
    """The open time of the OANDA candle holding ``time_ms``, worked out on the wall clock of ``tz``.

    S5 to H1 are on the epoch grid. The trading day starts at ``hour`` o'clock (``dailyAlignment`` in
    ``alignmentTimezone``); H2 to H12 count from it, D is that day, W starts on ``weekday`` (0 =
    Monday, ``weeklyAlignment``) and M on the 1st of the month, both at the day's start.
    """
    fixed = {"S": 1_000, "M": 60_000, "H": 3_600_000}
    if granularity[1:].isdigit() and not (granularity[0] == "H" and int(granularity[1:]) > 1):
        g = int(granularity[1:]) * fixed[granularity[0]]
        return time_ms - time_ms % g
    zone = ZoneInfo(tz)
    wall = dt.datetime.fromtimestamp(time_ms / 1000, zone).replace(tzinfo=None)
    day = wall.replace(hour=hour, minute=0, second=0, microsecond=0)
    if wall < day:
        day -= dt.timedelta(days=1)
    if granularity == "D":
        start = day
    elif granularity == "W":
        start = day - dt.timedelta(days=(day.weekday() - weekday) % 7)
    elif granularity == "M":
        start = day.replace(day=1)
    else:
        hours = int(granularity[1:])
        start = day + dt.timedelta(hours=(wall - day) // dt.timedelta(hours=hours) * hours)
    return int(start.replace(tzinfo=zone).timestamp() * 1000)


@dataclass(slots=True)
class RefQuoteCandle:
    """An OANDA candle from a quote tape: open, high, low, close per side and the number of quotes."""

    open_time: int
    ohlc: dict[str, list[Decimal]]  # "mid" | "bid" | "ask" -> [o, h, l, c]
    volume: int


def oanda_candles_from_tape(rows: list[QuoteRow], open_of: Callable[[int], int]) -> dict[int, RefQuoteCandle]:
    """OANDA's candles of one symbol's quotes by open time, ``open_of`` giving each quote's candle (see
    :func:`oanda_candle_open`): no candle without quotes; mid = (bid + ask) / 2, exact."""
    out: dict[int, RefQuoteCandle] = {}
    for r in rows:
        t = open_of(r.time_ms)
        prices = {"mid": (r.bid + r.ask) / 2, "bid": r.bid, "ask": r.ask}
        c = out.get(t)
        if c is None:
            out[t] = RefQuoteCandle(t, {k: [p, p, p, p] for k, p in prices.items()}, 1)
            continue
        c.volume += 1
        for k, p in prices.items():
            o = c.ohlc[k]
            o[1], o[2], o[3] = max(o[1], p), min(o[2], p), p
    return out


# --- aggregate trades (Binance) ------------------------------------------------------------------


class RefAggTrade(NamedTuple):
    """An aggregate trade computed from a tape: consecutive trades of one symbol with the same
    millisecond, side and price (the replica's stand-in for Binance's "same taker order, same price")."""

    agg_id: int
    price: Decimal
    qty: Decimal
    first_id: int
    last_id: int
    time_ms: int
    buyer_maker: bool


def agg_trades_from_tape(rows: list[TapeRow]) -> list[RefAggTrade]:
    """The aggregate trades of one symbol's tape rows (all of them, from trade id 1), ids from 1."""
    rows = sorted(rows, key=lambda r: r.trade_id)
    out: list[RefAggTrade] = []
    for r in rows:
        if out and (p := out[-1]).time_ms == r.time_ms and p.price == r.price and p.buyer_maker == r.buyer_maker:
            out[-1] = p._replace(qty=p.qty + r.qty, last_id=r.trade_id)
        else:
            out.append(RefAggTrade(len(out) + 1, r.price, r.qty, r.trade_id, r.trade_id, r.time_ms, r.buyer_maker))
    return out
