"""Raw ticks beside the candles: the trades and quotes a run received, stored columnar and compressed
in the cold tier (DuckDB or PostgreSQL) for ``tick_retention`` (default 7 days), and the spans a
reader must know are missing from them.

Ticks are what the stream delivered, nothing more: a span the stream lost (a trade-id hole, a
reconnect, the time deltafeed was not running) is repaired in the *candles* from the venue's
candle history, but those candles do not carry the trades inside them. Such spans are recorded as
*tick gaps* and every read returns them (:attr:`TickPage.missing`), so a reader never takes an
incomplete stretch for a quiet one.

Identity: a trade is (instrument, time_ms, trade_id) and a quote (instrument, time_ms, seq) where
``seq`` is the feed's running quote number. For venues with trade ids that is the venue's own id
(the time of a trade never changes, so it adds nothing but a cheap filter); for id-less venues it
is the feed's synthetic number, which a replayed batch or a repeated write keeps. Every write
skips rows already stored, so a batch written twice leaves the store as after the first time.

The engine side is :class:`TickRecorder`: each series appends the :class:`~deltafeed.model.Trade`
objects it folds into candles to a plain list (one append on the hot path, no copy: the decoder
made the object anyway); the recorder swaps those lists out every ``max_delay_s`` and writes them
in one batch from a background task, so the per-trade path never waits on a store.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import msgspec
import numpy as np

from deltafeed.clock import LIVE, Clock
from deltafeed.model import BadInput, Trade, parse_duration_ms
from deltafeed.store.base import StoreError

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.ticks")

DEFAULT_TICK_RETENTION = "7d"

#: (instrument, trade_id, time_ms, price, qty, buyer_maker): one stored trade.
TradeRow = tuple[str, int, int, float, float, bool]
#: (instrument, seq, time_ms, bid, ask): one stored quote.
QuoteRow = tuple[str, int, int, float, float]


class TickGap(msgspec.Struct, frozen=True):
    """A span of an instrument's ticks known to be missing: ``since_ms`` and ``until_ms`` are the
    times of the ticks on either side (exclusive: both of those are stored), ``why`` says how."""

    instrument: str
    since_ms: int
    until_ms: int
    why: str


#: One instrument's trades or quotes as numpy columns (a structured array), the form stores write.
TRADE_DTYPE = np.dtype([("trade_id", "i8"), ("time_ms", "i8"), ("price", "f8"), ("qty", "f8"), ("buyer_maker", "?")])
QUOTE_DTYPE = np.dtype([("seq", "i8"), ("time_ms", "i8"), ("bid", "f8"), ("ask", "f8")])
_TRADE_FIELDS = operator.attrgetter("trade_id", "time_ms", "price", "qty", "buyer_maker")


@dataclass
class TickBatch:
    """What one write stores: trades, quotes and newly found gaps.

    Ticks come as rows (``trades``, ``quotes``: convenient for callers with a few) or as per-instrument
    columns (``trade_arrays``, ``quote_arrays``: what the recorder hands over, built in C from the
    buffered objects); :meth:`arrays` gives both as columns.
    """

    trades: list[TradeRow] = field(default_factory=list)
    quotes: list[QuoteRow] = field(default_factory=list)
    gaps: list[TickGap] = field(default_factory=list)
    trade_arrays: list[tuple[str, np.ndarray[Any, Any]]] = field(default_factory=list)
    quote_arrays: list[tuple[str, np.ndarray[Any, Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        arrays = sum(len(a) for _, a in self.trade_arrays) + sum(len(a) for _, a in self.quote_arrays)
        return len(self.trades) + len(self.quotes) + arrays

    def arrays(self) -> tuple[list[tuple[str, np.ndarray[Any, Any]]], list[tuple[str, np.ndarray[Any, Any]]]]:
        """(trades, quotes) as per-instrument structured arrays, the rows included."""
        trades = list(self.trade_arrays)
        quotes = list(self.quote_arrays)
        for rows, dtype, out in ((self.trades, TRADE_DTYPE, trades), (self.quotes, QUOTE_DTYPE, quotes)):
            by: dict[str, list[tuple[Any, ...]]] = {}
            for r in rows:
                by.setdefault(r[0], []).append(r[1:])
            out.extend((inst, np.array(rs, dtype=dtype)) for inst, rs in by.items())
        return trades, quotes

    def spans(self) -> dict[str, tuple[int, int]]:
        """Per instrument, the times of its first and last tick in the batch."""
        out: dict[str, tuple[int, int]] = {}
        trades, quotes = self.arrays()
        for inst, a in trades + quotes:
            if len(a):
                lo, hi = int(a["time_ms"].min()), int(a["time_ms"].max())
                old = out.get(inst, (lo, hi))
                out[inst] = (min(old[0], lo), max(old[1], hi))
        return out


class TickPage(msgspec.Struct):
    """One read of an instrument's ticks, oldest first.

    ``trades`` rows are (time_ms, trade_id, price, qty, buyer_maker); ``quotes`` rows are (time_ms,
    seq, bid, ask). ``missing`` are the gaps that overlap the window asked for; ``kept_from`` is the
    time of the oldest tick stored for the instrument at all (None: none), before which nothing can
    be answered; ``next_since`` is where to continue when ``limit`` cut the answer short.
    """

    instrument: str
    trades: list[tuple[int, int, float, float, bool]]
    quotes: list[tuple[int, int, float, float]]
    missing: list[TickGap]
    kept_from: int | None
    next_since: int | None = None


@runtime_checkable
class TickTier(Protocol):
    """What a cold tier offers for ticks (DuckDB and PostgreSQL implement it)."""

    async def write_ticks(self, batch: TickBatch) -> None:
        """Store a batch atomically, skipping ticks already stored (idempotent)."""
        ...

    async def read_ticks(
        self, instrument: str, since_ms: int | None, until_ms: int | None, limit: int | None
    ) -> TickPage:
        """Ticks with ``since_ms <= time_ms <= until_ms``; with ``limit``, the first ``limit`` from
        ``since_ms`` on (the newest ``limit`` when ``since_ms`` is None), trades and quotes each."""
        ...

    async def last_tick_ms(self) -> dict[str, int]:
        """Per instrument, the time of its newest stored tick."""
        ...

    async def tick_instruments(self) -> list[tuple[str, int, int, int]]:
        """(instrument, ticks stored, oldest time, newest time) of every instrument with ticks, sorted."""
        ...

    async def apply_tick_retention(self, cutoff_ms: int) -> int:
        """Delete ticks (and gaps ending) before ``cutoff_ms``; returns how many ticks were deleted."""
        ...


def tick_tier(cold: object) -> TickTier | None:
    """``cold`` as a :class:`TickTier`, or None when that tier keeps no ticks."""
    return cold if isinstance(cold, TickTier) else None


def parse_tick_retention(text: str) -> int:
    """``tick_retention`` ("7d", "36h") in ms; at least a minute, so a typo cannot delete every tick."""
    try:
        ms = parse_duration_ms(text)
    except BadInput:
        raise BadInput(f'tick_retention {text!r} is not a duration; write e.g. tick_retention = "7d"') from None
    if ms < 60_000:
        raise BadInput(f'tick_retention {text!r} is shorter than a minute; write e.g. tick_retention = "7d"')
    return ms


class _Buffers:
    """One series' ticks not yet written, and where its recording stands."""

    __slots__ = ("instrument", "last_id", "last_ms", "quotes", "rebind", "sequenced", "started", "trades")

    def __init__(self, instrument: str, sequenced: bool) -> None:
        self.instrument = instrument
        self.sequenced = sequenced
        self.trades: list[Trade] = []
        self.quotes: list[tuple[int, int, float, float]] = []  # (seq, time_ms, bid, ask)
        #: Points the series at this buffer's current lists (after a swap).
        self.rebind: Callable[[_Buffers], None] = _no_rebind
        self.last_id = -1  # id (or quote seq) of the last tick handed to the store, -1 before the first
        self.last_ms = -1
        self.started = False


class TickRecorder:
    """Buffers the ticks of every series and writes them to the cold tier in batches.

    Overflow policy: *bounded, drop the oldest batch with a recorded gap*. While the store fails,
    unwritten ticks stay in memory up to ``max_pending``; past it the oldest batch is dropped,
    counted in :attr:`dropped`, and its span recorded as a gap (gaps are small and always kept), so a
    reader learns exactly what is missing. Ticks have no spool: candles are what must survive an
    outage, and their repair from the venue's history needs no ticks.

    Gaps found while recording: a jump in a series' trade ids or quote numbers between two ticks
    (a lost trade, a reconnect), :meth:`lost` (a feed's own report of a loss) and, at a run's first
    tick of an instrument, the span since its newest stored tick (deltafeed was not recording).
    """

    def __init__(
        self,
        tier: TickTier,
        *,
        max_delay_s: float = 1.0,
        max_rows: int = 50_000,
        max_pending: int = 2_000_000,
        clock: Clock = LIVE,
    ) -> None:
        self.tier = tier
        self.max_delay_s = max_delay_s
        self.max_rows = max_rows
        self.max_pending = max_pending
        self.clock = clock
        self._series: list[_Buffers] = []
        self._gaps: list[TickGap] = []
        self._unwritten: list[TickBatch] = []  # taken from the series, not yet in the store (oldest first)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        #: Ticks written so far.
        self.written = 0
        #: Ticks dropped because the store failed for longer than memory could hold them.
        self.dropped = 0
        #: Gaps recorded so far.
        self.gaps = 0
        #: The store's last failure, None once a write succeeded since.
        self.last_error: StoreError | None = None
        #: Newest stored tick per instrument at start-up (for the gap since the previous run).
        self.previous: dict[str, int] = {}

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, st: Series) -> None:
        """Record ``st``'s ticks: its trades when it is trade-built, its quotes when it is the first
        price side of a quote-built instrument (the other sides share those quotes)."""
        inst = str(st.instrument)
        if st.price == "trade":
            buf = _Buffers(st.key, st.feed.sequenced)

            def rebind(b: _Buffers) -> None:
                st.tick_buffer = b.trades

        else:
            if any(b.instrument == inst for b in self._series):
                return
            buf = _Buffers(inst, False)

            def rebind(b: _Buffers) -> None:
                st.quote_buffer = b.quotes

        buf.rebind = rebind
        rebind(buf)
        st.tick_recorder = self
        self._series.append(buf)

    @property
    def pending(self) -> int:
        """Ticks in memory not yet written."""
        return sum(len(b.trades) + len(b.quotes) for b in self._series) + sum(len(b) for b in self._unwritten)

    def lost(self, instrument: str, since_ms: int, until_ms: int, why: str) -> None:
        """A feed may have lost ticks of ``instrument`` between these times (exclusive)."""
        if until_ms > since_ms:
            self._gaps.append(TickGap(instrument, since_ms, until_ms, why))
            self.gaps += 1

    # -- batching ------------------------------------------------------------------------------

    def _swap(self) -> list[tuple[_Buffers, list[Trade], list[tuple[int, int, float, float]]]]:
        """Take every series' buffered ticks (O(1) per series: the hot path keeps appending to a
        fresh list). Runs on the event loop, between two frames."""
        taken = []
        for b in self._series:
            if b.trades or b.quotes:
                taken.append((b, b.trades, b.quotes))
                b.trades, b.quotes = [], []
                b.rebind(b)
        return taken

    def _convert(
        self, taken: list[tuple[_Buffers, list[Trade], list[tuple[int, int, float, float]]]], gaps: list[TickGap]
    ) -> TickBatch:
        """Turn the taken ticks into columns (in C: ~0.5 us a trade) and find the gaps among them.
        Runs in a worker thread, so the event loop keeps turning meanwhile."""
        batch = TickBatch(gaps=gaps)
        for b, trades, quotes in taken:
            if trades:
                a = np.fromiter(map(_TRADE_FIELDS, trades), dtype=TRADE_DTYPE, count=len(trades))
                if b.sequenced:
                    a = a[np.argsort(a["trade_id"], kind="stable")]
                self._find_gaps(b, a["trade_id"], a["time_ms"], batch.gaps)
                batch.trade_arrays.append((b.instrument, a))
            if quotes:
                q = np.fromiter(quotes, dtype=QUOTE_DTYPE, count=len(quotes))
                self._find_gaps(b, q["seq"], q["time_ms"], batch.gaps)
                batch.quote_arrays.append((b.instrument, q))
        return batch

    def _find_gaps(
        self, b: _Buffers, ids: np.ndarray[Any, Any], times: np.ndarray[Any, Any], gaps: list[TickGap]
    ) -> None:
        """Gaps among ``ids`` (in order) after ``b``'s last tick: an id more than one past every id
        before it means the ones between never arrived."""
        if not b.started:
            b.started = True
            before = self.previous.get(b.instrument)
            if before is not None and int(times[0]) > before:
                gaps.append(TickGap(b.instrument, before, int(times[0]), "not recorded (deltafeed was not running)"))
                self.gaps += 1
            b.last_id, b.last_ms = int(ids[0]) - 1, int(times[0])
        top = np.maximum.accumulate(np.concatenate(([b.last_id], ids)))  # highest id so far, before each
        for i in np.flatnonzero(ids > top[:-1] + 1):
            since = b.last_ms if i == 0 else int(times[i - 1])
            first, last = int(top[i]) + 1, int(ids[i]) - 1
            gaps.append(TickGap(b.instrument, since, int(times[i]), f"ids {first} to {last} not received"))
            self.gaps += 1
        k = int(np.argmax(ids))
        if int(ids[k]) > b.last_id:
            b.last_id, b.last_ms = int(ids[k]), int(times[k])

    def _drop_oldest(self) -> None:
        """Memory's bound is reached while the store fails: give up the oldest batch, as a gap."""
        old = self._unwritten.pop(0)
        spans = old.spans()
        self.dropped += len(old)
        gaps = [TickGap(i, lo - 1, hi + 1, "dropped: the store failed for too long") for i, (lo, hi) in spans.items()]
        self._gaps.extend([*old.gaps, *gaps])
        self.gaps += len(gaps)
        log.error(
            "tick store %s is failing (%s); dropped %d ticks (recorded as gaps)",
            _name(self.tier),
            self.last_error,
            len(old),
        )

    async def flush(self) -> None:
        """Write everything buffered now; raises :class:`StoreError` (keeping the ticks) on failure."""
        async with self._lock:
            taken, gaps = self._swap(), self._gaps
            self._gaps = []
            batch = await asyncio.to_thread(self._convert, taken, gaps) if taken else self._convert([], gaps)
            if len(batch) or batch.gaps:
                self._unwritten.append(batch)
            while sum(len(b) for b in self._unwritten) > self.max_pending and len(self._unwritten) > 1:
                self._drop_oldest()
            while self._unwritten:
                head = self._unwritten[0]
                if self._gaps:  # gaps of dropped batches ride with the next write
                    head.gaps.extend(self._gaps)
                    self._gaps = []
                try:
                    await self.tier.write_ticks(head)
                except StoreError as e:
                    self.last_error = e
                    raise
                self._unwritten.pop(0)
                self.written += len(head)
                self.last_error = None

    async def run(self) -> None:
        """Flush every ``max_delay_s`` (sooner when ``max_rows`` ticks wait) until :meth:`close`."""
        while not self._stop.is_set():
            waited = 0.0
            while waited < self.max_delay_s and not self._stop.is_set():
                step = min(0.2, self.max_delay_s - waited)
                await self.clock.sleep(step)
                waited += step
                if sum(len(b.trades) + len(b.quotes) for b in self._series) >= self.max_rows:
                    break
            try:
                await self.flush()
            except StoreError as e:
                log.warning("ticks not written to %s yet (%s); %d wait in memory", _name(self.tier), e, self.pending)

    async def close(self) -> None:
        """Stop :meth:`run` and write what is left (a store still failing loses it, logged)."""
        self._stop.set()
        try:
            await self.flush()
        except StoreError as e:
            log.error("stopping with %d ticks unwritten: %s", self.pending, e)


def _no_rebind(b: _Buffers) -> None:
    return None


def _name(tier: object) -> str:
    return str(getattr(tier, "name", tier))


def page_rows(
    trades: Sequence[tuple[int, int, float, float, bool]],
    quotes: Sequence[tuple[int, int, float, float]],
    limit: int | None,
    since_ms: int | None,
) -> int | None:
    """``next_since`` of a page: the time after its last tick when ``limit`` cut it short."""
    if limit is None or since_ms is None:
        return None
    ends = [rows[-1][0] for rows in (trades, quotes) if len(rows) >= limit]
    return max(ends) if ends else None
