"""An Alpaca bootstrap against the replica stays at the page floor under the free plan's 200 requests a
minute: hours of 1m to 1h bars for stocks and crypto, one request per symbol, timeframe and 10 000-bar
page (plus the start-up check, one per kind), no 429, and every stored final candle equals the tape."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from chaos import WEDNESDAY_UTC
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, KEY_ENV, SECRET_ENV, codec
from deltafeed.venues.alpaca.replica import AlpacaReplica
from reference import candles_from_tape, read_venue_tape, rows_by_symbol

SYMBOLS = ["AAPL", "MSFT", "BTC/USD", "ETH/USD"]
TIMEFRAMES_USED = ["1m", "5m", "15m", "1h"]
HOURS = 6


async def test_bootstrap_pages_at_the_floor_without_a_429_and_equals_the_tape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(os.environ, KEY_ENV, DEV_KEY)
    monkeypatch.setitem(os.environ, SECRET_ENV, DEV_SECRET)
    # From the pre-market to the afternoon session of a Wednesday (New York): extended hours make candles too.
    replica = AlpacaReplica(
        symbols=SYMBOLS, seed=6, rate=0.5, speed=1.0, history_ms=(HOURS + 1) * 3_600_000, tape=tmp_path / "t.csv",
        start_ms=WEDNESDAY_UTC + 18 * 3_600_000 + 17 * 60_000,
    )  # fmt: skip
    await replica.start()
    try:
        settings = Settings(
            symbols=[f"alpaca:{s}" for s in SYMBOLS],
            timeframes=TIMEFRAMES_USED,
            history=f"{HOURS}h",
            db=str(tmp_path / "boot.duckdb"),
            venues={"alpaca": registry.get("alpaca").replica_settings(replica)},
        ).validate()
        engine = Engine(settings)
        now = replica.clock.now_ms()
        await engine.start()
        try:
            status = engine.status()["venues"]["alpaca"]
            made, throttled = status["rest_requests"], status["rest_throttled"]
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    # The floor: the check (one request per kind), then per symbol and timeframe one request per
    # 10 000 bars of the window asked for.
    per_symbol = 0
    for tf in TIMEFRAMES_USED:
        ms = TIMEFRAMES[tf]
        start = now - settings.history_ms
        per_symbol += math.ceil((now - start) // ms / codec.PAGE_LIMIT)
    floor = 2 + len(SYMBOLS) * per_symbol
    print(
        f"\nalpaca bootstrap: {made} requests, floor {floor}, throttled {throttled}, replica 429s {replica.stats['429']}"
    )
    assert throttled == 0 and replica.stats["429"] == 0
    assert floor <= made <= floor + len(SYMBOLS), (made, floor)
    assert made < codec.REQUESTS_PER_MIN

    assert replica.tape_path is not None
    tape = rows_by_symbol(read_venue_tape(replica.tape_path))
    cold = await open_cold(settings.db, read_only=True)
    compared = 0
    try:
        for sym in SYMBOLS:
            for tf in TIMEFRAMES_USED:
                ms = TIMEFRAMES[tf]
                want = {c.open_time: c for c in candles_from_tape(tape[sym], ms)}
                finals = [c for c in await cold.query(f"alpaca:{sym}", tf) if c.final]
                start = now - settings.history_ms
                # Everything the bootstrap asked for that had settled is final (a quiet market has no gaps).
                settled = [t for t in want if start - start % ms + ms <= t and t + ms + codec.SETTLE_MS <= now]
                assert {c.open_time for c in finals} >= set(settled), (sym, tf, len(finals), len(settled))
                for c in finals:
                    w = want[c.open_time]
                    assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                        w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades,
                    ), (sym, tf, c, w.row())  # fmt: skip
                    compared += 1
    finally:
        await cold.close()
    assert compared >= len(SYMBOLS) * HOURS * (60 + 12 + 4) - 4 * len(SYMBOLS) * len(TIMEFRAMES_USED)
    print(f"alpaca bootstrap: {compared} final candles equal the tape")
