"""The ccxt venue bootstraps from each replica ccxt can read (Binance, Coinbase, Bybit, Hyperliquid,
Kraken) through ccxt's ``fetch_ohlcv`` under ccxt's own rate limiter: every stored candle equals the
candle computed from the replica's tape (open, high, low, close, volume; OHLCV rows carry no trade
count), over the whole window asked for, with zero 429s at the replica. Then the start-up check's
one-line refusals (unknown exchange, unknown symbol, a timeframe the exchange cannot serve)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from chaos import compare_finals_with_tape
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, BadInput, Instrument
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from deltafeed.venues.ccxt.bridge import base_timeframe
from helpers import until
from reference import candles_from_tape, read_venue_tape

#: Per replica: (its symbol on the tape, ccxt's unified symbol).
MARKETS = {
    "binance": ("BTCUSDT", "BTC/USDT"),
    "coinbase": ("BTC-USD", "BTC/USD"),
    "bybit": ("BTCUSDT", "BTC/USDT"),
    "hyperliquid": ("BTC", "BTC/USDC:USDC"),
    "kraken": ("BTC/USD", "BTC/USD"),
}
HISTORY_MS = 3 * 3_600_000
TFS = ["1m", "5m", "1h"]


def throttled(replica: Any) -> int:
    """The replica's own count of requests it refused for the rate limit (named per venue)."""
    stats = replica.stats
    return sum(int(stats.get(k, 0)) for k in ("429", "throttled", "403"))


async def start_replica(exchange: str, tmp_path: Path, history_ms: int = HISTORY_MS, **kw: Any) -> Any:
    kw = {"symbols": [MARKETS[exchange][0]], "rate": 1.0} | kw
    replica = registry.get(exchange).build_replica(seed=5, history_ms=history_ms, tape=tmp_path / "tape.csv", **kw)
    await replica.start()
    return replica


def ccxt_settings(
    replica: Any,
    tmp_path: Path,
    symbols: list[str],
    timeframes: list[str],
    history: str = "2h",
    ccxt: dict[str, Any] | None = None,
    **kw: Any,
) -> Settings:
    """Settings collecting ``symbols`` through ccxt from ``replica``; ``ccxt``: more ``[venues.ccxt]`` keys."""
    return Settings(
        symbols=symbols,
        timeframes=timeframes,
        history=history,
        db=str(tmp_path / "boot.duckdb"),
        venues={"ccxt": registry.get("ccxt").replica_settings(replica) | (ccxt or {})},
        **kw,
    ).validate()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("exchange", list(MARKETS))
async def test_bootstrap_through_ccxt_equals_the_tape_without_a_429(exchange: str, tmp_path: Path) -> None:
    tape_symbol, unified = MARKETS[exchange]
    replica = await start_replica(exchange, tmp_path)
    instrument = f"ccxt:{exchange}:{unified}"
    try:
        engine = Engine(ccxt_settings(replica, tmp_path, [instrument], TFS))
        await engine.start()
        try:
            now = engine.feeds["ccxt"].clock.now_ms()
            report = engine.feeds["ccxt"].report()
            await engine.writer.flush()
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    assert throttled(replica) == 0 and report.rest_throttled == 0, (replica.stats, report)
    rows = [r for r in read_venue_tape(tmp_path / "tape.csv") if r.symbol == tape_symbol]
    store = await open_cold(str(tmp_path / "boot.duckdb"), read_only=True)
    try:
        key = str(engine.states[next(iter(engine.states))].key)
        for tf in TFS:
            ms = TIMEFRAMES[tf]
            want = {c.open_time: c for c in candles_from_tape(rows, ms)}
            stored = await store.query(key, tf)
            final = [c for c in stored if c.final]
            # Everything closed within the 2 hours asked for came from fetch_ohlcv, and is final.
            first = now - 2 * 3_600_000
            first -= first % ms
            expected = [t for t in want if first <= t and t + ms <= now - ms]
            have = {c.open_time for c in final}
            print(f"{exchange} {tf}: {len(final)} final candles equal the tape, {len(expected)} expected")
            assert set(expected) <= have, (tf, sorted(set(expected) - have)[:5])
            for c in final:
                w = want.get(c.open_time)
                assert w is not None, (tf, c)
                got = (c.open, c.high, c.low, c.close, round(c.volume, 8))
                assert got == (w.open, w.high, w.low, w.close, round(w.volume, 8)), (tf, c, w)
    finally:
        await store.close()


async def test_check_refuses_what_ccxt_cannot_serve_in_one_line(tmp_path: Path) -> None:
    replica = await start_replica("kraken", tmp_path)
    try:
        cases = [
            (["ccxt:krakn:BTC/USD"], ["1m"], "ccxt has no streaming exchange 'krakn' (did you mean kraken"),
            (["ccxt:kraken:BTC/USDX"], ["1m"], "unknown symbol(s) on ccxt kraken"),
            (["ccxt:kraken:BTC/USD"], ["1s"], "ccxt's kraken cannot serve 1s candles"),
            (["ccxt:kraken"], ["1m"], "is not EXCHANGE:SYMBOL"),
        ]
        for symbols, tfs, says in cases:
            with pytest.raises(BadInput) as err:
                engine = Engine(ccxt_settings(replica, tmp_path, symbols, tfs))
                try:
                    await engine.start()
                finally:
                    await engine.stop()
            text = str(err.value)
            assert says in text and "\n" not in text, text
    finally:
        await replica.stop()


async def _bootstrap(
    exchange: str, tmp_path: Path, tfs: list[str], history: str, history_ms: int, ccxt: dict[str, Any] | None = None
) -> tuple[Engine, int, Any]:
    """Bootstrap one ``ccxt:<exchange>`` instrument from a replica holding ``history_ms`` of
    history; the engine (stopped), the venue's time after the bootstrap and the feed's report then."""
    replica = await start_replica(exchange, tmp_path, history_ms=history_ms)
    try:
        instrument = f"ccxt:{exchange}:{MARKETS[exchange][1]}"
        engine = Engine(ccxt_settings(replica, tmp_path, [instrument], tfs, history, ccxt))
        await engine.start()
        try:
            now = engine.feeds["ccxt"].clock.now_ms()
            report = engine.feeds["ccxt"].report()
            await engine.writer.flush()
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    assert throttled(replica) == 0, replica.stats
    return engine, now, report


async def _stored_against_tape(exchange: str, tmp_path: Path, key: str, tf: str) -> list[Any]:
    """The stored candles of ``tf``, each final one asserted equal to the tape's, field by field."""
    rows = [r for r in read_venue_tape(tmp_path / "tape.csv") if r.symbol == MARKETS[exchange][0]]
    want = {c.open_time: c for c in candles_from_tape(rows, TIMEFRAMES[tf])}
    store = await open_cold(str(tmp_path / "boot.duckdb"), read_only=True)
    try:
        stored = await store.query(key, tf)
    finally:
        await store.close()
    for c in stored:
        w = want.get(c.open_time)
        if c.final:
            assert w is not None, (tf, c)
            got = (c.open, c.high, c.low, c.close, round(c.volume, 8))
            assert got == (w.open, w.high, w.low, w.close, round(w.volume, 8)), (tf, c, w)
    return stored


@pytest.mark.timeout(90)
async def test_a_timeframe_the_exchange_lacks_is_rolled_up_equal_to_the_tape(tmp_path: Path) -> None:
    """Coinbase serves no 4h candles: ccxt's 1h rows are rolled up, and equal the tape's 4h candles."""
    import ccxt

    assert base_timeframe("4h", ccxt.coinbase().timeframes) == "1h"  # rolled up, not fetched
    engine, _, _ = await _bootstrap("coinbase", tmp_path, ["1h", "4h"], "13h", 14 * 3_600_000)
    key = str(next(iter(engine.states)))
    stored = await _stored_against_tape("coinbase", tmp_path, key, "4h")
    final = [c for c in stored if c.final]
    # 13 hours back: the three 4h candles wholly within them and closed are final.
    assert len(final) >= 2, stored
    print(f"coinbase 4h rolled up from 1h: {len(final)} final candles equal the tape")


@pytest.mark.timeout(90)
async def test_a_history_cap_is_reported_once_and_nothing_older_is_final(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exchange that serves only its newest rows (``history_rows``; Hyperliquid's 5000 built in,
    here Binance's replica said to keep 120): asked for 3 hours of 1m candles, the feed says so once
    (log and status ``history_from``), stores from the cap on, and a repair older than the cap is
    dropped rather than waited for: no candle before the cap is final."""
    caplog.set_level(logging.WARNING)
    engine, now, report = await _bootstrap(
        "binance", tmp_path, ["1m"], "3h", 4 * 3_600_000, ccxt={"history_rows": {"binance": 120}}
    )
    capped = report.history_from
    assert capped is not None and "binance:1m" in capped, capped
    since = capped["binance:1m"]
    assert now - since <= 120 * 60_000, (now, since)
    said = [r.getMessage() for r in caplog.records if "serves only its newest 120 1m rows" in r.getMessage()]
    assert len(said) == 1, said
    key = str(next(iter(engine.states)))
    stored = await _stored_against_tape("binance", tmp_path, key, "1m")
    # (The cap moves on with the venue's clock: the bootstrap's, a little earlier, is the bound.)
    assert stored and min(c.open_time for c in stored) >= since - 2 * 60_000, (stored[0], since)
    assert sum(c.final for c in stored) >= 110
    # What the cap hides is never asked for again: a repair before it is dropped, not queued forever.
    st = engine.states[key]
    from deltafeed.engine.completeness import Repair

    old = Repair(key, "1m", since - 3_600_000, since - 1_800_000, 0.0)
    assert engine.completeness._within_history(st, old) is False


@pytest.mark.timeout(120)
async def test_kraken_history_older_than_its_720_ohlc_rows_is_built_from_its_trades(tmp_path: Path) -> None:
    """Kraken's OHLC serves only its newest 720 rows: asked for 13 hours of 1m candles through ccxt,
    the hour before them is built from ``fetch_trades`` paged by ``since``. Every candle of the 13
    hours is stored final and equals the tape's, trade counts included where built from trades; no
    cap is reported, and a repair that old is fetched, not dropped."""
    engine, now, report = await _bootstrap("kraken", tmp_path, ["1m"], "13h", 14 * 3_600_000)
    assert not report.history_from, report.history_from
    key = str(next(iter(engine.states)))
    stored = await _stored_against_tape("kraken", tmp_path, key, "1m")
    rows = [r for r in read_venue_tape(tmp_path / "tape.csv") if r.symbol == MARKETS["kraken"][0]]
    want = {c.open_time: c for c in candles_from_tape(rows, 60_000)}
    first = now - 13 * 3_600_000
    first -= first % 60_000
    cap = now - now % 60_000 - 719 * 60_000  # the oldest OHLC row at the end of the bootstrap
    final = {c.open_time: c for c in stored if c.final}
    expected = [t for t in want if first + 60_000 <= t < now - 120_000]
    assert set(expected) <= set(final), sorted(set(expected) - set(final))[:5]
    older = [final[t] for t in expected if t < cap - 2 * 60_000]
    assert len(older) >= 55, len(older)  # about an hour from trades
    assert all(c.trades == want[c.open_time].trades for c in older), [
        (c.open_time, c.trades, want[c.open_time].trades) for c in older if c.trades != want[c.open_time].trades
    ][:5]
    st = engine.states[key]
    from deltafeed.engine.completeness import Repair

    assert engine.completeness._within_history(st, Repair(key, "1m", first, first + 600_000, 0.0)) is True
    print(f"kraken 1m: {len(final)} final candles equal the tape, {len(older)} of them built from trades")


@pytest.mark.timeout(90)
async def test_a_frame_ccxt_cannot_decode_is_counted_and_the_stream_goes_on(tmp_path: Path) -> None:
    """The replica sends malformed frames (truncated copies) now and then: ccxt's JSON decoder
    raises on them, which used to end the connection's receive loop until the watchdog renewed it
    (a reconnect and a hole each). Each is counted and skipped; the connection streams on."""
    replica = await start_replica("binance", tmp_path, faults={"garbage": 60.0}, speed=20.0)
    try:
        engine = Engine(ccxt_settings(replica, tmp_path, ["ccxt:binance:BTC/USDT"], ["1m"], "10m"))
        await engine.start()
        try:
            feed = engine.feeds["ccxt"]
            for _ in range(200):  # until three malformed frames went by, at most 20 s
                if replica.faults_injected().get("garbage", 0) >= 3:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            report = feed.report()
            injected = replica.faults_injected().get("garbage", 0)
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    assert injected >= 3, injected
    assert report.skipped_frames.get("unhandled_frame", 0) >= 1, report
    assert report.connected and report.frames > 0, report
    assert report.stale_drops == 0 and report.reconnects == 0, report


@pytest.mark.timeout(90)
async def test_hyperliquid_candle_requests_keep_within_its_weight_budget(tmp_path: Path) -> None:
    """A burst of ``fetch_ohlcv`` calls through the ccxt client the feed builds for Hyperliquid: ccxt's
    limiter charges each the venue's own weight (20, one more per 60 candles), so the replica, with
    its budget of 1200 a minute scaled to 120 per 6 s windows, never answers 429. (ccxt's own table
    charges a candleSnapshot 4 units of 50 ms: 200 ms a call, over five times that budget.)"""
    from deltafeed.venues.ccxt import CcxtSettings
    from deltafeed.venues.ccxt.feed import CcxtFeed

    replica = registry.get("hyperliquid").build_replica(
        symbols=["BTC"], seed=5, rate=1.0, history_ms=HISTORY_MS, weight_limit=120, weight_window_s=6.0
    )
    await replica.start()
    try:
        vs = CcxtSettings(**registry.get("ccxt").replica_settings(replica))
        feed = CcxtFeed(vs, stale_after_s=5.0, on_trade=lambda st, t: None)
        client = feed._client("hyperliquid")
        try:
            await client.load_markets()
            now = replica.clock.now_ms()
            start = now - now % 60_000 - 9_000_000
            for i in range(8):  # 15 candles each: weight 20 apiece, 22 with the margin
                since = start + i * 900_000
                rows = await client.fetch_ohlcv("BTC/USDC:USDC", "1m", since, 15, {"until": since + 899_999})
                assert len(rows) == 15, (i, len(rows))
        finally:
            await client.close()
        stats = dict(replica.stats)
    finally:
        await replica.stop()
    assert stats["429"] == 0 and stats["requests"] >= 8 + 3, stats


@pytest.mark.timeout(60)
@pytest.mark.parametrize("watch", ["single", "batch"])
async def test_an_instrument_added_to_a_running_engine_streams_on_the_exchanges_client(
    watch: str, tmp_path: Path
) -> None:
    """What a cluster's collector does: ``ccxt:binance:ETH/USDT`` added while BTC/USDT streams. It
    streams within seconds through the client BTC's watch runs on (its own watch, or the batch
    watch started anew with both; a new client per addition used to leave the new symbol unwatched
    and the old client unclosed), its final candles equal the tape, and dropping it stops its
    watch while BTC streams on."""
    replica = await start_replica(
        "binance", tmp_path, history_ms=3_600_000, symbols=["BTCUSDT", "ETHUSDT"], rate=3.0, speed=60.0
    )
    btc, eth = (Instrument.parse(f"ccxt:binance:{s}") for s in ("BTC/USDT", "ETH/USDT"))
    settings = ccxt_settings(replica, tmp_path, [str(btc)], ["1m", "5m"], "30m", {"reconcile_every": 2, "watch": watch})
    engine = Engine(settings)
    try:
        await engine.start()
        try:
            feed: Any = engine.feeds["ccxt"]
            client = feed.exchanges["binance"].client
            await until(lambda: engine.states[str(btc)].trades > 10, 10.0, "BTC trades")
            assert await engine.add_instrument(eth, history_ms=30 * TIMEFRAMES["1m"]) == [str(eth)]
            await until(lambda: engine.states[str(eth)].trades > 10, 5.0, "ETH trades")
            assert feed.exchanges["binance"].client is client  # reused: no client left to close
            await asyncio.sleep(4.0)  # four market minutes more, reconciled every 2 s
            assert list(feed.exchanges["binance"].tasks) == (
                ["BTC/USDT", "ETH/USDT"] if watch == "single" else ["BTC/USDT,ETH/USDT"]
            )
            await engine.drop_instrument(eth)
            if watch == "single":
                # Added again at once (a lease moving back): it subscribes once its unsubscribe is through.
                assert await engine.add_instrument(eth, history_ms=30 * TIMEFRAMES["1m"]) == [str(eth)]
                await until(lambda: engine.states[str(eth)].trades > 10, 10.0, "ETH trades once added again")
                await engine.drop_instrument(eth)
                # Watched alone, a dropped symbol is unsubscribed (ccxt's unWatchTrades).
                await until(lambda: "ethusdt@trade" not in replica.open_streams(), 5.0, "ETH unsubscribed")
            btc_trades = engine.states[str(btc)].trades
            await until(lambda: engine.states[str(btc)].trades > btc_trades + 10, 5.0, "BTC trades after the drop")
            assert [t.get_name() for t in feed.exchanges["binance"].tasks.values()] == ["ccxt-binance-BTC/USDT"]
            report = feed.report()
            await engine.writer.flush()
        finally:
            await engine.stop()
        assert client.session is None  # closed at the stop
    finally:
        await replica.stop()
    assert report.connected and not report.skipped_frames, report
    # ETH's own connection (single: ccxt's Binance opens one per symbol watched alone) is another
    # connection, not a reconnect: BTC lost nothing, so nothing of BTC's was marked for repair.
    assert report.reconnects == 0 and report.connects >= (2 if watch == "single" else 1), report
    rows = read_venue_tape(tmp_path / "tape.csv")
    store = await open_cold(settings.db, read_only=True)
    try:
        for inst, sym in ((btc, "BTCUSDT"), (eth, "ETHUSDT")):
            n = await compare_finals_with_tape(store, inst, [r for r in rows if r.symbol == sym])
            print(f"{inst}: {n} final candles equal the tape")
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_a_batch_watch_takes_at_most_batch_symbols(tmp_path: Path) -> None:
    """``watch = "batch"`` with ``batch_symbols = 2``: three symbols stream over two batch loops (ccxt's
    Binance refuses a watch_trades_for_symbols of more than 200), and every final candle equals the tape."""
    syms = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    replica = await start_replica("binance", tmp_path, history_ms=3_600_000, symbols=syms, rate=3.0, speed=60.0)
    insts = [Instrument.parse(f"ccxt:binance:{s[:3]}/USDT") for s in syms]
    settings = ccxt_settings(
        replica, tmp_path, [str(i) for i in insts], ["1m"], "30m", {"watch": "batch", "batch_symbols": 2}
    )
    engine = Engine(settings)
    try:
        await engine.start()
        try:
            feed: Any = engine.feeds["ccxt"]
            for inst in insts:
                await until(lambda inst=inst: engine.states[str(inst)].trades > 10, 10.0, f"{inst} trades")
            assert sorted(feed.exchanges["binance"].tasks) == ["BTC/USDT,ETH/USDT", "SOL/USDT"]
            await asyncio.sleep(2.0)  # two market minutes more
            report = feed.report()
            await engine.writer.flush()
        finally:
            await engine.stop()
    finally:
        await replica.stop()
    assert report.connected and report.reconnects == 0 and not report.skipped_frames, report
    rows = read_venue_tape(tmp_path / "tape.csv")
    store = await open_cold(settings.db, read_only=True)
    try:
        for inst, sym in zip(insts, syms, strict=True):
            assert await compare_finals_with_tape(store, inst, [r for r in rows if r.symbol == sym], ("1m",)) > 0
    finally:
        await store.close()
    with pytest.raises(BadInput, match="batch_symbols"):
        Engine(ccxt_settings(replica, tmp_path, [str(insts[0])], ["1m"], "30m", {"batch_symbols": 0}))
