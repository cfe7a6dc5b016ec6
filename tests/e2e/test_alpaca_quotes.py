"""Alpaca's ``quotes`` end to end: the engine collects the BID and ASK candles (``alpaca:AAPL@bid``,
``@ask``) of a stock and a crypto pair beside their trade candles, from the Alpaca replica with its
faults on, on the same connection per kind as the trades. Every stored final quote candle equals the
candle computed independently from the replica's quote tape, field by field, over the whole stored
window, and the window has no hole: the stream's candles became final only by the historical quotes
(``/v2/stocks/quotes``, ``/v1beta3/crypto/us/quotes``) that repairs and reconciliation fetch."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from pathlib import Path

import pytest

from chaos import _first_status_ms, _settle, _wait_exit, alpaca_engine
from deltafeed.candles.calendar import AlwaysOpen
from deltafeed.store.base import open_cold
from deltafeed.venues.alpaca.replica import FAULT_KINDS, AlpacaReplica
from reference import quote_candles_from_tape, read_quote_tape

MINUTE = 60_000
SYMBOLS = ("AAPL", "BTC/USD")
TIMEFRAMES = {"1m": MINUTE, "5m": 5 * MINUTE}


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_bid_and_ask_candles_equal_the_quote_tape_through_faults(tmp_path: Path) -> None:
    quote_tape, db, status = tmp_path / "quotes.csv", str(tmp_path / "engine.duckdb"), tmp_path / "status.json"
    # A market minute a wall second; half a quote a market second per symbol (30 a minute).
    replica = AlpacaReplica(
        symbols=SYMBOLS, seed=5, rate=0.2, quote_rate=0.5, speed=60.0, history_ms=30 * MINUTE,
        quote_tape=quote_tape, faults={k: 6.0 for k in FAULT_KINDS}, faults_seed=7, slow_s=0.5,
    )  # fmt: skip
    await replica.start()
    try:
        proc = alpaca_engine(tmp_path, replica, list(SYMBOLS), list(TIMEFRAMES), "20m", ', prices = ["bid", "ask"]')
        assert await _first_status_ms(status, proc, replica.clock.now_ms, 60.0) is not None, "the engine never started"
        t0 = time.monotonic()
        while time.monotonic() - t0 < 45:
            await asyncio.sleep(0.5)
        faults = replica.faults_injected()
        replica.faults = None  # the storm is over: the engine reconciles with the settled history
        await _settle(status, 35.0, 60.0)
        series = json.loads(status.read_text())["instruments"]
        quoted = [v for k, v in series.items() if "@" in k]
        reconciled, corrected = sum(v["reconciled"] for v in quoted), sum(v["corrected"] for v in quoted)
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 20) == 0
        quotes_sent = replica.stats["quotes"]
    finally:
        await replica.stop()

    rows = read_quote_tape(quote_tape)
    store = await open_cold(db, read_only=True)
    compared = 0
    try:
        for sym in SYMBOLS:
            mine = [r for r in rows if r.symbol == sym]
            for tf, tf_ms in TIMEFRAMES.items():
                trade_candles = await store.query(f"alpaca:{sym}", tf)
                assert trade_candles, (sym, tf)  # the plain name stays the trades'
                for side in ("bid", "ask"):
                    want = {c.open_time: c for c in quote_candles_from_tape(mine, tf_ms, side, AlwaysOpen())}
                    stored = await store.query(f"alpaca:{sym}@{side}", tf)
                    assert stored, (sym, tf, side)
                    opens = [c.open_time for c in stored]
                    assert all(b - a == tf_ms for a, b in itertools.pairwise(opens)), (sym, tf, side, "hole")
                    finals = [c for c in stored if c.final]
                    # The history and all but the last minutes of the run are final.
                    assert len(finals) >= len(stored) - 3, (sym, tf, side, len(finals), len(stored))
                    for c in finals:
                        w = want[c.open_time]
                        got = (c.open, c.high, c.low, c.close, c.volume, c.trades)
                        assert got == (w.open, w.high, w.low, w.close, w.volume, w.trades), (sym, tf, side, c, w.row())
                        compared += 1
    finally:
        await store.close()
    print(
        f"\nalpaca quotes: {compared} final bid/ask candles equal the quote tape ({len(rows)} quotes, "
        f"{quotes_sent} streamed); faults {sum(faults.values())} {faults}; "
        f"reconciled {reconciled}, corrected {corrected} (bid and ask series)"
    )
    assert quotes_sent > 0
    # Verified, not taken on trust: the quote series' candles were reconciled with the history.
    assert reconciled > 0
    assert all(faults[k] >= 1 for k in ("http500", "http429", "slow")), faults
    assert sum(n >= 1 for n in faults.values()) >= 7, faults
