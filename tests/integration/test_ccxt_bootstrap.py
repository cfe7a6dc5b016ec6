"""The ccxt venue bootstraps from each replica ccxt can read (Binance, Coinbase, Bybit, Hyperliquid,
Kraken) through ccxt's ``fetch_ohlcv`` under ccxt's own rate limiter: every stored candle equals the
candle computed from the replica's tape (open, high, low, close, volume; OHLCV rows carry no trade
count), over the whole window asked for, with zero 429s at the replica. Then the start-up check's
one-line refusals (unknown exchange, unknown symbol, a timeframe the exchange cannot serve)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, BadInput
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
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


async def start_replica(exchange: str, tmp_path: Path, **kw: Any) -> Any:
    replica = registry.get(exchange).build_replica(
        symbols=[MARKETS[exchange][0]], seed=5, rate=1.0, history_ms=HISTORY_MS, tape=tmp_path / "tape.csv", **kw
    )
    await replica.start()
    return replica


def ccxt_settings(replica: Any, tmp_path: Path, symbols: list[str], timeframes: list[str], **kw: Any) -> Settings:
    return Settings(
        symbols=symbols,
        timeframes=timeframes,
        history="2h",
        db=str(tmp_path / "boot.duckdb"),
        venues={"ccxt": registry.get("ccxt").replica_settings(replica)},
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
