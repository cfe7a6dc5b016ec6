"""Candles of a span built from a venue's trades in time order: history where the venue serves no
candle rows (Kraken's OHLC keeps only its newest 720)."""

from __future__ import annotations

from deltafeed.model import Candle, Trade


def build_candles(trades: list[Trade], tf_ms: int, start_ms: int, end_ms: int, now_ms: int) -> list[Candle]:
    """Candles of ``tf_ms`` over [start_ms, end_ms) from trades in time order: a quiet interval after
    the first trade is a flat candle at the last price with no volume (as OHLC rows are); a candle
    is closed when ``now_ms`` has passed its end."""
    out: list[Candle] = []
    cur: Candle | None = None
    last_close: float | None = None
    t = start_ms
    i = 0
    while t < end_ms:
        cur = None
        while i < len(trades) and trades[i].time_ms < t + tf_ms:
            tr = trades[i]
            i += 1
            if tr.time_ms < t:
                continue
            if cur is None:
                cur = Candle(t, tr.price, tr.price, tr.price, tr.price, tr.qty, 1, False)
            else:
                cur.high = max(cur.high, tr.price)
                cur.low = min(cur.low, tr.price)
                cur.close = tr.price
                cur.volume += tr.qty
                cur.trades += 1
        if cur is None and last_close is not None:
            cur = Candle(t, last_close, last_close, last_close, last_close, 0.0, 0, False)
        if cur is not None:
            cur.volume = round(cur.volume, 10)
            cur.closed = t + tf_ms <= now_ms
            last_close = cur.close
            out.append(cur)
        t += tf_ms
    return out
