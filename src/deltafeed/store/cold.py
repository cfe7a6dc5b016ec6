"""The cold tier: every candle ever kept, in one DuckDB file, written by upsert.

DuckDB lets only one process hold a database file open for writing, and while it does no other
process may open the file at all, not even read-only. So that ``deltafeed candles`` can read the
file while ``deltafeed run`` keeps writing it, a :class:`ColdStore` holds the file only for the
length of one operation: it keeps a private in-memory DuckDB instance and ``ATTACH``es the file to it
for each operation, ``DETACH``ing it (which checkpoints the WAL into the file and drops the lock)
right after. Attach + detach costs ~1 ms plus the checkpoint (~10-15 ms after a 500-row batch),
against ~14 ms for creating and closing a whole DuckDB instance per batch (see ``bench/store.py``).
Both sides retry for a short while when they find the file locked, so a reader slips in between two
write batches, and a writer that finds a reader inside waits for it or reports :class:`StoreBusy`,
keeping its batch for a retry.

:meth:`ColdStore.session` (or ``keep_open=True``) holds the file across many operations instead:
faster for a bulk load or a long read, at the price of locking every other process out meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import duckdb
import numpy as np
from msgspec.structs import astuple

from deltafeed.model import BadInput, Candle, Switch, Timeframe
from deltafeed.store.base import BookRow, Row, StartupRead, StoreBusy, StoreError, gaps_from_rows, grid_of, missing_dir
from deltafeed.store.columns import CANDLE_RECORD
from deltafeed.store.retention import DEFAULT_RETENTION_MS
from deltafeed.store.ticks import TickBatch, TickGap, TickPage, page_rows

#: Version of the table layout this code writes. Bump it and add a step to ``_MIGRATIONS`` when the
#: layout changes; a file with a newer version is refused rather than misread.
SCHEMA_VERSION = 6

#: Name under which the file is attached to the store's private in-memory DuckDB instance.
_DB = "deltafeed_cold"

_CREATE: tuple[str, ...] = (
    f"""CREATE TABLE {_DB}.candles (
        instrument VARCHAR NOT NULL,
        timeframe VARCHAR NOT NULL,
        open_time BIGINT NOT NULL,
        open DOUBLE,
        high DOUBLE,
        low DOUBLE,
        close DOUBLE,
        volume DOUBLE,
        trades BIGINT,
        closed BOOLEAN,
        final BOOLEAN NOT NULL DEFAULT false,
        PRIMARY KEY (instrument, timeframe, open_time)
    )""",
    f"CREATE TABLE {_DB}.schema_version (version INTEGER NOT NULL, applied_ms BIGINT NOT NULL)",
)
# Version 2: per series, the open time before which every stored candle is known final (see
# ``ColdStore.set_final_marks``); what lies after it is fetched again at start-up.
_CREATE_MARKS = f"""CREATE TABLE {_DB}.final_marks (
        instrument VARCHAR NOT NULL,
        timeframe VARCHAR NOT NULL,
        final_until BIGINT NOT NULL,
        PRIMARY KEY (instrument, timeframe)
    )"""
# Version 3: the failover switches of logical instruments (see ``model.Switch``).
_CREATE_SWITCHES = f"""CREATE TABLE {_DB}.switches (
        instrument VARCHAR NOT NULL,
        since_ms BIGINT NOT NULL,
        at_ms BIGINT NOT NULL,
        source_from VARCHAR NOT NULL,
        source_to VARCHAR NOT NULL,
        PRIMARY KEY (instrument, since_ms)
    )"""
_CREATE = (*_CREATE, _CREATE_MARKS, _CREATE_SWITCHES)
# Version 4: ``final`` (deltafeed vouches for the candle; see ``model.Candle``). Candles stored before
# it existed are final when closed and behind their series' final mark, provisional otherwise.
_ADD_FINAL = (
    f"ALTER TABLE {_DB}.candles ADD COLUMN final BOOLEAN NOT NULL DEFAULT false",
    f"""UPDATE {_DB}.candles AS c SET final = true FROM {_DB}.final_marks AS m
        WHERE m.instrument = c.instrument AND m.timeframe = c.timeframe AND c.closed
          AND c.open_time < m.final_until""",
)

# Version 5: raw ticks (see ``deltafeed.store.ticks``). No primary keys: an index would cost more than
# the ticks themselves; writes skip stored ticks by an anti-join over the batch's time range, which the
# tables' zone maps (ticks arrive in time order) narrow to a few row groups.
_CREATE_TICKS = (
    f"""CREATE TABLE {_DB}.trades (
        instrument VARCHAR NOT NULL,
        trade_id BIGINT NOT NULL,
        time_ms BIGINT NOT NULL,
        price DOUBLE NOT NULL,
        qty DOUBLE NOT NULL,
        buyer_maker BOOLEAN NOT NULL
    )""",
    f"""CREATE TABLE {_DB}.quotes (
        instrument VARCHAR NOT NULL,
        seq BIGINT NOT NULL,
        time_ms BIGINT NOT NULL,
        bid DOUBLE NOT NULL,
        ask DOUBLE NOT NULL
    )""",
    f"""CREATE TABLE {_DB}.tick_gaps (
        instrument VARCHAR NOT NULL,
        since_ms BIGINT NOT NULL,
        until_ms BIGINT NOT NULL,
        why VARCHAR NOT NULL,
        PRIMARY KEY (instrument, since_ms, until_ms)
    )""",
)
_CREATE = (*_CREATE, *_CREATE_TICKS)

# Version 6: order-book history (see ``deltafeed.books.history``): snapshots and deltas, levels as JSON.
_BOOK_COLS = "instrument, time_ms, sequence, prev, in_sync, book_ms, bids, asks"
_CREATE_BOOKS = tuple(
    f"""CREATE TABLE {_DB}.{table} (
        instrument VARCHAR NOT NULL,
        time_ms BIGINT NOT NULL,
        sequence BIGINT NOT NULL,
        prev BIGINT NOT NULL,
        in_sync BOOLEAN NOT NULL,
        book_ms BIGINT NOT NULL,
        bids VARCHAR NOT NULL,
        asks VARCHAR NOT NULL
    )"""
    for table in ("book_snapshots", "book_deltas")
)
_CREATE = (*_CREATE, *_CREATE_BOOKS)

#: ``_MIGRATIONS[v]`` lists the statements that take a file from version ``v - 1`` to ``v`` (tables
#: qualified with ``_DB``).
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (_CREATE_MARKS,),
    3: (_CREATE_SWITCHES,),
    4: _ADD_FINAL,
    5: _CREATE_TICKS,
    6: _CREATE_BOOKS,
}

_CANDLE_COLS = "open_time, open, high, low, close, volume, trades, closed, final"
_ALL_COLS = f"instrument, timeframe, {_CANDLE_COLS}"
# Gaps and islands: among a series' candles in open-time order, a run of provisional ones keeps the
# difference between its row number in the series and its row number among the provisional ones.
# Both take (timeframe, instruments, since, until[, longest step]) and answer for many series at once.
_SERIES = "timeframe = ? AND instrument IN (SELECT unnest(?::VARCHAR[])) AND open_time BETWEEN ? AND ?"
_PROVISIONAL = f"""SELECT instrument, min(open_time), max(open_time) FROM (
        SELECT instrument, open_time, closed AND NOT final AS prov,
               row_number() OVER (PARTITION BY instrument ORDER BY open_time)
               - row_number() OVER (PARTITION BY instrument, closed AND NOT final ORDER BY open_time) AS run
        FROM {_DB}.candles WHERE {_SERIES}) AS s
    WHERE prov GROUP BY instrument, run ORDER BY 1, 2"""
_GAPS = f"""SELECT instrument, open_time, closed, lag(open_time) OVER w AS prev, lead(open_time) OVER w AS next
    FROM {_DB}.candles WHERE {_SERIES}
    WINDOW w AS (PARTITION BY instrument ORDER BY open_time)
    QUALIFY (prev IS NOT NULL AND open_time - prev > ?) OR (NOT closed AND next IS NOT NULL)
    ORDER BY instrument, open_time"""
_UPSERT = f"INSERT OR REPLACE INTO {_DB}.candles ({_ALL_COLS}) SELECT {_ALL_COLS} FROM "

_PID_RE = re.compile(r"\(PID (\d+)\)")
#: How the OS words a write refused for want of room (ENOSPC; EFBIG past a file-size limit).
_DISK_FULL = (os.strerror(errno.ENOSPC), os.strerror(errno.EFBIG), os.strerror(errno.EDQUOT))


def _is_lock_error(err: BaseException) -> bool:
    msg = str(err)
    # The first is another process's file lock; the others are this process already having the file
    # open elsewhere (another DuckDB instance or connection), which also clears once that closes.
    return (
        "Could not set lock on file" in msg
        or "Unique file handle conflict" in msg
        or "different configuration than existing" in msg
    )


_PATH_LOCKS: dict[str, threading.RLock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: str) -> threading.RLock:
    """One lock per database file per process: stores on the same file take turns instead of
    spinning on DuckDB's in-process conflict error."""
    key = os.path.realpath(path)
    with _PATH_LOCKS_GUARD:
        lock = _PATH_LOCKS.get(key)
        if lock is None:
            lock = _PATH_LOCKS[key] = threading.RLock()
        return lock


def _holder(err: BaseException) -> str:
    m = _PID_RE.search(str(err))
    return f"another process (PID {m.group(1)})" if m else "another connection"


class ColdStore:
    """Candles in a DuckDB file; every write is an idempotent upsert on (instrument, timeframe, open_time).

    ``retention`` maps timeframe → age limit in ms (None = forever), default
    :data:`~deltafeed.store.retention.DEFAULT_RETENTION_MS`. ``read_only`` opens an existing file
    without ever writing it (see :meth:`open_reader`). ``lock_timeout_s`` is how long an operation
    waits for another process to release the file before raising :class:`StoreBusy` (default 0.5 s
    for a writer, whose caller retries anyway, and 3 s for a reader). ``keep_open`` holds the file
    for the life of the object: fastest, but no other process can read it meanwhile.

    Methods are thread-safe: one lock per file per process serialises them, so a writer may run in a
    worker thread while the event loop thread reads, even through another ``ColdStore`` object.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        retention: dict[str, int | None] | None = None,
        *,
        read_only: bool = False,
        lock_timeout_s: float | None = None,
        keep_open: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.retention: dict[str, int | None] = dict(DEFAULT_RETENTION_MS if retention is None else retention)
        self.lock_timeout_s = (3.0 if read_only else 0.5) if lock_timeout_s is None else lock_timeout_s
        memory = self.path == ":memory:"
        self._lock = threading.RLock() if memory else _path_lock(self.path)
        self._attached = False
        self._depth = 0
        self._schema_ok = False
        self._closed = False
        if read_only and memory:
            raise BadInput("a read-only candle store needs a database file; pass --db PATH")
        if read_only and not os.path.exists(self.path):
            raise self._missing()
        if not read_only and not memory:
            missing = missing_dir(self.path)  # never created silently: a typo in --db is an error
            if missing is not None:
                problem, create = missing
                raise BadInput(
                    f"cannot create the candle database {self.path}: {problem}; "
                    f"{create + ' or ' if create else ''}pass --db with a path in an existing directory"
                )
        # The private instance the file is attached to; creating it costs ~13 ms, so it lives as long
        # as the store. It holds no lock on the file while nothing is attached.
        self._con = duckdb.connect(":memory:")
        try:
            # Open once now, so a bad path, a foreign file or a newer schema fail here and not at the
            # first write; a writer also creates the tables on this first use.
            if keep_open or memory:
                with self._lock:
                    self._attach()
                    self._depth = 1
            with self._connection() as con:
                self._check_schema(con)
        except BaseException:
            self._con.close()
            raise

    @classmethod
    def open_reader(cls, path: str | os.PathLike[str], *, timeout_s: float = 3.0) -> ColdStore:
        """Open an existing database for reading while ``deltafeed run`` may be writing it.

        Raises :class:`BadInput` when the file does not exist or is not a deltafeed database, and
        :class:`StoreBusy` (also a ``BadInput``) when another process kept it locked for
        ``timeout_s`` seconds.
        """
        return cls(path, read_only=True, lock_timeout_s=timeout_s)

    # -- connections ------------------------------------------------------------------------------

    def _missing(self) -> BadInput:
        missing = missing_dir(self.path)
        if missing is not None:
            return BadInput(
                f"no candle database at {self.path}: {missing[0]}; pass --db with the file `deltafeed run` writes"
            )
        return BadInput(
            f"no candle database at {self.path}: run `deltafeed run` first to collect candles,"
            " or pass --db PATH to point at the file it writes"
        )

    def _failed(self, doing: str, err: duckdb.Error) -> StoreError:
        """A DuckDB error as one line naming the file; a full disk says so and what to do."""
        msg = " ".join(str(err).split())
        for cause in _DISK_FULL:
            if cause in msg:
                return StoreError(
                    f"cannot {doing} the candle database {self.path}: the disk is full ({cause}); free space"
                    " on it or pass --db with a path on another disk"
                )
        return StoreError(f"cannot {doing} the candle database {self.path}: {msg}")

    def _attach(self) -> None:
        """Attach the file, retrying while another process holds its lock, up to ``lock_timeout_s``."""
        quoted = self.path.replace("'", "''")
        sql = f"ATTACH '{quoted}' AS {_DB}" + (" (READ_ONLY)" if self.read_only else "")
        start = time.monotonic()
        delay = 0.002
        while True:
            try:
                self._con.execute(sql).fetchall()
                self._attached = True
                return
            except duckdb.Error as e:
                if _is_lock_error(e):
                    waited = time.monotonic() - start
                    if waited >= self.lock_timeout_s:
                        raise self._busy(e, waited) from e
                    # Short sleeps: a writer's batch holds the file for ~10-30 ms, and a reader that
                    # polls slowly would keep missing the gaps between batches.
                    time.sleep(min(delay, self.lock_timeout_s - waited))
                    delay = min(delay * 2, 0.01)
                    continue
                msg = str(e)
                if "does not exist" in msg:
                    raise self._missing() from e
                if "not a valid DuckDB database" in msg:
                    raise BadInput(
                        f"{self.path} is not a DuckDB database; pass --db with the file `deltafeed run`"
                        " writes (or a new path to start one)"
                    ) from e
                raise self._failed("open", e) from e

    def _detach(self) -> None:
        self._attached = False
        try:
            # Checkpoints the WAL into the file, then releases the file and its lock.
            self._con.execute(f"DETACH DATABASE IF EXISTS {_DB}").fetchall()
        except duckdb.Error as e:
            # DETACH checkpoints the WAL into the file: where a full disk usually shows first.
            raise self._failed("write", e) from e

    def _busy(self, err: BaseException, waited: float) -> StoreBusy:
        who = _holder(err)
        if self.read_only:
            return StoreBusy(
                f"cannot read {self.path}: {who} kept it locked for {waited:.1f}s. `deltafeed run` lets go"
                " between write batches, so this is usually a long query or a program holding the file open"
                " (a duckdb shell, a notebook); close that program, or retry"
            )
        return StoreBusy(
            f"cannot write candles to {self.path}: {who} kept it locked for {waited:.1f}s (a reader such as"
            " `deltafeed candles`, a duckdb shell, or a second `deltafeed run` on the same --db); the batch"
            " is kept and retried — if this lasts, close that program"
        )

    @contextmanager
    def _connection(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The connection with the file attached for one operation (or the session's attachment).

        duckdb errors raised inside become :class:`StoreError` naming the file.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"the candle store for {self.path} is closed")
            own = not self._attached
            if own:
                self._attach()
            try:
                yield self._con
            except duckdb.Error as e:
                if _is_lock_error(e):
                    raise self._busy(e, 0.0) from e
                raise self._failed("use", e) from e
            finally:
                if own:
                    self._detach()

    @contextmanager
    def session(self) -> Iterator[ColdStore]:
        """Keep the file attached across the operations inside the ``with`` block (reentrant).

        Saves the attach and checkpoint per operation during a bulk load or a multi-query read;
        other processes cannot open the file until the block ends.
        """
        with self._lock:
            if self._closed:
                raise StoreError(f"the candle store for {self.path} is closed")
            if not self._attached:
                self._attach()
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
                if self._depth == 0 and self._attached:
                    self._detach()

    @contextmanager
    def _transaction(self, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
        con.begin()
        try:
            yield
        except BaseException:
            con.rollback()
            raise
        con.commit()

    def _check_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        if self._schema_ok:
            return
        tables = {
            r[0]
            for r in con.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main'",
                [_DB],
            ).fetchall()
        }
        if "schema_version" not in tables:
            if self.read_only or "candles" in tables:
                raise BadInput(
                    f"{self.path} is a DuckDB file but not a deltafeed candle database; pass --db with the"
                    " file `deltafeed run` writes"
                )
            with self._transaction(con):
                for stmt in _CREATE:
                    con.execute(stmt)
                con.execute(
                    f"INSERT INTO {_DB}.schema_version VALUES (?, ?)",
                    [SCHEMA_VERSION, time.time_ns() // 1_000_000],
                )
        else:
            version = int(con.execute(f"SELECT max(version) FROM {_DB}.schema_version").fetchall()[0][0] or 0)
            if version > SCHEMA_VERSION:
                raise BadInput(
                    f"{self.path} was written by a newer deltafeed (schema {version}; this one reads up to"
                    f" {SCHEMA_VERSION}); upgrade deltafeed"
                )
            if version < SCHEMA_VERSION:
                if self.read_only:
                    raise BadInput(
                        f"{self.path} uses an older layout (schema {version}); start `deltafeed run` on it"
                        " once to upgrade it, then read it"
                    )
                self._migrate(con, version)
        self._schema_ok = True

    def _migrate(self, con: duckdb.DuckDBPyConnection, version: int) -> None:
        with self._transaction(con):
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in _MIGRATIONS[v]:
                    con.execute(stmt)
                con.execute(f"INSERT INTO {_DB}.schema_version VALUES (?, ?)", [v, time.time_ns() // 1_000_000])

    # -- writes -----------------------------------------------------------------------------------

    def write(self, rows: Sequence[tuple[str, str, Candle]]) -> None:
        """Upsert a batch of (instrument, timeframe, candle) in one statement.

        Idempotent: a key already stored is overwritten, a key repeated in the batch keeps its last
        occurrence, and writing the same batch twice leaves the table as after the first time. The
        batch is applied entirely or not at all; on failure :class:`StoreError` is raised.
        """
        if self.read_only:
            raise StoreError(f"the candle store for {self.path} was opened read-only; it cannot write")
        if not rows:
            return
        # DuckDB's INSERT OR REPLACE keeps the FIRST of two rows with the same key in one statement,
        # so repeated keys are reduced here to their last occurrence.
        latest = {(r[0], r[1], r[2].open_time): r for r in rows}
        batch: Sequence[tuple[str, str, Candle]] = rows if len(latest) == len(rows) else list(latest.values())
        # Column arrays for DuckDB's numpy scan: the fastest bulk path measured (bench/store.py),
        # ahead of the upsert appender, unnest() of list parameters and executemany (~500 rows/s).
        fields = list(zip(*[astuple(r[2]) for r in batch], strict=True))
        columns: dict[str, Any] = {
            "instrument": np.array([r[0] for r in batch], dtype=object),
            "timeframe": np.array([r[1] for r in batch], dtype=object),
        }
        for col, values in zip(Candle.__struct_fields__, fields, strict=True):
            columns[col] = np.array(values, dtype=CANDLE_RECORD[col])
        name = f"_deltafeed_batch_{id(self):x}"
        with self._connection() as con:
            self._check_schema(con)
            con.register(name, columns)
            try:
                con.execute(_UPSERT + name).fetchall()
            finally:
                con.unregister(name)

    def apply_retention(self, now_ms: int) -> int:
        """Delete candles whose open_time is older than their timeframe's retention before ``now_ms``.

        ``now_ms`` is the venue's time, never the local clock, so a replay or a skewed machine
        deletes exactly what the venue's calendar says. Timeframes without a retention (or absent
        from the map) are kept. Returns the number of rows deleted.
        """
        if self.read_only:
            raise StoreError(f"the candle store for {self.path} was opened read-only; it cannot delete")
        cutoffs = [(tf, now_ms - ms) for tf, ms in self.retention.items() if ms is not None]
        deleted = 0
        with self._connection() as con:
            self._check_schema(con)
            with self._transaction(con):
                for tf, cutoff in cutoffs:
                    res = con.execute(
                        f"DELETE FROM {_DB}.candles WHERE timeframe = ? AND open_time < ?", [tf, cutoff]
                    ).fetchall()
                    deleted += int(res[0][0])
        return deleted

    def set_final_marks(self, marks: dict[tuple[str, str], int]) -> None:
        """Record, per (instrument, timeframe), that every candle before ``final_until`` is final.

        The caller writes its candles first; a mark only ever covers candles already in the file.
        """
        if not marks:
            return
        with self._connection() as con:
            self._check_schema(con)
            with self._transaction(con):
                # One set-based statement (executemany would run one INSERT per mark).
                keys = list(marks)
                con.execute(
                    f"INSERT OR REPLACE INTO {_DB}.final_marks"
                    " SELECT unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::BIGINT[])",
                    [[k[0] for k in keys], [k[1] for k in keys], [marks[k] for k in keys]],
                )

    def record_switches(self, switches: Sequence[Switch]) -> None:
        """Keep failover switches; one per (instrument, since_ms), so recording twice changes nothing."""
        if not switches:
            return
        with self._connection() as con:
            self._check_schema(con)
            with self._transaction(con):
                con.executemany(
                    f"INSERT OR REPLACE INTO {_DB}.switches VALUES (?, ?, ?, ?, ?)",
                    [[w.instrument, w.since_ms, w.at_ms, w.source_from, w.source_to] for w in switches],
                )

    # -- reads ------------------------------------------------------------------------------------

    def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """The switches of ``instrument`` with ``since_ms`` in the bounds given, oldest first."""
        with self._connection() as con:
            self._check_schema(con)
            rows = con.execute(
                f"SELECT instrument, since_ms, at_ms, source_from, source_to FROM {_DB}.switches"
                " WHERE instrument = ? AND since_ms >= ? AND since_ms <= ? ORDER BY since_ms",
                [instrument, -(2**62) if since_ms is None else since_ms, 2**62 if until_ms is None else until_ms],
            ).fetchall()
        return [Switch(str(i), int(s), int(a), str(f), str(t)) for i, s, a, f, t in rows]

    def final_marks(self) -> dict[tuple[str, str], int]:
        """What :meth:`set_final_marks` recorded last, per (instrument, timeframe)."""
        with self._connection() as con:
            self._check_schema(con)
            rows = con.execute(f"SELECT instrument, timeframe, final_until FROM {_DB}.final_marks").fetchall()
        return {(str(i), str(tf)): int(t) for i, tf, t in rows}

    def find_gaps(
        self, instrument: str, timeframe: str, tf_ms: int | Timeframe, since_ms: int, until_ms: int
    ) -> list[tuple[int, int]]:
        """Stretches of [since_ms, until_ms] whose candles are missing or not final.

        Returns (first open_time, last open_time) pairs in order: holes between stored candles, and
        candles still marked open although a later candle exists (a final one was never written).
        The stretch before the first stored candle and after the last one is not reported.
        """
        return self.find_gaps_many(timeframe, tf_ms, [instrument], since_ms, until_ms)[instrument]

    def find_gaps_many(
        self, timeframe: str, tf_ms: int | Timeframe, instruments: Sequence[str], since_ms: int, until_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        """:meth:`find_gaps` of every one of ``instruments``, with one statement (the audit checks
        every series; one query per series took most of a minute at a thousand instruments)."""
        rows: dict[str, list[tuple[Any, ...]]] = {i: [] for i in instruments}
        with self._connection() as con:
            self._check_schema(con)
            found = con.execute(
                _GAPS, [timeframe, list(rows), since_ms, until_ms, grid_of(tf_ms).shortest_ms]
            ).fetchall()
        for r in found:
            rows[r[0]].append(r[1:])
        return {i: gaps_from_rows(r, tf_ms) if r else [] for i, r in rows.items()}

    def provisional(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[tuple[int, int]]:
        """Runs of provisional candles (closed, not final) with open times in [since_ms, until_ms]:
        (first open_time, last open_time) of each stretch of stored candles, in order, that holds no
        final or forming candle in between (a hole between stored candles does not split a run)."""
        return self.provisional_many(timeframe, [instrument], since_ms, until_ms)[instrument]

    def provisional_many(
        self, timeframe: str, instruments: Sequence[str], since_ms: int, until_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        """:meth:`provisional` of every one of ``instruments``, with one statement."""
        out: dict[str, list[tuple[int, int]]] = {i: [] for i in instruments}
        with self._connection() as con:
            self._check_schema(con)
            rows = con.execute(_PROVISIONAL, [timeframe, list(out), since_ms, until_ms]).fetchall()
        for i, a, b in rows:
            out[i].append((int(a), int(b)))
        return out

    def last_closed(self, instrument: str, timeframe: str) -> Candle | None:
        """The newest candle marked closed, e.g. to know where a backfill must resume."""
        with self._connection() as con:
            rows = con.execute(
                f"SELECT {_CANDLE_COLS} FROM {_DB}.candles WHERE instrument = ? AND timeframe = ? AND closed"
                " ORDER BY open_time DESC LIMIT 1",
                [instrument, timeframe],
            ).fetchall()
        return Candle(*rows[0]) if rows else None

    def query(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        last: int | None = None,
        *,
        final_only: bool = False,
    ) -> list[Candle]:
        """Candles with ``since_ms <= open_time <= until_ms`` (either bound optional), oldest first.

        With ``last``, only the newest ``last`` candles of that range, still oldest first. With
        ``final_only``, only the final candles (``last`` then counts final ones).
        """
        if last is not None and last <= 0:
            return []
        sql = f"SELECT {_CANDLE_COLS} FROM {_DB}.candles WHERE instrument = ? AND timeframe = ?"
        if final_only:
            sql += " AND final"
        params: list[object] = [instrument, timeframe]
        if since_ms is not None:
            sql += " AND open_time >= ?"
            params.append(since_ms)
        if until_ms is not None:
            sql += " AND open_time <= ?"
            params.append(until_ms)
        if last is None:
            sql += " ORDER BY open_time"
        else:
            sql += " ORDER BY open_time DESC LIMIT ?"
            params.append(last)
        with self._connection() as con:
            rows = con.execute(sql, params).fetchall()
        if last is not None:
            rows.reverse()
        return [Candle(*r) for r in rows]

    def recent_many(self, timeframe: str, instruments: Sequence[str], last: int) -> dict[str, StartupRead]:
        """For each of ``instruments``: its newest ``last`` candles of ``timeframe`` (oldest first)
        and its newest closed candle, read with two statements for all of them (start-up reads every
        series; one query per series took minutes at a thousand instruments)."""
        out = {i: StartupRead([], None) for i in instruments}
        if not instruments or last <= 0:
            return out
        keys = list(out)
        with self._connection() as con:
            rows = con.execute(
                f"SELECT instrument, {_CANDLE_COLS} FROM {_DB}.candles"
                " WHERE timeframe = ? AND instrument IN (SELECT unnest(?::VARCHAR[]))"
                " QUALIFY row_number() OVER (PARTITION BY instrument ORDER BY open_time DESC) <= ?"
                " ORDER BY instrument, open_time",
                [timeframe, keys, last],
            ).fetchall()
            closed = con.execute(
                f"SELECT instrument, {_CANDLE_COLS} FROM {_DB}.candles"
                " WHERE timeframe = ? AND closed AND instrument IN (SELECT unnest(?::VARCHAR[]))"
                " QUALIFY row_number() OVER (PARTITION BY instrument ORDER BY open_time DESC) = 1",
                [timeframe, keys],
            ).fetchall()
        for r in rows:
            out[r[0]].recent.append(Candle(*r[1:]))
        for r in closed:
            out[r[0]].last_closed = Candle(*r[1:])
        return out

    def instruments(self) -> list[tuple[str, str, int]]:
        """(instrument, timeframe, number of candles) for every stored series, sorted."""
        with self._connection() as con:
            rows = con.execute(
                f"SELECT instrument, timeframe, count(*) FROM {_DB}.candles GROUP BY ALL ORDER BY ALL"
            ).fetchall()
        return [(str(i), str(t), int(n)) for i, t, n in rows]

    # -- ticks ------------------------------------------------------------------------------------

    def write_ticks(self, batch: TickBatch) -> None:
        """Store a batch of ticks and gaps in one transaction, skipping ticks already stored (a
        batch written twice leaves the tables as after the first time)."""
        if self.read_only:
            raise StoreError(f"the candle store for {self.path} was opened read-only; it cannot write")
        if not len(batch) and not batch.gaps:
            return
        trades, quotes = batch.arrays()
        with self._connection() as con:
            self._check_schema(con)
            with self._transaction(con):
                for inst, a in trades:
                    self._insert_ticks(con, "trades", inst, a)
                for inst, a in quotes:
                    self._insert_ticks(con, "quotes", inst, a)
                if batch.gaps:
                    con.executemany(
                        f"INSERT OR REPLACE INTO {_DB}.tick_gaps VALUES (?, ?, ?, ?)",
                        [[g.instrument, g.since_ms, g.until_ms, g.why] for g in batch.gaps],
                    )

    def _insert_ticks(self, con: duckdb.DuckDBPyConnection, table: str, instrument: str, a: Any) -> None:
        """One instrument's ticks (a structured array) into ``table``, minus those already stored:
        an anti-join over the batch's time range, which the table's zone maps narrow to a few row
        groups (ticks arrive in time order)."""
        if not len(a):
            return
        names = a.dtype.names
        columns = {n: np.ascontiguousarray(a[n]) for n in names}
        lo, hi = int(columns["time_ms"].min()), int(columns["time_ms"].max())
        key = names[0]  # trade_id or seq
        cols = ", ".join(names)
        name = f"_deltafeed_ticks_{id(self):x}"
        con.register(name, columns)
        try:
            con.execute(
                f"""INSERT INTO {_DB}.{table} (instrument, {cols})
                    SELECT ?, {cols} FROM (SELECT DISTINCT ON (time_ms, {key}) {cols} FROM {name}) AS b
                    WHERE NOT EXISTS (SELECT 1 FROM {_DB}.{table} AS t
                        WHERE t.time_ms BETWEEN {lo} AND {hi} AND t.time_ms = b.time_ms
                          AND t.{key} = b.{key} AND t.instrument = ?)""",
                [instrument, instrument],
            ).fetchall()
        finally:
            con.unregister(name)

    def read_ticks(self, instrument: str, since_ms: int | None, until_ms: int | None, limit: int | None) -> TickPage:
        """See :meth:`deltafeed.store.ticks.TickTier.read_ticks`."""
        lo = -(2**62) if since_ms is None else since_ms
        hi = 2**62 if until_ms is None else until_ms
        newest = since_ms is None and limit is not None
        order = "DESC" if newest else ""
        tail = "" if limit is None else f" LIMIT {int(limit)}"
        with self._connection() as con:
            self._check_schema(con)
            trades = con.execute(
                f"SELECT time_ms, trade_id, price, qty, buyer_maker FROM {_DB}.trades"
                f" WHERE instrument = ? AND time_ms BETWEEN ? AND ? ORDER BY time_ms {order}, trade_id {order}{tail}",
                [instrument, lo, hi],
            ).fetchall()
            quotes = con.execute(
                f"SELECT time_ms, seq, bid, ask FROM {_DB}.quotes"
                f" WHERE instrument = ? AND time_ms BETWEEN ? AND ? ORDER BY time_ms {order}, seq {order}{tail}",
                [instrument, lo, hi],
            ).fetchall()
            gaps = con.execute(
                f"SELECT since_ms, until_ms, why FROM {_DB}.tick_gaps"
                " WHERE instrument = ? AND until_ms > ? AND since_ms < ? ORDER BY since_ms, until_ms",
                [instrument, lo, hi],
            ).fetchall()
            first = con.execute(
                f"SELECT min(t) FROM (SELECT min(time_ms) AS t FROM {_DB}.trades WHERE instrument = ?"
                f" UNION ALL SELECT min(time_ms) FROM {_DB}.quotes WHERE instrument = ?)",
                [instrument, instrument],
            ).fetchall()[0][0]
        if newest:
            trades.reverse()
            quotes.reverse()
        t_rows = [(int(t), int(i), float(p), float(q), bool(m)) for t, i, p, q, m in trades]
        q_rows = [(int(t), int(i), float(b), float(a)) for t, i, b, a in quotes]
        return TickPage(
            instrument,
            t_rows,
            q_rows,
            [TickGap(instrument, int(a), int(b), str(w)) for a, b, w in gaps],
            None if first is None else int(first),
            page_rows(t_rows, q_rows, limit, since_ms),
        )

    def last_tick_ms(self) -> dict[str, int]:
        """Per instrument, the time of its newest stored tick."""
        with self._connection() as con:
            self._check_schema(con)
            rows = con.execute(
                f"SELECT instrument, max(time_ms) FROM {_DB}.trades GROUP BY 1"
                f" UNION ALL SELECT instrument, max(time_ms) FROM {_DB}.quotes GROUP BY 1"
            ).fetchall()
        out: dict[str, int] = {}
        for i, t in rows:
            out[str(i)] = max(int(t), out.get(str(i), int(t)))
        return out

    def tick_instruments(self) -> list[tuple[str, int, int, int]]:
        """(instrument, ticks stored, oldest time, newest time) of every instrument with ticks."""
        with self._connection() as con:
            self._check_schema(con)
            rows = con.execute(
                f"""SELECT instrument, sum(n), min(lo), max(hi) FROM (
                        SELECT instrument, count(*) AS n, min(time_ms) AS lo, max(time_ms) AS hi
                        FROM {_DB}.trades GROUP BY 1
                        UNION ALL SELECT instrument, count(*), min(time_ms), max(time_ms) FROM {_DB}.quotes GROUP BY 1)
                    GROUP BY 1 ORDER BY 1"""
            ).fetchall()
        return [(str(i), int(n), int(a), int(b)) for i, n, a, b in rows]

    def apply_tick_retention(self, cutoff_ms: int) -> int:
        """Delete ticks before ``cutoff_ms`` and the gaps that end before it; returns ticks deleted."""
        return self._delete_before(
            {"trades": cutoff_ms, "quotes": cutoff_ms}, f"DELETE FROM {_DB}.tick_gaps WHERE until_ms < {int(cutoff_ms)}"
        )

    def _delete_before(self, cutoffs: dict[str, int], *also: str) -> int:
        """In one transaction, delete the rows of each table with ``time_ms`` before its cut-off and run
        ``also``; returns the rows deleted from the tables."""
        if self.read_only:
            raise StoreError(f"the candle store for {self.path} was opened read-only; it cannot delete")
        deleted = 0
        with self._connection() as con:
            self._check_schema(con)
            with self._transaction(con):
                for table, cutoff in cutoffs.items():
                    res = con.execute(f"DELETE FROM {_DB}.{table} WHERE time_ms < ?", [cutoff]).fetchall()
                    deleted += int(res[0][0])
                for stmt in also:
                    con.execute(stmt).fetchall()
        return deleted

    # -- book history -----------------------------------------------------------------------------

    def write_books(self, snapshots: list[BookRow], deltas: list[BookRow]) -> None:
        """See :meth:`deltafeed.books.history.BookTier.write_books`."""
        if self.read_only:
            raise StoreError(f"the candle store for {self.path} was opened read-only; it cannot write")
        with self._connection() as con:
            self._check_schema(con)
            with self._transaction(con):
                for table, rows in (("book_snapshots", snapshots), ("book_deltas", deltas)):
                    if rows:
                        con.executemany(
                            f"INSERT INTO {_DB}.{table} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [astuple(r) for r in rows],
                        )

    def read_book(self, instrument: str, at_ms: int) -> tuple[BookRow | None, list[BookRow]]:
        """See :meth:`deltafeed.books.history.BookTier.read_book`."""
        with self._connection() as con:
            self._check_schema(con)
            snap = con.execute(
                f"SELECT {_BOOK_COLS} FROM {_DB}.book_snapshots WHERE instrument = ? AND time_ms <= ?"
                " ORDER BY time_ms DESC, sequence DESC LIMIT 1",
                [instrument, at_ms],
            ).fetchall()
            if not snap:
                return None, []
            first = BookRow(*snap[0])
            deltas = con.execute(
                f"SELECT {_BOOK_COLS} FROM {_DB}.book_deltas WHERE instrument = ? AND time_ms BETWEEN ? AND ?"
                " ORDER BY time_ms, sequence",
                [instrument, first.time_ms, at_ms],
            ).fetchall()
        return first, [BookRow(*r) for r in deltas]

    def book_span(self, instrument: str) -> tuple[int, int] | None:
        """See :meth:`deltafeed.books.history.BookTier.book_span`."""
        with self._connection() as con:
            self._check_schema(con)
            lo, hi = con.execute(
                f"SELECT min(time_ms), max(time_ms) FROM {_DB}.book_snapshots WHERE instrument = ?", [instrument]
            ).fetchall()[0]
        return None if lo is None else (int(lo), int(hi))

    def apply_book_retention(self, snapshots_before_ms: int, deltas_before_ms: int) -> int:
        """See :meth:`deltafeed.books.history.BookTier.apply_book_retention`."""
        return self._delete_before({"book_snapshots": snapshots_before_ms, "book_deltas": deltas_before_ms})

    # -- export -----------------------------------------------------------------------------------

    def copy_to(self, table: str, columns: str, where: str, order: str, target: str, options: str) -> int:
        """``COPY (SELECT columns FROM table WHERE where ORDER BY order) TO target (options)`` run by
        DuckDB straight from the file, without the rows passing through Python; returns the row count.
        ``table`` is ``candles``, ``trades``, ``quotes``, ``book_snapshots`` or ``book_deltas``; the caller
        builds the SQL fragments from checked values (:mod:`deltafeed.store.export`)."""
        if table not in ("candles", "trades", "quotes", "book_snapshots", "book_deltas"):
            raise ValueError(f"no table {table!r} to export")
        quoted = target.replace("'", "''")
        with self._connection() as con:
            self._check_schema(con)
            con.execute("SET TimeZone = 'UTC'")  # timestamps in CSV are written in the session's zone
            res = con.execute(
                f"COPY (SELECT {columns} FROM {_DB}.{table} WHERE {where} ORDER BY {order}) TO '{quoted}' ({options})"
            ).fetchall()
        return int(res[0][0]) if res else 0

    # -- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the file (if held) and refuse further use. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._depth = 0
            try:
                if self._attached:
                    self._detach()
            finally:
                self._con.close()

    def __enter__(self) -> ColdStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "read-write"
        return f"ColdStore({self.path!r}, {mode})"


class DuckDBTier:
    """A :class:`ColdStore` behind the async :class:`~deltafeed.store.base.ColdTier` interface: every
    call runs in a worker thread, so the event loop never waits on DuckDB."""

    def __init__(self, store: ColdStore) -> None:
        self.store = store
        self.name = store.path
        self.retention = store.retention

    @classmethod
    async def open(
        cls, path: str, retention: dict[str, int | None] | None = None, *, read_only: bool = False
    ) -> DuckDBTier:
        if read_only:
            return cls(await asyncio.to_thread(ColdStore.open_reader, path))
        return cls(await asyncio.to_thread(ColdStore, path, retention))

    async def write(self, rows: Sequence[Row]) -> None:
        await asyncio.to_thread(self.store.write, rows)

    async def query(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        last: int | None = None,
        *,
        final_only: bool = False,
    ) -> list[Candle]:
        return await asyncio.to_thread(
            self.store.query, instrument, timeframe, since_ms, until_ms, last, final_only=final_only
        )

    async def provisional(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[tuple[int, int]]:
        return await asyncio.to_thread(self.store.provisional, instrument, timeframe, since_ms, until_ms)

    async def last_closed(self, instrument: str, timeframe: str) -> Candle | None:
        return await asyncio.to_thread(self.store.last_closed, instrument, timeframe)

    async def recent_many(self, timeframe: str, instruments: Sequence[str], last: int) -> dict[str, StartupRead]:
        return await asyncio.to_thread(self.store.recent_many, timeframe, instruments, last)

    async def find_gaps(
        self, instrument: str, timeframe: str, tf_ms: int | Timeframe, since_ms: int, until_ms: int
    ) -> list[tuple[int, int]]:
        return await asyncio.to_thread(self.store.find_gaps, instrument, timeframe, tf_ms, since_ms, until_ms)

    async def find_gaps_many(
        self, timeframe: str, tf_ms: int | Timeframe, instruments: Sequence[str], since_ms: int, until_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        return await asyncio.to_thread(self.store.find_gaps_many, timeframe, tf_ms, instruments, since_ms, until_ms)

    async def provisional_many(
        self, timeframe: str, instruments: Sequence[str], since_ms: int, until_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        return await asyncio.to_thread(self.store.provisional_many, timeframe, instruments, since_ms, until_ms)

    async def final_marks(self) -> dict[tuple[str, str], int]:
        return await asyncio.to_thread(self.store.final_marks)

    async def set_final_marks(self, marks: dict[tuple[str, str], int]) -> None:
        await asyncio.to_thread(self.store.set_final_marks, marks)

    async def record_switches(self, switches: Sequence[Switch]) -> None:
        await asyncio.to_thread(self.store.record_switches, switches)

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        return await asyncio.to_thread(self.store.switches, instrument, since_ms, until_ms)

    async def apply_retention(self, now_ms: int) -> int:
        return await asyncio.to_thread(self.store.apply_retention, now_ms)

    async def instruments(self) -> list[tuple[str, str, int]]:
        return await asyncio.to_thread(self.store.instruments)

    async def write_ticks(self, batch: TickBatch) -> None:
        await asyncio.to_thread(self.store.write_ticks, batch)

    async def read_ticks(
        self, instrument: str, since_ms: int | None, until_ms: int | None, limit: int | None
    ) -> TickPage:
        return await asyncio.to_thread(self.store.read_ticks, instrument, since_ms, until_ms, limit)

    async def last_tick_ms(self) -> dict[str, int]:
        return await asyncio.to_thread(self.store.last_tick_ms)

    async def tick_instruments(self) -> list[tuple[str, int, int, int]]:
        return await asyncio.to_thread(self.store.tick_instruments)

    async def apply_tick_retention(self, cutoff_ms: int) -> int:
        return await asyncio.to_thread(self.store.apply_tick_retention, cutoff_ms)

    async def write_books(self, snapshots: list[BookRow], deltas: list[BookRow]) -> None:
        await asyncio.to_thread(self.store.write_books, snapshots, deltas)

    async def read_book(self, instrument: str, at_ms: int) -> tuple[BookRow | None, list[BookRow]]:
        return await asyncio.to_thread(self.store.read_book, instrument, at_ms)

    async def book_span(self, instrument: str) -> tuple[int, int] | None:
        return await asyncio.to_thread(self.store.book_span, instrument)

    async def apply_book_retention(self, snapshots_before_ms: int, deltas_before_ms: int) -> int:
        return await asyncio.to_thread(self.store.apply_book_retention, snapshots_before_ms, deltas_before_ms)

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)
