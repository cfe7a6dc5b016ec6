"""Fault injection in the Binance replica, observed from real clients over loopback.

Each WebSocket kind is provoked at a high rate (600 a minute: an event every 0.1 s on average) and
seen the way a client sees it: aiohttp frames and close codes, or a raw socket where aiohttp would
hide the difference (a TCP reset, a silent connection, server pings).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import aiohttp
import pytest

from conftest import MakeReplica
from deltafeed.model import BadInput, ServerShutdown, Trade
from deltafeed.replicas.faults import KINDS, NOT_JSON, FaultSchedule, apply_message_fault, parse_faults
from deltafeed.venues.binance.codec import StreamDecoder
from deltafeed.venues.binance.replica import FAR_AHEAD, BinanceReplica, split_text_frames, text_frames
from helpers import until

FAST = 600.0  # events per minute
HANDSHAKE = (
    b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


# --- helpers -------------------------------------------------------------------------------------


class RawWs:
    """A bare WebSocket client on a socket: sees every byte, pings included, and how the TCP ends."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buf = b""

    @classmethod
    async def connect(cls, replica: BinanceReplica, path: str) -> RawWs:
        reader, writer = await asyncio.open_connection("127.0.0.1", replica.port)
        writer.write(HANDSHAKE % path.encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def read(self, timeout: float) -> bytes:
        """Bytes that arrive within ``timeout`` (b"" on EOF); TimeoutError if none do."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        self.buf += data
        return data

    def frames(self) -> list[tuple[int, bytes]]:
        """(opcode, payload) of the whole frames read so far."""
        out, data, i = [], self.buf, 0
        while i + 2 <= len(data):
            n, j = data[i + 1] & 0x7F, i + 2
            if n == 126:
                n, j = int.from_bytes(data[j : j + 2], "big"), j + 2
            elif n == 127:
                n, j = int.from_bytes(data[j : j + 8], "big"), j + 8
            if j + n > len(data):
                break
            out.append((data[i] & 0x0F, data[j : j + n]))
            i = j + n
        return out

    def send_text(self, text: bytes) -> None:
        assert len(text) < 126
        self.writer.write(bytes((0x81, 0x80 | len(text))) + b"\0\0\0\0" + text)  # mask key 0: as is

    def close(self) -> None:
        self.writer.close()


async def read_trades(
    make_replica: MakeReplica, http: aiohttp.ClientSession, faults: dict[str, float], seconds: float = 1.5
) -> tuple[BinanceReplica, list[int], StreamDecoder]:
    """Trade ids one raw-stream client decodes in ``seconds`` under ``faults``, and its decoder."""
    replica = await make_replica(symbols=["BTCUSDT"], rate=200.0, history_ms=0, faults=faults, faults_seed=2)
    decoder, ids = StreamDecoder(), []
    async with http.ws_connect(replica.ws_url + "/ws/btcusdt@trade") as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            ev = decoder.decode(msg.data)
            if ev is not None:
                assert isinstance(ev, Trade)
                ids.append(ev.trade_id)
    assert len(ids) > 100
    return replica, ids, decoder


def assert_counted(replica: BinanceReplica, kind: str) -> int:
    n = replica.faults_injected()[kind]
    assert n >= 1 and replica.stats[f"fault_{kind}"] == n
    assert f"{kind}={n}" in replica.summary()
    return n


# --- the spec and the schedule -------------------------------------------------------------------


def test_parse_faults_and_its_one_line_errors() -> None:
    assert parse_faults("close=2, drop=30,http429=0.5") == {"close": 2.0, "drop": 30.0, "http429": 0.5}
    assert parse_faults("") == {}
    assert parse_faults("stall=0") == {"stall": 0.0}
    cases = [
        ("boom=1", "unknown fault kind 'boom'"),
        ("close=1,boom", "unknown fault kind 'boom'"),
        ("close", "has no rate"),
        ("close=often", "'often' in 'close=often' is not a number"),
        ("drop=-1", "must be a number >= 0"),
        ("drop=nan", "must be a number >= 0"),
        ("dup=1,dup=2", "appears twice"),
    ]
    for spec, needle in cases:
        with pytest.raises(BadInput) as e:
            parse_faults(spec)
        msg = str(e.value)
        assert needle in msg and "\n" not in msg, msg
        if "twice" not in needle:
            assert "kind=rate" in msg and ", ".join(KINDS) in msg  # names the fix and every kind
    with pytest.raises(BadInput, match="unknown fault kind 'boom'"):
        FaultSchedule({"boom": 1.0})


def fire_times(s: FaultSchedule, now: list[float], kinds: tuple[str, ...], horizon: float) -> dict[str, list[int]]:
    """Step a fake clock by 1 ms and note when ``due`` fires for each kind (ms after start)."""
    out: dict[str, list[int]] = {k: [] for k in kinds}
    t0 = now[0]
    for i in range(1, int(horizon * 1000) + 1):
        now[0] = t0 + i / 1000
        for k in kinds:
            if s.due(k):
                out[k].append(i)
    return out


def test_schedule_is_reproducible_per_seed_and_kind() -> None:
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    a = FaultSchedule({"close": FAST, "drop": 60.0}, seed=5, clock=clock)
    got_a = fire_times(a, now, ("close", "drop"), 10.0)
    now[0] = 5000.0
    b = FaultSchedule({"close": FAST}, seed=5, clock=clock)  # another kind set: close's times unchanged
    got_b = fire_times(b, now, ("close",), 10.0)
    now[0] = 9000.0
    c = FaultSchedule({"close": FAST}, seed=6, clock=clock)
    got_c = fire_times(c, now, ("close",), 10.0)
    assert got_a["close"] == got_b["close"] and got_a["close"] != got_c["close"]
    # due() follows the schedule times() describes, at the clock's 1 ms steps; two events within
    # one step fire once.
    planned = a.times("close", 10.0)
    assert 60 < len(planned) < 140  # ~100 at 10 a second
    assert got_a["close"] == sorted({math.ceil(t * 1000) for t in planned})
    assert a.coalesced["close"] == len(planned) - len(got_a["close"])
    assert got_a["drop"] == sorted({math.ceil(t * 1000) for t in a.times("drop", 10.0)}) and len(got_a["drop"]) < 30
    # Poisson: the mean gap is 60/rate seconds.
    long = a.times("close", 600.0)
    assert abs(len(long) - 6000) < 400
    # Same seed, same schedule, for a replica too; counted from start().
    r1, r2 = BinanceReplica(faults="reset=3", faults_seed=9), BinanceReplica(faults="reset=3", faults_seed=9)
    r3 = BinanceReplica(faults="reset=3", faults_seed=10)
    assert r1.faults is not None and r2.faults is not None and r3.faults is not None
    assert r1.faults.times("reset", 3600) == r2.faults.times("reset", 3600) != r3.faults.times("reset", 3600)
    assert BinanceReplica().faults is None and BinanceReplica().faults_injected() == {}


def test_due_takes_one_event_and_never_saves_up_a_burst() -> None:
    now = [0.0]
    s = FaultSchedule({"http500": FAST}, seed=1, clock=lambda: now[0])
    assert not s.due("http500") and not s.pending("http500") and not s.due("close")
    now[0] = 30.0  # ~300 events fell due while nothing asked
    assert s.pending("http500") and s.due("http500")
    assert not s.due("http500"), "the events missed meanwhile joined the one taken"
    assert 200 < s.coalesced["http500"] < 400
    s.record("http500")
    assert s.counts() == {"http500": 1} and s.summary() == "faults: http500=1"


def test_frame_split_and_message_faults() -> None:
    payloads = [b'{"t":%d}' % i for i in range(5)] + [b"x" * 200, b"y" * 70_000]
    assert split_text_frames(text_frames(payloads)) == payloads
    with pytest.raises(ValueError):
        split_text_frames(b"\x81\x85\0\0\0\0hello")  # masked: a client frame, not the replica's
    with pytest.raises(ValueError):
        split_text_frames(text_frames([b"abc"])[:-1])
    p = [b"a", b"b", b"c"]
    first = lambda n: 0  # noqa: E731
    assert apply_message_fault("drop", p, first) == [b"b", b"c"]
    assert apply_message_fault("dup", p, first) == [b"a", b"a", b"b", b"c"]
    assert apply_message_fault("reorder", p, first) == [b"b", b"a", b"c"]
    assert apply_message_fault("garbage", [b'{"e":"trade"}'], first) == [b'{"e":"', b'{"e":"trade"}']
    assert apply_message_fault("garbage", p, lambda n: n - 1) == [b"a", b"b", NOT_JSON, b"c"]
    with pytest.raises(ValueError):
        apply_message_fault("reorder", [b"a"], first)
    assert p == [b"a", b"b", b"c"]  # the input is left alone


# --- WebSocket: connection faults ----------------------------------------------------------------


async def test_close_sends_a_clean_close_frame_then_ends(
    make_replica: MakeReplica, http: aiohttp.ClientSession
) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], rate=200.0, history_ms=0, faults={"close": FAST})
    trades = 0
    async with http.ws_connect(replica.ws_url + "/ws/btcusdt@trade") as ws:
        while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
            trades += 1
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data in (1000, 1001), msg
        assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.CLOSED and ws.closed
    assert assert_counted(replica, "close") == 1  # one connection, closed once
    await until(lambda: replica.stats["open_connections"] == 0)


async def test_reset_ends_the_tcp_connection_without_a_close_frame(make_replica: MakeReplica) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], rate=200.0, history_ms=0, faults={"reset": FAST})
    ws = await RawWs.connect(replica, "/ws/btcusdt@trade")
    with pytest.raises(ConnectionResetError):  # an RST, not a FIN (that would read as b"")
        while await ws.read(5.0):
            pass
    ws.close()
    assert all(op == 0x1 for op, _ in ws.frames())  # text frames only: no close frame
    assert assert_counted(replica, "reset") == 1
    await until(lambda: replica.stats["open_connections"] == 0)


async def test_stall_goes_silent_keeps_the_socket_open_and_sends_no_pings(make_replica: MakeReplica) -> None:
    # A client that never answers pings would be closed after 0.5 s, were the connection not stalled.
    replica = await make_replica(
        symbols=["BTCUSDT"], rate=200.0, history_ms=0, faults={"stall": FAST}, ping_interval=0.3, pong_timeout=0.5
    )
    ws = await RawWs.connect(replica, "/ws/btcusdt@trade")
    await until(lambda: replica.faults_injected()["stall"] == 1)
    with pytest.raises(TimeoutError):  # frames in flight when the stall began
        while await ws.read(0.2):
            pass
    before = len(ws.buf)
    assert ws.frames() and all(op in (0x1, 0x9) for op, _ in ws.frames())
    ws.send_text(b'{"method":"LIST_SUBSCRIPTIONS","id":1}')  # no reply either
    with pytest.raises(TimeoutError):
        await ws.read(2.5)  # nothing at all for 2.5 s: no data, no pings, no close, no EOF
    assert len(ws.buf) == before and not ws.reader.at_eof()
    assert replica.stats["open_connections"] == 1
    assert replica.faults_injected()["stall"] == 1  # one connection, and it cannot be stalled twice
    ws.close()  # the client noticed and hangs up: the replica lets go
    await until(lambda: replica.stats["open_connections"] == 0)


async def test_shutdown_event_then_close_after_the_grace(
    make_replica: MakeReplica, http: aiohttp.ClientSession
) -> None:
    replica = await make_replica(
        symbols=["BTCUSDT"], rate=200.0, history_ms=0, faults={"shutdown": FAST}, shutdown_grace_s=0.5
    )

    async def watch(path: str) -> tuple[float, ServerShutdown, int, aiohttp.WSMessage, float]:
        decoder, shutdown_at, event, after = StreamDecoder(), 0.0, None, 0
        async with http.ws_connect(replica.ws_url + path) as ws:
            while (msg := await ws.receive(timeout=5)).type == aiohttp.WSMsgType.TEXT:
                ev = decoder.decode(msg.data)
                if isinstance(ev, ServerShutdown):
                    assert event is None, "one shutdown per connection"
                    event, shutdown_at = ev, time.monotonic()
                    if "stream" in msg.data:
                        assert msg.data.startswith('{"stream":"!serverShutdown","data":{"e":"serverShutdown","E":')
                    else:
                        assert msg.data == f'{{"e":"serverShutdown","E":{ev.event_ms}}}'
                elif event is not None:
                    after += 1
            assert event is not None and not decoder.errors
            return shutdown_at, event, after, msg, time.monotonic()

    (
        (t_raw, ev_raw, after_raw, close_raw, end_raw),
        (t_comb, ev_comb, after_comb, close_comb, end_comb),
    ) = await asyncio.gather(watch("/ws/btcusdt@trade"), watch("/stream?streams=btcusdt@trade"))
    for t, ev, after, close, end in (
        (t_raw, ev_raw, after_raw, close_raw, end_raw),
        (t_comb, ev_comb, after_comb, close_comb, end_comb),
    ):
        assert close.type == aiohttp.WSMsgType.CLOSE and close.data == 1001
        assert 0.45 <= end - t < 1.5, "closed after the grace, not at once"
        assert after > 0, "data keeps flowing during the grace"
        assert abs(ev.event_ms - replica.clock.now_ms()) < 10_000
    assert assert_counted(replica, "shutdown") == 2


# --- WebSocket: message faults -------------------------------------------------------------------


async def test_drop_loses_one_trade_per_fault(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica, ids, decoder = await read_trades(make_replica, http, {"drop": FAST})
    assert ids == sorted(set(ids)), "in order, no duplicates"
    missing = sum(b - a - 1 for a, b in itertools.pairwise(ids))
    assert 1 <= missing <= assert_counted(replica, "drop")
    assert not decoder.errors


async def test_dup_sends_a_trade_twice(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica, ids, decoder = await read_trades(make_replica, http, {"dup": FAST})
    twice = [a for a, b in itertools.pairwise(ids) if a == b]
    assert 1 <= len(twice) <= assert_counted(replica, "dup")
    assert len(ids) - len(set(ids)) == len(twice), "only as neighbours"
    assert sorted(set(ids)) == list(range(ids[0], ids[-1] + 1)), "nothing lost"
    assert not decoder.errors


async def test_reorder_swaps_two_neighbouring_trades(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica, ids, decoder = await read_trades(make_replica, http, {"reorder": FAST})
    swaps = [i for i in range(len(ids) - 1) if ids[i] > ids[i + 1]]
    assert 1 <= len(swaps) <= assert_counted(replica, "reorder")
    assert all(ids[i] == ids[i + 1] + 1 for i in swaps), "neighbours swapped"
    assert sorted(ids) == list(range(min(ids), max(ids) + 1)), "nothing lost or doubled"
    assert not decoder.errors


async def test_garbage_inserts_an_undecodable_frame(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica, ids, decoder = await read_trades(make_replica, http, {"garbage": FAST})
    assert set(decoder.errors) == {"malformed"}
    assert 1 <= decoder.errors["malformed"] <= assert_counted(replica, "garbage")
    assert ids == list(range(ids[0], ids[-1] + 1)), "the real frames all arrive, in order"


async def test_poison_sends_a_nan_trade_or_an_id_far_ahead(
    make_replica: MakeReplica, http: aiohttp.ClientSession
) -> None:
    """Each poison is a copy of the next real trade, sent just before it: with ``"p":"NaN"`` (the decoder
    refuses it as an impossible value) or with its id far ahead (the candle builder's business, see
    test_aggregator and test_poison_e2e). Every real trade still arrives, once, in order."""
    replica = await make_replica(symbols=["BTCUSDT"], rate=200.0, history_ms=0, faults={"poison": FAST}, faults_seed=2)
    raw: list[bytes] = []
    async with http.ws_connect(replica.ws_url + "/ws/btcusdt@trade") as ws:
        deadline = time.monotonic() + 1.5
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await ws.receive(timeout=left)
            except TimeoutError:
                break
            raw.append(msg.data.encode())
    poisoned = [i for i, f in enumerate(raw) if b'"p":"NaN"' in f]
    decoder = StreamDecoder()
    events = [decoder.decode(f) for f in raw]
    trades = [e for e in events if isinstance(e, Trade)]
    far = [t for t in trades if t.trade_id >= FAR_AHEAD]  # the other kind: an id far ahead
    assert poisoned and far and len(poisoned) + len(far) <= assert_counted(replica, "poison")
    for i in poisoned:  # the real trade of the same id follows at once
        assert raw[i].replace(b'"p":"NaN"', b"") == re.sub(rb'"p":"[^"]*"', b"", raw[i + 1])
    ids = [t.trade_id for t in trades if t.trade_id < FAR_AHEAD]
    assert all(t.trade_id - FAR_AHEAD in ids for t in far), "a copy of a real trade, its id moved far ahead"
    assert decoder.errors == {"impossible_value": len(poisoned)}
    assert ids == list(range(ids[0], ids[-1] + 1)), "every real trade, once, in order"


def test_poison_needs_the_replicas_maker() -> None:
    with pytest.raises(ValueError, match="poison maker"):
        apply_message_fault("poison", [b"x"], lambda n: 0)
    assert apply_message_fault("poison", [b"a", b"b"], lambda n: 0, lambda p, pick: None) == [b"a", b"b"]
    assert apply_message_fault("poison", [b"a", b"b"], lambda n: 1, lambda p, pick: [b"!" + p]) == [b"a", b"!b", b"b"]


# --- REST ----------------------------------------------------------------------------------------


async def rest(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, Any, float]:
    t0 = time.monotonic()
    async with http.get(url) as r:
        return r.status, await r.json(content_type=None), r.headers, time.monotonic() - t0


async def test_http500_answers_one_request(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], history_ms=60_000, faults={"http500": 120.0})
    assert replica.faults is not None
    await until(lambda: replica.faults is not None and replica.faults.pending("http500"))
    status, body, headers, _ = await rest(http, replica.url + "/api/v3/time")
    assert status == 500 and body["code"] == -1000 and "X-MBX-USED-WEIGHT-1M" in headers
    if not replica.faults.pending("http500"):  # the event was taken: the next request is served
        status, body, _, _ = await rest(http, replica.url + "/api/v3/time")
        assert status == 200 and "serverTime" in body
    assert assert_counted(replica, "http500") >= 1


async def test_http429_has_retry_after_and_is_counted_apart(
    make_replica: MakeReplica, http: aiohttp.ClientSession
) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], history_ms=600_000, faults={"http429": 120.0})
    assert replica.faults is not None
    await until(lambda: replica.faults is not None and replica.faults.pending("http429"))
    url = replica.url + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=5"
    status, body, headers, _ = await rest(http, url)
    assert status == 429 and headers["Retry-After"] == "1" and "X-MBX-USED-WEIGHT-1M" in headers
    assert body["code"] == -1003 and body["msg"].startswith("Too much request weight used;")
    if not replica.faults.pending("http429"):
        status, rows, _, _ = await rest(http, url)
        assert status == 200 and len(rows) == 5
    assert replica.stats["429"] == 0, "an injected 429 is not a weight-limit 429"
    assert assert_counted(replica, "http429") >= 1
    assert "429s=0" in replica.summary()


async def test_slow_delays_one_answer(make_replica: MakeReplica, http: aiohttp.ClientSession) -> None:
    replica = await make_replica(symbols=["BTCUSDT"], history_ms=600_000, faults={"slow": 120.0}, slow_s=0.5)
    assert replica.faults is not None
    await until(lambda: replica.faults is not None and replica.faults.pending("slow"))
    url = replica.url + "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=3"
    status, rows, _, took = await rest(http, url)
    assert status == 200 and len(rows) == 3 and took >= 0.5
    if not replica.faults.pending("slow"):
        status, _, _, took = await rest(http, url)
        assert status == 200 and took < 0.4
    assert assert_counted(replica, "slow") >= 1


# --- the CLI -------------------------------------------------------------------------------------

CLI = [sys.executable, "-m", "deltafeed"]


@pytest.mark.parametrize(
    ("spec", "needle"), [("boom=1", "unknown fault kind 'boom'"), ("close=-2", "must be a number >= 0")]
)
def test_cli_bad_faults_exit_2_with_one_line(spec: str, needle: str) -> None:
    p = subprocess.run([*CLI, "replica", "binance", "--faults", spec], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "kind=rate" in lines[0], p.stderr


async def test_cli_reports_injected_faults_on_exit(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI, "replica", "binance", "--symbols", "BTCUSDT", "--rate", "100", "--history", "1m",
        "--faults", "drop=600,http500=600", "--faults-seed", "4",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = first.split()[-1]
        async with http.ws_connect(url.replace("http://", "ws://") + "/ws/btcusdt@trade") as ws:
            deadline = time.monotonic() + 1.0
            frames = 0
            while (left := deadline - time.monotonic()) > 0:
                try:
                    await ws.receive(timeout=left)
                except TimeoutError:
                    break
                frames += 1
            assert frames > 10
        status, _, _, _ = await rest(http, url + "/api/v3/time")
        assert status == 500  # an http500 event fell due during the second of streaming
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        last = out.decode().strip().splitlines()[-1]
        assert last.startswith("binance replica stopped:") and " faults: drop=" in last and " http500=1" in last
        assert int(last.split("drop=")[1].split()[0]) >= 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_every_replicas_poison_is_refused_by_its_decoder() -> None:
    """The OANDA, Finnhub and IG poison makers, fed real frames of their replicas' formats: each
    poison is a counted skip in the venue's decoder, and the real frame still decodes."""
    from deltafeed.venues.finnhub import codec as finnhub
    from deltafeed.venues.finnhub import replica as fh_replica
    from deltafeed.venues.ig import replica as ig_replica
    from deltafeed.venues.ig import tlcp
    from deltafeed.venues.oanda import codec as oanda
    from deltafeed.venues.oanda import replica as oanda_replica

    line = (
        b'{"type":"PRICE","instrument":"EUR_USD","time":"2026-11-13T15:00:00.123000000Z","status":"tradeable",'
        b'"tradeable":true,"bids":[{"price":"1.09274","liquidity":10000000},{"price":"1.09272","liquidity":10000000}],'
        b'"asks":[{"price":"1.09287","liquidity":10000000}],"closeoutBid":"1.09270","closeoutAsk":"1.09291"}'
    )
    poison = oanda_replica.poison_price(line, lambda n: 0)
    assert poison is not None and len(poison) == 1
    dec = oanda.PriceDecoder()
    assert dec.decode(poison[0]) is None and dec.errors == {"impossible_value": 1}
    assert dec.decode(line) is not None
    assert oanda_replica.poison_price(b'{"type":"HEARTBEAT","time":"x"}', lambda n: 0) is None

    msg = b'{"data":[{"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467},{"p":7297.5,"s":"BINANCE:BTCUSDT","t":1575526691135,"v":1}],"type":"trade"}'
    fdec = finnhub.StreamDecoder()
    for variant, kind in ((0, "malformed"), (1, "impossible_value")):
        bad = fh_replica.poison_message(msg, lambda n, v=variant: v)
        assert bad is not None and len(bad) == 1
        assert fdec.decode(bad[0]) is None and fdec.errors[kind] == 1, (bad, fdec.errors)
    assert b"1e400" in fh_replica.poison_message(msg, lambda n: 1)[0]  # type: ignore[index]
    assert fh_replica.poison_message(b'{"type":"ping"}', lambda n: 0) is None
    assert fdec.decode(msg) is not None

    tdec = tlcp.LineDecoder()
    for variant in (0, 1):
        evs = tdec.feed(ig_replica.poison_line(3, lambda n, v=variant: v) + "\r\n")
        assert len(evs) == 1 and isinstance(evs[0], tlcp.Malformed), evs
    assert tdec.errors == {"SUBCMD": 1, "SUBOK": 1}
    assert "SUBCMD" in tlcp.STATELESS_KINDS and "SUBOK" not in tlcp.STATELESS_KINDS
