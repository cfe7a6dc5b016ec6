"""What the API reads and asks of a running engine (:class:`EngineView`): the API depends on this
protocol, not on :class:`~deltafeed.engine.core.Engine` and all it wires."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from deltafeed.api.protocol import LiveSink
    from deltafeed.books import Books
    from deltafeed.config import Settings
    from deltafeed.engine.failover import FailoverPair
    from deltafeed.engine.status import EngineStatus, SwitchDoc
    from deltafeed.model import Candle, Switch
    from deltafeed.series import Series
    from deltafeed.stats import EngineMetrics
    from deltafeed.store.ticks import TickPage


class EngineView(Protocol):
    """The engine as ``api/http.py``, ``api/metrics.py`` and ``api/server.py`` use it."""

    #: Where the engine publishes live data; the API server sets it to its hub when it starts.
    hub: LiveSink | None
    #: The run's order books (``books`` setting; none kept when it is empty).
    books: Books

    @property
    def settings(self) -> Settings: ...

    @property
    def timeframes(self) -> list[str]: ...

    @property
    def states(self) -> Mapping[str, Series]:
        """The run's series by key (the metrics read counters the status leaves out)."""
        ...

    @property
    def failovers(self) -> Mapping[str, FailoverPair]:
        """The run's logical (failover) series by key."""
        ...

    @property
    def metrics(self) -> EngineMetrics:
        """The latency histograms."""
        ...

    def instrument_names(self) -> list[str]:
        """Every series served: the collected ones, then the logical ones."""
        ...

    def health(self) -> list[str]:
        """Reasons the collector is not healthy; empty when it is."""
        ...

    def readiness(self) -> list[str]:
        """Reasons the collector is not ready to serve (bootstrapping, a venue down, the store failing)."""
        ...

    def report(self) -> EngineStatus:
        """The status now (see :mod:`deltafeed.engine.status`)."""
        ...

    def snapshot(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        """The last ``n`` candles of a series, the forming one last."""
        ...

    async def candles(
        self,
        instrument: str,
        timeframe: str,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int | None = None,
        *,
        final_only: bool = False,
    ) -> list[Candle]:
        """Candles of a series, oldest first, the forming one included (unless ``final_only``)."""
        ...

    async def trades(
        self, instrument: str, since_ms: int | None = None, until_ms: int | None = None, limit: int | None = None
    ) -> TickPage | None:
        """Stored raw ticks of an instrument, or None when the run keeps none."""
        ...

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """Failover switches of a logical series, oldest first."""
        ...

    def switch_doc(self, w: Switch, silent_s: float | None = None) -> SwitchDoc:
        """A switch as the API shows it."""
        ...

    async def start_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Resume streaming the named series (all when None); returns those streaming now."""
        ...

    async def stop_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Stop streaming the named series (all when None); returns those still streaming."""
        ...
