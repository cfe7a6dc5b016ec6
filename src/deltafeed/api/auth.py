"""Who may use the API: a bearer token checked in one middleware, and a refusal to bind wide open.

The rules, in order:

- ``/health``, ``/openapi.json`` and ``/docs`` are always open: a load balancer or an orchestrator
  probes health without credentials, and the API's description holds no data.
- A request that changes the collector (any method but GET, HEAD and OPTIONS: the ``POST
  /streaming/...`` endpoints) always needs the token, even on loopback; with no token configured it
  is refused with 403 telling how to configure one.
- A read needs the token only when ``require_for_reads`` is set, which the server does when it is
  bound beyond loopback (where :func:`check_bind` insists on a token).
- When a token is configured, a token that is presented is always checked, so a wrong one is a 401
  rather than silently ignored.

The token travels as ``Authorization: Bearer <token>``, or as ``?token=<token>`` for browsers, whose
WebSocket API cannot set headers. It is compared with :func:`hmac.compare_digest`, and never logged:
:class:`RedactingAccessLogger` writes the path without its query string.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler, Middleware

from deltafeed.model import BadInput

#: Paths that never need a token.
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs"})
#: Methods that only read.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Environment variable holding the token (read by the command line, named in error messages).
TOKEN_ENV = "DELTAFEED_API_TOKEN"


def _refuse(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="deltafeed"'} if status == 401 else None
    return web.json_response({"error": message}, status=status, headers=headers)


def presented_token(request: web.Request) -> str | None:
    """The token a request carries: the ``Authorization: Bearer`` header, else ``?token=``."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return ""  # present but not a bearer token: checked, and refused, like a wrong one
    return request.query.get("token")


def token_matches(presented: str, token: str) -> bool:
    """Constant-time comparison (bytes, so that non-ASCII input cannot raise)."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def token_middleware(token: str | None, require_for_reads: bool) -> Middleware:
    """An aiohttp middleware enforcing the rules in this module's docstring.

    ``token`` None (or empty) means none is configured: reads are open (the server refuses to bind
    beyond loopback in that case, see :func:`check_bind`) and every write is refused with 403.
    """
    token = token or None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        write = request.method not in READ_METHODS
        what = f"{request.method} {request.path}"
        if token is None:
            if write or require_for_reads:
                why = "changes the collector" if write else "is served beyond loopback"
                return _refuse(403, f"{what} {why} and needs an API token, but none is configured;"
                                    f" start deltafeed with --api-token TOKEN or set {TOKEN_ENV}")
            return await handler(request)  # reads on loopback without a token: open
        presented = presented_token(request)
        if presented is None:
            if write or require_for_reads:
                return _refuse(401, f"{what} needs the API token; send the header 'Authorization: Bearer TOKEN'"
                                    " (or ?token=TOKEN where headers cannot be set, e.g. a browser's WebSocket)")
            return await handler(request)
        if not token_matches(presented, token):
            return _refuse(401, f"{what}: the API token is wrong; send the one given to --api-token"
                                f" or {TOKEN_ENV} as 'Authorization: Bearer TOKEN'")
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
        raise BadInput(f"binding {host or '0.0.0.0'} needs a token: pass --api-token or set {TOKEN_ENV}"
                       " (or bind 127.0.0.1 to serve this machine only)")


class RedactingAccessLogger(AbstractAccessLogger):
    """Access log lines without query strings, where a ``?token=`` would otherwise be written."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        self.logger.info('%s "%s %s" %d %s %.1fms', request.remote, request.method, request.path,
                         response.status, response.body_length, time * 1000)
