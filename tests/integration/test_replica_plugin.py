"""The ``deltafeed_replica`` pytest fixture: every venue's replica starts on a free loopback port, answers
over a real socket, and its tape (where it has one) starts with the shared columns.

The plugin is loaded by tests/conftest.py (or by its ``pytest11`` entry point once installed)."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path

import aiohttp
import pytest

from deltafeed.model import BadInput
from deltafeed.pytest_plugin import StartReplica, replica_class
from deltafeed.replicas.options import ReplicaOptions
from deltafeed.venues.binance.replica import BinanceReplica
from deltafeed.venues.dukascopy import codec as dukascopy_codec
from reference import QUOTE_TAPE_COLUMNS, TRADE_TAPE_COLUMNS, read_quote_tape, read_trade_tape

# Wednesday 2026-03-04 15:00 UTC: the FX market is open, US stocks in session.
START = int(dt.datetime(2026, 3, 4, 15, tzinfo=dt.UTC).timestamp() * 1000)
HOUR = 3_600_000


def header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


async def test_binance(deltafeed_replica: StartReplica, tmp_path: Path) -> None:
    tape = tmp_path / "binance.csv"
    r = await deltafeed_replica("binance", symbols=["BTCUSDT"], tape=tape, history_ms=60_000, weight_limit=100)
    assert isinstance(r, BinanceReplica) and r.host == "127.0.0.1" and r.port > 0
    assert r.limiter.limit == 100  # a venue extra reaches the constructor
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/api/v3/ping") as resp:
        assert resp.status == 200 and await resp.json() == {}
    assert header(tape)[:5] == TRADE_TAPE_COLUMNS
    rows = read_trade_tape(tape, extra=["is_buyer_maker"])
    assert rows and {x.symbol for x in rows} == {"BTCUSDT"}


async def test_oanda(deltafeed_replica: StartReplica, tmp_path: Path) -> None:
    tape = tmp_path / "oanda.csv"
    r = await deltafeed_replica("oanda", symbols=["EUR_USD"], tape=tape, start_ms=START, history_ms=HOUR)
    headers = {"Authorization": f"Bearer {r.token}"}
    async with aiohttp.ClientSession() as s, s.get(f"{r.url}/v3/accounts", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.json())["accounts"][0]["id"] == r.account_id
    assert header(tape) == QUOTE_TAPE_COLUMNS
    rows = read_quote_tape(tape)
    assert rows and {x.symbol for x in rows} == {"EUR_USD"} and all(x.bid < x.ask for x in rows)


async def test_finnhub(deltafeed_replica: StartReplica, tmp_path: Path) -> None:
    tape = tmp_path / "finnhub.csv"
    r = await deltafeed_replica(
        "finnhub", symbols=["BINANCE:BTCUSDT", "OANDA:EUR_USD"], tape=tape, start_ms=START, history_ms=HOUR
    )
    query = {"symbol": "BINANCE:BTCUSDT", "resolution": "1", "from": str((START - HOUR) // 1000)}
    query |= {"to": str(START // 1000), "token": "k"}
    async with aiohttp.ClientSession() as s, s.get(f"{r.rest_url}/crypto/candle", params=query) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["s"] == "ok" and len(body["t"]) > 0
    assert header(tape) == TRADE_TAPE_COLUMNS
    rows = read_trade_tape(tape)  # trade ids count 1, 2, 3, ... per symbol
    assert {x.symbol for x in rows} == {"BINANCE:BTCUSDT", "OANDA:EUR_USD"}


async def test_ig(deltafeed_replica: StartReplica, tmp_path: Path) -> None:
    tape = tmp_path / "ig.csv"
    r = await deltafeed_replica("ig", symbols=["CS.D.EURUSD.CFD.IP"], tape=tape, start_ms=START, history_ms=HOUR)
    login = {"identifier": "user", "password": "pw"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{r.rest_url}/session", json=login, headers={"X-IG-API-KEY": "key"}) as resp,
    ):
        assert resp.status == 200 and resp.headers["CST"] and resp.headers["X-SECURITY-TOKEN"]
    assert header(tape) == QUOTE_TAPE_COLUMNS
    rows = read_quote_tape(tape)
    assert rows and {x.symbol for x in rows} == {"CS.D.EURUSD.CFD.IP"}


async def test_dukascopy(deltafeed_replica: StartReplica, tmp_path: Path) -> None:
    """Dukascopy's tape holds exactly the quotes of the hour files it served, as the file encodes them."""
    tape = tmp_path / "dukascopy.csv"
    r = await deltafeed_replica("dukascopy", symbols=["EURUSD"], tape=tape, start_ms=START, history_ms=2 * HOUR)
    hour = START - 2 * HOUR
    path = dt.datetime.fromtimestamp(hour / 1000, dt.UTC)
    url = f"{r.url}/EURUSD/{path.year}/{path.month - 1:02d}/{path.day:02d}/{path.hour:02d}h_ticks.bi5"
    async with aiohttp.ClientSession() as s:
        for _ in range(2):  # the second answer comes from the cache: taped once
            async with s.get(url) as resp:
                assert resp.status == 200
                body = await resp.read()
    quotes = dukascopy_codec.decode_bi5(body, hour, "EURUSD")
    await r.stop()  # closes the tape (the fixture's stop after the test is then a no-op)
    assert header(tape) == QUOTE_TAPE_COLUMNS
    rows = read_quote_tape(tape)
    assert len(quotes) > 100
    assert [(x.symbol, x.time_ms, float(x.bid), float(x.ask)) for x in rows] == [
        ("EURUSD", q.time_ms, q.bid, q.ask) for q in quotes
    ]


async def test_options_check_and_lookup() -> None:
    with pytest.raises(BadInput, match="--symbols is empty"):
        ReplicaOptions(symbols=()).check()
    with pytest.raises(BadInput, match="--rate must be greater than 0"):
        ReplicaOptions(rate=0).check()
    with pytest.raises(BadInput, match="--speed must be greater than 0"):
        ReplicaOptions(speed=-1).check()
    with pytest.raises(BadInput, match="is not a TCP port"):
        ReplicaOptions(port=70000).check()
    assert replica_class("binance") is BinanceReplica
    with pytest.raises(LookupError, match="no replica for venue"):
        replica_class("nasdaq")
