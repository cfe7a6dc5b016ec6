"""The API server: one aiohttp application with the HTTP endpoints, ``/metrics`` and the WebSocket.

Typical use, next to a running engine::

    runner = await start_api(engine, hub, "127.0.0.1", 8080, token=None)
    print(api_url(runner))          # http://127.0.0.1:8080
    ...
    await stop_api(runner)

The engine is not owned: stopping the API leaves it collecting, and the API can be started again
(with a new ``Hub``: see :func:`stop_api`). Every connection goes through the application's
:class:`~deltafeed.api.guard.ConnectionGuard` (header deadline, connection cap, JSON for requests
aiohttp cannot parse); every request through the token check (:mod:`deltafeed.api.auth`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec
from aiohttp import web

from deltafeed.api.auth import RedactingAccessLogger, check_bind, check_token, token_middleware
from deltafeed.api.guard import BACKLOG, ApiLimits, ConnectionGuard
from deltafeed.api.http import MAX_BODY_BYTES, add_http_routes, error_middleware
from deltafeed.api.metrics import add_metrics_route
from deltafeed.api.openapi import add_docs_routes
from deltafeed.api.page import add_page_routes

if TYPE_CHECKING:
    from deltafeed.api.hub import Hub
    from deltafeed.engine.view import EngineView

log = logging.getLogger("deltafeed.api")

#: How long a stop waits for requests in flight (a candle query, a WebSocket's goodbye) before it
#: cancels them.
SHUTDOWN_TIMEOUT_S = 2.0
#: Where an application keeps its connection guard.
GUARD = web.AppKey("guard", ConnectionGuard)


def build_app(
    engine: EngineView, hub: Hub | None, token: str | None, limits: ApiLimits | None = None
) -> web.Application:
    """The application: the connection guard's bookkeeping, JSON errors, the token check, HTTP
    routes, ``/metrics``, the docs, the live page and (with a hub) ``/ws``.

    With ``hub`` None there is no WebSocket endpoint. The hub is attached to the engine when the
    application starts, so that the engine hands it candles, trades and prices. The guard
    (``app[GUARD]``) takes effect when the application is served by :func:`start_api`.
    """
    guard = ConnectionGuard(limits)
    app = web.Application(
        middlewares=[guard.middleware(), error_middleware, token_middleware(token)], client_max_size=MAX_BODY_BYTES
    )
    app[GUARD] = guard
    add_http_routes(app, engine, body_timeout_s=guard.limits.header_timeout_s)
    add_metrics_route(app, engine, hub, guard)
    add_docs_routes(app, engine)
    add_page_routes(app)
    add_probe_routes(app, engine)
    if hub is not None:
        from deltafeed.api.ws import add_ws_routes  # the fan-out's endpoints

        add_ws_routes(app, hub)

        async def attach(app: web.Application) -> None:
            engine.hub = hub
            hub.attach_books(engine.books)

        async def detach(app: web.Application) -> None:
            hub.detach_books()

        app.on_startup.append(attach)
        app.on_cleanup.append(detach)
    return app


def add_probe_routes(app: web.Application, engine: EngineView) -> None:
    """``GET /livez`` and ``GET /readyz``, for supervisors (Docker's HEALTHCHECK, Kubernetes' probes).

    ``/livez`` answers 200 whenever the process can answer at all: a supervisor restarts the
    process when it does not (a blocked event loop). ``/readyz`` answers 200 once history is
    bootstrapped, every venue is connected and the cold store takes writes, else 503 with the
    reasons: a load balancer sends clients elsewhere meanwhile; nothing needs restarting.
    ``/health`` (the broader check, quiet instruments included) stays as it was. Like every path,
    they need the token when one is configured (a probe sends it like any client).
    """

    from deltafeed.api.schema import Liveness, Readiness

    async def livez(request: web.Request) -> web.Response:
        return web.Response(body=msgspec.json.encode(Liveness()), content_type="application/json")

    async def readyz(request: web.Request) -> web.Response:
        reasons = engine.readiness()
        doc = Readiness("not ready", reasons) if reasons else Readiness("ready")
        return web.Response(
            body=msgspec.json.encode(doc), status=503 if reasons else 200, content_type="application/json"
        )

    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)


class GuardedSite(web.BaseSite):
    """A TCP site whose connections go through the application's :class:`ConnectionGuard`."""

    __slots__ = ("_guard", "_host", "_port")

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard) -> None:
        super().__init__(runner, backlog=BACKLOG)
        self._host = host
        self._port = port
        self._guard = guard

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host or "0.0.0.0"
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is not set up; call runner.setup() first")
        factory = self._guard.protocol_factory(server, RedactingAccessLogger)
        self._server = await asyncio.get_running_loop().create_server(
            factory, self._host or None, self._port, backlog=self._backlog
        )


async def start_api(
    engine: EngineView, hub: Hub | None, host: str, port: int, token: str | None, limits: ApiLimits | None = None
) -> web.AppRunner:
    """Serve the API on ``host:port`` (port 0 picks a free one); :func:`api_url` tells where.

    With ``token`` every request needs it. Without, only loopback may be served
    (:class:`~deltafeed.model.BadInput` otherwise), its reads open and its POSTs refused; a blank
    token is refused too. ``limits`` bound connections (see :mod:`deltafeed.api.guard`).
    """
    token = check_token(token)
    check_bind(host, token)
    app = build_app(engine, hub, token, limits)
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = GuardedSite(runner, host, port, app[GUARD])
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        from deltafeed.model import BadInput

        raise BadInput(
            f"cannot serve the API on {host}:{port} ({exc.strerror or exc}); pass --api HOST:PORT"
            " with a free port (or --api off), or stop the program using it"
        ) from None
    guard = app[GUARD]
    log.info(
        "API listening on %s%s (at most %d connections, headers within %g s)",
        api_url(runner),
        "" if token else " (no token: POST endpoints refused)",
        guard.max_connections,
        guard.limits.header_timeout_s,
    )
    return runner


def api_guard(runner: web.AppRunner) -> ConnectionGuard:
    """The connection guard of a server started by :func:`start_api` (its counters, its limits)."""
    return runner.app[GUARD]


def api_url(runner: web.AppRunner) -> str:
    """The base URL a started API answers on, e.g. ``http://127.0.0.1:8080`` (the real port for port 0)."""
    if not runner.addresses:
        raise RuntimeError("the API is not listening; call start_api first")
    host, port = runner.addresses[0][:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def stop_api(runner: web.AppRunner) -> None:
    """Stop serving: close the listening socket, then the connections (WebSockets included).

    The engine keeps running. The WebSocket endpoints' shutdown closes the hub for good, so a
    server started again needs a new ``Hub`` (the new application attaches it to the engine).
    """
    await runner.cleanup()
