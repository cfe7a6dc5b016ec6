"""Writes deploy/grafana/deltafeed.json, the Grafana dashboard of a deltafeed service.

The dashboard is generated (panels as data, below) rather than edited in Grafana's UI so that its
expressions stay readable in review; tests/integration/test_ops.py checks every metric an
expression names against the ``/metrics`` of a running engine, and that this script's output is
the committed file. Run it after changing a panel:  python scripts/grafana_dashboard.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "deltafeed.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = '{instance=~"$instance"}'  # every expression is limited to the instances picked above


def q(*quantiles: float, name: str) -> list[tuple[str, str]]:
    """Quantiles of a histogram over 5 minutes, summed over the picked instances."""
    expr = f"sum by (le) (rate({name}_bucket{SEL}[5m]))"
    return [(f"histogram_quantile({p}, {expr})", f"p{round(p * 100)}") for p in quantiles]


# (title, kind, unit, [(expression, legend)], width, height); a row is ("row", title).
PANELS: list[tuple[Any, ...]] = [
    ("row", "Service"),
    ("Version", "stat", "none", [(f"deltafeed_build_info{SEL}", "{{version}} (Python {{python}})")], 6, 4),
    ("Healthy", "stat", "bool_yes_no", [(f"min(deltafeed_healthy{SEL})", "healthy")], 3, 4),
    ("Health problems", "stat", "none", [(f"sum(deltafeed_health_problems{SEL})", "problems")], 3, 4),
    ("Venues connected", "stat", "none", [(f"sum by (venue) (deltafeed_connected{SEL})", "{{venue}}")], 6, 4),
    ("Cold store up", "stat", "bool_yes_no", [(f"min(deltafeed_store_up{SEL})", "store")], 3, 4),
    ("Uptime", "stat", "s", [(f"time() - max(process_start_time_seconds{SEL})", "uptime")], 3, 4),
    ("row", "Market data"),
    (
        "Trades / s",
        "timeseries",
        "ops",
        [(f"sum by (instrument) (rate(deltafeed_trades_total{SEL}[1m]))", "{{instrument}}")],
        12,
        8,
    ),
    (
        "Seconds since the last message",
        "timeseries",
        "s",
        [(f"max by (instrument) (deltafeed_last_message_age_seconds{SEL})", "{{instrument}}")],
        12,
        8,
    ),
    (
        "Live candle latency: end to stored",
        "timeseries",
        "s",
        q(0.5, 0.99, name="deltafeed_candle_latency_seconds"),
        8,
        8,
    ),
    (
        "Live candle latency: end to closed",
        "timeseries",
        "s",
        q(0.5, 0.99, name="deltafeed_candle_close_seconds"),
        8,
        8,
    ),
    (
        "Live candle latency: closed to stored",
        "timeseries",
        "s",
        q(0.5, 0.99, name="deltafeed_candle_store_seconds"),
        8,
        8,
    ),
    (
        "Holes and repairs (per 5 min)",
        "timeseries",
        "none",
        [
            (f"sum(increase(deltafeed_gaps_total{SEL}[5m]))", "holes in the trade stream"),
            (f"sum(increase(deltafeed_missed_trades_total{SEL}[5m]))", "trades missed"),
            (f"sum(increase(deltafeed_candles_backfilled_total{SEL}[5m]))", "candles repaired over REST"),
            (f"sum(deltafeed_pending_repairs{SEL})", "repairs pending"),
            (f"sum(increase(deltafeed_store_audit_gaps_total{SEL}[5m]))", "holes found by audits"),
        ],
        12,
        8,
    ),
    (
        "Frames skipped / s",
        "timeseries",
        "ops",
        [(f"sum by (venue, reason) (rate(deltafeed_skipped_frames_total{SEL}[5m]))", "{{venue}} {{reason}}")],
        12,
        8,
    ),
    ("row", "Venues"),
    (
        "Connections (per hour)",
        "timeseries",
        "none",
        [
            (f"sum by (venue) (increase(deltafeed_reconnects_total{SEL}[1h]))", "{{venue}} reconnects"),
            (f"sum by (venue) (increase(deltafeed_stale_drops_total{SEL}[1h]))", "{{venue}} dropped silent"),
            (f"sum by (venue) (increase(deltafeed_rotations_total{SEL}[1h]))", "{{venue}} rotations"),
        ],
        12,
        8,
    ),
    (
        "REST requests / s",
        "timeseries",
        "ops",
        [
            (f"sum by (venue) (rate(deltafeed_rest_requests_total{SEL}[5m]))", "{{venue}} requests"),
            (f"sum by (venue) (rate(deltafeed_rest_rate_limited_total{SEL}[5m]))", "{{venue}} rate limited"),
            (f"sum by (venue) (rate(deltafeed_rest_server_errors_total{SEL}[5m]))", "{{venue}} 5xx"),
        ],
        12,
        8,
    ),
    (
        "Failover: on standby",
        "timeseries",
        "none",
        [(f"max by (instrument) (deltafeed_failover_on_standby{SEL})", "{{instrument}}")],
        24,
        6,
    ),
    ("row", "Stores"),
    (
        "Cold store writes",
        "timeseries",
        "ops",
        [
            (f"sum(rate(deltafeed_store_written_candles_total{SEL}[5m]))", "candles written / s"),
            (f"sum(rate(deltafeed_store_write_failures_total{SEL}[5m]))", "failed batches / s"),
        ],
        8,
        8,
    ),
    (
        "Waiting to be written",
        "timeseries",
        "none",
        [
            (f"sum(deltafeed_store_pending_candles{SEL})", "in memory"),
            (f"sum(deltafeed_store_spool_pending_candles{SEL})", "in the spool"),
        ],
        8,
        8,
    ),
    ("Cold store batch write", "timeseries", "s", q(0.5, 0.99, name="deltafeed_store_write_seconds"), 8, 8),
    ("row", "API"),
    (
        "Clients",
        "timeseries",
        "none",
        [
            (f"sum(deltafeed_api_clients{SEL})", "WebSocket clients"),
            (f"sum(deltafeed_api_connections{SEL})", "connections"),
        ],
        12,
        8,
    ),
    (
        "Refusals and drops / s",
        "timeseries",
        "ops",
        [
            (f"sum(rate(deltafeed_api_messages_dropped_total{SEL}[5m]))", "messages dropped (slow clients)"),
            (f"sum(rate(deltafeed_api_connections_refused_total{SEL}[5m]))", "connections refused"),
            (f"sum(rate(deltafeed_api_slow_clients_disconnected_total{SEL}[5m]))", "slow clients disconnected"),
        ],
        12,
        8,
    ),
    ("row", "Process"),
    ("Resident memory", "timeseries", "bytes", [(f"process_resident_memory_bytes{SEL}", "{{instance}}")], 8, 8),
    ("CPU", "timeseries", "percentunit", [(f"rate(process_cpu_seconds_total{SEL}[1m])", "{{instance}}")], 8, 8),
    (
        "Open files and GC",
        "timeseries",
        "none",
        [
            (f"process_open_fds{SEL}", "{{instance}} open files"),
            (f"sum by (instance) (rate(python_gc_collections_total{SEL}[5m]))", "{{instance}} GC runs / s"),
        ],
        8,
        8,
    ),
]


def build() -> dict[str, Any]:
    """The dashboard document."""
    panels: list[dict[str, Any]] = []
    x = y = 0
    row_h = 0
    for pid, spec in enumerate(PANELS, start=1):
        if spec[0] == "row":
            y += row_h
            x, row_h = 0, 0
            panels.append(
                {
                    "id": pid,
                    "type": "row",
                    "title": spec[1],
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            y += 1
            continue
        title, kind, unit, targets, w, h = spec
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        panel: dict[str, Any] = {
            "id": pid,
            "type": kind,
            "title": title,
            "datasource": DS,
            "gridPos": {"h": h, "w": w, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": [
                {"datasource": DS, "refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
                for i, (expr, legend) in enumerate(targets)
            ],
        }
        if kind == "stat":
            panel["options"] = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "textMode": "value_and_name",
            }
        panels.append(panel)
        x += w
        row_h = max(row_h, h)
    return {
        "title": "deltafeed",
        "uid": "deltafeed",
        "description": "A deltafeed service: venues, live candle latency, holes and repairs, stores, API, process.",
        "tags": ["deltafeed", "market-data"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                },
                {
                    "name": "instance",
                    "label": "Instance",
                    "type": "query",
                    "datasource": DS,
                    "query": {"query": "label_values(deltafeed_build_info, instance)", "refId": "instance"},
                    "definition": "label_values(deltafeed_build_info, instance)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "refresh": 2,
                    "current": {"text": "All", "value": "$__all"},
                },
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
