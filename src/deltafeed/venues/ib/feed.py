"""IB's live side for the engine: one socket to TWS / IB Gateway (one client id) for live ticks and
history alike.

* Live: ``reqTickByTickData`` ``AllLast`` for stocks and futures (trades), ``BidAsk`` for forex (MID,
  BID and ASK candles through :class:`~deltafeed.candles.quotes.QuoteRouter`), at most
  ``tick_by_tick_lines`` instruments; the others (and any the venue refuses with 10190) stream
  5-second real-time bars instead, each folded into the candles as its open, high, low and close
  (volume on the open), which is exact for OHLC and volume of every timeframe of 5 s or more and is
  then reconciled like every candle of this id-less venue.
* History: ``reqHistoricalData`` (``TRADES``, or ``MIDPOINT``/``BID``/``ASK``), paged by IB's step
  sizes and paced by :class:`~deltafeed.venues.ib.pacing.Pacer`, so deltafeed itself never causes a
  pacing violation (error 162 is still handled: counted, waited out, asked again).
* Loss: IB ticks have no ids, so whatever may have been missed is made a hole the history repairs:
  a lost socket, error 1100 ("connectivity lost") until 1101/1102, and a data farm reported broken
  (2103/2105) until it is OK again (2104/2106). 1101 ("data lost") also re-subscribes.
* Errors: every error message is counted by code in ``venue_errors``; the meaningful ones (not the
  farm-OK notices) are logged once per code as one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from deltafeed.candles.quotes import QuoteRouter
from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Trade
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.reconnect import Backoff
from deltafeed.venues.base import FeedStatus, Shareable, SharedLimits, SkipLog
from deltafeed.venues.ib import VENUE, IbSettings, tws_address
from deltafeed.venues.ib import codec as ib
from deltafeed.venues.ib.pacing import Pacer

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.ib")
T = TypeVar("T")

#: Wall seconds a history request may take before it is given up (and retried by the engine).
HISTORY_TIMEOUT_S = 30.0
#: Wall seconds to wait for TWS to accept the API connection (handshake, nextValidId, accounts).
READY_TIMEOUT_S = 10.0


async def _within(aw: Awaitable[T], seconds: float) -> T:
    """``aw`` or TimeoutError after ``seconds``. Not ``asyncio.wait_for``: in Python 3.11 it can
    swallow a cancellation that arrives as ``aw`` completes, and a socket task reading busily
    would then ignore the stop forever."""
    async with asyncio.timeout(seconds):
        return await aw


class _Request:
    """A pending request: its answer (bars, contract details) or the error that ended it."""

    def __init__(self) -> None:
        self.done = asyncio.get_running_loop().create_future()
        self.items: list[Any] = []


class IbFeed(SharedLimits):
    """Streams IB ticks into the builders of its series and answers history requests."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(self, vs: IbSettings, *, stale_after_s: float) -> None:
        self.host, self.port = tws_address(vs.tws_url)
        self.client_id = vs.client_id
        self.tick_lines = vs.tick_by_tick_lines
        self.market_data_lines = vs.market_data_lines
        self.exchange, self.currency = dict(vs.exchange), dict(vs.currency)
        self.stale_after_s = max(1.0, stale_after_s)
        self.clock = VenueClock()
        self.decoder = ib.Decoder()
        self.pacer = Pacer()
        self.router = QuoteRouter()
        self.states: list[Series] = []
        self.contracts: dict[str, ib.Contract] = {}
        self._by_symbol: dict[str, list[Series]] = {}
        self._next_id: dict[str, int] = {}
        self._last_ms: dict[str, int] = {}
        self._live: dict[int, tuple[str, str]] = {}  # req id -> (symbol, "ticks" | "bars")
        self._bars_only: set[str] = set()  # symbols refused tick-by-tick (10190): real-time bars
        self._pending: dict[int, _Request] = {}
        self._req_id = 1000
        self._writer: asyncio.StreamWriter | None = None
        self._ready = asyncio.Event()
        self._streaming = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._refused = asyncio.Event()  # TWS refused our client id (326) before we were ready
        self._refused_why = ""
        self._backoff = Backoff(base_s=0.5, cap_s=10.0)
        self._skips = SkipLog(log, "messages")
        self._farm_broken: set[int] = set()
        self._link_lost = False
        self._logged_codes: set[int] = set()
        self.venue_errors: Counter[str] = Counter()
        self.connects = 0
        self.stale_drops = 0
        self.frames = 0
        self.out_of_order = 0
        self.pacing_violations = 0
        self.history_requests = 0
        self.resubscribes = 0
        self._last_rx = 0.0

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    def add(self, st: Series) -> None:
        sym = st.instrument.symbol
        c = self.contracts.get(sym) or ib.contract_for(sym, self.exchange, self.currency)
        self.contracts[sym] = c
        self.states.append(st)
        self._by_symbol.setdefault(sym, []).append(st)
        self._next_id.setdefault(sym, 1)
        if c.quotes:
            self.router.add(st)

    # --- connection -------------------------------------------------------------------------------

    def lines_needed(self) -> int:
        """Market-data lines the instruments take: one each on tick-by-tick, one per price on bars."""
        ticks = list(self.contracts)[: self.tick_lines]  # as _subscribe_all picks them
        return sum(1 if s in ticks else 3 if c.quotes else 1 for s, c in self.contracts.items())

    async def check(self) -> None:
        if self.lines_needed() > self.market_data_lines:
            raise BadInput(
                f"the IB instruments need {self.lines_needed()} market-data lines, more than the "
                f"{self.market_data_lines} of [venues.ib] market_data_lines; collect fewer instruments, or raise "
                "it if your account has more lines (Quote Booster packs)"
            )
        if self._task is None:
            try:  # a port nobody listens on is named at once, not after READY_TIMEOUT_S
                _, probe = await _within(asyncio.open_connection(self.host, self.port), 5.0)
                probe.close()
            except (OSError, TimeoutError) as exc:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "no answer"
                raise BadInput(
                    f"cannot reach TWS / IB Gateway at {self.host}:{self.port} ({why}); "
                    "start it with the API socket enabled on that port, or set [venues.ib] tws_url"
                ) from None
            self._task = asyncio.create_task(self._run(), name="ib-socket")
        waits = [asyncio.ensure_future(self._ready.wait()), asyncio.ensure_future(self._refused.wait())]
        await asyncio.wait(waits, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        for w in waits:
            w.cancel()
        # Ready once is enough here: a socket dropped since then is taken up again by the contract
        # requests below, which wait for the reconnection.
        if not self.connects and self._refused.is_set():
            raise BadInput(
                f"TWS at {self.host}:{self.port} refused client id {self.client_id} ({self._refused_why}); "
                "set another [venues.ib] client_id (every API client of one TWS needs its own)"
            )
        if not self.connects:
            raise BadInput(
                f"no TWS / IB Gateway API at {self.host}:{self.port} (client id {self.client_id}); start it, enable "
                "'ActiveX and Socket Clients', check the socket port and trusted IPs, or set [venues.ib] tws_url"
            )
        for sym, c in self.contracts.items():
            details = await self._details(sym, c)
            self.contracts[sym] = ib.Contract(
                c.symbol,
                c.sec_type,
                c.exchange,
                c.currency,
                c.last_trade,
                details.contract.primary_exchange,
                details.contract.con_id,
            )

    async def _details(self, sym: str, c: ib.Contract) -> ib.ContractDetails:
        """The contract details of ``sym``, asked again while the socket drops under the request;
        :class:`BadInput` when IB knows no such contract."""
        why: Exception = VenueUnreachable("no answer")
        for _attempt in range(5):
            with contextlib.suppress(TimeoutError):
                await _within(self._ready.wait(), READY_TIMEOUT_S)
            _, req = self._request(lambda i: ib.req_contract_details(i, c))
            try:
                await _within(asyncio.shield(req.done), HISTORY_TIMEOUT_S)
            except (TimeoutError, VenueUnreachable) as exc:
                why = exc
                continue
            except VenueError as exc:
                why = exc
                break
            if req.items:
                found: ib.ContractDetails = req.items[0]
                return found
            why = VenueError(200, b"no contract details", f"tws://{self.host}:{self.port}")
            break
        raise BadInput(
            f"IB gave no contract for ib:{sym} ({c.sec_type} {c.symbol} on {c.exchange} in {c.currency}): {why}; "
            "check the name, or set its exchange/currency in [venues.ib]"
        )

    def start(self) -> None:
        self._streaming = True
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ib-socket")
        elif self._ready.is_set():
            self._subscribe_all()

    def connected(self) -> bool:
        return self._ready.is_set()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._session()
            except (OSError, asyncio.IncompleteReadError, ib.ProtocolError, TimeoutError) as exc:
                log.info("IB socket %s:%d: %s", self.host, self.port, exc or type(exc).__name__)
            finally:
                # A session that got as far as ready starts the backoff again from its first step.
                failures = 1 if self._ready.is_set() else failures + 1
                self._lost()
            await asyncio.sleep(self._backoff.delay(failures))

    async def _session(self) -> None:
        reader, writer = await _within(asyncio.open_connection(self.host, self.port), 5.0)
        self._writer = writer
        self.decoder.reset()
        framer = ib.Framer()
        self._got_id = self._got_accounts = False
        writer.write(ib.handshake())
        self._last_rx = time.monotonic()
        ping = asyncio.create_task(self._keepalive(writer))
        try:
            while not self._stopping:
                data = await _within(reader.read(65536), self.stale_after_s)
                if not data:
                    raise ConnectionResetError("TWS closed the connection")
                self._last_rx = time.monotonic()
                for fields in framer.feed(data):
                    self.frames += 1
                    self._on_message(fields)
        except TimeoutError:
            self.stale_drops += 1
            raise TimeoutError(f"nothing from TWS for {self.stale_after_s:.1f} s") from None
        finally:
            ping.cancel()
            writer.close()

    async def _keepalive(self, writer: asyncio.StreamWriter) -> None:
        """Ask TWS its time every third of the stale limit: the answer keeps a quiet market's socket
        alive, and a silent socket is dropped by the read timeout."""
        while True:
            await asyncio.sleep(self.stale_after_s / 3)
            if self._ready.is_set() and not writer.is_closing():
                writer.write(ib.req_current_time())

    def _send(self, data: bytes) -> bool:
        w = self._writer
        if w is None or w.is_closing() or not self._ready.is_set():
            return False
        w.write(data)
        return True

    def _lost(self) -> None:
        """The socket is gone: pending requests fail, and whatever traded meanwhile is a hole."""
        was = self._ready.is_set()
        self._ready.clear()
        self._writer = None
        self._live.clear()
        for req in self._pending.values():
            if not req.done.done():
                req.done.set_exception(VenueUnreachable(f"TWS connection lost at {self.host}:{self.port}"))
        self._pending.clear()
        if was:
            self._gap()

    def _gap(self) -> None:
        """What happened since the last tick is unknown: the next tick of every instrument shows a hole."""
        for sym in self._next_id:
            self._next_id[sym] += 1
        self.router.gap()
        now = self.clock.now_ms()
        for sym, states in self._by_symbol.items():
            since = self._last_ms.get(sym)
            if since is not None and now > since:
                for st in states:
                    st.on_loss(since, now)

    def _subscribe_all(self) -> None:
        self._live.clear()
        lines = 0
        for sym, c in self.contracts.items():
            if not any(st.active for st in self._by_symbol[sym]):
                continue
            self._req_id += 1
            if lines < self.tick_lines and sym not in self._bars_only:
                lines += 1
                self._live[self._req_id] = (sym, "ticks")
                self._send(ib.req_tick_by_tick(self._req_id, c, "BidAsk" if c.quotes else "AllLast"))
            else:
                self._subscribe_bars(sym, c)

    def _subscribe_bars(self, sym: str, c: ib.Contract) -> None:
        sides = ("MIDPOINT", "BID", "ASK") if c.quotes else ("TRADES",)
        for what in sides:
            self._req_id += 1
            self._live[self._req_id] = (sym, what)
            self._send(ib.req_real_time_bars(self._req_id, c, what))

    def _request(self, build: Callable[[int], bytes]) -> tuple[int, _Request]:
        """Send the request ``build`` makes with a new request id; its id and its pending answer."""
        self._req_id += 1
        req_id = self._req_id
        req = _Request()
        if not self._ready.is_set():
            req.done.set_exception(VenueUnreachable(f"not connected to TWS at {self.host}:{self.port}"))
            return req_id, req
        self._pending[req_id] = req
        self._send(build(req_id))
        return req_id, req

    # --- messages ---------------------------------------------------------------------------------

    def _on_message(self, fields: list[str]) -> None:
        ev = self.decoder.decode(fields)
        if ev is None:
            self._skips.report(self.decoder.errors, self.decoder.last_error)
            return
        t = type(ev)
        if t is ib.TickLast:
            assert isinstance(ev, ib.TickLast)
            self._trade(ev.req_id, ev.time_ms, ev.price, ev.size)
        elif t is ib.TickBidAsk:
            assert isinstance(ev, ib.TickBidAsk)
            live = self._live.get(ev.req_id)
            if live is not None and self.router.quote(live[0], ev.time_ms, ev.bid, ev.ask):
                self._last_ms[live[0]] = ev.time_ms
                self.clock.observe(ev.time_ms)
        elif t is ib.RealTimeBar:
            assert isinstance(ev, ib.RealTimeBar)
            self._real_time_bar(ev)
        elif t is ib.HistoricalData or t is ib.ContractDetails:
            req = self._pending.get(ev.req_id)  # type: ignore[union-attr]
            if req is not None:
                if t is ib.HistoricalData:
                    assert isinstance(ev, ib.HistoricalData)
                    req.items += ev.bars
                    self._finish(ev.req_id)
                else:
                    req.items.append(ev)
        elif t is ib.ContractDetailsEnd:
            assert isinstance(ev, ib.ContractDetailsEnd)
            self._finish(ev.req_id)
        elif t is ib.CurrentTime:
            assert isinstance(ev, ib.CurrentTime)
            self.clock.observe(ev.time_ms)
        elif t is ib.ErrorMsg:
            assert isinstance(ev, ib.ErrorMsg)
            self._error(ev)
        elif t is ib.ServerHello:
            assert isinstance(ev, ib.ServerHello)
            assert self._writer is not None
            self._writer.write(ib.start_api(self.client_id))
        elif t is ib.NextValidId:
            self._got_id = True
            self._maybe_ready()
        elif t is ib.ManagedAccounts:
            assert isinstance(ev, ib.ManagedAccounts)
            self._got_accounts = bool(ev.accounts)
            self._maybe_ready()

    def _maybe_ready(self) -> None:
        if self._got_id and self._got_accounts and not self._ready.is_set():
            self.connects += 1
            self._backoff.connected()
            self._ready.set()
            self._send(ib.req_current_time())
            if self._streaming:
                self._subscribe_all()

    def _finish(self, req_id: int) -> None:
        req = self._pending.pop(req_id, None)
        if req is not None and not req.done.done():
            req.done.set_result(None)

    def _trade(self, req_id: int, time_ms: int, price: float, size: float) -> None:
        live = self._live.get(req_id)
        if live is None:
            return
        sym = live[0]
        if time_ms < self._last_ms.get(sym, 0):
            self.out_of_order += 1
            return
        tid = self._next_id[sym]
        self._next_id[sym] = tid + 1
        self._last_ms[sym] = time_ms
        trade = Trade(sym, tid, time_ms, price, size, False)
        for st in self._by_symbol[sym]:
            if st.active:
                st.on_trade(trade)
        self.clock.observe(time_ms)

    def _real_time_bar(self, ev: ib.RealTimeBar) -> None:
        """A 5-second bar as its open, high, low and close (the volume and count ride on the open)."""
        live = self._live.get(ev.req_id)
        if live is None:
            return
        sym, what = live
        c = ev.candle
        self.clock.observe(c.open_time + 5_000)
        if what == "TRADES":
            for i, p in enumerate((c.open, c.high, c.low, c.close)):
                self._trade_bar(sym, c.open_time, p, c.volume if i == 0 else 0.0)
            return
        side = {"MIDPOINT": "mid", "BID": "bid", "ASK": "ask"}[what]
        for st in self._by_symbol[sym]:
            if st.active and st.price == side:
                for p in (c.open, c.high, c.low, c.close):
                    tid = self._next_id[sym]
                    self._next_id[sym] = tid + 1
                    st.on_trade(Trade(sym, tid, c.open_time, p, 0.0, False))
        self._last_ms[sym] = c.open_time

    def _trade_bar(self, sym: str, time_ms: int, price: float, qty: float) -> None:
        tid = self._next_id[sym]
        self._next_id[sym] = tid + 1
        self._last_ms[sym] = time_ms
        trade = Trade(sym, tid, time_ms, price, qty, False)
        for st in self._by_symbol[sym]:
            if st.active:
                st.on_trade(trade)

    def _error(self, ev: ib.ErrorMsg) -> None:
        code = ev.code
        self.venue_errors[str(code)] += 1
        req = self._pending.get(ev.req_id)
        if req is not None and code not in ib.INFO_CODES:
            self._pending.pop(ev.req_id, None)
            if not req.done.done():
                req.done.set_exception(VenueError(code, ev.text.encode(), f"tws://{self.host}:{self.port}"))
        if code == ib.CLIENT_ID_IN_USE and not self._ready.is_set():
            self._refused_why = f"error {code}: {ev.text}"
            self._refused.set()
        elif code == ib.PACING_VIOLATION:
            self.pacing_violations += 1
        elif code == ib.TICK_BY_TICK_LIMIT and ev.req_id in self._live:
            sym, _ = self._live.pop(ev.req_id)
            self._bars_only.add(sym)
            self._subscribe_bars(sym, self.contracts[sym])
        elif code == ib.CONNECTIVITY_LOST:
            self._link_lost = True
        elif code in (ib.RESTORED_DATA_LOST, ib.RESTORED_DATA_KEPT):
            self._link_lost = False
            self._gap()
            if code == ib.RESTORED_DATA_LOST and self._streaming:
                self.resubscribes += 1
                for req_id in list(self._live):
                    self._send(ib.cancel_tick_by_tick(req_id))
                self._subscribe_all()
        elif code in ib.FARM_BROKEN:
            self._farm_broken.add(code)
        elif code in ib.FARM_OK:
            broken = {ib.FARM_BROKEN[ib.FARM_OK.index(code)]}
            if broken & self._farm_broken:
                self._farm_broken -= broken
                self._gap()
        if code not in ib.INFO_CODES and code not in self._logged_codes:
            self._logged_codes.add(code)
            log.warning("IB error %d (request %d): %s; counted in status venue_errors", code, ev.req_id, ev.text)

    # --- history ----------------------------------------------------------------------------------

    def page_span_ms(self, timeframe: str) -> int:
        return ib.MAX_DURATION_S[ib.BAR_SIZES[timeframe]] * 1000

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """The bars with open time in ``[start_ms, end_ms]``, page by page; a bar is closed once the
        venue's now has passed its end (IB's last bar of a request reaching now is still forming)."""
        c = self.contracts[st.instrument.symbol]
        what = {"trade": "TRADES", "mid": "MIDPOINT", "bid": "BID", "ask": "ASK"}[st.price]
        bar = ib.BAR_SIZES[timeframe]
        tf = ib.BAR_SIZE_MS[bar]
        now = now_ms if now_ms is not None else self.clock.now_ms()
        page = self.page_span_ms(timeframe)
        out: list[Candle] = []
        t = start_ms - start_ms % tf
        last = min(end_ms, now)
        while t <= last:
            stop = min(t + page, last - last % tf + tf)
            bars = await self._history(c, what, bar, tf, stop, (stop - t) // 1000)
            out += [b for b in bars if t <= b.open_time <= end_ms]
            t = stop
        for b in out:
            b.closed = b.open_time + tf <= now
        return out

    async def _history(self, c: ib.Contract, what: str, bar: str, tf: int, end_ms: int, seconds: int) -> list[Candle]:
        small = tf <= ib.SMALL_BAR_MS
        duration = ib.duration_str(seconds)
        key = f"{c.name}|{what}|{bar}|{end_ms}|{duration}"
        contract_key = f"{c.name}|{what}"
        for _attempt in range(6):
            if not self._ready.is_set():
                # Lost meanwhile (a TWS restart, a dropped socket): ask again once it is back.
                with contextlib.suppress(TimeoutError):
                    await _within(self._ready.wait(), READY_TIMEOUT_S)
            while (wait := self.pacer.delay(time.monotonic(), key, contract_key, small)) > 0:
                self.pacer.waits += 1
                await asyncio.sleep(wait)
            self.pacer.record(time.monotonic(), key, contract_key, small)
            self.history_requests += 1
            req_id, req = self._request(lambda i: ib.req_historical_data(i, c, end_ms, duration, bar, what))
            try:
                await _within(asyncio.shield(req.done), HISTORY_TIMEOUT_S)
            except TimeoutError:
                self._pending.pop(req_id, None)
                self._send(ib.cancel_historical_data(req_id))
                raise VenueUnreachable(f"TWS did not answer a history request in {HISTORY_TIMEOUT_S:.0f} s") from None
            except VenueUnreachable:
                continue  # the socket went down under the request
            except VenueError as exc:
                if exc.status == ib.PACING_VIOLATION:
                    await asyncio.sleep(15.0)  # someone else spent the budget: IB's identical-request wait
                    continue
                raise
            return list(req.items)
        # A VenueError: the bootstrap defers the range to a repair instead of failing the start.
        raise VenueError(0, b"TWS lost or paced every try of a history request", f"tws://{self.host}:{self.port}")

    # --- the engine's other calls -----------------------------------------------------------------

    async def tick(self, mono: float) -> None:
        return None

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``

    def control(self, subscribe: bool, states: list[Series]) -> None:
        if self._ready.is_set() and self._streaming:
            for req_id, (_, kind) in list(self._live.items()):
                self._send(ib.cancel_tick_by_tick(req_id) if kind == "ticks" else ib.cancel_real_time_bars(req_id))
            self._gap()
            self._subscribe_all()

    async def stop(self) -> None:
        self._stopping = True  # the socket task ends at its next step even if a cancel were lost
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def rest_limits(self) -> list[Shareable]:
        return [self.pacer]  # the TWS session's history requests

    def report(self) -> FeedStatus:
        up = self._ready.is_set()
        return FeedStatus(
            connected=up,
            connections=int(up),
            connects=self.connects,
            reconnects=max(0, self.connects - 1),
            rotations=0,
            stale_drops=self.stale_drops,
            connect_budget_waits=0,
            frames=self.frames,
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history_requests,
            rest_throttled=self.pacing_violations,
            rest_server_errors=0,
            rest_limiter_waits=self.pacer.waits,
            out_of_order=self.out_of_order + self.router.out_of_order,
            repeated_quotes=self.router.repeated,
            refused=self.router.refused,
            venue_errors=dict(self.venue_errors),
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
