"""The PostgreSQL tier's layout (tables, partition widths, names) and its numbered migrations, applied
under an advisory lock when a store opens; the layout itself is described in :mod:`deltafeed.store.postgres`."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from deltafeed.model import TIMEFRAMES, BadInput, Candle, timeframe

log = logging.getLogger("deltafeed.store.postgres")

_DAY_MS = 86_400_000

#: Width of one partition (or TimescaleDB chunk) per timeframe, in ms; see :mod:`deltafeed.store.postgres`.
PARTITION_MS: dict[str, int] = {
    "1s": _DAY_MS,
    "5s": _DAY_MS,
    "15s": _DAY_MS,
    "1m": 7 * _DAY_MS,
    "5m": 30 * _DAY_MS,
    "15m": 30 * _DAY_MS,
    "1h": 365 * _DAY_MS,
    "4h": 365 * _DAY_MS,
    "1d": 3650 * _DAY_MS,
}
if set(PARTITION_MS) != set(TIMEFRAMES):  # pragma: no cover - a guard for editors
    raise RuntimeError("TIMEFRAMES changed; give every timeframe a width in PARTITION_MS (store/postgres/schema.py)")

CANDLE_COLS = ("open_time", "open", "high", "low", "close", "volume", "trades", "closed", "final")
if Candle.__struct_fields__ != CANDLE_COLS:  # pragma: no cover - a guard for editors
    raise RuntimeError("Candle's fields changed; update CANDLE_COLS, the tables and a migration (store/postgres)")
COLS = ("instrument", *CANDLE_COLS)
#: The candle tables' columns as migration 1 created them (``final`` came with migration 3).
_V1_COLUMN_DDL = """instrument text NOT NULL,
        open_time bigint NOT NULL,
        open double precision NOT NULL,
        high double precision NOT NULL,
        low double precision NOT NULL,
        close double precision NOT NULL,
        volume double precision NOT NULL,
        trades bigint NOT NULL,
        closed boolean NOT NULL"""
#: The candle tables' columns now (the staging table of COPY writes has them too).
COLUMN_DDL = (
    _V1_COLUMN_DDL
    + """,
        final boolean NOT NULL DEFAULT false"""
)

# Lower-case only, so the name never needs quoting and means the same to psql users; pg_* is reserved.
SCHEMA_RE = re.compile(r"^(?!pg_)[a-z_][a-z0-9_]{0,62}$")


def table_suffix(tf: str) -> str:
    """``tf`` as it appears in table names: itself, but ``1M`` (a month) is ``1mo``, because
    PostgreSQL folds unquoted names to lower case and ``candles_1M`` would be ``candles_1m``, and a
    zoned day's ``-`` is ``_`` (``candles_1d_new_york``), so the name needs no quoting."""
    return f"{tf[:-1]}mo" if tf.endswith("M") else tf.replace("-", "_")


#: A candle table's name (not its partitions'), and the timeframe in it.
CANDLE_TABLE_RE = re.compile(r"^candles_([0-9]+(?:s|m|h|d|w|mo)|1d_[a-z_]+)$")


def timeframe_of_table(name: str) -> str | None:
    """The timeframe whose candle table is called ``name`` (``candles_1mo`` -> ``1M``), else None."""
    m = CANDLE_TABLE_RE.match(name)
    if m is None:
        return None
    suffix = m.group(1)
    if suffix.startswith("1d_"):
        return "1d-" + suffix[3:]
    return f"{suffix[:-2]}M" if suffix.endswith("mo") else suffix


def candle_table(schema: str, tf: str) -> str:
    """The qualified name of the candle table of timeframe ``tf``."""
    return f"{schema}.candles_{table_suffix(tf)}"


def partition_name(tf: str, start: int) -> str:
    """The name of ``tf``'s native partition starting at ``start`` ms (``_n`` for before 1970)."""
    t = table_suffix(tf)
    return f"candles_{t}_p{start}" if start >= 0 else f"candles_{t}_n{-start}"


def partition_ms(tf: str) -> int:
    """The partition (chunk) width of any timeframe: :data:`PARTITION_MS` for the standard ones, else
    the width of the longest standard timeframe not longer than it (``45s`` as ``15s``, ``2h`` as
    ``1h``, ``1w`` and ``1M`` as ``1d``), so a partition holds a similar number of candles."""
    if tf in PARTITION_MS:
        return PARTITION_MS[tf]
    length = timeframe(tf).shortest_ms
    return max((TIMEFRAMES[t], w) for t, w in PARTITION_MS.items() if TIMEFRAMES[t] <= length)[1]


async def candle_timeframes(con: Any, schema: str) -> list[str]:
    """The timeframes ``schema`` has candle tables for: the standard ones (migration 1) and those
    created since for other timeframes (:func:`create_candle_table`)."""
    rows = await con.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
        schema,
    )
    found = {tf for r in rows if (tf := timeframe_of_table(str(r[0]))) is not None}
    return sorted(found, key=lambda tf: (timeframe(tf).ms, tf))


async def create_candle_table(con: Any, layout: Layout, tf: str) -> None:
    """The candle table of a timeframe beyond the standard ones, at the current layout (columns as
    :data:`COLUMN_DDL`; partitioned, or a hypertable on TimescaleDB), if it does not exist yet. Under
    the migration lock, so two processes creating it together do not collide, and later migrations
    (which see every candle table, :func:`candle_timeframes`) include it."""
    table = candle_table(layout.schema, tf)
    await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"deltafeed.migrate.{layout.schema}")
    exists = await con.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
    if exists:
        return
    partitioned = "" if layout.timescale else " PARTITION BY RANGE (open_time)"
    await con.execute(f"CREATE TABLE {table} ({COLUMN_DDL}, PRIMARY KEY (instrument, open_time)){partitioned}")
    if layout.timescale:
        await _timescale_hypertable(con, layout, tf)


# -- migrations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a migration needs to know about the database it changes."""

    schema: str
    #: The candle tables are TimescaleDB hypertables (else natively partitioned tables).
    timescale: bool
    #: Schema holding TimescaleDB's functions (when ``timescale``).
    ts_schema: str = "public"


@dataclass(frozen=True)
class Migration:
    """One step of the layout: ``apply`` runs inside the transaction that holds the migration lock."""

    version: int
    description: str
    apply: Callable[[Any, Layout], Awaitable[None]]


def sql_migration(version: int, description: str, *statements: str, per_timeframe: bool = False) -> Migration:
    """A migration made of SQL statements with ``{schema}`` (and, with ``per_timeframe``, ``{table}``:
    run once per candle table) placeholders (write a literal brace twice), e.g. to add migration 2::

        sql_migration(2, "index on close", "CREATE INDEX ON {table} (close)", per_timeframe=True)
    """

    async def apply(con: Any, layout: Layout) -> None:
        tfs = await candle_timeframes(con, layout.schema) if per_timeframe else []
        tables = [candle_table(layout.schema, tf) for tf in tfs] if per_timeframe else [""]
        for table in tables:
            for stmt in statements:
                await con.execute(stmt.format(schema=layout.schema, table=table))

    return Migration(version, description, apply)


async def _v1_initial(con: Any, layout: Layout) -> None:
    s = layout.schema
    partitioned = "" if layout.timescale else " PARTITION BY RANGE (open_time)"
    for tf in TIMEFRAMES:
        await con.execute(
            f"CREATE TABLE {candle_table(s, tf)} ({_V1_COLUMN_DDL}, PRIMARY KEY (instrument, open_time)){partitioned}"
        )
    await con.execute(
        f"""CREATE TABLE {s}.final_marks (
            instrument text NOT NULL,
            timeframe text NOT NULL,
            final_until bigint NOT NULL,
            PRIMARY KEY (instrument, timeframe))"""
    )
    if layout.timescale:
        await _timescale_create(con, layout)


async def _v3_final(con: Any, layout: Layout) -> None:
    """``final`` on every candle table: true for the closed candles behind their series' final mark
    (what deltafeed vouched for so far), false for the rest (provisional, or forming).

    On TimescaleDB (untested here) a compressed hypertable takes a NOT NULL column with a default
    from TimescaleDB 2.6 on, and the UPDATE of compressed chunks needs 2.11 or later."""
    for tf in TIMEFRAMES:
        table = candle_table(layout.schema, tf)
        # A constant default: PostgreSQL 11+ adds the column without rewriting the table.
        await con.execute(f"ALTER TABLE {table} ADD COLUMN final boolean NOT NULL DEFAULT false")
        await con.execute(
            f"UPDATE {table} AS c SET final = true FROM {layout.schema}.final_marks AS m"
            " WHERE m.instrument = c.instrument AND m.timeframe = $1 AND c.closed AND c.open_time < m.final_until",
            tf,
        )


async def _v4_ticks(con: Any, layout: Layout) -> None:
    """Raw ticks (see :mod:`deltafeed.store.ticks`): trades and quotes keyed by (instrument, time_ms,
    id) so a write can skip stored ones (ON CONFLICT DO NOTHING), and the gaps among them. On
    TimescaleDB the tick tables are hypertables of one-day chunks, compressed (segmented by
    instrument) once two days old; on plain PostgreSQL they are ordinary heap tables."""
    s = layout.schema
    await con.execute(
        f"""CREATE TABLE {s}.trades (
            instrument text NOT NULL,
            trade_id bigint NOT NULL,
            time_ms bigint NOT NULL,
            price double precision NOT NULL,
            qty double precision NOT NULL,
            buyer_maker boolean NOT NULL,
            PRIMARY KEY (instrument, time_ms, trade_id))"""
    )
    await con.execute(
        f"""CREATE TABLE {s}.quotes (
            instrument text NOT NULL,
            seq bigint NOT NULL,
            time_ms bigint NOT NULL,
            bid double precision NOT NULL,
            ask double precision NOT NULL,
            PRIMARY KEY (instrument, time_ms, seq))"""
    )
    await con.execute(
        f"""CREATE TABLE {s}.tick_gaps (
            instrument text NOT NULL,
            since_ms bigint NOT NULL,
            until_ms bigint NOT NULL,
            why text NOT NULL,
            PRIMARY KEY (instrument, since_ms, until_ms))"""
    )
    if not layout.timescale:
        return
    ts = layout.ts_schema
    for table, key in ((f"{s}.trades", "trade_id"), (f"{s}.quotes", "seq")):
        await con.execute(
            f"SELECT {ts}.create_hypertable($1::regclass, 'time_ms', chunk_time_interval => $2::bigint,"
            " if_not_exists => true)",
            table,
            _DAY_MS,
        )
        await con.execute(f"SELECT {ts}.set_integer_now_func($1::regclass, $2::regproc)", table, f"{s}.now_ms")
        await con.execute(
            f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'instrument',"
            f" timescaledb.compress_orderby = 'time_ms, {key}')"
        )
        await con.execute(
            f"SELECT {ts}.add_compression_policy($1::regclass, compress_after => $2::bigint, if_not_exists => true)",
            table,
            2 * _DAY_MS,
        )


#: The layout's history, oldest first; versions count up from 1. Append a step (for instance with
#: :func:`sql_migration`) to change the layout: every database is brought up to the last version at open,
#: and a database at a newer version than the last one here is refused.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "candles_<tf> per timeframe (partitioned or hypertables), final_marks", _v1_initial),
    sql_migration(
        2,
        "switches: failover switches of logical instruments",
        """CREATE TABLE {schema}.switches (
                      instrument text NOT NULL,
                      since_ms bigint NOT NULL,
                      at_ms bigint NOT NULL,
                      source_from text NOT NULL,
                      source_to text NOT NULL,
                      PRIMARY KEY (instrument, since_ms))""",
    ),
    Migration(
        3, "final on candles_<tf>: closed candles behind the final mark are final, the rest provisional", _v3_final
    ),
    Migration(4, "trades, quotes and tick_gaps: raw ticks", _v4_ticks),
    sql_migration(
        5,
        "book_snapshots and book_deltas: order-book history",
        *(
            f"""CREATE TABLE {{schema}}.{table} (
                      instrument text NOT NULL,
                      time_ms bigint NOT NULL,
                      sequence bigint NOT NULL,
                      prev bigint NOT NULL,
                      in_sync boolean NOT NULL,
                      book_ms bigint NOT NULL,
                      bids text NOT NULL,
                      asks text NOT NULL)"""
            for table in ("book_snapshots", "book_deltas")
        ),
        *(f"CREATE INDEX ON {{schema}}.{table} (instrument, time_ms)" for table in ("book_snapshots", "book_deltas")),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version
if [m.version for m in MIGRATIONS] != list(range(1, len(MIGRATIONS) + 1)):  # pragma: no cover
    raise RuntimeError("MIGRATIONS must be numbered 1, 2, 3, ... in order (store/postgres/schema.py)")


async def migrate(con: Any, schema: str, name: str) -> Layout:
    """Create or migrate ``schema`` on ``con``, inside the caller's transaction, under a
    transaction-scoped advisory lock, so two processes starting together neither race nor both apply
    a migration; returns the layout found (or chosen, for a new schema). ``name`` names the store in
    messages. Raises :class:`BadInput` for a schema written by a newer deltafeed."""
    s = schema
    await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"deltafeed.migrate.{s}")
    if not await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", s):
        await con.execute(f"CREATE SCHEMA {s}")
    await con.execute(
        f"""CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
            version int PRIMARY KEY,
            description text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    version = int(await con.fetchval(f"SELECT coalesce(max(version), 0) FROM {s}.schema_migrations"))
    if version > SCHEMA_VERSION:
        raise BadInput(
            f"the candle store at {name} was written by a newer deltafeed (schema {version}; this one"
            f" knows up to {SCHEMA_VERSION}); upgrade deltafeed"
        )
    ts_schema = (
        await _timescale_try_enable(con, name)
        if version == 0
        else await con.fetchval(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'"
        )
    )
    if version == 0:
        timescale = ts_schema is not None
    else:
        # A natively partitioned table has relkind 'p'; a hypertable is a plain table ('r').
        kind = await con.fetchval(
            "SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = $1 AND c.relname = 'candles_1m'",
            s,
        )
        timescale = kind == "r" and ts_schema is not None
    layout = Layout(s, timescale, str(ts_schema) if timescale else "public")
    for m in MIGRATIONS[version:]:
        await m.apply(con, layout)
        await con.execute(
            f"INSERT INTO {s}.schema_migrations (version, description) VALUES ($1, $2)",
            m.version,
            m.description,
        )
        log.info("candle store %s: applied migration %d (%s)", name, m.version, m.description)
    return layout


# -- TimescaleDB (untested here: no TimescaleDB on the development machines) ------------------------
#
# Facts from TimescaleDB 2.x documentation: create_hypertable(relation, time_column_name,
# chunk_time_interval => <integer for an integer column>, if_not_exists => true) converts an empty plain
# table (a natively partitioned one cannot be converted, hence the layout choice at the first open);
# policies on an integer time column need set_integer_now_func(hypertable, func); compression is enabled
# with ALTER TABLE ... SET (timescaledb.compress, timescaledb.compress_segmentby = ...) and scheduled by
# add_compression_policy(hypertable, compress_after => <integer>); add_retention_policy(hypertable,
# drop_after => <integer>) schedules drop_chunks, and drop_chunks(hypertable, older_than => <integer>)
# drops the chunks whose whole range lies before the cutoff.


async def _timescale_try_enable(con: Any, target: str) -> str | None:
    """TimescaleDB's schema when the extension is (or can now be) enabled in this database, else None."""
    ext = await con.fetchval("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'")
    if ext is not None:
        return str(ext)
    if not await con.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb')"):
        return None
    try:
        async with con.transaction():  # a savepoint: failing here leaves the open's transaction usable
            await con.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as e:
        log.warning(
            "TimescaleDB is installed at %s but cannot be enabled (%s); using native partitions",
            target,
            str(e).splitlines()[0],
        )
        return None
    ext = await con.fetchval("SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'timescaledb'")
    return None if ext is None else str(ext)


async def _timescale_create(con: Any, layout: Layout) -> None:
    s = layout.schema
    await con.execute(
        f"CREATE FUNCTION {s}.now_ms() RETURNS bigint LANGUAGE sql STABLE"
        " AS $$ SELECT (extract(epoch FROM now()) * 1000)::bigint $$"
    )
    for tf in PARTITION_MS:
        await _timescale_hypertable(con, layout, tf)


async def _timescale_hypertable(con: Any, layout: Layout, tf: str) -> None:
    """Make ``tf``'s (empty) candle table a compressed hypertable of :func:`partition_ms` chunks."""
    s, ts = layout.schema, layout.ts_schema
    table, width = candle_table(s, tf), partition_ms(tf)
    await con.execute(
        f"SELECT {ts}.create_hypertable($1::regclass, 'open_time', chunk_time_interval => $2::bigint,"
        " if_not_exists => true)",
        table,
        width,
    )
    await con.execute(f"SELECT {ts}.set_integer_now_func($1::regclass, $2::regproc)", table, f"{s}.now_ms")
    await con.execute(
        f"ALTER TABLE {table} SET (timescaledb.compress, timescaledb.compress_segmentby = 'instrument',"
        " timescaledb.compress_orderby = 'open_time')"
    )
    await con.execute(
        f"SELECT {ts}.add_compression_policy($1::regclass, compress_after => $2::bigint, if_not_exists => true)",
        table,
        2 * width,
    )


async def timescale_set_retention(con: Any, layout: Layout, retention: dict[str, int | None]) -> None:
    """Make each hypertable's server-side retention policy match ``retention`` (the last opener's)."""
    ts = layout.ts_schema
    for tf in await candle_timeframes(con, layout.schema):
        table = candle_table(layout.schema, tf)
        await con.execute(f"SELECT {ts}.remove_retention_policy($1::regclass, if_exists => true)", table)
        ms = retention.get(tf)
        if ms is not None:
            await con.execute(f"SELECT {ts}.add_retention_policy($1::regclass, drop_after => $2::bigint)", table, ms)


async def timescale_expire(con: Any, layout: Layout, tf: str, cutoff: int) -> int:
    table = candle_table(layout.schema, tf)
    async with con.transaction():
        n = int(await con.fetchval(f"SELECT count(*) FROM {table} WHERE open_time < $1", cutoff))
        if n:
            await con.execute(
                f"SELECT {layout.ts_schema}.drop_chunks($1::regclass, older_than => $2::bigint)", table, cutoff
            )
            await con.execute(f"DELETE FROM {table} WHERE open_time < $1", cutoff)
    return n
