"""A synchronous client of a deltafeed server, for notebooks and scripts: the methods of
:class:`deltafeed.client.Client`, blocking.

::

    from deltafeed import SyncClient

    with SyncClient("http://127.0.0.1:8080") as df:
        rows = df.fetch_ohlcv("BTC/USDT", "1m", since=None, limit=3)   # ccxt's signature and rows
        while True:
            rows = df.watch_ohlcv("BTC/USDT", "1m")                     # blocks until rows come

The asynchronous client runs on an event loop of its own in a daemon thread, so a SyncClient works
where a loop already runs (Jupyter) as well as in a plain script.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from deltafeed.client import _WHEN, Client
from deltafeed.model import Candle

T = TypeVar("T")


class SyncClient:
    """Blocking calls to one deltafeed server (``base_url`` like ``http://127.0.0.1:8080``); the
    arguments are :class:`~deltafeed.client.Client`'s. Use it in a ``with`` block or call
    :meth:`close`."""

    def __init__(self, base_url: str, token: str | None = None, **options: Any) -> None:
        self._client = Client(base_url, token, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="deltafeed-client", daemon=True)
        self._thread.start()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this SyncClient is closed; make a new one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def fetch_ohlcv(
        self,
        symbol: str,
        timeframe: str = "1m",
        since: _WHEN | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[list[float]]:
        """See :meth:`Client.fetch_ohlcv` (ccxt's signature)."""
        return self._run(self._client.fetch_ohlcv(symbol, timeframe, since, limit, params))

    def fetch_candles(
        self,
        instrument: str,
        timeframe: str,
        since: _WHEN | None = None,
        until: _WHEN | None = None,
        limit: int | None = None,
        *,
        final: bool = False,
    ) -> list[Candle]:
        """See :meth:`Client.fetch_candles`."""
        return self._run(self._client.fetch_candles(instrument, timeframe, since, until, limit, final=final))

    def watch_ohlcv(
        self,
        symbol: str,
        timeframe: str = "1m",
        since: _WHEN | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[list[float]]:
        """The rows since the previous call with the same arguments, blocking until there is one
        (ccxt.pro's ``watch_ohlcv`` loop); see :meth:`Client.watch_ohlcv`."""

        async def batch() -> list[list[float]]:
            return await self._client.watch_ohlcv(symbol, timeframe, since, limit, params)

        return self._run(batch())

    def fetch_trades(
        self, symbol: str, since: _WHEN | None = None, limit: int | None = None, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """See :meth:`Client.fetch_trades` (ccxt's shape: stored raw trades, oldest first)."""
        return self._run(self._client.fetch_trades(symbol, since, limit, params))

    def fetch_order_book(
        self, symbol: str, limit: int | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """See :meth:`Client.fetch_order_book` (ccxt's shape, plus ``in_sync``)."""
        return self._run(self._client.fetch_order_book(symbol, limit, params))

    def watch_order_book(self, symbol: str, limit: int | None = None) -> dict[str, Any]:
        """See :meth:`Client.watch_order_book`: blocks until the book changes, then returns it."""
        return self._run(self._client.watch_order_book(symbol, limit))

    def load_markets(self) -> dict[str, dict[str, Any]]:
        """See :meth:`Client.load_markets`."""
        return self._run(self._client.load_markets())

    def instruments(self) -> dict[str, Any]:
        return self._run(self._client.instruments())

    def status(self) -> dict[str, Any]:
        return self._run(self._client.status())

    def health(self) -> dict[str, Any]:
        return self._run(self._client.health())

    def start_streaming(self, instruments: list[str] | None = None) -> list[str]:
        return self._run(self._client.start_streaming(instruments))

    def stop_streaming(self, instruments: list[str] | None = None) -> list[str]:
        return self._run(self._client.stop_streaming(instruments))

    def close(self) -> None:
        """Close the connections and stop the client's thread; safe to call twice."""
        if self._loop.is_closed():
            return
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
