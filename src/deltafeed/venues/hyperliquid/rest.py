"""Hyperliquid ``POST /info`` history: coins, the venue's time, candles of its intervals; paged, weight-limited."""

from __future__ import annotations

from deltafeed.model import TIMEFRAMES, Candle
from deltafeed.net.http import RestClient, VenueError
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.hyperliquid import codec

_JSON = {"Content-Type": "application/json"}


class HyperliquidHistory:
    """Reads Hyperliquid's info endpoint (or a replica of it) through one :class:`RestClient`, under
    the venue's weight limit (1200 per minute, a ``candleSnapshot`` 20 plus one per 60 candles)."""

    def __init__(
        self,
        base_url: str = codec.DEFAULT_REST_URL,
        weight_limit: int = codec.WEIGHT_LIMIT_1M,
        headroom: float = 0.8,
        window_s: float = 60.0,
    ) -> None:
        # The venue counts weight per minute only (no shorter window is documented): a quarter of the
        # budget may go at once, so a start-up's few requests are not spread over seconds.
        self.limiter = WeightLimiter(weight_limit, window_s, headroom, burst_fraction=0.25)
        self.http = RestClient(base_url, self.limiter)
        self.weight = 0  # weight spent, by the venue's own accounting

    async def info(self, body: bytes, weight: int) -> tuple[bytes, str]:
        resp = await self.http.send("POST", codec.INFO_PATH, headers=_JSON, body=body, weight=weight)
        self.weight += weight
        if resp.status != 200:
            raise VenueError(resp.status, resp.body, resp.url)
        return resp.body, resp.url

    async def coins(self) -> set[str]:
        body, url = await self.info(codec.info_request("meta"), codec.info_weight("meta"))
        try:
            return codec.coins_from_meta(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def last_trade_ms(self, coin: str) -> int | None:
        """The time of ``coin``'s newest trade: Hyperliquid has no server-time request."""
        body, url = await self.info(codec.info_request("recentTrades", coin=coin), codec.INFO_WEIGHT)
        try:
            return codec.last_trade_ms(body)
        except codec.BadAnswer as exc:
            raise VenueError(200, str(exc).encode(), url) from None

    async def candles(self, coin: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int) -> list[Candle]:
        """Candles of ``timeframe`` (one of Hyperliquid's intervals) with open time in [start_ms, end_ms],
        page by page from the last open time; "closed" by the venue's clock ``now_ms``. Before the
        newest 5000 candles the venue has none: the answer then starts later than asked."""
        iv = codec.INTERVAL_MS[timeframe]
        out: list[Candle] = []
        t = start_ms - start_ms % iv
        oldest = now_ms - now_ms % iv - (codec.HISTORY_CANDLES - 1) * iv
        while t <= end_ms:
            expected = min(codec.CANDLES_PAGE, (end_ms - max(t, oldest)) // iv + 1)
            body, url = await self.info(
                codec.candles_request(coin, timeframe, t, end_ms), codec.candles_weight(max(0, expected))
            )
            try:
                page = codec.decode_candles(body, iv, now_ms)
            except codec.BadAnswer as exc:  # a failed request: the caller retries it later
                raise VenueError(200, str(exc).encode(), url) from None
            page = [c for c in page if t <= c.open_time <= end_ms]
            out += page
            if not page or page[-1].open_time + iv > end_ms:
                break
            t = page[-1].open_time + iv
        return out

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """The span the engine asks for at once: twice the history the venue keeps, so a bootstrap
        from further back costs one request per 5000 candles that exist, not one per span started
        (:meth:`candles` pages inside it)."""
        return 2 * codec.HISTORY_CANDLES * TIMEFRAMES[timeframe]

    async def close(self) -> None:
        await self.http.close()
