"""Dukascopy tick history: the bi5 codec, the replica over real sockets, and the history client.

Expected bytes are built here with ``struct`` and ``lzma`` from the format's definition
(PROTOCOLS.md section 8), never with the codec under test; expected quotes of the replica come
straight from the quote simulator it serves.
"""

from __future__ import annotations

import asyncio
import itertools
import lzma
import struct
import time
from typing import Any

import aiohttp
import msgspec
import pytest

from deltafeed.model import BadInput, Quote
from deltafeed.net.http import VenueError
from deltafeed.replicas.faults import FaultSchedule
from deltafeed.replicas.quotes import QuoteSim
from deltafeed.venues.dukascopy.codec import (
    Bi5Error,
    decode_bi5,
    dukascopy_symbol,
    encode_bi5,
    oanda_symbol,
    parse_tick_path,
    price_scale,
    tick_path,
)
from deltafeed.venues.dukascopy.replica import DukascopyReplica
from deltafeed.venues.dukascopy.rest import DukascopyHistory
from helpers import ms

H = 3_600_000
astuple = msgspec.structs.astuple


HOUR = ms("2026-01-05T10:00")  # a Monday


def bi5(records: list[tuple[int, int, int, float, float]]) -> bytes:
    """An hour file as Dukascopy serves it: LZMA "alone" over big-endian (ms, ask, bid, ask vol, bid vol)."""
    return lzma.compress(b"".join(struct.pack(">IIIff", *r) for r in records), format=lzma.FORMAT_ALONE)


# --- codec ------------------------------------------------------------------------------------------


def test_decode_a_file_built_from_the_format_definition() -> None:
    body = bi5([(0, 108135, 108123, 1.5, 0.75), (1, 108136, 108124, 0.12, 2.25), (3_599_999, 99999, 99990, 10.0, 0.01)])
    assert decode_bi5(body, HOUR, "EURUSD") == [
        Quote("EURUSD", HOUR, 1.08123, 1.08135, 750_000.0, 1_500_000.0),
        Quote("EURUSD", HOUR + 1, 1.08124, 1.08136, 2_250_000.0, 120_000.0),  # float32 0.12 rounded to units
        Quote("EURUSD", HOUR + 3_599_999, 0.9999, 0.99999, 10_000.0, 10_000_000.0),
    ]


def test_jpy_and_gold_are_at_three_decimals() -> None:
    body = bi5([(500, 157130, 157123, 1.0, 1.0)])
    assert decode_bi5(body, HOUR, "USD_JPY") == [Quote("USD_JPY", HOUR + 500, 157.123, 157.13, 1e6, 1e6)]
    assert decode_bi5(body, HOUR, "XAUUSD")[0].bid == 157.123
    assert (price_scale("EURUSD"), price_scale("EUR_JPY"), price_scale("XAU_USD")) == (100_000, 1_000, 1_000)
    with pytest.raises(BadInput, match="USA500IDXUSD"):
        price_scale("USA500IDXUSD")


def test_encode_writes_the_documented_records() -> None:
    quotes = [
        Quote("EUR_USD", HOUR + 7, 1.08123, 1.08135, 750_000.0, 1_500_000.0),
        Quote("EUR_USD", HOUR + 3_599_999, 1.1, 1.10002, 0.0, 250_000.0),
    ]
    raw = lzma.decompress(encode_bi5(quotes, HOUR, "EUR_USD"), format=lzma.FORMAT_ALONE)
    assert [struct.unpack(">IIIff", raw[i : i + 20]) for i in range(0, len(raw), 20)] == [
        (7, 108135, 108123, 1.5, 0.75),
        (3_599_999, 110002, 110000, 0.25, 0.0),
    ]
    jpy = lzma.decompress(encode_bi5([Quote("USDJPY", HOUR, 157.123, 157.13)], HOUR, "USDJPY"))
    assert struct.unpack(">III", jpy[:12]) == (0, 157130, 157123)


def test_round_trip_is_exact_at_the_pairs_scale() -> None:
    quotes = [
        Quote(
            "GBP_USD",
            HOUR + i * 997,
            round(1.25 + i * 1e-5, 5),
            round(1.25012 + i * 2e-5, 5),
            float(100_000 * (i % 7)),
            1_234_567.0,
        )
        for i in range(3000)
    ]
    assert decode_bi5(encode_bi5(quotes, HOUR, "GBPUSD"), HOUR, "GBP_USD") == quotes
    # A price finer than the pair's step is quantised to it.
    fine = [Quote("EURUSD", HOUR, 1.081234, 1.081236)]
    assert decode_bi5(encode_bi5(fine, HOUR, "EURUSD"), HOUR, "EURUSD")[0].bid == 1.08123


def test_empty_bodies_and_encode_limits() -> None:
    assert decode_bi5(b"", HOUR, "EURUSD") == []
    assert encode_bi5([], HOUR, "EURUSD") == b""
    assert decode_bi5(lzma.compress(b"", format=lzma.FORMAT_ALONE), HOUR, "EURUSD") == []
    with pytest.raises(ValueError, match="outside the hour"):
        encode_bi5([Quote("EURUSD", HOUR + H, 1.1, 1.2)], HOUR, "EURUSD")


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\x5d\x00\x00garbage that is not lzma at all", "not an LZMA stream"),
        (lzma.compress(b"\x00" * 21, format=lzma.FORMAT_ALONE), "not a whole number"),
        (bi5([(H, 1, 1, 0.0, 0.0)]), "past the hour"),
    ],
)
def test_a_corrupt_body_is_a_clear_error_naming_the_hour(body: bytes, why: str) -> None:
    with pytest.raises(Bi5Error, match=why) as exc:
        decode_bi5(body, HOUR, "EUR_USD")
    assert isinstance(exc.value, ValueError)
    assert "EURUSD 2026-01-05 10h" in str(exc.value)


def test_paths_have_a_zero_based_month() -> None:
    assert tick_path("EUR_USD", HOUR) == "EURUSD/2026/00/05/10h_ticks.bi5"
    assert tick_path("usdjpy", ms("2025-12-31T23:00")) == "USDJPY/2025/11/31/23h_ticks.bi5"
    assert parse_tick_path("EURUSD/2026/00/05/10h_ticks.bi5") == ("EURUSD", HOUR)
    assert parse_tick_path("/USDJPY/2025/11/31/23h_ticks.bi5") == ("USDJPY", ms("2025-12-31T23:00"))
    for bad in ("EURUSD/2026/12/05/10h_ticks.bi5", "EURUSD/2026/01/30/10h_ticks.bi5", "EURUSD/2026/00/05/10h.bi5"):
        with pytest.raises(ValueError):
            parse_tick_path(bad)
    with pytest.raises(ValueError):
        tick_path("EURUSD", HOUR + 1)


def test_symbol_names() -> None:
    assert dukascopy_symbol("EUR_USD") == dukascopy_symbol("eur/usd") == "EURUSD"
    assert oanda_symbol("EURUSD") == oanda_symbol("EUR_USD") == "EUR_USD"
    with pytest.raises(BadInput):
        oanda_symbol("USA500IDXUSD")


# --- replica and history client ---------------------------------------------------------------------

# Monday 2026-01-12 06:00 UTC; four days of history reach back over the weekend into Thursday.
START = ms("2026-01-12T06:00")
HISTORY = 4 * 86_400_000


def replica(**kw: Any) -> DukascopyReplica:
    """A replica of EURUSD and USDJPY at START, with an independent QuoteSim of the same seed as ``sim``."""
    kw.setdefault("symbols", ["EURUSD", "USDJPY"])
    kw.setdefault("start_ms", START)
    kw.setdefault("history_ms", HISTORY)
    kw.setdefault("rate", 0.5)
    r = DukascopyReplica(**kw)
    r.sim = QuoteSim([oanda_symbol(s) for s in kw["symbols"]], seed=kw.get("seed", 1), rate=kw["rate"])  # type: ignore[attr-defined]
    return r


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with http.get(url) as r:
        return r.status, await r.read()


async def test_replica_serves_hour_files_by_the_market_clock() -> None:
    async with replica(rate=0.5) as rep, aiohttp.ClientSession() as http:
        sim = rep.sim  # type: ignore[attr-defined]
        assert rep.url.endswith("/datafeed")
        for sym, oanda, hour in (("EURUSD", "EUR_USD", ms("2026-01-09T13:00")), ("USDJPY", "USD_JPY", START - H)):
            status, body = await fetch(http, f"{rep.url}/{tick_path(sym, hour)}")
            assert status == 200
            expected = sim.quotes(oanda, hour, hour + H)
            assert len(expected) > 1000
            assert decode_bi5(body, hour, oanda) == expected
        # Saturday: the market is closed; the file exists and is empty.
        status, body = await fetch(http, f"{rep.url}/{tick_path('EURUSD', ms('2026-01-10T12:00'))}")
        assert (status, body) == (200, b"")
        # The current hour is not over: not published. Nor the future.
        for hour in (START, START + 5 * H):
            assert (await fetch(http, f"{rep.url}/{tick_path('EURUSD', hour)}"))[0] == 404
        # Before the market opened: no quotes.
        assert await fetch(http, f"{rep.url}/{tick_path('EURUSD', START - HISTORY - H)}") == (200, b"")
        # The hour the market opened in holds quotes from the opening on only.
        opened = START - HISTORY + 30 * 60_000
        async with replica(rate=0.5, history_ms=START - opened) as rep2:
            status, body = await fetch(http, f"{rep2.url}/{tick_path('EURUSD', opened - 30 * 60_000)}")
            got = decode_bi5(body, opened - 30 * 60_000, "EUR_USD")
            assert got and got == sim.quotes("EUR_USD", opened, opened + 30 * 60_000)
        # Unknown symbols and paths.
        assert (await fetch(http, f"{rep.url}/{tick_path('GBPUSD', START - H)}"))[0] == 404
        assert (await fetch(http, f"{rep.url}/EURUSD/2026/12/01/00h_ticks.bi5"))[0] == 404
        assert (await fetch(http, rep.url.removesuffix("/datafeed") + "/other"))[0] == 404
        assert rep.stats["not_found"] == 5 and rep.stats["empty_hours"] == 2 and rep.stats["hours"] == 2


async def test_replica_clock_publishes_an_hour_once_it_is_over() -> None:
    # At 3600x an hour of market time passes every wall second.
    async with replica(speed=3600.0, start_ms=START - H // 2) as rep, aiohttp.ClientSession() as http:
        url = f"{rep.url}/{tick_path('EURUSD', START - H)}"
        assert (await fetch(http, url))[0] == 404
        await asyncio.sleep(0.6)  # 0.6 s wall = 36 min market: the hour is over
        status, body = await fetch(http, url)
        assert status == 200 and body


async def test_history_across_a_weekend_yields_every_quote_in_order() -> None:
    start, end = ms("2026-01-09T18:30"), ms("2026-01-12T05:15")  # Friday evening to Monday morning
    async with replica(rate=0.5) as rep, DukascopyHistory(rep.url, concurrency=4, requests_per_s=1000) as hist:
        sim = rep.sim  # type: ignore[attr-defined]
        calls: list[tuple[int, int]] = []
        batches = [b async for b in hist.quotes("EUR_USD", start, end, progress=lambda d, t: calls.append((d, t)))]
        got = [q for b in batches for q in b]
        expected = sim.quotes("EUR_USD", start, end)
        assert len(expected) > 10_000
        assert got == expected
        assert all(b for b in batches)
        assert all(a.time_ms <= b.time_ms for a, b in itertools.pairwise(got))
        total = 60  # 18:00 Friday to 05:00 Monday inclusive
        assert calls == [(i, total) for i in range(total + 1)]
        assert hist.empty_hours == 48 and hist.hours == total and not hist.missing
        assert rep.stats["requests"] == total
        # Asked in Dukascopy naming, the quotes carry that name.
        one = [q async for b in hist.quotes("USDJPY", START - H, START - H + 60_000) for q in b]
        expected = [Quote("USDJPY", *astuple(q)[1:]) for q in sim.quotes("USD_JPY", START - H, START - H + 60_000)]
        assert one and one == expected


async def test_history_skips_unpublished_hours_and_rejects_unknown_instruments() -> None:
    async with replica() as rep, DukascopyHistory(rep.url, requests_per_s=1000) as hist:
        # The last two hours of the range: one published, the current one not yet.
        got = [b async for b in hist.quotes("EURUSD", START - H, START + 60_000)]
        assert len(got) == 1 and hist.missing == [("EURUSD", START)]
        with pytest.raises(VenueError) as exc:
            _ = [b async for b in hist.quotes("AUDUSD", START - 5 * H, START)]
        assert exc.value.status == 404


async def test_history_rides_out_injected_faults() -> None:
    now = [0.0]
    sched = FaultSchedule({"http500": 1.0, "http429": 1.0, "slow": 1.0}, clock=lambda: now[0])
    async with replica(faults=sched, slow_s=0.2) as rep, DukascopyHistory(rep.url, requests_per_s=1000) as hist:
        now[0] = 1e6  # every kind is due once; the next events are 1e6 s away
        start, end = START - 4 * H, START
        t0 = time.monotonic()
        got = [q async for b in hist.quotes("EUR_USD", start, end) for q in b]
        assert got == rep.sim.quotes("EUR_USD", start, end)  # type: ignore[attr-defined]
        assert rep.faults_injected() == {"http500": 1, "http429": 1, "slow": 1}
        assert hist.http.server_errors == 1 and hist.http.throttled == 1
        assert time.monotonic() - t0 >= 1.0  # Retry-After: 1 was obeyed


def test_replica_refuses_faults_it_cannot_inject() -> None:
    with pytest.raises(BadInput, match="does not apply"):
        replica(faults="close=1")
