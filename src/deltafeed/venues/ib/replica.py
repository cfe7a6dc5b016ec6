"""A local TWS / IB Gateway: enough of the socket API that ``ib_async`` (and deltafeed's feed) connect
to it with only host and port changed, driven by a seeded market, with a tape.

* **Handshake.** ``API\\0`` and the client's version range; the answer is exactly two fields, server
  version :data:`~codec.SERVER_VERSION` and the connection time. On ``startApi`` it sends
  ``nextValidId``, a non-empty ``managedAccounts`` and the usual farm-OK notices (2104, 2106, 2158);
  the start-up requests ib_async makes (positions, open and completed orders, account updates,
  executions) get their empty answers at once, so ``IB.connect()`` is ready without timeouts.
* **Contracts.** ``reqContractDetails`` for the replica's instruments (error 200 for others).
  ``EUR.USD`` style names are IDEALPRO forex, ``ES.202703`` style names futures, the rest stocks.
* **Market.** Stocks and futures trade (the shared :class:`~deltafeed.replicas.sim.MarketSim`), forex
  pairs quote (:class:`~deltafeed.replicas.quotes.QuoteSim`, the FX week). IB reports whole seconds,
  so every event's time is cut to its second before it is taped and sent, and the tape is the truth at
  IB's own resolution. The simulator runs around the clock; the replica keeps only what falls inside
  the contract's sessions (stocks: the ``us_equity`` regular session, futures: the ``cme_globex``
  week with its daily break), as if nothing traded outside them.
* **Data.** ``reqHistoricalData`` (msg 17; ``TRADES`` for trades, ``MIDPOINT``/``BID``/``ASK`` for
  forex with volume and count -1 as IB sends them; intervals without data have no bar) and, with
  ``keepUpToDate``, the forming bar as msg 90 (its own field order) on every change;
  ``reqTickByTickData`` (``AllLast``/``Last`` trades, ``BidAsk`` quotes; at most ``max_tick_by_tick``
  at once, then error 10190); ``reqRealTimeBars`` (5-second bars, msg 50).
* **Pacing.** Requests for bars of 30 s or less are checked against IB's rules (no identical request
  within 15 s, at most 5 for one contract and type within 2 s, at most 60 in 10 minutes, wall time):
  a request that breaks one is refused with error 162 and counted in ``stats["pacing_violations"]``.
* **Faults.** ``close``, ``reset``, ``stall`` (the connection goes silent), ``garbage`` (a tick with
  an impossible price), and ``connectivity``: an IB "connectivity lost" episode (error 1100 and the
  farms broken, nothing sent for ``outage_s``, then 1101 "data lost", whose subscriptions are gone,
  or 1102 "data maintained"); what happened meanwhile is lost to the client as it is with IB.
* **HTTP.** Anything that does not open with ``API\\0`` gets a one-line HTTP 404 naming the port's
  purpose (a health check can still see the port is up).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from deltafeed.candles.calendar import Calendar, calendar_for
from deltafeed.model import BadInput, Candle
from deltafeed.replicas.options import ReplicaOptions
from deltafeed.replicas.quotes import PairSpec, QuoteSim
from deltafeed.replicas.server import ReplicaBase, netloc
from deltafeed.replicas.sim import MarketClock, MarketSim
from deltafeed.replicas.tape import TapeWriter
from deltafeed.venues.ib import codec
from deltafeed.venues.ib.codec import Contract

log = logging.getLogger("deltafeed.ib.replica")

FAULT_KINDS = ("close", "reset", "stall", "garbage", "connectivity")
DEFAULT_SYMBOLS = ("AAPL", "EUR.USD", "ES.202703")
ACCOUNT = "DU1234567"
_HTTP_BODY = b"this port speaks the TWS API socket protocol; connect with an IB client\n"
_HTTP_404 = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    % len(_HTTP_BODY)
) + _HTTP_BODY


def quote_tape_path(tape: Path) -> Path:
    """Where the forex quotes of a run taping trades to ``tape`` go: ``<stem>.quotes.csv`` beside it."""
    return tape.with_name(tape.stem + ".quotes.csv")


def calendar_of(c: Contract) -> Calendar:
    """The sessions a contract trades in (see the module docstring)."""
    if c.sec_type == "STK":
        return calendar_for("us_equity")
    if c.sec_type == "FUT":
        return calendar_for("cme_globex")
    return calendar_for("fx")


@dataclass
class _Series:
    """Released events of one instrument, in time order: trades (price, size) or quotes (bid, ask)."""

    contract: Contract
    times: list[int] = field(default_factory=list)  # ms, whole seconds
    a: list[float] = field(default_factory=list)  # price or bid
    b: list[float] = field(default_factory=list)  # size or ask
    a_text: list[str] = field(default_factory=list)
    b_text: list[str] = field(default_factory=list)

    def side(self, what: str, i: int) -> float:
        """The price ``what`` (TRADES, MIDPOINT, BID, ASK) of event ``i``."""
        if what == "BID":
            return self.a[i]
        if what == "ASK":
            return self.b[i]
        if what == "MIDPOINT":
            return round((self.a[i] + self.b[i]) * 0.5, 10)  # the double nearest the decimal mid
        return self.a[i]

    def bars(self, what: str, tf_ms: int, start_ms: int, end_ms: int) -> list[tuple[Candle, float]]:
        """Bars of ``tf_ms`` with open time in ``[start_ms, end_ms)`` (none for an interval without
        events), each with its WAP."""
        lo = bisect.bisect_left(self.times, start_ms - start_ms % tf_ms)
        hi = bisect.bisect_left(self.times, end_ms)
        out: list[tuple[Candle, float]] = []
        trades = what == "TRADES"
        i = lo
        while i < hi:
            t0 = self.times[i] - self.times[i] % tf_ms
            j = bisect.bisect_left(self.times, t0 + tf_ms, i, hi)
            if t0 < start_ms:
                i = j
                continue
            prices = [self.side(what, k) for k in range(i, j)]
            vol = sum(self.b[i:j]) if trades else 0.0
            wap = sum(p * q for p, q in zip(prices, self.b[i:j], strict=True)) / vol if trades and vol else prices[-1]
            out.append((Candle(t0, prices[0], max(prices), min(prices), prices[-1], vol, j - i), wap))
            i = j
        return out


@dataclass
class _Sub:
    """One subscription of a session: tick-by-tick, real-time bars or a keep-up-to-date history."""

    kind: str  # "ticks", "bars" or "update"
    req_id: int
    series: _Series
    what: str  # AllLast/Last/BidAsk, or TRADES/MIDPOINT/BID/ASK
    cursor: int = 0  # ticks: index of the next event to send; bars/update: next bar open time (ms)
    tf_ms: int = 5_000
    sent: dict[int, tuple[float, ...]] = field(default_factory=dict)  # update: bars sent, by open time


class _Session:
    """One client connection."""

    def __init__(self, replica: IbReplica, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.replica = replica
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = netloc(str(peer[0]), int(peer[1])) if peer else "?"
        self.subs: dict[int, _Sub] = {}
        self.client_id: int | None = None
        self.stalled = False
        self.ready = False

    @property
    def transport(self) -> asyncio.Transport:
        t: asyncio.Transport = self.writer.transport  # type: ignore[assignment]
        return t

    def send(self, data: bytes) -> None:
        if not self.stalled and not self.transport.is_closing():
            self.writer.write(data)


class IbReplica(ReplicaBase):
    """A TWS / IB Gateway on one loopback port; see the module docstring."""

    venue = "ib"
    _log = log
    fault_kinds: ClassVar[tuple[str, ...]] = FAULT_KINDS
    tick_s: ClassVar[float] = 0.05

    def __init__(
        self,
        *,
        options: ReplicaOptions,
        max_tick_by_tick: int = 5,
        stall_s: float = 3.0,
        outage_s: float = 2.0,
        server_version: int = codec.SERVER_VERSION,
    ) -> None:
        o = options.resolve(ReplicaOptions(symbols=DEFAULT_SYMBOLS, rate=2.0, history_ms=3_600_000))
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        self.host, self.port = o.host, o.port
        self.max_tick_by_tick = max_tick_by_tick
        self.stall_s = stall_s
        self.outage_s = outage_s
        self.server_version = server_version
        self.contracts: dict[str, Contract] = {}
        for i, name in enumerate(o.symbols):
            try:
                c = codec.contract_for(name)
            except BadInput as exc:
                raise BadInput(f"--symbols: {exc}") from None
            self.contracts[c.name] = Contract(
                c.symbol,
                c.sec_type,
                c.exchange,
                c.currency,
                c.last_trade,
                "NASDAQ" if c.sec_type == "STK" else "",
                con_id=265598 + i,
            )
        self._clock = MarketClock(o.speed, o.start_ms)
        start = self._clock.start_ms
        self.series = {n: _Series(c) for n, c in self.contracts.items()}
        self._calendars: dict[str, Calendar] = {n: calendar_of(c) for n, c in self.contracts.items()}
        trades = [n for n, c in self.contracts.items() if not c.quotes]
        quotes = [n for n, c in self.contracts.items() if c.quotes]
        # The simulators' own names (letters and digits; OANDA's AAA_BBB for pairs).
        self._trade_sim = (
            # From the start of history with none before it: every trade comes out of _release.
            MarketSim([n.replace(".", "") for n in trades], o.seed, o.rate, start - o.history_ms, 0) if trades else None
        )
        self._sim_names = {n.replace(".", ""): n for n in trades}
        self._quote_sim = QuoteSim([n.replace(".", "_") for n in quotes], o.seed, o.rate) if quotes else None
        self._pairs = {n: PairSpec.for_symbol(n.replace(".", "_")) for n in quotes}
        self._tape = TapeWriter.trades(o.tape) if o.tape is not None and trades else None
        self._qtape = TapeWriter.quotes(quote_tape_path(o.tape)) if o.tape is not None and quotes else None
        self._next_id = dict.fromkeys(trades, 0)
        self._released = start - o.history_ms  # market ms up to which events are released (exclusive)
        self.sessions: list[_Session] = []
        self._server: asyncio.Server | None = None
        self._pacing: deque[tuple[float, str, str]] = deque()  # (wall s, request key, contract+type)
        self._outage_until = 0.0  # wall monotonic time a connectivity episode ends (0: none)
        self._outage_lost = False
        self._outages = 0
        self.stats: dict[str, int] = {
            "connections": 0,
            "handshakes": 0,
            "history_requests": 0,
            "pacing_violations": 0,
            "tick_by_tick_requests": 0,
            "tick_by_tick_refused": 0,
            "real_time_bar_requests": 0,
            "ticks_sent": 0,
            "bars_sent": 0,
            "updates_sent": 0,
            "http_requests": 0,
        }
        self._setup_faults(o.faults, o.faults_seed)
        self._release(start)

    # --- the market -------------------------------------------------------------------------------

    def _release(self, until_ms: int) -> None:
        """Release every event up to ``until_ms`` (exclusive) into the series and the tapes."""
        if until_ms <= self._released:
            return
        if self._trade_sim is not None:
            for sim_name, batch in self._trade_sim.advance_to(until_ms - 1).items():
                name = self._sim_names[sim_name]
                s, cal = self.series[name], self._calendars[name]
                ids, times, prices, sizes = [], [], [], []
                for t, p, lots in zip(batch.times.tolist(), batch.prices().tolist(), batch.lots.tolist(), strict=True):
                    t -= t % 1000  # IB's resolution
                    if not cal.is_open(t):
                        continue
                    size = float(1 + lots % 300)
                    self._next_id[name] += 1
                    ids.append(self._next_id[name])
                    times.append(t)
                    prices.append(codec.num(p))
                    sizes.append(codec.num(size))
                    s.times.append(t)
                    s.a.append(float(codec.num(p)))
                    s.b.append(size)
                    s.a_text.append(prices[-1])
                    s.b_text.append(sizes[-1])
                if self._tape is not None and ids:
                    self._tape.write(name, ids, times, prices, sizes)
        if self._quote_sim is not None:
            for name, spec in self._pairs.items():
                qb = self._quote_sim.batch(spec.symbol, self._released, until_ms)
                if not len(qb):
                    continue
                s = self.series[name]
                times = [t - t % 1000 for t in qb.times.tolist()]
                bids, asks = spec.prices(qb.bid), spec.prices(qb.ask)
                s.times += times
                s.a += [float(x) for x in bids]
                s.b += [float(x) for x in asks]
                s.a_text += bids
                s.b_text += asks
                if self._qtape is not None:
                    self._qtape.write(name, times, bids, asks)
        self._released = until_ms

    def now_ms(self) -> int:
        return self._clock.now_ms()

    # --- serving ----------------------------------------------------------------------------------

    async def start(self) -> str:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        except OSError as e:
            raise BadInput(
                f"cannot listen on {netloc(self.host, self.port)}: {e.strerror or e}; choose another --host/--port"
                " (port 0 picks a free one)"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        if self.faults is not None:
            self.faults.start()
        self._pump_task = asyncio.create_task(self._pump(), name="ib-replica-pump")
        return self.url

    @property
    def tws_address(self) -> tuple[str, int]:
        """(host, port) for a TWS client."""
        return self.host, self.port

    async def stop(self) -> None:
        await self._stop_pump()
        if self._server is not None:
            self._server.close()
            for s in list(self.sessions):
                s.transport.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        for tape in (self._tape, self._qtape):
            if tape is not None:
                tape.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = _Session(self, reader, writer)
        try:
            head = await reader.readexactly(4)
            if head != codec.HANDSHAKE_PREFIX:
                await self._answer_http(reader, writer)
                return
            n = int.from_bytes(await reader.readexactly(4), "big")
            lo, hi = codec.parse_client_versions(await reader.readexactly(min(n, 256)))
            version = min(hi, self.server_version)
            if version < lo:
                log.info("ib replica: client versions %d..%d are beyond ours; closing", lo, hi)
                return
            self.stats["handshakes"] += 1
            self.stats["connections"] += 1
            writer.write(codec.server_hello(version, self.now_ms()))
            self.sessions.append(session)
            framer = codec.Framer()
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                for fields in framer.feed(data):
                    self._on_message(session, fields)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, codec.ProtocolError):
            pass
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
            writer.close()

    async def _answer_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer a plain HTTP request (a health check, the venue contract's probe) with a 404."""
        self.stats["http_requests"] += 1
        with contextlib.suppress(asyncio.TimeoutError, asyncio.LimitOverrunError, ValueError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
        writer.write(_HTTP_404)
        with contextlib.suppress(ConnectionError):
            await writer.drain()

    # --- requests ---------------------------------------------------------------------------------

    def _on_message(self, s: _Session, f: list[str]) -> None:
        try:
            msg = int(f[0])
        except (ValueError, IndexError):
            return  # TWS ignores what it cannot read
        try:
            self._handle(s, msg, f)
        except (ValueError, IndexError) as exc:
            req = f[1] if msg in (codec.REQ_TICK_BY_TICK, codec.REQ_HISTORICAL_DATA) else f[2] if len(f) > 2 else "-1"
            s.send(codec.error_msg(int(req) if req.lstrip("-").isdigit() else -1, 320, f"Error reading request: {exc}"))

    def _handle(self, s: _Session, msg: int, f: list[str]) -> None:
        if msg == codec.START_API:
            client_id = int(f[2])
            if any(x.client_id == client_id for x in self.sessions if x is not s):
                s.send(
                    codec.error_msg(
                        -1,
                        codec.CLIENT_ID_IN_USE,
                        "Unable to connect as the client id is already in use. Retry with a unique client id.",
                    )
                )
                s.transport.close()
                return
            s.client_id = client_id
            s.ready = True
            s.send(codec.frame([codec.NEXT_VALID_ID, 1, 1]))
            s.send(codec.frame([codec.MANAGED_ACCOUNTS, 1, ACCOUNT]))
            if self._outage_until:  # connected in the middle of an outage: TWS says so first
                s.send(
                    codec.error_msg(
                        -1, codec.CONNECTIVITY_LOST, "Connectivity between IB and Trader Workstation has been lost."
                    )
                )
            for code, farm in ((2104, "usfarm"), (2106, "ushmds"), (2158, "secdefnj")):
                status = (
                    "Market data farm" if code == 2104 else "HMDS data farm" if code == 2106 else "Sec-def data farm"
                )
                s.send(codec.error_msg(-1, code, f"{status} connection is OK:{farm}"))
        elif msg == codec.REQ_POSITIONS:
            s.send(codec.frame([codec.POSITION_END, 1]))
        elif msg == codec.REQ_OPEN_ORDERS:
            s.send(codec.frame([codec.OPEN_ORDER_END, 1]))
        elif msg == codec.REQ_COMPLETED_ORDERS:
            s.send(codec.frame([codec.COMPLETED_ORDERS_END]))
        elif msg == codec.REQ_ACCOUNT_UPDATES:
            if f[2] == "1":
                s.send(codec.frame([codec.ACCOUNT_DOWNLOAD_END, 1, f[3] or ACCOUNT]))
        elif msg == codec.REQ_ACCOUNT_UPDATES_MULTI:
            s.send(codec.frame([codec.ACCOUNT_UPDATE_MULTI_END, 1, int(f[2])]))
        elif msg == codec.REQ_EXECUTIONS:
            s.send(codec.frame([codec.EXECUTION_DATA_END, 1, int(f[2])]))
        elif msg == codec.REQ_CURRENT_TIME:
            s.send(codec.frame([codec.CURRENT_TIME, 1, self.now_ms() // 1000]))
        elif msg == codec.REQ_CONTRACT_DETAILS:
            self._contract_details(s, int(f[2]), f[3:15])
        elif msg == codec.REQ_HISTORICAL_DATA:
            self._history(s, int(f[1]), f)
        elif msg == codec.CANCEL_HISTORICAL_DATA:
            s.subs.pop(int(f[2]), None)
        elif msg == codec.REQ_TICK_BY_TICK:
            self._tick_by_tick(s, int(f[1]), f[2:14], f[14])
        elif msg == codec.CANCEL_TICK_BY_TICK:
            s.subs.pop(int(f[1]), None)
        elif msg == codec.REQ_REAL_TIME_BARS:
            self._real_time_bars(s, int(f[2]), f[3:15], f[16])
        elif msg == codec.CANCEL_REAL_TIME_BARS:
            s.subs.pop(int(f[2]), None)
        # Anything else (auto open orders, market data type, ...) is acknowledged by silence, as TWS does.

    def _find(self, s: _Session, req_id: int, cf: list[str]) -> _Series | None:
        """The series a request's contract fields name, or None after error 200 (no such security)."""
        c = codec.contract_from_fields(cf)
        if c.con_id:
            found = next((x for x in self.series.values() if x.contract.con_id == c.con_id), None)
        else:
            found = self.series.get(c.name)
            if found is not None and c.exchange not in ("", "SMART", found.contract.exchange, "NASDAQ", "ISLAND"):
                found = None
        if found is None:
            s.send(codec.error_msg(req_id, codec.NO_SECURITY, "No security definition has been found for the request"))
        return found

    def _contract_details(self, s: _Session, req_id: int, cf: list[str]) -> None:
        series = self._find(s, req_id, cf)
        if series is None:
            return
        c = series.contract
        tick = "0.00005" if c.quotes else "0.25" if c.sec_type == "FUT" else "0.01"
        zone = "US/Eastern"
        s.send(
            codec.frame(
                [
                    codec.CONTRACT_DATA,
                    req_id,
                    c.symbol,
                    c.sec_type,
                    c.last_trade,
                    0,
                    "",
                    c.exchange,
                    c.currency,
                    c.name.replace(".", " ") if c.quotes else c.symbol,
                    c.symbol,
                    c.symbol,
                    c.con_id,
                    tick,
                    "50" if c.sec_type == "FUT" else "",
                    "LMT,MKT",
                    f"{c.exchange},{c.primary_exchange}".strip(","),
                    1,
                    0,
                    f"{c.name} (deltafeed replica)",
                    c.primary_exchange,
                    c.last_trade[:6],
                    "",
                    "",
                    "",
                    zone,
                    "",
                    "",
                    "",
                    "",
                    0,
                    1,
                    "",
                    "",
                    "26",
                    c.last_trade,
                    "COMMON" if c.sec_type == "STK" else "",
                    "1",
                    "1",
                    "1",
                ]
            )
        )
        s.send(codec.frame([codec.CONTRACT_DATA_END, 1, req_id]))

    def _history(self, s: _Session, req_id: int, f: list[str]) -> None:
        series = self._find(s, req_id, f[2:14])
        if series is None:
            return
        end_text, bar_size, duration, what, keep = f[15], f[16], f[17], f[19], f[21] == "1"
        tf_ms = codec.BAR_SIZE_MS.get(bar_size)
        if tf_ms is None:
            s.send(codec.error_msg(req_id, 321, f"Error validating request:-'bad bar size' {bar_size!r}"))
            return
        want = ("MIDPOINT", "BID", "ASK") if series.contract.quotes else ("TRADES",)
        if what not in want:
            s.send(codec.error_msg(req_id, 321, f"Error validating request:-'whatToShow' {what} for this contract"))
            return
        self.stats["history_requests"] += 1
        if tf_ms <= codec.SMALL_BAR_MS and not self._paced(series.contract.name + what, "\0".join(f[2:])):
            self.stats["pacing_violations"] += 1
            s.send(
                codec.error_msg(
                    req_id,
                    codec.PACING_VIOLATION,
                    "Historical Market Data Service error message:Historical data request pacing violation",
                )
            )
            return
        now = self.now_ms()
        if keep and end_text.strip():
            s.send(
                codec.error_msg(req_id, 321, "Error validating request:-'endDateTime' must be empty with keepUpToDate")
            )
            return
        try:
            end = min(codec.parse_end_datetime(end_text, now), now)
            span_ms = codec.duration_s(duration) * 1000
        except ValueError as exc:
            s.send(codec.error_msg(req_id, 321, f"Error validating request:-{exc}"))
            return
        self._release(now)
        bars = series.bars(what, tf_ms, end - span_ms, end)
        fields: list[object] = [
            codec.HISTORICAL_DATA,
            req_id,
            codec.end_datetime(end - span_ms),
            codec.end_datetime(end),
            len(bars),
        ]
        for c, wap in bars:
            fields += codec.bar_fields(c, wap, series.contract.quotes, 2 if f[20] == "2" else 1)
        s.send(codec.frame(fields))
        if keep:
            s.subs[req_id] = _Sub("update", req_id, series, what, cursor=now - now % tf_ms, tf_ms=tf_ms)

    def _paced(self, contract_key: str, request_key: str) -> bool:
        """Record a small-bar history request; False when it breaks one of IB's pacing rules."""
        now = time.monotonic()
        q = self._pacing
        while q and now - q[0][0] > 600.0:
            q.popleft()
        identical = any(k == request_key and now - t < 15.0 for t, k, _ in q)
        same_contract = sum(1 for t, _, c in q if c == contract_key and now - t < 2.0)
        q.append((now, request_key, contract_key))
        return not identical and same_contract < 5 and len(q) <= 60

    def _tick_by_tick(self, s: _Session, req_id: int, cf: list[str], tick_type: str) -> None:
        series = self._find(s, req_id, cf)
        if series is None:
            return
        self.stats["tick_by_tick_requests"] += 1
        want = ("BidAsk", "MidPoint") if series.contract.quotes else ("AllLast", "Last")
        if tick_type not in want:
            s.send(
                codec.error_msg(req_id, 10189, f"Failed to request tick-by-tick data: {tick_type} for this contract")
            )
            return
        if sum(1 for x in s.subs.values() if x.kind == "ticks") >= self.max_tick_by_tick:
            self.stats["tick_by_tick_refused"] += 1
            s.send(
                codec.error_msg(
                    req_id, codec.TICK_BY_TICK_LIMIT, "Max number of tick-by-tick requests has been reached."
                )
            )
            return
        self._release(self.now_ms())
        s.subs[req_id] = _Sub("ticks", req_id, series, tick_type, cursor=len(series.times))

    def _real_time_bars(self, s: _Session, req_id: int, cf: list[str], what: str) -> None:
        series = self._find(s, req_id, cf)
        if series is None:
            return
        self.stats["real_time_bar_requests"] += 1
        now = self.now_ms()
        s.subs[req_id] = _Sub("bars", req_id, series, what, cursor=now - now % 5_000 + 5_000)

    # --- the pump ---------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.now_ms()
        # Events of the current second may still come: send only whole seconds, so a second's ticks
        # are complete once sent (what the tape says of a second is then what the client got).
        upto = now - now % 1000
        self._release(upto)
        if self.faults is not None:
            self._inject()
        if self._outage_until and time.monotonic() >= self._outage_until:
            self._restore()
        outage = bool(self._outage_until)
        for s in list(self.sessions):
            for sub in list(s.subs.values()):
                self._serve_sub(s, sub, upto, quiet=outage or s.stalled)

    def _serve_sub(self, s: _Session, sub: _Sub, upto: int, *, quiet: bool) -> None:
        series = sub.series
        if sub.kind == "ticks":
            end = bisect.bisect_left(series.times, upto, sub.cursor)
            if not quiet:
                out = bytearray()
                for i in range(sub.cursor, end):
                    t = series.times[i] // 1000
                    if series.contract.quotes:
                        out += codec.frame(
                            [
                                codec.TICK_BY_TICK,
                                sub.req_id,
                                3,
                                t,
                                series.a_text[i],
                                series.b_text[i],
                                "1000000",
                                "1000000",
                                0,
                            ]
                        )
                    else:
                        out += codec.frame(
                            [
                                codec.TICK_BY_TICK,
                                sub.req_id,
                                2 if sub.what == "AllLast" else 1,
                                t,
                                series.a_text[i],
                                series.b_text[i],
                                0,
                                series.contract.exchange,
                                "",
                            ]
                        )
                self.stats["ticks_sent"] += end - sub.cursor
                s.send(bytes(out))
            sub.cursor = end  # what a silent connection missed is lost, as with IB
        elif sub.kind == "bars":
            what = sub.what if sub.what != "TRADES" or not series.contract.quotes else "MIDPOINT"
            while sub.cursor + 5_000 <= upto:
                bars = series.bars(what, 5_000, sub.cursor, sub.cursor + 5_000)
                if bars and not quiet:
                    c, wap = bars[0]
                    q = series.contract.quotes
                    s.send(
                        codec.frame(
                            [
                                codec.REAL_TIME_BARS,
                                3,
                                sub.req_id,
                                c.open_time // 1000,
                                codec.num(c.open),
                                codec.num(c.high),
                                codec.num(c.low),
                                codec.num(c.close),
                                -1 if q else codec.num(c.volume),
                                codec.num(wap),
                                -1 if q else c.trades,
                            ]
                        )
                    )
                    self.stats["bars_sent"] += 1
                sub.cursor += 5_000
        elif sub.kind == "update" and not quiet:
            start = upto - upto % sub.tf_ms
            bars = series.bars(sub.what, sub.tf_ms, min(start, sub.cursor), upto)
            for c, wap in bars[-2:]:  # the bar just finished and the forming one
                key = (c.open, c.high, c.low, c.close, c.volume, c.trades)
                if c.open_time < sub.cursor or sub.sent.get(c.open_time) == key:
                    continue
                sub.sent = {c.open_time: key, **{t: k for t, k in sub.sent.items() if t >= sub.cursor}}
                s.send(codec.frame(codec.update_fields(sub.req_id, c, wap, series.contract.quotes)))
                self.stats["updates_sent"] += 1
            sub.cursor = start

    # --- faults -----------------------------------------------------------------------------------

    def _inject(self) -> None:
        faults = self.faults
        assert faults is not None
        live = [s for s in self.sessions if s.ready and not s.stalled and not s.transport.is_closing()]
        for kind in ("close", "reset", "stall", "garbage"):
            if not faults.pending(kind) or not live:
                continue
            faults.due(kind)
            victim = live[faults.pick(len(live))]
            if kind == "close":
                victim.transport.close()
            elif kind == "reset":
                from deltafeed.replicas.faults import reset_transport

                reset_transport(victim.transport)
            elif kind == "stall":
                victim.stalled = True
                asyncio.get_running_loop().call_later(self.stall_s, self._unstall, victim)
            else:
                req = next(iter(victim.subs), 1)
                victim.send(codec.frame([codec.TICK_BY_TICK, req, 2, self.now_ms() // 1000, "nan", "-5", 0, "", ""]))
            self._injected(kind, victim.peer)
            live = [x for x in live if x is not victim]
        if faults.pending("connectivity") and not self._outage_until and self.sessions:
            faults.due("connectivity")
            self._outages += 1
            self._outage_lost = self._outages % 2 == 1  # alternately 1101 (data lost) and 1102 (maintained)
            self._outage_until = time.monotonic() + self.outage_s
            for s in self.sessions:
                s.send(
                    codec.error_msg(
                        -1, codec.CONNECTIVITY_LOST, "Connectivity between IB and Trader Workstation has been lost."
                    )
                )
                s.send(codec.error_msg(-1, 2103, "Market data farm connection is broken:usfarm"))
            self._injected("connectivity")

    def _restore(self) -> None:
        self._outage_until = 0.0
        for s in self.sessions:
            if self._outage_lost:
                s.subs = {k: v for k, v in s.subs.items() if v.kind == "update"}  # market data is gone
                s.send(
                    codec.error_msg(
                        -1,
                        codec.RESTORED_DATA_LOST,
                        "Connectivity between IB and Trader Workstation has been restored - data lost.",
                    )
                )
            else:
                s.send(
                    codec.error_msg(
                        -1,
                        codec.RESTORED_DATA_KEPT,
                        "Connectivity between IB and Trader Workstation has been restored - data maintained.",
                    )
                )
            s.send(codec.error_msg(-1, 2104, "Market data farm connection is OK:usfarm"))

    def _unstall(self, s: _Session) -> None:
        s.stalled = False

    # --- visibility -------------------------------------------------------------------------------

    def summary(self) -> str:
        parts = [f"{k}={v}" for k, v in self.stats.items() if v]
        return "ib replica: " + (" ".join(parts) or "no requests")
