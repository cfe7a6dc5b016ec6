"""One candle series (an instrument, and for quote-built instruments one price side): its builders
and the counters the status and the API read.

Feeds fold what the venue sends into a series through its methods (:meth:`Series.on_trade`,
:meth:`Series.on_venue_candle`), which feed the builder and keep the counters in step with it; the
engine owns everything else about the series (what is provisional, held or marked final).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deltafeed.model import Candle, Instrument, Trade, series_key

if TYPE_CHECKING:
    from deltafeed.candles.aggregator import CandleBuilder
    from deltafeed.candles.calendar import Calendar
    from deltafeed.candles.rollup import RollupBuilder
    from deltafeed.store.ticks import TickRecorder
    from deltafeed.venues.base import Feed


@dataclass
class Series:
    """One candle series: its builders and the counters the status view and the API read."""

    instrument: Instrument
    builder: CandleBuilder
    calendar: Calendar
    feed: Feed
    price: str = "trade"  # "trade" for trade-built candles, else mid, bid or ask
    # Longer timeframes derived from the builder's base candles instead of from trades (rollups).
    rollup: RollupBuilder | None = None
    rolling: bool = False  # the rollup is seeded and takes base candles (not during the bootstrap)
    trades: int = 0
    venue_candles: int = 0
    last_trade_ms: int = 0
    last_message: float = 0.0  # monotonic time of the latest trade or kline
    repaired: int = 0
    bootstrapped: int = 0
    reconciled: int = 0  # provisional candles checked against the venue's history (made final)
    corrected: int = 0  # of those, how many the venue's history changed
    unconfirmed: int = 0  # provisional candles with prices that the venue's history has no candle for
    # Closed candles not yet final, per timeframe, by open time (copies): what reconciliation checks,
    # what a later vouch promotes, and where the final mark stops.
    provisional: dict[str, dict[int, Candle]] = field(default_factory=dict)
    unconfirmed_at: set[tuple[str, int]] = field(default_factory=set)  # (timeframe, open time), not asked again
    # Candles verified in themselves but after a hole still waiting for its repair, per timeframe:
    # provisional until the hole is repaired, so that the final candles of a series never skip one.
    held: dict[str, dict[int, Candle]] = field(default_factory=dict)
    # Open time up to which stored candles are known final, per timeframe, from the bootstrap;
    # once trades flow, the builder's position takes over (see Completeness.final_marks).
    bootstrap_marks: dict[str, int] = field(default_factory=dict)
    active: bool = True  # streaming; POST /streaming/stop turns it off
    publish_trades: bool = False  # a consumer wants this instrument's trades
    messages_per_s: float = 0.0  # trades and venue candles, smoothed over ~5 s
    # Where this series' raw ticks wait for the tick recorder (None: ticks are not kept): its trades
    # when trade-built; the instrument's quotes on its first price side when quote-built.
    tick_buffer: list[Trade] | None = None
    quote_buffer: list[tuple[int, int, float, float]] | None = None
    tick_recorder: TickRecorder | None = None
    _seen: int = 0
    _published: dict[str, tuple[object, ...]] = field(default_factory=dict)  # what publisher.open last put
    _published_price_ms: int = 0

    @property
    def key(self) -> str:
        return series_key(str(self.instrument), self.price)

    @property
    def timeframes(self) -> list[str]:
        """The timeframes built from trades (the rollup's derived ones are not among them)."""
        return self.builder.timeframes

    def on_trade(self, trade: Trade) -> None:
        """A trade (or a quote as one) of this series from the stream: into the builder, counted.
        (``BinanceFeed.on_frame`` does the same in line, one call less on its hot path: keep the two
        alike.)"""
        self.builder.on_trade(trade)
        self.trades += 1
        self.last_trade_ms = trade.time_ms
        buf = self.tick_buffer
        if buf is not None:
            buf.append(trade)  # the recorder swaps the list out and writes it off the hot path

    def on_quote(self, seq: int, time_ms: int, bid: float, ask: float) -> None:
        """A quote of this series' instrument (``seq``: the router's running number), once per quote
        whatever the price sides: kept as a raw tick when ticks are recorded."""
        buf = self.quote_buffer
        if buf is not None:
            buf.append((seq, time_ms, bid, ask))

    def on_loss(self, since_ms: int, until_ms: int) -> None:
        """The feed may have lost data of this series between ``since_ms`` and ``until_ms`` (venue
        times) without a trade id showing it: the builder has those candles repaired from history."""
        self.builder.suspect(since_ms, until_ms)
        if self.tick_recorder is not None:
            self.tick_recorder.lost(self.key, since_ms, until_ms, "the feed reported a loss")

    def on_venue_candle(self, timeframe: str, candle: Candle, last_trade_id: int) -> None:
        """The venue's own closed candle (a kline, IG's minute chart), merged by the builder;
        ``last_trade_id`` is the last trade it holds (-1 when the venue gives none)."""
        self.venue_candles += 1
        self.builder.on_venue_candle(timeframe, candle, last_trade_id)

    def open_candle(self, timeframe: str) -> Candle | None:
        """The forming candle of ``timeframe``, built from trades or rolled up from the base."""
        if self.rollup is not None and timeframe in self.rollup.timeframes:
            return self.rollup.open_candle(timeframe)
        return self.builder.open_candle(timeframe)

    def open_candles(self) -> list[tuple[str, Candle]]:
        """Every forming candle, shortest timeframe first."""
        out = self.builder.open_candles()
        return out if self.rollup is None else out + self.rollup.open_candles()


#: The name the series had when it lived in the engine; old imports keep working.
InstrumentState = Series
