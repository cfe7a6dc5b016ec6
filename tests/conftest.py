"""Fixtures: Binance replicas started in-process on free loopback ports, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

import deltafeed.replicas.pytest_plugin as replica_plugin
from deltafeed.venues.binance.replica import BinanceReplica

MakeReplica = Callable[..., Awaitable[BinanceReplica]]


def pytest_configure(config: pytest.Config) -> None:
    """Load the ``deltafeed_replica`` plugin unless its ``pytest11`` entry point already did (an install
    made before the entry point existed does not have it); registered under the entry point's name, so
    the two ways never register it twice."""
    if not config.pluginmanager.is_registered(replica_plugin):
        config.pluginmanager.register(replica_plugin, "deltafeed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under ``tests/e2e`` (an engine against replicas over compressed time, chaos,
    outages) is marked ``slow``, so ``pytest -m "not slow"`` (``make test-fast``) is the everyday subset."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.slow)


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
