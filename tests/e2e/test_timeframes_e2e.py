"""End to end: timeframes beyond the standard nine (30s, 45s, 3m, 2h, 1w, 1M) from a Binance replica
whose market opens on Sunday 2026-05-31 23:00 UTC and streams into Monday 2026-06-01 -- a new week
and a new month at once -- equal the candles computed from the replica's tape by tests/reference.py
(weeks from Monday 00:00 UTC, months from the 1st, worked out there with datetime, not deltafeed).

The closed week and month of May hold the one hour of market there was; they come from the venue's
history (1d klines rolled up). The week and month of June are forming: they must hold every trade of
the tape so far (rolled up from 1m candles, seeded from the bootstrap's history) and must not be final.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
from pathlib import Path

import aiohttp
import pytest

from deltafeed.config import Settings
from deltafeed.model import Candle
from deltafeed.store.cold import ColdStore
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import run_engine
from reference import RefCandle, candles_from_tape, next_open, open_of, read_tape

SYMBOL = "BTCUSDT"
KEY = f"binance:{SYMBOL}"
JUNE_1 = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)  # a Monday and the 1st
MIN = 60_000
#: Each timeframe and its grid for the reference: a length in ms (epoch aligned) or "1w" / "1M".
GRIDS: dict[str, int | str] = {"30s": 30_000, "45s": 45_000, "3m": 180_000, "2h": 7_200_000, "1w": "1w", "1M": "1M"}


def _same(c: Candle, w: RefCandle) -> bool:
    return (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
        w.open,
        w.high,
        w.low,
        w.close,
        round(w.volume, 8),
        w.trades,
    )


@pytest.mark.parametrize("rollup_from", ["1m", None], ids=["rolled-up-from-1m", "from-trades-and-klines"])
async def test_any_timeframe_equals_the_tape_across_a_week_and_a_month_boundary(
    tmp_path: Path, rollup_from: str | None
) -> None:
    """Rolled up: 3m, 2h, 1w and 1M are derived from 1m (30s and 45s, which 1m does not divide, from
    trades). From trades: every timeframe is built from the trades, Binance's own klines of 3m, 2h and
    1w merged in, their history from Binance's klines (30s and 45s from 15s, 1M from 1d, rolled up)."""
    tape = tmp_path / "tape.csv"
    # The market opened an hour before June; start-up is 20 minutes into June, then 6 minutes stream.
    replica = BinanceReplica(
        symbols=[SYMBOL], seed=5, rate=2.0, speed=60.0, start_ms=JUNE_1 + 20 * MIN, history_ms=80 * MIN, tape=str(tape)
    )
    await replica.start()
    db = str(tmp_path / "tf.duckdb")
    settings = Settings(
        symbols=[SYMBOL],
        timeframes=["30s", "45s", "1m", "3m", "2h", "1w", "1M"],  # all new but 1m
        rollup_from=rollup_from,
        history="3h",
        db=db,
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    try:
        engine = await run_engine(settings, 6.0)
    finally:
        await replica.stop()
    assert engine.timeframes == ["30s", "45s", "1m", "3m", "2h", "1w", "1M"]
    st = engine.states[KEY]
    if rollup_from is not None:
        assert st.rollup is not None and st.rollup.timeframes == ["3m", "2h", "1w", "1M"]
        assert st.builder.timeframes == ["30s", "45s", "1m"]
    else:
        assert st.rollup is None and st.builder.timeframes == engine.timeframes
    assert st.trades > 100 and not engine.status()["skipped_frames"]

    rows = [r for r in read_tape(str(tape)) if r.symbol == SYMBOL]
    assert rows[0].time_ms < JUNE_1 <= rows[-1].time_ms  # the tape spans the boundary
    store = ColdStore.open_reader(db)
    try:
        for tf, grid in GRIDS.items():
            want = {c.open_time: c for c in candles_from_tape(rows, grid)}
            stored = store.query(KEY, tf)
            closed = [c for c in stored if c.closed]
            assert closed, tf
            keys = [c.open_time for c in closed]
            # None missing, none repeated: each closed candle opens where the one before it ends.
            assert all(next_open(a, grid) == b for a, b in itertools.pairwise(keys)), tf
            # From the candle of the market's first trade on (the history), to near the run's end.
            assert keys[0] == open_of(rows[0].time_ms, grid), tf
            for c in closed:
                assert c.final, (tf, c.open_time)  # history, or vouched for by the trade ids
                assert _same(c, want[c.open_time]), (tf, c.open_time, c, want[c.open_time])
            if isinstance(grid, int):
                assert keys[-1] >= open_of(rows[-1].time_ms, grid) - 3 * max(grid, MIN), tf
        # The week and the month of May: closed, one hour of market, and the boundary is exact.
        for tf in ("1w", "1M"):
            (may,) = [c for c in store.query(KEY, tf) if c.closed]
            assert may.open_time == open_of(JUNE_1 - 1, tf) and next_open(may.open_time, tf) == JUNE_1
            assert may.trades == sum(1 for r in rows if r.time_ms < JUNE_1)
            # June's candle is forming and not final. Rolled up, it holds every trade of June so far
            # (its 1m parts were seeded from the history); built from the trades, those since the
            # stream started (what came before is a repair for when the candle has closed), unless
            # Binance's own forming kline, holding every trade of the week, was merged in.
            forming = [c for c in store.query(KEY, tf) if not c.closed]
            hot = [c for c in engine.hot.last(KEY, tf, 10) if c.open_time == JUNE_1]
            assert len(hot) == 1 and not hot[0].final and not hot[0].closed, tf
            assert forming == [] or forming[0].open_time == JUNE_1
            live = st.open_candle(tf)
            assert live is not None and live.open_time == JUNE_1 and not live.closed, tf
            june = [r for r in rows if r.time_ms >= JUNE_1 and r.trade_id <= st.builder.last_trade_id]
            covered = june[len(june) - live.trades :]
            assert live.trades > 100 and (rollup_from is None or len(covered) == len(june))
            ref = candles_from_tape(covered, tf)
            assert len(ref) == 1 and _same(live, ref[0]), (tf, live, ref)
    finally:
        store.close()


async def test_http_and_websocket_serve_the_new_timeframes_as_the_tape_has_them(tmp_path: Path) -> None:
    """The API takes the new names (and 60s as 1m): HTTP candles of 45s and 1w equal the tape, a
    WebSocket subscription to 45s gets 45s candles, and a name no timeframe has is a 400."""
    from deltafeed.api.hub import Hub
    from deltafeed.api.server import api_url, start_api
    from deltafeed.engine import Engine

    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(symbols=[SYMBOL], seed=8, rate=2.0, speed=60.0, history_ms=30 * MIN, tape=str(tape))
    await replica.start()
    settings = Settings(
        symbols=[SYMBOL],
        timeframes=["45s", "1m", "1w"],
        history="1h",
        db=str(tmp_path / "api.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    engine = Engine(settings)
    await engine.start()
    hub = Hub(
        snapshot=engine.snapshot, instruments=engine.instrument_names, timeframes=lambda: list(engine.timeframes)
    )  # as `deltafeed run` makes it
    runner = await start_api(engine, hub, "127.0.0.1", 0, None)
    url = api_url(runner)
    try:
        await asyncio.sleep(3.0)  # three market minutes stream
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/candles/{KEY}/45s") as r:
                assert r.status == 200, await r.text()
                doc45 = await r.json()
            async with session.get(f"{url}/candles/{KEY}/1w") as r:
                assert r.status == 200, await r.text()
                doc1w = await r.json()
            async with session.get(f"{url}/candles/{KEY}/60s") as r:
                assert r.status == 200 and (await r.json())["timeframe"] == "1m"
            async with session.get(f"{url}/candles/{KEY}/7x") as r:
                assert r.status == 400 and "unknown timeframe '7x'" in await r.text()
            async with session.get(f"{url}/candles/{KEY}/3m") as r:
                assert r.status == 404 and "not collected" in await r.text()
            ws = await session.ws_connect(f"{url}/ws")
            await ws.send_str(json.dumps({"op": "subscribe", "instrument": KEY, "timeframe": "45s", "snapshot": 3}))
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["type"] == "subscribed" and reply["timeframe"] == "45s", reply
            snap = [json.loads((await ws.receive(timeout=10)).data) for _ in range(3)]
            assert all(m["type"] == "candle" and m["data"]["timeframe"] == "45s" for m in snap), snap
            assert [m["timestamp"] % 45_000 for m in snap] == [0, 0, 0]
            await ws.close()
    finally:
        await runner.cleanup()
        await engine.stop()
        await replica.stop()

    rows = [r for r in read_tape(str(tape)) if r.symbol == SYMBOL]
    cols = doc45["columns"]
    got = [dict(zip(cols, row, strict=True)) for row in doc45["candles"]]
    want = {c.open_time: c for c in candles_from_tape(rows, 45_000)}
    final = [g for g in got if g["state"] == "final"]
    assert len(final) >= 30
    for g in final:
        w = want[g["open_time"]]
        assert (g["open"], g["high"], g["low"], g["close"], round(g["volume"], 8), g["trades"]) == (
            w.open,
            w.high,
            w.low,
            w.close,
            round(w.volume, 8),
            w.trades,
        ), g
    # The week is forming (streamed since start-up; what came before is fetched once it closes).
    (week,) = [dict(zip(doc1w["columns"], row, strict=True)) for row in doc1w["candles"]]
    assert week["open_time"] == open_of(rows[-1].time_ms, "1w") and week["state"] == "forming"
