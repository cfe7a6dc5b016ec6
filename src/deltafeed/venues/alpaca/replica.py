"""A local Alpaca market-data server: REST bars and the stock and crypto WebSockets on one port, seeded market.

Speaks what ``data.alpaca.markets`` and ``stream.data.alpaca.markets`` speak (see
../shared/PROTOCOLS-wave2.md section 6):

- WebSockets at ``/v2/{iex,sip,delayed_sip,test}`` (stocks) and ``/v1beta3/crypto/us`` (crypto), JSON
  text frames, or msgpack binary frames (times as Timestamp extensions) when the handshake says
  ``Content-Type: application/msgpack``: ``[{"T":"success","msg":"connected"}]`` on connect; auth by
  the ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` headers or the ``auth`` action within 10 s; additive
  ``subscribe``/``unsubscribe`` of ``trades``, ``quotes``, ``bars``, ``updatedBars``, ``dailyBars`` with
  the whole set echoed; error codes 400-410; one authenticated connection per key and endpoint (a
  second gets 406 and is closed a moment later, the first keeps streaming).
- Minute bars ``b`` right after each minute mark, holding the trades delivered by then; late trades:
  one in ``late_every`` of the trades in a minute's last second is held back and delivered just after
  the mark (after the ``b`` bar), and an ``updatedBars`` ``u`` bar with the whole minute follows after
  the next half-minute mark. Daily bars ``d`` (``dailyBars``) after each minute mark: the running bar
  of the symbol's day (:func:`codec.day_of`: midnight to midnight New York time for stocks, the UTC
  day for crypto) with every trade delivered before the mark; the one after the day's last minute
  is the whole day but the late trades of its last second.
- REST ``GET /v2/stocks/bars`` and ``/v1beta3/crypto/us/bars`` (multi-symbol, sorted by symbol then
  time, ``limit`` over all symbols), ``GET /v2/stocks/{symbol}/bars``; ``page_token``/``next_page_token``;
  bars hold every trade at its event time (late ones included) and intervals without trades are absent;
  ``1Day``/``1D`` bars are the symbol's days, served once the day is over;
  ``requests_per_min`` per key (200), then 429 with ``X-RateLimit-*`` headers; a ``Date`` header on the
  market clock.

The simulated market trades around the clock for stocks too (extended and overnight sessions alike):
the tape is the truth whatever the calendar says. Trade ids increase but are not consecutive (as
Alpaca's are not a per-symbol sequence). The tape (``tape=``) is ``symbol,trade_id,time_ms,price,qty``
with Alpaca's symbols, every trade at its event time.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import logging
import re
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from deltafeed.candles.calendar import AlwaysOpen
from deltafeed.model import BadInput, Candle, fmt, timeframe
from deltafeed.net.frames import text_frame, text_header
from deltafeed.replicas.faults import (
    MESSAGE_KINDS,
    FaultSchedule,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.quotes import PairSpec, QuoteMarket, QuoteSim
from deltafeed.replicas.server import ReplicaBase, close_ws
from deltafeed.replicas.sim import Grid, MarketClock, MarketSim, TradeBatch, grid_of
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, codec

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("AAPL", "MSFT", "BTC/USD")
FAULT_KINDS = ("close", "reset", "stall", "drop", "dup", "reorder", "garbage", "http500", "http429", "slow")
AUTH_TIMEOUT_S = 10.0
_WS_CLOSE_TIMEOUT = 2.0
_TIMEFRAME = re.compile(r"^([1-9][0-9]?)(Min|T|Hour|H|Day|D)$")
_MINUTE = 60_000

_Row = tuple[int, int, float, float, bool]  # alpaca id, time_ms, price, size, taker sells
#: The quoted size of each side (the simulated book's top level).
QUOTE_SIZE = {False: 100.0, True: 0.5}


def quote_spec(symbol: str, start_price: float) -> PairSpec:
    """The quote simulation of one Alpaca symbol: cents, a spread of one to a few cents about
    ``start_price`` (the trades' start), 0.5 % an hour of volatility."""
    base, _, quote = symbol.partition("/")
    points = max(100, round(start_price * 100))
    return PairSpec(symbol, base, quote or "USD", 2, points, 1, 1.5, 0.005)


def binary_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final binary frame (a text frame's header with opcode 2)."""
    return b"\x82" + text_header(len(payload))[1:] + payload


def sim_symbol(symbol: str) -> str:
    """The simulator's name of an Alpaca symbol (``BTC/USD`` -> ``BTCUSD``); BadInput for a bad one."""
    base, sep, quote = symbol.partition("/")
    name = base + quote
    if not (name.isalnum() and symbol == symbol.upper() and (not sep or (base and quote))):
        raise BadInput(f"symbol {symbol!r} is not an Alpaca ticker (AAPL) or crypto pair (BTC/USD)")
    return name


def alpaca_id(sim_id: int) -> int:
    """An increasing, non-consecutive trade id from the simulator's consecutive one."""
    return sim_id * 10 + sim_id % 7


class _Minute:
    """The trades of one minute of one symbol delivered on time (what its ``b`` bar holds)."""

    __slots__ = ("c", "h", "l", "n", "notional", "o", "v")

    def __init__(self, p: float) -> None:
        self.o = self.h = self.l = self.c = p
        self.v = 0.0
        self.n = 0
        self.notional = 0.0

    def add(self, p: float, q: float) -> None:
        self.h = max(self.h, p)
        self.l = min(self.l, p)
        self.c = p
        self.v += q
        self.n += 1
        self.notional += p * q

    def merge(self, m: _Minute) -> None:
        """Take in the trades of ``m``, which came after these."""
        self.h = max(self.h, m.h)
        self.l = min(self.l, m.l)
        self.c = m.c
        self.v += m.v
        self.n += m.n
        self.notional += m.notional

    def bar(self, kind: str, symbol: str, open_time: int) -> dict[str, Any]:
        c = Candle(open_time, self.o, self.h, self.l, self.c, self.v, self.n, True)
        return codec.bar_msg(kind, symbol, c, self.notional / self.v if self.v else self.c)


class _Sim(MarketSim):
    """The market under Alpaca's symbols; splits released trades into on-time and late ones."""

    def __init__(self, symbols: Iterable[str], tape: Path | None, late_every: int, **kw: Any) -> None:
        self.names = {sim_symbol(s): s for s in symbols}
        self._tape = TapeWriter.trades(tape) if tape is not None else None
        self.late_every = late_every
        self.pending: dict[str, list[_Row]] = {s: [] for s in self.names.values()}  # on time, to send
        self.late: dict[str, list[_Row]] = {s: [] for s in self.names.values()}  # held past their minute
        self.minutes: dict[str, dict[int, _Minute]] = {s: {} for s in self.names.values()}
        #: Per symbol, its day so far: the trades delivered on time and the late ones delivered since.
        self.days: dict[str, dict[int, _Minute]] = {s: {} for s in self.names.values()}
        self.late_trades = 0
        super().__init__(list(self.names), tape=None, **kw)
        for s in self.names.values():  # the history is served over REST, not streamed
            self.pending[s].clear()
            self.late[s].clear()
            self.minutes[s].clear()

    @property
    def tape_path(self) -> Path | None:
        return self._tape.path if self._tape is not None else None

    def advance_to(self, market_ms: int, symbols: Iterable[str] | None = None) -> dict[str, TradeBatch]:
        out = super().advance_to(market_ms, symbols)
        for name, b in out.items():
            sym = self.names[name]
            ids = [alpaca_id(i) for i in range(b.first_id, b.last_id + 1)]
            times = b.times.tolist()
            prices = b.prices().tolist()
            qtys = b.qtys().tolist()
            makers = b.maker.tolist()
            minutes = self.minutes[sym]
            for k, (tid, t, p, q, m) in enumerate(zip(ids, times, prices, qtys, makers, strict=True)):
                row = (tid, t, p, q, not m)
                if self.late_every and t % _MINUTE >= _MINUTE - 1000 and (b.first_id + k) % self.late_every == 0:
                    self.late[sym].append(row)
                    self.late_trades += 1
                    continue
                self.pending[sym].append(row)
                mb = t - t % _MINUTE
                acc = minutes.get(mb)
                if acc is None:
                    acc = minutes[mb] = _Minute(p)
                acc.add(p, q)
            if self._tape is not None:
                self._tape.write(sym, ids, times, [fmt(p) for p in prices], [fmt(q) for q in qtys])
        return out

    def close(self) -> None:
        super().close()
        if self._tape is not None:
            self._tape.close()


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    transport: asyncio.Transport
    peer: str
    crypto: bool
    msgpack: bool
    endpoint: str
    opened: float
    key: str | None = None  # set once authenticated
    subs: dict[str, set[str]] = field(default_factory=dict)
    closing: bool = False
    stalled: bool = False
    doomed: bool = False

    def write(self, payloads: list[bytes]) -> None:
        tr = self.transport
        if self.closing or self.stalled or tr.is_closing() or not payloads:
            return
        make = binary_frame if self.msgpack else text_frame
        tr.write(b"".join(make(p) for p in payloads))

    def wants(self, channel: str, symbol: str) -> bool:
        s = self.subs.get(channel)
        return s is not None and (symbol in s or "*" in s)


class _Window:
    """Requests per key in fixed one-minute windows of wall time, as ``X-RateLimit-*`` reports them."""

    def __init__(self, per_min: int) -> None:
        self.per_min = per_min
        self._used: dict[str, tuple[int, int]] = {}

    def take(self, key: str) -> tuple[bool, int, int]:
        """(allowed, remaining, reset epoch seconds)."""
        now = time.time()
        window = int(now // 60)
        w, used = self._used.get(key, (window, 0))
        if w != window:
            used = 0
        reset = (window + 1) * 60
        if used >= self.per_min:
            return False, 0, reset
        self._used[key] = (window, used + 1)
        return True, self.per_min - used - 1, reset


class AlpacaReplica(ReplicaBase):
    """An Alpaca market-data server on ``host:port`` (see the module docstring).

    ``rate`` is trades per market second per symbol, ``speed`` market seconds per wall second;
    ``late_every`` (0: none) makes one in N trades of a minute's last second late; ``limit_close_s``
    is how long a connection refused with 406 stays open; ``faults`` as in
    :mod:`deltafeed.replicas.faults`, of :data:`FAULT_KINDS`.
    """

    venue = "alpaca"
    tick_s = 0.02
    _log = log
    fault_kinds = FAULT_KINDS

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
        requests_per_min: int = codec.REQUESTS_PER_MIN,
        late_every: int = 7,
        quote_rate: float | None = None,
        quote_tape: str | Path | None = None,
        limit_close_s: float = 1.0,
        slow_s: float = 1.0,
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
            o.symbols, o.tape, late_every, seed=o.seed, rate=o.rate, start_ms=self._clock.start_ms,
            history_ms=o.history_ms,
        )  # fmt: skip
        self.symbols = list(self._sim.names.values())
        # Quotes: their own seeded simulation per symbol (``quote_rate`` a market second, default
        # ``rate``), around the clock like the trades, taped as ``symbol,time_ms,bid,ask``.
        specs = [quote_spec(s, self._sim.specs[sim_symbol(s)].start_ticks / self._sim.specs[sim_symbol(s)].price_scale)
                 for s in self.symbols]  # fmt: skip
        qsim = QuoteSim(specs, seed=o.seed, rate=quote_rate or o.rate, calendar=AlwaysOpen())
        self._quotes = QuoteMarket(qsim, self._clock.start_ms, o.history_ms, quote_tape)
        self.window = _Window(requests_per_min)
        self.limit_close_s = limit_close_s
        self.slow_s = slow_s
        self.stats: dict[str, int] = {
            "connections": 0, "msgpack_connections": 0, "open_connections": 0, "requests": 0, "429": 0, "frames": 0,
            "refused_406": 0, "bars": 0, "daily_bars": 0, "updated_bars": 0, "late_trades": 0, "quotes": 0,
        }  # fmt: skip
        self._setup_faults(dict(o.faults), o.faults_seed)
        self._conns: dict[_Conn, None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        now = self._clock.now_ms()
        # The last minute mark whose bars went out: the history's, not the clock's. Trades after the
        # history (the simulator released it up to a moment ago) gather per minute from there on, and
        # a minute mark between the two would leave that minute's later trades out of every bar (and
        # out of the daily bar, which then misses them: found by test_alpaca_clients' daily bars).
        released = self._sim.released_ms
        self._mark = released - released % _MINUTE
        self._seed_days(now)
        self._updates: list[tuple[int, str]] = []  # (minute open, symbol) whose u bar is due at +90 s

    # -- public surface --

    @property
    def sim(self) -> MarketSim:
        return self._sim

    @property
    def tape_path(self) -> Path | None:
        return self._sim.tape_path

    @property
    def quote_tape_path(self) -> Path | None:
        return self._quotes.tape.path if self._quotes.tape is not None else None

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT``: the streams are ``/v2/{feed}`` and ``/v1beta3/crypto/us`` under it."""
        return f"ws://{self.netloc}"

    def stock_stream_url(self, feed: str = "iex") -> str:
        return self.ws_url + codec.stock_stream_path(feed)

    @property
    def crypto_stream_url(self) -> str:
        return self.ws_url + codec.CRYPTO_STREAM_PATH

    async def stop(self) -> None:
        await self._stop_pump()
        for c in list(self._conns):
            if c.stalled:
                c.closing = True
                c.transport.abort()
        conns = [c for c in self._conns if not c.closing]
        if conns:
            await asyncio.gather(*(close_ws(c, 1001, b"", _WS_CLOSE_TIMEOUT) for c in conns), return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await self._stop_server()
        self._sim.close()
        if self._quotes.tape is not None:
            self._quotes.tape.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"alpaca replica stopped: trades={self._sim.trades_released} late={self._sim.late_trades} "
            f"connections={s['connections']} refused_406={s['refused_406']} requests={s['requests']} "
            f"429s={s['429']} frames={s['frames']} updated_bars={s['updated_bars']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- REST --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._ws(request)
        self.stats["requests"] += 1
        key = request.headers.get("APCA-API-KEY-ID", "")
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        crypto = path.startswith("/v1beta3/crypto/")
        if not crypto and (key != DEV_KEY or request.headers.get("APCA-API-SECRET-KEY") != DEV_SECRET):
            return self._error(401, "unauthorized.")
        ok, remaining, reset = self.window.take(key or (request.remote or "?"))
        headers = {"X-RateLimit-Limit": str(self.window.per_min), "X-RateLimit-Remaining": str(remaining),
                   "X-RateLimit-Reset": str(reset)}  # fmt: skip
        if not ok:
            self.stats["429"] += 1
            return self._error(429, "too many requests.", headers)
        self._sim.advance_to(self._clock.now_ms())
        self._quotes.advance_to(self._clock.now_ms())
        try:
            if path in (codec.STOCK_QUOTES_PATH, codec.CRYPTO_QUOTES_PATH):
                syms = [s for s in request.query.get("symbols", "").split(",") if s]
                return self._historical_quotes(syms, request.query, crypto, headers)
            if path in (codec.STOCK_BARS_PATH, codec.CRYPTO_BARS_PATH):
                syms = [s for s in request.query.get("symbols", "").split(",") if s]
                return self._bars(syms, request.query, None, crypto, headers)
            m = re.fullmatch(r"/v2/stocks/([A-Z0-9.]+)/bars", path)
            if m:
                return self._bars([m.group(1)], request.query, m.group(1), False, headers)
        except _Refused as e:
            return self._error(e.status, e.message, headers)
        return self._error(404, "not found", headers)

    def _bars(self, syms: list[str], q: Mapping[str, str], single: str | None, crypto: bool,
              headers: dict[str, str]) -> web.Response:  # fmt: skip
        if not syms:
            raise _Refused(400, "missing symbols")
        tfm = _TIMEFRAME.match(q.get("timeframe", ""))
        if tfm is None:
            raise _Refused(400, f"invalid timeframe: {q.get('timeframe', '')[:20]}")
        iv = int(tfm.group(1)) * codec.TIMEFRAME_MS[tfm.group(2)]
        if iv > 86_400_000:
            raise _Refused(400, f"invalid timeframe: {q.get('timeframe', '')[:20]}")
        # A daily bar is the symbol's day (New York for stocks); every other bar is on the epoch grid.
        grid = grid_of(timeframe(codec.CRYPTO_DAY if crypto else codec.STOCK_DAY)) if iv == 86_400_000 else Grid(iv)
        now = self._clock.now_ms()
        start, end, limit, offset = self._query(syms, q, crypto, now)
        rows: list[tuple[str, Candle, float]] = []
        for s in sorted(set(syms)):
            table = self._sim.kline_table(sim_symbol(s), grid, start, end, 10**9, now)
            for c, ex in zip(table.candles(), table.extras(), strict=True):
                if c.trades > 0 and c.closed:
                    rows.append((s, c, ex[0] / c.volume if c.volume else c.close))
        page, next_token = _page(rows, offset, limit)
        out: dict[str, list[tuple[Candle, float]]] = {} if single is None else {single: []}
        for s, c, vw in page:
            out.setdefault(s, []).append((c, vw))
        body = codec.bars_body(out, next_token, single)
        return web.Response(status=200, body=body, content_type="application/json", headers=self._date(headers))

    def _query(self, syms: list[str], q: Mapping[str, str], crypto: bool, now: int) -> tuple[int, int, int, int]:
        """``start``, ``end`` (inclusive), ``limit`` and the page's offset of a history request."""
        try:
            start = codec.parse_time_param(q["start"]) if q.get("start") else now - now % 86_400_000
            end = codec.parse_time_param(q["end"]) if q.get("end") else now
            limit = int(q.get("limit") or 1000)
        except ValueError:
            raise _Refused(400, "invalid start, end or limit") from None
        if not 1 <= limit <= codec.PAGE_LIMIT:
            raise _Refused(400, f"invalid limit: must be between 1 and {codec.PAGE_LIMIT}")
        for s in syms:
            if s not in self._sim.pending or codec.is_crypto(s) != crypto:
                raise _Refused(400, f"invalid symbol: {s[:20]}")
        offset = 0
        token = q.get("page_token")
        if token:
            try:
                offset = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("o:"))
            except ValueError:
                raise _Refused(400, "invalid page token") from None
        return start, end, limit, offset

    def _historical_quotes(self, syms: list[str], q: Mapping[str, str], crypto: bool,
                           headers: dict[str, str]) -> web.Response:  # fmt: skip
        """``GET /v2/stocks/quotes`` and ``/v1beta3/crypto/us/quotes``: the released quotes of the
        symbols with time in [start, end], sorted by symbol then time, ``limit`` over all of them."""
        if not syms:
            raise _Refused(400, "missing symbols")
        now = self._clock.now_ms()
        start, end, limit, offset = self._query(syms, q, crypto, now)
        end = min(end, self._quotes.released_ms)
        rows: list[tuple[str, dict[str, Any]]] = []
        for s in sorted(set(syms)):
            size = QUOTE_SIZE[crypto]
            rows += [(s, codec.quote_msg(s, x.time_ms, x.bid, x.ask, size, crypto))
                     for x in self._quotes.sim.quotes(s, start, end + 1)]  # fmt: skip
        page, next_token = _page(rows, offset, limit)
        out: dict[str, list[dict[str, Any]]] = {}
        for s, m in page:
            out.setdefault(s, []).append(m)
        body = codec.quotes_body(out, next_token)
        return web.Response(status=200, body=body, content_type="application/json", headers=self._date(headers))

    def _date(self, headers: dict[str, str]) -> dict[str, str]:
        return headers | {"Date": formatdate(self._clock.now_ms() / 1000, usegmt=True)}

    async def _rest_fault(self) -> web.Response | None:
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            return self._error(500, "internal server error")
        if f.due("http429"):
            self._injected("http429")
            return self._error(429, "too many requests.", {"X-RateLimit-Reset": str(int(time.time()) + 1)})
        return None

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=status, body=codec.error_body(message), content_type="application/json",
            headers=self._date(headers or {}),
        )  # fmt: skip

    # -- WebSocket --

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        crypto = path == codec.CRYPTO_STREAM_PATH
        if not crypto and path.removeprefix("/v2/") not in codec.STOCK_FEEDS:
            return self._error(404, "not found")
        ws = web.WebSocketResponse(autoping=True, heartbeat=None, max_msg_size=1 << 16)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        msgpack = request.headers.get("Content-Type", "").lower().startswith("application/msgpack")
        conn = _Conn(ws, transport, f"{request.remote}:{id(ws) % 100000}", crypto, msgpack, path, time.monotonic())
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["msgpack_connections"] += msgpack
        self.stats["open_connections"] += 1
        conn.write([codec.control_frame("success", msgpack, msg="connected")])
        key, secret = request.headers.get("APCA-API-KEY-ID"), request.headers.get("APCA-API-SECRET-KEY")
        if key is not None:
            self._auth(conn, key, secret or "")
        self._spawn(self._auth_deadline(conn))
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    self._action(conn, msg.data)
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

    async def _auth_deadline(self, conn: _Conn) -> None:
        await asyncio.sleep(AUTH_TIMEOUT_S)
        if conn.key is None and not conn.closing:
            conn.write([codec.error_frame(404, conn.msgpack)])
            await close_ws(conn, 1008, b"auth timeout", _WS_CLOSE_TIMEOUT)

    def _auth(self, conn: _Conn, key: str, secret: str) -> None:
        if conn.key is not None:
            conn.write([codec.error_frame(403, conn.msgpack)])
            return
        if key != DEV_KEY or secret != DEV_SECRET:
            conn.write([codec.error_frame(402, conn.msgpack)])  # the socket stays open, as on the venue
            return
        if any(c.key == key and c.endpoint == conn.endpoint and not c.closing for c in self._conns if c is not conn):
            self.stats["refused_406"] += 1
            conn.write([codec.error_frame(406, conn.msgpack)])
            conn.doomed = True
            self._spawn(self._close_later(conn, self.limit_close_s))
            return
        conn.key = key
        conn.write([codec.control_frame("success", conn.msgpack, msg="authenticated")])

    async def _close_later(self, conn: _Conn, after_s: float) -> None:
        await asyncio.sleep(after_s)
        await close_ws(conn, 1008, b"connection limit exceeded", _WS_CLOSE_TIMEOUT)

    def _action(self, conn: _Conn, data: bytes | str) -> None:
        if conn.doomed:
            return
        msg = codec.decode_action(data, isinstance(data, bytes) and conn.msgpack)
        if msg is None or not isinstance(msg.get("action"), str):
            conn.write([codec.error_frame(400, conn.msgpack)])
            return
        action = msg["action"]
        if action == "auth":
            self._auth(conn, str(msg.get("key", "")), str(msg.get("secret", "")))
            return
        if conn.key is None:
            conn.write([codec.error_frame(401, conn.msgpack)])
            return
        if action not in ("subscribe", "unsubscribe"):
            conn.write([codec.error_frame(400, conn.msgpack)])
            return
        for ch in codec.SUB_CHANNELS:
            syms = msg.get(ch)
            if syms is None:
                continue
            if not isinstance(syms, list) or not all(isinstance(s, str) for s in syms):
                conn.write([codec.error_frame(400, conn.msgpack)])
                return
            have = conn.subs.setdefault(ch, set())
            if action == "subscribe":
                have.update(syms)
            else:
                have.difference_update(syms)
        subs: dict[str, list[str]] = {ch: sorted(conn.subs.get(ch, ())) for ch in codec.SUB_CHANNELS}
        if not conn.crypto:  # corrections and cancel errors follow trades (stocks)
            subs["statuses"] = []
            subs["lulds"] = []
            subs["corrections"] = subs["trades"]
            subs["cancelErrors"] = subs["trades"]
        conn.write([codec.control_frame("subscription", conn.msgpack, **subs)])

    # -- the pump --

    def _tick(self) -> None:
        now = self._clock.now_ms()
        self._sim.advance_to(now)
        quotes = {
            s: [codec.quote_msg(s, x.time_ms, x.bid, x.ask, QUOTE_SIZE[codec.is_crypto(s)], codec.is_crypto(s))
                for x in b.quotes()]
            for s, b in self._quotes.advance_to(now).items()
        }  # fmt: skip
        mark = now - now % _MINUTE
        # Per symbol, the messages of this tick in delivery order.
        out: dict[str, list[dict[str, Any]]] = {}
        bars: dict[str, list[dict[str, Any]]] = {}
        updated: dict[str, list[dict[str, Any]]] = {}
        after: dict[str, list[dict[str, Any]]] = {}
        marks = list(range(self._mark + _MINUTE, mark + 1, _MINUTE))
        self._mark = mark
        for sym in self.symbols:
            crypto = codec.is_crypto(sym)
            day = timeframe(codec.day_of(sym))
            days = self._sim.days[sym]
            rows = self._sim.pending[sym]
            self._sim.pending[sym] = []
            msgs = out.setdefault(sym, [])
            held: list[_Row] = []
            for nxt in marks:
                minute = nxt - _MINUTE
                msgs += [codec.trade_msg(sym, *r[:4], crypto, r[4]) for r in rows if r[1] < nxt]
                rows = [r for r in rows if r[1] >= nxt]
                acc = self._sim.minutes[sym].pop(minute, None)
                day_open = day.start(minute)
                if acc is not None:
                    bars.setdefault(sym, []).append(acc.bar("b", sym, minute))
                    today = days.get(day_open)
                    if today is None:
                        days[day_open] = copy.copy(acc)
                    else:
                        today.merge(acc)
                if day_open in days:
                    bars.setdefault(sym, []).append(days[day_open].bar("d", sym, day_open))
                for old in [d for d in days if day.next(d) <= nxt]:
                    del days[old]  # its last bar went out: late trades delivered now belong to no bar
                late = [r for r in self._sim.late[sym] if r[1] < nxt]
                for r in late:
                    late_day = days.get(day.start(r[1]))
                    if late_day is not None:
                        late_day.add(r[2], r[3])
                if late:
                    self._sim.late[sym] = [r for r in self._sim.late[sym] if r[1] >= nxt]
                    held += late
                    self._updates.append((minute, sym))
                    self.stats["late_trades"] += len(late)
            # Late trades go out after the trades of the new minute this tick delivers.
            after[sym] = [codec.trade_msg(sym, *r[:4], crypto, r[4]) for r in rows + held]
        due = [u for u in self._updates if u[0] + _MINUTE + codec.UPDATE_AFTER_MS <= now]
        if due:
            self._updates = [u for u in self._updates if u[0] + _MINUTE + codec.UPDATE_AFTER_MS > now]
            for minute, sym in due:
                t = self._sim.kline_table(sim_symbol(sym), _MINUTE, minute, minute, 1, now)
                for bc, ex in zip(t.candles(), t.extras(), strict=True):
                    updated.setdefault(sym, []).append(
                        codec.bar_msg("u", sym, bc, ex[0] / bc.volume if bc.volume else bc.close)
                    )
        frames: dict[_Conn, list[bytes]] = {}
        for c in self._conns:
            if c.closing or c.stalled or c.key is None:
                continue
            parts: list[bytes] = []
            for sym in self.symbols:
                if codec.is_crypto(sym) != c.crypto:
                    continue
                trades = c.wants("trades", sym)
                wanted = [m for m in bars.get(sym, []) if c.wants("bars" if m["T"] == "b" else "dailyBars", sym)]
                self.stats["daily_bars"] += sum(m["T"] == "d" for m in wanted)  # sent to a subscriber
                quoted = quotes.get(sym, []) if c.wants("quotes", sym) else []
                self.stats["quotes"] += len(quoted)
                first = (out.get(sym, []) if trades else []) + quoted + wanted
                second = after.get(sym, []) if trades else []
                second = second + (updated.get(sym, []) if c.wants("updatedBars", sym) else [])
                parts += [codec.encode_frame(msgs, c.msgpack) for msgs in (first, second) if msgs]
            if parts:
                frames[c] = parts
        self.stats["bars"] += sum(m["T"] == "b" for v in bars.values() for m in v)
        self.stats["updated_bars"] += sum(len(v) for v in updated.values())
        f = self.faults
        if f is not None:
            self._faults_before_send(f, frames)
        for c, fr in frames.items():
            c.write(fr)
            self.stats["frames"] += len(fr)
        if f is not None:
            self._faults_after_send(f, frames)

    def _seed_days(self, now: int) -> None:
        """Each symbol's day so far, from the history before the replica streams: a daily bar holds
        those trades too."""
        for sym in self.symbols:
            day = timeframe(codec.day_of(sym))
            t = self._sim.kline_table(sim_symbol(sym), grid_of(day), day.start(now), day.start(now), 1, now)
            for c, ex in zip(t.candles(), t.extras(), strict=True):
                if c.trades:
                    m = self._sim.days[sym][c.open_time] = _Minute(c.open)
                    m.h, m.l, m.c, m.v, m.n, m.notional = c.high, c.low, c.close, c.volume, c.trades, ex[0]

    # -- faults --

    def _victims(self, out: dict[_Conn, list[bytes]], n: int) -> list[_Conn]:
        return [c for c, fr in out.items() if len(fr) >= n and not (c.closing or c.stalled or c.doomed)]

    def _faults_before_send(self, f: FaultSchedule, out: dict[_Conn, list[bytes]]) -> None:
        for kind in ("stall", *(k for k in MESSAGE_KINDS if k != "poison")):
            if kind not in f or not f.pending(kind):
                continue
            cands = self._victims(out, MESSAGE_KINDS.get(kind, 1))
            if not cands:
                continue
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                conn.ws._autoclose = False  # a stalled server answers nothing, not even a close
                out.pop(conn)
            else:
                out[conn] = apply_message_fault(kind, out[conn], f.pick)
            self._injected(kind, conn.peer)

    def _faults_after_send(self, f: FaultSchedule, out: dict[_Conn, list[bytes]]) -> None:
        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(close_ws(conn, (1000, 1001)[f.pick(2)], b"", _WS_CLOSE_TIMEOUT))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        actions = {k: a for k, a in (("close", close), ("reset", reset)) if k in f}
        inject_connection_faults(f, lambda: self._victims(out, 1), actions, lambda k, c: self._injected(k, c.peer))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _page(rows: list[Any], offset: int, limit: int) -> tuple[list[Any], str | None]:
    """The page of ``rows`` at ``offset``, and the token of the next one (None: the last)."""
    nxt = offset + limit
    return rows[offset:nxt], base64.urlsafe_b64encode(f"o:{nxt}".encode()).decode() if nxt < len(rows) else None


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


__all__ = ["DEFAULT_SYMBOLS", "FAULT_KINDS", "AlpacaReplica"]
