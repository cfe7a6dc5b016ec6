"""Every streaming venue splits its subscriptions over connections (issue 18), against its replica.

For each venue, one run with more instruments than one connection may carry: the venue's declared
subscriptions per connection (``Venue.stream_limits``) is lowered so that six instruments need three
connections, and the replica is given the same lowered cap, which it enforces as the venue does
(refusing a subscription past it). The run must use several connections, each within the cap (the
replica counts the most any connection held, and every refusal), every instrument must receive
trades, and every stored final 1m and 5m candle of every instrument must equal the candle computed
from the replica's tape, with no hole. Binance's split has its own test (tests/e2e/test_scale_e2e.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from chaos import compare_finals_with_tape
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, Instrument
from deltafeed.store.base import open_cold
from deltafeed.venues import registry
from helpers import until
from reference import read_venue_tape

SYMBOLS = {
    "kraken": ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOT/USD"],
    "hyperliquid": ["BTC", "ETH", "SOL", "XRP", "ADA", "DOT"],
    "bybit": ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOTUSDT"],
    "coinbase": ["BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "DOT-USD"],
}
#: Subscriptions of one instrument at 1m and 5m with the venue's candles on (the default): a trade
#: channel and a candle channel per timeframe (Coinbase's candles are 5-minute only).
SUBSCRIPTIONS = {"kraken": 3, "hyperliquid": 3, "bybit": 3, "coinbase": 2}
PER_LINK = 2  # instruments one connection may carry in this run
STREAM_S = 14.0  # wall seconds of streaming: 14 market minutes at x60


@pytest.mark.timeout(180)
@pytest.mark.parametrize("venue_name", sorted(SYMBOLS))
async def test_subscriptions_split_over_connections_and_candles_equal_the_tape(
    venue_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venue = registry.get(venue_name)
    limits = venue.stream_limits
    assert limits is not None and limits.per_connection > 0, venue_name
    symbols = SYMBOLS[venue_name]
    tape = tmp_path / f"{venue_name}.csv"
    replica = venue.build_replica(symbols=symbols, seed=11, rate=2.0, speed=60.0, history_ms=30 * 60_000, tape=tape)
    await replica.start()
    engine: Engine | None = None
    try:
        settings = Settings(
            symbols=[f"{venue_name}:{s}" for s in symbols],
            timeframes=["1m", "5m"],
            history="30m",
            db=str(tmp_path / "split.duckdb"),
            venues={venue_name: venue.replica_settings(replica)},
        ).validate()
        for k, v in venue.replica_env(replica).items():
            monkeypatch.setenv(k, v)
        cap = PER_LINK * SUBSCRIPTIONS[venue_name]
        monkeypatch.setattr(venue, "stream_limits", dataclasses.replace(limits, per_connection=cap))
        replica.per_connection = cap
        engine = Engine(settings)
        await engine.start()
        feed = engine.feeds[venue_name]
        # Bybit has a pool of connections per category (one here), the others one pool.
        pools = list(feed.pools.values()) if hasattr(feed, "pools") else [feed.pool]
        links = [link for pool in pools for link in pool.links]
        assert len(links) == len(symbols) // PER_LINK, [len(link.members) for link in links]
        assert all(link.load == cap for link in links), [link.load for link in links]
        await until(lambda: all(st.trades > 0 for st in engine.states.values()), 60.0, "every instrument trading")
        await asyncio.sleep(STREAM_S)
        status = engine.status()
    finally:
        if engine is not None:
            await engine.stop()
        await replica.stop()

    vs = status["venues"][venue_name]
    assert vs["connects"] >= len(links), vs
    assert not vs.get("refused_symbols"), vs
    assert replica.stats.get("limit_refusals", 0) == 0, replica.stats
    assert 0 < replica.stats["most_subscriptions"] <= cap, replica.stats
    assert replica.stats["connections"] >= len(links), replica.stats

    cold = await open_cold(settings.db, read_only=True)
    try:
        rows = read_venue_tape(tape)
        compared = 0
        for sym in symbols:
            inst = Instrument.parse(f"{venue_name}:{sym}")
            compared += await compare_finals_with_tape(cold, inst, [r for r in rows if r.symbol == sym])
    finally:
        await cold.close()
    assert compared >= len(symbols) * 30


@pytest.mark.timeout(180)
async def test_oanda_instruments_split_over_pricing_streams_and_candles_equal_the_tape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OANDA names a stream's instruments in its URL: six instruments at two per stream are three
    streams, none over the cap the replica enforces (it answers a longer list with 400), and every
    stored final MID candle equals the quote tape's."""
    from deltafeed.candles.calendar import FxCalendar
    from deltafeed.model import series_key
    from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica
    from reference import quote_candles_from_tape, read_quote_tape

    venue = registry.get("oanda")
    assert venue.stream_limits is not None
    symbols = ["EUR_USD", "USD_JPY", "GBP_USD", "AUD_USD", "USD_CHF", "USD_CAD"]
    monkeypatch.setenv("OANDA_TOKEN", DEV_TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    monkeypatch.setattr(venue, "stream_limits", dataclasses.replace(venue.stream_limits, per_connection=PER_LINK))
    tape = tmp_path / "quotes.csv"
    wednesday_noon_utc = 1_795_003_200_000  # 2026-11-18 12:00 UTC: the FX market is open throughout
    replica = OandaReplica(
        symbols=symbols,
        seed=7,
        rate=2.0,
        speed=60.0,
        history_ms=30 * 60_000,
        tape=str(tape),
        start_ms=wednesday_noon_utc,
    )
    replica.per_connection = PER_LINK
    await replica.start()
    settings = Settings(
        venue="oanda",
        symbols=symbols,
        timeframes=["1m", "5m"],
        history="30m",
        db=str(tmp_path / "fx.duckdb"),
        rest_url=replica.url,
        stream_url=replica.url,
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        feed = engine.feeds["oanda"]
        links = feed.pool.links
        assert [link.load for link in links] == [PER_LINK] * 3
        await until(lambda: all(st.trades > 0 for st in engine.states.values()), 60.0, "every instrument quoting")
        await asyncio.sleep(STREAM_S)
        status = engine.status()
    finally:
        await engine.stop()
        await replica.stop()

    assert status["venues"]["oanda"]["connects"] >= 3, status["venues"]["oanda"]
    assert replica.stats.get("limit_refusals", 0) == 0 and replica.stats["rejected_streams"] == 0, replica.stats
    assert replica.stats["most_subscriptions"] == PER_LINK and replica.stats["streams"] >= 3, replica.stats
    rows = read_quote_tape(tape)
    calendar = FxCalendar()
    cold = await open_cold(settings.db, read_only=True)
    try:
        compared = 0
        for sym in symbols:
            key = series_key(f"oanda:{sym}", "mid")
            mine = [r for r in rows if r.symbol == sym]
            for tf in ("1m", "5m"):
                want = {c.open_time: c for c in quote_candles_from_tape(mine, TIMEFRAMES[tf], "mid", calendar)}
                stored = await cold.query(key, tf)
                keys = [c.open_time for c in stored]
                assert keys == list(range(keys[0], keys[-1] + TIMEFRAMES[tf], TIMEFRAMES[tf])), (key, tf, "a hole")
                finals = [c for c in stored if c.final]
                assert len(finals) >= (25 if tf == "1m" else 5), (key, tf, len(finals))
                for c in finals:
                    w = want[c.open_time]
                    assert (c.open, c.high, c.low, c.close, c.trades, c.volume) == pytest.approx(
                        (w.open, w.high, w.low, w.close, w.trades, w.volume), rel=1e-12
                    ), (key, tf, c.open_time)
                compared += len(finals)
    finally:
        await cold.close()
    assert compared >= len(symbols) * 30
