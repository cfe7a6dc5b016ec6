"""Raw tick storage in both cold tiers (a DuckDB file and PostgreSQL) and the engine's tick recorder:
idempotent writes (a batch twice, overlapping batches, repeats inside one), reads by window, limit
and newest, retention, the gaps a reader is told of, and the recorder's gap finding through real
series fed real trades."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import pytest_asyncio

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import Trade
from deltafeed.store.cold import ColdStore, DuckDBTier
from deltafeed.store.ticks import TickBatch, TickGap, TickRecorder, TickTier, TradeRow

PG_URL = os.environ.get("DELTAFEED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"
T0 = 1_780_000_000_000


def _pg_up() -> bool:
    parts = urlsplit(PG_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5432), timeout=1):
            return True
    except OSError:
        return False


@pytest_asyncio.fixture(params=["duckdb", "postgresql"])
async def tier(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TickTier]:
    if request.param == "duckdb":
        t = DuckDBTier(ColdStore(tmp_path / "t.duckdb"))
        yield t
        await t.close()
        return
    if not _pg_up():
        pytest.skip(f"no PostgreSQL at {PG_URL}")
    from deltafeed.store.postgres import PostgresStore

    schema = f"deltafeed_t_{uuid.uuid4().hex}"
    st = await PostgresStore.open(PG_URL, schema=schema)
    yield st
    await st.close()
    con = await asyncpg.connect(PG_URL)
    try:
        await con.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await con.close()


def trades(n: int, inst: str = BTC, first_id: int = 1, t0: int = T0) -> list[TradeRow]:
    # Two trades per millisecond, prices and sizes with exact decimal text.
    return [
        (inst, first_id + i, t0 + i // 2, 100.0 + (i % 7) * 0.25, 0.001 * (1 + i % 5), i % 3 == 0) for i in range(n)
    ]


def as_page(rows: list[TradeRow]) -> list[tuple[int, int, float, float, bool]]:
    return [(t, i, p, q, m) for _, i, t, p, q, m in sorted(rows, key=lambda r: (r[2], r[1]))]


async def test_round_trip_and_idempotent_writes(tier: TickTier) -> None:
    rows = trades(1000)
    eth = trades(10, ETH)
    await tier.write_ticks(TickBatch(trades=rows[:600] + eth))
    await tier.write_ticks(TickBatch(trades=rows[:600]))  # the same batch again: a replay
    await tier.write_ticks(TickBatch(trades=rows[400:] + rows[900:]))  # overlapping, with repeats inside
    page = await tier.read_ticks(BTC, None, None, None)
    assert page.trades == as_page(rows)
    assert page.quotes == [] and page.missing == [] and page.kept_from == T0
    assert (await tier.read_ticks(ETH, None, None, None)).trades == as_page(eth)
    listed = await tier.tick_instruments()
    assert listed == [(BTC, 1000, T0, T0 + 499), (ETH, 10, T0, T0 + 4)]
    assert await tier.last_tick_ms() == {BTC: T0 + 499, ETH: T0 + 4}


async def test_windows_limits_and_newest(tier: TickTier) -> None:
    rows = trades(200)
    await tier.write_ticks(TickBatch(trades=rows))
    want = as_page(rows)
    page = await tier.read_ticks(BTC, T0 + 10, T0 + 19, None)
    assert page.trades == [r for r in want if T0 + 10 <= r[0] <= T0 + 19] and page.next_since is None
    page = await tier.read_ticks(BTC, T0 + 10, None, 5)
    assert page.trades == [r for r in want if r[0] >= T0 + 10][:5]
    assert page.next_since == page.trades[-1][0]
    page = await tier.read_ticks(BTC, None, None, 3)
    assert page.trades == want[-3:]
    assert (await tier.read_ticks("binance:NONE", None, None, None)).kept_from is None


async def test_quotes_gaps_and_retention(tier: TickTier) -> None:
    fx = "oanda:EUR_USD"
    quotes = [(fx, 10 + i, T0 + 1000 * i, 1.1 + i * 1e-5, 1.1002 + i * 1e-5) for i in range(100)]
    gap = TickGap(fx, T0 + 49_000, T0 + 60_000, "ids 60 to 69 not received")
    await tier.write_ticks(TickBatch(quotes=quotes[:50] + quotes[60:], gaps=[gap]))
    await tier.write_ticks(TickBatch(quotes=quotes[60:], gaps=[gap]))
    page = await tier.read_ticks(fx, T0, T0 + 70_000, None)
    assert page.quotes == [(t, s, b, a) for _, s, t, b, a in quotes[:50] + quotes[60:71]]
    assert page.missing == [gap]
    assert (await tier.read_ticks(fx, T0 + 61_000, None, None)).missing == []
    removed = await tier.apply_tick_retention(T0 + 80_000)
    assert removed == 20 + 50 - 0  # quotes 0..49 and 60..79 are older than the cutoff
    page = await tier.read_ticks(fx, None, None, None)
    assert page.kept_from == T0 + 80_000 and page.missing == []


async def test_recorder_finds_gaps_through_real_series(tmp_path: Path) -> None:
    """The engine's recorder on real series: trades folded in by Series.on_trade are written in
    batches; a trade-id jump, the span since the previous run's last tick, and a loss the feed
    reports become gaps the store returns; writing everything again changes nothing."""
    settings = Settings(symbols=["BTCUSDT"], db=str(tmp_path / "r.duckdb"), spool="off").validate()
    engine = Engine(settings)  # not started: its series are real, no socket is opened
    st = engine.states[BTC]
    store = DuckDBTier(ColdStore(tmp_path / "r.duckdb"))
    try:
        await store.write_ticks(TickBatch(trades=trades(5, t0=T0 - 10_000)))
        rec = TickRecorder(store)
        rec.previous = await store.last_tick_ms()
        rec.attach(st)
        ids = [*range(100, 150), *range(155, 200)]  # 150..154 lost
        for tid in ids:
            st.on_trade(Trade("BTCUSDT", tid, T0 + tid * 10, 100.0 + tid, 0.5, tid % 2 == 0))
        await rec.flush()
        st.on_loss(T0 + 2_000, T0 + 2_500)
        st.on_trade(Trade("BTCUSDT", 200, T0 + 3_000, 99.0, 0.1, False))
        st.on_trade(Trade("BTCUSDT", 199, T0 + 1_990, 299.0, 0.5, False))  # a repeat of a stored trade
        await rec.flush()
        page = await store.read_ticks(BTC, T0, None, None)
        assert [t[1] for t in page.trades] == [*ids, 200]
        assert page.trades[0] == (T0 + 1_000, 100, 200.0, 0.5, True)
        since_last_run = TickGap(BTC, T0 - 10_000 + 2, T0 + 1_000, "not recorded (deltafeed was not running)")
        assert page.missing == [
            since_last_run,
            TickGap(BTC, T0 + 1_490, T0 + 1_550, "ids 150 to 154 not received"),
            TickGap(BTC, T0 + 2_000, T0 + 2_500, "the feed reported a loss"),
        ]
        assert (await store.read_ticks(BTC, T0 + 1_600, None, None)).missing == [page.missing[2]]
        assert rec.written == len(ids) + 2 and rec.dropped == 0 and rec.gaps == 3
    finally:
        await store.close()
