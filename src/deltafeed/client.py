"""A Python client for a deltafeed server: history over HTTP, live candles over WebSocket.

::

    from deltafeed import Client

    async with Client("http://127.0.0.1:8080", token=None) as df:
        rows = await df.fetch_ohlcv("binance:BTCUSDT", "1m", limit=500)   # [[ms, o, h, l, c, v], ...]
        frame = df.to_dataframe(rows)                                      # needs pandas
        async for ms, o, h, l, c, v in df.watch_ohlcv("binance:BTCUSDT", "1m"):
            ...

Rows follow ccxt's ``fetch_ohlcv``/``watch_ohlcv``: ``[open_time_ms, open, high, low, close, volume]``,
six columns, oldest first, the forming candle included (last). :meth:`Client.fetch_candles` and
:meth:`Client.watch_candles` give :class:`deltafeed.model.Candle` objects instead, with the number of
trades and the candle's state: ``closed`` (its interval is over) and ``final`` (deltafeed vouches
for it), which ``Candle.state`` names ``forming``, ``provisional`` or ``final``. ``final=True`` on the
fetches and ``final_only=True`` on the watches give only final candles.

A watch survives the server going away: it reconnects by itself (exponential backoff with jitter) and
resumes where it stopped, without a gap and without a duplicate. On reconnect it asks for a snapshot
deep enough to cover the outage, computed from the last candle it yielded and the venue's clock (from
``/streaming/status``); whatever a snapshot cannot reach (an outage longer than the server keeps in
memory) is fetched over HTTP first. Updates of a candle older than the last one yielded are skipped,
except a correction (the server repaired the candle from the venue's history: new values), which is
yielded again with its new values and state; and, for a ``final_only`` watch, a candle that becomes
final after newer ones came.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

# the server's own message types
from deltafeed.api.protocol import BookDeltaMsg, BookSnapshotMsg, CandleMsg, ErrorMsg, Subscribed
from deltafeed.model import FINAL, FORMING, PROVISIONAL, Candle, time_ms, timeframe_ms
from deltafeed.model import timeframe as timeframe_of
from deltafeed.net.reconnect import Backoff

log = logging.getLogger("deltafeed.client")

#: Most candles the server sends as a subscription's snapshot.
MAX_SNAPSHOT = 1000

_WHEN = int | str | dt.datetime


class ApiError(Exception):
    """The server refused a request; ``status`` is the HTTP status (or 0 for a WebSocket error message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status else message)
        self.status = status
        self.message = message


# --- what the WebSocket sends (see deltafeed.api.hub for the server's side) ------------------------


#: Candle messages, subscription replies and errors; other types (heartbeats, prices, trades) fail to
#: decode as these and are skipped, so a newer server with new message types does not break a watch.
_decode_ws = msgspec.json.Decoder(CandleMsg | Subscribed | ErrorMsg).decode
_decode_book_ws = msgspec.json.Decoder(BookSnapshotMsg | BookDeltaMsg | Subscribed | ErrorMsg).decode


def _segment(instrument: str) -> str:
    """``instrument`` as one URL path segment: a ``/`` in a symbol (``kraken:BTC/USD``) is escaped."""
    return urllib.parse.quote(instrument, safe=":")


def _ms(value: _WHEN | None, name: str) -> int | None:
    """Epoch ms from ms, an ISO-8601 string (UTC unless it says otherwise) or a datetime."""
    if value is None or isinstance(value, int):
        return value
    try:
        return time_ms(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an ISO-8601 time; write e.g. 2026-01-01T00:00:00Z") from None


def _flags(state: object, closed: bool) -> tuple[bool, bool]:
    """(closed, final) from a state sent by the server. A server from before states existed sends
    none; its closed candles were its final ones."""
    if state == FINAL:
        return True, True
    if state == PROVISIONAL:
        return True, False
    if state == FORMING:
        return False, False
    return closed, closed


def _iso8601(t: int) -> str:
    """ccxt's ``datetime``: ISO-8601 UTC with milliseconds, e.g. ``2026-01-01T00:00:00.250Z``."""
    return dt.datetime.fromtimestamp(t / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{t % 1000:03d}Z"


def ohlcv(c: Candle) -> list[float]:
    """A candle as a ccxt row ``[open_time_ms, open, high, low, close, volume]``."""
    return [c.open_time, c.open, c.high, c.low, c.close, c.volume]


class Client:
    """An asyncio client of one deltafeed server (``base_url`` like ``http://127.0.0.1:8080``).

    Use it as ``async with Client(...) as df:``, or call :meth:`close` when done. ``token`` is the
    server's API token, sent as a bearer header (needed for every request, WebSockets included,
    when the server has one; the POST endpoints need one). ``timeout_s`` bounds each HTTP request;
    ``reconnect_max_s`` is the longest wait between two reconnection attempts of a watch.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        reconnect_max_s: float = 5.0,
        default_venue: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {base_url!r} must start with http:// or https://, e.g. http://127.0.0.1:8080")
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self.timeout_s = timeout_s
        self.reconnect_max_s = reconnect_max_s
        #: The venue of symbols that name none (``BTC/USDT``); None leaves them to the server's default.
        self.default_venue = default_venue
        #: Times a watch lost its connection and subscribed again.
        self.reconnects = 0
        #: Candles resumed watches fetched over HTTP, where the snapshot could not reach back.
        self.resumed_over_http = 0
        self._session: aiohttp.ClientSession | None = None
        self._batches = _Batches()

    # --- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self._http()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._batches.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            self._session = aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    def _name(self, symbol: str) -> str:
        """``symbol`` with the client's default venue when it names none."""
        if self.default_venue is None or ":" in symbol.partition("/")[0]:
            return symbol
        return f"{self.default_venue}:{symbol}"

    # --- HTTP -----------------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: object = None,
        ok: tuple[int, ...] = (200,),
    ) -> Any:
        async with self._http().request(method, self.base_url + path, params=params, json=json) as resp:
            body = await resp.read()
            try:
                doc = msgspec.json.decode(body)
            except msgspec.DecodeError:
                doc = None
            if resp.status not in ok:
                message = doc.get("error") if isinstance(doc, dict) else None
                raise ApiError(resp.status, str(message or body[:200].decode(errors="replace") or resp.reason))
            return doc

    async def fetch_candles(
        self,
        instrument: str,
        timeframe: str,
        since: _WHEN | None = None,
        until: _WHEN | None = None,
        limit: int | None = None,
        *,
        final: bool = False,
    ) -> list[Candle]:
        """Candles of one series, oldest first, the forming one included (last, ``closed`` False),
        each with its state (``closed``, ``final``; ``Candle.state``).

        ``since``/``until`` bound the open times (inclusive; epoch ms, ISO-8601 or datetime). As in
        ccxt, ``limit`` with ``since`` means the first ``limit`` candles from ``since``; ``limit``
        alone (or with ``until``) means the newest ``limit``. ``final=True`` gives only final
        candles (``limit`` then counts those).
        """
        lo, hi = _ms(since, "since"), _ms(until, "until")
        if limit is not None and lo is not None and hi is None:
            # The server keeps the newest `limit` of a range; a range of exactly `limit` candle
            # slots starting at `since` makes that the first `limit` from `since` (on the grid:
            # months and the days of a time zone have no fixed length).
            grid = timeframe_of(timeframe)
            end = grid.ceil(lo)
            for _ in range(limit):
                end = grid.next(end)
            hi = end - 1
        params = {"format": "json"}
        for key, value in (("since", lo), ("until", hi), ("limit", limit)):
            if value is not None:
                params[key] = str(value)
        if final:
            params["final"] = "true"
        doc = await self._request("GET", f"/candles/{_segment(self._name(instrument))}/{timeframe}", params=params)
        forming = set(doc.get("forming", ()))
        return [
            Candle(
                int(r[0]),
                float(r[1]),
                float(r[2]),
                float(r[3]),
                float(r[4]),
                float(r[5]),
                int(r[6]),
                *_flags(r[7] if len(r) > 7 else None, int(r[0]) not in forming),
            )
            for r in doc["candles"]
        ]

    async def fetch_ohlcv(
        self,
        symbol: str,
        timeframe: str = "1m",
        since: _WHEN | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
        *,
        until: _WHEN | None = None,
        final: bool = False,
    ) -> list[list[float]]:
        """ccxt's ``fetch_ohlcv(symbol, timeframe, since, limit, params)``: ``[[open_time_ms, open,
        high, low, close, volume], ...]``, oldest first, the forming candle included (last).

        ``symbol`` is any name of an instrument (``binance:BTCUSDT``, ``binance:BTC/USDT``, or
        ``BTC/USDT`` on the client's ``default_venue``, else the server's). ``params`` takes ccxt's
        ``until`` and deltafeed's ``final`` (only final candles: no provisional one, no forming
        one), also accepted as keywords. See :meth:`fetch_candles` for the bounds.
        """
        extra = dict(params or {})
        until = extra.pop("until", until)
        final = bool(extra.pop("final", final))
        if extra:
            raise ValueError(f"params {sorted(extra)} are not understood; fetch_ohlcv takes until and final")
        return [ohlcv(c) for c in await self.fetch_candles(symbol, timeframe, since, until, limit, final=final)]

    async def fetch_trades(
        self, symbol: str, since: _WHEN | None = None, limit: int | None = None, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Like ccxt's ``fetch_trades``: the stored raw trades of ``symbol``, oldest first, as ccxt's
        trade dicts (``id, timestamp, datetime, symbol, side, price, amount, cost, ...``).

        With ``since``, the first ``limit`` trades from it; without, the newest ``limit``.
        ``params`` may hold ``until`` (inclusive). Spans the server lacks are not filled in: read
        them with :meth:`fetch_ticks`.
        """
        extra = dict(params or {})
        until = extra.pop("until", None)
        if extra:
            raise ValueError(f"params {sorted(extra)} are not understood; fetch_trades takes until")
        page = await self.fetch_ticks(symbol, since, until, limit)
        name = page["instrument"]
        out: list[dict[str, Any]] = []
        for t, i, price, amount, side in page["trades"]:
            out.append(
                {
                    "info": {"time": t, "id": i, "price": price, "amount": amount, "side": side},
                    "id": str(i),
                    "timestamp": t,
                    "datetime": _iso8601(t),
                    "symbol": name,
                    "order": None,
                    "type": None,
                    "side": side,
                    "takerOrMaker": "taker",
                    "price": price,
                    "amount": amount,
                    "cost": price * amount,
                    "fee": None,
                    "fees": [],
                }
            )
        return out

    async def fetch_ticks(
        self, instrument: str, since: _WHEN | None = None, until: _WHEN | None = None, limit: int | None = None
    ) -> dict[str, Any]:
        """``GET /trades/{instrument}`` as sent: ``trades`` and ``quotes`` rows, the ``missing`` spans,
        ``kept_from`` and ``next_since``."""
        query: dict[str, str] = {}
        for key, value in (("since", _ms(since, "since")), ("until", _ms(until, "until")), ("limit", limit)):
            if value is not None:
                query[key] = str(value)
        doc: dict[str, Any] = await self._request("GET", f"/trades/{_segment(instrument)}", params=query)
        return doc

    async def fetch_switches(self, instrument: str) -> list[dict[str, Any]]:
        """Failover switches of a logical instrument, oldest first: ``{"since_ms", "at_ms", "from",
        "to", "spanning": {timeframe: open time of the candle that spans the switch}}``."""
        doc = await self._request("GET", f"/switches/{_segment(self._name(instrument))}")
        return list(doc["switches"])

    async def status(self) -> dict[str, Any]:
        """The server's ``/streaming/status``: counters per instrument and per venue."""
        doc: dict[str, Any] = await self._request("GET", "/streaming/status")
        return doc

    async def health(self) -> dict[str, Any]:
        """``{"status": "ok"}``, or ``{"status": "degraded", "reasons": [...]}`` (not an error)."""
        doc: dict[str, Any] = await self._request("GET", "/health", ok=(200, 503))
        return doc

    async def instruments(self) -> dict[str, Any]:
        """``{"instruments": [{"name", "venue", "symbol", "streaming"}, ...], "timeframes": [...]}``."""
        doc: dict[str, Any] = await self._request("GET", "/instruments")
        return doc

    async def load_markets(self) -> dict[str, dict[str, Any]]:
        """The instruments served, in the spirit of ccxt's ``load_markets``: keyed by instrument name
        and by unified symbol (``BTC/USDT``, when the venue's symbol names a pair and it is served
        on one venue only), each ``{"id", "symbol", "base", "quote", "venue", "instrument",
        "aliases", "active", "precision", "info"}``. Prices and sizes are served at up to 8
        decimals (``precision`` says so, in ccxt's decimal-places mode)."""
        doc = await self.instruments()
        markets: dict[str, dict[str, Any]] = {}
        unified_seen: dict[str, int] = {}
        for row in doc["instruments"]:
            unified = row.get("unified")
            pair = (unified or "").partition(":")[0]
            base, _, quote = pair.partition("/")
            market = {
                "id": row["symbol"],
                "symbol": unified or row["name"],
                "base": base or None,
                "quote": quote or None,
                "venue": row["venue"],
                "instrument": row["name"],
                "aliases": row.get("aliases", []),
                "active": row["streaming"],
                "precision": {"price": 8, "amount": 8},
                "info": row,
            }
            markets[row["name"]] = market
            if unified and "@" not in row["name"]:
                unified_seen[unified] = unified_seen.get(unified, 0) + 1
                markets.setdefault(unified, market)
        for unified, count in unified_seen.items():
            if count > 1:  # on several venues: only the instrument names say which
                del markets[unified]
        return markets

    async def start_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Start streaming ``instruments`` (all when None); returns those streaming now. Needs the token."""
        body = None if instruments is None else {"instruments": instruments}
        doc = await self._request("POST", "/streaming/start", json=body)
        return list(doc["streaming"])

    async def stop_streaming(self, instruments: list[str] | None = None) -> list[str]:
        """Stop streaming ``instruments`` (all when None); returns those still streaming. Needs the token."""
        body = None if instruments is None else {"instruments": instruments}
        doc = await self._request("POST", "/streaming/stop", json=body)
        return list(doc["streaming"])

    # --- WebSocket ------------------------------------------------------------------------------

    def watch_ohlcv(
        self,
        symbol: str,
        timeframe: str = "1m",
        since: _WHEN | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
        *,
        snapshot: int = 1,
        final_only: bool = False,
    ) -> OhlcvWatch:
        """Every update of the series as a ccxt row ``[open_time_ms, open, high, low, close, volume]``,
        two ways:

        - as ccxt.pro does, ``rows = await df.watch_ohlcv(symbol, "1m")`` in a loop: each call
          returns the rows that came since the previous call with the same arguments (at least one;
          the newest ``limit`` when given), from one subscription the client keeps until
          :meth:`close`;
        - as an async iterator, ``async for row in df.watch_ohlcv(symbol, "1m")``: one row at a time.

        The forming candle comes again each time it changes; a row with a newer open time means the
        previous candle's interval is over (its last row was its closing state; a row for it may
        still come if it is corrected). The first ``snapshot`` rows are the newest candles the
        server holds (default 1: the forming one). ``final_only`` (or ``params={"final": True}``):
        rows of final candles only (see :meth:`watch_candles`). ``since`` is accepted for ccxt's
        signature; a watch starts from the snapshot. Reconnects by itself; see the module docstring.
        """
        extra = dict(params or {})
        final_only = bool(extra.pop("final", final_only))
        snapshot = int(extra.pop("snapshot", snapshot))
        if extra:
            raise ValueError(f"params {sorted(extra)} are not understood; watch_ohlcv takes final and snapshot")
        return OhlcvWatch(self, symbol, timeframe, limit, snapshot, final_only)

    async def watch_candles(
        self, instrument: str, timeframe: str, *, snapshot: int = 1, closed_only: bool = False, final_only: bool = False
    ) -> AsyncIterator[Candle]:
        """Every update of the series as a :class:`Candle`, in order, with its state (``closed``,
        ``final``; ``Candle.state`` is ``forming``, ``provisional`` or ``final``).

        Without a filter, every update: the forming candle each time it changes, then its closing
        state. With ``closed_only``, only candles whose interval is over: each open time once as it
        closes, whatever its state (provisional or final), consecutive, with no gap across
        reconnections. With ``final_only`` (which implies ``closed_only``), only final candles: the
        server sends nothing else (a final-only subscription), so a provisional candle comes once it
        becomes final, possibly after newer ones. In all three, an older candle comes again only
        when its values change (a correction from the venue's history); a provisional candle that
        becomes final with the same values is not repeated (watch with ``final_only`` to follow
        verification). A candle that becomes final while a ``final_only`` watch is reconnecting
        comes with the resumed snapshot when it is among the newest final ones; otherwise
        :meth:`fetch_candles` with ``final=True`` has it.

        ``snapshot`` (0 to 1000) is how many of the newest candles (final ones, with ``final_only``)
        to start with. Raises :class:`ApiError` for what retrying cannot fix (a bad name, a refused
        token).
        """
        tf_ms = timeframe_ms(timeframe)
        grid = timeframe_of(timeframe)  # months have no fixed length: the next open comes from the grid
        if not 0 <= snapshot <= MAX_SNAPSHOT:
            raise ValueError(f"snapshot must be between 0 and {MAX_SNAPSHOT}, got {snapshot}")
        seen = _Progress()  # the newest candle yielded, and the closed ones (to recognise corrections)

        def wanted(c: Candle) -> bool:
            return c.final if final_only else c.closed or not closed_only

        # The first retry within 0.1 s, doubling up to reconnect_max_s, full jitter.
        backoff = Backoff(0.05, self.reconnect_max_s)
        subscribed_before = False
        while True:
            try:
                last = seen.last
                want = snapshot if last is None else await self._resume_depth(last, tf_ms)
                async with self._http().ws_connect(
                    self.base_url + "/ws", heartbeat=10.0, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
                ) as ws:
                    op: dict[str, Any] = {
                        "op": "subscribe",
                        "instrument": self._name(instrument),
                        "timeframe": timeframe,
                        "snapshot": want,
                    }
                    if final_only:
                        op["final"] = True
                    await ws.send_str(msgspec.json.encode(op).decode())
                    first = True
                    while True:
                        msg = await ws.receive(timeout=30.0)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break  # closed (the server going away, or too slow a reader): reconnect
                        try:
                            m = _decode_ws(msg.data)
                        except msgspec.ValidationError:
                            continue  # heartbeats, prices, ...: not for a candle watch
                        if type(m) is ErrorMsg:
                            raise ApiError(0, m.message)
                        if type(m) is Subscribed:
                            backoff.reset()  # a working connection: the next outage starts from short waits
                            if subscribed_before:
                                self.reconnects += 1
                            subscribed_before = True
                            continue
                        if type(m) is not CandleMsg or m.data.timeframe != timeframe:
                            continue
                        d = m.data
                        c = Candle(
                            d.open_time, d.open, d.high, d.low, d.close, d.volume, d.trades, *_flags(d.state, d.closed)
                        )
                        if first:
                            first = False
                            # The snapshot should reach back to `last`; when the outage outlasted
                            # what the server keeps in memory, the rest comes over HTTP.
                            need = (
                                None if last is None else grid.next(last.open_time) if last.closed else last.open_time
                            )
                            if need is not None and c.open_time > need:
                                missed = await self.fetch_candles(
                                    instrument, timeframe, need, c.open_time - 1, final=final_only
                                )
                                log.debug("resuming %s %s: %d candles over HTTP", instrument, timeframe, len(missed))
                                self.resumed_over_http += len(missed)
                                for h in missed:
                                    if wanted(h) and seen.take(h):
                                        yield h
                        if wanted(c) and seen.take(c):
                            yield c
            except ApiError:
                raise
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (400, 401, 403, 404):
                    raise ApiError(exc.status, f"the server refused the WebSocket: {exc.message}") from None
                log.info("WebSocket refused (%s); retrying", exc.status)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("lost %s (%s); reconnecting", self.base_url, exc or type(exc).__name__)
            # Exponential backoff with full jitter, reset once a subscription succeeds.
            await backoff.sleep(backoff.failed())

    # --- order books ----------------------------------------------------------------------------

    async def fetch_order_book(
        self, symbol: str, limit: int | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The order book as ccxt's ``fetch_order_book`` gives it: ``{"symbol", "bids": [[price,
        amount], ...], "asks", "timestamp", "datetime", "nonce"}``, best first, ``limit`` levels per
        side (default: the server's depth), plus ``in_sync``: False while the server's book is out of
        sync, with no levels then. ``params={"at": time}`` reads the book stored at that time."""
        query = {k: str(_ms(v, k) if k == "at" else v) for k, v in (params or {}).items()}
        if set(query) - {"at"}:
            raise ValueError(f"params {sorted(set(query) - {'at'})} are not understood; fetch_order_book takes at")
        if limit is not None:
            query["depth"] = str(limit)
        doc = await self._request("GET", f"/book/{_segment(self._name(symbol))}", params=query)
        return _ccxt_book(doc["instrument"], doc["bids"], doc["asks"], doc["time"], doc["sequence"], doc["in_sync"])

    async def watch_order_book(
        self, symbol: str, limit: int | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """As ccxt.pro's ``watch_order_book``: the book (:meth:`fetch_order_book`'s shape) after its next
        change, from one subscription the client keeps until :meth:`close`; only books in sync."""
        if params:
            raise ValueError(f"params {sorted(params)} are not understood; watch_order_book takes none")
        books = await self._batches.next(("book", symbol, limit), lambda: self.watch_books(symbol, limit), 1)
        return dict(books[-1])

    async def watch_books(self, symbol: str, depth: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every change of the book as :meth:`fetch_order_book`'s dict, while the server's book is in
        sync. The deltas are checked: each must follow the previous message (``prev``); otherwise,
        or after a lost connection, the client subscribes again and starts from a fresh snapshot."""
        backoff = Backoff(0.05, self.reconnect_max_s)
        while True:
            try:
                async with self._http().ws_connect(
                    self.base_url + "/ws", heartbeat=10.0, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
                ) as ws:
                    op: dict[str, Any] = {"op": "subscribe_book", "instrument": self._name(symbol)}
                    if depth is not None:
                        op["depth"] = depth
                    await ws.send_str(msgspec.json.encode(op).decode())
                    bids: dict[float, float] = {}
                    asks: dict[float, float] = {}
                    seq: int | None = None
                    in_sync = False
                    while True:
                        msg = await ws.receive(timeout=30.0)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        try:
                            m = _decode_book_ws(msg.data)
                        except msgspec.ValidationError:
                            continue  # heartbeats
                        if type(m) is ErrorMsg:
                            raise ApiError(0, m.message)
                        if type(m) is Subscribed:
                            backoff.reset()
                            continue
                        if type(m) is BookSnapshotMsg:
                            d = m.data
                            bids, asks, seq, in_sync = dict(d.bids), dict(d.asks), d.sequence, d.in_sync
                        elif type(m) is BookDeltaMsg:
                            if m.data.prev != seq:
                                log.info("%s: book delta after %s, not %s; subscribing again", symbol, m.data.prev, seq)
                                self.reconnects += 1
                                break
                            _apply_levels(bids, m.data.bids)
                            _apply_levels(asks, m.data.asks)
                            seq = m.data.sequence
                        else:
                            continue
                        if in_sync and seq is not None:
                            b = sorted(bids.items(), reverse=True)
                            a = sorted(asks.items())
                            yield _ccxt_book(m.instrument, b, a, m.timestamp, seq, True)
            except ApiError:
                raise
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status in (400, 401, 403, 404):
                    raise ApiError(exc.status, f"the server refused the WebSocket: {exc.message}") from None
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("lost %s (%s); reconnecting", self.base_url, exc or type(exc).__name__)
            await backoff.sleep(backoff.failed())

    async def _resume_depth(self, last: Candle, tf_ms: int) -> int:
        """How many candles a snapshot needs to reach back to ``last``: the candles between it and
        the venue's clock now, plus two for the one forming and rounding."""
        try:
            now = int((await self.status())["venue_time_ms"])
        except (ApiError, KeyError, TypeError, ValueError):
            return MAX_SNAPSHOT  # no venue clock to go by: as deep as the server goes, HTTP for the rest
        return max(2, min(MAX_SNAPSHOT, (now - last.open_time) // tf_ms + 2))

    # --- pandas ---------------------------------------------------------------------------------

    @staticmethod
    def to_dataframe(rows: Sequence[Sequence[float] | Candle]) -> Any:
        """See :func:`to_dataframe`."""
        return to_dataframe(rows)


class OhlcvWatch:
    """What :meth:`Client.watch_ohlcv` returns: awaitable (ccxt's style: the rows since the last
    await of the same watch) and async-iterable (one row at a time)."""

    def __init__(
        self, client: Client, symbol: str, timeframe: str, limit: int | None, snapshot: int, final_only: bool
    ) -> None:
        self._client = client
        self._args = (symbol, timeframe, snapshot, final_only)
        self._limit = limit

    async def _rows(self) -> AsyncIterator[list[float]]:
        symbol, timeframe, snapshot, final_only = self._args
        async for c in self._client.watch_candles(symbol, timeframe, snapshot=snapshot, final_only=final_only):
            yield ohlcv(c)

    def __aiter__(self) -> AsyncIterator[list[float]]:
        return self._rows()

    def __await__(self) -> Generator[Any, None, list[list[float]]]:
        return self._client._batches.next(self._args, self._rows, self._limit).__await__()


def _apply_levels(side: dict[float, float], changes: list[tuple[float, float]]) -> None:
    for p, q in changes:
        if q:
            side[p] = q
        else:
            side.pop(p, None)


def _ccxt_book(
    instrument: str, bids: Sequence[Sequence[float]], asks: Sequence[Sequence[float]], t: int, seq: int, in_sync: bool
) -> dict[str, Any]:
    """ccxt's order-book dict (``nonce`` is deltafeed's sequence), with ``in_sync``."""
    return {
        "symbol": instrument,
        "bids": [[float(p), float(q)] for p, q in bids],
        "asks": [[float(p), float(q)] for p, q in asks],
        "timestamp": t,
        "datetime": _iso8601(t),
        "nonce": seq,
        "in_sync": in_sync,
    }


class _Batches:
    """The subscriptions behind ccxt-style ``await watch_ohlcv(...)`` (and ``watch_order_book``) calls:
    one background task per distinct watch, collecting rows (books) until the next call takes them (bounded: the newest
    ``KEEP`` rows are kept, as ccxt's cache keeps its newest candles)."""

    KEEP = 1000

    def __init__(self) -> None:
        self._tasks: dict[object, asyncio.Task[None]] = {}
        self._rows: dict[object, list[Any]] = {}
        self._ready: dict[object, asyncio.Event] = {}

    async def next(self, key: object, rows: Callable[[], AsyncIterator[Any]], limit: int | None) -> list[Any]:
        task = self._tasks.get(key)
        if task is None or task.done():
            if task is not None and task.exception() is not None:
                del self._tasks[key]
                raise task.exception()  # type: ignore[misc]
            self._rows[key] = []
            self._ready[key] = asyncio.Event()
            self._tasks[key] = asyncio.create_task(self._collect(key, rows))
        ready = self._ready[key]
        waiter = asyncio.ensure_future(ready.wait())
        done, _ = await asyncio.wait({waiter, self._tasks[key]}, return_when=asyncio.FIRST_COMPLETED)
        if waiter not in done:
            waiter.cancel()
            failed = self._tasks.pop(key)
            exc = failed.exception()
            raise exc if exc is not None else ApiError(0, "the watch ended")
        got, self._rows[key] = self._rows[key], []
        ready.clear()
        return got if limit is None else got[-limit:]

    async def _collect(self, key: object, rows: Callable[[], AsyncIterator[Any]]) -> None:
        async for row in rows():
            buf = self._rows[key]
            buf.append(row)
            if len(buf) > self.KEEP:
                del buf[: len(buf) - self.KEEP]
            self._ready[key].set()

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


class _Progress:
    """What a watch has yielded: the first open time, the newest candle, and recent closed candles
    by open time."""

    KEEP = 4096

    def __init__(self) -> None:
        self.first: int | None = None
        self.last: Candle | None = None
        self.closed: dict[int, Candle] = {}

    def take(self, c: Candle) -> bool:
        """Record ``c`` and say whether it is news: a later candle, an update of the forming one, or
        a closed candle since the watch began whose values differ from what was yielded for it (a
        correction) or that was never yielded (for a final-only watch, a candle that was
        provisional when it went by). A closed candle that only changes state (a provisional one
        made final with the same values) is recorded but is not news."""
        if _newer(c, self.last):
            self.last = c
        elif c.closed and self.first is not None and c.open_time >= self.first:
            old = self.closed.get(c.open_time)
            if self.last is not None and c.open_time == self.last.open_time:
                self.last = c
            if old is not None and old.row() == c.row():
                self.closed[c.open_time] = c
                return False
        else:
            return False
        if self.first is None:
            self.first = c.open_time
        if c.closed:
            self.closed[c.open_time] = c
            if len(self.closed) > self.KEEP:
                del self.closed[next(iter(self.closed))]
        return True


def _newer(c: Candle, last: Candle | None) -> bool:
    """True when ``c`` is news after ``last``: a later candle, or a change of the same one while it
    is still forming."""
    if last is None or c.open_time > last.open_time:
        return True
    return c.open_time == last.open_time and not last.closed


def to_dataframe(rows: Sequence[Sequence[float] | Candle]) -> Any:
    """A pandas DataFrame of candles, indexed by open time (UTC timestamps, named ``open_time``).

    ``rows`` are ccxt rows (6 columns), rows with ``trades`` (7 columns), rows with ``trades`` and
    ``state`` (8 columns, as the HTTP API sends them), or :class:`Candle` objects (which add
    ``trades``, ``closed`` and ``state``: forming, provisional or final). Needs pandas:
    ``pip install 'deltafeed[pandas]'``.
    """
    try:
        # Imported by name: pandas is optional, and typed here as Any (no pandas-stubs needed).
        pd: Any = importlib.import_module("pandas")
    except ImportError:
        raise ImportError(
            "to_dataframe needs pandas; install it with pip install 'deltafeed[pandas]' (or pip install pandas)"
        ) from None
    columns = ["open", "high", "low", "close", "volume"]
    records: list[Sequence[Any]]
    if rows and isinstance(rows[0], Candle):
        columns += ["trades", "closed", "state"]
        records = [
            (c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed, c.state)
            for c in rows
            if isinstance(c, Candle)
        ]
    else:
        records = [r for r in rows if not isinstance(r, Candle)]
        width = len(records[0]) if records else 6
        if width not in (6, 7, 8):
            raise ValueError(
                f"rows have {width} columns; expected [ms, open, high, low, close, volume(, trades(, state))]"
            )
        columns += ["trades", "state"][: width - 6]
    frame = pd.DataFrame.from_records(records, columns=["open_time", *columns])
    frame["open_time"] = pd.to_datetime(frame["open_time"].astype("int64"), unit="ms", utc=True)
    return frame.set_index("open_time")
