"""Instruments split over several Binance connections, against the replica (issue 18).

Two runs, each shared by the tests that read it: N symbols at ~10 trades per wall second each, 1m
candles with Binance's kline streams on (two streams per symbol). The small run lowers the feed's
URL cap so that 12 symbols already need several connections, and checks every stored candle against
the replica's tape; the large run streams a thousand symbols at the real 4 KB cap (about nine
connections) and checks that every instrument receives trades and the writer keeps up. The replica
enforces Binance's per-connection limits: 1024 streams, the URL length, and 5 inbound messages per
second.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES
from deltafeed.store.cold import ColdStore
from deltafeed.venues.binance import codec
from deltafeed.venues.binance import feed as binance_feed
from deltafeed.venues.binance.feed import BinanceFeed
from deltafeed.venues.binance.replica import MAX_INBOUND_PER_S, BinanceReplica
from helpers import until
from reference import candles_from_tape, read_tape, rows_by_symbol

N = 12
URL_CAP = 200  # bytes of URL per connection for this run: 4 symbols per connection
SYMBOLS = [f"Z{i:04d}USDT" for i in range(N)]
SPEED = 10.0  # market seconds per wall second
RATE = 1.0  # trades per market second per symbol: ~10 trades per wall second per symbol
STREAM_S = 10.0  # wall seconds of streaming after start-up
WEIGHT = 60_000  # REST weight per minute, at both ends: the bootstrap's pacing is not under test here


class _ReplicaProcess:
    """``deltafeed replica binance`` in a process of its own (a thousand symbols keep a core busy),
    at real speed: ~10 trades per wall second per symbol as in the small run, but a start-up slowed
    by a loaded machine never puts the market clock beyond the feed's 15 min sanity bound."""

    def __init__(self, symbols: list[str]) -> None:
        cmd = [
            sys.executable, "-m", "deltafeed", "replica", "binance", "--port", "0", "--symbols", ",".join(symbols),
            "--seed", "5", "--rate", str(RATE * SPEED), "--speed", "1", "--history", "2m",
            "--weight-limit", str(WEIGHT),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line
        self.url = line.split()[-1]
        self.ws_url = self.url.replace("http://", "ws://")
        self.stats: dict[str, int] = {}

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        """Stop it; :attr:`stats` from the summary it prints (``connections=9 ... 429s=0``)."""
        self.proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.to_thread(self.proc.communicate, timeout=30)
        for line in out.splitlines():
            if line.startswith("binance replica stopped:"):
                for word in line.split()[3:]:
                    k, _, v = word.partition("=")
                    self.stats[k.removesuffix("s") if k[:-1].isdigit() else k] = int(v)


def _scenario(tmp: Path, symbols: list[str], tape: bool) -> dict[str, Any]:
    """One run: the replica in this process with a tape, or (no tape) in a process of its own."""

    async def run() -> dict[str, Any]:
        tape_path = tmp / "tape.csv" if tape else None
        replica: BinanceReplica | _ReplicaProcess
        if tape:
            replica = BinanceReplica(
                symbols=symbols, seed=5, rate=RATE, speed=SPEED, history_ms=120_000, tape=tape_path
            )
        else:
            replica = _ReplicaProcess(symbols)
        await replica.start()
        db = str(tmp / "scale.duckdb")
        settings = Settings(
            symbols=symbols,
            timeframes=["1m"],
            history="2m",
            db=db,
            rest_url=replica.url,
            ws_url=replica.ws_url,
            weight_limit=WEIGHT,
        ).validate()
        engine = Engine(settings)
        backlog: list[int] = []
        t0 = time.monotonic()
        try:
            await engine.start()
            startup_s = time.monotonic() - t0
            feed = engine.feeds["binance"]
            assert isinstance(feed, BinanceFeed)
            await until(lambda: all(st.trades > 0 for st in engine.states.values()), 30.0, "every instrument trading")
            end = time.monotonic() + STREAM_S
            while time.monotonic() < end:
                await asyncio.sleep(0.5)
                backlog.append(engine.writer.in_memory)
            links = [(len(feed.url(link)), len(feed._streams(link.members))) for link in feed.links]
            trades = {st.instrument.symbol: st.trades for st in engine.states.values()}
            status = engine.status()
        finally:
            await engine.stop()
            await replica.stop()
        return {
            "n": len(symbols),
            "startup_s": startup_s,
            "backlog": backlog,
            "links": links,
            "trades": trades,
            "status": status,
            "stats": dict(replica.stats),
            "tape": tape_path,
            "db": db,
        }

    return asyncio.run(run())


@pytest.fixture(scope="module")
def scale(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(binance_feed, "MAX_URL_BYTES", URL_CAP)
        return _scenario(tmp_path_factory.mktemp("scale"), SYMBOLS, tape=True)


@pytest.fixture(scope="module")
def thousand(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _scenario(tmp_path_factory.mktemp("thousand"), [f"Z{i:04d}USDT" for i in range(1000)], tape=False)


def _check_split(run: dict[str, Any], url_cap: int, min_links: int) -> None:
    """Split over connections, each within Binance's limits and the URL cap; every instrument traded."""
    links = run["links"]
    n = run["n"]
    assert len(links) >= min_links
    for url_len, n_streams in links:
        assert url_len <= url_cap and 0 < n_streams <= codec.MAX_STREAMS_PER_CONNECTION
    assert sum(k for _, k in links) == 2 * n  # a trade and a 1m kline stream per symbol, none twice
    stats = run["stats"]
    assert stats["connections"] == len(links), stats
    assert stats.get("inbound_limit_closes", 0) == 0 and stats.get("long_urls", 0) == 0, stats
    assert stats["429"] == 0 and stats["418"] == 0, stats
    status = run["status"]
    assert status["connects"] == len(links) and status["reconnects"] == 0
    assert not status["skipped_frames"]
    assert len(run["trades"]) == n
    assert min(run["trades"].values()) > 0


def _check_backlog(run: dict[str, Any]) -> None:
    """The second half of the run holds no more than the first half's peak, plus one tick's worth of
    open candles (one per instrument): bounded, not growing."""
    backlog = run["backlog"]
    assert len(backlog) >= 10
    half = len(backlog) // 2
    assert max(backlog[half:]) <= max(backlog[:half]) + run["n"], backlog


def test_instruments_stream_split_over_connections(scale: dict[str, Any]) -> None:
    _check_split(scale, URL_CAP, 3)
    assert sorted(scale["trades"]) == sorted(SYMBOLS)


def test_a_thousand_instruments_stream_split_over_connections(thousand: dict[str, Any]) -> None:
    # 2000 streams of ~17 bytes: at the real 4 KB cap, about nine connections.
    _check_split(thousand, binance_feed.MAX_URL_BYTES, 8)


def test_a_thousand_instruments_keep_the_writer_bounded(thousand: dict[str, Any]) -> None:
    _check_backlog(thousand)


def test_stored_candles_of_every_instrument_equal_the_tape(scale: dict[str, Any]) -> None:
    by_symbol = rows_by_symbol(read_tape(str(scale["tape"])))
    tf_ms = TIMEFRAMES["1m"]
    store = ColdStore.open_reader(scale["db"])
    try:
        for sym in SYMBOLS:
            stored = [c for c in store.query(f"binance:{sym}", "1m") if c.closed]
            want = {c.open_time: c for c in candles_from_tape(by_symbol[sym], tf_ms)}
            assert stored, sym
            keys = [c.open_time for c in stored]
            assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), sym
            for c in stored:
                w = want[c.open_time]
                got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
                assert got == (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades), (sym, c.open_time)
    finally:
        store.close()


def test_writer_backlog_stays_bounded(scale: dict[str, Any]) -> None:
    """At ~10 trades/s per instrument the writer keeps up: its backlog does not grow over the run."""
    _check_backlog(scale)


def test_the_replica_enforces_binances_inbound_limit() -> None:
    """Six control messages within a second close the connection (Binance: 5 messages/s)."""

    async def run() -> tuple[int, int]:
        import aiohttp

        replica = BinanceReplica(symbols=["BTCUSDT"], seed=1, rate=1.0)
        await replica.start()
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(replica.ws_url + "/ws") as ws:
                for i in range(MAX_INBOUND_PER_S + 1):
                    await ws.send_str(f'{{"method":"LIST_SUBSCRIPTIONS","id":{i}}}')
                replies = 0
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    replies += 1
                code = ws.close_code or 0
        finally:
            await replica.stop()
        return replies, code

    replies, code = asyncio.run(run())
    assert replies == MAX_INBOUND_PER_S and code == 1008
