"""The engine's frame path: bad frames are counted, logged once per kind, and skipped; the stream goes on."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues import binance


def trade_frame(trade_id: int, time_ms: int, price: float) -> bytes:
    return binance.wrap_combined("btcusdt@trade", binance.encode_trade("BTCUSDT", trade_id, time_ms, price, 0.5, False))


def test_bad_frames_are_counted_logged_once_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(symbols=["BTCUSDT"], timeframes=["1m"], db=str(tmp_path / "f.duckdb"),
                        rest_url="http://127.0.0.1:9", ws_url="ws://127.0.0.1:9").validate()
    engine = Engine(settings)
    bad = [
        b"{oops",
        b'{"stream":"btcusdt@trade","data":{"e":"trade","E":1,"s":"BTCUSDT","t":9,"p":"NaN?","q":"1","T":1,"m":true}}',
        b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}',
    ]
    with caplog.at_level(logging.WARNING, logger="deltafeed.engine"):
        t = 1_700_000_000_000
        for i in range(1, 101):
            engine.on_frame(trade_frame(i, t + i * 100, 100.0 + i))
            for frame in bad:  # every trade followed by three bad frames
                engine.on_frame(frame)
    st = engine.states["binance:BTCUSDT"]
    assert st.trades == 100 and st.builder.last_trade_id == 100
    c = st.builder.open_candle("1m")
    assert c is not None and c.trades == 100 and c.close == 200.0
    assert dict(engine.decoder.errors) == {"malformed": 100, "bad_field": 100, "unknown_event": 100}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # once per kind, not once per frame
    assert {w.split()[1] for w in warnings} == {"malformed", "bad_field", "unknown_event"}
