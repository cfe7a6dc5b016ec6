"""A local Coinbase Advanced Trade public market-data server: REST and WebSocket on one port, seeded market.

Speaks what ``api.coinbase.com`` (public ``/api/v3/brokerage/market/...`` endpoints, ``/api/v3/brokerage/time``
and the ``/v2`` currency endpoints ccxt reads) and ``advanced-trade-ws.coinbase.com`` speak (see
../shared/PROTOCOLS-wave2.md section 1):

- WebSocket at ``/``: ``{"type":"subscribe"|"unsubscribe","channel":...,"product_ids":[...]}``, one channel
  per message (a ``jwt`` is accepted and ignored); a ``subscriptions`` reply; ``heartbeats`` every second;
  ``market_trades`` batched every 250 ms, newest first, ``side`` the maker's, the first message of a
  subscription a ``snapshot`` of recent trades; ``candles`` (5-minute buckets) every second; one
  ``sequence_num`` counter per connection across every channel, from 0; ``{"type":"error","message":...}``
  for a refused request. A connection with data subscriptions but no ``heartbeats`` one is closed after
  ``idle_close_s`` without a frame (the venue's "channels close within 60-90 s"), and one that sent no
  subscribe within ``subscribe_deadline_s`` (5 s, the Exchange feed's documented rule).
- REST candles newest first, intervals without trades left out, a span of more than 349 candles rejected
  with the venue's 400; 10 requests a second per IP (burst 15), then 429.

Order books: ``level2`` (sent on channel ``l2_data``) starts with a ``snapshot`` of the whole book of
a product, then an ``update`` per 20 ms tick in which the book changed, each level's ``new_quantity``
the level's size ("0" removes it). Each product's book is a :class:`~deltafeed.replicas.books.SimBook`
stepped with the trades; the frames' ``timestamp`` (microseconds) is the book's key, strictly growing per
product, and keys the book tape (``<tape>.book.csv``). Coinbase's book carries no sequence of its own:
a client finds a lost frame only by the connection's ``sequence_num``. So the book faults ``bookdrop``,
``bookdup`` and ``bookreorder`` apply to a connection's ``l2_data`` frames after they are numbered; no
``stalebook`` (a stale snapshot would be undetectable on Coinbase: its updates carry absolute sizes and
no sequence that ties them to the snapshot).

Market data comes from :class:`~deltafeed.replicas.sim.MarketSim` (product ``BTC-USD`` simulated as
``BTCUSD``); the tape (``tape=``) is ``symbol,trade_id,time_ms,price,qty,side`` with the product id as
the symbol and ``side`` the maker's, as sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import WSMsgType, web

from deltafeed.model import BadInput, Candle, fmt
from deltafeed.net.frames import text_frame
from deltafeed.replicas.books import BookTape, DeltaFaults, SimBook
from deltafeed.replicas.faults import (
    MESSAGE_KINDS,
    FaultSchedule,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.server import ReplicaBase, close_ws
from deltafeed.replicas.sim import MarketClock, MarketSim, TradeBatch
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.coinbase import codec

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD")
FAULT_KINDS = (
    "close", "reset", "stall", "drop", "dup", "reorder", "garbage", "seqgap", "noheartbeat", "http500", "http429",
    "slow", "bookdrop", "bookdup", "bookreorder",
)  # fmt: skip
SNAPSHOT_TRADES = 50  # trades in a market_trades snapshot [UNVERIFIED: the venue's count]
CANDLE_MS = 300_000  # the candles channel's only bucket
_WS_CLOSE_TIMEOUT = 2.0
_TICK_S = 0.02

_Row = tuple[int, str, int, float, float, bool]  # trade_id, product, time_ms, price, size, buyer_maker


def sim_symbol(product: str) -> str:
    """The simulator's name of a product id (``BTC-USD`` -> ``BTCUSD``); BadInput for a bad id."""
    base, sep, quote = product.partition("-")
    if not (sep and base.isalnum() and quote.isalnum() and product == product.upper()):
        raise BadInput(f"product id {product!r} is not BASE-QUOTE; use e.g. BTC-USD")
    return base + quote


class _Sim(MarketSim):
    """The market, taped under the products' own names."""

    def __init__(self, products: Iterable[str], tape: Path | None, **kw: Any) -> None:
        self.products = {sim_symbol(p): p for p in products}
        self._tape = TapeWriter.trades(tape, extra=("side",)) if tape is not None else None
        self.recent: dict[str, deque[_Row]] = {p: deque(maxlen=SNAPSHOT_TRADES) for p in self.products.values()}
        self.pending: dict[str, list[_Row]] = {p: [] for p in self.products.values()}
        super().__init__(list(self.products), tape=None, **kw)
        for rows in self.pending.values():
            rows.clear()  # the history is served over REST, not streamed

    @property
    def tape_path(self) -> Path | None:
        return self._tape.path if self._tape is not None else None

    def advance_to(self, market_ms: int, symbols: Iterable[str] | None = None) -> dict[str, TradeBatch]:
        out = super().advance_to(market_ms, symbols)
        for sym, b in out.items():
            product = self.products[sym]
            rows = list(
                zip(
                    range(b.first_id, b.last_id + 1),
                    [product] * len(b),
                    b.times.tolist(),
                    b.prices().tolist(),
                    b.qtys().tolist(),
                    b.maker.tolist(),
                    strict=True,
                )
            )
            self.pending[product] += rows
            self.recent[product].extend(rows)
            if self._tape is not None:
                self._tape.write(
                    product,
                    [r[0] for r in rows],
                    [r[2] for r in rows],
                    [fmt(r[3]) for r in rows],
                    [fmt(r[4]) for r in rows],
                    ["BUY" if r[5] else "SELL" for r in rows],
                )
        return out

    def close(self) -> None:
        super().close()
        if self._tape is not None:
            self._tape.close()


@dataclass(eq=False)
class _Conn:
    """One WebSocket client: its subscriptions, sequence counter and fault state."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport
    peer: str
    seq: int = 0  # the next sequence_num
    subs: dict[str, set[str]] = field(default_factory=dict)  # channel -> products (heartbeats: empty)
    hb_counter: int = 0
    next_hb: float = 0.0
    last_sent: float = 0.0
    closing: bool = False
    stalled: bool = False
    doomed: bool = False
    quiet: bool = False  # noheartbeat: heartbeats stopped, data goes on
    opened: float = 0.0  # monotonic time of the connection
    subscribed: bool = False  # sent a subscribe (the first must come within subscribe_deadline_s)

    def frame(self, channel: str, now_ms: int, events: bytes) -> bytes:
        body = codec.envelope(channel, self.seq, now_ms, events)
        self.seq += 1
        return body

    def l2_frame(self, key_us: int, events: bytes) -> bytes:
        """An ``l2_data`` frame timed by the book's key (microseconds)."""
        body = codec.envelope_us("l2_data", self.seq, key_us, events)
        self.seq += 1
        return body

    def write(self, payloads: list[bytes]) -> None:
        tr = self.transport
        if self.closing or self.stalled or tr.is_closing() or not payloads:
            return
        tr.write(b"".join(text_frame(p) for p in payloads))
        self.last_sent = time.monotonic()


class _RateLimit:
    """A token bucket per IP: ``per_s`` requests a second, ``burst`` at once."""

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self._ips: dict[str, tuple[float, float]] = {}

    def take(self, ip: str) -> bool:
        now = time.monotonic()
        tokens, at = self._ips.get(ip, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.per_s)
        if tokens < 1.0:
            self._ips[ip] = (tokens, now)
            return False
        self._ips[ip] = (tokens - 1.0, now)
        return True


class CoinbaseReplica(ReplicaBase):
    """A Coinbase Advanced Trade public market-data server on ``host:port`` (see the module docstring).

    ``rate`` is trades per market second per product, ``speed`` market seconds per wall second;
    ``refuse`` names products listed over REST whose subscriptions are refused with an error frame (a
    delisting between the check and the subscription); ``faults`` as in :mod:`deltafeed.replicas.faults`,
    of :data:`FAULT_KINDS`: ``seqgap`` skips one ``sequence_num`` on a connection (nothing else lost),
    ``noheartbeat`` stops a connection's heartbeats for good while its data goes on.
    """

    venue = "coinbase"
    per_connection = codec.SUBSCRIPTIONS_PER_CONNECTION
    tick_s = _TICK_S
    _log = log
    fault_kinds = FAULT_KINDS

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
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        requests_per_s: int = codec.REQUESTS_PER_S,
        burst: int = codec.BURST,
        batch_s: float = 0.25,
        heartbeat_s: float = 1.0,
        candles_s: float = 1.0,
        idle_close_s: float = 75.0,
        subscribe_deadline_s: float = 5.0,
        slow_s: float = 1.0,
        refuse: Iterable[str] = (),
        options: ReplicaOptions | None = None,
    ) -> None:
        rates = parse_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None
        self.options = o
        self.host = o.host
        self.port = o.port
        self._clock = MarketClock(o.speed, o.start_ms)
        self._sim = _Sim(
            o.symbols, o.tape, seed=o.seed, rate=o.rate, start_ms=self._clock.start_ms, history_ms=o.history_ms
        )
        self.products = list(self._sim.products.values())
        self.limiter = _RateLimit(requests_per_s, burst)
        self.batch_s = batch_s
        self.heartbeat_s = heartbeat_s
        self.candles_s = candles_s
        self.idle_close_s = idle_close_s
        self.subscribe_deadline_s = subscribe_deadline_s
        self.slow_s = slow_s
        self.refuse = set(refuse)  # products listed over REST whose subscriptions are refused (delisted)
        self.stats: dict[str, int] = {"connections": 0, "open_connections": 0, "requests": 0, "429": 0, "frames": 0}
        self._setup_faults(dict(o.faults), o.faults_seed)
        self._book_faults = DeltaFaults(self.faults, self._injected)
        book_tape = o.book_tape_path()
        self.book_tape = BookTape(book_tape) if book_tape is not None else None
        self._books: dict[str, SimBook] = {}  # product -> its book, from the first level2 subscription
        self._book_key: dict[str, int] = {}  # product -> the key (us) of its book as it is now
        #: Changed levels not yet sent, per product (bids, asks: ticks -> lots, 0 removed).
        self._book_pending: dict[str, tuple[dict[int, int], dict[int, int]]] = {}
        self._conns: dict[_Conn, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_batch = 0.0
        self._next_candles = 0.0

    # -- public surface --

    @property
    def sim(self) -> MarketSim:
        return self._sim

    @property
    def tape_path(self) -> Path | None:
        return self._sim.tape_path

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT``: the WebSocket is at the root, as on the venue."""
        return f"ws://{self.netloc}"

    async def stop(self) -> None:
        await self._stop_pump()
        conns = [c for c in self._conns if not c.stalled]
        for c in self._conns:
            if c.stalled:
                c.closing = True
                c.transport.abort()
        if conns:
            await asyncio.gather(*(self._close(c, 1001) for c in conns), return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await self._stop_server()
        self._sim.close()
        if self.book_tape is not None:
            self.book_tape.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"coinbase replica stopped: trades={self._sim.trades_released} connections={s['connections']} "
            f"requests={s['requests']} 429s={s['429']} frames={s['frames']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- REST --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._ws(request)
        self.stats["requests"] += 1
        ip = request.remote or "?"
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        if not self.limiter.take(ip):
            self.stats["429"] += 1
            return self._error(429, "RATE_LIMIT_EXCEEDED", "Too many requests")
        self._advance()
        try:
            return self._route(path, request.query)
        except _Refused as e:
            return self._error(e.status, e.error, e.details)

    def _route(self, path: str, q: Mapping[str, str]) -> web.Response:
        if path == codec.TIME_PATH:
            now = self._clock.now_ms()
            iso = codec.ms_iso(now)
            return self._json({"iso": iso, "epochSeconds": str(now // 1000), "epochMillis": str(now)})
        if path == "/v2/time":
            now = self._clock.now_ms()
            return self._json({"data": {"iso": codec.ms_iso(now, 0)[:-2] + "Z", "epoch": now // 1000}})
        if path == codec.PRODUCTS_PATH:
            spot = q.get("product_type", "SPOT").upper() == "SPOT"
            products = [self._product(p) for p in self.products] if spot else []
            return self._json({"products": products, "num_products": len(products)})
        if path.startswith(codec.PRODUCTS_PATH + "/"):
            rest = path[len(codec.PRODUCTS_PATH) + 1 :]
            product, _, tail = rest.partition("/")
            if product not in self._sim.recent:
                raise _Refused(404, "NOT_FOUND", "ProductID is invalid")
            if tail == "":
                return self._json(self._product(product))
            if tail == "candles":
                return self._candles(product, q)
            if tail == "ticker":
                return self._ticker(product, q)
        if path == "/v2/currencies":
            quotes = sorted({p.partition("-")[2] for p in self.products})
            return self._json({"data": [{"id": c, "name": c, "min_size": "0.01"} for c in quotes]})
        if path == "/v2/currencies/crypto":
            bases = sorted({p.partition("-")[0] for p in self.products})
            return self._json(
                {
                    "data": [
                        {"asset_id": c, "code": c, "name": c, "color": "#000000", "sort_index": i, "exponent": 8,
                         "type": "crypto", "address_regex": ".*"}
                        for i, c in enumerate(bases)
                    ]
                }
            )  # fmt: skip
        if path == "/v2/exchange-rates":
            return self._json({"data": {"currency": q.get("currency", "USD"), "rates": {}}})
        raise _Refused(404, "NOT_FOUND", "Not Found")

    def _product(self, product: str) -> dict[str, Any]:
        spec = self._sim.specs[sim_symbol(product)]
        base, _, quote = product.partition("-")
        _, price = self._sim.last_trade(spec.symbol)
        return {
            "product_id": product, "price": fmt(price), "price_percentage_change_24h": "0",
            "volume_24h": "0", "volume_percentage_change_24h": "0", "base_increment": spec.lot,
            "quote_increment": spec.tick, "quote_min_size": "1", "quote_max_size": "150000000",
            "base_min_size": spec.lot, "base_max_size": "3400", "base_name": base, "quote_name": quote,
            "watched": False, "is_disabled": False, "new": False, "status": "online", "cancel_only": False,
            "limit_only": False, "post_only": False, "trading_disabled": False, "auction_mode": False,
            "product_type": "SPOT", "quote_currency_id": quote, "base_currency_id": base,
            "fcm_trading_session_details": None, "mid_market_price": "", "alias": "", "alias_to": [],
            "base_display_symbol": base, "quote_display_symbol": quote, "view_only": False,
            "price_increment": spec.tick, "display_name": product, "product_venue": "CBE",
        }  # fmt: skip

    def _candles(self, product: str, q: Mapping[str, str]) -> web.Response:
        gran = q.get("granularity", "")
        g = codec.GRANULARITY_S.get(gran)
        if g is None:
            raise _Refused(400, "INVALID_ARGUMENT", f"granularity {gran!r} is not a valid granularity")
        start, end = _seconds(q, "start"), _seconds(q, "end")
        limit = _seconds(q, "limit") if q.get("limit") else 350
        if end < start or limit < 1 or limit > 350:
            raise _Refused(400, "INVALID_ARGUMENT", "start and end argument is invalid")
        if (end - start) // g > codec.MAX_SPAN:
            raise _Refused(
                400,
                "INVALID_ARGUMENT",
                "start and end argument is invalid - number of candles requested should be less than 350",
            )
        now = self._clock.now_ms()
        table = self._sim.kline_table(sim_symbol(product), g * 1000, start * 1000, end * 1000 - 1, limit, now)
        rows = [codec.candle_row(c) for c in table.candles() if c.trades > 0]  # quiet intervals are absent
        rows.reverse()  # newest first
        return self._json({"candles": rows})

    def _ticker(self, product: str, q: Mapping[str, str]) -> web.Response:
        limit = min(100, _seconds(q, "limit") if q.get("limit") else 100)
        rows = list(self._sim.recent[product])[-limit:]
        trades = [
            {"trade_id": str(r[0]), "product_id": product, "price": fmt(r[3]), "size": fmt(r[4]),
             "time": codec.ms_iso(r[2], 6), "side": "BUY" if r[5] else "SELL", "bid": "", "ask": ""}
            for r in reversed(rows)
        ]  # fmt: skip
        return self._json({"trades": trades, "best_bid": "", "best_ask": ""})

    async def _rest_fault(self) -> web.Response | None:
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            return self._error(500, "INTERNAL", "internal error")
        if f.due("http429"):
            self._injected("http429")
            return self._error(429, "RATE_LIMIT_EXCEEDED", "Too many requests")
        return None

    def _json(self, doc: Any) -> web.Response:
        return web.Response(status=200, body=msgspec.json.encode(doc), content_type="application/json")

    def _error(self, status: int, error: str, details: str) -> web.Response:
        return web.Response(status=status, body=codec.error_body(error, details), content_type="application/json")

    # -- WebSocket --

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=True, heartbeat=None)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        opened = time.monotonic()
        conn = _Conn(ws, transport, f"{request.remote}:{id(ws) % 100000}", last_sent=opened, opened=opened)
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
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
            self._conns.pop(conn, None)
            self.stats["open_connections"] -= 1
        return ws

    def _control(self, conn: _Conn, text: str) -> None:
        now = self._clock.now_ms()
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            conn.write([codec.error_frame("failure to parse message")])
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        channel = msg.get("channel") if isinstance(msg, dict) else None
        if kind not in ("subscribe", "unsubscribe") or not isinstance(channel, str):
            conn.write([codec.error_frame("type and channel are required")])
            return
        if channel == "level2":
            channel = "l2_data"
        if channel not in codec.CHANNELS and channel != "l2_data":
            conn.write([codec.error_frame(f"Failure to subscribe: unknown channel {channel[:40]}")])
            return
        ids = msg.get("product_ids", [])
        if not isinstance(ids, list) or not all(isinstance(p, str) for p in ids):
            conn.write([codec.error_frame("product_ids must be a list of strings")])
            return
        if channel != "heartbeats" and not ids:
            conn.write([codec.error_frame(f"Failure to subscribe: {channel} needs product_ids")])
            return
        bad = [p for p in ids if p not in self._sim.recent or p in self.refuse]
        out: list[bytes] = []
        for p in bad:
            out.append(codec.error_frame(f"Failure to subscribe: {p[:40]} is not a valid product"))
        if kind == "subscribe" and channel != "heartbeats":
            held = sum(len(ps) for ch, ps in conn.subs.items() if ch != "heartbeats")
            mine = conn.subs.get(channel, set())
            for p in [p for p in ids if p not in bad and p not in mine]:
                if not self._may_subscribe(held):
                    # Wording [UNVERIFIED]: the product named, as for other refusals.
                    out.append(codec.error_frame(f"Failure to subscribe: {p[:40]} exceeds the connection's limit"))
                    bad.append(p)
                else:
                    held += 1
        good = [p for p in ids if p not in bad]
        conn.subscribed = True
        have = conn.subs.setdefault(channel, set()) if kind == "subscribe" else conn.subs.get(channel, set())
        new = [p for p in good if p not in have]
        if kind == "subscribe":
            have.update(good)
            if channel == "heartbeats":
                conn.next_hb = time.monotonic() + self.heartbeat_s
        else:
            have.difference_update(good)
            if channel == "heartbeats" or not have:
                conn.subs.pop(channel, None)
        listed = {ch: (["heartbeats"] if ch == "heartbeats" else sorted(ps)) for ch, ps in conn.subs.items()}
        out.append(conn.frame("subscriptions", now, b"[%s]" % codec.subscriptions_event(listed)))
        if kind == "subscribe" and new:
            self._advance()
            if channel == "l2_data":
                for p in new:
                    out.append(self._l2_snapshot(conn, p))
            elif channel == "market_trades":
                for p in new:
                    rows = list(self._sim.recent[p])
                    rows = [r for r in rows if r[0] <= self._sent_id(p)]
                    out.append(conn.frame("market_trades", now, b"[%s]" % codec.trades_event("snapshot", rows)))
            elif channel == "candles":
                for p in new:
                    c = self._candle(p, now)
                    if c is not None:
                        out.append(conn.frame("candles", now, b"[%s]" % codec.candles_event("snapshot", p, [c])))
        conn.write(out)
        self.stats["frames"] += len(out)

    def _sent_id(self, product: str) -> int:
        """The id of the last trade of ``product`` the stream has sent (later ones are still pending)."""
        pending = self._sim.pending[product]
        return pending[0][0] - 1 if pending else self._sim.last_trade(sim_symbol(product))[0]

    def _candle(self, product: str, now: int) -> Candle | None:
        """The forming 5-minute candle of ``product``, or None before its first trade."""
        cs = self._sim.kline_table(sim_symbol(product), CANDLE_MS, None, now, 1, now).candles()
        return cs[-1] if cs and cs[-1].trades > 0 else None

    async def _close(self, conn: _Conn, code: int) -> None:
        await close_ws(conn, code, b"", _WS_CLOSE_TIMEOUT)

    # -- the pump --

    def _advance(self) -> None:
        now = self._clock.now_ms()
        batches = self._sim.advance_to(now)
        for sym, b in batches.items():
            product = self._sim.products[sym]
            book = self._books.get(product)
            if book is None:
                continue
            ev = book.step(int(b.ticks[-1]), bool(b.maker[-1]))
            book.events.clear()
            key = self._next_key(product, now)
            bids, asks = self._book_pending.setdefault(product, ({}, {}))
            bids.update(ev.bids)
            asks.update(ev.asks)
            if self.book_tape is not None:
                self.book_tape.write(product, key, now, book, ev.bids, ev.asks)

    # -- order books --

    def _next_key(self, product: str, now_ms: int) -> int:
        """A new key (us) for ``product``'s book: its time, one more than the last when that is later."""
        key = max(now_ms * 1000, self._book_key.get(product, 0) + 1)
        self._book_key[product] = key
        return key

    def _book(self, product: str) -> SimBook:
        """The product's book, started at its last trade on first use (and taped whole)."""
        book = self._books.get(product)
        if book is None:
            sym = sim_symbol(product)
            last_id, price = self._sim.last_trade(sym)
            spec = self._sim.specs[sym]
            book = self._books[product] = SimBook(spec, round(price * spec.price_scale), False, max(last_id, 0) + 1)
            now = self._clock.now_ms()
            key = self._next_key(product, now)
            if self.book_tape is not None:
                self.book_tape.write_book(product, key, now, book)
        return book

    def _l2_snapshot(self, conn: _Conn, product: str) -> bytes:
        book = self._book(product)
        bids = [(book.price(t), book.qty(q)) for t, q in sorted(book.bids.items(), reverse=True)]
        asks = [(book.price(t), book.qty(q)) for t, q in sorted(book.asks.items())]
        key = self._book_key[product]
        return conn.l2_frame(key, b"[%s]" % codec.l2_event("snapshot", product, key // 1000, bids, asks))

    def _l2_frames(self, out: dict[_Conn, list[bytes]]) -> None:
        """Each product's changes since the last tick, to its level2 subscribers, with the book faults
        due applied to each connection's numbered frames."""
        pending, self._book_pending = self._book_pending, {}
        for product, (bids, asks) in pending.items():
            book = self._books[product]
            key = self._book_key[product]
            b = [(book.price(t), book.qty(bids[t])) for t in sorted(bids, reverse=True)]
            a = [(book.price(t), book.qty(asks[t])) for t in sorted(asks)]
            events = b"[%s]" % codec.l2_event("update", product, key // 1000, b, a)
            for c in self._conns:
                if not c.closing and not c.stalled and product in c.subs.get("l2_data", ()):
                    frames = self._book_faults.deltas((id(c), product), [c.l2_frame(key, events)])
                    out.setdefault(c, []).extend(frames)

    def _tick(self) -> None:
        self._advance()
        wall = time.monotonic()
        now = self._clock.now_ms()
        out: dict[_Conn, list[bytes]] = {}
        send_batch = wall >= self._next_batch
        if self._book_pending:
            self._l2_frames(out)
        if send_batch:
            self._next_batch = wall + self.batch_s
            self._batch_frames(out, now)
            if wall >= self._next_candles:
                self._next_candles = wall + self.candles_s
                self._candle_frames(out, now)
            for rows in self._sim.pending.values():
                rows.clear()
        for c in self._conns:
            if c.closing or c.stalled:
                continue
            if "heartbeats" in c.subs and wall >= c.next_hb:
                c.next_hb = wall + self.heartbeat_s
                if not c.quiet:
                    c.hb_counter += 1
                    out.setdefault(c, []).append(
                        c.frame("heartbeats", now, b"[%s]" % codec.heartbeat_event(now, c.hb_counter))
                    )
            elif "heartbeats" not in c.subs and c.subs and wall - c.last_sent > self.idle_close_s and not c.doomed:
                c.doomed = True
                self._spawn(self._close(c, 1000))  # the venue closes channels left without updates
            if not c.subscribed and wall - c.opened > self.subscribe_deadline_s and not c.doomed:
                c.doomed = True
                self._spawn(self._close(c, 1000))  # no subscribe within the deadline [UNVERIFIED for AT]
        f = self.faults
        if f is not None:
            self._faults_before_send(f, out)
        for c, frames in out.items():
            c.write(frames)
            self.stats["frames"] += len(frames)
        if f is not None:
            self._faults_after_send(f, out)

    def _batch_frames(self, out: dict[_Conn, list[bytes]], now: int) -> None:
        for product, rows in self._sim.pending.items():
            if not rows:
                continue
            events = codec.trades_event("update", rows)
            for c in self._conns:
                if not c.closing and not c.stalled and product in c.subs.get("market_trades", ()):
                    out.setdefault(c, []).append(c.frame("market_trades", now, b"[%s]" % events))

    def _candle_frames(self, out: dict[_Conn, list[bytes]], now: int) -> None:
        for product in self.products:
            subs = [c for c in self._conns if product in c.subs.get("candles", ()) and not c.closing]
            if not subs:
                continue
            c5 = self._candle(product, now)
            if c5 is None:
                continue
            events = codec.candles_event("update", product, [c5])
            for c in subs:
                if not c.stalled:
                    out.setdefault(c, []).append(c.frame("candles", now, b"[%s]" % events))

    # -- faults --

    def _victims(self, out: dict[_Conn, list[bytes]], frames: int) -> list[_Conn]:
        return [
            c
            for c, fr in out.items()
            if len(fr) >= frames and not (c.closing or c.stalled or c.doomed or c.transport.is_closing())
        ]

    def _faults_before_send(self, f: FaultSchedule, out: dict[_Conn, list[bytes]]) -> None:
        for kind in ("stall", "noheartbeat", "seqgap", *(k for k in MESSAGE_KINDS if k != "poison")):
            if kind not in f or not f.pending(kind):
                continue
            cands = self._victims(out, MESSAGE_KINDS.get(kind, 1))
            if kind == "noheartbeat":
                cands = [c for c in cands if "heartbeats" in c.subs and not c.quiet]
            if not cands:
                continue
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                conn.ws._autoclose = False  # a stalled server answers nothing, not even a close
                out.pop(conn)
            elif kind == "noheartbeat":
                conn.quiet = True
            elif kind == "seqgap":
                conn.seq += 1  # the next frame skips a number; nothing is lost
            else:
                out[conn] = apply_message_fault(kind, out[conn], f.pick)
            self._injected(kind, conn.peer)

    def _faults_after_send(self, f: FaultSchedule, out: dict[_Conn, list[bytes]]) -> None:
        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(self._close(conn, (1000, 1001)[f.pick(2)]))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        actions = {k: a for k, a in (("close", close), ("reset", reset)) if k in f}
        inject_connection_faults(f, lambda: self._victims(out, 1), actions, lambda k, c: self._injected(k, c.peer))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Refused(Exception):
    def __init__(self, status: int, error: str, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.error = error
        self.details = details


def _seconds(q: Mapping[str, str], name: str) -> int:
    v = q.get(name, "")
    if not (v.isascii() and v.isdigit() and len(v) <= 12):
        raise _Refused(400, "INVALID_ARGUMENT", f"{name} is required and must be a UNIX time in seconds")
    return int(v)


__all__ = ["DEFAULT_SYMBOLS", "FAULT_KINDS", "CoinbaseReplica"]
