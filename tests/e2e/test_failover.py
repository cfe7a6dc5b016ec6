"""A logical instrument with a primary and a standby source: when the primary goes silent, candles
continue from the standby without a hole; before the switch they equal the primary's tape, from the
spanning candle on the standby's."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from deltafeed.api.http import SWITCH_HEADER
from deltafeed.api.hub import Hub
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.client import Client
from deltafeed.config import FailoverSettings, Settings
from deltafeed.engine import Engine
from deltafeed.fmt import iso
from deltafeed.model import BadInput, time_ms
from deltafeed.store.base import open_cold
from deltafeed.venues.binance.replica import BinanceReplica
from reference import candles_from_tape, read_tape


async def test_candles_continue_from_the_standby_when_the_primary_goes_silent(tmp_path: Path) -> None:
    tape = tmp_path / "tape.csv"
    replica = BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT"], seed=9, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tape)
    )
    await replica.start()
    settings = Settings(
        symbols=["BTCUSDT", "ETHUSDT"],
        timeframes=["1m", "5m"],
        history="1h",
        db=str(tmp_path / "f.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        failover={"x:LOGICAL": FailoverSettings(primary="BTCUSDT", standby="ETHUSDT")},
        failover_after="1s",
    ).validate()
    engine = Engine(settings)
    runner = None
    try:
        await engine.start()
        hub = Hub(snapshot=engine.snapshot, instruments=engine.instrument_names)
        runner = await start_api(engine, hub, "127.0.0.1", 0, None)
        async with aiohttp.ClientSession() as http, http.ws_connect(api_url(runner) + "/ws") as ws:
            await ws.send_json({"op": "subscribe", "instrument": "x:LOGICAL", "timeframe": "1m", "snapshot": 0})
            ws_switches: list[dict[str, Any]] = []

            async def watch() -> None:  # a consumer of the logical series, all along
                async for msg in ws:
                    if (doc := msg.json())["type"] == "switch":
                        ws_switches.append(doc)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(4.0)
            before = engine.status()["failover"]
            await engine.stop_streaming(["binance:BTCUSDT"])  # the primary falls silent
            await asyncio.sleep(6.0)
            after = engine.status()["failover"]
            served = await engine.candles("x:LOGICAL", "1m", limit=500)
            watcher.cancel()
        async with Client(api_url(runner)) as client:
            api_switches = await client.fetch_switches("x:LOGICAL")
            async with aiohttp.ClientSession() as http, http.get(api_url(runner) + "/candles/x:LOGICAL/1m") as r:
                api_candles = await r.json()
                switch_header = r.headers.get(SWITCH_HEADER)
        await stop_api(runner)
        runner = None
        await engine.stop()
    finally:
        if runner is not None:
            await stop_api(runner)
        await replica.stop()
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["x:LOGICAL"]["switches"] == 0 and before["x:LOGICAL"]["active"] == "binance:BTCUSDT"
    info = after["x:LOGICAL"]
    assert info["switches"] == 1 and info["active"] == "binance:ETHUSDT" and info["on_standby"]
    switch = info["history"][0]
    rows = read_tape(str(tape))
    cold = await open_cold(settings.db, read_only=True)
    try:
        for tf, tf_ms in (("1m", 60_000), ("5m", 300_000)):
            spanning = switch["spanning"][tf]
            logical = [c for c in await cold.query("x:LOGICAL", tf) if c.closed]
            keys = [c.open_time for c in logical]
            assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), (tf, "a hole in the logical series")
            assert keys[0] < spanning <= keys[-1], (tf, "the switch is inside the stored span")
            primary = {c.open_time: c for c in candles_from_tape([r for r in rows if r[0] == "BTCUSDT"], tf_ms)}
            standby = {c.open_time: c for c in candles_from_tape([r for r in rows if r[0] == "ETHUSDT"], tf_ms)}
            for c in logical:
                w = primary[c.open_time] if c.open_time < spanning else standby[c.open_time]
                assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == (
                    w.open,
                    w.high,
                    w.low,
                    w.close,
                    round(w.volume, 8),
                    w.trades,
                ), (tf, c.open_time, c.open_time < spanning)
    finally:
        await cold.close()
    assert served and served[-1].open_time >= switch["spanning"]["1m"]  # the API serves the logical series
    after_switch = [c for c in served if c.open_time > switch["spanning"]["1m"]]
    assert len(after_switch) >= 3  # minutes from the standby alone

    # The spanning candle is marked wherever the series is read: the switch is kept in the store...
    cold = await open_cold(settings.db, read_only=True)
    try:
        kept = await cold.switches("x:LOGICAL")
    finally:
        await cold.close()
    assert [(w.since_ms, w.source_from, w.source_to) for w in kept] == [
        (switch["since_ms"], "binance:BTCUSDT", "binance:ETHUSDT")
    ]
    assert kept[0].spanning(60_000) == switch["spanning"]["1m"]
    # ... the HTTP API names it beside the candles and lists the switches ...
    assert [w["open_time"] for w in api_candles["switches"]] == [switch["spanning"]["1m"]]
    assert (
        api_candles["switches"][0]["from"] == "binance:BTCUSDT"
        and api_candles["switches"][0]["to"] == "binance:ETHUSDT"
    )
    assert switch_header == str(switch["spanning"]["1m"])
    assert [(w["since_ms"], w["spanning"]["5m"]) for w in api_switches] == [
        (switch["since_ms"], switch["spanning"]["5m"])
    ]
    # ... the WebSocket tells the watchers of the logical series when it happens ...
    assert [
        (m["instrument"], m["data"]["from"], m["data"]["to"], m["data"]["spanning"]["1m"]) for m in ws_switches
    ] == [("x:LOGICAL", "binance:BTCUSDT", "binance:ETHUSDT", switch["spanning"]["1m"])]
    # ... and `deltafeed candles` marks it.
    out = subprocess.run(
        [sys.executable, "-m", "deltafeed", "candles", "x:LOGICAL", "1m", "--db", settings.db, "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    marked = [c for c in json.loads(out.stdout) if "switch" in c]
    assert [(time_ms(c["open_time"]), c["switch"]) for c in marked] == [
        (switch["spanning"]["1m"], "binance:BTCUSDT -> binance:ETHUSDT")
    ]
    out = subprocess.run(
        [sys.executable, "-m", "deltafeed", "candles", "x:LOGICAL", "1m", "--db", settings.db, "--format", "csv"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines()[0] == "open_time,open,high,low,close,volume,trades,state"  # no switch column
    assert out.stderr.splitlines() == [
        f"note: the candle at {iso(switch['spanning']['1m'])} spans a failover"
        " switch (binance:BTCUSDT -> binance:ETHUSDT)"
    ]


def test_failover_settings_are_checked() -> None:
    with pytest.raises(BadInput, match="not among the symbols"):
        Settings(
            symbols=["BTCUSDT"],
            failover={"x:L": FailoverSettings(primary="BTCUSDT", standby="ETHUSDT")},
        ).validate()
    with pytest.raises(BadInput, match="also a collected instrument"):
        Settings(
            symbols=["BTCUSDT", "ETHUSDT"],
            failover={"binance:BTCUSDT": FailoverSettings(primary="BTCUSDT", standby="ETHUSDT")},
        ).validate()


async def test_oanda_killed_mid_run_continues_from_ig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The primary venue's server dies: the logical EUR/USD continues from IG without a hole; before
    the spanning candle it equals OANDA's tape, from it on IG's."""
    from deltafeed.candles.calendar import FxCalendar
    from deltafeed.config import VenueSettings
    from deltafeed.venues.ig.replica import IGReplica
    from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica
    from reference import quote_candles_from_tape, read_quote_tape

    for name, value in (
        ("OANDA_TOKEN", DEV_TOKEN),
        ("OANDA_ACCOUNT", DEFAULT_ACCOUNT),
        ("IG_API_KEY", "k"),
        ("IG_USERNAME", "u"),
        ("IG_PASSWORD", "p"),
    ):
        monkeypatch.setenv(name, value)
    start = 1_794_582_000_000  # Friday 10:00 New York: the FX market is open
    fx_tape, ig_tape = tmp_path / "oanda.csv", tmp_path / "ig.csv"
    primary = OandaReplica(
        symbols=["EUR_USD"], seed=1, rate=2.0, speed=60.0, history_ms=3_600_000, start_ms=start, tape=str(fx_tape)
    )
    standby = IGReplica(
        epics=["CS.D.EURUSD.CFD.IP"],
        seed=2,
        rate=2.0,
        speed=60.0,
        history_ms=3_600_000,
        start_ms=start,
        tape=str(ig_tape),
    )
    await primary.start()
    await standby.start()
    settings = Settings(
        symbols=["oanda:EUR_USD", "ig:CS.D.EURUSD.CFD.IP"],
        timeframes=["1m"],
        history="1h",
        db=str(tmp_path / "fo.duckdb"),
        stale_after="3s",
        failover_after="2s",
        venues={
            "oanda": VenueSettings(rest_url=primary.url, stream_url=primary.url, prices=["bid"]),
            "ig": VenueSettings(rest_url=standby.rest_url, prices=["bid"]),
        },
        failover={"fx:EUR_USD": FailoverSettings(primary="oanda:EUR_USD", standby="ig:CS.D.EURUSD.CFD.IP")},
    ).validate()
    engine = Engine(settings)
    try:
        await engine.start()
        await asyncio.sleep(5.0)
        await primary.stop()  # killed: its stream and REST are gone
        await asyncio.sleep(8.0)
        status = engine.status()
        await engine.stop()
    finally:
        await standby.stop()
    info = status["failover"]["fx:EUR_USD@bid"]  # type: ignore[index]
    assert info["switches"] == 1 and info["active"] == "ig:CS.D.EURUSD.CFD.IP@bid", info
    spanning = info["history"][0]["spanning"]["1m"]
    cal = FxCalendar()
    want_primary = {c.open_time: c for c in quote_candles_from_tape(read_quote_tape(fx_tape), 60_000, "bid", cal)}
    want_standby = {c.open_time: c for c in quote_candles_from_tape(read_quote_tape(ig_tape), 60_000, "bid", cal)}
    cold = await open_cold(settings.db, read_only=True)
    try:
        logical = [c for c in await cold.query("fx:EUR_USD@bid", "1m") if c.closed]
        kept = await cold.switches("fx:EUR_USD@bid")
    finally:
        await cold.close()
    assert [(w.spanning(60_000), w.source_from, w.source_to) for w in kept] == [
        (spanning, "oanda:EUR_USD@bid", "ig:CS.D.EURUSD.CFD.IP@bid")
    ]  # the spanning candle is marked
    keys = [c.open_time for c in logical]
    assert keys == list(range(keys[0], keys[-1] + 60_000, 60_000)), "a hole in the logical series"
    assert keys[0] < spanning < keys[-1]
    assert sum(1 for k in keys if k > spanning) >= 3  # minutes from the standby alone
    for c in logical:
        w = want_primary[c.open_time] if c.open_time < spanning else want_standby[c.open_time]
        assert (c.open, c.high, c.low, c.close, c.trades) == (w.open, w.high, w.low, w.close, w.trades), (
            c.open_time,
            c.open_time < spanning,
        )
