"""Backfill: forex candle history built from a tick-history source (Dukascopy) into the cold store.

``deltafeed run`` bootstraps over the venue's REST candles, which reach back only so far (OANDA
serves 5000 candles a request and little second-level history). Dukascopy publishes every tick
since the 2000s as one file per hour, so :func:`backfill` reads those ticks and builds the candles
itself, by the live engine's mechanism (a :class:`~deltafeed.candles.quotes.QuoteRouter` feeding one
:class:`~deltafeed.candles.aggregator.CandleBuilder` per price side) and with its FX calendar, under
the series name the live feed writes (``oanda:EUR_USD``, ``oanda:EUR_USD@bid``), so the history
joins the live series. Prices and quote counts are Dukascopy's, not OANDA's: close, not identical
(volume counts Dukascopy ticks).

The range is cut to whole candles of the longest timeframe: ``since`` and ``until`` are both rounded
down to its boundary, and every candle written ends by ``until`` and is marked closed. Candles are
written as they complete, in batches, by upsert, so a second run over the same range changes nothing
and an interrupted run is resumed by running it again.

An hour the source has not published (404: the current hour, or a hole in the archive) holds no
quotes we can see; it is not a quiet market. So no flat candle is made across it, and a candle that
overlaps it (a 4h or 1d candle around it) is incomplete and not written at all (counted in
:attr:`BackfillResult.skipped`). Closed hours (weekends, holidays) are empty files and make no candle.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.calendar import Calendar, calendar_for
from deltafeed.candles.quotes import QuoteRouter
from deltafeed.model import (
    PRICE_SIDES,
    BadInput,
    Candle,
    Instrument,
    Quote,
    Trade,
    Unavailable,
    parse_timeframes,
    series_key,
    timeframe,
)
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.store.base import ColdTier, Row, StoreBusy, open_cold
from deltafeed.venues import registry
from deltafeed.venues.base import TickSource

DEFAULT_TIMEFRAMES = ("1m", "5m", "15m", "1h")
DEFAULT_BATCH_ROWS = 20_000
#: How long a write keeps retrying while another process holds the DuckDB file.
_BUSY_RETRY_S = 30.0


def sources() -> list[str]:
    """The venues whose tick history can fill candles (``--source``)."""
    return [v.name for v in registry.venues() if v.tick_source() is not None]


def tick_source(name: str | None) -> tuple[str, TickSource]:
    """The tick source ``name`` (None: the first there is) and its name; :class:`BadInput` otherwise."""
    known = sources()
    if name is None and known:
        name = known[0]
    if name not in known:
        raise BadInput(f"unknown source {name!r}; use {', '.join(known)}")
    ticks = registry.get(name).tick_source()
    assert ticks is not None
    return name, ticks


class SourceError(BadInput):
    """The tick source failed: unreachable, refusing, or serving something that is not tick data."""


class SourceUnreachable(SourceError, Unavailable):
    """The tick source cannot be reached now: the command may work later (exit 69, not 2)."""


@dataclass(frozen=True, slots=True)
class BackfillPlan:
    """A checked backfill request: what is fetched, built and written."""

    instrument: str  # series name of the mid candles, e.g. oanda:EUR_USD
    source: str
    symbol: str  # the source's name, e.g. EURUSD
    since_ms: int  # rounded down to the longest timeframe
    until_ms: int  # rounded down to the longest timeframe; exclusive
    timeframes: tuple[str, ...]  # shortest first
    sides: tuple[str, ...]  # in PRICE_SIDES order
    file_ms: int = 3_600_000  # the span of one of the source's files

    @property
    def hours(self) -> int:
        """Hour files the range covers."""
        return len(range(self.since_ms - self.since_ms % self.file_ms, self.until_ms, self.file_ms))

    def key(self, side: str) -> str:
        return series_key(self.instrument, side)


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Where a running backfill is: passed to the ``progress`` callback after every hour and batch."""

    hours_done: int
    hours_total: int
    quotes: int
    candles_written: int


@dataclass(slots=True)
class BackfillResult:
    """What a backfill did. ``candles`` counts rows written per ``(side, timeframe)``."""

    plan: BackfillPlan
    hours: int = 0  # hour files fetched, including empty and missing ones
    empty_hours: int = 0
    missing_hours: list[int] = field(default_factory=list)  # start of every hour that answered 404
    quotes: int = 0
    candles: dict[tuple[str, str], int] = field(default_factory=dict)
    skipped: int = 0  # candles not written because they overlap a missing hour
    refused: int = 0  # quotes with impossible prices
    out_of_order: int = 0
    seconds: float = 0.0

    @property
    def candles_written(self) -> int:
        return sum(self.candles.values())

    def summary(self) -> str:
        """One line: the range, hours fetched, empty and missing hours, quotes, candles per side and timeframe."""
        p = self.plan
        per_side = "; ".join(
            f"{side} " + " ".join(f"{tf}={self.candles.get((side, tf), 0)}" for tf in p.timeframes) for side in p.sides
        )
        extra = ""
        if self.skipped:
            extra += f" skipped_incomplete={self.skipped}"
        if self.refused or self.out_of_order:
            extra += f" refused_quotes={self.refused} out_of_order_quotes={self.out_of_order}"
        return (
            f"backfilled {p.instrument} from {p.source} {p.symbol} {_iso(p.since_ms)}..{_iso(p.until_ms)}: "
            f"hours={self.hours} empty_hours={self.empty_hours} missing_hours={len(self.missing_hours)} "
            f"quotes={self.quotes} candles={self.candles_written} ({per_side}){extra} in {self.seconds:.1f} s"
        )


def plan_backfill(
    instrument: str,
    since_ms: int,
    until_ms: int,
    *,
    source: str | None = None,
    timeframes: str | Sequence[str] = DEFAULT_TIMEFRAMES,
    prices: str | Sequence[str] = ("mid",),
) -> BackfillPlan:
    """Check a request and round its range to whole candles; :class:`BadInput` naming the fix otherwise."""
    source, ticks = tick_source(source)
    name, at, _ = instrument.partition("@")
    if at:
        raise BadInput(f"name the instrument without a price side ({instrument!r}); choose sides with --prices")
    if ":" not in name:
        raise BadInput(f"instrument {instrument!r} has no venue; name the series to fill, e.g. oanda:EUR_USD")
    inst = Instrument.parse(name)
    if registry.get(inst.venue).calendar_name(inst.symbol) == "crypto":
        raise BadInput(f"{inst} is not a forex series; backfill fills forex candles from quotes, e.g. oanda:EUR_USD")
    symbol = ticks.symbol(inst.symbol)
    tfs = tuple(parse_timeframes(list(timeframes) if not isinstance(timeframes, str) else timeframes))
    sides = _parse_prices(prices)
    if since_ms >= until_ms:
        raise BadInput(f"since ({_iso(since_ms)}) must be before until ({_iso(until_ms)})")
    longest = timeframe(tfs[-1])
    since_r, until_r = longest.start(since_ms), longest.start(until_ms)
    if until_r <= since_r:
        raise BadInput(
            f"{_iso(since_ms)}..{_iso(until_ms)} holds no whole {tfs[-1]} candle (both ends are rounded down to "
            f"{tfs[-1]} boundaries); widen the range or leave {tfs[-1]} out of the timeframes"
        )
    return BackfillPlan(str(inst), source, symbol, since_r, until_r, tfs, sides, ticks.file_ms)


async def backfill(
    instrument: str,
    since_ms: int,
    until_ms: int,
    *,
    source: str | None = None,
    timeframes: str | Sequence[str] = DEFAULT_TIMEFRAMES,
    prices: str | Sequence[str] = ("mid",),
    db: str | ColdTier = "deltafeed.duckdb",
    db_schema: str = "deltafeed",
    url: str | None = None,
    concurrency: int = 4,
    requests_per_s: float = 10.0,
    retries: int = 5,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillResult:
    """Fill ``instrument``'s candles over ``[since_ms, until_ms)`` (rounded, see :func:`plan_backfill`).

    ``db`` is a ``--db`` target (DuckDB path or ``postgresql://`` URL), opened and closed here, or an
    open :class:`~deltafeed.store.base.ColdTier`, left open. ``url`` is the ``.../datafeed`` base of the
    tick files; ``concurrency``, ``requests_per_s`` and ``retries`` pace the downloads.
    ``progress`` gets a :class:`BackfillProgress` after every hour and every batch written.

    Raises :class:`BadInput` for a bad request (before any I/O), :class:`SourceError` (a ``BadInput``)
    when the source cannot be reached or serves no data for the range, and
    :class:`~deltafeed.store.base.StoreError` when the store fails.
    """
    plan = plan_backfill(instrument, since_ms, until_ms, source=source, timeframes=timeframes, prices=prices)
    if batch_rows < 1:
        raise BadInput("batch_rows must be at least 1")
    HOUR_MS = plan.file_ms
    t0 = time.monotonic()
    result = BackfillResult(plan, candles={(s, tf): 0 for s in plan.sides for tf in plan.timeframes})
    keys = {s: plan.key(s) for s in plan.sides}
    grids = {tf: timeframe(tf) for tf in plan.timeframes}
    missing: list[int] = result.missing_hours  # sorted: hours are reported in order
    rows: list[Row] = []
    counts: list[tuple[str, str]] = []  # (side, tf) of each row, for the per-series counts
    done_hours = [0, plan.hours]

    def report() -> None:
        if progress is not None:
            progress(BackfillProgress(done_hours[0], done_hours[1], result.quotes, result.candles_written))

    def closed(side: str, timeframe: str, candle: Candle, last_quote_ms: int) -> None:
        start = candle.open_time
        end = grids[timeframe].next(start)
        if candle.trades == 0:
            # A flat candle after a missing hour that no quote followed yet: a silent stream, not a
            # quiet market (the builder learns of the break only from the next quote), so not made.
            i = bisect.bisect_right(missing, last_quote_ms)
            if i < len(missing) and missing[i] < end:
                return
        i = bisect.bisect_right(missing, start - HOUR_MS)  # first missing hour ending after the candle opens
        if i < len(missing) and missing[i] < end:
            result.skipped += 1  # some of its quotes were never seen
            return
        candle.closed = candle.final = True  # built from the venue's whole tick history
        rows.append((keys[side], timeframe, candle))
        counts.append((side, timeframe))

    calendar = calendar_for("fx")
    router = QuoteRouter()
    inst = Instrument.parse(plan.instrument)
    sides = [_Side(inst, side, plan.timeframes, calendar, closed) for side in plan.sides]
    for st in sides:
        router.add(st)

    def advance(now_ms: int) -> None:
        for st in sides:
            st.builder.advance(now_ms)

    cold = await open_cold(db, schema=db_schema) if isinstance(db, str) else db
    ticks = tick_source(plan.source)[1]
    hist = ticks.history(
        url or ticks.default_url, concurrency=concurrency, requests_per_s=requests_per_s, retries=retries
    )
    first_hour = plan.since_ms - plan.since_ms % HOUR_MS
    seen_missing: set[int] = set()
    n_seen = [0]  # entries of hist.missing already in seen_missing
    writing: asyncio.Task[None] | None = None

    def hour_done(done: int, total: int) -> None:
        done_hours[:] = [done, total]
        if done:
            # hist.missing grows as fetches finish (out of order); this hour is final by now.
            seen_missing.update(h for _, h in hist.missing[n_seen[0] :])
            n_seen[0] = len(hist.missing)
            hour = first_hour + (done - 1) * HOUR_MS
            if hour in seen_missing:
                # Quotes unseen, not a quiet market: close what ended before it, then a break (no flat
                # candles across it: the next quote shows it to the builders; closed() drops those before).
                advance(hour)
                router.gap()
                missing.append(hour)
        report()

    async def write(batch: list[Row], batch_counts: list[tuple[str, str]]) -> None:
        deadline = time.monotonic() + _BUSY_RETRY_S
        while True:
            try:
                await cold.write(batch)
                break
            except StoreBusy:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        for k in batch_counts:
            result.candles[k] += 1
        report()

    async def flush(force: bool) -> None:
        nonlocal writing, rows, counts
        if not rows or (len(rows) < batch_rows and not force):
            return
        if writing is not None:
            await writing  # one batch in flight at a time, in order
        batch, batch_counts = rows, counts
        rows, counts = [], []
        writing = asyncio.ensure_future(write(batch, batch_counts))

    try:
        try:
            # An async generator: closed at once when a write fails, so the fetches in flight stop.
            stream = cast(
                AsyncGenerator[list[Quote], None],
                hist.quotes(plan.symbol, plan.since_ms, plan.until_ms, progress=hour_done),
            )
            async with contextlib.aclosing(stream):
                route, symbol = router.quote, inst.symbol
                async for quotes in stream:
                    for q in quotes:
                        route(symbol, q.time_ms, q.bid, q.ask)
                    result.quotes += len(quotes)
                    report()
                    await flush(False)
        except VenueUnreachable as e:
            raise SourceUnreachable(f"{e}; check --url and the network") from None
        except VenueError as e:
            if e.status == 404:
                raise SourceError(
                    f"{plan.source} has no tick files for {plan.symbol} in {_iso(plan.since_ms)}..{_iso(plan.until_ms)}"
                    f" ({e.url}): an instrument it does not carry, or a range in the future"
                ) from None
            raise SourceError(f"{plan.source}: {e}") from None
        except ticks.decode_error as e:
            raise SourceError(f"{plan.source} served a file that is not tick data: {e}") from None
        advance(plan.until_ms)  # every candle ends by until: all of them close here
        await flush(True)
        if writing is not None:
            await writing
    finally:
        if writing is not None:
            writing.cancel()  # no-op when it finished; its error, if any, was raised above or is moot now
            await asyncio.gather(writing, return_exceptions=True)
        await hist.close()
        if isinstance(db, str):
            await cold.close()
    result.hours = hist.hours
    result.empty_hours = hist.empty_hours
    result.refused = router.refused
    result.out_of_order = router.out_of_order
    result.seconds = time.monotonic() - t0
    return result


class _Side:
    """One price side of the backfilled instrument: its builder, fed by the :class:`QuoteRouter`
    (a :class:`~deltafeed.candles.quotes.QuoteSide`). ``closed(side, timeframe, candle, last_quote_ms)``
    gets every final candle with the time of the quote before it."""

    __slots__ = ("_closed", "active", "builder", "instrument", "last_trade_ms", "price", "trades")

    def __init__(
        self,
        instrument: Instrument,
        price: str,
        timeframes: Sequence[str],
        calendar: Calendar,
        closed: Callable[[str, str, Candle, int], None],
    ) -> None:
        self.instrument = instrument
        self.price = price
        self.active = True
        self.trades = 0
        self.last_trade_ms = -1
        self._closed = closed
        # hold_max=0: the quote after a break is applied at once (the live engine's tick releases it);
        # its candles' repair reports are moot here, the missing hour's candles are skipped instead.
        self.builder = CandleBuilder(
            list(timeframes), self._on_closed, _no_repair, hold_max=0, calendar=calendar, vouch=False
        )  # final by construction: see closed() in backfill()

    def on_trade(self, trade: Trade) -> None:
        """One quote of this side from the router: into the builder, counted."""
        self.builder.on_trade(trade)
        self.trades += 1
        self.last_trade_ms = trade.time_ms

    def on_quote(self, seq: int, time_ms: int, bid: float, ask: float) -> None:
        """Raw quotes are not kept by a backfill (it rebuilds candles only)."""

    def _on_closed(self, timeframe: str, candle: Candle) -> None:
        self._closed(self.price, timeframe, candle, self.builder.last_trade_ms)


def _no_repair(timeframe: str, first: int, last: int) -> None:
    """Nothing is repaired: candles touching a missing hour are not written (see the module notes)."""


def _parse_prices(prices: str | Sequence[str]) -> tuple[str, ...]:
    names = [p.strip().lower() for p in (prices.split(",") if isinstance(prices, str) else prices)]
    names = [n for n in names if n]
    if not names:
        raise BadInput("no prices given; use some of mid,bid,ask, e.g. --prices mid,bid")
    for n in names:
        if n not in PRICE_SIDES:
            raise BadInput(f"unknown price {n!r}; use some of {','.join(PRICE_SIDES)}")
    return tuple(s for s in PRICE_SIDES if s in names)


def _iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
