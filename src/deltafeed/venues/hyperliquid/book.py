"""Hyperliquid's order books: ``l2Book`` subscriptions, each frame a whole snapshot of the coin's best levels.

Hyperliquid sends no deltas: every ``l2Book`` frame is the book (up to 20 levels a side), "pushed on
each block that is at least 0.5 since last push". The rule, per coin: a frame whose ``time`` is later
than the last one applied replaces the book; one at or before it (a copy, a late frame, a stale one)
is skipped, so the served book never goes back in time; a frame that cannot be used (an impossible
price or size) breaks the book, as does silence: no frame for ``SILENT_S`` while the connection is
up. A broken book is out of sync until the next good frame, asked for by re-subscribing the coin.
The venue key (``venue_seq``) is ``time`` (ms). The client pings every 50 s, as the SDK does: the
server closes a connection it sent nothing on for 60 s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deltafeed.venues.bookfeed import WsBookFeed
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.hyperliquid import codec as hl

if TYPE_CHECKING:
    from deltafeed.books import BookKeeper
    from deltafeed.venues.hyperliquid import HyperliquidSettings

log = logging.getLogger("deltafeed.hyperliquid.books")

GROUP = "ws"  # one connection carries every coin
LEVELS = 20  # levels a side of an l2Book frame
SILENT_S = 5.0  # a book with no frame for this long (connection up) is out of sync
PING_EVERY_S = 50.0


class HyperliquidBookFeed(WsBookFeed):
    """The books of ``keepers`` (coins: ``BTC``)."""

    name = "hyperliquid"

    def __init__(
        self, vs: HyperliquidSettings, keepers: Mapping[str, BookKeeper], *, stale_after_s: float = 10.0
    ) -> None:
        self.ws_url = vs.ws_url or hl.DEFAULT_WS_URL
        self.decoder = hl.StreamDecoder()
        self.last_key: dict[str, int] = {}  # coin -> the time of the frame applied last
        self.last_seen: dict[str, float] = {}  # coin -> when (monotonic) a good frame came last
        self._pinged = 0.0
        super().__init__(keepers, {GROUP: list(keepers)}, stale_after_s=stale_after_s, log=log)

    def url(self, group: str) -> str:
        return self.ws_url

    def levels_kept(self, symbol: str) -> int:
        return max(self.keepers[symbol].depth, LEVELS)

    def subscribe(self, group: str, symbols: list[str], on: bool) -> list[bytes]:
        method = "subscribe" if on else "unsubscribe"
        return [hl.subscribe("l2Book", coin, method=method) for coin in symbols]

    def on_frame(self, group: str, frame: bytes | memoryview) -> None:
        errors = self.decoder.errors.get("venue_error", 0)
        m = self.decoder.decode(frame)
        if self.decoder.errors.get("venue_error", 0) > errors:
            self.refused(self.decoder.venue_errors[-1])
        if type(m) is not BookMsg:
            return
        sym = m.symbol
        if sym not in self.keepers:
            self.ignored["unknown_symbol"] += 1
        elif m.broken:
            self.resync(sym, "malformed", self.decoder.last_error)
        elif m.key <= self.last_key.get(sym, -1):
            self.ignored["not_newer"] += 1  # a copy, a late frame or a stale one: never go back in time
        else:
            self.last_key[sym] = m.key
            self.last_seen[sym] = self.streams[group].clock.monotonic()
            self.snapshot(sym, m)

    def tick(self) -> None:
        super().tick()
        ws = self.streams[GROUP]
        if not ws.connected.is_set():
            return
        now = ws.clock.monotonic()
        for sym, k in self.keepers.items():
            if k.in_sync and now - max(self.last_seen.get(sym, 0.0), ws.connected_at) > SILENT_S:
                self.resync(sym, "silent", f"no l2Book frame for {SILENT_S:.0f} s")
        if now - self._pinged >= PING_EVERY_S:
            self._pinged = now
            ws.send(hl.PING)

    def counters(self) -> dict[str, Any]:
        return {"skipped": dict(self.decoder.errors)}
