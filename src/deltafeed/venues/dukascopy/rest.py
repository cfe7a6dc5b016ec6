"""Dukascopy tick history over HTTP: every quote of a time range, one hour file at a time, in time order.

Dukascopy has no API beyond static hour files (see :mod:`deltafeed.venues.dukascopy.codec`), so a range
of N hours is N GETs. Latency dominates, so up to ``concurrency`` hours are fetched ahead while the
caller consumes the current one; results still come out strictly in time order, which is what a
candle builder needs. Retries on 5xx, 429 (honouring ``Retry-After``) and connection errors are
:class:`~deltafeed.net.http.RestClient`'s.

Dukascopy publishes no rate limit, but throttles aggressive downloaders; the default pace of
10 requests per second is about what the common third-party downloaders use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable

from deltafeed.model import Quote
from deltafeed.net.http import RestClient, VenueError
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.dukascopy import codec as codec

log = logging.getLogger(__name__)

#: ``progress(done_hours, total_hours)``; called once with 0 before the first hour, then after every hour.
Progress = Callable[[int, int], None]

#: A range of more than this many hours where every hour is 404 is an error, not "not published yet".
_TAIL_HOURS = 2


class DukascopyHistory:
    """Reads Dukascopy's tick files (or a :class:`~deltafeed.venues.dukascopy.replica.DukascopyReplica`'s).

    ``base_url`` is the ``.../datafeed`` prefix that hour paths are appended to.
    """

    def __init__(
        self,
        base_url: str = codec.DEFAULT_BASE_URL,
        concurrency: int = 4,
        requests_per_s: float = 10.0,
        timeout_s: float = 30.0,
        retries: int = 5,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        # One request is weight 1; a one-second window with a small burst paces evenly.
        self.limiter = WeightLimiter(max(1, round(requests_per_s)), window_s=1.0, headroom=1.0, burst_fraction=1.0)
        self.http = RestClient(base_url, self.limiter, timeout_s=timeout_s, retries=retries)
        #: ``(SYMBOL, hour_start_ms)`` of every hour that answered 404 (not published, or unknown).
        self.missing: list[tuple[str, int]] = []
        self.hours = 0  # hour files fetched (including empty and missing ones)
        self.empty_hours = 0
        self.quotes_read = 0
        #: Ticks left out of the hours read, by kind (``impossible_value``: a zero price, a bad size).
        self.skipped: Counter[str] = Counter()

    async def quotes(
        self, symbol: str, start_ms: int, end_ms: int, progress: Progress | None = None
    ) -> AsyncIterator[list[Quote]]:
        """Every quote of ``symbol`` with ``start_ms <= time_ms < end_ms``, one non-empty list per hour, in order.

        ``symbol`` may be written ``EURUSD`` or ``EUR_USD``; the quotes carry it as written, so a
        caller working in OANDA names gets OANDA names back. Closed hours (empty files) are
        skipped without a yield. An hour that answers 404 (Dukascopy has not published it yet, as
        for the current hour) is skipped and listed in :attr:`missing`; but if every hour of a range
        longer than two hours answers 404, the instrument is unknown or the range lies in the
        future, and :class:`~deltafeed.net.http.VenueError` (status 404) is raised. A body that is
        not a tick file raises :class:`~deltafeed.venues.dukascopy.Bi5Error` naming the hour.

        Abandoning the iterator early cancels the requests still in flight.
        """
        codec.price_scale(symbol)  # refuse an instrument with an unknown price scale before any request
        hours = list(range(codec.hour_floor(start_ms), end_ms, codec.HOUR_MS)) if end_ms > start_ms else []
        total = len(hours)
        if progress is not None:
            progress(0, total)
        pending: deque[asyncio.Task[list[Quote] | None]] = deque()
        upcoming = iter(hours)
        missing = 0
        try:
            for done in range(1, total + 1):
                while len(pending) < self.concurrency:
                    hour = next(upcoming, None)
                    if hour is None:
                        break
                    pending.append(asyncio.create_task(self._hour(symbol, hour, start_ms, end_ms)))
                got = await pending.popleft()
                if got is None:
                    missing += 1
                if progress is not None:
                    progress(done, total)
                if got:
                    yield got
        finally:
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        if missing:
            name = codec.dukascopy_symbol(symbol)
            if missing == total and total > _TAIL_HOURS:
                raise VenueError(
                    404,
                    b"no hour file exists in the range: unknown instrument, or the range is in the future",
                    f"{self.http.base_url}/{name}",
                )
            log.warning("dukascopy: %d of %d hours of %s are not published (404); skipped", missing, total, name)

    async def _hour(self, symbol: str, hour: int, start_ms: int, end_ms: int) -> list[Quote] | None:
        """One hour's quotes within the range; None if the file is not there (404)."""
        try:
            body = await self.http.get("/" + codec.tick_path(symbol, hour))
        except VenueError as e:
            if e.status != 404:
                raise
            self.hours += 1
            self.missing.append((codec.dukascopy_symbol(symbol), hour))
            return None
        self.hours += 1
        if not body:
            self.empty_hours += 1
            return []
        quotes = codec.decode_bi5(body, hour, symbol, self.skipped)
        if hour < start_ms or hour + codec.HOUR_MS > end_ms:
            quotes = [q for q in quotes if start_ms <= q.time_ms < end_ms]
        self.quotes_read += len(quotes)
        return quotes

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> DukascopyHistory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
