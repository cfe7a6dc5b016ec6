"""The PostgreSQL cold tier: every candle kept, in a PostgreSQL server (TimescaleDB when it is there), written by
idempotent upsert over an asyncpg connection pool.

Layout, inside one schema (``deltafeed`` unless ``--db``'s caller picks another), so the tables can be
queried directly::

    <schema>.candles_<tf>        one table per timeframe: candles_1s candles_5s ... candles_4h candles_1d,
                                 and any other timeframe's (candles_45s, candles_1w, candles_1mo for 1M)
                                 created at its first write
        instrument   text              'binance:BTCUSDT'
        open_time    bigint            candle start, epoch milliseconds (UTC)
        open, high, low, close, volume   double precision
        trades       bigint
        closed       boolean           true once its interval is over
        final        boolean           deltafeed vouches for it (implies closed); closed and not final
                                       is provisional (migration 3; earlier candles are final when
                                       closed and behind their series' final mark)
        PRIMARY KEY (instrument, open_time)
    <schema>.final_marks         (instrument, timeframe, final_until bigint): before final_until every
                                 stored candle of that series is final
    <schema>.switches            (instrument, since_ms, at_ms, source_from, source_to): a logical
                                 instrument's failover switches (see ``model.Switch``)
    <schema>.schema_migrations   (version, description, applied_at): the migrations applied

    e.g.  SELECT to_timestamp(open_time / 1000.0) AS t, close FROM deltafeed.candles_1m
          WHERE instrument = 'binance:BTCUSDT' ORDER BY open_time DESC LIMIT 10;

Without TimescaleDB each ``candles_<tf>`` is natively range-partitioned on ``open_time`` into fixed
windows aligned to the epoch, named ``candles_<tf>_p<window start ms>`` (``_n<ms>`` before 1970) and
created the first time a write needs them. Widths (:data:`PARTITION_MS`) keep a partition at a few
thousand to ~100k candles per instrument and let the default retention drop whole partitions:

    1s 5s 15s: 1 day    1m: 7 days    5m 15m: 30 days    1h 4h: 365 days    1d: 3650 days

and any other timeframe those of the longest standard one not longer than it (45s: 1 day; 1w: 3650 days).
Once a partition's window has ended it gets a covering index, ``<partition>_cover`` on (instrument,
open_time) INCLUDE (every other column), built concurrently by the store's hourly maintenance
(:meth:`PostgresStore.cover_closed_partitions`, called from ``apply_retention``): the writer stores all
series' candles of a minute together, so a long read of one series would otherwise visit a heap page per
candle; with it that read is an index-only scan in key order. It about doubles a closed partition's size.

With TimescaleDB (detected at the first open of a schema, see :attr:`PostgresStore.timescale`) each
``candles_<tf>`` is instead a hypertable on the integer ``open_time`` with chunks of the same widths,
compressed (segmented by instrument) once older than two chunks, and given a server-side retention
policy per timeframe. deltafeed still computes its rollups itself (no continuous aggregates). This
TimescaleDB path has not yet run against a real TimescaleDB; the native one is what the tests cover.

The package: :mod:`~deltafeed.store.postgres.schema` (the layout above and its migrations),
:mod:`~deltafeed.store.postgres.copy` (the binary COPY format the big reads decode) and
:mod:`~deltafeed.store.postgres.store` (:class:`PostgresStore`, the tier itself).
"""

from deltafeed.store.postgres.schema import (
    MIGRATIONS,
    PARTITION_MS,
    SCHEMA_VERSION,
    Layout,
    Migration,
    sql_migration,
)
from deltafeed.store.postgres.store import COPY_READ_ROWS, COPY_THRESHOLD, PostgresStore

__all__ = [
    "COPY_READ_ROWS",
    "COPY_THRESHOLD",
    "MIGRATIONS",
    "PARTITION_MS",
    "SCHEMA_VERSION",
    "Layout",
    "Migration",
    "PostgresStore",
    "sql_migration",
]
