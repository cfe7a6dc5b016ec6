"""A local Hyperliquid market-data server: ``POST /info`` and WebSocket ``/ws`` on one port, seeded market.

Speaks what ``api.hyperliquid.xyz`` speaks for market data (PROTOCOLS-wave2.md section 3):
``/info`` requests ``meta``, ``metaAndAssetCtxs``, ``spotMeta``, ``allMids``, ``recentTrades`` and
``candleSnapshot`` (only the newest 5000 candles of each interval exist, oldest first) under the
weight limit of 1200 per minute (20 a request, ``candleSnapshot`` one more per 60 candles, 429
beyond); ``/ws`` greets every connection with a text line, takes ``subscribe``/``unsubscribe`` of
``trades`` and ``candle`` (one coin each, echoed in ``subscriptionResponse``), answers
``{"method":"ping"}`` with ``{"channel":"pong"}``, sends ``error`` frames for what it refuses, and
drops a connection it has sent nothing on for 60 s. A trade's ``tid`` is unique across coins and not
contiguous, as on the venue. Third-party clients (ccxt, hyperliquid-python-sdk) work with only their
URLs changed.

Order books: ``{"type":"l2Book","coin":...}`` (no ``nSigFigs`` aggregation) sends the coin's book at once,
then again every ``book_push_s`` (Hyperliquid: "on each block that is at least 0.5 since last push"), each
frame a full snapshot of the best ``BOOK_LEVELS`` levels a side with ``time`` = the book's key (ms,
strictly growing per coin), which keys the book tape (``<tape>.book.csv``). The book is a
:class:`~deltafeed.replicas.books.SimBook` stepped with the trades.

Faults (``faults=``): ``close``, ``reset``, ``stall``, ``silence`` on a connection; ``drop``, ``dup``,
``reorder``, ``garbage``, ``poison`` on its data frames; ``http500``, ``http429``, ``slow`` on ``/info``;
``bookdrop``, ``bookdup``, ``bookreorder`` on a coin's ``l2Book`` frames and ``stalebook`` (a frame of
the book as it was at least 50 steps ago, with its own older ``time``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from deltafeed.net.frames import text_header
from deltafeed.replicas.books import BookTape, DeltaFaults, SimBook
from deltafeed.replicas.bookviews import KeyLog, top
from deltafeed.replicas.faults import (
    MESSAGE_KINDS,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.server import ReplicaBase, close_ws
from deltafeed.replicas.sim import Grid, MarketClock, MarketSim, TradeBatch
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.hyperliquid import codec as hl

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("BTC", "ETH", "SOL")
FAULT_KINDS: tuple[str, ...] = (
    "close", "reset", "stall", "silence", "drop", "dup", "reorder", "garbage", "poison", "http500", "http429", "slow",
    "bookdrop", "bookdup", "bookreorder", "stalebook",
)  # fmt: skip
BOOK_LEVELS = 20  # levels a side of an l2Book frame
BOOK_PUSH_S = 0.5  # "pushed on each block that is at least 0.5 since last push"
TICK_SECONDS = 0.02
TID_BASE = 300_000_000_000_000  # tids look like the venue's (15 digits)
TID_STRIDE = 1024  # tid = base + per-coin sequence * stride + coin index: unique across coins
_WS_CLOSE_TIMEOUT = 2.0
_BAD_BODY = b"Failed to deserialize the JSON body into the target type"


def sim_symbol(coin: str) -> str:
    """The simulator's symbol for a coin: its USDT pair, so BTC, ETH and SOL trade at their usual prices."""
    return coin.upper() + "USDT"


class _Sim(MarketSim):
    """The seeded market, taped as Hyperliquid reports it: coin names, venue-wide tids, B/A sides."""

    def __init__(self, coins: list[str], tape: Path | None, **kw: Any) -> None:
        self.coins = coins
        self.coin_of = {sim_symbol(c): c for c in coins}
        self.index = {c: i for i, c in enumerate(coins)}
        self.hl_tape = TapeWriter.trades(tape, extra=("side",)) if tape is not None else None
        self.last: dict[str, dict[str, Any]] = {}  # each coin's last trade, as /info recentTrades shows it
        super().__init__([sim_symbol(c) for c in coins], tape=None, **kw)

    def tid(self, coin: str, seq: int) -> int:
        return TID_BASE + seq * TID_STRIDE + self.index[coin]

    def advance_to(self, market_ms: int, symbols: Iterable[str] | None = None) -> dict[str, TradeBatch]:
        out = super().advance_to(market_ms, symbols)
        for b in out.values():
            coin = self.coin_of[b.symbol]
            self.last[coin] = hl.trade_obj(
                coin, self.tid(coin, b.last_id), int(b.times[-1]), float(b.prices()[-1]), float(b.qtys()[-1]),
                "A" if b.maker[-1] else "B",
            )  # fmt: skip
            if self.hl_tape is not None:
                self.hl_tape.write(
                    coin,
                    [self.tid(coin, i) for i in range(b.first_id, b.last_id + 1)],
                    b.times.tolist(),
                    [hl.num(p) for p in b.prices().tolist()],
                    [hl.num(q) for q in b.qtys().tolist()],
                    ["A" if m else "B" for m in b.maker.tolist()],
                )
        return out

    def close(self) -> None:
        super().close()
        if self.hl_tape is not None:
            self.hl_tape.close()


def poison_trades(payload: bytes, pick: Callable[[int], int]) -> list[bytes] | None:
    """The ``poison`` fault's frame before a trades frame: one of its trades again, same tid, with a
    NaN price (a client that takes it would count a trade that never happened). None for other frames."""
    if not payload.startswith(b'{"channel":"trades"'):
        return None
    trades = msgspec.json.decode(payload)["data"]
    t = dict(trades[pick(len(trades))])
    t["px"] = "NaN"
    return [hl.trades_frame([t])]


class _Conn:
    """One WebSocket client: its subscriptions and fault state."""

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, peer: str) -> None:
        self.ws = ws
        self.transport = transport
        self.peer = peer
        self.trades: set[str] = set()
        self.candles: set[tuple[str, str]] = set()
        self.books: set[str] = set()
        self.closing = False
        self.stalled = False  # nothing more is sent, pongs included
        self.silent = False  # pongs and replies still, no data
        self.doomed = False
        self.last_sent = time.monotonic()

    def write(self, payloads: list[bytes]) -> None:
        if self.closing or self.stalled or self.transport.is_closing() or not payloads:
            return
        self.transport.write(b"".join([text_header(len(p)) + p for p in payloads]))
        self.last_sent = time.monotonic()


@dataclass
class _Weight:
    window: int = -1
    used: int = 0


@dataclass(eq=False)
class _CandleFeed:
    """A (coin, interval) with subscribers: the open time last pushed."""

    coin: str
    interval: str
    grid: Grid
    subs: set[_Conn] = field(default_factory=set)
    open_time: int | None = None


class HyperliquidReplica(ReplicaBase):
    """A Hyperliquid market-data server on ``host:port`` (0 = a free port), driven by a seeded simulator;
    ``rate`` is trades per market second per coin, ``speed`` market seconds per wall second.
    ``idle_close_s`` is how long a connection the server sends nothing on stays open."""

    venue = "hyperliquid"
    per_connection = hl.SUBSCRIPTIONS_PER_CONNECTION
    tick_s = TICK_SECONDS
    http_method = "*"
    fault_kinds = FAULT_KINDS
    _log = log

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        seed: int = 1,
        rate: float = 5.0,
        speed: float = 1.0,
        history_ms: int = 3_600_000,
        weight_limit: int = hl.WEIGHT_LIMIT_1M,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_ms: int | None = None,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        slow_s: float = 2.0,
        idle_close_s: float = hl.IDLE_CLOSE_S,
        weight_window_s: float = 60.0,
        book_push_s: float = BOOK_PUSH_S,
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
        self._clock = MarketClock(o.speed, o.start_ms)
        coins = list(dict.fromkeys(s.strip() for s in o.symbols if s.strip()))
        self._sim = _Sim(
            coins, o.tape, seed=o.seed, rate=o.rate, start_ms=self._clock.start_ms, history_ms=o.history_ms
        )
        self.coins = coins
        self.weight_limit = weight_limit
        self.weight_window_s = weight_window_s
        self._weights: dict[str, _Weight] = {}
        self.stats: dict[str, int] = {
            "trades": self._sim.trades_released, "connections": 0, "open_connections": 0, "requests": 0,
            "429": 0, "weight": 0, "frames_sent": 0, "idle_closes": 0,
        }  # fmt: skip
        self._setup_faults(dict(o.faults), o.faults_seed)
        self._book_faults = DeltaFaults(self.faults, self._injected)
        book_tape = o.book_tape_path()
        self.book_tape = BookTape(book_tape) if book_tape is not None else None
        self.book_push_s = book_push_s
        self._books: dict[str, SimBook] = {}  # coin -> its book, from the first l2Book subscription
        self._book_key: dict[str, int] = {}  # coin -> the key (ms) of its book as it is now
        self._book_keys = KeyLog()  # a recent book state's key, by its update id (stale snapshots)
        self._next_push: dict[str, float] = {}  # coin -> when its next l2Book frame is due (wall)
        self.slow_s = slow_s
        self.idle_close_s = idle_close_s
        self._conns: dict[_Conn, None] = {}
        self._candle_feeds: dict[tuple[str, str], _CandleFeed] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_idle_check = 0.0

    # -- public surface --

    @property
    def sim(self) -> MarketSim:
        return self._sim

    @property
    def ws_url(self) -> str:
        return f"ws://{self.netloc}/ws"

    def history_start(self, interval: str) -> int:
        """Open time of the oldest candle of ``interval`` served now (the newest 5000 exist)."""
        iv = hl.INTERVAL_MS[interval]
        now = self._clock.now_ms()
        return now - now % iv - (hl.HISTORY_CANDLES - 1) * iv

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
        self._sim.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"hyperliquid replica stopped: trades={s['trades']} connections={s['connections']} "
            f"requests={s['requests']} weight={s['weight']} 429s={s['429']} frames_sent={s['frames_sent']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- HTTP --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            return await self._ws(request)
        if request.path != hl.INFO_PATH or request.method != "POST":
            return web.Response(status=404, text="Not Found")
        self.stats["requests"] += 1
        ip = request.remote or "?"
        f = self.faults
        if f is not None:
            if f.due("slow"):
                self._injected("slow")
                await asyncio.sleep(self.slow_s)
            if f.due("http500"):
                self._injected("http500")
                return web.Response(status=500, text="Internal Server Error")
            if f.due("http429"):
                self._injected("http429")
                return web.Response(status=429, text="null", headers={"Retry-After": "1"})
        try:
            req = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            return web.Response(status=422, body=_BAD_BODY)
        kind = req.get("type") if isinstance(req, dict) else None
        w = self._weight(ip)
        if w.used + hl.info_weight(str(kind)) > self.weight_limit:
            self.stats["429"] += 1
            return web.Response(status=429, text="null")
        self._tick()
        try:
            body, weight = self._info(str(kind), req)
        except _Refused as e:
            return web.Response(status=422, body=e.body)
        w.used += weight
        self.stats["weight"] += weight
        return web.Response(body=body, content_type="application/json")

    def _weight(self, ip: str) -> _Weight:
        w = self._weights.setdefault(ip, _Weight())
        window = int(time.time() // self.weight_window_s)
        if window != w.window:
            w.window, w.used = window, 0
        return w

    def _info(self, kind: str, req: dict[str, Any]) -> tuple[bytes, int]:
        weight = hl.info_weight(kind)
        if kind == "meta":
            return msgspec.json.encode(self._meta()), weight
        if kind == "metaAndAssetCtxs":
            return msgspec.json.encode([self._meta(), [self._ctx(c) for c in self.coins]]), weight
        if kind == "spotMeta":
            return b'{"universe":[],"tokens":[]}', weight
        if kind == "spotMetaAndAssetCtxs":
            return b'[{"universe":[],"tokens":[]},[]]', weight
        if kind == "perpDexs":
            return b"[null]", weight  # the first dex is the main one, null; no builder-deployed (HIP-3) dexs
        if kind == "allMids":
            return msgspec.json.encode({c: hl.num(self._sim.last_trade(sim_symbol(c))[1]) for c in self.coins}), weight
        if kind == "recentTrades":
            coin = req.get("coin")
            if coin not in self._sim.index:
                return b"null", weight
            return msgspec.json.encode(self._recent(coin)), weight
        if kind == "candleSnapshot":
            rows = self._candles(req.get("req"))
            return msgspec.json.encode(rows), hl.candles_weight(len(rows))
        raise _Refused(_BAD_BODY)

    def _meta(self) -> dict[str, Any]:
        return {
            "universe": [
                {"name": c, "szDecimals": 5, "maxLeverage": 50, "marginTableId": 50, "onlyIsolated": False}
                for c in self.coins
            ],
            "marginTables": [],
        }

    def _ctx(self, coin: str) -> dict[str, Any]:
        px = hl.num(self._sim.last_trade(sim_symbol(coin))[1])
        return {
            "funding": "0.0000125", "openInterest": "1000.0", "prevDayPx": px, "dayNtlVlm": "1000000.0",
            "premium": "0.0", "oraclePx": px, "markPx": px, "midPx": px, "impactPxs": [px, px],
            "dayBaseVlm": "100.0",
        }  # fmt: skip

    def _recent(self, coin: str) -> list[dict[str, Any]]:
        """The coin's latest trade (the venue lists about ten; the simulator keeps the last one)."""
        last = self._sim.last.get(coin)
        return [] if last is None else [last]

    def _candles(self, q: Any) -> list[dict[str, Any]]:
        if not isinstance(q, dict):
            raise _Refused(_BAD_BODY)
        coin, interval = q.get("coin"), q.get("interval")
        start, end = q.get("startTime"), q.get("endTime")
        if not isinstance(start, int) or interval not in hl.INTERVAL_MS or not isinstance(coin, str):
            raise _Refused(_BAD_BODY)
        if coin not in self._sim.index:
            return []  # the venue answers an unknown coin with an empty list [UNVERIFIED]
        iv = hl.INTERVAL_MS[interval]
        now = self._clock.now_ms()
        lo = max(start, self.history_start(interval))
        hi = now if not isinstance(end, int) else min(end, now)
        table = self._sim.kline_table(sim_symbol(coin), Grid.for_ms(iv), lo, hi, hl.CANDLES_PAGE, now)
        return [hl.candle_obj(coin, interval, c) for c in table.candles()]

    # -- WebSocket --

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=False, autoping=True, timeout=_WS_CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="WebSocket upgrade expected")
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        conn = _Conn(ws, transport, request.remote or "?")
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
        conn.write([hl.GREETING])
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._control(conn, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
            if conn.stalled:
                while not transport.is_closing():
                    await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.closing = True
            for cf in self._candle_feeds.values():
                cf.subs.discard(conn)
            self._conns.pop(conn, None)
            self.stats["open_connections"] -= 1
        return ws

    def _reply(self, conn: _Conn, body: bytes) -> None:
        conn.write([body])

    def _control(self, conn: _Conn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            self._reply(conn, hl.error_frame(f"Error parsing JSON into valid websocket request: {text[:200]}"))
            return
        method = msg.get("method") if isinstance(msg, dict) else None
        if method == "ping":
            self._reply(conn, hl.PONG)
            return
        if method not in ("subscribe", "unsubscribe"):
            self._reply(conn, hl.error_frame(f"Error parsing JSON into valid websocket request: {text[:200]}"))
            return
        sub = msg.get("subscription")
        kind = sub.get("type") if isinstance(sub, dict) else None
        coin = sub.get("coin") if isinstance(sub, dict) else None
        interval = sub.get("interval") if isinstance(sub, dict) else None
        shown = json.dumps(sub, separators=(",", ":"))
        if kind not in ("trades", "candle", "l2Book") or (kind == "candle" and interval not in hl.INTERVAL_MS):
            self._reply(conn, hl.error_frame(f"Invalid subscription {shown}"))
            return
        if coin not in self._sim.index:
            self._reply(conn, hl.error_frame(f"Invalid subscription {shown}: unknown coin"))
            return
        key = (str(coin), str(interval))
        if kind == "l2Book" and (sub.get("nSigFigs") is not None or sub.get("mantissa") is not None):
            self._reply(conn, hl.error_frame(f"Invalid subscription {shown}: this replica does not aggregate"))
            return
        have = {"trades": coin in conn.trades, "l2Book": coin in conn.books}.get(kind, key in conn.candles)
        subs = len(conn.trades) + len(conn.candles) + len(conn.books)
        if method == "subscribe" and have:
            self._reply(conn, hl.error_frame(f"Already subscribed: {shown}"))
            return
        if method == "unsubscribe" and not have:
            self._reply(conn, hl.error_frame(f"Already unsubscribed: {shown}"))
            return
        total = sum(len(c.trades) + len(c.candles) + len(c.books) for c in self._conns)  # per IP
        if method == "subscribe" and (total >= hl.MAX_SUBSCRIPTIONS or not self._may_subscribe(subs)):
            cap = hl.MAX_SUBSCRIPTIONS if total >= hl.MAX_SUBSCRIPTIONS else self.per_connection
            self._reply(conn, hl.error_frame(f"Cannot track more than {cap} total subscriptions"))
            return
        if kind == "trades":
            (conn.trades.add if method == "subscribe" else conn.trades.discard)(str(coin))
        elif kind == "l2Book":
            (conn.books.add if method == "subscribe" else conn.books.discard)(str(coin))
            if method == "subscribe":
                self._reply(conn, hl.subscription_response(method, sub))
                self._reply(conn, self._book_frame(str(coin)))  # the book at once, then every push
                return
        else:
            (conn.candles.add if method == "subscribe" else conn.candles.discard)(key)
            cf = self._candle_feeds.get(key)
            if cf is None:
                cf = self._candle_feeds[key] = _CandleFeed(key[0], key[1], Grid.for_ms(hl.INTERVAL_MS[key[1]]))
            (cf.subs.add if method == "subscribe" else cf.subs.discard)(conn)
        self._reply(conn, hl.subscription_response(method, sub))

    # -- the pump --

    def _tick(self) -> None:
        now = self._clock.now_ms()
        batches = self._sim.advance_to(now)
        self.stats["trades"] = self._sim.trades_released
        self._step_books(batches, now)
        if not self._conns:
            return
        book_frames = self._book_pushes()
        trade_frames: dict[str, bytes] = {}
        for sym, b in batches.items():
            coin = self._sim.coin_of[sym]
            objs = [
                hl.trade_obj(coin, self._sim.tid(coin, i), t, p, q, "A" if m else "B")
                for i, t, p, q, m in zip(
                    range(b.first_id, b.last_id + 1),
                    b.times.tolist(),
                    b.prices().tolist(),
                    b.qtys().tolist(),
                    b.maker.tolist(),
                    strict=True,
                )
            ]
            trade_frames[coin] = hl.trades_frame(objs)
        candle_frames = {
            key: self._candle_updates(cf, now, key[0] in trade_frames) for key, cf in self._candle_feeds.items()
        }
        out: dict[_Conn, list[bytes]] = {}
        for conn in self._conns:
            if conn.stalled or conn.silent or conn.closing:
                continue
            parts = [trade_frames[c] for c in conn.trades if c in trade_frames]
            parts += [p for k in conn.candles for p in candle_frames.get(k, [])]
            parts += [p for c in conn.books for p in book_frames.get(c, [])]
            if parts:
                out[conn] = parts
        if self.faults is not None:
            self._message_faults(out)
        for conn, parts in out.items():
            conn.write(parts)
            self.stats["frames_sent"] += len(parts)
        if self.faults is not None:
            self._connection_faults(out)
        self._idle_closes()

    # -- order books --

    def _book(self, coin: str) -> SimBook:
        """The coin's book, started at its last trade on first use (and taped whole)."""
        book = self._books.get(coin)
        if book is None:
            sym = sim_symbol(coin)
            last_id, price = self._sim.last_trade(sym)
            spec = self._sim.specs[sym]
            book = self._books[coin] = SimBook(spec, round(price * spec.price_scale), False, max(last_id, 0) + 1)
            now = self._clock.now_ms()
            self._book_keys.add(book.u, self._next_key(coin, now))
            if self.book_tape is not None:
                self.book_tape.write_book(coin, self._book_key[coin], now, book)
        return book

    def _next_key(self, coin: str, now_ms: int) -> int:
        key = max(now_ms, self._book_key.get(coin, 0) + 1)
        self._book_key[coin] = key
        return key

    def _step_books(self, batches: Mapping[str, TradeBatch], now: int) -> None:
        for sym, b in batches.items():
            coin = self._sim.coin_of[sym]
            book = self._books.get(coin)
            if book is None:
                continue
            ev = book.step(int(b.ticks[-1]), bool(b.maker[-1]))
            book.events.clear()
            key = self._next_key(coin, now)
            self._book_keys.add(book.u, key)
            if self.book_tape is not None:
                self.book_tape.write(coin, key, now, book, ev.bids, ev.asks)

    def _book_frame(self, coin: str, stale: bool = False) -> bytes:
        """An ``l2Book`` frame of the coin's book as it is now (``stale``: as it was at least 50 steps ago,
        with that state's key, when the key is still known)."""
        book = self._book(coin)
        if stale:
            u, bids_t, asks_t = book.stale_levels(BOOK_LEVELS)
            key = self._book_keys.get(u)
            if key is not None:
                return hl.book_frame(coin, key, [(p, q, 1) for p, q in bids_t], [(p, q, 1) for p, q in asks_t])
        bids = top(book.bids, BOOK_LEVELS, True)
        asks = top(book.asks, BOOK_LEVELS, False)

        def side(levels: dict[int, int]) -> list[tuple[str, str, int]]:
            return [(book.price(t), book.qty(q), 1 + q % 7) for t, q in levels.items()]

        return hl.book_frame(coin, self._book_key[coin], side(bids), side(asks))

    def _book_pushes(self) -> dict[str, list[bytes]]:
        """The l2Book frames due this tick, per coin with subscribers, with the book faults due."""
        wall = time.monotonic()
        out: dict[str, list[bytes]] = {}
        for coin in {c for conn in self._conns for c in conn.books}:
            if wall < self._next_push.get(coin, 0.0):
                continue
            self._next_push[coin] = wall + self.book_push_s
            frame = self._book_frame(coin, stale=self._book_faults.stale())
            out[coin] = self._book_faults.deltas(coin, [frame])
        return out

    def _candle_updates(self, cf: _CandleFeed, now: int, traded: bool) -> list[bytes]:
        """Candle frames for one (coin, interval): on a roll-over the last state of every candle passed
        (the venue moved on), then the open one; otherwise the open one when it traded."""
        if not cf.subs:
            return []
        cur = cf.grid.floor(now)
        if cf.open_time is not None and cur == cf.open_time and not traded:
            return []
        first = cur if cf.open_time is None else cf.open_time
        cf.open_time = cur
        table = self._sim.kline_table(sim_symbol(cf.coin), cf.grid, first, now, 64, now)
        return [hl.candle_frame(cf.coin, cf.interval, c) for c in table.candles()[-64:]]

    def _victims(self, out: dict[_Conn, list[bytes]], frames: int) -> list[_Conn]:
        return [c for c, p in out.items() if len(p) >= frames and not (c.closing or c.stalled or c.doomed or c.silent)]

    def _message_faults(self, out: dict[_Conn, list[bytes]]) -> None:
        f = self.faults
        assert f is not None
        for kind in MESSAGE_KINDS:
            if not f.pending(kind):
                continue
            cands = self._victims(out, MESSAGE_KINDS[kind])
            if not cands:
                continue
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            before = len(out[conn])
            out[conn] = apply_message_fault(kind, out[conn], f.pick, poison_trades)
            if kind == "poison" and len(out[conn]) == before:
                continue  # nothing to poison this tick
            self._injected(kind, conn.peer)

    def _connection_faults(self, out: dict[_Conn, list[bytes]]) -> None:
        f = self.faults
        assert f is not None

        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(close_ws(conn, 1000, b"", _WS_CLOSE_TIMEOUT))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        def stall(conn: _Conn) -> None:
            conn.stalled = conn.doomed = True
            conn.ws._autoclose = False  # a stalled server answers nothing, not even a close

        def silence(conn: _Conn) -> None:
            conn.silent = conn.doomed = True

        inject_connection_faults(
            f,
            lambda: self._victims(out, 1),
            {"close": close, "reset": reset, "stall": stall, "silence": silence},
            lambda k, c: self._injected(k, c.peer),
        )

    def _idle_closes(self) -> None:
        """The venue drops a connection it has sent nothing on for 60 s (1006: no close frame)."""
        mono = time.monotonic()
        if mono < self._next_idle_check:
            return
        self._next_idle_check = mono + 1.0
        for c in list(self._conns):
            if not c.stalled and not c.closing and mono - c.last_sent > self.idle_close_s:
                self.stats["idle_closes"] += 1
                c.closing = True
                c.transport.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Refused(Exception):
    def __init__(self, body: bytes) -> None:
        super().__init__(body.decode())
        self.body = body


__all__ = ["DEFAULT_SYMBOLS", "FAULT_KINDS", "HyperliquidReplica"]
