"""End to end for forex: the engine against the OANDA replica over compressed time that crosses a
weekend, with faults injected; the stored MID and BID candles equal candles computed from the
replica's quote tape, the weekend holds no candle, and no gap is reported for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings, VenueSettings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, BadInput, series_key
from deltafeed.store.base import open_cold
from deltafeed.venues.binance.replica import BinanceReplica
from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica
from reference import quote_candles_from_tape, read_quote_tape
from settle import end_storm

SYMBOLS = ["EUR_USD", "USD_JPY"]
FRIDAY_16H_NY = 1_794_603_600_000  # Friday 2026-11-13 16:00 America/New_York (21:00 UTC)
HOUR = 3_600_000
# Faults that can happen to a TCP stream without sequence numbers, and to REST. A line lost, sent
# twice or swapped inside a live connection (drop, dup, reorder) cannot happen over TCP and could
# not be told from real quotes without ids, so they are not injected here.
FAULTS = {"close": 6.0, "reset": 3.0, "stall": 3.0, "garbage": 6.0, "http500": 6.0, "http429": 3.0}


async def test_forex_across_a_weekend_with_faults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OANDA_TOKEN", DEV_TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    tape = tmp_path / "quotes.csv"
    # 50 market hours (Friday 16:00 to Sunday 18:00 New York) in about 20 wall seconds.
    replica = OandaReplica(
        symbols=SYMBOLS,
        seed=7,
        rate=2.0,
        speed=9000.0,
        history_ms=HOUR,
        tape=str(tape),
        start_ms=FRIDAY_16H_NY,
        heartbeat_s=0.5,
        faults=FAULTS,
        faults_seed=3,
    )
    await replica.start()
    settings = Settings(
        venue="oanda",
        symbols=SYMBOLS,
        timeframes=["1m", "5m"],
        prices=["mid", "bid"],
        history="1h",
        db=str(tmp_path / "fx.duckdb"),
        rest_url=replica.url,
        stream_url=replica.url,
        stale_after="3s",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        while replica.clock.now_ms() < FRIDAY_16H_NY + 50 * HOUR:
            await asyncio.sleep(0.5)
        injected = await end_storm(replica, engine, quiet_s=4.0)
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()

    status = engine.status()
    assert sum(injected.values()) >= 3, injected
    assert status["connects"] >= 2  # the stream was closed by a fault and came back
    assert status["audit_gaps"] == 0
    calendar = FxCalendar()
    weekend = (FRIDAY_16H_NY + HOUR, FRIDAY_16H_NY + 49 * HOUR)  # Fri 17:00 to Sun 17:00 New York
    rows = read_quote_tape(tape)
    cold = await open_cold(settings.db, read_only=True)
    try:
        for sym in SYMBOLS:
            sym_rows = [r for r in rows if r.symbol == sym]
            assert sym_rows
            for side in ("mid", "bid"):
                key = series_key(f"oanda:{sym}", side)
                for tf in ("1m", "5m"):
                    tf_ms = TIMEFRAMES[tf]
                    want = {c.open_time: c for c in quote_candles_from_tape(sym_rows, tf_ms, side, calendar)}
                    stored = [c for c in await cold.query(key, tf) if c.closed and c.open_time + tf_ms < end_ms]
                    assert len(stored) > 50, (key, tf)
                    assert not [c for c in stored if weekend[0] <= c.open_time < weekend[1]], "a weekend candle"
                    provisional = 0
                    for c in stored:
                        w = want.get(c.open_time)
                        assert w is not None, (key, tf, c.open_time, c.state)
                        if not c.final:
                            # Not vouched for: at x9000 a reconciliation round (5 s) is 12 market hours,
                            # so the newest closed candles may still wait for theirs at the stop; those
                            # before and across the weekend may not.
                            assert c.open_time >= weekend[1], (key, tf, c.open_time, "provisional")
                            provisional += 1
                            continue
                        assert (c.open, c.high, c.low, c.close, c.trades, c.volume) == pytest.approx(
                            (w.open, w.high, w.low, w.close, w.trades, w.volume), rel=1e-12
                        ), (key, tf, c.open_time, c.state)
                    assert provisional < len(stored) // 2, (key, tf, provisional, len(stored))
                    # Every candle of the tape inside the stored span is stored: nothing missing.
                    first, last = stored[0].open_time, stored[-1].open_time
                    missing = [t for t in want if first <= t <= last and t not in {c.open_time for c in stored}]
                    assert not missing, (key, tf, missing[:5])
                    # The only hole between stored candles is the closed market.
                    for a, b in await cold.find_gaps(key, tf, tf_ms, 0, 2**62):
                        assert not calendar.open_between(a, b + tf_ms), (key, tf, a, b)
                    assert first < weekend[0] and last >= weekend[1], (key, tf, "not across the weekend")
    finally:
        await cold.close()


async def test_oanda_and_binance_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One engine, two venues: each with its own feed and clock, one store, one status."""
    monkeypatch.setenv("OANDA_TOKEN", DEV_TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    fx = OandaReplica(
        symbols=["EUR_USD"], seed=2, rate=4.0, speed=60.0, history_ms=HOUR, start_ms=FRIDAY_16H_NY - 3 * HOUR
    )
    crypto = BinanceReplica(symbols=["BTCUSDT"], seed=2, rate=4.0, speed=60.0, history_ms=HOUR)
    await fx.start()
    await crypto.start()
    settings = Settings(
        symbols=["binance:BTCUSDT", "oanda:EUR_USD"],
        timeframes=["1m"],
        history="1h",
        db=str(tmp_path / "both.duckdb"),
        venues={
            "binance": VenueSettings(rest_url=crypto.url, ws_url=crypto.ws_url),
            "oanda": VenueSettings(rest_url=fx.url, stream_url=fx.url, prices=["mid", "ask"]),
        },
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(4.0)
        status = engine.status()
        rows = {key: await engine.candles(key, "1m", limit=200) for key in engine.states}
        await engine.stop()
    finally:
        await fx.stop()
        await crypto.stop()
    assert set(engine.feeds) == {"binance", "oanda"}
    assert set(engine.states) == {"binance:BTCUSDT", "oanda:EUR_USD", "oanda:EUR_USD@ask"}
    venues = status["venues"]
    assert isinstance(venues, dict) and venues["binance"]["connected"] and venues["oanda"]["connected"]
    for key, candles in rows.items():
        assert len(candles) >= 60, key  # the bootstrapped hour and the streamed minutes
        assert all(c.trades > 0 for c in candles), key
    # Each venue keeps its own time: the FX replica's clock runs days behind the crypto one.
    fx_end = rows["oanda:EUR_USD"][-1].open_time
    assert fx_end < FRIDAY_16H_NY < rows["binance:BTCUSDT"][-1].open_time
    ask, mid = rows["oanda:EUR_USD@ask"][-2], rows["oanda:EUR_USD"][-2]
    assert ask.open_time == mid.open_time and ask.close > mid.close and ask.trades == mid.trades


def test_price_sides_are_configured_per_instrument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OANDA_TOKEN", DEV_TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    settings = Settings(
        venue="oanda",
        symbols=["EUR_USD", "USD_JPY", "GBP_USD"],
        timeframes=["1m"],
        db=":memory:",
        prices=["mid", "ask"],
        instrument_prices={"USD_JPY": ["bid"], "oanda:GBP_USD": ["ask", "mid"]},
    ).validate()
    engine = Engine(settings)
    assert sorted(engine.states) == [
        "oanda:EUR_USD",
        "oanda:EUR_USD@ask",
        "oanda:GBP_USD",
        "oanda:GBP_USD@ask",
        "oanda:USD_JPY@bid",
    ]
    with pytest.raises(BadInput, match="does not collect"):
        Settings(venue="oanda", symbols=["EUR_USD"], instrument_prices={"AUD_USD": ["bid"]}).validate()
    with pytest.raises(BadInput, match="use some of mid, bid, ask"):
        Settings(venue="oanda", symbols=["EUR_USD"], instrument_prices={"EUR_USD": ["last"]}).validate()
    monkeypatch.delenv("OANDA_TOKEN")
    with pytest.raises(BadInput, match="set OANDA_TOKEN"):
        Engine(settings)
