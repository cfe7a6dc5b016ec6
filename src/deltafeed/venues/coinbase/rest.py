"""Coinbase Advanced Trade public REST history: server time, products and candles, paged and paced."""

from __future__ import annotations

from deltafeed.model import TIMEFRAMES, BadInput, Candle
from deltafeed.net.http import RestClient, VenueError
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.coinbase import codec

#: Public answers are cached for a second unless asked not to be (PROTOCOLS-wave2.md 1.4).
NO_CACHE = {"cache-control": "no-cache"}


class CoinbaseHistory:
    """Reads the public market endpoints (or a replica of them) through one :class:`RestClient`,
    paced to ``requests_per_s`` (80 % of it, in a small burst) so normal use draws no 429."""

    def __init__(
        self, base_url: str = codec.DEFAULT_REST_URL, requests_per_s: int = codec.REQUESTS_PER_S, headroom: float = 0.8
    ) -> None:
        self.limiter = WeightLimiter(requests_per_s, window_s=1.0, headroom=headroom, burst_fraction=0.25)
        self.http = RestClient(base_url, self.limiter)

    async def _get(self, path: str) -> tuple[bytes, str]:
        return await self.http.get(path, headers=NO_CACHE), self.http.base_url + path

    async def server_time(self) -> int:
        body, url = await self._get(codec.TIME_PATH)
        try:
            return codec.decode_time(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def products(self) -> set[str]:
        body, url = await self._get(codec.PRODUCTS_PATH)
        try:
            return codec.products_from_body(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def candles(
        self, product: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Candles with open time in [start_ms, end_ms], oldest first, every page of at most
        :data:`codec.CANDLES_PAGE`; intervals without trades are absent (the venue omits them).
        "Closed" is judged by the venue's clock (``now_ms``, else read from the venue first)."""
        gran = codec.GRANULARITY.get(timeframe)
        if gran is None:
            raise BadInput(f"Coinbase has no {timeframe} candles; use {', '.join(codec.GRANULARITY)}")
        iv = TIMEFRAMES[timeframe]
        now = now_ms if now_ms is not None else await self.server_time()
        out: list[Candle] = []
        t = -(-start_ms // iv) * iv
        while t <= end_ms:
            page_end = min(t + codec.CANDLES_PAGE * iv, end_ms - end_ms % iv + iv)  # exclusive
            path = codec.candles_path(product, gran, t // 1000, page_end // 1000)
            body, url = await self._get(path)
            try:
                page = codec.decode_candles(body, iv // 1000, now)
            except codec.BadAnswer as exc:  # a failed request: the caller retries it later
                raise VenueError(200, str(exc).encode(), url) from None
            out += [c for c in page if t <= c.open_time < page_end]
            t = page_end
        return out

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """The span whose candles of ``timeframe`` take one request."""
        return codec.CANDLES_PAGE * TIMEFRAMES[timeframe]

    async def close(self) -> None:
        await self.http.close()
