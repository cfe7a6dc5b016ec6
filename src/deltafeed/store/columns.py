"""Candles as numpy records, one per candle (:data:`CANDLE_RECORD`): how many candles move between a
store and a file without a Python object each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from msgspec.structs import astuple

from deltafeed.model import Candle

#: Candle's fields in order, native byte order.
CANDLE_RECORD = np.dtype(
    [
        ("open_time", np.int64),
        ("open", np.float64),
        ("high", np.float64),
        ("low", np.float64),
        ("close", np.float64),
        ("volume", np.float64),
        ("trades", np.int64),
        ("closed", np.bool_),
        ("final", np.bool_),
    ]
)
if CANDLE_RECORD.names != Candle.__struct_fields__:  # pragma: no cover - a guard for editors
    raise RuntimeError(
        "Candle's fields changed; update CANDLE_RECORD (store/columns.py) and the tables of every cold tier"
        " (with a schema migration)"
    )

Records = np.ndarray[Any, np.dtype[Any]]
"""An array of :data:`CANDLE_RECORD`."""


def to_records(rows: Sequence[Candle]) -> Records:
    """``rows`` as records, in order."""
    return np.array(list(map(astuple, rows)), dtype=CANDLE_RECORD)


def to_candles(records: Records) -> list[Candle]:
    """``records`` (or any structured array with Candle's fields by name, e.g. big-endian COPY rows) as
    Candles, in order. Each field is made native and whole first: ``tolist`` then reads it faster
    (~1 ms less for 43,200 big-endian COPY rows)."""
    return list(map(Candle, *(records[f].astype(CANDLE_RECORD[f]).tolist() for f in Candle.__struct_fields__)))
