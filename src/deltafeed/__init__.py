"""deltafeed: complete local candle history for many instruments, served live to consumers.

``from deltafeed import Client`` gives the Python client (:mod:`deltafeed.client`), ``SyncClient``
its blocking twin (:mod:`deltafeed.sync_client`) and ``RealtimeMarketData`` one symbol's live view
(:mod:`deltafeed.realtime`); each is imported on first use, so ``import deltafeed`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deltafeed.client import Client
    from deltafeed.realtime import RealtimeMarketData
    from deltafeed.sync_client import SyncClient

__all__ = ["Client", "RealtimeMarketData", "SyncClient"]

_LAZY = {
    "Client": "deltafeed.client",
    "SyncClient": "deltafeed.sync_client",
    "RealtimeMarketData": "deltafeed.realtime",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deltafeed' has no attribute {name!r}")
