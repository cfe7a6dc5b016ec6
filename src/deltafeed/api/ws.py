"""WebSocket endpoints over the fan-out hub: one instrument, several, or subscribe ops.

- ``/ws/{instrument}``: everything for that instrument: trades, price updates, candles of every
  timeframe.
- ``/ws/multi/{i1},{i2},...``: the same for several instruments.

  Any name of an instrument works (``binance:BTC/USDT``, an alias such as ``ETH-PERP``, a bare
  symbol on the default venue; see :mod:`deltafeed.names`). Messages on these two endpoints carry
  ``symbol``, the name the client used, beside ``instrument``; with ``?compat=seed`` their
  ``timestamp`` is in float seconds rather than integer milliseconds (the shape some consumers
  already read).
- ``/ws``: nothing until the client sends ops (JSON text frames):

  - ``{"op":"subscribe","instrument":"binance:BTCUSDT","timeframe":"1m","snapshot":100}``: a
    ``subscribed`` reply, the last ``snapshot`` candles (0 to 1000, default 0) as candle messages
    oldest first, then live updates of that timeframe, with no gap and no duplicate in between.
    Without ``timeframe``: candles of every timeframe (the snapshot per timeframe) and price updates.
    With ``"final":true``: final candles only: the snapshot is the newest final ones, and live, a
    candle comes each time it is published final (when it becomes final, or is corrected), never
    while forming or provisional; no price updates. Each candle message's ``data`` has ``closed``
    (its interval is over) and ``state`` (``forming``, ``provisional`` or ``final``).
  - ``{"op":"subscribe_trades","instrument":...}``: that instrument's trades.
  - ``{"op":"subscribe_book","instrument":"binance:BTCUSDT","depth":20}``: the instrument's order
    book (one of ``books``) to ``depth`` levels per side (default and most: its ``book_depth``): a
    ``subscribed`` reply, a ``book_snapshot``, then ``book_delta`` messages, each naming the
    ``sequence`` it follows as ``prev``. A new ``book_snapshot`` starts over after a resync of the
    book (``in_sync`` false and no levels while it is out of sync) or when the client was too slow
    for the deltas (see :mod:`deltafeed.api.hub`).
  - ``{"op":"unsubscribe","instrument":...,"timeframe":...}``,
    ``{"op":"unsubscribe_trades","instrument":...}`` and ``{"op":"unsubscribe_book","instrument":...}``
    undo them (``unsubscribed`` reply).

  - ``{"type":"ping"}`` is answered with ``{"type":"pong","timestamp":...}``.

  Ops work on the path endpoints too. A bad op, whatever its bytes, gets
  ``{"type":"error","message":...}`` naming the problem and the fix, is counted (``hub.bad_ops``,
  ``deltafeed_api_bad_ws_ops_total``), and the connection stays open.

Every client also gets a heartbeat every few seconds, and a ping every :data:`PING_EVERY_S`.
Before the upgrade, a malformed instrument name is refused with HTTP 400, an instrument not served
here with 404, and a full server (``max_clients``) with 503, each as ``{"error": "..."}``. An
inbound message over ``max_msg_size`` bytes closes the connection with code 1009. Authentication is
the application's middleware's business, not this module's.

Data frames are written by the hub's sender tasks straight to the transport, pre-framed and in
batches (one write for many messages); that is why compression is off (every client must be able to
take the same bytes). aiohttp still does the handshake, pings, pongs and close frames; they go out
between whole frames, as everything is written from the one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

import msgspec
from aiohttp import WSMsgType, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_protocol import RequestHandler

from deltafeed.api.hub import Client, Hub, HubFull, UnknownInstrument
from deltafeed.api.protocol import ErrorMsg, PongMsg
from deltafeed.model import BadInput
from deltafeed.net.frames import split_text_frames, text_frame

log = logging.getLogger("deltafeed.api.ws")

MAX_MSG_SIZE = 4096  # bytes of one inbound message; ops are tiny
PING_EVERY_S = 20.0  # a client that answers no ping within half of this is dropped
CLOSE_GRACE_S = 5.0  # how long a closed connection may take to flush before its socket is dropped
EXAMPLE = '{"op":"subscribe","instrument":"binance:BTCUSDT","timeframe":"1m","snapshot":100}'
OPS = ("subscribe", "unsubscribe", "subscribe_trades", "unsubscribe_trades", "subscribe_book", "unsubscribe_book")


class _Op(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    instrument: str | None = None
    timeframe: str | None = None
    snapshot: int = 0
    final: bool = False
    depth: int | None = None


_decode_op = msgspec.json.Decoder(_Op).decode


class WsSink:
    """An upgraded aiohttp connection as the hub's :class:`~deltafeed.api.hub.Sink`."""

    __slots__ = ("_grace_s", "_protocol", "_transport", "_writer", "_ws")

    def __init__(
        self,
        ws: web.WebSocketResponse,
        writer: AbstractStreamWriter,
        transport: asyncio.Transport,
        protocol: RequestHandler,
        grace_s: float,
    ) -> None:
        self._ws = ws
        self._writer = writer
        self._transport = transport
        self._protocol = protocol
        self._grace_s = grace_s

    def write(self, data: bytes) -> None:
        if self._ws.closed or self._transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self._transport.write(data)

    @property
    def paused(self) -> bool:
        return self._protocol.writing_paused

    async def drain(self) -> None:
        await self._writer.drain()

    async def close(self, code: int, reason: str) -> None:
        transport = self._transport
        try:
            await asyncio.wait_for(self._ws.close(code=code, message=reason.encode()[:123], drain=False), self._grace_s)
        finally:
            # The close frame sits behind whatever the client has not read yet. A client that reads
            # gets it within the grace time; one that does not loses its socket then.
            asyncio.get_running_loop().call_later(self._grace_s, transport.abort)


class NamingSink(WsSink):
    """A path endpoint's connection: every message gets ``symbol`` (the name the client used for
    its instrument) after ``instrument``, and with ``seconds`` a float-seconds ``timestamp``.

    The hub writes the same pre-encoded frames to every client; this sink decodes each frame it is
    given and encodes it again with the client's names (a few microseconds a message, paid only by
    clients of these endpoints)."""

    __slots__ = ("_names", "_seconds", "_single")

    def __init__(self, *args: Any, names: dict[str, str], seconds: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._names = names
        self._single = next(iter(names.values())) if len(names) == 1 else None
        self._seconds = seconds

    def write(self, data: bytes) -> None:
        out = bytearray()
        for payload in split_text_frames(data):
            out += text_frame(self._rename(payload))
        super().write(bytes(out))

    def _rename(self, payload: bytes) -> bytes:
        try:
            msg = _decode_any(payload)
        except msgspec.DecodeError:
            return payload
        if not isinstance(msg, dict):
            return payload
        renamed: dict[str, Any] = {}
        for key, value in msg.items():
            if key == "timestamp" and self._seconds and isinstance(value, int):
                value = value / 1000
            renamed[key] = value
            if key == "instrument":
                renamed["symbol"] = self._names.get(value, value) if isinstance(value, str) else self._single
        return _encode_any(renamed)


_decode_any = msgspec.json.Decoder().decode
_encode_any = msgspec.json.Encoder().encode


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _refusal(exc: BadInput) -> web.Response:
    """400 for a malformed instrument name, 404 for one not served here."""
    return _error(404 if isinstance(exc, UnknownInstrument) else 400, str(exc))


class _Endpoints:
    def __init__(self, hub: Hub, max_msg_size: int, send_buffer: int | None, close_grace_s: float) -> None:
        self.hub = hub
        self.max_msg_size = max_msg_size
        self.send_buffer = send_buffer
        self.close_grace_s = close_grace_s

    async def one(self, request: web.Request) -> web.StreamResponse:
        used = request.match_info["instrument"]
        try:
            name = self.hub.check_instrument(used)
            seconds = _compat(request)
        except BadInput as exc:
            return _refusal(exc)
        return await self._serve(request, [name], names={name: used}, seconds=seconds)

    async def multi(self, request: web.Request) -> web.StreamResponse:
        raw = [n.strip() for n in request.match_info["instruments"].split(",") if n.strip()]
        if not raw:
            return _error(400, "no instruments given; write them as /ws/multi/binance:BTCUSDT,binance:ETHUSDT")
        try:
            used = {self.hub.check_instrument(n): n for n in reversed(raw)}  # the first name of each wins
            names = list(dict.fromkeys(self.hub.check_instrument(n) for n in raw))
            seconds = _compat(request)
        except BadInput as exc:
            return _refusal(exc)
        if len(names) > self.hub.max_subscriptions:
            return _error(
                400,
                f"{len(names)} instruments exceed the {self.hub.max_subscriptions} subscriptions "
                "one connection may hold; split them over several connections",
            )
        return await self._serve(request, names, names=used, seconds=seconds)

    async def ops(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, [])

    async def _serve(
        self,
        request: web.Request,
        instruments: list[str],
        *,
        names: dict[str, str] | None = None,
        seconds: bool = False,
    ) -> web.StreamResponse:
        hub = self.hub
        ws = web.WebSocketResponse(
            compress=False, max_msg_size=self.max_msg_size, heartbeat=PING_EVERY_S, timeout=self.close_grace_s
        )
        if not ws.can_prepare(request).ok:
            return _error(400, f"{request.path} is a WebSocket endpoint; connect with a WebSocket client")
        try:
            client = hub.open_client(f"{request.remote}:{id(ws):x}")
        except HubFull as exc:
            return _error(503, str(exc))
        try:
            # Subscribed before the handshake completes: whatever is published after the client sees
            # its upgrade is queued for it (and sent once the sender starts).
            for name in instruments:
                hub.subscribe_all(client, name)
            writer = await ws.prepare(request)
            transport = request.transport
            if transport is None:
                return ws
            if self.send_buffer:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            sink = (
                WsSink(ws, writer, transport, request.protocol, self.close_grace_s)
                if names is None
                else NamingSink(
                    ws, writer, transport, request.protocol, self.close_grace_s, names=names, seconds=seconds
                )
            )
            hub.start(client, sink)
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_text(client, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._refuse(client, f"binary messages are not understood; send JSON text, e.g. {EXAMPLE}")
                elif msg.type == WSMsgType.ERROR:
                    # A frame the protocol says ends the connection: aiohttp has closed it with the
                    # reason (1009 for a message too big, 1007 for text that is not UTF-8, ...).
                    hub.bad_ops += 1
                    break
        finally:
            await hub.detach(client)
        return ws

    def _on_text(self, c: Client, text: object) -> None:
        """Apply one op, or answer why not. Synchronous on purpose: a subscription's snapshot and
        registration must not be split by an await (see :meth:`Hub.subscribe`).

        Whatever the client sends, this returns: a refused op is counted (``hub.bad_ops``) and
        answered with an error message, and the connection stays open.
        """
        try:
            problem = self._apply(c, text)
        except Exception:
            log.exception("op %s from %s failed", _clip(text), c.name)
            problem = "internal error while applying this op; it was logged, please report it"
        if problem is not None:
            self._refuse(c, problem)

    def _refuse(self, c: Client, problem: str) -> None:
        """Count a refused op and tell the client why (never raises: a reply that cannot be queued is
        logged and dropped, the connection stays)."""
        hub = self.hub
        hub.bad_ops += 1
        try:
            # Surrogates cannot be encoded; a message naming the input must never fail on it.
            hub.send(c, ErrorMsg(problem.encode("utf-8", "replace").decode("utf-8")))
        except Exception:
            log.exception("cannot send an error reply to %s", c.name)

    def _apply(self, c: Client, text: object) -> str | None:
        """Apply the op in ``text``; None when applied, else the problem and its fix."""
        if not isinstance(text, str):
            return f"cannot read this message; send JSON text like {EXAMPLE}"
        if '"ping"' in text and _is_ping(text):
            self.hub.send(c, PongMsg(int(time.time() * 1000)))
            return None
        try:
            op = _decode_op(text)
        except msgspec.DecodeError as exc:
            return f"cannot read {_clip(text)} ({exc}); send JSON like {EXAMPLE}"
        hub = self.hub
        try:
            if op.op not in OPS:
                raise BadInput(f"unknown op {_clip(op.op)}; use one of {', '.join(OPS)}, e.g. {EXAMPLE}")
            if op.instrument is None:
                raise BadInput(f"{op.op} needs an instrument, e.g. {EXAMPLE}")
            if op.op.endswith("_book"):
                if op.timeframe is not None or op.snapshot or op.final:
                    raise BadInput(f"{op.op} takes an instrument and a depth only")
                book = hub.check_book(op.instrument)
                if op.op == "subscribe_book":
                    hub.subscribe_book(c, book, op.depth)
                else:
                    hub.unsubscribe_book(c, book)
                return None
            if op.depth is not None:
                raise BadInput(f"depth only goes with subscribe_book, not {op.op}")
            name = hub.check_instrument(op.instrument)
            timeframe = None if op.timeframe is None else hub.check_timeframe(op.timeframe)
            if op.op == "subscribe":
                hub.subscribe(c, name, timeframe, op.snapshot, final=op.final)
                return None
            if op.snapshot:
                raise BadInput(f"snapshot only goes with subscribe, not {op.op}")
            if op.final:
                raise BadInput(f"final only goes with subscribe, not {op.op} (unsubscribe ends either kind)")
            if op.op == "unsubscribe":
                hub.unsubscribe(c, name, timeframe)
                return None
            if timeframe is not None:
                raise BadInput(f"trades have no timeframe; send {op.op} with an instrument only")
            if op.op == "subscribe_trades":
                hub.subscribe_trades(c, name)
            else:
                hub.unsubscribe(c, name, None, trades=True)
        except BadInput as exc:
            return str(exc)
        return None


def _is_ping(text: str) -> bool:
    """``{"type":"ping"}`` (other fields allowed): a client checking the connection."""
    try:
        msg = _decode_any(text)
    except msgspec.DecodeError:
        return False
    return isinstance(msg, dict) and msg.get("type") == "ping" and "op" not in msg


def _compat(request: web.Request) -> bool:
    """Whether ``?compat=`` asks for float-seconds timestamps (``seed``); BadInput for another value."""
    compat = request.query.get("compat")
    if compat is None:
        return False
    if compat != "seed":
        raise BadInput(f"compat={compat!r} is not known; use compat=seed (timestamps in float seconds) or leave it out")
    return True


def _clip(text: object, most: int = 80) -> str:
    """``repr(text)``, cut to about ``most`` characters (errors and logs quote what was sent)."""
    r = repr(text)
    return r if len(r) <= most else r[: most - 4] + "...'"


def add_ws_routes(
    app: web.Application,
    hub: Hub,
    *,
    max_msg_size: int = MAX_MSG_SIZE,
    send_buffer: int | None = None,
    close_grace_s: float = CLOSE_GRACE_S,
) -> None:
    """Serve ``/ws``, ``/ws/{instrument}`` and ``/ws/multi/{i1},{i2},...`` from ``hub`` on ``app``.

    ``send_buffer`` caps each client socket's kernel send buffer (SO_SNDBUF, bytes). By default the
    kernel sizes it, up to megabytes per client on Linux, which a client that stopped reading fills
    before the hub even sees it fall behind; a cap makes slow clients visible sooner and bounds
    kernel memory, at the cost of throughput to clients far away. The application's shutdown closes
    every client with code 1001.
    """
    ep = _Endpoints(hub, max_msg_size, send_buffer, close_grace_s)
    app.router.add_get("/ws", ep.ops)
    app.router.add_get("/ws/multi/{instruments:.+}", ep.multi)
    app.router.add_get("/ws/{instrument:.+}", ep.one)

    async def close_clients(app: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(close_clients)
