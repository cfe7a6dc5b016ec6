"""The on-disk spool and the write-behind riding out a cold store outage on it: real files, a real DuckDB
store, and a real second process holding the database (or a real crash) where an outage is needed."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from deltafeed.model import BadInput, Candle
from deltafeed.store.base import Row, StoreBusy, StoreError
from deltafeed.store.cold import ColdStore, DuckDBTier
from deltafeed.store.spool import Spool
from deltafeed.store.writer import BatchWriter
from helpers import candle, until

M = 60_000
BTC = "binance:BTCUSDT"
ETH = "binance:ETHUSDT"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def batch(n: int, start: int = 0, close: float = 100.0, inst: str = BTC) -> list[Row]:
    return [(inst, "1m", candle((start + i) * M, close, volume=1.5)) for i in range(n)]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = SRC + os.pathsep + e.get("PYTHONPATH", "")
    return e


def record(rows: Sequence[Row], *, legacy: bool = False) -> bytes:
    """One record built by hand from the documented format (not with the spool's own code); ``legacy``
    writes rows as deltafeed did before candles had ``final`` (10 fields)."""
    payload = msgspec.msgpack.encode(
        [
            [
                i,
                tf,
                c.open_time,
                c.open,
                c.high,
                c.low,
                c.close,
                c.volume,
                c.trades,
                c.closed,
                *(() if legacy else (c.final,)),
            ]
            for i, tf, c in rows
        ]
    )
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def stored(db: Path) -> list[tuple[str, str, Candle]]:
    reader = ColdStore.open_reader(db)
    try:
        return [(i, tf, c) for i, tf, _ in reader.instruments() for c in reader.query(i, tf)]
    finally:
        reader.close()


# -- the spool on its own -------------------------------------------------------------------------


def test_round_trip_in_order_in_the_documented_format(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    b1 = batch(3, close=1.5)
    b2 = [(ETH, "5m", Candle(7 * M, 1.25, 3.0, 0.5, 2.0, 1e-8, 12, False))]
    b3 = batch(2, start=1, close=2.5)
    with Spool(path) as s:
        assert (s.batches, s.rows, s.bytes) == (0, 0, 0)
        for b in (b1, b2, b3):
            s.append(b)
        assert (s.batches, s.rows, s.appended) == (3, 6, 6)
        assert s.bytes == path.stat().st_size
    raw = path.read_bytes()
    assert raw[:8] == b"DFSPOOL\x01"
    assert raw[8:] == record(b1) + record(b2) + record(b3)
    with Spool(path) as s:  # reopened: nothing lost, same order
        assert (s.batches, s.rows, s.torn) == (3, 6, 0)
        got = []
        while (rows := s.peek()) is not None:
            got.append(rows)
            s.commit()
        assert got == [b1, b2, b3]
        assert s.replayed == 6


def test_peek_commit_persist_the_position_and_the_drained_spool_is_truncated(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    b1, b2, b3 = batch(2, close=1.0), batch(2, start=2, close=2.0), batch(2, start=4, close=3.0)
    s = Spool(path)
    with pytest.raises(RuntimeError):
        s.commit()  # nothing peeked
    for b in (b1, b2, b3):
        s.append(b)
    assert s.peek() == b1 and s.peek() == b1  # peek does not advance
    s.commit()
    assert (s.batches, s.rows, s.replayed) == (2, 4, 2)
    size = path.stat().st_size
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.peek()
    assert json.loads(Path(f"{path}.pos").read_text())["offset"] == 8 + len(record(b1))
    s = Spool(path)  # the position survived
    assert (s.batches, s.rows) == (2, 4)
    assert s.peek(max_rows=4) == b2 + b3  # several batches per replay
    s.commit()
    assert (s.batches, s.rows, s.bytes) == (0, 0, 0)
    assert path.stat().st_size == 0 < size
    assert json.loads(Path(f"{path}.pos").read_text())["offset"] == 0
    assert s.peek() is None
    s.append(b1)  # starts over with a header
    assert path.read_bytes() == b"DFSPOOL\x01" + record(b1)
    s.close()
    with Spool(path) as s:
        assert s.peek() == b1


@pytest.mark.parametrize("tear", ["half header", "half payload", "zero-filled", "bad checksum"])
def test_a_torn_last_record_is_cut_off_and_counted(tmp_path: Path, tear: str) -> None:
    path = tmp_path / "s.spool"
    with Spool(path) as s:
        s.append(batch(3, close=1.0))
        s.append(batch(3, close=2.0))
    size = path.stat().st_size
    rec = record(batch(5, close=3.0))
    junk = {
        "half header": rec[:3],
        "half payload": rec[: 8 + (len(rec) - 8) // 2],
        "zero-filled": bytes(len(rec)),
        "bad checksum": rec[:-1] + bytes([rec[-1] ^ 0xFF]),
    }[tear]
    with path.open("ab") as f:  # a crash in the middle of the third append
        f.write(junk)
    with Spool(path) as s:
        assert (s.torn, s.torn_bytes) == (1, len(junk))
        assert (s.batches, s.rows) == (2, 6)
        assert path.stat().st_size == size
        s.append(batch(1, close=4.0))  # appends continue cleanly after the cut
    with Spool(path) as s:
        assert (s.torn, s.batches, s.rows) == (0, 3, 7)


def test_a_torn_first_record_leaves_an_empty_spool(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    path.write_bytes(b"DFSPO")  # crashed while writing the header of the very first append
    with Spool(path) as s:
        assert (s.torn, s.batches) == (1, 0)
    assert path.stat().st_size == 0
    path.write_bytes(b"DFSPOOL\x01" + record(batch(4))[:20])
    with Spool(path) as s:
        assert (s.torn, s.batches) == (1, 0)
    assert path.stat().st_size == 0


def test_a_corrupt_record_in_the_middle_is_refused_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    with Spool(path) as s:
        for k in range(3):
            s.append(batch(3, close=float(k)))
    raw = bytearray(path.read_bytes())
    raw[8 + 8 + 5] ^= 0x01  # a flipped bit inside the first record's payload
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError) as info:
        Spool(path)
    msg = str(info.value)
    assert str(path) in msg and "corrupt at byte 8" in msg and f"truncate -s 8 {path}" in msg
    assert path.read_bytes() == bytes(raw)  # left as it was for the operator
    Spool(path.with_name("other.spool")).close()  # and the failed open let go of nothing it should hold


def test_a_foreign_file_or_another_format_is_refused_untouched(tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    ColdStore(db).close()
    before = db.read_bytes()
    with pytest.raises(BadInput, match="not a deltafeed spool"):
        Spool(db)  # e.g. --spool pointing at the database by mistake
    assert db.read_bytes() == before
    future = tmp_path / "future.spool"
    future.write_bytes(b"DFSPOOL\x02" + record(batch(1)))
    with pytest.raises(StoreError, match="another deltafeed version"):
        Spool(future)


def test_a_spool_in_a_missing_directory_is_refused_and_nothing_is_created(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(BadInput) as info:
        Spool(missing / "c.spool")
    msg = str(info.value)
    assert msg.startswith(f"cannot open spool {missing / 'c.spool'}: the directory {missing} does not exist")
    assert f"mkdir -p {missing}" in msg and "--spool" in msg
    assert list(tmp_path.iterdir()) == []


def test_a_second_opener_is_refused_in_this_process_and_another(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    first = Spool(path)
    with pytest.raises(BadInput) as info:
        Spool(path)
    assert str(info.value) == (f"spool {path} is in use by another deltafeed run; give each run its own --spool")
    other = subprocess.run(
        [sys.executable, "-c", "import sys; from deltafeed.store.spool import Spool; Spool(sys.argv[1])", str(path)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert other.returncode != 0 and "is in use by another deltafeed run" in other.stderr
    first.close()
    Spool(path).close()


_CRASH = textwrap.dedent(
    """
    import os, sys
    from deltafeed.model import Candle
    from deltafeed.store.cold import ColdStore
    from deltafeed.store.spool import Spool

    def batch(ts, close):
        return [("binance:BTCUSDT", "1m", Candle(t * 60000, close, close, close, close, 1.0, 1, True)) for t in ts]

    spool = Spool(sys.argv[2])
    spool.append(batch(range(10), 1.0))
    spool.append(batch(range(5, 15), 2.0))
    ColdStore(sys.argv[1]).write(spool.peek())  # the first batch reaches the store...
    os._exit(0)  # ...and the process dies before commit()
    """
)


def test_a_crash_before_commit_replays_the_batch_again_without_doubling_anything(tmp_path: Path) -> None:
    db, path = tmp_path / "c.duckdb", tmp_path / "s.spool"
    subprocess.run([sys.executable, "-c", _CRASH, str(db), str(path)], check=True, env=env(), timeout=60)
    first = [(BTC, "1m", Candle(t * M, 1.0, 1.0, 1.0, 1.0, 1.0, 1, True)) for t in range(10)]
    second = [(BTC, "1m", Candle(t * M, 2.0, 2.0, 2.0, 2.0, 1.0, 1, True)) for t in range(5, 15)]
    assert stored(db) == first
    store = ColdStore(db)
    with Spool(path) as s:  # the dead process's lock is gone with it
        assert (s.batches, s.rows) == (2, 20)
        assert s.peek() == first  # written but not committed: replayed again
        while (rows := s.peek()) is not None:
            store.write(rows)
            s.commit()
    store.close()
    reference = ColdStore(tmp_path / "ref.duckdb")  # the same batches, each written once
    reference.write(first)
    reference.write(second)
    reference.close()
    assert stored(db) == stored(tmp_path / "ref.duckdb")
    assert len(stored(db)) == 15  # no doubled rows
    assert path.stat().st_size == 0


def test_a_dropped_spool_releases_its_lock_and_replays_what_was_not_committed(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    s = Spool(path)
    s.append(batch(2, close=1.0))
    s.append(batch(2, close=2.0))
    assert s.peek() == batch(2, close=1.0)
    del s
    gc.collect()
    with Spool(path) as again:
        assert again.peek() == batch(2, close=1.0) and again.batches == 2


# -- the writer in an outage ----------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import sys
    from deltafeed.store.cold import ColdStore
    store = ColdStore(sys.argv[1], keep_open=True)  # holds the file: every other process is locked out
    print("holding", flush=True)
    sys.stdin.read()
    store.close()
    """
)


class Holder:
    """Another process holding the database file open, so our writes fail with StoreBusy."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env(),
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "holding"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for h in made:
        h.kill()


class RecordingStore(ColdStore):
    """The real store, remembering the batches it stored (after they succeeded)."""

    def __init__(self, path: Path, **kw: Any) -> None:
        super().__init__(path, **kw)
        self.batches: list[list[tuple[str, int, float]]] = []

    def write(self, rows: Sequence[Row]) -> None:
        super().write(rows)
        self.batches.append([(i, c.open_time, c.close) for i, _, c in rows])


def rounds(w: BatchWriter, r: int) -> int:
    """Round ``r`` of updates: the same 40 candles again (closing at ``r``, so order matters), plus
    50 new ones (so memory would grow without the spool). Returns the rows added."""
    for inst in (BTC, ETH, "binance:SOLUSDT", "binance:XRPUSDT"):
        for t in range(10):
            w.add(inst, "1m", candle(t * M, close=float(r), volume=1.5))
    for t in range(50):
        w.add(BTC, "1m", candle((100 + 50 * r + t) * M, close=float(r), volume=1.5))
    return 90


async def test_writer_spools_an_outage_in_order_and_drains_it_when_the_store_is_back(
    tmp_path: Path, holders: list[Holder]
) -> None:
    db = tmp_path / "c.duckdb"
    store = RecordingStore(db, lock_timeout_s=0.05)
    spool = Spool(tmp_path / "c.spool")
    seen: list[int] = []
    w = BatchWriter(
        DuckDBTier(store),
        max_rows=50,
        max_delay_s=0.02,
        max_pending=200,
        retry_min_s=0.02,
        retry_max_s=0.1,
        spool=spool,
        on_written=lambda rows, _s: seen.append(len(rows)),
    )
    h = await asyncio.to_thread(Holder, db)
    holders.append(h)
    task = asyncio.create_task(w.run())
    added, most_in_memory = 0, 0
    for r in range(5):  # 450 rows, 290 distinct: past max_pending=200 unless they leave memory
        added += rounds(w, r)
        await asyncio.sleep(0.1)
        most_in_memory = max(most_in_memory, w.pending)
    await until(lambda: w.pending == 0, timeout=10.0)
    assert most_in_memory <= 90  # batches left memory for the disk as they came
    assert w.written == 0 and w.failures >= 1 and isinstance(w.last_error, StoreBusy)
    assert w.spooled + w.conflated == added and spool.rows == w.spooled_pending == w.spooled and spool.batches >= 5
    assert w.degraded is not None and spool.path in w.degraded
    with pytest.raises(StoreBusy):  # flush cannot finish during the outage: the data stays spooled
        await w.flush(retry_for_s=0.1)
    assert spool.rows == w.spooled

    await asyncio.to_thread(h.kill)  # the store is back...
    for r in range(5, 8):  # ...while newer updates keep coming: they must queue behind the spool
        added += rounds(w, r)
        await asyncio.sleep(0.01)
    await until(lambda: w.pending == 0 and w.spooled_pending == 0, timeout=10.0)
    await w.close()
    await task

    assert w.spooled == w.replayed > 0 and spool.rows == 0 and spool.path and os.path.getsize(spool.path) == 0
    assert w.written == sum(len(b) for b in store.batches) == sum(seen)  # on_written saw replays too
    assert added == w.conflated + w.written  # every row reached the store exactly once (per update)
    assert w.last_error is None and w.degraded is None
    # The store received every candle's updates in their original order...
    history: dict[tuple[str, int], list[float]] = {}
    for b in store.batches:
        for inst, t, close in b:
            history.setdefault((inst, t), []).append(close)
    assert all(v == sorted(v) for v in history.values())
    # ...so it holds the last value of every key.
    final = {(i, c.open_time): c.close for i, _, c in stored(db)}
    expected = {(i, t * M): 7.0 for i in (BTC, ETH, "binance:SOLUSDT", "binance:XRPUSDT") for t in range(10)}
    expected |= {(BTC, (100 + 50 * r + t) * M): float(r) for r in range(8) for t in range(50)}
    assert final == expected
    spool.close()


@pytest.mark.parametrize("how", ["run", "flush"])
async def test_writer_closed_during_an_outage_leaves_its_batches_to_the_next_run(
    tmp_path: Path, holders: list[Holder], caplog: pytest.LogCaptureFixture, how: str
) -> None:
    db, path = tmp_path / "c.duckdb", tmp_path / "c.spool"
    store_a, spool_a = ColdStore(db, lock_timeout_s=0.05), Spool(path)
    h = await asyncio.to_thread(Holder, db)
    holders.append(h)
    a = BatchWriter(
        DuckDBTier(store_a), max_rows=100, max_delay_s=60, retry_min_s=0.02, retry_max_s=0.05, spool=spool_a
    )
    task = asyncio.create_task(a.run())
    for t in range(100):  # max_rows: written at once, fails, spooled
        a.add(BTC, "1m", candle(t * M, close=1.0, volume=1.5))
    await until(lambda: spool_a.rows == 100, timeout=10.0)
    for t in range(50, 150):  # still in memory at close
        a.add(BTC, "1m", candle(t * M, close=2.0, volume=1.5))
    assert a.pending == 100
    with caplog.at_level(logging.WARNING, logger="deltafeed.writer"):
        await a.close(retry_for_s=0.15)  # the store is still down: no raise, the data is on disk
    await task
    assert a.pending == 0 and a.written == 0 and spool_a.rows == a.spooled == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # entering the spool, and at close:
    assert "200 candles are kept in the spool" in warnings[-1] and str(path) in warnings[-1]
    spool_a.close()
    store_a.close()

    await asyncio.to_thread(h.release)
    store_b, spool_b = RecordingStore(db), Spool(path)
    assert spool_b.rows == 200
    b = BatchWriter(DuckDBTier(store_b), max_rows=100, max_delay_s=60, spool=spool_b)
    if how == "flush":
        await b.flush()
    else:
        task = asyncio.create_task(b.run())  # replays the previous run's spool on start
        await until(lambda: b.spooled_pending == 0, timeout=10.0)
        await b.close()
        await task
    assert b.replayed == b.written == 200 and b.spooled == 0
    assert [len(x) for x in store_b.batches] == [200]  # both batches in one write
    assert {c.open_time // M: c.close for _, _, c in stored(db)} == {t: 1.0 if t < 50 else 2.0 for t in range(150)}
    assert path.stat().st_size == 0
    spool_b.close()


async def test_writer_without_a_spool_still_raises_at_close_and_keeps_its_rows(
    tmp_path: Path, holders: list[Holder]
) -> None:
    db = tmp_path / "c.duckdb"
    cold = DuckDBTier(ColdStore(db, lock_timeout_s=0.05))
    holders.append(await asyncio.to_thread(Holder, db))
    w = BatchWriter(cold, retry_min_s=0.02)
    w.add(BTC, "1m", candle(0, volume=1.5))
    with pytest.raises(StoreBusy):
        await w.close(retry_for_s=0.15)
    assert w.pending == 1 and w.spooled_pending == 0 and w.degraded is not None


_DISK_FULL = textwrap.dedent(
    """
    import asyncio, json, os, resource, signal, sys
    from deltafeed.model import Candle
    from deltafeed.store.base import StoreError
    from deltafeed.store.cold import ColdStore, DuckDBTier
    from deltafeed.store.spool import Spool
    from deltafeed.store.writer import BacklogFull, BatchWriter

    async def main(db, path):
        ColdStore(db).close()
        refusing = DuckDBTier(ColdStore.open_reader(db))  # a real store whose every write fails
        spool = Spool(path)
        w = BatchWriter(refusing, max_rows=100, max_pending=300, retry_min_s=0.01, retry_max_s=0.02, spool=spool)
        for t in range(300):
            w.add("binance:BTCUSDT", "1m", Candle(t * 60000, 1.0, 2.0, 0.5, 1.5, 1.0, 1, True))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the spool's disk is "full"
        out = {}
        try:
            await w.flush(retry_for_s=0.1)
        except StoreError as e:
            out["flush"] = str(e)
        try:
            w.add("binance:BTCUSDT", "1m", Candle(300 * 60000, 1.0, 2.0, 0.5, 1.5, 1.0, 1, True))
        except BacklogFull as e:
            out["full"] = str(e)
        out.update(pending=w.pending, spooled=w.spooled, size=os.path.getsize(path), degraded=w.degraded,
                   spool_failures=w.spool_failures)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space again
        await w.close(retry_for_s=0.1)
        out.update(after_pending=w.pending, after_spooled=spool.rows)
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_writer_keeps_batches_in_memory_while_the_spool_disk_is_full(tmp_path: Path) -> None:
    db, path = tmp_path / "c.duckdb", tmp_path / "c.spool"
    proc = subprocess.run(
        [sys.executable, "-c", _DISK_FULL, str(db), str(path)], capture_output=True, text=True, env=env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "read-only" in out["flush"] and "spool failed too" in out["flush"] and "File too large" in out["flush"]
    assert "300" in out["full"]  # BacklogFull still bounds memory
    assert out["pending"] == 300 and out["spooled"] == 0 and out["spool_failures"] >= 1
    assert out["size"] == 0  # the half-written record was taken back
    assert "300 candles wait in memory" in out["degraded"]
    assert out["after_pending"] == 0 and out["after_spooled"] == 300  # with space again, close spooled them
    with Spool(path) as s:
        assert (s.rows, s.torn) == (300, 0)


# -- candle states ---------------------------------------------------------------------------------


def test_states_round_trip_and_a_spool_from_before_final_replays_as_not_final(tmp_path: Path) -> None:
    final = Candle(0, 1.0, 2.0, 0.5, 1.5, 3.0, 4, True, True)
    provisional = Candle(M, 1.0, 2.0, 0.5, 1.5, 3.0, 4, True, False)
    forming = Candle(2 * M, 1.0, 2.0, 0.5, 1.5, 3.0, 4, False, False)
    rows: list[Row] = [(BTC, "1m", final), (BTC, "1m", provisional), (BTC, "1m", forming)]
    path = tmp_path / "s.spool"
    with Spool(path) as s:
        s.append(rows)
    assert path.read_bytes() == b"DFSPOOL\x01" + record(rows)
    with Spool(path) as s:
        back = s.peek()
        assert back == rows and [c.state for _, _, c in back or []] == ["final", "provisional", "forming"]

    # A spool an older deltafeed left behind (rows of 10 fields), then a record of this version after it.
    old = tmp_path / "old.spool"
    old.write_bytes(b"DFSPOOL\x01" + record(rows, legacy=True))
    with Spool(old) as s:
        assert (s.batches, s.rows, s.torn) == (1, 3, 0)
        s.append([(ETH, "5m", final)])
        legacy = s.peek()
        assert [c.state for _, _, c in legacy or []] == ["provisional", "provisional", "forming"]
        assert legacy == [(i, tf, Candle(*msgspec.structs.astuple(c)[:8])) for i, tf, c in rows]
        s.commit()
        assert s.peek() == [(ETH, "5m", final)]
        s.commit()


async def test_replay_of_a_legacy_spool_writes_provisional_candles(tmp_path: Path) -> None:
    """A legacy spool's closed candles reach the store as provisional (not final): nothing vouched
    for them, so a start-up repair may fetch them again; a later final write wins as usual."""
    db, spool = tmp_path / "c.duckdb", tmp_path / "c.spool"
    spool.write_bytes(b"DFSPOOL\x01" + record(batch(3), legacy=True))
    cold = DuckDBTier(ColdStore(db))
    writer = BatchWriter(cold, spool=Spool(spool))
    await writer.flush(retry_for_s=5.0)
    assert [c.state for c in await cold.query(BTC, "1m")] == ["provisional"] * 3
    assert await cold.provisional(BTC, "1m", 0, 10 * M) == [(0, 2 * M)]
    await writer.close()
    await cold.close()
