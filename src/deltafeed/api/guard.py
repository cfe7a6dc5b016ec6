"""Connection limits below the HTTP layer: a header-read deadline, a cap on connections, JSON for
requests aiohttp cannot parse.

Why this exists: aiohttp has no deadline for a request's headers, takes every connection the kernel
hands it, and answers requests it cannot parse (a path or a header too long, garbage) with plain text
of its own. A client that opens connections and sends its headers a byte at a time (a *slowloris*)
would then hold one file descriptor per connection, without bound, until the process has none left
for its store, its database and Redis connections and the venues' streams. So every connection
of the API goes through a :class:`ConnectionGuard`, which knows what each one is doing:

- *head*: waiting for a request's headers (from the connection's opening, or from the first byte
  of a request on a kept-alive connection). Headers not complete within ``header_timeout_s`` end the
  connection: with a 408 ``{"error": ...}`` when part of a request came, silently when nothing did.
- *busy*: a request is being handled, a WebSocket included. No deadline here; the handlers have their
  own (a POST body must arrive within ``header_timeout_s`` too; WebSockets answer pings).
- *idle*: kept alive between requests; closed by aiohttp after ``idle_timeout_s``.

At most ``max_connections`` are admitted at once. Beyond that, a new connection takes the place of
one waiting for its headers or idle, taken from the peer address holding the most of those (waiting
for headers first, oldest first), which is closed at once; only when every other connection is busy
is the new one refused, with a 503 ``{"error": ...}``. An attacker's half-open connections therefore
never lock out a client that sends a whole request from another address, and never take more
descriptors than the cap (plus a :data:`BACKLOG` of sockets just accepted and not judged yet).
Admissions, evictions, refusals, header timeouts and unparseable requests are counted for
``/metrics``.

A request aiohttp cannot parse is answered ``{"error": ...}`` too (:meth:`GuardedConnection.
handle_error`): 400 for a path and query over :data:`MAX_URL_BYTES` or a malformed request, 431 for
a header over :data:`MAX_HEADER_BYTES` or more than :data:`MAX_HEADERS` headers. It is logged on one
line at debug level, never with its bytes (a URL may hold a ``?token=``), nor with a stack.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    ContentEncodingError,
    HttpProcessingError,
    LineTooLong,
)
from aiohttp.log import access_logger
from aiohttp.typedefs import Handler, Middleware
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest

from deltafeed.model import BadInput

log = logging.getLogger("deltafeed.api.guard")

#: Seconds a client has to send a request's headers (and a POST its body). Programs and proxies send
#: a request in one go, so a few seconds is generous; a slowloris is cut off after this long.
HEADER_TIMEOUT_S = 5.0
#: Seconds a kept-alive connection may stay idle. Longer than the idle timeouts of the usual
#: clients and proxies in front (aiohttp 15 s, nginx upstream and cloud load balancers 60 s), so that
#: they, not this server, close idle connections, and never send a request into one being closed.
IDLE_TIMEOUT_S = 75.0
#: Most connections served at once, by default; lowered when the process's file descriptor limit
#: (``ulimit -n``) is small, see :func:`default_max_connections`.
MAX_CONNECTIONS = 1000
#: Connections the kernel queues for the server before it accepts them; also the most a loop
#: accepts in one go, before the guard can close those beyond the cap.
BACKLOG = 128
#: Longest path and query accepted (RFC 9112 asks servers to take request lines of 8000 bytes).
MAX_URL_BYTES = 8000
#: Longest request header (name and value) accepted, and most headers in one request.
MAX_HEADER_BYTES = 8190
MAX_HEADERS = 100

_JSON = "application/json"


def default_max_connections() -> int:
    """:data:`MAX_CONNECTIONS`, or less when the soft ``RLIMIT_NOFILE`` is small: (limit −
    :data:`BACKLOG`) / 2, so that with a burst of just-accepted sockets on top of the connections
    held, the store, the databases and the venues still keep as many descriptors as the API holds
    (``ulimit -n 1024``: 448 connections; 256: 64)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # pragma: no cover - no resource module (Windows)
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (soft - BACKLOG) // 2))


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """The guard's settings (the config file's ``api_header_timeout``, ``api_idle_timeout`` and
    ``api_max_connections``). ``max_connections`` None means :func:`default_max_connections`."""

    header_timeout_s: float = HEADER_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int | None = None

    def __post_init__(self) -> None:
        if not self.header_timeout_s > 0:
            raise BadInput(
                f"api_header_timeout must be longer than 0 (got {self.header_timeout_s} s),"
                ' e.g. api_header_timeout = "5s"'
            )
        if not self.idle_timeout_s > 0:
            raise BadInput(
                f'api_idle_timeout must be longer than 0 (got {self.idle_timeout_s} s), e.g. api_idle_timeout = "75s"'
            )
        if self.max_connections is not None and self.max_connections < 1:
            raise BadInput(
                f"api_max_connections must be at least 1 (got {self.max_connections}); leave it out for the default"
            )

    def connection_cap(self) -> int:
        return self.max_connections if self.max_connections is not None else default_max_connections()


class _State(enum.Enum):
    PENDING = "pending"  # accepted; the loop has not made the connection yet (no peer address)
    HEAD = "head"  # waiting for a request's headers
    BUSY = "busy"  # a request (or a WebSocket) is being handled
    IDLE = "idle"  # kept alive between requests
    GONE = "gone"  # closed, evicted or timed out: no longer counted


def _canned(status: int, reason: str, message: str, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response with a JSON error body, for writing straight to a transport."""
    body = msgspec.json.encode({"error": message})
    extra = f"Retry-After: {retry_after}\r\n" if retry_after is not None else ""
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {_JSON}\r\nContent-Length: {len(body)}\r\n"
        f"{extra}Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def peer_key(peername: object) -> str:
    """Whose connection it is, for fair eviction: the IPv4 address, or the /64 of an IPv6 one (one
    host usually has a whole /64 to pick addresses from)."""
    host = peername[0] if isinstance(peername, tuple) and peername else str(peername)
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class ConnectionGuard:
    """Tracks every connection of one API server; see the module docstring for the rules.

    Eviction is fair between peers: beyond the cap, a connection waiting for headers or idle is
    closed from the peer address holding the most such connections (waiting for headers first,
    oldest first); when no peer holds more than one, the oldest of all goes. An attacker at one
    address thus only ever evicts its own connections, never those of the clients it competes with.

    Counters (read by ``/metrics``): ``accepted``, ``refused`` (beyond the cap with every connection
    busy), ``evicted`` (closed to make room for a new one), ``header_timeouts`` and ``bad_requests``
    (requests that could not be parsed, answered 400 or 431).
    """

    def __init__(self, limits: ApiLimits | None = None) -> None:
        self.limits = limits or ApiLimits()
        self.max_connections = self.limits.connection_cap()
        self._pending: dict[GuardedConnection, None] = {}
        # Insertion order is the order of eviction: the longest waiting for headers, the longest idle.
        self._head: dict[GuardedConnection, None] = {}
        self._idle: dict[GuardedConnection, None] = {}
        self._busy: set[GuardedConnection] = set()
        # The evictable connections (head or idle) of each peer, and the peers by how many they hold.
        self._of_peer: dict[str, dict[GuardedConnection, None]] = {}
        self._peers_holding: dict[int, dict[str, None]] = {}
        self._most = 0  # the most evictable connections one peer holds
        self._loop: asyncio.AbstractEventLoop | None = None
        self.accepted = 0
        self.refused = 0
        self.evicted = 0
        self.header_timeouts = 0
        self.bad_requests = 0
        self._timeout_body = _canned(
            408,
            "Request Timeout",
            f"the request's headers did not arrive within"
            f" {self.limits.header_timeout_s:g} s; send the whole request at once",
        )
        self._refusal = _canned(
            503,
            "Service Unavailable",
            "the API is serving as many connections as it may"
            f" ({self.max_connections}), all of them busy; retry in a moment (its operator"
            " can raise api_max_connections)",
            retry_after=1,
        )

    @property
    def connections(self) -> int:
        """Connections open now (just accepted, waiting for headers, busy or idle): at most
        ``max_connections`` plus :data:`BACKLOG` just accepted and not judged yet."""
        return len(self._pending) + self.established

    @property
    def established(self) -> int:
        """Connections the guard has admitted (at most ``max_connections``)."""
        return len(self._head) + len(self._idle) + len(self._busy)

    @property
    def waiting_for_headers(self) -> int:
        return len(self._pending) + len(self._head)

    # --- the protocol factory (one call per accepted connection) --------------------------------

    def protocol_factory(
        self, server: web.Server, access_log_class: type[AbstractAccessLogger]
    ) -> Callable[[], asyncio.BaseProtocol]:
        """What ``loop.create_server`` calls for each accepted socket: a :class:`GuardedConnection`
        serving ``server`` (the runner's aiohttp server), or a refusal when there is no room."""
        loop = self._loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {
            "keepalive_timeout": self.limits.idle_timeout_s,
            "access_log_class": access_log_class,
            "access_log": access_logger,
            "max_line_size": MAX_URL_BYTES,
            "max_field_size": MAX_HEADER_BYTES,
            "max_headers": MAX_HEADERS,
            # How long an unread request body is drained before the connection is closed.
            "lingering_time": self.limits.header_timeout_s,
        }

        def make() -> asyncio.BaseProtocol:
            # Room is made when the loop makes the connection, and its peer is known (see made()).
            # Until then it is pending; more than a backlog's worth of those at the cap are refused
            # here, so that a flood of connects cannot hold descriptors the guard has not seen yet.
            if len(self._pending) >= BACKLOG and self.connections >= self.max_connections:
                self.refused += 1
                return _Refusal(self._refusal)
            self.accepted += 1
            conn = GuardedConnection(server, self, loop=loop, **kwargs)
            self._pending[conn] = None
            # Also ends a connection the loop never makes (it is forgotten then).
            conn._timer = loop.call_later(self.limits.header_timeout_s, self._header_timeout, conn)
            return conn

        return make

    # --- bookkeeping ---------------------------------------------------------------------------------

    def _hold(self, conn: GuardedConnection) -> None:
        """``conn`` (of ``conn._peer``) may be evicted from now on."""
        held = self._of_peer.setdefault(conn._peer, {})
        n = len(held)
        if n:
            self._unrank(conn._peer, n)
        held[conn] = None
        self._peers_holding.setdefault(n + 1, {})[conn._peer] = None
        self._most = max(self._most, n + 1)

    def _release(self, conn: GuardedConnection) -> None:
        """``conn`` may no longer be evicted (busy, or gone)."""
        held = self._of_peer.get(conn._peer)
        if held is None or conn not in held:
            return
        n = len(held)
        self._unrank(conn._peer, n)
        del held[conn]
        if held:
            self._peers_holding.setdefault(n - 1, {})[conn._peer] = None
        else:
            del self._of_peer[conn._peer]
        if n == self._most and n not in self._peers_holding:
            self._most = n - 1

    def _unrank(self, peer: str, n: int) -> None:
        peers = self._peers_holding[n]
        del peers[peer]
        if not peers:
            del self._peers_holding[n]

    def _make_room(self, newcomer: GuardedConnection) -> bool:
        """Close one connection other than ``newcomer``, waiting for headers or idle, fairly (see
        the class docstring); False when every other one is busy."""
        victim: GuardedConnection | None = None
        if self._most >= 2:
            top = self._peers_holding[self._most]
            peer = newcomer._peer if newcomer._peer in top else next(iter(top))
            held = self._of_peer[peer]  # two or more: one at least is not the newcomer
            victim = next((c for c in held if c is not newcomer and c._state is _State.HEAD), None) or next(
                c for c in held if c is not newcomer
            )
        else:
            victim = next((c for c in self._head if c is not newcomer), None) or next(iter(self._idle), None)
        if victim is None:
            return False
        self.evicted += 1
        self._end(victim, abort=True)
        return True

    def _forget(self, conn: GuardedConnection) -> None:
        self._release(conn)
        self._pending.pop(conn, None)
        self._head.pop(conn, None)
        self._idle.pop(conn, None)
        self._busy.discard(conn)
        if conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None
        conn._state = _State.GONE

    def _end(self, conn: GuardedConnection, abort: bool, farewell: bytes = b"") -> None:
        """Stop counting ``conn`` and close it (at once with ``abort``; after ``farewell`` if it fits)."""
        self._forget(conn)
        transport = conn.transport
        if transport is None:
            return  # not made yet: connection_made closes it; or lost already
        if farewell and not abort and not conn.writing_paused and transport.get_write_buffer_size() == 0:
            transport.write(farewell)
            if transport.get_write_buffer_size() == 0:  # in the kernel: close() will not wait for a reader
                transport.close()
                return
        transport.abort()

    def _header_timeout(self, conn: GuardedConnection) -> None:
        conn._timer = None
        if conn._state is _State.PENDING:  # the loop never made it: nothing to close
            self._forget(conn)
            return
        if conn._state is not _State.HEAD:
            return
        self.header_timeouts += 1
        # Part of a request came: tell why it is cut. Nothing came (an idle pre-connection): just close.
        self._end(conn, abort=not conn._partial, farewell=self._timeout_body)

    # --- state changes (called by the connections and the middleware) -----------------------------

    def made(self, conn: GuardedConnection, peername: object) -> bool:
        """The loop has made ``conn``: it waits for its first request's headers. Beyond the cap
        another connection makes room; False when none can (``conn`` is to be refused)."""
        if conn._state is not _State.PENDING:
            return True
        del self._pending[conn]
        conn._peer = peer_key(peername)
        conn._state = _State.HEAD
        self._head[conn] = None
        self._hold(conn)
        while self.established > self.max_connections:
            if not self._make_room(conn):
                self.refused += 1
                self._end(conn, abort=False, farewell=self._refusal)
                return False
        return True

    def request_started(self, conn: GuardedConnection) -> None:
        """The connection's request has been parsed and is being handled."""
        if conn._state is _State.GONE:
            return
        self._release(conn)
        self._pending.pop(conn, None)
        self._head.pop(conn, None)
        self._idle.pop(conn, None)
        if conn._timer is not None:
            conn._timer.cancel()
            conn._timer = None
        conn._state = _State.BUSY
        self._busy.add(conn)

    def request_done(self, conn: GuardedConnection) -> None:
        """The handler has returned; the connection is idle until the next request begins."""
        if conn._state is not _State.BUSY:
            return
        self._busy.discard(conn)
        conn._state = _State.IDLE
        conn._partial = False
        self._idle[conn] = None
        self._hold(conn)

    def data_arrived(self, conn: GuardedConnection) -> None:
        """Bytes came on a connection that is not handling a request: a request head is coming."""
        conn._partial = True
        if conn._state is _State.IDLE and self._loop is not None:
            del self._idle[conn]
            conn._state = _State.HEAD
            self._head[conn] = None
            conn._timer = self._loop.call_later(self.limits.header_timeout_s, self._header_timeout, conn)

    def middleware(self) -> Middleware:
        """The outermost middleware: marks the connection busy while its request is handled."""

        @web.middleware
        async def busy(request: web.Request, handler: Handler) -> web.StreamResponse:
            conn = request.protocol
            if not isinstance(conn, GuardedConnection):
                return await handler(request)  # served some other way (an app run by a plain runner)
            self.request_started(conn)
            try:
                return await handler(request)
            finally:
                self.request_done(conn)

        return busy


class GuardedConnection(RequestHandler):
    """aiohttp's connection handler, reporting to a :class:`ConnectionGuard`, with JSON for the
    requests that cannot be parsed (:meth:`handle_error`)."""

    __slots__ = ("_guard", "_partial", "_peer", "_state", "_timer")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._state = _State.PENDING
        self._peer = ""  # whose it is (peer_key), known once made
        self._partial = False  # some of a request head has arrived
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._state is _State.GONE:  # its header deadline passed before the loop made it
            if self.transport is not None:
                self.transport.abort()
            return
        self._guard.made(self, transport.get_extra_info("peername"))  # may close it: no room

    def data_received(self, data: bytes) -> None:
        state = self._state
        if state is not _State.BUSY and data:
            if state is _State.GONE:
                return  # evicted, timed out or refused: being closed, nothing more is served
            self._guard.data_arrived(self)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._guard._forget(self)
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error log, but a request body that cannot be read (bad gzip, bad chunks)
        is the client's mistake, answered 400 already: one debug line, not a stack."""
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            log.debug("a request body could not be read: %s", str(exc).strip().splitlines()[-1:])
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """aiohttp's answer to a request it could not parse or a handler that failed, as
        ``{"error": ...}`` naming the problem and the fix; the connection is closed after it."""
        self._guard.request_started(self)
        if request.writer.output_size > 0:  # as aiohttp: a response is under way, nothing more fits
            raise ConnectionError("a response is being sent already; cannot send an error after it")
        status, text = self._describe(status, exc)
        if status >= 500:
            log.error("request from %s failed", request.remote, exc_info=exc)
        else:
            self._guard.bad_requests += 1
            # A client's mistake (or an attack): one line at debug, never the request's bytes.
            log.debug("refused a request from %s: %s %s", request.remote, status, text)
        resp = web.Response(status=status, body=msgspec.json.encode({"error": text}), content_type=_JSON)
        resp.force_close()
        return resp

    def _describe(self, status: int, exc: BaseException | None) -> tuple[int, str]:
        if isinstance(exc, LineTooLong):
            limit = exc.args[1] if len(exc.args) > 1 else None
            if limit == self.max_line_size:
                return 400, (
                    f"the request's path and query are longer than {self.max_line_size} bytes; shorten"
                    " them (e.g. fewer instruments per /ws/multi/ connection)"
                )
            return 431, f"a request header is longer than {self.max_field_size} bytes; send shorter headers"
        if isinstance(exc, BadHttpMessage) and "too many headers" in exc.message.lower():
            return 431, f"the request has more than {self.max_headers} headers; send fewer"
        if isinstance(exc, BadHttpMethod) and "HTTPS" in exc.message:
            return 400, ("this port speaks plain HTTP, not HTTPS; connect with http:// (or put a TLS proxy in front)")
        if isinstance(exc, ContentEncodingError):
            return 400, (
                "the request body's Content-Encoding cannot be decoded here; send the body plain (or as"
                " gzip or deflate)"
            )
        if isinstance(exc, HttpProcessingError):
            first = (exc.message or "").strip().splitlines()
            what = first[0].rstrip(":") if first else type(exc).__name__
            return 400, f"malformed HTTP request ({what}); send a valid HTTP/1.1 request"
        if status == 504:
            return 504, "the request timed out on the server; retry it"
        return 500, "the request failed on the server; it was logged, please report it"


class _Refusal(asyncio.Protocol):
    """A connection beyond the cap: a 503 and closed, never handed to aiohttp."""

    def __init__(self, response: bytes) -> None:
        self._response = response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.write(self._response)
        if t.get_write_buffer_size():
            t.abort()
        else:
            t.close()
