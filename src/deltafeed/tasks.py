"""Ending background tasks for sure: a cancellation can be lost inside a library call (Python 3.11's
``asyncio.wait_for`` drops one when its future completes at the same moment, and nats-py's requests
use it), after which a retry loop would run on and a ``gather`` on it would wait for ever."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Task[Any] | None, every_s: float = 1.0) -> None:
    """Cancel ``tasks`` (None skipped) and wait until every one has ended, cancelling again each
    ``every_s`` seconds any that lost its cancellation."""
    left = {t for t in tasks if t is not None}
    while left:
        for t in left:
            t.cancel()
        _, pending = await asyncio.wait(left, timeout=every_s)
        left = set(pending)
