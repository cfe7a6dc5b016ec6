"""Which cold tier a ``--db`` value names, and opening it: a registry of URL schemes, with a DuckDB file
(or ``:memory:``) for anything that is not a URL.

A tier joins with :func:`register_scheme`; PostgreSQL (``postgresql://``, also spelled ``postgres://``)
is registered below. Openers import their implementation when called, so a DuckDB user never loads the
PostgreSQL driver and :mod:`deltafeed.store.base` names no implementation at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Protocol

from deltafeed.model import BadInput
from deltafeed.store.base import ColdTier, missing_dir, read_only_fs, redact


class Opener(Protocol):
    """Opens the tier ``target`` names. ``read_only`` matters to file tiers, ``schema`` to server
    tiers; each ignores what it has no use for."""

    def __call__(
        self, target: str, retention: dict[str, int | None] | None, *, read_only: bool, schema: str
    ) -> Awaitable[ColdTier]: ...


@dataclass(frozen=True)
class Scheme:
    """A registered kind of ``--db`` URL."""

    #: Lower-case prefixes, e.g. ``("postgresql://", "postgres://")``; the first is the canonical
    #: spelling that :func:`check_db` rewrites the others to.
    prefixes: tuple[str, ...]
    opener: Opener

    @property
    def kind(self) -> str:
        """The canonical scheme name, e.g. ``postgresql``."""
        return self.prefixes[0].removesuffix("://")


#: scheme name (lower case, without ``://``) -> its registration.
_SCHEMES: dict[str, Scheme] = {}

#: A ``--db`` value that starts like this is a URL; anything else (``C:\\x.duckdb``, ``a:b``) is a file
#: path. One-letter schemes are left to paths: ``c://x`` is a drive letter, not a protocol.
_URL_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")

#: What :func:`store_kind` says of a target that is not a URL.
DUCKDB = "duckdb"


def register_scheme(prefixes: Iterable[str], opener: Opener) -> Scheme:
    """Let ``--db`` values starting with any of ``prefixes`` (e.g. ``"postgresql://"``; matched without
    regard to case, the first is canonical) open through ``opener``. Registering a prefix again
    replaces its opener."""
    names = tuple(p.lower() for p in prefixes)
    if not names or not all(_URL_RE.fullmatch(p) for p in names):
        raise ValueError(f"scheme prefixes must look like 'name://', got {names!r}")
    scheme = Scheme(names, opener)
    for p in names:
        _SCHEMES[p.removesuffix("://")] = scheme
    return scheme


def db_scheme(target: str) -> str | None:
    """The URL scheme of a ``--db`` value (lower case), or None for a file path."""
    m = _URL_RE.match(target)
    return m.group(1).lower() if m else None


def scheme_of(target: str) -> Scheme | None:
    """The registration a ``--db`` URL names; None for a file path or a scheme nobody registered."""
    name = db_scheme(target)
    return None if name is None else _SCHEMES.get(name)


def store_kind(target: str) -> str:
    """``duckdb`` for a file path, else the canonical name of the URL's scheme (registered or not)."""
    scheme = scheme_of(target)
    if scheme is not None:
        return scheme.kind
    return db_scheme(target) or DUCKDB


def is_postgres(target: str) -> bool:
    """Whether a ``--db`` value names a PostgreSQL server rather than a DuckDB file."""
    return store_kind(target) == "postgresql"


def check_db(target: str, *, write: bool = True) -> str:
    """Check a ``--db`` value before anything is opened or created, raising :class:`BadInput` (one line
    naming the fix) for a URL of an unsupported kind or a file whose directory is missing; returns the
    target, a URL in its scheme's canonical spelling (``postgres://`` becomes ``postgresql://``).
    ``write``: the file may be created, so its directory must also be writable."""
    if not target.strip():
        raise BadInput("--db is empty; pass a DuckDB file path (e.g. deltafeed.duckdb) or a postgresql:// URL")
    name = db_scheme(target)
    if name is not None:
        scheme = _SCHEMES.get(name)
        if scheme is None:
            raise BadInput(
                f"--db {redact(target)}: {name}:// databases are not supported; pass a DuckDB file path"
                " (e.g. deltafeed.duckdb) or a postgresql://USER@HOST:PORT/DB URL"
            )
        return scheme.prefixes[0] + target[len(name) + 3 :]
    return _check_file(target, write=write)


def _check_file(target: str, *, write: bool) -> str:
    """The checks of a DuckDB file path (see :func:`check_db`)."""
    if target == ":memory:":
        return target
    if "\\" in target and os.sep == "/":
        # DuckDB takes a backslash for a separator everywhere: the file it opened would not be this path.
        raise BadInput(
            f"--db {target}: write the path with / instead of \\ (DuckDB reads a backslash as a"
            " directory separator, this system does not)"
        )
    missing = missing_dir(target)
    if missing is not None:
        problem, create = missing
        if not write:
            raise BadInput(f"no candle database at {target}: {problem}; pass --db with the file `deltafeed run` writes")
        fix = (
            f"{create} or pass --db with a path in an existing directory"
            if create
            else "pass --db with a path in a directory"
        )
        raise BadInput(f"--db {target}: {problem}; {fix}")
    if os.path.isdir(target):
        raise BadInput(
            f"--db {target} is a directory; pass a file path such as {os.path.join(target, 'deltafeed.duckdb')}"
        )
    if write:
        # Checked here, before the spool beside the database would fail for the same reason.
        parent = os.path.dirname(os.path.abspath(target))
        if not os.path.exists(target) and not os.access(parent, os.W_OK):
            why = "a read-only file system" if read_only_fs(parent) else "permission denied"
            raise BadInput(
                f"--db {target}: cannot create the database in {parent} ({why}); pass --db with a path"
                " in a writable directory"
            )
        if os.path.exists(target) and not os.access(target, os.W_OK):
            why = "a read-only file system" if read_only_fs(target) else "permission denied"
            raise BadInput(
                f"--db {target}: cannot write the database ({why}); pass --db with a writable file, or"
                " read it with `deltafeed candles`"
            )
    return target


async def open_cold(
    target: str, retention: dict[str, int | None] | None = None, *, read_only: bool = False, schema: str = "deltafeed"
) -> ColdTier:
    """The cold tier ``target`` names: a registered URL (a ``postgresql://`` URL keeps its tables in
    ``schema``) or a DuckDB file path (``read_only`` opens an existing file for reading while a run
    may write it).

    Raises :class:`BadInput` (one line naming the fix) when it cannot be opened; an unsupported URL
    or a missing directory is refused before anything is created.
    """
    target = check_db(target, write=not read_only)
    scheme = scheme_of(target)
    opener = _open_duckdb if scheme is None else scheme.opener
    return await opener(target, retention, read_only=read_only, schema=schema)


async def _open_duckdb(
    target: str, retention: dict[str, int | None] | None, *, read_only: bool, schema: str
) -> ColdTier:
    from deltafeed.store.cold import DuckDBTier

    return await DuckDBTier.open(target, retention, read_only=read_only)


async def _open_postgres(
    target: str, retention: dict[str, int | None] | None, *, read_only: bool, schema: str
) -> ColdTier:
    from deltafeed.extras import require

    postgres = require("deltafeed.store.postgres", "postgres", "--db postgresql://... (the PostgreSQL cold tier)")
    store: ColdTier = await postgres.PostgresStore.open(target, retention, schema=schema)
    return store


register_scheme(("postgresql://", "postgres://"), _open_postgres)
