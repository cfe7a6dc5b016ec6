"""A third-party client taking trades from bench/frame_source.py, for bench/throughput.py ``--peers``.

Runs cryptofeed (Binance TRADES: ``@aggTrade`` streams; in cryptofeed's own venv, whose pins clash
with ours) or ccxt.pro (``watch_trades``: ``@trade`` streams) with only the venue's addresses
changed: REST from a Binance replica, WebSocket from the frame source. The trade callback only
counts. Once a second it prints a JSON line of running totals: trades handed out, process CPU
seconds, monotonic seconds; ``{"done": true}`` at the end.

    python bench/peers.py cryptofeed|ccxt REST_URL WS_URL SECONDS SYMBOL...
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any


class Counter:
    def __init__(self) -> None:
        self.trades = 0

    async def report(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            doc = {"trades": self.trades, "cpu_s": time.process_time(), "wall_s": time.monotonic()}
            sys.stdout.write(json.dumps(doc) + "\n")
            sys.stdout.flush()


def run_cryptofeed(rest: str, ws: str, seconds: float, symbols: list[str], counter: Counter) -> None:
    from cryptofeed import FeedHandler
    from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
    from cryptofeed.defines import TRADES
    from cryptofeed.exchanges import Binance

    Binance.websocket_endpoints = [WebsocketEndpoint(ws)]
    Binance.rest_endpoints = [RestEndpoint(rest, routes=Routes("/api/v3/exchangeInfo"))]

    async def trade(t: Any, receipt_timestamp: float) -> None:
        counter.trades += 1

    fh = FeedHandler(config={"log": {"disabled": True}})
    pairs = [f"{s[:-4]}-{s[-4:]}" for s in symbols]  # BTCUSDT -> BTC-USDT, cryptofeed's spelling
    fh.add_feed(Binance(symbols=pairs, channels=[TRADES], callbacks={TRADES: trade}))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    fh.run(start_loop=False)
    loop.run_until_complete(counter.report(seconds))
    fh.stop(loop=loop)


async def run_ccxt(rest: str, ws: str, seconds: float, symbols: list[str], counter: Counter) -> None:
    import ccxt.pro

    from deltafeed.venues.ccxt.bridge import exchange_urls

    config: dict[str, Any] = {"options": {"fetchMarkets": {"types": ["spot"]}}}
    if os.environ.get("SSL_CERT_FILE"):
        config["cafile"] = os.environ["SSL_CERT_FILE"]  # ccxt trusts certifi's CAs, not the default paths
    client = ccxt.pro.binance(config)
    client.urls = exchange_urls("binance", client.urls, {"rest": rest, "ws": ws + "/stream"})
    await client.load_markets()
    unified = [f"{s[:-4]}/{s[-4:]}" for s in symbols]

    async def watch() -> None:
        while True:
            many = len(unified) > 1
            batch = await (client.watch_trades_for_symbols(unified) if many else client.watch_trades(unified[0]))
            counter.trades += len(batch)

    task = asyncio.create_task(watch())
    try:
        await counter.report(seconds)
    finally:
        task.cancel()
        await client.close()


def main() -> None:
    which, rest, ws, seconds, symbols = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5:]
    counter = Counter()
    if which == "cryptofeed":
        run_cryptofeed(rest, ws, seconds, symbols, counter)
    elif which == "ccxt":
        try:
            import uvloop

            uvloop.run(run_ccxt(rest, ws, seconds, symbols, counter))
        except ImportError:
            asyncio.run(run_ccxt(rest, ws, seconds, symbols, counter))
    else:
        sys.exit(f"unknown client {which!r}; use cryptofeed or ccxt")
    sys.stdout.write(json.dumps({"done": True}) + "\n")


if __name__ == "__main__":
    main()
