"""The forex quote simulator and the OANDA v20 replica over real loopback sockets.

Expectations come from the quote tape (CSV) and from the rules as PROTOCOLS.md sections 5 and 8 state
them: candles are rebuilt from the tape here with Decimal arithmetic, session times are written out
by hand in UTC, and stream lines are checked field by field against OANDA's format.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from conftest import StartReplica
from deltafeed.replicas.quotes import QUOTE_TAPE_HEADER, QuoteSim, QuoteTapeWriter
from deltafeed.replicas.sim import MarketClock
from deltafeed.venues.oanda.replica import DEV_TOKEN, OandaReplica
from helpers import by_symbol, ms, read_text_tape

S5, M1, M5, M15, H1 = 5_000, 60_000, 300_000, 900_000, 3_600_000
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
DECIMALS = {"EUR_USD": 5, "GBP_USD": 5, "USD_JPY": 3}


def rfc(t: int) -> str:
    return dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t % 1000:03d}000000Z"


def oanda_ms(text: str) -> int:
    assert TIME_RE.match(text), text
    return ms(text[:23])


WEDNESDAY = ms("2026-03-04T10:02:30.500")


class Mono:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ref_candles(rows: list[tuple[int, str, str]], g: int, now: int, decimals: int) -> list[dict[str, Any]]:
    """OANDA MBA candles of granularity ``g`` from tape rows: one per interval with quotes."""
    groups: dict[int, list[tuple[Decimal, Decimal, Decimal]]] = {}
    for t, b, a in rows:
        bid, ask = Decimal(b), Decimal(a)
        mid = (bid + ask) / 2  # exact: one decimal more than bid and ask
        groups.setdefault(t - t % g, []).append((mid, bid, ask))
    out = []
    for k in sorted(groups):
        quotes = groups[k]
        c: dict[str, Any] = {"complete": k + g <= now, "volume": len(quotes), "time": rfc(k)}
        for i, side in enumerate(("mid", "bid", "ask")):
            xs = [x[i] for x in quotes]
            places = decimals + 1 if side == "mid" else decimals
            c[side] = {n: f"{v:.{places}f}" for n, v in zip("ohlc", (xs[0], max(xs), min(xs), xs[-1]), strict=True)}
        out.append(c)
    return out


Make = Callable[..., Awaitable[OandaReplica]]


@pytest.fixture
def make(replicas: StartReplica) -> Make:
    """``await make(**kwargs)`` starts a replica (accepting 1000 new connections a second unless told)
    with a tape in tmp_path; all are stopped after the test."""

    async def make(**kwargs: Any) -> OandaReplica:
        kwargs.setdefault("new_connections_per_s", 1000)
        return await replicas(OandaReplica, **kwargs)

    return make


async def get(http: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    async with http.get(url, params={k: str(v) for k, v in params.items()}) as resp:
        return resp.status, json.loads(await resp.read())


async def candles(http: aiohttp.ClientSession, r: OandaReplica, instrument: str, **params: Any) -> tuple[int, Any]:
    return await get(http, f"{r.url}/v3/instruments/{instrument}/candles", **params)


async def read_stream(
    http: aiohttp.ClientSession,
    r: OandaReplica,
    instruments: str,
    stop: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
    **params: str,
) -> list[dict[str, Any]]:
    """Lines of a pricing stream until ``stop(lines)`` or ``timeout`` seconds."""
    lines: list[dict[str, Any]] = []
    url = f"{r.url}/v3/accounts/{r.account_id}/pricing/stream"
    async with http.get(url, params={"instruments": instruments, **params}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Transfer-Encoding"] == "chunked"

        async def pull() -> None:
            async for raw in resp.content:
                lines.append(json.loads(raw))
                if stop(lines):
                    return

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pull(), timeout)
    return lines


def price_rows(lines: list[dict[str, Any]], symbol: str) -> list[tuple[int, str, str]]:
    return [
        (oanda_ms(x["time"]), x["bids"][0]["price"], x["asks"][0]["price"])
        for x in lines
        if x["type"] == "PRICE" and x["instrument"] == symbol
    ]


# --- the quote simulator -----------------------------------------------------------------------------


def test_quotes_are_the_same_for_any_slicing_and_differ_by_seed() -> None:
    start = ms("2026-03-04T09:00")
    end = start + 2 * H1
    whole = QuoteSim(["EUR_USD", "USD_JPY"], seed=7, rate=3).batch("USD_JPY", start, end)
    sliced = QuoteSim(["USD_JPY"], seed=7, rate=3)  # another instance, other symbols: same quotes
    cuts = [start, *sorted(np.random.default_rng(1).integers(start, end, 60).tolist()), end]
    parts = [sliced.batch("USD_JPY", a, b) for a, b in itertools.pairwise(cuts)]
    assert np.array_equal(np.concatenate([p.times for p in parts]), whole.times)
    assert np.array_equal(np.concatenate([p.bid for p in parts]), whole.bid)
    assert np.array_equal(np.concatenate([p.ask for p in parts]), whole.ask)
    assert sliced.quotes("USD_JPY", start, end) == whole.quotes()
    other = QuoteSim(["USD_JPY"], seed=8, rate=3).batch("USD_JPY", start, end)
    assert not np.array_equal(other.bid[:100], whole.bid[:100])
    # start <= time < end
    q = sliced.quotes("USD_JPY", start, end)
    t = q[10].time_ms
    assert [x.time_ms for x in sliced.quotes("USD_JPY", t, t + 1)] == [x.time_ms for x in q if x.time_ms == t]
    assert all(x.time_ms < t for x in sliced.quotes("USD_JPY", start, t))


def test_an_hour_years_away_costs_only_that_hour() -> None:
    sim = QuoteSim(["EUR_USD"], seed=1, rate=2)
    t0 = time.perf_counter()
    b = sim.batch("EUR_USD", ms("2031-06-04T10:00"), ms("2031-06-04T11:00"))
    assert time.perf_counter() - t0 < 1.0
    assert sim.generated == len(b) > 6000  # no quote of any earlier hour was generated


def test_quotes_look_like_fx() -> None:
    sim = QuoteSim(["EUR_USD", "USD_JPY", "GBP_USD"], seed=3, rate=4)
    start, hours = ms("2026-03-03T00:00"), 24  # a Tuesday
    for sym, lo, hi in (("EUR_USD", 0.8, 1.4), ("USD_JPY", 100, 200), ("GBP_USD", 1.0, 1.6)):
        b = sim.batch(sym, start, start + hours * H1)
        scale = 10 ** DECIMALS[sym]
        assert abs(len(b) - 4 * hours * 3600) < 0.01 * 4 * hours * 3600  # rate: 4 quotes/s
        assert np.all(np.diff(b.times) >= 0)
        assert np.all(b.bid < b.ask)
        spread_pips = (b.ask - b.bid).mean() / 10
        assert 0.8 < spread_pips < 1.8, spread_pips
        quotes = b.quotes()
        assert all(round(x.bid * scale) / scale == x.bid and round(x.ask * scale) / scale == x.ask for x in quotes)
        assert lo < quotes[0].bid < hi
        mid = (b.bid + b.ask) / 2
        assert np.abs(np.diff(mid)).max() < 30  # continuous: < 3 pips between quotes, at hour ends too
        day_range = (mid.max() - mid.min()) / mid.mean()
        assert 0.001 < day_range < 0.05, day_range


@pytest.mark.parametrize(
    ("friday_close", "sunday_open"),
    [
        ("2026-01-09T22:00", "2026-01-11T22:00"),  # EST: 17:00 New York is 22:00 UTC
        ("2026-07-10T21:00", "2026-07-12T21:00"),  # EDT: 21:00 UTC
        ("2026-03-06T22:00", "2026-03-08T21:00"),  # the US switches to EDT that Sunday at 02:00
    ],
)
def test_no_quotes_while_the_fx_market_is_closed(friday_close: str, sunday_open: str) -> None:
    sim = QuoteSim(["EUR_USD"], seed=2, rate=2)
    close, reopen = ms(friday_close), ms(sunday_open)
    b = sim.batch("EUR_USD", close - H1, reopen + H1)
    t = b.times
    assert not np.any((t >= close) & (t < reopen))
    assert close - 5_000 < t[t < close].max() < close
    assert reopen <= t[t >= reopen].min() < reopen + 5_000
    # One hour of quotes on each side, at the full rate.
    assert abs(len(b) - 2 * 2 * 3600) < 300


def test_no_quotes_on_christmas() -> None:
    sim = QuoteSim(["EUR_USD"], seed=2, rate=2)
    # 2026-12-25 is a Friday: the week ends at Thursday midnight New York (05:00 UTC).
    # It reopens with the week, Sunday 27th at 17:00 New York (22:00 UTC).
    t = sim.batch("EUR_USD", ms("2026-12-24T00:00"), ms("2026-12-28T00:00")).times
    close, reopen = ms("2026-12-25T05:00"), ms("2026-12-27T22:00")
    assert not np.any((t >= close) & (t < reopen))
    assert close - 5_000 < t[t < close].max() and t[t >= reopen].min() < reopen + 5_000


def test_tape_rows_are_prices_as_served(tmp_path: Path) -> None:
    sim = QuoteSim(["EUR_USD", "USD_JPY"], seed=5, rate=2)
    start = ms("2026-03-04T10:00")
    path = tmp_path / "q.csv"
    tape = QuoteTapeWriter(path)
    batches = [sim.batch(s, start, start + M1) for s in sim.symbols]
    tape.write(batches)
    tape.close()
    text = path.read_text()
    assert text.startswith("symbol,time_ms,bid,ask\n")
    rows = read_text_tape(path, QUOTE_TAPE_HEADER)
    assert len(rows) == tape.rows == sum(map(len, batches))
    for b in batches:
        mine = [(t, bid, ask) for s, t, bid, ask in rows if s == b.symbol]
        d = DECIMALS[b.symbol]
        assert all(re.fullmatch(rf"\d+\.\d{{{d}}}", p) for r in mine for p in r[1:])
        assert [r[0] for r in mine] == b.times.tolist()
        assert [int(Decimal(r[1]) * 10**d) for r in mine] == b.bid.tolist()
        assert [r[1] for r in mine] == [b.spec.price(x) for x in b.bid.tolist()]


# --- the pricing stream ---------------------------------------------------------------------------------


def check_price_line(x: dict[str, Any]) -> None:
    """One PRICE line, field by field, in OANDA's format."""
    assert set(x) == {"type", "instrument", "time", "status", "tradeable", "bids", "asks", "closeoutBid", "closeoutAsk"}
    assert TIME_RE.match(x["time"])
    d = DECIMALS[x["instrument"]]
    for side in ("bids", "asks"):
        assert len(x[side]) == 2
        for level in x[side]:
            assert set(level) == {"price", "liquidity"}
            assert re.fullmatch(rf"\d+\.\d{{{d}}}", level["price"]) and type(level["liquidity"]) is int
    bid, bid2 = Decimal(x["bids"][0]["price"]), Decimal(x["bids"][1]["price"])
    ask, ask2 = Decimal(x["asks"][0]["price"]), Decimal(x["asks"][1]["price"])
    assert bid2 < bid < ask < ask2
    assert Decimal(x["closeoutBid"]) < bid and Decimal(x["closeoutAsk"]) > ask


async def test_stream_lines_are_oanda_prices_matching_the_tape_with_heartbeats(make: Make) -> None:
    r = await make(speed=20, rate=4, start_ms=WEDNESDAY, history_ms=60_000, heartbeat_s=0.25)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        lines = await read_stream(http, r, "EUR_USD,USD_JPY", lambda ls: False, 1.6, snapshot="false")
        snap = await read_stream(http, r, "USD_JPY,EUR_USD", lambda ls: len(ls) >= 2, 2.0)
    prices = [x for x in lines if x["type"] == "PRICE"]
    beats = [x for x in lines if x["type"] == "HEARTBEAT"]
    assert len(prices) > 100
    for x in prices:
        check_price_line(x)
        assert x["status"] == "tradeable" and x["tradeable"] is True
    assert [oanda_ms(x["time"]) for x in prices] == sorted(oanda_ms(x["time"]) for x in prices)  # merged in time order
    # Heartbeats every 0.25 s of wall time = 5 s of market time at speed 20.
    assert 4 <= len(beats) <= 7 and all(set(b) == {"type", "time"} and TIME_RE.match(b["time"]) for b in beats)
    gaps = np.diff([oanda_ms(b["time"]) for b in beats])
    assert np.all((gaps > 3_500) & (gaps < 6_500)), gaps
    tape = read_text_tape(Path(r.market.tape.path), QUOTE_TAPE_HEADER)  # type: ignore[union-attr]
    for sym in ("EUR_USD", "USD_JPY"):
        got, taped = price_rows(lines, sym), by_symbol(tape, sym)
        assert len(got) > 50
        i = taped.index(got[0])
        assert taped[i : i + len(got)] == got  # every quote, in order, none missing or invented
    # The snapshot: the last price of each instrument, in the order asked, then live prices.
    assert [x["instrument"] for x in snap[:2]] == ["USD_JPY", "EUR_USD"]
    for x in snap[:2]:
        check_price_line(x)
        assert (oanda_ms(x["time"]), x["bids"][0]["price"], x["asks"][0]["price"]) in by_symbol(tape, x["instrument"])


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_weekend_stops_prices_but_not_heartbeats(make: Make) -> None:
    # Friday 13:00 New York (EST) at 20,000x: Friday's close is 0.7 s of wall time away (room for a
    # loaded machine to connect first), Sunday's open (EDT by then: the US switched at 02:00 that
    # Sunday) 9.2 s.
    close, reopen = ms("2026-03-06T22:00"), ms("2026-03-08T21:00")
    r = await make(speed=20_000, rate=0.01, start_ms=ms("2026-03-06T18:00"), history_ms=H1, heartbeat_s=0.2)

    def reopened(ls: list[dict[str, Any]]) -> bool:
        return sum(1 for x in ls if x["type"] == "PRICE" and oanda_ms(x["time"]) >= reopen) >= 10

    async with aiohttp.ClientSession(headers=r.headers) as http:
        lines = await read_stream(http, r, "EUR_USD,GBP_USD", reopened, 20.0, snapshot="false")
    prices = [oanda_ms(x["time"]) for x in lines if x["type"] == "PRICE"]
    beats = [oanda_ms(x["time"]) for x in lines if x["type"] == "HEARTBEAT"]
    assert any(t < close for t in prices), "prices before Friday's close"
    assert not any(close <= t < reopen for t in prices), "a price while the market was closed"
    assert sum(1 for t in prices if t >= reopen) >= 10, "prices again from Sunday 17:00 New York"
    assert min(t for t in prices if t >= reopen) < reopen + 30 * M1
    assert sum(1 for t in beats if close <= t < reopen) >= 5, "heartbeats go on through the weekend"


async def test_closed_market_snapshot_is_non_tradeable(make: Make) -> None:
    r = await make(speed=1, rate=1, start_ms=ms("2026-03-07T12:00"), history_ms=24 * H1, heartbeat_s=0.1)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        lines = await read_stream(http, r, "EUR_USD", lambda ls: False, 0.6)
    assert lines[0]["type"] == "PRICE" and lines[0]["status"] == "non-tradeable" and lines[0]["tradeable"] is False
    assert oanda_ms(lines[0]["time"]) < ms("2026-03-06T22:00")  # Friday's last price
    assert [x["type"] for x in lines[1:]] == ["HEARTBEAT"] * (len(lines) - 1) and len(lines) >= 4


# --- candles --------------------------------------------------------------------------------------------


async def test_candles_equal_candles_built_from_the_tape(make: Make) -> None:
    mono = Mono()
    clock = MarketClock(1.0, WEDNESDAY, monotonic=mono)
    r = await make(clock=clock, rate=1, history_ms=3 * H1)
    now = WEDNESDAY
    async with aiohttp.ClientSession(headers=r.headers) as http:
        tape = read_text_tape(Path(r.market.tape.path), QUOTE_TAPE_HEADER)  # type: ignore[union-attr]
        for sym in ("EUR_USD", "USD_JPY"):
            rows = by_symbol(tape, sym)
            for gran, g in (("S5", S5), ("M1", M1), ("M5", M5), ("H1", H1), ("D", 86_400_000)):
                # Aligned to 00:00 UTC, as the reference is (OANDA's default, 17:00 New York, is below).
                status, body = await candles(
                    http, r, sym, price="MBA", granularity=gran, count=5000, dailyAlignment=0, alignmentTimezone="UTC"
                )
                assert status == 200, body
                assert body["instrument"] == sym and body["granularity"] == gran
                assert body["candles"] == ref_candles(rows, g, now, DECIMALS[sym]), gran
                if g >= M1:  # the S5 candle of the last 0.5 s may have no quote
                    assert body["candles"][-1]["complete"] is False
                assert gran == "D" or body["candles"][-2]["complete"] is True
        rows = by_symbol(tape, "EUR_USD")
        ref = ref_candles(rows, S5, now, 5)
        # Intervals without quotes have no candle (at 1 quote/s about 1 in 150 S5 intervals is empty).
        times = {oanda_ms(c["time"]) for c in ref}
        first = oanda_ms(ref[0]["time"])
        assert any(t not in times for t in range(first, now - now % S5, S5))
        # Price letters pick the objects; M alone is the default.
        _, body = await candles(http, r, "EUR_USD", granularity="S5", count=3)
        assert [set(c) for c in body["candles"]] == [{"complete", "volume", "time", "mid"}] * 3
        _, body = await candles(http, r, "EUR_USD", count=2, price="BA")
        assert (
            body["granularity"] == "S5"
            and {"bid", "ask"} <= set(body["candles"][0])
            and "mid" not in body["candles"][0]
        )
        # from (inclusive: the candle covering it is included), to (exclusive), count, includeFirst.
        ref1 = ref_candles(rows, M1, now, 5)
        opens = [oanda_ms(c["time"]) for c in ref1]
        a, b = opens[20], opens[50]
        _, body = await candles(
            http, r, "EUR_USD", price="MBA", granularity="M1", **{"from": rfc(a + 1234), "to": rfc(b)}
        )
        assert body["candles"] == ref1[20:50]
        _, body = await candles(
            http,
            r,
            "EUR_USD",
            price="MBA",
            granularity="M1",
            includeFirst="false",
            **{"from": f"{a // 1000}.123", "to": f"{b // 1000}"},
        )
        assert body["candles"] == ref1[21:50]
        _, body = await candles(http, r, "EUR_USD", price="MBA", granularity="M1", count=7, **{"from": rfc(a)})
        assert body["candles"] == ref1[20:27]
        _, body = await candles(http, r, "EUR_USD", price="MBA", granularity="M1", count=7, to=rfc(b))
        assert body["candles"] == ref1[43:50]
        _, body = await candles(http, r, "EUR_USD", price="MBA", granularity="M1")
        assert body["candles"] == ref1[-500:] and len(ref1) < 500
        # The clock moves on 65 s: the forming M1 candle is complete now, with the same quotes.
        mono.t += 65
        now += 65_000
        _, body = await candles(http, r, "EUR_USD", price="MBA", granularity="M1", **{"from": ref1[-1]["time"]})
        rows = by_symbol(read_text_tape(Path(r.market.tape.path), QUOTE_TAPE_HEADER), "EUR_USD")  # type: ignore[union-attr]
        ref2 = ref_candles(rows, M1, now, 5)
        assert body["candles"] == ref2[len(ref1) - 1 :] and len(body["candles"]) == 2
        assert body["candles"][0]["complete"] is True and body["candles"][1]["complete"] is False
        # Exactly at a candle's end the candle is complete.
        boundary = ms("2026-03-04T10:05:00")
        mono.t += (boundary - now) / 1000
        _, body = await candles(http, r, "EUR_USD", granularity="M1", count=1, to=rfc(boundary))
        assert body["candles"][0]["time"] == rfc(boundary - M1) and body["candles"][0]["complete"] is True
        # The Date header is the market clock's (whole seconds), not the wall clock's.
        async with http.get(f"{r.url}/v3/accounts") as resp:
            assert resp.headers["Date"] == "Wed, 04 Mar 2026 10:05:00 GMT"
        # Unix times both ways.
        params = {"count": "1", "granularity": "M1", "to": f"{boundary // 1000}"}
        async with http.get(
            f"{r.url}/v3/instruments/EUR_USD/candles", params=params, headers={"Accept-Datetime-Format": "UNIX"}
        ) as resp:
            c = (await resp.json())["candles"][0]
        assert c["time"] == f"{(boundary - M1) // 1000}.000000000"


async def test_no_candles_over_the_weekend(make: Make) -> None:
    close, reopen = ms("2026-03-06T22:00"), ms("2026-03-08T21:00")
    now = ms("2026-03-09T01:00:00.001")  # Monday
    r = await make(clock=MarketClock(1.0, now, monotonic=Mono()), rate=0.2, history_ms=4 * 24 * H1, symbols=["GBP_USD"])
    rows = by_symbol(read_text_tape(Path(r.market.tape.path), QUOTE_TAPE_HEADER), "GBP_USD")  # type: ignore[union-attr]
    async with aiohttp.ClientSession(headers=r.headers) as http:
        for gran, g in (("M15", M15), ("H1", H1)):
            _, body = await candles(http, r, "GBP_USD", price="MBA", granularity=gran, count=5000)
            assert body["candles"] == ref_candles(rows, g, now, 5)
            opens = [oanda_ms(c["time"]) for c in body["candles"]]
            assert not [t for t in opens if close <= t < reopen]
            assert any(t < close for t in opens) and any(t >= reopen for t in opens)
        # The hour of the Sunday open has a candle; the one before it has none.
        _, body = await candles(
            http, r, "GBP_USD", granularity="H1", **{"from": rfc(reopen - H1), "to": rfc(reopen + H1)}
        )
        assert [c["time"] for c in body["candles"]] == [rfc(reopen)]


# --- errors and limits ---------------------------------------------------------------------------------


async def test_every_request_needs_the_token(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1, token="s3cret")
    paths = [
        "/v3/instruments/EUR_USD/candles",
        f"/v3/accounts/{r.account_id}/instruments",
        f"/v3/accounts/{r.account_id}/pricing/stream?instruments=EUR_USD",
        "/v3/accounts",
    ]
    async with aiohttp.ClientSession() as http:
        for path in paths:
            for headers in ({}, {"Authorization": f"Bearer {DEV_TOKEN}"}, {"Authorization": "s3cret"}):
                async with http.get(r.url + path, headers=headers) as resp:
                    assert resp.status == 401, path
                    assert (await resp.json()) == {"errorMessage": "Insufficient authorization to perform request."}
        for path in paths[:2] + paths[3:]:
            async with http.get(r.url + path, headers={"Authorization": "Bearer s3cret"}) as resp:
                assert resp.status == 200, path
    assert r.stats["401"] == 12


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"count": 5001}, "Maximum value for 'count' exceeded"),
        ({"count": 0}, "'count'"),
        ({"count": "ten"}, "'count'"),
        ({"count": 10, "from": "2026-03-04T09:00:00Z", "to": "2026-03-04T10:00:00Z"}, "'count'"),
        ({"granularity": "S5", "from": "2026-03-04T00:00:00Z", "to": "2026-03-04T10:00:00Z"}, "'count' exceeded"),
        ({"granularity": "W1"}, "'granularity'"),
        ({"granularity": "M3"}, "'granularity'"),
        ({"price": "MX"}, "'price'"),
        ({"price": "MM"}, "'price'"),
        ({"from": "yesterday"}, "'from'"),
        ({"from": "2026-03-04T11:00:00Z"}, "future"),
        ({"to": "2026-03-04T11:00:00Z"}, "future"),
        ({"from": "2026-03-04T10:00:00Z", "to": "2026-03-04T09:00:00Z"}, "'to'"),
        ({"dailyAlignment": 24}, "'dailyAlignment'"),
        ({"dailyAlignment": "-1"}, "'dailyAlignment'"),
        ({"alignmentTimezone": "Mars/Olympus_Mons"}, "'alignmentTimezone'"),
        ({"alignmentTimezone": "../../etc/passwd"}, "'alignmentTimezone'"),
        ({"weeklyAlignment": "Fri"}, "'weeklyAlignment'"),
        ({"smooth": "yes"}, "'smooth'"),
    ],
)
async def test_bad_candle_requests_get_400(make: Make, params: dict[str, Any], needle: str) -> None:
    r = await make(clock=MarketClock(1.0, WEDNESDAY, monotonic=Mono()), history_ms=H1, tape=None)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        status, body = await candles(http, r, "EUR_USD", **params)
        assert status == 400 and needle in body["errorMessage"], body
        status, body = await candles(http, r, "EUR_USD", count=5000, granularity="S5")
        assert status == 200 and len(body["candles"]) > 500


async def test_alignment_follows_new_york_daylight_saving(make: Make) -> None:
    # Across the US switch to summer time (Sunday 2026-03-08): D candles open at 17:00 New York, 22:00
    # UTC before and 21:00 after; weeks open on Friday 17:00 New York (EST). History from Friday noon.
    # The market clock stands still (a hand-moved monotonic clock), so two requests see the same candles.
    clock = MarketClock(1.0, ms("2026-03-10T12:00"), monotonic=Mono())
    r = await make(symbols=["EUR_USD"], clock=clock, history_ms=4 * 86_400_000, tape=None)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        _, body = await candles(http, r, "EUR_USD", granularity="D")
        assert [c["time"][:16] for c in body["candles"]] == [
            "2026-03-05T22:00", "2026-03-08T21:00", "2026-03-09T21:00"
        ]  # fmt: skip
        _, body = await candles(http, r, "EUR_USD", granularity="W")
        assert [c["time"][:16] for c in body["candles"]] == ["2026-02-27T22:00", "2026-03-06T22:00"]
        _, body = await candles(http, r, "EUR_USD", granularity="H12", dailyAlignment=5, alignmentTimezone="Asia/Tokyo")
        assert {c["time"][11:16] for c in body["candles"]} == {"08:00", "20:00"}
        # The account-scoped path serves the same candles.
        _, same = await get(
            http, f"{r.url}/v3/accounts/{r.account_id}/instruments/EUR_USD/candles",
            granularity="H12", dailyAlignment=5, alignmentTimezone="Asia/Tokyo",
        )  # fmt: skip
        assert same == body


async def test_pricing_info_and_error_shapes(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1, tape=None)
    url = f"{r.url}/v3/accounts/{r.account_id}/pricing"
    async with aiohttp.ClientSession(headers=r.headers) as http:
        status, body = await get(http, url, instruments="EUR_USD,USD_JPY")
        assert status == 200 and oanda_ms(body["time"]) >= WEDNESDAY
        last = {p["instrument"]: p for p in body["prices"]}
        assert set(last) == {"EUR_USD", "USD_JPY"}
        for sym, p in last.items():
            t, b, a = r.market.last_quote(sym)  # type: ignore[misc]
            assert oanda_ms(p["time"]) == t and p["tradeable"] is True
            assert Decimal(p["bids"][0]["price"]) == Decimal(b) / 10 ** DECIMALS[sym]
            assert Decimal(p["asks"][0]["price"]) == Decimal(a) / 10 ** DECIMALS[sym]
        # since: only instruments priced after it.
        newest = max(last.values(), key=lambda p: p["time"])
        status, body = await get(http, url, instruments="EUR_USD,USD_JPY", since=newest["time"])
        assert status == 200 and body["prices"] == []
        for params in ({}, {"instruments": "EUR_XXX"}, {"instruments": "EUR_USD", "since": "soon"}):
            status, body = await get(http, url, **params)
            assert status == 400 and "errorMessage" in body, params
        # Unserved paths and methods answer in OANDA's error shape.
        for path in ("/v3/instruments/EUR_USD/orderBook", f"/v3/accounts/{r.account_id}/candles/latest", "/v2/x"):
            status, body = await get(http, r.url + path)
            assert status == 404 and set(body) == {"errorMessage"}, path
        async with http.post(f"{r.url}/v3/accounts/{r.account_id}/orders", json={}) as resp:
            assert resp.status == 405 and set(await resp.json()) == {"errorMessage"}


async def test_unknown_instruments_get_400(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        status, body = await candles(http, r, "EUR_XXX")
        assert status == 400 and "'instrument'" in body["errorMessage"]
        for q in ("EUR_USD,XAU_XXX", "", "eur_usd"):
            status, body = await get(http, f"{r.url}/v3/accounts/{r.account_id}/pricing/stream", instruments=q)
            assert status == 400 and "'instruments'" in body["errorMessage"], q
        status, body = await get(http, f"{r.url}/v3/accounts/{r.account_id}/instruments")
        assert [i["name"] for i in body["instruments"]] == ["EUR_USD", "USD_JPY", "GBP_USD"]
        assert [(i["pipLocation"], i["displayPrecision"]) for i in body["instruments"]] == [(-4, 5), (-2, 3), (-4, 5)]


async def test_more_than_120_requests_per_second_get_429(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1, tape=None)
    url = f"{r.url}/v3/accounts/{r.account_id}/instruments"
    async with aiohttp.ClientSession(headers=r.headers, connector=aiohttp.TCPConnector(limit=1)) as http:
        t0 = time.monotonic()
        statuses = []
        for _ in range(125):
            async with http.get(url) as resp:
                statuses.append(resp.status)
                body = await resp.json()
        assert time.monotonic() - t0 < 0.9, "too slow to test a per-second limit"
        assert statuses == [200] * 120 + [429] * 5
        assert "errorMessage" in body
        await asyncio.sleep(1.0)
        async with http.get(url) as resp:
            assert resp.status == 200  # the window slid on
    assert r.stats["429"] == 5


async def test_the_21st_stream_is_rejected(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1, heartbeat_s=0.1)
    url = f"{r.url}/v3/accounts/{r.account_id}/pricing/stream?instruments=EUR_USD"
    async with aiohttp.ClientSession(headers=r.headers) as http:
        streams = [await http.get(url) for _ in range(20)]
        assert [s.status for s in streams] == [200] * 20
        async with http.get(url) as resp:
            assert resp.status == 429 and "streams" in (await resp.json())["errorMessage"]
        for s in streams[1:]:  # all 20 are alive
            assert json.loads(await asyncio.wait_for(s.content.readline(), 2.0))["type"] in ("PRICE", "HEARTBEAT")
        streams[0].close()  # one goes away: a new one is accepted once the replica notices
        for _ in range(50):
            await asyncio.sleep(0.02)
            if r.stats["open_streams"] == 19:
                break
        async with http.get(url) as resp:
            assert resp.status == 200
        for s in streams[1:]:
            s.close()
    assert r.stats["rejected_streams"] == 1 and r.stats["streams"] == 21


async def test_at_most_two_new_connections_per_second(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1, new_connections_per_s=2)
    url = f"{r.url}/v3/accounts"
    statuses = []
    for _ in range(3):
        async with aiohttp.ClientSession(headers=r.headers) as http, http.get(url) as resp:  # a new connection each
            statuses.append((resp.status, resp.headers.get("Connection", "").lower()))
    assert statuses == [(200, ""), (200, ""), (429, "close")]
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        for _ in range(5):  # one new connection, many requests: fine
            async with http.get(url) as resp:
                assert resp.status == 200
    assert r.stats["rejected_connections"] == 1 and r.stats["connections"] == 3


async def test_faults_hit_rest_and_streams(make: Make) -> None:
    # Rates of 600,000 a minute: each kind is due at once, and again every 0.1 ms.
    r = await make(
        start_ms=WEDNESDAY, history_ms=M1, speed=30, rate=4, heartbeat_s=0.1, faults="http500=600000,close=600000"
    )
    async with aiohttp.ClientSession(headers=r.headers) as http:
        status, body = await candles(http, r, "EUR_USD")
        assert status == 500 and "errorMessage" in body
        url = f"{r.url}/v3/accounts/{r.account_id}/pricing/stream?instruments=EUR_USD&snapshot=false"
        async with http.get(url) as resp:
            assert resp.status == 200
            lines = await asyncio.wait_for(resp.content.read(), 3.0)  # ends: the close fault
        assert lines.endswith(b"\n") and all(
            json.loads(x)["type"] in ("PRICE", "HEARTBEAT") for x in lines.splitlines()
        )
    assert r.faults_injected()["close"] >= 1 and r.faults_injected()["http500"] >= 1


async def test_stream_faults_reset_garbage_and_stall(make: Make) -> None:
    kw: dict[str, Any] = {"start_ms": WEDNESDAY, "history_ms": M1, "speed": 30, "rate": 4, "heartbeat_s": 0.1}
    path = "/v3/accounts/1/pricing/stream?instruments=EUR_USD,GBP_USD&snapshot=false"
    r = await make(faults="reset=600000", **kw)
    async with aiohttp.ClientSession(headers=r.headers) as http, http.get(r.url + path) as resp:
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(resp.content.read(), 3.0)
    r = await make(faults="garbage=600000", **kw)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        raw: list[bytes] = []
        async with http.get(r.url + path) as resp:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for line in resp.content:
                        raw.append(line)
    good: list[dict[str, Any]] = []
    for x in raw:
        with contextlib.suppress(ValueError):
            good.append(json.loads(x))
    assert 0 < len(raw) - len(good) < len(good)  # a bad line in every chunk, among good ones
    assert all(g["type"] in ("PRICE", "HEARTBEAT") for g in good)
    r = await make(faults="stall=600000", **kw)
    async with aiohttp.ClientSession(headers=r.headers) as http:
        async with http.get(r.url + path) as resp:
            with pytest.raises(TimeoutError):  # not even heartbeats
                await asyncio.wait_for(resp.content.readline(), 0.5)
        for _ in range(50):  # the client hung up: the replica lets the stalled stream go
            await asyncio.sleep(0.02)
            if r.stats["open_streams"] == 0:
                break
    assert r.stats["open_streams"] == 0 and r.faults_injected()["stall"] == 1


# --- CLI ----------------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "deltafeed", "replica", "oanda"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rate", "0"], "--rate"),
        (["--start", "Friday"], "--start"),
        (["--symbols", "EURUSD"], "EUR_USD"),
        (["--faults", "shutdown=1"], "shutdown"),
        (["--history", "3x"], "duration"),
        (["--speed", "fast"], "invalid float"),
    ],
)
def test_cli_bad_usage_is_one_line_and_exit_2(args: list[str], needle: str) -> None:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_cli_serves_until_sigterm_and_prints_a_summary(tmp_path: Path) -> None:
    tape = tmp_path / "t.csv"
    proc = subprocess.Popen(
        [*CLI, "--start", "2026-03-04T10:00:00Z", "--history", "10m", "--speed", "10", "--tape", str(tape)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        first = proc.stdout.readline().strip()
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = first.removeprefix("listening on ")

        async def fetch() -> tuple[int, Any]:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {DEV_TOKEN}"}) as http:
                return await get(http, f"{url}/v3/instruments/USD_JPY/candles", granularity="M1", count=3)

        status, body = asyncio.run(fetch())
        assert status == 200 and len(body["candles"]) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "oanda replica stopped: quotes=" in out and "requests=1 " in out
    assert read_text_tape(tape, QUOTE_TAPE_HEADER)
