"""A local Bybit v5 public market-data server (spot and linear): REST and WebSocket on one port, seeded market.

Speaks what ``api.bybit.com`` and ``stream.bybit.com`` speak for public data (../shared/PROTOCOLS-wave2.md
section 2): ``/v5/market/{time,instruments-info,kline,recent-trade}`` with the 600-requests-per-5-s IP
limit (403 "access too frequent" beyond, and a ban), and ``/v5/public/{spot,linear}`` WebSockets with
``op`` subscribe / unsubscribe / ping, ``publicTrade.<symbol>``, ``kline.<interval>.<symbol>`` and
``orderbook.<depth>.<symbol>`` topics, spot's 10-args cap, and the 10-minute cut of a connection without
ping or data. Third-party clients
(ccxt.pro, pybit) work against it with only their URLs changed.

Each category is its own seeded market (:class:`~deltafeed.replicas.sim.MarketSim`); a symbol names its
category as deltafeed does (``BTCUSDT`` spot, ``LINEAR:BTCUSDT`` linear), and so does the tape's
``symbol`` column (the only way two markets of one Bybit name can be told apart there). The tape's
``trade_id`` is the id the replica sends: a large decimal on spot, a UUID on linear, neither a counter.

**Order books.** Each market's book is a :class:`~deltafeed.replicas.books.SimBook`, stepped at every
tick with trades and written to the book tape with ``seq`` = the book's update id after the step, which
is the ``seq`` (cross sequence) of the messages. An ``orderbook.<depth>`` topic (depths 1, 50, 200, 1000)
starts with a ``snapshot`` of the top ``depth`` levels, then sends a ``delta`` per tick in which its top
levels changed (a level leaving the top ``depth`` goes with size 0); its ``u`` grows by one per message
of the topic, as Bybit's does. Depth 1 sends snapshots only, and the unchanged one again every 3 s
with the same ``u``. Book faults: ``bookdrop``, ``bookdup``, ``bookreorder`` (on a topic's deltas) and
``stalebook`` (a snapshot of the book as it was at least 50 steps ago, with that state's ``seq`` and an
older ``u``), and ``bookrestart``: a topic starts over as after a restart of Bybit's service, with a
snapshot whose ``u`` is 1 ("Occasionally, you'll receive "u"=1, which is a snapshot data due to the
restart of the service").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec
from aiohttp import WSMsgType, web

from deltafeed.model import fmt
from deltafeed.net.frames import text_header
from deltafeed.replicas.books import BOOK_FAULTS, BookTape, DeltaFaults, SimBook
from deltafeed.replicas.bookviews import View
from deltafeed.replicas.faults import (
    MESSAGE_KINDS,
    REST_KINDS,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.server import ReplicaBase, close_ws
from deltafeed.replicas.sim import Grid, MarketClock, MarketSim, TradeBatch
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.bybit import codec

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "LINEAR:BTCUSDT")
#: What this replica injects: no ``shutdown`` (Bybit announces none) nor ``seqgap``/``noheartbeat``
#: (no per-connection sequence, and the server sends no heartbeat); ``silence`` keeps a connection
#: open and answering pings with no data.
FAULT_KINDS: tuple[str, ...] = (
    "close", "reset", "stall", "silence", *MESSAGE_KINDS, *REST_KINDS, *(k for k in BOOK_FAULTS if k != "badchecksum"),
    "bookrestart",
)  # fmt: skip
TICK_SECONDS = 0.02
IDLE_CUT_S = 600.0  # "no ping-pong and no stream data ... cut off after 10 minutes"
KLINE_PUSH_S = 1.0  # wall seconds between pushes of an open kline
RECENT_TRADES_MAX = 1000  # /v5/market/recent-trade's largest limit (linear)
SPOT_ID_BASE = 2_100_000_000_000_000_000  # spot ids look like "2100000000007764263"
_WS_CLOSE_TIMEOUT = 2.0
LEVEL1_RESEND_S = 3.0  # orderbook.1: the unchanged snapshot again after 3 s
STALE_U_BACK = 10  # a stale snapshot's ``u``: this much older than the topic's
TOO_FREQUENT = b"403 Forbidden: access too frequent"  # Bybit's HTTP 403 text [UNVERIFIED beyond the words]


def spot_trade_id(n: int) -> str:
    """The spot id of the sim's ``n``-th trade: a large decimal, strictly increasing, not consecutive."""
    return str(SPOT_ID_BASE + 3 * n + n % 2)


def linear_trade_id(symbol: str, n: int) -> str:
    """The linear id of the sim's ``n``-th trade: a UUID, stable for a seed."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{symbol}:{n}"))


class _Conn:
    """One WebSocket client: its category, topics and fault state."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, category: str, peer: str) -> None:
        self.ws = ws
        self.transport = transport
        self.category = category
        self.peer = peer
        self.conn_id = str(uuid.uuid4())
        self.topics: dict[str, None] = {}
        self.closing = False
        self.stalled = False  # nothing more at all (no data, replies or pongs)
        self.silent = False  # no data; replies and pongs still
        self.doomed = False
        self.last_active = time.monotonic()
        self.snapshots: list[bytes] = []  # book snapshots to send after the subscribe's ack

    def write(self, payloads: list[bytes]) -> None:
        tr = self.transport
        if self.closing or self.stalled or self.silent or tr.is_closing() or not payloads:
            return
        tr.write(b"".join([text_header(len(p)) + p for p in payloads]))
        self.last_active = time.monotonic()

    async def reply(self, body: bytes) -> None:
        if not self.closing and not self.stalled and not self.ws.closed:
            await self.ws.send_str(body.decode())


@dataclass(eq=False)
class _Kline:
    """A kline topic with subscribers: the open candle last pushed and when to push it again."""

    category: str
    name: str
    interval: str
    grid: Grid
    subs: dict[_Conn, None] = field(default_factory=dict)
    open_time: int | None = None
    next_push: float = 0.0


@dataclass(eq=False)
class _BookTopic:
    """An ``orderbook`` topic with subscribers: the view of the book it last sent and its ``u``."""

    category: str
    name: str
    depth: int
    view: View
    u: int
    subs: dict[_Conn, None] = field(default_factory=dict)
    next_resend: float = 0.0


class _IpWindow:
    """Bybit's IP limit: ``limit`` requests per ``window_s`` (fixed windows of wall time); beyond it a
    403, and every request for ``ban_s`` more seconds gets a 403 too."""

    def __init__(self, limit: int, window_s: float, ban_s: float) -> None:
        self.limit, self.window_s, self.ban_s = limit, window_s, ban_s
        self._ips: dict[str, list[float]] = {}  # ip -> [window index, count, banned until]

    def charge(self, ip: str) -> bool:
        now = time.time()
        st = self._ips.setdefault(ip, [-1.0, 0.0, 0.0])
        if st[2] > now:
            return False
        w = float(int(now // self.window_s))
        if w != st[0]:
            st[0], st[1] = w, 0.0
        st[1] += 1
        if st[1] > self.limit:
            st[2] = now + self.ban_s
            return False
        return True


class BybitReplica(ReplicaBase):
    """A Bybit v5 public market-data server on ``host:port`` (0 = any free port), driven by a seeded
    simulator per category. ``requests_per_5s`` and ``ban_s`` are the IP limit and the length of its
    ban; a ``slow`` REST answer comes ``slow_s`` late; an ``http429`` fault answers one request with the
    venue's 403 "access too frequent" and a ``Retry-After: 1`` (a ban shortened for tests: Bybit itself
    names no time). ``refuse`` maps symbols (``BTCUSDT``, ``LINEAR:BTCUSDT``) to the ``ret_msg`` their
    subscriptions are refused with, as Bybit refuses a topic it no longer serves."""

    venue = "bybit"
    per_connection = codec.TOPICS_PER_CONNECTION
    tick_s = TICK_SECONDS
    _log = log
    fault_kinds: ClassVar[tuple[str, ...]] = FAULT_KINDS

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        seed: int = 1,
        rate: float = 10.0,
        speed: float = 1.0,
        history_ms: int = 3_600_000,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_ms: int | None = None,
        requests_per_5s: int = codec.REQUESTS_PER_WINDOW,
        ban_s: float = 600.0,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        slow_s: float = 2.0,
        refuse: Mapping[str, str] | None = None,
        category: str = "spot",
        ack_delay_s: float = 0.0,
        options: ReplicaOptions | None = None,
    ) -> None:
        rates = parse_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        self.options = o
        self.host, self.port = o.host, o.port
        self._clock = MarketClock(o.speed, o.start_ms)
        start = self._clock.start_ms
        #: The category of symbols that name none (deltafeed's ``[venues.bybit] category``).
        self.category = category
        by_cat: dict[str, list[str]] = {}
        for s in o.symbols:
            try:
                cat, name = codec.parse_symbol(s, category)
            except ValueError as exc:
                from deltafeed.model import BadInput

                raise BadInput(f"--symbols {s!r}: {exc}") from None
            by_cat.setdefault(cat, [])
            if name not in by_cat[cat]:
                by_cat[cat].append(name)
        # Each category its own market (the seed moved for linear), generated from the market's
        # origin so that the history can be taped with the ids the replica sends.
        self._sims = {
            cat: MarketSim(names, seed=o.seed + i, rate=o.rate, start_ms=start - o.history_ms, history_ms=0)
            for i, (cat, names) in enumerate(by_cat.items())
        }
        self._tape = TapeWriter.trades(o.tape, extra=("side",)) if o.tape is not None else None
        book_tape = o.book_tape_path()
        #: Every change of every book, keyed by the ``seq`` its messages carry (see the module docstring).
        self.book_tape = BookTape(book_tape) if book_tape is not None else None
        self._books: dict[tuple[str, str], SimBook] = {}
        self._book_topics: dict[tuple[str, str, int], _BookTopic] = {}
        self.stats: dict[str, int] = {"trades": 0, "connections": 0, "open_connections": 0, "requests": 0, "403": 0}
        self._setup_faults(dict(o.faults), o.faults_seed)
        self._book_faults = DeltaFaults(self.faults, self._injected)
        self.slow_s = slow_s
        #: Seconds before a subscribe or unsubscribe is answered: Bybit's ack comes a network round trip
        #: later, and pybit 5.x records a subscription only after sending it (its receive thread fails
        #: with a KeyError on an ack that comes first, and closes the connection), so a test driving
        #: pybit gives it a few tens of milliseconds, as any real network does.
        self.ack_delay_s = ack_delay_s
        #: Symbols (as the tape names them) whose subscriptions are refused, with the reason sent.
        self.refuse = dict(refuse or {})
        self.limiter = _IpWindow(requests_per_5s, codec.WINDOW_S, ban_s)
        self._conns: dict[_Conn, None] = {}
        self._trade_subs: dict[tuple[str, str], dict[_Conn, None]] = {}
        self._klines: dict[tuple[str, str, str], _Kline] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._seq = 1_000_000
        #: The newest trades per (category, name), for /v5/market/recent-trade.
        self._recent: dict[tuple[str, str], deque[tuple[str, int, str, str, bool]]] = {}
        self._release(start)

    # -- public surface --

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT``; append ``/v5/public/<category>``."""
        return f"ws://{self.netloc}"

    def sim(self, category: str = "spot") -> MarketSim:
        return self._sims[category]

    async def stop(self) -> None:
        await self._stop_pump()
        conns = [c for c in self._conns if not c.stalled]
        for c in self._conns:
            if c.stalled:
                c.closing = True
                c.transport.abort()
        if conns:
            await asyncio.gather(*(close_ws(c, 1001, b"server stopping", _WS_CLOSE_TIMEOUT) for c in conns))
        for t in list(self._tasks):
            t.cancel()
        await self._stop_server()
        if self._tape is not None:
            self._tape.close()
        if self.book_tape is not None:
            self.book_tape.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"bybit replica stopped: trades={s['trades']} connections={s['connections']} "
            f"requests={s['requests']} 403s={s['403']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- the market --

    def _release(self, now_ms: int) -> dict[tuple[str, str], TradeBatch]:
        out: dict[tuple[str, str], TradeBatch] = {}
        for cat, sim in self._sims.items():
            for name, b in sim.advance_to(now_ms).items():
                out[(cat, name)] = b
                self.stats["trades"] += len(b)
                ids = self._ids(cat, name, b)
                recent = self._recent.setdefault((cat, name), deque(maxlen=RECENT_TRADES_MAX))
                recent.extend(
                    zip(
                        ids[-RECENT_TRADES_MAX:],
                        b.times.tolist()[-RECENT_TRADES_MAX:],
                        [fmt(p) for p in b.prices().tolist()[-RECENT_TRADES_MAX:]],
                        [fmt(q) for q in b.qtys().tolist()[-RECENT_TRADES_MAX:]],
                        b.maker.tolist()[-RECENT_TRADES_MAX:],
                        strict=True,
                    )
                )
                if self._tape is not None:
                    self._tape.write(
                        codec.series_symbol(cat, name, self.category),
                        ids,
                        b.times.tolist(),
                        [fmt(p) for p in b.prices().tolist()],
                        [fmt(q) for q in b.qtys().tolist()],
                        ["Sell" if m else "Buy" for m in b.maker.tolist()],
                    )
        return out

    @staticmethod
    def _ids(cat: str, name: str, b: TradeBatch) -> list[str]:
        ns = range(b.first_id, b.last_id + 1)
        return [spot_trade_id(n) for n in ns] if cat == "spot" else [linear_trade_id(name, n) for n in ns]

    # -- REST --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v5/public/"):
            return await self._ws(request, path[len("/v5/public/") :])
        self.stats["requests"] += 1
        if not self.limiter.charge(request.remote or "?"):
            self.stats["403"] += 1
            return web.Response(status=403, body=TOO_FREQUENT, content_type="text/plain")
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        handler = {
            "/v5/market/time": self._time,
            "/v5/market/instruments-info": self._instruments,
            "/v5/market/kline": self._kline,
            "/v5/market/recent-trade": self._recent_trade,
        }.get(path)
        if handler is None:
            return web.Response(
                status=404, body=b'{"retCode":404,"retMsg":"Not Found"}', content_type="application/json"
            )
        self._tick()  # "now" and the open kline include every trade up to this instant
        try:
            result = handler(request.query)
        except _Refused as e:
            return self._json(codec.envelope({}, self._clock.now_ms(), e.code, e.msg))
        return self._json(codec.envelope(result, self._clock.now_ms()))

    @staticmethod
    def _json(body: bytes) -> web.Response:
        return web.Response(status=200, body=body, content_type="application/json")

    async def _rest_fault(self) -> web.Response | None:
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            return web.Response(status=502, body=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html")
        if f.due("http429"):
            self._injected("http429")
            return web.Response(status=403, body=TOO_FREQUENT, content_type="text/plain", headers={"Retry-After": "1"})
        return None

    def _time(self, q: Mapping[str, str]) -> Any:
        now = self._clock.now_ms()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    def _category(self, q: Mapping[str, str], default: str | None = None) -> str:
        cat = q.get("category") or default
        if cat is None:
            raise _Refused(10001, "params error: Category is invalid")
        if cat not in ("spot", "linear", "inverse", "option"):
            raise _Refused(10001, "params error: Category is invalid")
        return cat

    def _instruments(self, q: Mapping[str, str]) -> Any:
        cat = self._category(q)
        status = q.get("status")
        sim = self._sims.get(cat)
        names = list(sim.specs) if sim is not None and status in (None, "", "Trading") else []
        if "symbol" in q:
            names = [n for n in names if n == q["symbol"]]
        return {"category": cat, "list": [self._instrument(cat, n) for n in names], "nextPageCursor": ""}

    def _instrument(self, cat: str, name: str) -> dict[str, Any]:
        spec = self._sims[cat].specs[name]
        item: dict[str, Any] = {
            "symbol": name,
            "baseCoin": spec.base,
            "quoteCoin": spec.quote,
            "status": "Trading",
            "lotSizeFilter": {"basePrecision": spec.lot, "quotePrecision": spec.tick, "minOrderQty": spec.lot,
                              "maxOrderQty": "1000000", "minOrderAmt": "1", "maxOrderAmt": "10000000",
                              "qtyStep": spec.lot, "maxMktOrderQty": "1000000", "minNotionalValue": "5"},
            "priceFilter": {"tickSize": spec.tick, "minPrice": spec.tick, "maxPrice": "10000000"},
        }  # fmt: skip
        if cat == "spot":
            item |= {"innovation": "0", "marginTrading": "none", "stTag": "0"}
        else:
            item |= {
                "contractType": "LinearPerpetual", "launchTime": "1585526400000", "deliveryTime": "0",
                "deliveryFeeRate": "", "priceScale": str(spec.price_decimals),
                "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
                "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": spec.quote,
                "copyTrading": "both", "upperFundingRate": "0.005", "lowerFundingRate": "-0.005",
            }  # fmt: skip
        return item

    def _name(self, cat: str, q: Mapping[str, str]) -> str:
        name = q.get("symbol", "")
        sim = self._sims.get(cat)
        if not name or sim is None or name not in sim.specs:
            raise _Refused(10001, "Not supported symbols")
        return name

    def _kline(self, q: Mapping[str, str]) -> Any:
        cat = self._category(q, "linear")  # Bybit's default category is linear
        name = self._name(cat, q)
        interval = q.get("interval", "")
        if interval not in codec.INTERVAL_MS:
            raise _Refused(10001, "Invalid period!")
        try:
            limit = int(q.get("limit") or 200)
            start = int(q["start"]) if q.get("start") else None
            end = int(q["end"]) if q.get("end") else None
        except ValueError:
            raise _Refused(10001, "params error") from None
        if not 1 <= limit <= codec.KLINES_PAGE:
            raise _Refused(10001, "params error: limit must be within [1, 1000]")
        grid = Grid.for_ms(codec.INTERVAL_MS[interval])
        now = self._clock.now_ms()
        sim = self._sims[cat]
        if start is not None and end is None:
            # ``start`` alone: the ``limit`` candles from the one containing it on.
            table = sim.kline_table(name, grid, grid.floor(start), None, limit, now)
        else:
            # ``end`` (or neither): the newest ``limit`` candles up to it, none opening before ``start``.
            table = sim.kline_table(name, grid, None, end, limit, now)
        lo = -1 if start is None else grid.floor(start)
        rows = [
            codec.kline_row(c, ex[0])
            for c, ex in zip(table.candles(), table.extras(), strict=True)
            if c.open_time >= lo
        ]
        rows.reverse()  # newest first
        return {"category": cat, "symbol": name, "list": rows}

    def _recent_trade(self, q: Mapping[str, str]) -> Any:
        cat = self._category(q, "linear")
        name = self._name(cat, q)
        top = 60 if cat == "spot" else RECENT_TRADES_MAX  # spot: limit [1, 60], default 60
        try:
            limit = int(q.get("limit") or (60 if cat == "spot" else 500))
        except ValueError:
            raise _Refused(10001, "params error") from None
        if not 1 <= limit <= top:
            raise _Refused(10001, f"params error: limit must be within [1, {top}]")
        recent = list(self._recent.get((cat, name), ()))[-limit:]
        items = [
            {"execId": i, "symbol": name, "price": p, "size": v, "side": "Sell" if m else "Buy", "time": str(t),
             "isBlockTrade": False, "isRPITrade": False}
            for i, t, p, v, m in reversed(recent)  # newest first [UNVERIFIED: the docs do not say]
        ]  # fmt: skip
        return {"category": cat, "list": items}

    # -- WebSocket --

    async def _ws(self, request: web.Request, category: str) -> web.StreamResponse:
        if category not in codec.CATEGORIES:
            return web.Response(status=404, text="404 page not found")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=1 << 20)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="websocket upgrade expected")
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        conn = _Conn(ws, transport, category, request.remote or "?")
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    conn.last_active = time.monotonic()
                    await self._control(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
            if conn.stalled:
                while not transport.is_closing():
                    await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.closing = True
            for t in list(conn.topics):
                self._drop_topic(conn, t)
            self._conns.pop(conn, None)
            self.stats["open_connections"] -= 1
        return ws

    def _ack(self, conn: _Conn, op: str, ok: bool, msg: str, req_id: Any) -> bytes:
        out: dict[str, Any] = {"success": ok, "ret_msg": msg, "conn_id": conn.conn_id}
        if req_id is not None or conn.category != "spot":
            out["req_id"] = "" if req_id is None else req_id
        out["op"] = op
        return msgspec.json.encode(out)

    async def _control(self, conn: _Conn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            await conn.reply(self._ack(conn, "", False, "error:request not json", None))
            return
        if not isinstance(msg, dict):
            await conn.reply(self._ack(conn, "", False, "error:request not json", None))
            return
        op, rid, args = msg.get("op"), msg.get("req_id"), msg.get("args", [])
        if op == "ping":  # pybit sends no req_id; Bybit answers either way
            await conn.reply(self._ack(conn, "ping", True, "pong", rid))
            return
        if op not in ("subscribe", "unsubscribe"):
            await conn.reply(self._ack(conn, str(op)[:40], False, f"error:handler not found, op:{str(op)[:40]}", rid))
            return
        if self.ack_delay_s > 0:
            await asyncio.sleep(self.ack_delay_s)
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            await conn.reply(self._ack(conn, op, False, "error:args is empty or not a list of topics", rid))
            return
        if conn.category == "spot" and len(args) > codec.SPOT_MAX_ARGS:
            await conn.reply(self._ack(conn, op, False, f"args size >{codec.SPOT_MAX_ARGS}", rid))
            return
        bad = [a for a in args if self._topic(conn.category, a) is None]
        if bad:
            await conn.reply(self._ack(conn, op, False, f"Invalid symbol :[{bad[0]}]", rid))
            return
        for a in args:
            reason = self.refuse.get(codec.series_symbol(conn.category, a.rpartition(".")[2], self.category))
            if reason is not None and op == "subscribe":
                await conn.reply(self._ack(conn, op, False, reason, rid))
                return
        if op == "subscribe":
            new = [a for a in args if a not in conn.topics]
            chars = sum(map(len, conn.topics)) + sum(map(len, new))
            if chars > codec.ARGS_CHARS_PER_CONNECTION or not all(
                self._may_subscribe(len(conn.topics) + i) for i in range(len(new))
            ):
                # Wording [UNVERIFIED]: Bybit documents the limits, not its answer past them.
                await conn.reply(self._ack(conn, op, False, "error:topics exceed the connection's limit", rid))
                return
        for a in args:
            (self._add_topic if op == "subscribe" else self._drop_topic)(conn, a)
        await conn.reply(self._ack(conn, op, True, op if conn.category == "spot" else "", rid))
        if conn.snapshots:  # a book topic starts with its snapshot, after the ack
            conn.write(conn.snapshots)
            conn.snapshots = []

    def _topic(self, cat: str, topic: str) -> tuple[str, str, str] | None:
        """(kind, name, interval) of a topic this replica serves on ``cat``, else None."""
        parts = topic.split(".")
        sim = self._sims.get(cat)
        if sim is None or parts[-1] not in sim.specs:
            return None
        if len(parts) == 2 and parts[0] == "publicTrade":
            return "trade", parts[1], ""
        if len(parts) == 3 and parts[0] == "kline" and parts[1] in codec.INTERVAL_MS:
            return "kline", parts[2], parts[1]
        if len(parts) == 3 and parts[0] == "orderbook" and parts[1] in {str(d) for d in codec.BOOK_DEPTHS}:
            return "book", parts[2], parts[1]
        return None

    def _add_topic(self, conn: _Conn, topic: str) -> None:
        kind, name, interval = self._topic(conn.category, topic) or ("", "", "")
        if topic in conn.topics:
            return
        conn.topics[topic] = None
        if kind == "trade":
            self._trade_subs.setdefault((conn.category, name), {})[conn] = None
        elif kind == "book":
            self._add_book(conn, name, int(interval))
        else:
            key = (conn.category, name, interval)
            k = self._klines.get(key)
            if k is None:
                k = self._klines[key] = _Kline(conn.category, name, interval, Grid.for_ms(codec.INTERVAL_MS[interval]))
            k.subs[conn] = None
            k.next_push = 0.0

    def _drop_topic(self, conn: _Conn, topic: str) -> None:
        if topic not in conn.topics:
            return
        del conn.topics[topic]
        kind, name, interval = self._topic(conn.category, topic) or ("", "", "")
        if kind == "trade":
            self._trade_subs.get((conn.category, name), {}).pop(conn, None)
        elif kind == "book":
            bt = self._book_topics.get((conn.category, name, int(interval)))
            if bt is not None:
                bt.subs.pop(conn, None)
                if not bt.subs:
                    del self._book_topics[(conn.category, name, int(interval))]
        elif kind == "kline":
            k = self._klines.get((conn.category, name, interval))
            if k is not None:
                k.subs.pop(conn, None)
                if not k.subs:
                    del self._klines[(conn.category, name, interval)]

    # -- the pump --

    def _tick(self) -> None:
        now = self._clock.now_ms()
        batches = self._release(now)
        self._step_books(batches, now)
        if not self._conns:
            return
        wall = time.monotonic()
        out: dict[_Conn, list[bytes]] = {}
        for bt in list(self._book_topics.values()):
            msgs = self._book_messages(bt, now, wall)
            for c in bt.subs:
                out.setdefault(c, []).extend(msgs)
        for key, b in batches.items():
            subs = self._trade_subs.get(key)
            if subs:
                msgs = self._trade_messages(key[0], key[1], b, now)
                for c in subs:
                    out.setdefault(c, []).extend(msgs)
        for k in list(self._klines.values()):
            msgs = self._kline_messages(k, now, wall)
            for c in k.subs:
                out.setdefault(c, []).extend(msgs)
        for c in list(self._conns):
            if wall - c.last_active > IDLE_CUT_S and not c.doomed:
                c.doomed = True
                self._spawn(close_ws(c, 1000, b"idle", _WS_CLOSE_TIMEOUT))
        f = self.faults
        if f is not None:
            self._faults_before_send(out)
        for c, payloads in out.items():
            c.write(payloads)
        if f is not None:
            self._faults_after_send(out)

    def _trade_messages(self, cat: str, name: str, b: TradeBatch, now: int) -> list[bytes]:
        ids = self._ids(cat, name, b)
        items = [
            codec.trade_item(name, i, t, p, q, m, self._seq + k, cat != "spot")
            for k, (i, t, p, q, m) in enumerate(
                zip(ids, b.times.tolist(), b.prices().tolist(), b.qtys().tolist(), b.maker.tolist(), strict=True)
            )
        ]
        self._seq += len(items)
        n = codec.MAX_TRADES_PER_MESSAGE
        return [codec.trade_message(name, now, items[i : i + n]) for i in range(0, len(items), n)]

    def _kline_messages(self, k: _Kline, now: int, wall: float) -> list[bytes]:
        sim = self._sims[k.category]
        cur = k.grid.floor(now)
        iv = codec.INTERVAL_MS[k.interval]
        out: list[bytes] = []
        if k.open_time is not None and cur > k.open_time:
            # The candle(s) last pushed as open are over: push them confirmed, then the new open one.
            done = sim.kline_table(k.name, k.grid, k.open_time, cur - 1, codec.KLINES_PAGE, now)
            for c, ex in zip(done.candles(), done.extras(), strict=True):
                out.append(codec.kline_message(k.name, k.interval, now, c, iv, ex[0], True, now))
        elif k.open_time is not None and wall < k.next_push:
            return out
        k.open_time = cur
        k.next_push = wall + KLINE_PUSH_S
        table = sim.kline_table(k.name, k.grid, cur, cur, 1, now)
        for c, ex in zip(table.candles(), table.extras(), strict=True):
            out.append(codec.kline_message(k.name, k.interval, now, c, iv, ex[0], False, now))
        return out

    # -- order books --

    def _book(self, cat: str, name: str) -> SimBook:
        """The market's book, started at its last trade on first use (and taped whole)."""
        book = self._books.get((cat, name))
        if book is None:
            sim = self._sims[cat]
            last_id, price = sim.last_trade(name)
            spec = sim.specs[name]
            book = self._books[(cat, name)] = SimBook(
                spec, round(price * spec.price_scale), False, 3 * max(last_id, 0) + 1
            )
            if self.book_tape is not None:
                self.book_tape.write_book(
                    codec.series_symbol(cat, name, self.category), book.u, self._clock.now_ms(), book
                )
        return book

    def _step_books(self, batches: dict[tuple[str, str], TradeBatch], now: int) -> None:
        for key, b in batches.items():
            book = self._books.get(key)
            if book is None:
                continue
            ev = book.step(int(b.ticks[-1]), bool(b.maker[-1]))
            book.events.clear()  # the topics diff views, not steps
            if self.book_tape is not None:
                self.book_tape.write(codec.series_symbol(*key, self.category), ev.last, now, book, ev.bids, ev.asks)

    def _add_book(self, conn: _Conn, name: str, depth: int) -> None:
        key = (conn.category, name, depth)
        bt = self._book_topics.get(key)
        book = self._book(conn.category, name)
        if bt is None:
            bt = self._book_topics[key] = _BookTopic(conn.category, name, depth, View(book, depth), 1000 + book.steps)
        bt.subs[conn] = None
        now = self._clock.now_ms()
        if self._book_faults.stale():
            seq, bids, asks = book.stale_levels(depth)
            u = max(1, bt.u - STALE_U_BACK)
            conn.snapshots.append(
                codec.book_message(
                    name, depth, True, now, now, [(p, q) for p, q in bids], [(p, q) for p, q in asks], u, seq
                )
            )
            return
        v = bt.view
        conn.snapshots.append(
            codec.book_message(name, depth, True, now, now, v.texts(v.bids, True), v.texts(v.asks, False), bt.u, book.u)
        )

    def _book_messages(self, bt: _BookTopic, now: int, wall: float) -> list[bytes]:
        """The topic's message of this tick: a delta of what changed in its top levels (a snapshot at
        depth 1, and the unchanged one again every 3 s), with the book faults due."""
        ch = bt.view.advance()
        v, book = bt.view, bt.view.book
        if bt.depth == 1:
            if ch is None and wall < bt.next_resend:
                return []
            if ch is not None:
                bt.u += 1
            bt.next_resend = wall + LEVEL1_RESEND_S
            return [
                codec.book_message(
                    bt.name, 1, True, now, now, v.texts(v.bids, True), v.texts(v.asks, False), bt.u, book.u
                )
            ]
        f = self.faults
        if f is not None and f.pending("bookrestart"):
            f.due("bookrestart")
            self._injected("bookrestart")
            bt.u = 1
            bids, asks = v.texts(v.bids, True), v.texts(v.asks, False)
            return [codec.book_message(bt.name, bt.depth, True, now, now, bids, asks, bt.u, book.u)]
        if ch is None:
            return []
        bt.u += 1
        msg = codec.book_message(
            bt.name, bt.depth, False, now, now, v.texts(ch[0], True), v.texts(ch[1], False), bt.u, book.u
        )
        return self._book_faults.deltas((bt.category, bt.name, bt.depth), [msg])

    # -- faults --

    def _victims(self, out: dict[_Conn, list[bytes]], frames: int) -> list[_Conn]:
        return [
            c
            for c, p in out.items()
            if len(p) >= frames and not (c.closing or c.stalled or c.silent or c.doomed or c.transport.is_closing())
        ]

    def _faults_before_send(self, out: dict[_Conn, list[bytes]]) -> None:
        f = self.faults
        assert f is not None
        for kind in ("stall", "silence", *MESSAGE_KINDS):
            if not f.pending(kind):
                continue
            cands = self._victims(out, MESSAGE_KINDS.get(kind, 1))
            if not cands:
                continue
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                conn.ws._autoclose = False
                conn.ws._autoping = False  # a stalled server answers no ping either
            elif kind == "silence":
                conn.silent = True
            else:
                faulty = apply_message_fault(kind, out[conn], f.pick, _poison)
                if kind == "poison" and len(faulty) == len(out[conn]):
                    continue  # nothing to poison this tick (klines only)
                out[conn] = faulty
            self._injected(kind, conn.peer)

    def _faults_after_send(self, out: dict[_Conn, list[bytes]]) -> None:
        f = self.faults
        assert f is not None

        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(close_ws(conn, 1000, b"", _WS_CLOSE_TIMEOUT))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        inject_connection_faults(
            f, lambda: self._victims(out, 1), {"close": close, "reset": reset}, lambda k, c: self._injected(k, c.peer)
        )

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Refused(Exception):
    """A request Bybit answers with HTTP 200 and a ``retCode`` other than 0."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _poison(payload: bytes, pick: Any) -> list[bytes] | None:
    """The ``poison`` fault for a ``publicTrade`` message: a copy whose first price is ``NaN`` or
    ``1e400`` (same ids: a client that takes it, and then de-duplicates by id, loses the real trade)."""
    if not payload.startswith(b'{"topic":"publicTrade.'):
        return None
    i = payload.find(b'"p":"')
    if i < 0:
        return None
    j = payload.index(b'"', i + 5)
    bad = (b"NaN", b"1e400")[pick(2)]
    return [payload[: i + 5] + bad + payload[j:]]
