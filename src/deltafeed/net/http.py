"""An HTTP client for venue REST APIs: rate-limited, retrying what is worth retrying, clear errors."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging

import aiohttp

from deltafeed.net.ratelimit import WeightLimiter

log = logging.getLogger("deltafeed.http")


class VenueError(Exception):
    """The venue answered with an error that retrying will not fix (bad symbol, bad interval)."""

    def __init__(self, status: int, body: bytes, url: str) -> None:
        self.status = status
        self.body = body
        self.url = url
        super().__init__(f"{url} answered {status}: {body[:200].decode(errors='replace')}")


class VenueUnreachable(Exception):
    """The venue could not be reached at all (connection refused, DNS, timeouts)."""


class RestClient:
    """GET requests against one base URL under a :class:`WeightLimiter`.

    429 and 418 make every caller wait ``Retry-After`` (the limiter's penalty) and then retry;
    5xx and connection errors are retried with backoff a few times; other 4xx raise
    :class:`VenueError` at once.
    """

    def __init__(
        self,
        base_url: str,
        limiter: WeightLimiter,
        used_weight_header: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 5,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.limiter = limiter
        self.used_weight_header = used_weight_header
        self.retries = retries
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.throttled = 0  # 429 and 418 answers received
        self.server_errors = 0

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def get(self, path: str, weight: int = 1) -> bytes:
        """The body of ``GET base_url + path``, after waiting for the rate limit."""
        url = self.base_url + path
        session = await self._client()
        backoff = 0.25
        for attempt in range(self.retries + 1):
            await self.limiter.acquire(weight)
            self.requests += 1
            try:
                async with session.get(url) as resp:
                    body = await resp.read()
                    status = resp.status
                    headers = resp.headers
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                if attempt == self.retries:
                    raise VenueUnreachable(f"cannot reach {self.base_url}: {exc or type(exc).__name__}") from None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self.used_weight_header and self.used_weight_header in headers:
                with contextlib.suppress(ValueError):
                    self.limiter.observe_used(int(headers[self.used_weight_header]))
            if status == 200:
                return body
            if status in (429, 418):
                self.throttled += 1
                retry_after = _retry_after(headers.get("Retry-After"))
                log.warning("%s answered %d; waiting %.1f s as Retry-After asks", self.base_url, status, retry_after)
                self.limiter.penalize(retry_after)
                continue
            if status >= 500 and attempt < self.retries:
                self.server_errors += 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            raise VenueError(status, body, url)
        raise VenueUnreachable(f"{self.base_url} kept refusing after {self.retries + 1} attempts")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value is not None else 1.0
    except ValueError:
        return 1.0


def http_date_ms(value: str | None) -> int | None:
    """Epoch ms of an HTTP ``Date`` header (second resolution), or None when absent or unreadable.

    Venues that stamp no time on their data tell the time this way; a header without a zone is UTC."""
    if not value:
        return None
    try:
        t = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 1000
