"""OANDA v20 REST history: server time, instruments and candles of deltafeed timeframes, paged and paced.

The token travels only in the ``Authorization`` header of the HTTP session: it is never part of a URL,
a log line or an exception (a 401 becomes a :class:`VenueError` that names ``OANDA_TOKEN`` instead).
"""

from __future__ import annotations

import logging
import types
from collections.abc import Mapping

import aiohttp

from deltafeed.model import PRICE_SIDES, TIMEFRAMES, Candle
from deltafeed.net.http import Response, RestClient, VenueError, header_auth, http_date_ms
from deltafeed.net.lines import PROCESS_BUDGET
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.venues.oanda import codec as codec

log = logging.getLogger("deltafeed.oanda")

_TOKEN_HINT = b"the access token was refused; set OANDA_TOKEN to a valid OANDA v20 token"


class _Connections:
    """OANDA's connection rule as a :class:`RestClient` transport: each *new* TCP connection first
    waits for the shared :class:`ConnectBudget` (OANDA rejects more than 2 new connections per
    second; kept-alive connections are reused and cost nothing)."""

    def __init__(self, budget: ConnectBudget, max_connections: int) -> None:
        self.budget = budget
        self.max_connections = max_connections
        self.new_connections = 0

    def __call__(self, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_start.append(self._on_new_connection)
        return aiohttp.ClientSession(
            timeout=timeout,
            trace_configs=[trace],
            connector=aiohttp.TCPConnector(limit_per_host=self.max_connections),
        )

    async def _on_new_connection(
        self,
        session: aiohttp.ClientSession,
        ctx: types.SimpleNamespace,
        params: aiohttp.TraceConnectionCreateStartParams,
    ) -> None:
        self.new_connections += 1
        await self.budget.acquire()


class OandaHistory:
    """Reads OANDA's v20 REST API (or a replica of it) through one paced :class:`RestClient`.

    ``rate_per_s`` paces requests (OANDA answers 429 above 120/s; its best-practice page says up to
    100/s on kept-alive connections); a 429 makes every caller wait ``Retry-After`` (1 s when absent)
    and retry. ``account`` is needed for :meth:`symbols` only; without it the fallback list is used.
    """

    def __init__(
        self,
        rest_url: str = codec.DEFAULT_REST_URL,
        token: str = "",
        account: str = "",
        rate_per_s: float = 100.0,
        *,
        time_instrument: str = "EUR_USD",
        budget: ConnectBudget | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.account = account
        self.time_instrument = time_instrument
        # headroom=1: ``rate_per_s`` is already the pace we want; a burst of a tenth of a second.
        self.limiter = WeightLimiter(max(1, round(rate_per_s)), window_s=1.0, headroom=1.0, burst_fraction=0.1)
        self.connections = _Connections(budget or PROCESS_BUDGET, max_connections=8)
        self.last_date: str | None = None  # the latest answer's Date header (OANDA has no time endpoint)
        # The token travels in the Authorization header the auth hook adds; never in a URL.
        self.http = RestClient(
            rest_url,
            self.limiter,
            timeout_s=timeout_s,
            auth=header_auth(codec.auth_headers(token)),
            on_response=self._on_response,
            transport=self.connections,
        )
        self.symbols_source = ""  # "account" or "fallback", after symbols()

    def _on_response(self, resp: Response) -> None:
        self.last_date = resp.headers.get("Date", self.last_date)

    def __repr__(self) -> str:
        return f"<OandaHistory {self.http.base_url} account={self.account or '-'}>"

    async def _get(self, path: str) -> bytes:
        """The body of ``GET path``; a 401 names the token's environment variable, never the token."""
        try:
            return await self.http.get(path)
        except VenueError as exc:
            if exc.status == 401:
                raise VenueError(401, _TOKEN_HINT, exc.url) from None
            raise

    async def server_time(self) -> int:
        """The venue's "now" in epoch ms, from one request for the newest S5 candle of ``time_instrument``.

        OANDA has no time endpoint, so this combines the answer's HTTP ``Date`` header (whole seconds)
        with the newest candle (see :func:`oanda.venue_now_ms`): while the market is open the forming
        candle bounds now to 5 s and ``Date`` refines it; at the weekend ``Date`` alone tells the time.
        """
        self.last_date = None
        body = await self._get(codec.candles_path(self.time_instrument, "S5", None, 1, "M"))
        try:
            candles = codec.decode_candles(body, "mid")
        except codec.BadCandles as exc:
            raise VenueError(200, str(exc).encode(), self.http.base_url) from None
        now = codec.venue_now_ms(http_date_ms(self.last_date), candles[-1] if candles else None)
        if now is None:
            raise VenueError(200, b"no Date header and no candle: cannot tell the venue's time", self.http.base_url)
        return now

    async def symbols(self) -> set[str]:
        """Instruments of ``account`` (``/v3/accounts/{account}/instruments``).

        Falls back to :data:`oanda.FALLBACK_INSTRUMENTS` (FX majors, crosses, gold, silver) when no
        account is configured or the server has no such endpoint (404/405, e.g. a minimal replica); a
        401 or 403 still raises, since then streaming would fail as well. ``symbols_source`` says which.
        """
        if self.account:
            try:
                names = codec.decode_instruments(await self._get(codec.instruments_path(self.account)))
            except VenueError as exc:
                if exc.status not in (404, 405):
                    raise
                log.info(
                    "%s has no instruments endpoint (%d); using the built-in instrument list",
                    self.http.base_url,
                    exc.status,
                )
            except codec.BadCandles as exc:
                raise VenueError(200, str(exc).encode(), self.http.base_url) from None
            else:
                self.symbols_source = "account"
                return names
        self.symbols_source = "fallback"
        return set(codec.FALLBACK_INSTRUMENTS)

    async def candles(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None, side: str = "mid"
    ) -> list[Candle]:
        """OANDA's candles of one price side with open time in [start_ms, end_ms], every page.

        ``closed`` is OANDA's ``complete``: the venue judges it, so ``now_ms`` only clips the range (no
        request reaches past the venue's now). Intervals without prices have no candle: the list has
        holes at weekends and in quiet seconds, exactly as OANDA answers. 1s raises BadInput.
        """
        return (await self._pages(symbol, timeframe, start_ms, end_ms, now_ms, (side,)))[side]

    async def candles_all_sides(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> dict[str, list[Candle]]:
        """Mid, bid and ask candles (``price=MBA``) in one request per page; see :meth:`candles`."""
        return await self._pages(symbol, timeframe, start_ms, end_ms, now_ms, PRICE_SIDES)

    async def _pages(
        self, symbol: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None, sides: tuple[str, ...]
    ) -> dict[str, list[Candle]]:
        """Pages of ``from`` + ``count``: each asks for exactly the intervals left (at most 5000).

        OANDA counts candles, not intervals, so a page over a weekend returns candles past ``end_ms``;
        they are dropped, and the next ``from`` is then past ``end_ms`` too. A page shorter than asked
        means the venue has no more; a page ending in the forming candle reached its now, and asking
        past it would be refused ("Time is in the future"). A page never starts before ``from`` and
        always moves ``from`` forward, so paging ends.
        """
        gran = codec.granularity(timeframe)
        tf_ms = TIMEFRAMES[timeframe]
        price = codec.price_letters(sides)
        out: dict[str, list[Candle]] = {s: [] for s in sides}
        if now_ms is not None:
            end_ms = min(end_ms, now_ms)
        t = -(-start_ms // tf_ms) * tf_ms  # the first whole interval at or after start_ms
        while t <= end_ms:
            count = min(codec.CANDLES_PAGE, (end_ms - t) // tf_ms + 1)
            path = codec.candles_path(symbol, gran, t, count, price)
            body = await self._get(path)
            try:
                page = codec.decode_candles_all(body, sides)
            except codec.BadCandles as exc:
                raise VenueError(200, str(exc).encode(), self.http.base_url + path) from None
            first = page[sides[0]]
            _check_alignment(first, tf_ms, t, self.http.base_url + path)
            for s in sides:
                out[s] += [c for c in page[s] if c.open_time <= end_ms]
            if len(first) < count or not first[-1].closed:
                break  # the venue has no more, or reached its now (a forming candle is the newest)
            t = first[-1].open_time + tf_ms
        return out

    @staticmethod
    def page_span_ms(timeframe: str) -> int:
        """A time span whose candles of ``timeframe`` take one request (5000 whole intervals)."""
        codec.granularity(timeframe)
        return codec.CANDLES_PAGE * TIMEFRAMES[timeframe]

    @property
    def stats(self) -> Mapping[str, int | float]:
        return {
            "requests": self.http.requests,
            "throttled": self.http.throttled,
            "server_errors": self.http.server_errors,
            "limiter_waits": self.limiter.waits,
            "new_connections": self.connections.new_connections,
        }

    async def close(self) -> None:
        await self.http.close()


def _check_alignment(page: list[Candle], tf_ms: int, from_ms: int, url: str) -> None:
    """Refuse a page whose candles are not on deltafeed's UTC grid, or start before ``from``.

    Misaligned candles (a server that ignored ``dailyAlignment=0&alignmentTimezone=UTC``) would be
    stored under the wrong buckets; failing loudly is better than a silently shifted history.
    """
    for c in page:
        if c.open_time % tf_ms:
            raise VenueError(
                200,
                f"candle at {c.open_time} is not on the UTC {tf_ms} ms grid; the server "
                "ignored dailyAlignment=0&alignmentTimezone=UTC".encode(),
                url,
            )
        if c.open_time < from_ms:
            raise VenueError(200, f"candle at {c.open_time} is before from={from_ms}".encode(), url)
