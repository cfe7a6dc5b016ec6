"""A pytest plugin: the ``deltafeed_replica`` fixture starts any venue's replica for a test and stops it after.

Registered under the ``pytest11`` entry point (``deltafeed``), so any project that installs deltafeed
can write::

    async def test_my_client(deltafeed_replica):
        replica = await deltafeed_replica("binance", symbols=["BTCUSDT"], tape=tmp_path / "t.csv")
        ...  # replica.url, replica.ws_url, replica.rest_url (as the venue has them)

The replica listens on a free loopback port. Keyword arguments naming a
:class:`~deltafeed.replicas.options.ReplicaOptions` field (``symbols``, ``seed``, ``rate``, ``speed``,
``start_ms``, ``history_ms``, ``tape``, ``faults``, ``faults_seed``, ``host``) go into the options; the
others are the venue's extras (``token=``, ``calendar=``, ...). A fault spec may be given as a string.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar, cast

import pytest

from deltafeed.replicas.faults import parse_faults
from deltafeed.replicas.server import ReplicaBase

_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture(fn: _F) -> _F:
    """``pytest_asyncio.fixture`` (which strict-mode projects need for an async fixture), else ``pytest.fixture``."""
    try:
        import pytest_asyncio
    except ImportError:  # pragma: no cover - without pytest-asyncio nothing could await the factory anyway
        return cast(_F, pytest.fixture(fn))
    return cast(_F, pytest_asyncio.fixture(fn))


#: ``await deltafeed_replica(venue, **kwargs)``: a started replica of ``venue``.
StartReplica = Callable[..., Awaitable[ReplicaBase]]


def replica_class(venue: str) -> type[ReplicaBase]:
    """The replica class of the registered venue ``venue``; a venue without one is a
    :class:`LookupError` naming those that have one."""
    from deltafeed.venues import registry

    known = [v.name for v in registry.venues() if v.replica_class() is not None]
    cls = registry.get(venue).replica_class() if venue in registry.names() else None
    if cls is None:
        raise LookupError(f"no replica for venue {venue!r}; use {', '.join(known)}")
    return cls


def build_replica(venue: str, **kwargs: Any) -> ReplicaBase:
    """An unstarted replica of ``venue`` on a free loopback port, the shared options taken from ``kwargs``
    (see the module docstring) and the rest passed to its constructor as extras."""
    from deltafeed.venues import registry

    replica_class(venue)  # a venue without a replica: the LookupError naming those with one
    if isinstance(kwargs.get("faults"), str):
        kwargs["faults"] = parse_faults(kwargs["faults"])
    kwargs.setdefault("host", "127.0.0.1")
    kwargs["port"] = 0
    return registry.get(venue).build_replica(**kwargs)


@_async_fixture
async def deltafeed_replica() -> AsyncIterator[StartReplica]:
    """An async factory: ``await deltafeed_replica("binance", symbols=[...], tape=..., **extras)`` starts
    the venue's replica on a free loopback port and returns it; every replica started is stopped after
    the test, tapes closed."""
    started: list[ReplicaBase] = []

    async def start(venue: str, **kwargs: Any) -> ReplicaBase:
        replica = build_replica(venue, **kwargs)
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in reversed(started):
        await replica.stop()
