"""Derives candles of a longer timeframe from consecutive candles of a shorter one."""

from __future__ import annotations

from collections.abc import Iterable

from deltafeed.model import Candle


def rollup(parts: Iterable[Candle], part_ms: int, tf_ms: int) -> list[Candle]:
    """Fold ``parts`` (sorted by open time, each ``part_ms`` long) into ``tf_ms`` candles.

    Parts without trades are flat placeholders at the previous close: they add nothing to the
    open, high or low of a candle that has trades, exactly as if it were built from the trades.
    A derived candle is closed only when its last part is closed and ends where it ends.
    """
    if tf_ms % part_ms:
        raise ValueError(f"{tf_ms} ms candles cannot be built from {part_ms} ms ones")
    out: list[Candle] = []
    cur: Candle | None = None
    complete = True
    for p in parts:
        b = p.open_time - p.open_time % tf_ms
        if cur is None or b != cur.open_time:
            if cur is not None:
                out.append(cur)
            cur = Candle(b, p.open, p.high, p.low, p.close, p.volume, p.trades, False)
            complete = p.closed
        else:
            if p.trades:
                if cur.trades:
                    cur.high = max(cur.high, p.high)
                    cur.low = min(cur.low, p.low)
                else:  # the first part with trades sets the open
                    cur.open, cur.high, cur.low = p.open, p.high, p.low
            cur.close = p.close
            cur.volume += p.volume
            cur.trades += p.trades
            complete = complete and p.closed
        cur.closed = complete and p.open_time + part_ms == b + tf_ms
    if cur is not None:
        out.append(cur)
    return out
