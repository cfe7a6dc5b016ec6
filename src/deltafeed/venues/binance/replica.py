"""A local Binance spot market-data server: real REST and WebSocket protocol on one port, seeded market.

Speaks what ``data-api.binance.vision`` and ``data-stream.binance.vision`` speak (see
../shared/PROTOCOLS.md section 1): ``/api/v3/{ping,time,exchangeInfo,klines,depth}`` with request
weights, ``X-MBX-USED-WEIGHT-1M``, 429 then 418 bans; raw (``/ws``) and combined (``/stream``)
WebSocket streams with SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY,
``<symbol>@trade`` and ``<symbol>@kline_<interval>`` streams, and server pings. Third-party clients
(ccxt) work with only their URLs changed (PROTOCOLS.md section 9).

Market data comes from :class:`~deltafeed.replicas.sim.MarketSim`, running on a
:class:`~deltafeed.replicas.sim.MarketClock` that may run faster than the wall clock. The request
weight window is the only thing that uses wall time.

Data frames bypass aiohttp's per-message send: a pump task encodes each trade once per stream and
form (raw or combined), frames the payloads itself and writes one batch per connection and tick
straight to the transport, always between whole frames. aiohttp still does the handshake, the
replies to control messages and the pings. All output passes through :meth:`_Conn.send_data`,
:meth:`_Conn.send_control` and :meth:`BinanceReplica._respond`.

Fault injection (``faults=``, see :mod:`deltafeed.replicas.faults`) hooks in at those places and
costs nothing when off: the pump hands one tick's output to :meth:`BinanceReplica._faults_before_send`
and :meth:`BinanceReplica._faults_after_send` only when a schedule is configured, and REST requests
consult it in :meth:`BinanceReplica._http`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np
from aiohttp import WSMsgType, web

from deltafeed.model import Candle, fmt
from deltafeed.net.frames import text_header
from deltafeed.replicas.books import BOOK_FAULTS, DEPTH_LEVELS, BookTape, DeltaFaults, SimBook
from deltafeed.replicas.faults import (
    KINDS,
    MESSAGE_KINDS,
    FaultSchedule,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.server import ReplicaBase, close_ws, listen
from deltafeed.replicas.sim import Grid, KlineTable, MarketClock, MarketSim, TradeBatch
from deltafeed.replicas.tls import server_context, write_certificates
from deltafeed.venues.binance.codec import (
    INTERVAL_MS,
    KLINES_PAGE,
    KLINES_WEIGHT,
    MAX_STREAMS_PER_CONNECTION,
    WEIGHT_LIMIT_1M,
    encode_trade,
    error_body,
    kline_payload,
    kline_row,
    wrap_combined,
)
from deltafeed.venues.binance.market import TradeLog, Window, agg_payloads, window

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
#: Every kline interval Binance serves. ``1M`` (calendar month) is the one the codec's INTERVAL_MS
#: does not list, because its length varies.
INTERVALS: tuple[str, ...] = (*INTERVAL_MS, "1M")
TICK_SECONDS = 0.015  # pump period (wall)
#: Client messages per second per connection (PING, PONG and control messages all count).
MAX_INBOUND_PER_S = 5
#: The longest request URL the replica accepts (see ``_ws``).
MAX_URL_BYTES = 8192
_INBOUND = (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.PING, WSMsgType.PONG)
MAX_SEND_BUFFER = 8 * 1024 * 1024  # bytes queued on one connection's transport before it is skipped
BAN_SECONDS = 120  # first auto-ban; doubles on each repeat, up to 3 days [V PROTOCOLS.md: 2 min to 3 days]
MAX_BAN_SECONDS = 3 * 24 * 3600
DEPTH_LIMIT_MAX = 5000
_WS_CLOSE_TIMEOUT = 2.0


# --- frames --------------------------------------------------------------------------------------


def text_frames(payloads: Iterable[bytes]) -> bytes:
    """Whole WebSocket text frames for ``payloads``, concatenated."""
    hdr = text_header
    return b"".join([hdr(len(p)) + p for p in payloads])


def split_text_frames(data: bytes) -> list[bytes]:
    """The payloads of ``data``, whole unmasked final text frames as :func:`text_frames` builds them.

    The inverse of :func:`text_frames`, for the replica's own output only (fault injection); it
    refuses anything else rather than guess.
    """
    out: list[bytes] = []
    i, end = 0, len(data)
    while i < end:
        if data[i] != 0x81 or i + 2 > end or data[i + 1] & 0x80:
            raise ValueError(f"not an unmasked final text frame at byte {i}")
        n, i = data[i + 1], i + 2
        if n == 126:
            n, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        if i + n > end:
            raise ValueError("truncated frame")
        out.append(data[i : i + n])
        i += n
    return out


_PRICE_FIELD = re.compile(rb'"p":"[^"]*"')


_ID_FIELD = re.compile(rb'"t":(\d+)')
FAR_AHEAD = 10**12  # how far ahead of the real id the second kind of poison puts its trade


def poison_trade(payload: bytes, pick: Callable[[int], int]) -> list[bytes] | None:
    """The ``poison`` fault's frame for a trade payload (raw or combined), one of two kinds at random:
    - the same trade, same id, with ``"p":"NaN"``: sent just before the real trade, it takes the
      real trade's id in a client that does not refuse a NaN price, and the real trade is then
      dropped there as a duplicate;
    - the same trade with an id ``FAR_AHEAD`` beyond its own: a client that trusts any id moves its
      continuity cursor there, and every later real trade looks like a duplicate.
    None for a payload that is not a trade."""
    if b'"e":"trade"' not in payload:
        return None
    if pick(2) == 0:
        return [_PRICE_FIELD.sub(b'"p":"NaN"', payload, count=1)]
    return [_ID_FIELD.sub(lambda m: b'"t":%d' % (int(m.group(1)) + FAR_AHEAD), payload, count=1)]


# --- fast trade encoding ----------------------------------------------------------------------


def _samples(n: int) -> list[tuple[int, int, float, float, bool, int]]:
    """Random trades (id, time, price, qty, maker, event time) to check a template against the codec."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        tid, t = int(rng.integers(1, 10**12)), int(rng.integers(0, 4 * 10**12))
        p, q = float(rng.integers(1, 10**9)) / 100, float(rng.integers(1, 10**9)) / 10**5
        out.append((tid, t, p, q, bool(rng.integers(0, 2)), t + int(rng.integers(0, 1000))))
    return out


_SAMPLES = _samples(50)


class _TradeTemplate:
    """``encode_trade`` (optionally wrapped by ``wrap_combined``) as one bytes %-template.

    Derived from the codec's own output with sentinel values and checked against it on samples, so
    it cannot drift from the codec; if the derivation fails, encoding falls back to the codec.
    The template costs about a third of ``encode_trade`` + ``wrap_combined`` per trade.
    """

    _E, _T_ID, _T = 1111111111111, 2222222222222, 3333333333333
    _checked_forms: ClassVar[set[bool]] = set()
    _P, _Q = 4.25, 5.75  # exact in binary, so their 8-decimal forms are unique sentinels

    def __init__(self, symbol: str, stream: str | None) -> None:
        self.symbol = symbol
        self.stream = stream
        self.template: bytes | None = None
        self.maker = (b"false", b"true")
        with contextlib.suppress(ValueError, TypeError):
            self._derive()

    def _codec(self, trade_id: int, time_ms: int, price: float, qty: float, maker: bool, event_ms: int) -> bytes:
        raw = encode_trade(self.symbol, trade_id, time_ms, price, qty, maker, event_ms)
        return raw if self.stream is None else wrap_combined(self.stream, raw)

    def _derive(self) -> None:
        a = self._codec(self._T_ID, self._T, self._P, self._Q, True, self._E)
        b = self._codec(self._T_ID, self._T, self._P, self._Q, False, self._E)
        i = 0
        while i < min(len(a), len(b)) and a[i] == b[i]:
            i += 1
        j = 0
        while j < min(len(a), len(b)) - i and a[-1 - j] == b[-1 - j]:
            j += 1
        head, tail = a[:i].replace(b"%", b"%%"), a[len(a) - j :].replace(b"%", b"%%")
        self.maker = (b[i : len(b) - j], a[i : len(a) - j])
        sentinels = [
            (str(self._E).encode(), b"%d"),
            (str(self._T_ID).encode(), b"%d"),
            (fmt(self._P).encode(), b"%.8f"),
            (fmt(self._Q).encode(), b"%.8f"),
            (str(self._T).encode(), b"%d"),
        ]
        positions = []
        for s, spec in sentinels:
            if head.count(s) != 1 or tail.count(s) != 0:
                raise ValueError("sentinel not unique")
            positions.append(head.index(s))
            head = head.replace(s, spec)
        # The template takes its arguments in the order E, t, p, q, T, m; the codec's order must match.
        if positions != sorted(positions):
            raise ValueError("unexpected field order")
        template = head + b"%s" + tail
        # The first template of each form (raw, combined) is checked on every sample; later ones, whose
        # derivation differs only in the symbol and stream name, on a few (a thousand symbols
        # subscribe in one handshake).
        form = self.stream is not None
        samples = _SAMPLES if form not in _TradeTemplate._checked_forms else _SAMPLES[:3]
        for tid, t, p, q, m, e in samples:
            if template % (e, tid, p, q, t, self.maker[m]) != self._codec(tid, t, p, q, m, e):
                raise ValueError("template differs from the codec")
        _TradeTemplate._checked_forms.add(form)
        self.template = template

    def payloads(self, b: TradeBatch, event_ms: int) -> list[bytes]:
        ids = range(b.first_id, b.last_id + 1)
        times, prices, qtys, makers = (
            b.times.tolist(),
            b.prices().tolist(),
            b.qtys().tolist(),
            b.maker.tolist(),
        )
        tmpl = self.template
        if tmpl is None:
            return [
                self._codec(i, t, p, q, m, event_ms)
                for i, t, p, q, m in zip(ids, times, prices, qtys, makers, strict=True)
            ]
        mk = self.maker
        return [
            tmpl % (event_ms, i, p, q, t, mk[m]) for i, t, p, q, m in zip(ids, times, prices, qtys, makers, strict=True)
        ]


# --- streams -------------------------------------------------------------------------------------


def _interval_grid(interval: str, tz_ms: int = 0) -> Grid:
    """The open times of ``interval`` klines in a time zone ``tz_ms`` east of UTC (Binance's ``timeZone``)."""
    if interval == "1M":
        return Grid.month(tz_ms)
    base = Grid.for_ms(INTERVAL_MS[interval])
    return Grid(base.length, (base.offset - tz_ms) % base.length)


_TZ = re.compile(r"^([+-]?)(\d{1,2})(?::(\d{2}))?$")


def parse_time_zone(text: str) -> int | None:
    """Binance's ``timeZone`` (``-1:00``, ``05:45``, ``+8``; -12:00 to +14:00) in ms east of UTC, or None."""
    m = _TZ.match(text)
    if m is None:
        return None
    hours, minutes = int(m.group(2)), int(m.group(3) or 0)
    if minutes >= 60:
        return None
    ms = (hours * 60 + minutes) * 60_000 * (-1 if m.group(1) == "-" else 1)
    return ms if -12 * 3_600_000 <= ms <= 14 * 3_600_000 else None


#: Stream kinds Binance has that this replica does not serve: refused by name, never silently idle.
_UNSERVED_ALL = re.compile(r"^!(miniTicker@arr|ticker@arr|bookTicker|ticker_(1h|4h|1d)@arr)(@\d+ms)?$")
_SYMBOL = re.compile(r"^[A-Za-z0-9]{1,30}$")
_ROLLING = {"1h": 3_600_000, "4h": 4 * 3_600_000, "1d": 86_400_000}


def parse_stream(name: str) -> tuple[str, str, str] | None:
    """(kind, symbol as written, argument) of a stream name in Binance's syntax, or None when it is not one.

    Kinds: ``trade``, ``aggTrade``, ``kline`` (argument ``<interval>`` or ``<interval>@<tz>``),
    ``bookTicker``, ``depth`` (argument: push period ``100``/``1000`` ms), ``partial`` (``<levels>@<ms>``),
    ``miniTicker``, ``ticker``, ``rolling`` (window ``1h``/``4h``/``1d``), ``avgPrice``, and ``all`` (the
    ``!`` all-market streams, which the replica does not serve)."""
    if name.startswith("!"):
        return ("all", "", name) if _UNSERVED_ALL.match(name) else None
    sym, sep, rest = name.partition("@")
    if not sep or not _SYMBOL.match(sym):
        return None
    if rest in ("trade", "aggTrade", "bookTicker", "miniTicker", "ticker", "avgPrice"):
        return rest, sym, ""
    if rest.startswith("ticker_") and rest[7:] in _ROLLING:
        return "rolling", sym, rest[7:]
    if rest.startswith("kline_"):
        iv, _, tz = rest[6:].partition("@")
        if iv in INTERVALS and (not tz or (tz[:1] in "+-" and parse_time_zone(tz) is not None)):
            return "kline", sym, rest[6:]
        return None
    if rest.startswith("depth"):
        levels, _, speed = rest[5:].partition("@")
        if levels not in ("", "5", "10", "20") or speed not in ("", "100ms", "1000ms"):
            return None
        ms = "100" if speed == "100ms" else "1000"
        return ("depth", sym, ms) if not levels else ("partial", sym, f"{levels}@{ms}")
    return None


def _kline_payload(
    symbol: str, interval: str, event_ms: int, c: Candle, extra: tuple[float, float, float, int, int, int]
) -> bytes:
    qv, tb, tq, first, last, length = extra
    if interval != "1M":
        return kline_payload(symbol, interval, event_ms, c, first, last, qv, tb, tq)
    # The codec knows fixed-length intervals only; give a month kline its name and real close time.
    msg = msgspec.json.decode(kline_payload(symbol, "1d", event_ms, c, first, last, qv, tb, tq))
    msg["k"]["i"] = "1M"
    msg["k"]["T"] = c.open_time + length - 1
    return msgspec.json.encode(msg)


class _Conn:
    """One WebSocket client: its subscriptions, output form and counters."""

    __slots__ = (
        "bytes_sent",
        "closing",
        "combined",
        "doomed",
        "frames_dropped",
        "frames_sent",
        "inbound",
        "peer",
        "pings",
        "stalled",
        "streams",
        "transport",
        "ws",
    )

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.Transport, combined: bool, peer: str) -> None:
        self.ws = ws
        self.transport = transport
        self.combined = combined
        self.peer = peer
        self.streams: dict[str, None] = {}  # in subscription order
        self.pings: dict[bytes, float] = {}  # unanswered ping payload -> monotonic time sent
        self.inbound: deque[float] = deque()  # monotonic times of the client's messages in the last second
        self.frames_sent = 0
        self.frames_dropped = 0
        self.bytes_sent = 0
        self.closing = False
        # Faults: a stalled connection gets nothing more (no data, replies, pings or close); a doomed
        # one has a close, reset or shutdown on its way and takes no other connection fault.
        self.stalled = False
        self.doomed = False

    def send_data(self, parts: list[bytes], frames: int, max_buffer: int, stats: dict[str, int]) -> None:
        """Write whole data frames in one call, or skip them all if the client is not reading.

        Faults have been applied to ``parts`` before (stalled connections get no call at all).
        """
        tr = self.transport
        if self.closing or tr.is_closing():
            return
        if tr.get_write_buffer_size() > max_buffer:
            # Never buffer without bound: a client this far behind loses these frames, counted.
            self.frames_dropped += frames
            stats["frames_dropped"] += frames
            stats["slow_skips"] += 1
            return
        blob = parts[0] if len(parts) == 1 else b"".join(parts)
        tr.write(blob)
        self.frames_sent += frames
        self.bytes_sent += len(blob)
        stats["frames_sent"] += frames
        stats["bytes_sent"] += len(blob)

    async def send_control(self, body: bytes) -> None:
        """A reply to a control message, through aiohttp."""
        if not self.closing and not self.stalled and not self.ws.closed:
            await self.ws.send_str(body.decode())


@dataclass(eq=False)
class _Stream:
    """A stream name with at least one subscriber, and the state its pushes need."""

    name: str
    kind: str  # "trade" | "kline"
    symbol: str
    interval: str = ""
    grid: Grid | None = None
    push_every: float = 2.0
    subs: dict[_Conn, None] = field(default_factory=dict)
    open_time: int | None = None  # kline streams: open time of the candle last pushed as open
    next_push: float = 0.0  # kline streams: monotonic time of the next periodic push
    raw: _TradeTemplate | None = None
    combined: _TradeTemplate | None = None
    levels: int = 0  # partial depth streams: levels per side
    last_u: int = 0  # diff depth streams: the last update id sent
    window_ms: int = 0  # ticker streams: the rolling window


# --- request weight ---------------------------------------------------------------------------


@dataclass
class _IpWeight:
    window: int = -1
    used: int = 0
    retry_until: float = 0.0  # after a 429: sending before this gets the IP banned
    banned_until: float = 0.0
    bans: int = 0


class WeightLimiter:
    """Binance's REQUEST_WEIGHT limit per IP, in fixed windows of one wall-clock minute (tests may
    shorten the window so a Retry-After is seconds, not a minute)."""

    def __init__(self, limit: int, wall: Callable[[], float] = time.time, window_s: float = 60.0) -> None:
        self.limit = limit
        self._wall = wall
        self.window_s = window_s
        self._ips: dict[str, _IpWeight] = {}

    def charge(self, ip: str, weight: int) -> tuple[int, int, float]:
        """Charge a request; returns (HTTP status 200/429/418, used weight, Retry-After seconds or
        the ban's end as epoch seconds for a 418)."""
        now = self._wall()
        st = self._ips.setdefault(ip, _IpWeight())
        window = int(now // self.window_s)
        if window != st.window:
            st.window, st.used = window, 0
        if st.banned_until > now:
            return 418, st.used, st.banned_until
        if st.retry_until > now:
            st.bans += 1
            st.banned_until = now + min(BAN_SECONDS * 2 ** (st.bans - 1), MAX_BAN_SECONDS)
            return 418, st.used, st.banned_until
        st.used += weight  # the refused request counts too, as on Binance
        if st.used > self.limit:
            st.retry_until = (window + 1) * self.window_s
            return 429, st.used, st.retry_until
        return 200, st.used, 0.0

    def now(self) -> float:
        return self._wall()

    def ips(self) -> list[str]:
        """Every address that has sent a request, in order of first request."""
        return list(self._ips)

    def used(self, ip: str) -> int:
        st = self._ips.get(ip)
        return st.used if st is not None and st.window == int(self._wall() // self.window_s) else 0


# --- the server ----------------------------------------------------------------------------------

_INT_RULE = "^[0-9]{1,20}$"
_ERR_WEIGHT = (
    "Too much request weight used; current limit is %s request weight per %s. "
    "Please use WebSocket Streams for live updates to avoid polling the API."
)
_ERR_BANNED = (
    "Way too much request weight used; IP banned until %s. Please use WebSocket Streams for live updates to avoid bans."
)
_METHODS = "SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY, GET_PROPERTY"


class _BadRequest(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def _missing(name: str) -> _BadRequest:
    return _BadRequest(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def _int_param(q: Mapping[str, str], name: str) -> int | None:
    v = q.get(name)
    if v is None or v == "":
        return None
    if not (v.isascii() and v.isdigit() and len(v) <= 20):
        raise _BadRequest(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{_INT_RULE}'.")
    return int(v)


def _ws_error(code: int, msg: str, request_id: Any) -> bytes:
    # Binance wraps the error object: {"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":1}.
    # web-socket-streams.md lists only the inner object; the wrapper is what the wire shows (ccxt's
    # binance handle_ws_error, and logs of live replies) [C].
    return b'{"error":%s,"id":%s}' % (error_body(code, msg), msgspec.json.encode(request_id))


class _LoggedSim(MarketSim):
    """A :class:`MarketSim` that also logs raw and aggregate trades per symbol (:class:`TradeLog`), the
    history its constructor releases included; :attr:`last_aggs` holds the last release's aggregates
    of the symbols in :attr:`agg_symbols` (those with an aggTrade stream; the other logs fold lazily)."""

    def __init__(self, symbols: Iterable[str], **kwargs: Any) -> None:
        self.logs: dict[str, TradeLog] = {}
        self.last_aggs: dict[str, Any] = {}
        self.agg_symbols: set[str] = set()
        super().__init__(symbols, **kwargs)

    def advance_to(self, market_ms: int, symbols: Iterable[str] | None = None) -> dict[str, TradeBatch]:
        out = super().advance_to(market_ms, symbols)
        self.last_aggs = {}
        for sym, b in out.items():
            log_ = self.log(sym)
            log_.add(b)
            if sym in self.agg_symbols:
                self.last_aggs[sym] = log_.flush()
        return out

    def log(self, symbol: str) -> TradeLog:
        log_ = self.logs.get(symbol)
        if log_ is None:
            log_ = self.logs[symbol] = TradeLog(self.specs[symbol])
        return log_

    def want_aggs(self, symbol: str, on: bool) -> None:
        """Start (or stop) computing ``symbol``'s aggregates at every release (an aggTrade stream)."""
        if on:
            self.log(symbol).flush()  # what was released before the stream is not the stream's
            self.agg_symbols.add(symbol)
        else:
            self.agg_symbols.discard(symbol)

    def last_maker(self, symbol: str) -> bool:
        log_ = self.logs.get(symbol)
        if log_ is None:
            return False
        m = log_.trades.cols()["m"]
        return bool(m[-1]) if len(m) else False


class _BadStream(Exception):
    pass


class BinanceReplica(ReplicaBase):
    """A Binance spot market-data server on ``host:port`` (0 = any free port), driven by a seeded
    simulator. ``rate`` is trades per market second per symbol; ``speed`` is market seconds per
    wall second; ``history_ms`` of market is generated before start.

    ``faults`` (a spec like ``"close=2,drop=30"`` or a dict of kind to events per wall minute) injects
    faults on a schedule seeded by ``faults_seed`` and counted from :meth:`start`; a ``shutdown``
    closes its connection ``shutdown_grace_s`` wall seconds after the event, a ``slow`` REST answer
    comes ``slow_s`` late, a ``poison`` sends a trade with ``"p":"NaN"`` and the id of the real trade
    that follows it (:func:`poison_trade`). :meth:`faults_injected` and ``stats["fault_<kind>"]`` count
    what was injected.
    """

    venue = "binance"
    tick_s = TICK_SECONDS
    _log = log
    fault_kinds = (*KINDS, *(k for k in BOOK_FAULTS if k != "badchecksum"))

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        seed: int = 1,
        rate: float = 10.0,
        speed: float = 1.0,
        history_ms: int = 3_600_000,
        weight_limit: int = WEIGHT_LIMIT_1M,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        *,
        start_ms: int | None = None,
        max_send_buffer: int = MAX_SEND_BUFFER,
        weight_window_s: float = 60.0,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        shutdown_grace_s: float = 3.0,
        slow_s: float = 2.0,
        tls: bool | str | Path = False,
        inbound_limit: int = MAX_INBOUND_PER_S,
        options: ReplicaOptions | None = None,
    ) -> None:
        rates = parse_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        self.options = o
        self.host = o.host
        self.port = o.port
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.max_send_buffer = max_send_buffer
        self.inbound_limit = inbound_limit  # client messages per second per connection; 0: no limit
        self._clock = MarketClock(o.speed, o.start_ms)
        self._sim = _LoggedSim(
            o.symbols, seed=o.seed, rate=o.rate, start_ms=self._clock.start_ms, history_ms=o.history_ms, tape=o.tape
        )
        #: With ``tls``: the CA certificate clients must trust (the replica writes it with its own
        #: certificate and key, into the directory ``tls`` names or a new temporary one).
        self.ca_file: Path | None = None
        self._ssl = None
        if tls:
            certs = write_certificates(None if tls is True else Path(tls), self.host)
            self.ca_file = certs.ca_file
            self._ssl = server_context(certs)
        self._books: dict[str, SimBook] = {}
        book_tape = o.book_tape_path()
        self.book_tape = BookTape(book_tape) if book_tape is not None else None
        self.limiter = WeightLimiter(weight_limit, window_s=weight_window_s)
        self.stats: dict[str, int] = {
            "trades": self._sim.trades_released,
            "connections": 0,
            "open_connections": 0,
            "requests": 0,
            "429": 0,
            "418": 0,
            "frames_sent": 0,
            "frames_dropped": 0,
            "bytes_sent": 0,
            "slow_skips": 0,
            "idle_streams": 0,
            "inbound_limit_closes": 0,
            "long_urls": 0,
        }
        self._setup_faults(dict(o.faults), o.faults_seed)
        self._book_faults = DeltaFaults(self.faults, self._injected)
        self.shutdown_grace_s = shutdown_grace_s
        self.slow_s = slow_s
        self._lower = {s.lower(): s for s in self._sim.symbols}
        self._conns: dict[_Conn, None] = {}
        self._stalled: set[_Conn] = set()  # stalled connections still open
        #: WebSocket connections accepted, by the client's address (Binance's limits are per IP).
        self.peer_connections: Counter[str] = Counter()
        self._streams: dict[str, _Stream] = {}
        self._templates: dict[tuple[str, str | None], _TradeTemplate] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._routes: dict[str, tuple[Callable[[web.Request], web.Response], Callable[[Mapping[str, str]], int]]] = {
            "/api/v3/ping": (self._ping, lambda q: 1),
            "/api/v3/time": (self._time, lambda q: 1),
            "/api/v3/exchangeInfo": (self._exchange_info, lambda q: 20),
            "/api/v3/klines": (self._klines, lambda q: KLINES_WEIGHT),
            "/api/v3/depth": (self._depth, _depth_weight),
            "/api/v3/uiKlines": (self._klines, lambda q: KLINES_WEIGHT),
            "/api/v3/trades": (self._trades, lambda q: 25),
            "/api/v3/historicalTrades": (self._historical_trades, lambda q: 25),
            "/api/v3/aggTrades": (self._agg_trades, lambda q: 4),
            "/api/v3/ticker/24hr": (self._ticker_24hr, _ticker_weight(2, 40, 80)),
            "/api/v3/ticker/price": (self._ticker_price, _ticker_weight(2, 4, 4)),
            "/api/v3/ticker/bookTicker": (self._ticker_book, _ticker_weight(2, 4, 4)),
            "/api/v3/avgPrice": (self._avg_price, lambda q: 2),
        }

    # -- public surface --

    @property
    def sim(self) -> MarketSim:
        return self._sim

    @property
    def url(self) -> str:
        """``http://HOST:PORT``, or ``https://`` with TLS (the real port once started)."""
        return f"{'https' if self._ssl else 'http'}://{self.netloc}"

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT`` (``wss://`` with TLS); append ``/ws/<stream>`` or ``/stream?streams=...``."""
        return f"{'wss' if self._ssl else 'ws'}://{self.netloc}"

    async def start(self) -> str:
        """Bind (with TLS when configured), start serving and pumping; returns :attr:`url`."""
        self._runner, self.port = await listen(
            self._http, self.host, self.port, shutdown_timeout=self.shutdown_timeout, ssl_context=self._ssl
        )
        if self.faults is not None:
            self.faults.start()
        self._pump_task = asyncio.create_task(self._pump(), name=f"{self.venue}-replica-pump")
        return self.url

    def open_streams(self) -> Counter[str]:
        """The streams subscribed on the open connections, each with how many connections carry it."""
        return Counter(name for c in self._conns if not c.closing for name in c.streams)

    async def stop(self) -> None:
        """Close every connection (1001 going away), stop the server and close the tape."""
        await self._stop_pump()
        conns = []
        for c in self._conns:
            c.closing = True
            if c.stalled:
                c.transport.abort()  # silent to the end: no close frame
            else:
                conns.append(c)
        if conns:
            await asyncio.gather(*(self._close_ws(c, 1001, b"server stopping") for c in conns), return_exceptions=True)
        for t in list(self._tasks):
            t.cancel()
        await self._stop_server()
        self._sim.close()
        if self.book_tape is not None:
            self.book_tape.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"binance replica stopped: trades={s['trades']} connections={s['connections']} "
            f"requests={s['requests']} 429s={s['429']} 418s={s['418']} "
            f"frames_sent={s['frames_sent']} frames_dropped={s['frames_dropped']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- HTTP --

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path in ("/ws", "/stream") or path.startswith(("/ws/", "/stream/")):
            return await self._ws(request)
        self.stats["requests"] += 1
        ip = request.remote or "?"
        if self.faults is not None:
            fault = await self._rest_fault(ip)
            if fault is not None:
                return fault
        route = self._routes.get(path)
        if route is None:
            # Never an empty body: Binance's error shape, naming what is not served [the code for an
            # unknown path is not documented; -1000 UNKNOWN is the generic one in errors.md].
            body = error_body(
                -1000, f"Unknown path {path}: this replica does not serve it (see docs/venues/binance.md)."
            )
            return self._respond(404, body, self.limiter.used(ip))
        handler, weight = route
        try:
            w = weight(request.query)
        except _BadRequest as e:
            return self._respond(400, error_body(e.code, e.msg), self.limiter.used(ip))
        status, used, until = self.limiter.charge(ip, w)
        if status != 200:
            retry = {"Retry-After": str(max(1, math.ceil(until - self.limiter.now())))}
            if status == 429:
                self.stats["429"] += 1
                body = error_body(-1003, _ERR_WEIGHT % (self.limiter.limit, "1 MINUTE"))
            else:
                self.stats["418"] += 1
                body = error_body(-1003, _ERR_BANNED % int(until * 1000))
            return self._respond(status, body, used, retry)
        # So that "now" and the open kline include every trade up to this instant: of the one symbol
        # the request names (a thousand symbols need not advance for it), else of every symbol.
        sym = request.query.get("symbol")
        self._tick(None if sym is None or sym not in self._sim.specs else [sym])
        try:
            resp = handler(request)
        except _BadRequest as e:
            return self._respond(400, error_body(e.code, e.msg), used)
        resp.headers["X-MBX-USED-WEIGHT-1M"] = str(used)
        return resp

    async def _rest_fault(self, ip: str) -> web.Response | None:
        """Faults due on this REST request: ``slow`` delays it; ``http500`` or ``http429`` answers it
        (one of them per request; the other stays due for the next)."""
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            # Binance's answer to an internal error: HTTP 5XX with code -1000 UNKNOWN (errors.md; the
            # exact wording is quoted from memory [UNVERIFIED]).
            body = error_body(-1000, "An unknown error occurred while processing the request.")
            return self._respond(500, body, self.limiter.used(ip))
        if f.due("http429"):
            self._injected("http429")  # counted apart from the limiter's own 429s (stats["429"])
            body = error_body(-1003, _ERR_WEIGHT % (self.limiter.limit, "1 MINUTE"))
            return self._respond(429, body, self.limiter.used(ip), {"Retry-After": "1"})
        return None

    def _respond(self, status: int, body: bytes, used: int, headers: Mapping[str, str] | None = None) -> web.Response:
        """Every REST response goes through here."""
        h = {"Content-Type": "application/json;charset=UTF-8", "X-MBX-USED-WEIGHT-1M": str(used)}
        if headers:
            h.update(headers)
        return web.Response(status=status, body=body, headers=h)

    def _ok(self, body: bytes) -> web.Response:
        return self._respond(200, body, 0)  # the caller sets the real used weight

    def _ping(self, request: web.Request) -> web.Response:
        return self._ok(b"{}")

    def _time(self, request: web.Request) -> web.Response:
        return self._ok(b'{"serverTime":%d}' % self._clock.now_ms())

    def _symbol(self, q: Mapping[str, str]) -> str:
        sym = q.get("symbol")
        if not sym:
            raise _missing("symbol")
        if sym not in self._sim.specs:  # Binance symbols are upper case; "btcusdt" is invalid
            raise _BadRequest(-1121, "Invalid symbol.")
        return sym

    def _exchange_info(self, request: web.Request) -> web.Response:
        q = request.query
        names = list(self._sim.symbols)
        if "symbol" in q:
            names = [self._symbol(q)]
        elif "symbols" in q:
            try:
                wanted = json.loads(q["symbols"])
            except ValueError:
                wanted = None
            if not isinstance(wanted, list) or not all(isinstance(s, str) for s in wanted):
                raise _BadRequest(
                    -1100,
                    "Illegal characters found in parameter 'symbols'; legal range is "
                    '\'^\\[("[A-Z0-9-_.]{1,20}"(,"[A-Z0-9-_.]{1,20}"){0,}){0,1}\\]$\'.',
                )
            for s in wanted:
                if s not in self._sim.specs:
                    raise _BadRequest(-1121, "Invalid symbol.")
            names = wanted
        info = {
            "timezone": "UTC",
            "serverTime": self._clock.now_ms(),
            "rateLimits": [
                {
                    "rateLimitType": "REQUEST_WEIGHT",
                    "interval": "MINUTE",
                    "intervalNum": 1,
                    "limit": self.limiter.limit,
                },
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(s) for s in names],
        }
        return self._ok(msgspec.json.encode(info))

    def _symbol_info(self, symbol: str) -> dict[str, Any]:
        spec = self._sim.specs[symbol]
        return {
            "symbol": symbol,
            "status": "TRADING",
            "baseAsset": spec.base,
            "baseAssetPrecision": 8,
            "quoteAsset": spec.quote,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "baseCommissionPrecision": 8,
            "quoteCommissionPrecision": 8,
            "orderTypes": [
                "LIMIT",
                "LIMIT_MAKER",
                "MARKET",
                "STOP_LOSS",
                "STOP_LOSS_LIMIT",
                "TAKE_PROFIT",
                "TAKE_PROFIT_LIMIT",
            ],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "otoAllowed": True,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True,
            "cancelReplaceAllowed": True,
            "amendAllowed": True,
            "pegInstructionsAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": fmt(1 / spec.price_scale),
                    "maxPrice": fmt(1_000_000.0),
                    "tickSize": fmt(1 / spec.price_scale),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": fmt(1 / 10**spec.lot_decimals),
                    "maxQty": fmt(9000.0),
                    "stepSize": fmt(1 / 10**spec.lot_decimals),
                },
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": fmt(0.0),
                    "maxQty": fmt(100.0),
                    "stepSize": fmt(0.0),
                },
                {
                    "filterType": "TRAILING_DELTA",
                    "minTrailingAboveDelta": 10,
                    "maxTrailingAboveDelta": 2000,
                    "minTrailingBelowDelta": 10,
                    "maxTrailingBelowDelta": 2000,
                },
                {
                    "filterType": "PERCENT_PRICE_BY_SIDE",
                    "bidMultiplierUp": "5",
                    "bidMultiplierDown": "0.2",
                    "askMultiplierUp": "5",
                    "askMultiplierDown": "0.2",
                    "avgPriceMins": 5,
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": fmt(5.0),
                    "applyMinToMarket": True,
                    "maxNotional": fmt(9_000_000.0),
                    "applyMaxToMarket": False,
                    "avgPriceMins": 5,
                },
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": [
                "NONE",
                "EXPIRE_TAKER",
                "EXPIRE_MAKER",
                "EXPIRE_BOTH",
                "DECREMENT",
            ],
        }

    def _klines(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        interval = q.get("interval")
        if not interval:
            raise _missing("interval")
        if interval not in INTERVALS:  # case-sensitive: 1m is a minute, 1M a month
            raise _BadRequest(-1120, "Invalid interval.")
        start, end = _int_param(q, "startTime"), _int_param(q, "endTime")
        limit = _int_param(q, "limit")
        if limit is None:
            limit = 500
        if not 1 <= limit <= KLINES_PAGE:
            # Binance's answer to a limit out of range is not documented; refuse it like other bad
            # values rather than clamp it [UNVERIFIED].
            raise _BadRequest(-1130, "Data sent for parameter 'limit' is not valid.")
        if start is not None and end is not None and start > end:
            raise _BadRequest(-1023, "Start time is greater than end time.")
        tz = parse_time_zone(q.get("timeZone", "0") or "0")
        if tz is None:
            # rest-api.md: "Supported values range strictly from -12:00 to +14:00".
            raise _BadRequest(-1130, "Data sent for parameter 'timeZone' is not valid.")
        # Intervals are interpreted in the time zone; startTime and endTime stay UTC (rest-api.md).
        table = self._sim.kline_table(symbol, _interval_grid(interval, tz), start, end, limit, self._clock.now_ms())
        rows = [kline_row(c, ex[5], ex[0], ex[1], ex[2]) for c, ex in zip(table.candles(), table.extras(), strict=True)]
        return self._ok(msgspec.json.encode(rows))

    def _depth(self, request: web.Request) -> web.Response:
        """The synthetic book (:class:`~deltafeed.replicas.books.SimBook`): ``lastUpdateId`` is the
        update id the ``@depth`` events continue from (an older one, with the book as it was then, for
        a ``stalebook`` fault)."""
        q = request.query
        book = self._book(self._symbol(q))
        limit = min(_depth_limit(q), DEPTH_LEVELS)
        if self._book_faults.stale():
            u, bids, asks = book.stale_levels(limit)
        else:
            u, (bids, asks) = book.u, book.levels(limit)
        return self._ok(msgspec.json.encode({"lastUpdateId": u, "bids": bids, "asks": asks}))

    def _book(self, symbol: str) -> SimBook:
        """The symbol's book, started at its last trade on first use (and taped whole); :meth:`_tick`
        steps it after."""
        book = self._books.get(symbol)
        if book is None:
            last_id, price = self._sim.last_trade(symbol)
            ticks = round(price * self._sim.specs[symbol].price_scale)
            book = self._books[symbol] = SimBook(
                self._sim.specs[symbol], ticks, self._sim.last_maker(symbol), 3 * max(last_id, 0) + 1
            )
            if self.book_tape is not None:
                self.book_tape.write_book(symbol, book.u, self._clock.now_ms(), book)
        return book

    def _limit(self, q: Mapping[str, str], default: int = 500, top: int = 1000) -> int:
        limit = _int_param(q, "limit")
        if limit is None:
            return default
        if not 1 <= limit <= top:
            raise _BadRequest(-1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    def _trade_log(self, symbol: str) -> TradeLog:
        return self._sim.log(symbol)

    def _trades(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        return self._ok(msgspec.json.encode(self._trade_log(symbol).trade_rows(None, self._limit(q))))

    def _historical_trades(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        limit = self._limit(q)
        return self._ok(msgspec.json.encode(self._trade_log(symbol).trade_rows(_int_param(q, "fromId"), limit)))

    def _agg_trades(self, request: web.Request) -> web.Response:
        q = request.query
        symbol = self._symbol(q)
        limit = self._limit(q)
        from_id = _int_param(q, "fromId")
        start, end = _int_param(q, "startTime"), _int_param(q, "endTime")
        if start is not None and end is not None:
            if start > end:
                raise _BadRequest(-1023, "Start time is greater than end time.")
            if end - start > 3_600_000:
                # rest-api.md: "If both startTime and endTime are sent, time between startTime and endTime
                # must be less than 1 hour."; errors.md -1127 MORE_THAN_XX_HOURS.
                raise _BadRequest(-1127, "More than 1 hours between startTime and endTime.")
        if from_id is not None and (start is not None or end is not None):
            raise _BadRequest(-1128, "Combination of optional parameters invalid.")
        return self._ok(msgspec.json.encode(self._trade_log(symbol).agg_rows(from_id, start, end, limit)))

    def _ticker_symbols(self, q: Mapping[str, str]) -> tuple[list[str], bool]:
        """The symbols a ticker request names (``symbol``, ``symbols`` JSON list, or none: all) and whether
        the answer is a list."""
        if "symbol" in q and "symbols" in q:
            raise _BadRequest(-1128, "Combination of optional parameters invalid.")
        if "symbol" in q:
            return [self._symbol(q)], False
        if "symbols" in q:
            try:
                wanted = json.loads(q["symbols"])
            except ValueError:
                wanted = None
            if not isinstance(wanted, list) or not wanted or not all(isinstance(x, str) for x in wanted):
                raise _BadRequest(-1100, "Illegal characters found in parameter 'symbols'.")
            for x in wanted:
                if x not in self._sim.specs:
                    raise _BadRequest(-1121, "Invalid symbol.")
            return list(dict.fromkeys(wanted)), True
        return list(self._sim.symbols), True

    def _window(self, symbol: str, length_ms: int = 86_400_000) -> Window:
        """The rolling window up to the market time released so far (the clock may already be ahead)."""
        return window(self._sim, self._sim.logs.get(symbol), symbol, self._sim.released_until(symbol), length_ms)

    def _ticker_24hr(self, request: web.Request) -> web.Response:
        q = request.query
        kind = q.get("type", "FULL")
        if kind not in ("FULL", "MINI"):
            raise _BadRequest(-1139, "Invalid ticker type.")
        names, many = self._ticker_symbols(q)
        out = []
        for sym in names:
            w = self._window(sym)
            row: dict[str, Any] = {"symbol": sym}
            if kind == "FULL":
                book = self._book(sym)
                bids, asks = book.levels(1)
                row.update(
                    priceChange=w.change,
                    priceChangePercent=w.change_pct,
                    weightedAvgPrice=w.weighted,
                    prevClosePrice=w.prev_close,
                    lastPrice=w.last,
                    lastQty=w.last_qty,
                    bidPrice=bids[0][0],
                    bidQty=bids[0][1],
                    askPrice=asks[0][0],
                    askQty=asks[0][1],
                )
            else:
                row["lastPrice"] = w.last
            row.update(
                openPrice=w.open,
                highPrice=w.high,
                lowPrice=w.low,
                volume=w.volume,
                quoteVolume=w.quote_volume,
                openTime=w.open_ms,
                closeTime=w.close_ms,
                firstId=w.first_id,
                lastId=w.last_id,
                count=w.count,
            )
            out.append(row)
        return self._ok(msgspec.json.encode(out if many else out[0]))

    def _ticker_price(self, request: web.Request) -> web.Response:
        names, many = self._ticker_symbols(request.query)
        out = [{"symbol": s, "price": fmt(self._sim.last_trade(s)[1])} for s in names]
        return self._ok(msgspec.json.encode(out if many else out[0]))

    def _ticker_book(self, request: web.Request) -> web.Response:
        names, many = self._ticker_symbols(request.query)
        out = []
        for s in names:
            bids, asks = self._book(s).levels(1)
            out.append({"symbol": s, "bidPrice": bids[0][0], "bidQty": bids[0][1], "askPrice": asks[0][0],
                        "askQty": asks[0][1]})  # fmt: skip
        return self._ok(msgspec.json.encode(out if many else out[0]))

    def _avg_price(self, request: web.Request) -> web.Response:
        symbol = self._symbol(request.query)
        price, close = self._avg(symbol)
        return self._ok(msgspec.json.encode({"mins": 5, "price": price, "closeTime": close}))

    def _avg(self, symbol: str) -> tuple[str, int]:
        """Binance's current average price: the volume-weighted price of the last 5 minutes, and the
        time of the last trade in them (rest-api.md ``GET /api/v3/avgPrice``)."""
        w = self._window(symbol, 300_000)
        rows = self._trade_log(symbol).trade_rows(None, 1)
        close = int(str(rows[0]["time"])) if rows else w.close_ms
        return (w.weighted if w.count else w.last), close

    # -- WebSocket --

    def _stream_error(self, name: str) -> str | None:
        """Why ``name`` is refused, or None when it is accepted.

        As at Binance: a name that is not in Binance's stream syntax is ``Invalid request: invalid
        stream`` (ccxt/ccxt#19833 shows that reply to ``SUBSCRIBE ["not asdfads"]``), while a well-formed
        name for a symbol that does not exist is accepted and stays silent (JKorf/Binance.Net#620:
        ``xrpxrp@miniTicker`` connects without error); the replica counts those in
        ``stats["idle_streams"]`` and logs a warning. Streams Binance has but this replica does not
        serve (the ``!`` all-market ones) are refused with a message that says so."""
        if name in self._streams:
            return None
        k = parse_stream(name)
        if k is None:
            return "Invalid request: invalid stream"
        if k[0] == "all":
            return f"Invalid request: stream {name} is not served by this replica"
        return None

    def _new_stream(self, name: str) -> _Stream | None:
        """The state of a stream this replica serves; None for a well-formed name of an unknown symbol."""
        k = parse_stream(name)
        if k is None or k[0] == "all":
            return None
        kind, sym_l, arg = k
        symbol = self._lower.get(sym_l)
        if symbol is None:
            return None
        if kind == "trade":
            return _Stream(name, kind, symbol, raw=self._template(symbol, None), combined=self._template(symbol, name))
        if kind == "kline":
            iv, _, tz = arg.partition("@")
            grid = _interval_grid(iv, parse_time_zone(tz) or 0 if tz else 0)
            # Binance pushes kline updates every 1000 ms for 1s klines, every 2000 ms otherwise.
            return _Stream(name, kind, symbol, iv, grid, 1.0 if iv == "1s" else 2.0)
        if kind in ("aggTrade", "bookTicker"):
            if kind == "bookTicker":
                self._book(symbol)
            else:
                self._sim.want_aggs(symbol, True)
            return _Stream(name, kind, symbol)
        if kind == "depth":
            book = self._book(symbol)
            return _Stream(name, kind, symbol, push_every=int(arg) / 1000, last_u=book.u)
        if kind == "partial":
            levels, _, ms = arg.partition("@")
            self._book(symbol)
            return _Stream(name, kind, symbol, push_every=int(ms) / 1000, levels=int(levels))
        # miniTicker, ticker, rolling windows and avgPrice: every 1000 ms (web-socket-streams.md).
        if kind == "ticker":
            self._book(symbol)
        length = _ROLLING[arg] if kind == "rolling" else 300_000 if kind == "avgPrice" else 86_400_000
        return _Stream(name, kind, symbol, arg, push_every=1.0, window_ms=length)

    def _template(self, symbol: str, stream: str | None) -> _TradeTemplate:
        t = self._templates.get((symbol, stream))
        if t is None:
            t = self._templates[(symbol, stream)] = _TradeTemplate(symbol, stream)
        return t

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        combined = path == "/stream" or path.startswith("/stream/")
        names = (
            [s for s in request.query.get("streams", "").split("/") if s]
            if combined
            else [s for s in path[len("/ws") :].split("/") if s]
        )
        peer = request.remote or "?"
        if request.query.get("timeUnit", "millisecond").lower() != "millisecond":
            return self._respond(400, error_body(-1100, "The replica sends millisecond timestamps only."), 0)
        if len(request.raw_path) > MAX_URL_BYTES:
            # Binance documents no URL limit; a 16 KB combined-stream URL is answered with a 400
            # [UNVERIFIED which length is the cut-off]. The replica refuses past 8 KB.
            self.stats["long_urls"] += 1
            return self._respond(400, error_body(-1, "Request URL too long."), 0)
        # What Binance answers to a bad stream in the URL is not documented; refuse the upgrade with the
        # SUBSCRIBE error's body [UNVERIFIED]. Well-formed names of unknown symbols are accepted (idle).
        if len(names) > MAX_STREAMS_PER_CONNECTION:
            return self._respond(400, error_body(2, "Invalid request: too many streams"), 0)
        for n in names:
            why = self._stream_error(n)
            if why is not None:
                return self._respond(400, error_body(2, why), 0)
        ws = web.WebSocketResponse(compress=False, autoping=False, timeout=_WS_CLOSE_TIMEOUT)
        if not ws.can_prepare(request).ok:
            return self._respond(400, error_body(-1, "WebSocket upgrade expected."), 0)
        await ws.prepare(request)
        transport = request.transport
        if transport is None:
            return ws
        conn = _Conn(ws, transport, combined, peer)
        self._conns[conn] = None
        self.stats["connections"] += 1
        self.stats["open_connections"] += 1
        self.peer_connections[peer] += 1
        for n in names:
            self._subscribe(conn, n)
        keepalive = asyncio.create_task(self._keepalive(conn))
        self._tasks.add(keepalive)
        keepalive.add_done_callback(self._tasks.discard)
        try:
            async for msg in ws:
                if msg.type in _INBOUND and self._over_inbound_limit(conn):
                    # Binance disconnects a client past 5 messages/s (pings, pongs and control
                    # messages all count); the close code is not documented [UNVERIFIED] (1008).
                    self.stats["inbound_limit_closes"] += 1
                    await self._close_ws(conn, 1008, b"Too many requests")
                    break
                if msg.type == WSMsgType.TEXT:
                    await self._control(conn, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._control(conn, msg.data.decode("utf-8", "replace"))
                elif msg.type == WSMsgType.PING:
                    if not conn.stalled:
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    self._pong(conn, bytes(msg.data))
                elif msg.type == WSMsgType.ERROR:
                    break
            if conn.stalled:
                # The client closed a stalled connection: it gets no close frame back (aiohttp would
                # send one as this handler returns), the server just waits for it to hang up.
                while not transport.is_closing():
                    await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            conn.closing = True
            keepalive.cancel()
            for n in list(conn.streams):
                self._unsubscribe(conn, n)
            self._conns.pop(conn, None)
            self._stalled.discard(conn)
            self.stats["open_connections"] -= 1
        return ws

    def _over_inbound_limit(self, conn: _Conn) -> bool:
        """Count one client message; True when the connection passed ``inbound_limit`` in a second."""
        if not self.inbound_limit:
            return False
        now = time.monotonic()
        q = conn.inbound
        q.append(now)
        while q and q[0] <= now - 1.0:
            q.popleft()
        return len(q) > self.inbound_limit

    async def _close_ws(self, conn: _Conn, code: int, message: bytes) -> None:
        await close_ws(conn, code, message, _WS_CLOSE_TIMEOUT + 1)

    async def _keepalive(self, conn: _Conn) -> None:
        """Ping every ``ping_interval``; close if a ping stays unanswered for ``pong_timeout``."""
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_interval
        n = 0
        while not conn.closing:
            wake = next_ping
            if conn.pings:
                wake = min(wake, min(conn.pings.values()) + self.pong_timeout)
            await asyncio.sleep(max(0.0, wake - loop.time()))
            if conn.stalled:
                return  # a stalled connection gets no pings and is not closed for missing pongs
            now = loop.time()
            if conn.pings and min(conn.pings.values()) + self.pong_timeout <= now:
                # The close code of this disconnect is not documented [UNVERIFIED]; 1008 policy violation.
                await self._close_ws(conn, 1008, b"Pong timeout")
                return
            if now >= next_ping and not conn.closing:
                n += 1
                payload = b"%d" % (self._clock.now_ms() * 100 + n % 100)  # the payload is arbitrary; unique
                conn.pings[payload] = now
                try:
                    await conn.ws.ping(payload)
                except ConnectionError:
                    return
                next_ping = now + self.ping_interval

    def _pong(self, conn: _Conn, payload: bytes) -> None:
        # Only a pong echoing a ping's payload answers it (and every older ping); others are ignored.
        sent = conn.pings.get(payload)
        if sent is not None:
            for k in [k for k, t in conn.pings.items() if t <= sent]:
                del conn.pings[k]

    async def _control(self, conn: _Conn, text: str) -> None:
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as e:
            await conn.send_control(
                _ws_error(3, f"Invalid JSON: expected value at line {e.lineno} column {e.colno}", None)
            )
            return
        if not isinstance(msg, dict):
            await conn.send_control(_ws_error(2, "Invalid request: expected an object", None))
            return
        rid = msg.get("id")
        if not (
            rid is None
            or (isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**63)
            or (isinstance(rid, str) and len(rid) <= 36 and rid.isascii() and rid.isalnum())
        ):
            await conn.send_control(_ws_error(2, "Invalid request: request ID must be an unsigned integer", None))
            return
        method = msg.get("method")
        if method is None:
            await conn.send_control(_ws_error(2, "Invalid request: missing field `method`", rid))
            return
        params = msg.get("params", [])
        reply: bytes
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                reply = _ws_error(2, "Invalid request: invalid type: expected a sequence of strings", rid)
            elif any(self._stream_error(p) for p in params):
                why = next(w for w in map(self._stream_error, params) if w is not None)
                reply = _ws_error(2, why, rid)
            elif method == "SUBSCRIBE" and len(set(conn.streams) | set(params)) > MAX_STREAMS_PER_CONNECTION:
                # Binance's message for the 1024-stream cap is not documented [UNVERIFIED].
                reply = _ws_error(2, "Invalid request: too many streams", rid)
            else:
                for p in params:
                    (self._subscribe if method == "SUBSCRIBE" else self._unsubscribe)(conn, p)
                reply = b'{"result":null,"id":%s}' % msgspec.json.encode(rid)
        elif method == "LIST_SUBSCRIPTIONS":
            reply = msgspec.json.encode({"result": list(conn.streams), "id": rid})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            reply = self._property(conn, method, params, rid)
        else:
            reply = _ws_error(2, f"Invalid request: unknown variant `{method}`, expected one of {_METHODS}", rid)
        await conn.send_control(reply)

    def _property(self, conn: _Conn, method: str, params: Any, rid: Any) -> bytes:
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            return _ws_error(2, "Invalid request: property name must be a string", rid)
        if params[0] != "combined":
            return _ws_error(0, "Unknown property", rid)
        if method == "GET_PROPERTY":
            return msgspec.json.encode({"result": conn.combined, "id": rid})
        if len(params) != 2 or not isinstance(params[1], bool):
            return _ws_error(1, "Invalid value type: expected Boolean", rid)
        conn.combined = params[1]
        return b'{"result":null,"id":%s}' % msgspec.json.encode(rid)

    def _subscribe(self, conn: _Conn, name: str) -> None:
        if name in conn.streams:
            return
        st = self._streams.get(name)
        if st is None:
            st = self._new_stream(name)
            if st is None:
                # Binance accepts a well-formed stream of a symbol it does not list and sends nothing.
                conn.streams[name] = None
                self.stats["idle_streams"] += 1
                log.warning("binance replica: stream %s names no simulated symbol; it stays silent", name)
                return
            self._streams[name] = st
        st.subs[conn] = None
        conn.streams[name] = None
        if st.kind == "kline":
            st.next_push = 0.0  # a new subscriber gets the open kline on the next tick

    def _unsubscribe(self, conn: _Conn, name: str) -> None:
        conn.streams.pop(name, None)
        st = self._streams.get(name)
        if st is not None:
            st.subs.pop(conn, None)
            if not st.subs:
                del self._streams[name]
                if st.kind == "aggTrade":
                    self._sim.want_aggs(st.symbol, False)

    # -- the data pump --

    def _tick(self, symbols: list[str] | None = None) -> None:
        """Advance the market to now and push what happened to every subscriber (with ``symbols``:
        only those symbols, and only to their streams)."""
        now = self._clock.now_ms()
        batches = self._sim.advance_to(now, symbols)
        self.stats["trades"] = self._sim.trades_released
        for sym, b in batches.items():
            book = self._books.get(sym)
            if book is not None:
                ev = book.step(int(b.ticks[-1]), bool(b.maker[-1]))
                if self.book_tape is not None:
                    self.book_tape.write(sym, ev.last, now, book, ev.bids, ev.asks)
        if not self._streams:
            for book in self._books.values():
                book.events.clear()
            return
        wall = time.monotonic()
        out: dict[_Conn, tuple[list[bytes], list[int]]] = {}
        streams = list(self._streams.values())
        if symbols is not None:
            streams = [st for st in streams if st.symbol in symbols]
        for st in streams:
            blobs: dict[bool, tuple[bytes, int]] | None
            if st.kind == "trade":
                tb = batches.get(st.symbol)
                blobs = None if tb is None else self._trade_blobs(st, tb, now)
            elif st.kind == "kline":
                blobs = self._kline_blobs(st, now, wall)
            else:
                blobs = self._blobs(st, self._payloads(st, batches, now, wall))
            if blobs is None:
                continue
            for conn in st.subs:
                blob, n = blobs[conn.combined]
                if n:
                    parts, counts = out.setdefault(conn, ([], [0]))
                    parts.append(blob)
                    counts[0] += n
        self._trim_books()
        faults = self.faults
        if faults is not None:
            self._faults_before_send(faults, out, now)
        for conn, (parts, counts) in out.items():
            conn.send_data(parts, counts[0], self.max_send_buffer, self.stats)
        if faults is not None:
            self._faults_after_send(faults, out)

    # -- WebSocket faults --

    def _victims(self, out: dict[_Conn, tuple[list[bytes], list[int]]], frames: int) -> list[_Conn]:
        """Connections with at least ``frames`` frames to send this tick that a fault may hit."""
        return [
            c
            for c, (_, n) in out.items()
            if n[0] >= frames and not (c.closing or c.stalled or c.doomed or c.transport.is_closing())
        ]

    def _faults_before_send(
        self, f: FaultSchedule, out: dict[_Conn, tuple[list[bytes], list[int]]], now_ms: int
    ) -> None:
        """Stall, shutdown and message faults due now, applied to this tick's output."""
        for c in self._stalled:
            out.pop(c, None)
        for kind in ("stall", "shutdown", *MESSAGE_KINDS):
            if not f.pending(kind):
                continue
            cands = self._victims(out, MESSAGE_KINDS.get(kind, 1))
            if not cands:
                continue  # stays due until a connection has something to send
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                # aiohttp answers a client's close frame itself; a stalled server answers nothing.
                conn.ws._autoclose = False
                self._stalled.add(conn)
                out.pop(conn)
            elif kind == "shutdown":
                conn.doomed = True
                parts, counts = out[conn]
                event = b'{"e":"serverShutdown","E":%d}' % now_ms
                parts.append(text_frames([wrap_combined("!serverShutdown", event) if conn.combined else event]))
                counts[0] += 1
                self._spawn(self._shutdown_close(conn))
            else:
                parts, counts = out[conn]
                payloads = split_text_frames(parts[0] if len(parts) == 1 else b"".join(parts))
                faulty = apply_message_fault(kind, payloads, f.pick, poison_trade)
                parts[:] = [text_frames(faulty)]
                counts[0] = len(faulty)
                if kind == "poison" and len(faulty) == len(payloads):
                    continue  # no trade this tick to poison (klines only): taken, not injected
            self._injected(kind, conn.peer)

    def _faults_after_send(self, f: FaultSchedule, out: dict[_Conn, tuple[list[bytes], list[int]]]) -> None:
        """Close and reset faults due now, on a connection that was just sent data."""

        def close(conn: _Conn) -> None:
            conn.doomed = True
            self._spawn(self._close_ws(conn, (1000, 1001)[f.pick(2)], b""))

        def reset(conn: _Conn) -> None:
            conn.doomed = conn.closing = True
            reset_transport(conn.transport)

        inject_connection_faults(
            f, lambda: self._victims(out, 1), {"close": close, "reset": reset}, lambda k, c: self._injected(k, c.peer)
        )

    async def _shutdown_close(self, conn: _Conn) -> None:
        await asyncio.sleep(self.shutdown_grace_s)
        # The close code after a serverShutdown is not documented [UNVERIFIED]; 1001 going away.
        await self._close_ws(conn, 1001, b"server shutdown")

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forms(self, st: _Stream) -> tuple[bool, bool]:
        raw = comb = False
        for c in st.subs:
            if c.combined:
                comb = True
            else:
                raw = True
        return raw, comb

    def _trade_blobs(self, st: _Stream, b: TradeBatch, now: int) -> dict[bool, tuple[bytes, int]]:
        raw, comb = self._forms(st)
        n = len(b)
        out: dict[bool, tuple[bytes, int]] = {}
        if raw and st.raw is not None:
            out[False] = (text_frames(st.raw.payloads(b, now)), n)
        if comb and st.combined is not None:
            out[True] = (text_frames(st.combined.payloads(b, now)), n)
        return out

    def _kline_blobs(self, st: _Stream, now: int, wall: float) -> dict[bool, tuple[bytes, int]] | None:
        grid = st.grid
        assert grid is not None
        cur = grid.floor(now)
        payloads: list[bytes] = []
        if st.open_time is not None and cur > st.open_time:
            # Market time passed the end of the candle(s) last pushed as open: push them closed, then
            # the new open one. Intervals without trades come out as flat candles, as klines do.
            done = self._sim.kline_table(st.symbol, grid, st.open_time, cur - 1, KLINES_PAGE, now)
            payloads += self._kline_payloads(st, done, now)
        elif st.open_time is not None and wall < st.next_push:
            return None
        st.open_time = cur
        st.next_push = wall + st.push_every
        payloads += self._kline_payloads(st, self._sim.kline_table(st.symbol, grid, cur, cur, 1, now), now)
        if not payloads:
            return None
        raw, comb = self._forms(st)
        out: dict[bool, tuple[bytes, int]] = {}
        if raw:
            out[False] = (text_frames(payloads), len(payloads))
        if comb:
            out[True] = (text_frames([wrap_combined(st.name, p) for p in payloads]), len(payloads))
        return out

    def _blobs(self, st: _Stream, payloads: list[bytes]) -> dict[bool, tuple[bytes, int]] | None:
        """``payloads`` framed for the stream's raw and combined subscribers (None if there are none)."""
        if not payloads:
            return None
        raw, comb = self._forms(st)
        out: dict[bool, tuple[bytes, int]] = {}
        if raw:
            out[False] = (text_frames(payloads), len(payloads))
        if comb:
            out[True] = (text_frames([wrap_combined(st.name, p) for p in payloads]), len(payloads))
        return out

    def _payloads(self, st: _Stream, batches: Mapping[str, TradeBatch], now: int, wall: float) -> list[bytes]:
        """This tick's raw payloads of an aggTrade, book, depth or ticker stream."""
        sym = st.symbol
        if st.kind == "aggTrade":
            aggs = self._sim.last_aggs.get(sym)
            return [] if aggs is None else agg_payloads(sym, self._sim.specs[sym], aggs, now)
        if st.kind == "bookTicker":
            if sym not in batches:
                return []
            book = self._books[sym]
            (bid,), (ask,) = book.levels(1)
            return [
                b'{"u":%d,"s":"%s","b":"%s","B":"%s","a":"%s","A":"%s"}'
                % (book.u, sym.encode(), bid[0].encode(), bid[1].encode(), ask[0].encode(), ask[1].encode())
            ]
        if wall < st.next_push:
            return []
        st.next_push = wall + st.push_every
        if st.kind == "depth":
            book = self._books[sym]
            ev = book.merged(st.last_u)
            if ev is None:
                return []
            st.last_u = ev.last
            return self._book_faults.deltas(st.name, [
                msgspec.json.encode(
                    {"e": "depthUpdate", "E": now, "s": sym, "U": ev.first, "u": ev.last,
                     "b": book.changes(ev.bids, True), "a": book.changes(ev.asks, False)}
                )
            ])  # fmt: skip
        if st.kind == "partial":
            book = self._books[sym]
            bids, asks = book.levels(st.levels)
            return [msgspec.json.encode({"lastUpdateId": book.u, "bids": bids, "asks": asks})]
        if st.kind == "avgPrice":
            price, close = self._avg(sym)
            return [msgspec.json.encode({"e": "avgPrice", "E": now, "s": sym, "i": "5m", "w": price, "T": close})]
        w = self._window(sym, st.window_ms)
        if st.kind == "miniTicker":
            msg: dict[str, Any] = {"e": "24hrMiniTicker", "E": now, "s": sym, "c": w.last, "o": w.open, "h": w.high,
                                   "l": w.low, "v": w.volume, "q": w.quote_volume}  # fmt: skip
            return [msgspec.json.encode(msg)]
        head = {"e": "24hrTicker" if st.kind == "ticker" else f"{st.interval}Ticker", "E": now, "s": sym,
                "p": w.change, "P": w.change_pct}  # fmt: skip
        if st.kind == "ticker":
            (bid,), (ask,) = self._books[sym].levels(1)
            head.update(w=w.weighted, x=w.prev_close, c=w.last, Q=w.last_qty, b=bid[0], B=bid[1], a=ask[0], A=ask[1])
        else:
            head.update(w=w.weighted, c=w.last)
        head.update(o=w.open, h=w.high, l=w.low, v=w.volume, q=w.quote_volume, O=w.open_ms, C=w.close_ms,
                    F=w.first_id, L=w.last_id, n=w.count)  # fmt: skip
        return [msgspec.json.encode(head)]

    def _trim_books(self) -> None:
        """Drop book events every diff-depth stream of the symbol has sent (all of them without one)."""
        sent: dict[str, int] = {}
        for st in self._streams.values():
            if st.kind == "depth":
                sent[st.symbol] = min(sent.get(st.symbol, st.last_u), st.last_u)
        for sym, book in self._books.items():
            if sym in sent:
                book.trim(sent[sym])
            else:
                book.events.clear()

    def _kline_payloads(self, st: _Stream, table: KlineTable, now: int) -> list[bytes]:
        if not len(table):
            return []
        return [
            _kline_payload(st.symbol, st.interval, now, c, ex)
            for c, ex in zip(table.candles(), table.extras(), strict=True)
        ]


def _depth_limit(q: Mapping[str, str]) -> int:
    limit = _int_param(q, "limit")
    if limit is None:
        return 100
    if limit < 1:
        raise _BadRequest(-1130, "Data sent for parameter 'limit' is not valid.")
    return min(limit, DEPTH_LIMIT_MAX)  # rest-api.md: a larger limit is truncated to 5000


def _depth_weight(q: Mapping[str, str]) -> int:
    limit = _depth_limit(q)
    return 5 if limit <= 100 else 25 if limit <= 500 else 50 if limit <= 1000 else 250


def _ticker_weight(one: int, few: int, everything: int) -> Callable[[Mapping[str, str]], int]:
    """A ticker endpoint's weight: ``one`` for a ``symbol``; for ``symbols``, ``one`` per symbol up to
    ``few`` (rest-api.md gives 1-20 symbols 2 each... capped at the all-symbols weight); ``everything``
    without either."""

    def weight(q: Mapping[str, str]) -> int:
        if "symbol" in q:
            return one
        if "symbols" in q:
            return min(few, everything)
        return everything

    return weight
