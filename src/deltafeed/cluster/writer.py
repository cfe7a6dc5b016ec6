"""The cold-store writer role: a durable JetStream consumer that upserts a cluster's published
candles and switches into the cold store, so collectors need no database connection.

One durable pull consumer (:data:`DURABLE`) per cluster reads candle and switch messages in stream
order. Each fetched batch is conflated to the latest version per candle (a final version is
replaced only by a final one, as :func:`~deltafeed.cluster.subjects.newer` says), written in one
idempotent upsert, and only then acknowledged (``AckPolicy.ALL``: the batch's last message
acknowledges the batch). A batch the store refuses is kept and retried with backoff, the consumer
told the messages are in progress meanwhile; a writer killed before its acknowledgement gets the
batch again, and writing it twice changes nothing. Forming candles are skipped: the store keeps
closed candles (the stream and the serving nodes have the forming ones).

Finality survives a restart: a non-final version of a candle is written only when the cold store
does not hold that candle as final. The writer remembers the final candles it wrote and, the first
time a series needs it (and again for older open times), reads the final candles the store already
holds from that open time on, so a restarted writer never downgrades a final candle, whatever its
durable consumer delivers again or a late collector publishes.

Lag, the messages the consumer has yet to deliver, comes with every fetched message (:attr:`lag`;
logged past :data:`LAG_WARN`); ``deltafeed cluster status`` reads it from JetStream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from deltafeed.cluster import subjects
from deltafeed.model import Switch, cluster_name
from deltafeed.net.reconnect import Backoff
from deltafeed.store.base import Row, StoreError
from deltafeed.tasks import cancel_and_wait

if TYPE_CHECKING:
    from deltafeed.store.base import ColdTier

log = logging.getLogger("deltafeed.cluster.writer")

#: The durable consumer's name (one per cluster, read by one writer at a time).
DURABLE = "cold-writer"
#: Messages fetched (and written) at most per batch.
BATCH = 2000
#: How long JetStream waits for an acknowledgement before delivering a batch again, in seconds.
ACK_WAIT_S = 30.0
#: A lag (messages) worth a warning, and how often at most it is logged, in seconds.
LAG_WARN = 10_000
LAG_EVERY_S = 10.0
#: Final candles remembered, so that a non-final version arriving later never replaces one.
REMEMBER_FINAL = 1_000_000

_Key = tuple[str, str, int]
_Series = tuple[str, str]


class ColdWriter:
    """Consume ``cluster``'s candles and switches into ``cold`` (see the module's docstring)."""

    def __init__(self, nc: Any, cluster: str, cold: ColdTier, *, batch: int = BATCH) -> None:
        self.nc = nc
        self.cluster = cluster_name(cluster)
        self.cold = cold
        self.batch = batch
        self.written = 0  # candles upserted
        self.switches = 0
        self.skipped_forming = 0
        self.stale_skipped = 0
        self.bad = 0
        self.failures = 0
        self.resumed = 0  # times the consumer was rewound to the first message not acknowledged
        self.lag: int | None = None  # messages not yet delivered to the writer
        self.store_error: str | None = None
        self._final: OrderedDict[_Key, None] = OrderedDict()
        #: Per series, the open time from which every final candle of the store is in ``_final``.
        self._loaded: dict[_Series, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None

    def _config(self, start_seq: int | None = None) -> Any:
        """The durable consumer's configuration: from the stream's start, or from ``start_seq``."""
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        return ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start_seq,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=-1,
            filter_subjects=[
                subjects.filter_subject(self.cluster, subjects.CANDLES),
                subjects.filter_subject(self.cluster, subjects.SWITCHES),
            ],
        )

    async def start(self) -> None:
        await self._bind()
        await self._resume()
        self._task = asyncio.create_task(self._run(), name="cold-writer")

    async def _bind(self) -> None:
        """Bind to the durable consumer, ours from before (it keeps our place), or a new one reading
        the stream from its start (the stream made too when missing)."""
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream()
        await subjects.ensure_stream(js, self.cluster)
        stream = subjects.stream_name(self.cluster)
        try:
            await js.consumer_info(stream, DURABLE)
        except NotFoundError:
            await js.add_consumer(stream, self._config())
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        self._sub = await js.pull_subscribe_bind(DURABLE, stream=stream)

    async def _resume(self) -> None:
        """Deliver again from the first message not acknowledged, if any was delivered and never
        acknowledged (a writer killed mid-batch, a batch lost with the connection): with
        ``AckPolicy.ALL`` the next batch's acknowledgement would otherwise acknowledge it unwritten,
        and JetStream would redeliver it late, after newer versions. Called before every fetch (the
        previous batch's acknowledgement was confirmed, so nothing of ours is outstanding then)."""
        from nats.js.errors import NotFoundError

        js = self.nc.jetstream()
        stream = subjects.stream_name(self.cluster)
        try:
            info = await js.consumer_info(stream, DURABLE)
        except NotFoundError:  # NATS came back without its store, or someone deleted it
            log.warning("the writer's consumer is gone (NATS lost its store?); reading the stream from its start")
            await self._bind()
            self.resumed += 1
            return
        if not info.num_ack_pending:
            return
        start = info.ack_floor.stream_seq + 1
        log.warning(
            "%d messages were delivered to the writer and never acknowledged; reading again from stream sequence %d",
            info.num_ack_pending,
            start,
        )
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()
        await js.delete_consumer(stream, DURABLE)
        await js.add_consumer(stream, self._config(start))
        self._sub = await js.pull_subscribe_bind(DURABLE, stream=stream)
        self.resumed += 1

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def _run(self) -> None:
        from nats.errors import TimeoutError as NatsTimeout

        warned = 0.0
        while True:
            try:
                await self._resume()
            except Exception as exc:  # NATS reconnecting: the durable consumer keeps our place
                log.warning("cannot read the writer's consumer (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            try:
                msgs = await self._sub.fetch(self.batch, timeout=1.0)
            except (TimeoutError, NatsTimeout):
                self.lag = 0  # nothing was left to deliver
                continue
            except Exception as exc:  # NATS reconnecting: the durable consumer keeps our place
                log.warning("cannot fetch from the cluster's stream (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if not msgs:
                continue
            await self._write(msgs)
            with contextlib.suppress(Exception):  # a message without JetStream metadata
                self.lag = int(msgs[-1].metadata.num_pending)
            if self.lag and self.lag > LAG_WARN and time.monotonic() - warned > LAG_EVERY_S:
                warned = time.monotonic()
                log.warning("the cold-store writer is %d messages behind the stream", self.lag)

    def rows(self, msgs: list[Any]) -> tuple[list[Row], list[Switch]]:
        """The rows and switches a batch of messages stands for (latest version per candle)."""
        latest: dict[_Key, subjects.CandleMsg] = {}
        switches: list[Switch] = []
        for msg in msgs:
            kind = msg.subject.split(".", 3)[2] if msg.subject.count(".") >= 3 else ""
            if kind in (subjects.TRADES, subjects.BOOKS):
                continue  # a server without filter_subjects (NATS < 2.10) delivers every kind
            try:
                if kind == subjects.SWITCHES:
                    switches.append(subjects.decode_switch(msg.data).switch)
                    continue
                m = subjects.decode_candle(msg.data)
            except ValueError as exc:
                self.bad += 1
                log.warning("skipped a message on %s: %s", msg.subject, exc)
                continue
            if m.state == "forming":
                self.skipped_forming += 1
                continue
            key = (m.series, m.tf, m.open_time)
            old = latest.get(key)
            if (old is None and key in self._final and m.state != "final") or (
                old is not None and not subjects.newer(old, m)
            ):
                self.stale_skipped += 1
                continue
            latest[key] = m
        return [(m.series, m.tf, m.candle) for m in latest.values()], switches

    async def _load_finals(self, series: str, tf: str, since_ms: int) -> None:
        """Make ``_final`` hold every final candle the store has of (series, tf) from ``since_ms`` on."""
        key = (series, tf)
        loaded = self._loaded.get(key)
        if loaded is not None and loaded <= since_ms:
            return
        until = None if loaded is None else loaded - 1
        for c in await self.cold.query(series, tf, since_ms, until, final_only=True):
            self._remember((series, tf, c.open_time))
        self._loaded[key] = since_ms if loaded is None else min(loaded, since_ms)

    def _remember(self, key: _Key) -> None:
        self._final[key] = None
        self._final.move_to_end(key)
        while len(self._final) > REMEMBER_FINAL:
            (series, tf, t), _ = self._final.popitem(last=False)
            if (series, tf) in self._loaded:  # what the store holds before t + 1 is no longer all known
                self._loaded[(series, tf)] = max(self._loaded[(series, tf)], t + 1)

    async def _not_downgrading(self, rows: list[Row]) -> list[Row]:
        """``rows`` without the non-final versions of candles the store holds as final."""
        lows: dict[_Series, int] = {}
        for series, tf, c in rows:
            if not c.final:
                lows[(series, tf)] = min(lows.get((series, tf), c.open_time), c.open_time)
        for (series, tf), low in lows.items():
            await self._load_finals(series, tf, low)
        return [r for r in rows if r[2].final or (r[0], r[1], r[2].open_time) not in self._final]

    async def _write(self, msgs: list[Any]) -> None:
        found, switches = self.rows(msgs)
        rows = found
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                rows = await self._not_downgrading(found)
                if rows:
                    await self.cold.write(rows)
                if switches:
                    await self.cold.record_switches(switches)
                break
            except StoreError as exc:
                self.failures += 1
                self.store_error = str(exc)
                log.warning("the cold store refused %d candles (%s); retrying", len(found), exc)
                with contextlib.suppress(Exception):
                    await msgs[-1].in_progress()
                await asyncio.sleep(backoff.failed())
        self.store_error = None
        self.stale_skipped += len(found) - len(rows)
        for inst, tf, c in rows:
            if c.final:
                self._remember((inst, tf, c.open_time))
        self.written += len(rows)
        self.switches += len(switches)
        try:
            await msgs[-1].ack_sync(timeout=5.0)  # confirmed: nothing of ours is outstanding after it
        except Exception as exc:  # lost: the next fetch reads the batch again (writing it twice changes nothing)
            log.warning("the acknowledgement of a batch was lost (%s)", exc)
