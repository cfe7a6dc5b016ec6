"""Kraken's order books: the WS v2 ``book`` channel, kept by its CRC32 checksum over the top 10 levels.

Kraken's book carries no sequence; every snapshot and update carries the checksum of the top 10 levels
after it (docs.kraken.com ``book-checksum-v2``). The rule, per pair:

- a ``snapshot`` replaces the book, an ``update`` applies its levels in order (qty 0 removes) once the
  pair had its snapshot; after each, the book is cut to the subscribed depth (Kraken sends no qty 0
  for a level pushed below it);
- the result counts only when its checksum, over the top 10 asks then bids with price and qty
  written at the pair's precisions (``pair_decimals`` and ``lot_decimals`` of REST ``AssetPairs``,
  read at start: JSON numbers lose trailing zeros), equals the message's. A message applied twice
  gives the same book and the same checksum; a lost, reordered or corrupt one (or a stale snapshot
  followed by an update) does not, and that pair alone is re-subscribed for a fresh snapshot.

The rule runs on a book of its own (:attr:`KrakenBookFeed.books`), so a message that fails its
checksum never reaches the served book. The venue key (``venue_seq``) is the message's ``timestamp``
in microseconds (none on a snapshot without one). The depth subscribed is the smallest Kraken offers
that covers the served depth; the keeper keeps exactly that many levels, as Kraken's clients must.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deltafeed.books import L2Book
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.venues.bookfeed import WsBookFeed
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.kraken import codec as kraken
from deltafeed.venues.kraken.rest import KrakenHistory

if TYPE_CHECKING:
    from deltafeed.books import BookKeeper
    from deltafeed.venues.kraken import KrakenSettings

log = logging.getLogger("deltafeed.kraken.books")

GROUP = "v2"  # one connection carries every pair
RETRY_S = 2.0  # between failed AssetPairs reads


def book_depth(served: int) -> int:
    """The smallest ``book`` depth Kraken offers that covers ``served`` levels (1000 at most)."""
    return next((d for d in kraken.BOOK_DEPTHS if d >= served), kraken.BOOK_DEPTHS[-1])


def checksum(book: L2Book, price_decimals: int, qty_decimals: int) -> int:
    """Kraken's checksum of ``book``'s top 10 levels, written at the pair's precisions."""
    bids, asks = book.top(10)

    def text(levels: list[tuple[float, float]]) -> list[tuple[str, str]]:
        return [(f"{p:.{price_decimals}f}", f"{q:.{qty_decimals}f}") for p, q in levels]

    return kraken.book_checksum(text(asks), text(bids))


class KrakenBookFeed(WsBookFeed):
    """The books of ``keepers`` (WS v2 symbols: ``BTC/USD``)."""

    name = "kraken"

    def __init__(self, vs: KrakenSettings, keepers: Mapping[str, BookKeeper], *, stale_after_s: float = 10.0) -> None:
        self.ws_url = vs.ws_url or kraken.DEFAULT_WS_URL
        self.history = KrakenHistory(vs.rest_url or kraken.DEFAULT_REST_URL, vs.rest_rate_per_s, vs.rest_burst)
        self.decoder = kraken.StreamDecoder()
        self.depths = {s: book_depth(k.depth) for s, k in keepers.items()}
        #: The rule's own book per pair (the served one follows it), and whether it had its snapshot.
        self.books = {s: L2Book(d) for s, d in self.depths.items()}
        self.synced_books: set[str] = set()
        self.precisions: dict[str, tuple[int, int]] = {}
        self.checksum_failures = 0
        self._req = 0
        super().__init__(keepers, {GROUP: list(keepers)}, stale_after_s=stale_after_s, log=log)

    def url(self, group: str) -> str:
        return self.ws_url

    def levels_kept(self, symbol: str) -> int:
        return self.depths[symbol]

    def subscribe(self, group: str, symbols: list[str], on: bool) -> list[bytes]:
        out = []
        for d in sorted({self.depths[s] for s in symbols}):
            self._req += 1
            syms = [s for s in symbols if self.depths[s] == d]
            out.append((kraken.subscribe if on else kraken.unsubscribe)("book", syms, self._req, depth=d))
        return out

    def forget(self, symbol: str) -> None:
        self.synced_books.discard(symbol)

    async def run(self) -> None:
        failures = 0
        while not self.precisions:  # the checksum needs each pair's precisions before any book
            try:
                self.precisions = await self.history.precisions()
            except (VenueError, VenueUnreachable) as exc:
                failures += 1
                log.log(
                    logging.WARNING if failures == 1 else logging.DEBUG,
                    "kraken AssetPairs unreadable (%s); books wait, retrying every %.0f s",
                    exc,
                    RETRY_S,
                )
                await asyncio.sleep(RETRY_S)
        missing = [s for s in self.keepers if s not in self.precisions]
        if missing:
            log.error("kraken lists no pair %s; its book stays out of sync", ", ".join(missing))
        try:
            await super().run()
        finally:
            await self.history.close()

    def on_frame(self, group: str, frame: bytes | memoryview) -> None:
        for m in self.decoder.decode(frame):
            if type(m) is BookMsg:
                self._book(m)
        if self.decoder.refusals:
            for r in self.decoder.refusals:
                self.refused(f"{r.method} {r.symbol or ''}: {r.error}")
            self.decoder.refusals.clear()

    def _book(self, m: BookMsg) -> None:
        sym = m.symbol
        if sym not in self.keepers:
            if not m.broken:
                self.ignored["unknown_symbol"] += 1
            return
        if m.broken:
            self.resync(sym, "malformed", self.decoder.last_error)
            return
        prec = self.precisions.get(sym)
        if prec is None:
            self.ignored["no_precision"] += 1
            return
        if not m.snapshot and sym not in self.synced_books:
            self.ignored["before_snapshot"] += 1
            return
        book = self.books[sym]
        if m.snapshot:
            book.clear()
        book.update(m.bids, m.asks)  # the book keeps at most the subscribed depth: Kraken's truncation
        got = checksum(book, *prec)
        if got != m.checksum:
            self.checksum_failures += 1
            self.resync(sym, "checksum", f"{got} computed, {m.checksum} sent")
            return
        if m.snapshot:
            self.snapshot(sym, m)
            self.synced_books.add(sym)
        else:
            self.apply(sym, m)

    def counters(self) -> dict[str, Any]:
        return {"checksum_failures": self.checksum_failures, "skipped": dict(self.decoder.errors)}
