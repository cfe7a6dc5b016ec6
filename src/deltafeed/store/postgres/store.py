"""The PostgreSQL cold tier itself: :class:`PostgresStore`, idempotent upserts (unnest or COPY) and reads
(prepared queries or binary COPY) over an asyncpg pool, with failures turned into one-line errors."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import starmap
from operator import attrgetter
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import asyncpg  # type: ignore[import-untyped]
import numpy as np
from msgspec.structs import astuple

from deltafeed.model import TIMEFRAMES, BadInput, Candle, Switch, Timeframe, Unavailable
from deltafeed.model import timeframe as parse_timeframe
from deltafeed.store.base import (
    BookRow,
    Row,
    StartupRead,
    StoreError,
    StoreUnavailable,
    gaps_from_rows,
    grid_of,
    redact,
)
from deltafeed.store.columns import CANDLE_RECORD, Records
from deltafeed.store.postgres.copy import CandleBatch, CopyReader, sql_literal
from deltafeed.store.postgres.schema import (
    CANDLE_COLS,
    COLS,
    COLUMN_DDL,
    SCHEMA_RE,
    Layout,
    candle_table,
    candle_timeframes,
    create_candle_table,
    migrate,
    partition_ms,
    partition_name,
    timeframe_of_table,
    timescale_expire,
    timescale_set_retention,
)
from deltafeed.store.retention import DEFAULT_RETENTION_MS
from deltafeed.store.ticks import TickBatch, TickGap, TickPage, page_rows

log = logging.getLogger("deltafeed.store.postgres")

#: Batches of at least this many candles (per timeframe) go through COPY into a staging table, smaller ones
#: through one ``INSERT ... SELECT FROM unnest(...)``. Measured with ``bench/storage_pg.py``: unnest costs
#: less up to about 1-2k rows (no staging round trips), COPY wins above that.
COPY_THRESHOLD = 2000

_SELECT = ", ".join(CANDLE_COLS)
_UNNEST = (
    "unnest($1::text[], $2::bigint[], $3::float8[], $4::float8[], $5::float8[], $6::float8[], $7::float8[],"
    " $8::bigint[], $9::bool[], $10::bool[])"
)
# Rewriting an unchanged row would only leave a dead tuple behind (a replayed spool rewrites thousands).
_ON_CONFLICT = (
    "ON CONFLICT (instrument, open_time) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in CANDLE_COLS[1:])
    + " WHERE ("
    + ", ".join(f"c.{c}" for c in CANDLE_COLS[1:])
    + ") IS DISTINCT FROM ("
    + ", ".join(f"EXCLUDED.{c}" for c in CANDLE_COLS[1:])
    + ")"
)
_STAGE = "deltafeed_stage"

#: Reads that may return more candles than this go through a binary COPY parsed with numpy, smaller ones
#: through an ordinary prepared query (see :meth:`PostgresStore.query`).
COPY_READ_ROWS = 2000
#: A read of a bounded range of at least twice COPY_READ_ROWS candles is split into this many ranges
#: read at once over as many connections (see :meth:`PostgresStore.query`).
READ_PARTS = 2
#: The covering index of a closed partition (see :meth:`PostgresStore.cover_closed_partitions`).
COVER_SQL = (
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} (instrument, open_time) INCLUDE ("
    + ", ".join(CANDLE_COLS[1:])
    + ")"
)
#: Bound on building one covering index (a week of 1m candles of a thousand series: 10M rows).
_BUILD_TIMEOUT_S = 3600.0
_BOUND_RE = re.compile(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)")

T = TypeVar("T")
_open_time = attrgetter("open_time")
_lo = attrgetter("lo")


def _span(timeframe: str, since_ms: int | None, until_ms: int | None) -> int | None:
    """The most candles of ``timeframe`` ``[since_ms, until_ms]`` can hold (they are aligned to their
    timeframe); None when a bound is missing."""
    if since_ms is None or until_ms is None:
        return None
    return max(0, (until_ms - since_ms) // parse_timeframe(timeframe).shortest_ms + 1)


def _series_conds(instrument: str, final_only: bool) -> str:
    """The WHERE conditions of one series' candles (its name inlined: COPY takes no parameters)."""
    return f"instrument = {sql_literal(instrument)}" + (" AND final" if final_only else "")


def _pieces(since_ms: int | None, until_ms: int | None, most: int | None) -> list[tuple[int | None, int | None]]:
    """The ranges a read of ``[since_ms, until_ms]`` (at most ``most`` candles) is made of: a bounded
    range of at least twice COPY_READ_ROWS candles is cut into READ_PARTS consecutive ones, read at once
    over as many connections, so the server's work (most of the time) runs on as many cores; any other
    read is one range."""
    if since_ms is None or until_ms is None or most is None or most < 2 * COPY_READ_ROWS:
        return [(since_ms, until_ms)]
    cuts = [since_ms + (until_ms - since_ms) * k // READ_PARTS for k in range(READ_PARTS)] + [until_ms + 1]
    return [(lo, hi - 1) for lo, hi in itertools.pairwise(cuts) if hi > lo]


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _cover_name(partition: str) -> str:
    """The name of ``partition``'s covering index (within PostgreSQL's 63 bytes)."""
    return f"{partition[:57]}_cover"


def _secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        found = [parts.password or ""] + [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
    except ValueError:
        return []
    return [s for s in found if s]


#: Failures that mean "the server cannot be reached", as opposed to a statement that failed.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # pool closed, connection closed; its ValueError subclasses are handled first
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
#: Failures of a pooled connection that died while the server may be fine again (a restart since its
#: last use): worth one immediate retry on a fresh connection.
_STALE: tuple[type[BaseException], ...] = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    ConnectionResetError,
    BrokenPipeError,
)


def _first_line(e: BaseException, secrets: Iterable[str] = ()) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    for s in secrets:
        text = text.replace(s, "***")
    return text or type(e).__name__


def _why_unreachable(e: BaseException, timeout_s: float, secrets: Iterable[str] = ()) -> str:
    if isinstance(e, TimeoutError):
        return f"no answer within {timeout_s:g}s"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return _first_line(e, secrets)


def _open_error(e: BaseException, target: str, url: str, timeout_s: float) -> BadInput:
    # A server down or starting is Unavailable (exit 69, retried by a supervisor); the rest are
    # mistakes to fix (exit 2).
    """One line naming why ``open`` failed and what to do about it (never the password)."""
    secrets = _secrets(url)
    msg = _first_line(e, secrets)
    if isinstance(e, asyncpg.InvalidCatalogNameError):
        db = urlsplit(url).path.lstrip("/") or "postgres"
        return BadInput(f"PostgreSQL at {target}: {msg}; create it (createdb {db}) or fix the database in --db")
    if isinstance(e, asyncpg.InvalidAuthorizationSpecificationError):  # includes a wrong password
        return BadInput(f"PostgreSQL at {target} refused the login: {msg}; fix the user or password in --db")
    if isinstance(e, asyncpg.InsufficientPrivilegeError):
        return BadInput(
            f"PostgreSQL at {target}: {msg}; grant the user CREATE on the database, or connect"
            " as the owner of the deltafeed schema"
        )
    if isinstance(e, asyncpg.CannotConnectNowError):
        return Unavailable(f"PostgreSQL at {target} is starting up or shutting down ({msg}); retry in a moment")
    if isinstance(e, asyncpg.TooManyConnectionsError):
        return BadInput(f"PostgreSQL at {target}: {msg}; raise max_connections or stop idle clients")
    if isinstance(e, ValueError):  # asyncpg's ClientConfigurationError, or an unparseable URL
        return BadInput(
            f"--db {target} is not a usable PostgreSQL URL ({msg}); write it as"
            " postgresql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    if isinstance(e, socket.gaierror):
        return BadInput(f"cannot reach PostgreSQL at {target}: unknown host; fix the host in --db")
    if isinstance(e, _UNAVAILABLE):
        return Unavailable(
            f"cannot reach PostgreSQL at {target}: {_why_unreachable(e, timeout_s, secrets)};"
            " start the server or fix --db"
        )
    return BadInput(f"cannot open the candle store at {target}: {msg}")


# -- the store --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Partition:
    name: str
    lo: int
    hi: int


async def _no_reset(con: Any) -> None:
    """Pool release hook: deltafeed leaves no session state behind (transaction-scoped locks, no
    LISTEN, no SET), so asyncpg's default reset query would only cost a round trip per operation."""


class PostgresStore:
    """Candles in PostgreSQL behind the async :class:`~deltafeed.store.base.ColdTier` interface.

    Open it with :meth:`open`. Every method may run concurrently with the others (a pool of
    ``pool_size`` connections); each raises :class:`StoreUnavailable` when the server cannot be reached
    and :class:`StoreError` when a statement fails. The pool reconnects by itself: once the server is
    back, the next call works on the same object.
    """

    name: str
    retention: dict[str, int | None]
    #: The candle tables are TimescaleDB hypertables (else natively partitioned tables).
    timescale: bool

    def __init__(
        self,
        pool: Any,
        url: str,
        schema: str,
        retention: dict[str, int | None],
        *,
        command_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        """Use :meth:`open`, which also checks the server and brings the schema up to date."""
        self._pool = pool
        self._secrets = _secrets(url)
        self.schema = schema
        self.name = f"{redact(url)} (schema {schema})"
        self.retention = retention
        self.timescale = False
        self._layout = Layout(schema, False)
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        #: The timeframes with a candle table: the standard ones, and any other one written here or by
        #: another process (its table is created at its first write, :func:`create_candle_table`).
        self._tfs: set[str] = set(TIMEFRAMES)
        #: timeframe -> start (ms) of every partition known to exist.
        self._partitions: dict[str, set[int]] = {tf: set() for tf in TIMEFRAMES}
        self._closed = False
        #: Whether apply_retention covers ended partitions (the ``postgres_cover_closed`` setting).
        self.cover_closed = True
        self._upsert_sql: dict[str, str] = {}
        self._stage_sql: dict[str, str] = {}
        self._query_sql: dict[tuple[str, bool, bool, bool, bool], str] = {}

    @classmethod
    async def open(
        cls,
        url: str,
        retention: dict[str, int | None] | None = None,
        *,
        schema: str = "deltafeed",
        pool_size: int = 4,
        command_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> PostgresStore:
        """Connect to ``url``, create or migrate ``schema``, and return the store.

        ``command_timeout_s`` bounds each statement and ``connect_timeout_s`` each connection attempt, so a
        server that stops answering turns into :class:`StoreUnavailable` rather than a hang. Raises
        :class:`BadInput` (one line naming the fix, never the password) when the server cannot be
        reached, refuses the login, lacks the database, or holds a schema written by a newer deltafeed.
        """
        target = redact(url)
        if not SCHEMA_RE.match(schema):
            raise BadInput(
                f"PostgreSQL schema name {schema!r} is not usable; use lower-case letters, digits and _,"
                " not starting with a digit or pg_ (at most 63 characters)"
            )
        if pool_size < 1:
            raise BadInput(f"PostgreSQL pool size must be at least 1, not {pool_size}")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            if parts.scheme not in ("postgresql", "postgres"):
                raise ValueError(f"scheme {parts.scheme!r} is not postgresql://")
        except ValueError as e:
            raise _open_error(e, target, url, connect_timeout_s) from None
        pool = asyncpg.create_pool(
            url,
            min_size=0,  # no background reconnect loop (and its log lines) while the server is down
            max_size=pool_size,
            command_timeout=command_timeout_s,
            timeout=connect_timeout_s,
            statement_cache_size=1024,
            reset=_no_reset,
            server_settings={"application_name": "deltafeed", "jit": "off"},
        )
        try:
            await pool
            store = cls(
                pool,
                url,
                schema,
                dict(DEFAULT_RETENTION_MS if retention is None else retention),
                command_timeout_s=command_timeout_s,
                connect_timeout_s=connect_timeout_s,
            )
            await store._setup()
        except BadInput:
            pool.terminate()
            raise
        except Exception as e:
            pool.terminate()
            raise _open_error(e, target, url, connect_timeout_s) from None
        return store

    async def _setup(self) -> None:
        """Bring the schema up to date (see :func:`~deltafeed.store.postgres.schema.migrate`), then learn
        the layout: the TimescaleDB retention policies, or the native partitions."""
        async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
            self._layout = await migrate(con, self.schema, self.name)
            self.timescale = self._layout.timescale
            self._tfs = set(await candle_timeframes(con, self.schema))
            if self.timescale:
                await timescale_set_retention(con, self._layout, self.retention)
        if not self.timescale:
            await self._load_partitions()

    # -- running statements ---------------------------------------------------------------------

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn`` translating failures into StoreError/StoreUnavailable; retry once at once when a
        pooled connection turns out to have died (the server restarted since it was last used)."""
        for attempt in range(2):
            try:
                return await fn()
            except StoreError:
                raise
            except Exception as e:
                err = self._translate(what, e)
                if err is None:
                    raise
                if isinstance(err, StoreUnavailable) and not self._closed:
                    # Every idle connection of the pool is as dead as this one: replace them all.
                    await self._pool.expire_connections()
                    if attempt == 0 and isinstance(e, _STALE):
                        continue
                raise err from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _translate(self, what: str, e: Exception) -> StoreError | None:
        if self._closed:
            return StoreUnavailable(f"the candle store at {self.name} is closed")
        if isinstance(e, asyncpg.InterfaceError) and isinstance(e, ValueError):
            return StoreError(f"{what} at {self.name}: a value was refused: {_first_line(e, self._secrets)}")
        if isinstance(e, _UNAVAILABLE):
            why = _why_unreachable(e, self._command_timeout_s, self._secrets)
            return StoreUnavailable(f"PostgreSQL at {self.name} is unavailable ({what}: {why})")
        if isinstance(e, asyncpg.PostgresError):
            return StoreError(f"{what} at {self.name} failed: {_first_line(e, self._secrets)}")
        return None

    # -- partitions -----------------------------------------------------------------------------

    async def _list_partitions(self, con: Any, tf: str | None = None) -> dict[str, list[_Partition]]:
        rows = await con.fetch(
            """SELECT p.relname AS parent, c.relname AS name, pg_get_expr(c.relpartbound, c.oid) AS bound
               FROM pg_inherits i
               JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent
               JOIN pg_namespace n ON n.oid = p.relnamespace
               WHERE n.nspname = $1 AND p.relname = ANY($2::text[])""",
            self.schema,
            [candle_table(self.schema, t).split(".", 1)[1] for t in self._tfs if tf is None or t == tf],
        )
        out: dict[str, list[_Partition]] = {t: [] for t in self._tfs}
        for r in rows:
            m = _BOUND_RE.search(r["bound"] or "")
            parent = timeframe_of_table(str(r["parent"]))
            if m and parent is not None:
                out[parent].append(_Partition(str(r["name"]), int(m[1]), int(m[2])))
        return out

    async def _load_partitions(self) -> None:
        async with self._pool.acquire(timeout=self._command_timeout_s) as con:
            found = await self._list_partitions(con)
        self._partitions = {tf: {p.lo for p in parts} for tf, parts in found.items()}

    async def _ensure_partitions(self, needed: dict[str, set[int]]) -> None:
        """Create the partitions a write is about to need, each in its own short transaction (creating
        one locks its parent table exclusively for a moment), before the write's transaction."""
        missing = sorted(
            (tf, start) for tf, starts in needed.items() for start in starts - self._partitions.setdefault(tf, set())
        )
        for tf, start in missing:
            name = partition_name(tf, start)
            # DDL takes no parameters: the bounds are integers computed here, the names fixed.
            sql = (
                f"CREATE TABLE IF NOT EXISTS {self.schema}.{name} PARTITION OF {candle_table(self.schema, tf)}"
                f" FOR VALUES FROM ({start:d}) TO ({start + partition_ms(tf):d})"
            )
            for attempt in range(2):
                try:
                    await self._pool.execute(sql)
                    break
                except (asyncpg.UniqueViolationError, asyncpg.DuplicateTableError, asyncpg.DuplicateObjectError):
                    # Another process created it between our IF NOT EXISTS check and the insert into the
                    # catalog; the second attempt then finds it.
                    if attempt:
                        raise
            self._partitions[tf].add(start)

    # -- writes ---------------------------------------------------------------------------------

    async def write(self, rows: Sequence[Row]) -> None:
        """Upsert a batch atomically (all timeframes in one transaction); a key repeated inside the batch
        keeps its last occurrence, and writing a batch twice leaves the tables as after the first time."""
        if not rows:
            return
        tfs = {r[1] for r in rows}
        groups: dict[str, Sequence[Row]] = {tfs.pop(): rows} if len(tfs) == 1 else {}
        if not groups:
            by_tf: dict[str, list[Row]] = {tf: [] for tf in tfs}
            for r in rows:
                by_tf[r[1]].append(r)
            groups.update(by_tf)
        new = [tf for tf in groups if tf not in self._tfs]
        for tf in new:
            try:
                parse_timeframe(tf)
            except BadInput:
                raise StoreError(f"cannot store timeframe {tf!r} at {self.name}: not a timeframe") from None
        if new:
            await self._call("create candle tables", lambda: self._create_tables(new))
        try:
            batches = {tf: CandleBatch(group) for tf, group in groups.items()}
        except (OverflowError, TypeError, ValueError) as e:
            raise StoreError(f"write at {self.name}: a value was refused: {_first_line(e)}") from None
        needed = {tf: batch.starts(partition_ms(tf)) for tf, batch in batches.items()}

        async def run() -> None:
            direct = True
            for attempt in range(3):
                if not self.timescale:
                    await self._ensure_partitions(needed)
                try:
                    await self._write_once(batches, direct)
                    return
                except asyncpg.UniqueViolationError:
                    # Another writer stored some of the keys this one took for new between its check and
                    # its COPY: write the whole batch again, as upserts.
                    if not direct:
                        raise
                    direct = False
                except asyncpg.CheckViolationError as e:
                    # Another process's retention dropped a partition this one still had cached.
                    if attempt == 2 or "no partition of relation" not in str(e):
                        raise
                    await self._load_partitions()

        await self._call("write", run)

    async def _create_tables(self, tfs: list[str]) -> None:
        async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
            for tf in tfs:
                await create_candle_table(con, self._layout, tf)
        self._tfs.update(tfs)

    def _sql(self, cache: dict[str, str], source: str, tf: str) -> str:
        """The upsert of ``tf``'s rows from ``source`` (the unnest of parameters, or the staging table)."""
        sql = cache.get(tf)
        if sql is None:
            sql = cache[tf] = (
                f"INSERT INTO {candle_table(self.schema, tf)} AS c ({', '.join(COLS)}) SELECT * FROM {source} "
                + _ON_CONFLICT
            )
        return sql

    async def _write_once(self, batches: dict[str, CandleBatch], direct: bool) -> None:
        """Upsert ``batches`` in one transaction: a small batch with one ``INSERT ... SELECT FROM unnest``,
        a large one by binary COPY. COPY cannot upsert: with ``direct``, the rows newer than their series'
        newest stored candle (new keys, most of a bulk write) are copied straight into the candle table, and
        only the others go through a staging table and an upsert from it."""
        async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
            staged = False
            for tf, batch in batches.items():
                if len(batch) < COPY_THRESHOLD:
                    instruments, fields = batch.columns()
                    await con.execute(self._sql(self._upsert_sql, _UNNEST, tf), instruments, *fields)
                    continue
                rest = None
                if direct:
                    fresh = batch.newer(dict(await con.fetch(self._newest_sql(tf), batch.names)))
                    if fresh.any():
                        table = candle_table(self.schema, tf).split(".", 1)[1]
                        await con.copy_to_table(
                            table, schema_name=self.schema, source=batch.copy_data(fresh), columns=COLS, format="binary"
                        )
                    if fresh.all():
                        continue
                    rest = ~fresh
                # The staging table is temporary; ON COMMIT DELETE ROWS empties it for the next use.
                if not staged:
                    await con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ({COLUMN_DDL}) ON COMMIT DELETE ROWS")
                else:
                    await con.execute(f"TRUNCATE {_STAGE}")
                staged = True
                await con.copy_to_table(_STAGE, source=batch.copy_data(rest), columns=COLS, format="binary")
                await con.execute(self._sql(self._stage_sql, _STAGE, tf))

    def _newest_sql(self, tf: str) -> str:
        """(instrument, newest stored open_time or NULL) of each of $1's series: one backward step of the
        primary key's index each."""
        table = candle_table(self.schema, tf)
        return (
            f"SELECT s.i, (SELECT open_time FROM {table} WHERE instrument = s.i ORDER BY open_time DESC LIMIT 1)"
            " FROM unnest($1::text[]) s(i)"
        )

    async def set_final_marks(self, marks: dict[tuple[str, str], int]) -> None:
        """Record, per (instrument, timeframe), that every candle before ``final_until`` is final."""
        if not marks:
            return
        keys = list(marks)
        sql = (
            f"INSERT INTO {self.schema}.final_marks AS m (instrument, timeframe, final_until)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])"
            " ON CONFLICT (instrument, timeframe) DO UPDATE SET final_until = EXCLUDED.final_until"
        )
        await self._call(
            "set_final_marks",
            lambda: self._pool.execute(sql, [k[0] for k in keys], [k[1] for k in keys], [marks[k] for k in keys]),
        )

    async def apply_retention(self, now_ms: int) -> int:
        """Delete every candle whose open_time is older than its timeframe's retention before ``now_ms``
        (the venue's clock) and return how many went.

        Whole partitions below the cutoff are dropped (their rows counted first), then the expired rows
        of the partition straddling it are deleted, so exactly the expired candles go. Each timeframe is
        its own transaction, so the parent table is locked only for the drop of its partitions. Then the
        partitions that have ended since the last call get their covering index
        (:meth:`cover_closed_partitions`).
        """
        cutoffs = [(tf, now_ms - ms) for tf, ms in self.retention.items() if ms is not None and tf in self._tfs]

        async def run() -> int:
            removed = 0
            for tf, cutoff in cutoffs:
                async with self._pool.acquire(timeout=self._command_timeout_s) as con:
                    if self.timescale:
                        removed += await timescale_expire(con, self._layout, tf, cutoff)
                        continue
                    removed += await self._drop_expired_partitions(con, tf, cutoff)
                    status = await con.execute(
                        f"DELETE FROM {candle_table(self.schema, tf)} WHERE open_time < $1", cutoff
                    )
                    removed += int(status.split()[-1])
            return removed

        removed = await self._call("apply_retention", run)
        if self.cover_closed:  # after the drops: an expired partition is not worth covering
            await self.cover_closed_partitions(now_ms)
        return removed

    async def cover_closed_partitions(self, now_ms: int) -> list[str]:
        """Give every partition whose window ended before ``now_ms`` a covering index (the key, then every
        other column: :data:`COVER_SQL`) and vacuum it, so reads of past candles are index-only scans;
        returns the partitions covered now. Done once per partition (``apply_retention`` calls it, hourly
        in a running engine), with ``CREATE INDEX CONCURRENTLY``, which lets writes go on meanwhile.

        Why: the writer stores every series' candle of a minute together, so in a partition one series'
        candles lie on as many heap pages as it has candles (43,200 of one of 50 series written minute by
        minute: ~27k pages, and the planner's bitmap scan then sorts them, on disk past ``work_mem``). The
        covering index holds them in key order: the same read costs ~5x less server CPU (bench/storage_pg.py
        ``interleaved``). It roughly doubles a closed partition's size, and a write into a covered partition
        (a correction, a backfill) updates one more index; the partition being written is never covered.

        A build that failed half-way leaves an invalid index, which the next call drops and builds again.
        Processes sharing the schema take turns (a session advisory lock; one that finds it taken skips).
        Failures are logged, not raised: reads are correct either way."""
        if self.timescale:
            return []
        lock = f"deltafeed.cover.{self.schema}"
        try:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con:
                if not await con.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", lock):
                    return []  # another process is covering them
                try:
                    return await self._cover(con, now_ms)
                finally:
                    # A connection broken meanwhile ended its session, and the lock with it.
                    with contextlib.suppress(Exception):
                        await con.execute("SELECT pg_advisory_unlock(hashtext($1))", lock)
        except (asyncpg.PostgresError, *_UNAVAILABLE) as e:
            log.warning("covering closed partitions at %s postponed: %s", self.name, _first_line(e, self._secrets))
        return []

    async def _cover(self, con: Any, now_ms: int) -> list[str]:
        """:meth:`cover_closed_partitions` on ``con``, under its lock."""
        done: list[str] = []
        found = await self._list_partitions(con)
        closed = [p.name for parts in found.values() for p in sorted(parts, key=_lo) if p.hi <= now_ms]
        if not closed:
            return []
        names = {_cover_name(p): p for p in closed}
        have = dict(
            await con.fetch(
                "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = ANY($2)",
                self.schema,
                list(names),
            )
        )
        for name, part in names.items():
            if have.get(name):
                continue
            index, table = f"{self.schema}.{_quote_ident(name)}", f"{self.schema}.{_quote_ident(part)}"
            if name in have:  # invalid: a build that did not finish
                await con.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}", timeout=_BUILD_TIMEOUT_S)
            await con.execute(COVER_SQL.format(index=_quote_ident(name), table=table), timeout=_BUILD_TIMEOUT_S)
            # Index-only scans skip the heap only for pages the visibility map marks all-visible.
            await con.execute(f"VACUUM (ANALYZE) {table}", timeout=_BUILD_TIMEOUT_S)
            done.append(part)
        return done

    async def _drop_expired_partitions(self, con: Any, tf: str, cutoff: int) -> int:
        if not any(p.hi <= cutoff for p in (await self._list_partitions(con, tf))[tf]):
            return 0
        removed = 0
        async with con.transaction():
            # Lock the parent first (as writers do) and list again under the lock: another process may
            # have dropped or added partitions meanwhile.
            await con.execute(f"LOCK TABLE {candle_table(self.schema, tf)} IN ACCESS EXCLUSIVE MODE")
            expired = [p for p in (await self._list_partitions(con, tf))[tf] if p.hi <= cutoff]
            for p in expired:
                qualified = f"{self.schema}.{_quote_ident(p.name)}"
                removed += int(await con.fetchval(f"SELECT count(*) FROM {qualified}"))
                await con.execute(f"DROP TABLE {qualified}")
        self._partitions.setdefault(tf, set()).difference_update(p.lo for p in expired)
        return removed

    # -- reads ----------------------------------------------------------------------------------

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
        """Candles with ``since_ms <= open_time <= until_ms`` (bounds optional), oldest first; with
        ``last``, only the newest ``last`` of them (still oldest first). With ``final_only``, only
        final candles (``last`` then counts final ones).

        Up to :data:`COPY_READ_ROWS` candles come from a prepared query as asyncpg records (~1 ms for
        1000). A read that may be larger comes as a binary ``COPY (SELECT ...)`` decoded with numpy while
        it arrives (:class:`CopyReader`). For 43,200 candles both cost ~30 ms of client CPU in a quiet
        process, but records are objects the garbage collector tracks: in a process holding millions of
        objects (a running service) allocating them triggers full collections, which pushed the record
        path's p99 to ~190 ms where the COPY path stays near its median (bench/storage_pg.py).
        ``array_agg`` column arrays were slower still (the server spends ~30 ms more building them).

        Most of such a read is the server's (for 43,200 candles ~3/4 of the CPU: the index scan, and
        sending each value; fewer or packed columns saved little), so a bounded range of at least twice
        COPY_READ_ROWS is read as :data:`READ_PARTS` consecutive ranges at once, each on its own pool
        connection (and server process). The pieces are separate statements: a write committed between
        them may show in one piece and not in the other, as between two reads. :meth:`query_records`
        reads the same candles as numpy records, without the ~10 ms of making 43,200 Candles.
        """
        if timeframe not in self._tfs or (last is not None and last <= 0):
            return []
        most = last
        span = _span(timeframe, since_ms, until_ms)
        if span is not None:
            most = span if most is None else min(most, span)
        if most is not None and most <= COPY_READ_ROWS:
            return await self._query_prepared(instrument, timeframe, since_ms, until_ms, last, final_only)
        if last is not None:
            table, conds = candle_table(self.schema, timeframe), _series_conds(instrument, final_only)
            candles = (await self._copy_read(table, conds, since_ms, until_ms, last)).candles
            candles.reverse()
            return candles
        readers = await self._copy_pieces(instrument, timeframe, since_ms, until_ms, most, final_only)
        candles = readers[0].candles
        for r in readers[1:]:
            candles += r.candles  # one copy of the pointers, where a comprehension visits every candle
        return candles

    async def query_records(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        *,
        final_only: bool = False,
    ) -> Records:
        """:meth:`query`'s candles (without ``last``) as :data:`~deltafeed.store.columns.CANDLE_RECORD`
        records, with no Python object per candle: for readers that pass many candles on (exports).
        For 43,200 candles the client's CPU drops from ~16 to ~11 ms a read (bench/storage_pg.py)."""
        if timeframe not in self._tfs:
            return np.empty(0, dtype=CANDLE_RECORD)
        most = _span(timeframe, since_ms, until_ms)
        readers = await self._copy_pieces(instrument, timeframe, since_ms, until_ms, most, final_only, records=True)
        parts = [r.records() for r in readers]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    async def _copy_pieces(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None,
        until_ms: int | None,
        most: int | None,
        final_only: bool,
        *,
        records: bool = False,
    ) -> list[CopyReader]:
        """A series' candles in the bounds, oldest first, through one binary COPY per range of
        :func:`_pieces` (all at once), a :class:`CopyReader` each, in order."""
        table, conds = candle_table(self.schema, timeframe), _series_conds(instrument, final_only)
        ranges = _pieces(since_ms, until_ms, most)
        return list(
            await asyncio.gather(*(self._copy_read(table, conds, lo, hi, None, records=records) for lo, hi in ranges))
        )

    async def _copy_read(
        self,
        table: str,
        conds: str,
        since_ms: int | None,
        until_ms: int | None,
        last: int | None,
        *,
        records: bool = False,
    ) -> CopyReader:
        """The candles of ``table`` meeting ``conds`` and the bounds through a binary COPY, oldest first
        (newest first with ``last``), decoded by a :class:`CopyReader` (``records`` says how)."""
        if since_ms is not None:
            conds += f" AND open_time >= {int(since_ms):d}"
        if until_ms is not None:
            conds += f" AND open_time <= {int(until_ms):d}"
        order = "ORDER BY open_time" if last is None else f"ORDER BY open_time DESC LIMIT {int(last):d}"
        return await self._copy_out("query", f"SELECT {_SELECT} FROM {table} WHERE {conds} {order}", records=records)

    async def _copy_out(self, what: str, sql: str, keyed: bool = False, *, records: bool = False) -> CopyReader:
        """The rows of ``sql`` through a binary ``COPY ... TO STDOUT``, decoded (see :class:`CopyReader`)."""

        async def run() -> CopyReader:
            reader = CopyReader(keyed, records=records)  # a fresh one per attempt: a retry starts the stream over
            async with self._pool.acquire(timeout=self._command_timeout_s) as con:
                await con.copy_from_query(sql, output=reader.feed, format="binary")
            try:
                reader.finish()
            except ValueError as e:
                raise StoreError(f"{what} at {self.name}: {e}") from None
            return reader

        return await self._call(what, run)

    async def _query_prepared(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None,
        until_ms: int | None,
        last: int | None,
        final_only: bool,
    ) -> list[Candle]:
        key = (timeframe, since_ms is not None, until_ms is not None, last is not None, final_only)
        sql = self._query_sql.get(key)
        if sql is None:
            sql = f"SELECT {_SELECT} FROM {candle_table(self.schema, timeframe)} WHERE instrument = $1"
            if final_only:
                sql += " AND final"
            n = 1
            for present, cond in ((key[1], "open_time >= "), (key[2], "open_time <= ")):
                if present:
                    n += 1
                    sql += f" AND {cond}${n}"
            sql += f" ORDER BY open_time DESC LIMIT ${n + 1}" if last is not None else " ORDER BY open_time"
            self._query_sql[key] = sql
        params = [p for p in (since_ms, until_ms, last) if p is not None]
        rows = await self._call("query", lambda: self._pool.fetch(sql, instrument, *params))
        return list(starmap(Candle, reversed(rows) if last is not None else rows))

    async def last_closed(self, instrument: str, timeframe: str) -> Candle | None:
        """The newest candle marked closed."""
        if timeframe not in self._tfs:
            return None
        sql = (
            f"SELECT {_SELECT} FROM {candle_table(self.schema, timeframe)} WHERE instrument = $1 AND closed"
            " ORDER BY open_time DESC LIMIT 1"
        )
        row = await self._call("last_closed", lambda: self._pool.fetchrow(sql, instrument))
        return None if row is None else Candle(*row)

    async def recent_many(self, timeframe: str, instruments: Sequence[str], last: int) -> dict[str, StartupRead]:
        """For each of ``instruments``: its newest ``last`` candles of ``timeframe`` (oldest first) and its
        newest closed candle, with one statement for all of them (start-up reads every series; one query
        per series took most of a minute at a thousand instruments). Each series is read through the
        primary key's index, newest first, so no more rows than asked for are touched."""
        out = {i: StartupRead([], None) for i in instruments}
        if timeframe not in self._tfs or not out or last <= 0:
            return out
        table = candle_table(self.schema, timeframe)
        names = list(out)
        # Up to a million candles at a thousand series: binary COPYs (no parameters, so the names are
        # inlined), each row keyed with 2 x the series' number, + 1 for the newest closed candle; the
        # series split over READ_PARTS statements at once, as big reads are (see query).
        parts = [names[k::READ_PARTS] for k in range(min(READ_PARTS, len(names)))]
        readers = await asyncio.gather(
            *(self._copy_out("recent_many", self._recent_sql(table, part, last), keyed=True) for part in parts)
        )
        for part, reader in zip(parts, readers, strict=True):
            for key, candle in zip(reader.keys, reader.candles, strict=True):
                read = out[part[key // 2 - 1]]
                if key % 2:
                    read.last_closed = candle
                else:
                    read.recent.append(candle)
        for read in out.values():
            read.recent.sort(key=_open_time)  # each came newest first (a reversed run: linear to sort)
        return out

    @staticmethod
    def _recent_sql(table: str, names: list[str], last: int) -> str:
        series = f"unnest(ARRAY[{', '.join(map(sql_literal, names))}]::text[]) WITH ORDINALITY s(i, k)"
        return f"""SELECT 2 * s.k, c.* FROM {series} CROSS JOIN LATERAL (
                    SELECT {_SELECT} FROM {table} WHERE instrument = s.i ORDER BY open_time DESC LIMIT {int(last):d}) c
                  UNION ALL
                  SELECT 2 * s.k + 1, c.* FROM {series} CROSS JOIN LATERAL (
                    SELECT {_SELECT} FROM {table} WHERE instrument = s.i AND closed
                    ORDER BY open_time DESC LIMIT 1) c"""

    async def provisional(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[tuple[int, int]]:
        """Runs of provisional candles (closed, not final) in [since_ms, until_ms], exactly as the DuckDB
        tier computes them: (first, last) open times of each stretch of stored candles holding no final
        or forming candle, in order."""
        return (await self.provisional_many(timeframe, [instrument], since_ms, until_ms))[instrument]

    async def provisional_many(
        self, timeframe: str, instruments: Sequence[str], since_ms: int, until_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        """:meth:`provisional` of every one of ``instruments``, with one statement (the audit asks about
        every series of a venue)."""
        out: dict[str, list[tuple[int, int]]] = {i: [] for i in instruments}
        if timeframe not in self._tfs or not out:
            return out
        # Gaps and islands: a run of provisional candles keeps the difference between its row numbers
        # in the series and among the provisional candles. Each series on its own (a lateral join): its
        # rows come ordered from the primary key's index, where a set of series would need a sort.
        sql = f"""SELECT s.i, r.* FROM unnest($1::text[]) s(i) CROSS JOIN LATERAL (
                    SELECT min(open_time), max(open_time) FROM (
                      SELECT open_time, closed AND NOT final AS prov,
                             row_number() OVER (ORDER BY open_time)
                             - row_number() OVER (PARTITION BY closed AND NOT final ORDER BY open_time) AS run
                      FROM {candle_table(self.schema, timeframe)}
                      WHERE instrument = s.i AND open_time BETWEEN $2 AND $3) x
                    WHERE prov GROUP BY run) r"""
        rows = await self._call("provisional", lambda: self._pool.fetch(sql, list(out), since_ms, until_ms))
        for i, a, b in rows:
            out[i].append((int(a), int(b)))
        for runs in out.values():
            runs.sort()
        return out

    async def find_gaps(
        self, instrument: str, timeframe: str, tf_ms: int | Timeframe, since_ms: int, until_ms: int
    ) -> list[tuple[int, int]]:
        """Stretches of [since_ms, until_ms] whose candles are missing or not final, exactly as the DuckDB
        tier computes them: (first, last) open times of holes between stored candles, and of candles
        still open although a later one exists; merged, in order. The stretch before the first stored
        candle and after the last one is not reported."""
        return (await self.find_gaps_many(timeframe, tf_ms, [instrument], since_ms, until_ms))[instrument]

    async def find_gaps_many(
        self, timeframe: str, tf_ms: int | Timeframe, instruments: Sequence[str], since_ms: int, until_ms: int
    ) -> dict[str, list[tuple[int, int]]]:
        """:meth:`find_gaps` of every one of ``instruments``, with one statement."""
        found: dict[str, list[tuple[Any, ...]]] = {i: [] for i in instruments}
        if timeframe not in self._tfs or not found:
            return {i: [] for i in found}
        sql = f"""SELECT s.i, g.* FROM unnest($1::text[]) s(i) CROSS JOIN LATERAL (
                    SELECT open_time, closed, prev, next FROM (
                      SELECT open_time, closed, lag(open_time) OVER w AS prev, lead(open_time) OVER w AS next
                      FROM {candle_table(self.schema, timeframe)}
                      WHERE instrument = s.i AND open_time BETWEEN $2 AND $3
                      WINDOW w AS (ORDER BY open_time)) x
                    WHERE (prev IS NOT NULL AND open_time - prev > $4::bigint)
                       OR (NOT closed AND next IS NOT NULL)) g"""
        step = grid_of(tf_ms).shortest_ms
        rows = await self._call("find_gaps", lambda: self._pool.fetch(sql, list(found), since_ms, until_ms, step))
        for r in rows:
            found[r[0]].append(tuple(r)[1:])
        return {i: gaps_from_rows(r, tf_ms) if r else [] for i, r in found.items()}

    async def record_switches(self, switches: Sequence[Switch]) -> None:
        """Keep failover switches; one per (instrument, since_ms), so recording twice changes nothing."""
        if not switches:
            return
        sql = (
            f"INSERT INTO {self.schema}.switches (instrument, since_ms, at_ms, source_from, source_to)"
            " SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[])"
            " ON CONFLICT (instrument, since_ms) DO UPDATE SET at_ms = EXCLUDED.at_ms,"
            " source_from = EXCLUDED.source_from, source_to = EXCLUDED.source_to"
        )
        await self._call(
            "record_switches",
            lambda: self._pool.execute(
                sql,
                [w.instrument for w in switches],
                [w.since_ms for w in switches],
                [w.at_ms for w in switches],
                [w.source_from for w in switches],
                [w.source_to for w in switches],
            ),
        )

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """The switches of ``instrument`` with ``since_ms`` in the bounds given, oldest first."""
        rows = await self._call(
            "switches",
            lambda: self._pool.fetch(
                f"SELECT instrument, since_ms, at_ms, source_from, source_to FROM {self.schema}.switches"
                " WHERE instrument = $1 AND since_ms BETWEEN $2 AND $3 ORDER BY since_ms",
                instrument,
                -(2**62) if since_ms is None else since_ms,
                2**62 if until_ms is None else until_ms,
            ),
        )
        return [Switch(str(r[0]), int(r[1]), int(r[2]), str(r[3]), str(r[4])) for r in rows]

    async def final_marks(self) -> dict[tuple[str, str], int]:
        """What :meth:`set_final_marks` recorded, per (instrument, timeframe)."""
        rows = await self._call(
            "final_marks",
            lambda: self._pool.fetch(f"SELECT instrument, timeframe, final_until FROM {self.schema}.final_marks"),
        )
        return {(str(i), str(tf)): int(t) for i, tf, t in rows}

    async def instruments(self) -> list[tuple[str, str, int]]:
        """(instrument, timeframe, candle count) of every stored series, sorted (by code point, as the
        DuckDB tier sorts, whatever the database's collation)."""
        sql = " UNION ALL ".join(
            f"SELECT instrument, '{tf}' AS timeframe, count(*) FROM {candle_table(self.schema, tf)} GROUP BY instrument"
            for tf in sorted(self._tfs)
        )
        rows = await self._call("instruments", lambda: self._pool.fetch(sql))
        return sorted((str(i), str(tf), int(n)) for i, tf, n in rows)

    # -- lifecycle ------------------------------------------------------------------------------

    # -- ticks --------------------------------------------------------------------------------------

    async def write_ticks(self, batch: TickBatch) -> None:
        """Store a batch of ticks and gaps in one transaction, skipping those already stored."""
        if not len(batch) and not batch.gaps:
            return
        s = self.schema
        trades, quotes = batch.arrays()

        async def run() -> None:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
                for inst, a in trades:
                    await con.execute(
                        f"INSERT INTO {s}.trades SELECT $1, * FROM unnest($2::bigint[], $3::bigint[],"
                        " $4::float8[], $5::float8[], $6::bool[]) ON CONFLICT DO NOTHING",
                        inst,
                        *(a[n].tolist() for n in a.dtype.names),
                    )
                for inst, a in quotes:
                    await con.execute(
                        f"INSERT INTO {s}.quotes SELECT $1, * FROM unnest($2::bigint[], $3::bigint[],"
                        " $4::float8[], $5::float8[]) ON CONFLICT DO NOTHING",
                        inst,
                        *(a[n].tolist() for n in a.dtype.names),
                    )
                if batch.gaps:
                    await con.executemany(
                        f"INSERT INTO {s}.tick_gaps VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                        [(g.instrument, g.since_ms, g.until_ms, g.why) for g in batch.gaps],
                    )

        await self._call("write ticks", run)

    async def read_ticks(
        self, instrument: str, since_ms: int | None, until_ms: int | None, limit: int | None
    ) -> TickPage:
        """See :meth:`deltafeed.store.ticks.TickTier.read_ticks`."""
        s = self.schema
        lo = -(2**62) if since_ms is None else since_ms
        hi = 2**62 if until_ms is None else until_ms
        newest = since_ms is None and limit is not None
        order = "DESC" if newest else "ASC"
        tail = "" if limit is None else f" LIMIT {int(limit)}"

        async def run() -> TickPage:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con:
                trades = await con.fetch(
                    f"SELECT time_ms, trade_id, price, qty, buyer_maker FROM {s}.trades WHERE instrument = $1"
                    f" AND time_ms BETWEEN $2 AND $3 ORDER BY time_ms {order}, trade_id {order}{tail}",
                    instrument,
                    lo,
                    hi,
                )
                quotes = await con.fetch(
                    f"SELECT time_ms, seq, bid, ask FROM {s}.quotes WHERE instrument = $1"
                    f" AND time_ms BETWEEN $2 AND $3 ORDER BY time_ms {order}, seq {order}{tail}",
                    instrument,
                    lo,
                    hi,
                )
                gaps = await con.fetch(
                    f"SELECT since_ms, until_ms, why FROM {s}.tick_gaps WHERE instrument = $1"
                    " AND until_ms > $2 AND since_ms < $3 ORDER BY since_ms, until_ms",
                    instrument,
                    lo,
                    hi,
                )
                first = await con.fetchval(
                    f"SELECT least((SELECT min(time_ms) FROM {s}.trades WHERE instrument = $1),"
                    f" (SELECT min(time_ms) FROM {s}.quotes WHERE instrument = $1))",
                    instrument,
                )
            t_rows = [(int(r[0]), int(r[1]), float(r[2]), float(r[3]), bool(r[4])) for r in trades]
            q_rows = [(int(r[0]), int(r[1]), float(r[2]), float(r[3])) for r in quotes]
            if newest:
                t_rows.reverse()
                q_rows.reverse()
            return TickPage(
                instrument,
                t_rows,
                q_rows,
                [TickGap(instrument, int(a), int(b), str(w)) for a, b, w in gaps],
                None if first is None else int(first),
                page_rows(t_rows, q_rows, limit, since_ms),
            )

        return await self._call("read ticks", run)

    async def last_tick_ms(self) -> dict[str, int]:
        """Per instrument, the time of its newest stored tick."""
        s = self.schema
        sql = (
            f"SELECT instrument, max(t) FROM (SELECT instrument, max(time_ms) AS t FROM {s}.trades GROUP BY 1"
            f" UNION ALL SELECT instrument, max(time_ms) FROM {s}.quotes GROUP BY 1) x GROUP BY 1"
        )
        rows = await self._call("last tick", lambda: self._pool.fetch(sql))
        return {str(i): int(t) for i, t in rows}

    async def tick_instruments(self) -> list[tuple[str, int, int, int]]:
        """(instrument, ticks stored, oldest time, newest time) of every instrument with ticks."""
        s = self.schema
        sql = f"""SELECT instrument, sum(n), min(lo), max(hi) FROM (
                    SELECT instrument, count(*) AS n, min(time_ms) AS lo, max(time_ms) AS hi FROM {s}.trades GROUP BY 1
                    UNION ALL SELECT instrument, count(*), min(time_ms), max(time_ms) FROM {s}.quotes GROUP BY 1) x
                  GROUP BY 1 ORDER BY 1"""
        rows = await self._call("tick instruments", lambda: self._pool.fetch(sql))
        return [(str(i), int(n), int(a), int(b)) for i, n, a, b in rows]

    async def apply_tick_retention(self, cutoff_ms: int) -> int:
        """Delete ticks before ``cutoff_ms`` and the gaps ending before it; returns ticks deleted."""
        s = self.schema

        async def run() -> int:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
                n = 0
                for table in ("trades", "quotes"):
                    done = await con.execute(f"DELETE FROM {s}.{table} WHERE time_ms < $1", cutoff_ms)
                    n += int(done.split()[-1])
                await con.execute(f"DELETE FROM {s}.tick_gaps WHERE until_ms < $1", cutoff_ms)
                return n

        return await self._call("tick retention", run)

    # -- book history -------------------------------------------------------------------------------

    async def write_books(self, snapshots: list[BookRow], deltas: list[BookRow]) -> None:
        """See :meth:`deltafeed.books.history.BookTier.write_books`."""
        s = self.schema

        async def run() -> None:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
                for table, rows in (("book_snapshots", snapshots), ("book_deltas", deltas)):
                    if rows:
                        await con.executemany(
                            f"INSERT INTO {s}.{table} VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                            [astuple(r) for r in rows],
                        )

        await self._call("write book history", run)

    async def read_book(self, instrument: str, at_ms: int) -> tuple[BookRow | None, list[BookRow]]:
        """See :meth:`deltafeed.books.history.BookTier.read_book`."""
        s = self.schema
        cols = "instrument, time_ms, sequence, prev, in_sync, book_ms, bids, asks"

        async def run() -> tuple[BookRow | None, list[BookRow]]:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con:
                snap = await con.fetchrow(
                    f"SELECT {cols} FROM {s}.book_snapshots WHERE instrument = $1 AND time_ms <= $2"
                    " ORDER BY time_ms DESC, sequence DESC LIMIT 1",
                    instrument,
                    at_ms,
                )
                if snap is None:
                    return None, []
                first = BookRow(*snap)
                rows = await con.fetch(
                    f"SELECT {cols} FROM {s}.book_deltas WHERE instrument = $1 AND time_ms BETWEEN $2 AND $3"
                    " ORDER BY time_ms, sequence",
                    instrument,
                    first.time_ms,
                    at_ms,
                )
            return first, [BookRow(*r) for r in rows]

        return await self._call("read book history", run)

    async def book_span(self, instrument: str) -> tuple[int, int] | None:
        """See :meth:`deltafeed.books.history.BookTier.book_span`."""
        sql = f"SELECT min(time_ms), max(time_ms) FROM {self.schema}.book_snapshots WHERE instrument = $1"
        row = await self._call("book span", lambda: self._pool.fetchrow(sql, instrument))
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    async def apply_book_retention(self, snapshots_before_ms: int, deltas_before_ms: int) -> int:
        """See :meth:`deltafeed.books.history.BookTier.apply_book_retention`."""
        s = self.schema

        async def run() -> int:
            async with self._pool.acquire(timeout=self._command_timeout_s) as con, con.transaction():
                n = 0
                for table, cutoff in (("book_snapshots", snapshots_before_ms), ("book_deltas", deltas_before_ms)):
                    done = await con.execute(f"DELETE FROM {s}.{table} WHERE time_ms < $1", cutoff)
                    n += int(done.split()[-1])
                return n

        return await self._call("book retention", run)

    async def tick_bytes(self) -> int:
        """Bytes the tick tables take on disk, indexes and TOAST included (for bench/ticks.py)."""
        s = self.schema
        sql = f"SELECT pg_total_relation_size('{s}.trades') + pg_total_relation_size('{s}.quotes')"
        if self.timescale:
            sql = (
                f"SELECT {self._layout.ts_schema}.hypertable_size('{s}.trades')"
                f" + {self._layout.ts_schema}.hypertable_size('{s}.quotes')"
            )
        return int(await self._call("tick size", lambda: self._pool.fetchval(sql)))

    async def close(self) -> None:
        """Close the pool's connections (waiting a moment for operations in flight); safe twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), timeout=min(self._command_timeout_s, 5.0))
        except Exception:  # a hung server or a timeout: drop the sockets instead
            self._pool.terminate()

    def __repr__(self) -> str:
        return f"PostgresStore({self.name!r}, timescale={self.timescale})"
