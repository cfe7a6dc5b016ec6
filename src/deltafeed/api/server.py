"""The API server: one aiohttp application with the HTTP endpoints, ``/metrics`` and the WebSocket.

Typical use, next to a running engine::

    runner = await start_api(engine, hub, "127.0.0.1", 8080, token=None)
    print(api_url(runner))          # http://127.0.0.1:8080
    ...
    await stop_api(runner)

The engine is not owned: stopping the API leaves it collecting, and the API can be started again
(with a new ``Hub``: see :func:`stop_api`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from deltafeed.api.auth import RedactingAccessLogger, check_bind, is_loopback, token_middleware
from deltafeed.api.http import MAX_BODY_BYTES, add_http_routes, error_middleware
from deltafeed.api.metrics import add_metrics_route

if TYPE_CHECKING:
    from deltafeed.api.hub import Hub
    from deltafeed.engine import Engine

log = logging.getLogger("deltafeed.api")

#: How long a stop waits for requests in flight (a candle query, a WebSocket's goodbye) before it
#: cancels them.
SHUTDOWN_TIMEOUT_S = 2.0


def build_app(engine: Engine, hub: Hub | None, token: str | None, require_for_reads: bool) -> web.Application:
    """The application: JSON errors, the token check, HTTP routes, ``/metrics`` and (with a hub) ``/ws``.

    With ``hub`` None there is no WebSocket endpoint. The hub is attached to the engine when the
    application starts, so that the engine hands it candles, trades and prices.
    """
    app = web.Application(middlewares=[error_middleware, token_middleware(token, require_for_reads)],
                          client_max_size=MAX_BODY_BYTES)
    add_http_routes(app, engine)
    add_metrics_route(app, engine, hub)
    if hub is not None:
        from deltafeed.api.ws import add_ws_routes  # the fan-out's endpoints

        add_ws_routes(app, hub)

        async def attach(app: web.Application) -> None:
            engine.hub = hub

        app.on_startup.append(attach)
    return app


async def start_api(engine: Engine, hub: Hub | None, host: str, port: int, token: str | None) -> web.AppRunner:
    """Serve the API on ``host:port`` (port 0 picks a free one); :func:`api_url` tells where.

    Binding beyond loopback needs a token (:class:`~deltafeed.model.BadInput` otherwise), and then
    reads need it too; on loopback only the POST endpoints do.
    """
    token = token or None
    check_bind(host, token)
    app = build_app(engine, hub, token, require_for_reads=not is_loopback(host))
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        from deltafeed.model import BadInput

        raise BadInput(f"cannot serve the API on {host}:{port} ({exc.strerror or exc}); pass --api HOST:PORT"
                       " with a free port (or --api off), or stop the program using it") from None
    log.info("API listening on %s%s", api_url(runner), "" if token else " (no token: POST endpoints refused)")
    return runner


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
