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

if TYPE_CHECKING:
    from deltafeed.store.base import ColdTier

log = logging.getLogger("deltafeed.cluster.writer")

#: The durable consumer's name (one per cluster; a second writer with it shares the work).
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
        self.lag: int | None = None  # messages not yet delivered to the writer
        self.store_error: str | None = None
        self._final: OrderedDict[_Key, None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._sub: Any = None

    async def start(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = self.nc.jetstream()
        await subjects.ensure_stream(js, self.cluster)
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=-1,
            filter_subjects=[
                subjects.filter_subject(self.cluster, subjects.CANDLES),
                subjects.filter_subject(self.cluster, subjects.SWITCHES),
            ],
        )
        self._sub = await self._bind(js, config)
        self._task = asyncio.create_task(self._run(), name="cold-writer")

    async def _bind(self, js: Any, config: Any) -> Any:
        stream = subjects.stream_name(self.cluster)
        await js.add_consumer(stream, config)  # creates it, or leaves an identical one as it is
        return await js.pull_subscribe_bind(DURABLE, stream=stream)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
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

    async def _write(self, msgs: list[Any]) -> None:
        rows, switches = self.rows(msgs)
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                if rows:
                    await self.cold.write(rows)
                if switches:
                    await self.cold.record_switches(switches)
                break
            except StoreError as exc:
                self.failures += 1
                self.store_error = str(exc)
                log.warning("the cold store refused %d candles (%s); retrying", len(rows), exc)
                with contextlib.suppress(Exception):
                    await msgs[-1].in_progress()
                await asyncio.sleep(backoff.failed())
        self.store_error = None
        for inst, tf, c in rows:
            if c.final:
                self._final[(inst, tf, c.open_time)] = None
        while len(self._final) > REMEMBER_FINAL:
            self._final.popitem(last=False)
        self.written += len(rows)
        self.switches += len(switches)
        await msgs[-1].ack()
