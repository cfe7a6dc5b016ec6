"""A cluster's state as operators see it (``deltafeed cluster status``): its collectors and what each
holds, every lease, the stream's size and each durable consumer's lag."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import msgspec

from deltafeed.cluster import subjects
from deltafeed.cluster.collector import CollectorInfo, connect
from deltafeed.cluster.leases import read_lease
from deltafeed.model import cluster_name


async def _entries(js: Any, cluster: str, what: str) -> dict[str, bytes]:
    """Every key and value of bucket ``what`` (empty when the bucket does not exist yet)."""
    from nats.js.errors import BucketNotFoundError, KeyDeletedError, KeyNotFoundError, NoKeysError

    try:
        kv = await js.key_value(subjects.bucket_name(cluster, what))
        keys = await kv.keys()
    except (BucketNotFoundError, NoKeysError):
        return {}
    out = {}
    for key in keys:
        try:
            out[key] = (await kv.get(key)).value or b""
        except (KeyNotFoundError, KeyDeletedError):
            continue
    return out


async def cluster_status(url: str, cluster: str) -> dict[str, Any]:
    """The status document of ``cluster`` on the NATS at ``url``."""
    from nats.js.errors import NotFoundError

    cluster_name(cluster)
    nc = await connect(url, "deltafeed-status")
    try:
        js = nc.jetstream()
        now = time.time()
        collectors = []
        for raw in (await _entries(js, cluster, subjects.COLLECTORS)).values():
            try:
                info = msgspec.json.decode(raw, type=CollectorInfo)
            except msgspec.DecodeError:
                continue
            age = max(0.0, now - info.at_ms / 1000)
            collectors.append(
                {
                    "id": info.id,
                    "host": info.host,
                    "pid": info.pid,
                    "instruments": info.instruments,
                    "since_ms": info.since_ms,
                    "lease_age_s": round(age, 1),
                    "alive": age < info.ttl_s,
                    "up_s": round(max(0.0, now - info.started_ms / 1000), 1),
                    "published": info.published,
                    "duplicates": info.duplicates,
                    "failed": info.failed,
                    "addresses": info.addresses,
                }
            )
        collectors.sort(key=lambda c: str(c["id"]))
        leases = {}
        for key, raw in sorted((await _entries(js, cluster, subjects.LEASES)).items()):
            lease = read_lease(raw)
            leases[subjects.series_of_key(key)] = {
                "holder": lease.holder or None,
                "age_s": round(max(0.0, now - lease.at_ms / 1000), 1),
            }
        # Per venue, per outgoing address: {"binance": {"10.0.0.7": {"weight_limit": ..., ...}}}.
        budgets: dict[str, dict[str, Any]] = {}
        for key, raw in sorted((await _entries(js, cluster, subjects.BUDGETS)).items()):
            venue, _, address = subjects.series_of_key(key).partition(":")
            with contextlib.suppress(msgspec.DecodeError):
                budgets.setdefault(venue, {})[address] = msgspec.json.decode(raw)
        stream: dict[str, Any] | None = None
        consumers = []
        name = subjects.stream_name(cluster)
        try:
            si = await js.stream_info(name)
        except NotFoundError:
            pass
        else:
            st = si.state
            stream = {"name": name, "messages": st.messages, "bytes": st.bytes, "consumers": st.consumer_count}
            for ci in await js.consumers_info(name):
                consumers.append(
                    {
                        "name": ci.name,
                        "lag": ci.num_pending,
                        "ack_pending": ci.num_ack_pending,
                        "redelivered": ci.num_redelivered,
                        "delivered_seq": ci.delivered.stream_seq if ci.delivered else None,
                    }
                )
        return {
            "cluster": cluster,
            "collectors": collectors,
            "leases": leases,
            "budgets": budgets,
            "stream": stream,
            "consumers": consumers,
        }
    finally:
        await nc.close()


def status_table(doc: dict[str, Any]) -> str:
    """The status document as lines of text for a terminal."""
    lines = [f"cluster {doc['cluster']}"]
    cols = doc["collectors"]
    lines.append(f"collectors: {len(cols)} ({sum(1 for c in cols if c['alive'])} alive)")
    for c in cols:
        state = "alive" if c["alive"] else "SILENT"
        lines.append(
            f"  {c['id']:<32} {state:<6} lease age {c['lease_age_s']:>5.1f} s  published {c['published']:>8}"
            f"  {', '.join(c['instruments']) or '-'}"
        )
    free = [k for k, v in doc["leases"].items() if not v["holder"]]
    lines.append(f"leases: {len(doc['leases'])} ({len(free)} free{': ' + ', '.join(free) if free else ''})")
    s = doc["stream"]
    if s is None:
        lines.append("stream: none yet")
    else:
        lines.append(f"stream {s['name']}: {s['messages']} messages, {s['bytes']} bytes, {s['consumers']} consumers")
    for c in doc["consumers"]:
        lines.append(f"  consumer {c['name']:<30} lag {c['lag']:>8}  ack pending {c['ack_pending']:>6}")
    return "\n".join(lines)
