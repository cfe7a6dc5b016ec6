"""A venue added from outside deltafeed runs end to end with no change to core code.

The venue "toyx" is defined here: a sans-I/O codec (JSON trades with consecutive ids, candles as
arrays), a replica (aiohttp: ``/time``, ``/candles``, a WebSocket of trades) driven by a seeded
market on the wall clock, and a feed. It is registered through the registry's public API, then a
plain :class:`~deltafeed.engine.Engine` bootstraps its history, streams its trades and reconciles
its candles to final. The stored candles, final and provisional, are compared field by field with
candles computed from the replica's tape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from deltafeed.clock import VenueClock
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.model import TIMEFRAMES, Candle, Trade
from deltafeed.series import Series
from deltafeed.store.cold import ColdStore
from deltafeed.venues import registry
from deltafeed.venues.base import HTTP_SCHEMES, WS_SCHEMES, FeedStatus, Venue, VenueSettings
from reference import TapeRow, candles_from_tape

NAME = "toyx"
STEP_MS = 100  # one trade every 100 ms of wall time


# --- the venue's market and replica --------------------------------------------------------------


class ToyMarket:
    """Trades of one symbol on the wall clock: trade ``i`` at ``origin + i * STEP_MS``, a seeded walk."""

    def __init__(self, symbol: str, origin_ms: int, seed: int = 7) -> None:
        self.symbol = symbol
        self.origin_ms = origin_ms
        self._rng = random.Random(seed)
        self._price = 100.0
        self.trades: list[Trade] = []

    def due(self, now_ms: int) -> list[Trade]:
        """Every trade up to ``now_ms`` (the tape), generating the new ones."""
        while self.origin_ms + len(self.trades) * STEP_MS <= now_ms:
            self._price = round(self._price + self._rng.choice((-0.25, 0.0, 0.25)), 2)
            i = len(self.trades)
            qty = round(self._rng.uniform(0.1, 2.0), 3)
            self.trades.append(Trade(self.symbol, i + 1, self.origin_ms + i * STEP_MS, self._price, qty, False))
        return self.trades


def wall_ms() -> int:
    return int(time.time() * 1000)


class ToyReplica:
    """The toyx protocol on a loopback port: ``GET /time``, ``GET /candles``, ``GET /ws`` (trades)."""

    def __init__(self, market: ToyMarket) -> None:
        self.market = market
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/time", self._time)
        app.router.add_get("/candles", self._candles)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"ms": wall_ms()})

    async def _candles(self, request: web.Request) -> web.Response:
        tf_ms = TIMEFRAMES[request.query["tf"]]
        start, end, now = int(request.query["start"]), int(request.query["end"]), wall_ms()
        # Candles opening in [start, end), each whole (as venues' kline endpoints answer): a candle
        # cut at ``end`` would be marked closed while it lacks its last trades.
        buckets: dict[int, list[Trade]] = {}
        for t in self.market.due(now):
            if start <= t.time_ms // tf_ms * tf_ms < end:
                buckets.setdefault(t.time_ms // tf_ms * tf_ms, []).append(t)
        rows = [
            [o, ts[0].price, max(t.price for t in ts), min(t.price for t in ts), ts[-1].price,
             sum(t.qty for t in ts), len(ts), o + tf_ms <= now]
            for o, ts in sorted(buckets.items())
        ]  # fmt: skip
        return web.json_response(rows)

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive_json()  # {"subscribe": [...]}: one symbol here
        sent = len(self.market.due(wall_ms()))
        with contextlib.suppress(ConnectionError):  # the client went away
            while not ws.closed:
                trades = self.market.due(wall_ms())
                for t in trades[sent:]:
                    msg = {"s": t.symbol, "i": t.trade_id, "t": t.time_ms, "p": t.price, "q": t.qty}
                    await ws.send_str(json.dumps(msg))
                sent = len(trades)
                await asyncio.sleep(0.02)
        return ws


# --- the venue's feed and declaration ------------------------------------------------------------


class ToyFeed:
    """The toyx live side: trades from the WebSocket into the series' builders, candles over REST."""

    venue = NAME
    omits_empty = True
    sequenced = False  # provisional until reconciled with the venue's history
    reconcile_every_s = 0.5

    def __init__(self, vs: VenueSettings) -> None:
        assert vs.rest_url and vs.ws_url
        self.rest_url, self.ws_url = vs.rest_url, vs.ws_url
        self.clock = VenueClock()
        self.states: list[Series] = []
        self._errors: Counter[str] = Counter()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = False

    @property
    def errors(self) -> Counter[str]:
        return self._errors

    def add(self, st: Series) -> None:
        self.states.append(st)

    def session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    async def check(self) -> None:
        async with self.session().get(f"{self.rest_url}/time") as r:
            self.clock.observe((await r.json())["ms"])

    def start(self) -> None:
        self._task = asyncio.create_task(self._stream())

    async def _stream(self) -> None:
        async with self.session().ws_connect(self.ws_url) as ws:
            await ws.send_json({"subscribe": [st.instrument.symbol for st in self.states]})
            self._connected = True
            async for msg in ws:
                try:
                    d = json.loads(msg.data)
                    trade = Trade(d["s"], d["i"], d["t"], float(d["p"]), float(d["q"]), False)
                except (ValueError, KeyError, TypeError):
                    self._errors["malformed"] += 1
                    continue
                for st in self.states:
                    if st.active and st.instrument.symbol == trade.symbol:
                        st.on_trade(trade)
                self.clock.observe(trade.time_ms)
        self._connected = False

    async def tick(self, mono: float) -> None:
        return None

    def connected(self) -> bool:
        return self._connected

    def activate(self, st: Any, active: bool) -> None:
        return None

    def control(self, subscribe: bool, states: list[Any]) -> None:
        return None

    def page_span_ms(self, timeframe: str) -> int:
        return 500 * TIMEFRAMES[timeframe]

    async def candles(
        self, st: Any, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        q = {"tf": timeframe, "start": start_ms, "end": end_ms}
        async with self.session().get(f"{self.rest_url}/candles", params=q) as r:
            rows = await r.json()
        return [Candle(o, op, h, lo, c, v, n, closed=done) for o, op, h, lo, c, v, n, done in rows]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._http is not None:
            await self._http.close()

    def report(self) -> FeedStatus:
        up = int(self._connected)
        return FeedStatus(
            connected=self._connected, connections=up, connects=1, reconnects=0, rotations=0, stale_drops=0,
            connect_budget_waits=0, frames=0, skipped_frames=dict(self._errors), rest_requests=0,
            rest_throttled=0, rest_server_errors=0, rest_limiter_waits=0,
        )  # fmt: skip

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()


class ToySettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
    pass


class ToyVenue(Venue):
    name = NAME
    description = "a venue defined in a test"
    settings_type = ToySettings
    urls = {"rest_url": HTTP_SCHEMES, "ws_url": WS_SCHEMES}  # noqa: RUF012
    omits_empty = True
    sequenced = False
    reconcile_every_s = 0.5

    def make_feed(self, settings: Settings, on_trade: Any) -> Any:
        return ToyFeed(settings.venue_settings(self.name))


VENUE = ToyVenue()


@pytest.fixture
def toy_venue() -> Iterator[Venue]:
    registry.register(VENUE)
    yield VENUE
    registry.unregister(NAME)


@pytest.fixture
async def toy_replica() -> AsyncIterator[ToyReplica]:
    replica = ToyReplica(ToyMarket("ABC", origin_ms=wall_ms() - 30_000))
    await replica.start()
    yield replica
    await replica.stop()


async def test_a_venue_defined_outside_runs_end_to_end(
    toy_venue: Venue, toy_replica: ToyReplica, tmp_path: Path
) -> None:
    assert NAME in registry.names() and registry.get(NAME) is toy_venue
    db = str(tmp_path / "toy.duckdb")
    port = toy_replica.url.rsplit(":", 1)[1]
    settings = Settings(
        venue=NAME,
        symbols=["ABC"],
        timeframes=["1s", "5s"],
        history="20s",
        db=db,
        api="off",
        venues={NAME: {"rest_url": toy_replica.url, "ws_url": f"ws://127.0.0.1:{port}/ws"}},
    ).validate()
    engine = Engine(settings)
    await engine.start()
    await asyncio.sleep(5.0)
    await engine.stop()
    status = engine.status()
    assert status["venues"][NAME]["skipped_frames"] == {}  # type: ignore[index]

    tape = [
        TapeRow(
            t.symbol, t.trade_id, t.time_ms, Decimal(str(t.price)), Decimal(str(t.qty)), False, str(t.price), str(t.qty)
        )
        for t in toy_replica.market.trades
    ]
    store = ColdStore.open_reader(db)
    try:
        for tf in ("1s", "5s"):
            tf_ms = TIMEFRAMES[tf]
            want = {c.open_time: c for c in candles_from_tape(tape, tf_ms)}
            stored = [c for c in store.query(f"{NAME}:ABC", tf) if c.closed]
            keys = [c.open_time for c in stored]
            assert keys == list(range(keys[0], keys[-1] + tf_ms, tf_ms)), tf  # none missing, none repeated
            final = [c for c in stored if c.final]
            # History, stream and reconciliation together: most of the window is final by now.
            assert len(final) >= (15 if tf == "1s" else 3), (tf, len(final), len(stored))
            mismatched = []
            for c in stored:  # the whole stored window against the tape
                ref = want[c.open_time]
                got = (c.open, c.high, c.low, c.close, round(c.volume, 6), c.trades)
                exp = (ref.open, ref.high, ref.low, ref.close, round(ref.volume, 6), ref.trades)
                if got != exp:
                    mismatched.append((c.open_time, c.state, got, exp))
            # Closed means true: every final candle equals the tape; what differs (the candle the stream
            # joined halfway) is provisional.
            assert all(state == "provisional" for _, state, _, _ in mismatched), (tf, mismatched)
            assert len(mismatched) <= 2, (tf, mismatched)
    finally:
        store.close()
