"""End to end: the disk under the DuckDB file (and its spool) fills up during the bootstrap, or is
read-only.

A real filesystem that really fills: a small tmpfs mounted for the test (needs root, as in CI), most
of it taken by a ballast file. The engine against the Binance replica must not crash: start-up
waits, ``GET /health`` says the disk holding the database is full, the candles wait in memory
within the bound, and once the ballast is deleted everything is written and equals the tape.
``deltafeed run`` itself stops on SIGTERM while it waits, in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import deltafeed.engine.bootstrap as engine_module
from deltafeed.api.server import api_url, start_api
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, Candle
from deltafeed.store.base import StoreError
from deltafeed.store.cold import ColdStore
from deltafeed.venues.binance.replica import BinanceReplica
from reference import candles_from_tape, read_tape

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
FLUSH_ROWS = 2_000  # the bootstrap's back-pressure point, low enough for a few hours of 1s history
PAGE = 1_000  # candles per REST page: the most the bootstrap adds past the back-pressure point


CLI = [sys.executable, "-m", "deltafeed"]
A_CANDLE = Candle(60_000, 1.0, 2.0, 0.5, 1.5, 3.0, 4, True)
SRC = str(Path(__file__).resolve().parents[2] / "src")


def mount_tmpfs(mnt: Path, options: str) -> Iterator[Path]:
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MB tmpfs, unmounted afterwards."""
    yield from mount_tmpfs(tmp_path / "disk", "size=8m")


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    yield from mount_tmpfs(tmp_path / "ro", "size=1m,ro")


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def fill(path: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the filesystem holding ``path`` with the file ``path``."""
    st = os.statvfs(path.parent)
    free = st.f_bavail * st.f_frsize
    assert free > leave
    with open(path, "wb") as f:
        f.write(b"\0" * (free - leave))


async def health(http: aiohttp.ClientSession, url: str, path: str = "/health") -> tuple[int, dict[str, Any]]:
    async with http.get(url + path) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("spool_room", [False, True], ids=["spool-on-the-full-disk", "spool-on-another-disk"])
async def test_a_disk_that_fills_during_the_bootstrap_degrades_then_catches_up(
    tmp_path: Path,
    small_disk: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    spool_room: bool,
) -> None:
    """The spool is either the default one, beside the database on the same disk (full too: the
    candles wait in memory), or on another disk with room (they wait there)."""
    monkeypatch.setattr(engine_module, "BOOTSTRAP_FLUSH_ROWS", FLUSH_ROWS)
    caplog.set_level(logging.DEBUG, logger="deltafeed.engine")
    caplog.set_level(logging.INFO)
    tape = tmp_path / "tape.csv"  # on the big disk
    replica = BinanceReplica(symbols=SYMBOLS, seed=17, rate=2.0, speed=60.0, history_ms=3 * 3_600_000, tape=str(tape))
    await replica.start()
    db = small_disk / "candles.duckdb"
    settings = Settings(
        symbols=SYMBOLS,
        timeframes=["1s", "1m"],
        history="3h",
        db=str(db),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        api="off",
        spool=str(tmp_path / "s.spool") if spool_room else "auto",
    ).validate()
    engine = Engine(settings)
    assert engine.spool is not None and (Path(engine.spool.path).parent == small_disk) is not spool_room
    ballast = small_disk / "ballast"
    # Room for the new database and a few batches; 3 hours of 1s candles need about 5 MB.
    fill(ballast, leave=1_500_000)
    runner = await start_api(engine, None, "127.0.0.1", 0, None)
    url = api_url(runner)
    starting = asyncio.ensure_future(engine.start())
    try:
        async with aiohttp.ClientSession() as http:
            # The disk fills during the bootstrap: start-up waits and /health says why. With room in
            # the spool, start-up may instead finish through the spool (it goes on until it needs to
            # read the store, and on a fast machine it may not need to before the end): then /health
            # says the store is failing and where the candles wait.
            reasons: list[str] = []
            for _ in range(300):
                await asyncio.sleep(0.1)
                assert spool_room or not starting.done(), "the bootstrap finished although the disk is full"
                status, doc = await health(http, url)
                reasons = doc.get("reasons", [])
                if any("start-up waits" in r for r in reasons):
                    break
                if spool_room and starting.done() and any(r.startswith(f"cold store {db} failing") for r in reasons):
                    break
            finished = starting.done()  # through the spool (spool_room only)
            assert status == 503, doc
            store = [r for r in reasons if r.startswith(f"cold store {db} failing")]
            assert len(store) == 1, reasons
            assert "the disk is full (No space left on device)" in store[0], store[0]
            assert "free space on it or pass --db with a path on another disk" in store[0]
            spool = [r for r in reasons if r.startswith(f"spool {engine.spool.path} failing")]
            if spool_room:
                assert not spool, reasons
            else:
                assert "spool" not in store[0], store[0]  # the database's problem names the database
                # The spool beside it is full too: the candles are kept in memory, and it says so apart.
                assert len(spool) == 1 and "No space left on device" in spool[0], reasons
                assert spool[0].endswith("candles wait in memory"), spool[0]
            # Start-up says what it waits for (the store's own reason above says why).
            waits = [r for r in reasons if r.startswith(f"start-up waits for the cold store {db} to ")]
            assert finished or (len(waits) == 1 and waits[0].endswith("; streaming starts once it works again")), (
                reasons
            )
            assert all("\n" not in r for r in reasons)
            # Not ready either (a supervisor holds traffic back), and /readyz names the store too.
            status, ready = await health(http, url, "/readyz")
            assert status == 503 and ready["status"] == "not ready", ready
            assert any(r.startswith(f"cold store {db} not writable: ") for r in ready["reasons"]), ready
            if not finished:
                assert f"starting: bootstrapping history (waiting for the cold store {db} to " in ready["reasons"][0]
            assert engine.writer.written > 0  # the disk really filled part of the way through
            # Memory stays bounded while the disk is full: each series' bootstrap stops fetching at
            # the back-pressure point (one page past it at most), and nothing is dropped. With room
            # in the spool it goes on through the spool, until it needs to read the store.
            bound = FLUSH_ROWS + len(SYMBOLS) * PAGE
            seen: list[tuple[int, int, int]] = []
            for _ in range(100):
                w = engine.writer
                seen.append((w.in_memory, w.spooled_pending, w.written))
                if finished or (len(seen) > 15 and len(set(seen[-15:])) == 1):
                    break  # settled for 1.5 s: waiting, not fetching (or streaming through the spool)
                await asyncio.sleep(0.1)
            assert finished or len(set(seen[-15:])) == 1, seen
            assert max(m for m, _, _ in seen) <= bound, seen
            assert finished or not starting.done()
            assert engine.writer.failures >= 2
            if spool_room:
                # What the store refused waits in the spool, and health says where.
                assert engine.writer.spooled_pending > 0 and engine.writer.spool_failures == 0
                assert f"candles spooled at {engine.spool.path}, replayed when it is back" in store[0], store[0]
            else:
                assert seen[-1][0] > 0 and engine.writer.spooled_pending == 0 and engine.writer.spool_failures >= 1
            assert engine.status()["store_up"] is False
            assert engine.store_dropped == 0

            # Space returns: the waiting candles are written, start-up goes on, streaming starts.
            ballast.unlink()
            await asyncio.wait_for(starting, 60.0)
            await asyncio.sleep(6.0)  # six market minutes of streaming
            status, doc = await health(http, url)
            assert status == 200, doc
            assert engine.store_wait is None and engine.writer.last_error is None
            assert await health(http, url, "/readyz") == (200, {"status": "ready"})
    except BaseException:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        with contextlib.suppress(StoreError):  # the disk may still be full: do not hide the failure
            await engine.stop()
        raise
    else:
        await engine.stop()
    finally:
        # The engine closes flat candles up to the venue's clock: the reference runs that far too.
        end_ms = replica.clock.now_ms()
        await runner.cleanup()
        await replica.stop()

    assert engine.writer.in_memory == 0 and engine.writer.spooled_pending == 0
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert any("start-up waits for the cold store" in r.getMessage() for r in caplog.records)
    assert any("works again; start-up goes on" in r.getMessage() for r in caplog.records)
    # Everything reached the store, and equals candles computed from the tape.
    rows = read_tape(str(tape))
    with ColdStore.open_reader(db) as store:
        for sym in SYMBOLS:
            sym_rows = [r for r in rows if r[0] == sym]
            for tf in ("1s", "1m"):
                tf_ms = TIMEFRAMES[tf]
                stored = [c for c in store.query(f"binance:{sym}", tf) if c.closed]
                want = {c.open_time: c for c in candles_from_tape(sym_rows, tf_ms, until_ms=end_ms)}
                keys = [c.open_time for c in stored]
                assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (sym, tf, "hole or duplicate")
                # Back to the start of the 3 hours (the engine's "now" is a little after the replica's).
                assert keys[0] <= min(want) + 120_000, (sym, tf, "history does not reach back")
                assert keys[-1] >= max(want) - 3 * max(tf_ms, 60_000), (sym, tf, "streaming did not reach the store")
                for c in stored:
                    w = want[c.open_time]
                    got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
                    exp = (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades)
                    assert got == exp, (sym, tf, c.open_time, got, exp)


def test_run_on_a_read_only_disk_names_the_database_not_its_spool(tmp_path: Path, read_only_disk: Path) -> None:
    db = read_only_disk / "x.duckdb"
    p = subprocess.run(
        [
            *CLI,
            "run",
            "--symbols",
            "BTCUSDT",
            "--rest-url",
            "http://127.0.0.1:9",
            "--ws-url",
            "ws://127.0.0.1:9",
            "--api",
            "off",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
        cwd=tmp_path,
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    # Before: "cannot open spool .../x.duckdb.spool: Read-only file system; pass --spool with a
    # writable file path", for a problem of the database.
    assert p.stderr.startswith(
        f"deltafeed run: --db {db}: cannot create the database in {read_only_disk} (a "
        "read-only file system); pass --db with a path in a writable directory"
    ), p.stderr
    assert "spool" not in p.stderr


def test_run_on_an_existing_database_on_a_disk_now_read_only_names_the_database(
    tmp_path: Path, small_disk: Path
) -> None:
    db = small_disk / "x.duckdb"
    with ColdStore(db) as store:
        store.write([("binance:BTCUSDT", "1m", A_CANDLE)])
    (small_disk / "x.duckdb.spool").touch()  # the previous run's (empty) spool
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    p = subprocess.run(
        [
            *CLI,
            "run",
            "--symbols",
            "BTCUSDT",
            "--rest-url",
            "http://127.0.0.1:9",
            "--ws-url",
            "ws://127.0.0.1:9",
            "--api",
            "off",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
        cwd=tmp_path,
    )
    # Before: "cannot open spool .../x.duckdb.spool: Read-only file system; pass --spool with a writable file path".
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert p.stderr.startswith(f"deltafeed run: --db {db}: cannot write the database (a read-only file system)")
    assert "spool" not in p.stderr
    q = subprocess.run(
        [*CLI, "candles", "binance:BTCUSDT", "1m", "--db", str(db), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
    )
    assert q.returncode == 0 and len(q.stdout.splitlines()) == 2, q.stderr  # reading it still works


async def test_run_stops_on_sigterm_while_start_up_waits_for_a_full_disk(tmp_path: Path, small_disk: Path) -> None:
    """``deltafeed run`` as a user runs it: /health tells why start-up waits; SIGTERM stops it at
    once, with one line saying what could not be kept; the file is intact for the next run."""
    replica = BinanceReplica(symbols=SYMBOLS, seed=23, rate=2.0, speed=60.0, history_ms=8 * 3_600_000)
    await replica.start()
    db = small_disk / "candles.duckdb"
    fill(small_disk / "ballast", leave=1_500_000)
    # 8 hours of 1s candles of two symbols: more than the bootstrap keeps in memory (50,000), and
    # more than the disk holds.
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "run",
        "--symbols",
        ",".join(SYMBOLS),
        "--timeframes",
        "1s,1m",
        "--history",
        "8h",
        "--db",
        str(db),
        "--rest-url",
        replica.url,
        "--ws-url",
        replica.ws_url,
        "--api",
        "127.0.0.1:0",
        env=cli_env(),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        url = ""
        while not url:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, lines
            lines.append(line)
            if "serving the API on " in line:
                url = line.split("serving the API on ")[1].strip()
        async with aiohttp.ClientSession() as http:
            reasons: list[str] = []
            for _ in range(300):
                await asyncio.sleep(0.1)
                status, doc = await health(http, url)
                reasons = doc.get("reasons", [])
                if any(r.startswith("start-up waits for the cold store") for r in reasons):
                    break
            assert status == 503 and any("the disk is full (No space left on device)" in r for r in reasons), reasons
        proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stderr.read(), 10)
        code = await asyncio.wait_for(proc.wait(), 5)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await replica.stop()
    err = "".join(lines) + rest.decode()
    assert "Traceback" not in err, err
    assert "start-up waits for the cold store" in err and "stopping during start-up" in err
    # What was in memory could not be kept (the spool is on the same full disk): said in one line,
    # exit 1. The marks were not moved, so the next run fetches those candles again.
    lost = [ln for ln in err.splitlines() if "ERROR" in ln]
    # The store's last error was a write or, once a checkpoint failed, any use of the file.
    assert (
        code == 1
        and len(lost) == 1
        and re.search(r"ERROR deltafeed: stopped: cannot (write|use) the candle database", lost[0])
    ), lost[0]
    assert (
        f"and the spool {db}.spool failed too, so" in lost[0] and "candles are lost when this process ends" in lost[0]
    )
    assert lost[0].count("No space left on device") == 2, lost[0]  # the database's and the spool's, once each
    (small_disk / "ballast").unlink()
    q = subprocess.run(
        [*CLI, "candles", "binance:BTCUSDT", "1s", "--db", str(db), "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=30,
        env=cli_env(),
    )
    assert q.returncode == 0 and len(q.stdout.splitlines()) > 100, q.stderr
