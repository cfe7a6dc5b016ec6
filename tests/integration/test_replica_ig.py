"""The IG replica over real loopback sockets: REST login and prices, and Lightstreamer TLCP over WebSocket.

The TLCP side is read by a minimal client written here from PROTOCOLS.md section 4 alone (not the
codec in ``deltafeed.venues``, so the two implementations check each other). Expectations come from
the quote tape (CSV, one row per quote, symbol = the epic): candles are rebuilt from it with Decimal
arithmetic, and every streamed update is decoded with TLCP's compression rules and matched to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest

from conftest import StartReplica
from deltafeed.replicas.quotes import QUOTE_TAPE_HEADER
from deltafeed.replicas.sim import MarketClock
from deltafeed.venues.ig.replica import ALLOWANCE_ERROR, RATE_ERROR, TLCP_PROTOCOL, IGReplica, encode_fields, epic_pair
from helpers import by_symbol, ms, read_text_tape

EUR, JPY, GBP = "CS.D.EURUSD.CFD.IP", "CS.D.USDJPY.CFD.IP", "CS.D.GBPUSD.CFD.IP"
M1, H1 = 60_000, 3_600_000
KEY = "test-key"
CHART_SCHEMA = (
    "UTM",
    "BID_OPEN",
    "BID_HIGH",
    "BID_LOW",
    "BID_CLOSE",
    "OFR_OPEN",
    "OFR_HIGH",
    "OFR_LOW",
    "OFR_CLOSE",
    "CONS_TICK_COUNT",
    "CONS_END",
    "LTV",
    "LTP_OPEN",
)


def hms(t: int) -> str:
    return dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%H:%M:%S")


WEDNESDAY = ms("2026-03-04T10:02:30.500")


class Mono:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Gate:
    """A monotonic clock that stands still until :meth:`release`, then runs with the wall clock."""

    def __init__(self) -> None:
        self.since: float | None = None

    def release(self) -> None:
        self.since = time.monotonic()

    def __call__(self) -> float:
        return 1000.0 if self.since is None else 1000.0 + time.monotonic() - self.since


def read_tape(path: Path, epic: str) -> list[tuple[int, str, str]]:
    """One epic's ``(time_ms, bid, ask)`` rows of the tape, after checking every row names an epic."""
    rows = read_text_tape(path, QUOTE_TAPE_HEADER)
    assert {r[0] for r in rows} <= {EUR, JPY, GBP}  # epics, not pair names
    return by_symbol(rows, epic)


def ref_rows(tape: list[tuple[int, str, str]], g: int) -> dict[int, dict[str, Any]]:
    """IG price rows of interval ``g`` from tape rows, keyed by open time (only intervals with quotes)."""
    groups: dict[int, list[tuple[Decimal, Decimal]]] = {}
    for t, b, a in tape:
        groups.setdefault(t - t % g, []).append((Decimal(b), Decimal(a)))
    out = {}
    for k, qs in groups.items():
        row: dict[str, Any] = {"lastTradedVolume": len(qs)}
        for name, pick in (
            ("openPrice", lambda xs: xs[0]),
            ("closePrice", lambda xs: xs[-1]),
            ("highPrice", max),
            ("lowPrice", min),
        ):
            row[name] = {"bid": pick([q[0] for q in qs]), "ask": pick([q[1] for q in qs]), "lastTraded": None}
        out[k] = row
    return out


Make = Callable[..., Awaitable[IGReplica]]


@pytest.fixture
def make(replicas: StartReplica) -> Make:
    """``await make(**kwargs)`` starts a replica with a tape in tmp_path; all are stopped after the test."""

    async def make(**kwargs: Any) -> IGReplica:
        return await replicas(IGReplica, **kwargs)

    return make


def tape_of(r: IGReplica, epic: str) -> list[tuple[int, str, str]]:
    assert r.market.tape is not None
    return read_tape(Path(r.market.tape.path), epic)


async def login(
    http: aiohttp.ClientSession, r: IGReplica, ident: str = "me", pw: str = "secret", key: str = KEY
) -> tuple[int, dict[str, str], Any]:
    """POST /session: (status, the headers later requests need, body)."""
    async with http.post(
        r.rest_url + "/session",
        json={"identifier": ident, "password": pw},
        headers={"X-IG-API-KEY": key, "VERSION": "2"},
    ) as resp:
        body = await resp.json()
        h = {
            "CST": resp.headers.get("CST", ""),
            "X-SECURITY-TOKEN": resp.headers.get("X-SECURITY-TOKEN", ""),
            "X-IG-API-KEY": key,
        }
        return resp.status, h, body


async def prices(
    http: aiohttp.ClientSession, r: IGReplica, h: dict[str, str], epic: str = EUR, **params: Any
) -> tuple[int, Any]:
    async with http.get(
        f"{r.rest_url}/prices/{epic}", params={k: str(v) for k, v in params.items()}, headers={**h, "VERSION": "3"}
    ) as resp:
        return resp.status, json.loads(await resp.read(), parse_float=Decimal)


def changed(line: str) -> list[bool]:
    """Which fields a ``U`` line sets (``^N`` expanded to N unchanged ones)."""
    out: list[bool] = []
    for raw in line.split(",", 3)[3].split("|"):
        out += [False] * int(raw[1:]) if raw.startswith("^") else [raw != ""]
    return out


# --- a minimal TLCP client ------------------------------------------------------------------------------


class Tlcp:
    """Lines of a TLCP WebSocket (frames split on CRLF), requests as ``name\\r\\nquery``, and the
    item state of every subscription decoded with the compression rules of PROTOCOLS.md section 4."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pending: deque[str] = deque()
        self.closed = False
        self.nfields: dict[int, int] = {}
        self.state: dict[tuple[int, int], list[str | None]] = {}

    async def send(self, name: str, **params: Any) -> None:
        query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())
        await self.ws.send_str(f"{name}\r\n{query}" if params else name)

    async def line(self, timeout: float = 3.0) -> str | None:
        """The next line, None once the socket is closed; TimeoutError if none comes in time."""
        while not self.pending:
            if self.closed:
                return None
            msg = await asyncio.wait_for(self.ws.receive(), timeout)
            if msg.type != aiohttp.WSMsgType.TEXT:
                self.closed = True
                return None
            assert msg.data.endswith("\r\n"), msg.data
            self.pending.extend(x for x in msg.data.split("\r\n") if x)
        line = self.pending.popleft()
        if line.startswith("SUBOK,"):
            _, sub, _items, n = line.split(",")
            self.nfields[int(sub)] = int(n)
        return line

    async def collect(self, seconds: float, stop: Callable[[list[str]], bool] = lambda ls: False) -> list[str]:
        """Lines for ``seconds`` (or until ``stop(lines)``, or the socket closes)."""
        out: list[str] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and not stop(out):
            try:
                line = await self.line(max(0.001, end - time.monotonic()))
            except TimeoutError:
                break
            if line is None:
                break
            out.append(line)
        return out

    def decode(self, line: str) -> tuple[int, int, list[str | None]]:
        """Apply a ``U`` line to its item's state: empty = unchanged, ``#`` null, ``$`` empty, ``^N``
        N unchanged, anything else percent-decoded."""
        _, sub, idx, body = line.split(",", 3)
        key = (int(sub), int(idx))
        n = self.nfields[key[0]]
        values = list(self.state.get(key, [None] * n))
        i = 0
        for raw in body.split("|"):
            if raw == "":
                i += 1
            elif raw == "#":
                values[i] = None
                i += 1
            elif raw == "$":
                values[i] = ""
                i += 1
            elif raw[0] == "^":
                i += int(raw[1:])
            else:
                values[i] = unquote(raw)
                i += 1
        assert i == n, (line, n)
        self.state[key] = values
        return key[0], key[1], values

    async def subscribe(
        self,
        req: int,
        sub: int,
        mode: str,
        items: list[str],
        fields: tuple[str, ...],
        snapshot: bool = True,
        ack: bool = False,
    ) -> None:
        await self.send(
            "control",
            LS_reqId=req,
            LS_op="add",
            LS_subId=sub,
            LS_mode=mode,
            LS_group=" ".join(items),
            LS_schema=" ".join(fields),
            LS_snapshot=str(snapshot).lower(),
            LS_ack=str(ack).lower(),
        )


async def connect(http: aiohttp.ClientSession, r: IGReplica, h: dict[str, str], **extra: Any) -> tuple[Tlcp, str]:
    """A WebSocket, ``wsok`` → WSOK, ``create_session`` → the CONOK (or CONERR) line."""
    ws = await http.ws_connect(r.ws_url, protocols=(TLCP_PROTOCOL,))
    assert ws.protocol == TLCP_PROTOCOL
    c = Tlcp(ws)
    await c.send("wsok")
    assert await c.line() == "WSOK"
    params = {
        "LS_user": r.account_id,
        "LS_password": f"CST-{h['CST']}|XST-{h['X-SECURITY-TOKEN']}",
        "LS_cid": "mgQkwtwdysogQz2BJ4Ji kOj2Bg",
        "LS_send_sync": "false",
        "LS_cause": "api",
        **extra,
    }
    await c.send("create_session", **params)
    first = await c.line()
    assert first is not None
    return c, first


# --- encoding --------------------------------------------------------------------------------------------


def test_u_line_encoding_round_trips_through_an_independent_decoder() -> None:
    schema = tuple(f"F{i}" for i in range(12))
    prev: dict[str, str | None] = dict.fromkeys(schema, "x")
    new: dict[str, str | None] = {
        "F0": None, "F1": "", "F2": "#1", "F3": "$x", "F4": "^3", "F5": "a|b", "F6": "50%", "F7": "+1",
        "F8": "x", "F9": "x", "F10": "x", "F11": "line\r\nbreak",
    }  # fmt: skip
    changed = {k: v for k, v in new.items() if prev[k] != v}
    body = encode_fields(new, schema, changed)
    assert body.split("|")[8] == "^3"  # F8..F10 unchanged: a run of three is written ^3
    c = Tlcp(None)  # type: ignore[arg-type]
    c.nfields[1] = len(schema)
    c.state[(1, 1)] = list(prev.values())
    assert c.decode(f"U,1,1,{body}")[2] == list(new.values())
    # Complete updates, and short runs as plain empties.
    assert encode_fields(new, schema, None).count("|") == len(schema) - 1
    assert encode_fields(dict.fromkeys(("A", "B", "C"), "1"), ("A", "B", "C"), {"C": "1"}) == "||1"
    assert epic_pair("CS.D.USDJPY.MINI.IP") == "USD_JPY"


# --- REST --------------------------------------------------------------------------------------------------


async def test_prices_equal_candles_built_from_the_tape_and_spend_the_allowance(make: Make) -> None:
    mono = Mono()
    r = await make(clock=MarketClock(1.0, WEDNESDAY, monotonic=mono), rate=1, history_ms=3 * H1, allowance=300)
    async with aiohttp.ClientSession() as http:
        status, h, body = await login(http, r)
        assert status == 200 and h["CST"] and h["X-SECURITY-TOKEN"]
        assert body["accountId"] == r.account_id and body["lightstreamerEndpoint"] == r.url

        def check(rows: list[dict[str, Any]], g: int, lo: int, hi: int) -> None:
            """``rows`` are the tape's complete candles of ``g`` opening in [lo, hi], oldest first."""
            now = r.clock.now_ms()
            ref = {k: v for k, v in ref_rows(tape_of(r, EUR), g).items() if lo <= k <= hi and k + g <= now + 1}
            assert [ms(x["snapshotTimeUTC"]) for x in rows] == sorted(ref)
            for x in rows:
                t = ms(x["snapshotTimeUTC"])
                assert x["snapshotTime"] == x["snapshotTimeUTC"].replace("-", "/").replace("T", " ")
                assert {k: x[k] for k in ref[t]} == ref[t], t

        status, b = await prices(
            http, r, h, resolution="MINUTE", **{"from": "2026-03-04T08:00:00", "to": "2026-03-04T10:05:00"}, pageSize=0
        )
        assert status == 200 and b["instrumentType"] == "CURRENCIES"
        check(b["prices"], M1, ms("2026-03-04T08:00"), ms("2026-03-04T10:05"))
        assert len(b["prices"]) == 122  # 08:00 .. 10:01; 10:02 is still forming
        meta = b["metadata"]
        assert meta["allowance"]["remainingAllowance"] == 300 - 122 and meta["allowance"]["totalAllowance"] == 300
        assert 7 * 86_400 - 60 < meta["allowance"]["allowanceExpiry"] <= 7 * 86_400
        assert meta["size"] == 122 and meta["pageData"] == {"pageSize": 0, "pageNumber": 1, "totalPages": 1}

        status, b = await prices(http, r, h, resolution="HOUR", max=2)  # the last two complete hours
        check(b["prices"], H1, ms("2026-03-04T08:00"), ms("2026-03-04T09:00"))
        assert len(b["prices"]) == 2 and b["metadata"]["allowance"]["remainingAllowance"] == 176

        status, b = await prices(
            http,
            r,
            h,
            resolution="MINUTE_5",
            pageSize=5,
            pageNumber=2,
            **{"from": "2026-03-04T09:00:00", "to": "2026-03-04T10:00:00"},
        )
        assert b["metadata"]["pageData"] == {"pageSize": 5, "pageNumber": 2, "totalPages": 3}
        check(b["prices"], 300_000, ms("2026-03-04T09:25"), ms("2026-03-04T09:45"))
        assert b["metadata"]["allowance"]["remainingAllowance"] == 171

        mono.t += 60  # 10:03:30.5: minute 10:02 is complete now
        status, b = await prices(http, r, h, resolution="MINUTE", max=1)
        check(b["prices"], M1, ms("2026-03-04T10:02"), ms("2026-03-04T10:02"))
        assert len(b["prices"]) == 1

        big: dict[str, Any] = {
            "resolution": "MINUTE",
            "from": "2026-03-04T08:00:00",
            "to": "2026-03-04T10:05:00",
            "pageSize": 0,
        }
        status, b = await prices(http, r, h, **big)
        assert status == 200 and b["metadata"]["allowance"]["remainingAllowance"] == 300 - 122 - 2 - 5 - 1 - 123
        status, b = await prices(http, r, h, **big)  # 123 more than the 47 left: refused whole, free
        assert (status, b) == (403, {"errorCode": ALLOWANCE_ERROR})
        status, b = await prices(http, r, h, resolution="MINUTE", max=3)
        assert status == 200 and b["metadata"]["allowance"]["remainingAllowance"] == 44
    assert r.stats["403"] == 1 and r.stats["allowance_used"] == 256 == r.allowance - r.allowance_remaining()


async def test_rest_needs_credentials_and_tokens(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=H1, api_key=KEY, username="me", password="secret")
    async with aiohttp.ClientSession() as http:
        assert (await login(http, r, pw="wrong"))[0] == 401
        assert (await login(http, r, key="other"))[2] == {"errorCode": "error.security.api-key-invalid"}
        status, h, _ = await login(http, r)
        assert status == 200
        assert (await prices(http, r, h, max=1))[0] == 200
        for bad in ({"CST": ""}, {"X-SECURITY-TOKEN": "nope"}, {"X-IG-API-KEY": "other"}):
            status, b = await prices(http, r, {**h, **bad}, max=1)
            assert status == 401 and b["errorCode"].startswith("error.security."), bad
        async with http.get(f"{r.url}/prices/{EUR}", headers=h, params={"max": "1"}) as resp:
            assert resp.status == 200  # the /gateway/deal prefix is optional
        assert (await prices(http, r, h, epic="CS.D.EURCHF.CFD.IP"))[0] == 404
        assert (await prices(http, r, h, resolution="SECOND"))[0] == 400
        assert (await prices(http, r, h, **{"from": "yesterday"}))[0] == 400
        async with http.delete(r.rest_url + "/session", headers=h) as resp:
            assert resp.status == 204
        assert (await prices(http, r, h, max=1))[0] == 401  # logged out
    assert r.stats["401"] == 6


# --- TLCP ------------------------------------------------------------------------------------------------


async def test_session_transcript_and_market_updates_match_the_tape(make: Make) -> None:
    r = await make(speed=30, rate=4, start_ms=WEDNESDAY, history_ms=M1)
    schema = ("BID", "OFFER", "UPDATE_TIME", "MARKET_STATE")
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        c, conok = await connect(http, r, h)
        parts = conok.split(",")
        assert parts[0] == "CONOK" and parts[1] and int(parts[2]) > 0 and parts[3:] == ["5000", "*"], conok
        await c.subscribe(1, 1, "MERGE", [f"MARKET:{EUR}", f"MARKET:{JPY}"], schema)
        head = await c.collect(3.0, lambda ls: sum(x.startswith("U,") for x in ls) >= 2)
        assert head[:4] == ["SERVNAME,deltafeed IG replica", "CLIENTIP,127.0.0.1", "CONS,unlimited", "SUBOK,1,2,4"]
        snaps = [x for x in head if x.startswith("U,")]
        assert [x.split(",")[2] for x in snaps] == ["1", "2"] and not any("EOS" in x for x in head)  # MERGE: no EOS
        lines = snaps + await c.collect(1.5)
        await c.send("control", LS_reqId=2, LS_op="delete", LS_subId=1)
        tail = await c.collect(1.0, lambda ls: "UNSUB,1" in ls)
        assert tail[-2:] == ["REQOK,2", "UNSUB,1"]
        assert not [x for x in await c.collect(0.3) if x.startswith("U,")]
    updates = [x for x in lines + tail if x.startswith("U,")]
    decoded: dict[int, list[tuple[str | None, ...]]] = {1: [], 2: []}
    for x in updates:
        _, idx, values = c.decode(x)
        assert values[3] == "TRADEABLE"
        decoded[idx].append(tuple(values[:3]))
    for idx, epic in ((1, EUR), (2, JPY)):
        got = decoded[idx]
        taped: list[tuple[str | None, ...]] = [(b, a, hms(t)) for t, b, a in tape_of(r, epic)]
        assert len(got) > 60
        # The snapshot (the last quote before subscribing), then every quote, in order, none missing or
        # invented; found from the end, as two quotes of one second may have the same bid and offer.
        runs = [i for i in range(len(taped) - len(got), -1, -1) if taped[i : i + len(got)] == got]
        assert runs, "the updates are not a run of consecutive tape quotes"
    rest = [changed(x) for x in updates[2:]]
    assert all(len(f) == 4 and not f[3] for f in rest)  # MARKET_STATE never repeated
    assert sum(not f[2] for f in rest) > len(rest) // 3  # nor UPDATE_TIME within a second
    assert any(x.endswith("|^3") for x in updates)  # a bid alone changed


@pytest.mark.slow  # over 3 s: not in the everyday subset
async def test_market_state_closes_over_the_weekend_without_price_updates(make: Make) -> None:
    # Friday 16:00 New York (EST) at 50,000x: Friday's close (22:00 UTC) is 72 ms of wall time away,
    # Sunday's open (21:00 UTC, EDT by then) 3.4 s.
    close, reopen = ms("2026-03-06T22:00"), ms("2026-03-08T21:00")
    gate = Gate()  # the market waits until the subscription is in: at this speed it closes in 72 ms
    r = await make(clock=MarketClock(50_000, ms("2026-03-06T21:00"), monotonic=gate), rate=0.02, history_ms=H1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        c, _ = await connect(http, r, h)
        await c.subscribe(1, 1, "MERGE", [f"MARKET:{EUR}"], ("BID", "OFFER", "UPDATE_TIME", "MARKET_STATE"))
        assert (await c.collect(2.0, lambda ls: bool(ls) and ls[-1].startswith("U,")))[-1].endswith("|TRADEABLE")
        gate.release()

        def reopened(ls: list[str]) -> bool:  # CLOSED, TRADEABLE again, then ten price updates
            ups = [x for x in ls if x.startswith("U,")]
            shut = next((i for i, x in enumerate(ups) if x.endswith("|CLOSED")), None)
            return shut is not None and len(ups) >= shut + 12

        lines = await c.collect(8.0, reopened)
    ups = [x for x in lines if x.startswith("U,")]
    states = [c.decode(x)[2] for x in ups]
    closed = next(i for i, v in enumerate(states) if v[3] == "CLOSED")
    assert states[closed + 1][3] == "TRADEABLE"  # nothing between Friday's close and Sunday's open
    for i in (closed, closed + 1):
        assert changed(ups[i]) == [False, False, False, True]  # only the state changed
    taped = [(b, a, hms(t)) for t, b, a in tape_of(r, EUR)]
    before = [tuple(v[:3]) for v in states[:closed]]
    after = [tuple(v[:3]) for v in states[closed + 2 :]]
    k = [t for t, _, _ in tape_of(r, EUR)].index(next(t for t, _, _ in tape_of(r, EUR) if t >= reopen))
    assert taped[k - len(before) : k] == before  # up to the last quote before the close
    assert taped[k : k + len(after)] == after and len(after) >= 10  # from the first quote after the open
    assert tape_of(r, EUR)[k - 1][0] < close


async def test_closed_market_snapshot_then_only_probes(make: Make) -> None:
    r = await make(speed=1, rate=1, start_ms=ms("2026-03-07T12:00"), history_ms=24 * H1, keepalive_ms=150)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        c, _ = await connect(http, r, h)
        await c.subscribe(1, 1, "MERGE", [f"MARKET:{GBP}"], ("MARKET_STATE", "BID"))
        lines = await c.collect(1.0)
    ups = [x for x in lines if x.startswith("U,")]
    assert len(ups) == 1 and ups[0].startswith("U,1,1,CLOSED|")  # Friday's last bid, market closed
    assert ups[0].split("|")[1] == tape_of(r, GBP)[-1][1]
    assert lines.count("PROBE") >= 4


async def test_chart_minutes_stream_and_close_with_cons_end(make: Make) -> None:
    r = await make(speed=60, rate=4, start_ms=WEDNESDAY, history_ms=10 * M1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        c, _ = await connect(http, r, h)
        await c.subscribe(1, 1, "MERGE", [f"CHART:{EUR}:1MINUTE"], CHART_SCHEMA, snapshot=False)
        lines = [x for x in await c.collect(2.8) if x.startswith("U,")]
    first = lines[0].split(",", 3)[3].split("|")
    assert "" not in first and first[-1] == "#"  # the first update is complete; LTP is null for FX
    ref = ref_rows(tape_of(r, EUR), M1)
    f = {n: i for i, n in enumerate(CHART_SCHEMA)}
    finals, last_count = [], 0
    prev: list[str | None] | None = None
    for x in lines:
        v = c.decode(x)[2]
        utm = int(v[f["UTM"]] or 0)
        if v[f["CONS_END"]] == "1":
            finals.append(utm)
            assert x.split(",", 3)[3] == "^10|1||"  # nothing but CONS_END changed (2 left: plain empties)
            row = ref[utm]
            assert v[f["CONS_TICK_COUNT"]] == v[f["LTV"]] == str(row["lastTradedVolume"])
            for side, pre in (("bid", "BID"), ("ask", "OFR")):
                got = [Decimal(v[f[f"{pre}_{k}"]] or "nan") for k in ("OPEN", "HIGH", "LOW", "CLOSE")]
                assert got == [row[p][side] for p in ("openPrice", "highPrice", "lowPrice", "closePrice")]
        else:
            assert v[f["CONS_END"]] == "0"
            count = int(v[f["CONS_TICK_COUNT"]] or 0)
            if prev is not None and prev[f["UTM"]] == v[f["UTM"]]:
                assert count == last_count + 1  # one update per quote
            elif prev is not None:
                assert prev[f["CONS_END"]] == "1" and utm == int(prev[f["UTM"]] or 0) + M1 and count == 1
            last_count = count
        prev = v
    assert len(finals) >= 2 and finals == sorted(set(finals))


async def test_probe_when_silent_for_the_keepalive(make: Make) -> None:
    r = await make(speed=1, start_ms=WEDNESDAY, history_ms=M1, keepalive_ms=150)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        (a, conok_a), (b, conok_b) = await asyncio.gather(
            connect(http, r, h), connect(http, r, h, LS_keepalive_millis=400)
        )
        assert conok_a.split(",")[3] == "150" and conok_b.split(",")[3] == "400"
        t0 = time.monotonic()
        got_a, got_b = await asyncio.gather(a.collect(1.3), b.collect(1.3))
    assert time.monotonic() - t0 < 2.0
    probes_a = [x for x in got_a if x == "PROBE"]
    assert 5 <= len(probes_a) <= 9, got_a  # every 150 ms of silence
    assert 2 <= got_b.count("PROBE") <= 4 and got_b.count("PROBE") < len(probes_a), got_b
    assert r.stats["probes"] >= 8


async def test_the_41st_session_of_an_account_is_refused(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        _, h2, _ = await login(http, r)  # another login of the same account
        sessions = await asyncio.gather(*(connect(http, r, h if i % 2 else h2) for i in range(40)))
        assert all(conok.startswith("CONOK,") for _, conok in sessions)
        assert len({conok.split(",")[1] for _, conok in sessions}) == 40
        extra, line = await connect(http, r, h)
        code, msg = line.split(",", 2)[1:]
        assert code == "8" and "40" in unquote(msg) and "," not in msg
        assert await extra.line() is None  # the server closed it
        await sessions[0][0].ws.close()
        await asyncio.sleep(0.1)
        again, line = await connect(http, r, h)
        assert line.startswith("CONOK,")
        for s, _ in sessions:
            await s.ws.close()
        await again.ws.close()
    assert r.stats["max_concurrent_sessions"] == 40 and r.stats["rejected_sessions"] == 1


async def test_sessions_need_a_live_login(make: Make) -> None:
    r = await make(start_ms=WEDNESDAY, history_ms=M1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        for bad in ({"X-SECURITY-TOKEN": "forged"}, {"CST": "forged"}):
            c, line = await connect(http, r, {**h, **bad})
            assert line.startswith("CONERR,1,") and await c.line() is None
        c, line = await connect(http, r, h, LS_user="SOMEONE")
        assert line.startswith("CONERR,1,")
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(r.ws_url)  # no TLCP subprotocol offered
        async with http.delete(r.rest_url + "/session", headers=h):
            pass
        c, line = await connect(http, r, h)
        assert line.startswith("CONERR,1,")
    assert r.stats["rejected_sessions"] == 4 and r.stats["sessions"] == 0


async def test_subscription_errors_and_distinct_ticks(make: Make) -> None:
    r = await make(speed=10, rate=4, start_ms=WEDNESDAY, history_ms=M1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        c, _ = await connect(http, r, h)
        await c.collect(0.1)
        await c.subscribe(1, 1, "MERGE", [f"MARKET:{EUR}", "MARKET:CS.D.EURCHF.CFD.IP"], ("BID",))
        await c.subscribe(2, 2, "MERGE", [f"MARKET:{EUR}"], ("BID", "VOLUME"))
        await c.subscribe(3, 3, "DISTINCT", [f"MARKET:{EUR}"], ("BID",))
        await c.subscribe(4, 4, "MERGE", [f"CHART:{EUR}:2MINUTE"], ("BID_OPEN",))  # no 2MINUTE scale
        errs = await c.collect(2.0, lambda ls: len([x for x in ls if x.startswith("REQERR")]) >= 4)
        codes = [x.split(",")[1:3] for x in errs if x.startswith("REQERR")]
        assert codes == [["1", "21"], ["2", "23"], ["3", "24"], ["4", "21"]]
        await c.subscribe(5, 5, "DISTINCT", [f"CHART:{JPY}:TICK"], ("BID", "OFR", "UTM"), ack=True)
        lines = await c.collect(1.0)
    assert lines[:2] == ["REQOK,5", "SUBOK,5,1,3"] and lines[2].startswith("U,5,1,") and lines[3] == "EOS,5,1"
    ticks = [c.decode(x)[2] for x in lines if x.startswith("U,5,")]
    taped: list[tuple[str | None, ...]] = [(b, a, str(t)) for t, b, a in tape_of(r, JPY)]
    i = taped.index(tuple(ticks[0]))
    assert len(ticks) > 20 and taped[i : i + len(ticks)] == [tuple(v) for v in ticks]


# --- faults ------------------------------------------------------------------------------------------------


async def test_session_faults_close_reset_and_stall(make: Make) -> None:
    async def run(kind: str) -> tuple[IGReplica, list[str], Tlcp]:
        r = await make(start_ms=WEDNESDAY, history_ms=M1, keepalive_ms=100, faults={kind: 600}, faults_seed=2)
        async with aiohttp.ClientSession() as http:
            _, h, _ = await login(http, r)
            c, _ = await connect(http, r, h)
            lines = await c.collect(1.5)
            if kind == "stall":  # stalled: nothing at all any more, not even PROBE
                assert await c.collect(0.4) == []
            await c.ws.close()
        assert r.faults_injected()[kind] >= 1
        return r, lines, c

    _, lines, c = await run("close")
    assert lines[-1].startswith("END,48,") and c.closed
    _, lines, c = await run("reset")
    assert c.closed and not any(x.startswith("END") for x in lines)
    _, lines, c = await run("stall")
    assert not c.closed


async def test_rest_faults(make: Make) -> None:
    for kind, want in (("http500", 500), ("http429", 403)):
        r = await make(start_ms=WEDNESDAY, history_ms=M1, faults={kind: 60_000})
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            status, _, body = await login(http, r)
        assert status == want and r.faults_injected() == {kind: 1}
        if kind == "http429":
            assert body == {"errorCode": RATE_ERROR}  # IG refuses a rate with 403, not 429


# --- CLI ---------------------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "deltafeed", "replica", "ig"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--symbols", "EURUSD"], "CS.D.EURUSD.CFD.IP"),
        (["--rate", "0"], "--rate"),
        (["--start", "Friday"], "--start"),
        (["--faults", "drop=1"], "drop"),
        (["--history", "3x"], "duration"),
        (["--api-key="], "--api-key"),
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
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    url + "/gateway/deal/session",
                    json={"identifier": "a", "password": "b"},
                    headers={"X-IG-API-KEY": "k"},
                ) as resp:
                    h = {
                        "CST": resp.headers["CST"],
                        "X-SECURITY-TOKEN": resp.headers["X-SECURITY-TOKEN"],
                        "X-IG-API-KEY": "k",
                    }
                async with http.get(url + f"/gateway/deal/prices/{JPY}", params={"max": "3"}, headers=h) as resp:
                    return resp.status, await resp.json()

        status, body = asyncio.run(fetch())
        assert status == 200 and len(body["prices"]) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "ig replica stopped: quotes=" in out and "logins=1 " in out and "rows=3 " in out
    assert read_tape(tape, JPY)


# --- v1/v2 prices, markets, accounts ------------------------------------------------------------------------


async def test_v1_v2_price_paths_markets_and_accounts(make: Make) -> None:
    # The market clock stands still: every answer and the tape describe the same moment.
    r = await make(clock=MarketClock(1.0, WEDNESDAY, monotonic=Mono()), history_ms=2 * H1 + 10 * M1, rate=1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)

        async def get(path: str, version: str, **params: str) -> tuple[int, Any]:
            async with http.get(r.rest_url + path, params=params, headers={**h, "VERSION": version}) as resp:
                return resp.status, json.loads(await resp.text(), parse_float=Decimal)

        _, v3 = await get(f"/prices/{EUR}", "3", resolution="MINUTE", max="5")
        status, v2 = await get(f"/prices/{EUR}/MINUTE/5", "2")
        assert status == 200 and "allowance" in v2 and "metadata" not in v2
        assert [x["snapshotTime"] for x in v2["prices"]] == [x["snapshotTime"] for x in v3["prices"]]
        strip = [{k: v for k, v in x.items() if k != "snapshotTimeUTC"} for x in v3["prices"]]
        assert v2["prices"] == strip  # the same rows, without snapshotTimeUTC
        _, rng = await get(f"/prices/{EUR}/MINUTE_5/2026-03-04 09:00:00/2026-03-04 09:30:00", "2")
        assert [x["snapshotTime"] for x in rng["prices"]] == [f"2026/03/04 09:{m:02d}:00" for m in range(0, 31, 5)]
        _, v1 = await get(f"/prices/{EUR}/HOUR", "1", startdate="2026:03:04-08:00:00", enddate="2026:03:04-09:00:00")
        assert [x["snapshotTime"] for x in v1["prices"]] == ["2026:03:04-08:00:00", "2026:03:04-09:00:00"]
        tape = tape_of(r, EUR)
        ref = ref_rows(tape, H1)
        assert {k: v1["prices"][0][k] for k in ref[ms("2026-03-04T08:00")]} == ref[ms("2026-03-04T08:00")]

        status, m = await get(f"/markets/{EUR}", "3")
        assert status == 200 and m["instrument"]["epic"] == EUR and m["snapshot"]["marketStatus"] == "TRADEABLE"
        _, b, a = tape[-1]
        assert (m["snapshot"]["bid"], m["snapshot"]["offer"]) == (Decimal(b), Decimal(a))
        mids = [(Decimal(b) + Decimal(a)) / 2 for t, b, a in tape if t >= WEDNESDAY - WEDNESDAY % 86_400_000]
        assert (m["snapshot"]["high"], m["snapshot"]["low"]) == (max(mids), min(mids))
        assert m["snapshot"]["netChange"] == mids[-1] - mids[0]
        status, acc = await get("/accounts", "1")
        assert status == 200 and [x["accountId"] for x in acc["accounts"]] == [r.account_id]
        status, err = await get("/positions", "2")
        assert status == 404 and set(err) == {"errorCode"}
        async with http.get(r.rest_url + f"/markets/{EUR}") as resp:  # no tokens
            assert resp.status == 401 and set(await resp.json()) == {"errorCode"}


# --- TLCP over HTTP --------------------------------------------------------------------------------------


async def test_http_transport_polls_controls_binds_and_recovers(make: Make) -> None:
    r = await make(speed=10, rate=4, start_ms=WEDNESDAY, history_ms=M1)
    async with aiohttp.ClientSession() as http:
        _, h, _ = await login(http, r)
        password = f"CST-{h['CST']}|XST-{h['X-SECURITY-TOKEN']}"

        async def post(name: str, body: str, **query: str) -> list[str]:
            q = {"LS_protocol": "TLCP-2.4.0", **query}
            async with http.post(f"{r.url}/lightstreamer/{name}.txt", params=q, data=body) as resp:
                assert resp.status == 200
                return [x for x in (await resp.text()).split("\r\n") if x]

        poll = "LS_polling=true&LS_polling_millis=0&LS_idle_millis=0"
        first = await post("create_session", f"LS_user={r.account_id}&LS_password={quote(password)}&{poll}")
        assert first[0].startswith("CONOK,") and first[-1] == "LOOP,0"
        sid = first[0].split(",")[1]
        add = f"LS_reqId=1&LS_op=add&LS_subId=1&LS_mode=MERGE&LS_group=MARKET:{EUR}&LS_schema=BID%20OFFER&LS_snapshot=true"
        assert await post("control", add, LS_session=sid) == ["REQOK,1"]
        await asyncio.sleep(0.5)
        got = await post("bind_session", f"LS_session={sid}&{poll}")
        assert got[0].startswith(f"CONOK,{sid},") and got[-1] == "LOOP,0"
        data = [x for x in got if x.startswith(("SUBOK", "U,"))]
        assert data[0] == "SUBOK,1,1,2" and len(data) > 5
        # The client lost that answer: it recovers from the first data notification, and gets them all again.
        again = await post("bind_session", f"LS_session={sid}&LS_recovery_from=0&{poll}")
        assert again[4] == "PROG,0" and again[5 : 5 + len(data)] == data
        refused = await post("bind_session", f"LS_session={sid}&LS_recovery_from=99999&{poll}")
        assert refused[0].startswith("CONERR,4,")
        assert (await post("bind_session", f"LS_session=nope&{poll}"))[0].startswith("CONERR,20,")
        assert (await post("control", "LS_reqId=2&LS_op=destroy", LS_session=sid)) == ["REQOK,2"]
        assert (await post("create_session", "x", LS_protocol="TLCP-2.3.0"))[0].startswith("ERROR,")
    assert r.stats["recoveries"] == 1 and r.stats["open_sessions"] == 0 and r.stats["connections_TLCP-2.4.0"] >= 5
