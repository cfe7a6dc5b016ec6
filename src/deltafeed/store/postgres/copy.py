"""PostgreSQL's binary COPY format for candles, both ways and through numpy: :class:`CandleBatch` lays a
batch of candles out for ``COPY ... FROM STDIN (FORMAT binary)``, :class:`CopyReader` decodes ``COPY
(SELECT <Candle's fields>) TO STDOUT (FORMAT binary)`` while it arrives."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from deltafeed.model import Candle
from deltafeed.store.base import Row
from deltafeed.store.columns import CANDLE_RECORD, Records, to_candles, to_records
from deltafeed.store.postgres.schema import CANDLE_COLS, COLS

#: One row of ``COPY (SELECT <Candle's fields>) TO STDOUT (FORMAT binary)``: a field count, then each
#: field's length and big-endian value. Fixed-width because every column is NOT NULL.
COPY_ROW = np.dtype(
    [
        ("nfields", ">i2"),
        ("len0", ">i4"),
        ("open_time", ">i8"),
        ("len1", ">i4"),
        ("open", ">f8"),
        ("len2", ">i4"),
        ("high", ">f8"),
        ("len3", ">i4"),
        ("low", ">f8"),
        ("len4", ">i4"),
        ("close", ">f8"),
        ("len5", ">i4"),
        ("volume", ">f8"),
        ("len6", ">i4"),
        ("trades", ">i8"),
        ("len7", ">i4"),
        ("closed", "?"),
        ("len8", ">i4"),
        ("final", "?"),
    ]
)
_COPY_LENGTHS = (8, 8, 8, 8, 8, 8, 8, 1, 1)
_COPY_ROW_FIELDS: list[Any] = COPY_ROW.descr
#: A row of ``COPY (SELECT <a bigint>, <Candle's fields>) TO STDOUT (FORMAT binary)``.
KEYED_COPY_ROW = np.dtype([("nfields", ">i2"), ("len_key", ">i4"), ("key", ">i8"), *_COPY_ROW_FIELDS[1:]])
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
#: The signature, no flags, no header extension.
_HEADER = COPY_SIGNATURE + bytes(8)
_TRAILER = b"\xff\xff"
_NO_KEY = np.iinfo(np.int64).min


@lru_cache(maxsize=64)
def _copy_in_row(name_bytes: int) -> np.dtype[Any]:
    """One row of ``COPY <table> (<COLS>) FROM STDIN (FORMAT binary)`` whose instrument is ``name_bytes``
    long in UTF-8: COPY_ROW with the instrument's length and text in front."""
    fields: list[tuple[str, Any]] = [("nfields", ">i2"), ("len_instrument", ">i4"), ("instrument", f"S{name_bytes}")]
    return np.dtype(fields + _COPY_ROW_FIELDS[1:])


class CandleBatch:
    """One timeframe's candles to write, as arrays: each distinct instrument once (``names``), each
    candle's instrument as an index into it (``codes``) and its fields (``values``, records of
    :data:`~deltafeed.store.columns.CANDLE_RECORD`), sorted by (instrument, open_time) with a key
    repeated in the input kept at its last occurrence.

    Raises OverflowError, TypeError or ValueError for a field that does not fit its column (a trade
    count beyond bigint)."""

    def __init__(self, rows: Sequence[Row]) -> None:
        names = [r[0] for r in rows]
        index = dict.fromkeys(names, 0)
        for i, name in enumerate(index):
            index[name] = i
        codes = np.fromiter(map(index.__getitem__, names), dtype=np.int64, count=len(names))
        values = to_records([r[2] for r in rows])
        order = np.lexsort((values["open_time"], codes))  # stable: a repeated key keeps the input's order
        codes, values = codes[order], values[order]
        times = values["open_time"]
        last = np.ones(len(codes), dtype=bool)
        last[:-1] = (codes[1:] != codes[:-1]) | (times[1:] != times[:-1])
        self.names = list(index)
        self.codes: np.ndarray[Any, np.dtype[np.int64]] = codes[last]
        self.values: Records = values[last]

    def __len__(self) -> int:
        return len(self.codes)

    def starts(self, width: int) -> set[int]:
        """The start of every window of ``width`` ms (epoch aligned) holding one of the candles."""
        times = self.values["open_time"]
        return set(np.unique(times - times % width).tolist())

    def columns(self) -> tuple[list[str], list[list[Any]]]:
        """The instrument of every candle and each of Candle's fields as a list (for ``unnest``)."""
        names = self.names
        return [names[c] for c in self.codes.tolist()], [self.values[c].tolist() for c in CANDLE_COLS]

    def newer(self, newest: dict[str, int | None]) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """Which candles open after their instrument's ``newest`` stored open time (all, where None)."""
        known = [newest.get(n) for n in self.names]
        floor = np.array([_NO_KEY if t is None else t for t in known], dtype=np.int64)
        result: np.ndarray[Any, np.dtype[np.bool_]] = self.values["open_time"] > floor[self.codes]
        return result

    async def copy_data(self, which: np.ndarray[Any, np.dtype[np.bool_]] | None = None) -> AsyncIterator[bytes]:
        """The candles (those ``which`` selects) as binary COPY data for the columns :data:`COLS`, for
        asyncpg's ``copy_to_table(source=...)``: rows of one instrument length at a time, laid out by numpy."""
        codes, values = (self.codes, self.values) if which is None else (self.codes[which], self.values[which])
        encoded = [n.encode() for n in self.names]
        sizes = np.array([len(b) for b in encoded], dtype=np.int64)[codes]
        yield _HEADER
        for size in np.unique(sizes).tolist():
            picked = sizes == size
            out = np.empty(int(picked.sum()), dtype=_copy_in_row(size))
            out["nfields"] = len(COLS)
            out["len_instrument"] = size
            out["instrument"] = np.array([b if len(b) == size else b"" for b in encoded], dtype=f"S{size}")[
                codes[picked]
            ]
            for i, c in enumerate(CANDLE_COLS):
                out[f"len{i}"] = _COPY_LENGTHS[i]
                out[c] = values[c][picked]
            yield out.tobytes()
        yield _TRAILER


def sql_literal(text: str) -> str:
    """``text`` as an SQL string literal, for the one statement that takes no parameters (COPY). An
    E'' literal reads backslashes the same way whatever standard_conforming_strings says."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class CopyReader:
    """Candles out of a binary ``COPY (SELECT <Candle's fields>) TO STDOUT`` stream, decoded while it
    arrives (the server needs ~20 ms to send 43,200 rows; decoding them as they come instead of after
    saves most of the ~10 ms that numpy and Candle construction take). Rows go through numpy, so no
    per-row Python object other than the Candle itself is made.

    The chunks asyncpg hands over are kept as they come and joined once per batch; the rows of a batch
    are read in place (``np.frombuffer`` at an offset), and their layout (field count, each field's
    length) is checked with one comparison of those bytes against the expected ones, so a batch costs a
    few numpy calls besides one ``tolist`` per field.

    With ``records``, the candles are kept as :data:`~deltafeed.store.columns.CANDLE_RECORD` arrays
    instead (:meth:`records`), for readers that pass them on without a Candle each (exports).

    With ``keyed``, each row starts with one more column, a bigint (:data:`KEYED_COPY_ROW`): reads of many
    series say with it which series and what a candle is, and :attr:`keys` has it for every candle.

    Raises ValueError when the data is not laid out as expected (a column type changed without this
    reader being updated) rather than returning garbage.
    """

    #: Decode once this much has arrived (asyncpg hands over what one socket read brought, often less).
    BATCH_BYTES = 128 * 1024

    def __init__(self, keyed: bool = False, *, records: bool = False) -> None:
        self.candles: list[Candle] = []
        self.keys: list[int] = []
        self._keyed = keyed
        self._records = records
        self._parts: list[Records] = []
        self._row = KEYED_COPY_ROW if keyed else COPY_ROW
        self._at, self._want = _layout_bytes(keyed)
        self._chunks: list[bytes] = []
        self._size = 0
        self._header_done = False

    async def feed(self, chunk: bytes) -> None:
        """The sink given to asyncpg's ``copy_from_query``."""
        self._chunks.append(chunk)
        self._size += len(chunk)
        if self._size >= self.BATCH_BYTES:
            self._decode()

    def finish(self) -> list[Candle]:
        """Decode what is left, check the trailer, and return every candle in stream order (none
        with ``records``: see :meth:`records`)."""
        self._decode()
        if not self._header_done or b"".join(self._chunks) != _TRAILER:
            raise ValueError("binary COPY data without its header or trailer, or with a partial row")
        return self.candles

    def records(self) -> Records:
        """With ``records``, every candle in stream order as one array, after :meth:`finish`."""
        if len(self._parts) != 1:
            self._parts = [np.concatenate(self._parts) if self._parts else np.empty(0, dtype=CANDLE_RECORD)]
        return self._parts[0]

    def _decode(self) -> None:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        start = 0
        if not self._header_done:
            if len(data) < 19:
                self._keep(data, 0)
                return
            if not data.startswith(COPY_SIGNATURE):
                raise ValueError("binary COPY data without its header")
            start = 19 + int.from_bytes(data[15:19], "big")  # signature, flags, header extension length
            if len(data) < start:
                self._keep(data, 0)
                return
            self._header_done = True
        size = self._row.itemsize
        n = (len(data) - start) // size  # a partial row or the 2-byte trailer stays for later
        if n:
            raw = np.frombuffer(data, dtype=np.uint8, count=n * size, offset=start).reshape(n, size)
            if not (raw[:, self._at] == self._want).all():
                raise ValueError("binary COPY rows do not have Candle's column types")
            rows = np.frombuffer(data, dtype=self._row, count=n, offset=start)
            if self._keyed:
                self.keys.extend(rows["key"].tolist())
            if self._records:
                out = np.empty(n, dtype=CANDLE_RECORD)
                for c in CANDLE_COLS:
                    out[c] = rows[c]
                self._parts.append(out)
            else:
                self.candles.extend(to_candles(rows))
        self._keep(data, start + n * size)

    def _keep(self, data: bytes, done: int) -> None:
        """Keep what follows ``done`` in ``data`` for the next batch."""
        rest = data[done:]
        self._chunks = [rest] if rest else []
        self._size = len(rest)


@lru_cache(maxsize=2)
def _layout_bytes(keyed: bool) -> tuple[np.ndarray[Any, np.dtype[np.intp]], np.ndarray[Any, np.dtype[np.uint8]]]:
    """Where in a row of :data:`COPY_ROW` (:data:`KEYED_COPY_ROW` with ``keyed``) the field count and each
    field's length are, byte by byte, and the bytes they must hold."""
    row = KEYED_COPY_ROW if keyed else COPY_ROW
    template = np.zeros(1, dtype=row)
    names = [str(field[0]) for field in row.descr if str(field[0]).startswith("len")]
    template["nfields"] = len(names)
    for name, length in zip(names, (8,) * keyed + _COPY_LENGTHS, strict=True):
        template[name] = length
    at = [
        offset + k
        for name in ("nfields", *names)
        for offset in [row.fields[name][1]]  # type: ignore[index]
        for k in range(row[name].itemsize)
    ]
    where = np.array(at, dtype=np.intp)
    return where, template.view(np.uint8)[where]
