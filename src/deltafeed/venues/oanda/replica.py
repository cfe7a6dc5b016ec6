"""A local OANDA v20 server: REST candles and the chunked HTTP pricing stream on one port, seeded quotes.

Speaks what ``api-fxtrade.oanda.com`` and ``stream-fxtrade.oanda.com`` speak for market data (see
../shared/PROTOCOLS.md section 5); clients point both hosts at :attr:`OandaReplica.url`:

* ``GET /v3/accounts/{accountID}/pricing/stream?instruments=A,B[&snapshot=false]``: HTTP chunked JSON
  lines. First (unless ``snapshot=false``) the last price of each instrument, then one PRICE line
  per simulated quote as the market clock passes it, in time order, and a HEARTBEAT line every
  ``heartbeat_s`` (5) wall seconds. While the FX market is closed there are no PRICE lines; the
  heartbeats go on. Every quote is sent: there is no conflation to OANDA's 4 prices/s/instrument, so
  a ``rate`` above 4 sends more than OANDA would.
* ``GET /v3/instruments/{instrument}/candles`` (and the same under ``/v3/accounts/{accountID}/``):
  candles built from the same quotes (volume = number of quotes, no candle for an interval without
  quotes, ``complete`` false for the candle still forming by the market clock), with ``price``,
  ``granularity`` (S5 to D, W and M), ``count``, ``from``, ``to``, ``includeFirst``, ``smooth`` (each
  candle opens at the previous candle's close) and OANDA's alignment: S5 to H1 on the epoch grid in
  UTC; H2 to H12 and D from the trading day's start, ``dailyAlignment`` (17) o'clock wall time in
  ``alignmentTimezone`` (America/New_York); W from ``weeklyAlignment`` (Friday) and M from the 1st
  of the month, at that hour (:class:`Alignment`).
* ``GET /v3/accounts/{accountID}/pricing?instruments=A,B[&since=T]``: the last price of each
  instrument, ``{"prices": [...], "time": ...}``.
* ``GET /v3/accounts`` and ``GET /v3/accounts/{accountID}/instruments``, enough to check names.

Every request needs ``Authorization: Bearer <token>``; errors are OANDA's ``{"errorMessage": ...}``
(an unserved path 404, another method than GET 405). ``Accept-Datetime-Format: UNIX`` switches every
time to unix seconds, as on OANDA. The ``Date`` header carries the market clock (OANDA has no time
endpoint; clients may read the venue's time there).

Deviations, all documented where they are made: mid prices are ``(bid + ask) / 2`` per quote,
exact, so with one decimal more than bid and ask; a smoothed candle's high and low are those of its
own quotes (whether OANDA widens them to the smoothed open is not documented [UNVERIFIED]); across a
daylight-saving change one day-aligned candle is an hour longer or shorter [UNVERIFIED]; any account
ID is accepted; candles exist only from the start of the replica's ``history``.

Limits, per client IP, as on OANDA: 120 REST requests per sliding second (more → 429), 20 open
streams (the 21st → 429; OANDA only says "rejected" [UNVERIFIED]), 2 new TCP connections per sliding
second (the first request on an excess connection → 429 and the connection is closed; OANDA only
says "rejected" [UNVERIFIED]). Stream requests do not count as REST requests: OANDA serves them from
another host.

Quotes come from :class:`~deltafeed.replicas.quotes.QuoteSim` on a
:class:`~deltafeed.replicas.sim.MarketClock` that may run faster than the wall clock and start at any
instant (e.g. a Friday afternoon, to cross a weekend). A pump task releases quotes every
:data:`TICK_SECONDS`, encodes each once, and writes one HTTP chunk per stream and tick straight to
the transport (skipping a client more than ``max_send_buffer`` bytes behind, counted), so a slow
client never blocks the others. Faults (``faults=``, :mod:`deltafeed.replicas.faults`) hook in there
and in REST handling, and cost nothing when off.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import numpy as np
from aiohttp import web

from deltafeed.model import BadInput
from deltafeed.replicas.faults import (
    CONNECTION_KINDS,
    MESSAGE_KINDS,
    FaultSchedule,
    apply_message_fault,
    inject_connection_faults,
    parse_faults,
    reset_transport,
)
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.quotes import (
    LIQUIDITY,
    ORIGIN_MS,
    QuoteBatch,
    QuoteCandles,
    QuoteMarket,
    QuoteSim,
    SessionCalendar,
)
from deltafeed.replicas.server import ReplicaBase
from deltafeed.replicas.sim import MarketClock

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS = ("EUR_USD", "USD_JPY", "GBP_USD")
#: The token every request must carry unless another is configured (a local replica's, not a secret).
DEV_TOKEN = "deltafeed-oanda-dev-token"
DEFAULT_ACCOUNT = "101-001-0000000-001"
#: OANDA's fixed-length granularities (multiples of 5 s); those up to H1 are aligned to the epoch, see DAY_ALIGNED.
GRANULARITIES: dict[str, int] = {
    "S5": 5_000, "S10": 10_000, "S15": 15_000, "S30": 30_000,
    "M1": 60_000, "M2": 120_000, "M4": 240_000, "M5": 300_000, "M10": 600_000, "M15": 900_000, "M30": 1_800_000,
    "H1": 3_600_000, "H2": 7_200_000, "H3": 10_800_000, "H4": 14_400_000, "H6": 21_600_000,
    "H8": 28_800_000, "H12": 43_200_000, "D": 86_400_000,
}  # fmt: skip
DEFAULT_COUNT = 500
MAX_COUNT = 5000
REST_LIMIT_PER_S = 120
MAX_STREAMS = 20
INSTRUMENTS_PER_STREAM = 50  # chosen: OANDA documents no cap on a stream's instruments
NEW_CONNECTIONS_PER_S = 2
HEARTBEAT_S = 5.0  # [3P] per PROTOCOLS.md; officially unverified
TICK_SECONDS = 0.02  # pump period (wall)
MAX_SEND_BUFFER = 8 * 1024 * 1024
#: Fault kinds that mean something here: ``shutdown`` (a Binance serverShutdown event) does not.
FAULT_KINDS = tuple(k for k in (*CONNECTION_KINDS, *MESSAGE_KINDS, "http500", "http429", "slow") if k != "shutdown")

#: Granularities aligned to the trading day, which starts at ``dailyAlignment`` o'clock in
#: ``alignmentTimezone`` (OANDA's granularity table: S5 to M1 "minute alignment", M2 to H1 "hour
#: alignment", H2 to D "day alignment"); W starts on ``weeklyAlignment`` and M on the 1st, both at
#: that hour.
DAY_ALIGNED = frozenset({"H2", "H3", "H4", "H6", "H8", "H12", "D"})
CALENDAR_GRANULARITIES = ("W", "M")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

_STREAM_RE = re.compile(r"^/v3/accounts/([^/]+)/pricing/stream$")
_PRICING_RE = re.compile(r"^/v3/accounts/([^/]+)/pricing$")
_CANDLES_RE = re.compile(r"^/v3/(?:accounts/[^/]+/)?instruments/([^/]+)/candles$")
_INSTRUMENTS_RE = re.compile(r"^/v3/accounts/([^/]+)/instruments$")
#: OANDA's 429 wording is not documented [UNVERIFIED].
_RATE_ERROR = "Rate limit violation. Allowed: %d requests per second."
_UNIX_RE = re.compile(r"^(\d{1,12})(?:\.(\d{1,9}))?$")


# --- times ----------------------------------------------------------------------------------------


class _TimeFormat:
    """Formats epoch ms as OANDA does, RFC3339 with nanoseconds or unix seconds with 9 decimals;
    caches the per-second prefix, which is most of the cost."""

    def __init__(self, unix: bool) -> None:
        self.unix = unix
        self._sec = -1
        self._prefix = ""

    def __call__(self, ms: int) -> str:
        sec, milli = divmod(ms, 1000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = str(sec) if self.unix else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{milli:03d}000000" if self.unix else f"{self._prefix}.{milli:03d}000000Z"


def rfc3339(ms: int) -> str:
    """``2016-10-27T08:38:45.664000000Z``: OANDA's time format, nanoseconds always written."""
    return _TimeFormat(False)(ms)


def parse_time(text: str) -> int:
    """Epoch ms of an OANDA time parameter: RFC3339 (UTC if no offset) or unix seconds with an
    optional fraction; sub-millisecond digits are dropped. ValueError if neither."""
    m = _UNIX_RE.match(text)
    if m:
        frac = (m.group(2) or "").ljust(3, "0")[:3]
        return int(m.group(1)) * 1000 + int(frac)
    t = dt.datetime.fromisoformat(text.strip())
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Alignment:
    """Where OANDA's day-, week- and month-aligned candles start: ``hour`` o'clock (wall time) in
    ``tz``, weeks on ``weekday`` (0 = Monday). The defaults are OANDA's: 17:00 America/New_York, Friday."""

    hour: int = 17
    tz: str = "America/New_York"
    weekday: int = 4

    @classmethod
    def from_query(cls, q: Mapping[str, str]) -> Alignment:
        """The alignment a candles request asks for; a bad value is OANDA's 400."""
        hour = q.get("dailyAlignment", "17")
        if not (hour.isascii() and hour.isdigit() and len(hour) <= 2 and int(hour) <= 23):
            raise _invalid("dailyAlignment", "Use an hour from 0 to 23")
        tz = q.get("alignmentTimezone", "America/New_York")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise _invalid("alignmentTimezone") from None
        day = q.get("weeklyAlignment", "Friday")
        if day not in WEEKDAYS:
            raise _invalid("weeklyAlignment", f"Use one of {', '.join(WEEKDAYS)}")
        return cls(int(hour), tz, WEEKDAYS.index(day))

    def edges(self, granularity: str, lo_ms: int, hi_ms: int) -> np.ndarray[Any, np.dtype[np.int64]]:
        """Open times (epoch ms, sorted) of every ``granularity`` candle that overlaps ``[lo_ms, hi_ms]``,
        plus the next one, for a day-aligned granularity or W or M.

        Boundaries are wall-clock times in ``tz``: the trading day starts at ``hour`` and day-aligned
        candles every ``length`` wall hours from there, so across a daylight-saving change one candle
        is an hour longer or shorter (OANDA does not document this case [UNVERIFIED]).
        """
        zone = ZoneInfo(self.tz)
        first = dt.datetime.fromtimestamp(lo_ms / 1000, zone).date() - dt.timedelta(days=40)
        last = dt.datetime.fromtimestamp(hi_ms / 1000, zone).date() + dt.timedelta(days=40)
        step_h = 24 if granularity in CALENDAR_GRANULARITIES else GRANULARITIES[granularity] // 3_600_000
        out: list[int] = []
        day = first
        while day <= last:
            if (granularity == "W" and day.weekday() != self.weekday) or (granularity == "M" and day.day != 1):
                day += dt.timedelta(days=1)
                continue
            start = dt.datetime(day.year, day.month, day.day, self.hour)
            for k in range(24 // step_h):
                wall = start + dt.timedelta(hours=k * step_h)
                out.append(int(wall.replace(tzinfo=zone).timestamp()) * 1000)
            day += dt.timedelta(days=1)
        return np.unique(np.array(out, dtype=np.int64))


# --- encoding -------------------------------------------------------------------------------------


def _price_template(symbol: str) -> str:
    # Field order as in oandapyV20's fixture [C], with the newer ``tradeable`` flag after ``status``.
    level = '{"price":"%s","liquidity":' + str(LIQUIDITY) + "}"
    return (
        '{"type":"PRICE","instrument":"' + symbol + '","time":"%s","status":"%s","tradeable":%s,'
        '"bids":[' + level + "," + level + '],"asks":[' + level + "," + level + "],"
        '"closeoutBid":"%s","closeoutAsk":"%s"}'
    )


_BID_PRICE = re.compile(rb'"bids":\[\{"price":"[^"]*"')


def poison_price(line: bytes, pick: Callable[[int], int]) -> list[bytes] | None:
    """The ``poison`` fault's line for a PRICE line: the same price with a bid of ``"NaN"``, sent just
    before the real one. None for a line without a bid."""
    bad = _BID_PRICE.sub(b'"bids":[{"price":"NaN"', line, count=1)
    return [bad] if bad != line else None


def price_lines(batch: QuoteBatch, fmt_time: Callable[[int], str], tradeable: bool = True) -> list[bytes]:
    """PRICE lines (without newlines) for ``batch``: a second level two points behind the best one and
    closeout prices four points out, as in OANDA's fixture."""
    spec = batch.spec
    tmpl = _price_template(spec.symbol)
    status, flag = ("tradeable", "true") if tradeable else ("non-tradeable", "false")
    b, a = batch.bid, batch.ask
    cols = zip(
        batch.times.tolist(),
        spec.prices(b),
        spec.prices(b - 2),
        spec.prices(a),
        spec.prices(a + 2),
        spec.prices(b - 4),
        spec.prices(a + 4),
        strict=True,
    )
    return [(tmpl % (fmt_time(t), status, flag, b1, b2, a1, a2, cb, ca)).encode() for t, b1, b2, a1, a2, cb, ca in cols]


def _error(message: str) -> bytes:
    return msgspec.json.encode({"errorMessage": message})


class _Reject(Exception):
    """An OANDA error answer: HTTP ``status`` with ``{"errorMessage": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _invalid(name: str, why: str = "") -> _Reject:
    return _Reject(400, f"Invalid value specified for '{name}'" + (f". {why}" if why else ""))


# --- limits ---------------------------------------------------------------------------------------


class SlidingLimit:
    """At most ``limit`` events per ``window_s`` sliding wall seconds, per key (client IP)."""

    def __init__(self, limit: int, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        """Record an event for ``key`` and return True, or return False (not recorded) over the limit."""
        now = self._clock()
        q = self._events.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(now)
        return True


# --- streams ---------------------------------------------------------------------------------------


class _Stream:
    """One open pricing stream: its instruments, time format, transport and counters."""

    __slots__ = (
        "bytes_sent",
        "done",
        "doomed",
        "end",
        "fmt",
        "instruments",
        "ip",
        "lines_dropped",
        "lines_sent",
        "next_heartbeat",
        "stalled",
        "transport",
    )

    def __init__(
        self, transport: asyncio.Transport, instruments: list[str], unix: bool, ip: str, next_heartbeat: float
    ) -> None:
        self.transport = transport
        self.instruments = instruments
        self.fmt = _TimeFormat(unix)
        self.ip = ip
        self.next_heartbeat = next_heartbeat
        self.done = asyncio.Event()
        self.end = "eof"  # how the handler ends the response: "eof" (terminating chunk) or "abort"
        self.lines_sent = 0
        self.lines_dropped = 0
        self.bytes_sent = 0
        # A stalled stream gets nothing more; a doomed one has a close or reset on its way.
        self.stalled = False
        self.doomed = False

    @property
    def unix(self) -> bool:
        return self.fmt.unix

    def finish(self, end: str) -> None:
        self.end = end
        self.done.set()

    def write_chunk(self, lines: list[bytes], max_buffer: int, stats: dict[str, int]) -> None:
        """One HTTP chunk holding ``lines``, or nothing (counted) if the client is too far behind."""
        tr = self.transport
        if self.done.is_set() or tr.is_closing():
            return
        if tr.get_write_buffer_size() > max_buffer:
            self.lines_dropped += len(lines)
            stats["lines_dropped"] += len(lines)
            stats["slow_skips"] += 1
            return
        body = b"\n".join(lines) + b"\n"
        blob = b"%x\r\n%s\r\n" % (len(body), body)
        tr.write(blob)
        self.lines_sent += len(lines)
        self.bytes_sent += len(blob)
        stats["bytes_sent"] += len(blob)


# --- the server ------------------------------------------------------------------------------------


class OandaReplica(ReplicaBase):
    """An OANDA v20 market-data server on ``host:port`` (0 = any free port), driven by seeded quotes.

    ``rate`` is quotes per market second per instrument while the FX market is open; ``speed`` is
    market seconds per wall second; the market clock starts at ``start_ms`` (default now) and
    ``history_ms`` of market before it is released at construction. Pass ``clock`` to drive the
    market clock yourself (``speed`` and ``start_ms`` are then ignored). ``heartbeat_s``,
    ``rest_limit``, ``max_streams`` and ``new_connections_per_s`` default to OANDA's values; tests
    shorten or widen them.

    ``faults`` (a spec like ``"close=2,drop=30"`` or a dict of kind to events per wall minute) injects
    faults on a schedule seeded by ``faults_seed`` and counted from :meth:`start`: ``close`` ends a
    stream with its terminating chunk and closes the connection, ``reset`` sends a TCP RST, ``stall``
    stops all output (heartbeats too) on a stream, ``drop``/``dup``/``reorder``/``garbage`` hit the
    PRICE lines of one stream's chunk, ``poison`` sends a copy of a PRICE line with a NaN bid before it
    (:func:`poison_price`), ``http500``/``http429``/``slow`` hit REST answers (``slow`` delays one by
    ``slow_s``).
    """

    fault_kinds = FAULT_KINDS

    venue = "oanda"
    per_connection = INSTRUMENTS_PER_STREAM
    http_method = "*"  # every method, so that one OANDA does not serve here gets OANDA's error shape
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
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        start_ms: int | None = None,
        clock: MarketClock | None = None,
        token: str = DEV_TOKEN,
        account_id: str = DEFAULT_ACCOUNT,
        heartbeat_s: float = HEARTBEAT_S,
        rest_limit: int = REST_LIMIT_PER_S,
        max_streams: int = MAX_STREAMS,
        new_connections_per_s: int = NEW_CONNECTIONS_PER_S,
        max_send_buffer: int = MAX_SEND_BUFFER,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        slow_s: float = 2.0,
        calendar: SessionCalendar | None = None,
        options: ReplicaOptions | None = None,
    ) -> None:
        rates = check_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=symbols, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        self.options = o
        if not token:
            raise BadInput("the token must not be empty; give --token T or leave the default")
        if not heartbeat_s > 0:
            raise BadInput(f"heartbeat interval must be positive, got {heartbeat_s}")
        for name, v in (
            ("rest_limit", rest_limit),
            ("max_streams", max_streams),
            ("new_connections_per_s", new_connections_per_s),
        ):
            if v < 1:
                raise BadInput(f"{name} must be at least 1, got {v}")
        self.host = o.host
        self.port = o.port
        self.token = token
        self.account_id = account_id
        self.heartbeat_s = float(heartbeat_s)
        self.max_streams = max_streams
        self.max_send_buffer = max_send_buffer
        self.slow_s = slow_s
        self._clock = clock if clock is not None else MarketClock(o.speed, o.start_ms)
        if self._clock.start_ms - o.history_ms < ORIGIN_MS:
            raise BadInput("the simulated market starts on 2000-01-01; choose a later --start or a shorter --history")
        self._sim = QuoteSim(o.symbols, seed=o.seed, rate=o.rate, calendar=calendar)
        self._market = QuoteMarket(self._sim, self._clock.start_ms, o.history_ms, o.tape)
        self.rest_limiter = SlidingLimit(rest_limit)
        self.connection_limiter = SlidingLimit(new_connections_per_s)
        self.stats: dict[str, int] = {
            "quotes": self._market.quotes_released,
            "connections": 0,
            "rejected_connections": 0,
            "requests": 0,
            "stream_requests": 0,
            "streams": 0,
            "open_streams": 0,
            "rejected_streams": 0,
            "400": 0,
            "401": 0,
            "404": 0,
            "429": 0,
            "price_lines": 0,
            "heartbeats": 0,
            "lines_dropped": 0,
            "slow_skips": 0,
            "bytes_sent": 0,
        }
        rates = dict(o.faults)
        if rates.get("shutdown", 0) > 0:
            raise BadInput(f"fault kind 'shutdown' does not apply to OANDA; use {', '.join(FAULT_KINDS)}")
        self._setup_faults(rates, o.faults_seed)
        self._streams: dict[_Stream, None] = {}
        self._tcp: dict[Any, bool] = {}  # connection (aiohttp protocol) -> admitted
        self._request_id = 0

    # -- public surface --

    @property
    def sim(self) -> QuoteSim:
        return self._sim

    @property
    def market(self) -> QuoteMarket:
        return self._market

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header a client needs."""
        return {"Authorization": f"Bearer {self.token}"}

    async def stop(self) -> None:
        """End every stream (terminating chunk; stalled ones are cut), stop the server, close the tape."""
        await self._stop_pump()
        for s in list(self._streams):
            if s.stalled:
                s.transport.abort()
                s.finish("abort")
            else:
                s.finish("eof")
        await self._stop_server()
        self._market.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"oanda replica stopped: quotes={s['quotes']} connections={s['connections']} "
            f"requests={s['requests']} streams={s['streams']} 429s={s['429']} "
            f"rejected_connections={s['rejected_connections']} rejected_streams={s['rejected_streams']} "
            f"price_lines={s['price_lines']} heartbeats={s['heartbeats']} lines_dropped={s['lines_dropped']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    # -- HTTP --

    def _respond(self, status: int, body: bytes, counted: bool = True) -> web.Response:
        """Every non-stream answer goes through here (``counted``: in ``stats`` by status; injected
        faults are counted as faults instead)."""
        self._request_id += 1
        if counted and status in (400, 401, 404, 429):
            self.stats[str(status)] += 1
        return web.Response(status=status, body=body, headers=self._headers("application/json"))

    def _headers(self, content_type: str) -> dict[str, str]:
        # ``Date`` is the market clock's, as a real server's Date is its own clock: a client that reads
        # the venue's time from it (OANDA has no time endpoint) sees the replica's market time.
        date = email.utils.formatdate(self._clock.now_ms() / 1000, usegmt=True)
        return {"Content-Type": content_type, "RequestID": str(self._request_id), "Date": date}

    def _admit_connection(self, request: web.Request, ip: str) -> bool:
        """Whether this request's TCP connection is within the new-connections-per-second limit
        (decided once, on the connection's first request)."""
        proto = request.protocol
        admitted = self._tcp.get(proto)
        if admitted is None:
            # Forget closed connections (aiohttp clears a protocol's transport when it is lost).
            for p in [p for p in self._tcp if getattr(p, "transport", None) is None]:
                del self._tcp[p]
            admitted = self.connection_limiter.allow(ip)
            self._tcp[proto] = admitted
            self.stats["connections" if admitted else "rejected_connections"] += 1
        return admitted

    async def _http(self, request: web.Request) -> web.StreamResponse:
        ip = request.remote or "?"
        path = request.path
        if not self._admit_connection(request, ip):
            resp = self._respond(429, _error("Too many new connections per second; retry later"))
            resp.force_close()
            return resp
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return self._respond(401, _error("Insufficient authorization to perform request."))
        m = _STREAM_RE.match(path)
        if m and request.method == "GET":
            self.stats["stream_requests"] += 1
            return await self._stream(request, ip)
        self.stats["requests"] += 1
        if not self.rest_limiter.allow(ip):
            return self._respond(429, _error(_RATE_ERROR % self.rest_limiter.limit))
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        self._tick()  # so that "now" and the forming candle include every quote up to this instant
        unix = request.headers.get("Accept-Datetime-Format", "RFC3339").upper() == "UNIX"
        try:
            if request.method != "GET":
                # OANDA's wording for a method it does not serve on a path is not documented [UNVERIFIED].
                raise _Reject(405, f"The replica serves market data only: {request.method} is not allowed here")
            if (m := _CANDLES_RE.match(path)) is not None:
                body = self._candles(m.group(1), request.query, _TimeFormat(unix))
            elif _PRICING_RE.match(path) is not None:
                body = self._pricing(request.query, _TimeFormat(unix))
            elif (m := _INSTRUMENTS_RE.match(path)) is not None:
                body = self._instruments(request.query)
            elif path == "/v3/accounts":
                body = msgspec.json.encode({"accounts": [{"id": self.account_id, "tags": []}]})
            else:
                raise _Reject(404, "The requested resource was not found")
        except _Reject as e:
            return self._respond(e.status, _error(e.message))
        return self._respond(200, body)

    async def _rest_fault(self) -> web.Response | None:
        """Faults due on this REST request: ``slow`` delays it; ``http500`` or ``http429`` answers it."""
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            # OANDA's wording for an internal error is not documented [UNVERIFIED].
            return self._respond(500, _error("An unexpected error has occurred"), counted=False)
        if f.due("http429"):
            self._injected("http429")
            return self._respond(429, _error(_RATE_ERROR % self.rest_limiter.limit), counted=False)
        return None

    def _instrument(self, name: str, param: str) -> str:
        if name not in self._sim.specs:
            raise _invalid(param, f"Unknown instrument {name!r}")
        return name

    def _instruments(self, q: Mapping[str, str]) -> bytes:
        names = list(self._sim.specs)
        if q.get("instruments"):
            names = [self._instrument(n, "instruments") for n in q["instruments"].split(",")]
        out = []
        for n in names:
            spec = self._sim.specs[n]
            out.append(
                {
                    "name": n,
                    "type": spec.kind,
                    "displayName": f"{spec.base}/{spec.quote}",
                    "pipLocation": spec.pip_location,
                    "displayPrecision": spec.decimals,
                    "tradeUnitsPrecision": 0,
                    "minimumTradeSize": "1",
                    "maximumTrailingStopDistance": f"{10.0 ** (spec.pip_location + 4):.{spec.decimals}f}",
                    "minimumTrailingStopDistance": f"{5 * 10.0**spec.pip_location:.{spec.decimals}f}",
                    "maximumPositionSize": "0",
                    "maximumOrderUnits": "100000000",
                    "marginRate": "0.05" if spec.kind == "METAL" else "0.0333",
                }
            )
        return msgspec.json.encode({"instruments": out, "lastTransactionID": "1"})

    def _candles(self, instrument: str, q: Mapping[str, str], fmt_time: _TimeFormat) -> bytes:
        symbol = self._instrument(instrument, "instrument")
        price = q.get("price", "M")
        if not price or any(c not in "MBA" for c in price) or len(set(price)) != len(price):
            raise _invalid("price", "Use any of M, B, A, e.g. MBA")
        gran = q.get("granularity", "S5")
        if gran not in GRANULARITIES and gran not in CALENDAR_GRANULARITIES:
            raise _invalid("granularity")
        smooth = q.get("smooth", "false").lower()
        if smooth not in ("true", "false"):
            raise _invalid("smooth")
        alignment = Alignment.from_query(q)  # validated whatever the granularity, as OANDA does [UNVERIFIED]
        include_first = q.get("includeFirst", "true").lower()
        if include_first not in ("true", "false"):
            raise _invalid("includeFirst")
        count: int | None = None
        if "count" in q:
            c = q["count"]
            if not (c.isascii() and c.isdigit() and len(c) <= 9) or int(c) < 1:
                raise _invalid("count")
            count = int(c)
            if count > MAX_COUNT:
                raise _Reject(400, "Maximum value for 'count' exceeded")
        start = self._time_param(q, "from")
        end = self._time_param(q, "to")
        now = self._clock.now_ms()
        edges = None
        g = GRANULARITIES.get(gran, 0)
        if gran in CALENDAR_GRANULARITIES or (
            gran in DAY_ALIGNED and (alignment.hour, alignment.tz) not in ((0, "UTC"), (0, "Etc/UTC"))
        ):
            # Candles of uneven length, or not on the epoch grid: their open times, over all of history.
            edges = alignment.edges(gran, self._market.origin_ms, max(now, end or now))

        def floor(x: int) -> int:  # the open time of the candle covering x (x itself before all history)
            if edges is None:
                return x - x % g
            i = int(np.searchsorted(edges, x, "right")) - 1
            return int(edges[i]) if i >= 0 else x

        def following(x: int) -> int:  # the open time after the one at x
            if edges is None:
                return x + g
            i = int(np.searchsorted(edges, x, "right"))
            return int(edges[i]) if i < len(edges) else x + 1

        for name, t in (("from", start), ("to", end)):
            if t is not None and t > now:
                raise _invalid(name, "Time is in the future")
        if start is not None and end is not None:
            if count is not None:
                raise _Reject(400, "'count' cannot be specified when both 'from' and 'to' are")  # wording [UNVERIFIED]
            if end < start:
                raise _invalid("to", "Time must be after 'from'")
            # Whether OANDA counts intervals or returned candles here is not documented [UNVERIFIED];
            # intervals is the stricter reading, so a client tested here works there.
            intervals = (
                -(-end // g) - start // g
                if edges is None
                else int(np.searchsorted(edges, end, "left") - np.searchsorted(edges, start, "right") + 1)
            )
            if intervals > MAX_COUNT:
                raise _Reject(400, "Maximum value for 'count' exceeded")
        lo = None
        if start is not None:
            lo = floor(start)  # includeFirst: the candle covering ``from`` is included
            if include_first == "false":
                lo = following(lo)
        # Complete only up to what the market has released: quotes due by the clock but not yet out
        # (the pump runs in ticks) would otherwise be missing from a candle called complete.
        table = self._market.candles(
            symbol,
            g,
            lo,
            end,
            MAX_COUNT if end is not None and start is not None else count or DEFAULT_COUNT,
            start is not None,
            min(now, self._market.released_ms + 1),
            edges=edges,
            smooth=smooth == "true",
        )
        return msgspec.json.encode(
            {"instrument": symbol, "granularity": gran, "candles": _candle_objects(table, price, fmt_time)}
        )

    def _pricing(self, q: Mapping[str, str], fmt_time: _TimeFormat) -> bytes:
        """``GET /v3/accounts/{id}/pricing``: the last price of each instrument (those priced after
        ``since`` only, if given) and the current time, as ``{"prices": [...], "time": ...}``."""
        names = [n for n in q.get("instruments", "").split(",") if n]
        if not names:
            raise _invalid("instruments")
        instruments = list(dict.fromkeys(self._instrument(n, "instruments") for n in names))
        since = self._time_param(q, "since")
        for flag in ("includeUnitsAvailable", "includeHomeConversions"):
            if q.get(flag, "false").lower() not in ("true", "false"):
                raise _invalid(flag)
        tradeable = self._sim.calendar.is_open(self._clock.now_ms())
        prices = [line for line, t in self._last_prices(instruments, fmt_time, tradeable) if since is None or t > since]
        # The answer's time is the instant up to which quotes were released (the clock may have moved on).
        return b'{"prices":[%s],"time":"%s"}' % (b",".join(prices), fmt_time(self._market.released_ms).encode())

    def _last_prices(
        self, instruments: list[str], fmt_time: Callable[[int], str], tradeable: bool
    ) -> list[tuple[bytes, int]]:
        """The last released price of each instrument that has one, encoded, with its time."""
        out: list[tuple[bytes, int]] = []
        for sym in instruments:
            last = self._market.last_quote(sym)
            if last is not None:
                t, b, a = last
                batch = QuoteBatch(self._sim.specs[sym], np.array([t]), np.array([b]), np.array([a]))
                out += [(line, t) for line in price_lines(batch, fmt_time, tradeable)]
        return out

    @staticmethod
    def _time_param(q: Mapping[str, str], name: str) -> int | None:
        v = q.get(name)
        if v is None:
            return None
        try:
            return parse_time(v)
        except ValueError:
            raise _invalid(name) from None

    # -- the pricing stream --

    async def _stream(self, request: web.Request, ip: str) -> web.StreamResponse:
        q = request.query
        names = [n for n in q.get("instruments", "").split(",") if n]
        if not names:
            return self._respond(400, _error("Invalid value specified for 'instruments'"))
        try:
            instruments = list(dict.fromkeys(self._instrument(n, "instruments") for n in names))
        except _Reject as e:
            return self._respond(e.status, _error(e.message))
        if not all(self._may_subscribe(i) for i in range(len(instruments))):
            # OANDA documents no cap on a stream's instruments: this one is chosen (docs/scaling.md).
            return self._respond(400, _error(f"Too many instruments; at most {self.per_connection} per stream"))
        snapshot = q.get("snapshot", "true").lower()
        if snapshot not in ("true", "false"):
            return self._respond(400, _error("Invalid value specified for 'snapshot'"))
        if sum(1 for s in self._streams if s.ip == ip) >= self.max_streams:
            self.stats["rejected_streams"] += 1
            return self._respond(429, _error(f"Too many active streams; at most {self.max_streams} per client"))
        unix = request.headers.get("Accept-Datetime-Format", "RFC3339").upper() == "UNIX"
        self._request_id += 1
        # OANDA's stream content type is not documented [UNVERIFIED]; clients read lines regardless.
        resp = web.StreamResponse(status=200, headers=self._headers("application/octet-stream"))
        resp.enable_chunked_encoding()
        await resp.prepare(request)  # sends the headers: from here on chunks go straight to the transport
        transport = request.transport
        if transport is None:
            return resp
        conn = _Stream(transport, instruments, unix, ip, time.monotonic() + self.heartbeat_s)
        self._tick()  # release up to now, so the snapshot is current and nothing is sent twice
        if snapshot == "true":
            lines = self._snapshot(conn)
            if lines:
                conn.write_chunk(lines, self.max_send_buffer, self.stats)
                self.stats["price_lines"] += len(lines)
        self._streams[conn] = None
        self.stats["streams"] += 1
        self.stats["open_streams"] += 1
        try:
            await conn.done.wait()
        finally:
            self._streams.pop(conn, None)
            self.stats["open_streams"] -= 1
        if conn.end != "eof" and not transport.is_closing():
            transport.abort()
        resp.force_close()  # a stream's connection is not reused
        return resp  # aiohttp writes the terminating chunk

    def _snapshot(self, conn: _Stream) -> list[bytes]:
        """The last price of each instrument; ``non-tradeable`` while the market is closed."""
        tradeable = self._sim.calendar.is_open(self._clock.now_ms())
        return [line for line, _ in self._last_prices(conn.instruments, conn.fmt, tradeable)]

    # -- the pump --

    def _tick(self) -> None:
        """Release quotes up to the market clock's now and send them, and due heartbeats, to every stream."""
        now = self._clock.now_ms()
        batches = self._market.advance_to(now)
        self.stats["quotes"] = self._market.quotes_released
        if not self._streams:
            return
        wall = time.monotonic()
        encoded: dict[tuple[str, bool], tuple[Any, list[bytes]]] = {}
        out: dict[_Stream, tuple[list[bytes], list[bytes]]] = {}
        for conn in list(self._streams):
            if conn.done.is_set():
                continue
            if conn.transport.is_closing():  # the client went away (a stalled stream's too)
                conn.finish("abort")
                continue
            if conn.stalled:
                continue
            prices = self._conn_lines(conn, batches, encoded)
            beat: list[bytes] = []
            if wall >= conn.next_heartbeat:
                beat = [b'{"type":"HEARTBEAT","time":"%s"}' % conn.fmt(now).encode()]
                conn.next_heartbeat += self.heartbeat_s
                if conn.next_heartbeat <= wall:
                    conn.next_heartbeat = wall + self.heartbeat_s
            if prices or beat:
                out[conn] = (prices, beat)
        faults = self.faults
        if faults is not None:
            self._faults_before_send(faults, out)
        for conn, (prices, beat) in out.items():
            conn.write_chunk(prices + beat, self.max_send_buffer, self.stats)
            self.stats["price_lines"] += len(prices)
            self.stats["heartbeats"] += len(beat)
        if faults is not None:
            self._faults_after_send(faults, out)

    def _conn_lines(
        self,
        conn: _Stream,
        batches: dict[str, QuoteBatch],
        encoded: dict[tuple[str, bool], tuple[Any, list[bytes]]],
    ) -> list[bytes]:
        """This tick's PRICE lines for one stream, merged across its instruments in time order."""
        parts: list[tuple[Any, list[bytes]]] = []
        for sym in conn.instruments:
            b = batches.get(sym)
            if b is None:
                continue
            key = (sym, conn.unix)
            enc = encoded.get(key)
            if enc is None:
                enc = encoded[key] = (b.times, price_lines(b, _TimeFormat(conn.unix)))
            parts.append(enc)
        if not parts:
            return []
        if len(parts) == 1:
            return list(parts[0][1])
        order = np.argsort(np.concatenate([p[0] for p in parts]), kind="stable")
        lines = [line for p in parts for line in p[1]]
        return [lines[i] for i in order.tolist()]

    # -- stream faults --

    def _victims(self, out: dict[_Stream, tuple[list[bytes], list[bytes]]], prices: int) -> list[_Stream]:
        return [
            c for c, (p, b) in out.items()
            if len(p) >= prices and (p or b) and not (c.stalled or c.doomed or c.transport.is_closing())
        ]  # fmt: skip

    def _faults_before_send(self, f: FaultSchedule, out: dict[_Stream, tuple[list[bytes], list[bytes]]]) -> None:
        """Stall and line faults due now, applied to this tick's output."""
        for kind in ("stall", *MESSAGE_KINDS):
            if not f.pending(kind):
                continue
            cands = self._victims(out, MESSAGE_KINDS.get(kind, 0))
            if not cands:
                continue  # stays due until a stream has something to send
            f.due(kind)
            conn = cands[f.pick(len(cands))]
            if kind == "stall":
                conn.stalled = True
                out.pop(conn)
            else:
                prices, beat = out[conn]
                faulty = apply_message_fault(kind, prices, f.pick, poison_price)
                out[conn] = (faulty, beat)
                if kind == "poison" and len(faulty) == len(prices):
                    continue  # nothing to poison this tick: taken, not injected
            self._injected(kind)

    def _faults_after_send(self, f: FaultSchedule, out: dict[_Stream, tuple[list[bytes], list[bytes]]]) -> None:
        """Close and reset faults due now, on a stream that was just sent something."""

        def close(conn: _Stream) -> None:
            conn.doomed = True
            conn.finish("eof")

        def reset(conn: _Stream) -> None:
            conn.doomed = True
            reset_transport(conn.transport)
            conn.finish("abort")

        inject_connection_faults(
            f, lambda: self._victims(out, 0), {"close": close, "reset": reset}, lambda k, _: self._injected(k)
        )


def _candle_objects(table: QuoteCandles, price: str, fmt_time: Callable[[int], str]) -> list[dict[str, Any]]:
    """OANDA candlestick objects: complete, volume, time, then mid/bid/ask as ``price`` asks."""
    spec = table.spec
    sides = [("mid", "M"), ("bid", "B"), ("ask", "A")]
    cols: list[tuple[str, list[str], list[str], list[str], list[str]]] = []
    for side, letter in sides:
        if letter in price:
            o, h, lo, c = table.ohlc[side]
            fmt = spec.mid_prices if side == "mid" else spec.prices
            cols.append((side, fmt(o), fmt(h), fmt(lo), fmt(c)))
    out: list[dict[str, Any]] = []
    for i, (t, v, done) in enumerate(
        zip(table.open_time.tolist(), table.volume.tolist(), table.complete.tolist(), strict=True)
    ):
        obj: dict[str, Any] = {"complete": done, "volume": v, "time": fmt_time(t)}
        for side, so, sh, sl, sc in cols:
            obj[side] = {"o": so[i], "h": sh[i], "l": sl[i], "c": sc[i]}
        out.append(obj)
    return out


def check_faults(spec: str) -> dict[str, float]:
    """``parse_faults`` for this replica: ``shutdown`` is refused, as it has no OANDA meaning."""
    rates = parse_faults(spec)
    if rates.get("shutdown", 0) > 0:
        raise BadInput(f"fault kind 'shutdown' does not apply to OANDA; use {', '.join(FAULT_KINDS)}")
    return rates
