"""IB ingest cost: TWS socket bytes (tick-by-tick AllLast and BidAsk messages, as the replica sends
them) through deltafeed's framer and decoder, and through the whole feed into 1m/5m/15m/1h candles
(a stock's trades, a forex pair's MID, BID and ASK), without sockets. Prints the median over windows
of messages/s and µs per message.

    python bench/ib.py [--messages 200000] [--windows 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.ib import codec
from deltafeed.venues.ib.feed import IbFeed

START_S = 1_794_355_200 + 15 * 3600  # Wednesday 10:00 New York: stocks and forex are open


def stream(n: int, req_id: int, quotes: bool) -> bytes:
    out = bytearray()
    for i in range(n):
        t = START_S + i // 4
        if quotes:
            bid = 1.08 + ((i * 7919) % 9) * 1e-5
            out += codec.frame([99, req_id, 3, t, f"{bid:.5f}", f"{bid + 1e-4:.5f}", "1000000", "1000000", 0])
        else:
            out += codec.frame([99, req_id, 2, t, f"{185 + (i * 7919) % 50 / 100:.2f}", 100, 0, "NASDAQ", ""])
    return bytes(out)


def decode_only(data: bytes, windows: int) -> float:
    per: list[float] = []
    for _ in range(windows):
        framer, dec = codec.Framer(), codec.Decoder()
        dec.server_version = codec.SERVER_VERSION
        t0 = time.perf_counter()
        n = 0
        for fields in framer.feed(data):
            dec.decode(fields)
            n += 1
        per.append((time.perf_counter() - t0) / n)
    return statistics.median(per)


async def through_feed(symbol: str, data: bytes, windows: int, req_id: int) -> float:
    per: list[float] = []
    for _ in range(windows):
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(
                symbols=[f"ib:{symbol}"],
                timeframes=["1m", "5m", "15m", "1h"],
                venues={"ib": {"prices": ["mid", "bid", "ask"]}},
                db=str(Path(tmp) / "b.duckdb"),
            ).validate()
            engine = Engine(settings)
            feed = engine.feeds["ib"]
            assert isinstance(feed, IbFeed)
            feed._live[req_id] = (symbol, "ticks")  # as after a subscription
            feed.decoder.server_version = codec.SERVER_VERSION  # past the hello
            framer = codec.Framer()
            t0 = time.perf_counter()
            n = 0
            for fields in framer.feed(data):
                feed._on_message(fields)
                n += 1
            per.append((time.perf_counter() - t0) / n)
    return statistics.median(per)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=200_000)
    ap.add_argument("--windows", type=int, default=5)
    args = ap.parse_args()
    trades, quotes = stream(args.messages, 1, False), stream(args.messages, 2, True)
    for name, data in (("AllLast (trades)", trades), ("BidAsk (quotes)", quotes)):
        us = decode_only(data, args.windows) * 1e6
        print(f"framer+decoder {name}: median {us:.2f} µs/message, {1e6 / us:,.0f} messages/s")
    for name, sym, data, req in (
        ("AAPL trades, 4 timeframes", "AAPL", trades, 1),
        ("EUR.USD quotes, 3 sides x 4 timeframes", "EUR.USD", quotes, 2),
    ):
        us = asyncio.run(through_feed(sym, data, args.windows, req)) * 1e6
        print(f"feed into candles, {name}: median {us:.2f} µs/message, {1e6 / us:,.0f} messages/s")


if __name__ == "__main__":
    main()
