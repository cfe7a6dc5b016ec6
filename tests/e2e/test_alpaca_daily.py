"""Alpaca's daily bars end to end: the engine collects New York days (a stock's own ``1Day`` bars and
``dailyBars``), UTC days (a crypto pair's own) and the other day of each (rolled up from hours) from
the Alpaca replica, with its faults on, across the night clocks went forward in New York (a 23-hour
day), streaming and, in a second run, polling the REST bars (``mode = "poll"``, the stock's own days
only). Every stored final daily candle equals the day computed independently from the replica's tape
(local midnights worked out with :mod:`zoneinfo`), field by field, over the whole stored window, and
the windows have no hole."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import signal
import time
from pathlib import Path

import pytest

from chaos import _first_status_ms, _settle, _wait_exit, alpaca_engine
from deltafeed.store.base import open_cold
from deltafeed.venues.alpaca.replica import FAULT_KINDS, AlpacaReplica
from reference import candles_from_tape, next_open, read_venue_tape, rows_by_symbol

HOUR = 3_600_000
#: 2026-03-08 22:00 New York (2026-03-09 02:00Z), the day clocks went forward: that day ends 23 hours
#: after it began, two hours after the start.
START_MS = int(dt.datetime(2026, 3, 9, 2, tzinfo=dt.UTC).timestamp() * 1000)
DST_DAY = int(dt.datetime(2026, 3, 8, 5, tzinfo=dt.UTC).timestamp() * 1000)  # its New York midnight
#: Per mode, the symbols and days collected: streaming makes both days of both kinds; polling reads
#: the venue's own daily bars only (a stock's New York day).
RUNS = {"stream": (("AAPL", "BTC/USD"), ("1d", "1d-new_york")), "poll": (("AAPL",), ("1d-new_york",))}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", list(RUNS))
async def test_daily_candles_equal_the_tape_across_a_dst_change_through_faults(tmp_path: Path, mode: str) -> None:
    symbols, days = RUNS[mode]
    tape, db, status = tmp_path / "tape.csv", str(tmp_path / "engine.duckdb"), tmp_path / "status.json"
    # 10 market minutes a wall second: the run passes the New York midnight 12 s in.
    replica = AlpacaReplica(
        symbols=symbols, seed=11, rate=0.1, speed=600.0, history_ms=3 * 24 * HOUR, tape=tape,
        start_ms=START_MS, faults={k: 12.0 for k in FAULT_KINDS}, faults_seed=3, slow_s=1.0,
    )  # fmt: skip
    await replica.start()
    try:
        proc = alpaca_engine(
            tmp_path, replica, list(symbols), ["1h", *days], "3d", f', mode = "{mode}", poll_every_s = 1'
        )
        assert await _first_status_ms(status, proc, replica.clock.now_ms, 60.0) is not None, "the engine never started"
        t0 = time.monotonic()
        while replica.clock.now_ms() < DST_DAY + 23 * HOUR + 3 * HOUR and time.monotonic() - t0 < 90:
            await asyncio.sleep(0.5)
        faults = replica.faults_injected()
        replica.faults = None  # the storm is over: the engine reconciles the days with the settled bars
        await _settle(status, 35.0, 60.0)
        proc.send_signal(signal.SIGTERM)
        assert await _wait_exit(proc, 20) == 0
        end_ms = replica.clock.now_ms()
        daily_sent = replica.stats["daily_bars"]
    finally:
        await replica.stop()

    tape_rows = rows_by_symbol(read_venue_tape(tape))
    store = await open_cold(db, read_only=True)
    compared = 0
    try:
        for sym in symbols:
            for tf in days:
                want = {c.open_time: c for c in candles_from_tape(tape_rows[sym], tf)}
                stored = await store.query(f"alpaca:{sym}", tf)
                assert stored, (sym, tf)
                opens = [c.open_time for c in stored]
                # No hole, no duplicate: each stored day opens where the previous one (by the tape's grid) ends.
                assert all(next_open(a, tf) == b for a, b in itertools.pairwise(opens)), (sym, tf, opens)
                for c in stored:
                    assert c.open_time in want, (sym, tf, c)
                    if not c.final:
                        continue
                    w = want[c.open_time]
                    got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
                    assert got == (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades), (sym, tf, c, w.row())
                    compared += 1
                finals = [c.open_time for c in stored if c.final]
                # The days before the run, and the one that ended while it streamed, are final.
                assert len(finals) >= 3, (sym, tf, finals)
                if tf == "1d-new_york":
                    assert DST_DAY in finals and next_open(DST_DAY, tf) - DST_DAY == 23 * HOUR, (sym, finals)
    finally:
        await store.close()
    print(
        f"\nalpaca daily ({mode}): {compared} final daily candles equal the tape over {len(symbols)} symbols x {days}; "
        f"faults {sum(faults.values())} {faults}; daily bars sent {daily_sent}; "
        f"market {(end_ms - START_MS) / HOUR:.1f} h"
    )
    # Polling, which opens no WebSocket, meets the REST faults; streaming nearly every kind besides.
    assert all(faults[k] >= 1 for k in ("http500", "http429", "slow")), faults
    assert mode == "poll" or sum(n >= 1 for n in faults.values()) >= 8, faults
    # Streaming subscribes dailyBars (the replica counts those it sends to a subscriber); polling has no stream.
    assert (daily_sent >= 1) is (mode == "stream"), daily_sent
