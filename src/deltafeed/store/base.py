"""What every cold tier offers the engine (an async interface), the errors tiers raise, and the
helpers tiers share.

Which tier a ``--db`` target names, and opening it, is :mod:`deltafeed.store.open`'s business.
Every write is an idempotent upsert keyed by (instrument, timeframe, open_time), so a batch written
twice (a replayed spool, a retry after a timeout) leaves the store as after the first time.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import msgspec

from deltafeed.model import BadInput, Candle, Switch, Timeframe

Row = tuple[str, str, Candle]
"""One candle to store: (instrument, timeframe, candle)."""


@dataclass(slots=True)
class StartupRead:
    """What start-up reads of one series: its newest candles (oldest first, to warm the hot tier)
    and its newest closed candle (where the history fetch resumes). A tier that can read these for
    many series at once has ``recent_many(timeframe, instruments, last) -> dict[str, StartupRead]``."""

    recent: list[Candle]
    last_closed: Candle | None


class StoreError(Exception):
    """A store operation failed (file locked, server down, disk full). Nothing was half-written: the
    caller keeps its batch (or spools it) and retries later."""


class StoreBusy(StoreError, BadInput):
    """Another process kept the database locked for longer than we were willing to wait."""


class StoreUnavailable(StoreError):
    """The store cannot be reached at all (server down, connection refused or lost)."""


class ColdTier(Protocol):
    """All history, kept per timeframe for as long as ``retention`` says.

    Implementations are used from one event loop. A method that fails raises :class:`StoreError`
    (or a subclass); any other exception is a bug.
    """

    #: Where the data lives, safe to log and show (never a password).
    name: str
    #: timeframe -> age limit in ms (None keeps forever).
    retention: dict[str, int | None]

    async def write(self, rows: Sequence[Row]) -> None:
        """Upsert a batch atomically; a key repeated inside the batch keeps its last occurrence."""
        ...

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
        final candles (``last`` then means the newest ``last`` final ones)."""
        ...

    async def provisional(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[tuple[int, int]]:
        """Runs of provisional candles (closed but not final) with ``since_ms <= open_time <=
        until_ms``: (first open_time, last open_time) of each run of consecutive stored candles that
        are all provisional (a final or forming candle ends a run; a hole does not), in order."""
        ...

    async def last_closed(self, instrument: str, timeframe: str) -> Candle | None:
        """The newest candle marked closed."""
        ...

    async def find_gaps(
        self, instrument: str, timeframe: str, tf_ms: int | Timeframe, since_ms: int, until_ms: int
    ) -> list[tuple[int, int]]:
        """(first, last) open times of holes between stored candles in [since, until], and of
        candles still open although a later one exists; merged and in order."""
        ...

    async def final_marks(self) -> dict[tuple[str, str], int]:
        """Per (instrument, timeframe), the open time before which every stored candle is final."""
        ...

    async def set_final_marks(self, marks: dict[tuple[str, str], int]) -> None:
        """Record final marks (the caller has written the candles they vouch for)."""
        ...

    async def record_switches(self, switches: Sequence[Switch]) -> None:
        """Keep failover switches (idempotent: one per instrument and ``since_ms``)."""
        ...

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """The switches of ``instrument`` with ``since_ms <= switch.since_ms <= until_ms``, oldest first."""
        ...

    async def apply_retention(self, now_ms: int) -> int:
        """Delete every candle older than its timeframe's retention before ``now_ms`` (the venue's
        clock); returns how many were deleted."""
        ...

    async def instruments(self) -> list[tuple[str, str, int]]:
        """(instrument, timeframe, candle count) of every stored series, sorted."""
        ...

    async def close(self) -> None:
        """Release connections and files; safe to call twice."""
        ...


class Unopened:
    """The cold tier of an engine that has not started yet: every call says so."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.retention: dict[str, int | None] = {}

    def _fail(self) -> StoreUnavailable:
        return StoreUnavailable(f"the cold store {self.name} is not open yet (the engine has not started)")

    async def write(self, rows: Sequence[Row]) -> None:
        raise self._fail()

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
        raise self._fail()

    async def provisional(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[tuple[int, int]]:
        raise self._fail()

    async def last_closed(self, instrument: str, timeframe: str) -> Candle | None:
        raise self._fail()

    async def find_gaps(
        self, instrument: str, timeframe: str, tf_ms: int | Timeframe, since_ms: int, until_ms: int
    ) -> list[tuple[int, int]]:
        raise self._fail()

    async def final_marks(self) -> dict[tuple[str, str], int]:
        raise self._fail()

    async def set_final_marks(self, marks: dict[tuple[str, str], int]) -> None:
        raise self._fail()

    async def record_switches(self, switches: Sequence[Switch]) -> None:
        raise self._fail()

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        raise self._fail()

    async def apply_retention(self, now_ms: int) -> int:
        raise self._fail()

    async def instruments(self) -> list[tuple[str, str, int]]:
        raise self._fail()

    async def close(self) -> None:
        return None


def grid_of(tf: int | Timeframe) -> Timeframe:
    """A timeframe given as a :class:`Timeframe` or as a fixed length in ms (epoch aligned)."""
    return tf if isinstance(tf, Timeframe) else Timeframe(f"{tf}ms", tf)


def gaps_from_rows(rows: Iterable[Sequence[Any]], tf: int | Timeframe) -> list[tuple[int, int]]:
    """Turn the rows of a tier's gap query, (open_time, closed, previous open_time, next open_time)
    for every candle after a hole (any step longer than the timeframe's shortest candle) or still
    open before a later one, into merged (first, last) stretches of open times to fetch again."""
    grid = grid_of(tf)
    gaps: list[tuple[int, int]] = []
    for open_time, closed, prev, nxt in rows:
        if prev is not None and open_time > grid.next(prev):
            gaps.append((grid.next(prev), grid.prev(open_time)))
        if not closed and nxt is not None:
            gaps.append((open_time, open_time))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(gaps):
        if merged and a <= grid.next(merged[-1][1]):
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def missing_dir(path: str) -> tuple[str, str] | None:
    """Whether the directory that is to hold the file ``path`` is missing (or not a directory): then
    (the problem, naming the directory; the fix, as "create it first (mkdir -p DIR)" or "" when
    creating it would not help), else None. Creates nothing."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(parent).st_mode
    except FileNotFoundError:
        return f"the directory {parent} does not exist", f"create it first (mkdir -p {parent})"
    except OSError as e:
        return f"the directory {parent} cannot be used ({e.strerror or e})", ""
    if not stat.S_ISDIR(mode):
        return f"{parent} is not a directory", ""
    return None


def read_only_fs(path: str) -> bool:
    """Whether ``path`` lies on a file system mounted read-only (False when that cannot be told)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def redact(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` parameter) replaced by
    ``***``, for logs, status and errors."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)(^|&)(password|pass|pwd)=[^&]*", r"\1\2=***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# Opening a tier by its ``--db`` value lives in deltafeed.store.open (a registry of URL schemes, so this
# module names no implementation); these names are re-exported for the callers that have always
# imported them from here. Looked up on first use: store.open imports this module.
_FROM_OPEN = ("check_db", "db_scheme", "is_postgres", "open_cold")

if TYPE_CHECKING:
    from deltafeed.store.open import check_db as check_db
    from deltafeed.store.open import db_scheme as db_scheme
    from deltafeed.store.open import is_postgres as is_postgres
    from deltafeed.store.open import open_cold as open_cold
else:

    def __getattr__(name: str) -> Any:
        if name in _FROM_OPEN:
            from deltafeed.store import open as opening

            return getattr(opening, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class BookRow(msgspec.Struct, array_like=True, gc=False):
    """One stored order-book snapshot (``prev`` -1) or delta (see :mod:`deltafeed.books.history`);
    ``bids``/``asks`` are JSON ``[[price, size], ...]``."""

    instrument: str
    time_ms: int
    sequence: int
    prev: int
    in_sync: bool
    book_ms: int
    bids: str
    asks: str
