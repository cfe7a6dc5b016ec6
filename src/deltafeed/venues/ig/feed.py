"""IG's live side for the engine: a REST session, and Lightstreamer (TLCP) sessions from a pool that
never opens more than the account's limit; ``MARKET:<epic>`` items become quotes (MID, BID and ASK
candles), closed ``CHART:<epic>:1MINUTE`` candles are IG's own final BID and ASK minutes.

A dropped streaming session is a hole for its epics, repaired from ``GET /prices`` within the
weekly allowance (see :mod:`deltafeed.candles.quotes`). Every row IG returns holds bid and ask, and
costs allowance once however many sides are kept, so the price sides of one epic asking for the same
range (at bootstrap, or after one hole) share one answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from deltafeed.candles.quotes import QuoteRouter
from deltafeed.clock import VenueClock
from deltafeed.model import BadInput, Candle
from deltafeed.net.http import VenueError, VenueUnreachable, http_date_ms
from deltafeed.venues.base import FeedStatus, Shareable, SharedLimits, SkipLog, unmade
from deltafeed.venues.ig import VENUE
from deltafeed.venues.ig import codec as ig
from deltafeed.venues.ig.pool import TlcpPool, TlcpSession
from deltafeed.venues.ig.rest import IGHistory, IGSession

if TYPE_CHECKING:
    from deltafeed.series import Series
    from deltafeed.venues.base import VenueSettings

log = logging.getLogger("deltafeed.ig")

CREDENTIAL_ENVS = ("IG_API_KEY", "IG_USERNAME", "IG_PASSWORD")
#: How long (wall seconds) one history answer serves the other price sides of its epic: long enough
#: for siblings asking in the same bootstrap or repair round, short enough to not serve stale
#: ``closed`` flags.
SHARED_ANSWER_S = 10.0
DEFAULT_REST_URL = "https://demo-api.ig.com/gateway/deal"


class IGFeed(SharedLimits):
    """Streams IG prices and one-minute charts of its epics into their price sides' builders."""

    venue = VENUE.name
    omits_empty = VENUE.omits_empty
    sequenced = VENUE.sequenced
    reconcile_every_s = VENUE.reconcile_every_s

    def __init__(self, vs: VenueSettings, *, stale_after_s: float, max_connections: int = 40) -> None:
        creds = [os.environ.get(name, "").strip() for name in CREDENTIAL_ENVS]
        missing = [name for name, value in zip(CREDENTIAL_ENVS, creds, strict=True) if not value]
        if missing:
            raise BadInput(f"IG needs credentials: set {', '.join(missing)} (never put them on the command line)")
        self.rest_url = vs.rest_url or DEFAULT_REST_URL
        self.session = IGSession(self.rest_url, *creds)
        self.history = IGHistory(self.session)
        self.clock = VenueClock()
        self.decoder = ig.IGDecoder()
        self.states: list[Series] = []
        self.router = QuoteRouter()
        self._epics: dict[str, list[Series]] = {}
        self.max_connections = max_connections
        self.stale_after_s = stale_after_s
        self.pool: TlcpPool | None = None
        # (epic, timeframe, start) -> (when asked, up to which open time, the request answering every side)
        self._answers: dict[tuple[str, str, int], tuple[float, int, asyncio.Task[dict[str, list[Candle]]]]] = {}
        self.shared_answers = 0  # history requests saved by sharing an answer between price sides
        self.lost_quotes = 0  # MARKET updates IG said it dropped (OV): each such break is repaired
        self.chart_candles = 0
        self._skips = SkipLog(log, "updates")

    def __repr__(self) -> str:
        return f"<IGFeed {self.rest_url} {len(self._epics)} epics>"

    @property
    def errors(self) -> Counter[str]:
        """Updates the IG decoder skipped, and the Lightstreamer lines the sessions skipped (``tlcp_*``)."""
        if self.pool is None:
            return self.decoder.errors
        return self.decoder.errors + self.pool.skipped_lines

    def add(self, st: Series) -> None:
        bad = unmade(st.builder.timeframes, ("1m", "5m", "15m", "1h", "4h", "1d"))
        if bad:
            raise BadInput(
                f"IG has no {', '.join(bad)} price history; use 1m 5m 15m 1h 4h 1d (or a timeframe one of them"
                " divides, e.g. 3m, 2h, 1w) for IG epics"
            )
        ig.check_epic(st.instrument.symbol)
        self.states.append(st)
        self.router.add(st)
        self._epics.setdefault(st.instrument.symbol, []).append(st)

    async def check(self) -> None:
        try:
            await self.session.login()
        except VenueUnreachable as exc:
            raise BadInput(f"{exc}; check --rest-url and that IG (or its replica) is running") from None
        except VenueError as exc:
            raise BadInput(f"IG refused the login ({exc.status}); check {', '.join(CREDENTIAL_ENVS)}") from None
        date_ms = http_date_ms(self.session.last_date)
        if date_ms is not None:
            self.clock.observe(date_ms)
        if not self.session.lightstreamer_endpoint:
            raise BadInput("IG's login answer named no Lightstreamer endpoint; check --rest-url")

    def start(self) -> None:
        self.pool = TlcpPool(
            self.session.lightstreamer_endpoint,
            self.session.account_id,
            self.session.ls_password_fresh,
            max_connections=self.max_connections,
            items_per_session=VENUE.stream_limits.per_connection if VENUE.stream_limits else 40,
            on_update=self.on_update,
            on_disconnect=self._on_disconnect,
            on_lost=self._on_lost,
            name="ig",
            # A session silent for two keepalives is dropped: stale_after in all.
            keepalive_ms=max(500, int(self.stale_after_s * 500)),
        )
        self.pool.budget.share(self.shares[1])  # made now: within the part of the budget kept so far
        epics = list(self._epics)
        asyncio.get_running_loop().create_task(self._subscribe(epics), name="ig-subscribe")

    async def _subscribe(self, epics: list[str]) -> None:
        assert self.pool is not None
        await self.pool.subscribe([ig.market_item(e) for e in epics], ig.MARKET_FIELDS)
        await self.pool.subscribe([ig.chart_item(e) for e in epics], ig.CHART_FIELDS)

    def _on_disconnect(self, session: TlcpSession, why: str) -> None:
        # What was quoted on that session's items meanwhile is unknown: a hole for those epics.
        self.router.gap({ig.parse_item(item)[1] for item in session.items})

    def _on_lost(self, item: str, n: int) -> None:
        # IG dropped quotes of a MARKET item (we read too slowly): a hole, like a disconnection. Lost
        # CHART updates need nothing: the quote-built minute stands until IG's next final one.
        kind, epic, _ = ig.parse_item(item)
        if kind == "MARKET":
            self.lost_quotes += n
            self.router.gap([epic])

    def connected(self) -> bool:
        return self.pool is not None and bool(self.pool.sessions) and all(s.connected for s in self.pool.sessions)

    async def tick(self, mono: float) -> None:
        return None

    def activate(self, st: Series, active: bool) -> None:
        return None  # routing follows ``st.active``

    def control(self, subscribe: bool, states: list[Series]) -> None:
        return None  # items stay subscribed; inactive series simply ignore their updates

    def page_span_ms(self, timeframe: str) -> int:
        return self.history.page_span_ms(timeframe)

    async def candles(
        self, st: Series, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> list[Candle]:
        epic = st.instrument.symbol
        now = now_ms if now_ms is not None else self.clock.now_ms()
        if len(self._epics.get(epic, ())) < 2:
            return await self.history.candles(epic, timeframe, start_ms, end_ms, now, side=st.price)
        mono = time.monotonic()
        for k in [k for k, (t0, _, task) in self._answers.items() if mono - t0 > SHARED_ANSWER_S and task.done()]:
            del self._answers[k]
        key = (epic, timeframe, start_ms)
        entry = self._answers.get(key)
        if entry is None or entry[1] < end_ms:  # none yet, or one for a shorter range
            task = asyncio.ensure_future(self.history.candles_all_sides(epic, timeframe, start_ms, end_ms, now))
            entry = self._answers[key] = (mono, end_ms, task)
        else:
            self.shared_answers += 1
        try:
            # Shielded: one side giving up (cancelled) does not take the answer from the others.
            answer = await asyncio.shield(entry[2])
        except Exception:
            if self._answers.get(key) is entry:
                del self._answers[key]  # a failure is not shared with later retries
            raise
        return [c for c in answer[st.price] if c.open_time <= end_ms]

    async def stop(self) -> None:
        for _, _, task in self._answers.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._answers.clear()
        if self.pool is not None:
            await self.pool.close()
        await self.history.close()

    # --- updates --------------------------------------------------------------------------------

    def on_update(self, item: str, fields: dict[str, str | None]) -> None:
        kind, epic, _ = ig.parse_item(item)
        if kind == "MARKET":
            q = self.decoder.market_quote(epic, fields, self.clock.now_ms())
            if q is not None and self.router.quote(epic, q.time_ms, q.bid, q.ask):
                self.clock.observe(q.time_ms)
            elif q is None:
                self._log_errors()
            return
        candles = self.decoder.chart_candles(epic, fields)
        for st in self._epics.get(epic, ()):
            c = candles.get(st.price)
            if c is not None and c.closed and st.active and "1m" in st.builder.timeframes:
                self.chart_candles += 1
                st.on_venue_candle("1m", c, -1)  # IG's own final minute, merged as a closed kline

    def _log_errors(self) -> None:
        self._skips.report(self.decoder.errors, self.decoder.last_error)

    # --- visibility -----------------------------------------------------------------------------

    def rest_limits(self) -> list[Shareable]:
        return [self.session.limiter]

    def report(self) -> FeedStatus:
        pool = dict(self.pool.stats) if self.pool is not None else {}
        return FeedStatus(
            connected=self.connected(),
            connections=int(pool.get("connected", 0)),
            connects=int(pool.get("connects", 0)),
            reconnects=max(0, int(pool.get("connects", 0)) - int(pool.get("sessions", 0))),
            rotations=0,
            stale_drops=int(pool.get("stale_drops", 0)),
            connect_budget_waits=int(pool.get("gate_waits", 0)),
            frames=int(pool.get("updates", 0)),
            max_open_connections=int(pool.get("max_open_connections", 0)),
            chart_candles=self.chart_candles,
            out_of_order=self.router.out_of_order,
            repeated_quotes=self.router.repeated,
            refused=self.router.refused,
            allowance=list(self.history.allowance),
            skipped_frames=dict(self.errors),
            rest_requests=self.session.requests,
            rest_shared_answers=self.shared_answers,
            lost_quotes=self.lost_quotes,
            rest_throttled=self.session.throttled,
            rest_server_errors=self.session.server_errors,
            rest_limiter_waits=self.session.limiter.waits,
        )

    def status(self) -> dict[str, Any]:
        return self.report().as_dict()
