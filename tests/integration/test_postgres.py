"""The PostgreSQL cold tier against real servers: semantics identical to the DuckDB tier, partitions,
retention, migrations, open errors, and an outage on a private server that is stopped and restarted.

Each test works in its own schema (``deltafeed_t_<hex>``) of the shared server at ``$DELTAFEED_TEST_PG``
(default ``postgresql://postgres@127.0.0.1:5432/test``) and drops it afterwards, so the file can run
alongside other tests using that server.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import numpy as np
import pytest
from msgspec.structs import replace

import deltafeed.store.postgres.copy as pgcopy
import deltafeed.store.postgres.schema as pgschema
import deltafeed.store.postgres.store as pgstore
from deltafeed.cli import main
from deltafeed.model import BadInput, Candle, Switch, state_flags
from deltafeed.store.base import StartupRead, StoreError, StoreUnavailable
from deltafeed.store.cold import ColdStore
from deltafeed.store.columns import CANDLE_RECORD, to_candles
from deltafeed.store.postgres import PARTITION_MS, SCHEMA_VERSION, PostgresStore
from helpers import candle, free_port
from pg_server import PrivatePostgres, available

PG_URL = os.environ.get("DELTAFEED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
S = 1_000
M = 60_000
H = 3_600_000
DAY = 86_400_000
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"
SOL = "binance:SOLUSDT"
T0 = 1_700_000_000_000 - 1_700_000_000_000 % (7 * DAY)  # a 1m partition boundary


def _server_up() -> bool:
    parts = urlsplit(PG_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1):
            return True
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _server_up(), reason=f"no PostgreSQL at {PG_URL} (set DELTAFEED_TEST_PG)")


def series(n: int, inst: str = BTC, tf: str = "1m", step: int = M, start: int = T0) -> list[tuple[str, str, Candle]]:
    return [(inst, tf, candle(start + i * step, close=100.0 + i)) for i in range(n)]


def new_schema() -> str:
    return f"deltafeed_t_{uuid.uuid4().hex}"


async def drop_schema(name: str, url: str = PG_URL) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    finally:
        await con.close()


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = new_schema()
    yield name
    await drop_schema(name)


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresStore]:
    st = await PostgresStore.open(PG_URL, schema=schema)
    yield st
    await st.close()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    if not available():
        pytest.skip("no PostgreSQL binaries to start a private server")
    with PrivatePostgres() as pg:
        yield pg


async def dump(st: PostgresStore, tf: str = "1m") -> list[tuple[Any, ...]]:
    rows = await st._pool.fetch(f"SELECT * FROM {st.schema}.candles_{tf} ORDER BY instrument, open_time")
    return [tuple(r) for r in rows]


async def partitions(st: PostgresStore, tf: str) -> list[str]:
    rows = await st._pool.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace n ON n.oid = p.relnamespace"
        " WHERE n.nspname = $1 AND p.relname = $2 ORDER BY c.relname",
        st.schema,
        f"candles_{tf}",
    )
    return [r[0] for r in rows]


# -- writes -------------------------------------------------------------------------------------


async def test_round_trip_field_by_field(store: PostgresStore) -> None:
    assert store.timescale is False  # no TimescaleDB on this machine
    odd = Candle(T0 + 7 * M, 0.1 + 0.2, 1e300, -5e-324, 123456.789012345, 1e-9, 2**62, False)
    rows = [(BTC, "1m", candle(T0, close=1.5)), (BTC, "1m", odd), (ETH, "1m", candle(T0, closed=False))]
    await store.write(rows)
    got = await store.query(BTC, "1m")
    assert got == [candle(T0, close=1.5), odd]
    c = got[1]
    for field in Candle.__struct_fields__:
        assert getattr(c, field) == getattr(odd, field), field
        assert type(getattr(c, field)) is type(getattr(odd, field)), field
    assert (await store.query(ETH, "1m"))[0].closed is False


async def test_write_is_idempotent_and_updates(store: PostgresStore) -> None:
    batch = series(50) + series(20, inst=ETH) + series(5, tf="5m", step=5 * M)
    await store.write(batch)
    first = (await dump(store), await dump(store, "5m"))
    await store.write(batch)
    assert (await dump(store), await dump(store, "5m")) == first
    assert len(first[0]) == 70 and len(first[1]) == 5
    await store.write([(BTC, "1m", candle(T0 + 3 * M, close=777.0, closed=False))])
    assert await store.query(BTC, "1m", T0 + 3 * M, T0 + 3 * M) == [candle(T0 + 3 * M, close=777.0, closed=False)]
    assert len(await dump(store)) == 70


@pytest.mark.parametrize("threshold", [10**9, 1], ids=["unnest", "copy"])
async def test_same_key_twice_in_one_batch_last_wins(
    store: PostgresStore, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore, "COPY_THRESHOLD", threshold)
    await store.write(
        [
            (BTC, "1m", candle(T0, close=1.0)),
            (BTC, "1m", candle(T0 + M)),
            (BTC, "1m", candle(T0, close=2.0)),
            (BTC, "5m", candle(T0, close=5.0)),
        ]
    )
    assert [c.close for c in await store.query(BTC, "1m")] == [2.0, 100.0]
    assert [c.close for c in await store.query(BTC, "5m")] == [5.0]


async def test_copy_and_unnest_paths_give_identical_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    names = [new_schema(), new_schema()]
    stores = [await PostgresStore.open(PG_URL, schema=n, pool_size=1) for n in names]
    try:
        existing = series(100, start=T0 - 50 * M) + series(10, inst=ETH, tf="1h", step=H)
        batch = (
            series(3000)
            + series(2500, inst=ETH, tf="5m", step=5 * M)
            + series(40, tf="1h", step=H)
            + [(BTC, "1m", candle(T0 + 5 * M, close=-1.0, closed=False))]
        )  # a repeat: the last one wins
        for st, threshold in zip(stores, (10**9, pgstore.COPY_THRESHOLD), strict=True):
            monkeypatch.setattr(pgstore, "COPY_THRESHOLD", threshold)
            await st.write(existing)
            await st.write(batch)
        for tf in ("1m", "5m", "1h"):
            assert await dump(stores[0], tf) == await dump(stores[1], tf), tf
        assert len(await dump(stores[0], "1m")) == 3050
        assert (await stores[1].query(BTC, "1m", T0 + 5 * M, T0 + 5 * M))[0].close == -1.0
        # the paths really differed: only the COPY store's connection made the staging table
        staged = "SELECT to_regclass('pg_temp.deltafeed_stage') IS NOT NULL"
        assert [await st._pool.fetchval(staged) for st in stores] == [False, True]
    finally:
        for st, n in zip(stores, names, strict=True):
            await st.close()
            await drop_schema(n)


async def test_a_failing_batch_writes_nothing(store: PostgresStore) -> None:
    bad = Candle(T0, 1.0, 1.0, 1.0, 1.0, 1.0, 2**70, True)  # trades beyond bigint
    with pytest.raises(StoreError) as info:
        await store.write([*series(10), (BTC, "5m", bad)])
    assert not isinstance(info.value, StoreUnavailable)
    assert await store.instruments() == []
    with pytest.raises(StoreError, match="timeframe '2x'"):
        await store.write([(BTC, "2x", candle(T0))])
    assert await store.query(BTC, "2m") == [] and await store.last_closed(BTC, "2m") is None  # no table yet


# -- bulk writes: new keys copied straight into the table, the others upserted -------------------


def bulk_history() -> list[tuple[str, str, Candle]]:
    """What the store holds before a bulk write: BTC 1m final with a hole and a provisional tail, ETH 5m."""
    rows = [(BTC, "1m", state_candle(T0 + k * M, "final", 100.0 + k)) for k in range(1500) if not 500 <= k < 600]
    rows += [(BTC, "1m", state_candle(T0 + k * M, "provisional", 100.0 + k)) for k in range(1500, 1510)]
    rows += [(ETH, "5m", state_candle(T0 + k * 5 * M, "final")) for k in range(100)]
    return rows


def bulk_batch() -> list[tuple[str, str, Candle]]:
    """A bulk write over :func:`bulk_history`: corrections of stored candles, the provisional tail made
    final, the hole filled (keys below the newest stored one), unchanged rewrites, new keys beyond the
    newest, a series with no history, and a key repeated (the last one wins)."""
    rows = [(BTC, "1m", state_candle(T0 + k * M, "final", 200.0 + k)) for k in range(1400, 4000)]
    rows += [(BTC, "1m", state_candle(T0 + k * M, "final", 300.0 + k)) for k in range(500, 600)]
    rows += [(BTC, "1m", state_candle(T0 + k * M, "final", 100.0 + k)) for k in range(50)]
    rows += [(ETH, "1m", state_candle(T0 + k * M, "provisional", 10.0 + k)) for k in range(3000)]
    rows += [(ETH, "5m", state_candle(T0 + k * 5 * M, "final", 50.0 + k)) for k in range(90, 2100)]
    rows.append((BTC, "1m", state_candle(T0 + 3999 * M, "forming", 1.0)))
    return rows


@pytest.mark.parametrize("threshold", [10**9, pgstore.COPY_THRESHOLD], ids=["unnest", "copy"])
async def test_bulk_write_of_new_and_overlapping_keys_matches_duckdb(
    store: PostgresStore, tmp_path: Path, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore, "COPY_THRESHOLD", threshold)
    duck = ColdStore(tmp_path / "b.duckdb")
    try:
        for rows in (bulk_history(), bulk_batch(), bulk_batch()):  # the second time changes nothing
            duck.write(rows)
            await store.write(rows)
        for inst, tf in ((BTC, "1m"), (ETH, "1m"), (ETH, "5m")):
            assert await store.query(inst, tf) == duck.query(inst, tf), (inst, tf)
        btc = await store.query(BTC, "1m")
        assert [c.open_time for c in btc] == [T0 + k * M for k in range(4000)]
        assert [c.close for c in btc[:50]] == [100.0 + k for k in range(50)]
        assert [c.close for c in btc[500:600]] == [300.0 + k for k in range(500, 600)]
        assert [c.close for c in btc[1400:3999]] == [200.0 + k for k in range(1400, 3999)]
        assert [c.state for c in btc] == ["final"] * 3999 + ["forming"] and btc[-1].close == 1.0
        assert len(await store.query(ETH, "5m")) == 2100 and len(await store.query(ETH, "1m")) == 3000
    finally:
        duck.close()


async def test_a_bulk_write_of_new_keys_skips_the_staging_table(schema: str) -> None:
    st = await PostgresStore.open(PG_URL, schema=schema, pool_size=1)  # one connection: its temp tables show
    staged = "SELECT to_regclass('pg_temp.deltafeed_stage') IS NOT NULL"
    try:
        await st.write(series(100))
        euro = "kraken:XBT/€ü"  # names of other lengths, in bytes too, in the same COPY
        batch = series(5000, start=T0 + 100 * M) + series(3000, inst=ETH) + series(40, inst=euro)
        await st.write(batch)
        assert await st._pool.fetchval(staged) is False
        assert await st.query(BTC, "1m") == [c for _, _, c in series(100) + batch[:5000]]
        assert await st.query(ETH, "1m") == [c for _, _, c in series(3000, inst=ETH)]
        assert await st.query(euro, "1m") == [c for _, _, c in series(40, inst=euro)]
        assert await st.instruments() == [(BTC, "1m", 5100), (ETH, "1m", 3000), (euro, "1m", 40)]
        again = [(i, tf, candle(c.open_time, close=-c.close)) for i, tf, c in batch]
        await st.write(again)
        assert await st._pool.fetchval(staged) is True
        assert await st.query(ETH, "1m") == [c for _, _, c in again[5000:8000]]
        assert await st.query(euro, "1m") == [c for _, _, c in again[8000:]]
    finally:
        await st.close()


async def test_new_keys_stored_meanwhile_by_another_writer_turn_the_batch_into_upserts(store: PostgresStore) -> None:
    """A key the store took for new (newer than its series' newest) is written by another client between
    the check and the COPY: the COPY fails on it, and the batch is written again as upserts."""
    await store.write(series(10))
    batch = series(3000, start=T0 + 10 * M)
    other, watch = await asyncpg.connect(PG_URL), await asyncpg.connect(PG_URL)
    try:
        tx = other.transaction()
        await tx.start()
        await other.execute(
            f"INSERT INTO {store.schema}.candles_1m VALUES ($1, $2, 1, 1, 1, 1, 1, 1, true, true)", BTC, T0 + 2000 * M
        )
        writing = asyncio.create_task(store.write(batch))
        deadline = time.monotonic() + 60
        waiting = (
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'COPY %'"
            " AND position($1 in query) > 0"
        )
        while not await watch.fetchval(waiting, store.schema):  # the store's COPY waits for our key
            assert time.monotonic() < deadline and not writing.done(), "the store never reached its COPY"
            await asyncio.sleep(0.02)
        await tx.commit()
        await asyncio.wait_for(writing, 60)
    finally:
        await other.close()
        await watch.close()
    assert await store.query(BTC, "1m") == [c for _, _, c in series(10) + batch]


# -- the audit's and start-up's reads of many series ----------------------------------------------


async def test_many_series_reads_equal_duckdbs_per_series_answers(store: PostgresStore, tmp_path: Path) -> None:
    duck = ColdStore(tmp_path / "m.duckdb")
    # gappy_rows' 1m series stretched onto 15m, with holes, forming candles behind closed ones
    rows = state_rows() + [(i, "15m", replace(c, open_time=T0 + (c.open_time - T0) * 15)) for i, _, c in gappy_rows()]
    rows += [(SOL, "15m", candle(T0 + k * 15 * M, closed=k != 4)) for k in (0, 1, 4, 5, 9)]
    odd = "we'ird\\x:€"  # inlined into recent_many's COPY
    rows += [
        (odd, "1m", state_candle(T0 + k * M, state)) for k, state in enumerate(["final", "provisional", "forming"])
    ]
    try:
        duck.write(rows)
        await store.write(rows)
        everyone = [BTC, ETH, SOL, odd, "nobody"]
        bounds = [T0 + k * M for k in (-5, 3, 5, 9, 21, 47, 200, 700)]
        answered = 0
        for tf, tf_ms in (("1m", M), ("5m", 5 * M), ("15m", 15 * M)):
            for since in bounds:
                for until in (u for u in bounds if u >= since):
                    # DuckDB's many-series answers are its per-series ones (each is the other with one series)
                    gaps = await store.find_gaps_many(tf, tf_ms, everyone, since, until)
                    assert gaps == duck.find_gaps_many(tf, tf_ms, everyone, since, until), (tf, since, until)
                    prov = await store.provisional_many(tf, everyone, since, until)
                    assert prov == duck.provisional_many(tf, everyone, since, until), (tf, since, until)
                    answered += sum(map(bool, gaps.values())) + sum(map(bool, prov.values()))
            for last in (1, 3, 1000):
                got = await store.recent_many(tf, everyone, last)
                assert got == {i: StartupRead(duck.query(i, tf, last=last), duck.last_closed(i, tf)) for i in everyone}
                assert got == duck.recent_many(tf, everyone, last)
        assert answered > 100  # the comparisons were not between empty answers
        assert await store.find_gaps_many("1m", M, [BTC, ETH], T0, T0 + DAY) == {
            BTC: [(T0 + 6 * M, T0 + 7 * M)],
            ETH: [],
        }
        assert await store.provisional_many("1m", [ETH, BTC], T0 + 3 * M, T0 + 9 * M) == {
            ETH: [(T0 + 3 * M, T0 + 9 * M)],
            BTC: [(T0 + 3 * M, T0 + 3 * M), (T0 + 5 * M, T0 + 8 * M)],
        }
        assert (await store.recent_many("1m", [BTC], 2))[BTC].last_closed == state_candle(
            T0 + 11 * M, "provisional", 111.0
        )
        assert await store.find_gaps_many("1m", M, [], T0, T0 + DAY) == {}
        nothing = {i: [] for i in everyone}  # a timeframe without a table yet
        assert await store.find_gaps_many("2m", 2 * M, everyone, T0, T0 + DAY) == nothing
        assert await store.provisional_many("2m", everyone, T0, T0 + DAY) == nothing
        assert await store.recent_many("2m", everyone, 5) == {i: StartupRead([], None) for i in everyone}
    finally:
        duck.close()


def month(year: int, m: int) -> int:
    return int(dt.datetime(year, m, 1, tzinfo=dt.UTC).timestamp() * 1000)


async def test_any_timeframe_gets_its_own_table_at_its_first_write(schema: str) -> None:
    """45s, 2h, 1w, 1M and 1d-new_york are stored like the standard timeframes, each in a partitioned
    table created at its first write (a month's is ``candles_1mo``: PostgreSQL folds ``candles_1M`` into
    ``candles_1m``; a New York day's ``candles_1d_new_york``); another process opening the schema
    later finds them; retention applies to them."""
    week0 = 1_700_438_400_000  # a Monday 00:00 UTC
    months = [month(2023, m) for m in (1, 2, 3)]
    rows = {
        "45s": series(4, tf="45s", step=45 * S, start=T0 - T0 % (45 * S)),
        "2h": series(3, tf="2h", step=2 * 3_600_000),
        "1w": series(2, tf="1w", step=7 * DAY, start=week0),
        "1M": [(BTC, "1M", candle(t)) for t in months],
        # 2026-03-08, 23 hours long in New York, and the day after it.
        "1d-new_york": [(BTC, "1d-new_york", candle(t)) for t in (1_772_946_000_000, 1_773_028_800_000)],
    }
    a = await PostgresStore.open(PG_URL, schema=schema, retention={"45s": DAY, "1M": None})
    try:
        await a.write([r for rs in rows.values() for r in rs] + series(2))  # with 1m's: one transaction
        for tf, rs in rows.items():
            assert await a.query(BTC, tf) == [c for _, _, c in rs], tf
        assert await partitions(a, "1mo") and await partitions(a, "45s") and await partitions(a, "1d_new_york")
        assert [c.open_time for c in await a.query(BTC, "1m")] == [T0, T0 + M]  # 1M did not land in 1m
    finally:
        await a.close()
    b = await PostgresStore.open(PG_URL, schema=schema, retention={"45s": DAY, "1M": None})
    try:
        assert await b.instruments() == sorted([(BTC, tf, len(rs)) for tf, rs in rows.items()] + [(BTC, "1m", 2)])
        assert await b.last_closed(BTC, "1M") == rows["1M"][-1][2]
        assert await b.apply_retention(T0 + 2 * DAY) == 4  # the 45s candles, older than a day
        assert await b.query(BTC, "45s") == [] and len(await b.query(BTC, "1M")) == 3
        await b.write(series(1, tf="45s", step=45 * S, start=T0 + 2 * DAY))  # a partition dropped: recreated
        assert len(await b.query(BTC, "45s")) == 1
    finally:
        await b.close()


async def test_partitions_are_created_on_demand(store: PostgresStore) -> None:
    week = PARTITION_MS["1m"]
    await store.write([(BTC, "1m", candle(T0 - M)), (BTC, "1m", candle(T0)), (BTC, "1m", candle(T0 + 2 * week))])
    assert await partitions(store, "1m") == sorted(
        [f"candles_1m_p{T0 - week}", f"candles_1m_p{T0}", f"candles_1m_p{T0 + 2 * week}"]
    )
    await store.write([(BTC, "1s", candle(-5 * S))])  # before 1970
    assert await partitions(store, "1s") == [f"candles_1s_n{DAY}"]
    assert [c.open_time for c in await store.query(BTC, "1s")] == [-5 * S]
    assert await partitions(store, "1d") == []


async def test_two_stores_race_for_partitions_and_survive_a_dropped_one(schema: str) -> None:
    a = await PostgresStore.open(PG_URL, schema=schema)
    b = await PostgresStore.open(PG_URL, schema=schema)
    try:
        # both create the same new partitions at the same moment
        await asyncio.gather(
            *(
                st.write(series(20, inst=inst, step=DAY, start=T0 + k * M))
                for k, (st, inst) in enumerate(((a, BTC), (b, ETH), (a, "x:A"), (b, "x:B")))
            )
        )
        assert await a.instruments() == [(BTC, "1m", 20), (ETH, "1m", 20), ("x:A", "1m", 20), ("x:B", "1m", 20)]
        # a's retention drops a partition b still has in its cache; b's next write there recreates it
        a.retention = {"1m": 7 * DAY}
        assert await a.apply_retention(T0 + 14 * DAY) == 4 * 7
        await b.write([(BTC, "1m", candle(T0 + M))])
        assert await b.query(BTC, "1m", until_ms=T0 + DAY) == [candle(T0 + M)]
    finally:
        await a.close()
        await b.close()


# -- reads: the same answers as the DuckDB tier -------------------------------------------------


def gappy_rows() -> list[tuple[str, str, Candle]]:
    """1m candles with holes, an open candle inside, one at the end, and another series around them."""
    minutes = [0, 1, 2, 5, 6, 7, 8, 12, 13, 20, 21, 22, 23, 30, 40, 43, 44, 47, 49]
    still_open = {6, 21, 30, 43, 47}  # 43 and 47 touch holes, so their stretches merge with them
    rows = [(BTC, "1m", candle(T0 + k * M, close=100.0 + k, closed=k not in still_open)) for k in minutes]
    rows += [(ETH, "1m", candle(T0 + k * M)) for k in range(0, 40, 3)]
    rows += [(BTC, "5m", candle(T0 + k * 5 * M, closed=k != 2)) for k in (0, 1, 2, 3, 7)]
    return rows


@pytest.mark.parametrize("read_path", ["records", "copy"])
async def test_reads_match_duckdb(
    store: PostgresStore, tmp_path: Path, read_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore, "COPY_READ_ROWS", 10**9 if read_path == "records" else -1)
    rows = gappy_rows()
    duck = ColdStore(tmp_path / "c.duckdb")
    try:
        duck.write(rows)
        await store.write(rows)
        for inst, tf in ((BTC, "1m"), (ETH, "1m"), (BTC, "5m"), (ETH, "5m"), (BTC, "1h")):
            for since, until, last in (
                (None, None, None),
                (T0 + 5 * M, T0 + 13 * M, None),
                (T0 + 6 * M, None, None),
                (None, T0 + 2 * M, None),
                (None, None, 3),
                (T0, T0 + 22 * M, 2),
                (None, None, 0),
                (None, None, 1000),
                (T0 + 9 * M, T0 + 11 * M, None),
            ):
                assert await store.query(inst, tf, since, until, last) == duck.query(inst, tf, since, until, last)
            assert await store.last_closed(inst, tf) == duck.last_closed(inst, tf)
        assert await store.instruments() == duck.instruments()
        assert await store.instruments() == [(BTC, "1m", 19), (BTC, "5m", 5), (ETH, "1m", 14)]
    finally:
        duck.close()


async def test_query_bounds_and_last(store: PostgresStore) -> None:
    await store.write([*series(10), (BTC, "1m", candle(T0 + 10 * M, closed=False))])
    rel = [(c.open_time - T0) // M for c in await store.query(BTC, "1m", since_ms=T0 + 3 * M, until_ms=T0 + 5 * M)]
    assert rel == [3, 4, 5]
    assert [(c.open_time - T0) // M for c in await store.query(BTC, "1m", last=3)] == [8, 9, 10]
    assert [(c.open_time - T0) // M for c in await store.query(BTC, "1m", until_ms=T0 + 5 * M, last=2)] == [4, 5]
    assert await store.query(BTC, "1m", last=0) == [] and await store.query(ETH, "1m") == []
    assert await store.last_closed(BTC, "1m") == candle(T0 + 9 * M, close=109.0)
    assert await store.last_closed(ETH, "1m") is None


async def test_large_reads_use_binary_copy_with_the_same_result(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = "we'ird\\x:B$1'--"  # quotes and a backslash must survive the inlined literal of the COPY path
    rows = series(5000, inst=odd) + series(3000, inst=BTC)
    rows = [(i, tf, replace(c, final=True) if k % 3 else c) for k, (i, tf, c) in enumerate(rows)]  # some final
    rows[17] = (odd, "1m", Candle(T0 + 17 * M, 0.1 + 0.2, 1e300, -5e-324, 1.0, 1e-9, 2**62, False))
    await store.write(rows)
    cases = [
        (None, None, None),
        (T0 + 100 * M, None, None),
        (None, T0 + 4000 * M, None),
        (None, None, 3000),
        (T0 + 10 * M, T0 + 4990 * M, 4500),
        (T0, T0 + 4999 * M, None),
    ]
    for since, until, last in cases:
        copied = await store.query(odd, "1m", since, until, last)  # > COPY_READ_ROWS: the COPY path
        monkeypatch.setattr(pgstore, "COPY_READ_ROWS", 10**9)
        assert await store.query(odd, "1m", since, until, last) == copied, (since, until, last)
        monkeypatch.undo()
        if last is None:  # the same candles as records, field by field
            assert to_candles(await store.query_records(odd, "1m", since, until)) == copied, (since, until)
    # a bounded range read in pieces at once (bounds off the grid, pieces of uneven length) reads the same
    for since, until in ((T0, T0 + 4999 * M), (T0 + 7 * M + 1, T0 + 4990 * M - 1), (T0 - DAY, T0 + DAY)):
        whole = [c for _, _, c in rows[:5000] if since <= c.open_time <= until]
        for parts in (1, 2, 3, 7):
            monkeypatch.setattr(pgstore, "READ_PARTS", parts)
            assert await store.query(odd, "1m", since, until) == whole, (since, until, parts)
            records = await store.query_records(odd, "1m", since, until)
            assert records.dtype == CANDLE_RECORD and to_candles(records) == whole, (since, until, parts)
    monkeypatch.undo()
    final = [c for _, _, c in rows[:5000] if c.final]
    assert 3000 < len(final) < 5000 and to_candles(await store.query_records(odd, "1m", final_only=True)) == final
    assert to_candles(await store.query_records(odd, "1m", T0, T0 + 4999 * M, final_only=True)) == final
    assert len(await store.query_records("nobody", "1m", T0, T0 + DAY)) == 0
    assert len(await store.query_records(odd, "1w")) == 0  # a timeframe the store does not keep
    everything = await store.query(odd, "1m")
    assert len(everything) == 5000 and everything[17] == rows[17][2]
    assert [c.open_time for c in everything] == [T0 + k * M for k in range(5000)]
    assert [c.open_time for c in await store.query(odd, "1m", last=3000)] == [T0 + k * M for k in range(2000, 5000)]
    assert len(await store.query(BTC, "1m")) == 3000
    assert await store.query("nobody", "1m") == []

    # data that is not laid out as expected is refused, not misread
    async def read(data: bytes, step: int) -> list[Candle]:
        reader = pgcopy.CopyReader()
        for k in range(0, len(data), step):
            await reader.feed(data[k : k + step])
        return reader.finish()

    header = pgcopy.COPY_SIGNATURE + bytes(8)
    row = np.array([(9, 8, T0, 8, 1.0, 8, 2.0, 8, 0.5, 8, 1.5, 8, 9.0, 8, 4, 1, True, 1, True)], dtype=pgcopy.COPY_ROW)
    for step in (1, 7, 91, 10**6):  # rows split anywhere between chunks
        assert (
            await read(header + row.tobytes() * 3 + b"\xff\xff", step)
            == [Candle(T0, 1.0, 2.0, 0.5, 1.5, 9.0, 4, True, True)] * 3
        )
        as_records = pgcopy.CopyReader(records=True)
        for k in range(0, len(header) + 3 * row.itemsize + 2, step):
            await as_records.feed((header + row.tobytes() * 3 + b"\xff\xff")[k : k + step])
        assert as_records.finish() == [], "records mode makes no Candle"
        assert to_candles(as_records.records()) == [Candle(T0, 1.0, 2.0, 0.5, 1.5, 9.0, 4, True, True)] * 3
    for field, wrong in (("nfields", 7), ("len0", 4), ("len5", 4), ("len8", 8)):  # a column's type changed
        bad = row.copy()
        bad[field] = wrong
        for step in (5, 10**6):
            with pytest.raises(ValueError, match="column types"):
                await read(header + row.tobytes() * 2 + bad.tobytes() + b"\xff\xff", step)
    with pytest.raises(ValueError, match="header"):
        await read(b"COPY" + bytes(40), 10**6)
    with pytest.raises(ValueError, match="partial row"):
        await read(header + row.tobytes()[:50], 10**6)


async def test_export_from_postgres_writes_every_stored_field(store: PostgresStore, tmp_path: Path) -> None:
    """``deltafeed export --db postgresql://...`` reads the series as records (no Candle per row) and
    writes what the store holds, field by field and state by state, whole or bounded, in every format."""
    import pandas as pd

    rows = series(6000, inst=ETH)  # past 2 x COPY_READ_ROWS: a bounded read comes in READ_PARTS pieces
    rows = [(i, tf, replace(c, final=True) if k % 4 else c) for k, (i, tf, c) in enumerate(rows)]
    rows[9] = (ETH, "1m", Candle(T0 + 9 * M, 0.1 + 0.2, 1e300, -5e-324, 1.0, 1e-9, 2**62, False))
    rows[-1] = (ETH, "1m", replace(rows[-1][2], closed=False, final=False))  # the forming one
    await store.write([*rows, *series(50, inst=BTC)])
    db = ["--db", PG_URL, "--db-schema", store.schema]
    cases: list[tuple[list[str], int | None, int | None, bool]] = [
        ([], None, None, False),
        (["--since", "2023-11-09T00:20:00Z", "--until", "2023-11-11T00:00:00Z"], T0 + 20 * M, T0 + 2 * DAY, False),
        (["--final-only"], None, None, True),
    ]
    assert int(dt.datetime(2023, 11, 9, tzinfo=dt.UTC).timestamp() * 1000) == T0  # the dates above
    for argv, since, until, final_only in cases:
        want = await store.query(ETH, "1m", since, until, final_only=final_only)
        assert len(want) > 2000, argv
        for fmt in ("parquet", "csv"):
            out = tmp_path / f"eth.{fmt}"
            code = await asyncio.to_thread(main, ["export", ETH, "1m", str(out), *db, "--format", fmt, *argv])
            assert code == 0, (argv, fmt)
            frame = pd.read_parquet(out) if fmt == "parquet" else pd.read_csv(out)
            got = [
                (
                    int(pd.Timestamp(r["open_time"]).value // 1_000_000),
                    r["open"],
                    r["high"],
                    r["low"],
                    r["close"],
                    r["volume"],
                    int(r["trades"]),
                    r["state"],
                    r["instrument"],
                    r["timeframe"],
                )
                for r in frame.to_dict("records")
            ]
            expect = [(*c.row(), c.state, ETH, "1m") for c in want]
            assert got == expect, (argv, fmt)


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_find_gaps_matches_duckdb(store: PostgresStore, tmp_path: Path) -> None:
    rows = gappy_rows()
    duck = ColdStore(tmp_path / "c.duckdb")
    try:
        duck.write(rows)
        await store.write(rows)
        # the expected answer spelled out once, so the comparison below cannot pass vacuously
        assert await store.find_gaps(BTC, "1m", M, T0, T0 + 60 * M) == [
            (T0 + a * M, T0 + b * M)
            for a, b in ((3, 4), (6, 6), (9, 11), (14, 19), (21, 21), (24, 39), (41, 43), (45, 48))
        ]
        bounds = [
            T0 + k * M for k in (-5, 0, 1, 2, 3, 5, 6, 7, 9, 12, 13, 19, 21, 22, 29, 30, 31, 40, 43, 44, 47, 48, 49, 55)
        ]
        checked = 0
        for inst, tf, tf_ms in ((BTC, "1m", M), (ETH, "1m", M), (BTC, "5m", 5 * M), (ETH, "5m", 5 * M)):
            for since in bounds:
                for until in bounds:
                    if until >= since:
                        expect = duck.find_gaps(inst, tf, tf_ms, since, until)
                        assert await store.find_gaps(inst, tf, tf_ms, since, until) == expect, (inst, tf, since, until)
                        checked += bool(expect)
        assert checked > 100
        assert await store.find_gaps(BTC, "2m", M, T0, T0 + DAY) == []
    finally:
        duck.close()


async def test_final_marks(store: PostgresStore) -> None:
    assert await store.final_marks() == {}
    await store.set_final_marks({(BTC, "1m"): T0, (ETH, "5m"): T0 + 5 * M})
    await store.set_final_marks({(BTC, "1m"): T0 + M})
    await store.set_final_marks({})
    assert await store.final_marks() == {(BTC, "1m"): T0 + M, (ETH, "5m"): T0 + 5 * M}


async def test_switches_round_trip_and_idempotent(store: PostgresStore) -> None:
    assert await store.switches("fx:EUR_USD") == []
    a = Switch("fx:EUR_USD", T0 + 5 * S, T0 + M, "oanda:EUR_USD", "ig:CS.D.EURUSD.CFD.IP")
    b = Switch("fx:EUR_USD", T0 + H, T0 + H + M, "ig:CS.D.EURUSD.CFD.IP", "oanda:EUR_USD")
    await store.record_switches([b, a])
    await store.record_switches([a])
    await store.record_switches([])
    await store.record_switches([Switch("fx:GBP_USD", T0, T0, "x", "y")])
    assert await store.switches("fx:EUR_USD") == [a, b]
    assert await store.switches("fx:EUR_USD", T0 + M, None) == [b]
    assert await store.switches("fx:EUR_USD", None, T0 + 5 * S) == [a]


async def test_closed_partitions_get_a_covering_index_and_read_the_same(store: PostgresStore) -> None:
    # 20 series written minute by minute (as the writer stores them) across the partitions [T0-7d, T0)
    # and [T0, T0+7d); at T0 only the first one has ended.
    names = [f"cov:{k:02d}" for k in range(20)]
    rows = [(n, "1m", candle(T0 + i * M, close=100.0 + i + k)) for i in range(-2000, 1000) for k, n in enumerate(names)]
    await store.write(rows)
    spans = [(None, None, None), (T0 - 1500 * M, T0 + 500 * M, None), (T0 - 2000 * M, T0 - M, None), (None, None, 2500)]
    before = {(n, span): await store.query(n, "1m", *span) for n in names[::7] for span in spans}
    assert sum(map(len, before.values())) > 3 * 3000
    closed, current = f"candles_1m_p{T0 - 7 * DAY}", f"candles_1m_p{T0}"

    async def covers() -> dict[str, bool]:
        found = await store._pool.fetch(
            "SELECT t.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace s ON s.oid = c.relnamespace"
            " WHERE s.nspname = $1 AND c.relname LIKE '%\\_cover'",
            store.schema,
        )
        return {str(r[0]): bool(r[1]) for r in found}

    assert await covers() == {}
    store.cover_closed = False  # the postgres_cover_closed setting off: the hourly run leaves them be
    await store.apply_retention(T0)
    assert await covers() == {}
    store.cover_closed = True
    # another process covering this schema (holding the lock): this one skips, and covers once it is free
    other = await asyncpg.connect(PG_URL)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"deltafeed.cover.{store.schema}")
        assert await store.cover_closed_partitions(T0) == []
        assert await covers() == {}
    finally:
        await other.close()
    assert await store.cover_closed_partitions(T0) == [closed]
    assert await covers() == {closed: True}
    other = await asyncpg.connect(PG_URL)
    try:  # the store let go of the lock
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"deltafeed.cover.{store.schema}")
    finally:
        await other.close()
    assert await store.cover_closed_partitions(T0) == []  # once
    plan = "\n".join(
        r[0]
        for r in await store._pool.fetch(
            f"EXPLAIN SELECT open_time, close FROM {store.schema}.candles_1m WHERE instrument = $1"
            " AND open_time BETWEEN $2 AND $3 ORDER BY open_time",
            names[3],
            T0 - 1500 * M,
            T0 + 500 * M,
        )
    )
    assert f"Index Only Scan using {closed}_cover" in plan, plan
    for (n, span), candles in before.items():
        assert await store.query(n, "1m", *span) == candles, (n, span)
    # a write into the covered partition (a correction) still upserts, and reads back
    fixed = candle(T0 - 10 * M, close=1.5)
    await store.write([(names[0], "1m", fixed)])
    assert await store.query(names[0], "1m", T0 - 10 * M, T0 - 10 * M) == [fixed]
    # a build that failed half-way (an invalid index of that name) is dropped and built again
    await store._pool.execute(f"DROP INDEX {store.schema}.{closed}_cover")
    with pytest.raises(asyncpg.UniqueViolationError):
        await store._pool.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {closed}_cover ON {store.schema}.{closed} (open)")
    assert await covers() == {closed: False}
    assert await store.cover_closed_partitions(T0 + 7 * DAY) == [closed, current]
    assert await covers() == {closed: True, current: True}
    assert await store.query(names[7], "1m") == before[(names[7], (None, None, None))]


# -- retention ----------------------------------------------------------------------------------


async def test_retention_is_exact_and_drops_whole_partitions(schema: str, tmp_path: Path) -> None:
    retention: dict[str, int | None] = {"1m": 10 * DAY, "1s": DAY, "1h": 30 * DAY, "1d": None}
    st = await PostgresStore.open(PG_URL, retention, schema=schema)
    duck = ColdStore(tmp_path / "c.duckdb", retention=retention)
    try:
        now = T0 + 30 * DAY + 12 * H  # 1m cutoff: T0 + 20.5 days, inside the partition [T0+14d, T0+21d)
        rows = [(BTC, "1m", candle(T0 + k * H)) for k in range(0, 31 * 24)]  # hourly, over 31 days
        cutoff = now - 10 * DAY
        rows += [(ETH, "1m", candle(cutoff - M)), (ETH, "1m", candle(cutoff)), (ETH, "1m", candle(cutoff + M))]
        rows += [(BTC, "1s", candle(now - DAY - S)), (BTC, "1s", candle(now - DAY)), (BTC, "1s", candle(now - 3 * DAY))]
        rows += [(BTC, "1h", candle(now - 400 * DAY)), (BTC, "1h", candle(now - H))]
        rows += [(BTC, "1d", candle(T0 - 5000 * DAY)), (BTC, "5m", candle(T0 - 5000 * DAY))]  # forever, and unset
        await st.write(rows)
        duck.write(rows)
        before = {tf: await partitions(st, tf) for tf in ("1m", "1s", "1h", "1d")}
        expected = duck.apply_retention(now)
        assert expected == 20 * 24 + 12 + 1 + 2 + 1  # BTC 1m before the cutoff, ETH's, 1s, 1h
        assert await st.apply_retention(now) == expected
        for inst, tf in ((BTC, "1m"), (ETH, "1m"), (BTC, "1s"), (BTC, "1h"), (BTC, "1d"), (BTC, "5m")):
            assert await st.query(inst, tf) == duck.query(inst, tf), (inst, tf)
        assert [c.open_time for c in await st.query(ETH, "1m")] == [cutoff, cutoff + M]
        assert (await st.query(BTC, "1m"))[0].open_time == T0 + 20 * DAY + 12 * H
        # whole partitions below the cutoff are gone from the catalog; the straddling one stays
        week = PARTITION_MS["1m"]
        assert await partitions(st, "1m") == [n for n in before["1m"] if int(n.rsplit("_p", 1)[1]) + week > cutoff]
        assert len(await partitions(st, "1m")) == len(before["1m"]) - 2
        assert f"candles_1m_p{T0 + 14 * DAY}" in await partitions(st, "1m")
        assert len(await partitions(st, "1s")) < len(before["1s"])
        assert await partitions(st, "1d") == before["1d"]
        assert await st.apply_retention(now) == 0
        assert await st.apply_retention(now + DAY) == duck.apply_retention(now + DAY) > 0
        # a dropped partition is recreated when a write needs it again
        await st.write([(BTC, "1m", candle(T0))])
        assert await st.query(BTC, "1m", until_ms=T0) == [candle(T0)]
    finally:
        duck.close()
        await st.close()


# -- migrations and opening ---------------------------------------------------------------------


async def test_migrations_reopen_is_a_noop_and_newer_is_refused(schema: str) -> None:
    st = await PostgresStore.open(PG_URL, schema=schema)
    await st.write(series(3))
    applied = await st._pool.fetch(f"SELECT version, description, applied_at FROM {schema}.schema_migrations")
    assert [r["version"] for r in applied] == list(range(1, SCHEMA_VERSION + 1))
    await st.close()
    again = await PostgresStore.open(PG_URL, schema=schema)
    assert (
        await again._pool.fetch(f"SELECT version, description, applied_at FROM {schema}.schema_migrations") == applied
    )
    assert await again.instruments() == [(BTC, "1m", 3)]
    await again._pool.execute(
        f"INSERT INTO {schema}.schema_migrations (version, description) VALUES ($1, 'future')", SCHEMA_VERSION + 1
    )
    await again.close()
    with pytest.raises(BadInput, match=r"newer deltafeed.*upgrade") as info:
        await PostgresStore.open(PG_URL, schema=schema)
    assert "\n" not in str(info.value)


async def test_a_new_migration_is_applied_once_at_the_next_open(schema: str, monkeypatch: pytest.MonkeyPatch) -> None:
    st = await PostgresStore.open(PG_URL, schema=schema)
    await st.write(series(3))
    await st.close()
    step = pgschema.sql_migration(
        SCHEMA_VERSION + 1,
        "index on close",
        "CREATE INDEX ON {table} (close)",
        "COMMENT ON SCHEMA {schema} IS 'deltafeed candles'",
        per_timeframe=True,
    )
    monkeypatch.setattr(pgschema, "MIGRATIONS", (*pgschema.MIGRATIONS, step))
    monkeypatch.setattr(pgschema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    for _ in range(2):
        st = await PostgresStore.open(PG_URL, schema=schema)
        versions = await st._pool.fetch(f"SELECT version, description FROM {schema}.schema_migrations ORDER BY 1")
        assert [tuple(v) for v in versions][-1] == (SCHEMA_VERSION + 1, "index on close")
        assert len(versions) == SCHEMA_VERSION + 1
        indexed = await st._pool.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexdef LIKE '%(close)'"
            " AND tablename LIKE 'candles\\_%' AND tablename NOT LIKE '%\\_p%'",
            schema,
        )
        assert indexed == len(PARTITION_MS)
        assert await st.query(BTC, "1m") == [c for _, _, c in series(3)]
        await st.close()


async def test_concurrent_opens_of_a_fresh_schema_both_succeed(schema: str) -> None:
    stores = await asyncio.gather(*(PostgresStore.open(PG_URL, schema=schema) for _ in range(3)))
    try:
        count = await stores[0]._pool.fetchval(f"SELECT count(*) FROM {schema}.schema_migrations")
        assert count == SCHEMA_VERSION
        await asyncio.gather(*(st.write(series(5, inst=f"x:{k}")) for k, st in enumerate(stores)))
        assert len(await stores[2].instruments()) == 3
    finally:
        for st in stores:
            await st.close()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        (
            f"postgresql://u:s3cret@127.0.0.1:{free_port()}/test",
            ["cannot reach", "connection refused", "start the server"],
        ),
        ("postgresql://u:s3cret@127.0.0.1:notaport/test", ["not a usable PostgreSQL URL", "postgresql://USER"]),
        ("mysql://u:s3cret@127.0.0.1:5432/test", ["not a usable PostgreSQL URL"]),
        (PG_URL.rsplit("/", 1)[0] + "/no_such_db_deltafeed", ["does not exist", "createdb no_such_db_deltafeed"]),
        (
            "postgresql://no_such_role_deltafeed:s3cret@" + urlsplit(PG_URL).netloc.split("@")[-1] + "/test",
            ["refused the login", "no_such_role_deltafeed", "fix the user or password"],
        ),
    ],
    ids=["refused", "bad-port", "scheme", "no-database", "no-role"],
)
async def test_open_errors_are_one_line_without_password(url: str, words: list[str]) -> None:
    t = time.monotonic()
    with pytest.raises(BadInput) as info:
        await PostgresStore.open(url, schema=new_schema(), connect_timeout_s=3)
    msg = str(info.value)
    assert time.monotonic() - t < 5
    assert "\n" not in msg and "s3cret" not in msg, msg
    for w in words:
        assert w in msg, msg


async def test_name_and_schema_validation() -> None:
    name = new_schema()
    url = "postgresql://postgres:s3cret@" + urlsplit(PG_URL).netloc.split("@")[-1] + urlsplit(PG_URL).path
    st = await PostgresStore.open(url + "?application_name=x", schema=name)  # trust auth ignores the password
    try:
        assert "s3cret" not in st.name and "***" in st.name and name in st.name
        assert "s3cret" not in repr(st)
    finally:
        await st.close()
        await st.close()  # safe twice
        await drop_schema(name)
    with pytest.raises(StoreUnavailable, match="closed"):
        await st.write(series(1))
    for bad in ("Deltafeed", "x;drop", "pg_thing", "1abc", "a" * 64):
        with pytest.raises(BadInput, match="schema name"):
            await PostgresStore.open(PG_URL, schema=bad)


# -- outage -------------------------------------------------------------------------------------


async def test_outage_then_recovery_on_the_same_store(private_pg: PrivatePostgres) -> None:
    st = await PostgresStore.open(private_pg.url, command_timeout_s=5, connect_timeout_s=2)
    try:
        await st.write(series(100))
        await asyncio.to_thread(private_pg.stop)
        t = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await st.write(series(50, start=T0 + 100 * M))
        assert time.monotonic() - t < 3
        msg = str(info.value)
        assert f"127.0.0.1:{private_pg.port}" in msg and "\n" not in msg, msg
        with pytest.raises(StoreUnavailable):
            await st.query(BTC, "1m")
        await asyncio.to_thread(private_pg.start)
        await st.write(series(50, start=T0 + 100 * M))  # the batch kept during the outage, retried
        got = await st.query(BTC, "1m")
        assert [c.open_time for c in got] == [T0 + k * M for k in range(150)]
        # a restart between two calls: the pooled connection is dead but the loop has not noticed yet
        # (restart() blocks it), so the write meets a closed socket, and retries once on a fresh one
        private_pg.restart()
        await st.write(series(1, start=T0 + 150 * M))
        assert len(await st.query(BTC, "1m")) == 151
    finally:
        await st.close()


# -- candle states: forming, provisional, final -------------------------------------------------


def state_candle(t: int, state: str, close: float = 100.0) -> Candle:
    closed, final = state_flags(state)
    return Candle(t, close - 1, close + 1, close - 2, close, 1.0, 3, closed, final)


def state_rows() -> list[tuple[str, str, Candle]]:
    """BTC 1m with every state, runs of provisional candles and a hole; ETH 1m all provisional; BTC 5m."""
    states = {
        0: "final",
        1: "final",
        2: "provisional",
        3: "provisional",
        4: "final",
        5: "provisional",
        8: "provisional",
        9: "final",
        10: "provisional",
        11: "provisional",
        12: "forming",
    }
    rows = [(BTC, "1m", state_candle(T0 + k * M, s, 100.0 + k)) for k, s in states.items()]
    rows += [(ETH, "1m", state_candle(T0 + k * M, "provisional")) for k in range(20)]
    rows += [(BTC, "5m", state_candle(T0 + k * 5 * M, "final" if k % 2 else "provisional")) for k in range(6)]
    return rows


@pytest.mark.parametrize("threshold", [10**9, 1], ids=["unnest", "copy"])
async def test_states_round_trip_and_an_upsert_makes_a_candle_final(
    store: PostgresStore, threshold: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore, "COPY_THRESHOLD", threshold)
    rows = [(BTC, "1m", state_candle(T0 + k * M, s)) for k, s in enumerate(("final", "provisional", "forming"))]
    await store.write(rows)
    for read_rows in (10**9, -1):  # records, then binary COPY
        monkeypatch.setattr(pgstore, "COPY_READ_ROWS", read_rows)
        back = await store.query(BTC, "1m")
        assert back == [c for _, _, c in rows]
        assert [c.state for c in back] == ["final", "provisional", "forming"]
        assert [type(c.final) for c in back] == [bool] * 3
    await store.write([(BTC, "1m", state_candle(T0 + M, "final", close=7.0))])
    assert [c.state for c in await store.query(BTC, "1m")] == ["final", "final", "forming"]
    assert await store.query(BTC, "1m", T0 + M, T0 + M) == [state_candle(T0 + M, "final", close=7.0)]
    # the column as any SQL client sees it
    assert (
        await store._pool.fetchval(f"SELECT final FROM {store.schema}.candles_1m WHERE open_time = $1", T0 + M) is True
    )


@pytest.mark.parametrize("read_path", ["records", "copy"])
async def test_final_only_and_provisional_match_duckdb(
    store: PostgresStore, tmp_path: Path, read_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore, "COPY_READ_ROWS", 10**9 if read_path == "records" else -1)
    rows = state_rows()
    duck = ColdStore(tmp_path / "s.duckdb")
    try:
        duck.write(rows)
        await store.write(rows)
        assert [(c.open_time - T0) // M for c in await store.query(BTC, "1m", final_only=True)] == [0, 1, 4, 9]
        assert [(c.open_time - T0) // M for c in await store.query(BTC, "1m", last=2, final_only=True)] == [4, 9]
        assert await store.provisional(BTC, "1m", T0, T0 + DAY) == [
            (T0 + 2 * M, T0 + 3 * M),
            (T0 + 5 * M, T0 + 8 * M),
            (T0 + 10 * M, T0 + 11 * M),
        ]
        for inst, tf in ((BTC, "1m"), (ETH, "1m"), (BTC, "5m"), (ETH, "5m")):
            for since, until, last in (
                (None, None, None),
                (T0 + 2 * M, T0 + 9 * M, None),
                (None, None, 1),
                (None, T0 + 8 * M, 2),
                (T0 + 5 * M, None, 100),
            ):
                assert await store.query(inst, tf, since, until, last, final_only=True) == duck.query(
                    inst, tf, since, until, last, final_only=True
                ), (inst, tf, since, until, last)
                assert await store.query(inst, tf, since, until, last) == duck.query(inst, tf, since, until, last)
            for lo, hi in (
                (T0, T0 + DAY),
                (T0 + 3 * M, T0 + 10 * M),
                (T0 + 12 * M, T0 + DAY),
                (T0 + 9 * M, T0 + 9 * M),
            ):
                assert await store.provisional(inst, tf, lo, hi) == duck.provisional(inst, tf, lo, hi), (
                    inst,
                    tf,
                    lo,
                    hi,
                )
        assert await store.provisional(BTC, "2m", T0, T0 + DAY) == []
    finally:
        duck.close()


async def _schema_at_migration_2(name: str) -> None:
    """A schema as deltafeed left it before candles had ``final`` (migrations 1 and 2 applied), with
    candles and final marks, built by hand from that layout."""
    con = await asyncpg.connect(PG_URL)
    try:
        await con.execute(f"CREATE SCHEMA {name}")
        await con.execute(
            f"CREATE TABLE {name}.schema_migrations (version int PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for tf in PARTITION_MS:
            await con.execute(
                f"CREATE TABLE {name}.candles_{tf} (instrument text NOT NULL, open_time bigint NOT NULL,"
                " open double precision NOT NULL, high double precision NOT NULL, low double precision NOT NULL,"
                " close double precision NOT NULL, volume double precision NOT NULL, trades bigint NOT NULL,"
                " closed boolean NOT NULL, PRIMARY KEY (instrument, open_time)) PARTITION BY RANGE (open_time)"
            )
        for tf in ("1m", "5m"):
            await con.execute(
                f"CREATE TABLE {name}.candles_{tf}_p{T0} PARTITION OF {name}.candles_{tf}"
                f" FOR VALUES FROM ({T0}) TO ({T0 + PARTITION_MS[tf]})"
            )
        await con.execute(
            f"CREATE TABLE {name}.final_marks (instrument text NOT NULL, timeframe text NOT NULL,"
            " final_until bigint NOT NULL, PRIMARY KEY (instrument, timeframe))"
        )
        await con.execute(
            f"CREATE TABLE {name}.switches (instrument text NOT NULL, since_ms bigint NOT NULL,"
            " at_ms bigint NOT NULL, source_from text NOT NULL, source_to text NOT NULL,"
            " PRIMARY KEY (instrument, since_ms))"
        )
        await con.execute(f"INSERT INTO {name}.schema_migrations (version, description) VALUES (1, 'v1'), (2, 'v2')")
        # BTC 1m: 0-7 closed, 8 open, marked final before 5; ETH 5m: closed, open, closed, closed, marked
        # before 10 (so the open one behind the mark stays forming); ETH 1m: no mark
        await con.execute(
            f"INSERT INTO {name}.final_marks VALUES ($1, '1m', $2), ($3, '5m', $4)", BTC, T0 + 5 * M, ETH, T0 + 10 * M
        )
        await con.executemany(
            f"INSERT INTO {name}.candles_1m VALUES ($1, $2, 1, 2, 0.5, 1.5, 3, 4, $3)",
            [(BTC, T0 + k * M, k < 8) for k in range(9)] + [(ETH, T0 + k * M, True) for k in range(3)],
        )
        await con.executemany(
            f"INSERT INTO {name}.candles_5m VALUES ($1, $2, 1, 2, 0.5, 1.5, 3, 4, $3)",
            [(ETH, T0 + k * 5 * M, k != 1) for k in range(4)],
        )
    finally:
        await con.close()


async def test_migration_3_makes_candles_behind_the_mark_final_and_the_rest_provisional(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _schema_at_migration_2(schema)
    st = await PostgresStore.open(PG_URL, schema=schema)
    try:
        versions = await st._pool.fetch(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")
        assert [v[0] for v in versions] == [1, 2, 3, 4, 5] and SCHEMA_VERSION == 5
        assert [c.state for c in await st.query(BTC, "1m")] == ["final"] * 5 + ["provisional"] * 3 + ["forming"]
        assert [c.state for c in await st.query(ETH, "5m")] == ["final", "forming", "provisional", "provisional"]
        assert [c.state for c in await st.query(ETH, "1m")] == ["provisional"] * 3
        assert await st.provisional(BTC, "1m", T0, T0 + DAY) == [(T0 + 5 * M, T0 + 7 * M)]
        assert len(await st.query(BTC, "1m", final_only=True)) == 5
        # The migrated tables take writes on both paths, including partitions created after it.
        for threshold in (10**9, 1):
            monkeypatch.setattr(pgstore, "COPY_THRESHOLD", threshold)
            await st.write(
                [
                    (BTC, "1m", state_candle(T0 + 6 * M, "final")),
                    (BTC, "1m", state_candle(T0 + PARTITION_MS["1m"], "provisional")),
                ]
            )
        assert await st.provisional(BTC, "1m", T0, T0 + 2 * PARTITION_MS["1m"]) == [
            (T0 + 5 * M, T0 + 5 * M),
            (T0 + 7 * M, T0 + 7 * M),
            (T0 + PARTITION_MS["1m"], T0 + PARTITION_MS["1m"]),
        ]
    finally:
        await st.close()
    again = await PostgresStore.open(PG_URL, schema=schema)  # reopening applies nothing twice
    assert len(await again._pool.fetch(f"SELECT version FROM {schema}.schema_migrations")) == SCHEMA_VERSION
    await again.close()
