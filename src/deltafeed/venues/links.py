"""A venue's subscriptions spread over as many WebSocket connections as its declared limits need,
each connection with its own watchdog and rotation, every attempt through one connect budget and
every control message paced.

A venue declares its :class:`StreamLimits`; its feed places each instrument (with the number of
subscriptions it needs and, where the venue counts them, their characters) on a :class:`LinkPool`,
which packs them in order onto as few links as the limits allow. A :class:`Link` is one connection
slot: the instruments it carries, its :class:`~deltafeed.net.ws.WsStream` (reconnecting on its own,
with its own data watchdog), the stream replacing it during a rotation, and an outbox drained no
faster than the venue's message rates (per connection, and across the venue's connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from deltafeed.clock import LIVE, Clock
from deltafeed.model import BadInput
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import FrameSink, WsStream

if TYPE_CHECKING:
    from deltafeed.venues.base import Venue

log = logging.getLogger("deltafeed.links")

T = TypeVar("T")
M = TypeVar("M")


class Stream(Protocol):
    """What a link needs of its connection: :class:`~deltafeed.net.ws.WsStream`, or
    :class:`~deltafeed.net.lines.LineStream` for a venue whose stream is one HTTP answer."""

    name: str
    frames: int
    connects: int
    stale_drops: int
    connected_at: float
    connected: asyncio.Event

    async def run(self) -> None: ...

    async def close(self) -> None: ...

    def send(self, text: bytes) -> None: ...

    def drop(self, why: str) -> None: ...


#: Makes a link's stream: ``(link, url, sink, on_connect, budget)``; the default makes a WsStream.
StreamFactory = Callable[["Link[Any]", Callable[[], str], FrameSink, Callable[[Any], None], ConnectBudget], Stream]


@dataclass(frozen=True)
class StreamLimits:
    """What a venue allows its market-data connections; 0 means the venue sets no such limit.

    ``source`` says where the figures come from (the venue's documentation, or "chosen" where the
    venue documents none and a conservative figure was picked); docs/scaling.md lists them.
    """

    #: Subscriptions (streams, topics, product-channel pairs) one connection may carry.
    per_connection: int = 0
    #: Characters of subscription names one connection may carry (Binance's URL, Bybit's args).
    chars_per_connection: int = 0
    #: Subscriptions in one subscribe or unsubscribe message.
    per_message: int = 0
    #: Control messages (subscribe, unsubscribe, ping) per second on one connection.
    messages_per_s: float = 0.0
    #: Control messages per second across all of the venue's connections.
    venue_messages_per_s: float = 0.0
    #: Control messages that may go at once before those rates apply (each pace's bucket): within
    #: any second at most ``message_burst`` + the rate go out, so the two together stay within a
    #: venue's per-second limit.
    message_burst: int = 1
    #: Connections open at once (more instruments than they carry are refused at start-up).
    max_connections: int = 0
    #: Connection attempts per ``connect_window_s``, across the venue's connections (0: the run's
    #: ``connect_budget`` per 5 minutes; otherwise the smaller of the two per this window).
    connects: int = 0
    connect_window_s: float = 300.0
    source: str = ""

    def chunks(self, items: Sequence[T]) -> list[Sequence[T]]:
        """``items`` cut into the pieces one message may carry (one piece when the venue sets no cap)."""
        n = self.per_message or max(1, len(items))
        return [items[i : i + n] for i in range(0, len(items), n)]


class Pace:
    """A token bucket of ``rate`` messages per second, ``burst`` at once."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Clock | None = None) -> None:
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock: Clock = clock or LIVE
        self._tokens = self.burst
        self._stamp = self.clock.monotonic()

    def delay(self) -> float:
        """Seconds until a message may go (0: now)."""
        now = self.clock.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate

    def take(self) -> None:
        self._tokens -= 1.0


class Link(Generic[M]):
    """One connection slot of a :class:`LinkPool`: its members, its stream, and the stream replacing
    it during a rotation (the old one is closed once the new one delivers)."""

    def __init__(self, pool: LinkPool[M], index: int) -> None:
        self.pool = pool
        self.index = index
        self.members: list[M] = []
        self.load = 0  # subscriptions of every member, active or not
        self.chars = 0  # their characters
        self.name = pool.name if index == 0 else f"{pool.name}#{index}"
        lim = pool.limits
        self._pace = Pace(lim.messages_per_s, lim.message_burst, pool.clock) if lim.messages_per_s > 0 else None
        self._outbox: deque[tuple[Stream, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.sent = 0  # control messages sent
        self.ws = pool._new_stream(self)
        self.task: asyncio.Task[None] | None = None
        self.next: Stream | None = None
        self.next_task: asyncio.Task[None] | None = None

    def streams(self) -> list[Stream]:
        """The current stream, and its replacement during a rotation."""
        return [self.ws] if self.next is None else [self.ws, self.next]

    def start(self) -> None:
        self.task = asyncio.create_task(self.ws.run(), name=f"{self.name}-ws")

    # --- control messages --------------------------------------------------------------------------

    def send(self, ws: Stream, msg: bytes) -> None:
        """Send ``msg`` on ``ws`` (one of this link's streams) as soon as the venue's rates allow."""
        self._outbox.append((ws, msg))
        if self._timer is None:
            self.flush()

    def broadcast(self, msg: bytes) -> None:
        """Send ``msg`` on every connected stream of the link (both during a rotation)."""
        for ws in self.streams():
            if ws.connected.is_set():
                self.send(ws, msg)

    def flush(self) -> None:
        self._timer = None
        shared = self.pool._pace
        while self._outbox:
            ws, msg = self._outbox[0]
            if not ws.connected.is_set():
                self._outbox.popleft()  # its next connection subscribes afresh
                continue
            wait = max(self._pace.delay() if self._pace else 0.0, shared.delay() if shared else 0.0)
            if wait > 0:
                self._timer = asyncio.get_running_loop().call_later(wait, self.flush)
                return
            if self._pace is not None:
                self._pace.take()
            if shared is not None:
                shared.take()
            self._outbox.popleft()
            ws.send(msg)
            self.sent += 1

    def forget(self, ws: Stream) -> None:
        """Drop what was queued for an earlier connection of ``ws`` (it reconnected)."""
        if any(w is ws for w, _ in self._outbox):
            self._outbox = deque((w, m) for w, m in self._outbox if w is not ws)

    def queued(self) -> int:
        return len(self._outbox)

    # --- rotation ----------------------------------------------------------------------------------

    def rotate(self) -> None:
        """Open a second connection; the first is closed once the second delivers (see :meth:`tick`)."""
        if self.next is not None:
            return
        self.next = self.pool._new_stream(self)
        self.next_task = asyncio.create_task(self.next.run(), name=f"{self.name}-ws-next")

    async def tick(self, mono: float) -> None:
        after = self.pool.rotate_after_s
        if self.next is not None and self.next.frames > 0:
            await self._finish_rotation()
        elif after > 0 and self.next is None and self.ws.connected_at and mono - self.ws.connected_at > after:
            age = mono - self.ws.connected_at
            log.info("%s: connection is %.0f s old; rotating before the venue cuts it", self.ws.name, age)
            self.rotate()

    async def _finish_rotation(self) -> None:
        assert self.next is not None and self.next_task is not None
        old, old_task = self.ws, self.task
        self.ws, self.task = self.next, self.next_task
        self.next = self.next_task = None
        pool = self.pool
        pool.rotations += 1
        pool.past_connects += old.connects
        pool.past_frames += old.frames
        pool.past_stale_drops += old.stale_drops
        await old.close()
        if old_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await old_task
        log.info("%s: rotated to a new connection without a gap", self.ws.name)

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._outbox.clear()
        pairs = [(self.ws, self.task), (self.next, self.next_task)]
        await asyncio.gather(*(s.close() for s, _ in pairs if s is not None))
        for _, task in pairs:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


class LinkPool(Generic[M]):
    """A venue's connections: members placed onto links within ``limits``, links started, ticked
    (rotation), stopped and counted together.

    ``url`` is the address every link connects to, or ``url(link)`` a link's (asked on every attempt,
    so it may name the link's subscriptions); ``on_frame`` takes every stream's frames, or
    ``frames_of(link)`` is the sink of a new stream of the link; ``on_connect(link,
    ws)`` runs on every (re)connection of one of the link's streams, after what was queued for its
    earlier connection is dropped, and subscribes the link's members (with :meth:`Link.send`).
    ``budget`` is another pool's, for a venue with several (one per address); ``stream_kw`` go to
    every :class:`WsStream` (``stale_after_s``, ``backoff_cap_s``, ``headers``...), or
    ``make_stream`` makes another kind of :class:`Stream`.
    """

    def __init__(
        self,
        name: str,
        limits: StreamLimits,
        *,
        url: str | Callable[[Link[M]], str],
        on_frame: FrameSink | None = None,
        frames_of: Callable[[Link[M]], FrameSink] | None = None,
        on_connect: Callable[[Link[M], Stream], None] | None = None,
        connect_budget: int = 300,
        rotate_after_s: float = 0.0,
        budget: ConnectBudget | None = None,
        make_stream: StreamFactory | None = None,
        clock: Clock | None = None,
        **stream_kw: Any,
    ) -> None:
        self.name = name
        self.limits = limits
        self.clock: Clock = clock or LIVE
        self._url = (lambda link: url) if isinstance(url, str) else url
        if frames_of is None:
            assert on_frame is not None, "a pool needs on_frame or frames_of"
            frames_of = lambda link: on_frame  # noqa: E731
        self._frames_of = frames_of
        self._on_connect = on_connect
        self._stream_kw = stream_kw
        self._make_stream = make_stream
        self.rotate_after_s = rotate_after_s
        if budget is not None:  # shared with another pool of the venue's
            self.budget = budget
        elif limits.connects:
            self.budget = ConnectBudget(min(connect_budget, limits.connects), limits.connect_window_s, self.clock)
        else:
            self.budget = ConnectBudget(connect_budget, 300.0, self.clock)
        rate = limits.venue_messages_per_s
        self._pace = Pace(rate, limits.message_burst, self.clock) if rate > 0 else None
        self.rotations = 0
        self.past_connects = 0  # connections made by streams already rotated away
        self.past_frames = 0
        self.past_stale_drops = 0
        self.started = False
        self.links: list[Link[M]] = []
        self.link_of: dict[int, Link[M]] = {}  # id(member) -> its link
        self._size: dict[int, tuple[int, int]] = {}  # id(member) -> its subscriptions and characters

    @classmethod
    def for_venue(cls, venue: Venue, **kw: Any) -> LinkPool[Any]:
        """The pool of ``venue``'s connections within its declared ``stream_limits``, named after it
        (``kw`` as for the constructor: ``url``, ``on_frame``, ``connect_budget``...)."""
        assert venue.stream_limits is not None, f"{venue.name} declares no stream limits"
        return cls(venue.name, venue.stream_limits, **kw)

    def _new_stream(self, link: Link[M]) -> Stream:
        def connected(ws: Stream) -> None:
            link.forget(ws)
            if self._on_connect is not None:
                self._on_connect(link, ws)

        if self._make_stream is not None:
            return self._make_stream(link, lambda: self._url(link), self._frames_of(link), connected, self.budget)
        return WsStream(
            lambda: self._url(link),
            self._frames_of(link),
            on_connect=connected,
            name=link.name,
            budget=self.budget,
            **self._stream_kw,
        )

    def place(self, member: M, subs: int, chars: int = 0) -> Link[M]:
        """Put ``member`` (needing ``subs`` subscriptions of ``chars`` characters) on the last link,
        or on a new one when that would pass a limit; :class:`BadInput` when it fits on none."""
        lim = self.limits
        if (lim.per_connection and subs > lim.per_connection) or (
            lim.chars_per_connection and chars > lim.chars_per_connection
        ):
            raise BadInput(
                f"one instrument needs {subs} subscriptions ({chars} characters), more than one {self.name}"
                " connection carries; collect fewer timeframes (or turn venue klines off)"
            )
        link = self.links[-1] if self.links else None
        if link is None or (
            link.members
            and (
                (lim.per_connection and link.load + subs > lim.per_connection)
                or (lim.chars_per_connection and link.chars + chars > lim.chars_per_connection)
            )
        ):
            if lim.max_connections and len(self.links) >= lim.max_connections:
                each = f" of {lim.per_connection} subscriptions" if lim.per_connection else ""
                raise BadInput(
                    f"{self.name} allows {lim.max_connections} connection(s){each} at once and this run needs"
                    " more; collect fewer instruments or timeframes"
                )
            link = Link(self, len(self.links))
            self.links.append(link)
            if self.started:
                link.start()
        link.members.append(member)
        link.load += subs
        link.chars += chars
        self.link_of[id(member)] = link
        self._size[id(member)] = (subs, chars)
        return link

    def remove(self, member: M) -> None:
        """Take ``member`` (unsubscribed already) off its link, which has room for another again."""
        link = self.link_of.pop(id(member), None)
        subs, chars = self._size.pop(id(member), (0, 0))
        if link is not None:
            link.members = [m for m in link.members if m is not member]
            link.load -= subs
            link.chars -= chars

    def start(self) -> None:
        self.started = True
        for link in self.links:
            link.start()

    async def tick(self, mono: float) -> None:
        for link in self.links:
            await link.tick(mono)

    def rotate_all(self) -> None:
        for link in self.links:
            link.rotate()

    async def stop(self) -> None:
        await asyncio.gather(*(link.stop() for link in self.links))

    def by_link(self, members: Sequence[M]) -> list[tuple[Link[M], list[M]]]:
        """``members`` grouped by the link carrying them (members not placed are left out)."""
        groups: dict[int, list[M]] = {}
        for m in members:
            link = self.link_of.get(id(m))
            if link is not None:
                groups.setdefault(link.index, []).append(m)
        return [(self.links[i], group) for i, group in groups.items()]

    # --- visibility --------------------------------------------------------------------------------

    def streams(self) -> list[Stream]:
        return [ws for link in self.links for ws in link.streams()]

    def connected(self) -> bool:
        return bool(self.links) and all(link.ws.connected.is_set() for link in self.links)

    def counts(self) -> dict[str, Any]:
        """The connection fields of a :class:`~deltafeed.venues.base.FeedStatus`."""
        streams = self.streams()
        connects = self.past_connects + sum(ws.connects for ws in streams)
        return {
            "connected": self.connected(),
            "connections": sum(ws.connected.is_set() for ws in streams),
            "connects": connects,
            "reconnects": max(0, connects - len(self.links) - self.rotations),
            "rotations": self.rotations,
            "stale_drops": self.past_stale_drops + sum(ws.stale_drops for ws in streams),
            "connect_budget_waits": self.budget.waits,
            "frames": self.past_frames + sum(ws.frames for ws in streams),
        }


def forget_member(pool: LinkPool[M], members: list[M], by_name: dict[str, M], name: str, member: M) -> None:
    """A member the engine dropped (unsubscribed already) off ``pool`` (its link has room again),
    ``members`` and ``by_name`` (under ``name``, unless another member took that name since)."""
    pool.remove(member)
    members[:] = [m for m in members if m is not member]
    if by_name.get(name) is member:
        del by_name[name]
