"""What a collector's engines publish to JetStream: the candles that changed (each candle's latest
version per flush, in order per candle), switches, order books (the top of each kept book: a
snapshot at every resynchronisation and every :data:`BOOK_SNAPSHOT_S`, the changes in between)
and, when asked, trades, with many acknowledgements in flight rather than one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from deltafeed.api.protocol import SwitchData
from deltafeed.books.view import TopView
from deltafeed.cluster import subjects
from deltafeed.model import Candle, Switch, Trade
from deltafeed.tasks import cancel_and_wait

if TYPE_CHECKING:
    from deltafeed.books import BookEvent, BookKeeper, Books

log = logging.getLogger("deltafeed.cluster")

#: Acknowledgements awaited at once (JetStream here: ~5.8k msgs/s one at a time, ~26k/s with 500).
IN_FLIGHT = 500
#: How long a flush waits for its acknowledgements, in seconds (the rest are sent again).
ACK_WAIT_S = 10.0
#: How often pending messages are sent, in seconds (the engine ticks every 0.25 s).
FLUSH_S = 0.05
#: Messages kept waiting while NATS is unreachable (the oldest candles are then dropped: a
#: collector that takes the series over, or this one on reconnection, republishes from history).
PENDING_MAX = 200_000
#: How often each published book is sent whole, in seconds: where a reader that starts late (or
#: missed a change) starts from, and the heartbeat that tells it the book is still kept.
BOOK_SNAPSHOT_S = 2.0


class BookStream:
    """One kept book's top ``depth`` levels as published: a listener of its keeper that turns each
    change into a :class:`~deltafeed.cluster.subjects.BookUpdate` (the diff of the top, as the
    WebSocket's book deltas are made), numbered by the keeper's ``sequence``. Each stream has a
    source of its own, so a reader never chains one engine's deltas onto another's states."""

    _ids = itertools.count(1)

    def __init__(self, outlet: Outlet, keeper: BookKeeper) -> None:
        self.outlet = outlet
        self.keeper = keeper
        self.view = TopView(keeper, keeper.depth)
        self.view.reset()
        self.source = f"{outlet.source}#{next(self._ids)}"
        self.subject = subjects.subject(outlet.cluster, subjects.BOOKS, keeper.instrument)

    def __call__(self, ev: BookEvent) -> None:
        if ev.kind == "delta":
            moved = self.view.diff()
            if moved is not None:
                prev, bids, asks = moved
                self._send("delta", prev, bids, asks)
        else:
            self.whole()

    def whole(self) -> None:
        """Publish the top as it is now: a snapshot, or ``lost`` while out of sync."""
        v = self.view
        v.reset()
        self._send("snapshot" if v.in_sync else "lost", 0, sorted(v.bids.items(), reverse=True), sorted(v.asks.items()))

    def _send(self, kind: str, prev: int, bids: list[tuple[float, float]], asks: list[tuple[float, float]]) -> None:
        v, k = self.view, self.keeper
        msg = subjects.BookUpdate(
            k.instrument, kind, v.sequence, prev, v.depth, k.venue_seq, v.time_ms, bids, asks,
            self.source, int(time.time() * 1000),
        )  # fmt: skip
        self.outlet.put(self.subject, msg)


class Outlet:
    """Publishes collected data of one collector on a cluster's subjects."""

    def __init__(self, js: Any, cluster: str, source: str, *, trades: bool = False) -> None:
        self.js = js
        self.cluster = cluster
        self.source = source
        self.trades = trades
        #: (subject, msg id) -> (payload, headers): a newer version of a candle replaces the waiting one.
        self._pending: dict[tuple[str, str], tuple[str, bytes, dict[str, str]]] = {}
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._books_task: asyncio.Task[None] | None = None
        #: The books published, by instrument.
        self.books: dict[str, BookStream] = {}
        self.published = 0
        self.duplicates = 0
        self.failed = 0
        self.dropped = 0
        #: Monotonic time of the last flush that published everything (for health).
        self.last_ok = time.monotonic()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cluster-outlet")
        self._books_task = asyncio.create_task(self._whole_books(), name="cluster-books")

    async def close(self) -> None:
        """Publish what waits (for a few seconds at most), then stop."""
        await cancel_and_wait(self._task, self._books_task)
        self._task = self._books_task = None
        try:
            await asyncio.wait_for(self.flush(), 5.0)
        except TimeoutError:
            log.warning("%d messages not published at the stop", len(self._pending))

    def _put(self, key: tuple[str, str], subject: str, msg: subjects.Message) -> None:
        data, headers = subjects.encode(msg)
        self._pending.pop(key, None)  # re-inserted last: a candle's versions stay in order
        if len(self._pending) >= PENDING_MAX:
            del self._pending[next(iter(self._pending))]
            self.dropped += 1
        self._pending[key] = (subject, data, headers)
        self._wake.set()

    def put(self, subject: str, msg: subjects.Message) -> None:
        """Publish ``msg`` on ``subject`` (with the others waiting, in order)."""
        self._put((subject, msg.msg_id), subject, msg)

    def add_book(self, keeper: BookKeeper) -> None:
        """Publish ``keeper``'s book from now on (whole at once, then its changes)."""
        self.drop_book(keeper.instrument)
        stream = self.books[keeper.instrument] = BookStream(self, keeper)
        keeper.listeners.append(stream)
        stream.whole()

    def drop_book(self, instrument: str) -> None:
        """Stop publishing the book of ``instrument`` (its engine stops; another collector's takes over)."""
        stream = self.books.pop(instrument, None)
        if stream is not None:
            with contextlib.suppress(ValueError):
                stream.keeper.listeners.remove(stream)
            stream._send("lost", 0, [], [])  # readers holding this stream's book stop showing it

    async def _whole_books(self) -> None:
        while True:
            await asyncio.sleep(BOOK_SNAPSHOT_S)
            for stream in list(self.books.values()):
                stream.whole()

    def candle(self, series: str, tf: str, candle: Candle) -> None:
        msg = subjects.candle_msg(series, tf, candle, source=self.source, sent_ms=int(time.time() * 1000))
        subj = subjects.subject(self.cluster, subjects.CANDLES, series, tf)
        self._put((subj, str(candle.open_time)), subj, msg)

    def trade(self, series: str, trade: Trade) -> None:
        msg = subjects.TradeMsg(series, trade, self.source)
        subj = subjects.subject(self.cluster, subjects.TRADES, series)
        self._put((subj, msg.msg_id), subj, msg)

    def switch(self, series: str, switch: Switch) -> None:
        msg = subjects.SwitchMsg(switch, self.source, int(time.time() * 1000))
        subj = subjects.subject(self.cluster, subjects.SWITCHES, series)
        self._put((subj, msg.msg_id), subj, msg)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            failed = self.failed
            try:
                await self.flush()
            except Exception as exc:  # NATS away: keep what waits, try again
                log.warning("publishing to the cluster failed: %s", exc)
                await asyncio.sleep(1.0)
                self._wake.set()
            if self.failed > failed:  # not acknowledged: the stream may be gone (NATS lost its store)
                with contextlib.suppress(Exception):
                    await subjects.ensure_stream(self.js, self.cluster)
                await asyncio.sleep(1.0)
            await asyncio.sleep(FLUSH_S)

    async def flush(self) -> None:
        """Publish every waiting message, up to :data:`IN_FLIGHT` acknowledgements outstanding; a
        message not acknowledged waits for the next flush (unless a newer version replaced it).
        One flush at a time, so a candle's versions reach the stream in the order they were made."""
        async with self._lock:
            batch, self._pending = self._pending, {}
            retry: dict[tuple[str, str], tuple[str, bytes, dict[str, str]]] = {}
            futures: dict[tuple[str, str], asyncio.Future[Any]] = {}
            try:
                for key, (subj, data, headers) in batch.items():
                    futures[key] = await self.js.publish_async(subj, data, headers=headers)
            finally:
                retry.update((k, v) for k, v in batch.items() if k not in futures)
                if futures:
                    await asyncio.wait(futures.values(), timeout=ACK_WAIT_S)
                for key, fut in futures.items():
                    if not fut.done() or fut.cancelled() or fut.exception() is not None:
                        if not fut.done():
                            fut.cancel()
                        self.failed += 1
                        retry[key] = batch[key]
                        continue
                    self.published += 1
                    if fut.result().duplicate:
                        self.duplicates += 1
                # Older than anything put since: first in line, unless a newer version replaced it.
                self._pending = {**{k: v for k, v in retry.items() if k not in self._pending}, **self._pending}
                if retry:
                    self._wake.set()
                else:
                    self.last_ok = time.monotonic()


class EngineSink:
    """One engine's :class:`~deltafeed.api.protocol.LiveSink`: its candles, trades and switches to
    the collector's :class:`Outlet` (an engine that stops closes this, not the shared outlet), and,
    once :meth:`attach_books` is called, its order books."""

    def __init__(self, outlet: Outlet) -> None:
        self.outlet = outlet
        self._books: list[str] = []

    def attach_books(self, books: Books) -> None:
        """Publish every book of ``books`` (an engine's) that is not published yet (call again after
        the engine added books)."""
        for name, keeper in books.keepers.items():
            if name not in self._books:
                self._books.append(name)
                self.outlet.add_book(keeper)

    def detach_book(self, instrument: str) -> None:
        """Stop publishing the book of ``instrument`` (the engine drops it; another collector's takes over)."""
        if instrument in self._books:
            self._books.remove(instrument)
            self.outlet.drop_book(instrument)

    def candle(self, instrument: str, timeframe: str, candle: Candle) -> None:
        self.outlet.candle(instrument, timeframe, candle)

    def trade(self, instrument: str, trade: Trade) -> None:
        self.outlet.trade(instrument, trade)

    def price(self, instrument: str, time_ms: int, price: float) -> None:
        pass  # the forming candle's close carries it

    def switch(self, instrument: str, at_ms: int, data: SwitchData) -> None:
        sw = Switch(instrument, data.since_ms, at_ms, data.source_from, data.source_to)
        self.outlet.switch(instrument, sw)

    def wants_trades(self, instrument: str) -> bool:
        return self.outlet.trades

    async def close(self) -> None:
        for name in self._books:
            self.outlet.drop_book(name)
        self._books.clear()
        await self.outlet.flush()
