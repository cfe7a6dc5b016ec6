"""oandapyV20 and v20 (OANDA's own Python client) against the OANDA replica, with only their addresses
changed: candles with OANDA's default alignment (17:00 America/New_York, weeks from Friday) and with
explicit ones, W and M, smoothed candles, the account-scoped candles path, pricing info and the pricing
stream. Every answer is compared with candles and prices worked out independently from the tape."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("oandapyV20", reason="oandapyV20 does not install here")
v20 = pytest.importorskip("v20", reason="v20 (OANDA's Python client) does not install here")
import oandapyV20  # noqa: E402
import oandapyV20.endpoints.instruments as instruments  # noqa: E402
import oandapyV20.endpoints.pricing as pricing  # noqa: E402
from oandapyV20.exceptions import StreamTerminated, V20Error  # noqa: E402

from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica  # noqa: E402
from reference import QuoteRow, oanda_candle_open, oanda_candles_from_tape, read_quote_tape  # noqa: E402

# Thursday 2026-03-05 15:00 UTC, the FX market open, with four days of history back to Sunday (before
# the week's 22:00 UTC open), far from a daylight-saving change.
START = int(dt.datetime(2026, 3, 5, 15, tzinfo=dt.UTC).timestamp() * 1000)
PAIRS = ("EUR_USD", "USD_JPY")


@pytest.fixture
async def make(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[OandaReplica]]]:
    made: list[OandaReplica] = []

    async def start(symbols: tuple[str, ...], history_ms: int) -> OandaReplica:
        # Each client opens a connection per stream and per session: the per-second connection limit
        # is widened so that the clients' bursts are not refused (the limit has its own tests).
        r = OandaReplica(
            symbols=symbols, rate=0.05, speed=200.0, history_ms=history_ms, start_ms=START,
            tape=tmp_path / "tape.csv", heartbeat_s=0.5, new_connections_per_s=100,
        )  # fmt: skip
        made.append(r)
        await r.start()
        return r

    try:
        yield start
    finally:
        for r in made:
            await r.stop()


@pytest.fixture
async def candles_replica(make: Callable[..., Awaitable[OandaReplica]]) -> OandaReplica:
    """EUR_USD with four days of history, back to Sunday before the week's 22:00 UTC open."""
    return await make(("EUR_USD",), 4 * 86_400_000)


@pytest.fixture
async def prices_replica(make: Callable[..., Awaitable[OandaReplica]]) -> OandaReplica:
    return await make(PAIRS, 3_600_000)


def _ms(text: str) -> int:
    """Epoch ms of OANDA's ``2026-03-05T15:02:26.368000000Z``."""
    return int(dt.datetime.fromisoformat(text[:23] + "+00:00").timestamp() * 1000)


def _tape(r: OandaReplica, symbol: str | None = None) -> list[QuoteRow]:
    assert r.options.tape is not None
    return [row for row in read_quote_tape(r.options.tape) if symbol is None or row.symbol == symbol]


#: (params, how the expected candles are opened): OANDA's defaults, and explicit alignments.
CASES: list[tuple[dict[str, Any], Callable[[int], int]]] = [
    ({"granularity": "D"}, partial(oanda_candle_open, granularity="D")),
    ({"granularity": "H4"}, partial(oanda_candle_open, granularity="H4")),
    ({"granularity": "W"}, partial(oanda_candle_open, granularity="W")),
    ({"granularity": "M"}, partial(oanda_candle_open, granularity="M")),
    (
        {"granularity": "D", "dailyAlignment": 0, "alignmentTimezone": "UTC"},
        partial(oanda_candle_open, granularity="D", hour=0, tz="UTC"),
    ),
    (
        {"granularity": "H8", "dailyAlignment": 8, "alignmentTimezone": "Europe/London"},
        partial(oanda_candle_open, granularity="H8", hour=8, tz="Europe/London"),
    ),
    (
        {"granularity": "W", "weeklyAlignment": "Monday", "dailyAlignment": 0, "alignmentTimezone": "UTC"},
        partial(oanda_candle_open, granularity="W", hour=0, tz="UTC", weekday=0),
    ),
    ({"granularity": "H1", "count": 100}, partial(oanda_candle_open, granularity="H1")),
]


def _check_candles(
    candles: list[dict[str, Any]], rows: list[QuoteRow], exact_open: Callable[[int], int], smooth: bool = False
) -> int:
    """Every candle equals the tape's: a complete one all quotes of its interval, the forming one (the
    last) the first ``volume`` of them, those released when it was asked for. With ``smooth`` each open
    is the previous candle's close. No candle of the tape in the range answered is missing. Returns
    how many candles were checked."""
    # Every granularity checked here has its boundaries on whole minutes: one answer per minute.
    by_minute = functools.cache(lambda minute: exact_open(minute * 60_000))

    def open_of(t: int) -> int:
        return int(by_minute(t // 60_000))

    ref = oanda_candles_from_tape(rows, open_of)
    assert candles and all(c["complete"] for c in candles[:-1])
    opens = sorted(ref)
    for c in candles:
        t = _ms(c["time"])
        x = ref[t]
        if not c["complete"]:
            head = [r for r in rows if open_of(r.time_ms) == t][: c["volume"]]
            x = oanda_candles_from_tape(head, open_of)[t]
        assert c["volume"] == x.volume, (c["time"], c["volume"], x.volume)
        i = opens.index(t)
        for side in ("mid", "bid", "ask"):
            o, h, lo, cl = x.ohlc[side]
            if smooth and i > 0:
                o = ref[opens[i - 1]].ohlc[side][3]
            got = c[side]
            assert [Decimal(got[k]) for k in "ohlc"] == [o, h, lo, cl], (c["time"], side)
    times = [_ms(c["time"]) for c in candles]
    assert times == [t for t in opens if times[0] <= t <= times[-1]]
    return len(candles)


# --- oandapyV20 --------------------------------------------------------------------------------------


def _oandapy(r: OandaReplica, monkeypatch: pytest.MonkeyPatch) -> oandapyV20.API:
    # oandapyV20 takes its hosts from a table of environments: the replica is one more entry.
    monkeypatch.setitem(oandapyV20.oandapyV20.TRADING_ENVIRONMENTS, "replica", {"api": r.url, "stream": r.url})
    return oandapyV20.API(access_token=DEV_TOKEN, environment="replica")


async def test_oandapyv20_candles_with_default_and_explicit_alignment(
    candles_replica: OandaReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = candles_replica
    api = _oandapy(replica, monkeypatch)

    def run() -> list[dict[str, Any]]:
        out = []
        for params, _ in CASES:
            ep = instruments.InstrumentsCandles("EUR_USD", params={**params, "price": "MBA"})
            out.append(api.request(ep))
        ep = instruments.InstrumentsCandles("EUR_USD", params={"granularity": "H1", "price": "MBA", "smooth": True})
        out.append(api.request(ep))
        with pytest.raises(V20Error) as e:
            api.request(instruments.InstrumentsCandles("EUR_USD", params={"granularity": "D", "dailyAlignment": 24}))
        assert e.value.code == 400 and "dailyAlignment" in e.value.msg
        return out

    answers = await asyncio.to_thread(run)
    rows = _tape(replica, "EUR_USD")
    for (params, open_of), body in zip(CASES, answers, strict=False):
        assert body["granularity"] == params["granularity"] and body["instrument"] == "EUR_USD"
        assert _check_candles(body["candles"], rows, open_of) >= 1, params
    # Default alignment: days from 17:00 New York (22:00 UTC in March), 4-hour candles from there.
    assert {_ms(c["time"]) % 86_400_000 for c in answers[0]["candles"]} == {22 * 3_600_000}
    assert {_ms(c["time"]) // 3_600_000 % 24 for c in answers[1]["candles"]} == {22, 2, 6, 10, 14, 18}
    assert [c["time"][:13] for c in answers[2]["candles"]] == ["2026-02-27T22"]  # Friday 17:00 New York
    assert [c["time"][:13] for c in answers[3]["candles"]] == ["2026-03-01T22"]  # the 1st, 17:00 New York
    assert _check_candles(answers[-1]["candles"], rows, CASES[-1][1], smooth=True) >= 80


async def test_oandapyv20_pricing_info_and_stream(
    prices_replica: OandaReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = prices_replica
    api = _oandapy(replica, monkeypatch)

    def run() -> tuple[dict[str, Any], list[dict[str, Any]]]:
        info = api.request(pricing.PricingInfo(DEFAULT_ACCOUNT, params={"instruments": ",".join(PAIRS)}))
        ep = pricing.PricingStream(DEFAULT_ACCOUNT, params={"instruments": ",".join(PAIRS)})
        msgs: list[dict[str, Any]] = []
        with pytest.raises(StreamTerminated):
            for m in api.request(ep):
                msgs.append(m)
                if sum(x["type"] == "PRICE" for x in msgs) >= 60 and any(x["type"] == "HEARTBEAT" for x in msgs):
                    ep.terminate("enough")
        return info, msgs

    info, msgs = await asyncio.to_thread(run)
    _check_prices(replica, info["prices"], _ms(info["time"]), snapshot=True)
    _check_prices(replica, [m for m in msgs if m["type"] == "PRICE"], None, snapshot=False)


def _check_prices(r: OandaReplica, prices: list[dict[str, Any]], now_ms: int | None, snapshot: bool) -> None:
    """Per instrument, the prices are consecutive tape rows (with ``now_ms``: the last row by then)."""
    assert {p["instrument"] for p in prices} == set(PAIRS)
    tape = _tape(r)
    for sym in PAIRS:
        rows = [(row.time_ms, row.bid, row.ask) for row in tape if row.symbol == sym]
        got = [(_ms(p["time"]), Decimal(p["bids"][0]["price"]), Decimal(p["asks"][0]["price"])) for p in prices]
        got = [g for g, p in zip(got, prices, strict=True) if p["instrument"] == sym]
        assert all(p["tradeable"] for p in prices)
        if now_ms is not None:
            assert got == [max((x for x in rows if x[0] <= now_ms), key=lambda x: x[0])]
            continue
        first = rows.index(got[0])
        assert got == rows[first : first + len(got)], sym
        assert len(got) >= 10 or snapshot


# --- v20 ----------------------------------------------------------------------------------------------


def _v20(r: OandaReplica) -> Any:
    u = urlsplit(r.url)
    # decimal_number_as_float=False: prices stay the strings sent, to be compared exactly.
    return v20.Context(u.hostname, u.port, ssl=False, token=DEV_TOKEN, decimal_number_as_float=False)


def _v20_candles(resp: Any) -> list[dict[str, Any]]:
    assert resp.status == 200, resp.raw_body
    return [
        {
            "time": c.time, "complete": c.complete, "volume": c.volume,
            **{side: {k: getattr(getattr(c, side), k) for k in "ohlc"} for side in ("mid", "bid", "ask")},
        }
        for c in resp.get("candles", 200)
    ]  # fmt: skip


async def test_v20_candles_with_default_and_explicit_alignment(candles_replica: OandaReplica) -> None:
    replica = candles_replica
    ctx = _v20(replica)

    def run() -> list[list[dict[str, Any]]]:
        out = []
        for i, (params, _) in enumerate(CASES):
            # Half through /v3/instruments/..., half through the account-scoped path.
            get = ctx.instrument.candles if i % 2 else ctx.pricing.candles
            out.append(_v20_candles(get("EUR_USD", price="MBA", **params)))
        out.append(_v20_candles(ctx.instrument.candles("EUR_USD", price="MBA", granularity="H1", smooth=True)))
        bad = ctx.instrument.candles("EUR_USD", granularity="W", weeklyAlignment="Fri")
        assert bad.status == 400 and "weeklyAlignment" in bad.body["errorMessage"]
        return out

    answers = await asyncio.to_thread(run)
    rows = _tape(replica, "EUR_USD")
    for (params, open_of), candles in zip(CASES, answers, strict=False):
        assert _check_candles(candles, rows, open_of) >= 1, params
    assert _check_candles(answers[-1], rows, CASES[-1][1], smooth=True) >= 80


async def test_v20_pricing_get_and_stream(prices_replica: OandaReplica) -> None:
    replica = prices_replica
    ctx = _v20(replica)

    def run() -> tuple[Any, list[tuple[str, Any]]]:
        info = ctx.pricing.get(DEFAULT_ACCOUNT, instruments=",".join(PAIRS))
        resp = ctx.pricing.stream(DEFAULT_ACCOUNT, instruments=",".join(PAIRS), snapshot=True)
        parts: list[tuple[str, Any]] = []
        for part in itertools.islice(resp.parts(), 400):
            parts.append(part)
            kinds = [k for k, _ in parts]
            if kinds.count("pricing.ClientPrice") >= 60 and "pricing.PricingHeartbeat" in kinds:
                break
        return info, parts

    info, parts = await asyncio.to_thread(run)
    assert info.status == 200

    def as_dict(p: Any) -> dict[str, Any]:
        return {
            "instrument": p.instrument, "time": p.time, "tradeable": p.tradeable,
            "bids": [{"price": b.price} for b in p.bids], "asks": [{"price": a.price} for a in p.asks],
        }  # fmt: skip

    _check_prices(replica, [as_dict(p) for p in info.get("prices", 200)], _ms(info.get("time", 200)), snapshot=True)
    assert any(k == "pricing.PricingHeartbeat" for k, _ in parts)
    _check_prices(replica, [as_dict(p) for k, p in parts if k == "pricing.ClientPrice"], None, snapshot=False)
