"""Third-party clients judging the replicas (issue 19): each test drives one venue's own client, with
only its URLs changed, and compares what the client received with the replica's tape.

Every test here is marked ``thirdparty`` and ``slow`` (it runs a market for seconds). A client that does
not install on this Python is skipped by ``pytest.importorskip`` with the reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from deltafeed.venues.binance.replica import BinanceReplica

#: The Binance market every client test uses: BTCUSDT, and XYZUSDT at 100.00, whose per-trade price
#: step is a fraction of a tick, so consecutive trades often share a price and aggregate trades of
#: several trades occur.
SYMBOLS = ("BTCUSDT", "XYZUSDT")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.thirdparty)
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def tls_binance(tmp_path: Path) -> AsyncIterator[BinanceReplica]:
    """A Binance replica over TLS (``https://``/``wss://``, its CA in ``ca_file``) with a tape."""
    r = BinanceReplica(
        symbols=SYMBOLS, seed=7, rate=50.0, speed=5.0, history_ms=10 * 60_000, tape=tmp_path / "tape.csv",
        tls=tmp_path / "tls",
    )  # fmt: skip
    await r.start()
    try:
        yield r
    finally:
        await r.stop()
