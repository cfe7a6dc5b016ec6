"""Fixtures: Binance replicas started in-process on free loopback ports, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from deltafeed.replicas.binance import BinanceReplica

MakeReplica = Callable[..., Awaitable[BinanceReplica]]


@pytest.fixture
async def make_replica(tmp_path: Any) -> AsyncIterator[MakeReplica]:
    """``await make_replica(**kwargs)`` starts a replica (with a tape in tmp_path unless given)."""
    started: list[BinanceReplica] = []

    async def make(**kwargs: Any) -> BinanceReplica:
        kwargs.setdefault("tape", str(tmp_path / f"tape{len(started)}.csv"))
        replica = BinanceReplica(**kwargs)
        await replica.start()
        started.append(replica)
        return replica

    yield make
    for replica in started:
        await replica.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
