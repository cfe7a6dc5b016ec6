"""What every WebSocket-only book feed shares: its connections, (re)subscription and per-instrument resync.

A venue whose books come over its WebSocket alone (Bybit, Coinbase, Kraken, Hyperliquid) subclasses
:class:`WsBookFeed` in ``venues/<name>/book.py`` with its codec and its sequencing rule:
:meth:`WsBookFeed.url`, :meth:`WsBookFeed.subscribe` and :meth:`WsBookFeed.on_frame`, the last of
which calls the keeper (``snapshot`` / ``apply``) for what continues a book and :meth:`WsBookFeed.resync`
for what breaks it. The base does the rest, the same way for every venue:

- one connection per *group* (a URL: Bybit has one per category), kept open by
  :class:`~deltafeed.net.ws.WsStream` (watchdog, backoff, budget);
- on every (re)connection each book of the group is out of sync (``disconnect``) until its venue
  sends a new snapshot, and the group's books are subscribed (after :meth:`WsBookFeed.on_open`'s
  messages, such as a heartbeat subscription);
- each keeper keeps as many levels as the venue's stream maintains (:meth:`WsBookFeed.levels_kept`),
  no fewer (a full-book stream never resends a level that a shorter book dropped) and, for a venue
  whose clients truncate (Kraken), no more;
- :meth:`WsBookFeed.resync` marks one instrument out of sync (counted per kind by its keeper) and
  re-subscribes that instrument alone, which makes the venue send a fresh snapshot; the other books
  of the connection keep streaming. A resync is re-sent at most every ``RESUBSCRIBE_S``; while no
  snapshot comes, the subscription is sent again after 2 s, then twice as long each time (at most
  ``RETRY_CAP_S``), so a venue that refuses it is not hammered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import WsStream
from deltafeed.venues.base import SharedLimits

if TYPE_CHECKING:
    from deltafeed.books import BookKeeper
    from deltafeed.venues.bookmsg import BookMsg

RESUBSCRIBE_S = 0.5  # a book still waiting for its snapshot is re-subscribed again after this long
BACKOFF_CAP_S = 5.0
RETRY_CAP_S = 60.0  # the longest wait between re-sent subscriptions of a book that gets no snapshot


class WsBookFeed(SharedLimits):
    """Books of ``keepers`` (venue symbol -> keeper) over one WebSocket per group (``groups``: group ->
    its symbols); see the module docstring. ``name`` names the venue in logs and task names."""

    name = "venue"

    def __init__(
        self,
        keepers: Mapping[str, BookKeeper],
        groups: Mapping[str, list[str]],
        *,
        stale_after_s: float = 10.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.keepers = dict(keepers)
        for sym, k in self.keepers.items():
            k.book.max_levels = self.levels_kept(sym)
        self.groups = {g: list(syms) for g, syms in groups.items()}
        self.group_of = {s: g for g, syms in self.groups.items() for s in syms}
        self.log = log or logging.getLogger(f"deltafeed.{self.name}.books")
        self.streams: dict[str, WsStream] = {}
        self.budget = budget = ConnectBudget(300, 300.0)
        for g in self.groups:
            self.streams[g] = WsStream(
                lambda g=g: self.url(g),  # type: ignore[misc]
                lambda frame, g=g: self.on_frame(g, frame),  # type: ignore[misc]
                on_connect=lambda ws, g=g: self._on_connect(g, ws),  # type: ignore[misc]
                name=f"{self.name}-books-{g}",
                stale_after_s=stale_after_s,
                backoff_cap_s=BACKOFF_CAP_S,
                budget=budget,
            )
        #: Instruments waiting for a snapshot since a resync, with when their subscription was sent.
        self.waiting: dict[str, float] = {}
        #: Book messages not applied, by why (``duplicate``, ``before_snapshot``, ...).
        self.ignored: Counter[str] = Counter()
        self.resubscribes = 0
        self._retry_s: dict[str, float] = {}  # symbol -> the wait before its subscription is sent again
        #: What the venue refused (a subscription), by its own words.
        self.refusals: Counter[str] = Counter()

    # -- what a venue provides --

    def url(self, group: str) -> str:
        raise NotImplementedError

    def subscribe(self, group: str, symbols: list[str], on: bool) -> list[bytes]:
        """The messages that subscribe (``on``) or unsubscribe the books of ``symbols``."""
        raise NotImplementedError

    def on_frame(self, group: str, frame: bytes | memoryview) -> None:
        raise NotImplementedError

    def levels_kept(self, symbol: str) -> int:
        """Levels per side the keeper of ``symbol`` keeps: what the venue's stream maintains."""
        return self.keepers[symbol].book.max_levels

    def on_open(self, group: str) -> list[bytes]:
        """Messages to send on every (re)connection of ``group`` before the books' subscriptions."""
        return []

    def forget(self, symbol: str) -> None:
        """Drop the rule's state of ``symbol`` (its book is being resynchronised); override as needed."""

    def counters(self) -> dict[str, Any]:
        """The venue's own counters for :meth:`status` (its decoder's skips, ...)."""
        return {}

    # -- the shared part --

    def _send(self, group: str, msgs: list[bytes]) -> None:
        ws = self.streams[group]
        for m in msgs:
            ws.send(m)

    def _on_connect(self, group: str, ws: WsStream) -> None:
        syms = self.groups[group]
        now = ws.clock.monotonic()
        for s in syms:
            k = self.keepers[s]
            if k.in_sync:
                k.lost("disconnect", "the connection was re-established")
            self.forget(s)
            self.waiting[s] = now
        self._send(group, self.on_open(group) + self.subscribe(group, syms, True))

    def resync(self, symbol: str, kind: str, detail: str = "") -> None:
        """``symbol``'s book broke (``kind``): out of sync until the venue's next snapshot, which a
        re-subscription of this instrument alone asks for."""
        self.keepers[symbol].lost(kind, detail)
        self.forget(symbol)
        group = self.group_of[symbol]
        ws = self.streams[group]
        now = ws.clock.monotonic()
        last = self.waiting.get(symbol)
        self.waiting[symbol] = now if last is None or now - last >= RESUBSCRIBE_S else last
        if (last is None or now - last >= RESUBSCRIBE_S) and ws.connected.is_set():
            self.resubscribes += 1
            self._send(group, self.subscribe(group, [symbol], False) + self.subscribe(group, [symbol], True))

    def refused(self, text: str) -> None:
        """The venue refused a request (a book subscription): one error line per distinct answer."""
        text = text[:200]
        if not self.refusals[text]:
            self.log.error("%s refused a book request: %s (those books stay out of sync)", self.name, text)
        self.refusals[text] += 1

    def synced(self, symbol: str) -> None:
        """``symbol`` took a snapshot: no longer waiting."""
        self.waiting.pop(symbol, None)
        self._retry_s.pop(symbol, None)

    def snapshot(self, symbol: str, m: BookMsg) -> None:
        """Apply snapshot ``m`` to the keeper of ``symbol`` (the venue's key and time with it)."""
        self.keepers[symbol].snapshot(m.bids, m.asks, m.key if m.key >= 0 else None, m.time_ms)
        self.synced(symbol)

    def apply(self, symbol: str, m: BookMsg) -> None:
        """Apply delta ``m`` to the keeper of ``symbol``."""
        self.keepers[symbol].apply(m.bids, m.asks, m.key if m.key >= 0 else None, m.time_ms)

    def tick(self) -> None:
        """Re-send the subscription of a book still waiting for its snapshot after ``RESUBSCRIBE_S``."""
        for s, since in list(self.waiting.items()):
            ws = self.streams[self.group_of[s]]
            now = ws.clock.monotonic()
            wait = self._retry_s.get(s, 4 * RESUBSCRIBE_S)
            if ws.connected.is_set() and now - since >= wait:
                self._retry_s[s] = min(2 * wait, RETRY_CAP_S)
                self.waiting[s] = now
                self.resubscribes += 1
                g = self.group_of[s]
                self._send(g, self.subscribe(g, [s], False) + self.subscribe(g, [s], True))

    async def run(self) -> None:
        tasks = [asyncio.create_task(ws.run(), name=ws.name) for ws in self.streams.values()]
        try:
            while True:
                await asyncio.sleep(RESUBSCRIBE_S)
                self.tick()
        finally:
            await asyncio.gather(*(ws.close() for ws in self.streams.values()), return_exceptions=True)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def status(self) -> dict[str, Any]:
        return {
            "connected": all(ws.connected.is_set() for ws in self.streams.values()),
            "connects": sum(ws.connects for ws in self.streams.values()),
            "frames": sum(ws.frames for ws in self.streams.values()),
            "resubscribes": self.resubscribes,
            "ignored": dict(self.ignored),
            "refusals": dict(self.refusals),
            **self.counters(),
        }
