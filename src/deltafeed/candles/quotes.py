"""Quotes (bid/ask, no ids) into the candle builders of an instrument's price sides: for every
quote-built venue (OANDA, IG) and for the tick-history backfill (:mod:`deltafeed.backfill`).

Each quote becomes one trade per price side (mid = (bid + ask) / 2, bid, ask; quantity 1, so a
candle's volume and trade count are its number of quotes) in that side's ordinary
:class:`~deltafeed.candles.aggregator.CandleBuilder`, which applies the market calendar: no flat
candles over a weekend or holiday.

Quotes carry no ids, so each instrument gets synthetic consecutive ids: :meth:`QuoteRouter.gap`
skips one, which the builders see as a hole, so the candles a disconnection may touch are fetched
again from the venue's history once complete, exactly as a Binance trade-id hole is repaired. The
first quote after start-up is such a hole too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from deltafeed.model import Candle, Trade

if TYPE_CHECKING:
    from deltafeed.model import Instrument, Quote, Timeframe


class QuoteSide(Protocol):
    """One price side of one instrument, as the router feeds it (the engine's
    :class:`~deltafeed.series.Series` is one)."""

    @property
    def instrument(self) -> Instrument: ...

    @property
    def price(self) -> str:  # mid, bid or ask
        ...

    @property
    def active(self) -> bool:  # False: its quotes are not applied
        ...

    def on_trade(self, trade: Trade) -> None:
        """Fold one quote, as a trade of this side's price, into the side's candles."""
        ...

    def on_quote(self, seq: int, time_ms: int, bid: float, ask: float) -> None:
        """The quote itself, once per quote (on the instrument's first active side): to keep it raw."""
        ...


class _Series:
    """The price sides of one instrument, and where its quotes stand."""

    __slots__ = ("last", "last_ms", "next_id", "states")

    def __init__(self) -> None:
        self.states: list[QuoteSide] = []
        self.next_id = 1
        self.last_ms = -1  # time of the last quote applied
        self.last: tuple[int, float, float] = (-1, 0.0, 0.0)  # time, bid and ask of the last quote


_INF = float("inf")


def side_price(side: str, bid: float, ask: float) -> float:
    """A quote's price on ``side`` (mid, bid or ask)."""
    # Rounded to 10 decimals: the mid of two decimal prices has at most one digit more than
    # they do, so this is the double nearest the venue's own mid (1.222415, not
    # 1.2224149999999998), and candles compare equal with the venue's history.
    return round((bid + ask) * 0.5, 10) if side == "mid" else bid if side == "bid" else ask


def candles_from_quotes(quotes: Iterable[Quote], side: str, grid: Timeframe, closed_before_ms: int) -> list[Candle]:
    """Candles of ``side`` on ``grid`` from a venue's historical quotes in time order, by the rules
    :class:`QuoteRouter` applies to streamed ones (an impossible quote, or one older than the last
    taken, is left out; volume = trades = the number of quotes), so both give the same candle from
    the same quotes. Only intervals with quotes have a candle; one is closed when it ends by
    ``closed_before_ms``."""
    out: list[Candle] = []
    cur: Candle | None = None
    end = last = -1
    for q in quotes:
        if not 0 < q.bid <= q.ask < _INF or q.time_ms < last:
            continue
        last = q.time_ms
        p = side_price(side, q.bid, q.ask)
        if cur is None or q.time_ms >= end:
            start = grid.start(q.time_ms)
            end = grid.next(start)
            cur = Candle(start, p, p, p, p, 0.0, 0, end <= closed_before_ms)
            out.append(cur)
        cur.high = max(cur.high, p)
        cur.low = min(cur.low, p)
        cur.close = p
        cur.trades += 1
        cur.volume += 1.0
    return out


class QuoteRouter:
    """Routes a venue's quotes to the builders of its instruments' price sides."""

    def __init__(self) -> None:
        self._series: dict[str, _Series] = {}
        self.refused = 0  # impossible prices (bid <= 0, ask < bid, NaN)
        self.out_of_order = 0  # older than the last quote: cannot be placed in candles already built
        # The same time and prices as the quote before: applied (a venue may repeat itself), but
        # suspect; like every candle of an id-less venue, its candle is reconciled before it is final.
        self.repeated = 0

    def add(self, st: QuoteSide) -> None:
        self._series.setdefault(st.instrument.symbol, _Series()).states.append(st)

    def gap(self, symbols: Iterable[str] | None = None) -> None:
        """The stream of ``symbols`` (all when None) broke: what was quoted meanwhile is unknown."""
        for sym in self._series if symbols is None else symbols:
            series = self._series.get(sym)
            if series is not None:
                series.next_id += 1

    def quote(self, symbol: str, time_ms: int, bid: float, ask: float) -> bool:
        """Fold one quote into its instrument's price sides; False when it was refused or unknown."""
        series = self._series.get(symbol)
        if series is None:
            return False
        if not 0 < bid <= ask < _INF:  # also false for NaN
            self.refused += 1
            return False
        # Two quotes may share a time and prices (no ids), so a repeat is a quote.
        if time_ms < series.last_ms:
            self.out_of_order += 1
            return False
        series.last_ms = time_ms
        line = (time_ms, bid, ask)
        if line == series.last:
            self.repeated += 1
        series.last = line
        tid = series.next_id
        series.next_id = tid + 1
        first = True
        for st in series.states:
            if not st.active:
                continue
            if first:
                st.on_quote(tid, time_ms, bid, ask)
                first = False
            st.on_trade(Trade(symbol, tid, time_ms, side_price(st.price, bid, ask), 1.0, False))
        return True
