"""Fixtures: venue replicas started in-process on free loopback ports, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import aiohttp
import pytest

import deltafeed.pytest_plugin as replica_plugin
from deltafeed.venues.binance.replica import BinanceReplica


class Startable(Protocol):
    """What the fixtures ask of a replica: it starts and stops."""

    async def start(self) -> object: ...

    async def stop(self) -> None: ...


R = TypeVar("R", bound=Startable)


class StartReplica(Protocol):
    """``await replicas(IGReplica, **kwargs)``: the type of the :func:`replicas` fixture."""

    async def __call__(self, cls: type[R], /, **kwargs: Any) -> R: ...


MakeReplica = Callable[..., Awaitable[BinanceReplica]]


def pytest_configure(config: pytest.Config) -> None:
    """Load the ``deltafeed_replica`` plugin unless its ``pytest11`` entry point already did (an install
    made before the entry point existed does not have it); registered under the entry point's name, so
    the two ways never register it twice."""
    if not config.pluginmanager.is_registered(replica_plugin):
        config.pluginmanager.register(replica_plugin, "deltafeed")
    _import_everything()


def _import_everything() -> None:
    """Import every deltafeed module once, before any test runs.

    The ``pytest11`` entry point makes pytest rewrite deltafeed's modules as they are first imported,
    and CPython 3.11's compiler can fail that with "SystemError: AST constructor recursion depth
    mismatch" when the first import happens deep in a running test (a venue's feed imported lazily
    by the engine). Compiling everything here, on a shallow stack, keeps compiling out of the tests.
    """
    import importlib
    import pkgutil

    import deltafeed

    for mod in pkgutil.walk_packages(deltafeed.__path__, "deltafeed."):
        if not mod.name.endswith(".__main__"):  # that one runs the CLI
            importlib.import_module(mod.name)


#: Modules that are end-to-end in all but folder: a venue's bootstrap measured against its request
#: floor, and third-party clients judging a replica (each runs the venue's market for seconds).
SLOW_MODULE_SUFFIXES = ("_bootstrap", "_clients")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Everything under ``tests/e2e`` (an engine against replicas over compressed time, chaos,
    outages) is marked ``slow``, and so are the modules named in :data:`SLOW_MODULE_SUFFIXES`, so ``pytest -m "not slow"`` (``make test-fast``) is the everyday subset."""
    for item in items:
        if "e2e" in item.path.parts or item.path.stem.endswith(SLOW_MODULE_SUFFIXES):
            item.add_marker(pytest.mark.slow)
        if "thirdparty" in item.path.parts:
            # The venues' own clients judging the replicas (issue 19): each runs a market for seconds.
            item.add_marker(pytest.mark.thirdparty)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def replicas(tmp_path: Any) -> AsyncIterator[StartReplica]:
    """``await replicas(SomeReplica, **kwargs)`` starts a replica of any venue, with a tape of its own in
    tmp_path unless ``tape`` is given; every replica started is stopped after the test, in start order."""
    started: list[Startable] = []

    async def start(cls: type[R], /, **kwargs: Any) -> R:
        kwargs.setdefault("tape", str(tmp_path / f"tape{len(started)}.csv"))
        replica = cls(**kwargs)
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in started:
        await replica.stop()


@pytest.fixture
async def tls_binance(tmp_path: Path) -> AsyncIterator[BinanceReplica]:
    """A Binance replica over TLS (``https://``/``wss://``, its CA in ``ca_file``) with a tape, for the
    third-party clients (tests/thirdparty): BTCUSDT, and XYZUSDT at 100.00, whose per-trade price step is
    a fraction of a tick, so consecutive trades often share a price and multi-trade aggregates occur."""
    r = BinanceReplica(
        symbols=("BTCUSDT", "XYZUSDT"), seed=7, rate=50.0, speed=5.0, history_ms=10 * 60_000,
        tape=tmp_path / "tape.csv", tls=tmp_path / "tls",
    )  # fmt: skip
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
def make_replica(replicas: StartReplica) -> MakeReplica:
    """``await make_replica(**kwargs)`` starts a Binance replica (with a tape in tmp_path unless given)."""

    async def make(**kwargs: Any) -> BinanceReplica:
        return await replicas(BinanceReplica, **kwargs)

    return make


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


#: The NATS server with JetStream the cluster tests use (scripts/services.sh starts it when down).
NATS_URL = "nats://127.0.0.1:4222"


@pytest.fixture
async def nats_cluster() -> AsyncIterator[str]:
    """A fresh cluster name on the shared NATS (:data:`NATS_URL`); its stream and key-value buckets
    are deleted after the test, so tests (and xdist workers) never see each other's."""
    import contextlib
    import uuid

    import nats
    from nats.js.errors import NotFoundError

    from deltafeed.cluster import subjects

    name = f"t{uuid.uuid4().hex[:12]}"
    yield name
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for stream in (subjects.stream_name(name), *(f"KV_{subjects.bucket_name(name, b)}" for b in subjects.BUCKETS)):
            with contextlib.suppress(NotFoundError):
                await js.delete_stream(stream)
    finally:
        await nc.close()
