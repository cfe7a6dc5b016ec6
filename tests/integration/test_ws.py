"""WsStream keeps itself alive: a silent connection is dropped in seconds, attempts stay in budget."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import WsStream
from helpers import serve_app


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[str, list[float]]]:
    """Sends one frame per connection, then neither sends nor reads (so no pong either)."""
    connections: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        connections.append(time.monotonic())
        await ws.send_str('{"hello":1}')
        await asyncio.sleep(3600)  # half-open, as far as the client can tell
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    async with serve_app(app) as url:
        yield url.replace("http://", "ws://", 1) + "/ws", connections


async def test_a_silent_connection_is_dropped_and_replaced_within_seconds(
    silent_server: tuple[str, list[float]],
) -> None:
    url, connections = silent_server
    frames: list[bytes] = []
    stream = WsStream(lambda: url, lambda f: frames.append(bytes(f)), stale_after_s=1.0, backoff_base_s=0.05)
    task = asyncio.create_task(stream.run())
    try:
        deadline = time.monotonic() + 10
        while len(connections) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await stream.close()
        await task
    assert len(connections) >= 3
    gaps = [b - a for a, b in itertools.pairwise(connections)]
    assert all(0.8 <= g <= 3.0 for g in gaps), gaps  # noticed after ~1 s of silence, not minutes
    assert stream.stale_drops >= 2 or stream.connects >= 3
    assert frames.count(b'{"hello":1}') == len(connections)


async def test_connect_budget_spreads_attempts_over_its_window() -> None:
    budget = ConnectBudget(3, 1.0)
    t0 = time.monotonic()
    for _ in range(7):
        await budget.acquire()
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 3.0  # 3 now, 3 after one window, 1 after two
    assert budget.waits >= 2


async def test_an_unreachable_venue_is_retried_with_backoff_not_hammered() -> None:
    stream = WsStream(lambda: "ws://127.0.0.1:9/nothing", lambda f: None, backoff_base_s=0.1, backoff_cap_s=0.4)
    task = asyncio.create_task(stream.run())
    await asyncio.sleep(2.0)
    await stream.close()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Full jitter averages half the capped delay (0.2 s here): about ten attempts, never hundreds.
    assert 3 <= stream.attempts <= 40, stream.attempts
