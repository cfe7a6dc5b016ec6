"""Coinbase's order books: the ``level2`` channel (frames on ``l2_data``), kept by the connection's ``sequence_num``.

Coinbase's book messages carry no sequence of their own: the only evidence that nothing was lost is
the connection's ``sequence_num``, one counter across every channel, +1 per frame (PROTOCOLS-wave2
1.2; Coinbase: a number "greater than one integer value from the previous number" means a dropped
message). The rule:

- a frame whose ``sequence_num`` is at or below the last one seen is a copy or arrived late: skipped
  whole (a late update applied after a newer one would undo it);
- a jump means a frame was lost, and it may have held any product's levels: every book of the
  connection is resynchronised (re-subscribed one by one, each coming back with its own snapshot);
- an event of type ``snapshot`` replaces that product's book, an ``update`` sets the sizes it names
  (``new_quantity`` is the level's size, "0" removes it) once the product has had its snapshot.

The venue key of a book (``venue_seq``) is the frame's ``timestamp`` in microseconds. ``level2`` is the
whole book, so the keeper keeps every level (up to ``FULL_BOOK``), not only the served depth: a level
it dropped would never be sent again. On every connection ``heartbeats`` is subscribed too, as
Coinbase asks, so that quiet books are not closed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deltafeed.venues.bookfeed import WsBookFeed
from deltafeed.venues.coinbase import codec as coinbase

if TYPE_CHECKING:
    from deltafeed.books import BookKeeper
    from deltafeed.venues.coinbase import CoinbaseSettings

log = logging.getLogger("deltafeed.coinbase.books")

FULL_BOOK = 20_000  # levels per side kept of a level2 book (memory bound; BTC-USD has some thousands)
GROUP = "ws"  # one connection carries every product


class CoinbaseBookFeed(WsBookFeed):
    """The books of ``keepers`` (product ids: ``BTC-USD``)."""

    name = "coinbase"

    def __init__(self, vs: CoinbaseSettings, keepers: Mapping[str, BookKeeper], *, stale_after_s: float = 10.0) -> None:
        self.ws_url = (vs.ws_url or coinbase.DEFAULT_WS_URL).rstrip("/")
        self.decoder = coinbase.StreamDecoder()
        self.seq = -1  # the connection's last sequence_num, -1 before the first frame
        self.synced_books: set[str] = set()  # products that had their snapshot since their last resync
        self.sequence_gaps = 0
        super().__init__(keepers, {GROUP: list(keepers)}, stale_after_s=stale_after_s, log=log)

    def url(self, group: str) -> str:
        return self.ws_url

    def levels_kept(self, symbol: str) -> int:
        return max(self.keepers[symbol].depth, FULL_BOOK)

    def on_open(self, group: str) -> list[bytes]:
        self.seq = -1  # a new connection counts from 0 again
        return [coinbase.subscribe("heartbeats")]

    def subscribe(self, group: str, symbols: list[str], on: bool) -> list[bytes]:
        return [(coinbase.subscribe if on else coinbase.unsubscribe)("level2", symbols)]

    def forget(self, symbol: str) -> None:
        self.synced_books.discard(symbol)

    def on_frame(self, group: str, frame: bytes | memoryview) -> None:
        m = self.decoder.decode(frame)
        if type(m) is coinbase.VenueErrorFrame:
            self.refused(f"{m.message} {m.reason}".strip())
        if type(m) is not coinbase.Message:
            return  # an error frame or a skipped one (counted by the decoder)
        if m.seq <= self.seq:
            self.ignored["late_or_copy"] += 1
            return
        if self.seq >= 0 and m.seq > self.seq + 1:
            self.sequence_gaps += 1
            detail = f"sequence_num {m.seq} after {self.seq}"
            for sym in self.keepers:
                self.resync(sym, "gap", detail)
        self.seq = m.seq
        for b in m.books:
            sym = b.symbol
            if b.broken:
                for s in [sym] if sym in self.keepers else list(self.keepers):
                    self.resync(s, "malformed", self.decoder.last_error)
            elif sym not in self.keepers:
                self.ignored["unknown_symbol"] += 1
            elif b.snapshot:
                self.snapshot(sym, b)
                self.synced_books.add(sym)
            elif sym not in self.synced_books:
                self.ignored["before_snapshot"] += 1
            else:
                self.apply(sym, b)

    def counters(self) -> dict[str, Any]:
        return {"sequence_gaps": self.sequence_gaps, "skipped": dict(self.decoder.errors)}
