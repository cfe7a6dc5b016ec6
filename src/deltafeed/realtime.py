"""One symbol's live market view, with the method names of the service our users described first:
``subscribe_to_candles(callback)``, ``get_current_price()``, ``get_recent_ticks(limit)``,
``get_candle_history(interval, limit)`` and ``to_dataframe(interval, limit)``.

::

    from deltafeed import RealtimeMarketData

    async with RealtimeMarketData("http://127.0.0.1:8080", "ETH-PERP") as md:
        md.subscribe_to_candles(lambda candle: print(candle))
        await md.wait_ready()
        print(md.get_current_price(), md.get_recent_ticks(5))
        history = await md.get_candle_history("1m", 100)

It listens on the server's ``/ws/<symbol>`` endpoint (trades, price updates, candles of every
timeframe collected) and keeps the latest price and the newest trades in memory (bounded); history
comes over HTTP through :class:`~deltafeed.client.Client`. The symbol is any name the server knows
the instrument by (an alias, ``BTC/USDT``, ``binance:BTCUSDT``). A lost connection is retried with
backoff; trades that went by meanwhile are not in ``get_recent_ticks`` (the candles are complete:
they come from the server's store).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

from deltafeed.client import ApiError, Client, _segment
from deltafeed.model import Candle
from deltafeed.net.reconnect import Backoff

log = logging.getLogger("deltafeed.realtime")

CandleCallback = Callable[[str, Candle], Any]


class RealtimeMarketData:
    """Live price, recent trades and candle callbacks of one symbol; see the module docstring.

    ``max_ticks`` bounds the trades kept for :meth:`get_recent_ticks` (the oldest go first).
    """

    def __init__(
        self, base_url: str, symbol: str, token: str | None = None, *, max_ticks: int = 1000, **options: Any
    ) -> None:
        self.symbol = symbol
        self.client = Client(base_url, token, **options)
        self.instrument: str | None = None  # the server's name for it, once a message named it
        self._price: float | None = None
        self._price_ms: int | None = None
        self._ticks: deque[dict[str, Any]] = deque(maxlen=max_ticks)
        self._callbacks: list[CandleCallback] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.errors = 0  # callbacks that raised (logged once each kind)

    async def __aenter__(self) -> RealtimeMarketData:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start listening (returns at once; :meth:`wait_ready` waits for the first message)."""
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name=f"realtime {self.symbol}")

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until the server has sent something for the symbol (a price, a trade or a candle)."""
        waiter = asyncio.ensure_future(self._ready.wait())
        tasks: set[asyncio.Future[Any]] = {waiter} | ({self._task} if self._task is not None else set())
        done, _ = await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            if self._task is not None and self._task.done() and self._task.exception() is not None:
                raise self._task.exception()  # type: ignore[misc]
            raise TimeoutError(f"nothing from the server for {self.symbol} within {timeout_s:g} s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.client.close()

    # --- the seeds' methods -------------------------------------------------------------------

    def subscribe_to_candles(self, callback: CandleCallback) -> None:
        """Call ``callback(timeframe, candle)`` on every candle update (forming, closed, corrected)."""
        self._callbacks.append(callback)

    def get_current_price(self) -> float | None:
        """The latest price (a trade's, or the mid of a quote-built instrument), None before any."""
        return self._price

    def get_recent_ticks(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` trades, oldest first: ``{"timestamp", "price", "qty", "id", "buyer_maker"}``."""
        if limit <= 0:
            return []
        return list(self._ticks)[-limit:]

    async def get_candle_history(self, interval: str = "1m", limit: int = 100) -> list[Candle]:
        """The newest ``limit`` candles of ``interval``, oldest first, each with its state."""
        return await self.client.fetch_candles(self.symbol, interval, limit=limit)

    async def to_dataframe(self, interval: str = "1m", limit: int = 100) -> Any:
        """:meth:`get_candle_history` as a pandas DataFrame (needs pandas)."""
        return self.client.to_dataframe(await self.get_candle_history(interval, limit))

    # --- the connection -----------------------------------------------------------------------

    async def _listen(self) -> None:
        backoff = Backoff(0.05, self.client.reconnect_max_s)
        url = f"{self.client.base_url}/ws/{_segment(self.symbol)}"
        while True:
            try:
                async with self.client._http().ws_connect(url, heartbeat=10.0) as ws:
                    backoff.reset()
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            self._on(msg.data)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (400, 401, 403, 404):
                    raise ApiError(exc.status, f"the server refused {self.symbol}: {exc.message}") from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("lost %s (%s); reconnecting", url, exc or type(exc).__name__)
            await backoff.sleep(backoff.failed())

    def _on(self, text: str) -> None:
        try:
            msg = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return
        if not isinstance(msg, dict):
            return
        kind, data = msg.get("type"), msg.get("data")
        if isinstance(msg.get("instrument"), str):
            self.instrument = msg["instrument"]
        if not isinstance(data, dict):
            return
        if kind == "price_update":
            self._price, self._price_ms = data["price"], msg["timestamp"]
        elif kind == "trade":
            self._price, self._price_ms = data["price"], msg["timestamp"]
            tick = {"timestamp": msg["timestamp"], "price": data["price"], "qty": data["qty"], "id": data["id"]}
            tick["buyer_maker"] = data["buyer_maker"]
            self._ticks.append(tick)
        elif kind == "candle":
            c = Candle(
                data["open_time"],
                data["open"],
                data["high"],
                data["low"],
                data["close"],
                data["volume"],
                data["trades"],
                data["closed"],
                data.get("state") == "final",
            )
            for callback in self._callbacks:
                try:
                    callback(data["timeframe"], c)
                except Exception:
                    self.errors += 1
                    log.exception("a candle callback of %s raised", self.symbol)
        else:
            return
        self._ready.set()
