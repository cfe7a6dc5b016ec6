"""The one read path: recent candles from the hot tier, older ones from the cold tier, joined at the
hot tier's oldest candle so a range across the boundary comes back whole and without a duplicate.

The engine reads its in-memory hot tier; ``deltafeed candles`` reads the Redis mirror when given
``--hot``. Both then read the cold tier (DuckDB or PostgreSQL) only for what the hot tier no longer
holds, so the common question ("the last 500 candles") never touches the database.
"""

from __future__ import annotations

from typing import Protocol

from deltafeed.model import Candle
from deltafeed.store.base import ColdTier
from deltafeed.store.hot import HotStore

_END = 2**62


class HotReader(Protocol):
    """What the read path asks of a hot tier (the memory rings or their Redis mirror)."""

    async def last(self, instrument: str, timeframe: str, n: int) -> list[Candle]: ...

    async def range(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[Candle] | None: ...


class MemoryHot:
    """The engine's :class:`HotStore` as a :class:`HotReader`."""

    def __init__(self, hot: HotStore) -> None:
        self.hot = hot

    async def last(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        return self.hot.last(instrument, timeframe, n)

    async def range(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[Candle] | None:
        return self.hot.range(instrument, timeframe, since_ms, until_ms)


async def read_candles(
    hot: HotReader | None,
    cold: ColdTier | None,
    instrument: str,
    timeframe: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int | None = None,
    *,
    final_only: bool = False,
) -> list[Candle]:
    """Candles with ``since_ms <= open_time <= until_ms`` (bounds optional), oldest first; with
    ``limit``, the newest ``limit`` of them. With ``final_only``, only final candles (``limit`` then
    counts final ones: the newest ``limit`` final candles of the range).

    The hot tier answers alone when it reaches back far enough; otherwise the cold tier supplies
    everything before the hot tier's oldest candle and the hot tier the rest. Without a cold tier,
    the hot tier's part is all there is.
    """
    if limit is not None and limit <= 0:
        return []

    def keep(rows: list[Candle]) -> list[Candle]:
        return [c for c in rows if c.final] if final_only else rows

    hi = _END if until_ms is None else until_ms
    recent: list[Candle] = []
    boundary: int | None = None
    if hot is not None:
        if since_ms is not None:
            whole = await hot.range(instrument, timeframe, since_ms, hi)
            if whole is not None:
                whole = keep(whole)
                return whole[-limit:] if limit is not None else whole
        # The hot tier's candles up to ``until`` (all it holds is at most its capacity).
        held = await hot.last(instrument, timeframe, 2**31 - 1)
        in_range = [c for c in held if c.open_time <= hi and (since_ms is None or c.open_time >= since_ms)]
        # The hot tier covers everything from its oldest candle in the range on, whichever it keeps.
        boundary = in_range[0].open_time if in_range else None
        recent = keep(in_range)
        if limit is not None and len(recent) >= limit:
            return recent[-limit:]
    if cold is None:
        return recent[-limit:] if limit is not None else recent
    # Cold supplies what lies before the hot tier's oldest candle in the range.
    cold_until = hi if boundary is None else boundary - 1
    if until_ms is None and boundary is None:
        cold_until_arg: int | None = None
    else:
        cold_until_arg = cold_until
    need = None if limit is None else limit - len(recent)
    older = await cold.query(instrument, timeframe, since_ms, cold_until_arg, need, final_only=final_only)
    rows = older + recent
    return rows[-limit:] if limit is not None else rows
