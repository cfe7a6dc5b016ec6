"""The replicas' tape: a CSV file of every trade or quote a replica's market released, as served.

Every trade venue's tape starts with the columns :data:`TRADE_COLUMNS` (``symbol,trade_id,time_ms,
price,qty``) and every quote venue's with :data:`QUOTE_COLUMNS` (``symbol,time_ms,bid,ask``); a venue
may add columns after those (Binance: ``is_buyer_maker``). Prices and quantities are written as the
replica sends them, so a test can compare what it stored with the tape text for text. Rows are
flushed after each write, so a test can read the tape while the replica runs.

Writes and :meth:`TapeWriter.close` hold a lock: the Dukascopy replica writes from its worker thread
while :meth:`close` runs on the event loop, and a write after close is a no-op.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

#: The leading columns of every trade venue's tape.
TRADE_COLUMNS: tuple[str, ...] = ("symbol", "trade_id", "time_ms", "price", "qty")
#: The leading columns of every quote venue's tape.
QUOTE_COLUMNS: tuple[str, ...] = ("symbol", "time_ms", "bid", "ask")


class TapeWriter:
    """A CSV tape with header ``columns``; :meth:`write` takes one symbol's rows as parallel columns of text.

    Values are trusted to need no CSV quoting (symbols, integers and decimal numbers only).
    """

    def __init__(self, path: str | Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = tuple(columns)
        self._lock = threading.Lock()
        self._f: IO[str] | None = open(self.path, "w", encoding="ascii", newline="")  # noqa: SIM115
        self._f.write(",".join(self.columns) + "\n")
        self._f.flush()
        #: Rows written so far.
        self.rows = 0

    @classmethod
    def trades(cls, path: str | Path, extra: Sequence[str] = ()) -> TapeWriter:
        """A trade tape: :data:`TRADE_COLUMNS`, then ``extra``."""
        return cls(path, (*TRADE_COLUMNS, *extra))

    @classmethod
    def quotes(cls, path: str | Path) -> TapeWriter:
        """A quote tape: :data:`QUOTE_COLUMNS`."""
        return cls(path, QUOTE_COLUMNS)

    @property
    def closed(self) -> bool:
        return self._f is None

    def write(self, symbol: str, *columns: Iterable[object]) -> None:
        """Rows ``symbol,c1,c2,...`` from the parallel ``columns`` (one per tape column after ``symbol``)."""
        if len(columns) != len(self.columns) - 1:
            raise ValueError(f"tape {self.path} has {len(self.columns)} columns, got {len(columns) + 1}")
        text = "".join([f"{symbol},{','.join(map(str, row))}\n" for row in zip(*columns, strict=True)])
        self.write_text(text, text.count("\n"))

    def write_text(self, text: str, rows: int) -> None:
        """Append ``rows`` ready CSV lines and flush (a writer that builds its own lines, for speed)."""
        with self._lock:
            if self._f is None or not text:
                return
            self._f.write(text)
            self._f.flush()
            self.rows += rows

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
