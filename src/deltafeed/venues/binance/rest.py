"""Binance REST history: server time, symbols and klines of any deltafeed timeframe, paged and rate-limited."""

from __future__ import annotations

from deltafeed.candles.rollup import rollup
from deltafeed.model import Candle, timeframe_ms
from deltafeed.net.http import RestClient, VenueError
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.binance import codec as codec


class BinanceHistory:
    """Reads Binance's market-data REST API (or a replica of it) through one :class:`RestClient`."""

    def __init__(
        self,
        base_url: str = codec.DEFAULT_REST_URL,
        weight_limit: int = codec.WEIGHT_LIMIT_1M,
        headroom: float = 0.8,
        window_s: float = 60.0,
    ) -> None:
        self.limiter = WeightLimiter(weight_limit, window_s, headroom)
        self.http = RestClient(base_url, self.limiter, used_weight_header="X-MBX-USED-WEIGHT-1M")

    async def _get(self, path: str, weight: int) -> tuple[bytes, str]:
        return await self.http.get(path, weight=weight), self.http.base_url + path

    async def server_time(self) -> int:
        body, url = await self._get("/api/v3/time", 1)
        try:
            return codec.decode_server_time(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def symbols(self) -> set[str]:
        body, url = await self._get("/api/v3/exchangeInfo", 20)
        try:
            return codec.symbols_from_exchange_info(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def klines(
        self, symbol: str, interval: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Binance's klines of ``interval`` with open time in [start_ms, end_ms], every page.

        "Closed" is judged by the venue's clock (``now_ms``, else read from the venue first), never
        ours: a kline that closes while we page is kept as open (conservative) and settled later.
        """
        iv = codec.INTERVAL_MS[interval]
        now = now_ms if now_ms is not None else await self.server_time()
        out: list[Candle] = []
        t = start_ms
        while t <= end_ms:
            path = codec.klines_query(symbol, interval, t, end_ms, codec.KLINES_PAGE)
            body, url = await self._get(path, codec.KLINES_WEIGHT)
            try:
                page = codec.decode_klines(body, iv, now)
            except codec.BadAnswer as exc:  # a failed request: the caller retries it later
                raise VenueError(200, str(exc).encode(), url) from None
            out += page
            if len(page) < codec.KLINES_PAGE:
                break
            t = page[-1].open_time + iv
        return out

    async def candles(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """Candles of any deltafeed timeframe; 5s and 15s are rolled up from 1s klines."""
        if timeframe in codec.NATIVE_INTERVALS:
            return await self.klines(symbol, timeframe, start_ms, end_ms, now_ms)
        tf_ms = timeframe_ms(timeframe)
        start = start_ms - start_ms % tf_ms
        parts = await self.klines(symbol, "1s", start, end_ms - end_ms % tf_ms + tf_ms - 1000, now_ms)
        return rollup(parts, 1000, tf_ms)

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """A time span whose candles of ``timeframe`` take one request (whole candles only)."""
        tf_ms = timeframe_ms(timeframe)
        page_ms = codec.KLINES_PAGE * (tf_ms if timeframe in codec.NATIVE_INTERVALS else 1000)
        return page_ms - page_ms % tf_ms

    async def close(self) -> None:
        await self.http.close()
