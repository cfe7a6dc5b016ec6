"""Lightstreamer (TLCP) sessions over WebSocket, and a pool of them that never exceeds a connection limit.

:class:`TlcpPool` packs items into as few :class:`TlcpSession`\\ s as possible (``items_per_session``
each) and holds a :class:`ConnectionGate`: a session takes a slot before it opens its WebSocket and gives
it back only once the socket is closed, so no more than ``max_connections`` sockets are ever open or
opening, reconnects included (a reconnecting session closes its old socket before it asks for a slot
again).

IG's limits, from its Streaming API Guide (net-labs.ig.com/streaming-api-guide.html): "by default, up to
40 simultaneous subscriptions per connection", and raising that "by connecting more than once" is a breach
of IG's terms. So for IG ``items_per_session=40`` is the venue's own limit, and more than one connection
per account needs IG's consent: give ``max_connections`` what the account is allowed, and ``strict=True``
to refuse items that do not fit rather than overfill a session (which IG would refuse item by item).

WebSocket library: aiohttp, not picows. TLCP needs the ``TLCP-2.5.0.lightstreamer.com`` subprotocol to
be negotiated, which aiohttp does (``protocols=``) and checks; it is also what the vendor's Python client
uses. IG throttles updates per item on the server, so this stream is far below the rates where picows'
lower per-frame cost matters (DESIGN.md: ~0.44 µs against ~1.5 µs a frame).

Semantics of one session:

- **Start**: ``wsok`` and ``create_session`` (user, password, ``LS_keepalive_millis``,
  ``LS_send_sync=false``, and ``LS_old_session`` after a drop so the server frees the old one at once);
  CONERR backs off and retries, asking for the password again (it may be a callable returning fresh
  IG tokens).
- **Subscriptions**: one per item (MARKET and CHART items have different schemas), sent in ``control``
  batches that respect CONOK's request limit. After a reconnect every item is subscribed again; a
  REQERR marks its item as refused (``failed``), and it is not retried on that session's later
  connections.
- **Liveness**: any line (PROBE included) is a sign of life; none for twice the keepalive CONOK
  granted drops the connection (``stale_drops``).
- **Protocol errors**: a malformed line that carried state (an update, a SUBOK, a CONOK: any kind not in
  :data:`~deltafeed.venues.ig.tlcp.STATELESS_KINDS`), an update that does not fit its item, or a SUBOK for
  another shape than the subscription asked, leaves the session's values wrong or unknown: the session is
  rebuilt, like after a drop (``drops["protocol error"]``). So is any exception raised while serving a
  line: a session never ends for what a server sends. Harmless malformed lines (``SUBCMD,1``: this
  client makes no COMMAND subscription) are counted by the decoder and skipped.
- **Reconnect**: after a drop, END, ERROR or a failed connect, by the :class:`~deltafeed.net.reconnect.Backoff`
  policy (exponential, full jitter, capped at ``backoff_cap_s``), through the shared
  :class:`~deltafeed.net.reconnect.ConnectBudget`; the backoff
  starts over once a connection stayed up ``stable_after_s``. LOOP rebinds the same session on a new
  socket (``bind_session``: subscriptions and values go on); if the bind is refused, a new session is
  created.
- **Callbacks** run in the event loop and must not raise (an exception rebuilds the session, and is
  logged with its traceback): ``on_update(item, fields)`` with the item's full current values by field name (MERGE's
  unchanged fields filled in, null as None); ``on_connect(session)`` after each CONOK, when its items are
  being (re)subscribed; ``on_disconnect(session, why)`` after each lost connection; ``on_lost(item,
  n)`` when the server says (``OV``) it dropped ``n`` updates of the item, so its data has a hole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from deltafeed.clock import LIVE, Clock
from deltafeed.model import BadInput
from deltafeed.net.reconnect import Backoff, ConnectBudget
from deltafeed.venues.ig import tlcp

log = logging.getLogger("deltafeed.tlcp")

Password = str | Callable[[], Awaitable[str]]
UpdateSink = Callable[[str, dict[str, str | None]], None]


class ConnectionGate:
    """At most ``limit`` connections open (or opening) at once; counts them.

    ``open`` is the number of sockets established now, ``max_open`` the most ever at once.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the connection limit must be at least 1")
        self.limit = limit
        self._sem = asyncio.Semaphore(limit)
        self.open = 0
        self.max_open = 0
        self.held = 0  # slots taken (connecting or connected)
        self.waits = 0

    async def acquire(self) -> None:
        if self._sem.locked():
            self.waits += 1
        await self._sem.acquire()
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._sem.release()

    def opened(self) -> None:
        self.open += 1
        self.max_open = max(self.max_open, self.open)

    def closed(self) -> None:
        self.open -= 1


@dataclass(slots=True)
class _Sub:
    """One item's subscription; ``sub_id`` and ``req_id`` belong to connection ``conn`` of the session."""

    item: str
    fields: tuple[str, ...]
    mode: str
    snapshot: bool
    data_adapter: str | None
    sub_id: int = 0
    req_id: int = 0
    conn: int = -1
    active: bool = False
    removed: bool = False
    failed: tuple[int, str] | None = None


class _Loop(Exception):
    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms


class _Dropped(Exception):
    """The connection ended; the message says why."""


class _Refused(_Dropped):
    """CONERR: the server refused the session."""


class _ProtocolError(_Dropped):
    """The server said something that leaves the session's state wrong or unknown (a malformed update
    or SUBOK, an update that does not fit its item, a SUBOK for another shape than asked): the session
    is rebuilt, and its items' hole is reported through ``on_disconnect``."""


#: The largest WebSocket message a session accepts. A snapshot of 40 items of a dozen fields is a few
#: tens of KiB; a larger message is not TLCP from a sane server, and reading it whole would let the
#: server decide how much memory the client takes. aiohttp fails such a message, which drops the connection.
MAX_MESSAGE_BYTES = 8 << 20
#: A LOOP asks for a rebind after its delay; a longer one than this is taken as this (a server cannot
#: park a session for hours).
MAX_LOOP_DELAY_MS = 30_000
#: The keepalive a CONOK may grant is kept within these bounds (ms), so the watchdog stays meaningful.
KEEPALIVE_BOUNDS_MS = (100, 120_000)


class TlcpSession:
    """One TLCP session on one WebSocket, kept alive and resubscribed; see the module docstring."""

    def __init__(
        self,
        url: str,
        user: str | None,
        password: Password,
        on_update: UpdateSink,
        *,
        on_connect: Callable[[TlcpSession], None] | None = None,
        on_disconnect: Callable[[TlcpSession, str], None] | None = None,
        on_lost: Callable[[str, int], None] | None = None,
        name: str = "tlcp",
        adapter_set: str | None = None,
        keepalive_ms: int = 5000,
        connect_timeout_s: float = 10.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        stable_after_s: float = 30.0,
        gate: ConnectionGate | None = None,
        budget: ConnectBudget | None = None,
        http: aiohttp.ClientSession | None = None,
        cid: str = tlcp.DEFAULT_CID,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = tlcp.ws_url(url)
        self.user = user
        self._password = password
        self.on_update = on_update
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_lost = on_lost
        self.name = name
        self.adapter_set = adapter_set
        self.keepalive_ms = keepalive_ms
        self.connect_timeout_s = connect_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_after_s = stable_after_s
        self.gate = gate or ConnectionGate(1)
        self.budget = budget or ConnectBudget(10, 1.0)
        self.clock: Clock = clock or LIVE
        self.backoff = Backoff(backoff_base_s, backoff_cap_s, stable_after_s, rng=rng, clock=self.clock)
        self.cid = cid
        self._http = http
        self._own_http = http is None
        self._subs: dict[str, _Sub] = {}  # item -> subscription, in subscription order
        self._by_sub: dict[int, _Sub] = {}
        self._by_req: dict[int, _Sub] = {}
        self._state = tlcp.ItemState()
        self._decoder = tlcp.LineDecoder()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ready = False
        self._conn = 0
        self._next_sub = 0
        self._next_req = 0
        self._request_limit = 50_000
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.session_id: str | None = None
        self.watchdog_s = keepalive_ms * 2 / 1000
        # counters
        self.attempts = 0
        self.connects = 0
        self.binds = 0
        self.updates = 0
        self.lost_updates = 0
        self.stale_drops = 0
        self.refused = 0
        self.conerr: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()  # bad_update, unknown_sub, no_subprotocol
        self.last_error = ""

    def __repr__(self) -> str:
        return f"<TlcpSession {self.name} {self.url} items={len(self._subs)} session={self.session_id or '-'}>"

    # --- items -------------------------------------------------------------------------------

    @property
    def items(self) -> list[str]:
        return list(self._subs)

    @property
    def failed(self) -> dict[str, tuple[int, str]]:
        """Items the server refused (REQERR), with its code and message."""
        return {s.item: s.failed for s in self._subs.values() if s.failed is not None}

    @property
    def connected(self) -> bool:
        return self._ready

    def __len__(self) -> int:
        return len(self._subs)

    async def subscribe(
        self,
        items: Iterable[str],
        fields: Sequence[str],
        mode: str = "MERGE",
        snapshot: bool = True,
        data_adapter: str | None = None,
    ) -> None:
        """Add ``items`` (one subscription each, all with ``fields``); sent now if connected, else on
        the next CONOK. Items already held are left as they are."""
        new = []
        for item in items:
            if item not in self._subs:
                sub = _Sub(item, tuple(fields), mode, snapshot, data_adapter)
                self._subs[item] = sub
                new.append(sub)
        if self._ready:
            await self._send_adds(new)

    async def unsubscribe(self, items: Iterable[str]) -> None:
        """Drop ``items``: a ``delete`` for each one active on this connection."""
        queries = []
        for item in items:
            sub = self._subs.pop(item, None)
            if sub is None:
                continue
            sub.removed = True
            if self._ready and sub.conn == self._conn and sub.failed is None:
                queries.append(tlcp.unsubscribe_params(self._req_id(), sub.sub_id))
        await self._send_control(queries)

    def _req_id(self) -> int:
        self._next_req += 1
        return self._next_req

    async def _send_adds(self, subs: Iterable[_Sub]) -> None:
        queries = []
        for sub in subs:
            if sub.conn == self._conn or sub.failed is not None or sub.removed:
                continue  # already sent on this connection, or refused
            self._next_sub += 1
            sub.sub_id, sub.req_id, sub.conn, sub.active = self._next_sub, self._req_id(), self._conn, False
            self._by_sub[sub.sub_id] = sub
            self._by_req[sub.req_id] = sub
            queries.append(
                tlcp.subscribe_params(
                    sub.req_id,
                    sub.sub_id,
                    sub.mode,
                    (sub.item,),
                    sub.fields,
                    snapshot=sub.snapshot,
                    data_adapter=sub.data_adapter,
                )
            )
        await self._send_control(queries)

    async def _send_control(self, queries: Sequence[str]) -> None:
        ws = self._ws
        if not queries or ws is None:
            return
        for msg in tlcp.control_batches(queries, self._request_limit):
            with contextlib.suppress(ConnectionError, RuntimeError):  # closing: the reconnect resubscribes
                await ws.send_str(msg)

    # --- running -----------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self.run(), name=f"tlcp-{self.name}")
            self._task.add_done_callback(self._task_done)
        return self._task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: the session stopped: %r", self.name, task.exception())

    async def _get_password(self) -> str:
        p = self._password
        return p if isinstance(p, str) else await p()

    async def run(self) -> None:
        """Connect, and reconnect after every drop, until :meth:`close`."""
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        backoff = self.backoff
        bind: str | None = None
        delay = 0.0
        try:
            while not self._stopping:
                if delay > 0:
                    await backoff.sleep(delay)
                password: str | None = None
                if bind is None:
                    try:  # before taking a connection slot: fetching fresh tokens may take a while
                        password = await self._get_password()
                    except Exception as exc:  # a REST login that failed: retry later, never stop streaming
                        delay = backoff.failed()
                        self.drops["no password"] += 1
                        log.warning(
                            "%s: cannot get the password (%s); retrying in %.2f s", self.name, type(exc).__name__, delay
                        )
                        continue
                    await self.budget.acquire()
                await self.gate.acquire()
                backoff.connected()  # a connection that stays up stable_after_s resets the backoff
                why = ""
                try:
                    if self._stopping:
                        break
                    await self._connection(bind, password)
                    why = "closed"
                except _Loop as lp:
                    why = "loop"
                    delay = min(max(lp.delay_ms, 0), MAX_LOOP_DELAY_MS) / 1000
                except _ProtocolError as exc:
                    why = f"protocol error: {exc}"
                    self.errors["protocol_error"] += 1
                    self.last_error = f"{self.name}: {why[:200]}"
                except _Dropped as exc:
                    why = str(exc)
                except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
                    why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                except Exception as exc:  # never end streaming: rebuild the session (see the module docstring)
                    why = f"protocol error: {type(exc).__name__}: {exc}"
                    self.errors["protocol_error"] += 1
                    self.last_error = f"{self.name}: {why[:200]}"
                    log.exception("%s: unexpected error while serving the session; rebuilding it", self.name)
                finally:
                    was_up = self._ready
                    await self._close_ws()
                    self.gate.release()
                if self._stopping:
                    break
                if why == "loop":
                    bind = self.session_id
                    continue
                bind = None
                self.drops[why.split(":")[0][:40]] += 1
                if was_up and self.on_disconnect is not None:
                    self.on_disconnect(self, why)
                delay = backoff.dropped()
                log.warning("%s: %s; reconnecting in %.2f s", self.name, why, delay)
        finally:
            if self._own_http and self._http is not None:
                await self._http.close()
                self._http = None

    async def _connection(self, bind: str | None, password: str | None) -> None:
        """One WebSocket: open, create (or bind) the session, serve lines until it ends (raises why)."""
        assert self._http is not None
        self.attempts += 1
        ws = await asyncio.wait_for(
            self._http.ws_connect(
                self.url,
                protocols=(tlcp.PROTOCOL,),
                autoping=True,
                max_msg_size=MAX_MESSAGE_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            ),
            self.connect_timeout_s,
        )
        self._ws = ws
        self.gate.opened()
        if ws.protocol != tlcp.PROTOCOL:
            self.errors["no_subprotocol"] += 1
            self.last_error = f"the server did not select the {tlcp.PROTOCOL} subprotocol ({ws.protocol!r})"
        await ws.send_str(tlcp.wsok())
        if bind is not None:
            await ws.send_str(tlcp.bind_session(bind, keepalive_ms=self.keepalive_ms, cause="loop"))
        else:
            await ws.send_str(
                tlcp.create_session(
                    self.user,
                    password,
                    cid=self.cid,
                    adapter_set=self.adapter_set,
                    keepalive_ms=self.keepalive_ms,
                    old_session=self.session_id,
                )
            )
        timeout = self.connect_timeout_s
        while True:
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                if not self._ready:
                    raise _Dropped(f"no CONOK within {timeout:.1f} s") from None
                self.stale_drops += 1
                raise _Dropped(f"stale: no line for {timeout:.1f} s") from None
            if msg.type == aiohttp.WSMsgType.TEXT:
                for ev in self._decoder.feed(msg.data):
                    self._handle(ev)
                    if type(ev) is tlcp.Conok:
                        timeout = self.watchdog_s
                        await self._on_conok(ev, bind)
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                raise _Dropped(f"closed by the server (code {ws.close_code})")
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise _Dropped(f"WebSocket error: {ws.exception()!r}")

    async def _on_conok(self, ev: tlcp.Conok, bind: str | None) -> None:
        self._request_limit = ev.request_limit
        low, high = KEEPALIVE_BOUNDS_MS
        self.watchdog_s = min(max(ev.keepalive_ms, low), high) * 2 / 1000
        rebound = bind is not None and ev.session_id == bind
        self.session_id = ev.session_id
        self._ready = True
        if rebound:
            self.binds += 1
            return  # same session: subscriptions and values go on
        self.connects += 1
        self._conn += 1
        self._by_sub.clear()
        self._by_req.clear()
        self._state = tlcp.ItemState()
        self._next_sub = 0
        for sub in self._subs.values():
            sub.active = False
        if self.on_connect is not None:
            self.on_connect(self)
        await self._send_adds(list(self._subs.values()))

    def _handle(self, ev: tlcp.Event) -> None:
        if type(ev) is tlcp.Update:  # the hot path
            sub = self._by_sub.get(ev.sub_id)
            if sub is None or sub.removed:
                self.errors["unknown_sub"] += 1  # an update racing an unsubscribe or a refusal
                return
            try:
                values = self._state.apply(ev)
            except tlcp.BadUpdate as exc:
                # Not applied, so the item's values (MERGE: the next update's unchanged fields) are wrong.
                self.errors["bad_update"] += 1
                raise _ProtocolError(str(exc)) from None
            self.updates += 1
            self.on_update(sub.item, dict(zip(sub.fields, values, strict=False)))
        elif isinstance(ev, tlcp.Malformed):
            if ev.kind not in tlcp.STATELESS_KINDS:
                raise _ProtocolError(ev.reason)
        elif isinstance(ev, tlcp.Subok):
            sub = self._by_sub.get(ev.sub_id)
            if sub is None or sub.removed:
                self.errors["unknown_sub"] += 1  # a SUBOK racing an unsubscribe, or for no request of ours
                return
            if (ev.num_items, ev.num_fields) != (1, len(sub.fields)):
                raise _ProtocolError(
                    f"SUBOK of {sub.item} for {ev.num_items} items of {ev.num_fields} fields; "
                    f"1 item of {len(sub.fields)} fields was asked"
                )
            self._state.open(ev.sub_id, ev.num_items, ev.num_fields)
            sub.active = True
        elif isinstance(ev, tlcp.Subcmd):
            self.errors["unexpected_subcmd"] += 1  # this client makes no COMMAND-mode subscription
        elif isinstance(ev, tlcp.Overflow):
            self.lost_updates += ev.lost
            sub = self._by_sub.get(ev.sub_id)
            log.warning("%s: the server dropped %d updates of %s", self.name, ev.lost, sub.item if sub else ev.sub_id)
            if sub is not None and self.on_lost is not None:
                self.on_lost(sub.item, ev.lost)
        elif isinstance(ev, tlcp.ClearSnapshot):
            self._state.clear(ev.sub_id, ev.item)
        elif isinstance(ev, tlcp.Unsub):
            self._state.close(ev.sub_id)
            self._by_sub.pop(ev.sub_id, None)
        elif isinstance(ev, tlcp.Reqerr):
            sub = self._by_req.get(ev.req_id)
            self.refused += 1
            if sub is not None:
                sub.failed = (ev.code, ev.message)
                self._by_sub.pop(sub.sub_id, None)
            log.warning(
                "%s: request %d (%s) refused: %d %s",
                self.name,
                ev.req_id,
                sub.item if sub else "?",
                ev.code,
                ev.message,
            )
        elif isinstance(ev, tlcp.Conerr):
            self.conerr[str(ev.code)] += 1
            raise _Refused(f"CONERR {ev.code}: {ev.message}")
        elif isinstance(ev, tlcp.End):
            raise _Dropped(f"END {ev.code}: {ev.message}")
        elif isinstance(ev, tlcp.Error):
            raise _Dropped(f"ERROR {ev.code}: {ev.message}")
        elif isinstance(ev, tlcp.Loop):
            raise _Loop(ev.delay_ms)

    async def _close_ws(self) -> None:
        ws, self._ws = self._ws, None
        self._ready = False
        if ws is None:
            return
        if not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 2.0)
        self.gate.closed()

    async def close(self) -> None:
        """End the session: ``destroy`` (frees the server's connection slot at once), close the socket."""
        self._stopping = True
        ws = self._ws
        if ws is not None and self._ready and not ws.closed:
            with contextlib.suppress(Exception):
                await ws.send_str(tlcp.control(tlcp.destroy_params(self._req_id())))
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif self._ws is not None:
            await self._close_ws()

    @property
    def decoder(self) -> tlcp.LineDecoder:
        return self._decoder

    @property
    def stats(self) -> dict[str, int]:
        return {
            "attempts": self.attempts,
            "connects": self.connects,
            "binds": self.binds,
            "updates": self.updates,
            "lost_updates": self.lost_updates,
            "stale_drops": self.stale_drops,
            "refused": self.refused,
            "conerr": sum(self.conerr.values()),
            "drops": sum(self.drops.values()),
            "bad_lines": sum(self._decoder.errors.values()),
            "unknown_lines": sum(self._decoder.unknown.values()),
            **{k: v for k, v in self.errors.items()},
        }


class PoolFull(BadInput):
    """More items than ``max_connections`` sessions of ``items_per_session`` items can hold (``strict``)."""


class TlcpPool:
    """Items spread over as few TLCP sessions as possible, never more than ``max_connections`` sockets.

    ``items_per_session`` is how many items a session takes before the pool opens another. Once
    ``max_connections`` sessions exist, further items go to the least loaded session beyond that
    count (``over_capacity`` counts them, and a warning says so once): the connection limit is never
    broken, the item count per session is. With ``strict=True`` :meth:`subscribe` raises
    :class:`PoolFull` instead, before subscribing any of the items. Sessions left without items are
    closed; items are never moved between sessions (a move would open a gap in their stream).
    """

    def __init__(
        self,
        url: str,
        user: str | None,
        password: Password,
        *,
        max_connections: int = 40,
        items_per_session: int = 40,
        on_update: UpdateSink,
        on_connect: Callable[[TlcpSession], None] | None = None,
        on_disconnect: Callable[[TlcpSession, str], None] | None = None,
        on_lost: Callable[[str, int], None] | None = None,
        adapter_set: str | None = None,
        keepalive_ms: int = 5000,
        budget: ConnectBudget | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        stable_after_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        name: str = "ig",
        strict: bool = False,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if items_per_session < 1:
            raise ValueError("items_per_session must be at least 1")
        self.url = url
        self.user = user
        self._password = password
        self.max_connections = max_connections
        self.items_per_session = items_per_session
        self.on_update = on_update
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.on_lost = on_lost
        self.gate = ConnectionGate(max_connections)
        self.budget = budget or ConnectBudget(10, 1.0)
        self.clock = clock  # handed to every session's reconnect policy (None: the live clock)
        self.rng = rng
        self.adapter_set = adapter_set
        self.keepalive_ms = keepalive_ms
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.stable_after_s = stable_after_s
        self.connect_timeout_s = connect_timeout_s
        self.name = name
        self.strict = strict
        self.sessions: list[TlcpSession] = []
        self._where: dict[str, TlcpSession] = {}
        self._http: aiohttp.ClientSession | None = None
        self._made = 0
        self.over_capacity = 0
        self._warned = False

    def __repr__(self) -> str:
        return f"<TlcpPool {self.name} sessions={len(self.sessions)} items={len(self._where)}>"

    def _new_session(self) -> TlcpSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self._made += 1
        s = TlcpSession(
            self.url,
            self.user,
            self._password,
            self.on_update,
            on_connect=self.on_connect,
            on_disconnect=self.on_disconnect,
            on_lost=self.on_lost,
            name=f"{self.name}-{self._made}",
            gate=self.gate,
            budget=self.budget,
            http=self._http,
            adapter_set=self.adapter_set,
            keepalive_ms=self.keepalive_ms,
            backoff_base_s=self.backoff_base_s,
            backoff_cap_s=self.backoff_cap_s,
            stable_after_s=self.stable_after_s,
            connect_timeout_s=self.connect_timeout_s,
            clock=self.clock,
            rng=self.rng,
        )
        self.sessions.append(s)
        s.start()
        return s

    def _place(self, pending: Counter[int]) -> TlcpSession:
        """The session for one more item; ``pending`` counts items placed but not yet handed over."""
        for s in self.sessions:  # oldest first: fills sessions before opening one
            if len(s) + pending[id(s)] < self.items_per_session:
                return s
        if len(self.sessions) < self.max_connections:
            return self._new_session()
        self.over_capacity += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: %d sessions of %d items are full; more items go to the least loaded session "
                "(raise items_per_session, or subscribe fewer items)",
                self.name,
                self.max_connections,
                self.items_per_session,
            )
        return min(self.sessions, key=lambda s: len(s) + pending[id(s)])

    async def subscribe(
        self,
        items: Iterable[str],
        fields: Sequence[str],
        mode: str = "MERGE",
        snapshot: bool = True,
        data_adapter: str | None = None,
    ) -> None:
        """Subscribe ``items`` (each its own subscription with ``fields``); items already held are kept."""
        new = [item for item in dict.fromkeys(items) if item not in self._where]
        if self.strict:
            free = sum(max(0, self.items_per_session - len(s)) for s in self.sessions)
            free += (self.max_connections - len(self.sessions)) * self.items_per_session
            if len(new) > free:
                raise PoolFull(
                    f"{len(new)} items do not fit: {free} places are left in {self.max_connections} "
                    f"connections of {self.items_per_session} items"
                )
        pending: Counter[int] = Counter()
        batches: dict[int, tuple[TlcpSession, list[str]]] = {}
        for item in new:
            s = self._place(pending)
            pending[id(s)] += 1
            self._where[item] = s
            batches.setdefault(id(s), (s, []))[1].append(item)
        for s, names in batches.values():
            await s.subscribe(names, fields, mode, snapshot, data_adapter)

    async def unsubscribe(self, items: Iterable[str]) -> None:
        """Unsubscribe ``items``; a session left empty is closed."""
        by_session: dict[int, tuple[TlcpSession, list[str]]] = {}
        for item in items:
            s = self._where.pop(item, None)
            if s is not None:
                by_session.setdefault(id(s), (s, []))[1].append(item)
        for s, names in by_session.values():
            await s.unsubscribe(names)
            if not len(s):
                self.sessions.remove(s)
                await s.close()

    @property
    def items(self) -> list[str]:
        return list(self._where)

    def session_of(self, item: str) -> TlcpSession | None:
        return self._where.get(item)

    @property
    def failed(self) -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for s in self.sessions:
            out.update(s.failed)
        return out

    @property
    def skipped_lines(self) -> Counter[str]:
        """Server lines the sessions' decoders skipped as malformed, by kind (``tlcp_SUBCMD``), and the
        protocol errors that rebuilt a session (``tlcp_protocol_error``), for the feed's status."""
        out: Counter[str] = Counter()
        for s in self.sessions:
            for kind, n in s.decoder.errors.items():
                out[f"tlcp_{kind}"] += n
            if s.errors["protocol_error"]:
                out["tlcp_protocol_error"] += s.errors["protocol_error"]
        return out

    @property
    def stats(self) -> Mapping[str, int]:
        total: Counter[str] = Counter()
        for s in self.sessions:
            total.update(s.stats)
        return {
            **total,
            "sessions": len(self.sessions),
            "connected": sum(s.connected for s in self.sessions),
            "open_connections": self.gate.open,
            "max_open_connections": self.gate.max_open,
            "gate_waits": self.gate.waits,
            "over_capacity": self.over_capacity,
            "items": len(self._where),
        }

    async def close(self) -> None:
        sessions, self.sessions = self.sessions, []
        self._where.clear()
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
