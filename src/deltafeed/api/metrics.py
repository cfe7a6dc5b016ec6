"""Prometheus metrics at ``GET /metrics``, read from the engine at scrape time.

The engine keeps plain integer counters and fixed-bucket histograms (``deltafeed.stats``) that cost a
field increment or a bisect on the hot path; nothing here runs until Prometheus scrapes. Then
:class:`EngineCollector` reads ``engine.report()``, ``engine.health()``, the engine's histograms, the
fan-out hub's counters and the API's connection guard's, and turns them into metric families. Each
server has its own ``CollectorRegistry``, so two servers (or two tests) in one process never share
or clash.

Names follow Prometheus' rules: a ``deltafeed_`` prefix, base units (``_seconds``), ``_total`` on
counters (added by prometheus-client), labels ``instrument`` (``binance:BTCUSDT``) and ``venue``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import utils as _prom_utils
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from deltafeed.buildinfo import python_version, version
from deltafeed.stats import Histogram

if TYPE_CHECKING:
    from deltafeed.api.guard import ConnectionGuard
    from deltafeed.engine.status import BookStatus, FeedStatus, TickStatus
    from deltafeed.engine.view import EngineView

#: How Prometheus writes a bucket bound (``le``): "0.005", "1.0", "+Inf".
_go_float: Callable[[float], str] = _prom_utils.floatToGoString

# (status key, metric name, help) of per-instrument counters.
_INSTRUMENT_COUNTERS = (
    ("trades", "deltafeed_trades", "Trades received from the venue's stream"),
    ("venue_candles", "deltafeed_venue_candles", "Candle (kline) messages received from the venue's stream"),
    ("gaps", "deltafeed_gaps", "Holes found in the trade stream (trade ids that jumped)"),
    ("missed_trades", "deltafeed_missed_trades", "Trades known missing from the stream, by their ids"),
    ("duplicates", "deltafeed_duplicate_trades", "Trades received twice and counted once"),
    ("repaired", "deltafeed_candles_backfilled", "Candles fetched again over REST to fill holes"),
    ("bootstrapped", "deltafeed_candles_bootstrapped", "Candles fetched over REST at start-up"),
)
# (status key, metric name, help) of per-venue counters.
_VENUE_COUNTERS = (
    ("connects", "deltafeed_connects", "WebSocket connections made to the venue"),
    ("reconnects", "deltafeed_reconnects", "WebSocket reconnections after a lost connection (rotations excluded)"),
    ("rotations", "deltafeed_rotations", "Planned connection replacements without a gap"),
    ("stale_drops", "deltafeed_stale_drops", "Connections dropped because they went silent"),
    ("connect_budget_waits", "deltafeed_connect_budget_waits", "Connection attempts delayed by the venue's budget"),
    ("rest_requests", "deltafeed_rest_requests", "REST requests sent to the venue"),
    ("rest_throttled", "deltafeed_rest_rate_limited", "REST answers 429 or 418 (rate limited) from the venue"),
    ("rest_limiter_waits", "deltafeed_rest_rate_limit_waits", "REST requests that waited for the rate limiter"),
    ("rest_server_errors", "deltafeed_rest_server_errors", "REST answers 5xx from the venue"),
)
# (status key, metric name, help) of store and repair counters and gauges.
_STORE_COUNTERS = (
    ("store_written", "deltafeed_store_written_candles", "Candle rows written to the cold store"),
    ("store_failures", "deltafeed_store_write_failures", "Failed cold store batch writes (retried)"),
    (
        "store_dropped",
        "deltafeed_store_dropped_updates",
        "Candle updates not queued because the store backlog was full",
    ),
    ("store_spooled", "deltafeed_store_spooled_candles", "Candle rows spooled to disk while the cold store failed"),
    ("store_replayed", "deltafeed_store_replayed_candles", "Candle rows replayed from the spool into the cold store"),
    ("hot_written", "deltafeed_hot_redis_written_candles", "Candle writes to the Redis hot tier"),
    ("hot_failures", "deltafeed_hot_redis_failures", "Failed writes to the Redis hot tier (it is re-filled)"),
    ("hot_refills", "deltafeed_hot_redis_refills", "Times the Redis hot tier was re-filled from memory"),
    ("audits", "deltafeed_store_audits", "Store audits for holes"),
    ("audit_gaps", "deltafeed_store_audit_gaps", "Holes found by store audits"),
    (
        "repairs_merged",
        "deltafeed_repairs_merged",
        "Reported losses that widened a waiting repair instead of queueing one",
    ),
)
_STORE_GAUGES = (
    ("store_pending", "deltafeed_store_pending_candles", "Candle rows waiting to be written to the cold store"),
    ("pending_repairs", "deltafeed_pending_repairs", "Ranges of candles waiting to be fetched again over REST"),
    ("store_spool_pending", "deltafeed_store_spool_pending_candles", "Candle rows in the spool, not yet replayed"),
    ("store_up", "deltafeed_store_up", "1 when the last cold store write succeeded, else 0"),
    ("hot_up", "deltafeed_hot_redis_up", "1 when the Redis hot tier is reachable, else 0 (absent without --hot)"),
)


def _num(value: Any) -> float | None:
    """A status value as a number, or None when absent or not numeric (bools count as 0/1)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _count(value: Any) -> float:
    """A hub attribute that may be a number or a collection (of clients)."""
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(len(value))
    except TypeError:
        return 0.0


def _book_metrics(books: dict[str, BookStatus]) -> Iterator[Metric]:
    """Per kept order book: in sync or not, resyncs by kind, seconds out of sync, changes applied."""
    in_sync = GaugeMetricFamily("deltafeed_book_in_sync", "1 while the order book is in sync", labels=["instrument"])
    out = CounterMetricFamily(
        "deltafeed_book_out_of_sync_seconds", "Seconds the order book was out of sync", labels=["instrument"]
    )
    applied = CounterMetricFamily(
        "deltafeed_book_messages", "Book snapshots and deltas applied", labels=["instrument", "kind"]
    )
    resyncs = CounterMetricFamily(
        "deltafeed_book_resyncs", "Order-book resynchronisations, by what broke the book", labels=["instrument", "kind"]
    )
    for inst, b in books.items():
        in_sync.add_metric([inst], float(b.in_sync))
        out.add_metric([inst], b.out_of_sync_s)
        applied.add_metric([inst, "snapshot"], float(b.snapshots))
        applied.add_metric([inst, "delta"], float(b.deltas))
        for kind, n in b.resyncs.items():
            resyncs.add_metric([inst, kind], float(n))
    yield from (in_sync, out, applied, resyncs)


def _tick_metrics(ticks: TickStatus | None) -> Iterator[Metric]:
    """The raw tick recorder's counters (nothing when this run keeps no ticks)."""
    if ticks is None:
        return
    for value, name, doc in (
        (ticks.written, "deltafeed_ticks_written", "Raw ticks (trades or quotes) written to the cold tier"),
        (ticks.dropped, "deltafeed_ticks_dropped", "Raw ticks dropped: the store failed longer than memory held them"),
        (ticks.gaps, "deltafeed_tick_gaps", "Spans of raw ticks recorded as missing"),
    ):
        fam = CounterMetricFamily(name, doc)
        fam.add_metric([], float(value))
        yield fam
    for value, name, doc in (
        (ticks.pending, "deltafeed_ticks_pending", "Raw ticks in memory, not yet written"),
        (int(ticks.up), "deltafeed_ticks_store_up", "1 when the last raw tick write succeeded, else 0"),
    ):
        gauge = GaugeMetricFamily(name, doc)
        gauge.add_metric([], float(value))
        yield gauge


def histogram_family(name: str, documentation: str, hist: Histogram) -> HistogramMetricFamily:
    """A Prometheus histogram from a :class:`deltafeed.stats.Histogram` (cumulated here, at scrape)."""
    buckets = [(_go_float(bound), float(n)) for bound, n in hist.cumulative()]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=hist.sum)


class EngineCollector(Collector):
    """Reads an engine (and the API's fan-out hub) when the registry is collected; holds no state."""

    def __init__(self, engine: EngineView, hub: Any = None, guard: ConnectionGuard | None = None) -> None:
        self.engine = engine
        self.hub = hub
        self.guard = guard

    def describe(self) -> Iterable[Metric]:
        return []  # nothing to check at registration: the names are fixed and the registry is private

    def collect(self) -> Iterator[Metric]:
        engine = self.engine
        status = engine.report()
        reasons = engine.health()

        healthy = GaugeMetricFamily("deltafeed_healthy", "1 when the collector is healthy (GET /health), else 0")
        healthy.add_metric([], 0.0 if reasons else 1.0)
        yield healthy
        problems = GaugeMetricFamily("deltafeed_health_problems", "Reasons the collector is not healthy")
        problems.add_metric([], float(len(reasons)))
        yield problems

        instruments = status.instruments
        for key, name, doc in _INSTRUMENT_COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["instrument"])
            for inst, st in instruments.items():
                # A counter the status leaves out is read from the series itself.
                v = _num(getattr(st, key) if hasattr(st, key) else getattr(engine.states.get(inst), key, None))
                if v is not None:
                    fam.add_metric([inst], v)
            yield fam
        for key, name, doc in (
            ("last_message_age_s", "deltafeed_last_message_age_seconds", "Seconds since the last trade or kline"),
            ("streaming", "deltafeed_streaming", "1 when the instrument is being streamed"),
            ("connected", "deltafeed_instrument_connected", "1 when the instrument's stream is connected"),
        ):
            gauge = GaugeMetricFamily(name, doc, labels=["instrument"])
            for inst, st in instruments.items():
                v = _num(getattr(st, key))
                if v is not None:
                    gauge.add_metric([inst], v)
            yield gauge

        switches = CounterMetricFamily(
            "deltafeed_failover_switches",
            "Switches of a logical instrument between its sources",
            labels=["instrument"],
        )
        standby = GaugeMetricFamily(
            "deltafeed_failover_on_standby",
            "1 while a logical instrument is served from its standby source",
            labels=["instrument"],
        )
        for name, fo in status.failover.items():
            switches.add_metric([name], float(fo.switches))
            standby.add_metric([name], float(fo.on_standby))
        yield switches
        yield standby

        yield from _book_metrics(status.books)

        venues: dict[str, FeedStatus] = status.venues
        connected = GaugeMetricFamily("deltafeed_connected", "1 when the venue's stream is connected", labels=["venue"])
        for venue, vs in venues.items():
            connected.add_metric([venue], float(vs.connected))
        yield connected
        for key, name, doc in _VENUE_COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["venue"])
            for venue, vs in venues.items():
                v = _num(getattr(vs, key))
                if v is not None:
                    fam.add_metric([venue], v)
            yield fam
        skipped = CounterMetricFamily(
            "deltafeed_skipped_frames", "Frames from the venue skipped, by reason", labels=["venue", "reason"]
        )
        for reason, n in status.skipped_frames.items():
            skipped.add_metric([engine.settings.venue, str(reason)], float(n))
        yield skipped

        for key, name, doc in _STORE_COUNTERS:
            fam = CounterMetricFamily(name, doc)
            v = _num(getattr(status, key))
            if v is not None:
                fam.add_metric([], v)
            yield fam
        for key, name, doc in _STORE_GAUGES:
            gauge = GaugeMetricFamily(name, doc)
            v = _num(getattr(status, key))
            if v is not None:
                gauge.add_metric([], v)
            yield gauge

        yield from _tick_metrics(status.ticks)

        metrics = engine.metrics
        yield histogram_family(
            "deltafeed_candle_latency_seconds",
            "Live candles (REST history excluded): from a candle's end (venue clock) to its write into the cold store",
            metrics.candle_latency,
        )
        yield histogram_family(
            "deltafeed_candle_close_seconds",
            "Live candles: from a candle's end (venue clock) to the engine closing it",
            metrics.candle_close,
        )
        yield histogram_family(
            "deltafeed_candle_store_seconds",
            "Live candles: from the engine closing a candle to its write into the cold store",
            metrics.candle_store,
        )
        yield histogram_family(
            "deltafeed_store_write_seconds", "Duration of one cold store batch write", engine.metrics.store_write
        )

        hub = self.hub if self.hub is not None else getattr(engine, "hub", None)
        clients = GaugeMetricFamily("deltafeed_api_clients", "WebSocket clients connected to the API")
        dropped = CounterMetricFamily(
            "deltafeed_api_messages_dropped",
            "Messages to API clients dropped (conflated or lost) because a client was slow",
        )
        slow = CounterMetricFamily(
            "deltafeed_api_slow_clients_disconnected", "API clients disconnected for falling too far behind"
        )
        if hub is not None:
            clients.add_metric([], _count(getattr(hub, "clients", 0)))
            dropped.add_metric([], _count(getattr(hub, "dropped", 0)))
            slow.add_metric([], _count(getattr(hub, "disconnected_slow", 0)))
        bad_ops = CounterMetricFamily(
            "deltafeed_api_bad_ws_ops", "WebSocket ops refused (unreadable or invalid), each answered with an error"
        )
        if hub is not None:
            bad_ops.add_metric([], _count(getattr(hub, "bad_ops", 0)))
        yield clients
        yield dropped
        yield slow
        yield bad_ops
        yield from self._guard_metrics()
        # A view's own families (a cluster's serving node: its stream and its writer).
        extra: Callable[[], Iterable[Metric]] | None = getattr(engine, "extra_metrics", None)
        if extra is not None:
            yield from extra()

    def _guard_metrics(self) -> Iterator[Metric]:
        """The API's connections: how many, and those refused, evicted, timed out or unparseable."""
        guard = self.guard
        if guard is None:
            return
        gauges = (
            ("deltafeed_api_connections", "HTTP and WebSocket connections open to the API", guard.connections),
            (
                "deltafeed_api_connections_waiting_for_headers",
                "API connections whose request headers are not complete yet",
                guard.waiting_for_headers,
            ),
            ("deltafeed_api_max_connections", "Most connections the API serves at once", guard.max_connections),
        )
        for name, doc, value in gauges:
            gauge = GaugeMetricFamily(name, doc)
            gauge.add_metric([], float(value))
            yield gauge
        counters = (
            ("deltafeed_api_connections_accepted", "Connections the API accepted", guard.accepted),
            (
                "deltafeed_api_connections_refused",
                "Connections refused (503) because every allowed connection was busy",
                guard.refused,
            ),
            (
                "deltafeed_api_connections_evicted",
                "Connections closed to make room for a new one (waiting for headers, or idle)",
                guard.evicted,
            ),
            (
                "deltafeed_api_header_timeouts",
                "Connections closed because a request's headers took too long",
                guard.header_timeouts,
            ),
            ("deltafeed_api_bad_requests", "Requests too malformed to parse (answered 400 or 431)", guard.bad_requests),
        )
        for name, doc, value in counters:
            fam = CounterMetricFamily(name, doc)
            fam.add_metric([], float(value))
            yield fam


class BuildCollector(Collector):
    """``deltafeed_build_info{version, python}`` 1: which build answers (join it onto other series
    with ``* on(instance) group_left(version)``)."""

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("deltafeed_build", "The running deltafeed's version, from its package metadata")
        info.add_metric([], {"version": version(), "python": python_version()})
        yield info


def make_registry(engine: EngineView, hub: Any = None, guard: ConnectionGuard | None = None) -> CollectorRegistry:
    """A private registry: the engine's collector, the build's, and the process' own (memory, CPU,
    open files: ``process_*``; the interpreter: ``python_info``, ``python_gc_*``), which
    prometheus-client registers only on its global registry unless asked."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, hub, guard))
    registry.register(BuildCollector())
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def add_metrics_route(
    app: web.Application, engine: EngineView, hub: Any = None, guard: ConnectionGuard | None = None
) -> CollectorRegistry:
    """Serve ``GET /metrics`` (Prometheus text, or OpenMetrics when the scraper asks for it)."""
    registry = make_registry(engine, hub, guard)

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    app.router.add_get("/metrics", metrics)
    return registry
