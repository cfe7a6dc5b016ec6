"""A WebSocket client connection that hands every text frame to a callback and keeps itself alive."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Mapping

import picows

from deltafeed.clock import LIVE, Clock
from deltafeed.net.http import TRUST_HINT
from deltafeed.net.reconnect import Backoff, ConnectBudget, Watchdog

log = logging.getLogger("deltafeed.ws")

FrameSink = Callable[[bytes | memoryview], None]

# The message types, read once: an enum member looked up through its class costs more than the rest
# of a frame's way to the sink.
_TEXT = picows.WSMsgType.TEXT
_BINARY = picows.WSMsgType.BINARY
_CONTINUATION = picows.WSMsgType.CONTINUATION
_CLOSE = picows.WSMsgType.CLOSE


class _Listener(picows.WSListener):
    """picows calls this for every frame; text payloads go straight to the sink (as bytes). Binary
    messages go to the owner's binary sink when it has one (else they are ignored, but for a whole
    one holding a JSON object, which goes to the text sink: see below).

    A whole text frame, nearly every frame of market data, takes the shortest way: the instance's
    own ``on_ws_frame`` (a closure over the owner and its sink, made once per connection) hands its
    payload on; anything else goes to :meth:`_other_frame`. picows finds the instance attribute as
    it would an overriding method, and a plain function costs it less to call than a bound method;
    the closure's variables cost less to read than attributes.
    """

    def __init__(self, owner: WsStream) -> None:
        self._owner = owner
        self._parts: list[bytes] = []
        self._binary = False  # the type of the fragmented message in ``_parts``
        self.on_ws_frame = self._text_first(owner, self._parts, self._other_frame)  # type: ignore[method-assign,assignment]

    @staticmethod
    def _text_first(
        owner: WsStream, parts: list[bytes], other: Callable[[picows.WSTransport, picows.WSFrame], None]
    ) -> Callable[[picows.WSTransport, picows.WSFrame], None]:
        sink, text = owner.on_frame, _TEXT
        sniff = owner.on_binary is None  # else a binary frame's first byte could be "{" too

        def on_ws_frame(transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.fin and not parts:
                # A copy, not a view: a view costs more to make than copying a market-data frame,
                # and decoders read bytes faster (~4% fewer instructions a trade in
                # bench/trade_path.py).
                payload = frame.get_payload_as_bytes()
                # A JSON object is taken as text without asking picows the frame's type, which costs
                # more than the rest of this function (it makes an enum member): no other frame
                # starts so (a close frame's payload starts with its code, the pongs to our pings
                # are empty), and where there is no binary sink, JSON in a binary frame is read as
                # text rather than dropped. Anything else is asked.
                if (sniff and payload and payload[0] == 123) or frame.msg_type is text:  # 123: "{"
                    owner.frames += 1
                    sink(payload)
                    return
            other(transport, frame)

        return on_ws_frame

    def on_ws_connected(self, transport: picows.WSTransport) -> None:
        self._owner._on_connected(transport)

    def _other_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
        """Every frame but a whole text one: binary, fragments, close."""
        mt = frame.msg_type
        if mt is _BINARY and frame.fin and not self._parts:
            if self._owner.on_binary is not None:
                self._owner.frames += 1
                self._owner.on_binary(frame.get_payload_as_memoryview())
        elif mt is _TEXT or mt is _BINARY or mt is _CONTINUATION:
            # A fragmented message: rare for market data, so reassemble the simple way.
            if mt is not _CONTINUATION:
                self._parts.clear()
                self._binary = mt is _BINARY
            self._parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                sink = self._owner.on_binary if self._binary else self._owner.on_frame
                if sink is not None:
                    self._owner.frames += 1
                    sink(b"".join(self._parts))
                self._parts.clear()
        elif mt is _CLOSE:
            self._owner.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: picows.WSTransport) -> None:
        self._owner._on_disconnected()


class WsStream:
    """Keeps one WebSocket connection to ``url()`` open and feeds its text frames to ``on_frame`` (and
    its binary ones to ``on_binary``, when given: venues that can speak msgpack or another binary
    encoding; ``headers`` are sent with the handshake, e.g. the ``Content-Type`` that asks for it).

    Keeping alive:
    - the server's pings are answered by picows; when the line is idle we ping too, and a missing
      pong drops the connection;
    - a data watchdog drops a connection that delivered no frame for ``stale_after_s`` (a
      half-open TCP connection or a stalled server is noticed in seconds, not minutes);
    - after a drop it reconnects by the :class:`~deltafeed.net.reconnect.Backoff` policy
      (exponential, full jitter, capped at ``backoff_cap_s``, starting over once a connection
      stayed up ``stable_after_s``); ``rng`` seeds its jitter and ``clock`` does its waiting;
    - every attempt goes through the venue's :class:`~deltafeed.net.reconnect.ConnectBudget`;
    - ``on_connect`` runs on every (re)connection, so the owner can resubscribe and check for gaps.
    """

    def __init__(
        self,
        url: Callable[[], str],
        on_frame: FrameSink,
        on_connect: Callable[[WsStream], None] | None = None,
        name: str = "ws",
        stale_after_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        stable_after_s: float = 30.0,
        budget: ConnectBudget | None = None,
        *,
        on_binary: FrameSink | None = None,
        headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self.on_frame = on_frame
        self.on_binary = on_binary
        self.headers = dict(headers) if headers else None
        self.on_connect = on_connect
        self.name = name
        self.stale_after_s = stale_after_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_after_s = stable_after_s
        self.budget = budget or ConnectBudget(300, 300.0)
        self.clock: Clock = clock or LIVE
        self.backoff = Backoff(backoff_base_s, backoff_cap_s, stable_after_s, rng=rng, clock=self.clock)
        self.frames = 0
        self.connects = 0
        self.attempts = 0
        self.stale_drops = 0
        self.close_code: object = None
        #: The next reconnect waits at least this long (then it is cleared): an owner sets it when
        #: the venue refused the session in a way an immediate retry cannot fix (a second connection
        #: of one account, a refused key), so the venue is not hammered. The owner has logged why and
        #: how long, so that drop and reconnect are logged at debug level only: one line per refusal.
        self.retry_after_s = 0.0
        self.connected_at = 0.0  # monotonic time of the current connection, 0 when down
        self.connected = asyncio.Event()
        self._transport: picows.WSTransport | None = None
        self._stopping = False
        self._disconnected = asyncio.Event()

    def _on_connected(self, transport: picows.WSTransport) -> None:
        self._transport = transport
        self.connects += 1
        self.connected_at = self.clock.monotonic()
        self._disconnected.clear()
        self.connected.set()
        if self.on_connect is not None:
            self.on_connect(self)

    def _on_disconnected(self) -> None:
        self._transport = None
        self.connected_at = 0.0
        self.connected.clear()
        self._disconnected.set()

    def send(self, text: bytes) -> None:
        if self._transport is not None:
            self._transport.send(picows.WSMsgType.TEXT, text)

    def send_binary(self, payload: bytes) -> None:
        if self._transport is not None:
            self._transport.send(picows.WSMsgType.BINARY, payload)

    def drop(self, why: str) -> None:
        """Abandon the current connection (no close handshake); :meth:`run` reconnects."""
        t = self._transport
        if t is not None:
            level = logging.DEBUG if self.retry_after_s else logging.WARNING
            log.log(level, "%s: dropping the connection: %s", self.name, why)
            t.disconnect()

    def _stale(self, quiet_s: float) -> None:
        self.stale_drops += 1
        self.drop(f"no data for {quiet_s:.1f} s")

    async def run(self) -> None:
        """Connect, and reconnect after every drop, until :meth:`close`."""
        backoff = self.backoff
        dog = Watchdog(
            self.stale_after_s, lambda: self.frames, lambda: self._transport is not None, self._stale, self.clock
        )
        watchdog = asyncio.create_task(dog.run())
        try:
            while not self._stopping:
                await self.budget.acquire()
                if self._stopping:
                    break
                url = self.url()
                self.attempts += 1
                try:
                    await picows.ws_connect(
                        lambda: _Listener(self),
                        url,
                        websocket_handshake_timeout=10,
                        enable_auto_ping=True,
                        auto_ping_idle_timeout=self.stale_after_s / 2,
                        auto_ping_reply_timeout=self.stale_after_s / 2,
                        extra_headers=self.headers,
                    )
                except (TimeoutError, OSError, picows.WSError) as exc:
                    delay = backoff.failed()
                    if isinstance(exc, ssl.SSLCertVerificationError):
                        log.error("%s: %s presents an untrusted certificate (%s); %s", self.name, url, exc, TRUST_HINT)
                    else:
                        log.warning("%s: cannot connect to %s (%s); retrying in %.1f s", self.name, url, exc, delay)
                    await backoff.sleep(delay)
                    continue
                backoff.connected()
                await self._disconnected.wait()
                if self._stopping:
                    break
                level = logging.DEBUG if self.retry_after_s else logging.WARNING
                delay = backoff.dropped(self.retry_after_s)
                self.retry_after_s = 0.0
                log.log(
                    level, "%s: connection closed (code %s); reconnecting in %.2f s", self.name, self.close_code, delay
                )
                await backoff.sleep(delay)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def close(self) -> None:
        self._stopping = True
        t = self._transport
        if t is not None:
            t.send_close(picows.WSCloseCode.OK)
            t.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._disconnected.wait(), 1.0)
