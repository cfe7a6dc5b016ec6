"""What every replica shares: binding its aiohttp app to HOST:PORT, the lifecycle and fault bookkeeping of
:class:`ReplicaBase`, and running until a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import ClassVar, Protocol, Self

from aiohttp import web

from deltafeed.model import BadInput
from deltafeed.replicas.faults import KINDS, FaultSchedule
from deltafeed.replicas.sim import MarketClock

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Seconds a stopping server waits for requests still open (aiohttp's default).
DEFAULT_SHUTDOWN_TIMEOUT = 60.0


def netloc(host: str, port: int) -> str:
    """``host:port`` as it goes in a URL (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def listen(
    handler: Handler,
    host: str,
    port: int,
    *,
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
    method: str = "GET",
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve every ``method`` request (``"*"``: any) with ``handler`` on ``host:port`` (0 = a free
    port), over TLS with ``ssl_context``; returns the runner and the bound port. A port that cannot be
    bound is :class:`BadInput` naming the fix."""
    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        await runner.cleanup()
        raise BadInput(
            f"cannot listen on {netloc(host, port)}: {e.strerror or e}; choose another --host/--port"
            " (port 0 picks a free one)"
        ) from None
    bound: int = sock.getsockname()[1]
    await web.SockSite(runner, sock, ssl_context=ssl_context).start()
    return runner, bound


class _WsConn(Protocol):
    closing: bool

    @property
    def ws(self) -> web.WebSocketResponse: ...

    @property
    def transport(self) -> asyncio.Transport: ...


async def close_ws(conn: _WsConn, code: int, message: bytes, timeout_s: float) -> None:
    """Close a replica's WebSocket with ``code``; a client that does not answer within ``timeout_s`` is cut."""
    conn.closing = True
    try:
        await asyncio.wait_for(conn.ws.close(code=code, message=message), timeout_s)
    except (TimeoutError, ConnectionError):
        pass
    finally:
        if not conn.transport.is_closing():
            conn.transport.abort()


class ReplicaBase:
    """What every replica does alike: its fault schedule, serving (and pumping) from :meth:`start`,
    running as an async context manager, and counting injected faults.

    Every subclass's constructor takes ``options=``
    :class:`~deltafeed.replicas.options.ReplicaOptions` (the options all replicas share) beside its
    venue-specific extras, and still the same options as keywords.

    A subclass sets ``host``, ``port``, ``_clock`` and ``stats`` in ``__init__``, then calls
    :meth:`_setup_faults`; it defines :meth:`_http` (every request), :meth:`_pump` unless ``pumps`` is
    False, and :meth:`stop`, which begins with :meth:`_stop_pump` and calls :meth:`_stop_server`.
    """

    #: Names the pump task (``<venue>-replica-pump``) and the fault log lines (``<venue> replica: ...``).
    venue: ClassVar[str]
    #: The replica module's logger: injected faults are logged there, at debug.
    _log: ClassVar[logging.Logger]
    #: Whether :meth:`start` runs :meth:`_pump` as a task (until :meth:`_stop_pump`).
    pumps: ClassVar[bool] = True
    #: :func:`listen`'s ``shutdown_timeout`` and ``method``.
    shutdown_timeout: ClassVar[float] = DEFAULT_SHUTDOWN_TIMEOUT
    http_method: ClassVar[str] = "GET"
    #: The fault kinds this replica injects; :meth:`_setup_faults` refuses the others by name.
    fault_kinds: ClassVar[tuple[str, ...]] = KINDS

    #: The fault schedule, or None when no fault is configured (the pump's fast path); setting it to
    #: None ends fault injection.
    faults: FaultSchedule | None
    stats: dict[str, int]
    host: str
    port: int  # the real one once started
    _clock: MarketClock
    _runner: web.AppRunner | None = None
    _pump_task: asyncio.Task[None] | None = None
    #: Subscriptions one WebSocket connection may hold, as the venue limits them (0: no limit); a
    #: test lowers it to prove a feed splits its subscriptions over connections.
    per_connection: int = 0

    def _setup_faults(self, faults: Mapping[str, float] | FaultSchedule, seed: int = 0) -> None:
        """Set :attr:`faults` from checked rates (a schedule seeded by ``seed``) or a ready schedule: None
        when no kind has a rate, else the schedule, with a zero ``stats["fault_<kind>"]`` per kind."""
        schedule = faults if isinstance(faults, FaultSchedule) else FaultSchedule(faults, seed)
        bad = [k for k in schedule.rates if k not in self.fault_kinds]
        if bad:
            raise BadInput(
                f"fault kind {bad[0]!r} does not apply to {type(self).__name__}; use {', '.join(self.fault_kinds)}"
            )
        if not schedule.rates:
            self.faults = None
        else:
            self.faults = schedule
            self.stats.update({f"fault_{k}": 0 for k in schedule.rates})

    @property
    def netloc(self) -> str:
        return netloc(self.host, self.port)

    @property
    def clock(self) -> MarketClock:
        return self._clock

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the real port once started)."""
        return f"http://{self.netloc}"

    async def _http(self, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError

    #: Wall seconds between two :meth:`_tick` calls of the pump.
    tick_s: ClassVar[float] = 0.02

    async def _pump(self) -> None:
        """Call :meth:`_tick` every ``tick_s`` until cancelled; a tick that raises is logged, not fatal."""
        while True:
            try:
                self._tick()
            except Exception:  # keep serving; a broken tick is a bug to see in the log, not a dead replica
                self._log.exception("%s replica: pump tick failed", self.venue)
            await asyncio.sleep(self.tick_s)

    def _tick(self) -> None:
        """Release the market up to its clock's now and send what happened (a pumping replica's own)."""
        raise NotImplementedError

    async def start(self) -> str:
        """Bind, start serving and pumping; returns :attr:`url`."""
        self._runner, self.port = await listen(
            self._http, self.host, self.port, shutdown_timeout=self.shutdown_timeout, method=self.http_method
        )
        if self.faults is not None:
            self.faults.start()  # fault times count from here
        if self.pumps:
            self._pump_task = asyncio.create_task(self._pump(), name=f"{self.venue}-replica-pump")
        return self.url

    async def stop(self) -> None:
        raise NotImplementedError

    async def _stop_pump(self) -> None:
        """Cancel the pump task and wait for it to end (nothing to do if it is not running)."""
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump_task
            self._pump_task = None

    async def _stop_server(self) -> None:
        """Stop listening and close the server's connections (nothing to do if it is not running)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def faults_injected(self) -> dict[str, int]:
        """Faults injected so far, per configured kind (zeros included); empty without faults."""
        return {} if self.faults is None else self.faults.counts()

    def _may_subscribe(self, held: int) -> bool:
        """Whether a connection holding ``held`` subscriptions may take one more; counts the refusals
        (``stats["limit_refusals"]``) and the most any connection held (``stats["most_subscriptions"]``)."""
        if self.per_connection and held >= self.per_connection:
            self.stats["limit_refusals"] = self.stats.get("limit_refusals", 0) + 1
            return False
        self.stats["most_subscriptions"] = max(self.stats.get("most_subscriptions", 0), held + 1)
        return True

    def _injected(self, kind: str, peer: str | None = None) -> None:
        """Count an injected fault of ``kind`` (in the schedule and ``stats``) and log it, naming the ``peer`` hit."""
        if self.faults is not None:  # None when injection was ended while this fault was under way
            self.faults.record(kind)
        self.stats[f"fault_{kind}"] += 1
        self._log.debug("%s replica: injected %s%s", self.venue, kind, f" on {peer}" if peer is not None else "")


class Replica(Protocol):
    async def start(self) -> str: ...

    async def stop(self) -> None: ...

    def summary(self) -> str: ...


async def serve(replica: Replica, banner: Callable[[str], list[str]] | None = None) -> None:
    """Run ``replica`` until SIGINT or SIGTERM: print ``listening on URL`` first (or ``banner(url)``'s
    lines), and its summary last."""
    url = await replica.start()
    for line in banner(url) if banner is not None else [f"listening on {url}"]:
        print(line, flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    sigs = (signal.SIGINT, signal.SIGTERM)
    for s in sigs:
        with contextlib.suppress(NotImplementedError):  # Windows
            loop.add_signal_handler(s, done.set)
    try:
        await done.wait()
    finally:
        for s in sigs:
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(s)
        await replica.stop()
        print(replica.summary(), file=sys.stdout, flush=True)
