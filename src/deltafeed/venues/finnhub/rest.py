"""Finnhub REST history: candles of deltafeed timeframes, paged, paced under both of Finnhub's limits.

Finnhub counts calls per API key: 60 a minute on the free plan, and never more than 30 in a second on any
plan; beyond either it answers 429. Both are token buckets here (:class:`WeightLimiter`), each sized so
that its burst plus a full window's refill stays within the limit, so even a sliding-window count never
sees one call too many: the goal is zero 429s. A 429 still happens when another program uses the same key;
then every caller pauses (``Retry-After`` when sent, else a doubling pause) and the call is retried.

The API key travels only in the ``X-Finnhub-Token`` header the client's auth hook adds (Finnhub also accepts
``token=`` in the query, which would put it in every URL, log line and exception): no URL, ``repr`` or
error built here contains it. A 401 becomes a :class:`VenueError` naming where the key comes from instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from deltafeed.model import TIMEFRAMES, Candle
from deltafeed.net.http import Response, RestClient, VenueError, header_auth
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.finnhub import codec as codec

log = logging.getLogger("deltafeed.finnhub")

#: Intervals asked for in one candles request. Finnhub does not document a maximum number of rows
#: [UNVERIFIED]; 2000 keeps a 1-minute page under two days, so a silent cap would be unlikely to bite.
PAGE_INTERVALS = 2000
#: The first pause after a 429 that carries no ``Retry-After`` (Finnhub's rate-limit headers are
#: [UNVERIFIED]); it doubles on each consecutive 429, up to a minute, the length of the window.
THROTTLE_PAUSE_S = 5.0
MAX_THROTTLE_PAUSE_S = 60.0


def paced_limiter(limit: int, window_s: float) -> WeightLimiter:
    """A token bucket that never lets ``limit + 1`` calls into any ``window_s``.

    Refill is 90 % of the limit per window and the burst a tenth of that: burst + one window's refill
    is 99 % of the limit, so even a server counting over a sliding window sees at most ``limit`` calls,
    with a margin for network jitter between calls.
    """
    return WeightLimiter(limit, window_s=window_s, headroom=0.9, burst_fraction=0.1)


class FinnhubHistory:
    """Candles from Finnhub's REST API (or a replica of it), one request at a time per limiter slot.

    ``rest_url`` ends in ``/api/v1``. ``calls_per_minute`` is the key's plan (60 free); ``calls_per_second``
    Finnhub's hard cap (30). ``window_s`` is the length of the "minute" (tests shorten it, together with
    the replica's). Connection errors and 5xx answers are retried ``retries`` times with backoff; 429s up
    to ``max_throttled`` times in a row. Other 4xx raise :class:`VenueError` at once.
    """

    def __init__(
        self,
        rest_url: str = codec.DEFAULT_REST_URL,
        token: str = "",
        calls_per_minute: int = codec.CALLS_PER_MINUTE,
        *,
        calls_per_second: int = codec.CALLS_PER_SECOND,
        window_s: float = 60.0,
        timeout_s: float = 10.0,
        retries: int = 5,
        max_throttled: int = 10,
        throttle_pause_s: float = THROTTLE_PAUSE_S,
        auth_hint: str = "set FINNHUB_TOKEN to a valid Finnhub API key",
    ) -> None:
        if calls_per_minute < 1 or calls_per_second < 1:
            raise ValueError("calls_per_minute and calls_per_second must be at least 1")
        self.rest_url = rest_url.rstrip("/")
        self.minute = paced_limiter(calls_per_minute, window_s)
        self.second = paced_limiter(calls_per_second, 1.0)
        self.retries = retries
        self.max_throttled = max_throttled
        self.throttle_pause_s = throttle_pause_s
        self.auth_hint = auth_hint
        self.last_date: str | None = None  # the latest answer's Date header
        self.paused_s = 0.0  # total pause ordered by 429s
        self.http = RestClient(
            self.rest_url,
            # the per-second limiter last: it decides the spacing on the wire
            (self.minute, self.second),
            timeout_s=timeout_s,
            retries=retries,
            auth=header_auth({codec.TOKEN_HEADER: token}),
            on_response=self._on_response,
            throttle=self._throttle,
            max_throttled=max_throttled,
            on_throttle=self._on_throttle,
            error=self._error_of,
        )

    @property
    def requests(self) -> int:
        return self.http.requests

    @property
    def throttled(self) -> int:
        """429 answers received."""
        return self.http.throttled

    @property
    def server_errors(self) -> int:
        return self.http.server_errors

    def __repr__(self) -> str:  # the token stays out
        return f"<FinnhubHistory {self.rest_url}>"

    async def get(self, path: str) -> bytes:
        """The body of ``GET rest_url + path`` (a 200), paced; see the class docstring for retries."""
        return await self.http.get(path)

    def _on_response(self, resp: Response) -> None:
        # Finnhub has no time endpoint: its answers' Date header is the venue's clock.
        self.last_date = resp.headers.get("Date", self.last_date)

    def _throttle(self, resp: Response, in_row: int) -> float | None:
        return self._pause(resp.headers.get("Retry-After"), in_row) if resp.status == 429 else None

    def _on_throttle(self, resp: Response, pause: float) -> None:
        self.paused_s += pause
        log.warning(
            "%s answered 429 (%s); pausing %.1f s",
            self.rest_url,
            (codec.decode_error(resp.body) or "rate limit")[:120],
            pause,
        )

    def _error_of(self, resp: Response) -> VenueError:
        if resp.status == 429:  # still throttled after max_throttled pauses
            return VenueError(429, resp.body, resp.url)
        return self._error(resp.status, resp.body, resp.url)

    def _pause(self, retry_after: str | None, in_row: int) -> float:
        if retry_after is not None:
            try:
                seconds = float(retry_after)
                return min(MAX_THROTTLE_PAUSE_S, max(0.0, seconds))
            except ValueError:
                pass
        return min(MAX_THROTTLE_PAUSE_S, self.throttle_pause_s * 2.0 ** (in_row - 1))

    def _error(self, status: int, body: bytes, url: str) -> VenueError:
        """A :class:`VenueError` that says what to do; the venue's text is kept when it helps."""
        text = codec.decode_error(body)
        if status == 401:
            return VenueError(401, f"the API key was refused; {self.auth_hint}".encode(), url)
        if status == 403:
            return VenueError(
                403,
                f"Finnhub denied access ({text or 'no reason given'}); candles of forex "
                "symbols need a premium plan".encode(),
                url,
            )
        return VenueError(status, (text or "").encode() or body, url)

    async def candles(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Finnhub's candles of ``symbol`` with open time in [start_ms, end_ms], oldest first, every page.

        Finnhub omits intervals without prices (nights, weekends for stocks and forex), so the list has
        holes exactly where the venue has. ``closed`` is ``open_time + timeframe <= now_ms`` (Finnhub has
        no completeness flag), ``now_ms`` defaulting to this machine's clock; the range is clipped to it.
        ``trades`` is 0 (unknown). 1s, 5s, 15s and 4h raise BadInput (no such Finnhub resolution).
        """
        res = codec.resolution(timeframe)
        kind = codec.symbol_kind(symbol)
        tf_ms = TIMEFRAMES[timeframe]
        now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        end_ms = min(end_ms, now)
        out: list[Candle] = []
        t = -(-start_ms // tf_ms) * tf_ms  # the first whole interval at or after start_ms
        while t <= end_ms:
            page_end = min(t + PAGE_INTERVALS * tf_ms, end_ms + 1)  # exclusive, in ms
            path = codec.candle_path(kind, symbol, res, t // 1000, (page_end - 1) // 1000)
            body = await self.get(path)
            try:
                page = codec.decode_candles(body)
            except codec.BadCandles as exc:
                raise VenueError(200, str(exc).encode(), self.rest_url + path) from None
            for c in sorted(page, key=lambda c: c.open_time):
                if c.open_time % tf_ms:
                    raise VenueError(
                        200,
                        f"candle at {c.open_time} is not on the UTC {timeframe} grid".encode(),
                        self.rest_url + path,
                    )
                # Whether Finnhub's ``to`` is inclusive is not documented [UNVERIFIED]: keep this page's own.
                if t <= c.open_time < page_end and (not out or c.open_time > out[-1].open_time):
                    c.closed = c.open_time + tf_ms <= now
                    out.append(c)
            t = page_end + (-page_end % tf_ms)
        return out

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """The time span whose candles of ``timeframe`` take one request."""
        codec.resolution(timeframe)  # BadInput for a timeframe Finnhub cannot serve
        return PAGE_INTERVALS * TIMEFRAMES[timeframe]

    @property
    def stats(self) -> Mapping[str, int | float]:
        return {
            "requests": self.requests,
            "throttled": self.throttled,
            "server_errors": self.server_errors,
            "limiter_waits": self.minute.waits + self.second.waits,
            "paused_s": round(self.paused_s, 3),
        }

    async def close(self) -> None:
        await self.http.close()
