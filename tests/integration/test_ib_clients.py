"""``ib_async`` (the maintained successor of ib_insync) against the IB replica with only host and port
changed, judged by the replica's tape: connect (no start-up timeouts), ``reqHistoricalData`` for a
stock (TRADES) and a forex pair (MIDPOINT), with ``keepUpToDate`` updates (msg 90), tick-by-tick
AllLast and BidAsk, 5-second real-time bars, and pacing violations (error 162) when ib_async breaks
IB's rules. ib_async stamps tick-by-tick ticks with its own arrival time, so ticks are compared by
price and size, in order, as a contiguous run of the tape."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from ib_async import IB, Forex, Future, Stock

from deltafeed.candles.calendar import FxCalendar
from deltafeed.replicas.options import ReplicaOptions
from deltafeed.venues.ib.replica import IbReplica, quote_tape_path
from reference import candles_from_tape, quote_candles_from_tape, read_quote_tape, read_venue_tape

#: Wednesday 2026-11-11 15:00 UTC: 10:00 in New York, the stock session and the FX week are open.
START_MS = 1_794_355_200_000 + 15 * 3_600_000


async def _replica(tmp_path: Path, **kw: object) -> IbReplica:
    r = IbReplica(
        options=ReplicaOptions(
            symbols=("AAPL", "EUR.USD", "ES.202703"),
            seed=3,
            rate=4.0,
            speed=20.0,
            start_ms=START_MS,
            history_ms=30 * 60_000,
            tape=tmp_path / "tape.csv",
        ),
        **kw,  # type: ignore[arg-type]
    )
    await r.start()
    return r


def _run(seq: list[tuple[float, float]], tape: list[tuple[float, float]]) -> None:
    """``seq`` is a contiguous run of ``tape``."""
    assert seq, "nothing received"
    starts = [i for i in range(len(tape)) if tape[i] == seq[0]]
    assert any(tape[i : i + len(seq)] == seq for i in starts), (seq[:5], len(seq))


@pytest.mark.timeout(90)
async def test_ib_async_connects_and_gets_history_ticks_and_bars_equal_to_the_tape(tmp_path: Path) -> None:
    r = await _replica(tmp_path)
    ib = IB()
    aapl, eur = Stock("AAPL", "SMART", "USD"), Forex("EURUSD")
    stock_ticks: list[tuple[float, float]] = []
    quotes: list[tuple[float, float]] = []
    try:
        t0 = time.monotonic()
        await ib.connectAsync(r.host, r.port, clientId=7, timeout=5)
        assert time.monotonic() - t0 < 2.0  # every start-up request was answered: no 4 s timeouts
        assert ib.managedAccounts() == ["DU1234567"] and ib.client.serverVersion() >= 157
        await ib.qualifyContractsAsync(aapl, eur)  # ib_async needs conIds for tick-by-tick tickers
        assert aapl.conId and eur.conId and eur.secType == "CASH"
        [details] = await ib.reqContractDetailsAsync(aapl)
        assert details.contract is not None and details.contract.conId > 0 and details.timeZoneId == "US/Eastern"
        assert await ib.reqContractDetailsAsync(Stock("NOSUCH", "SMART", "USD")) == []

        hist = await ib.reqHistoricalDataAsync(aapl, "", "1800 S", "1 min", "TRADES", False, formatDate=2)
        es = Future("ES", "202703", "CME")
        await ib.qualifyContractsAsync(es)
        # ib_async's default formatDate=1: dates as text with their zone.
        fut = await ib.reqHistoricalDataAsync(es, "", "1800 S", "5 mins", "TRADES", False)
        fx = await ib.reqHistoricalDataAsync(eur, "", "1800 S", "1 min", "MIDPOINT", False, formatDate=2)
        now_ms = r.now_ms()

        def on_pending(tickers: set[object]) -> None:
            for tk in tickers:
                for t in tk.tickByTicks:  # type: ignore[attr-defined]
                    if hasattr(t, "bidPrice"):
                        quotes.append((t.bidPrice, t.askPrice))
                    else:
                        stock_ticks.append((t.price, t.size))

        ib.pendingTickersEvent += on_pending
        ib.reqTickByTickData(aapl, "AllLast")
        ib.reqTickByTickData(eur, "BidAsk")
        rtb = ib.reqRealTimeBars(aapl, 5, "TRADES", False)
        live = await ib.reqHistoricalDataAsync(
            aapl, "", "300 S", "1 min", "TRADES", False, formatDate=2, keepUpToDate=True
        )
        await asyncio.sleep(4.0)  # 80 market seconds: a minute ends
        ib.cancelTickByTickData(aapl, "AllLast")
        ib.cancelTickByTickData(eur, "BidAsk")
        ib.cancelRealTimeBars(rtb)
        await asyncio.sleep(1.0)  # the last whole seconds in flight
        last_live = live[-2]  # the newest bar that has ended (the last one still forms)
        live_opens = [b.date for b in live]
        ib.cancelHistoricalData(live)
    finally:
        ib.disconnect()
        await r.stop()

    trades = [t for t in read_venue_tape(tmp_path / "tape.csv") if t.symbol == "AAPL"]
    fxq = [q for q in read_quote_tape(quote_tape_path(tmp_path / "tape.csv")) if q.symbol == "EUR.USD"]
    assert trades and fxq and all(t.time_ms % 1000 == 0 for t in trades)  # IB's resolution: whole seconds

    # History: every bar equals the tape's candle, field by field (the forming last one aside).
    ref = {c.open_time: c for c in candles_from_tape(trades, 60_000)}
    closed = [b for b in hist if int(b.date.timestamp() * 1000) + 60_000 <= now_ms]
    assert len(closed) >= 28
    for b in closed:
        c = ref[int(b.date.timestamp() * 1000)]
        assert (b.open, b.high, b.low, b.close, b.volume, b.barCount) == (
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.trades,
        )
    futures = [t for t in read_venue_tape(tmp_path / "tape.csv") if t.symbol == "ES.202703"]
    ref_es = {c.open_time: c for c in candles_from_tape(futures, 300_000)}
    fut_closed = [b for b in fut if int(b.date.timestamp() * 1000) + 300_000 <= now_ms]
    assert es.conId and len(fut_closed) >= 5
    for b in fut_closed:
        c = ref_es[int(b.date.timestamp() * 1000)]
        assert (b.open, b.high, b.low, b.close, b.volume, b.barCount) == (
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.trades,
        )
    fref = {c.open_time: c for c in quote_candles_from_tape(fxq, 60_000, "mid", FxCalendar())}
    fclosed = [b for b in fx if int(b.date.timestamp() * 1000) + 60_000 <= now_ms]
    assert len(fclosed) >= 28
    for b in fclosed:
        c = fref[int(b.date.timestamp() * 1000)]
        assert (b.open, b.high, b.low, b.close) == (c.open, c.high, c.low, c.close)
        assert b.volume == -1 and b.barCount == -1  # IB has no volume for MIDPOINT bars

    # Tick by tick: contiguous runs of the tape, in order.
    _run(stock_ticks, [(float(t.price), float(t.qty)) for t in trades])
    _run(quotes, [(float(q.bid), float(q.ask)) for q in fxq])

    # Real-time bars: 5-second candles of the tape.
    ref5 = {c.open_time: c for c in candles_from_tape(trades, 5_000)}
    assert len(rtb) >= 4
    for b in rtb:
        c = ref5[int(b.time.timestamp() * 1000)]
        assert (b.open_, b.high, b.low, b.close, b.volume, b.count) == (
            c.open,
            c.high,
            c.low,
            c.close,
            c.volume,
            c.trades,
        )

    # keepUpToDate: updates (msg 90, its own field order) made the bars of the minutes that passed,
    # and the newest ended one equals the tape's.
    assert r.stats["updates_sent"] > 0 and len(live_opens) == len(set(live_opens))
    assert int(live[-1].date.timestamp() * 1000) > max(
        ref_open for ref_open in [int(b.date.timestamp() * 1000) for b in hist]
    )
    c = ref[int(last_live.date.timestamp() * 1000)]
    assert (last_live.open, last_live.high, last_live.low, last_live.close, last_live.volume) == (
        c.open,
        c.high,
        c.low,
        c.close,
        c.volume,
    )


@pytest.mark.timeout(60)
async def test_breaking_ibs_pacing_rules_gets_error_162(tmp_path: Path) -> None:
    r = await _replica(tmp_path)
    ib = IB()
    errors: list[int] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append(code)
    try:
        await ib.connectAsync(r.host, r.port, clientId=8, timeout=5)
        aapl = Stock("AAPL", "SMART", "USD")
        # Small bars (<= 30 s): the second identical request within 15 s is a pacing violation.
        first = await ib.reqHistoricalDataAsync(aapl, "", "60 S", "1 secs", "TRADES", False, formatDate=2)
        again = await ib.reqHistoricalDataAsync(aapl, "", "60 S", "1 secs", "TRADES", False, formatDate=2, timeout=5)
        # Large bars have no published limit: identical requests are served.
        big = [
            await ib.reqHistoricalDataAsync(aapl, "", "600 S", "1 min", "TRADES", False, formatDate=2) for _ in range(3)
        ]
    finally:
        ib.disconnect()
        await r.stop()
    assert first and not again and all(big)
    assert 162 in errors and r.stats["pacing_violations"] == 1
