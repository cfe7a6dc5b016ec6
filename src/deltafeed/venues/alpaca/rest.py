"""Alpaca history over REST: bars, and quotes (for BID and ASK candles), of stocks and crypto, one
symbol or many per request, paged by ``page_token``, paced under the plan's requests per minute (200
on the free plan), which bars and quotes share."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from deltafeed.candles.quotes import candles_from_quotes
from deltafeed.candles.rollup import rollup
from deltafeed.model import BadInput, Candle, Quote, timeframe
from deltafeed.net.http import Response, RestClient, VenueError, header_auth, http_date_ms
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.alpaca import codec

KEY_HEADER = "APCA-API-KEY-ID"
SECRET_HEADER = "APCA-API-SECRET-KEY"
#: Longest pause a 429 may ask for: the venue's window is a minute.
MAX_PAUSE_S = 60.0


def throttle(resp: Response, in_row: int) -> float | None:
    """Alpaca's 429 says when the minute's budget comes back in ``X-RateLimit-Reset`` (epoch seconds)."""
    if resp.status != 429:
        return None
    reset = resp.headers.get("X-RateLimit-Reset", "")
    try:
        wait = float(reset) - time.time()
    except ValueError:
        wait = float(resp.headers.get("Retry-After", "1") or 1)
    return min(MAX_PAUSE_S, max(1.0, wait))


timeframe_of = timeframe  # the parameters below are called ``timeframe``
_Row = TypeVar("_Row", Candle, Quote)


class AlpacaHistory:
    """Reads bars (from the venue or its replica) through one :class:`RestClient` with the account's
    key headers, spending at most ``headroom`` of ``requests_per_min`` so normal use draws no 429."""

    def __init__(
        self,
        base_url: str,
        key: str,
        secret: str,
        *,
        requests_per_min: int = codec.REQUESTS_PER_MIN,
        headroom: float = 0.9,
        feed: str | None = None,
    ) -> None:
        self.limiter = WeightLimiter(requests_per_min, window_s=60.0, headroom=headroom, burst_fraction=0.05)
        self.http = RestClient(
            base_url,
            self.limiter,
            auth=header_auth({KEY_HEADER: key, SECRET_HEADER: secret}),
            throttle=throttle,
            on_response=self._seen,
        )
        self.feed = feed
        self.last_date_ms: int | None = None  # the venue's clock, from its last answer's Date header

    def __repr__(self) -> str:  # the client holds the key
        return f"<AlpacaHistory {self.http.base_url}>"

    def _seen(self, resp: Response) -> None:
        ms = http_date_ms(resp.headers.get("Date"))
        if ms is not None:
            self.last_date_ms = ms

    async def bars(
        self, symbols: Iterable[str], timeframe: str, start_ms: int, end_ms: int | None, now_ms: int
    ) -> dict[str, list[Candle]]:
        """Bars of ``symbols`` (all stocks or all crypto) with open time in [start_ms, end_ms], every page,
        one request per page for all of them; ``closed`` marks the settled ones (by ``now_ms``)."""
        syms = list(symbols)
        if not all(codec.serves(s, timeframe) for s in syms):
            raise BadInput(f"Alpaca has no {timeframe} bars of {' '.join(syms)[:60]}; use {', '.join(codec.TIMEFRAME)}")
        grid = timeframe_of(timeframe)
        return await self._pages(
            syms,
            lambda token: codec.bars_path(syms, timeframe, start_ms, end_ms, page_token=token, feed=self.feed),
            lambda body: codec.decode_bars(body, grid, now_ms),
        )

    async def _pages(
        self,
        syms: list[str],
        path_of: Callable[[str | None], str],
        decode: Callable[[bytes], tuple[dict[str, list[_Row]], str | None]],
    ) -> dict[str, list[_Row]]:
        """Every page of a multi-symbol request (``path_of`` a page token), one request per page."""
        out: dict[str, list[_Row]] = {s: [] for s in syms}
        token: str | None = None
        while True:
            path = path_of(token)
            body = await self.http.get(path)
            try:
                page, token = decode(body)
            except codec.BadAnswer as exc:  # a failed request: the caller retries it later
                raise VenueError(200, str(exc).encode(), self.http.base_url + path) from None
            for sym, rows in page.items():
                if sym in out:
                    out[sym] += rows
            if not token:
                return out

    async def quotes(self, symbols: Iterable[str], start_ms: int, end_ms: int) -> dict[str, list[Quote]]:
        """Quotes of ``symbols`` (all stocks or all crypto) with time in [start_ms, end_ms], every page."""
        syms = list(symbols)
        return await self._pages(
            syms,
            lambda token: codec.quotes_path(syms, start_ms, end_ms, page_token=token, feed=self.feed),
            codec.decode_quotes,
        )

    async def candles(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int, price: str = "trade"
    ) -> list[Candle]:
        """``symbol``'s candles of ``timeframe`` opening in [start_ms, end_ms]: of its trades (the
        bars; a day that is not the symbol's own, a UTC day of a stock, is rolled up from its hours),
        or for ``price`` bid or ask built from its historical quotes."""
        grid = timeframe_of(timeframe)
        start = grid.ceil(start_ms)
        if end_ms < start:
            return []
        if price != "trade":
            # Quotes have no correction documented; a candle is taken as settled as a bar is.
            got = await self.quotes([symbol], start, grid.next(grid.start(end_ms)) - 1)
            return candles_from_quotes(got[symbol], price, grid, now_ms - codec.SETTLE_MS)
        if codec.serves(symbol, timeframe):
            return (await self.bars([symbol], timeframe, start, end_ms, now_ms))[symbol]
        parts = await self.bars([symbol], "1h", start, grid.end(end_ms) - 1, now_ms)
        rolled = rollup(parts[symbol], "1h", grid, until_ms=now_ms - codec.SETTLE_MS, placeholders=False)
        return [c for c in rolled if c.open_time <= end_ms]

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """The span whose bars of ``timeframe`` take one request."""
        return codec.PAGE_LIMIT * timeframe_of(timeframe).ms

    async def close(self) -> None:
        await self.http.close()
