"""lightstreamer-client-lib 2.x (Lightstreamer's official Python client, TLCP-2.5.0) against the IG replica:
WS-STREAMING, HTTP-STREAMING, WS-POLLING and HTTP-POLLING, and the recovery of a session whose connection was reset
(``LS_recovery_from`` over HTTP, then a new bind). What the client received is compared with the tape:
MARKET quotes with the UTC day's mid open/high/low/change, and CHART:SECOND candles."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ls = pytest.importorskip("lightstreamer.client", reason="lightstreamer-client-lib does not install here")

from deltafeed.venues.ig.replica import IGReplica  # noqa: E402
from reference import QuoteRow, read_quote_tape  # noqa: E402

EPIC = "CS.D.EURUSD.CFD.IP"
# Wednesday 2026-03-04 00:20 UTC: the FX market open, and the tape holds the UTC day from its first quote.
START = int(dt.datetime(2026, 3, 4, 0, 20, tzinfo=dt.UTC).timestamp() * 1000)
MARKET = ["BID", "OFFER", "UPDATE_TIME", "MID_OPEN", "HIGH", "LOW", "CHANGE", "CHANGE_PCT", "MARKET_STATE"]
CHART = ["UTM", "BID_OPEN", "BID_HIGH", "BID_LOW", "BID_CLOSE", "OFR_OPEN", "OFR_HIGH", "OFR_LOW", "OFR_CLOSE",
         "CONS_TICK_COUNT", "CONS_END"]  # fmt: skip


async def _replica(tmp_path: Path, **kw: Any) -> IGReplica:
    r = IGReplica(epics=[EPIC], seed=5, rate=4.0, speed=5.0, history_ms=20 * 60_000, start_ms=START,
                  tape=tmp_path / "tape.csv", **kw)  # fmt: skip
    await r.start()
    return r


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[IGReplica]:
    r = await _replica(tmp_path)
    try:
        yield r
    finally:
        await r.stop()


async def _password(r: IGReplica) -> str:
    """IG's streaming password from a REST login: ``CST-<cst>|XST-<x-security-token>``."""
    async with aiohttp.ClientSession() as http:
        resp = await http.post(
            r.url + "/session", json={"identifier": "me", "password": "pw"}, headers={"X-IG-API-KEY": "key"}
        )
        assert resp.status == 200
        return f"CST-{resp.headers['CST']}|XST-{resp.headers['X-SECURITY-TOKEN']}"


class _Listener(ls.SubscriptionListener):  # type: ignore[misc]
    def __init__(self, fields: list[str]) -> None:
        self.fields = fields
        self.updates: list[dict[str, str | None]] = []
        self.errors: list[tuple[int, str]] = []

    def onItemUpdate(self, update: Any) -> None:
        self.updates.append({f: update.getValue(f) for f in self.fields})

    def onSubscriptionError(self, code: int, message: str) -> None:
        self.errors.append((code, message))


class _Status(ls.ClientListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.seen: list[str] = []

    def onStatusChange(self, status: str) -> None:
        self.seen.append(status)


def _run(
    r: IGReplica, password: str, transport: str, seconds: float, fast_stall: bool = False, recovered: bool = False
) -> Any:
    """Connect the official client with ``transport`` forced, subscribe MARKET and CHART:SECOND, listen
    for ``seconds`` (with ``recovered``, and then until the client says it is connected again after
    its last recovery, for at most 10 s more: a loaded machine can leave one under way at the end)."""
    client = ls.LightstreamerClient(r.url, None)  # the lightstreamerEndpoint IG's login hands out
    client.connectionDetails.setUser(r.account_id)
    client.connectionDetails.setPassword(password)
    client.connectionOptions.setForcedTransport(transport)
    if fast_stall:  # notice a dead connection in a second or two rather than seven (the defaults)
        client.connectionOptions.setStalledTimeout(1000)
        # An attempt (a recovery's too) may take 3 s: with 1 s, a loaded machine's replica answered
        # after the client had given each recovery up (CI, 2 of 3 runs: recovering for 10 s and more).
        client.connectionOptions.setReconnectTimeout(3000)
    status = _Status()
    client.addListener(status)
    market, chart = _Listener(MARKET), _Listener(CHART)
    for mode, item, fields, listener in (
        ("MERGE", f"MARKET:{EPIC}", MARKET, market),
        ("MERGE", f"CHART:{EPIC}:SECOND", CHART, chart),
    ):
        sub = ls.Subscription(mode, [item], fields)
        sub.setRequestedSnapshot("yes")
        sub.addListener(listener)
        client.subscribe(sub)
    client.connect()
    time.sleep(seconds)
    deadline = time.monotonic() + 10.0
    while recovered and status.seen[-1:] != [f"CONNECTED:{transport}"] and time.monotonic() < deadline:
        time.sleep(0.05)
    client.disconnect()
    done = threading.Event()
    threading.Timer(0.3, done.set).start()
    done.wait()
    return status.seen, market, chart


def _tape(tmp_path: Path) -> list[QuoteRow]:
    return [q for q in read_quote_tape(tmp_path / "tape.csv") if q.symbol == EPIC]


def _check_market(rows: list[QuoteRow], got: list[dict[str, str | None]]) -> None:
    """The updates are consecutive tape quotes (none lost, none repeated), each with the UTC day's mid
    open, high, low and change up to that quote."""
    assert len(got) > 30, len(got)
    key = [(str(q.bid), str(q.ask)) for q in rows]
    seq = [(u["BID"], u["OFFER"]) for u in got]
    starts = [k for k in range(len(key) - len(seq) + 1) if key[k] == seq[0] and key[k : k + len(seq)] == seq]
    assert starts, "the updates are not a run of consecutive tape quotes"
    k = starts[0]
    day = START - START % 86_400_000
    mids = [((q.bid + q.ask) / 2, q.time_ms) for q in rows[: k + len(seq)]]
    first = next(i for i, (_, t) in enumerate(mids) if t >= day)
    for j, u in enumerate(got):
        upto = [m for m, _ in mids[first : k + j + 1]]
        o, last = upto[0], upto[-1]
        assert Decimal(str(u["MID_OPEN"])) == o and Decimal(str(u["CHANGE"])) == last - o, j
        assert Decimal(str(u["HIGH"])) == max(upto) and Decimal(str(u["LOW"])) == min(upto), j
        assert u["MARKET_STATE"] == "TRADEABLE"
        t = rows[k + j].time_ms
        assert u["UPDATE_TIME"] == dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%H:%M:%S")  # GMT in March


def _check_chart(rows: list[QuoteRow], got: list[dict[str, str | None]]) -> None:
    """Every second the chart finished (CONS_END 1) is the tape's second: bid and offer OHLC, quote count."""
    by_second: dict[int, list[QuoteRow]] = {}
    for q in rows:
        by_second.setdefault(q.time_ms - q.time_ms % 1000, []).append(q)
    final = [u for u in got if u["CONS_END"] == "1"]
    assert len(final) >= 5, len(final)
    for u in final:
        qs = by_second[int(str(u["UTM"]))]
        for side, col in (("BID", "bid"), ("OFR", "ask")):
            px = [getattr(q, col) for q in qs]
            want = (px[0], max(px), min(px), px[-1])
            have = tuple(Decimal(str(u[f"{side}_{x}"])) for x in ("OPEN", "HIGH", "LOW", "CLOSE"))
            assert have == want, (u["UTM"], side)
        assert u["CONS_TICK_COUNT"] == str(len(qs))


@pytest.mark.parametrize("transport", ["WS-STREAMING", "HTTP-STREAMING", "WS-POLLING", "HTTP-POLLING"])
async def test_streams_equal_the_tape(replica: IGReplica, tmp_path: Path, transport: str) -> None:
    password = await _password(replica)
    seen, market, chart = await asyncio.to_thread(_run, replica, password, transport, 4.0)
    assert f"CONNECTED:{transport}" in seen, seen
    assert not market.errors and not chart.errors
    assert replica.stats["connections_TLCP-2.5.0"] >= 1 and replica.stats["connections_TLCP-2.4.0"] == 0
    rows = _tape(tmp_path)
    _check_market(rows, market.updates)
    _check_chart(rows, chart.updates)
    if transport != "WS-STREAMING":
        assert replica.stats["binds"] >= 1  # the client's stream (or polls) bound to the session it created


@pytest.mark.parametrize("transport", ["WS-STREAMING", "HTTP-STREAMING"])
async def test_a_reset_connection_is_recovered_without_losing_an_update(tmp_path: Path, transport: str) -> None:
    # Seed 16 resets once, ~1.9 s in, and next ~23 s later: the recovery is never cut by a second
    # reset. Seed 3 reset twice 1.2 s apart; on a loaded machine the second hit the recovering session
    # as it went live, before its CONOK reached the client, and again at ~8 and ~9 s (CI, 2 of 3 runs).
    r = await _replica(tmp_path, keepalive_ms=500, faults={"reset": 20.0}, faults_seed=16)
    try:
        password = await _password(r)
        seen, market, chart = await asyncio.to_thread(_run, r, password, transport, 7.0, True, True)
    finally:
        await r.stop()
    assert r.stats["fault_reset"] >= 1 and r.stats["recoveries"] >= 1, r.stats
    assert "DISCONNECTED:TRYING-RECOVERY" in seen and seen.count(f"CONNECTED:{transport}") >= 2, seen
    assert r.stats["sessions"] == 1  # recovered, never a new session
    rows = _tape(tmp_path)
    _check_market(rows, market.updates)  # consecutive across the resets: nothing lost or repeated
    _check_chart(rows, chart.updates)
