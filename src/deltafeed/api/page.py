"""The live chart page (``/`` and ``/chart``) and the assets of the pages (``/static/{name}``).

The page (``static/chart.html`` with ``page.js``) picks an instrument, price side and timeframe,
loads the history from ``GET /candles/...``, then follows the candle over the ``/ws`` subscribe op;
it draws candles and volume with TradingView's lightweight-charts, vendored from npm as
``static/lightweight-charts.standalone.production.js`` (its license beside it), so nothing is loaded
from elsewhere and the page works offline. Swagger UI (``/docs``) is vendored the same way.

The pages and assets hold no data: they are served without the API token (see
:mod:`deltafeed.api.auth`). The page passes the ``?token=`` of its own URL on to its requests
(as a bearer header) and its WebSocket (as ``?token=``), and says how to supply one when the server
refuses it.

Assets are package data (``[tool.setuptools.package-data]``), read once with
:mod:`importlib.resources`, so they are served from a wheel or a zip as from a source tree. Only the
files in ``static/`` are served, by exact name: no path ever reaches the file system.
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from aiohttp import web
from aiohttp.typedefs import Handler

#: Content types of the assets, by suffix.
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".txt": "text/plain",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}


class Asset:
    """One file of ``static/``, its bytes, content type and ETag."""

    __slots__ = ("body", "content_type", "etag", "name")

    def __init__(self, name: str, body: bytes) -> None:
        self.name = name
        self.body = body
        self.content_type = _TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'

    def response(self, request: web.Request) -> web.Response:
        """The file, or 304 when the browser holds this very version; browsers revalidate each time,
        so a new deltafeed never runs an old page script."""
        headers = {"ETag": self.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if request.headers.get("If-None-Match") == self.etag:
            return web.Response(status=304, headers=headers)
        charset = "utf-8" if self.content_type.startswith("text/") else None
        return web.Response(body=self.body, content_type=self.content_type, charset=charset, headers=headers)


@functools.cache
def assets() -> dict[str, Asset]:
    """Every file of the package's ``static/`` directory, by name (read once)."""
    root = resources.files("deltafeed.api") / "static"
    return {f.name: Asset(f.name, f.read_bytes()) for f in root.iterdir() if f.is_file()}


def asset_page(name: str) -> Handler:
    """A handler answering with the asset ``name`` (a page served at a path of its own)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return assets()[name].response(request)

    return handler


async def _static(request: web.Request) -> web.StreamResponse:
    asset = assets().get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()  # the error middleware words it
    return asset.response(request)


def add_page_routes(app: web.Application) -> None:
    """``/`` and ``/chart`` (the live chart page) and ``/static/{name}`` (the pages' assets)."""
    page = asset_page("chart.html")
    app.router.add_get("/", page)
    app.router.add_get("/chart", page)
    app.router.add_get("/static/{name}", _static)
