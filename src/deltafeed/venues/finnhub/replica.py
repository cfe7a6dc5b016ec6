"""A local Finnhub server: the trades WebSocket and the REST candle endpoints on one port, seeded prices.

Speaks what ``wss://ws.finnhub.io`` and ``https://finnhub.io/api/v1`` speak for market data (see
../shared/PROTOCOLS.md section 3); clients use :attr:`FinnhubReplica.ws_url` and :attr:`FinnhubReplica.rest_url`:

* WebSocket at ``/?token=KEY`` (``/ws?token=KEY`` too). Client messages ``{"type":"subscribe","symbol":S}`` and
  ``{"type":"unsubscribe","symbol":S}``, never acknowledged (Finnhub sends no ack); subscribing to a symbol the
  replica does not simulate is silently accepted and streams nothing, as a real unknown symbol would. Server
  messages: ``{"data":[{"p":…,"s":…,"t":…,"v":…},…],"type":"trade"}`` holding every item of one symbol
  released in one pump tick (at most :data:`MAX_ITEMS` per message, several messages per tick), and
  ``{"type":"ping"}`` every ``ping_s`` wall seconds (Finnhub's interval is [UNVERIFIED]).
* ``GET /api/v1/{forex,stock,crypto}/candle?symbol=&resolution=&from=&to=`` with resolution 1, 5, 15, 30, 60,
  D, W, M: Finnhub's column arrays ``{"c","h","l","o","s":"ok","t","v"}`` built from exactly the prices the
  stream sends, or ``{"s":"no_data"}``.

Semantics chosen, each [UNVERIFIED] against the real venue unless marked:

* **Symbols.** ``OANDA:AAA_BBB`` are forex: :class:`~deltafeed.replicas.quotes.QuoteSim` quotes (FX calendar:
  nothing at weekends) streamed as *price updates*, ``v = 0`` (Finnhub's rule for venues without trades [V]),
  ``p`` = the mid, ``(bid + ask) / 2`` exactly (one decimal more than the pair's), which is also what
  deltafeed builds forex candles from by default. Any other ``EXCHANGE:PAIR`` is crypto: trades of
  :class:`~deltafeed.replicas.sim.MarketSim` for ``PAIR`` with non-alphanumerics removed (``COINBASE:BTC-USD``
  → ``BTCUSD``), around the clock, ``v`` the traded quantity (5 decimals). A bare ticker (``AAPL``) is a US
  stock: MarketSim trades (from 100.00, the simulator's default start price) in whole shares (at least 1),
  released only during regular sessions, :class:`~deltafeed.candles.calendar.UsEquityCalendar` (Monday to
  Friday 09:30-16:00 America/New_York, DST-aware, exchange holidays closed), so nights, weekends and holidays
  are silent. Two symbols of one pair on two exchanges get the same trades.
* **Candles** (``t`` = interval start in UNIX seconds, aligned to the epoch in UTC: D at 00:00 UTC, W on
  Mondays, M on the 1st): o/h/l/c of the prices sent in the interval; ``v`` the summed volume, except for
  forex, whose price updates have no volume, where ``v`` is the *number* of updates (a tick volume, like
  OANDA's own candles). Intervals without a price are omitted, and only complete intervals (end <= the
  market clock's now) are served. ``from``/``to`` select open times in ``[from, to]``.
* **Auth.** Every request needs the key, ``token=`` in the query or the ``X-Finnhub-Token`` header (WebSocket:
  query only). ``token=None`` accepts any non-empty key, each a separate account. A missing or wrong key is
  401 ``{"error":…}`` (real Finnhub was reported answering an empty token with 429 "API limit reached. Please
  sign up for a free account…" [3P finnhubio/Finnhub-API#122]; 401 keeps a missing key from looking like
  throttling).
* **One connection per key** [V]: a second connection with a key that has one open is accepted, sent
  ``{"type":"error","msg":…}`` and closed with 1008 (policy violation); the first one is kept. A stalled
  connection keeps its key until the client hangs up, so a client must close the old socket before it
  reconnects.
* **Symbol cap**: a subscription beyond ``max_symbols`` per connection (50, the free plan [3P]) is refused
  with ``{"type":"error","msg":…}`` and the connection stays open.
* **Limits**, per key: ``calls_per_minute`` per sliding ``window_s`` (60 s) and 30 per sliding second; beyond
  either, 429 ``{"error":"API limit reached. Please try again later. Remaining Limit: 0"}`` (wording
  [3P finnhubio/Finnhub-API#466]) with ``Retry-After`` (header [UNVERIFIED]). Refused calls are not counted.
* **Faults** (``faults=``): ``close`` (close frame 1000 or 1001), ``reset`` (TCP RST), ``stall`` (no more
  output, no ping, no close reply), ``garbage`` (a malformed frame before a message) and ``poison`` (before a
  trade message, the fragment ``{"type":"news",`` or a message whose one trade has ``"p":1e400``:
  :func:`poison_message`) on the WebSocket;
  ``http500``, ``http429`` (Retry-After 1) and ``slow`` on REST. ``drop``, ``dup`` and ``reorder`` are refused:
  Finnhub items carry no id or sequence, so a client cannot detect them and a test of them proves nothing.

The tape (``tape=``) is CSV ``symbol,trade_id,time_ms,price,qty`` (the shared trade tape columns) of every
item the market releases, with price and volume (``qty``) written exactly as the stream writes them; it includes
the history released at construction. Finnhub items carry no id, so ``trade_id`` is the replica's own count of
the symbol's items, from 1.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
from aiohttp import WSMsgType, web

from deltafeed.candles.calendar import UsEquityCalendar
from deltafeed.model import BadInput
from deltafeed.net.frames import text_frame
from deltafeed.replicas.faults import (
    FaultSchedule,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.quotes import PairSpec, QuoteSim
from deltafeed.replicas.server import ReplicaBase, close_ws
from deltafeed.replicas.sim import MarketClock, MarketSim, TradeBatch
from deltafeed.replicas.table import GrowableTable, bucket_starts
from deltafeed.replicas.tape import TRADE_COLUMNS, TapeWriter
from deltafeed.venues.finnhub import codec as codec

log = logging.getLogger(__name__)

I64 = npt.NDArray[np.int64]

DEFAULT_SYMBOLS = ("OANDA:EUR_USD", "BINANCE:BTCUSDT", "AAPL")
PING_S = 15.0  # Finnhub's ping interval is not documented [UNVERIFIED]
TICK_SECONDS = 0.02  # pump period (wall)
#: Items per trade message. Finnhub batches ("a message can contain multiple trades" [V]) but does not say
#: how many; a bound keeps a busy tick from building one huge frame.
MAX_ITEMS = 100
MAX_SEND_BUFFER = 8 * 1024 * 1024
FAULT_KINDS = ("close", "reset", "stall", "garbage", "poison", "http500", "http429", "slow")
TAPE_HEADER = ",".join(TRADE_COLUMNS) + "\n"
RATE_ERROR = "API limit reached. Please try again later. Remaining Limit: 0"
MINUTE_MS = 60_000
_WEEK_OFFSET_MS = 345_600_000  # 1970-01-05, the first Monday
_WS_CLOSE_TIMEOUT = 2.0
_PING = b'{"type":"ping"}'
_DAY_MS = 86_400_000


_POISON_PRICE = 7.25e7  # a sentinel price, replaced by 1e400 in the encoded poison


def poison_message(payload: bytes, pick: Callable[[int], int]) -> list[bytes] | None:
    """The ``poison`` fault's frame before a trade message: the fragment ``{"type":"news",`` (a message of
    an unknown type, cut short), or a trade message holding one trade, a copy of the message's first, with
    a price of ``1e400`` (beyond a double). Only that one trade, so a client that drops the impossible
    price is left with nothing extra. None for a payload that is not a trade message."""
    if not payload.startswith(b'{"data":'):
        return None
    if pick(2) == 0:
        return [b'{"type":"news",']
    first = msgspec.json.decode(payload)["data"][0]
    first["p"] = _POISON_PRICE
    bad = msgspec.json.encode({"data": [first], "type": "trade"})
    return [bad.replace(msgspec.json.encode(_POISON_PRICE), b"1e400", 1)]


def check_faults(spec: str) -> dict[str, float]:
    """``parse_faults`` for this replica: kinds without a Finnhub meaning are refused, naming the valid ones."""
    return _check_rates(parse_faults(spec))


def _check_rates(rates: dict[str, float]) -> dict[str, float]:
    for kind, rate in rates.items():
        if rate > 0 and kind not in FAULT_KINDS:
            why = (
                "Finnhub trades carry no id or sequence, so a client cannot detect it"
                if kind in ("drop", "dup", "reorder")
                else "Finnhub has no such event"
            )
            raise BadInput(f"fault kind {kind!r} does not apply to Finnhub ({why}); use {', '.join(FAULT_KINDS)}")
    return rates


# --- US stock hours -----------------------------------------------------------------------------------


_US_EQUITY = UsEquityCalendar()  # this module's own: a calendar caches its last answer


def us_market_open(times: I64) -> npt.NDArray[np.bool_]:
    """Which of ``times`` (epoch ms) fall in a US regular session."""
    days = times // _DAY_MS
    mask = np.zeros(len(times), np.bool_)
    for d in np.unique(days).tolist():
        t, day_end = d * _DAY_MS, (d + 1) * _DAY_MS
        while (t := _US_EQUITY.next_open(t)) < day_end:
            close = min(_US_EQUITY.next_close(t), day_end)
            mask |= (times >= t) & (times < close)
            t = close
    return mask


# --- instruments, minute rows, candles ----------------------------------------------------------------

_ROW = np.dtype(
    [
        ("t", np.int64),
        ("o", np.int64),
        ("h", np.int64),
        ("l", np.int64),
        ("c", np.int64),
        ("v", np.int64),
        ("n", np.int64),
    ]
)


def _merge_minute(last: Any, first: Any) -> None:
    last["h"] = max(last["h"], first["h"])
    last["l"] = min(last["l"], first["l"])
    last["c"] = first["c"]
    last["v"] += first["v"]
    last["n"] += first["n"]


class _Minutes(GrowableTable):
    """One row per minute with prices (a :class:`GrowableTable`): o/h/l/c as integers of the instrument's
    price scale, summed integer volume and the count. Finnhub's finest resolution is a minute, so every
    candle is an exact roll-up."""

    def __init__(self) -> None:
        super().__init__(_ROW, 256)

    def append(self, times: I64, prices: I64, volumes: I64) -> None:
        if not len(times):
            return
        m = times - times % MINUTE_MS
        starts, ends = bucket_starts(m)
        new = np.empty(len(starts), _ROW)
        new["t"] = m[starts]
        new["o"] = prices[starts]
        new["h"] = np.maximum.reduceat(prices, starts)
        new["l"] = np.minimum.reduceat(prices, starts)
        new["c"] = prices[ends - 1]
        new["v"] = np.add.reduceat(volumes, starts)
        new["n"] = ends - starts
        self.add_buckets(new, _merge_minute)


def interval_bounds(resolution: str, t: I64) -> tuple[I64, I64]:
    """Open and end times (ms) of the ``resolution`` intervals holding each of ``t``: epoch-aligned in UTC,
    weeks from Monday, months from the 1st."""
    if resolution == "M":
        months = t.astype("datetime64[ms]").astype("datetime64[M]")
        opens = months.astype("datetime64[ms]").astype(np.int64)
        return opens, (months + 1).astype("datetime64[ms]").astype(np.int64)
    length = codec.RESOLUTION_MS[resolution]
    offset = _WEEK_OFFSET_MS if resolution == "W" else 0
    opens = t - (t - offset) % length
    return opens, opens + length


@dataclass(slots=True)
class _Items:
    """One symbol's newly released items: times, prices as integers of its scale, volumes as integers."""

    times: I64
    prices: I64
    volumes: I64


class _Instrument:
    """A Finnhub symbol, its kind, its integer price/volume scales, its minute rows and its message template."""

    def __init__(self, name: str, kind: str, price_scale: int, volume_scale: int) -> None:
        self.name = name
        self.kind = kind
        self.price_scale = price_scale
        self.volume_scale = volume_scale
        self.minutes = _Minutes()
        # ``c``, the trade conditions (PROTOCOLS.md section 3: a list of condition strings, optional):
        # US stock trades carry codes (here "1", a regular sale, for every trade); crypto and forex
        # items carry null, as seen on the live stream [UNVERIFIED: the docs' sample has no c].
        cond = '["1"]' if kind == "stock" else "null"
        self.item = '{"c":' + cond + ',"p":%s,"s":' + json.dumps(name) + ',"t":%d,"v":%s}'

    def strings(self, items: _Items) -> tuple[list[str], list[str]]:
        """Price and volume texts exactly as the stream and the tape write them (shortest round-trip floats)."""
        prices = [repr(p) for p in (items.prices / float(self.price_scale)).tolist()]
        if self.kind == "forex":
            vols = ["0"] * len(prices)
        elif self.volume_scale == 1:
            vols = [str(v) for v in items.volumes.tolist()]
        else:
            vols = [repr(v) for v in (items.volumes / float(self.volume_scale)).tolist()]
        return prices, vols


class _TradeSim(MarketSim):
    """A :class:`MarketSim` that keeps every batch it releases, the history its constructor releases included,
    until the replica takes them (MarketSim itself keeps only per-second aggregates)."""

    def __init__(self, symbols: Iterable[str], **kwargs: Any) -> None:
        self.pending: list[TradeBatch] = []
        super().__init__(symbols, **kwargs)

    def advance_to(self, market_ms: int, symbols: Iterable[str] | None = None) -> dict[str, TradeBatch]:
        out = super().advance_to(market_ms, symbols)
        self.pending.extend(out.values())
        return out

    def take(self) -> TradeBatch | None:
        if not self.pending:
            return None
        bs, self.pending = self.pending, []
        if len(bs) == 1:
            return bs[0]
        return TradeBatch(
            bs[0].spec,
            bs[0].first_id,
            np.concatenate([b.times for b in bs]),
            np.concatenate([b.ticks for b in bs]),
            np.concatenate([b.lots for b in bs]),
            np.concatenate([b.maker for b in bs]),
        )


def _check_symbol(s: str) -> str:
    s = s.strip()
    if not s or not s.isprintable() or not s.isascii() or any(ch in s for ch in '",%\\'):
        raise BadInput(f"Finnhub symbol {s!r} is not valid here; use e.g. OANDA:EUR_USD, BINANCE:BTCUSDT, AAPL")
    return s


# --- limits -------------------------------------------------------------------------------------------


class _Window:
    """At most ``limit`` calls per sliding ``window_s`` wall seconds, per key (API key)."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._calls: dict[str, deque[float]] = {}

    def wait(self, key: str, now: float) -> float:
        """0 if a call of ``key`` is allowed now, else the seconds until one would be."""
        q = self._calls.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q[0] + self.window_s - now if len(q) >= self.limit else 0.0

    def record(self, key: str, now: float) -> None:
        self._calls.setdefault(key, deque()).append(now)


class _Reject(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- connections --------------------------------------------------------------------------------------


class _Conn:
    """One WebSocket client: its key, subscriptions, ping schedule and counters."""

    __slots__ = ("closing", "doomed", "next_ping", "peer", "stalled", "subs", "token", "transport", "ws")

    def __init__(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, token: str, peer: str, next_ping: float
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.token = token
        self.peer = peer
        self.subs: dict[str, None] = {}  # in subscription order
        self.next_ping = next_ping
        self.closing = False
        self.stalled = False  # gets nothing more: no data, ping, error or close reply
        self.doomed = False  # a close or reset is on its way

    def write(self, payloads: list[bytes], max_buffer: int, stats: dict[str, int]) -> bool:
        """Whole text frames in one write, or none (counted) when the client is this far behind."""
        tr = self.transport
        if self.closing or self.stalled or tr.is_closing():
            return False
        if tr.get_write_buffer_size() > max_buffer:
            stats["frames_dropped"] += len(payloads)
            stats["slow_skips"] += 1
            return False
        blob = b"".join([text_frame(p) for p in payloads])
        tr.write(blob)
        stats["bytes_sent"] += len(blob)
        return True


def _error(msg: str) -> bytes:
    return msgspec.json.encode({"type": "error", "msg": msg})


def _rest_error(msg: str) -> bytes:
    return msgspec.json.encode({"error": msg})


# --- the server ---------------------------------------------------------------------------------------


class FinnhubReplica(ReplicaBase):
    """A Finnhub market-data server on ``host:port`` (0 = any free port), driven by seeded prices.

    ``rate`` is trades (crypto, stocks in session) or quotes (forex, market open) per market second per
    symbol; ``speed`` market seconds per wall second; the market clock starts at ``start_ms`` (default now)
    and ``history_ms`` of market before it is released at construction. See the module docstring for the
    protocol, the semantics and the faults (``faults=`` spec or mapping, schedule seeded by ``faults_seed``).
    """

    fault_kinds = FAULT_KINDS

    venue = "finnhub"
    tick_s = TICK_SECONDS
    _log = log
    shutdown_timeout = 2.0

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        seed: int = 1,
        rate: float = 2.0,
        speed: float = 1.0,
        history_ms: int = 86_400_000,
        start_ms: int | None = None,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_symbols: int = codec.MAX_SYMBOLS,
        calls_per_minute: int = codec.CALLS_PER_MINUTE,
        calls_per_second: int = codec.CALLS_PER_SECOND,
        window_s: float = 60.0,
        ping_s: float = PING_S,
        max_send_buffer: int = MAX_SEND_BUFFER,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        slow_s: float = 2.0,
        options: ReplicaOptions | None = None,
    ) -> None:
        kw_rates = check_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=kw_rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        self.options = o
        rate, history_ms, seed = o.rate, o.history_ms, o.seed
        if token is not None and not token:
            raise BadInput("the token must not be empty; give --token KEY, or none to accept any key")
        if not (math.isfinite(rate) and rate > 0):
            raise BadInput(f"rate must be a positive number per second, got {rate}")
        if history_ms < 0:
            raise BadInput(f"history must not be negative, got {history_ms} ms")
        for name, v in (
            ("max_symbols", max_symbols),
            ("calls_per_minute", calls_per_minute),
            ("calls_per_second", calls_per_second),
        ):
            if v < 1:
                raise BadInput(f"{name} must be at least 1, got {v}")
        if not ping_s > 0 or not window_s > 0:
            raise BadInput("ping_s and window_s must be positive")
        self.host = o.host
        self.port = o.port
        self.token = token
        self.max_symbols = max_symbols
        self.ping_s = float(ping_s)
        self.max_send_buffer = max_send_buffer
        self.slow_s = slow_s
        self._clock = MarketClock(o.speed, o.start_ms)
        self.minute_limit = _Window(calls_per_minute, window_s)
        self.second_limit = _Window(calls_per_second, 1.0)

        self.instruments: dict[str, _Instrument] = {}
        pairs: dict[str, str] = {}  # QuoteSim pair -> Finnhub symbol
        sims: dict[str, _TradeSim] = {}
        for raw in o.symbols:
            name = _check_symbol(raw)
            if name in self.instruments:
                continue
            kind = codec.symbol_kind(name)
            exchange, _, pair = name.partition(":")
            if kind == "forex":
                if exchange.upper() != "OANDA":
                    raise BadInput(f"forex symbol {name!r}: the replica simulates OANDA pairs only, e.g. OANDA:EUR_USD")
                spec = PairSpec.for_symbol(pair)
                pairs[spec.symbol] = name
                # Prices are bid + ask: twice the mid, so the mid is exact.
                self.instruments[name] = _Instrument(name, kind, 2 * spec.scale, 1)
            else:
                bare = "".join(ch for ch in (pair if kind == "crypto" else name) if ch.isalnum()).upper()
                sim = _TradeSim([bare], seed=seed, rate=rate, start_ms=self._clock.start_ms, history_ms=history_ms)
                sims[name] = sim
                scale = sim.specs[bare].price_scale
                self.instruments[name] = _Instrument(name, kind, scale, 1 if kind == "stock" else 10**5)
        if not self.instruments:
            raise BadInput("no symbols to simulate; give at least one, e.g. OANDA:EUR_USD,BINANCE:BTCUSDT,AAPL")
        self._quotes = QuoteSim(pairs, seed=seed, rate=rate) if pairs else None
        self._pairs = pairs
        self._sims = sims
        self._origin_ms = self._clock.start_ms - history_ms
        self._released_ms = self._origin_ms - 1
        self._tape = TapeWriter.trades(o.tape) if o.tape is not None else None
        #: Where the tape is written (None without one); complete once :meth:`stop` has closed it.
        self.tape_path = self._tape.path if self._tape is not None else None
        #: Items released so far per symbol: the tape's trade ids continue from here.
        self._item_ids: dict[str, int] = dict.fromkeys(self.instruments, 0)
        self.stats: dict[str, int] = {
            "items": 0, "trades": 0, "price_updates": 0, "connections": 0, "open_connections": 0,
            "refused_connections": 0, "requests": 0, "401": 0, "404": 0, "422": 0, "429": 0,
            "messages": 0, "items_sent": 0, "pings": 0, "symbol_cap_errors": 0, "unknown_subscriptions": 0,
            "client_errors": 0, "frames_dropped": 0, "slow_skips": 0, "bytes_sent": 0,
        }  # fmt: skip
        self._setup_faults(_check_rates(dict(o.faults)), o.faults_seed)
        self._conns: dict[_Conn, None] = {}
        self._by_token: dict[str, _Conn] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._advance(self._clock.start_ms)  # the history: minute rows and tape

    # -- public surface --

    @property
    def rest_url(self) -> str:
        """The REST base, ``http://HOST:PORT/api/v1``, as ``https://finnhub.io/api/v1``."""
        return f"{self.url}/api/v1"

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT``; append ``?token=KEY`` (see :func:`deltafeed.venues.finnhub.stream_url`)."""
        return f"ws://{self.netloc}"

    async def stop(self) -> None:
        """Close every connection (1001 going away; stalled ones are cut), stop the server, close the tape."""
        await self._stop_pump()
        closing = []
        for c in list(self._conns):
            if c.stalled:
                c.closing = True
                c.transport.abort()
            else:
                closing.append(self._close_ws(c, 1001, b"server stopping"))
        if closing:
            await asyncio.gather(*closing, return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await self._stop_server()
        if self._tape is not None:
            self._tape.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"finnhub replica stopped: items={s['items']} trades={s['trades']} price_updates={s['price_updates']} "
            f"connections={s['connections']} refused_connections={s['refused_connections']} "
            f"requests={s['requests']} 429s={s['429']} messages={s['messages']} pings={s['pings']} "
            f"frames_dropped={s['frames_dropped']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- the market --

    def _advance(self, now: int) -> dict[str, _Items]:
        """Release every item with time <= ``now``: into the minute rows and the tape; returns them per symbol."""
        out: dict[str, _Items] = {}
        if now <= self._released_ms:
            return out
        lo = self._released_ms + 1
        if self._quotes is not None:
            for pair, name in self._pairs.items():
                q = self._quotes.batch(pair, lo, now + 1)
                if len(q):
                    out[name] = _Items(q.times, q.bid + q.ask, np.zeros(len(q), np.int64))
        for name, sim in self._sims.items():
            sim.advance_to(now)
            b = sim.take()
            if b is None:
                continue
            if self.instruments[name].kind == "stock":
                keep = us_market_open(b.times)
                shares = np.maximum(1, np.rint(b.lots / 10**5)).astype(np.int64)
                items = _Items(b.times[keep], b.ticks[keep], shares[keep])
            else:
                items = _Items(b.times, b.ticks, b.lots)
            if len(items.times):
                out[name] = items
        self._released_ms = now
        for name, items in out.items():
            inst = self.instruments[name]
            forex = inst.kind == "forex"
            inst.minutes.append(items.times, items.prices, np.ones_like(items.volumes) if forex else items.volumes)
            n = len(items.times)
            self.stats["items"] += n
            self.stats["price_updates" if forex else "trades"] += n
            first = self._item_ids[name] + 1
            self._item_ids[name] += n
            if self._tape is not None:
                prices, vols = inst.strings(items)
                self._tape.write(name, range(first, first + n), items.times.tolist(), prices, vols)
        return out

    def candles(self, symbol: str, resolution: str, from_ms: int, to_ms: int) -> dict[str, Any]:
        """The body of a candles answer: open times in ``[from_ms, to_ms]``, complete intervals only."""
        inst = self.instruments.get(symbol)
        if inst is None or from_ms > to_ms:
            return {"s": "no_data"}
        rows = inst.minutes.view()
        if not len(rows):
            return {"s": "no_data"}
        opens, ends = interval_bounds(resolution, rows["t"])
        # Only candles whose every item is out (released): one due by the clock but not yet pumped
        # would otherwise be served short.
        sel = (opens >= from_ms) & (opens <= to_ms) & (ends <= min(self._clock.now_ms(), self._released_ms + 1))
        rows, opens = rows[sel], opens[sel]
        if not len(rows):
            return {"s": "no_data"}
        starts = np.concatenate([[0], np.flatnonzero(np.diff(opens)) + 1]).astype(np.int64)
        ends_i = np.append(starts[1:], len(rows))
        scale = float(inst.price_scale)
        v = np.add.reduceat(rows["v"], starts)
        volume: list[Any] = (v / float(inst.volume_scale)).tolist() if inst.volume_scale != 1 else v.tolist()
        return {
            "c": (rows["c"][ends_i - 1] / scale).tolist(),
            "h": (np.maximum.reduceat(rows["h"], starts) / scale).tolist(),
            "l": (np.minimum.reduceat(rows["l"], starts) / scale).tolist(),
            "o": (rows["o"][starts] / scale).tolist(),
            "s": "ok",
            "t": (opens[starts] // 1000).tolist(),
            "v": volume,
        }

    # -- HTTP --

    def _token_ok(self, token: str) -> bool:
        return bool(token) and (self.token is None or token == self.token)

    def _respond(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None, counted: bool = True
    ) -> web.Response:
        if counted and str(status) in self.stats:
            self.stats[str(status)] += 1
        # Date from the market clock: the one clock a client can read off Finnhub, as on the real one.
        h = {
            "Content-Type": "application/json; charset=utf-8",
            "Date": email.utils.formatdate(self.clock.now_ms() / 1000, usegmt=True),
        }
        if headers:
            h.update(headers)
        return web.Response(status=status, body=body, headers=h)

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/", "/ws"):
            return await self._ws(request)
        self.stats["requests"] += 1
        token = request.query.get("token") or request.headers.get(codec.TOKEN_HEADER) or ""
        if not self._token_ok(token):
            return self._respond(401, _rest_error("Invalid API key. Use token= or the X-Finnhub-Token header."))
        now = time.monotonic()
        wait = max(self.second_limit.wait(token, now), self.minute_limit.wait(token, now))
        if wait:  # a refused call is not counted [UNVERIFIED]
            return self._respond(429, _rest_error(RATE_ERROR), {"Retry-After": str(max(1, math.ceil(wait)))})
        self.second_limit.record(token, now)
        self.minute_limit.record(token, now)
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        # Finnhub answers /api/v1//forex/candle like /api/v1/forex/candle (finnhub-python has always sent
        # the double slash: its _request joins API_URL and a path that starts with "/"): runs of slashes
        # are one.
        parts = re.sub("/+", "/", path).split("/")
        if len(parts) != 5 or parts[:3] != ["", "api", "v1"] or parts[4] != "candle" or parts[3] not in codec.KINDS:
            return self._respond(404, _rest_error("Not found"))
        self._tick()  # so that every price up to now is in the minute rows
        try:
            body = self._candles(parts[3], request.query)
        except _Reject as e:
            return self._respond(e.status, _rest_error(e.message))
        return self._respond(200, msgspec.json.encode(body))

    def _candles(self, kind: str, q: Mapping[str, str]) -> dict[str, Any]:
        for name in ("symbol", "resolution", "from", "to"):
            if not q.get(name):
                raise _Reject(422, f"Missing parameter: {name}")  # status and wording [UNVERIFIED]
        res = q["resolution"]
        if res not in codec.RESOLUTIONS:
            raise _Reject(422, f"Unsupported resolution {res!r}; use one of {', '.join(codec.RESOLUTIONS)}")
        try:
            from_s, to_s = int(q["from"]), int(q["to"])
        except ValueError:
            raise _Reject(422, "from and to must be UNIX seconds") from None
        inst = self.instruments.get(q["symbol"])
        if inst is None or inst.kind != kind:
            return {"s": "no_data"}  # an unknown symbol, or one served by another endpoint
        return self.candles(inst.name, res, from_s * 1000, to_s * 1000)

    async def _rest_fault(self) -> web.Response | None:
        """Faults due on this REST request: ``slow`` delays it; ``http500`` or ``http429`` answers it."""
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            return self._respond(500, _rest_error("Internal server error"), counted=False)  # wording [UNVERIFIED]
        if f.due("http429"):
            self._injected("http429")
            return self._respond(429, _rest_error(RATE_ERROR), {"Retry-After": "1"}, counted=False)
        return None

    # -- WebSocket --

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("token", "")
        if not self._token_ok(token):
            # What Finnhub answers to a WebSocket without a valid key is not documented [UNVERIFIED].
            return self._respond(401, _rest_error("Invalid API key"))
        ws = web.WebSocketResponse(compress=False, autoping=False, timeout=_WS_CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return self._respond(400, _rest_error("WebSocket upgrade expected"), counted=False)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        conn = _Conn(ws, transport, token, request.remote or "?", time.monotonic() + self.ping_s)
        if token in self._by_token:
            # One connection per key [V]; which one Finnhub drops, and how, is [UNVERIFIED]: keep the first.
            self.stats["refused_connections"] += 1
            conn.write(
                [_error("Only one connection per API key is allowed; close the other one first")],
                self.max_send_buffer,
                self.stats,
            )
            await self._close_ws(conn, 1008, b"one connection per API key")
            return ws
        self._by_token[token] = conn
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._control(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self._control(conn, msg.data.decode("utf-8", "replace"))
                elif msg.type == WSMsgType.PING:
                    if not conn.stalled:
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    break
            if conn.stalled:
                # A stalled server answers nothing, not even the client's close: wait for it to hang up.
                while not transport.is_closing():
                    await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.closing = True
            self._conns.pop(conn, None)
            if self._by_token.get(token) is conn:
                del self._by_token[token]
            self.stats["open_connections"] -= 1
        return ws

    async def _close_ws(self, conn: _Conn, code: int, message: bytes) -> None:
        await close_ws(conn, code, message, _WS_CLOSE_TIMEOUT + 1)

    def _control(self, conn: _Conn, text: str) -> None:
        """A client message: subscribe or unsubscribe; anything else gets an error message [UNVERIFIED]."""
        if conn.stalled:
            return
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            msg = None
        kind = msg.get("type") if isinstance(msg, dict) else None
        symbol = msg.get("symbol") if isinstance(msg, dict) else None
        if kind not in ("subscribe", "unsubscribe") or not isinstance(symbol, str) or not symbol:
            self.stats["client_errors"] += 1
            conn.write([_error(f"Invalid message: {text[:100]}")], self.max_send_buffer, self.stats)
            return
        if kind == "unsubscribe":
            conn.subs.pop(symbol, None)
            return
        if symbol in conn.subs:
            return
        if len(conn.subs) >= self.max_symbols:
            self.stats["symbol_cap_errors"] += 1
            conn.write(
                [_error(f"Subscribing to {symbol} would exceed the limit of {self.max_symbols} symbols")],
                self.max_send_buffer,
                self.stats,
            )  # wording [UNVERIFIED]
            return
        if symbol not in self.instruments:
            self.stats["unknown_subscriptions"] += 1
        conn.subs[symbol] = None

    # -- the pump --

    def _tick(self) -> None:
        """Release items up to the market clock's now and send them, and due pings, to every subscriber."""
        released = self._advance(self._clock.now_ms())
        if not self._conns:
            return
        messages: dict[str, list[bytes]] = {}
        for name, items in released.items():
            inst = self.instruments[name]
            prices, vols = inst.strings(items)
            tmpl = inst.item
            texts = [tmpl % (p, t, v) for p, t, v in zip(prices, items.times.tolist(), vols, strict=True)]
            messages[name] = [
                ('{"data":[' + ",".join(texts[i : i + MAX_ITEMS]) + '],"type":"trade"}').encode()
                for i in range(0, len(texts), MAX_ITEMS)
            ]
        wall = time.monotonic()
        out: dict[_Conn, tuple[list[bytes], int]] = {}
        for conn in list(self._conns):
            if conn.closing or conn.stalled:
                continue
            data = [m for s in conn.subs if s in messages for m in messages[s]]
            count = sum(len(released[s].times) for s in conn.subs if s in released)
            if wall >= conn.next_ping:
                conn.next_ping = max(conn.next_ping + self.ping_s, wall)
                data.append(_PING)
                self.stats["pings"] += 1
            if data:
                out[conn] = (data, count)
        faults = self.faults
        if faults is not None:
            self._faults_before_send(faults, out)
        for conn, (data, count) in out.items():
            if conn.write(data, self.max_send_buffer, self.stats):
                self.stats["messages"] += sum(1 for d in data if d is not _PING)
                self.stats["items_sent"] += count
        if faults is not None:
            self._faults_after_send(faults, out)

    # -- WebSocket faults --

    def _victims(self, out: dict[_Conn, tuple[list[bytes], int]]) -> list[_Conn]:
        return [c for c in out if not (c.closing or c.stalled or c.doomed or c.transport.is_closing())]

    def _faults_before_send(self, f: FaultSchedule, out: dict[_Conn, tuple[list[bytes], int]]) -> None:
        """Stall and garbage faults due now, applied to this tick's output."""
        for kind in ("stall", "garbage", "poison"):
            if not f.pending(kind):
                continue
            cands = self._victims(out)
            if not cands:
                continue  # stays due until a connection has something to send
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                conn.ws._autoclose = False  # aiohttp would answer the client's close frame itself
                del out[conn]
            else:
                data, count = out[conn]
                faulty = apply_message_fault(kind, data, f.pick, poison_message)
                out[conn] = (faulty, count)
                if kind == "poison" and len(faulty) == len(data):
                    continue  # no trade message this tick to poison (pings only): taken, not injected
            self._injected(kind)

    def _faults_after_send(self, f: FaultSchedule, out: dict[_Conn, tuple[list[bytes], int]]) -> None:
        """Close and reset faults due now, on a connection that was just sent something."""

        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(self._close_ws(conn, (1000, 1001)[f.pick(2)], b""))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        inject_connection_faults(
            f, lambda: self._victims(out), {"close": close, "reset": reset}, lambda k, _: self._injected(k)
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
