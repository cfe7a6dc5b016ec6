"""alpaca-py, Alpaca's official client, judges the Alpaca replica with only its URLs (and the replica's
development keys) changed: ``StockDataStream`` and ``CryptoDataStream`` (msgpack frames, times as
Timestamp extensions) and ``StockHistoricalDataClient``/``CryptoHistoricalDataClient`` (multi-symbol
bars over several 10 000-bar pages). What its models hold must equal the replica's tape field by field.

alpaca-py's streams run their own event loop (``run()`` is ``asyncio.run(_run_forever())``), so each
runs in a thread here, and is stopped with its own ``stop()`` (which posts ``stop_ws`` to that loop)."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import threading
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alpaca.data.historical import CryptoHistoricalDataClient, StockHistoricalDataClient
from alpaca.data.live import CryptoDataStream, StockDataStream
from alpaca.data.models import Bar, Trade
from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET
from deltafeed.venues.alpaca.replica import AlpacaReplica
from reference import RefCandle, candles_from_tape, next_open, open_of, read_venue_tape, rows_by_symbol

MINUTE = 60_000
STOCKS = ["AAPL", "MSFT"]
CRYPTO = ["BTC/USD", "ETH/USD"]


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms // 1000, dt.UTC).replace(microsecond=ms % 1000 * 1000)


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1000 + t.microsecond // 1000


def _tape_by_id(path: Path) -> dict[tuple[str, int], tuple[int, str, str]]:
    """The tape's trades by (symbol, Alpaca trade id): (time ms, price, size) as written."""
    with open(path, newline="", encoding="ascii") as f:
        rows = csv.reader(f)
        next(rows)
        return {(r[0], int(r[1])): (int(r[2]), r[3], r[4]) for r in rows}


def _bar_matches(b: Bar, ref: RefCandle) -> None:
    """An alpaca-py bar against the tape's candle: every field (VWAP to 1e-12 of the exact one)."""
    assert (_ms(b.timestamp), b.open, b.high, b.low, b.close, round(b.volume, 8), b.trade_count) == (
        ref.open_time, ref.open, ref.high, ref.low, ref.close, round(ref.volume, 8), ref.trades,
    ), (b, ref.row())  # fmt: skip
    vwap = ref.exact_quote_volume / ref.exact_volume
    assert b.vwap is not None and abs(Decimal(b.vwap) - vwap) <= vwap * Decimal("1e-12"), (b.vwap, vwap)


# --- streams ------------------------------------------------------------------------------------------


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[AlpacaReplica]:
    # One trade in three of a minute's last second is late, so updated bars come every minute or so.
    r = AlpacaReplica(
        symbols=STOCKS + CRYPTO, seed=5, rate=4.0, speed=30.0, history_ms=10 * MINUTE, tape=tmp_path / "live.csv",
        late_every=3,
    )  # fmt: skip
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


class _Run:
    """An alpaca-py stream in its own thread; every trade, bar and updated bar in arrival order."""

    def __init__(self, stream: StockDataStream | CryptoDataStream, symbols: list[str], kinds: str = "tbu") -> None:
        self.stream = stream
        self.got: list[tuple[str, Any]] = []

        def handler(kind: str) -> Any:
            async def on(msg: Any) -> None:
                self.got.append((kind, msg))

            return on

        subscribe = {"t": stream.subscribe_trades, "b": stream.subscribe_bars, "u": stream.subscribe_updated_bars,
                     "d": stream.subscribe_daily_bars}  # fmt: skip
        for kind in kinds:
            subscribe[kind](handler(kind), *symbols)
        self.thread = threading.Thread(target=stream.run, name="alpaca-py", daemon=True)
        self.thread.start()

    def count(self, kind: str) -> int:
        return sum(k == kind for k, _ in self.got)

    def stop(self) -> None:
        while self.stream._loop is None:  # run() has not reached its loop yet
            threading.Event().wait(0.01)
        self.stream.stop()
        self.thread.join(10)
        assert not self.thread.is_alive(), "alpaca-py's stream did not stop"


def _check_stream(got: list[tuple[str, Any]], tape_path: Path, symbols: list[str]) -> tuple[int, int, int]:
    """Every trade equals its tape row; every ``b`` bar equals the tape's minute less the trades that
    arrived after it (the late ones), every ``u`` bar the tape's whole minute; no trade is missing."""
    tape = _tape_by_id(tape_path)
    refs = {s: {c.open_time: c for c in candles_from_tape(rows, MINUTE)}
            for s, rows in rows_by_symbol(read_venue_tape(tape_path)).items()}  # fmt: skip
    trades = bars = updated = 0
    for sym in symbols:
        mine = [(k, m) for k, m in got if m.symbol == sym]
        ts = [m for k, m in mine if k == "t"]
        assert ts, sym
        for t in ts:
            assert isinstance(t, Trade)
            assert t.id is not None
            time_ms, price, size = tape[(sym, t.id)]
            assert (t.timestamp, t.price, t.size) == (_utc(time_ms), float(price), float(size)), t
        ids = [t.id for t in ts]
        assert len(set(ids)) == len(ids), "a trade twice"
        lo, hi = min(_ms(t.timestamp) for t in ts[:1]), max(_ms(t.timestamp) for t in ts[-1:])
        on_tape = {i for (s, i), row in tape.items() if s == sym and lo <= row[0] <= hi}
        assert on_tape <= set(ids), f"{len(on_tape - set(ids))} trades of {sym} on the tape never arrived"
        trades += len(ts)
        first_minute = _ms(ts[0].timestamp) // MINUTE * MINUTE + MINUTE  # the first minute seen whole
        for k, (kind, m) in enumerate(mine):
            if kind == "t" or _ms(m.timestamp) < first_minute:
                continue
            assert isinstance(m, Bar)
            start = _ms(m.timestamp)
            ref = refs[sym][start]
            if kind == "u":
                _bar_matches(m, ref)
                updated += 1
                continue
            # The b bar holds what was delivered by the minute mark: the late trades come after it.
            late = {x.id for kk, x in mine[k + 1 :] if kk == "t" and start <= _ms(x.timestamp) < start + MINUTE}
            on_time = sorted(
                (row[0], i, Decimal(row[1]), Decimal(row[2]))
                for (s, i), row in tape.items()
                if s == sym and start <= row[0] < start + MINUTE and i not in late
            )
            assert on_time, (sym, start)
            prices = [p for _, _, p, _ in on_time]
            volume = sum((q for _, _, _, q in on_time), Decimal(0))
            assert (m.open, m.high, m.low, m.close, round(m.volume, 8), m.trade_count) == (
                float(prices[0]), float(max(prices)), float(min(prices)), float(prices[-1]), round(float(volume), 8),
                len(on_time),
            ), (m, sym, start)  # fmt: skip
            bars += 1
    return trades, bars, updated


@pytest.mark.timeout(90)
async def test_stock_and_crypto_streams_equal_the_tape(live: AlpacaReplica) -> None:
    stocks = _Run(StockDataStream(DEV_KEY, DEV_SECRET, url_override=live.stock_stream_url("iex")), STOCKS)
    crypto = _Run(CryptoDataStream(DEV_KEY, DEV_SECRET, url_override=live.crypto_stream_url), CRYPTO)
    try:
        async with asyncio.timeout(40):
            while not all(r.count("b") >= 2 * 3 and r.count("u") >= 1 for r in (stocks, crypto)):
                await asyncio.sleep(0.2)
    finally:
        await asyncio.gather(asyncio.to_thread(stocks.stop), asyncio.to_thread(crypto.stop))
    assert live.tape_path is not None
    assert live.stats["refused_406"] == 0 and live.stats["open_connections"] == 0
    st = _check_stream(list(stocks.got), live.tape_path, STOCKS)
    cr = _check_stream(list(crypto.got), live.tape_path, CRYPTO)
    print(f"\nalpaca-py streams: stocks {st} crypto {cr} (trades, bars, updated bars) equal the tape")
    assert st[1] >= 2 and cr[1] >= 2 and st[2] + cr[2] >= 1


@pytest.mark.timeout(90)
async def test_daily_bar_streams_equal_the_tape_so_far(tmp_path: Path) -> None:
    """``subscribe_daily_bars``: each ``d`` bar opens at the symbol's midnight (New York for a stock,
    UTC for crypto, worked out with zoneinfo from the tape) and equals the tape's day up to a minute
    mark: its first ``trade_count`` trades, the next one (if any) in a later minute."""
    r = AlpacaReplica(symbols=STOCKS + CRYPTO, seed=9, rate=2.0, speed=60.0, history_ms=30 * MINUTE,
                      tape=tmp_path / "d.csv", late_every=0)  # fmt: skip
    await r.start()
    try:
        stocks = _Run(StockDataStream(DEV_KEY, DEV_SECRET, url_override=r.stock_stream_url("iex")), STOCKS, "d")
        crypto = _Run(CryptoDataStream(DEV_KEY, DEV_SECRET, url_override=r.crypto_stream_url), CRYPTO, "d")
        try:
            async with asyncio.timeout(40):
                while not all(run.count("d") >= 2 * 3 for run in (stocks, crypto)):
                    await asyncio.sleep(0.2)
        finally:
            await asyncio.gather(asyncio.to_thread(stocks.stop), asyncio.to_thread(crypto.stop))
    finally:
        await r.stop()
    assert r.tape_path is not None
    tape = rows_by_symbol(read_venue_tape(r.tape_path))
    checked = 0
    for run, day in ((stocks, "1d-new_york"), (crypto, "1d")):
        for kind, b in run.got:
            assert kind == "d" and isinstance(b, Bar)
            t = _ms(b.timestamp)
            rows = sorted((row for row in tape[b.symbol] if open_of(row.time_ms, day) == t), key=lambda x: x.trade_id)
            assert rows and open_of(t, day) == t, (b, day)  # a midnight of the symbol's day, with trades
            assert b.trade_count is not None
            n = int(b.trade_count)
            assert 0 < n <= len(rows), (b, len(rows))
            assert n == len(rows) or rows[n - 1].time_ms // MINUTE < rows[n].time_ms // MINUTE, "not cut at a mark"
            ref = candles_from_tape(rows[:n], 86_400_000 * 365 * 100)[0]  # one candle of exactly those trades
            ref.open_time = t
            _bar_matches(b, ref)
            checked += 1
    print(f"\nalpaca-py daily bars: {checked} d bars equal the tape's day so far")
    assert checked >= 12


# --- historical bars ------------------------------------------------------------------------------


async def test_historical_clients_page_through_bars_equal_to_the_tape(tmp_path: Path) -> None:
    # A quiet market over five days: 1m bars of two symbols take two 10 000-bar pages per kind.
    r = AlpacaReplica(
        symbols=STOCKS + CRYPTO, seed=8, rate=0.05, speed=1.0, history_ms=5 * 86_400_000, tape=tmp_path / "h.csv"
    )
    await r.start()
    try:
        start = r.sim.origin_ms - r.sim.origin_ms % 3_600_000 + 3_600_000
        now = r.clock.now_ms()
        end = now - now % 3_600_000 - 3_600_000  # inclusive: every bar asked for has ended (even the hour's)
        stock = StockHistoricalDataClient(DEV_KEY, DEV_SECRET, url_override=r.url)
        crypto = CryptoHistoricalDataClient(DEV_KEY, DEV_SECRET, url_override=r.url)
        got: dict[tuple[str, int], list[Bar]] = {}
        for n, unit, ms in ((1, TimeFrameUnit.Minute, MINUTE), (5, TimeFrameUnit.Minute, 5 * MINUTE),
                            (1, TimeFrameUnit.Hour, 3_600_000)):  # fmt: skip
            tf = TimeFrame(n, unit)
            for client, req in (
                (stock, StockBarsRequest(symbol_or_symbols=STOCKS, timeframe=tf, start=_utc(start), end=_utc(end))),
                (crypto, CryptoBarsRequest(symbol_or_symbols=CRYPTO, timeframe=tf, start=_utc(start), end=_utc(end))),
            ):
                before = r.stats["requests"]
                bars = await asyncio.to_thread(
                    client.get_stock_bars if isinstance(client, StockHistoricalDataClient) else client.get_crypto_bars,
                    req,
                )
                pages = r.stats["requests"] - before
                total = sum(len(v) for v in bars.data.values())
                assert pages == -(-total // 10_000), (tf, pages, total)  # one request per page, no retry
                assert ms != MINUTE or pages >= 2, (tf, pages, total)
                for sym, lst in bars.data.items():
                    got[(sym, ms)] = lst
        # Daily bars: New York days for the stocks, UTC days for crypto, every whole one since start.
        day_req = {"stock": StockBarsRequest(symbol_or_symbols=STOCKS, timeframe=TimeFrame.Day, start=_utc(start)),
                   "crypto": CryptoBarsRequest(symbol_or_symbols=CRYPTO, timeframe=TimeFrame.Day, start=_utc(start))}  # fmt: skip
        days = (await asyncio.to_thread(stock.get_stock_bars, day_req["stock"])).data
        days |= (await asyncio.to_thread(crypto.get_crypto_bars, day_req["crypto"])).data
        requests, throttled = r.stats["requests"], r.stats["429"]
    finally:
        await r.stop()
    assert r.tape_path is not None and throttled == 0
    tape = rows_by_symbol(read_venue_tape(r.tape_path))
    bars_1m = 0
    for sym in STOCKS + CRYPTO:
        for ms in (MINUTE, 5 * MINUTE, 3_600_000):
            ref = [c for c in candles_from_tape(tape[sym], ms) if c.trades and start <= c.open_time <= end]
            bars = got[(sym, ms)]
            assert [_ms(b.timestamp) for b in bars] == [c.open_time for c in ref], (sym, ms)
            for b, c in zip(bars, ref, strict=True):
                assert b.symbol == sym
                _bar_matches(b, c)
        bars_1m += len(got[(sym, MINUTE)])
    assert bars_1m > 2 * 10_000, "the 1m requests span several pages for each kind"
    for sym in STOCKS + CRYPTO:
        day = "1d" if "/" in sym else "1d-new_york"
        ref = [
            c for c in candles_from_tape(tape[sym], day) if c.open_time >= start and next_open(c.open_time, day) <= now
        ]
        assert [_ms(b.timestamp) for b in days[sym]] == [c.open_time for c in ref] and len(ref) >= 3, (sym, day)
        for b, c in zip(days[sym], ref, strict=True):
            _bar_matches(b, c)
    print(f"\nalpaca-py historical: {requests} requests, {bars_1m} 1m bars equal the tape")
