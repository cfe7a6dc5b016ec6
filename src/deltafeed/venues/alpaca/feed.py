"""Alpaca's live side for the engine, in two modes.

``stream`` (:class:`AlpacaFeed`): one WebSocket per kind of instrument (stocks on ``/v2/{feed}``,
crypto on ``/v1beta3/crypto/us``; an account may hold one of each), authenticated by the ``auth``
message, subscribed to ``trades``, ``bars`` and ``updatedBars``, and to ``dailyBars`` for a symbol
whose daily timeframe (:func:`~deltafeed.venues.alpaca.codec.day_of`: the New York day for stocks,
the UTC day for crypto) is collected. Alpaca's trade ids are not a
per-symbol sequence, so each symbol's builder gets synthetic consecutive ids (a reconnect skips one,
so the candles around it are repaired), repeats are recognised by the venue's id, and nothing the
stream builds is final by itself: it is reconciled with the REST bars once they have settled. A
trade older than the last one applied (a late trade) is not folded in: the reconciliation corrects
its candles (no extra request: the budget is 200 a minute). An
``updatedBars`` message, which comes after the half-minute mark when the bar settles, replaces the
stored minute candle as the venue's own closed one (published again, a correction). A ``bars``
minute bar whose trade count differs from ours says trades were lost: its minute is repaired. A
``dailyBars`` message is the day's running bar (every trade until it was sent), never final: the
first one sent after the day ended is checked like a minute bar (another trade count: the day is
repaired), and the day's candle is final once it equals the settled REST ``1Day`` bar.

``poll`` (:class:`AlpacaPollFeed`): no WebSocket; every ``poll_every_s`` one multi-symbol bars
request per kind and timeframe fetches what settled since the last poll, and each bar becomes
the venue's own closed (final) candle. The number of instruments the budget affords at the interval
is computed and logged at start-up; a run that asks for more is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
from collections import Counter, deque
from typing import TYPE_CHECKING, Any

from deltafeed.candles.quotes import QuoteRouter
from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle, Quote, Trade, timeframe, timeframe_ms
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.net.reconnect import ConnectBudget
from deltafeed.net.ws import WsStream
from deltafeed.venues.alpaca import KEY_ENV, SECRET_ENV, VENUE, AlpacaSettings
from deltafeed.venues.alpaca import codec as alpaca
from deltafeed.venues.alpaca.rest import AlpacaHistory
from deltafeed.venues.base import FeedStatus, Shareable, SharedLimits, SkipLog, TradeSink

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.alpaca")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible
RECENT_IDS = 4096  # venue trade ids remembered per symbol, to drop repeats
#: Symbols per multi-symbol poll request (the URL stays short; the page limit is 10 000 bars).
POLL_SYMBOLS_PER_CALL = 100


def credentials() -> tuple[str, str]:
    """The key id and secret from the environment; :class:`BadInput` naming the variables."""
    key, secret = os.environ.get(KEY_ENV, "").strip(), os.environ.get(SECRET_ENV, "").strip()
    if not key or not secret:
        raise BadInput(f"Alpaca needs an API key: set {KEY_ENV} and {SECRET_ENV} (never put them on the command line)")
    return key, secret


class _Stream:
    """One of the feed's WebSockets (stocks or crypto): its session state and counters."""

    def __init__(self, feed: AlpacaFeed, kind: str, url: str, stale_after_s: float, budget: int) -> None:
        self.feed = feed
        self.kind = kind
        self.url = url
        self.msgpack = feed.msgpack
        self.states: list[Series] = []
        self.authenticated = False
        self.subs: dict[str, list[str]] = {}
        self.refusal: str | None = None  # the venue's last refusal of the session, as one line
        self.ws = WsStream(
            lambda: self.url,
            self.on_frame,
            on_connect=self.on_connect,
            name=f"alpaca-{kind}",
            stale_after_s=stale_after_s,
            backoff_cap_s=15.0,
            budget=ConnectBudget(budget, 300.0),
            # msgpack: the handshake asks for binary frames, and actions go out as msgpack too.
            on_binary=self.on_binary if self.msgpack else None,
            headers={"Content-Type": "application/msgpack"} if self.msgpack else None,
        )

    def send(self, payload: bytes) -> None:
        if self.msgpack:
            self.ws.send_binary(payload)
        else:
            self.ws.send(payload)

    def on_connect(self, ws: WsStream) -> None:
        self.authenticated = False
        self.feed.reconnected(self)
        self.send(alpaca.auth(self.feed.key, self.feed.secret, self.msgpack))

    def on_frame(self, frame: bytes | memoryview) -> None:
        self.feed.on_frame(self, frame)

    def on_binary(self, frame: bytes | memoryview) -> None:
        self.feed.on_frame(self, frame, binary=True)

    def subscribe(self, subscribe: bool, states: list[Series]) -> None:
        if not states or not self.authenticated:
            return
        traded = [st for st in states if st.price == "trade"]
        syms = [st.instrument.symbol for st in traded]
        daily = [st.instrument.symbol for st in traded if collects(st, alpaca.day_of(st.instrument.symbol))]
        quoted = list(dict.fromkeys(st.instrument.symbol for st in states if st.price != "trade"))
        channels = {"trades": syms, "quotes": quoted, "bars": syms, "updatedBars": syms, "dailyBars": daily}
        self.send(alpaca.action("subscribe" if subscribe else "unsubscribe", channels, self.msgpack))


def collects(st: Series, tf: str) -> bool:
    """Whether ``st`` makes candles of ``tf`` (from its trades or rolled up)."""
    return tf in st.builder.timeframes or (st.rollup is not None and tf in st.rollup.timeframes)


class _AlpacaBase(SharedLimits):
    """What both modes share: what the venue says of itself, and its REST history."""

    history: AlpacaHistory
    clock: VenueClock

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s
    history_settle_ms = VENUE.history_settle_ms

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        now = now_ms if now_ms is not None else self.clock.now_ms()
        return await self.history.candles(st.instrument.symbol, timeframe, start_ms, end_ms, now, st.price)


class AlpacaFeed(_AlpacaBase):
    """Streams Alpaca trades and bars into the series' builders; see the module docstring."""

    def __init__(
        self,
        vs: AlpacaSettings,
        key: str,
        secret: str,
        *,
        stale_after_s: float,
        connect_budget: int,
        on_trade: TradeSink,
    ) -> None:
        self.rest_url = vs.rest_url or alpaca.DEFAULT_REST_URL
        self.ws_url = (vs.ws_url or alpaca.DEFAULT_WS_URL).rstrip("/")
        self.key = key
        self.secret = secret
        self.msgpack = vs.encoding == "msgpack"
        self.refused_retry_s = vs.refused_retry_s
        self.clock = VenueClock()
        self.history = AlpacaHistory(self.rest_url, key, secret, requests_per_min=vs.requests_per_min, feed=vs.feed)
        self.decoder = alpaca.StreamDecoder()
        self.states: list[Series] = []
        self.by_symbol: dict[str, Series] = {}  # the trades' series
        self.quotes = QuoteRouter()  # BID and ASK series
        self._on_trade = on_trade
        self.streams = {
            "stocks": _Stream(
                self, "stocks", self.ws_url + alpaca.stock_stream_path(vs.feed), stale_after_s, connect_budget
            ),
            "crypto": _Stream(self, "crypto", self.ws_url + alpaca.CRYPTO_STREAM_PATH, stale_after_s, connect_budget),
        }
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id: dict[str, int] = {}
        self._seen_ids: dict[str, tuple[set[int], deque[int]]] = {}
        self.out_of_order = 0
        self.duplicates = 0
        self.bars = 0
        self.updated_bars = 0
        self.daily_bars = 0
        self.bar_mismatches = 0
        self.venue_errors: Counter[str] = Counter()
        self._skips = SkipLog(log, "messages")
        self._ts_low = 0
        self._ts_high = 2**62

    def __repr__(self) -> str:  # it holds the key
        return f"<AlpacaFeed {self.ws_url} {len(self.states)} instruments>"

    @property
    def errors(self) -> Counter[str]:
        return self.decoder.errors

    def _stream_of(self, symbol: str) -> _Stream:
        return self.streams["crypto" if alpaca.is_crypto(symbol) else "stocks"]

    def add(self, st: Series) -> None:
        sym = st.instrument.symbol
        self.states.append(st)
        self._stream_of(sym).states.append(st)
        if st.price != "trade":
            self.quotes.add(st)
            return
        self.by_symbol[sym] = st
        self._next_id.setdefault(sym, 1)
        self._seen_ids.setdefault(sym, (set(), deque()))

    # --- connection -----------------------------------------------------------------------------

    async def check(self) -> None:
        """Read the venue's clock and check the key and every symbol with one bars request per kind."""
        await check_symbols(self.history, self.states, self.clock)
        self._update_skew_bounds()

    def start(self) -> None:
        for s in self.streams.values():
            if s.states:
                self._tasks.append(asyncio.create_task(s.ws.run(), name=f"alpaca-{s.kind}-ws"))

    def connected(self) -> bool:
        return all(s.ws.connected.is_set() and s.authenticated for s in self.streams.values() if s.states)

    def reconnected(self, s: _Stream) -> None:
        # Whatever traded while we were away is unknown: skip an id so each symbol's next trade
        # shows the builder a hole, and the candles around it are repaired.
        for st in s.states:
            if st.price == "trade":
                self._next_id[st.instrument.symbol] += 1
        self.quotes.gap({st.instrument.symbol for st in s.states if st.price != "trade"})

    def control(self, subscribe: bool, states: list[Series]) -> None:
        for s in self.streams.values():
            s.subscribe(subscribe, [st for st in states if st in s.states])

    def activate(self, st: Series, active: bool) -> None:
        if st.price != "trade":
            return  # the quote router follows ``st.active``
        if active:
            self.by_symbol[st.instrument.symbol] = st
        else:
            self.by_symbol.pop(st.instrument.symbol, None)

    def _update_skew_bounds(self) -> None:
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self._update_skew_bounds()

    async def stop(self) -> None:
        for s in self.streams.values():
            await s.ws.close()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.history.close()

    # --- frames ---------------------------------------------------------------------------------

    def on_frame(self, s: _Stream, frame: bytes | memoryview, binary: bool = False) -> None:
        events = self.decoder.decode(frame, binary)
        if events is None:
            self._skips.report(self.decoder.errors, self.decoder.last_error)
            return
        for ev in events:
            te = type(ev)
            if te is Trade:
                assert isinstance(ev, Trade)
                self._trade(ev)
            elif te is Quote:
                assert isinstance(ev, Quote)
                self._quote(ev)
            elif te is alpaca.BarEvent:
                assert isinstance(ev, alpaca.BarEvent)
                self._bar(ev)
            else:
                assert isinstance(ev, alpaca.Control)
                self._control(s, ev)
        if self.decoder.errors:
            self._skips.report(self.decoder.errors, self.decoder.last_error)

    def _trade(self, t: Trade) -> None:
        st = self.by_symbol.get(t.symbol)
        if st is None or not st.active:
            return
        if not self._ts_low <= t.time_ms <= self._ts_high:
            self.decoder.errors["impossible_value"] += 1
            self.decoder.last_error = f"trade time far from the venue's clock: {t}"
            return
        seen, order = self._seen_ids[t.symbol]
        if t.trade_id in seen:
            self.duplicates += 1
            return
        seen.add(t.trade_id)
        order.append(t.trade_id)
        if len(order) > RECENT_IDS:
            seen.discard(order.popleft())
        if t.time_ms < st.last_trade_ms:
            # A late trade (or a reordered one): candles already built from later trades cannot
            # take it in time order. They stay provisional like every candle the stream builds, and
            # the reconciliation with the settled bars (or the minute's updated bar) corrects them.
            self.out_of_order += 1
            return
        tid = self._next_id[t.symbol]
        self._next_id[t.symbol] = tid + 1
        trade = Trade(t.symbol, tid, t.time_ms, t.price, t.qty, t.buyer_maker)
        st.on_trade(trade)
        if st.publish_trades:
            self._on_trade(st, trade)

    def _quote(self, q: Quote) -> None:
        if not self._ts_low <= q.time_ms <= self._ts_high:
            self.decoder.errors["impossible_value"] += 1
            self.decoder.last_error = f"quote time far from the venue's clock: {q}"
            return
        self.quotes.quote(q.symbol, q.time_ms, q.bid, q.ask)

    def _bar(self, b: alpaca.BarEvent) -> None:
        st = self.by_symbol.get(b.symbol)
        if st is None or not st.active:
            return
        if b.kind == "d":
            self._daily(st, b.candle)
            return
        c = b.candle
        self.clock.observe(c.open_time + 60_000)  # a minute bar goes out at its end: the venue's time
        if "1m" not in st.builder.timeframes:
            return
        if b.kind == "u":
            # The venue's corrected minute, sent once it has settled: its own closed candle.
            self.updated_bars += 1
            st.on_venue_candle("1m", c, -1)
        elif b.kind == "b":
            self.bars += 1
            ours = self._built("1m", st, c.open_time)
            if ours is not None and not ours.final and ours.trades != c.trades and st.trades:
                # The venue counted other trades than we saw in this minute: some were lost.
                self.bar_mismatches += 1
                st.on_loss(c.open_time, c.open_time + 59_999)

    def _daily(self, st: Series, c: Candle) -> None:
        """The day's running bar: checked against ours once the day is over (it then holds every
        trade of the day but late ones, as ours does)."""
        tf = alpaca.day_of(st.instrument.symbol)
        if not collects(st, tf):
            return
        self.daily_bars += 1
        grid = timeframe(tf)
        if not grid.aligned(c.open_time) or grid.next(c.open_time) > self.clock.now_ms():
            return
        ours = self._built(tf, st, c.open_time)
        if ours is not None and not ours.final and ours.trades != c.trades and st.trades:
            self.bar_mismatches += 1
            st.on_loss(c.open_time, grid.next(c.open_time) - 1)

    @staticmethod
    def _built(tf: str, st: Series, open_time: int) -> Candle | None:
        cur = st.open_candle(tf)
        if cur is not None and cur.open_time == open_time:
            return cur
        return st.provisional.get(tf, {}).get(open_time)

    def _control(self, s: _Stream, ev: alpaca.Control) -> None:
        if ev.kind == "success" and ev.msg == "authenticated":
            s.authenticated = True
            s.refusal = None
            s.subscribe(True, [st for st in s.states if st.active])
        elif ev.kind == "subscription":
            s.subs = ev.subs or {}
        elif ev.kind == "error":
            self._error(s, ev)

    def _error(self, s: _Stream, ev: alpaca.Control) -> None:
        kind = f"{ev.code} {alpaca.ERRORS.get(ev.code, ev.msg)}"
        first = kind not in self.venue_errors
        self.venue_errors[kind] += 1
        if ev.code == 406:
            line = (
                f"alpaca refused the {s.kind} stream: connection limit exceeded (406); another program streams "
                f"with this key (the plan allows one connection); stop it or use another key"
            )
        elif ev.code in (401, 402, 404):
            line = f"alpaca refused the {s.kind} stream: {ev.msg} ({ev.code}); check {KEY_ENV} and {SECRET_ENV}"
        elif ev.code in (405, 409, 410):
            line = (
                f"alpaca refused the {s.kind} subscription: {ev.msg} ({ev.code}); "
                f"check the feed and the plan's symbol limit"
            )
        else:
            line = f"alpaca {s.kind} stream error: {ev.msg} ({ev.code})"
        if ev.code in alpaca.FATAL_ERRORS:
            s.refusal = line
            s.ws.retry_after_s = self.refused_retry_s
            log.error("%s; retrying in %.0f s", line, self.refused_retry_s)
            s.ws.drop(f"refused ({ev.code})")
        elif first:
            log.warning("%s; counted in status", line)

    # --- visibility -----------------------------------------------------------------------------

    def connect_limits(self) -> list[Shareable]:
        return [s.ws.budget for s in self.streams.values()]  # one stream per kind, each with its budget

    def report(self) -> FeedStatus:
        used = [s for s in self.streams.values() if s.states]
        refused = {s.kind: s.refusal for s in used if s.refusal}
        return FeedStatus(
            connected=self.connected(),
            connections=sum(s.ws.connected.is_set() for s in used),
            connects=sum(s.ws.connects for s in used),
            reconnects=sum(max(0, s.ws.connects - 1) for s in used),
            rotations=0,
            stale_drops=sum(s.ws.stale_drops for s in used),
            connect_budget_waits=sum(s.ws.budget.waits for s in used),
            frames=sum(s.ws.frames for s in used),
            skipped_frames=dict(self.decoder.errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
            out_of_order=self.out_of_order + self.quotes.out_of_order,
            refused=self.quotes.refused,
            venue_errors=dict(self.venue_errors) or None,
            refused_symbols=refused or None,
            venue_corrections=self.updated_bars,
        )

    def status(self) -> dict[str, Any]:
        d = self.report().as_dict()
        d["bar_mismatches"] = self.bar_mismatches
        d["daily_bars"] = self.daily_bars
        d["duplicates"] = self.duplicates
        d["repeated_quotes"] = self.quotes.repeated
        return d


async def check_symbols(history: AlpacaHistory, states: list[Series], clock: VenueClock) -> None:
    """One bars request per kind (stocks, crypto) over the last quarter hour: proves the address and
    the key, sets the venue's clock from the answer's Date, and finds symbols the venue does not
    know (they answer no bars and, for stocks, a 400/422 naming them)."""
    kinds: dict[bool, dict[str, None]] = {}  # a symbol once, whatever its price sides
    for st in states:
        kinds.setdefault(alpaca.is_crypto(st.instrument.symbol), {})[st.instrument.symbol] = None
    for syms in map(list, kinds.values()):
        now = history.last_date_ms or clock.now_ms()
        try:
            await history.bars(syms, "1m", now - 15 * 60_000, None, now)
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check rest_url and that Alpaca (or its replica) is running") from None
        except VenueError as exc:
            if exc.status in (401, 403):
                raise BadInput(f"Alpaca refused the key ({exc.status}); check {KEY_ENV} and {SECRET_ENV}") from None
            text = alpaca.decode_error(exc.body) or str(exc)
            raise BadInput(
                f"Alpaca refused the bars request ({exc.status}: {text}); check the symbols and rest_url"
            ) from None
        if history.last_date_ms is not None:
            clock.observe(history.last_date_ms)


def _per_batch(timeframes: list[str], every_s: float) -> float:
    """Requests per minute one batch of symbols costs: the shortest timeframe every poll, each
    longer one at most once per its length."""
    tfs = sorted(timeframes, key=timeframe_ms)
    if not tfs:
        return 0.0
    return 60.0 / every_s + sum(60.0 / max(every_s, timeframe_ms(tf) / 1000) for tf in tfs[1:])


def poll_capacity(timeframes: list[str], every_s: float, budget_per_min: float) -> int:
    """How many instruments of one kind polling affords within ``budget_per_min`` (a batch of
    :data:`POLL_SYMBOLS_PER_CALL` symbols takes one request per timeframe polled)."""
    per_batch = _per_batch(timeframes, every_s)
    return int(budget_per_min // per_batch) * POLL_SYMBOLS_PER_CALL if per_batch > 0 else 0


def poll_cost(n_symbols: list[int], timeframes: list[str], every_s: float) -> float:
    """Requests per minute polling ``n_symbols`` (a count per kind) costs."""
    return sum(math.ceil(n / POLL_SYMBOLS_PER_CALL) for n in n_symbols if n) * _per_batch(timeframes, every_s)


class AlpacaPollFeed(_AlpacaBase):
    """Polls the latest settled bars over REST instead of streaming; see the module docstring."""

    def __init__(self, vs: AlpacaSettings, key: str, secret: str) -> None:
        self.rest_url = vs.rest_url or alpaca.DEFAULT_REST_URL
        self.every_s = vs.poll_every_s
        self.share = vs.poll_share
        self.requests_per_min = vs.requests_per_min
        self.clock = VenueClock()
        self.history = AlpacaHistory(self.rest_url, key, secret, requests_per_min=vs.requests_per_min, feed=vs.feed)
        self.states: list[Series] = []
        self._errors: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None
        self._next: dict[tuple[str, str], int] = {}  # (symbol, timeframe) -> open time of the next bar wanted
        self.polls = 0
        self.poll_requests = 0
        self.bars = 0
        self.failed_polls = 0
        self._ok = False

    def __repr__(self) -> str:
        return f"<AlpacaPollFeed {self.rest_url} {len(self.states)} instruments>"

    @property
    def errors(self) -> Counter[str]:
        return self._errors

    def add(self, st: Series) -> None:
        sym = st.instrument.symbol
        if st.price != "trade":
            raise BadInput(
                f"Alpaca's poll mode reads bars, not quotes, so it makes no {st.price} candles of {sym};"
                " leave bid and ask out of prices, or stream"
            )
        other = [tf for tf in st.builder.timeframes if not alpaca.serves(sym, tf)]
        if other:
            own = [tf for tf in alpaca.TIMEFRAME if alpaca.serves(sym, tf)]
            raise BadInput(
                f"Alpaca's poll mode reads bars of {sym} in {' '.join(own)} only, not {' '.join(other)};"
                " leave those out, or stream (which builds any timeframe from the trades)"
            )
        self.states.append(st)

    def _groups(self) -> list[list[Series]]:
        """The series of one kind (stocks, crypto), in batches of one request's symbols."""
        out: list[list[Series]] = []
        for crypto in (False, True):
            kind = [st for st in self.states if alpaca.is_crypto(st.instrument.symbol) == crypto]
            out += [kind[i : i + POLL_SYMBOLS_PER_CALL] for i in range(0, len(kind), POLL_SYMBOLS_PER_CALL)]
        return out

    async def check(self) -> None:
        tfs = self.states[0].builder.timeframes if self.states else []
        budget = self.requests_per_min * self.share
        afford = poll_capacity(tfs, self.every_s, budget)
        counts = [sum(not alpaca.is_crypto(s.instrument.symbol) for s in self.states),
                  sum(alpaca.is_crypto(s.instrument.symbol) for s in self.states)]  # fmt: skip
        cost = poll_cost(counts, tfs, self.every_s)
        log.info(
            "alpaca poll mode: every %.0f s, %s: %.1f requests/min of %.0f (%.0f %% of %d/min); affords %d "
            "instruments per kind",
            self.every_s,
            " ".join(tfs),
            cost,
            budget,
            self.share * 100,
            self.requests_per_min,
            afford,
        )
        if cost > budget:
            raise BadInput(
                f"alpaca poll mode: {len(self.states)} instruments at {self.every_s:.0f} s cost "
                f"{cost:.0f} requests/min, "
                f"over the {budget:.0f} allowed ({self.share:.0%} of {self.requests_per_min}); poll less often "
                f"(poll_every_s), collect fewer instruments or timeframes, or raise poll_share"
            )
        await check_symbols(self.history, self.states, self.clock)

    def start(self) -> None:
        for st in self.states:
            for tf in st.builder.timeframes:
                nxt = st.bootstrap_marks.get(tf)
                if nxt is None:
                    now = self.clock.now_ms()
                    nxt = timeframe(tf).start(now)
                self._next[(st.instrument.symbol, tf)] = nxt
        self._task = asyncio.create_task(self._run(), name="alpaca-poll")

    def connected(self) -> bool:
        return self._ok

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.poll()
                self._ok = True
            except (VenueError, VenueUnreachable) as exc:
                self._ok = False
                self.failed_polls += 1
                log.warning("alpaca poll failed (%s); next poll in %.0f s", exc, self.every_s)
            await asyncio.sleep(max(0.0, self.every_s - (loop.time() - started)))

    async def poll(self) -> None:
        """One poll: per batch, one request for the latest bars of the shortest timeframe (its answer
        also reads the venue's clock), and one per longer timeframe with a bar settled since."""
        self.polls += 1
        for batch in self._groups():
            tfs = sorted(batch[0].builder.timeframes, key=timeframe_ms)
            for k, tf in enumerate(tfs):
                grid = timeframe(tf)
                now = self.clock.now_ms()
                unsettled = grid.start(now - alpaca.SETTLE_MS)  # open time of the oldest bar not settled yet
                want = [
                    st for st in batch if st.active and (k == 0 or self._next[(st.instrument.symbol, tf)] < unsettled)
                ]
                if not want:
                    continue
                start = min(self._next[(st.instrument.symbol, tf)] for st in want)
                self.poll_requests += 1
                got = await self.history.bars([st.instrument.symbol for st in want], tf, start, None, now)
                if self.history.last_date_ms is not None:
                    self.clock.observe(self.history.last_date_ms)
                for st in want:
                    sym = st.instrument.symbol
                    for c in got.get(sym, []):
                        if c.closed and c.open_time >= self._next[(sym, tf)]:
                            st.on_venue_candle(tf, c, -1)
                            self.bars += 1
                            self._next[(sym, tf)] = grid.next(c.open_time)
                    # Settled and answered: a bar absent up to here is a quiet interval.
                    self._next[(sym, tf)] = max(self._next[(sym, tf)], unsettled)
                    # Everything before it is the venue's own final bars: that is how far the store
                    # is vouched for (a series without trades is marked where its bootstrap got to),
                    # so a restart resumes here instead of fetching again from the first start.
                    st.bootstrap_marks[tf] = max(st.bootstrap_marks.get(tf, 0), self._next[(sym, tf)])

    async def tick(self, mono: float) -> None:
        return None

    def activate(self, st: Series, active: bool) -> None:
        return None  # polling follows ``st.active``

    def control(self, subscribe: bool, states: list[Series]) -> None:
        return None

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.history.close()

    def report(self) -> FeedStatus:
        return FeedStatus(
            connected=self._ok,
            connections=0,
            connects=self.polls,
            reconnects=0,
            rotations=0,
            stale_drops=0,
            connect_budget_waits=0,
            frames=self.poll_requests,
            skipped_frames=dict(self._errors),
            rest_requests=self.history.http.requests,
            rest_throttled=self.history.http.throttled,
            rest_server_errors=self.history.http.server_errors,
            rest_limiter_waits=self.history.limiter.waits,
        )

    def status(self) -> dict[str, Any]:
        d = self.report().as_dict()
        d.update(mode="poll", polls=self.polls, poll_requests=self.poll_requests, bars=self.bars,
                 failed_polls=self.failed_polls)  # fmt: skip
        return d
