"""Who may use the API: a bearer token checked in one middleware, and a refusal to bind wide open.

The rules:

- With a token configured, every request needs it: reads, ``POST``, WebSocket handshakes,
  ``/health``, ``/metrics`` and ``/openapi.json`` alike, on loopback as anywhere else, and unknown
  paths too (a 401 tells nothing about which paths exist). A probe sends it like any client
  (Kubernetes: ``httpHeaders``; Docker: ``curl -H``). The one exception is what holds no data: the
  pages' shells and their static assets (:func:`is_public`), read without it, so that a browser
  opening one without the token is told how to supply it rather than shown a JSON 401.
- Without a token only loopback may be served (:func:`check_bind`); reads are open there, and a
  request that changes the collector (any method but GET, HEAD and OPTIONS: the ``POST
  /streaming/...`` endpoints) is refused with 403 telling how to configure one.
- A blank token (empty or whitespace) is refused where it is configured (:func:`check_token`),
  rather than silently meaning "no token".

The token travels as ``Authorization: Bearer <token>``. A GET (a browser's WebSocket, which cannot
set headers) may carry it as ``?token=<token>`` instead; any other method never may, even a correct
one, since URLs end up in logs and histories: such a request is a 401. The token is compared with
:func:`hmac.compare_digest`, and never logged: :class:`RedactingAccessLogger` writes the path
without its query string, and the guard's log lines never show a request's bytes.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware

from deltafeed.model import BadInput

#: Methods that only read.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods that may carry the token as ``?token=`` (a browser's WebSocket handshake is a GET).
QUERY_TOKEN_METHODS = frozenset({"GET", "HEAD"})
#: Environment variable holding the token (read by the command line, named in error messages).
TOKEN_ENV = "DELTAFEED_API_TOKEN"
#: Paths read without the token: pages and assets holding no data (they fetch the data with the token).
PUBLIC_PATHS = frozenset({"/", "/chart", "/docs", "/docs/websocket"})
PUBLIC_PREFIX = "/static/"
_HOW = "send the header 'Authorization: Bearer TOKEN' (or ?token=TOKEN on a GET, e.g. a browser's WebSocket)"


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="deltafeed"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def check_token(token: str | None, source: str = "the API token") -> str | None:
    """``token`` if usable (None stays None); :class:`BadInput` naming ``source`` when it is blank
    or holds characters an ``Authorization`` header cannot carry (spaces, controls, non-ASCII)."""
    if token is None:
        return None
    if not token.strip():
        raise BadInput(
            f"{source} is blank; give it a token (e.g. the output of `openssl rand -hex 32`), or"
            " remove it to serve loopback only, without one"
        )
    if not all("!" <= ch <= "~" for ch in token):
        raise BadInput(
            f"{source} holds spaces, control or non-ASCII characters, which a client cannot send"
            " in an Authorization header; use letters, digits and punctuation only"
        )
    return token


def presented_token(request: web.Request) -> str | None:
    """The token a request carries: the ``Authorization: Bearer`` header, else ``?token=``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: checked, and refused, like a wrong one
    return request.query.get("token")


def is_public(request: web.Request) -> bool:
    """A read of a page or an asset (:data:`PUBLIC_PATHS`, :data:`PUBLIC_PREFIX`): no token needed."""
    path = request.path
    return request.method in READ_METHODS and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX))


def token_matches(presented: str, token: str) -> bool:
    """Constant-time comparison (bytes, so that non-ASCII input cannot raise)."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def token_middleware(token: str | None) -> Middleware:
    """An aiohttp middleware enforcing the rules in this module's docstring.

    ``token`` None means none is configured: reads are open (the server refuses to bind beyond
    loopback in that case, see :func:`check_bind`) and every write is refused with 403.
    """
    token = check_token(token)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        write = request.method not in READ_METHODS
        what = f"{request.method} {request.path}"
        if token is None:
            if write:
                return _refuse(
                    403,
                    f"{what} changes the collector and needs an API token, but none is"
                    f" configured; start deltafeed with --api-token TOKEN or set {TOKEN_ENV}",
                )
            return await handler(request)  # reads on loopback without a token: open
        if is_public(request):
            return await handler(request)
        if "token" in request.query and request.method not in QUERY_TOKEN_METHODS:
            return _refuse(
                401,
                f"{what}: a {request.method} never takes the token from the query string"
                " (URLs end up in logs and histories); drop ?token= and send the header"
                " 'Authorization: Bearer TOKEN'",
            )
        presented = presented_token(request)
        if presented is None:
            return _refuse(401, f"{what} needs the API token; {_HOW}")
        if not token_matches(presented, token):
            return _refuse(
                401,
                f"{what}: the API token is wrong; send the one given to --api-token"
                f" or {TOKEN_ENV} as 'Authorization: Bearer TOKEN'",
            )
        return await handler(request)

    return middleware


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat it as wide


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token (:class:`BadInput` naming the fix)."""
    if not token and not is_loopback(host):
        raise BadInput(
            f"binding {host or '0.0.0.0'} needs a token: pass --api-token or set {TOKEN_ENV}"
            " (or bind 127.0.0.1 to serve this machine only)"
        )


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines without query strings, where a ``?token=`` would otherwise be written."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info(
            '%s "%s %s" %d %s %.1fms',
            request.remote,
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
        )
