"""A WebSocket client connection that hands every text frame to a callback and reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable

import picows

log = logging.getLogger("deltafeed.ws")

FrameSink = Callable[[bytes | memoryview], None]


class _Listener(picows.WSListener):
    """picows calls this for every frame; text payloads go straight to the sink, no copy."""

    def __init__(self, owner: WsStream) -> None:
        self._owner = owner
        self._parts: list[bytes] = []

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._owner._on_connected(transport)

    def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        mt = frame.msg_type
        if mt == picows.WSMsgType.TEXT and frame.fin and not self._parts:
            self._owner.frames += 1
            self._owner.on_frame(frame.get_payload_as_memoryview())
        elif mt in (picows.WSMsgType.TEXT, picows.WSMsgType.CONTINUATION):
            # A fragmented message: rare for market data, so reassemble the simple way.
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                self._owner.frames += 1
                self._owner.on_frame(b"".join(self._parts))
                self._parts.clear()
        elif mt == picows.WSMsgType.CLOSE:
            self._owner.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._owner._on_disconnected()


class WsStream:
    """Keeps one WebSocket connection to ``url()`` open and feeds its text frames to ``on_frame``.

    Pings from the server are answered by picows. After a drop it reconnects with exponential
    backoff and full jitter (capped), and calls ``on_connect`` again so the owner can resubscribe
    and check for gaps.
    """

    def __init__(self, url: Callable[[], str], on_frame: FrameSink,
                 on_connect: Callable[[WsStream], None] | None = None, name: str = "ws",
                 backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0) -> None:
        self.url = url
        self.on_frame = on_frame
        self.on_connect = on_connect
        self.name = name
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.frames = 0
        self.connects = 0
        self.close_code: object = None
        self.connected = asyncio.Event()
        self._transport: picows.WSTransport | None = None
        self._stopping = False
        self._disconnected = asyncio.Event()

    def _on_connected(self, transport: picows.WSTransport) -> None:
        self._transport = transport
        self.connects += 1
        self._disconnected.clear()
        self.connected.set()
        if self.on_connect is not None:
            self.on_connect(self)

    def _on_disconnected(self) -> None:
        self._transport = None
        self.connected.clear()
        self._disconnected.set()

    def send(self, text: bytes) -> None:
        if self._transport is not None:
            self._transport.send(picows.WSMsgType.TEXT, text)

    async def run(self) -> None:
        """Connect, and reconnect after every drop, until :meth:`close`."""
        failures = 0
        while not self._stopping:
            url = self.url()
            try:
                await picows.ws_connect(lambda: _Listener(self), url, websocket_handshake_timeout=10)
            except (TimeoutError, OSError, picows.WSError) as exc:
                failures += 1
                delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2**failures))
                log.warning("%s: cannot connect to %s (%s); retrying in %.1f s", self.name, url, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            await self._disconnected.wait()
            if not self._stopping:
                delay = random.uniform(0, self.backoff_base_s)
                log.warning("%s: connection closed (code %s); reconnecting", self.name, self.close_code)
                await asyncio.sleep(delay)

    async def close(self) -> None:
        self._stopping = True
        t = self._transport
        if t is not None:
            t.send_close(picows.WSCloseCode.OK)
            t.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected.wait(), 1.0)
