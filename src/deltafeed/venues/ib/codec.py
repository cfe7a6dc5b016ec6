"""The TWS / IB Gateway socket protocol, sans-I/O: framing, the requests deltafeed sends, the replies
it reads, and (in reverse) what a server reads and sends, so the feed and the replica share one codec.

Wire format (what ``ib_async`` 2.1 speaks, PROTOCOLS-wave2.md §5.1): the client opens with ``API\\0``
and a length-prefixed version range ``v157..178``; every later message is a 4-byte big-endian length
then ASCII fields, each ended by ``\\0``. The first server message is exactly two fields (server
version, connection time). No sockets, no clock here: :class:`Framer` cuts bytes into field lists,
:class:`Decoder` turns a client's incoming field lists into events, counting what it cannot use.

IB ticks carry no trade id and only whole seconds, so a decoded tick is not a :class:`Trade` yet: the
feed numbers it (the venue is id-less, ``sequenced = False``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from deltafeed.model import BadInput, Candle
from deltafeed.venues.checks import BAD_FIELD, IMPOSSIBLE, MALFORMED, Skips, id_ok, price_ok, size_ok

#: The client version range deltafeed offers (ib_async's), and the server version the replica answers.
MIN_CLIENT_VERSION = 157
MAX_CLIENT_VERSION = 178
SERVER_VERSION = 176
HANDSHAKE_PREFIX = b"API\0"
#: A message longer than this is refused (TWS's own limit is 16 MB; ours needs a few kB at most).
MAX_MESSAGE = 1 << 24

# --- message ids ------------------------------------------------------------------------------------
# Client -> server.
REQ_CONTRACT_DETAILS = 9
REQ_HISTORICAL_DATA = 20
CANCEL_HISTORICAL_DATA = 25
REQ_CURRENT_TIME = 49
REQ_REAL_TIME_BARS = 50
CANCEL_REAL_TIME_BARS = 51
REQ_POSITIONS = 61
START_API = 71
REQ_OPEN_ORDERS = 5
REQ_ACCOUNT_UPDATES = 6
REQ_EXECUTIONS = 7
REQ_ACCOUNT_UPDATES_MULTI = 76
REQ_TICK_BY_TICK = 97
CANCEL_TICK_BY_TICK = 98
REQ_COMPLETED_ORDERS = 99
# Server -> client.
ERR_MSG = 4
NEXT_VALID_ID = 9
CONTRACT_DATA = 10
MANAGED_ACCOUNTS = 15
HISTORICAL_DATA = 17
CURRENT_TIME = 49
REAL_TIME_BARS = 50
CONTRACT_DATA_END = 52
OPEN_ORDER_END = 53
ACCOUNT_DOWNLOAD_END = 54
EXECUTION_DATA_END = 55
POSITION_END = 62
ACCOUNT_UPDATE_MULTI_END = 74
HISTORICAL_DATA_UPDATE = 90
TICK_BY_TICK = 99
COMPLETED_ORDERS_END = 102

# --- error codes that matter (msg 4) ----------------------------------------------------------------
CONNECTIVITY_LOST = 1100
RESTORED_DATA_LOST = 1101
RESTORED_DATA_KEPT = 1102
FARM_BROKEN = (2103, 2105, 2157)  # market data, historical data, sec-def farm disconnected
FARM_OK = (2104, 2106, 2158)
FARM_INACTIVE = (2107, 2108)  # inactive but available on demand: nothing lost
PACING_VIOLATION = 162
NO_SECURITY = 200
CLIENT_ID_IN_USE = 326
TICK_BY_TICK_LIMIT = 10190  # max number of tick-by-tick requests reached (IB's message code)
#: Codes that are news, not problems (farm status, connectivity info): counted, logged at info.
INFO_CODES = frozenset((*FARM_OK, *FARM_INACTIVE, 2119, 2150, 2158, RESTORED_DATA_KEPT))


class ProtocolError(ValueError):
    """Bytes that are not the TWS protocol (a framing error ends the connection)."""


def frame(fields: Iterable[object]) -> bytes:
    """One message: the fields as text, each ended by ``\\0``, behind a 4-byte big-endian length."""
    body = "".join(f"{_text(f)}\0" for f in fields).encode()
    return struct.pack(">I", len(body)) + body


def _text(f: object) -> str:
    if f is None:
        return ""
    if isinstance(f, bool):
        return "1" if f else "0"
    if isinstance(f, float):
        return "Infinite" if f == math.inf else repr(f)
    return str(f)


def handshake() -> bytes:
    """What a client sends first: ``API\\0`` and its version range, length-prefixed."""
    v = f"v{MIN_CLIENT_VERSION}..{MAX_CLIENT_VERSION}".encode()
    return HANDSHAKE_PREFIX + struct.pack(">I", len(v)) + v


class Framer:
    """Cuts a byte stream into messages, each a list of text fields (the trailing ``\\0`` removed)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> Iterator[list[str]]:
        """The complete messages ``data`` finishes, in order; :class:`ProtocolError` for a length
        beyond :data:`MAX_MESSAGE` (the stream cannot be resynchronised after that)."""
        buf = self._buf
        buf += data
        pos, end = 0, len(buf)
        try:
            while end - pos >= 4:
                (n,) = struct.unpack_from(">I", buf, pos)
                if n > MAX_MESSAGE:
                    raise ProtocolError(f"message length {n} is beyond {MAX_MESSAGE}")
                if end - pos < 4 + n:
                    break
                body = bytes(buf[pos + 4 : pos + 4 + n])
                pos += 4 + n
                yield split_fields(body)
        finally:
            del buf[:pos]  # once per call: cutting each message off the front would be quadratic


def split_fields(body: bytes) -> list[str]:
    """A message body's fields (text); a body without the final ``\\0`` keeps its last field."""
    text = body.decode("utf-8", errors="replace")
    fields = text.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


# --- contracts --------------------------------------------------------------------------------------

_FX_RE = re.compile(r"^([A-Z]{3})\.([A-Z]{3})$")
_FUT_RE = re.compile(r"^([A-Z0-9]{1,6})\.(\d{6}|\d{8})$")
_STK_RE = re.compile(r"^[A-Z0-9][A-Z0-9 .\-]{0,11}$")
#: The exchange of a future's root when the settings name none (CME Group's venues).
FUTURE_EXCHANGES: dict[str, str] = {
    **dict.fromkeys(("ES", "MES", "NQ", "MNQ", "RTY", "M2K", "6E", "6J", "6B", "HE", "LE"), "CME"),
    **dict.fromkeys(("YM", "MYM", "ZN", "ZB", "ZF", "ZT", "ZC", "ZS", "ZW"), "CBOT"),
    **dict.fromkeys(("CL", "MCL", "NG", "RB", "HO"), "NYMEX"),
    **dict.fromkeys(("GC", "MGC", "SI", "HG"), "COMEX"),
}


@dataclass(frozen=True, slots=True)
class Contract:
    """What IB needs to name an instrument (the 12 contract fields of a request)."""

    symbol: str
    sec_type: str  # STK, CASH or FUT
    exchange: str
    currency: str
    last_trade: str = ""  # a future's contract month (YYYYMM) or last trade date (YYYYMMDD)
    primary_exchange: str = ""
    con_id: int = 0

    @property
    def name(self) -> str:
        """deltafeed's spelling: ``EUR.USD``, ``AAPL``, ``ES.202703``."""
        if self.sec_type == "CASH":
            return f"{self.symbol}.{self.currency}"
        if self.sec_type == "FUT":
            return f"{self.symbol}.{self.last_trade}"
        return self.symbol

    @property
    def quotes(self) -> bool:
        """Forex: bid/ask quotes (MID/BID/ASK candles), not trades."""
        return self.sec_type == "CASH"

    def fields(self) -> list[object]:
        """conId, symbol, secType, lastTradeDateOrContractMonth, strike, right, multiplier, exchange,
        primaryExchange, currency, localSymbol, tradingClass."""
        return [
            self.con_id,
            self.symbol,
            self.sec_type,
            self.last_trade,
            0.0,
            "",
            "",
            self.exchange,
            self.primary_exchange,
            self.currency,
            "",
            "",
        ]


def contract_for(
    name: str, exchange: Mapping[str, str] | None = None, currency: Mapping[str, str] | None = None
) -> Contract:
    """The contract deltafeed's name stands for: ``EUR.USD`` (IDEALPRO forex), ``ES.202703`` (a future,
    its exchange from :data:`FUTURE_EXCHANGES`), anything else a stock on SMART in USD. ``exchange`` and
    ``currency`` (the settings' tables, by name) override the defaults; :class:`BadInput` names the fix."""
    exchange = exchange or {}
    currency = currency or {}
    if m := _FX_RE.match(name):
        return Contract(m[1], "CASH", exchange.get(name, "IDEALPRO"), m[2])
    if m := _FUT_RE.match(name):
        root = m[1]
        exch = exchange.get(name) or FUTURE_EXCHANGES.get(root)
        if exch is None:
            raise BadInput(
                f'ib:{name}: no known exchange for futures on {root}; set [venues.ib] exchange = {{"{name}" = "CME"}}'
            )
        return Contract(root, "FUT", exch, currency.get(name, "USD"), last_trade=m[2])
    if _STK_RE.match(name):
        return Contract(name, "STK", exchange.get(name, "SMART"), currency.get(name, "USD"))
    raise BadInput(f"ib:{name} is no IB contract name; write a stock as AAPL, forex as EUR.USD, a future as ES.202703")


def contract_from_fields(f: list[str]) -> Contract:
    """A contract from the 12 request fields (the replica's side); ValueError for a bad conId."""
    return Contract(
        symbol=f[1],
        sec_type=f[2],
        last_trade=f[3],
        exchange=f[7],
        primary_exchange=f[8],
        currency=f[9],
        con_id=int(f[0] or 0),
    )


# --- times, durations, bar sizes ----------------------------------------------------------------------

#: deltafeed timeframe -> IB bar size, the venue's declared timeframes: the engine rolls any other
#: one up from the longest of these that divides it (IB's multi-hour, daily and weekly bars follow
#: the exchange's sessions, not UTC, so they are not used).
BAR_SIZES: dict[str, str] = {
    "1s": "1 secs",
    "5s": "5 secs",
    "15s": "15 secs",
    "30s": "30 secs",
    "1m": "1 min",
    "2m": "2 mins",
    "3m": "3 mins",
    "5m": "5 mins",
    "10m": "10 mins",
    "15m": "15 mins",
    "20m": "20 mins",
    "30m": "30 mins",
    "1h": "1 hour",
}
BAR_SIZE_MS: dict[str, int] = {
    "1 secs": 1_000,
    "5 secs": 5_000,
    "10 secs": 10_000,
    "15 secs": 15_000,
    "30 secs": 30_000,
    "1 min": 60_000,
    "2 mins": 120_000,
    "3 mins": 180_000,
    "5 mins": 300_000,
    "10 mins": 600_000,
    "15 mins": 900_000,
    "20 mins": 1_200_000,
    "30 mins": 1_800_000,
    "1 hour": 3_600_000,
    "2 hours": 7_200_000,
    "3 hours": 10_800_000,
    "4 hours": 14_400_000,
    "8 hours": 28_800_000,
}
#: The longest duration IB serves in one request per bar size (its step-size table), in seconds.
MAX_DURATION_S: dict[str, int] = {
    "1 secs": 1_800,
    "5 secs": 3_600,
    "15 secs": 14_400,
    "30 secs": 28_800,
    "1 min": 86_400,
    "2 mins": 2 * 86_400,
    "3 mins": 7 * 86_400,
    "5 mins": 7 * 86_400,
    "10 mins": 7 * 86_400,
    "15 mins": 7 * 86_400,
    "20 mins": 7 * 86_400,
    "30 mins": 30 * 86_400,
    "1 hour": 30 * 86_400,
}
#: Bars this short are under IB's historical pacing rules (60 per 10 min, ...).
SMALL_BAR_MS = 30_000
_DURATION_RE = re.compile(r"^(\d{1,7}) ([SDWMY])$")
_DURATION_S = {"S": 1, "D": 86_400, "W": 7 * 86_400, "M": 30 * 86_400, "Y": 365 * 86_400}


def duration_str(seconds: int) -> str:
    """IB's duration for a span: whole seconds up to a day (``"3600 S"``), else whole days."""
    if seconds <= 86_400:
        return f"{max(1, seconds)} S"
    return f"{-(-seconds // 86_400)} D"


def duration_s(text: str) -> int:
    """Seconds of an IB duration string; ValueError for another spelling."""
    m = _DURATION_RE.match(text.strip())
    if m is None:
        raise ValueError(f"duration {text!r} is not like '3600 S' or '2 D'")
    return int(m[1]) * _DURATION_S[m[2]]


def end_datetime(ms: int) -> str:
    """An ``endDateTime`` in UTC, the form IB documents: ``20260101-12:00:00``."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y%m%d-%H:%M:%S")


def parse_end_datetime(text: str, now_ms: int) -> int:
    """Epoch ms of an ``endDateTime``: empty (now), ``YYYYmmdd-HH:MM:SS`` (UTC), or ``YYYYmmdd HH:MM:SS``
    with a time zone (``UTC``, ``US/Eastern``; ib_async sends UTC); ValueError otherwise."""
    text = text.strip()
    if not text:
        return now_ms
    if "-" in text[:9]:
        t = dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.UTC)
    else:
        parts = text.split()
        if len(parts) != 3:
            raise ValueError(f"endDateTime {text!r} has no time zone")
        try:
            zone = ZoneInfo(parts[2])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"endDateTime {text!r}: unknown time zone") from None
        t = dt.datetime.strptime(parts[0] + parts[1], "%Y%m%d%H:%M:%S").replace(tzinfo=zone)
    return int(t.timestamp() * 1000)


def bar_time_ms(text: str) -> int:
    """A bar's date with ``formatDate=2`` (epoch seconds) or ``YYYYmmdd HH:MM:SS [zone]`` (UTC when
    no zone is given); ValueError (or a ZoneInfo error, a KeyError) for anything else."""
    text = text.strip()
    if text.isdigit():
        return int(text) * 1000
    parts = text.split()
    t = dt.datetime.strptime("".join(parts[:2])[:16], "%Y%m%d%H:%M:%S")
    zone = ZoneInfo(parts[2]) if len(parts) > 2 else dt.UTC
    return int(t.replace(tzinfo=zone).timestamp() * 1000)


# --- requests (client -> server) -------------------------------------------------------------------


def start_api(client_id: int) -> bytes:
    return frame([START_API, 2, client_id, ""])


def req_current_time() -> bytes:
    return frame([REQ_CURRENT_TIME, 1])


def req_contract_details(req_id: int, c: Contract) -> bytes:
    return frame([REQ_CONTRACT_DETAILS, 8, req_id, *c.fields(), False, "", "", ""])


def req_historical_data(
    req_id: int, c: Contract, end_ms: int, duration: str, bar_size: str, what: str, *, keep_up_to_date: bool = False
) -> bytes:
    """``reqHistoricalData`` with all hours (useRTH 0) and epoch-second dates (formatDate 2).
    With ``keep_up_to_date`` the end must be empty (IB's rule): the bars run up to now and go on."""
    end = "" if keep_up_to_date else end_datetime(end_ms)
    return frame(
        [REQ_HISTORICAL_DATA, req_id, *c.fields(), False, end, bar_size, duration, 0, what, 2, keep_up_to_date, ""]
    )


def cancel_historical_data(req_id: int) -> bytes:
    return frame([CANCEL_HISTORICAL_DATA, 1, req_id])


def req_tick_by_tick(req_id: int, c: Contract, tick_type: str) -> bytes:
    """``tick_type`` is ``AllLast`` (trades) or ``BidAsk`` (quotes); no ticks of history, sizes kept."""
    return frame([REQ_TICK_BY_TICK, req_id, *c.fields(), tick_type, 0, False])


def cancel_tick_by_tick(req_id: int) -> bytes:
    return frame([CANCEL_TICK_BY_TICK, req_id])


def req_real_time_bars(req_id: int, c: Contract, what: str) -> bytes:
    return frame([REQ_REAL_TIME_BARS, 3, req_id, *c.fields(), 5, what, 0, ""])


def cancel_real_time_bars(req_id: int) -> bytes:
    return frame([CANCEL_REAL_TIME_BARS, 1, req_id])


# --- events (server -> client) ----------------------------------------------------------------------


@dataclass(slots=True)
class ServerHello:
    version: int
    connection_time: str


@dataclass(slots=True)
class NextValidId:
    order_id: int


@dataclass(slots=True)
class ManagedAccounts:
    accounts: list[str]


@dataclass(slots=True)
class CurrentTime:
    time_ms: int


@dataclass(slots=True)
class ErrorMsg:
    req_id: int
    code: int
    text: str


@dataclass(slots=True)
class ContractDetails:
    req_id: int
    contract: Contract
    min_tick: float
    time_zone: str


@dataclass(slots=True)
class ContractDetailsEnd:
    req_id: int


@dataclass(slots=True)
class HistoricalData:
    """Bars of a ``reqHistoricalData`` answer (msg 17); volume and count are -1 where IB has none."""

    req_id: int
    bars: list[Candle]
    waps: list[float]


@dataclass(slots=True)
class HistoricalUpdate:
    """The forming (or just finished) bar of a ``keepUpToDate`` request (msg 90)."""

    req_id: int
    bar: Candle


@dataclass(slots=True)
class TickLast:
    """A tick-by-tick trade (AllLast/Last); ``time_ms`` is whole seconds, and there is no id."""

    req_id: int
    time_ms: int
    price: float
    size: float


@dataclass(slots=True)
class TickBidAsk:
    req_id: int
    time_ms: int
    bid: float
    ask: float
    bid_size: float
    ask_size: float


@dataclass(slots=True)
class RealTimeBar:
    req_id: int
    candle: Candle  # five seconds from ``open_time``


@dataclass(slots=True)
class Other:
    """A message the feed does not act on (start-up answers, order and account messages)."""

    msg_id: int


Event = (
    ServerHello
    | NextValidId
    | ManagedAccounts
    | CurrentTime
    | ErrorMsg
    | ContractDetails
    | ContractDetailsEnd
    | HistoricalData
    | HistoricalUpdate
    | TickLast
    | TickBidAsk
    | RealTimeBar
    | Other
)


class Decoder(Skips):
    """A client's decoder: field lists from the server -> events; what it cannot use is counted by kind
    (``malformed``, ``bad_field``, ``impossible_value``, ``unknown_message``) and None is returned.
    The first message of a connection is the two-field hello (call :meth:`reset` on a new connection)."""

    def __init__(self) -> None:
        super().__init__()
        self.server_version = 0

    def reset(self) -> None:
        self.server_version = 0

    def decode(self, fields: list[str]) -> Event | None:
        try:
            return self._decode(fields)
        except (ValueError, IndexError, OverflowError, ZoneInfoNotFoundError) as exc:
            self._skip(BAD_FIELD, f"{type(exc).__name__}: {str(exc)[:80]} in {fields[:6]!r}")
            return None
        except Exception as exc:  # a bug must not end the stream
            self._bug(exc, fields[:6])
            return None

    def _decode(self, f: list[str]) -> Event | None:
        if not f:
            self._skip(MALFORMED, "an empty message")
            return None
        if not self.server_version:
            if len(f) != 2 or not f[0].isdigit():
                self._skip(MALFORMED, f"the first message is not the server's hello: {f[:3]!r}")
                return None
            self.server_version = int(f[0])
            return ServerHello(self.server_version, f[1])
        msg = int(f[0])
        if msg == TICK_BY_TICK:
            return self._tick(f)
        if msg == HISTORICAL_DATA:
            return self._history(f)
        if msg == HISTORICAL_DATA_UPDATE:
            # 90, reqId, barCount, date, open, close, high, low, average, volume: not msg 17's order.
            req, count, date, o, c, h, lo, _wap, vol = f[1:10]
            bar = self._bar(date, o, h, lo, c, vol, count)
            return None if bar is None else HistoricalUpdate(int(req), bar)
        if msg == REAL_TIME_BARS:
            _v, req, t, o, h, lo, c, vol, _wap, count = f[1:11]
            bar = self._bar(t, o, h, lo, c, vol, count)
            return None if bar is None else RealTimeBar(int(req), bar)
        if msg == ERR_MSG:
            return ErrorMsg(int(f[2]), int(f[3]), f[4])
        if msg == NEXT_VALID_ID:
            return NextValidId(int(f[2]))
        if msg == MANAGED_ACCOUNTS:
            return ManagedAccounts([a for a in f[2].split(",") if a])
        if msg == CURRENT_TIME:
            secs = int(f[2])
            if not id_ok(secs):
                raise ValueError(f"time {secs}")
            return CurrentTime(secs * 1000)
        if msg == CONTRACT_DATA:
            cd = Contract(
                symbol=f[2],
                sec_type=f[3],
                last_trade=f[4].split("-")[0].split(" ")[0],
                exchange=f[7],
                currency=f[8],
                con_id=int(f[12] or 0),
                primary_exchange=f[20],
            )
            return ContractDetails(int(f[1]), cd, float(f[13] or 0), f[25])
        if msg == CONTRACT_DATA_END:
            return ContractDetailsEnd(int(f[2]))
        if msg in (
            POSITION_END,
            OPEN_ORDER_END,
            COMPLETED_ORDERS_END,
            ACCOUNT_DOWNLOAD_END,
            EXECUTION_DATA_END,
            ACCOUNT_UPDATE_MULTI_END,
        ):
            return Other(msg)
        self.errors["unknown_message"] += 1
        self.last_error = f"message {msg} is not one deltafeed reads"
        return None

    def _tick(self, f: list[str]) -> Event | None:
        req, kind, t = int(f[1]), int(f[2]), int(f[3])
        if not id_ok(t):
            raise ValueError(f"time {t}")
        if kind in (1, 2):
            price, size = float(f[4]), float(f[5])
            if not (price_ok(price) and size_ok(size)):
                self._skip(IMPOSSIBLE, f"trade price {f[4]!r} size {f[5]!r}")
                return None
            return TickLast(req, t * 1000, price, size)
        if kind == 3:
            bid, ask, bs, asz = float(f[4]), float(f[5]), float(f[6]), float(f[7])
            if not (price_ok(bid) and price_ok(ask) and size_ok(bs) and size_ok(asz)):
                self._skip(IMPOSSIBLE, f"quote bid {f[4]!r} ask {f[5]!r}")
                return None
            return TickBidAsk(req, t * 1000, bid, ask, bs, asz)
        self._skip(BAD_FIELD, f"tick-by-tick type {kind} is not one deltafeed asks for")
        return None

    def _history(self, f: list[str]) -> Event | None:
        req, n = int(f[1]), int(f[4])
        if not 0 <= n <= (len(f) - 5) // 8 or (len(f) - 5) != 8 * n:
            self._skip(MALFORMED, f"historical data of {n} bars has {len(f) - 5} bar fields")
            return None
        bars: list[Candle] = []
        waps: list[float] = []
        for i in range(n):
            date, o, h, lo, c, vol, wap, count = f[5 + 8 * i : 13 + 8 * i]
            bar = self._bar(date, o, h, lo, c, vol, count)
            if bar is None:
                return None  # one impossible bar makes the page unusable: counted, the caller retries
            bars.append(bar)
            waps.append(float(wap))
        return HistoricalData(req, bars, waps)

    def _bar(self, date: str, o: str, h: str, lo: str, c: str, vol: str, count: str) -> Candle | None:
        prices = (float(o), float(h), float(lo), float(c))
        volume, trades = float(vol or 0), int(count or 0)
        # IB sends -1 for the volume and count of MIDPOINT/BID/ASK bars: unknown, kept as 0.
        volume, trades = (0.0 if volume == -1 else volume), (0 if trades == -1 else trades)
        if not all(price_ok(p) for p in prices) or not size_ok(volume) or not id_ok(trades):
            self._skip(IMPOSSIBLE, f"bar {date} {o} {h} {lo} {c} {vol}")
            return None
        if not prices[2] <= min(prices[0], prices[3]) <= max(prices[0], prices[3]) <= prices[1]:
            self._skip(IMPOSSIBLE, f"bar {date}: high/low do not hold open and close")
            return None
        return Candle(bar_time_ms(date), *prices, volume, trades)


# --- the server's side (the replica) ---------------------------------------------------------------


def parse_client_versions(body: bytes) -> tuple[int, int]:
    """The range of a client's handshake payload ``v157..178`` (or ``v176``); ValueError otherwise."""
    text = body.decode("ascii").split(" ")[0]
    if not text.startswith("v"):
        raise ValueError(f"handshake {text!r} does not start with v")
    lo, _, hi = text[1:].partition("..")
    return int(lo), int(hi or lo)


def server_hello(version: int, now_ms: int) -> bytes:
    t = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).strftime("%Y%m%d %H:%M:%S UTC")
    return frame([version, t])


def error_msg(req_id: int, code: int, text: str) -> bytes:
    return frame([ERR_MSG, 2, req_id, code, text, ""])


def bar_fields(c: Candle, wap: float, quotes: bool, format_date: int = 2) -> list[object]:
    """date, open, high, low, close, volume, WAP, count of msg 17 (volume and count -1 for quotes).
    The date is epoch seconds with ``formatDate=2``, else ``YYYYmmdd HH:MM:SS UTC`` (the zone is
    TWS's login zone; the replica's is UTC)."""
    vol: object = -1 if quotes else _num(c.volume)
    count: object = -1 if quotes else c.trades
    date: object = c.open_time // 1000
    if format_date != 2:
        date = dt.datetime.fromtimestamp(c.open_time / 1000, dt.UTC).strftime("%Y%m%d %H:%M:%S UTC")
    return [date, _num(c.open), _num(c.high), _num(c.low), _num(c.close), vol, _num(wap), count]


def update_fields(req_id: int, c: Candle, wap: float, quotes: bool) -> list[object]:
    """Msg 90: reqId, barCount, date, open, close, high, low, average, volume."""
    vol: object = -1 if quotes else _num(c.volume)
    count: object = -1 if quotes else c.trades
    return [
        HISTORICAL_DATA_UPDATE,
        req_id,
        count,
        c.open_time // 1000,
        _num(c.open),
        _num(c.close),
        _num(c.high),
        _num(c.low),
        _num(wap),
        vol,
    ]


def _num(x: float) -> str:
    s = f"{x:.10f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


num = _num
