"""What the Binance replica derives from its simulated trades beyond klines: the raw trade log with
aggregate trades and rolling-window tickers.

Sans-I/O: no sockets, no clock; the replica calls these with the market time it reads.

**Aggregate trades.** Binance's aggTrade is "trades that fill at the time, from the same taker order,
with the same price" (rest-api.md, ``GET /api/v3/aggTrades``). The simulator has no orders, so here a
*taker order* is a run of consecutive trades with the same millisecond and the same side (who was the
maker); an aggregate is such a run at one price. A run never spans two released batches, because the
simulator releases every trade of a millisecond together, so aggregate ids are assigned once, in
order, from the first trade of the market: ``a`` counts from 1, ``f``/``l`` are the first and last
trade ids, ``T`` the time, ``p`` the price, ``q`` the summed quantity (exact: integer lots).

**Order book.** The synthetic book is :class:`deltafeed.replicas.books.SimBook` (shared by every
replica with books); its update ids are Binance's ``U``/``u`` directly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from deltafeed.model import fmt
from deltafeed.replicas.sim import LOT_DECIMALS, Grid, MarketSim, SymbolSpec, TradeBatch

I64 = npt.NDArray[np.int64]
B8 = npt.NDArray[np.bool_]

#: Raw trades kept per symbol for /trades, /historicalTrades and /aggTrades (older ones are forgotten:
#: a query reaching before them starts at the oldest kept).
KEEP_TRADES = 2_000_000
_LOT_SCALE = 10**LOT_DECIMALS


# --- trades and aggregate trades ---------------------------------------------------------------------


@dataclass
class _Columns:
    """Parallel int64/bool columns in chunks, concatenated on demand (appends are O(1))."""

    names: tuple[str, ...]
    chunks: list[dict[str, npt.NDArray[np.generic]]] = field(default_factory=list)
    size: int = 0
    _joined: dict[str, npt.NDArray[np.generic]] | None = None

    def add(self, cols: dict[str, npt.NDArray[np.generic]]) -> None:
        n = len(next(iter(cols.values())))
        if not n:
            return
        self.chunks.append(cols)
        self.size += n
        self._joined = None
        while self.size - len(next(iter(self.chunks[0].values()))) >= KEEP_TRADES:
            self.size -= len(next(iter(self.chunks.pop(0).values())))

    def cols(self) -> dict[str, npt.NDArray[np.generic]]:
        if self._joined is None:
            if not self.chunks:
                self._joined = {k: np.empty(0, np.int64) for k in self.names}
            elif len(self.chunks) == 1:
                self._joined = self.chunks[0]
            else:
                self._joined = {k: np.concatenate([c[k] for c in self.chunks]) for k in self.names}
                self.chunks = [self._joined]
        return self._joined


Aggs = tuple[int, I64, I64, I64, I64, I64, B8]


class TradeLog:
    """One symbol's raw trades and aggregate trades, as released (the newest ``KEEP_TRADES`` of each).

    :meth:`add` queues a batch; the queue is logged (as one batch: aggregates never span two
    releases, so the result is the same) when the columns are read, when :meth:`flush` asks for the
    aggregates, or when it reaches ``PENDING`` batches, so a symbol nobody queries costs no numpy
    work per release."""

    PENDING = 64

    def __init__(self, spec: SymbolSpec) -> None:
        self.spec = spec
        self._trades = _Columns(("id", "t", "p", "q", "m"))
        self._aggs = _Columns(("a", "t", "p", "q", "f", "l", "m"))
        self.next_agg = 1
        self._pending: list[TradeBatch] = []

    @property
    def trades(self) -> _Columns:
        self.flush()
        return self._trades

    @property
    def aggs(self) -> _Columns:
        self.flush()
        return self._aggs

    def add(self, b: TradeBatch) -> None:
        """Queue a released batch."""
        self._pending.append(b)
        if len(self._pending) >= self.PENDING:
            self.flush()

    def flush(self) -> Aggs | None:
        """Log the queued batches; returns their aggregates as (first agg id, times, ticks, lots, first
        ids, last ids, maker), or None if none were queued."""
        if not self._pending:
            return None
        b = TradeBatch.join(self._pending)
        self._pending = []
        self._trades.add({"id": b.ids(), "t": b.times, "p": b.ticks, "q": b.lots, "m": b.maker})
        n = len(b)
        new = np.ones(n, np.bool_)
        if n > 1:
            new[1:] = (np.diff(b.times) != 0) | (np.diff(b.ticks) != 0) | (b.maker[1:] != b.maker[:-1])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], n)
        lots = np.add.reduceat(b.lots, starts)
        first = b.first_id + starts
        last = b.first_id + ends - 1
        a0 = self.next_agg
        ids = np.arange(a0, a0 + len(starts), dtype=np.int64)
        self.next_agg += len(starts)
        t, p, m = b.times[starts], b.ticks[starts], b.maker[starts]
        self._aggs.add({"a": ids, "t": t, "p": p, "q": lots, "f": first, "l": last, "m": m})
        return a0, t, p, lots, first, last, m

    def _price(self, ticks: Iterable[int]) -> list[str]:
        s = float(self.spec.price_scale)
        return [fmt(x / s) for x in ticks]

    def trade_rows(self, from_id: int | None, limit: int) -> list[dict[str, object]]:
        """``/api/v3/trades`` (``from_id`` None: the most recent) and ``/historicalTrades`` rows, oldest first."""
        c = self.trades.cols()
        ids = c["id"]
        lo = max(0, len(ids) - limit) if from_id is None else int(np.searchsorted(ids, from_id, side="left"))
        sl = slice(lo, lo + limit)
        ticks, lots = c["p"][sl].tolist(), c["q"][sl].tolist()
        ps, qs = float(self.spec.price_scale), float(_LOT_SCALE)
        return [
            {
                "id": i,
                "price": fmt(p / ps),
                "qty": fmt(q / qs),
                "quoteQty": fmt(p * q / (ps * qs)),
                "time": t,
                "isBuyerMaker": m,
                "isBestMatch": True,
            }
            for i, t, p, q, m in zip(
                ids[sl].tolist(), c["t"][sl].tolist(), ticks, lots, c["m"][sl].tolist(), strict=True
            )
        ]

    def agg_rows(
        self, from_id: int | None, start_ms: int | None, end_ms: int | None, limit: int
    ) -> list[dict[str, object]]:
        """``/api/v3/aggTrades`` rows, oldest first: from ``from_id``, or in ``[start_ms, end_ms]``, or the
        most recent ``limit``."""
        c = self.aggs.cols()
        if from_id is not None:
            lo = int(np.searchsorted(c["a"], from_id, side="left"))
            hi = len(c["a"])
        elif start_ms is not None or end_ms is not None:
            lo = 0 if start_ms is None else int(np.searchsorted(c["t"], start_ms, side="left"))
            hi = len(c["t"]) if end_ms is None else int(np.searchsorted(c["t"], end_ms, side="right"))
            if start_ms is None:  # endTime alone: the most recent up to it
                lo = max(lo, hi - limit)
        else:
            hi = len(c["a"])
            lo = max(0, hi - limit)
        sl = slice(lo, min(hi, lo + limit))
        ps, qs = float(self.spec.price_scale), float(_LOT_SCALE)
        return [
            {"a": a, "p": fmt(p / ps), "q": fmt(q / qs), "f": f, "l": la, "T": t, "m": m, "M": True}
            for a, p, q, f, la, t, m in zip(
                c["a"][sl].tolist(),
                c["p"][sl].tolist(),
                c["q"][sl].tolist(),
                c["f"][sl].tolist(),
                c["l"][sl].tolist(),
                c["t"][sl].tolist(),
                c["m"][sl].tolist(),
                strict=True,
            )
        ]


def agg_payloads(symbol: str, spec: SymbolSpec, aggs: Aggs, event_ms: int) -> list[bytes]:
    """Raw ``aggTrade`` payloads of one release's aggregates (:meth:`TradeLog.flush`'s result)."""
    a0, t, p, q, f, la, m = aggs
    ps, qs = float(spec.price_scale), float(_LOT_SCALE)
    sym = symbol.encode()
    return [
        b'{"e":"aggTrade","E":%d,"s":"%s","a":%d,"p":"%s","q":"%s","f":%d,"l":%d,"T":%d,"m":%s,"M":true}'
        % (event_ms, sym, a0 + k, fmt(pp / ps).encode(), fmt(qq / qs).encode(), ff, ll, tt, b"true" if mm else b"false")
        for k, (tt, pp, qq, ff, ll, mm) in enumerate(
            zip(t.tolist(), p.tolist(), q.tolist(), f.tolist(), la.tolist(), m.tolist(), strict=True)
        )
    ]


# --- tickers ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Window:
    """Trade statistics of a rolling window ``[open_ms, close_ms]``, prices and sizes as texts."""

    open_ms: int
    close_ms: int
    open: str
    high: str
    low: str
    last: str
    prev_close: str
    volume: str
    quote_volume: str
    weighted: str
    change: str
    change_pct: str
    first_id: int
    last_id: int
    count: int
    last_qty: str


def window(sim: MarketSim, log: TradeLog | None, symbol: str, now_ms: int, length_ms: int) -> Window:
    """The rolling window of ``length_ms`` ending now, in whole seconds: ``[open_ms, now_ms]`` where
    ``open_ms`` is the start of the second ``length_ms`` before the current one's end (Binance: "the
    window used to compute statistics will be no more than 59999ms from the requested windowSize")."""
    spec = sim.specs[symbol]
    open_ms = now_ms - now_ms % 1000 + 1000 - length_ms
    t = sim.kline_table(symbol, Grid(length_ms, open_ms % length_ms), open_ms, open_ms, 1, now_ms)
    before = sim.kline_table(symbol, Grid.for_ms(1000), None, open_ms - 1, 1, now_ms)
    prev = fmt(float(before.close[0])) if len(before) else fmt(0.0)
    if not len(t) or int(t.trades[0]) == 0:
        last = fmt(sim.last_trade(symbol)[1]) if len(t) else fmt(0.0)
        zero = fmt(0.0)
        return Window(open_ms, now_ms, last, last, last, last, prev, zero, zero, zero, zero, "0.000", -1, -1, 0, zero)
    o, c = float(t.open[0]), float(t.close[0])
    v, q = float(t.volume[0]), float(t.quote_volume[0])
    ch = round((c - o) * spec.price_scale) / spec.price_scale
    last_qty = fmt(0.0)
    if log is not None:
        rows = log.trade_rows(None, 1)
        if rows:
            last_qty = str(rows[0]["qty"])
    return Window(
        open_ms,
        now_ms,
        fmt(o),
        fmt(float(t.high[0])),
        fmt(float(t.low[0])),
        fmt(c),
        prev,
        fmt(v),
        fmt(q),
        fmt(q / v if v else 0.0),
        fmt(ch),
        f"{ch / o * 100 if o else 0.0:.3f}",
        int(t.first_id[0]),
        int(t.last_id[0]),
        int(t.trades[0]),
        last_qty,
    )
