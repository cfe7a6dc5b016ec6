"""Fan-out of live candles, trades and prices from one producer to any number of consumers.

The engine (the producer) calls :meth:`Hub.candle`, :meth:`Hub.trade` and :meth:`Hub.price` from its
event loop. Each call encodes its message once (msgspec JSON, framed once as a WebSocket text frame)
and appends those same bytes to the queue of every interested client. It never awaits and never
waits for a client: with nobody listening it costs one dict lookup, otherwise a list append per
interested client.

Each client has a bounded queue (``queue_max`` messages). What the producer publishes in one
event-loop iteration is written at the end of it, in one write per client, by one callback for all
clients (:meth:`Hub._flush`): a task switch per client and batch would cost a third more CPU with
1000 clients (measured with ``bench/fanout.py``). A client whose socket cannot take it all (its
transport is over its high-water mark) is *blocked*: its own sender task takes over its queue,
waits for the socket to drain, writes the rest, and hands back once caught up. A client that reads
slower than data arrives first fills the kernel's and the transport's buffers, then its queue. With
its queue full:

- a candle update replaces the queued update of the same candle (instrument, timeframe, open_time)
  in place, and a price update the queued price of the same instrument: the client still gets the
  latest state of everything, in order, and only skips intermediate states (each one counted in
  ``dropped``);
- a heartbeat replaces a queued heartbeat, or is skipped if none is queued (counted);
- anything that cannot be folded into a queued message (a trade, the first update of a new candle,
  a price while none is queued, a reply) means the client cannot keep up with what it subscribed
  to: it is disconnected with close code 1008 and a reason that names the fix, and counted in
  ``disconnected_slow`` (its queued messages are counted in ``dropped``). Losing data silently
  would be worse: a consumer's candles would have holes it cannot see.

Independently of the queue, a client whose oldest queued message has waited more than ``max_lag_s``
is disconnected the same way (checked every second). Conflation alone could otherwise keep a
client that barely reads connected forever, looking at data minutes old.

A candle subscription may be *final-only*: that client gets a candle only when it is final (deltafeed
vouches for it), including a final candle published again as a correction, and never a forming or
provisional one; its snapshot holds the newest final candles. A client subscribed to the same
series both ways gets each message once.

Snapshots and live data meet without a gap or a duplicate: :meth:`Hub.subscribe` takes the snapshot
and registers the subscription in one synchronous step, so no producer call can fall between them,
as long as ``snapshot()`` reflects every :meth:`Hub.candle` call made before it (the engine feeds both
from the same place).

The hub knows WebSocket framing and nothing else of the network: a client's connection is a
:class:`Sink` (see :mod:`deltafeed.api.ws` for the aiohttp one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from deltafeed.api.books import BookView
from deltafeed.api.protocol import (
    CandleData,
    CandleMsg,
    HeartbeatData,
    HeartbeatMsg,
    PriceData,
    PriceMsg,
    Subscribed,
    SwitchData,
    SwitchMsg,
    TradeData,
    TradeMsg,
    Unsubscribed,
)
from deltafeed.clock import Clock, LiveClock
from deltafeed.fmt import clean
from deltafeed.model import TIMEFRAMES, BadInput, Candle, Trade, timeframe
from deltafeed.names import UnknownName, resolve
from deltafeed.net.frames import text_frame

if TYPE_CHECKING:
    from deltafeed.books import BookEvent, Books

log = logging.getLogger("deltafeed.api.hub")

MAX_SNAPSHOT = 1000  # candles per timeframe a subscription may ask for
# A final-only snapshot of N looks at most this many times N candles back for N final ones.
_FINAL_SNAPSHOT_REACH = 64
BATCH_BYTES = 256 * 1024  # most bytes written to one client at once, before looking at flow control
LAG_CHECK_S = 1.0  # how often the lag rule is checked (and heartbeats considered)
CLOSE_WAIT_S = 5.0  # how long a sender may take to close its connection before it is cancelled
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008


_encode = msgspec.json.Encoder().encode


def encode_frame(msg: msgspec.Struct) -> bytes:
    """A message as the WebSocket frame every client gets."""
    return text_frame(_encode(msg))


def _candle_frame(instrument: str, timeframe: str, c: Candle) -> bytes:
    data = CandleData(
        timeframe,
        c.open_time,
        clean(c.open),
        clean(c.high),
        clean(c.low),
        clean(c.close),
        clean(c.volume),
        c.trades,
        c.closed,
        c.state,
    )
    return text_frame(_encode(CandleMsg(instrument, c.open_time, data)))


# --- clients -------------------------------------------------------------------------------------


class Sink(Protocol):
    """A client's connection as the hub sees it: a pipe for whole frames, with flow control."""

    def write(self, data: bytes) -> None:
        """Write whole frames now; raise ConnectionError if the connection is gone or closing."""

    @property
    def paused(self) -> bool:
        """True while the connection's buffer is over its high-water mark."""

    async def drain(self) -> None:
        """Return once the buffer is below its low-water mark."""

    async def close(self, code: int, reason: str) -> None:
        """Send a close frame after what is already written, and see that the socket goes away."""


# A subscription: (kind, instrument, timeframe) with kind "all" (candles of every timeframe,
# prices and trades: the path endpoints), "candles" (one timeframe, or every one plus prices when
# timeframe is None), "final" (final candles only, of one timeframe or every one; no prices) or
# "trades".
Sub = tuple[str, str, str | None]
# A route: ("c", instrument, timeframe), ("f", instrument, timeframe) (final candles only),
# ("p", instrument) or ("t", instrument).
Route = tuple[str, ...]


class Entry(msgspec.Struct, gc=False):
    """One queued message. Mutable, so that conflation replaces ``frame`` in place and the message
    keeps its place (and age) in the queue; ``gc=False`` so that queueing one per client and message
    allocates nothing the garbage collector tracks (and counts towards its next pause)."""

    frame: bytes
    key: object  # the conflation key, or None for a message that cannot be conflated
    queued: float  # monotonic time it was queued


_HEARTBEAT_KEY = ("heartbeat",)


class Client:
    """One consumer: its subscriptions, its bounded queue, its state of flow and its sender task."""

    __slots__ = (
        "blocked",
        "book_stale",
        "close_code",
        "close_reason",
        "closing",
        "conflated",
        "dirty",
        "gone",
        "kill",
        "name",
        "pending",
        "queue",
        "routes",
        "sent",
        "sink",
        "slow",
        "snapshot_until",
        "subs",
        "task",
        "waiter",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: deque[Entry] = deque()
        # The newest queued entry per conflation key: what a full queue's conflation replaces.
        self.pending: dict[object, Entry] = {}
        self.subs: set[Sub] = set()
        self.routes: set[Route] = set()
        self.sink: Sink | None = None
        self.task: asyncio.Task[None] | None = None
        self.dirty = False  # in the hub's list of clients to flush at the end of this loop iteration
        self.blocked = False  # its socket is full: its sender task, not the flush, writes its queue
        self.waiter: asyncio.Future[None] | None = None  # the idle sender task waits here
        self.kill: asyncio.Future[None] | None = None  # resolved when the client is disconnected
        self.closing = False
        self.gone = False  # the connection is already closed: nothing more to send, not even a close
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.slow = False  # disconnected for being too slow
        self.sent = 0  # queue entries written to the socket
        self.conflated = 0  # updates replaced by newer ones while the queue was full
        self.snapshot_until = 0  # the value of ``sent`` once the latest snapshot has been written
        self.book_stale: set[tuple[str, int]] = set()  # book streams it was too slow for: a fresh snapshot is due

    def __repr__(self) -> str:
        return f"<Client {self.name} subs={len(self.subs)} queued={len(self.queue)}>"


class HubFull(BadInput):
    """No room for another client (``max_clients``), or the hub is shutting down."""


#: A well-formed instrument name that is not served here.
UnknownInstrument = UnknownName


class Hub:
    """Fans candles, trades and prices out to many clients; see the module docstring for the policy.

    ``snapshot(instrument, timeframe, n)`` returns the last ``n`` candles oldest first, the forming
    one last; ``instruments()`` the active instrument names; ``timeframes()``, if given, the
    timeframes collected (subscriptions to others are refused). Counters: ``dropped`` (messages a slow
    client did not get: conflated away, skipped heartbeats, or queued when it was disconnected),
    ``conflated`` (the first kind alone), ``disconnected_slow``, ``delivered`` (queue entries written
    to sockets; a snapshot counts as one), ``bad_ops`` (ops the endpoints refused).
    """

    def __init__(
        self,
        *,
        snapshot: Callable[[str, str, int], list[Candle]],
        instruments: Callable[[], list[str]],
        queue_max: int = 1000,
        max_clients: int = 1000,
        max_subscriptions: int = 100,
        heartbeat_s: float = 5.0,
        max_lag_s: float = 10.0,
        timeframes: Callable[[], list[str]] | None = None,
        clock: Clock | None = None,
        aliases: dict[str, str] | None = None,
        default_venue: str | None = None,
    ) -> None:
        if queue_max < 2:
            raise ValueError(f"queue_max must be at least 2, got {queue_max}")
        if heartbeat_s <= 0 or max_lag_s <= 0:
            raise ValueError("heartbeat_s and max_lag_s must be positive")
        self._snapshot = snapshot
        #: Other names of instruments, and the venue of bare symbols (see :mod:`deltafeed.names`).
        self.aliases = aliases or {}
        self.default_venue = default_venue
        self._instruments = instruments
        self._timeframes = timeframes
        self.queue_max = queue_max
        self.max_clients = max_clients
        self.max_subscriptions = max_subscriptions
        self.heartbeat_s = heartbeat_s
        self.max_lag_s = max_lag_s
        self._clock = clock or LiveClock()
        self._mono = self._clock.monotonic
        # Routing tables, instrument first so that "nobody listens" is one failed lookup. The
        # client tuples are replaced, never mutated: a fan-out loop may disconnect a client while
        # it iterates, and subscriptions change rarely compared with messages.
        self._candle_routes: dict[str, dict[str, tuple[Client, ...]]] = {}
        # Clients of final candles only (never also in _candle_routes for the same series).
        self._final_routes: dict[str, dict[str, tuple[Client, ...]]] = {}
        self._price_routes: dict[str, tuple[Client, ...]] = {}
        self._trade_routes: dict[str, tuple[Client, ...]] = {}
        # Order books (see attach_books): instrument -> depth -> clients, and the view of each stream.
        self._book_routes: dict[str, dict[str, tuple[Client, ...]]] = {}
        self._book_views: dict[tuple[str, int], BookView] = {}
        self._books: Books | None = None
        self.book_resnapshots = 0  # fresh snapshots sent to clients too slow for a book's deltas
        self._clients: dict[Client, None] = {}
        self._dirty: list[Client] = []  # clients with new messages, written by the next _flush
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.conflated = 0
        self.disconnected_slow = 0
        self.delivered = 0
        self.bad_ops = 0  # ops refused by the WebSocket endpoints (counted there)

    @property
    def clients(self) -> int:
        """Clients connected (including those being disconnected)."""
        return len(self._clients)

    def longest_queue(self) -> int:
        """The most messages any client has waiting (for monitoring and benchmarks; O(clients))."""
        return max((len(c.queue) for c in self._clients), default=0)

    # --- producer side: synchronous, never awaits ------------------------------------------------

    def candle(self, instrument: str, timeframe: str, candle: Candle) -> None:
        """An open candle's update, a closed candle, or one published again (made final, corrected);
        final-only clients get it only when it is final."""
        by_tf = self._candle_routes.get(instrument)
        clients = None if by_tf is None else by_tf.get(timeframe)
        finals = None
        if candle.final:
            f_tf = self._final_routes.get(instrument)
            finals = None if f_tf is None else f_tf.get(timeframe)
        if clients is None and finals is None:
            return
        frame = _candle_frame(instrument, timeframe, candle)
        key = (instrument, timeframe, candle.open_time)
        if clients is not None:
            self._fanout(clients, frame, key)
        if finals is not None:
            self._fanout(finals, frame, key)

    def switch(self, instrument: str, at_ms: int, data: SwitchData) -> None:
        """A failover switch of ``instrument``, to every client watching any of its timeframes."""
        groups = [*self._candle_routes.get(instrument, {}).values(), *self._final_routes.get(instrument, {}).values()]
        if not groups:
            return
        clients = tuple({c: None for group in groups for c in group})
        self._fanout(clients, text_frame(_encode(SwitchMsg(instrument, at_ms, data))), None)

    def trade(self, instrument: str, trade: Trade) -> None:
        """One trade (the engine calls this only while :meth:`wants_trades` says so)."""
        clients = self._trade_routes.get(instrument)
        if clients is None:
            return
        data = TradeData(trade.trade_id, clean(trade.price), clean(trade.qty), trade.buyer_maker)
        self._fanout(clients, text_frame(_encode(TradeMsg(instrument, trade.time_ms, data))), None)

    def price(self, instrument: str, time_ms: int, price: float) -> None:
        """The latest price of ``instrument``."""
        clients = self._price_routes.get(instrument)
        if clients is None:
            return
        frame = text_frame(_encode(PriceMsg(instrument, time_ms, PriceData(clean(price)))))
        self._fanout(clients, frame, ("p", instrument))

    def wants_trades(self, instrument: str) -> bool:
        """True while some client listens to ``instrument``'s trades."""
        return instrument in self._trade_routes

    def _fanout(self, clients: tuple[Client, ...], frame: bytes, key: object) -> None:
        """Queue ``frame`` for every client in ``clients`` (the hot loop: keep it lean)."""
        now = self._mono()
        qmax = self.queue_max
        dirty = self._dirty
        # An entry that cannot be conflated is never changed, so every client can share it.
        shared = Entry(frame, None, now) if key is None else None
        for c in clients:
            q = c.queue
            if len(q) < qmax:
                if shared is None:
                    e = Entry(frame, key, now)
                    q.append(e)
                    c.pending[key] = e
                else:
                    q.append(shared)
                if not (c.dirty or c.blocked):
                    c.dirty = True
                    dirty.append(c)
            else:
                self._overflow(c, frame, key, now)
        if dirty and self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _overflow(self, c: Client, frame: bytes, key: object, now: float) -> None:
        """``c``'s queue is full: fold ``frame`` into a queued message, or disconnect ``c``."""
        if c.closing:  # disconnected in this loop iteration, not yet out of the routes
            return
        if key is not None:
            e = c.pending.get(key)
            if e is not None:
                e.frame = frame  # keeps its place (and age) in the queue
                c.conflated += 1
                self.conflated += 1
                self.dropped += 1
                return
            if key is _HEARTBEAT_KEY:
                self.dropped += 1
                return
        self._kick(
            c,
            CLOSE_POLICY,
            f"too slow: {len(c.queue)} messages waiting, {c.conflated} updates conflated; "
            "read faster or subscribe to less",
            slow=True,
        )

    def _push(self, c: Client, frame: bytes) -> None:
        """Queue a message for one client (replies, snapshots): never conflated."""
        if not c.closing:
            self._fanout((c,), frame, None)

    # --- clients and subscriptions (called by the endpoints) --------------------------------------

    def check_instrument(self, name: str) -> str:
        """The canonical name of instrument ``name`` if it is active; otherwise :class:`BadInput`.

        The error is a :class:`LookupError` too when the name is well formed but not served.
        """
        return resolve(name, self._instruments(), aliases=self.aliases, default_venue=self.default_venue)

    def check_timeframe(self, name: str) -> str:
        """``name`` if it is a timeframe (and collected, when the hub was given ``timeframes``)."""
        collected = self._collected()
        try:
            name = timeframe(name).name  # 60s is 1m
        except BadInput:
            raise BadInput(f"unknown timeframe {name!r}; use one of {' '.join(collected)} (collected here)") from None
        if name not in collected:
            raise BadInput(f"timeframe {name} is not collected here; use one of {' '.join(collected)}")
        return name

    def _collected(self) -> list[str]:
        """The timeframes collected here (the standard ones when the hub was not told)."""
        return self._timeframes() if self._timeframes is not None else list(TIMEFRAMES)

    def open_client(self, name: str = "?") -> Client:
        """Reserve a place for a new client (before its connection is upgraded)."""
        if self._closing:
            raise HubFull("the server is shutting down; reconnect later")
        if len(self._clients) >= self.max_clients:
            raise HubFull(f"too many clients ({self.max_clients}); try again later")
        c = Client(name)
        self._clients[c] = None
        if self._ticker is None:
            loop = asyncio.get_running_loop()
            if loop is not self._loop:  # a hub outliving its first loop (tests) starts afresh
                self._loop, self._flush_handle, self._dirty = loop, None, []
            self._ticker = loop.create_task(self._tick(), name="hub-ticker")
        return c

    def start(self, c: Client, sink: Sink) -> None:
        """Start sending ``c``'s queue (with whatever was queued before) to ``sink``."""
        c.sink = sink
        loop = asyncio.get_running_loop()
        c.kill = loop.create_future()
        if c.closing:
            c.kill.set_result(None)
        c.task = loop.create_task(self._pump(c, sink), name=f"hub-send-{c.name}")
        if c.queue and not c.dirty:  # queued before the connection was ready
            c.dirty = True
            self._dirty.append(c)
            if self._flush_handle is None:
                self._flush_handle = loop.call_soon(self._flush)

    def send(self, c: Client, msg: msgspec.Struct) -> None:
        """Queue one message (a reply) for ``c`` only."""
        self._push(c, encode_frame(msg))

    def subscribe_all(self, c: Client, instrument: str) -> None:
        """Everything for ``instrument``: trades, prices, candles of every timeframe (no snapshot)."""
        self._add_sub(c, ("all", instrument, None))

    def subscribe(
        self, c: Client, instrument: str, timeframe: str | None, snapshot: int = 0, *, final: bool = False
    ) -> int:
        """Candles of ``timeframe`` (all timeframes and prices if None), after the last ``snapshot``.

        Queues the ``subscribed`` reply, then the snapshot's candles oldest first (per timeframe),
        and registers the subscription, all in one synchronous step: the first live update follows
        the last snapshot candle with nothing lost or repeated in between. Returns the number of
        snapshot candles.

        ``final``: final candles only (no prices either): the snapshot is the newest ``snapshot``
        final candles, and live, a candle is sent each time it is published final (made final, or
        corrected), never while forming or provisional.
        """
        if not 0 <= snapshot <= MAX_SNAPSHOT:
            raise BadInput(f"snapshot must be between 0 and {MAX_SNAPSHOT}, got {snapshot}")
        sub: Sub = ("final" if final else "candles", instrument, timeframe)
        self._check_new_sub(c, sub)
        if snapshot and c.sent < c.snapshot_until:
            # At most one snapshot queued per client: asking again and again without reading must
            # not pile up megabytes per request.
            raise BadInput("the previous snapshot is still waiting to be sent; read it, then ask for another")
        frames: list[bytes] = []
        if snapshot:
            for tf in self._collected() if timeframe is None else (timeframe,):
                candles = (
                    self._final_snapshot(instrument, tf, snapshot)
                    if final
                    else self._snapshot(instrument, tf, snapshot)
                )
                frames.extend(_candle_frame(instrument, tf, cd) for cd in candles)
        self.send(c, Subscribed("subscribe", instrument, timeframe, len(frames), final))
        if frames:
            # One queue entry however long: a deep snapshot must not count as a full queue.
            self._push(c, b"".join(frames))
            c.snapshot_until = c.sent + len(c.queue)  # sent once c.sent gets there
        self._add_sub(c, sub)
        return len(frames)

    def _final_snapshot(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        """The newest ``n`` final candles the snapshot source holds (reaching further back while
        provisional ones are in the way)."""
        want = n
        while True:
            got = self._snapshot(instrument, timeframe, want)
            finals = [cd for cd in got if cd.final]
            if len(finals) >= n or len(got) < want or want >= _FINAL_SNAPSHOT_REACH * n:
                return finals[-n:]
            want *= 4

    def subscribe_trades(self, c: Client, instrument: str) -> None:
        sub: Sub = ("trades", instrument, None)
        self._check_new_sub(c, sub)
        self.send(c, Subscribed("subscribe_trades", instrument, None, 0))
        self._add_sub(c, sub)

    def unsubscribe(self, c: Client, instrument: str, timeframe: str | None, trades: bool = False) -> None:
        """Remove a subscription made before (its exact instrument and timeframe; for candles, the
        final-only one as well as the other)."""
        subs: list[Sub] = (
            [("trades", instrument, None)]
            if trades
            else [("candles", instrument, timeframe), ("final", instrument, timeframe)]
        )
        if not c.subs.intersection(subs):
            what = "trades" if trades else f"candles {timeframe or '(all timeframes)'}"
            raise BadInput(f"not subscribed to {instrument} {what}; subscriptions: {self.describe(c) or 'none'}")
        c.subs.difference_update(subs)
        self._reroute(c)
        self.send(c, Unsubscribed("unsubscribe_trades" if trades else "unsubscribe", instrument, timeframe))

    @staticmethod
    def describe(c: Client) -> str:
        return ", ".join(sorted(f"{k} {i}" + (f" {tf}" if tf else "") for k, i, tf in c.subs))

    def _check_new_sub(self, c: Client, sub: Sub) -> None:
        if sub in c.subs:
            raise BadInput(
                f"already subscribed to {sub[1]} {sub[0]} {sub[2] or ''}".rstrip()
                + "; unsubscribe first to subscribe again"
            )
        if len(c.subs) >= self.max_subscriptions:
            raise BadInput(
                f"too many subscriptions (at most {self.max_subscriptions} per connection); "
                "unsubscribe from some, or open another connection"
            )

    def _add_sub(self, c: Client, sub: Sub) -> None:
        if c.closing:
            return
        c.subs.add(sub)
        self._reroute(c)

    def _reroute(self, c: Client) -> None:
        """Bring the routing tables in line with ``c.subs``."""
        new: set[Route] = set()
        if not c.closing:
            for kind, inst, tf in c.subs:
                if kind == "final":
                    continue
                if kind == "book":
                    new.add(("b", inst, str(tf)))
                    continue
                if kind != "trades":
                    if tf is None:
                        new.update(("c", inst, t) for t in self._collected())
                        new.add(("p", inst))
                    else:
                        new.add(("c", inst, tf))
                if kind != "candles":
                    new.add(("t", inst))
            for kind, inst, tf in c.subs:
                if kind == "final":  # unless every update of that series comes anyway
                    tfs = self._collected() if tf is None else (tf,)
                    new.update(("f", inst, t) for t in tfs if ("c", inst, t) not in new)
        for r in new - c.routes:
            self._route(r, c, add=True)
        for r in c.routes - new:
            self._route(r, c, add=False)
        c.routes = new

    def _route(self, r: Route, c: Client, *, add: bool) -> None:
        table: dict[str, tuple[Client, ...]]
        by_instrument = {"c": self._candle_routes, "f": self._final_routes, "b": self._book_routes}.get(r[0], {})
        if r[0] in ("c", "f", "b"):
            table = by_instrument.setdefault(r[1], {})
            key = r[2]
        else:
            table = self._price_routes if r[0] == "p" else self._trade_routes
            key = r[1]
        old = table.get(key, ())
        now = (*old, c) if add else tuple(x for x in old if x is not c)
        if now:
            table[key] = now
        else:
            table.pop(key, None)
        if r[0] in ("c", "f", "b") and not table:
            del by_instrument[r[1]]

    # --- order books ------------------------------------------------------------------------------

    def attach_books(self, books: Books) -> None:
        """Serve ``books``: every keeper's changes reach the clients subscribed to its book."""
        self._books = books
        for k in books.keepers.values():
            if self._book_event not in k.listeners:
                k.listeners.append(self._book_event)

    def detach_books(self) -> None:
        if self._books is not None:
            for k in self._books.keepers.values():
                with contextlib.suppress(ValueError):
                    k.listeners.remove(self._book_event)

    def check_book(self, name: str) -> str:
        """The canonical name of a kept book's instrument; :class:`BadInput` (a LookupError when
        well formed but without a book here) otherwise."""
        kept = [] if self._books is None else list(self._books.keepers)
        if not kept:
            raise UnknownName(f"no order books are kept here (books = [...] in the settings); {name!r} has none")
        return resolve(name, kept, aliases=self.aliases, default_venue=self.default_venue)

    def subscribe_book(self, c: Client, instrument: str, depth: int | None) -> int:
        """The book of ``instrument`` to ``depth`` levels (at most, and by default, its served depth):
        the ``subscribed`` reply and a snapshot now, then deltas; returns the depth."""
        assert self._books is not None  # check_book passed
        keeper = self._books.keepers[instrument]
        d = keeper.depth if depth is None else depth
        if not 1 <= d <= keeper.depth:
            raise BadInput(f"depth {d} for {instrument}: give 1 to {keeper.depth} (its book_depth)")
        sub: Sub = ("book", instrument, str(d))
        self._check_new_sub(c, sub)
        view = self._book_views.get((instrument, d))
        if view is None or str(d) not in self._book_routes.get(instrument, {}):
            view = self._book_views[(instrument, d)] = BookView(keeper, d)
            view.reset()
        self.send(c, Subscribed("subscribe_book", instrument, None, 1))
        self._push(c, view.snapshot())
        self._add_sub(c, sub)
        return d

    def unsubscribe_book(self, c: Client, instrument: str) -> None:
        subs = [s for s in c.subs if s[0] == "book" and s[1] == instrument]
        if not subs:
            raise BadInput(f"not subscribed to the {instrument} book; subscriptions: {self.describe(c) or 'none'}")
        c.subs.difference_update(subs)
        c.book_stale = {k for k in c.book_stale if k[0] != instrument}
        self._reroute(c)
        self.send(c, Unsubscribed("unsubscribe_book", instrument))

    def _book_event(self, ev: BookEvent) -> None:
        """A keeper's change: one frame per subscribed depth, to its clients."""
        by_depth = self._book_routes.get(ev.instrument)
        if by_depth is None:
            return
        for ds, clients in by_depth.items():
            view = self._book_views[(ev.instrument, int(ds))]
            if ev.kind == "delta":
                frame = view.delta()
                if frame is None:
                    continue
                self._book_fanout(clients, frame, view, False)
            else:  # a new snapshot, or the book went out of sync: everyone starts over
                self._book_fanout(clients, view.reset(), view, True)

    def _book_catch_up(self, c: Client) -> None:
        """``c`` has room again: a fresh snapshot of every book stream it was too slow for."""
        now = self._mono()
        for key in list(c.book_stale):
            view = self._book_views.get(key)
            if view is not None:
                c.queue.append(Entry(view.snapshot(), None, now))
                self.book_resnapshots += 1
        c.book_stale.clear()

    def _book_fanout(self, clients: tuple[Client, ...], frame: bytes, view: BookView, snapshot: bool) -> None:
        """Queue a book frame; a client whose queue is full skips the deltas from there on and gets a
        fresh snapshot once it has room again (never a delta stream with a hole)."""
        now = self._mono()
        qmax = self.queue_max
        key = view.key
        for c in clients:
            if c.closing:
                continue
            q = c.queue
            if key in c.book_stale:
                if len(q) < qmax // 2 or (snapshot and len(q) < qmax):
                    q.append(Entry(view.snapshot(), None, now))
                    c.book_stale.discard(key)
                    self.book_resnapshots += 1
                else:
                    self.dropped += 1
                    continue
            elif len(q) < qmax:
                q.append(Entry(frame, None, now))
            else:
                c.book_stale.add(key)
                self.dropped += 1
                continue
            if not (c.dirty or c.blocked):
                c.dirty = True
                self._dirty.append(c)
        if self._dirty and self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_soon(self._flush)

    # --- disconnecting --------------------------------------------------------------------------

    def disconnect(self, c: Client, code: int, reason: str) -> None:
        """Close ``c`` with ``code`` after what it was already sent; its queue is discarded."""
        self._kick(c, code, reason, slow=False)

    def _kick(self, c: Client, code: int, reason: str, *, slow: bool) -> None:
        """Have ``c``'s sender close it, and stop routing to it. Synchronous: safe in the hot loop.

        Taking ``c`` out of the routing tables costs O(subscribers) per route, so when called from
        inside the producer's call (many slow clients at once would cost milliseconds) it is left
        to the next loop iteration; until then ``c``'s queue may take messages nobody will send.
        """
        if c.closing:
            return
        c.closing = True
        c.close_code = code
        c.close_reason = reason
        if slow:
            c.slow = True
            self.disconnected_slow += 1
            self.dropped += len(c.queue)
        c.queue.clear()
        c.pending.clear()
        for f in (c.waiter, c.kill):
            if f is not None and not f.done():
                f.set_result(None)
        c.waiter = None
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(self._unroute, c)
        else:
            self._unroute(c)

    def _unroute(self, c: Client) -> None:
        self._reroute(c)  # c is closing: out of every route
        c.queue.clear()
        c.pending.clear()

    async def detach(self, c: Client) -> None:
        """The connection of ``c`` has ended (the endpoint's receive loop is over): forget it."""
        if not c.closing:
            c.gone = True  # the peer closed or vanished: no close frame to send
            self._kick(c, CLOSE_NORMAL, "", slow=False)
        try:
            task = c.task
            if task is not None and not task.done():
                _, late = await asyncio.wait((task,), timeout=CLOSE_WAIT_S)
                if late:
                    task.cancel()
        finally:
            self._clients.pop(c, None)

    # --- the sender -----------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the new messages of every client that got some since the last flush.

        Runs once per event-loop iteration in which the producer published (scheduled by
        :meth:`_fanout`), so everything published in one iteration goes out in one write per
        client, with no task switch per client. A client whose socket cannot take it all becomes
        ``blocked`` and its own sender task takes over until it has caught up.
        """
        self._flush_handle = None
        dirty, self._dirty = self._dirty, []
        for c in dirty:
            c.dirty = False
            sink = c.sink
            if c.closing or c.blocked or sink is None:
                continue
            try:
                self._write(c, sink)
            except Exception as exc:  # one client's broken socket must not stop the others' flush
                self._gone(c, exc)
                continue
            if c.queue or sink.paused:
                c.blocked = True
                w = c.waiter
                if w is not None and not w.done():
                    w.set_result(None)

    def _write(self, c: Client, sink: Sink) -> None:
        """Write up to BATCH_BYTES of ``c``'s queue to ``sink`` in one call."""
        q, pending = c.queue, c.pending
        parts: list[bytes] = []
        size = 0
        while q and size < BATCH_BYTES:
            e = q.popleft()
            key = e.key
            if key is not None and pending.get(key) is e:
                del pending[key]
            frame = e.frame
            parts.append(frame)
            size += len(frame)
        sink.write(parts[0] if len(parts) == 1 else b"".join(parts))
        c.sent += len(parts)
        self.delivered += len(parts)
        if c.book_stale and len(q) < self.queue_max // 2:
            self._book_catch_up(c)

    def _gone(self, c: Client, exc: BaseException) -> None:
        """``c``'s connection failed under a write: drop it without a close frame."""
        c.gone = True
        if isinstance(exc, (ConnectionError, RuntimeError)):
            log.debug("client %s went away: %s", c.name, exc)
        else:
            log.error("writing to client %s failed; dropping it", c.name, exc_info=exc)
        self._kick(c, CLOSE_NORMAL, "", slow=False)

    async def _pump(self, c: Client, sink: Sink) -> None:
        """``c``'s sender: idle while the flush keeps ``c`` up to date; while ``c`` is blocked, waits
        for its socket to drain and writes the rest of its queue; at the end, closes it."""
        loop = asyncio.get_running_loop()
        kill = c.kill
        assert kill is not None
        try:
            while not c.closing:
                if not c.blocked:
                    fut = c.waiter = loop.create_future()
                    await fut
                    c.waiter = None
                elif sink.paused:
                    # Wait for the socket to take what it has, or for a disconnect, whichever
                    # comes first; meanwhile the producer keeps queueing (and conflating).
                    drain = asyncio.ensure_future(sink.drain())
                    await asyncio.wait((drain, kill), return_when=asyncio.FIRST_COMPLETED)
                    if not drain.done():
                        drain.cancel()
                    else:
                        drain.result()
                elif c.queue:
                    self._write(c, sink)
                else:
                    c.blocked = False  # caught up: the flush takes over again
        except (ConnectionError, RuntimeError) as exc:
            self._gone(c, exc)
        if c.slow:  # logged here, not in _kick: the producer's call must stay cheap
            log.warning("disconnected slow client %s: %s", c.name, c.close_reason)
        if not c.gone:
            try:
                await sink.close(c.close_code, c.close_reason)
            except (ConnectionError, RuntimeError, TimeoutError) as exc:
                log.debug("closing client %s: %s", c.name, exc)

    # --- heartbeats, lag and shutdown -----------------------------------------------------------

    async def _tick(self) -> None:
        next_heartbeat = self._mono() + self.heartbeat_s
        while True:
            await asyncio.sleep(min(LAG_CHECK_S, self.heartbeat_s))
            now = self._mono()
            self.check_lag(now)
            if now >= next_heartbeat:
                next_heartbeat = max(next_heartbeat + self.heartbeat_s, now)
                self.heartbeat()

    def check_lag(self, now: float | None = None) -> None:
        """Disconnect every client whose oldest queued message has waited more than ``max_lag_s``."""
        now = self._mono() if now is None else now
        limit = self.max_lag_s
        for c in list(self._clients):
            q = c.queue
            if q and now - q[0].queued > limit:
                self._kick(
                    c,
                    CLOSE_POLICY,
                    f"too slow: {now - q[0].queued:.1f} s behind (limit {limit:g} s), "
                    f"{c.conflated} updates conflated; read faster or subscribe to less",
                    slow=True,
                )

    def heartbeat(self) -> None:
        """Queue one heartbeat for every client (the ticker calls this every ``heartbeat_s``)."""
        live = tuple(c for c in self._clients if not c.closing)
        if not live:
            return
        msg = HeartbeatMsg(None, self._clock.time_ms(), HeartbeatData(len(self._clients), list(self._instruments())))
        self._fanout(live, encode_frame(msg), _HEARTBEAT_KEY)

    async def close(self) -> None:
        """Close every client with code 1001 (server going away), for a shutdown of the endpoints.

        The hub stays usable: the producer may keep calling it (nobody listens), and clients of
        endpoints started again later are served as before.
        """
        self._closing = True
        try:
            await self._close_all()
        finally:
            self._closing = False

    async def _close_all(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        clients = list(self._clients)
        for c in clients:
            self._kick(c, CLOSE_GOING_AWAY, "server shutting down", slow=False)
        tasks = [c.task for c in clients if c.task is not None and not c.task.done()]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=2.0)
            for t in late:
                t.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)
