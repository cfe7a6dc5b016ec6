"""Plain counters and fixed-bucket histograms the engine keeps for metrics, cheap to update."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

#: Seconds: from sub-millisecond (a store write) to a minute (a candle repaired after an outage).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """Counts of observations per upper bound (non-cumulative), their sum and their number.

    The Prometheus exposition makes them cumulative at scrape time; observing is one bisect.
    """

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, x)] += 1
        self.sum += x
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) pairs, ending with (inf, count)."""
        out, total = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


@dataclass
class EngineMetrics:
    """Latency histograms the engine records as things happen (counters live in ``status()``).

    The candle histograms count live candles only: those the stream's builders close. History
    fetched over REST (the bootstrap, repairs) is minutes to days old by nature and would bury the
    live figures in the top bucket."""

    #: Live candles: from a candle's end on the venue's clock to its write into the cold store, in
    #: seconds (``candle_close`` and ``candle_store`` together).
    candle_latency: Histogram = field(default_factory=Histogram)
    #: Live candles: from a candle's end on the venue's clock to the engine closing it (the venue's
    #: closed candle arriving, or the grace for late trades running out), in seconds.
    candle_close: Histogram = field(default_factory=Histogram)
    #: Live candles: from the engine closing a candle to its write into the cold store, in seconds.
    candle_store: Histogram = field(default_factory=Histogram)
    #: Duration of one cold-store batch write, in seconds.
    store_write: Histogram = field(default_factory=Histogram)
