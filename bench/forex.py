"""Forex ingest cost: OANDA pricing-stream lines into MID, BID and ASK candles of four timeframes.

Feeds pre-encoded PRICE lines (as the replica sends them) straight into the engine's OANDA feed, so
the figure is decode + three price sides x four timeframes per quote, without sockets. Prints the
median over windows of lines/s and µs per line, for 1 and 3 price sides.

    python bench/forex.py [--lines 200000] [--windows 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.oanda.codec import rfc3339
from deltafeed.venues.oanda.feed import OandaFeed
from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN

START = 1_794_560_400_000  # a Friday, 04:00 New York: the FX market is open


def lines(n: int) -> list[bytes]:
    out = []
    bid = 108_000
    for i in range(n):
        bid += (i * 7919) % 5 - 2
        t = rfc3339(START + i * 250)
        out.append(
            b'{"type":"PRICE","instrument":"EUR_USD","time":"%s","status":"tradeable","tradeable":true,'
            b'"bids":[{"price":"%.5f","liquidity":1000000}],"asks":[{"price":"%.5f","liquidity":1000000}],'
            b'"closeoutBid":"%.5f","closeoutAsk":"%.5f"}'
            % (t.encode(), bid / 1e5, (bid + 11) / 1e5, bid / 1e5, (bid + 11) / 1e5)
        )
    return out


def run(prices: list[str], data: list[bytes], windows: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            venue="oanda",
            symbols=["EUR_USD"],
            timeframes=["1m", "5m", "15m", "1h"],
            prices=prices,
            db=str(Path(tmp) / "b.duckdb"),
            rest_url="http://127.0.0.1:9",
            stream_url="http://127.0.0.1:9",
        ).validate()
        engine = Engine(settings)
        feed = engine.feeds["oanda"]
        assert isinstance(feed, OandaFeed)
        size = len(data) // windows
        rates = []
        for w in range(windows):
            chunk = data[w * size : (w + 1) * size]
            t0 = time.perf_counter()
            for line in chunk:
                feed.on_line(line)
            rates.append(len(chunk) / (time.perf_counter() - t0))
        states = [st for st in engine.states.values()]
        assert all(st.trades == size * windows for st in states), [st.trades for st in states]
        rate = statistics.median(rates)
        return rate, 1e6 / rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--windows", type=int, default=5)
    args = ap.parse_args()
    os.environ.setdefault("OANDA_TOKEN", DEV_TOKEN)
    os.environ.setdefault("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    data = lines(args.lines)
    print(f"{args.lines:,} PRICE lines, 4 timeframes (1m 5m 15m 1h), median of {args.windows} windows")
    for prices in (["mid"], ["mid", "bid", "ask"]):
        rate, us = run(prices, data, args.windows)
        print(f"  {','.join(prices):<12} {rate:>10,.0f} lines/s   {us:5.2f} µs per line (decode + candles)")


if __name__ == "__main__":
    main()
