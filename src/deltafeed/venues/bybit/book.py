"""Bybit's order books: ``orderbook.<depth>.<symbol>`` topics kept by Bybit's rule, one connection per category.

The rule (Bybit v5 ``websocket/public/orderbook``): a ``snapshot`` replaces the book (also the ``u`` = 1
snapshot Bybit sends after a restart of its service); a ``delta`` continues it when its ``u`` (the
update id, "a sequence") is the previous message's plus one. A ``u`` at or below the last one is a
message seen before and is ignored; any other ``u`` means a message was lost (or a snapshot was stale),
and that instrument alone is resubscribed for a fresh snapshot. The book's venue key is ``seq``, the
cross sequence, which the replica's book tape uses too. The depth subscribed is the smallest Bybit
offers that covers the instrument's served depth (50, 200 or 1000).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from deltafeed.venues.bookfeed import WsBookFeed
from deltafeed.venues.bookmsg import BookMsg
from deltafeed.venues.bybit import BybitSettings
from deltafeed.venues.bybit import codec as bybit

if TYPE_CHECKING:
    from deltafeed.books import BookKeeper

log = logging.getLogger("deltafeed.bybit.books")

#: Depths subscribed, smallest first (depth 1 is a different stream: snapshots only).
DEPTHS = (50, 200, 1000)


def topic_depth(served: int) -> int:
    """The smallest Bybit depth that covers ``served`` levels (1000 at most)."""
    return next((d for d in DEPTHS if d >= served), DEPTHS[-1])


class BybitBookFeed(WsBookFeed):
    """The books of ``keepers`` (deltafeed's Bybit symbols: ``BTCUSDT``, ``LINEAR:BTCUSDT``)."""

    name = "bybit"

    def __init__(self, vs: BybitSettings, keepers: Mapping[str, BookKeeper], *, stale_after_s: float = 10.0) -> None:
        self.ws_url = (vs.ws_url or bybit.DEFAULT_WS_URL).rstrip("/")
        self.decoder = bybit.StreamDecoder()
        self.names: dict[str, str] = {}  # our symbol -> Bybit's name
        self.ours: dict[tuple[str, str], str] = {}  # (category, Bybit name) -> our symbol
        self.depths: dict[str, int] = {}
        groups: dict[str, list[str]] = {}
        for sym, k in keepers.items():
            cat, name = bybit.parse_symbol(sym, vs.category)
            groups.setdefault(cat, []).append(sym)
            self.names[sym] = name
            self.ours[(cat, name)] = sym
            self.depths[sym] = topic_depth(k.depth)
        self.last_u: dict[str, int] = {}
        self._req = 0
        self._pinged: dict[str, float] = {}
        super().__init__(keepers, groups, stale_after_s=stale_after_s, log=log)

    def url(self, group: str) -> str:
        return self.ws_url + bybit.ws_path(group)

    def subscribe(self, group: str, symbols: list[str], on: bool) -> list[bytes]:
        topics = [bybit.book_topic(self.names[s], self.depths[s]) for s in symbols]
        out = []
        for i in range(0, len(topics), bybit.SPOT_MAX_ARGS):
            self._req += 1
            out.append(
                (bybit.subscribe if on else bybit.unsubscribe)(topics[i : i + bybit.SPOT_MAX_ARGS], f"b{self._req}")
            )
        return out

    def levels_kept(self, symbol: str) -> int:
        return self.depths[symbol]  # the topic's depth: it sends a level leaving it with size 0

    def forget(self, symbol: str) -> None:
        self.last_u.pop(symbol, None)

    def on_frame(self, group: str, frame: bytes | memoryview) -> None:
        m = self.decoder.decode(frame)
        if type(m) is bybit.Reply and not m.success:
            self.refused(m.ret_msg)
        if type(m) is not BookMsg:
            return  # replies, pongs; what the decoder skipped is counted in its errors
        sym = self.ours.get((group, m.symbol))
        if sym is None:
            self.ignored["unknown_symbol"] += 1
            return
        if m.broken:
            if sym in self.last_u:
                self.resync(sym, "malformed", self.decoder.last_error)
            return
        if m.snapshot:
            self.snapshot(sym, m)
            self.last_u[sym] = m.update_id
            return
        last = self.last_u.get(sym)
        if last is None:
            self.ignored["before_snapshot"] += 1
        elif m.update_id <= last:
            self.ignored["duplicate"] += 1
        elif m.update_id != last + 1:
            self.resync(sym, "gap", f"u {m.update_id} after {last}")
        else:
            self.apply(sym, m)
            self.last_u[sym] = m.update_id

    def tick(self) -> None:
        super().tick()
        for g, ws in self.streams.items():  # Bybit asks for a ping every 20 s
            now = ws.clock.monotonic()
            if ws.connected.is_set() and now - self._pinged.get(g, 0.0) >= bybit.PING_EVERY_S:
                self._pinged[g] = now
                self._req += 1
                ws.send(bybit.ping(f"b{self._req}"))

    def counters(self) -> dict[str, Any]:
        return {"skipped": dict(self.decoder.errors)}
