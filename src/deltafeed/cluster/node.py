"""The serving node: an :class:`~deltafeed.engine.view.EngineView` fed by a cluster's JetStream
stream and the shared cold store, so the HTTP/WebSocket API runs on any machine without a venue.

:class:`ClusterView` keeps the stream's candles in memory rings (the same
:class:`~deltafeed.store.hot.HotStore` an engine keeps), hands each one to the API's hub as it
arrives, and reads older candles from the cold store through the one read path
(:func:`~deltafeed.store.reader.read_candles`). :class:`StreamFeed` fills it: one ordered consumer
replays the cluster's candles and switches from the start of the stream (a replayable hot tier,
bounded per subject) and then follows them live; trades are followed from now on, never replayed.
Order books are followed from now on too: each starts at its publisher's next snapshot (sent at
every resynchronisation and every :data:`~deltafeed.cluster.outlet.BOOK_SNAPSHOT_S`), then takes
the deltas that continue the state it holds; a break, a publisher that stops or falls silent makes
the book out of sync (no levels) until the next snapshot. A message that cannot be read is counted
and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from deltafeed.books import BookKeeper, Books
from deltafeed.cluster import subjects
from deltafeed.cluster.outlet import BOOK_SNAPSHOT_S
from deltafeed.engine.status import BookStatus, EngineStatus, SwitchDoc, switch_doc
from deltafeed.model import BadInput, Candle, Switch, cluster_name, timeframe
from deltafeed.stats import EngineMetrics
from deltafeed.store.base import StoreError
from deltafeed.store.hot import HotStore
from deltafeed.store.reader import MemoryHot, read_candles
from deltafeed.tasks import cancel_and_wait

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from deltafeed.api.protocol import LiveSink
    from deltafeed.cluster.writer import ColdWriter
    from deltafeed.config import Settings
    from deltafeed.engine.failover import FailoverPair
    from deltafeed.series import Series
    from deltafeed.store.base import ColdTier
    from deltafeed.store.ticks import TickPage

log = logging.getLogger("deltafeed.cluster.node")

#: A book not heard of for this long (seconds; its publisher snapshots every BOOK_SNAPSHOT_S) is
#: out of sync: its collector died or lost NATS.
BOOK_SILENT_S = 3 * BOOK_SNAPSHOT_S
#: How often a serving node checks that the stream it follows is still the cluster's, in seconds.
STREAM_CHECK_S = 5


class StreamCounters(msgspec.Struct):
    """What a serving node has read from its cluster's stream."""

    cluster: str
    nats_connected: bool
    caught_up: bool  # the replay of the stream reached its end once
    candles: int  # candle messages applied
    switches: int
    trades: int
    books: int  # book messages applied
    bad_messages: int  # counted and skipped
    stale_skipped: int  # a non-final version after a final one of the same candle (kept final)
    replay_pending: int  # messages left to replay before caught_up
    last_message_age_s: float | None
    #: publication (collector's clock) to arrival here, of the latest candle message, in seconds
    last_latency_s: float | None


class NodeStatus(EngineStatus):
    """A serving node's status: the engine's shape (its venue and store counters stay zero: the
    node collects and writes nothing) plus what it read from the cluster."""

    stream: StreamCounters


class ClusterView:
    """The API's view of a cluster: candles from the stream (recent) and the cold store (older).

    It collects nothing: starting or stopping streaming is refused with a line saying where that
    is done. Instruments and timeframes are those the stream and the cold store hold.
    """

    def __init__(self, settings: Settings, cluster: str, cold: ColdTier | None, *, hot_capacity: int = 1000) -> None:
        self.hub: LiveSink | None = None
        #: The books published on the stream, each kept from its publisher's messages.
        self.books = Books(settings, names=[])
        #: Per book, (publisher, sequence) of the state held; None while out of sync.
        self._book_at: dict[str, tuple[str, int] | None] = {}
        self._book_heard: dict[str, float] = {}
        self._settings = settings
        self.cluster = cluster_name(cluster)
        self.cold = cold
        self.hot = HotStore(hot_capacity)
        self.metrics_ = EngineMetrics()
        self._series: dict[str, None] = {}  # every series seen, in arrival order
        self._tfs: dict[str, None] = {}
        self._switches: dict[str, dict[int, Switch]] = {}
        self._price_ms: dict[str, int] = {}
        self.nats_connected = False
        self.caught_up = False
        self.replay_pending = 0
        self.candles_in = 0
        self.switches_in = 0
        self.trades_in = 0
        self.books_in = 0
        self.bad = 0
        self.stale = 0
        self.last_latency_s: float | None = None
        self._last_mono: float | None = None
        #: The cold-store writer running in the same process, if any (its counters go to /metrics).
        self.writer: ColdWriter | None = None

    # --- fed by the stream ------------------------------------------------------------------------

    def known(self, series: str, tf: str | None = None) -> None:
        """Record a series (and timeframe) the cluster holds, e.g. found in the cold store."""
        self._series.setdefault(series, None)
        if tf is not None:
            self._tfs.setdefault(tf, None)

    def on_candle(self, m: subjects.CandleMsg) -> None:
        """One published version of a candle: into the rings and to the hub (a non-final version
        arriving after the final one is skipped, as :func:`~deltafeed.cluster.subjects.newer` says)."""
        self._last_mono = time.monotonic()
        c = m.candle
        old = self.hot.get(m.series, m.tf, m.open_time)
        if old is not None and old.final and not c.final:
            self.stale += 1
            return
        self.candles_in += 1
        if m.sent_ms:
            self.last_latency_s = max(0.0, time.time() - m.sent_ms / 1000)
        self.known(m.series, m.tf)
        self.hot.put(m.series, m.tf, c)
        hub = self.hub
        if hub is not None:
            hub.candle(m.series, m.tf, c)
            if not c.closed and m.sent_ms > self._price_ms.get(m.series, 0):
                self._price_ms[m.series] = m.sent_ms
                hub.price(m.series, m.sent_ms, c.close)

    def on_switch(self, m: subjects.SwitchMsg) -> None:
        self._last_mono = time.monotonic()
        w = m.switch
        self.switches_in += 1
        self.known(w.instrument)
        seen = self._switches.setdefault(w.instrument, {})
        if w.since_ms in seen:
            return
        seen[w.since_ms] = w
        if self.hub is not None:
            from deltafeed.api.protocol import SwitchData

            spanning = self.switch_doc(w).spanning
            self.hub.switch(w.instrument, w.at_ms, SwitchData(w.since_ms, w.source_from, w.source_to, spanning))

    def on_trade(self, m: subjects.TradeMsg) -> None:
        self._last_mono = time.monotonic()
        self.trades_in += 1
        hub = self.hub
        if hub is not None and hub.wants_trades(m.series):
            hub.trade(m.series, m.trade)

    def on_book(self, m: subjects.BookUpdate) -> None:
        """One book message: a snapshot starts the book over, a delta continues the state it follows
        (else the book is out of sync until the next snapshot), ``lost`` from the book's publisher
        takes it out of sync."""
        self._last_mono = now = time.monotonic()
        self.books_in += 1
        keeper = self.books.keepers.get(m.series)
        if keeper is None or keeper.depth != m.depth:
            keeper = self.books.keepers[m.series] = BookKeeper(m.series, m.depth, keep=m.depth)
            self._book_at[m.series] = None
            attach = getattr(self.hub, "attach_books", None)  # the API's hub serves it over WebSocket
            if attach is not None:
                attach(self.books)
        self._book_heard[m.series] = now
        at = self._book_at.get(m.series)
        if m.kind == "snapshot":
            if at == (m.source, m.sequence) and keeper.in_sync:
                return  # the periodic snapshot of the state held: a heartbeat
            keeper.snapshot(m.bids, m.asks, m.venue_seq, m.time_ms)
            self._book_at[m.series] = (m.source, m.sequence)
        elif m.kind == "delta":
            if at == (m.source, m.prev):
                keeper.apply(m.bids, m.asks, m.venue_seq, m.time_ms)
                self._book_at[m.series] = (m.source, m.sequence)
            elif at is not None and at[0] == m.source and m.sequence <= at[1]:
                pass  # a repeat of a change already held
            else:
                self._book_lost(m.series, "gap")
        elif at is None or at[0] == m.source:  # lost: only its own publisher says so
            self._book_lost(m.series, "publisher")

    def _book_lost(self, series: str, kind: str) -> None:
        self._book_at[series] = None
        keeper = self.books.keepers[series]
        if keeper.in_sync:
            keeper.lost(kind)

    def check_books(self) -> None:
        """Books whose publisher fell silent go out of sync."""
        now = time.monotonic()
        for series, heard in self._book_heard.items():
            if now - heard > BOOK_SILENT_S and self._book_at.get(series) is not None:
                self._book_lost(series, "silent")

    def extra_metrics(self) -> Iterator[Metric]:
        """The node's and its writer's Prometheus families (``/metrics`` adds them)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        msgs = CounterMetricFamily(
            "deltafeed_cluster_messages", "Messages applied from the cluster's stream, by kind", labels=["kind"]
        )
        for kind, n in (
            ("candles", self.candles_in),
            ("switches", self.switches_in),
            ("trades", self.trades_in),
            ("books", self.books_in),
        ):
            msgs.add_metric([kind], float(n))
        yield msgs
        for name, doc, value in (
            ("deltafeed_cluster_bad_messages", "Unreadable messages of the stream, counted and skipped", self.bad),
            ("deltafeed_cluster_stale_versions", "Non-final versions of candles already final, skipped", self.stale),
        ):
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], float(value))
            yield fam
        gauges: list[tuple[str, str, float | None]] = [
            ("deltafeed_cluster_nats_connected", "1 while connected to the cluster's NATS", float(self.nats_connected)),
            ("deltafeed_cluster_caught_up", "1 once the stream's replay reached its end", float(self.caught_up)),
            (
                "deltafeed_cluster_replay_pending",
                "Messages left to replay before caught up",
                float(self.replay_pending),
            ),
            (
                "deltafeed_cluster_last_latency_seconds",
                "Publication on a collector to arrival here, of the latest candle message",
                self.last_latency_s,
            ),
        ]
        w = self.writer
        if w is not None:
            gauges.append(("deltafeed_cluster_writer_lag", "Messages the cold-store writer has yet to receive", w.lag))
            for name, doc, value in (
                ("deltafeed_cluster_writer_candles", "Candles the writer upserted into the cold store", w.written),
                ("deltafeed_cluster_writer_failures", "Writes the cold store refused (retried)", w.failures),
                ("deltafeed_cluster_writer_bad_messages", "Unreadable messages the writer skipped", w.bad),
            ):
                fam = CounterMetricFamily(name, doc)
                fam.add_metric([], float(value))
                yield fam
        for name, doc, v in gauges:
            gauge = GaugeMetricFamily(name, doc)
            if v is not None:
                gauge.add_metric([], float(v))
            yield gauge

    # --- EngineView -------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def timeframes(self) -> list[str]:
        return sorted(self._tfs, key=lambda tf: timeframe(tf).ms)

    @property
    def states(self) -> Mapping[str, Series]:
        return {}

    @property
    def failovers(self) -> Mapping[str, FailoverPair]:
        return {}

    @property
    def metrics(self) -> EngineMetrics:
        return self.metrics_

    def instrument_names(self) -> list[str]:
        return sorted(self._series)

    def health(self) -> list[str]:
        reasons = []
        if not self.nats_connected:
            reasons.append(f"not connected to NATS (cluster {self.cluster})")
        if not self.caught_up:
            reasons.append(f"replaying the cluster's stream ({self.replay_pending} messages to go)")
        return reasons

    def readiness(self) -> list[str]:
        return self.health()

    def report(self) -> NodeStatus:
        age = None if self._last_mono is None else round(time.monotonic() - self._last_mono, 3)
        stream = StreamCounters(
            self.cluster,
            self.nats_connected,
            self.caught_up,
            self.candles_in,
            self.switches_in,
            self.trades_in,
            self.books_in,
            self.bad,
            self.stale,
            self.replay_pending,
            age,
            None if self.last_latency_s is None else round(self.last_latency_s, 4),
        )
        return NodeStatus(
            venue_time_ms=int(time.time() * 1000),
            connected=self.nats_connected,
            connections=0,
            connects=0,
            reconnects=0,
            rotations=0,
            stale_drops=0,
            connect_budget_waits=0,
            frames=0,
            rest_requests=0,
            rest_throttled=0,
            rest_server_errors=0,
            rest_limiter_waits=0,
            skipped_frames={},
            venues={},
            books={k: msgspec.convert(b.status(), BookStatus) for k, b in self.books.keepers.items()},
            store_pending=0,
            store_written=0,
            store_failures=0,
            store_dropped=0,
            store=self.cold.name if self.cold is not None else "none",
            store_spooled=0,
            store_spool_pending=0,
            store_replayed=0,
            store_up=True,
            hot_up=None,
            hot_written=None,
            hot_failures=None,
            hot_refills=None,
            hot=None,
            ticks=None,
            pending_repairs=0,
            repairs_merged=0,
            provisional=0,
            reconciled=0,
            corrected=0,
            audits=0,
            audit_gaps=0,
            quiet_holes=0,
            healthy=not self.health(),
            failover={},
            instruments={},
            stream=stream,
        )

    def snapshot(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        return self.hot.last(instrument, timeframe, n) if n > 0 else []

    async def candles(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        final_only: bool = False,
    ) -> list[Candle]:
        return await read_candles(
            MemoryHot(self.hot), self.cold, instrument, timeframe, since_ms, until_ms, limit, final_only=final_only
        )

    async def trades(
        self, instrument: str, since_ms: int | None = None, until_ms: int | None = None, limit: int | None = None
    ) -> TickPage | None:
        return None  # a serving node keeps no raw ticks (collectors' stores do)

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        lo, hi = since_ms if since_ms is not None else -(2**62), until_ms if until_ms is not None else 2**62
        found = {k: w for k, w in self._switches.get(instrument, {}).items() if lo <= k <= hi}
        if self.cold is not None:
            with contextlib.suppress(StoreError):
                for w in await self.cold.switches(instrument, since_ms, until_ms):
                    found.setdefault(w.since_ms, w)
        return [found[k] for k in sorted(found)]

    def switch_doc(self, w: Switch, silent_s: float | None = None) -> SwitchDoc:
        return switch_doc(w, self.timeframes, silent_s)

    async def start_streaming(self, instruments: list[str] | None = None) -> list[str]:
        raise BadInput("this is a serving node of a cluster: it collects nothing; start streaming on a collector")

    async def stop_streaming(self, instruments: list[str] | None = None) -> list[str]:
        raise BadInput("this is a serving node of a cluster: it collects nothing; stop streaming on a collector")


class StreamFeed:
    """Feeds a :class:`ClusterView` from JetStream: candles and switches replayed from the start of
    the stream then followed, trades and books followed from now on.

    Each kind has its own ordered consumer (nats-py recreates one that loses its place). The replay
    is over once a message says nothing is pending after it, or at once when the stream holds no
    candles.
    """

    def __init__(self, view: ClusterView, nc: Any) -> None:
        self.view = view
        self.nc = nc
        self._subs: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._created: Any = None  # when the stream followed was made (another one: start over)

    async def start(self) -> None:
        self.view.nats_connected = self.nc.is_connected
        await self._subscribe()
        self._task = asyncio.create_task(self._watch(), name="cluster-feed")

    async def _subscribe(self) -> None:
        from nats.js.api import DeliverPolicy

        view = self.view
        js = self.nc.jetstream()
        await subjects.ensure_stream(js, view.cluster)
        info = await js.stream_info(
            subjects.stream_name(view.cluster), subjects_filter=subjects.filter_subject(view.cluster, subjects.CANDLES)
        )
        self._created = info.created
        pending = sum((info.state.subjects or {}).values())
        view.replay_pending = pending
        started = time.perf_counter()
        view.caught_up = pending == 0

        # Trades and books are followed from now on: a consumer recreated before its first message
        # (NATS restarted) starts at the stream's beginning again, whose old ones are skipped here.
        live_from = info.state.last_seq + 1

        def handler(kind: str, apply: Any, decode: Any) -> Any:
            async def cb(msg: Any) -> None:
                if kind in (subjects.TRADES, subjects.BOOKS) and _stream_seq(msg) < live_from:
                    return
                try:
                    m = decode(msg.data)
                except ValueError as exc:
                    view.bad += 1
                    log.warning("skipped a %s message on %s: %s", kind, msg.subject, exc)
                else:
                    apply(m)
                if kind == subjects.CANDLES and not view.caught_up:
                    try:
                        left = msg.metadata.num_pending
                    except Exception:  # a message without JetStream metadata: nothing to tell
                        return
                    view.replay_pending = left
                    if left == 0:
                        view.caught_up = True
                        log.info(
                            "replayed the cluster's stream (%d messages in %.3f s); following it live",
                            view.candles_in + view.stale + view.bad,
                            time.perf_counter() - started,
                        )

            return cb

        for kind, apply, decode, policy in (
            (subjects.CANDLES, view.on_candle, subjects.decode_candle, DeliverPolicy.ALL),
            (subjects.SWITCHES, view.on_switch, subjects.decode_switch, DeliverPolicy.ALL),
            (subjects.TRADES, view.on_trade, subjects.decode_trade, DeliverPolicy.NEW),
            (subjects.BOOKS, view.on_book, subjects.decode_book, DeliverPolicy.NEW),
        ):
            self._subs.append(
                await js.subscribe(
                    subjects.filter_subject(view.cluster, kind),
                    cb=handler(kind, apply, decode),
                    ordered_consumer=True,
                    deliver_policy=policy,
                    pending_msgs_limit=1_000_000,
                )
            )

    async def _watch(self) -> None:
        """Every second, books whose publisher fell silent go out of sync; every few seconds, the
        stream is checked to be the one followed: a NATS server that came back without its store
        (or a stream deleted and made again) starts the feed over on the new stream."""
        from nats.js.errors import NotFoundError

        n = 0
        while True:
            await asyncio.sleep(1.0)
            self.view.check_books()
            n += 1
            if n % STREAM_CHECK_S or not self.nc.is_connected:
                continue
            try:
                info = await self.nc.jetstream().stream_info(subjects.stream_name(self.view.cluster))
                same = info.created == self._created
            except NotFoundError:
                same = False
            except Exception:  # NATS away for a moment: the next check
                continue
            if not same:
                log.warning(
                    "the cluster's stream is not the one followed (NATS lost its store?); following the new one"
                )
                try:
                    await self._unsubscribe()
                    await self._subscribe()
                except Exception as exc:
                    log.warning("cannot follow the cluster's stream yet (%s); retrying", exc)

    async def _unsubscribe(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._unsubscribe()


def _stream_seq(msg: Any) -> int:
    """A message's sequence in the stream (a large number when it has no JetStream metadata)."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 2**63


async def load_cold_series(view: ClusterView) -> None:
    """Make the series and timeframes the cold store holds known to ``view`` (a series may have
    aged out of the stream and still be served from the store)."""
    if view.cold is None:
        return
    try:
        for inst, tf, n in await view.cold.instruments():
            if n:
                view.known(inst, tf)
    except StoreError as exc:
        log.warning("cannot list the series in %s (%s); serving those the stream holds", view.cold.name, exc)


async def connect(url: str, name: str, view: ClusterView | None = None) -> Any:
    """A NATS connection to ``url`` (Unavailable when nothing answers), reconnecting for ever; with
    ``view``, its ``nats_connected`` follows the connection."""
    from nats.aio.client import Client as NATS

    from deltafeed.model import Unavailable

    async def disconnected() -> None:
        if view is not None:
            view.nats_connected = False
        if not nc.is_closed:
            log.warning("disconnected from NATS %s; reconnecting", url)

    async def reconnected() -> None:
        if view is not None:
            view.nats_connected = True
        log.info("reconnected to NATS %s", url)

    async def error(exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    nc = NATS()
    try:
        # nats-py retries a first connection as long as later ones: a server that is not there at
        # all is told by one TCP connection instead, and the command exits 69.
        parts = urlsplit(url)
        _, w = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 4222), 5)
        w.close()
        await nc.connect(
            url,
            name=name,
            connect_timeout=5,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        return nc
    except Exception as exc:  # nats-py raises its own errors (no servers, timeouts) and OSError
        raise Unavailable(
            f"cannot reach NATS at {url} ({exc or type(exc).__name__}); is nats-server running?"
        ) from None
