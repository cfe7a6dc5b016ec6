"""A local Kraken spot server: WebSocket v2 (``/v2``) and public REST (``/0/public``) on one port, seeded market.

Speaks what ``ws.kraken.com/v2`` and ``api.kraken.com`` speak (../shared/PROTOCOLS-wave2.md section 4):
``subscribe``/``unsubscribe`` with one ack per symbol (``success:false`` with the symbol and the
reason for a pair it does not list), ``trade`` (a snapshot of the last 50, then batched updates with
a sequential ``trade_id`` per pair), ``ohlc`` on trade events keyed on ``interval_begin``,
``heartbeat`` once a second, ``ping``/``pong`` and a ``status`` message on connect; REST ``Time``,
``Assets``, ``AssetPairs``, ``OHLC`` (only the newest 720 rows, the last one forming, whatever
``since`` says) and ``Trades`` (``since``/``last`` in nanoseconds, at most 1000 rows), every answer
in Kraken's ``{"error":[...],"result":...}`` envelope, under a public call limit per IP
(``EGeneral:Too many requests`` beyond it).

Market data comes from :class:`~deltafeed.replicas.sim.MarketSim` (spelled without the slash
inside); the replica keeps every released trade for ``Trades`` and writes the tape itself, with
Kraken's trade ids (which a ``seqgap`` fault makes skip a number without losing a trade).

**Order books.** Each pair's book is a :class:`~deltafeed.replicas.books.SimBook` stepped with the
trades, prices and quantities written at the pair's precisions (``pair_decimals``, ``lot_decimals`` of
``AssetPairs``) as Kraken's checksum needs. ``book`` at depth 10, 25, 100, 500 or 1000: a ``snapshot`` of
the top ``depth`` levels, then an ``update`` per tick in which they changed: changed and new levels, and
qty 0 only for a level gone from the book (a level pushed below the depth is left to the client, which
truncates, as Kraken's guide says). Each message carries the CRC32 of the top 10 levels after it and a
``timestamp``, in microseconds strictly growing per pair, which keys the book tape (``<tape>.book.csv``).
Book faults: ``bookdrop``, ``bookdup``, ``bookreorder``, ``stalebook`` (a snapshot at least 50 steps old,
with its own timestamp and checksum) and ``badchecksum`` (an update whose checksum is off by one).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from deltafeed.model import BadInput, fmt
from deltafeed.net.frames import text_frame
from deltafeed.replicas.books import BookTape, DeltaFaults, SimBook
from deltafeed.replicas.bookviews import KeyLog, View
from deltafeed.replicas.faults import (
    MESSAGE_KINDS,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.server import ReplicaBase, close_ws
from deltafeed.replicas.sim import LOT_DECIMALS, MarketClock, MarketSim, TradeBatch
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.kraken import FAULT_KINDS
from deltafeed.venues.kraken import codec as kraken

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")
SNAPSHOT_TRADES = 50  # the trade channel's snapshot: the most recent 50 trades
HEARTBEAT_S = 1.0
FAR_AHEAD = 10**12  # how far ahead of the real id the second kind of poison puts its trade
_WS_CLOSE_TIMEOUT = 2.0

I64 = npt.NDArray[np.int64]


class _Trades:
    """Every released trade of one pair as growing columns (Kraken id, time, price ticks, lots, maker)."""

    def __init__(self) -> None:
        self._parts: list[tuple[I64, I64, I64, I64, npt.NDArray[np.bool_]]] = []
        self._cols: tuple[I64, I64, I64, I64, npt.NDArray[np.bool_]] | None = None
        self.count = 0

    def add(self, ids: I64, b: TradeBatch) -> None:
        self._parts.append((ids, b.times, b.ticks, b.lots, b.maker))
        self._cols = None
        self.count += len(ids)

    def cols(self) -> tuple[I64, I64, I64, I64, npt.NDArray[np.bool_]]:
        if self._cols is None:
            if not self._parts:
                e = np.empty(0, np.int64)
                self._cols = (e, e, e, e, np.empty(0, np.bool_))
            else:
                joined = tuple(np.concatenate([p[i] for p in self._parts]) for i in range(5))
                self._cols = joined  # type: ignore[assignment]
                self._parts = [joined]  # type: ignore[list-item]
        assert self._cols is not None
        return self._cols

    def ns(self) -> I64:
        """Each trade's time in ns, made unique: 100 ns per trade sharing the same millisecond."""
        _, times, *_ = self.cols()
        rank = np.arange(len(times), dtype=np.int64) - np.searchsorted(times, times, side="left")
        out: I64 = times * 1_000_000 + np.minimum(rank, 9999) * 100
        return out


class KrakenBook(SimBook):
    """A pair's book with prices and quantities written at the pair's precisions (the checksum's)."""

    def price(self, ticks: int) -> str:
        return f"{ticks / self.spec.price_scale:.{self.spec.price_decimals}f}"

    def qty(self, lots: int) -> str:
        return f"{lots / 10**LOT_DECIMALS:.{self.spec.lot_decimals}f}"


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    peer: str
    trades: set[str] = field(default_factory=set)  # symbols
    ohlc: dict[tuple[str, int], int] = field(default_factory=dict)  # (symbol, minutes) -> open pushed
    books: dict[str, int] = field(default_factory=dict)  # symbol -> the depth subscribed
    closing: bool = False
    stalled: bool = False
    doomed: bool = False
    heartbeats: bool = True
    next_heartbeat: float = 0.0

    def write(self, payloads: list[bytes]) -> None:
        if self.closing or self.stalled or self.transport.is_closing() or not payloads:
            return
        self.transport.write(b"".join(text_frame(p) for p in payloads))


def poison_trade(payload: bytes, pick: Any) -> list[bytes] | None:
    """The ``poison`` fault's frame for a trade message: the same message with its first trade's
    price beyond float range (``1e400``, read as infinity) or its id ``FAR_AHEAD`` on; None for other
    messages."""
    if not payload.startswith(b'{"channel":"trade"'):
        return None
    msg = json.loads(payload)
    item = msg["data"][0]
    msg["data"] = [item]  # the poisoned trade alone, just before the real message
    if pick(2) == 0:
        item["price"] = "__INF__"
        return [json.dumps(msg, separators=(",", ":")).replace('"__INF__"', "1e400").encode()]
    item["trade_id"] += FAR_AHEAD
    return [json.dumps(msg, separators=(",", ":")).encode()]


class _Limiter:
    """Kraken's public call counter per IP: +1 a call, decaying ``rate`` a second, refused above ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._ips: dict[str, tuple[float, float]] = {}

    def allow(self, ip: str) -> bool:
        now = time.monotonic()
        level, stamp = self._ips.get(ip, (0.0, now))
        level = max(0.0, level - (now - stamp) * self.rate)
        if level + 1 > self.burst:
            self._ips[ip] = (level, now)
            return False
        self._ips[ip] = (level + 1, now)
        return True


class KrakenReplica(ReplicaBase):
    """A Kraken spot server on ``host:port`` driven by a seeded simulator (see the module docstring).

    ``rest_rate``/``rest_burst``: the public REST call limit per IP. Faults (``faults=``): ``close``,
    ``reset``, ``stall``, ``drop``, ``dup``, ``reorder``, ``garbage``, ``poison`` on WebSocket
    messages; ``http500`` (503 ``EService:Unavailable``), ``http429`` (``EGeneral:Too many
    requests``), ``slow`` on REST; ``seqgap`` (a pair's ``trade_id`` skips a number, no trade is
    lost) and ``noheartbeat`` (a connection gets no more heartbeats).
    """

    venue = "kraken"
    _log = log
    tick_s = 0.02
    fault_kinds = FAULT_KINDS

    per_connection = kraken.SUBSCRIPTIONS_PER_CONNECTION

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        seed: int = 1,
        rate: float = 2.0,
        speed: float = 1.0,
        history_ms: int = 3_600_000,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_ms: int | None = None,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        rest_rate: float = kraken.PUBLIC_RATE_PER_S,
        rest_burst: int = kraken.PUBLIC_BURST,
        slow_s: float = 2.0,
        options: ReplicaOptions | None = None,
    ) -> None:
        rates = parse_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None
        self.options = o
        self.host, self.port = o.host, o.port
        self.symbols: dict[str, str] = {}  # WS v2 symbol -> the simulator's name
        for s in o.symbols:
            base, slash, quote = s.strip().upper().partition("/")
            if not slash or not base.isalnum() or not quote.isalnum():
                raise BadInput(f"symbol {s!r} is not a Kraken pair; write it as WS v2 does, e.g. BTC/USD")
            self.symbols[f"{base}/{quote}"] = base + quote
        self._by_sim = {v: k for k, v in self.symbols.items()}
        self._rest: dict[str, str] = {}  # altname, internal name, v2 and v1 names -> v2 symbol
        for v2 in self.symbols:
            alt, key = kraken.rest_names(v2)
            for name in (alt, key, v2, self._v1(v2)):
                self._rest[name] = v2
        self._clock = MarketClock(o.speed, o.start_ms)
        origin = self._clock.start_ms - o.history_ms
        # The market opens at ``origin``; its history is released here so the replica keeps (and tapes) it.
        self._sim = MarketSim(list(self.symbols.values()), seed=o.seed, rate=o.rate, start_ms=origin, history_ms=0)
        self._tape = TapeWriter.trades(o.tape, extra=("side",)) if o.tape is not None else None
        self._trades = {v2: _Trades() for v2 in self.symbols}
        self._id_offset = dict.fromkeys(self.symbols, 0)
        self.limiter = _Limiter(rest_rate, rest_burst)
        self.slow_s = slow_s
        self.stats: dict[str, int] = {
            "trades": 0, "connections": 0, "open_connections": 0, "requests": 0, "throttled": 0,
        }  # fmt: skip
        self._setup_faults(dict(o.faults), o.faults_seed)
        self._book_faults = DeltaFaults(self.faults, self._injected)
        book_tape = o.book_tape_path()
        self.book_tape = BookTape(book_tape) if book_tape is not None else None
        self._books: dict[str, SimBook] = {}  # v2 symbol -> its book, from the first book subscription
        self._book_key: dict[str, int] = {}  # v2 symbol -> the key (us) of its book as it is now
        self._book_keys = KeyLog()  # a recent book state's key, by its update id (stale snapshots)
        self._book_views: dict[tuple[str, int], View] = {}  # (v2 symbol, depth) -> what was last sent
        self._conns: dict[_Conn, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._store(self._sim.advance_to(self._clock.start_ms))

    @staticmethod
    def _v1(v2: str) -> str:
        base, _, quote = v2.partition("/")
        return f"{'XBT' if base == 'BTC' else 'XDG' if base == 'DOGE' else base}/{quote}"

    @property
    def sim(self) -> MarketSim:
        return self._sim

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/v2``, as ``wss://ws.kraken.com/v2``."""
        return f"ws://{self.netloc}/v2"

    async def stop(self) -> None:
        await self._stop_pump()
        for c in list(self._conns):
            c.closing = True
            if c.stalled:
                c.transport.abort()
        await asyncio.gather(
            *(close_ws(c, 1001, b"server stopping", _WS_CLOSE_TIMEOUT) for c in self._conns if not c.stalled),
            return_exceptions=True,
        )
        for t in list(self._tasks):
            t.cancel()
        await self._stop_server()
        if self._tape is not None:
            self._tape.close()
        self._sim.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"kraken replica stopped: trades={s['trades']} connections={s['connections']} "
            f"requests={s['requests']} throttled={s['throttled']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- the market --

    def _store(self, batches: Mapping[str, TradeBatch]) -> dict[str, tuple[I64, TradeBatch]]:
        """Keep and tape released trades under their Kraken ids; returns them per v2 symbol."""
        out: dict[str, tuple[I64, TradeBatch]] = {}
        for sim_sym, b in batches.items():
            v2 = self._by_sim[sim_sym]
            ids = b.ids() + self._id_offset[v2]
            self._trades[v2].add(ids, b)
            out[v2] = (ids, b)
            self.stats["trades"] += len(b)
            if self._tape is not None:
                self._tape.write(
                    v2,
                    ids.tolist(),
                    b.times.tolist(),
                    [fmt(p) for p in b.prices().tolist()],
                    [fmt(q) for q in b.qtys().tolist()],
                    ["sell" if m else "buy" for m in b.maker.tolist()],
                )
        return out

    def _seqgap(self, batches: Mapping[str, TradeBatch]) -> None:
        """The ``seqgap`` fault: the next trade of a pair with trades now gets an id one further on."""
        f = self.faults
        if f is None or not f.pending("seqgap") or not batches:
            return
        f.due("seqgap")
        names = sorted(batches)
        v2 = self._by_sim[names[f.pick(len(names))]]
        self._id_offset[v2] += 1
        self._injected("seqgap", v2)

    def _trade_items(self, v2: str, ids: I64, b: TradeBatch) -> list[bytes]:
        spec = b.spec
        return [
            kraken.trade_item(v2, i, t, tk / spec.price_scale, lots / 100_000, m)
            for i, t, tk, lots, m in zip(
                ids.tolist(), b.times.tolist(), b.ticks.tolist(), b.lots.tolist(), b.maker.tolist(), strict=True
            )
        ]

    def _ohlc_item(self, v2: str, minutes: int, open_ms: int, now: int) -> bytes | None:
        table = self._sim.kline_table(self.symbols[v2], minutes * 60_000, open_ms, open_ms, 1, now)
        if not len(table):
            return None
        c = table.candles()[0]
        vwap = float(table.quote_volume[0] / table.volume[0]) if table.volume[0] > 0 else c.close
        return kraken.ohlc_item(v2, minutes, c, vwap, now)

    def _tick(self) -> None:
        now = self._clock.now_ms()
        batches = self._sim.advance_to(now)
        self._step_books(batches, now)
        book_msgs = self._book_updates()  # every view follows its book, subscribers or not
        if batches:
            self._seqgap(batches)
        new = self._store(batches)
        if not self._conns:
            return
        wall = time.monotonic()
        items = {v2: self._trade_items(v2, ids, b) for v2, (ids, b) in new.items()}
        out: dict[_Conn, list[bytes]] = {}
        for conn in self._conns:
            if conn.closing or conn.stalled:
                continue
            msgs: list[bytes] = []
            for v2 in sorted(conn.trades & items.keys()):
                msgs.append(kraken.trade_message(items[v2]))
            for (v2, minutes), pushed in list(conn.ohlc.items()):
                if v2 not in items:
                    continue
                cur = now - now % (minutes * 60_000)
                if pushed and pushed < cur:  # the candle it last pushed ended: its last state first
                    done = self._ohlc_item(v2, minutes, pushed, now)
                    if done is not None:
                        msgs.append(kraken.ohlc_message([done], now))
                item = self._ohlc_item(v2, minutes, cur, now)
                if item is not None:
                    msgs.append(kraken.ohlc_message([item], now))
                conn.ohlc[(v2, minutes)] = cur
            for sym, depth in conn.books.items():
                msgs += book_msgs.get((sym, depth), ())
            if (conn.trades or conn.ohlc or conn.books) and conn.heartbeats and wall >= conn.next_heartbeat:
                conn.next_heartbeat = wall + HEARTBEAT_S
                msgs.append(b'{"channel":"heartbeat"}')
            if msgs:
                out[conn] = msgs
        if self.faults is not None:
            self._faults_before_send(out)
        for conn, msgs in out.items():
            conn.write(msgs)
        if self.faults is not None:
            self._faults_after_send(out)

    # -- WebSocket faults --

    def _victims(self, out: dict[_Conn, list[bytes]], frames: int) -> list[_Conn]:
        return [
            c
            for c, msgs in out.items()
            if len(msgs) >= frames and not (c.closing or c.stalled or c.doomed or c.transport.is_closing())
        ]

    def _faults_before_send(self, out: dict[_Conn, list[bytes]]) -> None:
        f = self.faults
        assert f is not None
        for kind in ("stall", "noheartbeat", *MESSAGE_KINDS):
            if kind not in f or not f.pending(kind):
                continue
            need = 1 if kind in ("stall", "noheartbeat") else MESSAGE_KINDS[kind]
            cands = self._victims(out, need)
            if kind == "noheartbeat":
                cands = [c for c in cands if c.heartbeats]
            if not cands:
                continue
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                out.pop(conn)
            elif kind == "noheartbeat":
                conn.heartbeats = False
            else:
                before = len(out[conn])
                out[conn] = apply_message_fault(kind, out[conn], f.pick, poison_trade)
                if kind == "poison" and len(out[conn]) == before:
                    continue  # nothing to poison this tick: taken, not injected
            self._injected(kind, conn.peer)

    def _faults_after_send(self, out: dict[_Conn, list[bytes]]) -> None:
        f = self.faults
        assert f is not None

        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(close_ws(conn, (1000, 1001)[f.pick(2)], b"", _WS_CLOSE_TIMEOUT))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        actions = {k: a for k, a in (("close", close), ("reset", reset)) if k in f}
        inject_connection_faults(f, lambda: self._victims(out, 1), actions, lambda k, c: self._injected(k, c.peer))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- WebSocket --

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, autoping=False, timeout=_WS_CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return self._respond(400, kraken.error_body("EGeneral:Invalid arguments"))
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        conn = _Conn(ws, transport, request.remote or "?")
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
        status = {
            "channel": "status",
            "type": "update",
            "data": [
                {
                    "version": "2.0.0",
                    "system": "online",
                    "api_version": "v2",
                    "connection_id": self.stats["connections"],
                }
            ],
        }
        conn.write([msgspec.json.encode(status)])
        try:
            async for msg in ws:
                if conn.stalled:
                    continue  # a stalled server reads on but answers nothing
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    data = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
                    self._control(conn, data)
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
            if conn.stalled:
                while not transport.is_closing():
                    await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.closing = True
            self._conns.pop(conn, None)
            self.stats["open_connections"] -= 1
            self._drop_unused_views()
        return ws

    def _now_text(self) -> str:
        """The venue's time as its answers' ``time_in``/``time_out`` give it."""
        return kraken.ms_rfc3339(self._clock.now_ms())

    def _reply(self, conn: _Conn, body: dict[str, Any], time_in: str, req_id: Any) -> None:
        body = body | {"time_in": time_in, "time_out": self._now_text()}
        if req_id is not None:
            body["req_id"] = req_id
        conn.write([msgspec.json.encode(body)])

    def _control(self, conn: _Conn, text: str) -> None:
        time_in = self._now_text()
        try:
            msg = json.loads(text)
        except ValueError:
            self._reply(conn, {"error": "EGeneral:Invalid arguments", "success": False}, time_in, None)
            return
        if not isinstance(msg, dict):
            self._reply(conn, {"error": "EGeneral:Invalid arguments", "success": False}, time_in, None)
            return
        method, req_id = msg.get("method"), msg.get("req_id")
        if method == "ping":
            self._reply(conn, {"method": "pong"}, time_in, req_id)
            return
        if method not in ("subscribe", "unsubscribe"):
            self._reply(conn, {"error": "Method not found", "method": method, "success": False}, time_in, req_id)
            return
        params = msg.get("params")
        channel = params.get("channel") if isinstance(params, dict) else None
        symbols = params.get("symbol") if isinstance(params, dict) else None
        fail = {"method": method, "success": False}
        if channel not in ("trade", "ohlc", "book", "heartbeat", "status"):
            self._reply(conn, fail | {"error": f"Channel {str(channel)[:40]} not found"}, time_in, req_id)
            return
        assert isinstance(params, dict)
        if channel in ("heartbeat", "status"):
            self._reply(conn, {"method": method, "result": {"channel": channel}, "success": True}, time_in, req_id)
            return
        if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
            self._reply(conn, fail | {"error": "EGeneral:Invalid arguments"}, time_in, req_id)
            return
        interval = params.get("interval", 1)
        if channel == "ohlc" and interval not in kraken.ALL_INTERVALS:
            self._reply(conn, fail | {"error": "EGeneral:Invalid arguments:interval"}, time_in, req_id)
            return
        depth = params.get("depth", 10)
        if channel == "book" and depth not in kraken.BOOK_DEPTHS:
            self._reply(conn, fail | {"error": "EGeneral:Invalid arguments:depth"}, time_in, req_id)
            return
        snapshot = params.get("snapshot", True) is not False
        now = self._clock.now_ms()
        for sym in symbols:
            if sym not in self.symbols:
                # Kraken's wording for an unlisted pair [UNVERIFIED]; the shape is v2's error answer.
                self._reply(conn, fail | {"error": "Currency pair not supported", "symbol": sym}, time_in, req_id)
                continue
            held = len(conn.trades) + len(conn.ohlc) + len(conn.books)
            if method == "subscribe" and not self._may_subscribe(held):
                # The connection carries all it may: refused like a pair (wording [UNVERIFIED]).
                self._reply(conn, fail | {"error": "Exceeded subscription limit", "symbol": sym}, time_in, req_id)
                continue
            result: dict[str, Any] = {"channel": channel, "symbol": sym}
            if channel == "ohlc":
                result["interval"] = interval
            if channel == "book":
                result["depth"] = depth
            if method == "subscribe":
                result["snapshot"] = snapshot
            self._reply(conn, {"method": method, "result": result, "success": True}, time_in, req_id)
            if method == "unsubscribe":
                if channel == "trade":
                    conn.trades.discard(sym)
                elif channel == "book":
                    conn.books.pop(sym, None)
                    self._drop_unused_views()
                else:
                    conn.ohlc.pop((sym, interval), None)
                continue
            if channel == "book":
                conn.books[sym] = depth
                view = self._book_views.get((sym, depth))
                if view is None:
                    view = self._book_views[(sym, depth)] = View(self._book(sym), depth, prune=False)
                if snapshot:
                    conn.write([self._book_snapshot(sym, view)])
            elif channel == "trade":
                conn.trades.add(sym)
                if snapshot:
                    conn.write([kraken.trade_message(self._snapshot(sym), snapshot=True)])
            else:
                cur = now - now % (interval * 60_000)
                conn.ohlc[(sym, interval)] = cur
                item = self._ohlc_item(sym, interval, cur, now) if snapshot else None
                if item is not None:
                    conn.write([kraken.ohlc_message([item], now, snapshot=True)])

    # -- the book --

    def _book(self, sym: str) -> SimBook:
        """The pair's book, started at its last trade on first use (and taped whole)."""
        book = self._books.get(sym)
        if book is None:
            name = self.symbols[sym]
            last_id, price = self._sim.last_trade(name)
            spec = self._sim.specs[name]
            book = self._books[sym] = KrakenBook(spec, round(price * spec.price_scale), False, max(last_id, 0) + 1)
            now = self._clock.now_ms()
            self._book_keys.add(book.u, self._next_key(sym, now))
            if self.book_tape is not None:
                self.book_tape.write_book(sym, self._book_key[sym], now, book)
        return book

    def _next_key(self, sym: str, now_ms: int) -> int:
        """A new key (us) for the pair's book: its time, one more than the last when that is later."""
        key = max(now_ms * 1000, self._book_key.get(sym, 0) + 1)
        self._book_key[sym] = key
        return key

    def _step_books(self, batches: Mapping[str, TradeBatch], now: int) -> None:
        for name, b in batches.items():
            sym = self._by_sim[name]
            book = self._books.get(sym)
            if book is None:
                continue
            ev = book.step(int(b.ticks[-1]), bool(b.maker[-1]))
            book.events.clear()
            key = self._next_key(sym, now)
            self._book_keys.add(book.u, key)
            if self.book_tape is not None:
                self.book_tape.write(sym, key, now, book, ev.bids, ev.asks)

    def _drop_unused_views(self) -> None:
        used = {(sym, d) for c in self._conns for sym, d in c.books.items()}
        for k in [k for k in self._book_views if k not in used]:
            del self._book_views[k]

    @staticmethod
    def _checksum(view: View, bids: dict[int, int], asks: dict[int, int]) -> int:
        top_a = view.texts(dict(sorted(asks.items())[:10]), False)
        top_b = view.texts(dict(sorted(bids.items(), reverse=True)[:10]), True)
        return kraken.book_checksum(top_a, top_b)

    def _book_snapshot(self, sym: str, view: View) -> bytes:
        """A ``book`` snapshot of the view (or, for a ``stalebook`` fault, of the book as it was at least
        50 steps ago, with that state's key and checksum)."""
        book = view.book
        if self._book_faults.stale():
            u, bids_t, asks_t = book.stale_levels(view.depth)
            key = self._book_keys.get(u)
            if key is not None:
                b = [(p, q) for p, q in bids_t]
                a = [(p, q) for p, q in asks_t]
                crc = kraken.book_checksum(a[:10], b[:10])
                return kraken.book_message(sym, True, b, a, crc, key)
        crc = self._checksum(view, view.bids, view.asks)
        bids, asks = view.texts(view.bids, True), view.texts(view.asks, False)
        return kraken.book_message(sym, True, bids, asks, crc, self._book_key[sym])

    def _book_updates(self) -> dict[tuple[str, int], list[bytes]]:
        """Each subscribed (pair, depth)'s update of this tick, with the book faults due."""
        out: dict[tuple[str, int], list[bytes]] = {}
        for (sym, depth), view in self._book_views.items():
            ch = view.advance()
            if ch is None:
                continue
            crc = self._checksum(view, view.bids, view.asks)
            if self._book_faults.bad_checksum():
                crc = (crc + 1) & 0xFFFFFFFF
            bids, asks = view.texts(ch[0], True), view.texts(ch[1], False)
            msg = kraken.book_message(sym, False, bids, asks, crc, self._book_key[sym])
            out[(sym, depth)] = self._book_faults.deltas((sym, depth), [msg])
        return out

    def _snapshot(self, sym: str) -> list[bytes]:
        ids, times, ticks, lots, maker = (c[-SNAPSHOT_TRADES:] for c in self._trades[sym].cols())
        scale = self._sim.specs[self.symbols[sym]].price_scale
        return [
            kraken.trade_item(sym, i, t, tk / scale, q / 100_000, m)
            for i, t, tk, q, m in zip(
                ids.tolist(), times.tolist(), ticks.tolist(), lots.tolist(), maker.tolist(), strict=True
            )
        ]

    # -- REST --

    def _respond(self, status: int, body: bytes) -> web.Response:
        return web.Response(status=status, body=body, headers={"Content-Type": "application/json; charset=utf-8"})

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path in ("", "/v2") and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._ws(request)
        self.stats["requests"] += 1
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        route = {
            "/0/public/Time": self._time,
            "/0/public/SystemStatus": self._system_status,
            "/0/public/Assets": self._assets,
            "/0/public/AssetPairs": self._asset_pairs,
            "/0/public/OHLC": self._ohlc,
            "/0/public/Trades": self._trades_page,
        }.get(path)
        if route is None:
            return self._respond(404, kraken.error_body("EGeneral:Unknown method"))
        if not self.limiter.allow(request.remote or "?"):
            self.stats["throttled"] += 1
            return self._respond(429, kraken.error_body("EGeneral:Too many requests"))
        self._tick()  # "now" includes every trade up to this instant
        try:
            return self._respond(200, kraken.ok_body(route(request.query)))
        except _Refused as e:
            return self._respond(200, kraken.error_body(str(e)))

    async def _rest_fault(self) -> web.Response | None:
        f = self.faults
        assert f is not None
        if "slow" in f and f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if "http500" in f and f.due("http500"):
            self._injected("http500")
            return self._respond(503, kraken.error_body("EService:Unavailable"))
        if "http429" in f and f.due("http429"):
            self._injected("http429")
            return self._respond(429, kraken.error_body("EGeneral:Too many requests"))
        return None

    def _time(self, q: Mapping[str, str]) -> Any:
        now = self._clock.now_ms() // 1000
        return {"unixtime": now, "rfc1123": time.strftime("%a, %d %b %y %H:%M:%S +0000", time.gmtime(now))}

    def _system_status(self, q: Mapping[str, str]) -> Any:
        return {"status": "online", "timestamp": kraken.ms_rfc3339(self._clock.now_ms())[:19] + "Z"}

    def _assets(self, q: Mapping[str, str]) -> Any:
        out: dict[str, Any] = {}
        for v2 in self.symbols:
            for code in v2.split("/"):
                old = {"BTC": "XBT", "DOGE": "XDG"}.get(code, code)
                key = (
                    f"X{old}"
                    if old in ("XBT", "ETH", "XDG", "LTC", "XRP")
                    else f"Z{old}"
                    if old in ("USD", "EUR")
                    else old
                )
                out[key] = {
                    "aclass": "currency",
                    "altname": old,
                    "decimals": 10,
                    "display_decimals": 5,
                    "status": "enabled",
                }
        return out

    def _pair_of(self, q: Mapping[str, str]) -> str:
        name = q.get("pair", "")
        if name not in self._rest:
            raise _Refused("EQuery:Unknown asset pair")
        return self._rest[name]

    def _asset_pairs(self, q: Mapping[str, str]) -> Any:
        wanted = list(self.symbols)
        if q.get("pair"):
            wanted = []
            for name in q["pair"].split(","):
                if name not in self._rest:
                    raise _Refused("EQuery:Unknown asset pair")
                wanted.append(self._rest[name])
        out: dict[str, Any] = {}
        for v2 in wanted:
            alt, key = kraken.rest_names(v2)
            spec = self._sim.specs[self.symbols[v2]]
            base, quote = alt[: len(alt) - len(v2.split("/")[1])], v2.split("/")[1]
            out[key] = {
                "altname": alt,
                "wsname": self._v1(v2),
                "aclass_base": "currency",
                "base": f"X{base}" if key != alt else base,
                "aclass_quote": "currency",
                "quote": f"Z{quote}" if key != alt else quote,
                "lot": "unit",
                "cost_decimals": 5,
                "pair_decimals": spec.price_decimals,
                "lot_decimals": spec.lot_decimals,
                "lot_multiplier": 1,
                "leverage_buy": [],
                "leverage_sell": [],
                "fees": [[0, 0.4]],
                "fees_maker": [[0, 0.25]],
                "fee_volume_currency": "ZUSD",
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": spec.lot,
                "costmin": "0.5",
                "tick_size": spec.tick,
                "status": "online",
            }
        return out

    def _ohlc(self, q: Mapping[str, str]) -> Any:
        v2 = self._pair_of(q)
        try:
            minutes = int(q.get("interval", "1"))
            since = int(q["since"]) if q.get("since") else None
        except ValueError:
            raise _Refused("EGeneral:Invalid arguments") from None
        if minutes not in kraken.ALL_INTERVALS:
            raise _Refused("EGeneral:Invalid arguments")
        now = self._clock.now_ms()
        # The newest 720 entries, the forming one last, whatever ``since`` asks for.
        table = self._sim.kline_table(self.symbols[v2], minutes * 60_000, None, None, kraken.OHLC_KEEP, now)
        dec = self._sim.specs[self.symbols[v2]].price_decimals
        rows = []
        for c, qv in zip(table.candles(), table.quote_volume.tolist(), strict=True):
            if since is not None and c.open_time // 1000 <= since:
                continue  # ``since`` is exclusive [UNVERIFIED]
            vwap = qv / c.volume if c.volume > 0 else c.close
            rows.append([
                c.open_time // 1000, f"{c.open:.{dec}f}", f"{c.high:.{dec}f}", f"{c.low:.{dec}f}",
                f"{c.close:.{dec}f}", f"{vwap:.{dec + 1}f}", fmt(c.volume), c.trades,
            ])  # fmt: skip
        opens = table.open_time.tolist()
        last = opens[-2] // 1000 if len(opens) > 1 else (opens[-1] // 1000 if opens else 0)
        return {kraken.rest_names(v2)[1]: rows, "last": last}

    def _trades_page(self, q: Mapping[str, str]) -> Any:
        v2 = self._pair_of(q)
        try:
            count = int(q.get("count", kraken.TRADES_PAGE))
            since = int(q["since"]) if q.get("since") else None
        except ValueError:
            raise _Refused("EGeneral:Invalid arguments") from None
        count = max(1, min(count, kraken.TRADES_PAGE))
        store = self._trades[v2]
        ids, _, ticks, lots, maker = store.cols()
        ns = store.ns()
        if since is None:
            lo = max(0, len(ns) - count)
        else:
            if since < 10**12:  # whole seconds, as older clients send [UNVERIFIED]
                since *= 1_000_000_000
            lo = int(np.searchsorted(ns, since, side="right"))
        hi = min(len(ns), lo + count)
        scale = self._sim.specs[self.symbols[v2]].price_scale
        dec = self._sim.specs[self.symbols[v2]].price_decimals
        rows = []
        for i in range(lo, hi):
            n = int(ns[i])
            rows.append([
                f"{int(ticks[i]) / scale:.{dec}f}", f"{int(lots[i]) / 100_000:.8f}",
                msgspec.Raw(f"{n // 1_000_000_000}.{n % 1_000_000_000 // 100:07d}".encode()),
                "s" if maker[i] else "b", "m", "", int(ids[i]),
            ])  # fmt: skip
        last = int(ns[hi - 1]) if hi > lo else (since if since is not None else 0)
        return {kraken.rest_names(v2)[1]: rows, "last": str(last)}


class _Refused(Exception):
    """A request Kraken answers with an error array (HTTP 200)."""
