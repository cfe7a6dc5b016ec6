"""What a dropped connection costs Lightstreamer's official Python client (lightstreamer-client-lib 2.x,
default options) against the IG replica: the replica resets the client's connection (TCP RST) now and
then (but not in the last 15 s), the client notices (its keepalive and stalled timeouts), recovers the session over HTTP
(``LS_recovery_from``) and binds again. Prints, per transport, the median and worst time from
DISCONNECTED:TRYING-RECOVERY to CONNECTED, the longest silence between two updates, and the updates
received against those the replica sent (equal when nothing was lost).

    python bench/ig_recovery.py [--seconds 60] [--resets-per-minute 6] [--transport WS-STREAMING]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from typing import Any

import aiohttp

from deltafeed.venues.ig.replica import IGReplica

EPIC = "CS.D.EURUSD.CFD.IP"
#: The end of a run without resets (longer than the client's default keepalive + stalled + reconnect timeouts).
QUIET_S = 15.0
START_MS = 1_772_582_400_000 + 10 * 3_600_000  # Wednesday 2026-03-04 10:00 UTC: the FX market open


def run_client(url: str, account: str, password: str, transport: str, seconds: float) -> dict[str, Any]:
    from lightstreamer.client import ClientListener, LightstreamerClient, Subscription, SubscriptionListener

    statuses: list[tuple[float, str]] = []
    updates: list[float] = []

    class Status(ClientListener):  # type: ignore[misc]
        def onStatusChange(self, status: str) -> None:
            statuses.append((time.monotonic(), status))

    class Updates(SubscriptionListener):  # type: ignore[misc]
        def onItemUpdate(self, update: Any) -> None:
            updates.append(time.monotonic())

    client = LightstreamerClient(url, None)
    client.connectionDetails.setUser(account)
    client.connectionDetails.setPassword(password)
    client.connectionOptions.setForcedTransport(transport)
    client.addListener(Status())
    sub = Subscription("MERGE", [f"MARKET:{EPIC}"], ["BID", "OFFER"])
    sub.addListener(Updates())
    client.subscribe(sub)
    client.connect()
    time.sleep(seconds)
    client.disconnect()
    time.sleep(0.5)
    return {"statuses": statuses, "updates": updates}


async def bench(transport: str, seconds: float, resets: float) -> None:
    r = IGReplica(epics=[EPIC], rate=4.0, speed=1.0, history_ms=60_000, start_ms=START_MS, faults={"reset": resets})
    await r.start()
    try:
        async with aiohttp.ClientSession() as http:
            resp = await http.post(
                r.url + "/session", json={"identifier": "me", "password": "pw"}, headers={"X-IG-API-KEY": "key"}
            )
            password = f"CST-{resp.headers['CST']}|XST-{resp.headers['X-SECURITY-TOKEN']}"
        client = asyncio.create_task(asyncio.to_thread(run_client, r.url, r.account_id, password, transport, seconds))
        await asyncio.sleep(max(0.0, seconds - QUIET_S))
        r.faults = None  # the last QUIET_S without resets: time for the client to notice and recover the last one
        got = await client
    finally:
        await r.stop()
    recoveries: list[float] = []
    started: float | None = None
    for t, s in got["statuses"]:
        if s == "DISCONNECTED:TRYING-RECOVERY":
            started = t
        elif s.startswith("CONNECTED:") and started is not None:
            recoveries.append((t - started) * 1000)
            started = None
    ups = got["updates"]
    gap = max((b - a for a, b in itertools.pairwise(ups)), default=0.0)
    med = f"{statistics.median(recoveries):.0f}" if recoveries else "-"
    worst = f"{max(recoveries):.0f}" if recoveries else "-"
    print(
        f"{transport}: resets={r.stats['fault_reset']} recoveries={r.stats['recoveries']} "
        f"new_sessions={r.stats['sessions'] - 1} recover_ms median={med} max={worst} "
        f"longest_silence_s={gap:.1f} updates received={len(ups)} sent={r.stats['u_lines']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--resets-per-minute", type=float, default=6.0)
    ap.add_argument("--transport", action="append", help="WS-STREAMING, HTTP-STREAMING (default: both)")
    a = ap.parse_args()
    for transport in a.transport or ["WS-STREAMING", "HTTP-STREAMING"]:
        asyncio.run(bench(transport, a.seconds, a.resets_per_minute))


if __name__ == "__main__":
    main()
