"""End to end with the production tiers: the engine against the replica, writing PostgreSQL and
Redis, across restarts and outages of either; stored candles equal candles computed from the tape.

PostgreSQL (127.0.0.1:5432, database test) and Redis (127.0.0.1:6379) must be running; `.ci/run`
starts them. Outage tests stop and start private servers of their own, never the shared ones.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import msgspec
import pytest
import redis.asyncio as aioredis

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, BadInput, Candle, timeframe_ms
from deltafeed.store.base import open_cold
from deltafeed.store.redis_hot import RedisHot
from deltafeed.venues.binance.feed import BinanceFeed
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import answered, run_engine
from pg_server import PrivatePostgres
from redis_server import PrivateRedis
from reference import candles_from_tape, read_tape

PG = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
SYMBOLS = ["BTCUSDT", "ETHUSDT"]


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema of its own on the shared server, dropped afterwards."""
    name = f"deltafeed_e2e_{uuid.uuid4().hex[:12]}"
    yield name
    con = await asyncpg.connect(PG)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await con.close()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of its own on the shared Redis, deleted afterwards."""
    name = f"dfe2e{uuid.uuid4().hex[:10]}"
    yield name
    r = aioredis.from_url(REDIS)
    try:
        keys = [k async for k in r.scan_iter(match=f"{name}:*")]
        if keys:
            await r.delete(*keys)
    finally:
        await r.aclose()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


async def stored(db: str, schema: str, instrument: str, timeframe: str) -> list[Candle]:
    cold = await open_cold(db, schema=schema)
    try:
        return await cold.query(instrument, timeframe)
    finally:
        await cold.close()


def assert_equal_to_tape(
    candles: list[Candle], tape: Path, symbol: str, timeframe: str, until_ms: int | None = None
) -> int:
    """Every closed candle equals the tape's, field by field; none missing or repeated inside."""
    tf_ms = timeframe_ms(timeframe)
    rows = [r for r in read_tape(str(tape)) if r[0] == symbol]
    want = {c.open_time: c for c in candles_from_tape(rows, tf_ms)}
    closed = [c for c in candles if c.closed and (until_ms is None or c.open_time < until_ms)]
    assert closed, (symbol, timeframe)
    keys = [c.open_time for c in closed]
    assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (symbol, timeframe, "hole or duplicate")
    assert keys[0] <= min(want) + tf_ms, (symbol, timeframe, "history does not reach back")
    for c in closed:
        w = want[c.open_time]
        got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
        exp = (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades)
        assert got == exp, (symbol, timeframe, c.open_time, got, exp)
    return len(closed)


async def test_postgres_and_redis_equal_the_tape_across_a_restart(tmp_path: Path, schema: str, prefix: str) -> None:
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=SYMBOLS, seed=21, rate=4.0, speed=60.0, history_ms=2 * 3_600_000, tape=str(tape))
    await replica.start()
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["15s", "45s", "1m", "3m", "5m"],  # 45s and 3m: tables made at their first write
        history="3h",  # more than the replica has: the tape's first candle is in reach however slow the start
        db=PG,
        db_schema=schema,
        hot=REDIS,
        hot_prefix=prefix,
        spool=str(tmp_path / "spool"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    try:
        first = await run_engine(settings, 6.0)
        await asyncio.sleep(3.0)  # three market minutes pass while nothing runs
        second = await run_engine(settings, 6.0)
    finally:
        await replica.stop()
    for engine in (first, second):
        status = engine.status()
        assert status["store_failures"] == 0 and status["rest_throttled"] == 0
        assert status["hot"] is not None and status["hot"]["degraded"] is None  # type: ignore[index]
    reader = RedisHot(REDIS, prefix=prefix)
    await reader.open()
    try:
        for sym in SYMBOLS:
            for tf in ("15s", "45s", "1m", "3m", "5m"):
                candles = await stored(PG, schema, f"binance:{sym}", tf)
                assert_equal_to_tape(candles, tape, sym, tf)
                # Redis holds the newest candles of the run, equal to PostgreSQL's (the forming
                # candle may have moved on after the last write to PostgreSQL; compare closed ones).
                hot = await reader.last(f"binance:{sym}", tf, 1000)
                assert len(hot) >= min(len(candles) - 1, 100)
                by_time = {c.open_time: c for c in candles}
                for c in hot:
                    if c.closed:
                        assert by_time[c.open_time] == c, (sym, tf, c.open_time)
    finally:
        await reader.close()


async def test_rollups_equal_direct_aggregation(tmp_path: Path) -> None:
    """5m and 15m derived from 1m (no trades aggregated into them, no kline streams for them) equal
    the candles the tape gives when aggregated directly."""
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=SYMBOLS, seed=5, rate=4.0, speed=120.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["1m", "5m", "15m"],
        history="1h",
        db=str(tmp_path / "r.duckdb"),
        rollup_from="1m",
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    try:
        engine = Engine(settings)
        await engine.start()
        started = replica.clock.now_ms()
        for st in engine.states.values():
            assert st.builder.timeframes == ["1m"] and st.rollup is not None
        feed = engine.feeds["binance"]
        assert isinstance(feed, BinanceFeed)
        assert all("kline_5m" not in s and "kline_15m" not in s for s in feed._streams(feed.states))
        await asyncio.sleep(12.0)  # 24 market minutes: several 5m and at least one 15m rolled up live
        await engine.stop()
    finally:
        await replica.stop()
    for sym in SYMBOLS:
        rollup = engine.states[f"binance:{sym}"].rollup
        assert rollup is not None
        # Every derived candle came whole from the rollup: none had to be fetched from the venue.
        assert rollup.incomplete == 0 and rollup.stale_parts == 0
        for tf in ("1m", "5m", "15m"):
            candles = await stored(settings.db, "deltafeed", f"binance:{sym}", tf)
            assert_equal_to_tape(candles, tape, sym, tf)
            live = [c for c in candles if c.closed and c.open_time + TIMEFRAMES[tf] > started]
            assert live, (sym, tf, "nothing rolled up while streaming")


async def test_postgres_outage_mid_run_loses_nothing_and_doubles_nothing(
    tmp_path: Path, private_pg: PrivatePostgres
) -> None:
    """PostgreSQL stops for six market minutes while the engine streams: batches go to the spool,
    /health says so, and once it is back the spool is replayed in order; the stored history then
    equals the tape with no hole and no duplicate."""
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=SYMBOLS, seed=8, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    spool = tmp_path / "outage.spool"
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["1m", "5m"],
        history="1h",
        db=private_pg.url,
        spool=str(spool),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    try:
        engine = Engine(settings)
        await engine.start()
        await asyncio.sleep(3.0)
        await asyncio.to_thread(private_pg.stop)
        trades_at_stop = sum(st.trades for st in engine.states.values())
        await asyncio.sleep(6.0)
        during = engine.health()
        spooled_during = engine.writer.spooled
        assert sum(st.trades for st in engine.states.values()) > trades_at_stop + 100  # streaming went on
        await asyncio.to_thread(private_pg.start)
        await asyncio.sleep(6.0)
        after = engine.health()
        await engine.stop()
    finally:
        await replica.stop()
    assert any("cold store" in r for r in during), during
    assert spooled_during > 0 and spool.exists()
    assert not any("cold store" in r for r in after), after
    assert engine.writer.replayed >= engine.writer.spooled > 0
    assert engine.writer.spooled_pending == 0
    for sym in SYMBOLS:
        for tf in ("1m", "5m"):
            assert_equal_to_tape(await stored(private_pg.url, "deltafeed", f"binance:{sym}", tf), tape, sym, tf)
    con = await asyncpg.connect(private_pg.url)
    try:  # the primary key forbids duplicates; check the count anyway, against distinct keys
        n, distinct = await con.fetchrow(
            "SELECT count(*), count(DISTINCT (instrument, open_time)) FROM deltafeed.candles_1m"
        )
    finally:
        await con.close()
    assert n == distinct > 0


async def test_redis_outage_mid_run_serves_from_memory_and_refills(tmp_path: Path) -> None:
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=SYMBOLS, seed=4, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    server = PrivateRedis()
    server.start()
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["1m", "5m"],
        history="1h",
        db=str(tmp_path / "o.duckdb"),
        hot=server.url,
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    try:
        engine = Engine(settings)
        await engine.start()
        await asyncio.sleep(2.0)
        assert engine.redis is not None and engine.redis.written > 0
        server.stop()
        await asyncio.sleep(4.0)
        during = engine.health()
        served = await engine.candles("binance:BTCUSDT", "1m", limit=30)
        server.start()  # back, and empty: it keeps nothing on disk
        await asyncio.sleep(4.0)
        after = engine.health()
        reader = RedisHot(server.url)
        await reader.open()
        try:
            for key in engine.states:
                for tf in ("1m", "5m"):
                    memory = {c.open_time: c for c in engine.hot.last(key, tf, 1000)}
                    mirrored = await reader.last(key, tf, 1000)
                    assert len(mirrored) >= len(memory) - 1 > 10, (key, tf)
                    for c in mirrored:
                        if c.closed and c.open_time in memory:
                            assert memory[c.open_time] == c, (key, tf, c.open_time)
        finally:
            await reader.close()
        await engine.stop()
    finally:
        server.close()
        await replica.stop()
    assert any("hot tier" in r for r in during), during
    assert not any("hot tier" in r for r in after), after
    assert len(served) == 30
    assert engine.redis.refills >= 1 and engine.redis.failures >= 1
    for sym in SYMBOLS:
        assert_equal_to_tape(await stored(settings.db, "deltafeed", f"binance:{sym}", "1m"), tape, sym, "1m")


async def test_retention_drops_exactly_the_expired_candles_in_every_tier(
    tmp_path: Path, schema: str, prefix: str
) -> None:
    """The same candles in every tier; one driven 'now'; each tier keeps exactly those younger than
    their timeframe's retention (1d kept forever)."""
    from deltafeed.store.hot import HotStore

    day = 86_400_000
    retention: dict[str, int | None] = {"1m": 2 * day, "1h": 10 * day, "1d": None}
    now = 1_790_000_000_000 - 1_790_000_000_000 % day
    series = {
        "1m": [now - 3 * day + i * 60_000 for i in range(0, 3 * 1440, 7)],
        "1h": [now - 15 * day + i * 3_600_000 for i in range(0, 15 * 24)],
        "1d": [now - 400 * day + i * day for i in range(400)],
    }
    rows = [
        ("binance:BTCUSDT", tf, Candle(t, 1.0, 2.0, 0.5, 1.5, 3.0, 4, True)) for tf, ts in series.items() for t in ts
    ]
    expect = {
        tf: [t for t in ts if retention[tf] is None or t >= now - retention[tf]]  # type: ignore[operator]
        for tf, ts in series.items()
    }
    memory = HotStore(capacity=10_000)
    for inst, tf, c in rows:
        memory.put(inst, tf, c)
    redis_hot = RedisHot(REDIS, capacity=10_000, retention=retention, prefix=prefix)
    await redis_hot.open()
    for inst, tf, c in rows:
        redis_hot.put(inst, tf, c)
    flusher = asyncio.create_task(redis_hot.run())
    pg = await open_cold(PG, retention, schema=schema)
    duck = await open_cold(str(tmp_path / "ret.duckdb"), retention)
    try:
        await pg.write(rows)
        await duck.write(rows)
        for _ in range(100):
            if redis_hot.pending == 0:
                break
            await asyncio.sleep(0.05)
        total = len(rows)
        kept = sum(len(v) for v in expect.values())
        assert memory.apply_retention(now, retention) == total - kept
        # Redis also trims by age on every write (relative to the series' newest candle), so part of
        # the expired set may already be gone: what remains is checked below.
        assert await redis_hot.apply_retention(now) <= total - kept
        assert await pg.apply_retention(now) == total - kept
        assert await duck.apply_retention(now) == total - kept
        for tf, want in expect.items():
            assert [c.open_time for c in memory.last("binance:BTCUSDT", tf, 10_000)] == want, tf
            assert [c.open_time for c in await redis_hot.last("binance:BTCUSDT", tf, 10_000)] == want, tf
            assert [c.open_time for c in await pg.query("binance:BTCUSDT", tf)] == want, tf
            assert [c.open_time for c in await duck.query("binance:BTCUSDT", tf)] == want, tf
        # A second pass at the same time removes nothing more.
        assert await pg.apply_retention(now) == 0 and await duck.apply_retention(now) == 0
    finally:
        flusher.cancel()
        await redis_hot.close()
        await pg.close()
        await duck.close()


async def test_cli_reads_recent_candles_from_redis_and_older_from_postgres(
    tmp_path: Path, schema: str, prefix: str
) -> None:
    """`deltafeed candles` joins the two tiers at the hot tier's oldest candle: nothing missing,
    nothing twice, and for the overlap the hot tier's (fresher) version wins."""
    inst = "binance:BTCUSDT"
    base = 1_790_000_000_000 - 1_790_000_000_000 % 60_000
    cold_rows = [
        (inst, "1m", Candle(base + i * 60_000, 100.0 + i, 101.0 + i, 99.0 + i, 100.5 + i, 1.0, 3, True))
        for i in range(150)
    ]
    hot_rows = [
        (inst, "1m", Candle(base + i * 60_000, 100.0 + i, 101.0 + i, 99.0 + i, 100.25 + i, 2.0, 5, True))
        for i in range(100, 200)
    ]
    pg = await open_cold(PG, schema=schema)
    hot = RedisHot(REDIS, prefix=prefix)
    await hot.open()
    flusher = asyncio.create_task(hot.run())
    try:
        await pg.write(cold_rows)
        for r in hot_rows:
            hot.put(*r)
        for _ in range(100):
            if hot.pending == 0 and hot.written >= len(hot_rows):
                break
            await asyncio.sleep(0.05)
    finally:
        flusher.cancel()
        await hot.close()
        await pg.close()

    errors: list[str] = []

    async def cli(*extra: str, hot: str = REDIS) -> list[dict[str, object]]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "deltafeed",
            "candles",
            inst,
            "1m",
            "--db",
            PG,
            "--db-schema",
            schema,
            "--hot",
            hot,
            "--hot-prefix",
            prefix,
            "--format",
            "json",
            *extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        errors.append(err.decode())
        return msgspec.json.decode(out)  # type: ignore[no-any-return]

    everything = await cli()
    assert len(everything) == 200
    assert [c["volume"] for c in everything] == [1.0] * 100 + [2.0] * 100
    tail = await cli("--last", "120")
    assert tail == everything[-120:]
    since = await cli("--since", "2026-09-21T00:00:00Z")  # before the first candle: the whole series
    assert since == everything
    # Redis down: the cold tier alone answers, with one line saying so.
    cold_only = await cli(hot="redis://127.0.0.1:1/0")
    assert [c["volume"] for c in cold_only] == [1.0] * 150
    assert errors[-1].count("\n") == 1 and "reading" in errors[-1] and "127.0.0.1:1" in errors[-1]


def test_rollups_are_configured_per_instrument() -> None:
    settings = Settings(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        timeframes=["1m", "5m", "1h"],
        rollup_from="1m",
        rollups={"ETHUSDT": "off", "binance:SOLUSDT": "5m"},
        db=":memory:",
    ).validate()
    engine = Engine(settings)
    btc, eth, sol = (engine.states[f"binance:{s}"] for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    assert btc.builder.timeframes == ["1m"] and btc.rollup is not None and btc.rollup.timeframes == ["5m", "1h"]
    assert eth.builder.timeframes == ["1m", "5m", "1h"] and eth.rollup is None
    assert sol.builder.timeframes == ["1m", "5m"] and sol.rollup is not None and sol.rollup.timeframes == ["1h"]
    with pytest.raises(BadInput, match="need 15m among the timeframes"):
        Settings(symbols=["BTCUSDT"], timeframes=["1m", "1h"], rollup_from="15m").validate()
    with pytest.raises(BadInput, match="does not collect"):
        Settings(symbols=["BTCUSDT"], rollups={"DOGEUSDT": "1m"}).validate()


async def test_engine_reads_across_the_hot_and_cold_boundary(tmp_path: Path) -> None:
    """A hot tier of 20 candles and two hours of history: a range reaching back past the ring comes
    back whole, the older part from the cold tier and the newer from memory, without a duplicate."""
    async with BinanceReplica(symbols=["BTCUSDT"], seed=2, rate=2.0, speed=60.0, history_ms=2 * 3_600_000) as replica:
        settings = Settings(
            symbols=["BTCUSDT"],
            timeframes=["1m"],
            history="2h",
            hot_capacity=20,
            db=str(tmp_path / "b.duckdb"),
            rest_url=replica.url,
            ws_url=replica.ws_url,
        ).validate()
        engine = Engine(settings)
        await engine.start()
        try:
            await asyncio.sleep(2.0)
            now = replica.clock.now_ms()
            ring = engine.hot.last("binance:BTCUSDT", "1m", 1000)
            assert len(ring) == 20
            since = now - 90 * 60_000
            rows = await answered(  # no candle forms between a minute's end and its first trade
                lambda: engine.candles("binance:BTCUSDT", "1m", since_ms=since), lambda g: not g[-1].closed, "forming"
            )
            last = await engine.candles("binance:BTCUSDT", "1m", limit=50)
        finally:
            await engine.stop()
    keys = [c.open_time for c in rows]
    assert keys == list(range(keys[0], keys[-1] + 60_000, 60_000)) and keys[0] - since < 60_000
    assert len(rows) >= 89 and rows[0].open_time < ring[0].open_time  # reached past the ring
    lk = [c.open_time for c in last]  # a market minute is a wall second: a new one may have begun
    assert len(lk) == 50 and lk == list(range(lk[0], lk[-1] + 60_000, 60_000)) and lk[-1] >= keys[-1]
    assert not rows[-1].closed  # the forming candle is included, once


async def test_a_run_stopped_during_an_outage_leaves_a_spool_the_next_run_replays(
    tmp_path: Path, private_pg: PrivatePostgres
) -> None:
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=["BTCUSDT"], seed=13, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    spool = tmp_path / "restart.spool"
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m", "5m"],
        history="1h",
        db=private_pg.url,
        spool=str(spool),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    try:
        first = Engine(settings)
        await first.start()
        await asyncio.sleep(3.0)
        await asyncio.to_thread(private_pg.stop)
        await asyncio.sleep(4.0)
        await first.stop()  # the store is still down: the candles stay in the spool
        left = first.writer.spooled_pending
        assert left > 0 and spool.stat().st_size > 0
        await asyncio.to_thread(private_pg.start)
        second = Engine(settings)
        await second.start()  # replays the spool before anything else
        assert second.writer.replayed >= left and second.writer.spooled_pending == 0
        await asyncio.sleep(4.0)
        await second.stop()
    finally:
        await replica.stop()
    for tf in ("1m", "5m"):
        assert_equal_to_tape(await stored(private_pg.url, "deltafeed", "binance:BTCUSDT", tf), tape, "BTCUSDT", tf)
