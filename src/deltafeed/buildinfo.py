"""What build of deltafeed is running: its version from the installed package's metadata, for
``deltafeed --version``, the ``deltafeed_build_info`` metric and bug reports."""

from __future__ import annotations

import functools
import platform
from importlib import metadata

__all__ = ["python_version", "version"]


@functools.cache
def version() -> str:
    """The installed distribution's version (``0.1.0``); ``unknown`` when deltafeed runs from a
    source tree that was never installed (no metadata to read)."""
    try:
        return metadata.version("deltafeed")
    except metadata.PackageNotFoundError:
        return "unknown"


def python_version() -> str:
    """The interpreter's version (``3.11.9``)."""
    return platform.python_version()
