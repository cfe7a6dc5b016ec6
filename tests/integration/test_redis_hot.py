"""The Redis hot tier against a real Redis: the key layout as another program sees it, upserts and trims,
retention and expiry, range semantics equal to the memory rings, no torn reads, and an outage with a
restart that comes back empty (a private redis-server that the test kills).

Run this file directly (``.venv/bin/python tests/test_redis_hot.py``) to measure read latency.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from redis.asyncio import Redis

from deltafeed.model import BadInput, Candle, state_flags
from deltafeed.store.base import StoreError, StoreUnavailable
from deltafeed.store.hot import HotStore
from deltafeed.store.redis_hot import RedisHot
from helpers import until
from redis_server import PrivateRedis, free_port

SHARED = "redis://127.0.0.1:6379/0"
M = 60_000
T0 = 1_700_000_040_000  # a minute (and 5-minute) boundary
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"
FOREVER: dict[str, int | None] = {"1m": None, "5m": None, "1d": None}


def candle(t: int, close: float = 100.0, closed: bool = True, trades: int = 3) -> Candle:
    return Candle(t, close - 0.5, close + 1.25, close - 2.125, close, close * 0.001 + 1e-8, trades, closed)


@pytest.fixture
async def raw() -> AsyncIterator[Redis]:
    """A plain redis-py client on the shared server: "another program"."""
    client = Redis.from_url(SHARED)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(raw: Redis) -> AsyncIterator[str]:
    """A key prefix of this test's own on the shared server; its keys are deleted afterwards."""
    p = f"dftest:{uuid.uuid4().hex[:12]}"
    yield p
    keys = [k async for k in raw.scan_iter(match=f"{p}:*", count=1000)]
    if keys:
        await raw.delete(*keys)


MakeHot = Callable[..., Awaitable[RedisHot]]


@pytest.fixture
async def make_hot(prefix: str) -> AsyncIterator[MakeHot]:
    """``await make_hot(**kwargs)``: an opened RedisHot with this test's prefix, its ``run`` task
    started unless ``run=False``; closed (and the task awaited) after the test."""
    made: list[tuple[RedisHot, asyncio.Task[None] | None]] = []

    async def make(url: str = SHARED, run: bool = True, **kwargs: Any) -> RedisHot:
        kwargs.setdefault("prefix", prefix)
        hot = RedisHot(url, **kwargs)
        await hot.open()
        task = asyncio.create_task(hot.run()) if run else None
        made.append((hot, task))
        return hot

    yield make
    for hot, task in made:
        await hot.close()
        if task is not None:
            await asyncio.wait_for(task, 5)


async def written(hot: RedisHot, n: int) -> None:
    await until(lambda: hot.written >= n and hot.pending == 0, what=f"{n} candles written (have {hot.written})")


# -- round trip and upsert --------------------------------------------------------------------


async def test_round_trip_field_by_field(make_hot: MakeHot) -> None:
    hot = await make_hot(retention=FOREVER)
    odd = [
        Candle(T0, 0.1, 0.30000000000000004, 1e-8, 123456.78901234, 98765432.123456789, 0, True),
        Candle(T0 + M, 27000.5, 27100.0, 26999.99, 27050.25, 0.00012345, 7, True),
        Candle(T0 + 2 * M, 1.0, 2.0, 0.5, 1.5, 3.0, 2**40, False),
    ]
    for c in odd:
        hot.put(BTC, "1m", c)
    await written(hot, 3)
    got = await hot.last(BTC, "1m", 10)
    assert len(got) == 3
    for mine, back in zip(odd, got, strict=True):
        for field in Candle.__struct_fields__:
            assert getattr(back, field) == getattr(mine, field), field
            assert type(getattr(back, field)) is type(getattr(mine, field)), field
    assert await hot.last(BTC, "1m", 2) == odd[1:]
    assert await hot.last(BTC, "1m", 0) == []
    assert await hot.last(ETH, "1m", 5) == []
    assert await hot.series() == [(BTC, "1m")]


async def test_put_stores_a_copy(make_hot: MakeHot) -> None:
    """The aggregator mutates its candle in place after put; what was put must be what is written."""
    hot = await make_hot(retention=FOREVER, run=False)
    c = candle(T0, 100.0, closed=False)
    hot.put(BTC, "1m", c)
    c.close = 555.0
    task = asyncio.create_task(hot.run())
    await written(hot, 1)
    assert (await hot.last(BTC, "1m", 1))[0].close == 100.0
    await hot.close()
    await task


async def test_upsert_replaces_the_open_candle(make_hot: MakeHot, raw: Redis, prefix: str) -> None:
    hot = await make_hot(retention=FOREVER)
    key = f"{prefix}:candles:{BTC}:1m"
    hot.put(BTC, "1m", candle(T0 - M, 99.0))
    hot.put(BTC, "1m", candle(T0, 100.0, closed=False, trades=1))
    await written(hot, 2)
    hot.put(BTC, "1m", candle(T0, 101.0, closed=False, trades=2))
    await written(hot, 3)
    final = candle(T0, 102.0, closed=True, trades=3)
    hot.put(BTC, "1m", final)
    await written(hot, 4)
    assert await raw.zcount(key, T0, T0) == 1
    assert await raw.zcard(key) == 2
    assert await hot.last(BTC, "1m", 5) == [candle(T0 - M, 99.0), final]


async def test_repeated_updates_conflate_and_the_latest_wins(make_hot: MakeHot) -> None:
    hot = await make_hot(retention=FOREVER, run=False)
    for k in range(100):
        hot.put(BTC, "1m", candle(T0, 100.0 + k, closed=False, trades=k))
    assert hot.pending == 1
    task = asyncio.create_task(hot.run())
    await written(hot, 1)
    assert hot.written == 1
    assert await hot.last(BTC, "1m", 5) == [candle(T0, 199.0, closed=False, trades=99)]
    await hot.close()
    await task


async def test_trimmed_to_capacity(make_hot: MakeHot, raw: Redis, prefix: str) -> None:
    hot = await make_hot(capacity=5, retention=FOREVER)
    cs = [candle(T0 + k * M, 100.0 + k) for k in range(8)]
    for c in cs:
        hot.put(BTC, "1m", c)
    await written(hot, 8)
    assert await raw.zcard(f"{prefix}:candles:{BTC}:1m") == 5
    assert await hot.last(BTC, "1m", 100) == cs[3:]
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"{prefix}:updates:{BTC}:1m")
    assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"
    hot.put(BTC, "1m", candle(T0 - M))  # older than a full set: not kept (like HotStore), not published
    hot.put(BTC, "1m", candle(T0 + 8 * M))
    await written(hot, 10)
    assert await hot.last(BTC, "1m", 100) == [*cs[4:], candle(T0 + 8 * M)]
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None and json.loads(msg["data"])[0] == T0 + 8 * M
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1) is None
    await pubsub.aclose()


# -- retention and expiry ----------------------------------------------------------------------


async def test_retention_trims_exactly_by_age(make_hot: MakeHot, raw: Redis, prefix: str) -> None:
    hot = await make_hot(retention={"1m": 10 * M, "1d": None})
    for k in range(20):
        hot.put(BTC, "1m", candle(T0 + k * M))
        hot.put(ETH, "1m", candle(T0 + k * M))
    hot.put(BTC, "1d", candle(T0 - 1000 * 86_400_000))
    await written(hot, 41)
    # Writing already trims by age relative to the newest candle: 19 - 10 = 9 is the oldest kept.
    assert [c.open_time for c in await hot.last(BTC, "1m", 100)] == [T0 + k * M for k in range(9, 20)]
    # Now 25 minutes in: everything before minute 15 goes; minute 15 itself is exactly at the limit.
    assert await hot.apply_retention(T0 + 25 * M) == 2 * 6
    assert [c.open_time for c in await hot.last(BTC, "1m", 100)] == [T0 + k * M for k in range(15, 20)]
    assert await hot.apply_retention(T0 + 25 * M) == 0
    assert len(await hot.last(BTC, "1d", 10)) == 1  # kept forever
    # A series aged out completely leaves the discovery set too.
    assert await hot.apply_retention(T0 + 40 * M) == 2 * 5
    assert await raw.exists(f"{prefix}:candles:{BTC}:1m") == 0
    assert await hot.series() == [(BTC, "1d")]


async def test_expiry_follows_retention(make_hot: MakeHot, raw: Redis, prefix: str) -> None:
    hot = await make_hot(retention={"1m": 10 * M, "1d": None})
    hot.put(BTC, "1m", candle(T0))
    hot.put(BTC, "1d", candle(T0 - T0 % 86_400_000))
    await written(hot, 2)
    assert 9 * M < await raw.pttl(f"{prefix}:candles:{BTC}:1m") <= 10 * M
    assert await raw.pttl(f"{prefix}:candles:{BTC}:1d") == -1


def test_bad_settings_are_bad_input() -> None:
    with pytest.raises(BadInput, match=r"redis://127\.0\.0\.1:6379/0"):
        RedisHot("http://127.0.0.1:6379")
    with pytest.raises(BadInput, match="redis://"):
        RedisHot("redis://127.0.0.1:notaport/0")
    with pytest.raises(BadInput) as err:
        RedisHot("http://user:secret@h:1/0")
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BadInput, match="capacity"):
        RedisHot(SHARED, capacity=0)
    assert RedisHot("redis://u:secret@127.0.0.1:6379/0").name == "redis://u:***@127.0.0.1:6379/0"


# -- the layout as another program sees it ----------------------------------------------------


async def test_key_layout_and_updates_as_another_program_sees_them(make_hot: MakeHot, raw: Redis, prefix: str) -> None:
    pubsub = raw.pubsub()
    await pubsub.psubscribe(f"{prefix}:updates:*")
    assert (await pubsub.get_message(timeout=1))["type"] == "psubscribe"
    hot = await make_hot(retention={"1m": 10 * M})
    c1 = Candle(T0, 100.5, 101.0, 99.5, 100.75, 12.5, 42, False)
    hot.put(BTC, "1m", c1)
    await written(hot, 1)
    c1_closed = Candle(T0, 100.5, 101.0, 99.5, 100.8, 13.0, 43, True)
    hot.put(BTC, "1m", c1_closed)
    await written(hot, 2)
    hot.put(BTC, "1m", c1_closed)  # unchanged: stored as is, nothing published
    await written(hot, 3)
    c2 = candle(T0 + M, closed=False)
    hot.put(BTC, "1m", c2)
    await written(hot, 4)

    # Discovery, then keys built and split by the documented rule.
    series = {m.decode() for m in await raw.smembers(f"{prefix}:series")}
    assert series == {f"{BTC}|1m"}
    instrument, _, timeframe = series.pop().partition("|")
    key = f"{prefix}:candles:{instrument}:{timeframe}"
    assert [k.decode() async for k in raw.scan_iter(match=f"{prefix}:candles:*")] == [key]
    inst_back, _, tf_back = key.removeprefix(f"{prefix}:candles:").rpartition(":")
    assert (inst_back, tf_back) == (BTC, "1m")
    assert await raw.hgetall(f"{prefix}:meta") == {
        b"layout": b"1",
        b"member": b"open_time,open,high,low,close,volume,trades,closed,final",
    }

    members = await raw.zrange(key, 0, -1, withscores=True)
    assert [json.loads(m) for m, _ in members] == [
        [T0, 100.5, 101.0, 99.5, 100.8, 13.0, 43, True, False],
        [T0 + M, c2.open, c2.high, c2.low, c2.close, c2.volume, 3, False, False],
    ]
    assert [s for _, s in members] == [T0, T0 + M]
    assert members[0][0] == b"[1700000040000,100.5,101.0,99.5,100.8,13.0,43,true,false]"

    got = []
    while len(got) < 3:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert msg is not None, f"only {len(got)} updates published"
        assert msg["channel"] == f"{prefix}:updates:{BTC}:1m".encode()
        got.append(json.loads(msg["data"]))
    assert got == [
        [T0, 100.5, 101.0, 99.5, 100.75, 12.5, 42, False, False],
        [T0, 100.5, 101.0, 99.5, 100.8, 13.0, 43, True, False],
        [T0 + M, c2.open, c2.high, c2.low, c2.close, c2.volume, 3, False, False],
    ]
    assert await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1) is None
    await pubsub.aclose()


async def test_another_program_can_write_a_series_we_read(raw: Redis, prefix: str, make_hot: MakeHot) -> None:
    """Members written by hand per the documented layout (ints where floats go) read back as Candles."""
    key = f"{prefix}:candles:{ETH}:5m"
    await raw.zadd(
        key, {"[1700000100000,1,2,0.5,1.5,10,4,true]": T0 + M, "[1700000400000,2,3,1,2,5,1,false]": T0 + 6 * M}
    )
    hot = await make_hot(run=False)
    assert await hot.last(ETH, "5m", 5) == [
        Candle(T0 + M, 1.0, 2.0, 0.5, 1.5, 10.0, 4, True),
        Candle(T0 + 6 * M, 2.0, 3.0, 1.0, 2.0, 5.0, 1, False),
    ]


# -- range: the same answers as the memory rings -----------------------------------------------


async def test_range_matches_hotstore(make_hot: MakeHot) -> None:
    mem = HotStore(capacity=10)
    hot = await make_hot(capacity=10, retention=FOREVER)
    n = 0
    for k in [*range(5), *range(7, 15)]:  # a gap at minutes 5 and 6; the oldest 3 fall off
        for tf, step in (("1m", M), ("5m", 5 * M)):
            mem.put(BTC, tf, candle(T0 + k * step, 100.0 + k))
            hot.put(BTC, tf, candle(T0 + k * step, 100.0 + k))
            n += 1
    await written(hot, n)
    assert await hot.last(BTC, "1m", 100) == mem.last(BTC, "1m", 100)
    checked = nones = 0
    for tf, step in (("1m", M), ("5m", 5 * M)):
        oldest = mem.last(BTC, tf, 100)[0].open_time
        for since in range(oldest - 2 * step, oldest + 2 * step, step // 4):
            for until_ms in (since - 1, since, since + 3 * step, T0 + 20 * step):
                expect = mem.range(BTC, tf, since, until_ms)
                assert await hot.range(BTC, tf, since, until_ms) == expect, (tf, since - oldest, until_ms - since)
                checked += 1
                nones += expect is None
    assert nones and checked - nones > nones  # both answers were exercised
    assert await hot.range(ETH, "1m", T0, T0 + M) is None is mem.range(ETH, "1m", T0, T0 + M)


# -- no torn reads -----------------------------------------------------------------------------


def version(k: int) -> Candle:
    """The open candle after k updates: every field derived from k, so a mix of two is detectable."""
    return Candle(T0, 1000.0 + k, 1000.0 + 2 * k, 1000.0 - k, 1000.0 + k / 2, k * 0.25, k, False)


@pytest.mark.slow  # over 10 s: not in the everyday subset
async def test_no_torn_reads(make_hot: MakeHot, raw: Redis, prefix: str) -> None:
    writer = await make_hot(retention=FOREVER)
    reader = await make_hot(retention=FOREVER, run=False)  # its own connection pool
    key = f"{prefix}:candles:{BTC}:1m"
    writer.put(BTC, "1m", candle(T0 - M))
    writer.put(BTC, "1m", version(0))
    await written(writer, 2)
    done = False
    seen: set[int] = set()

    async def read() -> int:
        reads = 0
        while not done:
            (c,) = await reader.last(BTC, "1m", 1)
            assert c == version(c.trades), c
            seen.add(c.trades)
            at_score = await raw.zrangebyscore(key, T0, T0)
            assert len(at_score) == 1, at_score
            k = json.loads(at_score[0])[6]
            assert json.loads(at_score[0]) == [T0, *version(k).row()[1:], False, False]
            reads += 1
        return reads

    readers = [asyncio.create_task(read()) for _ in range(2)]
    for k in range(1, 3001):
        writer.put(BTC, "1m", version(k))
        while writer.pending:  # let the flusher take each version (or a few) into its own write
            await asyncio.sleep(0)
    await until(lambda: writer.pending == 0)
    await asyncio.sleep(0.05)
    done = True
    reads = sum(await asyncio.gather(*readers))
    assert (await reader.last(BTC, "1m", 1))[0] == version(3000)
    assert await raw.zcard(key) == 2
    assert writer.written > 1000, writer.written  # many distinct versions really went through Redis
    assert reads > 200 and len(seen) > 50, (reads, len(seen))


# -- close, a server that is down ----------------------------------------------------------------


async def test_close_writes_what_is_dirty(make_hot: MakeHot) -> None:
    hot = await make_hot(retention=FOREVER, run=False)
    hot.put(BTC, "1m", candle(T0))
    await hot.close()
    await hot.close()  # safe twice
    hot.put(BTC, "1m", candle(T0 + M))  # after close: ignored, no error
    other = await make_hot(retention=FOREVER, run=False)
    assert await other.last(BTC, "1m", 5) == [candle(T0)]
    with pytest.raises(StoreUnavailable):
        await hot.last(BTC, "1m", 5)


async def test_unreachable_at_open_is_not_fatal() -> None:
    hot = RedisHot(f"redis://127.0.0.1:{free_port()}/0", retention=FOREVER, refill=list)
    t = time.monotonic()
    await hot.open()
    assert time.monotonic() - t < 2
    assert hot.degraded is not None and "Connection" in hot.degraded
    assert hot.failures == 1 and hot.down_since is not None
    hot.put(BTC, "1m", candle(T0))  # never raises
    assert hot.pending == 0  # dropped: the refill will bring memory's contents
    with pytest.raises(StoreUnavailable):
        await hot.last(BTC, "1m", 1)
    with pytest.raises(StoreUnavailable):
        await hot.range(BTC, "1m", T0, T0)
    task = asyncio.create_task(hot.run())
    await asyncio.sleep(0.05)
    await hot.close()
    await asyncio.wait_for(task, 3)
    await hot.close()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis() as server:
        yield server


async def test_outage_refills_from_memory(private_redis: PrivateRedis) -> None:
    mem = HotStore(capacity=30)
    racing: list[tuple[str, str, Candle]] = []

    def contents() -> Iterator[tuple[str, str, list[Candle]]]:
        for i, (inst, tf) in enumerate(mem.keys()):
            yield inst, tf, mem.last(inst, tf, 30)
            if i == 0 and racing:  # the engine changes a yielded series while the refill is under way
                both(*racing.pop())

    hot = RedisHot(private_redis.url, capacity=30, retention={"1m": None, "5m": None}, refill=contents)

    def both(inst: str, tf: str, c: Candle) -> None:
        mem.put(inst, tf, c)
        hot.put(inst, tf, c)

    await hot.open()
    assert hot.refills == 1 and hot.degraded is None
    task = asyncio.create_task(hot.run())
    try:
        for k in range(20):
            both(BTC, "1m", candle(T0 + k * M, 100.0 + k))
            both(ETH, "5m", candle(T0 + k * 5 * M, 200.0 + k))
        await written(hot, 40)

        private_redis.stop()
        k = 20
        while hot.degraded is None:  # puts go on while Redis is down, and never raise
            both(BTC, "1m", candle(T0 + k * M, 100.0 + k, closed=False))
            k += 1
            await asyncio.sleep(0.01)
            assert k < 500, "never noticed that Redis is down"
        assert hot.failures >= 1 and hot.down_since is not None
        for j in range(k, k + 30):  # many more while degraded: the ring wraps
            both(BTC, "1m", candle(T0 + j * M, 100.0 + j))
            both(ETH, "5m", candle(T0 + j * 5 * M, 200.0 + j, closed=False))
        assert hot.pending == 0
        with pytest.raises(StoreUnavailable):
            await hot.last(BTC, "1m", 1)
        failures = hot.failures
        await asyncio.sleep(1.2)  # failed probes are not counted again
        assert hot.failures == failures and hot.degraded is not None

        racing.append((BTC, "1m", candle(T0 + (k + 29) * M, 999.0, closed=False)))
        private_redis.start()  # empty: it kept nothing
        await until(lambda: hot.degraded is None, timeout=5, what="recovery")
        await until(lambda: hot.pending == 0)
        await asyncio.sleep(0.05)
        assert hot.refills == 2 and not racing
        assert mem.keys() == [(BTC, "1m"), (ETH, "5m")]
        for inst, tf in [(BTC, "1m"), (ETH, "5m")]:
            assert await hot.last(inst, tf, 100) == mem.last(inst, tf, 100), (inst, tf)
        assert mem.last(BTC, "1m", 1)[0].close == 999.0
        assert await hot.series() == [(BTC, "1m"), (ETH, "5m")]

        before = hot.written
        both(BTC, "1m", candle(T0 + (k + 30) * M, 1.0, closed=False))
        await written(hot, before + 1)
        assert await hot.last(BTC, "1m", 30) == mem.last(BTC, "1m", 30)
        raw = Redis.from_url(private_redis.url)
        assert await raw.hget("deltafeed:meta", "layout") == b"1"
        await raw.aclose()
    finally:
        await hot.close()
        await asyncio.wait_for(task, 5)


async def test_a_hung_server_degrades_within_the_timeout(private_redis: PrivateRedis) -> None:
    hot = RedisHot(private_redis.url, retention=FOREVER, refill=list)
    await hot.open()
    task = asyncio.create_task(hot.run())
    try:
        hot.put(BTC, "1m", candle(T0))
        await written(hot, 1)
        private_redis.pause()
        t = time.monotonic()
        hot.put(BTC, "1m", candle(T0 + M))
        await until(lambda: hot.degraded is not None, timeout=RedisHot.TIMEOUT + 1, what="degraded")
        assert "Timeout" in (hot.degraded or "") and time.monotonic() - t < RedisHot.TIMEOUT + 0.5
        private_redis.resume()
        await until(lambda: hot.degraded is None, timeout=RedisHot.TIMEOUT + 2, what="recovery")
        hot.put(BTC, "1m", candle(T0 + 2 * M))
        await until(lambda: hot.pending == 0 and hot.written >= 2)
    finally:
        private_redis.resume()
        await hot.close()
        await asyncio.wait_for(task, 5)


async def test_a_flushed_script_cache_is_reloaded(private_redis: PrivateRedis) -> None:
    hot = RedisHot(private_redis.url, retention=FOREVER)
    raw = Redis.from_url(private_redis.url)
    await hot.open()
    task = asyncio.create_task(hot.run())
    try:
        hot.put(BTC, "1m", candle(T0))
        await written(hot, 1)
        await raw.script_flush()
        hot.put(BTC, "1m", candle(T0 + M))
        await written(hot, 2)
        assert hot.degraded is None and hot.failures == 0
        assert await hot.last(BTC, "1m", 5) == [candle(T0), candle(T0 + M)]
    finally:
        await raw.aclose()
        await hot.close()
        await asyncio.wait_for(task, 5)


# -- HotStore.apply_retention --------------------------------------------------------------------


def test_hotstore_apply_retention() -> None:
    mem = HotStore(capacity=20)
    for k in range(30):  # the ring holds minutes 10..29 (with a stale prefix still in its lists)
        mem.put(BTC, "1m", candle(T0 + k * M))
        mem.put(BTC, "1d", candle(T0 - T0 % 86_400_000 - k * 86_400_000))
    ret: dict[str, int | None] = {"1m": 10 * M, "1d": None}
    assert mem.apply_retention(T0 + 25 * M, ret) == 5  # 10..14 go, 15 is exactly at the limit
    assert [c.open_time for c in mem.last(BTC, "1m", 100)] == [T0 + k * M for k in range(15, 30)]
    assert mem.apply_retention(T0 + 25 * M, ret) == 0
    assert len(mem.last(BTC, "1d", 100)) == 20
    assert mem.range(BTC, "1m", T0 + 14 * M, T0 + 16 * M) is None
    assert mem.range(BTC, "1m", T0 + 15 * M, T0 + 16 * M) == [candle(T0 + 15 * M), candle(T0 + 16 * M)]
    assert mem.apply_retention(T0 + 100 * M, ret) == 15
    assert mem.last(BTC, "1m", 5) == [] and mem.range(BTC, "1m", T0, T0) is None
    assert mem.keys() == [(BTC, "1m"), (BTC, "1d")] and len(mem) == 20
    mem.put(BTC, "1m", candle(T0 + 100 * M))
    assert mem.last(BTC, "1m", 5) == [candle(T0 + 100 * M)]


# -- latency: python tests/test_redis_hot.py ----------------------------------------------------


async def _measure(url: str = SHARED, n: int = 1000, rounds: int = 3000) -> None:
    prefix = f"dfbench:{uuid.uuid4().hex[:8]}"
    hot = RedisHot(url, capacity=n, retention=FOREVER, prefix=prefix)
    await hot.open()
    task = asyncio.create_task(hot.run())
    try:
        for k in range(n):
            hot.put(BTC, "1m", Candle(T0 + k * M, 27000.12 + k, 27100.5, 26950.25, 27050.75, 12.34567891, 321, True))
        await written(hot, n)
        for label, read in (
            ("last(1000)", lambda: hot.last(BTC, "1m", n)),
            ("last(1)", lambda: hot.last(BTC, "1m", 1)),
            ("range(100)", lambda: hot.range(BTC, "1m", T0 + (n - 100) * M, T0 + n * M)),
        ):
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                await read()
                times.append(time.perf_counter() - t)
            times.sort()
            print(
                f"{label:11} p50 {times[len(times) // 2] * 1e6:7.0f} us  p99 {times[int(len(times) * 0.99)] * 1e6:7.0f} us"
            )
    finally:
        await hot.close()
        await task
        raw = Redis.from_url(url)
        await raw.delete(f"{prefix}:candles:{BTC}:1m", f"{prefix}:series", f"{prefix}:meta")
        await raw.aclose()


if __name__ == "__main__":
    import sys

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(_measure(*sys.argv[1:2]))


# -- candle states -------------------------------------------------------------------------------


async def test_states_round_trip_and_provisional_becomes_final_in_place(
    make_hot: MakeHot, raw: Redis, prefix: str
) -> None:
    pubsub = raw.pubsub()
    await pubsub.subscribe(f"{prefix}:updates:{BTC}:1m")
    assert (await pubsub.get_message(timeout=1))["type"] == "subscribe"
    hot = await make_hot(retention=FOREVER)
    key = f"{prefix}:candles:{BTC}:1m"
    rows = [
        Candle(T0 + k * M, 1.0, 2.0, 0.5, 1.5, 3.0, 4, *state_flags(s))
        for k, s in enumerate(("final", "provisional", "forming"))
    ]
    for c in rows:
        hot.put(BTC, "1m", c)
    await written(hot, 3)
    back = await hot.last(BTC, "1m", 10)
    assert back == rows and [c.state for c in back] == ["final", "provisional", "forming"]
    assert await hot.range(BTC, "1m", T0, T0 + 2 * M) == rows
    assert await raw.zrange(key, 1, 1) == [b"[1700000100000,1.0,2.0,0.5,1.5,3.0,4,true,false]"]
    verified = Candle(T0 + M, 1.0, 2.0, 0.5, 1.5, 3.0, 4, True, True)  # the same values, now vouched for
    hot.put(BTC, "1m", verified)
    await written(hot, 4)
    assert await raw.zcount(key, T0 + M, T0 + M) == 1 and await raw.zcard(key) == 3
    assert [c.state for c in await hot.last(BTC, "1m", 10)] == ["final", "final", "forming"]
    got = []
    while len(got) < 4:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert msg is not None, f"only {len(got)} updates published"
        got.append(json.loads(msg["data"]))
    assert [m[7:] for m in got] == [[True, True], [True, False], [False, False], [True, True]]
    assert got[-1][0] == T0 + M  # a provisional candle that becomes final is published again
    await pubsub.aclose()


async def test_members_of_the_previous_layout_read_as_not_final(raw: Redis, prefix: str, make_hot: MakeHot) -> None:
    """Members an older deltafeed wrote (8 fields, no ``final``) beside current ones; a write replaces them."""
    key = f"{prefix}:candles:{ETH}:5m"
    await raw.zadd(
        key,
        {
            "[1700000100000,1,2,0.5,1.5,10,4,true]": T0 + M,
            "[1700000400000,2,3,1,2,5,1,true,true]": T0 + 6 * M,
            "[1700000700000,2,3,1,2,5,1,false]": T0 + 11 * M,
        },
    )
    hot = await make_hot(run=False)
    old = await hot.last(ETH, "5m", 5)
    assert old == [
        Candle(T0 + M, 1.0, 2.0, 0.5, 1.5, 10.0, 4, True, False),
        Candle(T0 + 6 * M, 2.0, 3.0, 1.0, 2.0, 5.0, 1, True, True),
        Candle(T0 + 11 * M, 2.0, 3.0, 1.0, 2.0, 5.0, 1, False, False),
    ]
    assert [c.state for c in old] == ["provisional", "final", "forming"]
    assert await hot.last(ETH, "5m", 1) == old[-1:]
    await raw.zadd(key, {"[1700001000000,2,3,1,2,5,1]": T0 + 16 * M})  # neither width: not a candle
    with pytest.raises(StoreError, match="not a candle"):
        await hot.last(ETH, "5m", 5)
    await raw.zremrangebyscore(key, T0 + 16 * M, T0 + 16 * M)
    task = asyncio.create_task(hot.run())
    hot.put(ETH, "5m", Candle(T0 + M, 1.0, 2.0, 0.5, 1.5, 10.0, 4, True, True))
    await written(hot, 1)
    assert await raw.zrangebyscore(key, T0 + M, T0 + M) == [b"[1700000100000,1.0,2.0,0.5,1.5,10.0,4,true,true]"]
    assert [c.state for c in await hot.last(ETH, "5m", 5)] == ["final", "final", "forming"]
    await hot.close()
    await task
