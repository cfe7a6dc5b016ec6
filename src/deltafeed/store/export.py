"""Candles and ticks to files for backtesting tools: Parquet, CSV or feather, in a plain layout or the
one freqtrade's data loader reads.

DuckDB writes every file with ``COPY ... TO``: straight from a DuckDB cold tier's file (the rows
never pass through Python), or from rows handed over (a PostgreSQL tier, the HTTP API). Parquet and
CSV are DuckDB's own writers; feather (Arrow IPC) goes through pyarrow, an optional dependency
(``pip install 'deltafeed[export]'``).

Layouts:

* ``plain``: ``instrument, timeframe, open_time (UTC timestamp), open, high, low, close, volume,
  trades, state`` (state: final, provisional or forming), one file at the path given.
* ``freqtrade``: ``date, open, high, low, close, volume`` of closed candles (freqtrade drops the
  forming one too) in ``<dir>/<PAIR>-<timeframe>.<ext>``, the name and columns of freqtrade's
  feather/parquet data handlers (``BTC/USDT`` becomes ``BTC_USDT``).
* ``nautilus``: bars as Nautilus Trader's ``ParquetDataCatalog`` stores them (checked against
  nautilus_trader 1.221, whose catalog reads them back): ``<catalog>/data/bar/<BAR_TYPE>/<first>_<last>.parquet``
  with ``open, high, low, close, volume`` as 16-byte little-endian fixed-point integers (value x 10^16,
  its high-precision layout), ``ts_event`` and ``ts_init`` (the bar's close, ns), and the schema
  metadata ``bar_type, instrument_id, price_precision, size_precision``. Written with pyarrow.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import numpy as np

from deltafeed.model import BadInput, Candle
from deltafeed.model import timeframe as parse_timeframe
from deltafeed.store.columns import Records, to_records

FORMATS = ("parquet", "csv", "feather")
LAYOUTS = ("plain", "freqtrade", "nautilus")

#: What each layout selects from a relation with the candle table's columns.
_STATE = "CASE WHEN final THEN 'final' WHEN closed THEN 'provisional' ELSE 'forming' END"
_TS = "epoch_ms(open_time)::TIMESTAMPTZ"
_PROJECTIONS = {
    "plain": f"instrument, timeframe, {_TS} AS open_time, open, high, low, close, volume, trades, {_STATE} AS state",
    "freqtrade": f"{_TS} AS date, open, high, low, close, volume",
}

#: Quote assets tried, longest first, to split a symbol without a separator (BTCUSDT -> BTC/USDT).
_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USD", "EUR", "GBP", "JPY", "BTC", "ETH", "BNB", "TRY", "BRL")


@dataclass(frozen=True)
class Target:
    """Where an export goes and how: the file, DuckDB's COPY options, and whether pyarrow writes it."""

    path: str
    fmt: str
    layout: str

    @property
    def options(self) -> str:
        if self.fmt == "csv":
            return "FORMAT csv, HEADER"
        return "FORMAT parquet, COMPRESSION zstd"


def check_format(fmt: str, layout: str) -> None:
    """One line naming a format or layout we do not write (:class:`BadInput`)."""
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt!r} is not written; use one of {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise BadInput(f"--layout {layout!r} is not written; use one of {', '.join(LAYOUTS)}")
    if layout == "freqtrade" and fmt == "csv":
        raise BadInput("freqtrade reads feather or parquet candles, not CSV; pass --format feather or parquet")
    if layout == "nautilus" and fmt != "parquet":
        raise BadInput("Nautilus's catalog holds parquet files; pass --format parquet with --layout nautilus")
    if fmt == "feather" or layout == "nautilus":
        _pyarrow()


def _pyarrow() -> Any:
    try:
        import pyarrow.feather as feather  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise BadInput(
            "--format feather needs pyarrow; pip install 'deltafeed[export]' (or pyarrow), or use --format parquet"
        ) from None
    return feather


def freqtrade_pair(instrument: str) -> str:
    """freqtrade's pair for a series key: ``binance:BTCUSDT`` -> ``BTC/USDT``, ``kraken:BTC/USD`` and
    ``coinbase:BTC-USD`` as written; a symbol with no known quote asset is kept whole."""
    symbol = instrument.partition(":")[2].partition("@")[0] or instrument
    for sep in ("/", "-", "_"):
        if sep in symbol:
            base, _, quote = symbol.partition(sep)
            return f"{base}/{quote}"
    for q in _QUOTES:
        if symbol.upper().endswith(q) and len(symbol) > len(q):
            return f"{symbol[: -len(q)]}/{symbol[-len(q) :]}"
    return symbol


def target(out: str, instrument: str, timeframe: str, fmt: str, layout: str, pair: str | None = None) -> Target:
    """Where the export goes: ``out`` itself, or for freqtrade the file named as freqtrade names it
    inside the directory ``out`` (created when missing, like freqtrade's own datadir)."""
    check_format(fmt, layout)
    if layout == "nautilus":
        return Target(out, fmt, layout)  # the catalog's root; the file is named by its bars
    if layout == "freqtrade":
        name = re.sub(r"[/ .@$+:]", "_", pair or freqtrade_pair(instrument))
        os.makedirs(out, exist_ok=True)
        return Target(os.path.join(out, f"{name}-{timeframe}.{fmt}"), fmt, layout)
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise BadInput(
            f"cannot write {out}: the directory {parent} does not exist; create it first (mkdir -p {parent})"
        )
    if os.path.isdir(out):
        raise BadInput(f"{out} is a directory; pass a file path such as {os.path.join(out, f'candles.{fmt}')}")
    return Target(out, fmt, layout)


def _where(instrument: str, timeframe: str, since: int | None, until: int | None, final_only: bool, layout: str) -> str:
    parts = [f"instrument = {_lit(instrument)}", f"timeframe = {_lit(timeframe)}"]
    if since is not None:
        parts.append(f"open_time >= {int(since)}")
    if until is not None:
        parts.append(f"open_time <= {int(until)}")
    if final_only:
        parts.append("final")
    elif layout != "plain":
        parts.append("closed")  # a backtest never sees the forming candle
    return " AND ".join(parts)


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def copy_from_duckdb(
    store: Any,
    instrument: str,
    timeframe: str,
    since: int | None,
    until: int | None,
    final_only: bool,
    to: Target,
) -> int:
    """Export from a DuckDB cold tier's :class:`~deltafeed.store.cold.ColdStore` by ``COPY`` straight
    from its file; returns the number of candles written."""
    where = _where(instrument, timeframe, since, until, final_only, to.layout)
    cols = _PROJECTIONS[to.layout]
    if to.fmt != "feather":
        n: int = store.copy_to("candles", cols, where, "open_time", to.path, to.options)
        return n
    # Arrow IPC: DuckDB writes Parquet, pyarrow turns it into feather.
    with tempfile.TemporaryDirectory() as tmp:
        part = os.path.join(tmp, "part.parquet")
        n = store.copy_to("candles", cols, where, "open_time", part, "FORMAT parquet")
        _parquet_to_feather(part, to.path)
    return n


def write_candles_file(rows: Sequence[Candle] | Records, instrument: str, timeframe: str, to: Target) -> int:
    """Export candles held in memory (from any tier), as Candles or as records (a PostgreSQL tier's
    :meth:`~deltafeed.store.postgres.PostgresStore.query_records`), with an in-memory DuckDB's ``COPY``."""
    records = rows if isinstance(rows, np.ndarray) else to_records(rows)
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        columns: dict[str, Any] = {
            "instrument": np.full(len(records), instrument, dtype=object),
            "timeframe": np.full(len(records), timeframe, dtype=object),
        }
        for col in Candle.__struct_fields__:
            columns[col] = np.ascontiguousarray(records[col])
        con.register("candles", columns)
        where = _where(instrument, timeframe, None, None, False, to.layout)
        sql = f"SELECT {_PROJECTIONS[to.layout]} FROM candles WHERE {where} ORDER BY candles.open_time"
        if to.fmt == "feather":
            _pyarrow().write_feather(con.sql(sql).to_arrow_table(), to.path, compression="lz4")
        else:
            con.execute(f"COPY ({sql}) TO {_lit(to.path)} ({to.options})").fetchall()
        n = con.execute(f"SELECT count(*) FROM candles WHERE {where}").fetchall()[0][0]
        return int(n)
    finally:
        con.close()


def candles_parquet(rows: Sequence[Candle], instrument: str, timeframe: str) -> bytes:
    """The plain layout as Parquet bytes (``GET /candles/...?format=parquet``)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "candles.parquet")
        write_candles_file(rows, instrument, timeframe, Target(path, "parquet", "plain"))
        with open(path, "rb") as f:
            return f.read()


#: Nautilus's fixed-point scale in its high-precision build: a value is stored as value x 10^16.
NAUTILUS_SCALE = 10**16
_NAUTILUS_UNITS = {"s": "SECOND", "m": "MINUTE", "h": "HOUR", "d": "DAY", "w": "WEEK", "M": "MONTH"}
_NAUTILUS_PRICE = {"trade": "LAST", "mid": "MID", "bid": "BID", "ask": "ASK"}


def nautilus_bar_type(instrument: str, timeframe: str) -> str:
    """``binance:BTCUSDT`` 1m -> ``BTCUSDT.BINANCE-1-MINUTE-LAST-EXTERNAL`` (``@bid`` -> ``BID``)."""
    name, _, side = instrument.partition("@")
    venue, _, symbol = name.partition(":")
    m = re.fullmatch(r"(\d+)([smhdwM])", timeframe)
    if m is None:
        raise BadInput(f"timeframe {timeframe!r} has no Nautilus bar specification")
    price = _NAUTILUS_PRICE[side or "trade"]
    return f"{symbol}.{venue.upper()}-{m.group(1)}-{_NAUTILUS_UNITS[m.group(2)]}-{price}-EXTERNAL"


def _precision(values: Sequence[float], most: int) -> int:
    """The fewest decimals (up to ``most``) that write every value exactly."""
    for p in range(most + 1):
        if all(round(v, p) == v for v in values):
            return p
    return most


def _fixed(v: float, precision: int) -> bytes:
    exact = Decimal(f"{v:.{precision}f}") * NAUTILUS_SCALE
    return int(exact).to_bytes(16, "little", signed=True)


def _nautilus_ts(ns: int) -> str:
    """A file-name time as Nautilus writes it: ``1970-01-01T00-01-00-000000000Z``."""
    import datetime as dt

    s, rest = divmod(ns, 1_000_000_000)
    return dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%dT%H-%M-%S-") + f"{rest:09d}Z"


def write_nautilus(rows: Sequence[Candle], instrument: str, timeframe: str, out: str) -> tuple[str, int]:
    """Closed candles as Nautilus bars in the catalog rooted at ``out``; (file written, bars)."""
    import pyarrow as pa  # type: ignore[import-not-found, import-untyped, unused-ignore]
    import pyarrow.parquet as pq  # type: ignore[import-not-found, import-untyped, unused-ignore]

    bars = [c for c in rows if c.closed]
    if not bars:
        return "", 0
    bar_type = nautilus_bar_type(instrument, timeframe)
    prices = [x for c in bars for x in (c.open, c.high, c.low, c.close)]
    price_p = _precision(prices, 9)
    size_p = _precision([round(c.volume, 8) for c in bars], 8)
    frame = parse_timeframe(timeframe)  # a month's close is the next month's open, not 31 days on
    ts = [frame.next(c.open_time) * 1_000_000 for c in bars]  # a bar is stamped at its close
    columns = {
        name: pa.array([_fixed(getattr(c, name), price_p) for c in bars], type=pa.binary(16))
        for name in ("open", "high", "low", "close")
    }
    columns["volume"] = pa.array([_fixed(round(c.volume, 8), size_p) for c in bars], type=pa.binary(16))
    columns["ts_event"] = pa.array(ts, type=pa.uint64())
    columns["ts_init"] = pa.array(ts, type=pa.uint64())
    fields = [pa.field(name, arr.type, nullable=False) for name, arr in columns.items()]
    meta = {
        "bar_type": bar_type,
        "instrument_id": bar_type.split("-", 1)[0],
        "price_precision": str(price_p),
        "size_precision": str(size_p),
    }
    table = pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields, metadata=meta))
    directory = os.path.join(out, "data", "bar", bar_type)
    path = os.path.join(directory, f"{_nautilus_ts(ts[0])}_{_nautilus_ts(ts[-1])}.parquet")
    others = [f for f in os.listdir(directory) if f != os.path.basename(path)] if os.path.isdir(directory) else []
    if others:
        # The catalog refuses overlapping files of one bar type; never delete a user's data to avoid it.
        raise BadInput(
            f"{directory} already holds bars of {bar_type} ({others[0]}); remove them, or export into a new"
            " catalog directory"
        )
    os.makedirs(directory, exist_ok=True)
    pq.write_table(table, path)
    return path, len(bars)


def _parquet_to_feather(src: str, dst: str) -> None:
    feather = _pyarrow()
    import pyarrow.parquet as pq  # type: ignore[import-not-found, import-untyped, unused-ignore]

    feather.write_feather(pq.read_table(src), dst, compression="lz4")


# -- ticks ---------------------------------------------------------------------------------------------

_BOOK = (
    "instrument, epoch_ms(time_ms)::TIMESTAMPTZ AS time, sequence, prev, in_sync,"
    " epoch_ms(book_ms)::TIMESTAMPTZ AS book_time, CAST(bids::JSON AS DOUBLE[][]) AS bids,"
    " CAST(asks::JSON AS DOUBLE[][]) AS asks"
)
#: What each kind of stored rows (ticks, order-book history) exports, and in which order.
_TICK_PROJECTIONS = {
    "trades": "instrument, epoch_ms(time_ms)::TIMESTAMPTZ AS time, trade_id AS id, price, qty AS amount,"
    " CASE WHEN buyer_maker THEN 'sell' ELSE 'buy' END AS side",
    "quotes": "instrument, epoch_ms(time_ms)::TIMESTAMPTZ AS time, seq, bid, ask",
    "book_snapshots": _BOOK,
    "book_deltas": _BOOK,
}
_TICK_ORDER = {
    "trades": "time_ms, trade_id",
    "quotes": "time_ms, seq",
    "book_snapshots": "time_ms, sequence",
    "book_deltas": "time_ms, sequence",
}


def copy_ticks_from_duckdb(
    store: Any, kind: str, instrument: str, since: int | None, until: int | None, to: Target
) -> int:
    """Export an instrument's stored trades, quotes or order-book history (``book_snapshots``,
    ``book_deltas``: levels as lists of ``[price, size]``), plain layout, straight from a DuckDB file."""
    parts = [f"instrument = {_lit(instrument)}"]
    if since is not None:
        parts.append(f"time_ms >= {int(since)}")
    if until is not None:
        parts.append(f"time_ms <= {int(until)}")
    order = _TICK_ORDER[kind]
    cols = _TICK_PROJECTIONS[kind]
    if to.fmt != "feather":
        n: int = store.copy_to(kind, cols, " AND ".join(parts), order, to.path, to.options)
        return n
    with tempfile.TemporaryDirectory() as tmp:
        part = os.path.join(tmp, "part.parquet")
        n = store.copy_to(kind, cols, " AND ".join(parts), order, part, "FORMAT parquet")
        _parquet_to_feather(part, to.path)
    return n
