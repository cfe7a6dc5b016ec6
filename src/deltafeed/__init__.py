"""deltafeed: complete local candle history for many instruments, served live to consumers.

``from deltafeed import Client`` gives the Python client (:mod:`deltafeed.client`); it is imported on
first use, so ``import deltafeed`` itself stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deltafeed.client import Client

__all__ = ["Client"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from deltafeed.client import Client

        return Client
    raise AttributeError(f"module 'deltafeed' has no attribute {name!r}")
