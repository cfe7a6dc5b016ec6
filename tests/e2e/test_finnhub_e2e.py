"""End to end for Finnhub: the engine against the Finnhub replica (forex price updates and crypto
trades on one connection per key) with faults; stored candles equal candles computed from the tape."""

from __future__ import annotations

import asyncio
import csv
import logging
import re
from decimal import Decimal
from pathlib import Path

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.store.base import open_cold
from deltafeed.venues.finnhub.replica import FinnhubReplica
from settle import end_storm

FRIDAY_10H_NY = 1_794_582_000_000  # Friday 2026-11-13 10:00 America/New_York: FX open
SYMBOLS = ["OANDA:EUR_USD", "BINANCE:BTCUSDT"]
FAULTS = {"close": 6.0, "reset": 3.0, "stall": 3.0, "garbage": 6.0, "http500": 6.0}


def tape_candles(path: Path, symbol: str, tf_ms: int) -> dict[int, tuple[float, float, float, float, float]]:
    """(open, high, low, close, volume) per interval from the tape, in Decimal; a price update
    (volume 0) counts as one, as deltafeed counts forex updates."""
    out: dict[int, list[Decimal]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["symbol"] != symbol:
                continue
            t, p, v = int(row["time_ms"]), Decimal(row["price"]), Decimal(row["qty"])
            b = t - t % tf_ms
            c = out.get(b)
            if c is None:
                out[b] = [p, p, p, p, v or Decimal(1)]
            else:
                c[1], c[2], c[3] = max(c[1], p), min(c[2], p), p
                c[4] += v or Decimal(1)
    return {b: (float(o), float(h), float(lo), float(c), float(v)) for b, (o, h, lo, c, v) in out.items()}


async def test_finnhub_forex_and_crypto_with_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINNHUB_TOKEN", "test-key")
    tape = tmp_path / "finnhub.csv"
    replica = FinnhubReplica(
        symbols=SYMBOLS,
        seed=5,
        rate=2.0,
        speed=60.0,
        history_ms=3_600_000,
        start_ms=FRIDAY_10H_NY,
        tape=str(tape),
        calls_per_minute=600,
        faults=FAULTS,
        faults_seed=2,
    )
    await replica.start()
    settings = Settings(
        venue="finnhub",
        symbols=[f"finnhub:{s}" for s in SYMBOLS],
        timeframes=["1m", "5m"],
        history="1h",
        db=str(tmp_path / "fh.duckdb"),
        rest_url=replica.rest_url,
        ws_url=replica.ws_url,
        stale_after="2s",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(14.0)
        injected = await end_storm(replica, engine, quiet_s=3.0)
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()
    assert sum(injected.values()) >= 2, injected
    assert engine.status()["connects"] >= 2
    cold = await open_cold(settings.db, read_only=True)
    try:
        for sym in SYMBOLS:
            for tf, tf_ms in (("1m", 60_000), ("5m", 300_000)):
                want = tape_candles(tape, sym, tf_ms)
                stored = [
                    c
                    for c in await cold.query(f"finnhub:{sym}", tf)
                    if c.closed and c.open_time + tf_ms <= end_ms - 3 * tf_ms
                ]
                assert len(stored) >= 10, (sym, tf)
                keys = [c.open_time for c in stored]
                assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (sym, tf, "hole or duplicate")
                for c in stored:
                    assert (c.open, c.high, c.low, c.close, c.volume) == pytest.approx(want[c.open_time], rel=1e-9), (
                        sym,
                        tf,
                        c.open_time,
                    )
    finally:
        await cold.close()


THURSDAY_15H_NY = 1_794_513_600_000  # Thursday 2026-11-12 15:00 America/New_York (EST, 20:00 UTC)


async def test_a_stock_overnight_is_closed_not_a_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AAPL across Thursday's close and Friday's open: the night is the exchange's closure, so the
    audit finds no hole, no candle is made up for it, and the candles on both sides equal the tape."""
    monkeypatch.setenv("FINNHUB_TOKEN", "test-key")
    tape = tmp_path / "stock.csv"
    friday_open = THURSDAY_15H_NY + 18 * 3_600_000 + 30 * 60_000  # Friday 09:30 New York
    replica = FinnhubReplica(
        symbols=["AAPL"],
        seed=3,
        rate=1.0,
        speed=60.0,
        history_ms=18 * 3_600_000 + 40 * 60_000,
        start_ms=friday_open + 10 * 60_000,
        tape=str(tape),
        calls_per_minute=600,
    )
    await replica.start()
    settings = Settings(
        venue="finnhub",
        symbols=["finnhub:AAPL"],
        timeframes=["1m", "1h"],
        history="1d",
        db=str(tmp_path / "st.duckdb"),
        rest_url=replica.rest_url,
        ws_url=replica.ws_url,
        stale_after="3s",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(4.0)
        status = engine.status()
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()
    assert engine.audit_gaps == 0 and status["audit_gaps"] == 0
    cold = await open_cold(settings.db, read_only=True)
    try:
        stored = [
            c for c in await cold.query("finnhub:AAPL", "1m") if c.closed and c.open_time + 60_000 <= end_ms - 60_000
        ]
    finally:
        await cold.close()
    thursday_close = THURSDAY_15H_NY + 3_600_000
    keys = [c.open_time for c in stored]
    assert keys[0] <= THURSDAY_15H_NY and keys[-1] >= friday_open + 5 * 60_000
    assert not [k for k in keys if thursday_close <= k < friday_open], "a candle while the exchange was closed"
    session = [k for k in keys if k < thursday_close] + [k for k in keys if k >= friday_open]
    assert session == keys and keys == [
        k for k in range(keys[0], keys[-1] + 60_000, 60_000) if not thursday_close <= k < friday_open
    ], "a hole inside a session"
    want = tape_candles(tape, "AAPL", 60_000)
    for c in stored:
        assert (c.open, c.high, c.low, c.close, c.volume) == pytest.approx(want[c.open_time], rel=1e-9), c.open_time


ASKED = re.compile(r"audit: finnhub:BINANCE:BTCUSDT 1m has a hole from (\d+) to (\d+); fetching it")


async def test_quiet_minutes_are_asked_about_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Finnhub has no candle for a minute without trades: the audit asks about such a hole once, and
    once the answer is in and the hole is still there, it is a quiet minute, not asked about again."""
    monkeypatch.setenv("FINNHUB_TOKEN", "test-key")
    tape = tmp_path / "quiet.csv"
    replica = FinnhubReplica(
        symbols=["BINANCE:BTCUSDT"],
        seed=8,
        rate=0.004,
        speed=600.0,
        history_ms=3_600_000,
        start_ms=FRIDAY_10H_NY,
        tape=str(tape),
        calls_per_minute=600,
    )
    await replica.start()
    settings = Settings(
        venue="finnhub",
        symbols=["finnhub:BINANCE:BTCUSDT"],
        timeframes=["1m"],
        history="1h",
        db=str(tmp_path / "q.duckdb"),
        rest_url=replica.rest_url,
        ws_url=replica.ws_url,
        audit_every="1s",
        stale_after="30s",
    ).validate()
    caplog.set_level(logging.WARNING, logger="deltafeed")
    engine = Engine(settings)
    try:
        await engine.start()
        holes = engine.audit_gaps  # found by the start-up audit in the hour of history
        # The repairs answer nothing; later audits see the holes again, and once a hole is five market
        # minutes old (QUIET_SETTLE_MS: 0.5 s here) and was answered empty, it is a quiet stretch.
        await asyncio.sleep(4.0)
        quiet = engine.status()["quiet_holes"]
        audits, gaps = engine.audits, engine.audit_gaps
        await asyncio.sleep(3.0)
        assert engine.audits >= audits + 2
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()
    minutes_traded = {int(row.split(",")[2]) // 60_000 * 60_000 for row in tape.read_text().splitlines()[1:]}
    # A quiet market: most minutes of the history's hour had no trade (how many minutes the run itself
    # lasts depends on the machine's speed, so only the hour before the start is counted).
    assert holes >= 5 and len([m for m in minutes_traded if m < FRIDAY_10H_NY]) < 30
    # Each hole asked about once, not at every audit (at 600x new quiet minutes keep appearing, each
    # asked about once in its turn).
    asked = [m.groups() for r in caplog.records if (m := ASKED.search(r.getMessage()))]
    assert len(asked) == engine.audit_gaps >= gaps and len(set(asked)) == len(asked), asked
    cold = await open_cold(settings.db, read_only=True)
    try:
        left = await cold.find_gaps("finnhub:BINANCE:BTCUSDT", "1m", 60_000, 0, end_ms)
    finally:
        await cold.close()
    # Every hole still there is a quiet stretch of the tape; those older than five market minutes
    # when last audited are known as such (at least the history's).
    assert 5 <= quiet <= len(left)
    assert not [t for first, last in left for t in range(first, last + 1, 60_000) if t in minutes_traded]
