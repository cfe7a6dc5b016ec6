"""Leases on the real JetStream key-value store: one holder at a time, renewal keeps a lease, a lease
that stops moving is taken over after the TTL (by the taker's clock), a released one at once."""

from __future__ import annotations

import asyncio

import nats
import pytest

from conftest import NATS_URL
from deltafeed.cluster import subjects
from deltafeed.cluster.collector import open_bucket
from deltafeed.cluster.leases import Leases, read_lease

pytestmark = pytest.mark.asyncio

TTL = 0.6


async def test_one_holder_renewal_takeover_and_release(nats_cluster: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        kv = await open_bucket(js, nats_cluster, subjects.LEASES)
        a, b = Leases(kv, "a", TTL), Leases(kv, "b", TTL)
        key = subjects.kv_key("binance:BTC/USDT")  # BTC=2FUSDT
        # Both race for a missing key: exactly one wins.
        got = await asyncio.gather(a.claim(key), b.claim(key))
        assert sorted(got) == [False, True]
        holder, other = (a, b) if got[0] else (b, a)
        assert read_lease((await kv.get(key)).value).holder == holder.me
        # Renewed more often than the TTL: never stale for the other.
        for _ in range(6):
            assert await holder.renew() == []
            assert not await other.claim(key)
            await asyncio.sleep(TTL / 3)
        # The holder stops renewing (as if killed): the other takes it once the TTL has passed.
        assert not await other.claim(key)  # first sight of the current revision
        await asyncio.sleep(TTL * 1.2)
        assert await other.claim(key)
        assert read_lease((await kv.get(key)).value).holder == other.me
        # The old holder finds out at its next renewal.
        assert await holder.renew() == [key]
        assert key not in holder.held
        # Handed back: free at once for the first who asks.
        await other.release(key)
        assert read_lease((await kv.get(key)).value).holder == ""
        assert await holder.claim(key)
    finally:
        await nc.close()
