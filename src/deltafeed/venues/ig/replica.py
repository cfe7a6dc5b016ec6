"""A local IG Markets server: REST login, markets and price history, and Lightstreamer TLCP over WebSocket and HTTP.

Speaks what ``api.ig.com/gateway/deal`` and IG's Lightstreamer endpoint speak for market data (see
../shared/PROTOCOLS.md section 4), driven by the seeded FX quotes of
:class:`~deltafeed.replicas.quotes.QuoteSim`, so a client can log in, backfill candles and stream
quotes and minute candles against it with only the base URL changed. :attr:`IGReplica.url` is both
the REST base (the ``/gateway/deal`` prefix is optional) and the ``lightstreamerEndpoint`` that
``POST /session`` hands out; the WebSocket lives at :attr:`IGReplica.ws_url` (``.../lightstreamer``), the
HTTP transport at ``.../lightstreamer/<request>.txt``.

**Epics.** An epic ``CS.D.<BASE><QUOTE>.<anything>.IP`` (e.g. ``CS.D.EURUSD.CFD.IP``, or the
``MINI``/``TODAY`` variants) is the simulator's pair ``<BASE>_<QUOTE>`` (``EUR_USD``); see
:func:`epic_pair`. Prices are served as the pair's plain decimal price (``1.08494``, ``150.123``),
the same strings as the tape. Real IG FX CFD epics are believed to quote scaled "points" (EUR/USD
``10849.4``, ``scalingFactor`` 10000) [UNVERIFIED, not in PROTOCOLS.md]: a client must not assume
either; the replica picks the unscaled price so stored candles compare with the tape directly.

**REST** (errors are IG's ``{"errorCode": ...}``; codes other than the allowance one are
[UNVERIFIED] and listed where they are raised):

* ``POST /session`` with ``X-IG-API-KEY`` and ``{"identifier", "password"}``: the v2 answer, tokens
  in the ``CST`` and ``X-SECURITY-TOKEN`` headers, a body with ``accountId``/``currentAccountId``
  and ``lightstreamerEndpoint``. Credentials left ``None`` accept any non-empty value. Every login
  belongs to the one account :attr:`IGReplica.account_id`. Tokens never expire (IG's last ~6 h
  [3P]); ``DELETE /session`` revokes them (streaming sessions already open go on). ``GET /session``
  answers the account details.
* ``GET /prices/{epic}?resolution=&from=&to=&max=&pageSize=&pageNumber=`` (v3 shape whatever the
  ``VERSION`` header says; it needs ``CST``, ``X-SECURITY-TOKEN`` and the login's ``X-IG-API-KEY``,
  else 401): bid/ask candles from the same quotes, ``lastTraded`` null, ``lastTradedVolume`` = the
  number of quotes, no row for an interval without quotes, rows oldest first. Only **complete**
  intervals by the market clock are served (the forming one never is: IG's treatment of it is not
  documented [UNVERIFIED]; its live state is on the CHART stream). Resolutions MINUTE to DAY of
  fixed length, aligned to the epoch in UTC (DAY at 00:00 UTC [UNVERIFIED for IG]); SECOND, WEEK
  and MONTH answer 400. ``from``/``to`` (``yyyy-MM-ddTHH:mm:ss``, UTC) select rows whose start is
  in ``[from, to]``, both inclusive [UNVERIFIED]; without them the last ``max`` (default 10) rows.
  Pages of ``pageSize`` rows (default 20, 0 = one page). ``snapshotTime`` is written in UTC like
  ``snapshotTimeUTC`` (IG writes it in the account's zone; the session says ``timezoneOffset`` 0).
* The v1/v2 paths (``VERSION`` 1 or 2; the path decides): ``/prices/{epic}/{resolution}/{numPoints}``,
  ``/prices/{epic}/{resolution}/{start}/{end}`` (``yyyy-MM-dd HH:mm:ss``) and ``/prices/{epic}/{resolution}
  ?startdate=&enddate=`` (v1, ``yyyy:MM:dd-HH:mm:ss``): the same rows, unpaged, ``snapshotTime`` only
  (v1 writes it ``yyyy:MM:dd-HH:mm:ss``), and the allowance at the top level (``allowance``).
* ``GET /markets/{epic}`` (v3 shape): instrument, dealing rules, and a snapshot whose bid/offer are the last
  quote and high/low/netChange/percentageChange the UTC day's mid, as the MARKET item has them.
  ``GET /accounts``: the one account. Any other path is 404 ``error.public-api.failure.not-found``.
* **Allowance**: ``allowance`` points (default 10,000) per account per ``allowance_period_s`` of wall
  time (default a week, from the first priced request); each row returned costs one point. A request
  whose page would cost more than remains is refused whole with 403
  ``error.public-api.exceeded-account-historical-data-allowance`` and costs nothing.
  ``metadata.allowance`` reports what remains after the request.

**TLCP** 2.4.0 and 2.5.0 (served alike: what the official clients 1.x and 2.x speak), over a WebSocket
(subprotocol ``TLCP-2.x.0.lightstreamer.com``) or HTTP (``POST /lightstreamer/create_session.txt``,
``bind_session.txt``, ``control.txt``, ``heartbeat.txt`` with ``?LS_protocol=TLCP-2.x.0``; the body is the
request's query lines). A session outlives its transport: HTTP streaming ends its response with ``LOOP,0``
after ``LS_content_length`` bytes, HTTP polling (``LS_polling=true``) after the first data or
``LS_idle_millis``, with ``LOOP,<LS_polling_millis>``, and so does a WebSocket bound with ``LS_polling=true``
(which stays open for the next poll, a ``bind_session`` naming no session); the client binds again
(``bind_session`` on a new WebSocket or request: ``CONOK`` then what was queued meanwhile). A session
whose transport was lost waits :data:`RECOVERY_S` for a bind; ``LS_recovery_from=N`` answers ``PROG,N``
and replays every data notification (U, SUBOK, EOS, OV, UNSUB, ...) from the N-th, from the last
:data:`RECOVERY_BYTES` kept, else ``CONERR,4`` [UNVERIFIED code]; an unknown session is ``CONERR,20``. A
WebSocket closed cleanly by the client ends its session. Over HTTP, ``REQOK``/``REQERR`` are in the control
response, the rest in the stream. Detached sessions still count towards ``max_connections`` but make room,
oldest first, for a new one.

* ``wsok`` → ``WSOK``; ``create_session`` → ``CONOK,<sid>,50000,<keepalive ms>,*`` then
  ``SERVNAME``, ``CLIENTIP`` and ``CONS,unlimited``. ``LS_password`` must be ``CST-<cst>|XST-<xst>``
  of a live login and ``LS_user``, if sent, the account id, else ``CONERR,1,...`` (TLCP's
  "user/password check failed") and the socket closes. At most ``max_connections`` concurrent
  sessions per account; the next gets ``CONERR,8,...`` (TLCP's "configured maximum number of
  sessions reached", which the official client does not retry). ``LS_keepalive_millis`` is honoured
  (at least 100 ms), else ``keepalive_ms``; ``PROBE`` is sent whenever a session was silent that long.
* ``control`` ``LS_op=add`` → ``REQOK,<reqId>`` (unless ``LS_ack=false``), ``SUBOK,<subId>,<items>,
  <fields>``, then with ``LS_snapshot=true`` one full ``U`` line per item that has data, and
  ``EOS,<subId>,<item>`` **only in DISTINCT mode**: the official client's MERGE item has no
  end-of-snapshot transition (``ItemMerge`` throws on EOS), and a MERGE snapshot is its first update.
  ``delete`` → ``REQOK``/``UNSUB,<subId>``; ``reconf``/``constrain`` → ``REQOK`` (ignored);
  ``destroy`` ends the session. Errors: ``REQERR,<reqId>,<code>,<msg>`` with 19 (sub id in use /
  not found), 21 (unknown or unsimulated item: the whole subscription is refused), 23 (a field the
  item does not have), 24 (mode not allowed for the item: MARKET and CHART:1MINUTE are MERGE,
  CHART:TICK is DISTINCT); malformed requests get ``ERROR,<code>,<msg>``.
* Items: ``MARKET:<epic>`` (BID, OFFER, UPDATE_TIME as ``HH:mm:ss`` UK local time, per IG's reference,
  MARKET_STATE ``TRADEABLE`` while the FX calendar is open and ``CLOSED`` otherwise, with no price
  updates while closed, MARKET_DELAY ``0``; MID_OPEN, HIGH, LOW, CHANGE, CHANGE_PCT from the mid
  (bid + ask) / 2 of the UTC day of the last quote, one decimal more than the pair, CHANGE_PCT to 2 places
  [UNVERIFIED: IG's day and which price its HIGH/LOW take]): one update per quote and one per open/close.
  ``CHART:<epic>:<SECOND|1MINUTE|5MINUTE|HOUR>``, described here for 1MINUTE: the forming minute's bid
  and offer OHLC, ``CONS_TICK_COUNT`` and ``LTV`` (both the quote count), ``UTM`` (the minute's
  start, epoch ms), ``CONS_END`` 0, on every quote; then, when the market clock passes the minute's
  end, one more update with only ``CONS_END`` 1 changed (a minute without quotes has no candle;
  LTP_* and TTV are null; DAY_* are the day's mid as in MARKET). ``CHART:<epic>:TICK`` (DISTINCT): BID,
  OFR, UTM and DAY_* per quote.
* ``U`` lines use TLCP compression against the previous update of the same item and subscription:
  empty = unchanged, ``^N`` = N unchanged (used for runs of 3 or more), ``#`` null, ``$`` empty;
  values percent-encode ``%``, ``|``, ``+``, CR and LF anywhere and ``#``, ``$``, ``^`` at their
  start (:func:`encode_value`). The first update a subscription gets is complete.
* Lines end with CRLF; each pump tick sends one text frame per session with every line due, items
  merged in market-time order.

Quotes are released by a pump every :data:`TICK_SECONDS` as the market clock passes them
(:class:`~deltafeed.replicas.sim.MarketClock`, any start and speed). Every quote goes out: there is
no MERGE conflation. A session more than ``max_send_buffer`` bytes behind is disconnected (counted;
a real server would conflate MERGE updates instead).

Faults (``faults=``, :mod:`deltafeed.replicas.faults`): ``close`` ends a session with
``END,48,...`` (which the official client answers with a new session) and closes the socket,
``reset`` sends a TCP RST, ``stall`` silences a session for good (no PROBE either), ``overflow``
withholds one subscribed ``MARKET`` item's updates from its session for ``OVERFLOW_S`` and then says
so with ``OV,<subId>,<item>,<lost>`` (what Lightstreamer sends a client too slow for its updates;
the next update of the item carries all its fields, as the client's copy is stale), ``http500`` and
``slow`` hit REST answers, ``poison`` sends a malformed line inside a live session (:func:`poison_line`:
``SUBCMD,1``, or a SUBOK claiming 60 million fields), and ``http429`` answers IG's rate-limit refusal, 403
``error.public-api.exceeded-api-key-allowance`` (IG does not use 429). ``drop``, ``dup``,
``reorder``, ``garbage`` and ``shutdown`` are refused: a lost or repeated MERGE delta would corrupt
the client's item state in a way a Lightstreamer server never does, and quotes have no sequence
numbers that would let a client notice.

The tape (``tape=``) is :class:`~deltafeed.replicas.quotes.QuoteTapeWriter`'s CSV
``symbol,time_ms,bid,ask`` with the **epic** as the symbol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import logging
import re
import secrets
import time
import zoneinfo
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote

import msgspec
import numpy as np
from aiohttp import WSMsgType, web

from deltafeed.model import BadInput
from deltafeed.replicas.faults import inject_connection_faults, parse_faults, reset_transport
from deltafeed.replicas.options import ReplicaOptions, options_from
from deltafeed.replicas.quotes import (
    ORIGIN_MS,
    ROW_MS,
    PairSpec,
    QuoteBatch,
    QuoteMarket,
    QuoteSim,
    QuoteTapeWriter,
    SessionCalendar,
)
from deltafeed.replicas.server import ReplicaBase
from deltafeed.replicas.sim import MarketClock

_UK = zoneinfo.ZoneInfo("Europe/London")
log = logging.getLogger(__name__)

DEFAULT_EPICS = ("CS.D.EURUSD.CFD.IP", "CS.D.USDJPY.CFD.IP", "CS.D.GBPUSD.CFD.IP")
DEFAULT_ACCOUNT = "ABC123"
TLCP_PROTOCOL = "TLCP-2.5.0.lightstreamer.com"
#: The TLCP versions served, over WebSocket (``TLCP-x.y.z.lightstreamer.com``) and HTTP (``LS_protocol=TLCP-x.y.z``):
#: 2.4.0 is what lightstreamer-client-lib 1.x speaks (trading-ig pins it), 2.5.0 what 2.x speaks.
TLCP_VERSIONS = ("TLCP-2.5.0", "TLCP-2.4.0")
TLCP_PROTOCOLS = tuple(f"{v}.lightstreamer.com" for v in TLCP_VERSIONS)
#: How long (wall) a session whose transport was lost waits for a ``bind_session`` (recovery) before it ends.
RECOVERY_S = 20.0
#: Bytes of a session's last data notifications kept for a recovery (``LS_recovery_from``).
RECOVERY_BYTES = 4 * 1024 * 1024
#: The HTTP streaming content length when the client gives none (``LS_content_length``).
CONTENT_LENGTH = 50_000_000
#: The request limit announced in CONOK (bytes of one client request); the replica does not enforce it.
REQUEST_LIMIT = 50_000
KEEPALIVE_MS = 5_000
MIN_KEEPALIVE_MS = 100
MAX_CONNECTIONS = 40
#: "By default, up to 40 simultaneous subscriptions per connection" (IG's Streaming API Guide).
SUBSCRIPTIONS_PER_CONNECTION = 40
ALLOWANCE = 10_000
ALLOWANCE_PERIOD_S = 7 * 86_400.0
TICK_SECONDS = 0.02  # pump period (wall)
MAX_SEND_BUFFER = 8 * 1024 * 1024
REST_PREFIX = "/gateway/deal"
#: IG's fixed-length resolutions, aligned to the epoch here (all multiples of the 5 s roll-up rows).
RESOLUTIONS: dict[str, int] = {
    "MINUTE": 60_000, "MINUTE_2": 120_000, "MINUTE_3": 180_000, "MINUTE_5": 300_000,
    "MINUTE_10": 600_000, "MINUTE_15": 900_000, "MINUTE_30": 1_800_000,
    "HOUR": 3_600_000, "HOUR_2": 7_200_000, "HOUR_3": 10_800_000, "HOUR_4": 14_400_000, "DAY": 86_400_000,
}  # fmt: skip
DEFAULT_MAX = 10
DEFAULT_PAGE_SIZE = 20
ALLOWANCE_ERROR = "error.public-api.exceeded-account-historical-data-allowance"
RATE_ERROR = "error.public-api.exceeded-api-key-allowance"
#: Fault kinds with an IG meaning (see the module docstring for the refused ones).
FAULT_KINDS = ("close", "reset", "stall", "overflow", "poison", "http500", "http429", "slow")
OVERFLOW_S = 0.5  # how long (wall) an ``overflow`` fault withholds one MARKET item's updates from a session

#: Item fields as IG names them (PROTOCOLS.md section 4); the ones the replica does not simulate are null.
MARKET_FIELDS = (
    "MID_OPEN",
    "HIGH",
    "LOW",
    "CHANGE",
    "CHANGE_PCT",
    "UPDATE_TIME",
    "MARKET_DELAY",
    "MARKET_STATE",
    "BID",
    "OFFER",
)
CHART_FIELDS = (
    "LTV",
    "TTV",
    "UTM",
    "DAY_OPEN_MID",
    "DAY_NET_CHG_MID",
    "DAY_PERC_CHG_MID",
    "DAY_HIGH",
    "DAY_LOW",
    "OFR_OPEN",
    "OFR_HIGH",
    "OFR_LOW",
    "OFR_CLOSE",
    "BID_OPEN",
    "BID_HIGH",
    "BID_LOW",
    "BID_CLOSE",
    "LTP_OPEN",
    "LTP_HIGH",
    "LTP_LOW",
    "LTP_CLOSE",
    "CONS_END",
    "CONS_TICK_COUNT",
)
TICK_FIELDS = (
    "BID",
    "OFR",
    "LTP",
    "LTV",
    "TTV",
    "UTM",
    "DAY_OPEN_MID",
    "DAY_NET_CHG_MID",
    "DAY_PERC_CHG_MID",
    "DAY_HIGH",
    "DAY_LOW",
)
#: The CHART candle scales IG streams, and their lengths.
CHART_SCALES = {"SECOND": 1_000, "1MINUTE": 60_000, "5MINUTE": 300_000, "HOUR": 3_600_000}
_KIND_FIELDS = {"MARKET": MARKET_FIELDS, "TICK": TICK_FIELDS, **dict.fromkeys(CHART_SCALES, CHART_FIELDS)}
_KIND_MODE = {"MARKET": "MERGE", "TICK": "DISTINCT", **dict.fromkeys(CHART_SCALES, "MERGE")}
_DAY = 86_400_000

_EPIC_RE = re.compile(r"^CS\.D\.([A-Z]{3})([A-Z]{3})\.[A-Z0-9_]+\.IP$")
_PRICES_RE = re.compile(r"^/prices/([^/]+)(/.*)?$")
_TLCP_HTTP_RE = re.compile(r"^/lightstreamer/(create_session|bind_session|control|heartbeat|msg)\.txt$")


# --- names and encoding -----------------------------------------------------------------------------


def epic_pair(epic: str) -> str:
    """The simulator's pair of an IG FX epic: ``CS.D.EURUSD.CFD.IP`` → ``EUR_USD``.

    Only ``CS.D.<6 letters>.<product>.IP`` names are FX pairs; anything else is :class:`BadInput`.
    """
    m = _EPIC_RE.match(epic)
    if m is None:
        raise BadInput(f"epic {epic!r} is not an IG FX epic; write it like CS.D.EURUSD.CFD.IP")
    return f"{m.group(1)}_{m.group(2)}"


_ENCODE_ANYWHERE = {"%": "%25", "|": "%7C", "+": "%2B", "\r": "%0D", "\n": "%0A"}
_ENCODE_FIRST = {"#": "%23", "$": "%24", "^": "%5E"}


def encode_value(value: str | None) -> str:
    """One field of a ``U`` line for a value that changed: ``#`` for null, ``$`` for the empty string,
    else the text with TLCP's percent-encoding (``%``, ``|``, ``+``, CR, LF anywhere; ``#``, ``$``,
    ``^`` as the first character, where they would read as markers). ``+`` is encoded because
    clients percent-decode with URL rules that may turn it into a space."""
    if value is None:
        return "#"
    if value == "":
        return "$"
    if any(c in value for c in _ENCODE_ANYWHERE):
        value = "".join(_ENCODE_ANYWHERE.get(c, c) for c in value)
    first = _ENCODE_FIRST.get(value[0])
    return value if first is None else first + value[1:]


def encode_fields(values: Mapping[str, str | None], schema: Iterable[str], changed: Mapping[str, Any] | None) -> str:
    """The fields part of a ``U`` line: every field of ``schema`` in ``changed`` (all when ``changed``
    is None) encoded from ``values``, the others left empty (unchanged), runs of 3 or more unchanged
    fields written ``^N`` (never longer than the empties it replaces)."""
    parts: list[str] = []
    run = 0
    for f in schema:
        if changed is None or f in changed:
            if run:
                parts.extend(("",) * run if run < 3 else (f"^{run}",))
                run = 0
            parts.append(encode_value(values[f]))
        else:
            run += 1
    if run:
        parts.extend(("",) * run if run < 3 else (f"^{run}",))
    return "|".join(parts)


def _tlcp_message(msg: str) -> str:
    """A message argument of CONERR/REQERR/END/ERROR: percent-encoded, so it holds no comma."""
    return quote(msg, safe="")


_V1_TIME_RE = re.compile(r"^(\d{4})[:/](\d{2})[:/](\d{2})[-T ](\d{2}:\d{2}:\d{2})$")


def parse_time(text: str) -> int:
    """Epoch ms of an IG date parameter: ``yyyy-MM-ddTHH:mm:ss`` (v3), ``yyyy-MM-dd HH:mm:ss`` (v2 paths)
    or ``yyyy:MM:dd-HH:mm:ss`` (v1), UTC when no offset is given. ValueError if it is none of them."""
    text = text.strip()
    m = _V1_TIME_RE.match(text)
    if m is not None:
        text = f"{m.group(1)}-{m.group(2)}-{m.group(3)}T{m.group(4)}"
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp() * 1000)


class _EpicTape(QuoteTapeWriter):
    """The quote tape with epics instead of pair names in the ``symbol`` column."""

    def __init__(self, path: str | Path, epics: Mapping[str, str]) -> None:
        super().__init__(path)
        self._specs: dict[str, PairSpec] = {}
        self._epics = dict(epics)  # pair -> epic

    def write(self, batches: Iterable[QuoteBatch]) -> None:
        out = []
        for b in batches:
            spec = self._specs.get(b.symbol)
            if spec is None:
                spec = self._specs[b.symbol] = dataclasses.replace(b.spec, symbol=self._epics[b.symbol])
            out.append(QuoteBatch(spec, b.times, b.bid, b.ask))
        super().write(out)


class _Reject(Exception):
    """An IG REST error: HTTP ``status`` with ``{"errorCode": code}``."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


# --- streaming state ----------------------------------------------------------------------------------


class _Item:
    """One streamable item (``MARKET:<epic>``, ``CHART:<epic>:1MINUTE`` or ``:TICK``): its current field
    values, its subscribers, and for charts the forming candle in integer points.

    ``values`` is only kept current while someone subscribes; ``fresh`` says whether it is, and a
    first subscriber rebuilds it from the market, so idle items cost nothing per quote.
    """

    __slots__ = (
        "ask",
        "bid",
        "day",
        "epic",
        "fields",
        "final",
        "fresh",
        "kind",
        "length",
        "minute",
        "n",
        "name",
        "spec",
        "subs",
        "symbol",
        "values",
    )

    def __init__(self, name: str, kind: str, epic: str, spec: PairSpec) -> None:
        self.name = name
        self.kind = kind  # "MARKET" | "TICK" | a CHART_SCALES key
        self.length = CHART_SCALES.get(kind, 0)  # a chart's candle length
        self.epic = epic
        self.spec = spec
        self.symbol = spec.symbol
        self.fields = _KIND_FIELDS[kind]
        self.values: dict[str, str | None] = dict.fromkeys(self.fields)
        self.subs: dict[_Sub, int] = {}  # subscription -> 1-based item index in it
        self.fresh = False
        # The chart's candle: minute start, finalized (CONS_END sent), [o, h, l, c] per side, quotes.
        self.minute: int | None = None
        self.final = False
        self.bid = [0, 0, 0, 0]
        self.ask = [0, 0, 0, 0]
        self.n = 0
        # The UTC day so far, as bid + ask sums (mid x 2): its start, open, high, low (MARKET and DAY_* fields).
        self.day: list[int] | None = None

    def day_quote(self, t: int, b: int, a: int) -> None:
        """Take quote (t, bid, ask) into the day's mid statistics (a new UTC day starts them over)."""
        m, d, day = b + a, t - t % _DAY, self.day
        if day is None or day[0] != d:
            self.day = [d, m, m, m, m]
        else:
            day[2], day[3], day[4] = max(day[2], m), min(day[3], m), m

    def day_values(self) -> dict[str, str | None]:
        """MARKET's MID_OPEN/HIGH/LOW/CHANGE/CHANGE_PCT, or a chart's DAY_* fields, from the day so far."""
        day = self.day
        if day is None:
            return {}
        # As PairSpec.mid_prices writes them (the same float steps), one decimal more than the pair's.
        div, f = float(self.spec.scale * 10), f"%.{self.spec.decimals + 1}f"
        o, h, lo, chg = (f % (x * 5 / div) for x in (day[1], day[2], day[3], day[4] - day[1]))
        pct = f"{(day[4] - day[1]) * 100 / day[1]:.2f}"
        if self.kind == "MARKET":
            return {"MID_OPEN": o, "HIGH": h, "LOW": lo, "CHANGE": chg, "CHANGE_PCT": pct}
        if self.kind == "TICK" or self.length:
            return {"DAY_OPEN_MID": o, "DAY_HIGH": h, "DAY_LOW": lo, "DAY_NET_CHG_MID": chg, "DAY_PERC_CHG_MID": pct}
        return {}

    def candle_values(self) -> dict[str, str | None]:
        p = self.spec.price
        b, a = self.bid, self.ask
        return {
            "UTM": str(self.minute), "BID_OPEN": p(b[0]), "BID_HIGH": p(b[1]), "BID_LOW": p(b[2]),
            "BID_CLOSE": p(b[3]), "OFR_OPEN": p(a[0]), "OFR_HIGH": p(a[1]), "OFR_LOW": p(a[2]),
            "OFR_CLOSE": p(a[3]), "CONS_TICK_COUNT": str(self.n), "LTV": str(self.n),
            "CONS_END": "1" if self.final else "0",
        }  # fmt: skip


class _Sub:
    """A subscription of one session: id, mode, fields asked, items, and which items had a first update."""

    __slots__ = ("conn", "fields", "id", "items", "mode", "primed")

    def __init__(self, conn: _Conn, sub_id: int, mode: str, items: list[_Item], fields: tuple[str, ...]) -> None:
        self.conn = conn
        self.id = sub_id
        self.mode = mode
        self.items = items
        self.fields = fields
        self.primed = [False] * len(items)  # a complete update went out for item i (snapshot or first)


#: Lines that are TLCP "data notifications": the ones a session counts (its progressive) and a recovery replays.
_DATA_PREFIXES = ("U,", "SUBOK,", "SUBCMD,", "UNSUB,", "EOS,", "CS,", "OV,", "CONF,", "MSGDONE,", "MSGFAIL,")
#: An outbox marker: end the current HTTP response with ``LOOP`` (content length reached, or a poll done).
_LOOP = "\x00loop"


class _Sink:
    """Where a session's lines go now: a WebSocket, or an HTTP streaming or polling response.

    Its :meth:`run` drains the attached session's outbox into the transport until the session moves to
    another sink, ends, or (HTTP) the response is done: ``content_length`` bytes written (streaming) or,
    polling, the first data written or ``idle_s`` gone by; either ends with ``LOOP`` and the session
    waits, detached, for the client's next ``bind_session``. A transport error detaches it the same way
    (``broken``), and the session is kept for a recovery."""

    def __init__(
        self,
        transport: asyncio.BaseTransport | None,
        ws: web.WebSocketResponse | None = None,
        resp: web.StreamResponse | None = None,
        *,
        content_length: int = 0,
        polling_ms: int | None = None,
        idle_s: float = 0.0,
    ) -> None:
        self.transport = transport
        self.ws = ws
        self.resp = resp
        self.conn: _Conn | None = None
        self.wake = asyncio.Event()
        self.content_length = content_length
        self.polling_ms = polling_ms
        self.idle_deadline = time.monotonic() + idle_s
        self.written = 0
        self.prog0 = 0  # the session's progressive when attached (a poll ends once data went out)
        self.broken = False
        self.looped = False  # the last thing written was a LOOP (a WebSocket stays open for the next poll)
        self.done = asyncio.Event()

    def poll(self, p: Mapping[str, str]) -> None:
        """Take a bind's polling parameters: ``LS_polling=true`` with ``LS_polling_millis``, ``LS_idle_millis``."""
        self.polling_ms = _int_or(p.get("LS_polling_millis"), 0) if p.get("LS_polling") == "true" else None
        self.idle_deadline = time.monotonic() + _int_or(p.get("LS_idle_millis"), 0) / 1000.0

    async def _write(self, frame: str) -> None:
        if self.ws is not None:
            await self.ws.send_str(frame)
        else:
            assert self.resp is not None
            data = frame.encode()
            await self.resp.write(data)
            self.written += len(data)

    async def run(self) -> None:
        try:
            while True:
                conn = self.conn
                if conn is None or conn.sink is not self:
                    return
                if not conn.outbox:
                    if self.polling_ms is not None and (
                        conn.prog > self.prog0 or time.monotonic() >= self.idle_deadline
                    ):
                        conn.outbox.append(_LOOP)
                        continue
                    self.wake.clear()
                    timeout = None if self.polling_ms is None else max(0.0, self.idle_deadline - time.monotonic())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.wake.wait(), timeout)
                    continue
                frame = conn.outbox.popleft()
                if frame is None:  # the session ended (END, CONERR, destroy): close the transport
                    conn.detach(self)
                    return
                if frame == _LOOP:
                    await self._write(f"LOOP,{self.polling_ms or 0}\r\n")
                    self.looped = True
                    conn.detach(self)
                    return
                conn.pending -= len(frame)
                await self._write(frame)
                if self.content_length and self.written >= self.content_length:
                    conn.outbox.appendleft(_LOOP)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):  # the socket went away
            self.broken = True
        except Exception:
            log.exception("ig replica: TLCP writer failed")
            self.broken = True
        finally:
            conn = self.conn
            if conn is not None and conn.sink is self:
                conn.detach(self)
            if not (self.looped and self.ws is not None):  # a polling WebSocket waits for the next bind
                await self.finish()
            self.done.set()

    async def finish(self) -> None:
        """Close the WebSocket or end the HTTP response (quietly if the peer is gone)."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            if self.ws is not None:
                await self.ws.close()
            elif self.resp is not None and not self.broken:
                await self.resp.write_eof()


class _Conn:
    """One TLCP session (or a WebSocket that has none yet), and the sink it is attached to, if any.

    Lines go through ``outbox`` to the sink's writer, so the pump never waits for a slow client; ``None``
    in the outbox closes. A session outlives its sink: detached (an HTTP response ended with LOOP, or a
    transport lost), it keeps queueing lines for the next ``bind_session``, and its last data
    notifications are kept (``recent``) so a bind with ``LS_recovery_from`` can replay what was lost."""

    def __init__(self, ip: str, on_end: Callable[[_Conn], None]) -> None:
        self.ip = ip
        self.on_end = on_end
        self.sink: _Sink | None = None
        self.detached_at: float | None = None
        self.outbox: deque[str | None] = deque()
        self.pending = 0  # bytes queued
        self.session_id: str | None = None
        self.account: str | None = None
        self.keepalive_s = KEEPALIVE_MS / 1000.0
        self.last_sent = time.monotonic()
        self.subs: dict[int, _Sub] = {}
        self.stalled = False  # a stall fault: nothing more goes out
        self.closing = False  # a close is queued or done
        self.lines_sent = 0
        self.prog = 0  # data notifications sent in this session so far
        self.recent: deque[str] = deque()  # the last of them (prog - len(recent) is the first one's)
        self.recent_bytes = 0
        self.replies: list[str] | None = None  # an HTTP control request collecting its answers

    @property
    def transport(self) -> asyncio.BaseTransport | None:
        return None if self.sink is None else self.sink.transport

    @property
    def live(self) -> bool:
        """A session attached to a transport and not closing."""
        return self.session_id is not None and not self.closing and self.sink is not None

    def attach(self, sink: _Sink) -> None:
        old = self.sink
        self.sink = sink
        self.detached_at = None
        sink.conn = self
        sink.prog0 = self.prog
        sink.looped = False
        sink.wake.set()
        if old is not None and old is not sink:
            old.wake.set()  # its writer sees it was replaced and stops

    def detach(self, sink: _Sink) -> None:
        if self.sink is sink:
            self.sink = None
            self.detached_at = time.monotonic()
        if self.closing and self.sink is None:
            self.on_end(self)

    def respond(self, lines: list[str], stats: dict[str, int], limit: int) -> None:
        """Answers to a request (REQOK, REQERR): in the HTTP control response if there is one, else streamed."""
        if self.replies is not None:
            self.replies.extend(lines)
        else:
            self.send(lines, stats, limit)

    def send(self, lines: list[str], stats: dict[str, int], limit: int) -> None:
        """Queue ``lines`` as one frame (CRLF after each); a client ``limit`` bytes behind is cut off."""
        if self.stalled or self.closing or not lines:
            return
        frame = "\r\n".join(lines) + "\r\n"
        if self.pending > limit:
            stats["slow_disconnects"] += 1
            self.abort()
            return
        if self.session_id is not None:
            for line in lines:
                if line.startswith(_DATA_PREFIXES):
                    self.prog += 1
                    self.recent.append(line)
                    self.recent_bytes += len(line)
            while self.recent_bytes > RECOVERY_BYTES:
                self.recent_bytes -= len(self.recent.popleft())
        self.outbox.append(frame)
        self.pending += len(frame)
        self.lines_sent += len(lines)
        stats["lines"] += len(lines)
        stats["bytes_sent"] += len(frame)
        self.last_sent = time.monotonic()
        if self.sink is not None:
            self.sink.wake.set()

    def close_after(self, lines: list[str], stats: dict[str, int]) -> None:
        """Send ``lines`` (e.g. CONERR or END), then close the transport and end the session."""
        if self.closing:
            return
        self.send(lines, stats, 2**62)
        self.closing = True
        self.outbox.append(None)
        if self.sink is not None:
            self.sink.wake.set()
        else:
            self.on_end(self)

    def drop(self, reset: bool = False) -> None:
        """Drop the transport now (with ``reset``, the peer gets a TCP RST); the session stays for a recovery."""
        tr = self.transport
        if tr is None or tr.is_closing():
            return
        if reset:
            reset_transport(tr)  # type: ignore[arg-type]
        else:
            tr.abort()  # type: ignore[attr-defined]

    def abort(self) -> None:
        """End the session and drop its transport."""
        if self.closing:
            return
        self.closing = True
        self.outbox.append(None)
        self.drop()
        if self.sink is None:
            self.on_end(self)
        else:
            self.sink.wake.set()


class _Login:
    """A live REST login: its tokens and the API key it was made with."""

    __slots__ = ("api_key", "cst", "xst")

    def __init__(self, cst: str, xst: str, api_key: str) -> None:
        self.cst = cst
        self.xst = xst
        self.api_key = api_key


# --- the server ------------------------------------------------------------------------------------


class IGReplica(ReplicaBase):
    """An IG REST + Lightstreamer server on ``host:port`` (0 = any free port), driven by seeded quotes.

    ``rate`` is quotes per market second per epic while the FX market is open; ``speed`` is market
    seconds per wall second; the market clock starts at ``start_ms`` (default now) and ``history_ms``
    of market before it is released (and taped) at construction. Pass ``clock`` to drive the market
    clock yourself (``speed`` and ``start_ms`` are then ignored). ``api_key``, ``username`` and
    ``password`` of None accept any non-empty value. ``keepalive_ms`` is wall time; ``allowance``
    is historical-price points per account per ``allowance_period_s`` wall seconds. :attr:`url` is both
    the REST base and the lightstreamerEndpoint. See the module docstring for the protocol and the faults.
    """

    fault_kinds = FAULT_KINDS

    venue = "ig"
    per_connection = SUBSCRIPTIONS_PER_CONNECTION
    _log = log
    shutdown_timeout = 2.0
    http_method = "*"  # every method, not only GET: IG logs in with POST and out with DELETE

    def __init__(
        self,
        epics: Iterable[str] = DEFAULT_EPICS,
        seed: int = 1,
        rate: float = 2.0,
        speed: float = 1.0,
        history_ms: int = 86_400_000,
        start_ms: int | None = None,
        tape: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        account_id: str = DEFAULT_ACCOUNT,
        max_connections: int = MAX_CONNECTIONS,
        keepalive_ms: int = KEEPALIVE_MS,
        allowance: int = ALLOWANCE,
        allowance_period_s: float = ALLOWANCE_PERIOD_S,
        max_send_buffer: int = MAX_SEND_BUFFER,
        faults: str | Mapping[str, float] | None = None,
        faults_seed: int = 0,
        slow_s: float = 2.0,
        clock: MarketClock | None = None,
        calendar: SessionCalendar | None = None,
        options: ReplicaOptions | None = None,
    ) -> None:
        # IG's symbols are epics: ``options.symbols`` are epics here.
        rates = check_faults(faults) if isinstance(faults, str) else dict(faults or {})
        o = options_from(
            options, host=host, port=port, symbols=epics, seed=seed, rate=rate, speed=speed, start_ms=start_ms,
            history_ms=history_ms, tape=tape, faults=rates, faults_seed=faults_seed,
        )  # fmt: skip
        assert o.symbols is not None and o.rate is not None and o.history_ms is not None  # resolved
        self.options = o
        for name, value in (("api_key", api_key), ("username", username), ("password", password)):
            if value is not None and not value:
                raise BadInput(
                    f"the {name.replace('_', ' ')} must not be empty (--{name.replace('_', '-')}); leave it"
                    " out to accept any"
                )
        if max_connections < 1:
            raise BadInput(f"max_connections must be at least 1, got {max_connections}")
        if keepalive_ms < MIN_KEEPALIVE_MS:
            raise BadInput(f"keepalive must be at least {MIN_KEEPALIVE_MS} ms, got {keepalive_ms}")
        if allowance < 0 or not allowance_period_s > 0:
            raise BadInput("the allowance must not be negative and its period must be positive")
        self.epics: dict[str, str] = {}  # epic -> pair
        for e in o.symbols:
            epic = e.strip().upper()
            self.epics[epic] = epic_pair(epic)
        if not self.epics:
            raise BadInput("no epics to serve; give at least one, e.g. CS.D.EURUSD.CFD.IP")
        if len(set(self.epics.values())) != len(self.epics):
            raise BadInput("two epics name the same pair; give each pair once")
        self.host = o.host
        self.port = o.port
        self.api_key = api_key
        self.username = username
        self.password = password
        self.account_id = account_id
        self.max_connections = max_connections
        self.keepalive_ms = int(keepalive_ms)
        self.allowance = int(allowance)
        self.allowance_period_s = float(allowance_period_s)
        self.max_send_buffer = max_send_buffer
        self.slow_s = slow_s
        self._clock = clock if clock is not None else MarketClock(o.speed, o.start_ms)
        if self._clock.start_ms - o.history_ms < ORIGIN_MS:
            raise BadInput("the simulated market starts on 2000-01-01; choose a later --start or a shorter --history")
        self._sim = QuoteSim(self.epics.values(), seed=o.seed, rate=o.rate, calendar=calendar)
        self._market = QuoteMarket(self._sim, self._clock.start_ms, o.history_ms)
        if o.tape is not None:
            # The history is released at construction, before a tape can be swapped in: write it now
            # (the simulator gives the same quotes for any slicing), then let the market tape the rest.
            writer = _EpicTape(o.tape, {p: e for e, p in self.epics.items()})
            writer.write(
                [self._sim.batch(s, self._market.origin_ms, self._market.released_ms + 1) for s in self._sim.specs]
            )
            self._market.tape = writer
        self._open = self._sim.calendar.is_open(self._market.released_ms)
        self._items: dict[str, _Item] = {}
        # An ``overflow`` fault under way: (subscription, item index, wall time it ends, updates withheld).
        self._overflow: tuple[_Sub, int, float, int] | None = None
        self._logins: dict[str, _Login] = {}  # cst -> login
        self._conns: dict[_Conn, None] = {}  # every session, and every WebSocket without one yet
        self._by_id: dict[str, _Conn] = {}  # session id -> session
        self._sessions: Counter[str] = Counter()  # account -> live TLCP sessions
        self._allowance_used = 0
        self._allowance_t0: float | None = None
        self._second = (-1, "")  # UPDATE_TIME cache
        self.stats: dict[str, int] = {
            "quotes": self._market.quotes_released,
            "requests": 0,
            "logins": 0,
            "price_requests": 0,
            "rows": 0,
            "allowance_used": 0,
            "400": 0,
            "401": 0,
            "403": 0,
            "404": 0,
            "sessions": 0,
            "open_sessions": 0,
            "max_concurrent_sessions": 0,
            "rejected_sessions": 0,
            "subscriptions": 0,
            "u_lines": 0,
            "overflow_lost": 0,  # updates withheld by overflow faults (announced with OV)
            "probes": 0,
            "lines": 0,
            "bytes_sent": 0,
            "slow_disconnects": 0,
            "binds": 0,  # bind_session requests that attached a session to a new transport
            "recoveries": 0,  # of them, with LS_recovery_from
            "expired_sessions": 0,  # sessions that lost their transport and were not bound again in time
            # WebSockets and HTTP create/bind requests, per TLCP version
            **{f"connections_{v}": 0 for v in TLCP_VERSIONS},
        }
        rates = dict(o.faults)
        bad = [k for k, v in rates.items() if v > 0 and k not in FAULT_KINDS]
        if bad:
            raise BadInput(f"fault kind {bad[0]!r} does not apply to IG; use {', '.join(FAULT_KINDS)}")
        self._setup_faults(rates, o.faults_seed)
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public surface --

    @property
    def sim(self) -> QuoteSim:
        return self._sim

    @property
    def market(self) -> QuoteMarket:
        return self._market

    @property
    def rest_url(self) -> str:
        """The REST base as IG spells it (``.../gateway/deal``); :attr:`url` works as well."""
        return self.url + REST_PREFIX

    @property
    def ws_url(self) -> str:
        """``ws://HOST:PORT/lightstreamer``."""
        return "ws" + self.url.removeprefix("http") + "/lightstreamer"

    async def stop(self) -> None:
        """Close every session's socket, stop the server, close the tape."""
        await self._stop_pump()
        for conn in list(self._conns):
            conn.abort()
        await self._stop_server()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._market.close()

    def summary(self) -> str:
        s = self.stats
        line = (
            f"ig replica stopped: quotes={s['quotes']} requests={s['requests']} logins={s['logins']} "
            f"price_requests={s['price_requests']} rows={s['rows']} allowance_used={s['allowance_used']} "
            f"401s={s['401']} 403s={s['403']} sessions={s['sessions']} "
            f"max_concurrent_sessions={s['max_concurrent_sessions']} rejected_sessions={s['rejected_sessions']} "
            f"subscriptions={s['subscriptions']} u_lines={s['u_lines']} probes={s['probes']}"
        )
        return line if self.faults is None else f"{line} {self.faults.summary()}"

    def allowance_remaining(self) -> int:
        """Historical-price points left in the current allowance period (all of them before the first
        price request and once a period is over)."""
        t0 = self._allowance_t0
        if t0 is None or time.monotonic() >= t0 + self.allowance_period_s:
            return self.allowance
        return self.allowance - self._allowance_used

    # -- HTTP --

    def _respond(
        self, status: int, body: Any, headers: Mapping[str, str] | None = None, counted: bool = True
    ) -> web.Response:
        if counted and str(status) in self.stats:
            self.stats[str(status)] += 1
        # Date from the market clock: what a client reads the venue's time from (IG has no time endpoint).
        h = {
            "Content-Type": "application/json; charset=UTF-8",
            "Date": email.utils.formatdate(self.clock.now_ms() / 1000, usegmt=True),
            **(headers or {}),
        }
        return web.Response(status=status, body=msgspec.json.encode(body), headers=h)

    async def _http(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith(REST_PREFIX + "/"):
            path = path[len(REST_PREFIX) :]
        if path == "/lightstreamer" and request.method == "GET":
            return await self._lightstreamer(request)
        m = _TLCP_HTTP_RE.match(path)
        if m is not None and request.method == "POST":
            return await self._http_tlcp(request, m.group(1))
        self.stats["requests"] += 1
        if self.faults is not None:
            fault = await self._rest_fault()
            if fault is not None:
                return fault
        try:
            if path == "/session":
                if request.method == "POST":
                    return await self._login(request)
                login = self._authorized(request)
                if request.method == "GET":
                    return self._respond(200, self._session_body())
                if request.method == "DELETE":
                    del self._logins[login.cst]
                    return web.Response(status=204)
                raise _Reject(405, "error.request.method-not-allowed")  # [UNVERIFIED]
            m = _PRICES_RE.match(path)
            if m is not None and request.method == "GET":
                self._authorized(request)
                rest = tuple(x for x in (m.group(2) or "").split("/") if x)
                if len(rest) > 3:
                    raise _Reject(404, "error.public-api.failure.not-found")  # [UNVERIFIED]
                version = request.headers.get("VERSION", "3" if not rest else "2")
                return self._respond(200, self._prices(m.group(1), request.query, rest, version))
            if request.method == "GET" and path.startswith("/markets/") and path.count("/") == 2:
                self._authorized(request)
                return self._respond(200, self._market_details(path.removeprefix("/markets/")))
            if request.method == "GET" and path == "/accounts":
                self._authorized(request)
                return self._respond(200, self._accounts())
            raise _Reject(404, "error.public-api.failure.not-found")  # [UNVERIFIED]
        except _Reject as e:
            return self._respond(e.status, {"errorCode": e.code})

    async def _rest_fault(self) -> web.Response | None:
        """Faults due on this REST request: ``slow`` delays it; ``http500`` or ``http429`` answers it."""
        f = self.faults
        assert f is not None
        if f.due("slow"):
            self._injected("slow")
            await asyncio.sleep(self.slow_s)
        if f.due("http500"):
            self._injected("http500")
            return self._respond(500, {"errorCode": "error.public-api.failure.internal"}, counted=False)  # [UNVERIFIED]
        if f.due("http429"):
            self._injected("http429")
            return self._respond(403, {"errorCode": RATE_ERROR}, counted=False)
        return None

    def _session_body(self) -> dict[str, Any]:
        # v2 names the account ``currentAccountId``, v3 ``accountId`` (trading-ig's fixture): both given.
        return {
            "accountType": "CFD",
            "currencyIsoCode": "GBP",
            "currency": "GBP",
            "locale": "en_GB",
            "clientId": "100112233",
            "accountId": self.account_id,
            "currentAccountId": self.account_id,
            "timezoneOffset": 0,
            "lightstreamerEndpoint": self.url,
            "accounts": [{"accountId": self.account_id, "accountName": "CFD", "preferred": True, "accountType": "CFD"}],
            "dealingEnabled": False,
            "hasActiveDemoAccounts": True,
            "hasActiveLiveAccounts": False,
            "trailingStopsEnabled": False,
        }

    async def _login(self, request: web.Request) -> web.Response:
        key = request.headers.get("X-IG-API-KEY", "")
        if not key or (self.api_key is not None and key != self.api_key):
            raise _Reject(401, "error.security.api-key-invalid")  # [UNVERIFIED] status and code
        try:
            body = msgspec.json.decode(await request.read())
        except msgspec.DecodeError:
            raise _Reject(400, "validation.invalid.body") from None  # [UNVERIFIED]
        if not isinstance(body, dict):
            raise _Reject(400, "validation.invalid.body")
        ident, pw = body.get("identifier"), body.get("password")
        if not isinstance(ident, str) or not isinstance(pw, str) or not ident or not pw:
            raise _Reject(400, "validation.null-not-allowed.request")  # [UNVERIFIED]
        if (self.username is not None and ident != self.username) or (
            self.password is not None and pw != self.password
        ):
            raise _Reject(401, "error.security.invalid-details")
        login = _Login(secrets.token_hex(16), secrets.token_hex(16), key)
        self._logins[login.cst] = login
        self.stats["logins"] += 1
        return self._respond(200, self._session_body(), {"CST": login.cst, "X-SECURITY-TOKEN": login.xst})

    def _authorized(self, request: web.Request) -> _Login:
        h = request.headers
        cst, xst, key = h.get("CST", ""), h.get("X-SECURITY-TOKEN", ""), h.get("X-IG-API-KEY", "")
        if not cst or not xst:
            raise _Reject(401, "error.security.client-token-missing")  # [UNVERIFIED]
        login = self._logins.get(cst)
        if login is None or login.xst != xst:
            raise _Reject(401, "error.security.client-token-invalid")  # [UNVERIFIED]
        if key != login.api_key:
            raise _Reject(401, "error.security.api-key-invalid")  # [UNVERIFIED]
        return login

    # -- prices --

    def _allowance_window(self) -> float:
        """Seconds until the allowance resets (starting a new period if the last one is over)."""
        now = time.monotonic()
        if self._allowance_t0 is None or now >= self._allowance_t0 + self.allowance_period_s:
            self._allowance_t0 = now
            self._allowance_used = 0
        return self._allowance_t0 + self.allowance_period_s - now

    def _prices(
        self, epic: str, q: Mapping[str, str], path: tuple[str, ...] = (), version: str = "3"
    ) -> dict[str, Any]:
        """Historical prices. v3: ``/prices/{epic}?resolution=&from=&to=&max=&pageSize=&pageNumber=``; v1/v2
        (``path`` = the segments after the epic): ``/{resolution}/{numPoints}``, ``/{resolution}/{start}/{end}``
        or ``/{resolution}?startdate=&enddate=``, in v1's or v2's row shape (``VERSION`` 1 or 2)."""
        symbol = self.epics.get(epic)
        if symbol is None:
            raise _Reject(404, "error.service.marketdata.instrument.epic.unavailable")  # [UNVERIFIED]
        self.stats["price_requests"] += 1
        if path:  # v1/v2: everything in one answer, no paging
            q = {"resolution": path[0], "from": q.get("startdate", ""), "to": q.get("enddate", ""), "pageSize": "0"}
            if len(path) == 2:
                q["max"] = path[1]
            elif len(path) == 3:
                q["from"], q["to"] = path[1], path[2]
            version = "1" if version == "1" else "2"
        else:
            version = "3"
        resolution = q.get("resolution", "MINUTE")
        g = RESOLUTIONS.get(resolution)
        if g is None:
            raise _Reject(400, "validation.invalid.resolution")  # [UNVERIFIED]; SECOND, WEEK, MONTH too
        start = self._date_param(q, "from")
        end = self._date_param(q, "to")
        if start is not None and end is not None and end < start:
            raise _Reject(400, "validation.invalid.daterange")  # [UNVERIFIED]
        max_rows = self._int_param(q, "max", DEFAULT_MAX, 1)
        page_size = self._int_param(q, "pageSize", DEFAULT_PAGE_SIZE, 0)
        page_number = self._int_param(q, "pageNumber", 1, 1)
        self._tick()  # release everything up to now, so "complete" is judged on the current clock
        # Complete = every quote of it is out (times <= released_ms): open times below ``complete_hi``.
        done = self._market.released_ms + 1
        complete_hi = done - done % g
        if start is None and end is None:
            table = self._market.candles(symbol, g, None, complete_hi, max_rows, False, done)
        else:
            hi = complete_hi if end is None else min(complete_hi, end + 1)
            table = self._market.candles(symbol, g, start, hi, 2**62, True, done)
        total = len(table)
        pages = 1 if page_size == 0 else max(1, -(-total // page_size))
        lo_i, hi_i = (0, total) if page_size == 0 else ((page_number - 1) * page_size, page_number * page_size)
        hi_i = min(hi_i, total)
        lo_i = min(lo_i, hi_i)
        n = hi_i - lo_i
        expiry = self._allowance_window()
        if self._allowance_used + n > self.allowance:
            raise _Reject(403, ALLOWANCE_ERROR)
        self._allowance_used += n
        self.stats["allowance_used"] += n
        self.stats["rows"] += n
        rows = _price_rows(
            table.spec,
            table.open_time[lo_i:hi_i],
            table.volume[lo_i:hi_i],
            {s: tuple(x[lo_i:hi_i] for x in table.ohlc[s]) for s in ("bid", "ask")},
            version,
        )
        allowance = {
            "remainingAllowance": self.allowance - self._allowance_used,
            "totalAllowance": self.allowance,
            "allowanceExpiry": int(expiry),
        }
        if path:
            return {"prices": rows, "instrumentType": "CURRENCIES", "allowance": allowance}
        return {
            "prices": rows,
            "instrumentType": "CURRENCIES",
            "metadata": {
                "allowance": allowance,
                "size": n,
                "pageData": {"pageSize": page_size, "pageNumber": page_number, "totalPages": pages},
            },
        }

    def _day(self, symbol: str) -> tuple[tuple[int, int, int] | None, list[int] | None]:
        """The last quote released, and its UTC day so far as :attr:`_Item.day` holds it (start, open,
        high, low, last as bid + ask sums)."""
        last = self._market.last_quote(symbol)
        if last is None:
            return None, None
        d = last[0] - last[0] % _DAY
        done = self._market.released_ms + 1
        mid = self._market.candles(symbol, _DAY, d, d + _DAY, 1, True, done).ohlc["mid"]  # bid + ask sums
        return last, [d, *(int(x[0]) for x in mid)]  # start, open, high, low, last

    def _market_details(self, epic: str) -> dict[str, Any]:
        """``GET /markets/{epic}`` (v3 shape): the instrument, its dealing rules and a snapshot of the
        market from the simulator (bid/offer the last quote; high, low and the change of the UTC day's mid)."""
        symbol = self.epics.get(epic)
        if symbol is None:
            raise _Reject(404, "error.service.marketdata.instrument.epic.unavailable")  # [UNVERIFIED]
        self._tick()
        spec = self._sim.specs[symbol]
        last, day = self._day(symbol)
        item = _Item(f"MARKET:{epic}", "MARKET", epic, spec)
        item.day = day
        v = item.day_values()

        def num(x: str | None) -> float | None:
            return None if x is None else float(x)

        base, quote_ccy = symbol.split("_")
        return {
            "instrument": {
                "epic": epic, "name": f"{base}/{quote_ccy}", "type": "CURRENCIES", "expiry": "-",
                "marketId": f"{base}{quote_ccy}", "lotSize": 1.0, "unit": "CONTRACTS",
                "currencies": [{"code": quote_ccy, "symbol": quote_ccy, "baseExchangeRate": 1.0, "exchangeRate": 1.0,
                                "isDefault": True}],
                "onePipMeans": f"{10 ** -(spec.decimals - 1):g} {base}/{quote_ccy}", "valueOfOnePip": "1.00",
                "streamingPricesAvailable": True, "forceOpenAllowed": True, "stopsLimitsAllowed": True,
                "controlledRiskAllowed": True, "marketStatus": None,
            },
            "dealingRules": {
                "minDealSize": {"unit": "POINTS", "value": 0.5},
                "minNormalStopOrLimitDistance": {"unit": "POINTS", "value": 2.0},
                "marketOrderPreference": "AVAILABLE_DEFAULT_ON",
                "trailingStopsPreference": "AVAILABLE",
            },
            "snapshot": {
                "marketStatus": "TRADEABLE" if self._open else "CLOSED",
                "netChange": num(v.get("CHANGE")), "percentageChange": num(v.get("CHANGE_PCT")),
                "updateTime": None if last is None else self._update_time(last[0]), "delayTime": 0,
                "bid": None if last is None else float(spec.price(last[1])),
                "offer": None if last is None else float(spec.price(last[2])),
                "high": num(v.get("HIGH")), "low": num(v.get("LOW")), "binaryOdds": None,
                "decimalPlacesFactor": spec.decimals, "scalingFactor": 1, "controlledRiskExtraSpread": 0,
            },
        }  # fmt: skip

    def _accounts(self) -> dict[str, Any]:
        """``GET /accounts``: the one account, with a balance that never moves (no dealing here)."""
        return {
            "accounts": [
                {
                    "accountId": self.account_id, "accountName": "CFD", "accountAlias": None, "status": "ENABLED",
                    "accountType": "CFD", "preferred": True, "currency": "GBP", "canTransferFrom": True,
                    "canTransferTo": True,
                    "balance": {"balance": 10_000.0, "deposit": 0.0, "profitLoss": 0.0, "available": 10_000.0},
                }
            ]
        }  # fmt: skip

    @staticmethod
    def _date_param(q: Mapping[str, str], name: str) -> int | None:
        v = q.get(name)
        if v is None or v == "":
            return None
        try:
            return parse_time(v)
        except ValueError:
            raise _Reject(400, f"validation.invalid.{name}") from None  # [UNVERIFIED]

    @staticmethod
    def _int_param(q: Mapping[str, str], name: str, default: int, least: int) -> int:
        v = q.get(name)
        if v is None or v == "":
            return default
        if not (v.isascii() and v.isdigit() and len(v) <= 9) or int(v) < least:
            raise _Reject(400, f"validation.invalid.{name}")  # [UNVERIFIED]
        return int(v)

    # -- TLCP --

    def _new_conn(self, request: web.Request) -> _Conn:
        conn = _Conn(request.remote or "?", self._end_session)
        self._conns[conn] = None
        return conn

    async def _lightstreamer(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        protocol = next((p for p in offered if p in TLCP_PROTOCOLS), None)
        if protocol is None:
            return web.Response(status=400, text=f"offer a WebSocket subprotocol of {', '.join(TLCP_PROTOCOLS)}\n")
        self.stats[f"connections_{protocol.removesuffix('.lightstreamer.com')}"] += 1
        ws = web.WebSocketResponse(protocols=(protocol,), autoping=True)
        await ws.prepare(request)
        sink = _Sink(request.transport, ws=ws)
        self._new_conn(request).attach(sink)
        writer = asyncio.create_task(sink.run(), name="ig-replica-ws-writer")
        self._tasks.add(writer)
        writer.add_done_callback(self._tasks.discard)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    self._on_frame(sink, msg.data)
                    if writer.done() and sink.conn is not None and sink.conn.sink is sink:  # polled again
                        writer = asyncio.create_task(sink.run(), name="ig-replica-ws-writer")
                        self._tasks.add(writer)
                        writer.add_done_callback(self._tasks.discard)
                except Exception:  # a bug must not kill the server; the client gets ERROR
                    log.exception("ig replica: TLCP request failed: %r", msg.data[:200])
                    if sink.conn is not None:
                        sink.conn.send(
                            [f"ERROR,66,{_tlcp_message('unexpected error')}"], self.stats, self.max_send_buffer
                        )
        finally:
            conn = sink.conn
            if conn is not None and (conn.sink is sink or (conn.sink is None and sink.looped)):
                # A client that closed its WebSocket cleanly is gone; a lost one may bind again (recovery).
                if ws.close_code not in (None, 1006) or conn.session_id is None:
                    conn.abort()
                else:
                    conn.detach(sink)
            if not writer.done():
                writer.cancel()
        return ws

    async def _http_tlcp(self, request: web.Request, name: str) -> web.StreamResponse:
        """TLCP over HTTP: ``create_session.txt`` and ``bind_session.txt`` stream (or poll) the session's
        lines in the response; ``control.txt``, ``heartbeat.txt`` and ``msg.txt`` answer in their own."""
        version = request.query.get("LS_protocol", "")
        text_headers = {"Content-Type": "text/enriched; charset=UTF-8", "Cache-Control": "no-store"}
        if version not in TLCP_VERSIONS:
            msg = f"LS_protocol must be one of {', '.join(TLCP_VERSIONS)}"
            return web.Response(status=200, text=f"ERROR,61,{_tlcp_message(msg)}\r\n", headers=text_headers)
        body = (await request.read()).decode("utf-8", "replace")
        lines = [ln for ln in body.split("\r\n") if ln] or [""]
        if name in ("control", "heartbeat", "msg"):
            conn = self._by_id.get(request.query.get("LS_session", ""))
            if conn is None:
                return web.Response(
                    status=200, text=f"ERROR,20,{_tlcp_message('session not found')}\r\n", headers=text_headers
                )
            conn.replies = []
            try:
                for line in lines:
                    p = dict(parse_qsl(line, keep_blank_values=True))
                    if name == "control":
                        self._control(conn, p)
                    elif name == "heartbeat":
                        conn.replies.append(f"REQOK,{p['LS_reqId']}" if "LS_reqId" in p else "REQOK")
                    else:
                        conn.replies.append(
                            f"REQERR,{p.get('LS_reqId', '0')},{65},{_tlcp_message('messages are not served')}"
                        )
                out = conn.replies
            finally:
                conn.replies = None
            return web.Response(status=200, text="".join(f"{x}\r\n" for x in out), headers=text_headers)
        self.stats[f"connections_{version}"] += 1
        p = dict(parse_qsl(lines[0], keep_blank_values=True))
        polling = p.get("LS_polling") == "true"
        resp = web.StreamResponse(status=200, headers=text_headers)
        await resp.prepare(request)
        sink = _Sink(
            request.transport,
            resp=resp,
            content_length=_int_or(p.get("LS_content_length"), CONTENT_LENGTH),
            polling_ms=_int_or(p.get("LS_polling_millis"), 0) if polling else None,
            idle_s=_int_or(p.get("LS_idle_millis"), 0) / 1000.0,
        )
        if name == "create_session":
            conn = self._new_conn(request)
            conn.attach(sink)
            self._create_session(conn, p)
        else:
            self._bind_session(sink, p)
        await sink.run()
        return resp

    def _end_session(self, conn: _Conn) -> None:
        self._conns.pop(conn, None)
        if conn.session_id is None:
            return
        for sub in conn.subs.values():
            self._unsubscribe(sub)
        conn.subs.clear()
        assert conn.account is not None
        self._sessions[conn.account] -= 1
        self.stats["open_sessions"] -= 1
        self._by_id.pop(conn.session_id, None)
        conn.session_id = None

    def _on_frame(self, sink: _Sink, text: str) -> None:
        """A client frame: a request name, then one query line per request (the client may batch)."""
        lines = [ln for ln in text.split("\r\n") if ln]
        if not lines:
            return
        name, queries = lines[0], lines[1:] or [""]
        for query in queries:
            conn = sink.conn
            if conn is None:
                return
            params = dict(parse_qsl(query, keep_blank_values=True))
            if name == "wsok":
                conn.send(["WSOK"], self.stats, self.max_send_buffer)
            elif name == "create_session":
                self._create_session(conn, params)
            elif name == "bind_session":
                self._bind_session(sink, params)
            elif name == "control":
                self._control(conn, params)
            elif name == "heartbeat":
                if "LS_reqId" in params and params.get("LS_ack") != "false":
                    conn.send([f"REQOK,{params['LS_reqId']}"], self.stats, self.max_send_buffer)
            else:
                conn.send(
                    [f"ERROR,65,{_tlcp_message(f'unsupported request {name}')}"], self.stats, self.max_send_buffer
                )

    def _keepalive(self, conn: _Conn, p: Mapping[str, str]) -> int:
        keepalive = self.keepalive_ms
        req = p.get("LS_keepalive_millis", "")
        if req.isascii() and req.isdigit():
            keepalive = max(MIN_KEEPALIVE_MS, int(req))
        conn.keepalive_s = keepalive / 1000.0
        return keepalive

    def _create_session(self, conn: _Conn, p: Mapping[str, str]) -> None:
        if conn.session_id is not None:
            conn.send(
                [f"ERROR,65,{_tlcp_message('a session already runs on this connection')}"],
                self.stats,
                self.max_send_buffer,
            )
            return
        password = p.get("LS_password", "")
        cst, _, xst = password.partition("|")
        login = self._logins.get(cst.removeprefix("CST-")) if cst.startswith("CST-") else None
        user = p.get("LS_user")
        if login is None or xst != f"XST-{login.xst}" or (user is not None and user != self.account_id):
            self.stats["rejected_sessions"] += 1
            conn.close_after([f"CONERR,1,{_tlcp_message('User/password check failed')}"], self.stats)
            return
        account = self.account_id
        if self._sessions[account] >= self.max_connections:
            # Sessions waiting for a recovery make room first, oldest first.
            waiting = sorted(
                (c for c in self._by_id.values() if c.account == account and c.sink is None),
                key=lambda c: c.detached_at or 0.0,
            )
            for c in waiting[: self._sessions[account] - self.max_connections + 1]:
                c.abort()
        if self._sessions[account] >= self.max_connections:
            self.stats["rejected_sessions"] += 1
            msg = f"Too many concurrent sessions for account {account} (at most {self.max_connections})"
            conn.close_after([f"CONERR,8,{_tlcp_message(msg)}"], self.stats)
            return
        keepalive = self._keepalive(conn, p)
        conn.session_id = "S" + secrets.token_hex(12)
        self._by_id[conn.session_id] = conn
        conn.account = account
        self._sessions[account] += 1
        self.stats["sessions"] += 1
        self.stats["open_sessions"] += 1
        self.stats["max_concurrent_sessions"] = max(self.stats["max_concurrent_sessions"], self.stats["open_sessions"])
        conn.send(
            [
                f"CONOK,{conn.session_id},{REQUEST_LIMIT},{keepalive},*",
                "SERVNAME,deltafeed IG replica",
                f"CLIENTIP,{conn.ip}",
                "CONS,unlimited",
            ],
            self.stats,
            self.max_send_buffer,
        )

    def _bind_session(self, sink: _Sink, p: Mapping[str, str]) -> None:
        """Attach the session ``LS_session`` to this transport: ``CONOK`` first, then what it queued while
        detached; with ``LS_recovery_from=N``, ``PROG,N`` and every data notification from the N-th on
        (what the client never received), when they are still kept, else ``CONERR,4``."""
        here = sink.conn  # a WebSocket's own (session-less) connection, or None for an HTTP bind
        sid = p.get("LS_session", "")
        if not sid and here is not None and sink.looped:  # the next poll on a WebSocket names no session
            sid = here.session_id or ""
        conn = self._by_id.get(sid)
        refuse = here if here is not None else _Conn("?", self._end_session)
        if here is None:
            refuse.attach(sink)
        if conn is None or conn.closing:
            refuse.close_after([f"CONERR,20,{_tlcp_message('session not found')}"], self.stats)
            return
        if here is conn and conn.sink is None and sink.looped:  # WS-POLLING: the next poll on the same WebSocket
            here = None
        if here is conn:
            conn.send(
                [f"ERROR,65,{_tlcp_message('this connection is bound already')}"], self.stats, self.max_send_buffer
            )
            return
        recover = p.get("LS_recovery_from")
        first = conn.prog - len(conn.recent)
        if recover is not None and not (recover.isdigit() and first <= int(recover) <= conn.prog):
            refuse.close_after(
                [f"CONERR,4,{_tlcp_message(f'cannot recover from {recover}')}"], self.stats
            )  # [UNVERIFIED] code
            return
        keepalive = self._keepalive(conn, p)
        head = [f"CONOK,{conn.session_id},{REQUEST_LIMIT},{keepalive},*", "SERVNAME,deltafeed IG replica",
                f"CLIENTIP,{conn.ip}", "CONS,unlimited"]  # fmt: skip
        if recover is not None:  # what was queued is in ``recent`` (data) or stale (PROBE, REQOK): replaced
            self.stats["recoveries"] += 1
            n = int(recover)
            conn.outbox.clear()
            conn.pending = 0
            head += [f"PROG,{n}", *list(conn.recent)[n - first :]]
        # First what this WebSocket queued before (WSOK), then CONOK, then what the session queued.
        frames = [x for x in (here.outbox if here is not None else ()) if x is not None]
        frames.append("\r\n".join(head) + "\r\n")
        if here is not None:
            self._conns.pop(here, None)
        conn.outbox.extendleft(reversed(frames))
        conn.pending += sum(map(len, frames))
        self.stats["binds"] += 1
        if sink.ws is not None:
            sink.poll(p)
        conn.attach(sink)

    def _control(self, conn: _Conn, p: Mapping[str, str]) -> None:
        req_id = p.get("LS_reqId", "")
        op = p.get("LS_op", "")
        ack = p.get("LS_ack", "true") != "false"
        if not req_id.isdigit():
            conn.respond([f"ERROR,65,{_tlcp_message('LS_reqId missing')}"], self.stats, self.max_send_buffer)
            return
        if conn.session_id is None:
            conn.respond(
                [f"REQERR,{req_id},20,{_tlcp_message('no session on this connection')}"],
                self.stats,
                self.max_send_buffer,
            )
            return
        if op == "add":
            self._add(conn, req_id, ack, p)
        elif op == "delete":
            sid = p.get("LS_subId", "")
            sub = conn.subs.pop(int(sid), None) if sid.isdigit() else None
            if sub is None:
                conn.respond(
                    [f"REQERR,{req_id},19,{_tlcp_message('subscription not found')}"], self.stats, self.max_send_buffer
                )
                return
            self._unsubscribe(sub)
            conn.respond([f"REQOK,{req_id}"] * ack, self.stats, self.max_send_buffer)
            conn.send([f"UNSUB,{sub.id}"], self.stats, self.max_send_buffer)
        elif op == "destroy":
            self._end_session(conn)
            if conn.replies is not None:  # over HTTP: the answer is the control response's; the stream ends
                conn.replies.extend([f"REQOK,{req_id}"] * ack)
                conn.close_after([f"END,31,{_tlcp_message('destroyed by the client')}"], self.stats)
            else:
                conn.close_after([f"REQOK,{req_id}"] * ack, self.stats)
        elif op in ("reconf", "constrain"):
            if ack:
                conn.respond([f"REQOK,{req_id}"], self.stats, self.max_send_buffer)
        else:
            conn.respond(
                [f"REQERR,{req_id},32,{_tlcp_message(f'unsupported LS_op {op!r}')}"], self.stats, self.max_send_buffer
            )

    def _item(self, name: str) -> _Item | None:
        item = self._items.get(name)
        if item is not None:
            return item
        parts = name.split(":")
        if parts[0] == "MARKET" and len(parts) == 2:
            kind = "MARKET"
        elif parts[0] == "CHART" and len(parts) == 3 and (parts[2] in CHART_SCALES or parts[2] == "TICK"):
            kind = parts[2]
        else:
            return None
        symbol = self.epics.get(parts[1])
        if symbol is None:
            return None
        item = self._items[name] = _Item(name, kind, parts[1], self._sim.specs[symbol])
        return item

    def _add(self, conn: _Conn, req_id: str, ack: bool, p: Mapping[str, str]) -> None:
        def refuse(code: int, msg: str) -> None:
            conn.respond([f"REQERR,{req_id},{code},{_tlcp_message(msg)}"], self.stats, self.max_send_buffer)

        sid = p.get("LS_subId", "")
        if not sid.isdigit():
            return refuse(19, "LS_subId missing")
        sub_id = int(sid)
        if sub_id in conn.subs:
            return refuse(19, f"subscription {sub_id} already exists")
        mode = p.get("LS_mode", "")
        names = p.get("LS_group", "").split()
        fields = tuple(p.get("LS_schema", "").split())
        if mode not in ("MERGE", "DISTINCT", "RAW", "COMMAND"):
            return refuse(24, f"bad mode {mode!r}")
        if not names or not fields:
            return refuse(21 if not names else 23, "empty group or schema")
        items: list[_Item] = []
        for n in names:
            item = self._item(n)
            if item is None:
                return refuse(
                    21,
                    f"unknown item {n} (served: MARKET:<epic>, CHART:<epic>:<{'|'.join(CHART_SCALES)}|TICK> "
                    f"for {', '.join(self.epics)})",
                )
            items.append(item)
        for item in items:
            wrong = [f for f in fields if f not in item.fields]
            if wrong:
                return refuse(23, f"item {item.name} has no field {wrong[0]}")
            if _KIND_MODE[item.kind] != mode:
                return refuse(24, f"item {item.name} is served in {_KIND_MODE[item.kind]} mode only")
        held = sum(len(s.items) for s in conn.subs.values())
        if not all(self._may_subscribe(held + i) for i in range(len(items))):
            # A Metadata Adapter refusal (code <= 0); IG's code and wording are [UNVERIFIED].
            return refuse(0, f"more than {self.per_connection} subscriptions on this connection")
        self._tick()  # everything up to now goes out first, so the snapshot is current and nothing repeats
        sub = _Sub(conn, sub_id, mode, items, fields)
        conn.subs[sub_id] = sub
        self.stats["subscriptions"] += 1
        conn.respond([f"REQOK,{req_id}"] * ack, self.stats, self.max_send_buffer)
        out = [f"SUBOK,{sub_id},{len(items)},{len(fields)}"]
        snap = p.get("LS_snapshot", "false")
        for i, item in enumerate(items):
            if not item.fresh:
                self._rebuild(item)
            item.subs[sub] = i + 1
            if snap != "false" and any(item.values[f] is not None for f in item.fields):
                out.append(f"U,{sub_id},{i + 1},{encode_fields(item.values, fields, None)}")
                sub.primed[i] = True
                self.stats["u_lines"] += 1
            if snap != "false" and mode == "DISTINCT":
                out.append(f"EOS,{sub_id},{i + 1}")
        conn.send(out, self.stats, self.max_send_buffer)

    def _unsubscribe(self, sub: _Sub) -> None:
        for item in sub.items:
            item.subs.pop(sub, None)
            if not item.subs:
                item.fresh = False  # nobody listens: stop maintaining it

    # -- item state --

    def _update_time(self, t: int) -> str:
        # IG's streaming reference: UPDATE_TIME is UK local time (GMT or BST).
        sec = t // 1000
        if sec != self._second[0]:
            local = dt.datetime.fromtimestamp(sec, _UK)
            self._second = (sec, local.strftime("%H:%M:%S"))
        return self._second[1]

    def _rebuild(self, item: _Item) -> None:
        """Set a (so far unmaintained) item's values from the market as released so far."""
        v: dict[str, str | None] = dict.fromkeys(item.fields)
        spec = item.spec
        done = self._market.released_ms + 1
        last, item.day = self._day(item.symbol)
        v.update(item.day_values())
        if item.kind == "MARKET":
            v["MARKET_DELAY"] = "0"
            v["MARKET_STATE"] = "TRADEABLE" if self._open else "CLOSED"
            if last is not None:
                v["BID"], v["OFFER"] = spec.price(last[1]), spec.price(last[2])
                v["UPDATE_TIME"] = self._update_time(last[0])
        elif item.kind == "TICK":
            if last is not None:
                v["BID"], v["OFR"], v["UTM"] = spec.price(last[1]), spec.price(last[2]), str(last[0])
        else:
            # The candle of the last quote; complete (CONS_END 1) once every quote of it is out, as in _events.
            item.minute = None
            if last is not None:
                g = item.length
                m = last[0] - last[0] % g
                item.minute, item.final = m, m + g <= done
                if g % ROW_MS == 0:  # from the market's rows
                    table = self._market.candles(item.symbol, g, m, m + g, 1, True, done)
                    item.n = int(table.volume[0])
                    item.bid = [int(x[0]) for x in table.ohlc["bid"]]
                    item.ask = [int(x[0]) for x in table.ohlc["ask"]]
                else:  # shorter than a row: from the quotes
                    q = self._sim.batch(item.symbol, m, done)
                    item.n = len(q.bid)
                    item.bid = [int(q.bid[0]), int(q.bid.max()), int(q.bid.min()), int(q.bid[-1])]
                    item.ask = [int(q.ask[0]), int(q.ask.max()), int(q.ask.min()), int(q.ask[-1])]
                v.update(item.candle_values())
        item.values = v
        item.fresh = True

    def _transitions(self, a: int, b: int) -> list[tuple[int, bool]]:
        """Calendar changes at times ``a < t <= b``: (time, open after it)."""
        cal = self._sim.calendar
        out: list[tuple[int, bool]] = []
        t, is_open = a, self._open
        while True:
            nxt = cal.next_close(t) if is_open else cal.next_open(t)
            if nxt is None or nxt > b:
                return out
            is_open = not is_open
            t = int(nxt)
            out.append((t, is_open))

    def _events(
        self, item: _Item, batch: QuoteBatch | None, transitions: list[tuple[int, bool]], now: int
    ) -> list[tuple[int, dict[str, str | None]]]:
        """The item's updates for this tick, in market time: (time, new values of some fields)."""
        events: list[tuple[int, dict[str, str | None]]] = []
        times: list[int] = []
        bids: list[int] = []
        asks: list[int] = []
        if batch is not None:
            times, bids, asks = batch.times.tolist(), batch.bid.tolist(), batch.ask.tolist()
        price = item.spec.price
        if item.kind == "MARKET":
            k = 0
            for t, b, a in zip(times, bids, asks, strict=True):
                while k < len(transitions) and transitions[k][0] <= t:
                    events.append(_state_event(transitions[k]))
                    k += 1
                item.day_quote(t, b, a)
                events.append(
                    (t, {"BID": price(b), "OFFER": price(a), "UPDATE_TIME": self._update_time(t), **item.day_values()})
                )
            events += [_state_event(tr) for tr in transitions[k:]]
        elif item.kind == "TICK":
            for t, b, a in zip(times, bids, asks, strict=True):
                item.day_quote(t, b, a)
                events.append((t, {"BID": price(b), "OFR": price(a), "UTM": str(t), **item.day_values()}))
        else:
            length = item.length
            for t, b, a in zip(times, bids, asks, strict=True):
                item.day_quote(t, b, a)
                m = t - t % length
                if item.minute is not None and m != item.minute and not item.final:
                    item.final = True
                    events.append((item.minute + length, {"CONS_END": "1"}))
                if m != item.minute:
                    item.minute, item.final, item.n = m, False, 1
                    item.bid, item.ask = [b, b, b, b], [a, a, a, a]
                else:
                    item.n += 1
                    bb, aa = item.bid, item.ask
                    bb[1], bb[2], bb[3] = max(bb[1], b), min(bb[2], b), b
                    aa[1], aa[2], aa[3] = max(aa[1], a), min(aa[2], a), a
                events.append((t, {**item.candle_values(), **item.day_values()}))
            if item.minute is not None and not item.final and item.minute + length <= now + 1:
                item.final = True
                events.append((item.minute + length, {"CONS_END": "1"}))
        return events

    # -- the pump --

    async def _pump(self) -> None:
        while True:
            try:
                self._tick()
                self._housekeeping()
            except Exception:  # keep serving; a broken tick is a bug to see in the log, not a dead replica
                log.exception("ig replica: pump tick failed")
            await asyncio.sleep(TICK_SECONDS)

    def _tick(self) -> None:
        """Release quotes up to the market clock's now and send every subscribed item's updates."""
        prev = self._market.released_ms
        now = self._clock.now_ms()
        if now <= prev:
            return
        batches = self._market.advance_to(now)
        self.stats["quotes"] = self._market.quotes_released
        transitions = self._transitions(prev, now)
        if transitions:
            self._open = transitions[-1][1]
        out: dict[_Conn, list[tuple[int, int, str]]] = {}
        seq = 0
        for item in self._items.values():
            if not item.subs:
                continue
            events = self._events(item, batches.get(item.symbol), transitions, now)
            subs = [(s, i) for s, i in item.subs.items() if not s.conn.stalled and not s.conn.closing]
            for t, new in events:
                changed = {f: v for f, v in new.items() if item.values[f] != v}
                item.values.update(changed)
                if not subs:
                    continue
                bodies: dict[tuple[str, ...], str] = {}
                for sub, idx in subs:
                    ov = self._overflow
                    if ov is not None and ov[0] is sub and ov[1] == idx:
                        self._overflow = (sub, idx, ov[2], ov[3] + 1)  # withheld: the client falls behind
                        sub.primed[idx - 1] = False  # its next update is a whole one
                        continue
                    if sub.primed[idx - 1]:
                        body = bodies.get(sub.fields)
                        if body is None:
                            body = bodies[sub.fields] = encode_fields(item.values, sub.fields, changed)
                    else:
                        body = encode_fields(item.values, sub.fields, None)
                        sub.primed[idx - 1] = True
                    out.setdefault(sub.conn, []).append((t, seq, f"U,{sub.id},{idx},{body}"))
                    seq += 1
        ov = self._overflow
        if ov is not None and time.monotonic() >= ov[2]:
            self._overflow = None
            # Said (and counted) only to a session still on its transport: a client that lost it gets a new session.
            if ov[3] and ov[0].conn.live and not ov[0].conn.stalled:
                out.setdefault(ov[0].conn, []).append((now, seq, f"OV,{ov[0].id},{ov[1]},{ov[3]}"))
                self.stats["overflow_lost"] += ov[3]
        for conn, lines in out.items():
            lines.sort()
            self.stats["u_lines"] += len(lines)
            conn.send([x[2] for x in lines], self.stats, self.max_send_buffer)

    def _housekeeping(self) -> None:
        """PROBEs for silent sessions, and the session faults due now."""
        wall = time.monotonic()
        for conn in list(self._conns):
            if conn.sink is None and conn.detached_at is not None and wall - conn.detached_at > RECOVERY_S:
                self.stats["expired_sessions"] += 1
                conn.abort()
            elif conn.live and not conn.stalled and wall - conn.last_sent >= conn.keepalive_s:
                conn.send(["PROBE"], self.stats, self.max_send_buffer)
                self.stats["probes"] += 1
        f = self.faults
        if f is None:
            return

        def close(conn: _Conn) -> None:
            # 48: the session reached its maximum duration; the official client opens a new one.
            conn.close_after([f"END,48,{_tlcp_message('session closed by the replica (fault)')}"], self.stats)

        def stall(conn: _Conn) -> None:
            conn.stalled = True

        # A kind with no live session stays due until one exists.
        inject_connection_faults(
            f,
            lambda: [c for c in self._conns if c.live and not c.stalled],
            {"close": close, "reset": lambda c: c.drop(reset=True), "stall": stall},
            lambda k, _: self._injected(k),
        )
        if f.pending("poison"):
            subs = [
                sub
                for item in self._items.values()
                for sub in item.subs
                if sub.conn.live and not sub.conn.stalled and not sub.conn.closing
            ]
            if subs:  # else it stays due until an item is subscribed
                f.due("poison")
                sub = subs[f.pick(len(subs))]
                sub.conn.send([poison_line(sub.id, f.pick)], self.stats, self.max_send_buffer)
                self._injected("poison")
        if f.pending("overflow") and self._overflow is None:
            market = [
                (sub, idx)
                for item in self._items.values()
                if item.kind == "MARKET"
                for sub, idx in item.subs.items()
                if sub.conn.live and not sub.conn.stalled
            ]
            if market:  # else it stays due until a MARKET item is subscribed
                f.due("overflow")
                sub, idx = market[f.pick(len(market))]
                self._overflow = (sub, idx, wall + OVERFLOW_S, 0)
                self._injected("overflow")


def poison_line(sub_id: int, pick: Callable[[int], int]) -> str:
    """The ``poison`` fault's line for a live session with subscription ``sub_id``: ``SUBCMD,1`` (a
    COMMAND-mode subscription cut short, which the client never asked for: harmless once refused), or a
    SUBOK of that subscription for 60 million fields (a client that believes it allocates them, and then
    refuses every update of the item as not fitting)."""
    return "SUBCMD,1" if pick(2) == 0 else f"SUBOK,{sub_id},1,60000000"


def _int_or(text: str | None, default: int) -> int:
    """A non-negative integer request parameter, or ``default`` when absent or not one."""
    return int(text) if text is not None and text.isascii() and text.isdigit() and len(text) <= 12 else default


def _state_event(tr: tuple[int, bool]) -> tuple[int, dict[str, str | None]]:
    return tr[0], {"MARKET_STATE": "TRADEABLE" if tr[1] else "CLOSED"}


#: How each version of /prices writes ``snapshotTime`` (the forms trading-ig parses them with).
_SNAPSHOT_FORMATS = {"1": "%Y:%m:%d-%H:%M:%S", "2": "%Y/%m/%d %H:%M:%S", "3": "%Y/%m/%d %H:%M:%S"}


def _price_rows(
    spec: PairSpec, opens: Any, volume: Any, ohlc: Mapping[str, tuple[Any, ...]], version: str = "3"
) -> list[dict[str, Any]]:
    """IG price rows: ``snapshotTime`` (written in UTC here, in ``version``'s form), and in v3
    ``snapshotTimeUTC``, the four prices as ``{bid, ask, lastTraded: null}`` numbers, and the quote
    count as ``lastTradedVolume``."""
    scale = float(spec.scale)
    cols = {s: [(np.asarray(x) / scale).tolist() for x in ohlc[s]] for s in ("bid", "ask")}
    rows: list[dict[str, Any]] = []
    for i, (t, n) in enumerate(zip(np.asarray(opens).tolist(), np.asarray(volume).tolist(), strict=True)):
        g = time.gmtime(t // 1000)
        row: dict[str, Any] = {"snapshotTime": time.strftime(_SNAPSHOT_FORMATS[version], g)}
        if version == "3":
            row["snapshotTimeUTC"] = time.strftime("%Y-%m-%dT%H:%M:%S", g)
        for key, j in (("openPrice", 0), ("closePrice", 3), ("highPrice", 1), ("lowPrice", 2)):
            row[key] = {"bid": cols["bid"][j][i], "ask": cols["ask"][j][i], "lastTraded": None}
        row["lastTradedVolume"] = n
        rows.append(row)
    return rows


def check_faults(spec: str) -> dict[str, float]:
    """``parse_faults`` for this replica: only :data:`FAULT_KINDS` have an IG meaning."""
    rates = parse_faults(spec)
    for kind, rate in rates.items():
        if rate > 0 and kind not in FAULT_KINDS:
            why = (
                "IG has no such event"
                if kind == "shutdown"
                else "a lost or repeated MERGE delta would corrupt the client's state, which Lightstreamer never does"
            )
            raise BadInput(f"fault kind {kind!r} does not apply to IG ({why}); use {', '.join(FAULT_KINDS)}")
    return rates
