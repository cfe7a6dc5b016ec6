"""Issue 21: venue limits kept cluster-wide for venues whose feeds had no live share before. Two
collectors on one outgoing address (both reach the replicas from 127.0.0.1), on the real NATS,
collect Kraken and Bybit instruments from replicas that enforce their per-IP REST limits. Each
collector's feeds keep half of every limit (REST pace and connection attempts), so together they
stay within the venue's: the Kraken replica, whose public call counter allows a burst of 6 and
one call a second, answers no 429 although each collector alone is set to spend almost all of
it; Bybit's answers no 403. When one collector leaves, the other takes its instruments at its half
pace and grows back to the whole budget only once ``cluster_grow_after`` (3 s here) has passed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from conftest import NATS_URL
from deltafeed.cluster.collector import Collector
from deltafeed.config import Settings
from deltafeed.venues.bybit.replica import BybitReplica
from deltafeed.venues.kraken.replica import KrakenReplica
from helpers import until

KRAKEN = ["BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD"]
BYBIT = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
INSTRUMENTS = [f"kraken:{s}" for s in KRAKEN] + [f"bybit:{s}" for s in BYBIT]
GROW_AFTER_S = 3.0


def _settings(kraken: KrakenReplica, bybit: BybitReplica, cluster: str) -> Settings:
    return Settings(
        symbols=INSTRUMENTS,
        timeframes=["1m"],
        history="10m",
        connect_budget=300,
        venues={
            # Each collector alone would pace Kraken at 0.8 calls/s with a burst of 6: two at that
            # pace pass the replica's counter (a burst of 6, 1 a second) at once.
            "kraken": {"rest_url": kraken.url, "ws_url": kraken.ws_url, "rest_rate_per_s": 0.8, "rest_burst": 6},
            "bybit": {"rest_url": bybit.url, "ws_url": bybit.ws_url, "requests_per_5s": 10, "ban_wait_s": 5.0},
        },
        cluster=NATS_URL,
        cluster_name=cluster,
        cluster_grow_after=f"{GROW_AFTER_S:g}s",
    ).validate()


def _limits(x: Collector, venue: str) -> tuple[float, int, float, int]:
    """The REST limiter's limit and as made, the connection budget's limit and as made, of ``x``'s feed."""
    feed: Any = x.engine.feeds[venue]
    rest = feed.history.limiter
    budget = feed.connect_limits()[0]
    return rest.limit, budget.limit, rest.full, budget.full


@pytest.mark.timeout(120)
async def test_two_collectors_on_one_address_keep_kraken_and_bybit_within_their_limits(nats_cluster: str) -> None:
    kraken = KrakenReplica(symbols=KRAKEN, rate=2.0, speed=20.0, history_ms=30 * 60_000, rest_rate=1.0, rest_burst=6)
    bybit = BybitReplica(symbols=BYBIT, rate=2.0, speed=20.0, history_ms=30 * 60_000, requests_per_5s=10, ban_s=5.0)
    async with kraken, bybit:
        settings = _settings(kraken, bybit, nats_cluster)
        a, b = (Collector(settings, NATS_URL, nats_cluster, ttl_s=2.0) for _ in range(2))
        assert a.addresses == b.addresses == {"kraken": "127.0.0.1", "bybit": "127.0.0.1"}
        stops = {id(x): asyncio.Event() for x in (a, b)}
        runs: dict[int, asyncio.Task[None]] = {}
        try:
            for x in (a, b):
                await x.start()
            for x in (a, b):
                runs[id(x)] = asyncio.create_task(x.run(stops[id(x)]))
            await until(lambda: all(x.parts[v].applied == (0.5, 0.5) for x in (a, b) for v in ("kraken", "bybit")),
                        20.0, "the budgets split")  # fmt: skip
            await until(lambda: sorted(k for x in (a, b) for k in x.held) == sorted(a.units), 30.0, "all held")

            def streaming(x: Collector) -> bool:
                return all(st.trades > 0 for st in x.engine.states.values()) and len(x.engine.states) == len(x.held)

            await until(lambda: streaming(a) and streaming(b), 60.0, "every instrument streaming")
            assert kraken.stats["requests"] > 8, kraken.stats  # the REST pace was put to use
            assert kraken.stats["throttled"] == 0, kraken.stats
            assert bybit.stats["403"] == 0, bybit.stats
            # Together the two feeds of a venue keep to the venue's limits on the address.
            for venue in ("kraken", "bybit"):
                got = [_limits(x, venue) for x in (a, b) if venue in x.engine.feeds]
                rest_full, connects_full = got[0][2], got[0][3]
                assert all(g[0] == rest_full / 2 and g[1] == connects_full // 2 for g in got), (venue, got)
                assert sum(g[0] for g in got) <= rest_full and sum(g[1] for g in got) <= connects_full

            # b leaves: a takes its instruments within its half, and grows back after GROW_AFTER_S.
            stops[id(b)].set()
            await runs.pop(id(b))
            await until(lambda: a.parts["kraken"].larger == (1.0, 1.0), 20.0, "a to propose the whole budget")
            proposed = time.monotonic()
            assert a.parts["kraken"].applied == (0.5, 0.5)
            await until(lambda: a.parts["kraken"].applied == (1.0, 1.0), 20.0, "a's part to grow back")
            assert time.monotonic() - proposed >= GROW_AFTER_S - 0.5  # not before the larger part stood
            await until(lambda: len(a.held) == len(a.units), 20.0, "a to hold every instrument")
            await until(lambda: streaming(a), 60.0, "a streaming every instrument")
            for venue in ("kraken", "bybit"):
                rest, connects, rest_full, connects_full = _limits(a, venue)
                assert (rest, connects) == (rest_full, connects_full), venue
            assert kraken.stats["throttled"] == 0, kraken.stats
            assert bybit.stats["403"] == 0, bybit.stats
        finally:
            for x in (a, b):
                stops[id(x)].set()
            for t in runs.values():
                with contextlib.suppress(Exception):
                    await t
