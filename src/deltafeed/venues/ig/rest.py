"""IG REST: a logged-in session (:class:`IGSession`) and price history within the allowance (:class:`IGHistory`).

Facts from ../shared/PROTOCOLS.md section 4. Choices made here, and why:

- **Login is ``POST /session`` version 2.** It answers the ``CST`` and ``X-SECURITY-TOKEN`` headers that
  both the REST calls and the Lightstreamer password (``CST-<cst>|XST-<xst>``) need. Version 3 answers
  OAuth tokens instead, and the streaming password would then need a second call.
- **Secrets stay in memory.** The API key, the password and the two tokens live in private attributes,
  travel only in request headers and bodies, and never appear in a URL, a log line, a ``repr`` or an
  exception (errors carry the venue's own answer, which does not echo them, and a hint naming the
  settings to check). Exceptions from aiohttp are not chained (``from None``): their request info holds
  the headers.
- **Tokens are refreshed** by logging in again once they are ``refresh_after_s`` old (IG's tokens last
  about 6 hours; 5 by default leaves a margin), and at once on a 401 (an expired or revoked token): the
  request is then repeated once. A Lightstreamer session that is already up keeps running; a new one
  should ask :meth:`IGSession.ls_credentials` for the current password.
- **Pacing**: IG allows a small number of non-trading requests a minute (per account and per API key);
  requests are paced with a :class:`WeightLimiter` (``rate_per_minute``). IG reports throttling as a 403
  with ``error.public-api.exceeded-api-key-allowance`` or ``…exceeded-account-allowance``: every caller
  then waits ``throttle_wait_s`` and the request is retried. 5xx and connection errors are retried with
  backoff.
- **The historical-data allowance** (10,000 price points, reset when ``allowanceExpiry`` seconds have
  passed; "weekly" is inferred, see PROTOCOLS.md) is an account-wide budget, so it is tracked on the
  session (shared by every :class:`IGHistory` on it) from each answer's ``metadata.allowance``. A request
  is never sent if the points it may return exceed what is left: :class:`AllowanceSpent` is raised
  instead, with the reset time, the candles fetched so far and where to resume. While the allowance is
  unknown (before the first answer, or after its reset time), the next request asks for one point only
  (unless the server never reports it: then there is nothing to track, and a warning says so).
  A 403 ``error.public-api.exceeded-account-historical-data-allowance`` also becomes AllowanceSpent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import msgspec

from deltafeed.clock import Clock, LiveClock
from deltafeed.model import PRICE_SIDES, TIMEFRAMES, BadInput, Candle
from deltafeed.net.http import Request, Response, RestClient, VenueError, http_date_ms
from deltafeed.net.ratelimit import WeightLimiter
from deltafeed.venues.checks import MAX_INT64, price_ok, size_ok
from deltafeed.venues.ig import codec as codec

log = logging.getLogger("deltafeed.ig")

#: deltafeed timeframe → IG resolution (IG also has SECOND, MINUTE_2/3/10/30, HOUR_2/3, WEEK, MONTH).
RESOLUTION: dict[str, str] = {
    "1m": "MINUTE", "5m": "MINUTE_5", "15m": "MINUTE_15", "1h": "HOUR", "4h": "HOUR_4", "1d": "DAY",
}  # fmt: skip

ALLOWANCE_ERROR = "error.public-api.exceeded-account-historical-data-allowance"
_THROTTLE_ERRORS = ("error.public-api.exceeded-api-key-allowance", "error.public-api.exceeded-account-allowance")
_LOGIN_HINT = "check the IG API key, username and password (IG_API_KEY, IG_USERNAME, IG_PASSWORD)"


def resolution(timeframe: str) -> str:
    """IG's resolution for a deltafeed timeframe; :class:`BadInput` for one this client does not map."""
    try:
        return RESOLUTION[timeframe]
    except KeyError:
        raise BadInput(f"IG history serves {' '.join(RESOLUTION)}, not {timeframe!r}") from None


def ig_time(ms: int) -> str:
    """``yyyy-MM-ddTHH:mm:ss`` of epoch ms in UTC, the form of the ``from`` and ``to`` parameters."""
    return dt.datetime.fromtimestamp(ms // 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _iso(ms: int | None) -> str:
    return (
        "an unknown time" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    )


# --- the allowance ------------------------------------------------------------------------------


class AllowanceSpent(VenueError):
    """IG's historical-data allowance cannot pay for the next request (or IG said it is exceeded).

    ``sent`` says whether the request went out (False: refused here, before spending anything).
    ``resets_at_ms`` is when IG resets the allowance (None when not known yet); ``candles`` holds what
    was fetched before (oldest first) and ``resume_ms`` the open time to continue from, so a backfill
    can store the part it got and defer the rest.
    """

    def __init__(
        self,
        message: str,
        url: str,
        *,
        needed: int,
        remaining: int | None,
        total: int | None,
        resets_at_ms: int | None,
        sent: bool,
    ) -> None:
        super().__init__(403, message.encode(), url)
        self.args = (message,)
        self.needed = needed
        self.remaining = remaining
        self.total = total
        self.resets_at_ms = resets_at_ms
        self.sent = sent
        self.candles: dict[str, list[Candle]] = {}
        self.resume_ms: int | None = None


class Allowance:
    """The account's historical-data allowance as IG last reported it, moved on by the points received.

    ``known(now_ms)`` is False before the first report and once the reset time has passed (the allowance
    was then reset, but to what is not known until the next answer says).
    """

    def __init__(self) -> None:
        self.remaining: int | None = None
        self.total: int | None = None
        self.resets_at_ms: int | None = None
        self.reports = 0
        #: The server answered prices without reporting the allowance (not IG v3): nothing to protect
        #: then, and probing with one-point requests would only crawl.
        self.unreported = False

    def known(self, now_ms: int) -> bool:
        return self.remaining is not None and (self.resets_at_ms is None or now_ms < self.resets_at_ms)

    def observe(self, remaining: int, total: int, expiry_s: int, now_ms: int) -> None:
        self.remaining, self.total = remaining, total
        self.resets_at_ms = now_ms + expiry_s * 1000
        self.reports += 1

    def spend(self, points: int) -> None:
        """Points received in an answer that did not report the allowance."""
        if self.remaining is not None:
            self.remaining = max(0, self.remaining - points)

    def exhausted(self) -> None:
        """IG refused a request for exceeding the allowance."""
        self.remaining = 0


# --- the session --------------------------------------------------------------------------------


class _Login(msgspec.Struct):
    lightstreamerEndpoint: str = ""  # IG's field names (camelCase)
    currentAccountId: str = ""


class _Error(msgspec.Struct):
    errorCode: str = ""


def error_code(body: bytes) -> str:
    """IG's ``errorCode`` of an error body, or "" when it has none."""
    try:
        return msgspec.json.decode(body, type=_Error).errorCode
    except (msgspec.DecodeError, RecursionError):
        return ""


class IGSession:
    """A logged-in IG REST session: tokens, the Lightstreamer endpoint and credentials, the allowance.

    Call :meth:`login` (or any request, which logs in first). See the module docstring for how tokens
    are kept and refreshed.
    """

    def __init__(
        self,
        rest_url: str,
        api_key: str,
        username: str,
        password: str,
        *,
        clock: Clock | None = None,
        timeout_s: float = 10.0,
        refresh_after_s: float = 5 * 3600.0,
        rate_per_minute: int = 30,
        throttle_wait_s: float = 10.0,
        retries: int = 3,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._api_key = api_key
        self._username = username
        self._password = password
        self._cst = ""
        self._xst = ""
        self._logged_in_at = -1.0  # monotonic seconds; -1 until logged in
        self._generation = 0  # bumped at every login, so concurrent 401s log in once
        self._lock = asyncio.Lock()
        self._clock = clock or LiveClock()
        self.refresh_after_s = refresh_after_s
        self.throttle_wait_s = throttle_wait_s
        self.retries = retries
        self.limiter = WeightLimiter(
            max(1, rate_per_minute), window_s=60.0, headroom=1.0, burst_fraction=0.2, clock=self._clock
        )
        # Retries wait on the live clock, as the limiter does (``clock`` only tells the time).
        self.http = RestClient(
            self.rest_url,
            self.limiter,
            timeout_s=timeout_s,
            retries=retries,
            auth=self._auth,
            on_response=self._on_response,
            throttle=self._throttle,
            on_throttle=self._on_throttle,
        )
        self.allowance = Allowance()
        self.lightstreamer_endpoint = ""
        self.account_id = ""
        self.last_date: str | None = None
        self.logins = 0

    def __repr__(self) -> str:
        return f"<IGSession {self.rest_url} account={self.account_id or '-'}>"

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def ls_password(self) -> str:
        """The Lightstreamer password, ``CST-<cst>|XST-<xst>``; RuntimeError before :meth:`login`."""
        if not self._cst:
            raise RuntimeError("the IG session is not logged in")
        return f"CST-{self._cst}|XST-{self._xst}"

    async def ls_credentials(self) -> tuple[str, str]:
        """(account id, Lightstreamer password), logging in first when the tokens are missing or old."""
        await self.ensure()
        return self.account_id, self.ls_password

    async def ls_password_fresh(self) -> str:
        """The Lightstreamer password after :meth:`ensure`: a callable for :class:`TlcpPool`."""
        await self.ensure()
        return self.ls_password

    @property
    def requests(self) -> int:
        return self.http.requests

    @property
    def throttled(self) -> int:
        return self.http.throttled

    @property
    def server_errors(self) -> int:
        return self.http.server_errors

    def _auth(self, req: Request) -> None:
        """The API key on every request; the session tokens on every one but the login itself."""
        req.headers["X-IG-API-KEY"] = self._api_key
        req.headers.setdefault("Accept", "application/json; charset=UTF-8")
        if self._cst and not (req.method == "POST" and req.url == self.rest_url + "/session"):
            req.headers["CST"] = self._cst
            req.headers["X-SECURITY-TOKEN"] = self._xst

    def _on_response(self, resp: Response) -> None:
        self.last_date = resp.headers.get("Date", self.last_date)

    def _throttle(self, resp: Response, in_row: int) -> float | None:
        """IG says "slow down" with a 403 and an allowance error code: wait ``throttle_wait_s``."""
        if resp.status == 403 and error_code(resp.body) in _THROTTLE_ERRORS:
            return self.throttle_wait_s
        return None

    def _on_throttle(self, resp: Response, pause: float) -> None:
        log.warning("IG throttled %s (%s); waiting %.0f s", self.rest_url, error_code(resp.body), pause)

    async def ensure(self) -> None:
        """Log in unless the tokens are present and younger than ``refresh_after_s``."""
        if self._cst and self._clock.monotonic() - self._logged_in_at < self.refresh_after_s:
            return
        await self._relogin(self._generation)

    async def login(self) -> None:
        """Log in now (``POST /session`` v2), replacing any tokens held."""
        await self._relogin(self._generation)

    async def _relogin(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another caller logged in meanwhile
            await self._login()
            self._generation += 1

    async def _login(self) -> None:
        url = self.rest_url + "/session"
        body = msgspec.json.encode({"identifier": self._username, "password": self._password})
        headers = {"VERSION": "2", "Content-Type": "application/json; charset=UTF-8"}
        resp = await self.http.send("POST", "/session", headers=headers, body=body)
        status, resp_headers, data = resp.status, resp.headers, resp.body
        if status != 200:
            code = error_code(data) or data[:200].decode(errors="replace")
            raise VenueError(status, f"IG refused the login ({code}); {_LOGIN_HINT}".encode(), url)
        cst, xst = resp_headers.get("CST", ""), resp_headers.get("X-SECURITY-TOKEN", "")
        if not cst or not xst:
            raise VenueError(status, b"the login answer has no CST / X-SECURITY-TOKEN headers", url)
        try:
            info = msgspec.json.decode(data, type=_Login)
        except (msgspec.DecodeError, RecursionError):
            raise VenueError(status, b"the login answer is not IG's session JSON", url) from None
        self._cst, self._xst = cst, xst
        self._logged_in_at = self._clock.monotonic()
        self.lightstreamer_endpoint = info.lightstreamerEndpoint
        self.account_id = info.currentAccountId
        self.logins += 1
        log.info("logged in to IG %s as account %s", self.rest_url, self.account_id or "?")

    async def get(self, path: str, version: int) -> bytes:
        """The body of ``GET rest_url + path`` (logged in, fresh tokens); VenueError for other than 200.

        A 401 logs in again and repeats the request once.
        """
        url = self.rest_url + path
        await self.ensure()
        for attempt in range(2):
            generation = self._generation
            resp = await self.http.send("GET", path, headers={"VERSION": str(version)})
            status, data = resp.status, resp.body
            if status == 200:
                return data
            if status == 401 and attempt == 0:
                log.info("IG answered 401 (%s); logging in again", error_code(data) or "no code")
                await self._relogin(generation)
                continue
            raise VenueError(status, data, url)
        raise AssertionError("unreachable")

    @property
    def stats(self) -> Mapping[str, int | float]:
        return {
            "requests": self.requests,
            "logins": self.logins,
            "throttled": self.throttled,
            "server_errors": self.server_errors,
            "limiter_waits": self.limiter.waits,
        }

    async def close(self) -> None:
        await self.http.close()


# --- price history ------------------------------------------------------------------------------


class _Price(msgspec.Struct, gc=False):
    bid: float | None = None
    ask: float | None = None
    lastTraded: float | None = None


class _Row(msgspec.Struct, gc=False):
    openPrice: _Price
    closePrice: _Price
    highPrice: _Price
    lowPrice: _Price
    snapshotTimeUTC: str | None = None
    snapshotTime: str | None = None
    lastTradedVolume: float | None = None


#: Allowance points, and the seconds to its reset: IG's resets weekly, so ten years is a bound no real
#: answer reaches and every reset time computed from it stays a date.
_Points = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT64)]
_ExpirySeconds = Annotated[int, msgspec.Meta(ge=0, le=10 * 366 * 86_400)]


class _Allow(msgspec.Struct):
    remainingAllowance: _Points
    totalAllowance: _Points
    allowanceExpiry: _ExpirySeconds


class _PageData(msgspec.Struct):
    pageSize: int = 0
    pageNumber: int = 1
    totalPages: int = 1


class _Meta(msgspec.Struct):
    allowance: _Allow | None = None
    size: int | None = None
    pageData: _PageData | None = None


class _Prices(msgspec.Struct):
    prices: list[_Row]
    metadata: _Meta | None = None
    allowance: _Allow | None = None  # where v1 and v2 put it


_prices = msgspec.json.Decoder(_Prices)


class BadPrices(ValueError):
    """An IG prices answer that is not one (not JSON, a missing field), or a row that cannot be placed (no
    or a bad ``snapshotTimeUTC``, off deltafeed's grid) or holds an impossible price (not finite and above
    zero) or volume (negative). :class:`IGHistory` turns it into a :class:`VenueError`: the request failed,
    and the engine asks again later. A page is taken whole or not at all, since IG has no row for an
    interval without prices and a row left out would look like such an interval."""


def decode_prices(body: bytes) -> _Prices:
    """The decoded ``GET /prices`` answer; :class:`BadPrices` for any other body."""
    try:
        return _prices.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise BadPrices(f"not an IG prices answer ({exc}): {body[:120]!r}") from None


def _utc_ms(text: str) -> int:
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


def take_rows(
    rows: list[_Row], t0: int, t1: int, tf: int, now: int, sides: tuple[str, ...], out: dict[str, list[Candle]]
) -> int:
    """Append the rows with open time in [t0, t1) to ``out`` (one list per side in ``sides``), in time
    order, without repeats; ``closed`` when the interval ended by ``now``. Returns the rows skipped (outside
    the window, repeated, or without the prices of a side asked for); :class:`BadPrices` for a row that
    cannot be placed or holds an impossible value."""
    skipped = 0
    for r in rows:
        if r.snapshotTimeUTC is None:
            raise BadPrices("a price row without snapshotTimeUTC (ask VERSION 3)")
        try:
            ot = _utc_ms(r.snapshotTimeUTC)
        except (ValueError, OverflowError):
            raise BadPrices(f"bad snapshotTimeUTC {r.snapshotTimeUTC[:40]!r}") from None
        if not t0 <= ot < t1 or (out[sides[0]] and ot <= out[sides[0]][-1].open_time):
            skipped += 1
            continue
        if ot % tf:
            raise BadPrices(
                f"candle at {r.snapshotTimeUTC[:40]} is not on the UTC {tf} ms grid that deltafeed "
                "buckets by; build this timeframe from a shorter one"
            )
        ohlc = {s: _side(r, s) for s in sides}
        if any(v is None for v in ohlc.values()):
            skipped += 1
            continue
        vol = r.lastTradedVolume or 0.0
        if not size_ok(vol) or vol > MAX_INT64:
            raise BadPrices(f"candle at {r.snapshotTimeUTC[:40]} has an impossible volume {vol!r}")
        closed = ot + tf <= now
        for s, v in ohlc.items():
            assert v is not None
            if not (price_ok(v[0]) and price_ok(v[1]) and price_ok(v[2]) and price_ok(v[3])):
                raise BadPrices(f"candle at {r.snapshotTimeUTC[:40]} has an impossible {s} price {v!r}")
            out[s].append(Candle(ot, v[0], v[1], v[2], v[3], vol, int(vol), closed))
    return skipped


def _side(row: _Row, side: str) -> tuple[float, float, float, float] | None:
    """(open, high, low, close) of one side of a row; mid is (bid + ask) / 2 per field. None if incomplete."""
    ps = (row.openPrice, row.highPrice, row.lowPrice, row.closePrice)
    if side == "bid":
        vals = [p.bid for p in ps]
    elif side == "ask":
        vals = [p.ask for p in ps]
    else:
        vals = [None if p.bid is None or p.ask is None else (p.bid + p.ask) / 2 for p in ps]
    if any(v is None for v in vals):
        return None
    o, h, lo, c = vals
    assert o is not None and h is not None and lo is not None and c is not None
    return o, h, lo, c


class IGHistory:
    """IG's price history (``GET /prices/{epic}`` v3) as deltafeed candles, within the account's allowance.

    ``page_points`` bounds the points one request may return; since every point costs allowance, a
    request is sized by the intervals it covers, not by what the market had (a weekend inside a page
    still counts as points it *may* return). Use :meth:`candles_all_sides` when more than one side is
    wanted: one request answers bid, ask and mid.
    """

    def __init__(self, session: IGSession, *, page_points: int = 1000) -> None:
        if page_points < 1:
            raise ValueError("page_points must be positive")
        self.session = session
        self.page_points = page_points
        self.points = 0  # price points received
        self.skipped_rows = 0  # rows without the prices asked for, or outside the window asked

    def __repr__(self) -> str:
        return f"<IGHistory {self.session.rest_url}>"

    @property
    def allowance(self) -> tuple[int | None, int | None, int | None]:
        """(remaining, total, resets_at_ms) as IG last reported them; None where not known yet."""
        a = self.session.allowance
        return a.remaining, a.total, a.resets_at_ms

    async def candles(
        self, epic: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None, side: str = "mid"
    ) -> list[Candle]:
        """Candles of one price side with open time in [start_ms, end_ms], oldest first.

        ``closed`` is True for a candle whose interval has ended by ``now_ms`` (the venue's now: the
        answer's ``Date`` header when not given). IG has no candle for an interval without prices.
        Raises :class:`AllowanceSpent` (with the candles fetched so far) rather than overrun the
        allowance, and :class:`BadInput` for a timeframe IG cannot serve.
        """
        if side not in PRICE_SIDES:
            raise BadInput(f"unknown price side {side!r}; use {', '.join(PRICE_SIDES)}")
        return (await self._pages(epic, timeframe, start_ms, end_ms, now_ms, (side,)))[side]

    async def candles_all_sides(
        self, epic: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None = None
    ) -> dict[str, list[Candle]]:
        """Mid, bid and ask candles from the same requests (the allowance is spent once); see :meth:`candles`."""
        return await self._pages(epic, timeframe, start_ms, end_ms, now_ms, PRICE_SIDES)

    def page_span_ms(self, timeframe: str) -> int:
        """A time span whose candles of ``timeframe`` take one request."""
        resolution(timeframe)
        return self.page_points * TIMEFRAMES[timeframe]

    def _refuse(self, url: str, needed: int, out: dict[str, list[Candle]], resume_ms: int) -> AllowanceSpent:
        a = self.session.allowance
        now = self.session.clock.time_ms()
        wait = "" if a.resets_at_ms is None else f" (in {max(0, a.resets_at_ms - now) / 3_600_000:.1f} h)"
        exc = AllowanceSpent(
            f"IG's historical-data allowance is spent: the next request may return {needed} points and "
            f"{a.remaining} of {a.total} remain; it resets at {_iso(a.resets_at_ms)}{wait}; "
            f"resume from {_iso(resume_ms)}",
            url,
            needed=needed,
            remaining=a.remaining,
            total=a.total,
            resets_at_ms=a.resets_at_ms,
            sent=False,
        )
        exc.candles, exc.resume_ms = out, resume_ms
        return exc

    async def _pages(
        self, epic: str, timeframe: str, start_ms: int, end_ms: int, now_ms: int | None, sides: tuple[str, ...]
    ) -> dict[str, list[Candle]]:
        """Time windows of at most ``page_points`` intervals, each asked with ``pageSize`` equal to its
        interval count (one page; further ``pageNumber``\\ s are fetched if IG pages it anyway).

        A window [t, t + n·tf) is asked as ``from = t - 1 s`` and ``to = t + n·tf - 1 s``: the same
        intervals whether IG's bounds are inclusive or exclusive (not documented), and rows outside the
        window are dropped. Before each request the allowance must cover the points it may return.
        """
        res = resolution(timeframe)
        epic = codec.check_epic(epic)
        tf = TIMEFRAMES[timeframe]
        sess = self.session
        a = sess.allowance
        out: dict[str, list[Candle]] = {s: [] for s in sides}
        if now_ms is not None:
            end_ms = min(end_ms, now_ms)
        t = -(-start_ms // tf) * tf
        base = f"{sess.rest_url}/prices/{quote(epic, safe='')}"
        while t <= end_ms:
            count = min(self.page_points, (end_ms - t) // tf + 1)
            if not a.known(sess.clock.time_ms()) and not a.unreported:
                count = 1  # find out what is left for the price of one point
            window_end = t + count * tf  # exclusive
            page = 1
            got = 0
            while True:
                needed = count - got
                if a.remaining is not None and a.known(sess.clock.time_ms()) and needed > a.remaining:
                    raise self._refuse(base, needed, out, t)
                params = {
                    "resolution": res,
                    "from": ig_time(t - 1000),
                    "to": ig_time(window_end - 1000),
                    "max": count,
                    "pageSize": count,
                    "pageNumber": page,
                }
                path = f"/prices/{quote(epic, safe='')}?{urlencode(params)}"
                rows, meta_page = await self._fetch(path, needed, out, t)
                got += len(rows)
                self._take(rows, t, window_end, tf, now_ms, sides, out)
                if meta_page is None or meta_page.pageNumber >= meta_page.totalPages or not rows or got >= count:
                    break
                page += 1
            t = window_end
        return out

    async def _fetch(
        self,
        path: str,
        needed: int,
        out: dict[str, list[Candle]],
        resume_ms: int,
    ) -> tuple[list[_Row], _PageData | None]:
        sess = self.session
        a = sess.allowance
        try:
            body = await sess.get(path, version=3)
        except VenueError as exc:
            if exc.status == 403 and error_code(exc.body) == ALLOWANCE_ERROR:
                a.exhausted()
                spent = AllowanceSpent(
                    f"IG refused {exc.url.split('?')[0]}: the account's historical-data allowance is exceeded "
                    f"({ALLOWANCE_ERROR}); it resets at {_iso(a.resets_at_ms)}; resume from {_iso(resume_ms)}",
                    exc.url,
                    needed=needed,
                    remaining=0,
                    total=a.total,
                    resets_at_ms=a.resets_at_ms,
                    sent=True,
                )
                spent.candles, spent.resume_ms = out, resume_ms
                raise spent from None
            raise
        try:
            doc = decode_prices(body)
        except BadPrices as exc:
            raise VenueError(200, str(exc).encode(), sess.rest_url + path) from None
        allow = doc.metadata.allowance if doc.metadata is not None and doc.metadata.allowance else doc.allowance
        self.points += len(doc.prices)
        if allow is not None:
            a.observe(allow.remainingAllowance, allow.totalAllowance, allow.allowanceExpiry, sess.clock.time_ms())
        else:
            a.spend(len(doc.prices))
            if a.remaining is None and not a.unreported:
                a.unreported = True
                log.warning(
                    "%s answers prices without metadata.allowance; the allowance cannot be tracked", sess.rest_url
                )
        return doc.prices, doc.metadata.pageData if doc.metadata is not None else None

    def _take(
        self,
        rows: list[_Row],
        t0: int,
        t1: int,
        tf: int,
        now_ms: int | None,
        sides: tuple[str, ...],
        out: dict[str, list[Candle]],
    ) -> None:
        """:func:`take_rows` with the venue's now (the answer's ``Date`` when not given); a bad row is a
        :class:`VenueError`."""
        now = now_ms
        if now is None:
            now = http_date_ms(self.session.last_date) or self.session.clock.time_ms()
        try:
            self.skipped_rows += take_rows(rows, t0, t1, tf, now, sides, out)
        except BadPrices as exc:
            raise VenueError(200, str(exc).encode(), self.session.rest_url) from None

    @property
    def stats(self) -> Mapping[str, Any]:
        remaining, total, resets = self.allowance
        return {
            **self.session.stats,
            "points": self.points,
            "skipped_rows": self.skipped_rows,
            "allowance_remaining": remaining,
            "allowance_total": total,
            "allowance_resets_at_ms": resets,
        }

    async def close(self) -> None:
        await self.session.close()
