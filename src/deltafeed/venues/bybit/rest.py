"""Bybit v5 REST history: server time, instruments and klines of spot and linear markets, paged inside
the venue's 600-requests-per-5-s IP limit."""

from __future__ import annotations

from deltafeed.model import TIMEFRAMES, Candle
from deltafeed.net.http import Response, RestClient, VenueError
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.net.reconnect import retry_after_s
from deltafeed.venues.bybit import codec

#: instruments-info pages read at most (linear pages by 1000; spot answers in one page).
MAX_INSTRUMENT_PAGES = 20


class BybitHistory:
    """Reads Bybit's public REST API (or its replica) through one :class:`RestClient`.

    Every request costs 1 of the IP's 600 per 5 s; the limiter keeps to ``headroom`` of that. A 403
    ("access too frequent") is the venue's throttle answer: everyone waits ``Retry-After`` when the
    answer has one, else ``ban_wait_s`` (Bybit asks for at least 10 minutes).
    """

    def __init__(
        self,
        base_url: str = codec.DEFAULT_REST_URL,
        requests_per_window: int = codec.REQUESTS_PER_WINDOW,
        window_s: float = codec.WINDOW_S,
        headroom: float = 0.8,
        ban_wait_s: float = 600.0,
    ) -> None:
        self.ban_wait_s = ban_wait_s
        self.limiter = WeightLimiter(requests_per_window, window_s, headroom)
        self.http = RestClient(base_url, self.limiter, throttle=self._throttle, max_throttled=2)

    def _throttle(self, resp: Response, in_row: int) -> float | None:
        if resp.status in (403, 429):
            default = self.ban_wait_s if resp.status == 403 else 1.0
            return retry_after_s(resp.headers.get("Retry-After"), default)
        return None

    async def _get(self, path: str) -> tuple[bytes, str]:
        return await self.http.get(path), self.http.base_url + path

    async def server_time(self) -> int:
        body, url = await self._get("/v5/market/time")
        try:
            return codec.decode_server_time(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def symbols(self, category: str) -> set[str]:
        """Every symbol ``Trading`` in ``category`` (paged by cursor where Bybit pages)."""
        out: set[str] = set()
        cursor = ""
        for _ in range(MAX_INSTRUMENT_PAGES):
            body, url = await self._get(codec.instruments_query(category, cursor))
            try:
                names, cursor = codec.decode_instruments(body)
            except codec.BadAnswer as exc:
                raise VenueError(200, str(exc).encode(), url) from None
            out |= names
            if not cursor:
                break
        return out

    async def klines(
        self, category: str, name: str, interval: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Bybit's klines of ``interval`` with open time in [start_ms, end_ms], oldest first.

        Each request spans at most a page (1000 candles) and names both ``start`` and ``end``, so the
        answer is the same whether Bybit counts the page from ``start`` or back from ``end``. "Closed"
        is judged by the venue's clock (``now_ms``, else read first).
        """
        iv = codec.INTERVAL_MS[interval]
        now = now_ms if now_ms is not None else await self.server_time()
        out: list[Candle] = []
        t = start_ms - start_ms % iv
        while t <= end_ms:
            last = min(end_ms, t + (codec.KLINES_PAGE - 1) * iv)
            body, url = await self._get(codec.kline_query(category, name, interval, t, last))
            try:
                page = codec.decode_klines(body, iv, now)
            except codec.BadAnswer as exc:  # a failed request: the caller retries it later
                raise VenueError(200, str(exc).encode(), url) from None
            out += [c for c in page if t <= c.open_time <= last and (not out or c.open_time > out[-1].open_time)]
            t = last - last % iv + iv
        return out

    async def candles(
        self, category: str, name: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Candles of a deltafeed timeframe: Bybit's own interval (every timeframe from 1m up is one)."""
        interval = codec.INTERVAL_OF.get(timeframe)
        if interval is None:  # sub-minute: Venue.timeframes keeps them out of a run
            raise ValueError(f"Bybit has no {timeframe} klines")
        return await self.klines(category, name, interval, start_ms, end_ms, now_ms)

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """A time span whose candles of ``timeframe`` take one request (whole candles only)."""
        return codec.KLINES_PAGE * TIMEFRAMES[timeframe]

    async def close(self) -> None:
        await self.http.close()
