"""The collector role's Prometheus metrics (``GET /metrics`` on ``cluster_metrics = "HOST:PORT"``):
what it holds, what it published, its leases taken over and lost, and each instrument's trades."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from deltafeed.api.metrics import BuildCollector

if TYPE_CHECKING:
    from deltafeed.cluster.collector import Collector as ClusterCollector


class CollectorMetrics(Collector):
    """Read from the collector at scrape time: nothing to update on the hot path."""

    def __init__(self, collector: ClusterCollector) -> None:
        self.c = collector

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = self.c
        labels = ["cluster", "collector"]
        ids = [c.cluster, c.id]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=labels)
            g.add_metric(ids, value)
            return g

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=labels)
            m.add_metric(ids, value)
            return m

        out = c.outlet
        yield gauge("deltafeed_cluster_instruments", "Instruments this collector holds the lease of", len(c.held))
        if out is not None:
            yield counter("deltafeed_cluster_published", "Messages JetStream acknowledged", out.published)
            yield counter(
                "deltafeed_cluster_duplicates", "Acknowledged messages JetStream had already (dropped)", out.duplicates
            )
            yield counter("deltafeed_cluster_publish_failed", "Publications not acknowledged (sent again)", out.failed)
            yield counter("deltafeed_cluster_publish_dropped", "Messages dropped while NATS was away", out.dropped)
            yield gauge("deltafeed_cluster_publish_pending", "Messages waiting to be published", out.pending)
        if c.leases is not None:
            leases = c.leases
            yield counter("deltafeed_cluster_leases_taken_over", "Leases taken from a silent holder", leases.taken_over)
            yield counter("deltafeed_cluster_leases_lost", "Leases lost (taken by another, not renewed)", leases.lost)
        trades = CounterMetricFamily(
            "deltafeed_cluster_trades", "Trades received per instrument held", labels=[*labels, "instrument"]
        )
        counts: dict[str, int] = {}
        if c.engine is not None:
            for st in c.engine.states.values():
                name = str(st.instrument)
                counts[name] = counts.get(name, 0) + st.trades
        for key in c.held:
            unit = c.units[key]
            trades.add_metric([*ids, unit.name], sum(counts.get(str(i), 0) for i in unit.sources))
        yield trades


async def serve_metrics(collector: ClusterCollector, host: str, port: int) -> web.AppRunner:
    """Serve ``GET /metrics`` and ``GET /livez`` of ``collector`` on ``host:port``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(collector))
    registry.register(BuildCollector())
    ProcessCollector(registry=registry)

    async def metrics(request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    async def livez(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "collector": collector.id, "instruments": len(collector.held)})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/livez", livez)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
