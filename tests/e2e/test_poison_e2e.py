"""End to end: the engine against each replica injecting ``poison`` frames over real sockets. No frame
may poison a series or end a stream: every poison is counted as skipped, trades keep arriving after
it on the same connection (or, for a TLCP line that broke the session's state, on the rebuilt
session), and the stored closed candles equal candles computed independently from the tape.

The poisons are the issue's: a Binance trade with ``"p":"NaN"`` carrying the id of the real trade sent
just after it (taken, it would make the real trade a duplicate); ``SUBCMD,1`` and a SUBOK for 60 million
fields inside a live IG session; Finnhub's ``{"type":"news",`` fragment and a trade with ``"p":1e400``
(which escaped the decoder and forced a reconnect each time).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_finnhub_e2e import FRIDAY_10H_NY, tape_candles

from deltafeed.candles.calendar import FxCalendar
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, series_key
from deltafeed.store.base import open_cold
from deltafeed.venues.binance.replica import BinanceReplica
from deltafeed.venues.finnhub.replica import FinnhubReplica
from deltafeed.venues.ig.feed import IGFeed
from deltafeed.venues.ig.replica import IGReplica
from reference import candles_from_tape, quote_candles_from_tape, read_quote_tape, read_tape
from settle import end_storm

POISON = {"poison": 40.0}  # per wall minute: a dozen or more in each run


async def test_binance_nan_trade_with_the_next_id_poisons_nothing(tmp_path: Path) -> None:
    """Trades only (no venue klines to paper over a wrong candle), so every candle is our own."""
    symbols = ["BTCUSDT", "ETHUSDT"]
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(
        symbols=symbols,
        seed=13,
        rate=4.0,
        speed=60.0,
        history_ms=3_600_000,
        tape=str(tape),
        faults=POISON,
        faults_seed=3,
    )
    await replica.start()
    settings = Settings(
        symbols=symbols,
        timeframes=["15s", "1m"],
        history="1h",
        db=str(tmp_path / "p.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        venue_klines=False,
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(12.0)
        injected = await end_storm(replica, engine, quiet_s=1.0)
        trades_after = {k: st.trades for k, st in engine.states.items()}
        await asyncio.sleep(1.5)  # the stream goes on after the last poison
        status = engine.status()
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()
    assert injected["poison"] >= 5, injected
    assert status["connects"] == 1, "a poison frame must not cost the connection"
    # A NaN price is refused by the decoder; an id far ahead is held as a suspect by the candle builder
    # (it never moves the continuity cursor, so no real trade is taken for a duplicate).
    nan = status["skipped_frames"].get("impossible_value", 0)
    suspects = sum(st.builder.suspect_trades for st in engine.states.values())
    assert nan and suspects and nan + suspects == injected["poison"], (status["skipped_frames"], suspects, injected)
    assert set(status["skipped_frames"]) == {"impossible_value"}, status["skipped_frames"]
    for key, st in engine.states.items():
        assert st.trades > trades_after[key] and st.builder.duplicates == 0 and st.builder.gaps == 0, key
    rows = read_tape(str(tape))
    cold = await open_cold(settings.db, read_only=True)
    try:
        for sym in symbols:
            for tf in ("15s", "1m"):
                tf_ms = TIMEFRAMES[tf]
                want = {c.open_time: c for c in candles_from_tape([r for r in rows if r.symbol == sym], tf_ms)}
                stored = [
                    c
                    for c in await cold.query(f"binance:{sym}", tf)
                    if c.closed and c.open_time + tf_ms <= end_ms - 2 * tf_ms
                ]
                assert len(stored) >= 60, (sym, tf, len(stored))
                keys = [c.open_time for c in stored]
                assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (sym, tf, "hole or duplicate")
                for c in stored:
                    w = want[c.open_time]
                    assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                        w.open,
                        w.high,
                        w.low,
                        w.close,
                        round(w.volume, 8),
                        w.trades,
                    ), (sym, tf, c.open_time)
                # Over the whole stored window, whatever the marks: every final candle equals the tape.
                for c in await cold.query(f"binance:{sym}", tf, final_only=True):
                    w = want[c.open_time]
                    assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                        w.open,
                        w.high,
                        w.low,
                        w.close,
                        round(w.volume, 8),
                        w.trades,
                    ), (sym, tf, c.open_time)
    finally:
        await cold.close()


async def test_finnhub_news_fragment_and_1e400_price_end_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FINNHUB_TOKEN", "test-key")
    symbols = ["OANDA:EUR_USD", "BINANCE:BTCUSDT"]
    tape = tmp_path / "finnhub.csv"
    replica = FinnhubReplica(
        symbols=symbols,
        seed=9,
        rate=2.0,
        speed=60.0,
        history_ms=3_600_000,
        start_ms=FRIDAY_10H_NY,
        tape=str(tape),
        calls_per_minute=600,
        faults=POISON,
        faults_seed=4,
    )
    await replica.start()
    settings = Settings(
        venue="finnhub",
        symbols=[f"finnhub:{s}" for s in symbols],
        timeframes=["1m", "5m"],
        history="1h",
        db=str(tmp_path / "fh.duckdb"),
        rest_url=replica.rest_url,
        ws_url=replica.ws_url,
        stale_after="3s",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(12.0)
        injected = await end_storm(replica, engine, quiet_s=1.0)
        trades_after = {k: st.trades for k, st in engine.states.items()}
        await asyncio.sleep(1.5)
        status = engine.status()
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()
    skipped = status["skipped_frames"]
    assert injected["poison"] >= 5, injected
    assert status["connects"] == 1, "a poison frame must not force a reconnect"
    # Each poison is one frame: a fragment (malformed) or one trade of 1e400 (impossible_value).
    assert (
        set(skipped) <= {"malformed", "impossible_value"}
        and skipped.get("malformed")
        and skipped.get("impossible_value")
    ), skipped
    assert sum(skipped.values()) == injected["poison"], (skipped, injected)
    for key, st in engine.states.items():
        assert st.trades > trades_after[key], key
    cold = await open_cold(settings.db, read_only=True)
    try:
        for sym in symbols:
            for tf, tf_ms in (("1m", 60_000), ("5m", 300_000)):
                want = tape_candles(tape, sym, tf_ms)
                stored = [
                    c
                    for c in await cold.query(f"finnhub:{sym}", tf)
                    if c.closed and c.open_time + tf_ms <= end_ms - 2 * tf_ms
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


async def test_ig_malformed_tlcp_lines_in_a_live_session_end_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SUBCMD,1`` (a COMMAND subscription this client never makes) is counted and skipped, the session
    goes on; a SUBOK claiming 60 million fields breaks the item's state, so the session is rebuilt (with
    backoff) and the hole repaired from IG's history. Streaming never stops."""
    for name in ("IG_API_KEY", "IG_USERNAME", "IG_PASSWORD"):
        monkeypatch.setenv(name, "test")
    epic = "CS.D.EURUSD.CFD.IP"
    tape = tmp_path / "ig.csv"
    replica = IGReplica(
        epics=[epic],
        seed=4,
        rate=2.0,
        speed=60.0,
        history_ms=3_600_000,
        start_ms=FRIDAY_10H_NY,
        tape=str(tape),
        faults={"poison": 20.0},
        faults_seed=5,
    )
    await replica.start()
    settings = Settings(
        venue="ig",
        symbols=[epic],
        timeframes=["1m", "5m"],
        prices=["mid", "bid"],
        history="1h",
        db=str(tmp_path / "ig.duckdb"),
        rest_url=replica.rest_url,
        stream_url=replica.url,
        stale_after="3s",
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(12.0)
        injected = await end_storm(replica, engine, quiet_s=4.0, timeout_s=150.0)
        feed = engine.feeds["ig"]
        assert isinstance(feed, IGFeed)
        quotes_after = feed.status()["frames"]
        await asyncio.sleep(1.5)
        status = feed.status()
        end_ms = replica.clock.now_ms()
        await engine.stop()
    finally:
        await replica.stop()
    skipped = status["skipped_frames"]
    subcmd, subok = skipped.get("tlcp_SUBCMD", 0), skipped.get("tlcp_SUBOK", 0)
    assert injected["poison"] >= 3 and subcmd + subok == injected["poison"], (skipped, injected)
    assert subcmd >= 1 and subok >= 1, skipped
    # Only the SUBOKs (state lost) rebuilt a session; every session ends on the same pool.
    assert skipped.get("tlcp_protocol_error", 0) == subok, skipped
    assert status["connects"] == 1 + subok and status["connected"], status
    assert status["frames"] > quotes_after, "updates go on after the last poison"
    rows = [r for r in read_quote_tape(tape) if r.symbol == epic]
    cold = await open_cold(settings.db, read_only=True)
    try:
        for side in ("mid", "bid"):
            for tf, tf_ms in (("1m", 60_000), ("5m", 300_000)):
                want = {c.open_time: c for c in quote_candles_from_tape(rows, tf_ms, side, FxCalendar())}
                stored = [
                    c
                    for c in await cold.query(series_key(f"ig:{epic}", side), tf)
                    if c.closed and c.open_time + tf_ms <= end_ms - 3 * tf_ms
                ]
                assert len(stored) >= 12, (side, tf, len(stored))
                keys = [c.open_time for c in stored]
                assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (side, tf)
                for c in stored:
                    w = want[c.open_time]
                    assert (c.open, c.close, c.volume) == pytest.approx((w.open, w.close, w.volume), rel=1e-12), (
                        side,
                        tf,
                        c.open_time,
                    )
                    if side == "mid":  # IG's history has no mid high/low: see test_ig_e2e
                        assert c.high >= w.high - 1e-12 and c.low <= w.low + 1e-12, (tf, c.open_time)
                    else:
                        assert (c.high, c.low) == pytest.approx((w.high, w.low), rel=1e-12), (tf, c.open_time)
    finally:
        await cold.close()
