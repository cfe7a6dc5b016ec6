"""Binance's order books: the documented local-book recipe over ``<symbol>@depth@100ms`` and ``GET /api/v3/depth``.

Per symbol (web-socket-streams.md, "How to manage a local order book correctly"), :class:`DepthSync`:

1. buffer the stream's diff events (``U`` first and ``u`` last update id of each);
2. fetch a snapshot (``lastUpdateId``, the book up to that update); drop buffered events with
   ``u <= lastUpdateId``; if the first one left has ``U > lastUpdateId + 1`` the snapshot is older
   than the stream (stale): fetch again;
3. the first event applied has ``U <= lastUpdateId + 1 <= u``, each next one ``U`` = the previous
   ``u`` + 1. An event with ``u <=`` the previous ``u`` is an old copy (a duplicate) and is skipped;
   any other break is a gap: that symbol alone goes out of sync, buffers again and refetches.

The keeper's ``venue_seq`` is the ``u`` of the last applied event (``lastUpdateId`` after a
snapshot): the replica's book tape key. :class:`BinanceBookFeed` carries the book symbols on
combined-stream connections, as many as the candle feed's URL limit needs (a drop resyncs that
connection's books: ``disconnect``), fetches snapshots as needed, and skips and counts a malformed
frame, never ending the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from typing import Any

import msgspec

from deltafeed.books import BookKeeper
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import WsStream
from deltafeed.venues.base import SharedLimits, SkipLog
from deltafeed.venues.binance import BinanceSettings
from deltafeed.venues.binance import codec as binance
from deltafeed.venues.binance.feed import MAX_URL_BYTES
from deltafeed.venues.binance.rest import BinanceHistory
from deltafeed.venues.bookmsg import levels_ok

log = logging.getLogger("deltafeed.binance.books")

#: Diff events buffered per symbol while its snapshot is fetched (older ones are dropped: the
#: snapshot that follows is newer than them anyway).
MAX_BUFFER = 1000
#: How long a resync waits for a first buffered event before it fetches the snapshot anyway.
FIRST_EVENT_WAIT_S = 2.0
#: Pause between failed snapshot fetches.
RETRY_S = 1.0


def snapshot_limit(keep: int) -> int:
    """The ``limit`` of ``GET /api/v3/depth`` that covers ``keep`` levels (Binance takes up to 5000)."""
    return next(n for n in (100, 500, 1000, 5000) if n >= keep) if keep <= 5000 else 5000


class Diff(msgspec.Struct):
    """A ``depthUpdate`` event: update ids ``U..u``, changed bids and asks (size 0 removes)."""

    E: int
    s: str
    U: int
    u: int
    b: list[tuple[float, float]]
    a: list[tuple[float, float]]


class _Combined(msgspec.Struct):
    stream: str
    data: Diff


class Snapshot(msgspec.Struct):
    lastUpdateId: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]


_diff = msgspec.json.Decoder(_Combined, strict=False)  # strict=False: "123.4" -> 123.4
_snapshot = msgspec.json.Decoder(Snapshot, strict=False)


class DepthSync:
    """One symbol's side of the recipe (see the module docstring), sans I/O: feed it events and snapshots."""

    def __init__(self, keeper: BookKeeper) -> None:
        self.keeper = keeper
        self.buffer: list[Diff] = []
        self.last_u: int | None = None  # None: out of sync (buffering)
        self._first = False  # the next event is the first after a snapshot
        self.old = 0  # events skipped as old copies
        self.event = asyncio.Event()  # set when an event is buffered

    @property
    def synced(self) -> bool:
        return self.last_u is not None

    def on_diff(self, d: Diff) -> None:
        last = self.last_u
        if last is None:
            self.buffer.append(d)
            if len(self.buffer) > MAX_BUFFER:
                del self.buffer[0]
            self.event.set()
            return
        if d.u <= last:
            self.old += 1
            return
        if (last + 1 >= d.U) if self._first else (last + 1 == d.U):
            self._first = False
            self.last_u = d.u
            self.keeper.apply(d.b, d.a, d.u, d.E)
            return
        self.lose("gap", f"U {d.U} after u {last}")
        self.on_diff(d)

    def lose(self, kind: str, detail: str = "") -> None:
        """Out of sync (``kind``: gap, stale_snapshot, disconnect): buffer again until a snapshot."""
        self.keeper.lost(kind, detail)
        self.last_u = None
        self.buffer = []
        self.event.clear()

    def on_snapshot(self, snap: Snapshot, time_ms: int) -> bool:
        """Apply a snapshot and the buffered events after it; False when it is stale (fetch again)."""
        lid = snap.lastUpdateId
        buf = [d for d in self.buffer if d.u > lid]
        if buf and lid + 1 < buf[0].U:
            self.keeper.lost("stale_snapshot", f"lastUpdateId {lid} before the buffered U {buf[0].U}")
            self.buffer = buf
            return False
        self.buffer = []
        self.keeper.snapshot(snap.bids, snap.asks, lid, time_ms)
        self.last_u, self._first = lid, True
        for d in buf:
            self.on_diff(d)
        return True


class BinanceBookFeed(SharedLimits):
    """The order books of some Binance symbols (``keepers``: symbol -> keeper), see the module docstring."""

    def __init__(self, vs: BinanceSettings, keepers: dict[str, BookKeeper], stale_after_s: float = 10.0) -> None:
        self.rest_url = vs.rest_url or binance.DEFAULT_REST_URL
        self.ws_url = vs.ws_url or binance.DEFAULT_WS_URL
        self.syncs = {sym: DepthSync(k) for sym, k in keepers.items()}
        self.limit = {sym: snapshot_limit(k.book.max_levels) for sym, k in keepers.items()}
        self.history = BinanceHistory(self.rest_url, vs.weight_limit)
        self.budget = budget = ConnectBudget(300, 300.0)
        #: One connection per group of symbols whose combined-stream URL stays within MAX_URL_BYTES.
        self.links: list[tuple[list[str], WsStream]] = []
        for i, group in enumerate(_groups(self.ws_url, list(self.syncs))):
            ws = WsStream(
                functools.partial(self._url, group),
                self._on_frame,
                on_connect=functools.partial(self._on_connect, group),
                name="binance-books" + (f"#{i}" if i else ""),
                stale_after_s=stale_after_s,
                budget=budget,
            )
            self.links.append((group, ws))
        self.link_of = {sym: ws for group, ws in self.links for sym in group}
        self.errors: Counter[str] = Counter()
        self._skips = SkipLog(log, "book frames")
        self._wake = asyncio.Event()
        self.snapshots = 0

    def _url(self, group: list[str]) -> str:
        return binance.combined_url(self.ws_url, [_stream(s) for s in group])

    def _on_connect(self, group: list[str], ws: WsStream) -> None:
        for sync in (self.syncs[s] for s in group):
            if sync.synced:
                sync.lose("disconnect", "the connection was replaced")
            else:
                sync.buffer = []  # events of the old connection say nothing about this one
        self._wake.set()

    def _on_frame(self, frame: bytes | memoryview) -> None:
        try:
            d = _diff.decode(frame).data
        except (msgspec.DecodeError, msgspec.ValidationError):
            if bytes(frame[:1]) == b"{" and b'"result"' in bytes(frame):
                return  # an answer to a control message
            self.errors["malformed"] += 1
            self._skips.report(self.errors, bytes(frame[:120]).decode("utf-8", "replace"))
            return
        sync = self.syncs.get(d.s)
        if sync is None:
            self.errors["unknown_symbol"] += 1
            return
        if not (levels_ok(d.b) and levels_ok(d.a)):  # NaN, 0 or negative: skipped; the next event shows the gap
            self.errors["bad_level"] += 1
            self._skips.report(self.errors, bytes(frame[:120]).decode("utf-8", "replace"))
            return
        was = sync.synced
        sync.on_diff(d)
        if was and not sync.synced:
            self._wake.set()

    async def run(self) -> None:
        """Stream and resync until cancelled: one task per symbol fetching its snapshot when out of sync."""
        ws_tasks = [asyncio.create_task(ws.run(), name=f"{ws.name}-ws") for _, ws in self.links]
        fetching: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                self._wake.clear()
                for sym, sync in self.syncs.items():
                    t = fetching.get(sym)
                    if not sync.synced and (t is None or t.done()) and self.link_of[sym].connected.is_set():
                        fetching[sym] = asyncio.create_task(self._resync(sym), name=f"binance-book-{sym}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 0.5)
        finally:
            for t in [*ws_tasks, *fetching.values()]:
                t.cancel()
            for t in [*ws_tasks, *fetching.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await asyncio.gather(*(ws.close() for _, ws in self.links))
            await self.history.close()

    async def _resync(self, sym: str) -> None:
        sync = self.syncs[sym]
        while not sync.synced:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sync.event.wait(), FIRST_EVENT_WAIT_S)
            limit = self.limit[sym]
            try:
                body = await self.history.http.get(f"/api/v3/depth?symbol={sym}&limit={limit}", weight=_weight(limit))
                snap = _snapshot.decode(body)
                if not (levels_ok(snap.bids) and levels_ok(snap.asks)):
                    raise msgspec.ValidationError("a level with an impossible price or size")
            except (VenueError, VenueUnreachable, msgspec.DecodeError, msgspec.ValidationError) as exc:
                self.errors["snapshot_failed"] += 1
                log.debug("binance %s book snapshot failed: %s", sym, exc)
                await asyncio.sleep(RETRY_S)
                continue
            self.snapshots += 1
            if not sync.synced and not sync.on_snapshot(snap, int(time.time() * 1000)):
                await asyncio.sleep(0.1)

    def status(self) -> dict[str, Any]:
        return {
            "connections": len(self.links),
            "connected": all(ws.connected.is_set() for _, ws in self.links),
            "connects": sum(ws.connects for _, ws in self.links),
            "snapshots": self.snapshots,
            "old_events": sum(s.old for s in self.syncs.values()),
            "errors": dict(self.errors),
        }


def _stream(symbol: str) -> str:
    return f"{symbol.lower()}@depth@100ms"


def _groups(ws_url: str, symbols: list[str]) -> list[list[str]]:
    """``symbols`` split so that each group's combined-stream URL stays within the candle feed's
    :data:`~deltafeed.venues.binance.feed.MAX_URL_BYTES` (and Binance's streams per connection)."""
    base = len(binance.combined_url(ws_url, []))
    groups: list[list[str]] = [[]]
    size = base
    for sym in symbols:
        add = len(_stream(sym)) + 1
        if groups[-1] and (size + add > MAX_URL_BYTES or len(groups[-1]) >= binance.MAX_STREAMS_PER_CONNECTION):
            groups.append([])
            size = base
        groups[-1].append(sym)
        size += add
    return groups


def _weight(limit: int) -> int:
    """``GET /api/v3/depth``'s request weight for ``limit`` (rest-api.md)."""
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250
