"""The engine's frame path: bad frames are counted, logged once per kind, and skipped; the stream goes on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.binance import codec as binance
from deltafeed.venues.binance.feed import BinanceFeed


def trade_frame(trade_id: int, time_ms: int, price: float) -> bytes:
    return binance.wrap_combined("btcusdt@trade", binance.encode_trade("BTCUSDT", trade_id, time_ms, price, 0.5, False))


def test_bad_frames_are_counted_logged_once_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m"],
        db=str(tmp_path / "f.duckdb"),
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9",
    ).validate()
    engine = Engine(settings)
    feed = engine.feeds["binance"]
    assert isinstance(feed, BinanceFeed)
    bad = [
        b"{oops",
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9,"p":"NaN?","q":"1","T":1,"m":true}}',
        b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}',
    ]
    with caplog.at_level(logging.WARNING, logger="deltafeed.binance"):
        t = 1_700_000_000_000
        for i in range(1, 101):
            feed.on_frame(trade_frame(i, t + i * 100, 100.0 + i))
            for frame in bad:  # every trade followed by three bad frames
                feed.on_frame(frame)
    st = engine.states["binance:BTCUSDT"]
    assert st.trades == 100 and st.builder.last_trade_id == 100
    c = st.builder.open_candle("1m")
    assert c is not None and c.trades == 100 and c.close == 200.0
    assert dict(feed.decoder.errors) == {"malformed": 100, "bad_field": 100, "unknown_event": 100}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per kind, not once per frame
    assert {w.split()[1] for w in warnings} == {"malformed", "bad_field", "unknown_event"}


def test_impossible_values_are_counted_and_skipped(tmp_path: Path) -> None:
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m"],
        db=str(tmp_path / "i.duckdb"),
        rest_url="http://127.0.0.1:9",
        ws_url="ws://127.0.0.1:9",
    ).validate()
    engine = Engine(settings)
    feed = engine.feeds["binance"]
    assert isinstance(feed, BinanceFeed)
    t = 1_700_000_000_000
    feed.clock.observe(t)
    feed.update_skew_bounds()

    def frame(trade_id: int, time_ms: int, price: str, qty: str) -> bytes:
        return (
            b'{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,"p":"%s","q":"%s",'
            b'"T":%d,"m":true,"M":true}}' % (time_ms, trade_id, price.encode(), qty.encode(), time_ms)
        )

    feed.on_frame(frame(1, t, "100.0", "1.0"))
    feed.on_frame(frame(2, t + 10, "-5.0", "1.0"))  # negative price
    feed.on_frame(frame(3, t + 20, "100.0", "-1.0"))  # negative size
    feed.on_frame(frame(4, t + 86_400_000, "100.0", "1.0"))  # a day ahead of the venue's clock
    feed.on_frame(frame(5, t - 86_400_000, "100.0", "1.0"))  # a day behind it
    feed.on_frame(frame(6, t + 30, "101.0", "2.0"))
    assert feed.decoder.errors["impossible_value"] == 4
    st = engine.states["binance:BTCUSDT"]
    assert st.trades == 2
    # The skipped ids are a hole: held back, then written off and repaired, never counted.
    st.builder.release_held()
    c = st.builder.open_candle("1m")
    assert c is not None and c.trades == 2 and c.low == 100.0 and c.high == 101.0 and c.volume == 3.0
