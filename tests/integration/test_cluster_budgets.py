"""Venue budgets per outgoing address on the real JetStream key-value store: two collectors that
declare one address split its budget, a third on another address has a budget of its own, and the
split reaches the engine's rate limiter and connection budget. A collector that leaves does not
hand its part to the others at once (it may have spent it in the venue's current window)."""

from __future__ import annotations

import asyncio
import contextlib

import msgspec
import nats

from conftest import NATS_URL
from deltafeed.cluster import subjects
from deltafeed.cluster.collector import Budget, Collector, budget_key, outgoing_address
from deltafeed.config import Settings
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import until

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]


def _settings(replica: BinanceReplica, cluster: str, address: str) -> Settings:
    return Settings(
        symbols=SYMBOLS,
        timeframes=["1m"],
        history="5m",
        rest_url=replica.url,
        ws_url=replica.ws_url,
        weight_limit=1200,
        connect_budget=300,
        cluster=NATS_URL,
        cluster_name=cluster,
        cluster_address=address,
    ).validate()


def test_the_outgoing_address_is_found_by_a_udp_connect() -> None:
    assert outgoing_address("http://127.0.0.1:9/api") == "127.0.0.1"
    assert outgoing_address("http://[::1]:9/") == "::1"
    assert outgoing_address(None) != ""  # the default route's (or 0.0.0.0 without one)


async def test_collectors_on_one_address_share_its_budget_and_another_has_its_own(nats_cluster: str) -> None:
    async with BinanceReplica(symbols=SYMBOLS, rate=2.0, speed=10.0, history_ms=10 * 60_000) as replica:
        a, b, c = (
            Collector(_settings(replica, nats_cluster, addr), NATS_URL, nats_cluster, ttl_s=2.0)
            for addr in ("10.0.0.1", "10.0.0.1", "10.0.0.2")
        )
        stops = {id(x): asyncio.Event() for x in (a, b, c)}
        runs: list[asyncio.Task[None]] = []
        try:
            for x in (a, b, c):
                await x.start()
                runs.append(asyncio.create_task(x.run(stops[id(x)])))
            # Shared on 10.0.0.1 (half each), whole on 10.0.0.2, once every collector has seen the others.
            await until(
                lambda: (
                    a.parts["binance"].applied == b.parts["binance"].applied == (0.5, 0.5)
                    and c.parts["binance"].applied == (1.0, 1.0)
                ),
                30.0,
                "the budgets split",
            )
            # The collectors hold instruments: the split is what their engines' feeds keep to.
            await until(lambda: sum(len(x.held) for x in (a, b, c)) == len(SYMBOLS), 30.0, "every instrument held")
            for x, want in ((a, (600, 150)), (b, (600, 150)), (c, (1200, 300))):
                if x.held:
                    await until(lambda x=x: "binance" in x.engine.feeds, 30.0, "a feed")
                    feed = x.engine.feeds["binance"]
                    assert (feed.history.limiter.limit, feed.pool.budget.limit) == want
            # One budget per (venue, address) in the bucket.
            nc = await nats.connect(NATS_URL)
            try:
                kv = await nc.jetstream().key_value(subjects.bucket_name(nats_cluster, subjects.BUDGETS))
                assert sorted(await kv.keys()) == sorted(budget_key("binance", x) for x in ("10.0.0.1", "10.0.0.2"))
                got = msgspec.json.decode((await kv.get(budget_key("binance", "10.0.0.1"))).value, type=Budget)
                assert got == Budget(1200, 300)
            finally:
                await nc.close()
            # b leaves: a's part does not grow at once (b may have spent its part this minute).
            stops[id(b)].set()
            await runs[1]
            # Once b is no longer counted (its entry gone), a proposes the whole budget, and waits.
            await until(lambda: a.parts["binance"].larger == (1.0, 1.0), 30.0, "a to propose the whole budget")
            await asyncio.sleep(2.0)
            assert a.parts["binance"].applied == (0.5, 0.5)
            if "binance" in a.engine.feeds:  # a holds instruments: its feed keeps to the smaller part
                assert a.engine.feeds["binance"].history.limiter.limit == 600
            assert c.parts["binance"].applied == (1.0, 1.0)
        finally:
            for x in (a, b, c):
                stops[id(x)].set()
            for t in runs:
                with contextlib.suppress(Exception):
                    await t
        assert replica.stats["429"] == 0
