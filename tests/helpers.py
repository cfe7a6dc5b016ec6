"""Small helpers the tests share: UTC times as epoch ms, polling a condition, model candles, free ports,
small aiohttp servers, text tapes of the replicas and a short engine run.

Each was written several times across the test files; one documented version lives here so a fix
reaches every test. ``tests/`` is on ``sys.path`` (see ``conftest.py``), so ``from helpers import ms``
works from ``tests/unit``, ``tests/integration`` and ``tests/e2e`` alike. Nothing here imports code under
test beyond the model and the engine, so a test's reference values never come from the code it checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, overload

from aiohttp import web

from deltafeed.model import Candle

if TYPE_CHECKING:
    from deltafeed.config import Settings
    from deltafeed.engine import Engine

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# One row of a four-column text tape (``symbol,time_ms,<a>,<b>``): prices stay exactly as written, so
# a test can compare them with what a replica sent on the wire.
TextRow = tuple[str, int, str, str]


@overload
def ms(when: str, /) -> int: ...


@overload
def ms(when: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, milli: int = 0, /) -> int: ...


def ms(
    when: str | int, month: int = 1, day: int = 1, hour: int = 0, minute: int = 0, second: int = 0, milli: int = 0, /
) -> int:
    """Epoch milliseconds of a UTC time: ``ms("2026-03-04T10:02:30.500")`` (ISO text without an offset
    is UTC) or ``ms(2026, 3, 4, 10, 2, 30, 500)``.

    Computed with integer datetime arithmetic, independently of the codecs under test, so it is exact
    to the millisecond (a float ``timestamp() * 1000`` can land one below)."""
    if isinstance(when, str):
        t = dt.datetime.fromisoformat(when)
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)
    else:
        t = dt.datetime(when, month, day, hour, minute, second, milli * 1000, tzinfo=dt.UTC)
    return (t - EPOCH) // dt.timedelta(milliseconds=1)


T = TypeVar("T")


async def answered(
    fetch: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str, tries: int = 50, interval: float = 0.05
) -> T:
    """``await fetch()`` again until ``ok`` holds for its answer, and return that answer; fail the
    test naming ``what`` after ``tries`` answers. For a moment that comes and goes: right after a
    candle closes there is no forming candle until the next trade, so a test that wants the forming
    one asks again."""
    for _ in range(tries):
        got = await fetch()
        if ok(got):
            return got
        await asyncio.sleep(interval)
    raise AssertionError(f"{what}: not in {tries} answers")


async def until(
    cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition", interval: float = 0.01
) -> None:
    """Poll ``cond`` every ``interval`` seconds until it holds; fail the test (AssertionError naming
    ``what``) when ``timeout`` seconds pass first. ``cond`` is checked once more at the deadline, so a
    condition that holds just in time passes."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def candle(
    t: int, close: float = 100.0, closed: bool = True, volume: float = 1.0, trades: int = 3, **prices: float
) -> Candle:
    """A model candle opening at ``t`` and closing at ``close``: open ``close - 1``, high ``close + 1``,
    low ``close - 2`` unless ``open``/``high``/``low`` are given as keywords (a test that needs values
    without an exact binary form passes its own). ``closed`` sets the candle's closed flag."""
    unknown = set(prices) - {"open", "high", "low"}
    assert not unknown, f"candle() takes open, high and low as price keywords, not {sorted(unknown)}"
    return Candle(
        t,
        prices.get("open", close - 1),
        prices.get("high", close + 1),
        prices.get("low", close - 2),
        close,
        volume,
        trades,
        closed,
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it; the socket is closed again,
    so a server can bind it, or a client can find nothing listening there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def serve_app(app: web.Application, shutdown_timeout: float = 0.1) -> AsyncIterator[str]:
    """Serve an aiohttp ``app`` on a free loopback port for the ``async with`` block; yields its base
    URL (``http://127.0.0.1:<port>``). A short ``shutdown_timeout`` keeps a test's teardown quick when
    a handler is still holding a connection open."""
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def read_text_tape(path: str | Path, header: str | Sequence[str]) -> list[TextRow]:
    """The rows of a four-column replica tape (``symbol,time_ms,<a>,<b>``: a quote tape's bid and ask,
    or a Finnhub tape's price and volume) in file order, after checking its header line is ``header``
    (the replica's header text, or its column names). Prices stay text, exactly as written."""
    columns = header.strip().split(",") if isinstance(header, str) else list(header)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows and rows[0] == columns, (rows[:1], columns)
    return [(s, int(t), a, b) for s, t, a, b in rows[1:]]


def by_symbol(rows: Sequence[TextRow], symbol: str) -> list[tuple[int, str, str]]:
    """One symbol's rows of a text tape as ``(time_ms, a, b)``, checking the tape keeps them in time order."""
    out = [(t, a, b) for s, t, a, b in rows if s == symbol]
    assert out == sorted(out, key=lambda r: r[0]), f"{symbol}: tape rows out of time order"
    return out


async def run_engine(settings: Settings, seconds: float) -> Engine:
    """Start an engine on ``settings``, let it run ``seconds`` of wall time, stop it and return it (its
    stores and counters can be read afterwards)."""
    from deltafeed.engine import Engine  # at call time: most tests that import helpers never run an engine

    engine = Engine(settings)
    await engine.start()
    await asyncio.sleep(seconds)
    await engine.stop()
    return engine
