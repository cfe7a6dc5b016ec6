"""Runs cryptofeed's Binance feed (TRADES and 1m CANDLES) against a Binance replica and prints what
it hands out as JSON lines; run by tests/thirdparty/test_cryptofeed.py with the Python of the venv
cryptofeed is installed in (its pins clash with ours), never imported by the suite itself.

Usage: python cryptofeed_probe.py REST_URL WS_URL SECONDS SYMBOL... (the replica's CA comes from
SSL_CERT_FILE and REQUESTS_CA_BUNDLE, as for any private CA). Only the venue's addresses change."""

from __future__ import annotations

import asyncio
import json
import sys

from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import CANDLES, TRADES
from cryptofeed.exchanges import Binance


def main() -> None:
    rest, ws, seconds, symbols = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4:]
    # The one change a user makes: where Binance is (cryptofeed keeps it in class attributes).
    Binance.websocket_endpoints = [WebsocketEndpoint(ws)]
    Binance.rest_endpoints = [
        RestEndpoint(rest, routes=Routes("/api/v3/exchangeInfo", l2book="/api/v3/depth?symbol={}&limit={}"))
    ]

    def out(doc: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    async def trade(t, receipt_timestamp):  # type: ignore[no-untyped-def]
        out({"kind": "trade", "symbol": t.symbol, "id": int(t.id), "price": str(t.price), "amount": str(t.amount),
             "side": t.side, "time": t.timestamp})  # fmt: skip

    async def candle(c, receipt_timestamp):  # type: ignore[no-untyped-def]
        out({"kind": "candle", "symbol": c.symbol, "start": c.start, "stop": c.stop, "open": str(c.open),
             "high": str(c.high), "low": str(c.low), "close": str(c.close), "volume": str(c.volume),
             "trades": c.trades, "closed": c.closed})  # fmt: skip

    fh = FeedHandler(config={"log": {"disabled": True}})
    pairs = [f"{s[:-4]}-{s[-4:]}" for s in symbols]  # BTCUSDT -> BTC-USDT, cryptofeed's spelling
    fh.add_feed(Binance(symbols=pairs, channels=[TRADES, CANDLES], callbacks={TRADES: trade, CANDLES: candle}))
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    fh.run(start_loop=False)
    loop.run_until_complete(asyncio.sleep(seconds))
    fh.stop(loop=loop)
    out({"kind": "done"})


if __name__ == "__main__":
    main()
