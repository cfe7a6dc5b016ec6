"""The live chart page in a real headless Chromium, against a real engine collecting from the Binance
replica and served by the real API (token configured): the page draws the candles the tape says,
each in its state's style, a live update arrives over the WebSocket, the status strip fills in, and
without the token the page says how to supply it. Swagger UI (/docs) renders every operation.

Driven over the Chrome DevTools Protocol (tests/cdp.py). Skipped, saying why, only where Chromium
cannot be found (``make test`` installs Debian's when it can). Screenshots are kept in the test's
tmp dir (their paths printed); ``DELTAFEED_PAGE_SCREENSHOT=docs/page.png`` also copies the chart's there.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from books import true_books
from cdp import Browser, find_chromium
from deltafeed.api.hub import Hub
from deltafeed.api.openapi import openapi_spec
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.books import BookEvent
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.engine.status import EngineStatus
from deltafeed.model import TIMEFRAMES
from deltafeed.replicas.books import book_tape_path
from deltafeed.venues.binance.replica import BinanceReplica
from reference import candles_from_tape, read_tape, rows_by_symbol

CHROMIUM = find_chromium()
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed: `apt-get install -y chromium` (make test does it when it can),"
        " or set DELTAFEED_CHROMIUM to a Chromium/Chrome executable",
    ),
]

TOKEN = "page-test-token"
BTC = "binance:BTCUSDT"
TF = "15s"


class Served:
    def __init__(
        self, replica: BinanceReplica, engine: Engine, url: str, tape: Path, venue_seq: dict[int, int]
    ) -> None:
        self.replica = replica
        self.engine = engine
        self.url = url
        self.tape = tape
        self.venue_seq = venue_seq  # the book's sequence -> the venue's key of that state


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    tmp = tmp_path_factory.mktemp("page")
    tape = tmp / "tape.csv"
    replica = BinanceReplica(symbols=["BTCUSDT"], seed=11, rate=4.0, speed=20.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=[TF, "1m"],
        history="1h",
        db=str(tmp / "page.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        books=[BTC],
        book_depth=20,
    ).validate()
    engine = Engine(settings)
    venue_seq: dict[int, int] = {}

    def remember(ev: BookEvent) -> None:
        if ev.venue_seq is not None:
            venue_seq[ev.sequence] = ev.venue_seq

    engine.books.keepers[BTC].listeners.append(remember)
    await engine.start()
    hub = Hub(snapshot=engine.snapshot, instruments=engine.instrument_names)
    runner = await start_api(engine, hub, "127.0.0.1", 0, TOKEN)
    try:
        async with asyncio.timeout(20):
            while engine.states[BTC].trades < 5:
                await asyncio.sleep(0.05)
        yield Served(replica, engine, api_url(runner), tape, venue_seq)
    finally:
        await stop_api(runner)
        await engine.stop()
        await replica.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    assert CHROMIUM is not None
    b = await Browser.start(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        await b.close()


def _keep(shot: Path, env: str) -> None:
    print(f"\nscreenshot: {shot}")
    target = os.environ.get(env)
    if target:
        shutil.copyfile(shot, target)
        print(f"copied to {target}")


async def test_the_page_draws_the_tape_and_follows_it_live(served: Served, browser: Browser, tmp_path: Path) -> None:
    await browser.goto(f"{served.url}/?token={TOKEN}&instrument={BTC}&timeframe={TF}")
    await browser.wait_for("window.deltafeedPage && deltafeedPage.ready && deltafeedPage.bars > 0")
    first = await browser.evaluate("({bars: deltafeedPage.bars, last: deltafeedPage.lastTime})")
    # A live update over the WebSocket, then a new candle: the chart follows the market.
    await browser.wait_for("deltafeedPage.updates > 0 && deltafeedPage.ws === 'open'")
    await browser.wait_for(f"deltafeedPage.lastTime > {first['last']}", timeout=30)
    await browser.wait_for("document.getElementById('chart-state').dataset.health === 'ok'")
    state = await browser.evaluate("Object.assign({}, document.getElementById('chart-state').dataset)")
    assert state["instrument"] == BTC and state["timeframe"] == TF and state["ws"] == "open"
    assert int(state["bars"]) >= first["bars"] and int(state["updates"]) > 0
    assert state["venues"] == "binance" and state["error"] == ""
    strip = await browser.evaluate("document.getElementById('status').innerText")
    assert "binance" in strip and "messages/s" in strip and "health: ok" in strip

    # What the page holds, candle by candle, against candles built from the replica's tape; forming
    # and provisional ones may still change, so only the final ones are compared.
    bars: list[dict[str, Any]] = await browser.evaluate("deltafeedPage.snapshot()")
    drawn: list[dict[str, Any]] = await browser.evaluate("deltafeedPage.drawn()")
    assert [b["time"] for b in bars] == [d["time"] for d in drawn]
    tf_ms = TIMEFRAMES[TF]
    ref = {c.open_time: c for c in candles_from_tape(rows_by_symbol(read_tape(served.tape))["BTCUSDT"], tf_ms)}
    final = [b for b in bars if b["state"] == "final"]
    assert len(final) > 100, len(final)  # the history: 500 asked, an hour of 15 s candles is 240
    for b in final:
        c = ref[int(b["time"] * 1000)]
        got = (b["open"], b["high"], b["low"], b["close"], b["volume"], b["trades"])
        want = (c.open, c.high, c.low, c.close, pytest.approx(c.volume, abs=1e-8), c.trades)
        assert got == want, (b["time"], got, want)
    times = [int(b["time"] * 1000) for b in bars]
    assert all(b - a == tf_ms for a, b in itertools.pairwise(times))  # no gap here ...
    assert await browser.evaluate("deltafeedPage.gaps") == 0  # ... so none is marked
    # Each state in its own style: final filled, provisional hollow grey, forming hollow amber.
    for b, d in zip(bars, drawn, strict=True):
        if b["state"] == "final":
            assert d["color"] == d["borderColor"] != "rgba(0, 0, 0, 0)", d
        else:
            assert d["color"] == "rgba(0, 0, 0, 0)", d
            assert d["borderColor"] == ("#9e9e9e" if b["state"] == "provisional" else "#f0b90b"), d
    assert bars[-1]["state"] == "forming"
    assert browser.errors == []
    _keep(await browser.screenshot(tmp_path / "page.png"), "DELTAFEED_PAGE_SCREENSHOT")


async def test_the_depth_view_shows_the_book_the_tape_says(served: Served, browser: Browser) -> None:
    await browser.goto(f"{served.url}/?token={TOKEN}&instrument={BTC}&timeframe={TF}")
    await browser.wait_for("document.getElementById('depth').dataset.inSync === 'true'", timeout=20)
    await browser.wait_for("deltafeedPage.book.seq > 3")  # followed live: deltas after the snapshot
    shown = await browser.evaluate(
        "({seq: deltafeedPage.book.seq,"
        " bids: Array.from(deltafeedPage.book.bids.entries()).sort((a, b) => b[0] - a[0]),"
        " asks: Array.from(deltafeedPage.book.asks.entries()).sort((a, b) => a[0] - b[0]),"
        " rows: document.querySelectorAll('#depth-levels tr').length,"
        " state: document.getElementById('depth-state').innerText})"
    )
    assert shown["rows"] == 20 and "spread" in shown["state"], shown
    seq = served.venue_seq[shown["seq"]]
    bids, asks = true_books(book_tape_path(served.tape), "BTCUSDT", [seq], 10)[seq]
    assert [tuple(x) for x in shown["bids"]] == bids and [tuple(x) for x in shown["asks"]] == asks
    assert browser.errors == []


async def test_without_the_token_the_page_says_how_to_supply_it(served: Served, browser: Browser) -> None:
    await browser.goto(f"{served.url}/chart")
    await browser.wait_for("deltafeedPage.error === 'token'")
    text = await browser.evaluate("document.getElementById('auth').innerText")
    assert "/chart?token=TOKEN" in text and "DELTAFEED_API_TOKEN" in text
    assert await browser.evaluate("deltafeedPage.bars") == 0
    await browser.goto(f"{served.url}/chart?token=wrong")
    await browser.wait_for("deltafeedPage.error === 'token'")
    assert "was refused" in await browser.evaluate("document.getElementById('auth').innerText")


async def test_swagger_ui_renders_every_operation(served: Served, browser: Browser, tmp_path: Path) -> None:
    await browser.goto(f"{served.url}/docs?token={TOKEN}")
    await browser.wait_for("document.body.dataset.ready === 'true'")
    ops = sum(len(v) for v in openapi_spec(EngineStatus)["paths"].values())
    shown = await browser.wait_for(
        f"document.querySelectorAll('.opblock').length >= {ops} && document.querySelectorAll('.opblock').length"
    )
    assert shown == ops
    _keep(await browser.screenshot(tmp_path / "docs.png"), "DELTAFEED_DOCS_SCREENSHOT")
