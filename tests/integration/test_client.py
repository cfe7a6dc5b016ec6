"""The Python client against a real server over loopback: a real engine collecting from the Binance
replica. History equals the store; a watch gets live updates; a watch that loses the server (the API
stopped and started again, the engine still running) resumes with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from deltafeed import Client
from deltafeed.api.hub import Hub
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.client import ApiError, to_dataframe
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import Candle, state_flags
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import answered, until

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "client-test-token"
BTC = "binance:BTCUSDT"


@dataclass
class Collector:
    replica: BinanceReplica
    engine: Engine
    runner: Any
    url: str


def new_hub(engine: Engine) -> Hub:
    return Hub(snapshot=engine.snapshot, instruments=engine.instrument_names)


@asynccontextmanager
async def collector(tmp: Path, hot_capacity: int = 1000) -> AsyncIterator[Collector]:
    """Replica (60x market speed) + engine (15s, 1m) + API on a free loopback port."""
    replica = BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT"], seed=9, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tmp / "tape.csv")
    )
    await replica.start()
    settings = Settings(
        symbols=["BTCUSDT", "ETHUSDT"],
        timeframes=["15s", "1m"],
        history="30m",
        db=str(tmp / "c.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        hot_capacity=hot_capacity,
    ).validate()
    engine = Engine(settings)
    await engine.start()
    await settled(engine)
    runner = await start_api(engine, new_hub(engine), "127.0.0.1", 0, TOKEN)
    c = Collector(replica, engine, runner, api_url(runner))
    try:
        yield c
    finally:
        await stop_api(c.runner)
        await engine.stop()
        await replica.stop()


async def settled(engine: Engine) -> None:
    """Wait until the candles that were forming when streaming started have been repaired over REST.

    Until then the live feed may carry a partial first candle, and its REST repair reaches the store
    but not the live feed (an engine matter): a watch started that early could see a gap there.
    """
    async with asyncio.timeout(20):
        while not (all(st.repaired > 0 for st in engine.states.values()) and engine.status()["pending_repairs"] == 0):
            await asyncio.sleep(0.05)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Collector]:
    async with collector(tmp_path_factory.mktemp("client")) as c:
        yield c


async def stored(engine: Engine, instrument: str, timeframe: str) -> dict[int, Candle]:
    await engine.writer.flush()
    rows = await engine.cold.query(instrument, timeframe)
    return {c.open_time: c for c in rows}


# --- HTTP ---------------------------------------------------------------------------------------


async def test_fetch_ohlcv_equals_the_store(served: Collector) -> None:
    async with Client(served.url, token=TOKEN) as df:

        async def both() -> tuple[list[list[float]], list[Any]]:
            return await df.fetch_ohlcv(BTC, "1m"), await df.fetch_candles(BTC, "1m")

        # No candle forms between a minute's end and its first trade: ask until one does.
        rows, candles = await answered(
            both, lambda g: not g[1][-1].closed and g[0][-1][0] == g[1][-1].open_time, "a forming candle"
        )
    db = await stored(served.engine, BTC, "1m")
    assert len(rows) >= 30 and all(len(r) == 6 for r in rows)
    times = [r[0] for r in rows]
    assert times == list(range(times[0], times[-1] + 60_000, 60_000))
    assert candles[-3].closed  # the one before the newest may wait for its closing trade on a busy machine
    for r in rows[:-1]:  # the last one is still forming
        c = db[int(r[0])]
        assert r == [c.open_time, c.open, c.high, c.low, c.close, round(c.volume, 8)]
    assert all(same(c, db[c.open_time]) for c in candles if c.closed)
    assert not candles[-1].closed


async def test_fetch_ohlcv_since_and_limit_like_ccxt(served: Collector) -> None:
    async with Client(served.url, token=TOKEN) as df:
        full = await df.fetch_ohlcv(BTC, "1m")
        since = int(full[3][0])
        first5 = await df.fetch_ohlcv(BTC, "1m", since=since, limit=5)  # ccxt: the first 5 from since
        newest2 = await df.fetch_ohlcv(BTC, "1m", limit=2)
        bounded = await df.fetch_ohlcv(BTC, "1m", since=since - 30_000, until=since + 120_000)
        iso = await df.fetch_ohlcv(BTC, "1m", since="1970-01-01T00:00:00Z", limit=1)
    assert [r[0] for r in first5] == [r[0] for r in full[3:8]]
    assert len(newest2) == 2 and newest2[1][0] - newest2[0][0] == 60_000
    assert newest2[-1][0] >= full[-1][0]  # the newest (time moves on between the two calls)
    assert [r[0] for r in bounded] == [since, since + 60_000, since + 120_000]
    assert iso == []  # nothing stored in 1970


async def test_status_health_instruments_and_control(served: Collector) -> None:
    async with Client(served.url, token=TOKEN) as df:
        status = await df.status()
        assert status["instruments"][BTC]["connected"] is True
        assert status["venues"]["binance"]["connects"] >= 1
        assert await df.health() == {"status": "ok"}
        inst = await df.instruments()
        assert [i["name"] for i in inst["instruments"]] == [BTC, "binance:ETHUSDT"]
        assert await df.stop_streaming(["binance:ETHUSDT"]) == [BTC]
        assert await df.start_streaming() == [BTC, "binance:ETHUSDT"]
    async with Client(served.url) as anonymous:
        with pytest.raises(ApiError) as err:
            await anonymous.stop_streaming()
        assert err.value.status == 401 and "Authorization: Bearer" in err.value.message
        with pytest.raises(ApiError) as err:  # with a token configured, reads need it too
            await anonymous.fetch_ohlcv(BTC, "1m")
        assert err.value.status == 401 and "needs the API token" in err.value.message
    async with Client(served.url, token=TOKEN) as df:
        with pytest.raises(ApiError) as err:
            await df.fetch_ohlcv("binance:XRPUSDT", "1m")
        assert err.value.status == 404 and "not collected here" in err.value.message


async def test_to_dataframe(served: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd

    async with Client(served.url, token=TOKEN) as df:
        rows = await df.fetch_ohlcv(BTC, "1m", limit=10)
        candles = await answered(lambda: df.fetch_candles(BTC, "1m", limit=10), lambda g: not g[-1].closed, "forming")
    frame = Client.to_dataframe(rows)
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert frame.index.name == "open_time" and str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp(int(rows[0][0]), unit="ms", tz="UTC")
    assert frame["close"].tolist() == [r[4] for r in rows]
    full = to_dataframe(candles)
    assert list(full.columns) == ["open", "high", "low", "close", "volume", "trades", "closed", "state"]
    assert not full["closed"].iloc[-1]
    assert full["state"].iloc[-1] == "forming" and set(full["state"]) <= {"forming", "provisional", "final"}
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match=r"deltafeed\[pandas\]"):
        to_dataframe(rows)


@pytest.mark.asyncio(loop_scope="module")
async def test_import_deltafeed_stays_cheap() -> None:
    code = (
        "import sys, deltafeed; assert 'aiohttp' not in sys.modules and 'deltafeed.client' not in sys.modules;"
        " from deltafeed import Client; assert Client.__module__ == 'deltafeed.client'"
    )
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    assert await proc.wait() == 0


# --- WebSocket ----------------------------------------------------------------------------------


async def test_watch_ohlcv_receives_updates(served: Collector) -> None:
    rows: list[list[float]] = []
    async with Client(served.url, token=TOKEN) as df:
        async with asyncio.timeout(20):
            async for row in df.watch_ohlcv(BTC, "15s", snapshot=3):
                rows.append(row)
                if len({r[0] for r in rows}) >= 6:
                    break
    assert all(len(r) == 6 for r in rows)
    times = [r[0] for r in rows]
    assert times == sorted(times)  # updates of a candle, then the next one
    distinct = sorted(set(times))
    assert distinct == list(range(int(distinct[0]), int(distinct[-1]) + 15_000, 15_000))
    assert len(rows) > len(distinct)  # the forming candle came more than once as it changed


async def test_watch_errors_are_raised_not_retried(served: Collector) -> None:
    async with Client(served.url, token=TOKEN, reconnect_max_s=0.1) as df:
        with pytest.raises(ApiError, match="not collected here"):
            async with asyncio.timeout(10):
                async for _ in df.watch_candles("binance:XRPUSDT", "1m"):
                    pass
        with pytest.raises(ValueError, match="unknown timeframe"):
            async for _ in df.watch_candles(BTC, "7x"):
                pass
    # Without the token the WebSocket handshake is refused (here served beyond loopback).
    runner = await start_api(served.engine, None, "0.0.0.0", 0, TOKEN)
    port = api_url(runner).rsplit(":", 1)[1]
    try:
        async with Client(f"http://127.0.0.1:{port}") as df:
            with pytest.raises(ApiError) as err:
                async with asyncio.timeout(10):
                    async for _ in df.watch_candles(BTC, "1m"):
                        pass
            assert err.value.status == 401
    finally:
        await stop_api(runner)


@pytest.mark.parametrize("hot_capacity", [1000, 6], ids=["snapshot-covers-outage", "http-fills-the-rest"])
@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_watch_resumes_without_gap_after_the_api_restarts(tmp_path: Path, hot_capacity: int) -> None:
    """The API server (not the engine) stops for 3 s, 12 market candles of 15s, and starts again on
    the same port. With a hot tier of 6 candles the snapshot cannot reach back: HTTP fills the rest."""
    async with collector(tmp_path, hot_capacity) as c:
        port = int(c.url.rsplit(":", 1)[1])
        closed: list[Candle] = []
        every: list[Candle] = []

        async def watch(df: Client) -> None:
            async for candle in df.watch_candles(BTC, "15s", snapshot=3, closed_only=True):
                closed.append(candle)
            raise AssertionError("a watch never ends by itself")

        async def count_all(df: Client) -> None:
            async for candle in df.watch_candles(BTC, "15s", snapshot=0):
                every.append(candle)

        async with Client(c.url, token=TOKEN, reconnect_max_s=0.5) as df:
            tasks = [asyncio.create_task(watch(df)), asyncio.create_task(count_all(df))]
            try:
                await until(lambda: len(closed) >= 6, timeout=30, what="6 closed candles", interval=0.05)
                await stop_api(c.runner)
                at_stop = len(closed)
                await asyncio.sleep(3.0)
                restarted_at = c.engine.venue_clock.now_ms()
                c.runner = await start_api(c.engine, new_hub(c.engine), "127.0.0.1", port, TOKEN)
                await until(
                    lambda: len(closed) >= at_stop + 20, timeout=30, what="20 more closed candles", interval=0.05
                )
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            assert df.reconnects >= 2  # both watches came back
            # A deep enough snapshot, from the hot tier; or, with a hot tier too small, HTTP for the rest.
            assert (df.resumed_over_http > 0) == (hot_capacity < 20)

        times = [x.open_time for x in closed]
        assert times == list(range(times[0], times[-1] + 15_000, 15_000)), "a gap or a duplicate"
        assert all(x.closed for x in closed)
        # The candles that ended while the server was away came, once each (about 12; the engine
        # closes a candle a grace period after its end).
        assert len([x for x in closed[at_stop:] if x.open_time + 15_000 <= restarted_at]) >= 6
        db = await stored(c.engine, BTC, "15s")
        for x in closed:
            assert same(x, db[x.open_time]), x.open_time
        # The plain watch resumed too: never an older candle after a newer one.
        seen = [x.open_time for x in every]
        assert seen == sorted(seen) and seen[-1] >= times[-1]


def same(a: Candle, b: Candle) -> bool:
    """Equal candles, volume at the venue's 8 decimals (the API rounds float-sum noise away)."""
    return msgspec.structs.replace(a, volume=round(a.volume, 8)) == msgspec.structs.replace(
        b, volume=round(b.volume, 8)
    )


# --- candle states ------------------------------------------------------------------------------

ETH = "binance:ETHUSDT"


async def test_fetch_states_and_final_only(served: Collector) -> None:
    """States as stored, and final=True. A stretch of old ETH 1m candles is given known states here
    (in both tiers), so the answer does not depend on when the engine declares candles final."""
    engine = served.engine
    db = await stored(engine, ETH, "1m")
    old = sorted(db)[2:14]
    restated = [msgspec.structs.replace(db[t], closed=True, final=k % 4 != 1) for k, t in enumerate(old)]
    await engine.cold.write([(ETH, "1m", c) for c in restated])
    for c in restated:
        engine.hot.put(ETH, "1m", c)
    async with Client(served.url, token=TOKEN) as df:
        candles = await df.fetch_candles(ETH, "1m", since=old[0], until=old[-1])
        finals = await df.fetch_candles(ETH, "1m", since=old[0], until=old[-1], final=True)
        newest = await df.fetch_candles(ETH, "1m", until=old[-1], limit=4, final=True)
        rows = await df.fetch_ohlcv(ETH, "1m", since=old[0], until=old[-1], final=True)
        everything = await answered(lambda: df.fetch_candles(ETH, "1m"), lambda g: not g[-1].closed, "forming")
    assert [c.state for c in candles] == ["provisional" if k % 4 == 1 else "final" for k in range(12)]
    assert all(same(c, r) for c, r in zip(candles, restated, strict=True))
    assert finals == [c for c in candles if c.final] and len(finals) == 9
    assert newest == finals[-4:]
    assert rows == [[c.open_time, c.open, c.high, c.low, c.close, c.volume] for c in finals]
    db = await stored(engine, ETH, "1m")
    assert all(c.state == db[c.open_time].state for c in everything[:-1])
    assert everything[-1].state == "forming"
    frame = to_dataframe(candles)
    assert frame["state"].tolist() == [c.state for c in candles]
    # The HTTP API's own rows (with trades and state) make a frame too.
    assert list(
        to_dataframe(
            [[c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, c.state] for c in candles]
        ).columns
    ) == ["open", "high", "low", "close", "volume", "trades", "state"]


async def test_watches_with_final_only_and_closed_only(served: Collector) -> None:
    """The server publishes a series (5m: one the engine does not collect, so only this test writes it)
    the way the engine does: updates, a candle closed provisional, one made final later, after newer
    ones, and a correction. A final-only watch gets each final candle, including the one re-published
    final; closed_only gets each candle once as it closes (and the correction); a plain watch every
    update."""
    hub = served.engine.hub
    assert hub is not None
    t = 1_700_000_100_000 - 1_700_000_100_000 % 300_000

    def c(k: int, state: str, price: float = 100.0) -> Candle:
        return Candle(t + k * 300_000, price, price + 1, price - 1, price + 0.5, 2.0, 5, *state_flags(state))

    got: dict[str, list[Candle]] = {"final": [], "closed": [], "plain": []}

    async def watch(df: Client, name: str, **kw: bool) -> None:
        async for candle in df.watch_candles(BTC, "5m", snapshot=0, **kw):
            got[name].append(candle)

    async with Client(served.url, token=TOKEN) as df:
        tasks = [
            asyncio.create_task(watch(df, "final", final_only=True)),
            asyncio.create_task(watch(df, "closed", closed_only=True)),
            asyncio.create_task(watch(df, "plain")),
        ]
        try:
            async with asyncio.timeout(10):  # all three subscribed
                while (
                    len(hub._candle_routes.get(BTC, {}).get("5m", ())) < 2
                    or len(hub._final_routes.get(BTC, {}).get("5m", ())) < 1
                ):
                    await asyncio.sleep(0.02)
            published = [
                c(0, "forming"),
                c(0, "provisional"),
                c(0, "final"),  # verified with the same values
                c(1, "forming"),
                c(1, "provisional"),
                c(2, "forming"),
                c(2, "final"),
                c(1, "final"),  # made final after a newer one
                c(0, "final", 99.0),  # a correction
                c(2, "final"),  # the same again: no news
                c(3, "forming"),
                c(3, "final"),
            ]
            for x in published:
                hub.candle(BTC, "5m", x)
                await asyncio.sleep(0.01)
            async with asyncio.timeout(10):
                while len(got["final"]) < 5 or len(got["closed"]) < 5 or len(got["plain"]) < 9:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)  # nothing more comes
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def seen(name: str) -> list[tuple[int, str, float]]:
        return [((x.open_time - t) // 300_000, x.state, x.open) for x in got[name]]

    assert seen("final") == [
        (0, "final", 100.0),
        (2, "final", 100.0),
        (1, "final", 100.0),
        (0, "final", 99.0),
        (3, "final", 100.0),
    ]
    assert seen("closed") == [
        (0, "provisional", 100.0),
        (1, "provisional", 100.0),
        (2, "final", 100.0),
        (0, "final", 99.0),
        (3, "final", 100.0),
    ]
    assert seen("plain") == [
        (0, "forming", 100.0),
        (0, "provisional", 100.0),
        (1, "forming", 100.0),
        (1, "provisional", 100.0),
        (2, "forming", 100.0),
        (2, "final", 100.0),
        (0, "final", 99.0),
        (3, "forming", 100.0),
        (3, "final", 100.0),
    ]
