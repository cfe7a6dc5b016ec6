"""The IB feed against the replica: bad input refused in one line (an unknown contract, no TWS on the
port), and the fallback to 5-second real-time bars when TWS refuses a tick-by-tick subscription
(error 10190), whose candles, once reconciled, equal the tape's."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import BadInput
from deltafeed.venues import registry
from deltafeed.venues.ib.replica import quote_tape_path
from reference import candles_from_tape, quote_candles_from_tape, read_quote_tape, read_venue_tape

#: Wednesday 2026-11-11 15:00 UTC: 10:00 in New York, the stock session is open.
START_MS = 1_794_355_200_000 + 15 * 3_600_000
SRC = str(Path(__file__).resolve().parents[2] / "src")


async def test_an_unknown_contract_is_refused_at_start_up(tmp_path: Path) -> None:
    venue = registry.get("ib")
    replica = venue.build_replica(symbols=["AAPL"], history_ms=600_000, start_ms=START_MS)
    await replica.start()
    try:
        settings = Settings(
            symbols=["ib:AAPL", "ib:MSFT"],
            timeframes=["1m"],
            history="5m",
            db=str(tmp_path / "x.duckdb"),
            venues={"ib": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        with pytest.raises(BadInput, match=r"IB gave no contract for ib:MSFT \(STK MSFT on SMART in USD\)"):
            await engine.start()
        await engine.stop()
    finally:
        await replica.stop()


async def test_more_instruments_than_market_data_lines_are_refused(tmp_path: Path) -> None:
    settings = Settings(
        symbols=["ib:AAPL", "ib:MSFT", "ib:EUR.USD"],
        timeframes=["1m"],
        db=str(tmp_path / "x.duckdb"),
        venues={"ib": {"tws_url": "tws://127.0.0.1:9", "tick_by_tick_lines": 1, "market_data_lines": 4}},
    ).validate()
    engine = Engine(settings)
    # AAPL streams tick by tick (1 line); MSFT on bars takes 1, EUR.USD on bars 3 (MID, BID, ASK).
    with pytest.raises(BadInput, match=r"need 5 market-data lines, more than the 4 of \[venues.ib\] market_data_lines"):
        await engine.start()
    await engine.stop()


async def test_a_client_id_in_use_is_refused_naming_the_setting(tmp_path: Path) -> None:
    from ib_async import IB

    venue = registry.get("ib")
    replica = venue.build_replica(symbols=["AAPL"], history_ms=600_000, start_ms=START_MS)
    await replica.start()
    other = IB()
    try:
        await other.connectAsync(replica.host, replica.port, clientId=17, timeout=5)  # deltafeed's default id
        settings = Settings(
            symbols=["ib:AAPL"],
            timeframes=["1m"],
            db=str(tmp_path / "x.duckdb"),
            venues={"ib": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        with pytest.raises(
            BadInput, match=r"refused client id 17 \(error 326: .*\); set another \[venues.ib\] client_id"
        ):
            await engine.start()
        await engine.stop()
    finally:
        other.disconnect()
        await replica.stop()


def test_no_tws_on_the_port_is_one_line_and_exit_code_69(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        'venue = "ib"\nsymbols = ["AAPL"]\ntimeframes = ["1m"]\n'
        f'db = "{tmp_path / "x.duckdb"}"\napi = "127.0.0.1:0"\nvenues = {{ib = {{tws_url = "tws://127.0.0.1:9"}}}}\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "deltafeed", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )
    assert proc.returncode == 69, proc.stderr  # unreachable, not bad usage: a supervisor retries
    # Only the API's start-up lines are logged before it: the problem is one line, no traceback.
    lines = [x for x in proc.stderr.strip().splitlines() if " INFO " not in x]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("deltafeed run: cannot reach TWS / IB Gateway at 127.0.0.1:9") and "tws_url" in lines[0]


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_a_refused_tick_by_tick_line_streams_real_time_bars_equal_to_the_tape(tmp_path: Path) -> None:
    venue = registry.get("ib")
    tape = tmp_path / "tape.csv"
    # TWS allows one tick-by-tick subscription here: the second instrument gets 10190 and falls back.
    replica = venue.build_replica(
        symbols=["AAPL", "MSFT"],
        rate=2.0,
        speed=60.0,
        history_ms=600_000,
        start_ms=START_MS,
        tape=tape,
        max_tick_by_tick=1,
    )
    await replica.start()
    try:
        settings = Settings(
            symbols=["ib:AAPL", "ib:MSFT"],
            timeframes=["1m"],
            history="5m",
            db=str(tmp_path / "x.duckdb"),
            reconcile_every="1s",
            venues={"ib": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            await asyncio.sleep(12.0)  # 12 market minutes
            status = engine.feeds["ib"].status()
            built = {k: st.trades for k, st in engine.states.items()}
            await engine.writer.flush()
            stored = {s: await engine.cold.query(f"ib:{s}", "1m") for s in ("AAPL", "MSFT")}
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    assert status["venue_errors"].get("10190") == 1 and replica.stats["real_time_bar_requests"] == 1
    assert built["ib:AAPL"] > 0 and built["ib:MSFT"] > 0  # both streamed, one of them as bars
    rows = read_venue_tape(tape)
    for sym, candles in stored.items():
        ref = {c.open_time: c for c in candles_from_tape([r for r in rows if r.symbol == sym], 60_000)}
        final = [c for c in candles if c.final]
        assert len(final) >= 12, (sym, len(final))
        for c in final:
            w = ref[c.open_time]
            assert (c.open, c.high, c.low, c.close, c.volume, c.trades) == (
                w.open,
                w.high,
                w.low,
                w.close,
                w.volume,
                w.trades,
            ), (sym, c.open_time)


async def test_timeframes_ib_has_no_bars_for_are_rolled_up_from_its_own(tmp_path: Path) -> None:
    """2m is an IB bar size; 4h is not (IB's hour bars follow sessions): the engine builds 4h from 1h."""
    venue = registry.get("ib")
    tape = tmp_path / "tape.csv"
    replica = venue.build_replica(symbols=["EUR.USD"], rate=0.5, history_ms=9 * 3_600_000, start_ms=START_MS, tape=tape)
    await replica.start()
    try:
        settings = Settings(
            symbols=["ib:EUR.USD"],
            timeframes=["2m", "4h"],
            history="8h",
            db=str(tmp_path / "x.duckdb"),
            venues={"ib": venue.replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            await engine.writer.flush()
            stored = {tf: await engine.cold.query("ib:EUR.USD", tf) for tf in ("2m", "4h")}
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    quotes = read_quote_tape(quote_tape_path(tape))
    for tf, ms in (("2m", 120_000), ("4h", 14_400_000)):
        ref = {c.open_time: c for c in quote_candles_from_tape(quotes, ms, "mid", FxCalendar())}
        final = [c for c in stored[tf] if c.final]
        assert len(final) >= (200 if tf == "2m" else 1), (tf, len(final))
        for c in final:
            w = ref[c.open_time]
            assert (c.open, c.high, c.low, c.close) == (w.open, w.high, w.low, w.close), (tf, c.open_time)
