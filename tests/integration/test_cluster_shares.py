"""Issue 21: venue limits kept cluster-wide for venues whose feeds had no live share before. Two
collectors on one outgoing address (both reach the replicas from 127.0.0.1), on the real NATS,
collect Kraken and Bybit instruments from replicas that enforce their per-IP REST limits. Each
collector's feeds keep half of every limit (REST pace and connection attempts), so together they
stay within the venue's: the Kraken replica, whose public call counter allows a burst of 6 and
one call a second, answers no 429 although each collector alone is set to spend almost all of
it; Bybit's answers no 403. When one collector leaves, the other takes its instruments at its half
pace and grows back to the whole budget only once ``cluster_grow_after`` (3 s here) has passed.
The ccxt venue keeps its share in ccxt's own limiter (``enableRateLimit``): with two collectors on
ccxt:binance each client's pace is half of ccxt's ``rateLimit``, measured at the Binance replica."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from conftest import NATS_URL
from deltafeed.cluster.collector import Collector
from deltafeed.config import Settings
from deltafeed.venues import registry
from deltafeed.venues.binance.replica import BinanceReplica
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


@contextlib.asynccontextmanager
async def _running(*collectors: Collector) -> AsyncIterator[Callable[[Collector], Awaitable[None]]]:
    """The collectors started (each announced before any runs its rounds) and running; yields
    ``leave(x)``, which stops one; every one still running is stopped at the end."""
    stops = {id(x): asyncio.Event() for x in collectors}
    runs: dict[int, asyncio.Task[None]] = {}

    async def leave(x: Collector) -> None:
        stops[id(x)].set()
        await runs.pop(id(x))

    try:
        for x in collectors:
            await x.start()
        for x in collectors:
            runs[id(x)] = asyncio.create_task(x.run(stops[id(x)]))
        yield leave
    finally:
        for ev in stops.values():
            ev.set()
        for t in runs.values():
            with contextlib.suppress(Exception):
                await t


@pytest.mark.slow  # 20-50 s: not in the everyday subset
@pytest.mark.timeout(120)
async def test_two_collectors_on_one_address_keep_kraken_and_bybit_within_their_limits(nats_cluster: str) -> None:
    kraken = KrakenReplica(symbols=KRAKEN, rate=2.0, speed=20.0, history_ms=30 * 60_000, rest_rate=1.0, rest_burst=6)
    bybit = BybitReplica(symbols=BYBIT, rate=2.0, speed=20.0, history_ms=30 * 60_000, requests_per_5s=10, ban_s=5.0)
    async with kraken, bybit:
        settings = _settings(kraken, bybit, nats_cluster)
        a, b = (Collector(settings, NATS_URL, nats_cluster, ttl_s=2.0) for _ in range(2))
        assert a.addresses == b.addresses == {"kraken": "127.0.0.1", "bybit": "127.0.0.1"}
        async with _running(a, b) as leave:
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
            await leave(b)
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


@pytest.mark.slow  # 20-50 s: not in the everyday subset
@pytest.mark.timeout(120)
async def test_a_venue_with_one_connection_per_key_is_held_by_one_collector(
    nats_cluster: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finnhub allows one WebSocket per API key, and both collectors have the same key: its
    instruments are leased as one unit (``finnhub:*``), so one collector holds that connection and
    the replica refuses none; when that collector leaves, the other takes the unit whole."""
    from clustering import held, wait_for
    from deltafeed.venues import registry

    finnhub = registry.get("finnhub").build_replica(
        symbols=["BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT"], rate=2.0, speed=20.0, history_ms=30 * 60_000
    )
    kraken = KrakenReplica(symbols=KRAKEN[:2], rate=2.0, speed=20.0, history_ms=30 * 60_000)
    async with finnhub, kraken:
        for k, v in registry.get("finnhub").replica_env(finnhub).items():
            monkeypatch.setenv(k, v)
        settings = Settings(
            symbols=[f"finnhub:{s}" for s in ("BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT")]
            + [f"kraken:{s}" for s in KRAKEN[:2]],
            timeframes=["1m"],
            history="10m",
            venues={
                "finnhub": registry.get("finnhub").replica_settings(finnhub),
                "kraken": {"rest_url": kraken.url, "ws_url": kraken.ws_url},
            },
            cluster=NATS_URL,
            cluster_name=nats_cluster,
        ).validate()
        a, b = (Collector(settings, NATS_URL, nats_cluster, ttl_s=2.0) for _ in range(2))
        assert sorted(u.name for u in a.units.values()) == ["finnhub:*", "kraken:BTC/USD", "kraken:ETH/USD"]
        assert a.addresses["finnhub"].startswith("account-") and a.addresses["kraken"] == "127.0.0.1"
        finnhub_names = [f"finnhub:{s}" for s in ("BINANCE:BTCUSDT", "BINANCE:ETHUSDT", "BINANCE:SOLUSDT")]

        async def one_holder() -> str | None:
            doc = await held(NATS_URL, nats_cluster)  # also: no instrument in two collectors' lists
            holders = {doc["held"].get(n) for n in finnhub_names}
            return holders.pop() if len(holders) == 1 and None not in holders else None

        def streaming(x: Collector) -> bool:
            return all(x.engine.states[n].trades > 0 for n in finnhub_names if n in x.engine.states)

        async with _running(a, b) as leave:
            holder_id = await wait_for("one collector holding every Finnhub instrument", 30, one_holder)
            holder, other = (a, b) if holder_id == a.id else (b, a)
            await until(lambda: all(n in holder.engine.states for n in finnhub_names), 30.0, "Finnhub added")
            await until(lambda: streaming(holder), 60.0, "Finnhub streaming")
            assert not any(n in other.engine.states for n in finnhub_names)
            assert finnhub.stats["refused_connections"] == 0 and finnhub.stats["open_connections"] == 1
            # The holder leaves: the other takes the unit whole, on its own single connection.
            await leave(holder)
            assert await wait_for("the other to hold Finnhub", 30, one_holder) == other.id
            await until(lambda: all(n in other.engine.states for n in finnhub_names), 30.0, "Finnhub added again")
            await until(lambda: streaming(other), 60.0, "Finnhub streaming again")
            assert finnhub.stats["refused_connections"] == 0 and finnhub.stats["open_connections"] == 1


BINANCE = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
CCXT = [f"ccxt:binance:{s.removesuffix('USDT')}/USDT" for s in BINANCE]
#: The REST call measured: a Binance book of 100 levels, which ccxt's limiter charges one unit of
#: cost (its ``rateLimit``, 50 ms, at the whole pace).
BOOK = ("BTC/USDT", 100)
BURST = 20  # calls per client in a burst


def _ccxt_binance(x: Collector) -> Any:
    """The ccxt.pro client of ``x``'s ccxt feed for Binance (the one its REST calls go through)."""
    return x.engine.feeds["ccxt"].exchanges["binance"].client


def _ms_per_unit(client: Any) -> float:
    """The ms ccxt's own limiter of ``client`` takes per unit of cost (``rateLimit`` when whole)."""
    return 1 / float(client.throttler.config["refillRate"])


async def _burst(replica: BinanceReplica, *collectors: Collector) -> tuple[float, int]:
    """``BURST`` ``fetch_order_book`` calls on each collector's client at once, all through ccxt's
    limiter; (seconds until the last is answered, requests the replica saw meanwhile)."""
    before = replica.stats["requests"]
    t0 = time.monotonic()
    await asyncio.gather(*(_ccxt_binance(x).fetch_order_book(*BOOK) for x in collectors for _ in range(BURST)))
    return time.monotonic() - t0, replica.stats["requests"] - before


@pytest.mark.timeout(60)
async def test_two_collectors_on_one_address_split_ccxts_own_rate_limit(nats_cluster: str) -> None:
    """Two collectors of ccxt:binance instruments on one address: ccxt's limiter of each one's
    Binance client takes twice ``rateLimit`` per unit of cost, and the replica sees the two at once
    at no more than one client's whole pace; once one has left, the other's limiter is back to
    ``rateLimit`` (after ``cluster_grow_after``) and its calls go twice as fast."""
    async with BinanceReplica(symbols=BINANCE, rate=2.0, speed=10.0, history_ms=30 * 60_000) as replica:
        settings = Settings(
            symbols=CCXT,
            timeframes=["1m"],
            history="10m",
            venues={"ccxt": registry.get("ccxt").replica_settings(replica)},
            cluster=NATS_URL,
            cluster_name=nats_cluster,
            cluster_grow_after=f"{GROW_AFTER_S:g}s",
        ).validate()
        a, b = (Collector(settings, NATS_URL, nats_cluster, ttl_s=2.0) for _ in range(2))
        assert a.addresses["ccxt"] == b.addresses["ccxt"]

        def added(x: Collector) -> bool:  # every instrument held is in its engine, its history fetched
            return len(x.engine.states) == len(x.held) > 0 and not x.engine.joining

        async with _running(a, b) as leave:
            await until(lambda: all(x.parts["ccxt"].applied == (0.5, 0.5) for x in (a, b)), 20.0, "the budget split")
            await until(lambda: sorted(k for x in (a, b) for k in x.held) == sorted(a.units), 20.0, "all held")
            await until(lambda: added(a) and added(b), 20.0, "every instrument added")
            call_ms = float(_ccxt_binance(a).rateLimit)  # ms per call at the whole pace: 50 (one unit)
            assert [BOOK[1], 1] in _ccxt_binance(a).api["public"]["get"]["depth"]["byLimit"]
            assert [_ms_per_unit(_ccxt_binance(x)) for x in (a, b)] == [2 * call_ms] * 2

            # Both at once, each at half the pace: the bursts take twice as long as one client's
            # would alone, and the replica sees together no more than one client's whole pace
            # (ccxt's bucket lets a client that owes nothing send one call at once).
            shared_s, shared_n = await _burst(replica, a, b)
            assert shared_n >= 2 * BURST and shared_s >= 0.9 * (BURST - 1) * 2 * call_ms / 1000, (shared_s, shared_n)
            assert shared_n <= 1.1 * shared_s * 1000 / call_ms + 2, (shared_s, shared_n)

            # b leaves: a's limiter goes back to ccxt's whole pace once its part has grown back.
            await leave(b)
            await until(lambda: a.parts["ccxt"].applied == (1.0, 1.0), 20.0, "a's part to grow back")
            await until(lambda: len(a.held) == len(a.units) and added(a), 20.0, "a to hold every instrument")
            assert _ms_per_unit(_ccxt_binance(a)) == call_ms
            solo_s, solo_n = await _burst(replica, a)
            assert solo_n >= BURST and solo_s < 0.75 * (BURST - 1) * 2 * call_ms / 1000, (solo_s, solo_n)
            assert solo_n <= 1.1 * solo_s * 1000 / call_ms + 1, (solo_s, solo_n)
            assert replica.stats["429"] == 0, replica.stats
