"""The ccxt venue's live side: one ccxt.pro client per exchange of a run (kept as instruments come
and go), one task per watch loop (``watch_trades_for_symbols`` for all of an exchange's symbols
where it has the batch form, started anew when they change, else ``watch_trades`` per symbol),
history from ``fetch_ohlcv`` paged by ``since`` under ccxt's own rate limiter.

ccxt.pro hides losses, so the feed assumes them (PROTOCOLS-wave2.md 7-8): every exception of a
watch, every new WebSocket client (a reconnect never backfills), a watch silent for too long (it is
dropped), every batch that does not follow the series' last trade (by id where the exchange's ids
are consecutive, by time otherwise), and a batch as long as ccxt's trade cache (overwritten) make
the span a hole, repaired from ``fetch_ohlcv`` (``Series.on_loss``). A trade of another symbol than
the ones watched (ccxt's multi-symbol caches have mixed them up) is routed by its own symbol, or
counted. Every candle the stream builds stays provisional until reconciled with ``fetch_ohlcv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from deltafeed.candles.fromtrades import build_candles
from deltafeed.clock import VenueClock
from deltafeed.model import TIMEFRAMES, BadInput, Candle, Trade
from deltafeed.net.http import VenueError, VenueUnreachable
from deltafeed.venues.base import FeedStatus, Shareable, SharedLimits, SkipLog, TradeSink
from deltafeed.venues.ccxt import INSTALL_HINT, VENUE, CcxtSettings
from deltafeed.venues.ccxt.bridge import (
    HISTORY_ROWS,
    REQUEST_WEIGHTS,
    SEQUENTIAL_IDS,
    TRADE_HISTORY,
    Continuity,
    Market,
    base_timeframe,
    candles_from_rows,
    deep_merge,
    exchange_urls,
    resolve_symbol,
    roll_up,
    trade_from,
)
from deltafeed.venues.checks import near_matches, unknown_symbols_message

if TYPE_CHECKING:
    from deltafeed.series import Series

log = logging.getLogger("deltafeed.ccxt")

MAX_SKEW_MS = 15 * 60_000  # a trade time further than this from the venue's clock is impossible
BACKOFF_S = (0.2, 5.0)  # first and longest wait before a failed watch is called again
REST_TRIES = 5  # attempts of one fetch_ohlcv page before the engine is told it failed
DEFAULT_PAGE = 500  # rows per fetch_ohlcv call when ccxt's features do not say
TRADES_PAGE = 1000  # trades per fetch_trades call (Kraken's most)
CLOCK_READ_EVERY_S = 5.0  # at most this often, the venue's time is read again
#: Seconds of observations before the venue clock's pace is measured (the clock's default is 10 s).
#: Through ccxt a bootstrap at a slow exchange's pace (Kraken: 1.2 s a call) reads the clock only
#: from its first seconds of history rows: with the pace not measured by the end of it, a replica
#: running its market fast left the estimate so far behind that every first trade was refused.
CLOCK_BASELINE_S = 3.0
#: Trades in a row refused as far ahead of our estimate of the venue's clock, within MAX_SKEW_MS of
#: each other, that move the estimate to them: it lags (a bootstrap at a slow exchange's pace reads
#: no clock from history pages bounded by ``until``), the trades are right. One outlier never does.
AHEAD_CONFIRM = 10


def import_ccxt_pro() -> Any:
    """``ccxt.pro``, or :class:`BadInput` naming the install command."""
    try:
        import ccxt.pro
    except ImportError:
        raise BadInput(f"ccxt: instruments need the ccxt package; install it with {INSTALL_HINT}") from None
    return ccxt.pro


def streaming_exchanges() -> list[tuple[str, list[str]]]:
    """(exchange id, timeframes) of every exchange of the installed ccxt.pro whose ``has`` says
    ``watchTrades`` and ``fetchOHLCV``; offline: the classes are instantiated, nothing is asked."""
    pro = import_ccxt_pro()
    out = []
    for ex_id in sorted(pro.exchanges):
        try:
            ex = getattr(pro, ex_id)()
        except Exception:  # a class that needs credentials or a network to construct is not offered
            continue
        if ex.has.get("watchTrades") is True and ex.has.get("fetchOHLCV") is True:
            out.append((ex_id, [tf for tf in (ex.timeframes or {}) if isinstance(tf, str)]))
    return out


def _page_limit(ex: Any, market: dict[str, Any]) -> int:
    """Rows per fetch_ohlcv call for ``market``: ccxt's ``features`` for its type, else a default."""

    def find(node: Any) -> int | None:
        if isinstance(node, dict):
            got = node.get("fetchOHLCV")
            if isinstance(got, dict) and isinstance(got.get("limit"), int):
                return int(got["limit"])
            for v in node.values():
                n = find(v)
                if n is not None:
                    return n
        return None

    features = getattr(ex, "features", None) or {}
    n = find(features.get(market.get("type") or "spot"))
    return max(1, min(n or DEFAULT_PAGE, 1000))


def _takes_until(client: Any) -> bool:
    """Whether the exchange's ``fetch_ohlcv`` reads ccxt's unified ``until`` parameter (from its
    source: ccxt declares it per method only in docstrings). Without it, an ``until`` could reach
    the exchange's API as an unknown query parameter."""
    import inspect

    try:
        return "until" in inspect.getsource(type(client).fetch_ohlcv)
    except (OSError, TypeError):
        return False


class _ClientPace:
    """ccxt's own REST limiter of one client (``enableRateLimit``: a token bucket refilled at
    ``throttler.config["refillRate"]``, read on every request) kept to a fraction of its rate.
    ccxt 4.5.90 keeps it in ``throttler`` (``throttle`` is the method that awaits it); 4.4 had it
    in ``throttle``, and looking only there left every share silently ignored."""

    def __init__(self, client: Any) -> None:
        limiter = getattr(client, "throttler", None) or getattr(client, "throttle", None)
        self.config = getattr(limiter, "config", None)
        self.full = self.config.get("refillRate") if isinstance(self.config, dict) else None

    def share(self, fraction: float) -> None:
        if self.config is not None and isinstance(self.full, int | float) and self.full > 0:
            self.config["refillRate"] = self.full * fraction


class _Exchange:
    """One exchange of a run: its ccxt.pro client, its series by unified symbol, what they remember."""

    def __init__(self, ex_id: str, sequential: bool, history_rows: int | None, trade_history: bool) -> None:
        self.id = ex_id
        self.history_rows = history_rows  # the newest OHLCV rows it serves, when capped
        self.trade_history = trade_history  # older candles are built from fetch_trades
        self.capped: set[str] = set()  # timeframes whose cap was reported (once each)
        self.history_tfs: set[str] = set()  # timeframes asked for: their history depth is in the status
        self.client: Any = None
        self.pace: _ClientPace | None = None  # ccxt's own REST limiter of the client, as a shareable limit
        self.series: dict[str, Series] = {}  # unified symbol (as ccxt spells it) -> series
        self.wanted: dict[str, Series] = {}  # as the instrument spells it, before check()
        self.cont: dict[str, Continuity] = {}
        self.sequential = sequential
        self.limits: dict[str, int] = {}  # rows per fetch_ohlcv call, by unified symbol
        self.timeframes: list[str] = []
        # Whether its fetch_ohlcv takes ccxt's unified ``until``: then every page names its end
        # (some size a request without one by the local clock, not the venue's).
        self.until = False
        self.tasks: dict[str, asyncio.Task[None]] = {}  # watch loops by their symbols, comma-joined
        self.clients: dict[str, Any] = {}  # the WebSocket clients seen, by URL (see CcxtFeed._new_clients)
        self.live: dict[str, bool] = {}  # per watch loop: took a batch since its last failure
        self.last_batch = 0.0  # monotonic time of the exchange's last batch (or of its start)
        self.last_seen: dict[str, float] = {}  # per symbol: monotonic time it last took a new trade
        self.restart: asyncio.Task[None] | None = None
        self.clock_read_at = 0.0
        self.aux: set[asyncio.Task[None]] = set()  # clock reads and unsubscribes under way
        self.unwatching: dict[str, asyncio.Task[None]] = {}  # unsubscribes under way, by symbol


class CcxtFeed(SharedLimits):
    """Streams trades of its ``ccxt:`` instruments through ccxt.pro; see the module docstring."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced

    def __init__(self, vs: CcxtSettings, *, stale_after_s: float, on_trade: TradeSink) -> None:
        if vs.watch not in ("single", "batch"):
            raise BadInput(f"[venues.ccxt] watch = {vs.watch!r}; use single or batch")
        if vs.batch_symbols < 1:
            raise BadInput("[venues.ccxt] batch_symbols is the most symbols per batch watch, at least 1, e.g. 200")
        if vs.trades_limit < 1000:
            raise BadInput("[venues.ccxt] trades_limit must be at least 1000 (ccxt's own default drops bursts)")
        if any(not isinstance(n, int) or n < 2 for n in vs.history_rows.values()):
            raise BadInput("[venues.ccxt] history_rows are rows per exchange, at least 2, e.g. { kraken = 720 }")
        if vs.reconcile_every <= 0:
            raise BadInput("[venues.ccxt] reconcile_every must be more than 0 seconds, e.g. 20")
        self.vs = vs
        self.reconcile_every_s = float(vs.reconcile_every)
        self.clock = VenueClock(baseline_s=CLOCK_BASELINE_S)
        self._on_trade = on_trade
        # A watch without a batch for this long is dropped and called again (a hole): ccxt's own
        # keep-alive takes minutes to notice a stalled connection.
        self.stale_s = max(3.0, 2 * stale_after_s)
        # One symbol silent this long while others of its exchange trade: its subscription is
        # presumed lost (measured against the Binance replica after reconnects) and renewed.
        self.silence_s = max(self.stale_s, float(vs.symbol_silence))
        self.exchanges: dict[str, _Exchange] = {}
        self.states: list[Series] = []
        self.decode_errors: Counter[str] = Counter()
        self.watch_errors: Counter[str] = Counter()
        self.batches = 0
        self.connects = 0
        self.reconnects = 0
        self.stale_drops = 0
        self.foreign = 0  # trades of a symbol that was not watched on that loop
        self.rest_requests = 0
        self.rest_throttled = 0
        self.rest_errors = 0
        self._skips = SkipLog(log, "trades")
        self._ts_low = 0
        self._ts_high = 2**62
        self._ahead: dict[str, int] = {}  # trades in a row refused as far ahead: symbol -> the newest one
        self._ahead_n = 0
        self._ahead_low = 0  # the oldest of them
        self._started = False

    @property
    def errors(self) -> Counter[str]:
        return self.decode_errors

    def add(self, st: Series) -> None:
        m = Market.parse(st.instrument.symbol)
        ex = self.exchanges.get(m.exchange)
        if ex is None:
            seq = m.exchange in SEQUENTIAL_IDS or m.exchange in {s.lower() for s in self.vs.sequential_ids}
            rows = (HISTORY_ROWS | {k.lower(): v for k, v in self.vs.history_rows.items()}).get(m.exchange)
            trades = m.exchange in TRADE_HISTORY or m.exchange in {s.lower() for s in self.vs.trade_history}
            ex = self.exchanges[m.exchange] = _Exchange(m.exchange, seq, rows, trades)
        ex.wanted[m.symbol] = st
        self.states.append(st)

    def remove(self, st: Series) -> None:
        """Forget a series the engine dropped: no longer routed, checked nor watched (its watch loop
        stops; a batch watch starts anew without it)."""
        ex, sym = self._series_of(st)
        self.states = [s for s in self.states if s is not st]
        ex.wanted = {k: s for k, s in ex.wanted.items() if s is not st}
        if ex.series.get(sym) is st:
            for known in (ex.series, ex.cont, ex.limits, ex.last_seen):
                known.pop(sym, None)
        if self._started and ex.client is not None:
            self._start_loops(ex)

    def page_span_ms(self, timeframe: str) -> int:
        return DEFAULT_PAGE * TIMEFRAMES[timeframe]

    # --- start-up -------------------------------------------------------------------------------

    def _client(self, ex_id: str) -> Any:
        pro = import_ccxt_pro()
        cls = getattr(pro, ex_id, None) if ex_id in pro.exchanges else None
        if cls is None:
            near = near_matches(ex_id, list(pro.exchanges))
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise BadInput(
                f"ccxt has no streaming exchange {ex_id!r}{hint}; `deltafeed venues ccxt` lists those it has"
            )
        options = deep_merge({"tradesLimit": self.vs.trades_limit}, self.vs.options.get(ex_id, {}))
        config = {"enableRateLimit": True, **self.vs.config.get(ex_id, {}), "options": options}
        client = cls(config)
        client.urls = exchange_urls(ex_id, client.urls, self.vs.urls.get(ex_id))
        weigh = REQUEST_WEIGHTS.get(ex_id)
        if weigh is not None:  # ccxt's limiter charges each request the exchange's own weight
            table_cost = client.calculate_rate_limiter_cost

            def cost(api: Any, method: Any, path: Any, params: Any, config: Any = None) -> Any:
                weight = weigh(params)
                return weight if weight is not None else table_cost(api, method, path, params, config or {})

            client.calculate_rate_limiter_cost = cost
        # A frame ccxt cannot decode (malformed JSON, a number beyond float range) or whose handler
        # chokes on it would end the connection's receive loop (the exception goes to the event
        # loop's handler, the stream stalls until the watchdog renews it): each WebSocket client
        # ccxt makes decodes and handles its frames under a guard that counts such a frame and goes
        # on with the next.
        make_ws = client.client

        def ws_client(url: str) -> Any:
            ws = make_ws(url)
            decode = getattr(ws, "handle_text_or_binary_message", None)
            if decode is not None and not getattr(ws, "deltafeed_guarded", False):

                def guarded(data: Any) -> None:
                    try:
                        decode(data)
                    except Exception as exc:
                        self.decode_errors["unhandled_frame"] += 1
                        self._skips.report(self.decode_errors, f"{type(exc).__name__}: {str(data)[:120]}")

                ws.handle_text_or_binary_message = guarded
                ws.deltafeed_guarded = True
            return ws

        client.client = ws_client
        return client

    async def check(self) -> None:
        """Build each exchange's client, load its markets and check what the run asks of it; again
        for each instrument added to a running engine, where only exchanges with symbols not checked
        yet are, on the client their watch loops run on."""
        unknown_urls = set(self.vs.urls) - set(self.exchanges)
        if unknown_urls and self.exchanges and not self._started:
            log.info("[venues.ccxt] urls of exchanges this run does not use: %s", ", ".join(sorted(unknown_urls)))
        for ex in self.exchanges.values():
            if ex.client is None:
                ex.client = self._client(ex.id)
                ex.pace = _ClientPace(ex.client)
                ex.pace.share(self.shares[0])  # made now: within the part of the budget kept so far
            elif {id(st) for st in ex.wanted.values()} <= {id(st) for st in ex.series.values()}:
                continue
            await self._check(ex)

    async def _check(self, ex: _Exchange) -> None:
        c = ex.client
        missing = [f for f in ("watchTrades", "fetchOHLCV") if c.has.get(f) is not True]
        if missing:
            raise BadInput(
                f"ccxt's {ex.id} has no {' and no '.join(missing)}; pick an exchange `deltafeed venues ccxt` lists"
            )
        where = self._where(ex)
        markets: Any = None
        failure: Exception | None = None
        for attempt in range(REST_TRIES + 2):  # up to half a minute: a rate limit's window may have to pass
            try:
                markets = await c.load_markets()
                break
            except Exception as exc:  # a passing failure (a 5xx, a timeout) is tried again
                failure = exc
                if attempt + 1 < REST_TRIES + 2:
                    await asyncio.sleep(0.5 * 2**attempt)
        if markets is None:
            why = f"{type(failure).__name__}: {str(failure)[:160]}"
            raise BadInput(
                f"ccxt could not load {ex.id}'s markets from {where} ({why}); "
                f"check [venues.ccxt] urls.{ex.id} and that the exchange (or replica) is running"
            ) from None
        unknown = []
        for wanted, st in ex.wanted.items():
            sym = resolve_symbol(wanted, markets)
            if sym is None:
                unknown.append(wanted)
                continue
            ex.series[sym] = st
            if sym not in ex.cont:  # (a series streaming already keeps what it remembers)
                ex.cont[sym] = Continuity(ex.sequential)
            ex.limits[sym] = _page_limit(c, markets[sym])
        if unknown:
            raise BadInput(
                unknown_symbols_message(f"ccxt {ex.id}", where, unknown, list(markets)).replace(
                    "check --symbols", "use ccxt's unified symbols, e.g. ccxt:binance:BTC/USDT"
                )
            )
        ex.timeframes = [tf for tf in (c.timeframes or {}) if tf in TIMEFRAMES]
        ex.until = _takes_until(c)
        for st in ex.series.values():
            lacking = [tf for tf in st.builder.timeframes if base_timeframe(tf, ex.timeframes) is None]
            if lacking:
                raise BadInput(
                    f"ccxt's {ex.id} cannot serve {', '.join(lacking)} candles (it offers "
                    f"{' '.join(ex.timeframes) or 'none deltafeed knows'}); choose --timeframes among those "
                    "or ones they divide"
                )
        await self._read_clock(ex, next(iter(ex.series)))

    def _where(self, ex: _Exchange) -> str:
        api = (ex.client.urls or {}).get("api")
        found: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, str) and node.startswith("http") and not found:
                found.append(node)
            elif isinstance(node, dict):
                for v in node.values():
                    walk(v)

        if isinstance(api, dict) and isinstance(api.get("public"), str):
            return str(api["public"])
        walk(api)
        return found[0] if found else ex.id

    async def _read_clock(self, ex: _Exchange, symbol: str, hint_ms: int = 0) -> None:
        """The venue's time: its newest OHLCV row (every exchange here has fetchOHLCV; the row is at
        most one interval old), paging forward from where a default request stops (some exchanges
        size it by the local clock, not theirs), and ``fetch_time`` where it has one; the later of
        the two. ``hint_ms``, a trade time refused as far ahead, is where the rows are looked for."""
        c = ex.client
        tf = "1m" if "1m" in ex.timeframes else ex.timeframes[0]
        tf_ms = TIMEFRAMES[tf]
        limit = ex.limits.get(symbol, DEFAULT_PAGE)
        newest = 0
        since: int | None = hint_ms - 2 * tf_ms if hint_ms else None
        for _ in range(4):
            params = {"until": since + limit * tf_ms - 1} if since and ex.until else {}
            try:
                self.rest_requests += 1
                rows = await c.fetch_ohlcv(symbol, tf, since, limit if since else 2, params)
            except Exception:
                break
            last = int(rows[-1][0]) if rows and isinstance(rows[-1][0], int) else 0
            if last <= newest:
                break
            newest = since = last
        if newest:
            self.clock.observe(newest)
        if c.has.get("fetchTime"):
            with contextlib.suppress(Exception):
                self.rest_requests += 1
                t = await c.fetch_time()
                if isinstance(t, int) and t > 0:
                    self.clock.observe(t)
        self._update_skew_bounds()

    def _spawn_clock_read(self, ex: _Exchange, hint_ms: int) -> None:
        """Read the venue's time again, in a task, at most every few seconds: trades refused as far
        from our estimate are usually our estimate lagging (a long start-up, a fast replica)."""
        now = time.monotonic()
        if now - ex.clock_read_at < CLOCK_READ_EVERY_S or not ex.series:
            return
        ex.clock_read_at = now
        read = self._read_clock(ex, next(iter(ex.series)), hint_ms)
        task = asyncio.create_task(read, name=f"ccxt-{ex.id}-clock")
        ex.aux.add(task)
        task.add_done_callback(ex.aux.discard)

    def _start_loops(self, ex: _Exchange) -> None:
        """Make the exchange's watch loops those its series need: stop the loops of symbols no longer
        collected (or of a batch of other symbols), start those missing (their symbols silent from now)."""
        batch = self.vs.watch == "batch" and ex.client.has.get("watchTradesForSymbols") is True
        names, most = list(ex.series), self.vs.batch_symbols if batch else 1
        loops = [names[k : k + most] for k in range(0, len(names), most)]
        wanted = {",".join(symbols): symbols for symbols in loops}
        for key in [k for k in ex.tasks if k not in wanted]:
            ex.tasks.pop(key).cancel()
            ex.live.pop(key, None)
            if key not in ex.series and "," not in key:  # a symbol watched alone and dropped
                self._unwatch(ex, key)
        now = time.monotonic()
        for key, symbols in wanted.items():
            if key in ex.tasks:
                continue
            ex.last_batch = now
            for sym in symbols:
                ex.last_seen[sym] = now
            name = f"ccxt-{ex.id}-{'+'.join(symbols)}"
            ex.tasks[key] = asyncio.create_task(self._watch(ex, symbols), name=name)

    def _unwatch(self, ex: _Exchange, symbol: str) -> None:
        """Unsubscribe a dropped symbol's trades where ccxt can (``unWatchTrades``), so the venue stops
        sending them. A batch watch is not unsubscribed symbol by symbol: ccxt's un-watch of a batch
        clears the trade cache its symbols share."""
        if ex.client.has.get("unWatchTrades") is not True:
            return

        async def unwatch() -> None:
            try:
                await asyncio.wait_for(ex.client.un_watch_trades(symbol), 10.0)
            except Exception as exc:  # the subscription stays; its trades are ignored as before
                log.info("ccxt %s: could not unsubscribe %s (%s: %s)", ex.id, symbol, type(exc).__name__, exc)

        task = asyncio.create_task(unwatch(), name=f"ccxt-{ex.id}-unwatch-{symbol}")
        ex.aux.add(task)
        ex.unwatching[symbol] = task

        def done(t: asyncio.Task[None]) -> None:
            ex.aux.discard(t)
            if ex.unwatching.get(symbol) is t:
                del ex.unwatching[symbol]

        task.add_done_callback(done)

    def start(self) -> None:
        self._started = True
        for ex in self.exchanges.values():
            self._start_loops(ex)

    def connected(self) -> bool:
        loops = [v for ex in self.exchanges.values() for v in ex.live.values()]
        return bool(loops) and all(loops)

    # --- the watch loops ------------------------------------------------------------------------

    async def _watch(self, ex: _Exchange, symbols: list[str]) -> None:
        """Call the watch again and again, consuming every batch at once; a failure is a hole."""
        key = ",".join(symbols)
        ex.live[key] = False
        backoff = BACKOFF_S[0]
        c = ex.client
        pending = [ex.unwatching[s] for s in symbols if s in ex.unwatching]
        if pending:  # a symbol dropped and added again: subscribe once its unsubscribe is through
            await asyncio.wait(pending)
        while True:
            try:
                if len(symbols) > 1:
                    batch = await c.watch_trades_for_symbols(symbols)
                else:
                    batch = await c.watch_trades(symbols[0])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.watch_errors[type(exc).__name__] += 1
                if ex.live.get(key):
                    log.info("ccxt %s watch of %s failed (%s: %s); repairing", ex.id, key, type(exc).__name__, exc)
                ex.live[key] = False
                self._lost(ex, symbols)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_S[1], backoff * 2)
                continue
            backoff = BACKOFF_S[0]
            self._new_clients(ex)
            ex.live[key] = True
            ex.last_batch = time.monotonic()
            self.on_batch(ex, symbols, batch)

    async def _restart(self, ex: _Exchange, why: str) -> None:
        """Start the exchange's watching over: stop its loops, close and forget its WebSocket clients
        (a pending watch of a closed client may never be rejected), repair since each series' last
        trade, and start new loops, which connect and subscribe anew."""
        self.stale_drops += 1
        log.info("ccxt %s: %s; reconnecting", ex.id, why)
        loops = list(ex.tasks.values())
        ex.tasks.clear()
        for task in loops:
            task.cancel()
        if loops:  # (not suppressing CancelledError: a stop cancelling this restart must end it)
            await asyncio.wait(loops)
        clients = dict(getattr(ex.client, "clients", {}) or {})
        for url, client in clients.items():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)
            ex.client.clients.pop(url, None)
        self._lost(ex, list(ex.series))
        ex.live.clear()
        self._start_loops(ex)

    def _new_clients(self, ex: _Exchange) -> None:
        """A WebSocket client that was not there at the last new one is a new connection. It is a
        reconnect when a client seen then is gone or replaced (ccxt drops a client whose connection
        closed and makes a new one at the next watch, at the same URL or, where the URL carries a
        session token, another): what traded while there was none is unknown (ccxt never backfills),
        so every series of the exchange is repaired from its last trade. A new client beside all
        the old ones is another connection, not a loss: ccxt's Binance opens one for each symbol
        watched alone (up to its 50 streams), so an engine adding N symbols one by one repaired ~N²/2
        series before."""
        now = dict(getattr(ex.client, "clients", {}) or {})
        fresh = [url for url, c in now.items() if ex.clients.get(url) is not c]
        if not fresh:
            return
        self.connects += len(fresh)
        gone = [url for url, c in ex.clients.items() if now.get(url) is not c]
        if gone:
            self.reconnects += len(gone)
            self._lost(ex, list(ex.series))
        ex.clients = now

    def _lost(self, ex: _Exchange, symbols: list[str]) -> None:
        """Trades of ``symbols`` since each one's last may be lost: repair that span."""
        now = self.clock.now_ms()
        for sym in symbols:
            st = ex.series.get(sym)
            if st is not None and st.active and st.last_trade_ms:
                st.on_loss(st.last_trade_ms, max(now, st.last_trade_ms))

    def on_batch(self, ex: _Exchange, watched: list[str], batch: Any) -> None:
        """Fold one batch ccxt handed out into the series it belongs to (by each trade's symbol)."""
        self.batches += 1
        if not isinstance(batch, list):
            self.decode_errors["bad_batch"] += 1
            return
        by_symbol: dict[str, list[tuple[str, Any]]] = {}
        for item in batch:
            got = trade_from(item, self.decode_errors)
            if got is None:
                continue
            sym, vid, t = got
            if t.time_ms > self._ts_high and not self._ahead_of_clock(ex, sym, t.time_ms):
                self.decode_errors["impossible_value"] += 1
                self._spawn_clock_read(ex, t.time_ms)
                continue
            if t.time_ms < self._ts_low:
                self.decode_errors["impossible_value"] += 1
                continue
            self._ahead_n = 0
            if sym not in watched:
                self.foreign += 1  # ccxt's multi-symbol caches mixing symbols (ccxt#22125)
            if sym not in ex.series:  # (or a symbol dropped)
                continue
            by_symbol.setdefault(sym, []).append((vid, t))
        if self.decode_errors:
            self._skips.report(self.decode_errors, str(batch[:1])[:200])
        limit = self.vs.trades_limit
        for sym, items in by_symbol.items():
            st = ex.series[sym]
            if not st.active:
                continue
            trades, loss = ex.cont[sym].take(items, limit)
            if trades:
                ex.last_seen[sym] = time.monotonic()
            for t in trades:
                t.symbol = st.instrument.symbol
                st.on_trade(t)
                if st.publish_trades:
                    self._on_trade(st, t)
            if loss is not None:
                st.on_loss(loss[0], max(loss[1], st.last_trade_ms))
            if trades:
                self.clock.observe(trades[-1].time_ms)

    def _ahead_of_clock(self, ex: _Exchange, sym: str, time_ms: int) -> bool:
        """Count a trade refused as far ahead of our clock; True once AHEAD_CONFIRM of them in a row,
        within MAX_SKEW_MS of each other, have moved the clock to the oldest of them (the trades
        refused meanwhile are a loss of their series, repaired from history)."""
        if not self._ahead_n or abs(time_ms - self._ahead_low) > MAX_SKEW_MS:
            self._ahead.clear()
            self._ahead_n, self._ahead_low = 0, time_ms
        self._ahead_n += 1
        self._ahead_low = min(self._ahead_low, time_ms)
        self._ahead[sym] = max(self._ahead.get(sym, 0), time_ms)
        if self._ahead_n < AHEAD_CONFIRM:
            return False
        log.info(
            "ccxt %s: trades run %d s ahead of our clock; the clock follows them",
            ex.id,
            (time_ms - self.clock.now_ms()) // 1000,
        )
        self.clock.observe(self._ahead_low)
        self._update_skew_bounds()
        for s, newest in self._ahead.items():
            st = ex.series.get(s)
            if st is not None and st.active and st.last_trade_ms:
                st.on_loss(st.last_trade_ms, newest)
        self._ahead.clear()
        self._ahead_n = 0
        return time_ms <= self._ts_high

    def control(self, subscribe: bool, states: list[Series]) -> None:
        # ccxt keeps its subscriptions; routing follows ``st.active``. What traded while a series
        # was off is unknown: a hole from its last trade when it comes back. A series added to the
        # running feed is watched from here (its exchange's watch loops follow its series).
        if subscribe:
            now = self.clock.now_ms()
            for st in states:
                if st.last_trade_ms:
                    st.on_loss(st.last_trade_ms, max(now, st.last_trade_ms))
            if self._started:
                for ex in {id(ex): ex for ex in (self._series_of(st)[0] for st in states)}.values():
                    self._start_loops(ex)

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``

    def _update_skew_bounds(self) -> None:
        now = self.clock.now_ms()
        self._ts_low, self._ts_high = now - MAX_SKEW_MS, now + MAX_SKEW_MS

    async def tick(self, mono: float) -> None:
        """Learn the venue's time from the trades; drop an exchange's connections when none of its
        watches has had a batch for ``stale_s`` (a stalled connection: ccxt's own keep-alive takes
        minutes to notice)."""
        for st in self.states:
            if st.last_trade_ms:
                self.clock.observe(st.last_trade_ms)
        self._update_skew_bounds()
        now = time.monotonic()
        for ex in self.exchanges.values():
            if not self._started or not ex.tasks or (ex.restart is not None and not ex.restart.done()):
                continue
            why = None
            if now - ex.last_batch > self.stale_s:
                why = f"no trades for {now - ex.last_batch:.0f} s"
            else:
                silent = [k for k, t in ex.last_seen.items() if now - t > self.silence_s]
                if silent:  # the others trade: this subscription was lost (ccxt keeps no watch on it)
                    why = f"no trades of {', '.join(silent)} for {self.silence_s:.0f} s while others trade"
            if why is not None:
                ex.restart = asyncio.create_task(self._restart(ex, why), name=f"ccxt-{ex.id}-restart")

    async def stop(self) -> None:
        for ex in self.exchanges.values():
            for aux in list(ex.aux):
                aux.cancel()
            if ex.restart is not None:
                ex.restart.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ex.restart
            for task in ex.tasks.values():
                task.cancel()
            for task in ex.tasks.values():
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if ex.client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ex.client.close(), 2.0)

    # --- history --------------------------------------------------------------------------------

    def _series_of(self, st: Series) -> tuple[_Exchange, str]:
        m = Market.parse(st.instrument.symbol)
        ex = self.exchanges[m.exchange]
        for sym, s in ex.series.items():
            if s is st:
                return ex, sym
        return ex, m.symbol

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        """``st``'s candles with open time in [start_ms, end_ms] from ``fetch_ohlcv``, paged by
        ``since``; a timeframe the exchange lacks is rolled up from a shorter one it has."""
        ex, sym = self._series_of(st)
        now = now_ms if now_ms is not None else self.clock.now_ms()
        tf_ms = TIMEFRAMES[timeframe]
        base = base_timeframe(timeframe, ex.timeframes)
        if base is None:
            raise BadInput(f"ccxt's {ex.id} cannot serve {timeframe} candles")
        start = start_ms - start_ms % tf_ms
        end = end_ms - end_ms % tf_ms + tf_ms - 1  # the whole of the last candle's interval
        oldest = self._history_start(ex, timeframe, now)
        older: list[Candle] = []
        if oldest is not None and start < oldest and ex.trade_history:
            # Before the newest rows the exchange serves: built from its trades (paged by since).
            older = await self._trade_candles(ex, sym, tf_ms, start, min(oldest, end + 1))
            start = oldest
        elif oldest is not None and start < oldest:
            if timeframe not in ex.capped:
                ex.capped.add(timeframe)
                log.warning(
                    "ccxt's %s serves only its newest %d %s rows: %s %s history asked from %d starts at %d; "
                    "candles before it cannot be verified and are never marked final",
                    ex.id,
                    ex.history_rows,
                    base,
                    st.instrument.symbol,
                    timeframe,
                    start,
                    oldest,
                )
            start = oldest  # nothing older is served: not asked for
        parts = await self._fetch(ex, sym, base, start, end, now) if start <= end else []
        out = older + (parts if base == timeframe else roll_up(parts, tf_ms, now))
        out = [c for c in out if start_ms - start_ms % tf_ms <= c.open_time <= end_ms]
        # The exchange's rows carry no trade count: one equal to the candle the stream built keeps its count.
        built = st.provisional.get(timeframe, {})
        for c in out:
            b = built.get(c.open_time)
            same = b is not None and (b.open, b.high, b.low, b.close) == (c.open, c.high, c.low, c.close)
            if same and b is not None and round(b.volume, 8) == round(c.volume, 8):
                c.trades = b.trades
        return out

    def _history_start(self, ex: _Exchange, timeframe: str, now_ms: int) -> int | None:
        """Open time of the oldest ``timeframe`` candle whose parts the exchange still serves (its
        newest ``history_rows`` rows end with the forming one), or None when its history is not capped."""
        ex.history_tfs.add(timeframe)
        base = base_timeframe(timeframe, ex.timeframes)
        if ex.history_rows is None or base is None:
            return None
        b_ms, tf_ms = TIMEFRAMES[base], TIMEFRAMES[timeframe]
        # Two rows of margin: our estimate of the venue's clock may run a little ahead of it.
        oldest = now_ms - now_ms % b_ms - max(0, ex.history_rows - 3) * b_ms
        return -(-oldest // tf_ms) * tf_ms  # the first whole candle of ``timeframe`` from there

    def series_history_from(self, st: Series, timeframe: str) -> int | None:
        """The oldest ``timeframe`` candle of ``st`` the exchange's history still serves, or None
        (not capped): the engine drops repairs of anything older rather than wait for them forever."""
        ex, _ = self._series_of(st)
        return None if ex.trade_history else self._history_start(ex, timeframe, self.clock.now_ms())

    async def _fetch(self, ex: _Exchange, sym: str, tf: str, start: int, end: int, now: int) -> list[Candle]:
        """Rows of ``tf`` with open time in [start, end], oldest first, a page at a time."""
        tf_ms = TIMEFRAMES[tf]
        limit = ex.limits.get(sym, DEFAULT_PAGE)
        out: list[Candle] = []
        t = start
        while t <= end:
            rows = await self._page(ex, sym, tf, t, limit, min(end, t + limit * tf_ms - 1))
            got = candles_from_rows(rows, tf_ms, now, self.decode_errors)
            if got:
                # The newest row is a reading of the venue's clock (at most one interval old): it
                # keeps our estimate abreast during a long bootstrap, when no trade is taken yet
                # and trades ahead of a lagging estimate would be refused as impossible.
                self.clock.observe(got[-1].open_time)
            page = [c for c in got if t <= c.open_time <= end]
            out += page
            if page:
                t = page[-1].open_time + tf_ms
            else:  # nothing from t on in this page's span: a quiet stretch the exchange omits
                t += limit * tf_ms
        return out

    async def _trade_candles(self, ex: _Exchange, sym: str, tf_ms: int, start: int, end: int) -> list[Candle]:
        """Candles of ``tf_ms`` with open time in [start, end) built from ``fetch_trades`` paged by
        ``since`` (repeats at a page's edge dropped by id); closed once a trade after its end was seen."""
        seen: set[str] = set()
        trades: list[Trade] = []
        latest = -1
        since = start
        while True:
            page = await self._call(ex, f"fetch_trades {sym}", ex.client.fetch_trades, sym, since, TRADES_PAGE)
            fresh = 0
            for item in page if isinstance(page, list) else []:
                got = trade_from(item, self.decode_errors)
                if got is None or (got[1] and got[1] in seen):
                    continue
                seen.add(got[1])
                fresh += 1
                t = got[2]
                latest = max(latest, t.time_ms)
                if start <= t.time_ms < end:
                    trades.append(t)
            if latest >= end or not isinstance(page, list) or len(page) < TRADES_PAGE:
                break
            if not fresh:  # a page of one instant's repeats: since cannot move past it
                raise VenueError(503, b"fetch_trades does not move past since", f"{ex.id} fetch_trades {sym}")
            since = latest
        trades.sort(key=lambda t: t.time_ms)  # (stable: the exchange's order within one instant)
        return build_candles(trades, tf_ms, start, end, latest)

    async def _page(self, ex: _Exchange, sym: str, tf: str, since: int, limit: int, until: int) -> Any:
        params = {"until": until} if ex.until else {}
        return await self._call(ex, f"fetch_ohlcv {sym} {tf}", ex.client.fetch_ohlcv, sym, tf, since, limit, params)

    async def _call(self, ex: _Exchange, what: str, method: Any, *args: Any) -> Any:
        """One REST call of ccxt's, tried again on a passing failure (a 5xx, a timeout, a throttle);
        :class:`VenueError` or :class:`VenueUnreachable` when it keeps failing or cannot succeed."""
        import ccxt

        delay = 0.5
        for attempt in range(REST_TRIES):
            self.rest_requests += 1
            try:
                return await method(*args)
            except (ccxt.BadSymbol, ccxt.BadRequest, ccxt.NotSupported) as exc:
                self.rest_errors += 1
                raise VenueError(400, str(exc).encode(), f"{ex.id} {what}") from None
            except (ccxt.RateLimitExceeded, ccxt.DDoSProtection) as exc:
                self.rest_throttled += 1
                last: Exception = exc
            except Exception as exc:
                self.rest_errors += 1
                last = exc
            if attempt + 1 < REST_TRIES:
                await asyncio.sleep(delay)
                delay = min(8.0, delay * 2)
        msg = f"{type(last).__name__}: {str(last)[:200]}".encode()
        if isinstance(last, ccxt.NetworkError) and not isinstance(last, ccxt.DDoSProtection):
            raise VenueUnreachable(f"ccxt {ex.id} {what}: {msg.decode()}")
        raise VenueError(503, msg, f"{ex.id} {what}")

    # --- visibility -----------------------------------------------------------------------------

    def rest_limits(self) -> list[Shareable]:
        return [ex.pace for ex in self.exchanges.values() if ex.pace is not None]

    def report(self) -> FeedStatus:
        loops = [v for ex in self.exchanges.values() for v in ex.live.values()]
        out_of_order = sum(c.out_of_order for ex in self.exchanges.values() for c in ex.cont.values())
        gaps = sum(c.id_gaps for ex in self.exchanges.values() for c in ex.cont.values())
        now = self.clock.now_ms()
        history_from = {
            f"{ex.id}:{tf}": start
            for ex in self.exchanges.values()
            for tf in sorted(ex.history_tfs)
            if not ex.trade_history and (start := self._history_start(ex, tf, now)) is not None
        }
        venue_errors = dict(self.watch_errors)
        if self.foreign:
            venue_errors["foreign_symbol_trades"] = self.foreign
        return FeedStatus(
            connected=self.connected(),
            connections=sum(loops),
            connects=self.connects,
            reconnects=self.reconnects,
            rotations=0,
            stale_drops=self.stale_drops,
            connect_budget_waits=0,
            frames=self.batches,
            skipped_frames=dict(self.decode_errors),
            rest_requests=self.rest_requests,
            rest_throttled=self.rest_throttled,
            rest_server_errors=self.rest_errors,
            rest_limiter_waits=0,
            out_of_order=out_of_order,
            sequence_gaps=gaps,
            history_from=history_from or None,
            venue_errors=venue_errors or None,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
