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


async def test_frames_reach_the_right_sink_whatever_their_type_and_first_byte() -> None:
    """The listener's shortcut (a payload starting with ``{`` is taken as text without asking the
    frame's type) routes nothing wrongly: text of any first byte, binary (msgpack, and bytes that
    look like JSON), a message in fragments and a close frame each reach what they should, in order."""
    import picows

    msgpack_frame = bytes([0x91, 0x81, 0xA1, 0x54, 0x01])  # [{"T": 1}] in msgpack
    T, B, C = picows.WSMsgType.TEXT, picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION
    script = [
        (T, b'{"a":1}', True), (T, b'[{"b":2}]', True), (B, msgpack_frame, True), (B, b'{"bin":3}', True),
        (T, b'{"frag', False), (C, b'ment":', False), (C, b"4}", True),  # one message in three frames
        (T, b" {}", True), (T, b"x", True),
    ]  # fmt: skip

    connections: list[int] = []

    class Server(picows.WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            connections.append(1)
            for kind, payload, fin in script if len(connections) == 1 else []:  # a reconnect gets nothing
                transport.send(kind, payload, fin)
            transport.send_close(picows.WSCloseCode(4001))

    server = await picows.ws_create_server(lambda _request: Server(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    texts: list[bytes] = []
    binaries: list[bytes] = []
    stream = WsStream(
        lambda: f"ws://127.0.0.1:{port}/ws",
        lambda f: texts.append(bytes(f)),
        on_binary=lambda f: binaries.append(bytes(f)),
        backoff_base_s=0.05,
    )
    task = asyncio.create_task(stream.run())
    try:
        deadline = time.monotonic() + 10
        while stream.close_code is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    finally:
        await stream.close()
        await task
        server.close()
    assert texts == [b'{"a":1}', b'[{"b":2}]', b'{"fragment":4}', b" {}", b"x"]
    assert binaries == [msgpack_frame, b'{"bin":3}']
    assert stream.close_code == 4001
    assert stream.frames == 7
