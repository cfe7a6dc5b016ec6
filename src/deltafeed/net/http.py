"""The one HTTP client for venue REST APIs: auth and pacing hooks, retries by the reconnect policy, clear errors.

In the style of ``httpx``: a venue gives :class:`RestClient` an ``auth`` callable that adds its
credentials to each :class:`Request` (headers or params), ``limiters`` that pace requests (its
weight or call limits, see :mod:`deltafeed.net.ratelimit`), an ``on_response`` hook that reads what
the answer says about the limits or the venue's clock, a ``throttle`` rule that recognises "slow
down" answers, and optionally a ``transport`` (the :class:`aiohttp.ClientSession` factory, for
connection rules). The retry loop itself lives here only:

- a throttle answer (429/418 unless the venue says otherwise) makes every caller wait the pause it
  asks for (``Retry-After``) through the limiters' penalty, then the request is repeated;
- connection errors and 5xx answers are retried after the :class:`~deltafeed.net.reconnect.Backoff`
  policy's delay, ``retries`` times;
- anything else is final: :meth:`RestClient.get` returns a 200's body or raises :class:`VenueError`;
  a venue that cannot be reached raises :class:`VenueUnreachable`.

Secrets stay out of logs: log lines and errors name the base URL and the path, never headers or
the query parameters ``auth`` added.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from deltafeed.clock import LIVE, Clock
from deltafeed.model import BadInput
from deltafeed.net.reconnect import Backoff, retry_after_s

log = logging.getLogger("deltafeed.http")


class VenueError(Exception):
    """The venue answered with an error that retrying will not fix (bad symbol, bad interval)."""

    def __init__(self, status: int, body: bytes, url: str) -> None:
        self.status = status
        self.body = body
        self.url = url
        super().__init__(f"{url} answered {status}: {body[:200].decode(errors='replace')}")


#: The fix for a certificate the venue's address presents that no trusted CA signed.
TRUST_HINT = (
    "if a private CA signs it (a TLS proxy, a replica run with --tls), point SSL_CERT_FILE at that CA's PEM file"
)


class VenueUnreachable(Exception):
    """The venue could not be reached at all (connection refused, DNS, timeouts), or kept refusing."""


@dataclass
class Request:
    """One request about to be sent; ``auth`` may add headers and params. ``weight`` is its cost
    under the venue's limit."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    weight: int = 1


@dataclass(frozen=True)
class Response:
    """A venue's answer (read whole)."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str


class Limiter(Protocol):
    """Paces requests (:class:`~deltafeed.net.ratelimit.WeightLimiter` is one)."""

    async def acquire(self, weight: int = 1) -> None: ...

    def penalize(self, retry_after_s: float) -> None: ...


Auth = Callable[[Request], None]
#: Given a non-200 answer and how many throttle answers came in a row (this one included): the
#: pause it asks for, or None when it is not a throttle answer.
Throttle = Callable[[Response, int], float | None]
Transport = Callable[[aiohttp.ClientTimeout], aiohttp.ClientSession]
ErrorFactory = Callable[[Response], Exception]


def throttle_429(resp: Response, in_row: int) -> float | None:
    """The usual rule: 429 and 418 are throttling; pause ``Retry-After`` seconds (1 s when absent)."""
    if resp.status in (429, 418):
        return retry_after_s(resp.headers.get("Retry-After"))
    return None


def header_auth(headers: Mapping[str, str]) -> Auth:
    """An ``auth`` that adds fixed headers (an API key, a Bearer token) to every request."""
    fixed = dict(headers)

    def add(req: Request) -> None:
        req.headers.update(fixed)

    return add


class RestClient:
    """Requests against one base URL, through the venue's hooks (see the module docstring).

    ``retries`` bounds the retries of connection errors and 5xx answers; ``max_throttled`` the
    throttle answers in a row (default ``retries``): past it the throttle answer is final. Counters:
    ``requests``, ``throttled`` (throttle answers), ``server_errors`` (5xx answers retried).
    """

    def __init__(
        self,
        base_url: str,
        limiter: Limiter | Sequence[Limiter] = (),
        used_weight_header: str | None = None,
        timeout_s: float = 10.0,
        retries: int = 5,
        *,
        auth: Auth | None = None,
        on_response: Callable[[Response], None] | None = None,
        throttle: Throttle = throttle_429,
        max_throttled: int | None = None,
        on_throttle: Callable[[Response, float], None] | None = None,
        transport: Transport | None = None,
        error: ErrorFactory | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        limiters = [limiter] if not isinstance(limiter, Sequence) else list(limiter)
        self.limiters: list[Limiter] = limiters
        self.used_weight_header = used_weight_header
        self.retries = retries
        self.max_throttled = retries if max_throttled is None else max_throttled
        self.auth = auth
        self.on_response = on_response
        self.throttle = throttle
        self.on_throttle = on_throttle
        self.error = error
        self.clock: Clock = clock or LIVE
        self._rng = rng
        self._transport = transport
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.throttled = 0  # throttle answers received
        self.server_errors = 0

    @property
    def limiter(self) -> Limiter:
        """The first limiter (the one most venues have alone)."""
        return self.limiters[0]

    def __repr__(self) -> str:  # hooks may hold secrets: show none of them
        return f"<RestClient {self.base_url}>"

    async def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            factory = self._transport
            self._session = factory(self._timeout) if factory else aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        weight: int = 1,
    ) -> Response:
        """``method base_url + path`` with the retries described above: the final answer, whatever
        its status. Raises :class:`VenueUnreachable` when the venue cannot be reached."""
        url = self.base_url + path
        session = await self._client()
        backoff = Backoff(0.125, 5.0, clock=self.clock, rng=self._rng)  # first retry within 0.25 s
        throttled_in_row = 0
        while True:
            for lim in self.limiters:  # in order: the last decides the spacing on the wire
                await lim.acquire(weight)
            req = Request(method, url, dict(headers or {}), {}, body, weight)
            if self.auth is not None:
                self.auth(req)
            self.requests += 1
            try:
                async with session.request(
                    req.method, req.url, headers=req.headers, params=req.params or None, data=req.body
                ) as r:
                    resp = Response(r.status, r.headers, await r.read(), url)
            except aiohttp.ClientConnectorCertificateError as exc:
                # Trying again cannot help: the certificate is as untrusted on the next attempt.
                raise BadInput(
                    f"the TLS certificate of {self.base_url} is not trusted ({exc.certificate_error}); {TRUST_HINT}"
                ) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                if backoff.failures >= self.retries:
                    # no ``from``: aiohttp's exception carries the request, headers included
                    raise VenueUnreachable(f"cannot reach {self.base_url}: {type(exc).__name__} {_safe(exc)}") from None
                await backoff.sleep(backoff.failed())
                continue
            self._observe(resp)
            if resp.status == 200:
                return resp
            pause = self.throttle(resp, throttled_in_row + 1)
            if pause is not None:
                if throttled_in_row >= self.max_throttled:
                    return resp
                throttled_in_row += 1
                self.throttled += 1
                if self.on_throttle is not None:
                    self.on_throttle(resp, pause)
                else:
                    log.warning("%s answered %d; waiting %.1f s as Retry-After asks", self.base_url, resp.status, pause)
                for lim in self.limiters:
                    lim.penalize(pause)
                continue
            throttled_in_row = 0
            if resp.status >= 500 and backoff.failures < self.retries:
                self.server_errors += 1
                await backoff.sleep(backoff.failed())
                continue
            return resp

    async def get(self, path: str, weight: int = 1, headers: Mapping[str, str] | None = None) -> bytes:
        """The body of a 200 to ``GET base_url + path``; else the ``error`` hook's exception
        (default :class:`VenueError`)."""
        resp = await self.send("GET", path, headers=headers, weight=weight)
        if resp.status == 200:
            return resp.body
        raise self.error(resp) if self.error is not None else VenueError(resp.status, resp.body, resp.url)

    def _observe(self, resp: Response) -> None:
        h = self.used_weight_header
        if h and h in resp.headers:
            try:
                used = int(resp.headers[h])
            except ValueError:
                used = -1
            if used >= 0:
                for lim in self.limiters:
                    observe: Callable[[int], None] | None = getattr(lim, "observe_used", None)
                    if observe is not None:
                        observe(used)
        if self.on_response is not None:
            self.on_response(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _safe(exc: BaseException) -> str:
    """An exception's text without anything after a ``?`` (a query may hold a key)."""
    return str(exc).partition("?")[0][:200]


__all__ = [
    "Auth",
    "Limiter",
    "Request",
    "Response",
    "RestClient",
    "Throttle",
    "Transport",
    "VenueError",
    "VenueUnreachable",
    "header_auth",
    "http_date_ms",
    "throttle_429",
]


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
