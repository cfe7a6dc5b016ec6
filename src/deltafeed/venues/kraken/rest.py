"""Kraken REST history: server time, pairs, and candles of any deltafeed timeframe, from OHLC while
the range lies within its newest 720 rows, else rebuilt from ``/0/public/Trades``, under the public
rate limit."""

from __future__ import annotations

import logging
import time

from deltafeed.candles.fromtrades import build_candles
from deltafeed.candles.rollup import rollup
from deltafeed.model import TIMEFRAMES, Candle, Trade
from deltafeed.net.http import Response, RestClient, VenueError
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.kraken import codec

log = logging.getLogger("deltafeed.kraken")

#: Throttle answers in a row (HTTP 429 or a 200 whose error array says so) before a call fails.
MAX_THROTTLED = 5
#: Wall seconds an OHLC answer is reused for the next repairs of the same pair (Kraken's public
#: limit is about one call a second, and one answer holds 720 rows).
OHLC_REUSE_S = 1.0


def _throttle(resp: Response, in_row: int) -> float | None:
    """Kraken's HTTP 429: wait longer with each one in a row (it sends no Retry-After)."""
    return 2.0 * in_row if resp.status in (429, 418) else None


class KrakenHistory:
    """Reads Kraken's public REST API (or a replica of it) through one paced :class:`RestClient`.

    Pacing: ``rate_per_s`` calls a second with a burst of ``burst``, inside Kraken's ~1/s public
    limit and its call counter; ``throttled`` counts "too many requests" answers of any form and
    ``venue_errors`` the other error arrays, by text (each logged once).
    """

    def __init__(self, base_url: str = codec.DEFAULT_REST_URL, rate_per_s: float = 0.9, burst: int = 10) -> None:
        window = 60.0
        budget = rate_per_s * window
        self.limiter = WeightLimiter(max(1, round(budget)), window, 1.0, burst_fraction=burst / budget)
        self.http = RestClient(base_url, self.limiter, throttle=_throttle, max_throttled=MAX_THROTTLED)
        self.throttled = 0  # 200 answers with a rate-limit error (the client counts 429s itself)
        self.venue_errors: dict[str, int] = {}
        self.requests = 0
        #: The last OHLC answer per (pair, interval): the venue time it was asked for, when, the rows.
        self._ohlc_cache: dict[tuple[str, str], tuple[int | None, float, list[Candle]]] = {}

    async def _result(self, path: str) -> bytes:
        """A 200 body whose error array is empty; rate-limit errors are waited out and retried."""
        for attempt in range(MAX_THROTTLED + 1):
            self.requests += 1
            try:
                body = await self.http.get(path)
            except VenueError as exc:
                err = codec.error_of(exc.body)
                if err is not None:
                    self._count(err)
                raise
            err = codec.error_of(body)
            if err is None:
                return body
            self._count(err)
            if not err.throttled or attempt == MAX_THROTTLED:
                raise VenueError(200, body, self.http.base_url + path)
            self.throttled += 1
            self.limiter.penalize(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    def _count(self, err: codec.KrakenError) -> None:
        for e in err.errors:
            key = e[:80]
            if key not in self.venue_errors:
                log.warning("kraken answered an error: %s (counted in status)", key)
            self.venue_errors[key] = self.venue_errors.get(key, 0) + 1

    def _bad(self, path: str, exc: Exception) -> VenueError:
        return VenueError(200, str(exc).encode(), self.http.base_url + path)

    async def server_time(self) -> int:
        path = "/0/public/Time"
        body = await self._result(path)
        try:
            return codec.decode_time(body)
        except (codec.BadAnswer, codec.KrakenError) as exc:
            raise self._bad(path, exc) from None

    async def pairs(self) -> dict[str, str]:
        """{WS v2 symbol: REST altname} of every pair online."""
        path = "/0/public/AssetPairs"
        body = await self._result(path)
        try:
            return codec.decode_asset_pairs(body)
        except (codec.BadAnswer, codec.KrakenError) as exc:
            raise self._bad(path, exc) from None

    async def precisions(self) -> dict[str, tuple[int, int]]:
        """{WS v2 symbol: (price decimals, qty decimals)} of every pair (the book checksum's)."""
        path = "/0/public/AssetPairs"
        body = await self._result(path)
        try:
            return codec.decode_pair_precisions(body)
        except (codec.BadAnswer, codec.KrakenError) as exc:
            raise self._bad(path, exc) from None

    async def ohlc(self, pair: str, timeframe: str) -> list[Candle]:
        """The newest rows (at most 720) of a native interval, closed as the venue's ``last`` says."""
        path = codec.ohlc_query(pair, codec.OHLC_INTERVALS[timeframe])
        body = await self._result(path)
        try:
            return codec.decode_ohlc(body, TIMEFRAMES[timeframe])
        except (codec.BadAnswer, codec.KrakenError) as exc:
            raise self._bad(path, exc) from None

    async def trades(self, pair: str, start_ms: int, end_ms: int) -> tuple[list[Trade], int]:
        """Trades with time in [start_ms, end_ms), paged by ``last``; and the time of the latest
        trade the pages held (-1 for none): every candle ending by then is whole."""
        since = start_ms * 1_000_000 - 1
        out: list[Trade] = []
        latest = -1
        while True:
            path = codec.trades_query(pair, since)
            body = await self._result(path)
            try:
                page, last = codec.decode_trades(body)
            except (codec.BadAnswer, codec.KrakenError) as exc:
                raise self._bad(path, exc) from None
            out += [t for t in page if start_ms <= t.time_ms < end_ms]
            if page:
                latest = max(latest, page[-1].time_ms)
            if len(page) < codec.TRADES_PAGE or latest >= end_ms:
                return out, latest
            if last <= since:
                raise self._bad(path, ValueError(f"Trades 'last' {last} does not move past since {since}"))
            since = last

    async def candles(
        self, pair: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Candles of ``timeframe`` with open time in [start_ms, end_ms]: what lies within OHLC's
        newest 720 rows from OHLC, what lies before them built from trades. "Closed" is the venue's
        word: OHLC's ``last``, or a trade after the candle's end; ``now_ms`` (our estimate of the
        venue's clock, None to ask it) only places OHLC's window.

        Longer candles inside the 1m window are rolled up from the 1m rows (the same trades), so
        one OHLC answer, kept for ``OHLC_REUSE_S``, serves every timeframe of a pair's repairs."""
        tf_ms = TIMEFRAMES[timeframe]
        now = now_ms if now_ms is not None else await self.server_time()
        start = start_ms - start_ms % tf_ms
        end = end_ms - end_ms % tf_ms + tf_ms  # exclusive
        out: list[Candle] = []
        split = start
        if timeframe in codec.OHLC_INTERVALS:
            # A margin of two rows: the venue's window may have moved on since our clock last heard it.
            split = min(end, max(start, self.ohlc_from(timeframe, now) + 2 * tf_ms))
            if split < end:
                rolled = start >= self.ohlc_from("1m", now) + 2 * 60_000
                rows = await self._ohlc_cached(pair, "1m" if rolled else timeframe, now_ms)
                if rolled:
                    rows = rollup([c for c in rows if c.open_time >= split], 60_000, tf_ms)
                if rows and rows[0].open_time <= split:
                    out = [c for c in rows if split <= c.open_time < end]
                else:
                    split = end  # the window moved more than expected: trades for all of it
            if split <= start:
                return out
        trades, latest = await self.trades(pair, start, split)
        # Trades come in time order: a candle is whole once the venue has a trade after its end.
        return build_candles(trades, tf_ms, start, split, latest) + out

    async def _ohlc_cached(self, pair: str, timeframe: str, now_ms: int | None) -> list[Candle]:
        """OHLC rows, reused for the pages of one bootstrap (the same ``now_ms``) and for
        ``OHLC_REUSE_S`` wall seconds (what is closed stays the venue's word of that answer)."""
        key = (pair, timeframe)
        hit = self._ohlc_cache.get(key)
        mono = time.monotonic()
        if hit is None or not ((now_ms is not None and hit[0] == now_ms) or mono - hit[1] < OHLC_REUSE_S):
            hit = (now_ms, mono, await self.ohlc(pair, timeframe))
            self._ohlc_cache[key] = hit
        return hit[2]

    @staticmethod
    def ohlc_from(timeframe: str, now_ms: int) -> int:
        """The oldest open time REST OHLC still serves (its 720 rows end with the forming one)."""
        tf_ms = TIMEFRAMES[timeframe]
        return now_ms - now_ms % tf_ms - (codec.OHLC_KEEP - 1) * tf_ms

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """A span whose candles take about one request: 720 OHLC rows, or for the others about
        1000 trades at a busy pair's pace (a guess; the requests are paged by ``last`` anyway)."""
        tf_ms = TIMEFRAMES[timeframe]
        if timeframe in codec.OHLC_INTERVALS:
            return (codec.OHLC_KEEP - 1) * tf_ms
        return max(tf_ms, 300_000 - 300_000 % tf_ms)

    async def close(self) -> None:
        await self.http.close()
