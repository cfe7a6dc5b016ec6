"""The collector engine, one job per module: :mod:`~deltafeed.engine.core` wires and runs it,
:mod:`~deltafeed.engine.bootstrap` fills history at start-up, :mod:`~deltafeed.engine.publish` hands
candles to the tiers and consumers, :mod:`~deltafeed.engine.completeness` repairs, reconciles,
audits and marks candles final, :mod:`~deltafeed.engine.failover` runs logical series,
:mod:`~deltafeed.engine.status` is the typed status, :mod:`~deltafeed.engine.view` what the API uses.
"""

from deltafeed.engine.core import Engine
from deltafeed.engine.status import EngineStatus, FeedStatus, SeriesStatus
from deltafeed.engine.view import EngineView
from deltafeed.series import InstrumentState, Series

__all__ = ["Engine", "EngineStatus", "EngineView", "FeedStatus", "InstrumentState", "Series", "SeriesStatus"]
