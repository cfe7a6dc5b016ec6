"""The optional parts of deltafeed and the extras that install them: the base install keeps candles
in DuckDB, and whatever needs more says in one line which extra to add, rather than a traceback."""

from __future__ import annotations

import importlib
from types import ModuleType

from deltafeed.model import BadInput

__all__ = ["require"]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (e.g. "--hot redis://..."); :class:`BadInput` naming the
    extra when it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module).partition(".")[0]  # the package to install: redis, not redis.asyncio
        raise BadInput(
            f"{what} needs {missing}, which is not installed; install the {extra} extra:"
            f" pip install 'deltafeed[{extra}]'"
        ) from None
