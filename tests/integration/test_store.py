"""Storage tiers: memory rings, the DuckDB file, retention, write-behind, and two processes on one file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest

from deltafeed.config import Settings
from deltafeed.model import BadInput, Candle, Switch, state_flags
from deltafeed.store.cold import SCHEMA_VERSION, ColdStore, DuckDBTier, StoreBusy, StoreError
from deltafeed.store.hot import HotStore
from deltafeed.store.open import check_db, is_postgres, open_cold
from deltafeed.store.reader import read_candles
from deltafeed.store.retention import DEFAULT_RETENTION_MS, parse_retention
from deltafeed.store.writer import BacklogFull, BatchWriter
from helpers import candle

M = 60_000
DAY = 86_400_000
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"
SRC = str(Path(__file__).resolve().parents[2] / "src")


# -- retention ------------------------------------------------------------------------------------


def test_default_retention() -> None:
    assert DEFAULT_RETENTION_MS["1s"] == DEFAULT_RETENTION_MS["15s"] == DAY
    assert DEFAULT_RETENTION_MS["1m"] == 30 * DAY
    assert DEFAULT_RETENTION_MS["5m"] == DEFAULT_RETENTION_MS["15m"] == 90 * DAY
    assert DEFAULT_RETENTION_MS["1h"] == DEFAULT_RETENTION_MS["4h"] == 365 * DAY
    assert DEFAULT_RETENTION_MS["1d"] is None


def test_parse_retention_overrides_defaults() -> None:
    r = parse_retention({"1m": "7d", "1d": "forever", "1h": "Forever"})
    assert r["1m"] == 7 * DAY
    assert r["1d"] is None and r["1h"] is None
    assert r["5m"] == 90 * DAY  # untouched default
    assert parse_retention({"1s": "36h"}, base={}) == {"1s": 36 * 3_600_000}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"7x": "1d"}, ["7x", "Ns, Nm, Nh or Nd", "1w or 1M"]),
        ({"1m": "thirty days"}, ["1m", "thirty days", "forever"]),
        ({"1h": "30m"}, ["1h", "shorter"]),
        ({"1m": "0"}, ["1m", "shorter"]),
    ],
)
def test_parse_retention_errors_name_the_problem(spec: dict[str, str], words: list[str]) -> None:
    with pytest.raises(BadInput) as info:
        parse_retention(spec)
    for w in words:
        assert w in str(info.value)


# -- hot tier -------------------------------------------------------------------------------------


def test_hot_ring_keeps_newest_capacity_in_order() -> None:
    hot = HotStore(capacity=5)
    for i in range(100):
        assert hot.put(BTC, "1m", candle(i * M, close=float(i)))
    assert [c.open_time for c in hot.last(BTC, "1m", 10)] == [i * M for i in range(95, 100)]
    assert [c.close for c in hot.last(BTC, "1m", 2)] == [98.0, 99.0]
    assert hot.last(BTC, "1m", 0) == []
    assert hot.last(ETH, "1m", 3) == []
    assert len(hot) == 5


def test_hot_upsert_newest_and_corrections() -> None:
    hot = HotStore(capacity=4)
    for i in range(6):
        hot.put(BTC, "1m", candle(i * M, close=float(i)))
    # same open_time as the newest: replaced, not appended
    hot.put(BTC, "1m", candle(5 * M, close=55.0))
    assert [c.close for c in hot.last(BTC, "1m", 4)] == [2.0, 3.0, 4.0, 55.0]
    # older but within the ring: corrected in place
    hot.put(BTC, "1m", candle(3 * M, close=33.0))
    assert [c.close for c in hot.last(BTC, "1m", 4)] == [2.0, 33.0, 4.0, 55.0]
    # older than the (full) ring: ignored
    assert hot.put(BTC, "1m", candle(1 * M, close=11.0)) is False
    assert [c.open_time for c in hot.last(BTC, "1m", 9)] == [2 * M, 3 * M, 4 * M, 5 * M]


def test_hot_fills_a_hole_and_a_not_yet_full_ring_takes_older() -> None:
    hot = HotStore(capacity=4)
    hot.put(BTC, "1m", candle(10 * M))
    hot.put(BTC, "1m", candle(12 * M))
    hot.put(BTC, "1m", candle(11 * M))  # a late backfill into a gap
    hot.put(BTC, "1m", candle(9 * M))  # ring not full: older is still welcome
    assert [c.open_time // M for c in hot.last(BTC, "1m", 9)] == [9, 10, 11, 12]
    hot.put(BTC, "1m", candle(13 * M))
    assert [c.open_time // M for c in hot.last(BTC, "1m", 9)] == [10, 11, 12, 13]


def test_hot_stores_copies() -> None:
    hot = HotStore(capacity=3)
    c = candle(0, close=1.0, closed=False)
    hot.put(BTC, "1m", c)
    c.close = 2.0  # the aggregator mutates its live candle...
    c.closed = True
    stored = hot.last(BTC, "1m", 1)[0]
    assert (stored.close, stored.closed) == (1.0, False)  # ...the ring's copy does not move
    hot.put(BTC, "1m", c)
    assert hot.last(BTC, "1m", 1)[0].close == 2.0


def test_hot_range_and_coverage() -> None:
    hot = HotStore(capacity=10)
    for i in range(20, 30):
        hot.put(BTC, "1m", candle(i * M))
    got = hot.range(BTC, "1m", 22 * M, 24 * M)
    assert got is not None and [c.open_time // M for c in got] == [22, 23, 24]
    # since inside the first covered candle's bucket gap: still covered (no boundary in between)
    got = hot.range(BTC, "1m", 19 * M + 1, 21 * M)
    assert got is not None and [c.open_time // M for c in got] == [20, 21]
    assert hot.range(BTC, "1m", 19 * M, 25 * M) is None  # candle 19 may be in the cold tier
    assert hot.range(ETH, "1m", 0, 10) is None
    assert hot.range(BTC, "1m", 25 * M, 24 * M) == []
    assert sorted(hot.keys()) == [(BTC, "1m")]


# -- cold tier ------------------------------------------------------------------------------------


def series(
    n: int, inst: str = BTC, tf: str = "1m", start: int = 0, close: float = 100.0
) -> list[tuple[str, str, Candle]]:
    return [(inst, tf, candle(start + i * M, close=close + i)) for i in range(n)]


def dump(path: Path) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute("SELECT * FROM candles ORDER BY ALL").fetchall()
    finally:
        con.close()


def test_cold_upsert_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    cold = ColdStore(db)
    batch = series(50) + series(20, inst=ETH)
    cold.write(batch)
    first = dump(db)
    cold.write(batch)
    assert dump(db) == first
    assert len(first) == 70
    assert cold.instruments() == [(BTC, "1m", 50), (ETH, "1m", 20)]
    # an update of existing keys replaces values, adds no rows
    cold.write([(BTC, "1m", candle(3 * M, close=777.0))])
    assert cold.query(BTC, "1m", 3 * M, 3 * M)[0].close == 777.0
    assert cold.instruments()[0] == (BTC, "1m", 50)
    cold.close()


def test_cold_same_key_twice_in_one_batch_last_wins(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "c.duckdb")
    cold.write([(BTC, "1m", candle(0, close=1.0)), (BTC, "1m", candle(M)), (BTC, "1m", candle(0, close=2.0))])
    assert [c.close for c in cold.query(BTC, "1m")] == [2.0, 100.0]


def test_cold_last_closed_and_query(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "c.duckdb")
    assert cold.last_closed(BTC, "1m") is None
    rows = series(10)
    rows.append((BTC, "1m", candle(10 * M, closed=False)))
    rows.append((BTC, "5m", candle(0, close=5.0)))
    cold.write(rows)
    lc = cold.last_closed(BTC, "1m")
    assert lc == candle(9 * M, close=109.0)
    assert [c.open_time // M for c in cold.query(BTC, "1m")] == list(range(11))
    assert [c.open_time // M for c in cold.query(BTC, "1m", since_ms=3 * M, until_ms=5 * M)] == [3, 4, 5]
    assert [c.open_time // M for c in cold.query(BTC, "1m", since_ms=8 * M)] == [8, 9, 10]
    assert [c.open_time // M for c in cold.query(BTC, "1m", until_ms=1 * M)] == [0, 1]
    assert [c.open_time // M for c in cold.query(BTC, "1m", last=3)] == [8, 9, 10]
    assert [c.open_time // M for c in cold.query(BTC, "1m", until_ms=5 * M, last=2)] == [4, 5]
    assert cold.query(BTC, "1m", last=0) == []
    assert cold.query(ETH, "1m") == []
    assert cold.query(BTC, "5m") == [candle(0, close=5.0)]
    got = cold.query(BTC, "1m", since_ms=10 * M)[0]
    assert got.closed is False and isinstance(got.trades, int) and isinstance(got.open_time, int)


def test_cold_retention_uses_the_given_now(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "c.duckdb", retention={"1m": 2 * DAY, "1d": None, "1h": DAY})
    now = 1_700_000_000_000
    rows = [
        (BTC, "1m", candle(now - 3 * DAY)),  # too old
        (BTC, "1m", candle(now - 2 * DAY - 1)),  # too old by 1 ms
        (BTC, "1m", candle(now - 2 * DAY)),  # exactly at the limit: kept
        (BTC, "1m", candle(now - M)),
        (BTC, "1h", candle(now - 2 * DAY)),  # too old for 1h
        (BTC, "1d", candle(now - 5000 * DAY)),  # forever
        (BTC, "5m", candle(now - 5000 * DAY)),  # no retention configured for 5m: kept
    ]
    cold.write(rows)
    assert cold.apply_retention(now) == 3
    assert [c.open_time for c in cold.query(BTC, "1m")] == [now - 2 * DAY, now - M]
    assert cold.query(BTC, "1h") == []
    assert len(cold.query(BTC, "1d")) == 1 and len(cold.query(BTC, "5m")) == 1
    assert cold.apply_retention(now) == 0
    # a later "now" (the venue's clock moved on) deletes more
    assert cold.apply_retention(now + DAY) == 1
    assert [c.open_time for c in cold.query(BTC, "1m")] == [now - M]


def test_cold_schema_version_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    with ColdStore(db) as cold:
        cold.write(series(3))
    with ColdStore(db) as again:
        assert again.instruments() == [(BTC, "1m", 3)]
    con = duckdb.connect(str(db))
    assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    con.execute("INSERT INTO schema_version VALUES (99, 0)")
    con.close()
    with pytest.raises(BadInput, match="newer deltafeed"):
        ColdStore(db)


def test_cold_closed_store_refuses(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "c.duckdb")
    cold.close()
    cold.close()
    with pytest.raises(StoreError, match="closed"):
        cold.write(series(1))


def test_cold_session_and_keep_open(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    cold = ColdStore(db)
    with cold.session():
        for k in range(5):
            cold.write(series(10, start=k * 10 * M))
        assert len(cold.query(BTC, "1m")) == 50
    mem = ColdStore(":memory:")
    mem.write(series(4))
    assert len(mem.query(BTC, "1m")) == 4
    mem.close()


def test_two_stores_in_one_process_take_turns(tmp_path: Path) -> None:
    import threading

    db = tmp_path / "c.duckdb"
    writer = ColdStore(db)
    reader = ColdStore.open_reader(db)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for k in range(30):
                writer.write(series(10, start=k * 10 * M))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=write)
    t.start()
    seen = [len(reader.query(BTC, "1m")) for _ in range(30)]
    t.join()
    assert errors == []
    assert seen == sorted(seen)
    assert len(reader.query(BTC, "1m")) == 300


def test_keep_open_locks_other_processes_out(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    held = ColdStore(db, keep_open=True)
    held.write(series(2))
    probe = subprocess.run(
        [sys.executable, "-c", "import duckdb, sys; duckdb.connect(sys.argv[1], read_only=True)", str(db)],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert probe.returncode != 0 and "lock" in probe.stderr
    held.close()
    assert len(ColdStore.open_reader(db).query(BTC, "1m")) == 2


# -- what --db may name ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "foo://x",
        "mysql://u:secret@db.example/candles",
        "http://example.com/x.duckdb",
        "HTTPS://example.com/x",
        "sqlite:///x.db",
        "duckdb://x.duckdb",
        "postgresql+asyncpg://u@h/db",
    ],
)
async def test_a_url_of_another_kind_is_refused_before_anything_is_created(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scheme = url.split("://")[0].lower()
    for attempt in (lambda: check_db(url), lambda: Settings(db=url).validate()):
        with pytest.raises(BadInput) as info:
            attempt()
        msg = str(info.value)
        assert f"{scheme}:// databases are not supported" in msg and "postgresql://" in msg and "file path" in msg
        assert "secret" not in msg  # a password in the URL is never shown
    for read_only in (False, True):
        with pytest.raises(BadInput, match="not supported"):
            await open_cold(url, read_only=read_only)
    assert list(tmp_path.iterdir()) == []  # no directory "foo:" or file "x.duckdb" made of the URL


@pytest.mark.parametrize("url", ["postgresql://u@h:5432/db", "postgres://u@h/db", "PostgreSQL://u@h/db"])
def test_postgres_urls_are_accepted_and_spelled_postgresql(url: str) -> None:
    assert is_postgres(url)
    want = "postgresql://" + url.split("://", 1)[1]
    assert check_db(url) == want
    assert Settings(db=url).validate().db == want


async def test_a_registered_scheme_opens_through_its_opener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """register_scheme() is all a new tier needs: check_db() accepts its URLs in either spelling
    (rewritten to the first), and open_cold() hands them to its opener with the options it was given."""
    import deltafeed.store.open as opening

    monkeypatch.setattr(opening, "_SCHEMES", dict(opening._SCHEMES))  # the registration ends with the test
    calls: list[tuple[str, bool, str]] = []

    async def open_file(target: str, retention: Any, *, read_only: bool, schema: str) -> Any:
        calls.append((target, read_only, schema))
        return await DuckDBTier.open(str(tmp_path / target.split("://", 1)[1]), retention, read_only=read_only)

    opening.register_scheme(("filetest://", "ft://"), open_file)
    assert check_db("FT://a.duckdb") == "filetest://a.duckdb"
    assert opening.store_kind("ft://a.duckdb") == "filetest" and not is_postgres("ft://a.duckdb")
    tier = await open_cold("ft://a.duckdb", schema="s1")
    try:
        await tier.write([(BTC, "1m", candle(0))])
        assert [c.open_time for c in await tier.query(BTC, "1m")] == [0]
    finally:
        await tier.close()
    assert calls == [("filetest://a.duckdb", False, "s1")]
    assert (tmp_path / "a.duckdb").exists()
    with pytest.raises(ValueError):
        opening.register_scheme(("not a prefix",), open_file)


@pytest.mark.parametrize("path", ["odd:name.duckdb", "c://x.duckdb", "a.b+c-d:x.duckdb", "data/x.duckdb", ":memory:"])
def test_only_a_scheme_and_two_slashes_make_a_url(path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "c:").mkdir()  # c://x.duckdb is the file x.duckdb in the directory c:
    assert not is_postgres(path)
    assert check_db(path) == path


def test_a_windows_path_is_refused_with_the_fix_on_posix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # DuckDB would open C:/data/x.duckdb (a backslash is a separator to it), the spool C:\data\x.duckdb.spool.
    with pytest.raises(BadInput, match=r"write the path with / instead of \\"):
        check_db("C:\\data\\x.duckdb")
    assert list(tmp_path.iterdir()) == []


async def test_a_database_in_a_missing_directory_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    db = missing / "c.duckdb"
    for attempt in (lambda: check_db(str(db)), lambda: ColdStore(db), lambda: Settings(db=str(db)).validate()):
        with pytest.raises(BadInput) as info:
            attempt()
        assert f"the directory {missing} does not exist" in str(info.value)
        assert f"mkdir -p {missing}" in str(info.value) and "--db" in str(info.value)
    with pytest.raises(BadInput, match=f"the directory {missing} does not exist"):
        await open_cold(str(db))
    # A reader is told the same, without the advice to create a directory that would hold nothing.
    with pytest.raises(BadInput) as info:
        await open_cold(str(db), read_only=True)
    assert f"no candle database at {db}: the directory {missing} does not exist" in str(info.value)
    assert "mkdir" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_database_path_that_is_a_directory_or_under_a_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="is a directory; pass a file path such as"):
        check_db(str(tmp_path))
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(BadInput, match=f"{afile} is not a directory"):
        check_db(str(afile / "c.duckdb"))
    with pytest.raises(BadInput, match=f"{afile} is not a directory"):
        ColdStore(afile / "c.duckdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_an_explicit_spool_in_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    db, spool = tmp_path / "c.duckdb", tmp_path / "gone" / "c.spool"
    with pytest.raises(BadInput) as info:
        Settings(db=str(db), spool=str(spool)).validate()
    assert str(info.value).startswith(f"--spool {spool}: the directory {spool.parent} does not exist")
    assert list(tmp_path.iterdir()) == []


def test_the_database_is_checked_before_the_spool_beside_it(tmp_path: Path) -> None:
    # With the default spool (beside the database), a bad --db is reported as the database's
    # problem, not as a spool that cannot be opened.
    db = tmp_path / "missing" / "c.duckdb"
    with pytest.raises(BadInput) as info:
        Settings(db=str(db)).validate()
    assert str(info.value).startswith(f"--db {db}: the directory") and "spool" not in str(info.value)


def test_reader_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.duckdb"
    with pytest.raises(BadInput) as info:
        ColdStore.open_reader(missing)
    assert str(missing) in str(info.value) and "deltafeed run" in str(info.value) and "--db" in str(info.value)
    assert not missing.exists()


def test_reader_refuses_foreign_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BadInput, match="not a DuckDB database"):
        ColdStore.open_reader(text)
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    with pytest.raises(BadInput, match="not a deltafeed candle database"):
        ColdStore.open_reader(other)


def test_reader_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    ColdStore(db).write(series(2))
    reader = ColdStore.open_reader(db)
    assert len(reader.query(BTC, "1m")) == 2
    with pytest.raises(StoreError, match="read-only"):
        reader.write(series(1))


# -- another process on the same file -------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys, duckdb
    con = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "ro")
    con.execute("SELECT 1").fetchall()
    print("holding", flush=True)
    sys.stdin.read()  # hold the file until the test closes our stdin
    con.close()
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Holder:
    """A second process that keeps the database file open until released."""

    def __init__(self, path: Path, mode: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "holding", line

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)


@pytest.fixture
def holder_factory() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.release()


@pytest.mark.parametrize("mode", ["ro", "rw"])
def test_write_fails_while_another_process_holds_the_file_then_succeeds(
    tmp_path: Path, holder_factory: list[Holder], mode: str
) -> None:
    db = tmp_path / "c.duckdb"
    cold = ColdStore(db, lock_timeout_s=0.2)
    cold.write(series(1))
    h = Holder(db, mode)
    holder_factory.append(h)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as info:
        cold.write(series(5, start=M))
    assert time.monotonic() - t0 >= 0.2  # it waited before giving up
    assert isinstance(info.value, StoreBusy)
    msg = str(info.value)
    assert str(db) in msg and f"PID {h.proc.pid}" in msg and "retried" in msg
    h.release()
    cold.write(series(5, start=M))
    assert [c.open_time // M for c in cold.query(BTC, "1m")] == [0, 1, 2, 3, 4, 5]


def test_reader_times_out_with_clear_error_while_a_writer_holds_the_file(
    tmp_path: Path, holder_factory: list[Holder]
) -> None:
    db = tmp_path / "c.duckdb"
    ColdStore(db).write(series(1))
    h = Holder(db, "rw")
    holder_factory.append(h)
    with pytest.raises(BadInput) as info:  # StoreBusy is a BadInput for the CLI
        ColdStore.open_reader(db, timeout_s=0.3)
    assert isinstance(info.value, StoreBusy)
    assert str(db) in str(info.value) and f"PID {h.proc.pid}" in str(info.value)
    h.release()
    assert len(ColdStore.open_reader(db).query(BTC, "1m")) == 1


def test_reader_waits_for_a_brief_lock(tmp_path: Path, holder_factory: list[Holder]) -> None:
    db = tmp_path / "c.duckdb"
    ColdStore(db).write(series(3))
    h = Holder(db, "rw")
    holder_factory.append(h)

    async def scenario() -> list[Candle]:
        loop = asyncio.get_running_loop()
        read = loop.run_in_executor(None, lambda: ColdStore.open_reader(db, timeout_s=5.0).query(BTC, "1m"))
        await asyncio.sleep(0.5)
        h.release()
        return await read

    assert len(asyncio.run(scenario())) == 3


_WRITER_PROC = textwrap.dedent(
    """
    import asyncio, json, sys, time
    from deltafeed.model import Candle
    from deltafeed.store.cold import ColdStore, DuckDBTier
    from deltafeed.store.writer import BatchWriter

    async def main(path, seconds):
        cold = ColdStore(path, lock_timeout_s=0.2)
        w = BatchWriter(DuckDBTier(cold), max_rows=200, max_delay_s=0.02, retry_min_s=0.01, retry_max_s=0.2)
        task = asyncio.create_task(w.run())
        print("writing", flush=True)
        n = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for k in range(20):
                w.add("binance:S%d" % (n % 7), "1m", Candle(n * 60000, 1.0, 2.0, 0.5, 1.5, 1.0, 1, True))
                n += 1
            await asyncio.sleep(0.005)
        await w.close()
        await task
        cold.close()
        print(json.dumps({"added": n, "written": w.written, "failures": w.failures, "pending": w.pending}))

    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    """
)


@pytest.mark.slow  # over 3 s: not in the everyday subset
def test_reader_process_and_writer_process_share_the_file(tmp_path: Path) -> None:
    db = tmp_path / "live.duckdb"
    ColdStore(db).close()  # the file exists before the reader's first look
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER_PROC, str(db), "3.0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "writing"
    counts: list[int] = []
    reads = 0
    try:
        # Reading while the writer writes (3 s); on a loaded machine, on until ten reads were made.
        deadline, hard_deadline = time.monotonic() + 2.5, time.monotonic() + 20.0
        while time.monotonic() < deadline or (reads < 10 and time.monotonic() < hard_deadline):
            reader = ColdStore.open_reader(db, timeout_s=3.0)
            total = sum(n for _, _, n in reader.instruments())
            last = reader.query("binance:S0", "1m", last=5)
            assert [c.open_time for c in last] == sorted(c.open_time for c in last)
            counts.append(total)
            reads += 1
            time.sleep(0.02)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["pending"] == 0 and stats["written"] == stats["added"] > 1000
    assert reads >= 10
    assert counts == sorted(counts) and counts[-1] > counts[0]  # the reader saw the writer progress
    final = ColdStore.open_reader(db)
    assert sum(n for _, _, n in final.instruments()) == stats["added"]


# -- write-behind ---------------------------------------------------------------------------------


class RecordingStore(ColdStore):
    """The real store, remembering the batches it was asked to write."""

    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.batches: list[list[tuple[str, str, int, float]]] = []

    def write(self, rows: Sequence[tuple[str, str, Candle]]) -> None:
        self.batches.append([(i, t, c.open_time, c.close) for i, t, c in rows])
        super().write(rows)


async def test_writer_conflates_keeps_first_arrival_order_and_copies(tmp_path: Path) -> None:
    cold = RecordingStore(tmp_path / "c.duckdb")
    w = BatchWriter(DuckDBTier(cold), max_rows=100, max_delay_s=60)
    live = candle(2 * M, close=1.0, closed=False)
    w.add(BTC, "1m", live)
    w.add(ETH, "1m", candle(0))
    w.add(BTC, "1m", candle(M))
    live.close = 5.0  # mutated by the aggregator: the writer kept a copy of 1.0...
    w.add(BTC, "1m", live)  # ...until the update is added
    live.close = 6.0
    live.closed = True
    w.add(BTC, "1m", live)
    assert w.pending == 3 and w.conflated == 2
    await w.flush()
    assert cold.batches == [[(BTC, "1m", 2 * M, 6.0), (ETH, "1m", 0, 100.0), (BTC, "1m", M, 100.0)]]
    assert w.written == 3 and w.pending == 0 and w.failures == 0
    stored = cold.query(BTC, "1m")
    assert [(c.open_time, c.close, c.closed) for c in stored] == [(M, 100.0, True), (2 * M, 6.0, True)]


async def test_writer_run_flushes_on_max_rows_and_on_delay(tmp_path: Path) -> None:
    cold = RecordingStore(tmp_path / "c.duckdb")
    w = BatchWriter(DuckDBTier(cold), max_rows=50, max_delay_s=0.3)
    task = asyncio.create_task(w.run())
    for i in range(50):
        w.add(BTC, "1m", candle(i * M))
    t0 = time.monotonic()
    while w.written < 50:
        await asyncio.sleep(0.005)
    assert time.monotonic() - t0 < 0.25  # did not wait for the timer
    w.add(BTC, "1m", candle(50 * M))
    t1 = time.monotonic()
    while w.written < 51:
        await asyncio.sleep(0.01)
    assert 0.1 < time.monotonic() - t1 < 1.5  # written by the timer, not at once
    await w.close()
    await task
    assert [len(b) for b in cold.batches] == [50, 1]


async def test_writer_close_flushes_everything(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    cold = ColdStore(db)
    w = BatchWriter(DuckDBTier(cold), max_rows=1000, max_delay_s=60)
    task = asyncio.create_task(w.run())
    for i in range(300):
        w.add(BTC, "1m", candle(i * M))
    await asyncio.sleep(0.05)
    assert w.written == 0  # neither threshold reached yet
    await w.close()
    await asyncio.wait_for(task, 2)
    assert w.written == 300 and w.pending == 0
    assert len(cold.query(BTC, "1m")) == 300
    with pytest.raises(StoreError, match="closed"):
        w.add(BTC, "1m", candle(0))


async def test_writer_keeps_and_retries_a_batch_while_the_file_is_locked(
    tmp_path: Path, holder_factory: list[Holder]
) -> None:
    db = tmp_path / "c.duckdb"
    # Each attempt waits 0.3 s for the lock, so most of the time a batch is in flight.
    cold = RecordingStore(db, lock_timeout_s=0.3)
    w = BatchWriter(DuckDBTier(cold), max_rows=10, max_delay_s=0.05, retry_min_s=0.01, retry_max_s=0.02)
    h = await asyncio.to_thread(Holder, db, "ro")
    holder_factory.append(h)
    task = asyncio.create_task(w.run())
    for i in range(10):
        w.add(BTC, "1m", candle(i * M, close=1.0))
    while w.failures < 1:
        await asyncio.sleep(0.01)
    assert w.written == 0
    assert isinstance(w.last_error, StoreBusy) and str(db) in str(w.last_error)
    while w.pending:  # wait until the kept batch is in flight again
        await asyncio.sleep(0.005)
    # newer data arrives during that failing attempt, including an update of a kept candle
    f0 = w.failures
    w.add(BTC, "1m", candle(3 * M, close=33.0))
    w.add(BTC, "1m", candle(10 * M, close=1.0))
    assert w.pending == 2
    while w.failures < f0 + 1:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(h.release)
    while w.written < 11:
        await asyncio.sleep(0.02)
    await w.close()
    await task
    assert w.last_error is None and w.pending == 0
    ok = cold.batches[-1]
    # the kept batch went out first, in its order, then the newer row; the kept candle 3 carries
    # its newer value
    assert [k[2] // M for k in ok] == list(range(11))
    assert ok[3][3] == 33.0
    assert [c.close for c in cold.query(BTC, "1m")][3] == 33.0


async def test_writer_flush_raises_after_its_retry_window(tmp_path: Path, holder_factory: list[Holder]) -> None:
    db = tmp_path / "c.duckdb"
    cold = ColdStore(db, lock_timeout_s=0.02)
    w = BatchWriter(DuckDBTier(cold), retry_min_s=0.02)
    h = await asyncio.to_thread(Holder, db, "rw")
    holder_factory.append(h)
    w.add(BTC, "1m", candle(0))
    with pytest.raises(StoreBusy):
        await w.flush(retry_for_s=0.2)
    assert w.pending == 1 and w.failures >= 2
    await asyncio.to_thread(h.release)
    await w.flush()
    assert w.pending == 0 and cold.query(BTC, "1m") == [candle(0)]


async def test_writer_backlog_is_bounded(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    cold = ColdStore(db, lock_timeout_s=0.02)
    w = BatchWriter(DuckDBTier(cold), max_rows=5, max_pending=20)
    for i in range(20):
        w.add(BTC, "1m", candle(i * M))
    w.add(BTC, "1m", candle(19 * M, close=5.0))  # an update of a pending candle still fits
    with pytest.raises(BacklogFull) as info:
        w.add(BTC, "1m", candle(20 * M))
    assert "20" in str(info.value) and str(db) in str(info.value)
    await w.flush()
    w.add(BTC, "1m", candle(20 * M))
    assert w.pending == 1


def test_find_gaps_reports_holes_and_unfinished_candles(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "g.duckdb")
    m = 60_000
    cold.write([(BTC, "1m", Candle(t * m, 1, 1, 1, 1, 1, 1, t not in (5, 10))) for t in (1, 2, 3, 5, 6, 9, 10)])
    # 4 is missing and 5 never became final: one stretch; 7-8 missing; 10 is the open one at the end.
    assert cold.find_gaps(BTC, "1m", m, 0, 100 * m) == [(4 * m, 5 * m), (7 * m, 8 * m)]
    assert cold.find_gaps(BTC, "1m", m, 6 * m, 100 * m) == [(7 * m, 8 * m)]
    assert cold.find_gaps("binance:NONE", "1m", m, 0, 100 * m) == []


def test_final_marks_round_trip_and_a_version_1_file_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))  # a file as the first release wrote it
    con.execute(
        "CREATE TABLE candles (instrument VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, open_time BIGINT"
        " NOT NULL, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, trades BIGINT,"
        " closed BOOLEAN, PRIMARY KEY (instrument, timeframe, open_time))"
    )
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_ms BIGINT NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES (1, 0)")
    con.execute("INSERT INTO candles VALUES ('binance:BTCUSDT', '1m', 60000, 1, 2, 0.5, 1.5, 3, 4, true)")
    con.close()
    cold = ColdStore(path)
    assert cold.final_marks() == {}
    cold.set_final_marks({(BTC, "1m"): 120_000, (BTC, "5m"): 0})
    cold.set_final_marks({(BTC, "1m"): 180_000})
    assert cold.final_marks() == {(BTC, "1m"): 180_000, (BTC, "5m"): 0}
    assert cold.last_closed(BTC, "1m") == Candle(60_000, 1, 2, 0.5, 1.5, 3, 4, True)
    # Versions 2 and 3 came with it: the switches of logical instruments are kept too.
    assert cold.switches("fx:EUR_USD") == []
    a = Switch("fx:EUR_USD", 125_000, 190_000, "oanda:EUR_USD", "ig:CS.D.EURUSD.CFD.IP")
    b = Switch("fx:EUR_USD", 400_000, 460_000, "ig:CS.D.EURUSD.CFD.IP", "oanda:EUR_USD")
    cold.record_switches([b, a])
    cold.record_switches([a])  # again: nothing doubles
    cold.record_switches([Switch("fx:GBP_USD", 1, 2, "x", "y")])
    assert cold.switches("fx:EUR_USD") == [a, b]
    assert cold.switches("fx:EUR_USD", 200_000, None) == [b]
    assert cold.switches("fx:EUR_USD", None, 125_000) == [a]
    assert a.spanning(60_000) == 120_000 and a.spanning(300_000) == 0
    cold.close()


# -- candle states: forming, provisional, final -----------------------------------------------------


def state_candle(t: int, state: str, close: float = 100.0) -> Candle:
    closed, final = state_flags(state)
    return Candle(t, close - 1, close + 1, close - 2, close, 1.0, 3, closed, final)


def test_hot_copies_keep_the_state() -> None:
    hot = HotStore(capacity=10)
    for k, state in enumerate(("final", "provisional", "forming")):
        hot.put(BTC, "1m", state_candle(k * M, state))
    assert [c.state for c in hot.last(BTC, "1m", 10)] == ["final", "provisional", "forming"]
    hot.put(BTC, "1m", state_candle(M, "final", close=5.0))  # a provisional candle made final, in place
    assert [(c.state, c.close) for c in hot.last(BTC, "1m", 10)][1] == ("final", 5.0)


def test_cold_keeps_the_state_and_an_upsert_makes_a_candle_final(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "s.duckdb")
    rows = [state_candle(k * M, s) for k, s in enumerate(("final", "provisional", "provisional", "final", "forming"))]
    cold.write([(BTC, "1m", c) for c in rows])
    back = cold.query(BTC, "1m")
    assert back == rows and [c.state for c in back] == ["final", "provisional", "provisional", "final", "forming"]
    assert [type(c.final) for c in back] == [bool] * 5
    cold.write([(BTC, "1m", state_candle(M, "final", close=7.0))])  # verified (and corrected)
    assert [c.state for c in cold.query(BTC, "1m")] == ["final", "final", "provisional", "final", "forming"]
    assert cold.query(BTC, "1m", M, M) == [state_candle(M, "final", close=7.0)]
    cold.close()
    reader = ColdStore.open_reader(tmp_path / "s.duckdb")  # what another process reads
    assert [c.state for c in reader.query(BTC, "1m")] == ["final", "final", "provisional", "final", "forming"]
    reader.close()


def test_cold_final_only_queries_and_provisional_runs(tmp_path: Path) -> None:
    cold = ColdStore(tmp_path / "p.duckdb")
    # minutes: 0-1 final, 2-3 provisional, 4 final, 5 provisional, (6-7 missing), 8 provisional, 9 final,
    # 10-11 provisional, 12 forming; another series and timeframe around them
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
    cold.write([(BTC, "1m", state_candle(k * M, s)) for k, s in states.items()])
    cold.write([(ETH, "1m", state_candle(k * M, "provisional")) for k in range(20)])
    cold.write([(BTC, "5m", state_candle(k * 5 * M, "provisional")) for k in range(3)])
    finals = [k for k, s in states.items() if s == "final"]
    assert [c.open_time // M for c in cold.query(BTC, "1m", final_only=True)] == finals
    assert [c.open_time // M for c in cold.query(BTC, "1m", last=2, final_only=True)] == [4, 9]
    assert [c.open_time // M for c in cold.query(BTC, "1m", until_ms=8 * M, last=2, final_only=True)] == [1, 4]
    assert [c.open_time // M for c in cold.query(BTC, "1m", 2 * M, 8 * M, final_only=True)] == [4]
    assert cold.query(ETH, "1m", final_only=True) == []
    runs = cold.provisional(BTC, "1m", 0, 100 * M)
    assert runs == [(2 * M, 3 * M), (5 * M, 8 * M), (10 * M, 11 * M)]  # the hole 6-7 does not split 5..8
    assert cold.provisional(BTC, "1m", 3 * M, 10 * M) == [(3 * M, 3 * M), (5 * M, 8 * M), (10 * M, 10 * M)]
    assert cold.provisional(BTC, "1m", 12 * M, 100 * M) == []
    assert cold.provisional(ETH, "1m", 0, 100 * M) == [(0, 19 * M)]
    assert cold.provisional(BTC, "5m", 0, 100 * M) == [(0, 10 * M)]
    assert cold.provisional("binance:NONE", "1m", 0, 100 * M) == []
    cold.close()


def _old_file(path: Path, version: int) -> None:
    """A DuckDB file with the layout of schema ``version`` (1 to 3): candles without ``final``."""
    con = duckdb.connect(str(path))
    con.execute(
        "CREATE TABLE candles (instrument VARCHAR NOT NULL, timeframe VARCHAR NOT NULL, open_time BIGINT"
        " NOT NULL, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE, trades BIGINT,"
        " closed BOOLEAN, PRIMARY KEY (instrument, timeframe, open_time))"
    )
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_ms BIGINT NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES (?, 0)", [version])
    if version >= 2:
        con.execute(
            "CREATE TABLE final_marks (instrument VARCHAR NOT NULL, timeframe VARCHAR NOT NULL,"
            " final_until BIGINT NOT NULL, PRIMARY KEY (instrument, timeframe))"
        )
        con.execute("INSERT INTO final_marks VALUES (?, '1m', ?), (?, '5m', ?)", [BTC, 5 * M, ETH, 10 * M])
    if version >= 3:
        con.execute(
            "CREATE TABLE switches (instrument VARCHAR NOT NULL, since_ms BIGINT NOT NULL, at_ms BIGINT"
            " NOT NULL, source_from VARCHAR NOT NULL, source_to VARCHAR NOT NULL,"
            " PRIMARY KEY (instrument, since_ms))"
        )
    # BTC 1m: 0-7 closed, 8 open; ETH 5m: 0, 5, 10, 15 closed, and one still open before the mark;
    # ETH 1m has no mark at all
    for k in range(9):
        con.execute("INSERT INTO candles VALUES (?, '1m', ?, 1, 2, 0.5, 1.5, 3, 4, ?)", [BTC, k * M, k < 8])
    for k, closed in ((0, True), (1, False), (2, True), (3, True)):
        con.execute("INSERT INTO candles VALUES (?, '5m', ?, 1, 2, 0.5, 1.5, 3, 4, ?)", [ETH, k * 5 * M, closed])
    for k in range(3):
        con.execute("INSERT INTO candles VALUES (?, '1m', ?, 1, 2, 0.5, 1.5, 3, 4, true)", [ETH, k * M])
    con.close()


@pytest.mark.parametrize("version", [3, 1])
def test_an_older_file_is_migrated_final_behind_the_mark_provisional_after(tmp_path: Path, version: int) -> None:
    path = tmp_path / f"v{version}.duckdb"
    _old_file(path, version)
    with pytest.raises(BadInput, match="older layout"):
        ColdStore.open_reader(path)  # a reader never migrates
    cold = ColdStore(path)
    btc = [c.state for c in cold.query(BTC, "1m")]
    eth5 = [c.state for c in cold.query(ETH, "5m")]
    if version >= 2:
        assert btc == ["final"] * 5 + ["provisional"] * 3 + ["forming"]
        assert eth5 == ["final", "forming", "provisional", "provisional"]
        assert cold.provisional(BTC, "1m", 0, DAY) == [(5 * M, 7 * M)]
    else:  # no final marks yet: nothing was vouched for
        assert btc == ["provisional"] * 8 + ["forming"]
    assert [c.state for c in cold.query(ETH, "1m")] == ["provisional"] * 3
    cold.write([(BTC, "1m", state_candle(6 * M, "final"))])  # a repair after the upgrade
    assert cold.provisional(BTC, "1m", 0, DAY) == (
        [(5 * M, 5 * M), (7 * M, 7 * M)] if version >= 2 else [(0, 5 * M), (7 * M, 7 * M)]
    )
    cold.close()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(SCHEMA_VERSION,)] == [(6,)]
    # Version 5 added the (empty) tick tables, version 6 the book-history tables.
    assert (
        con.execute(
            "SELECT count(*) FROM trades UNION ALL SELECT count(*) FROM tick_gaps"
            " UNION ALL SELECT count(*) FROM book_snapshots UNION ALL SELECT count(*) FROM book_deltas"
        ).fetchall()
        == [(0,)] * 4
    )
    con.close()
    reader = ColdStore.open_reader(path)
    assert len(reader.query(BTC, "1m", final_only=True)) == (6 if version >= 2 else 1)
    reader.close()


class _Ring:
    """A memory hot tier for :func:`read_candles`."""

    def __init__(self, candles: list[Candle]) -> None:
        self.hot = HotStore(capacity=len(candles))
        for c in candles:
            self.hot.put(BTC, "1m", c)

    async def last(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        return self.hot.last(instrument, timeframe, n)

    async def range(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[Candle] | None:
        return self.hot.range(instrument, timeframe, since_ms, until_ms)


async def test_read_candles_final_only_across_hot_and_cold(tmp_path: Path) -> None:
    def state(k: int) -> str:
        return "forming" if k == 29 else "provisional" if k % 3 == 0 else "final"

    every = [state_candle(k * M, state(k)) for k in range(30)]
    cold = DuckDBTier(ColdStore(tmp_path / "r.duckdb"))
    await cold.write([(BTC, "1m", c) for c in every[:25]])
    hot = _Ring(every[20:])  # the hot tier holds 20..29 (20-24 both)
    finals = [c for c in every if c.final]

    async def read(**kw: Any) -> list[int]:
        return [c.open_time // M for c in await read_candles(hot, cold, BTC, "1m", final_only=True, **kw)]

    assert await read() == [c.open_time // M for c in finals]
    assert await read(limit=3) == [25, 26, 28]  # from the hot tier alone
    assert await read(limit=8) == [16, 17, 19, 20, 22, 23, 25, 26, 28][-8:]  # across the boundary
    assert await read(since_ms=21 * M) == [22, 23, 25, 26, 28]  # the hot tier covers the range
    assert await read(since_ms=10 * M, until_ms=20 * M) == [10, 11, 13, 14, 16, 17, 19, 20]
    assert await read(until_ms=5 * M, limit=2) == [4, 5]
    plain = await read_candles(hot, cold, BTC, "1m", limit=3)
    assert [c.state for c in plain] == ["provisional", "final", "forming"]
    await cold.close()
