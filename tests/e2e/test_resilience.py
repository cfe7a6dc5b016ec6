"""The engine against the replica's faults one kind at a time, and against a store that goes away."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.store.cold import ColdStore
from deltafeed.venues.binance.replica import BinanceReplica
from reference import candles_from_tape, read_tape


def settings_for(replica: BinanceReplica, tmp_path: Path, **kw: object) -> Settings:
    base: dict[str, object] = {
        "symbols": ["BTCUSDT", "ETHUSDT"],
        "timeframes": ["1m", "5m"],
        "history": "30m",
        "db": str(tmp_path / "r.duckdb"),
        "rest_url": replica.url,
        "ws_url": replica.ws_url,
    }
    base.update(kw)
    return Settings(**base).validate()  # type: ignore[arg-type]


def assert_store_equals_tape(db: str, tape: Path, symbols: list[str], until_ms: int) -> int:
    rows = read_tape(str(tape))
    store = ColdStore.open_reader(db)
    n = 0
    try:
        for sym in symbols:
            want = {c.open_time: c for c in candles_from_tape([r for r in rows if r[0] == sym], 60_000)}
            stored = [c for c in store.query(f"binance:{sym}", "1m") if c.closed and c.open_time < until_ms]
            keys = [c.open_time for c in stored]
            assert keys == list(range(keys[0], keys[-1] + 60_000, 60_000))
            for c in stored:
                w = want[c.open_time]
                assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                    w.open,
                    w.high,
                    w.low,
                    w.close,
                    round(w.volume, 8),
                    w.trades,
                ), (sym, c.open_time)
                n += 1
    finally:
        store.close()
    return n


async def test_server_shutdowns_rotate_the_connection_without_a_gap(tmp_path: Path) -> None:
    async with BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT"],
        rate=5.0,
        speed=30.0,
        history_ms=1_800_000,
        faults={"shutdown": 20.0},
        faults_seed=3,
        shutdown_grace_s=2.0,
    ) as replica:
        engine = Engine(settings_for(replica, tmp_path))
        await engine.start()
        await asyncio.sleep(12.0)
        await engine.stop()
        injected = replica.faults_injected()["shutdown"]
    status = engine.status()
    assert injected >= 2 and status["rotations"] >= 2
    assert status["reconnects"] == 0  # every connection was replaced before the venue closed it
    for st in engine.states.values():
        assert st.builder.gaps == 0, "a rotation lost trades"
        assert st.builder.duplicates > 0  # the overlap delivered trades twice, counted once


async def test_a_store_locked_by_another_process_loses_nothing(tmp_path: Path) -> None:
    tape = tmp_path / "tape.csv"
    async with BinanceReplica(
        symbols=["BTCUSDT"], rate=4.0, speed=60.0, history_ms=1_800_000, tape=str(tape)
    ) as replica:
        settings = settings_for(replica, tmp_path, symbols=["BTCUSDT"])
        engine = Engine(settings)
        await engine.start()
        await asyncio.sleep(2.0)
        # Another program opens the database file for writing and holds it for 4 seconds.
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(4)",
                settings.db,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        reasons: list[str] = []
        for _ in range(30):
            await asyncio.sleep(0.1)
            reasons += engine.health()
        assert any("cold store" in r for r in reasons), reasons
        holder.wait(10)
        await asyncio.sleep(4.0)
        assert not any("cold store" in r for r in engine.health())
        await engine.stop()
        end = replica.clock.now_ms()
    assert engine.writer.failures >= 1 and engine.writer.pending == 0
    assert assert_store_equals_tape(settings.db, tape, ["BTCUSDT"], end - 2 * 60_000) >= 35


async def test_an_instrument_silent_while_its_market_is_open_is_unhealthy(tmp_path: Path) -> None:
    async with BinanceReplica(symbols=["BTCUSDT"], rate=0.0005, speed=1.0, history_ms=3_600_000) as replica:
        engine = Engine(settings_for(replica, tmp_path, symbols=["BTCUSDT"], venue_klines=False, unhealthy_after="1s"))
        await engine.start()
        try:
            await asyncio.sleep(0.5)
            assert not any("stale" in r for r in engine.health())
            await asyncio.sleep(1.5)
            reasons = engine.health()
        finally:
            await engine.stop()
    assert any("binance:BTCUSDT stale" in r for r in reasons), reasons
    assert engine.status()["healthy"] is False
