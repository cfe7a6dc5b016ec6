"""Closed means true: what the store calls final equals the venue's tape, whatever happens to the
venue; what deltafeed cannot vouch for (an outage, a stop during one, quotes without ids) is
provisional until it is verified, and becomes final after.

- Binance: the replica process is frozen (SIGSTOP) mid-run and the engine is stopped during the
  outage; then the venue comes back and a second run repairs everything.
- OANDA: quotes are dropped, repeated and reordered inside live connections; reconciliation with
  the venue's history makes every candle final and equal to the quote tape.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, Candle, series_key
from deltafeed.store.base import open_cold
from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica
from reference import candles_from_tape, quote_candles_from_tape, read_quote_tape, read_tape

TFS = ("15s", "1m")


def _fields(c: object) -> tuple[object, ...]:
    return (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)  # type: ignore[attr-defined]


async def _stored(db: str, key: str, tf: str) -> list[Candle]:
    store = await open_cold(db, read_only=True)
    try:
        return [c for c in await store.query(key, tf) if c.closed]
    finally:
        await store.close()


def _start_replica(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deltafeed",
            "replica",
            "binance",
            "--port",
            "0",
            "--symbols",
            "BTCUSDT",
            "--seed",
            "21",
            "--rate",
            "3",
            "--speed",
            "30",
            "--history",
            "20m",
            "--tape",
            str(tmp / "tape.csv"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    return proc, line.split()[-1]


@pytest.mark.parametrize("venue_klines", [False, True], ids=["trades-only", "with-klines"])
async def test_outage_candles_stay_provisional_until_the_venue_is_back(tmp_path: Path, venue_klines: bool) -> None:
    replica, url = _start_replica(tmp_path)
    db = str(tmp_path / "outage.duckdb")
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=list(TFS),
        history="20m",
        db=db,
        rest_url=url,
        ws_url=url.replace("http", "ws"),
        venue_klines=venue_klines,
        stale_after="1.5s",
        stop_grace="1s",
        api="off",
    ).validate()
    key = "binance:BTCUSDT"
    try:
        engine = Engine(settings)
        await engine.start()
        await asyncio.sleep(11.0)  # five market minutes: the venue clock has learnt the replica's speed
        os.kill(replica.pid, signal.SIGSTOP)  # the venue freezes: no data, no REST
        await asyncio.sleep(5.0)  # 2.5 market minutes: the timer closes candles it cannot vouch for
        await engine.stop()  # stopped during the outage
        last_trade_ms = engine.states[key].last_trade_ms
        during = engine.status()["instruments"][key]
        assert during["provisional"] > 0, during

        # What the first run stored: its final candles equal the tape, the outage is provisional.
        os.kill(replica.pid, signal.SIGCONT)
        await asyncio.sleep(1.0)  # the replica catches up its market (and its tape)
        first_run = {tf: await _stored(db, key, tf) for tf in TFS}

        second = Engine(settings)
        await second.start()
        await asyncio.sleep(5.0)
        await second.stop()
        end_status = second.status()["instruments"][key]
    finally:
        replica.send_signal(signal.SIGCONT)
        replica.terminate()
        replica.wait(10)

    rows = read_tape(tmp_path / "tape.csv")
    for tf in TFS:
        ms = TIMEFRAMES[tf]
        want = {c.open_time: c for c in candles_from_tape(rows, ms)}
        stored = first_run[tf]
        finals = [c for c in stored if c.final]
        assert finals, tf
        for c in finals:  # the whole stored window, not only before the marks
            assert c.open_time in want and _fields(c) == _fields(want[c.open_time]), (tf, c)
        # From the candle holding the last trade seen: closed by the timer, nothing vouches for them.
        outage = [c for c in stored if c.open_time >= last_trade_ms - last_trade_ms % ms]
        assert outage and not any(c.final for c in outage), (tf, outage[:3])

        # After the venue came back: one consecutive series, every candle final and equal to the tape
        # (but the last ones the second run's stop left forming or unconfirmed).
        after = await _stored(db, key, tf)
        keys = [c.open_time for c in after]
        assert keys == list(range(keys[0], keys[-1] + ms, ms)), tf
        settled = [c for c in after if c.open_time < keys[-1] - 2 * max(ms, 30_000)]
        assert settled and all(c.final for c in settled), (tf, [c for c in settled if not c.final][:3])
        assert not [c for c in settled if _fields(c) != _fields(want[c.open_time])], tf
    assert end_status["bootstrapped"] > 0  # the outage was fetched again from the venue's history


async def test_oanda_drop_dup_reorder_final_candles_equal_the_quote_tape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OANDA_TOKEN", DEV_TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    tape = tmp_path / "quotes.csv"
    monday_noon = 1_794_225_600_000  # 2026-11-09 12:00 UTC: the FX market is open
    replica = OandaReplica(
        symbols=["EUR_USD"],
        seed=5,
        rate=3.0,
        speed=30.0,
        history_ms=1_800_000,
        tape=str(tape),
        start_ms=monday_noon,
        heartbeat_s=0.5,
        faults={"drop": 20.0, "dup": 20.0, "reorder": 20.0},
        faults_seed=4,
    )
    await replica.start()
    db = str(tmp_path / "fx.duckdb")
    settings = Settings(
        venue="oanda",
        symbols=["EUR_USD"],
        timeframes=["15s", "1m"],
        prices=["mid", "bid"],
        history="30m",
        db=db,
        rest_url=replica.url,
        stream_url=replica.url,
        stale_after="3s",
        reconcile_every="1s",
        api="off",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(12.0)  # six market minutes
        injected = replica.faults_injected()
        await engine.stop()
    finally:
        await replica.stop()
    assert injected.get("drop", 0) + injected.get("dup", 0) + injected.get("reorder", 0) >= 3, injected
    status = engine.status()
    assert status["reconciled"] > 0
    assert status["corrected"] > 0  # the faults did change candles, and reconciliation caught them
    rows = [r for r in read_quote_tape(tape) if r.symbol == "EUR_USD"]
    for price in ("mid", "bid"):
        key = series_key("oanda:EUR_USD", price)
        for tf in ("15s", "1m"):
            ms = TIMEFRAMES[tf]
            want = {c.open_time: c for c in quote_candles_from_tape(rows, ms, price, FxCalendar())}
            stored = await _stored(db, key, tf)
            finals = [c for c in stored if c.final]
            assert len(finals) >= 0.8 * len(stored), (key, tf, len(finals), len(stored))
            bad = [
                (c, want.get(c.open_time))
                for c in finals
                if c.open_time not in want or _fields(c) != _fields(want[c.open_time])
            ]
            assert not bad, (key, tf, bad[:3])
