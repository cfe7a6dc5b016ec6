"""The sans-I/O part of the ccxt bridge: instrument names, address overrides, and turning what ccxt
hands out (trade dicts, OHLCV rows) into deltafeed's events, with the continuity checks that make a
lost stretch of trades a hole instead of a silent gap.

Nothing here imports ccxt, opens a socket or reads a clock, so it is tested with verbatim ccxt
values (and fuzzed through ``samples.py``).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deltafeed.model import TIMEFRAMES, BadInput, Candle, Trade

#: Exchanges whose trade ids are, per symbol, a consecutive counter (checked against their
#: replicas; ``sequential_ids`` in the settings adds others): a batch that does not continue the
#: previous one by id is a hole. Elsewhere only time order is checked.
SEQUENTIAL_IDS = frozenset({"binance", "binanceus", "kraken"})
#: The newest OHLCV rows an exchange serves per symbol and timeframe, whatever ``since`` asks for
#: (PROTOCOLS-wave2.md 3.2 and 4.2; ``history_rows`` in the settings adds others): nothing older can
#: be fetched, so nothing older can be verified.
HISTORY_ROWS = {"kraken": 720, "hyperliquid": 5000}
#: Exchanges whose ``fetch_trades`` pages by ``since`` through their whole history (checked against
#: their replicas; ``trade_history`` in the settings adds others): candles older than their OHLCV
#: rows are built from their trades instead of being left unverified.
TRADE_HISTORY = frozenset({"kraken"})
#: Margin on an exchange's own weight of a request: ccxt's token bucket paces continuously, the
#: venue counts per minute window, so a run at exactly its budget can still cross a window's.
WEIGHT_MARGIN = 1.1


#: Hyperliquid's REST weights (of 1200 a minute per IP, PROTOCOLS-wave2 §4): the light ``info``
#: kinds weigh 2, the others 20, a ``candleSnapshot`` one more per 60 candles (at most 5000).
HL_LIGHT_INFO = frozenset(
    {"l2Book", "allMids", "clearinghouseState", "orderStatus", "spotClearinghouseState", "exchangeStatus"}
)
HL_INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000}


def hyperliquid_weight(params: Any) -> float | None:
    """Hyperliquid's weight of an ``info`` request, with the margin; None for anything else. ccxt
    4.5.90 charges a candleSnapshot 4 units (and other info 10) at 50 ms a unit: 200 ms a call, five
    times the venue's budget, which then answers 429 until its minute is over."""
    kind = params.get("type") if isinstance(params, dict) else None
    if not isinstance(kind, str):
        return None
    weight = 2 if kind in HL_LIGHT_INFO else 20
    req = params.get("req")
    if kind == "candleSnapshot" and isinstance(req, dict):
        iv = HL_INTERVAL_MS.get(str(req.get("interval")), 3_600_000)  # longer ones: few rows anyway
        start, end = req.get("startTime"), req.get("endTime")
        rows = (end - start) // iv + 1 if isinstance(start, int) and isinstance(end, int) else 5000
        weight += max(0, min(rows, 5000)) // 60
    return weight * WEIGHT_MARGIN


#: Per exchange, its own weight of a REST request where ccxt's cost table misjudges it (ccxt then
#: paces at ``rateLimit`` ms a unit, 50 ms for Hyperliquid: 1200 units a minute, its budget).
REQUEST_WEIGHTS = {"hyperliquid": hyperliquid_weight}
#: ccxt's trade cache size we ask for (its default, 1000, silently overwrites trades under a burst).
TRADES_LIMIT = 100_000
#: Venue trade ids remembered per series, to drop the repeats ccxt hands out again.
RECENT_IDS = 8192


@dataclass(frozen=True)
class Market:
    """A ``ccxt`` instrument's symbol split: ccxt's exchange id and its unified symbol."""

    exchange: str
    symbol: str

    @classmethod
    def parse(cls, text: str) -> Market:
        """``okx:BTC/USDT`` (what follows ``ccxt:``) -> Market("okx", "BTC/USDT"); the unified
        symbol may itself hold ``:`` (``BTC/USDT:USDT``). :class:`BadInput` naming the form."""
        exchange, sep, symbol = text.partition(":")
        exchange = exchange.strip().lower()
        symbol = symbol.strip()
        if not sep or not exchange.isidentifier() or not symbol:
            raise BadInput(
                f"ccxt instrument {text!r} is not EXCHANGE:SYMBOL; write it as ccxt:okx:BTC/USDT "
                "(ccxt's exchange id, then its unified symbol)"
            )
        return cls(exchange, symbol)


def resolve_symbol(wanted: str, known: Iterable[str]) -> str | None:
    """ccxt's own spelling of ``wanted`` among the exchange's ``known`` unified symbols: the same
    name, else the one equal to it ignoring case (deltafeed upper-cases symbols, while some unified
    symbols hold lower case, e.g. Hyperliquid's ``kPEPE/USDC:USDC``); None when none or several."""
    names = list(known)
    if wanted in names:
        return wanted
    same = [n for n in names if n.upper() == wanted.upper()]
    return same[0] if len(same) == 1 else None


# --- addresses ------------------------------------------------------------------------------------

SIMPLE_KEYS = frozenset({"rest", "ws"})


def _check_url(exchange: str, kind: str, url: Any) -> tuple[str, str, str]:
    schemes = ("http", "https") if kind == "rest" else ("ws", "wss")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in schemes or not parts.netloc:
        raise BadInput(
            f"[venues.ccxt] urls.{exchange}.{kind} = {url!r} is not a {'/'.join(schemes)} URL; "
            f"write it like {schemes[0]}://127.0.0.1:9001"
        )
    return parts.scheme, parts.netloc, parts.path.rstrip("/")


def rewrite_urls(api: Any, exchange: str, rest: str | None, ws: str | None) -> Any:
    """A copy of ccxt's ``urls['api']`` with every address of a kind pointed elsewhere.

    ``rest`` applies to every ``http(s)://`` address, ``ws`` to every ``ws(s)://`` one. A value
    that is only an origin (``http://127.0.0.1:9001``) replaces the scheme, host and port and keeps
    ccxt's paths (``/api/v3``, ``/v5/public/spot``); a value with a path replaces the address whole.
    ccxt's ``{hostname}`` placeholders go with the host they named.
    """
    targets = {"rest": _check_url(exchange, "rest", rest) if rest else None}
    targets["ws"] = _check_url(exchange, "ws", ws) if ws else None

    def one(url: str) -> str:
        kind = (
            "rest" if url.startswith(("http://", "https://")) else "ws" if url.startswith(("ws://", "wss://")) else ""
        )
        target = targets.get(kind)
        if target is None:
            return url
        scheme, netloc, path = target
        if path:
            return urlunsplit((scheme, netloc, path, "", ""))
        old = urlsplit(url)
        return urlunsplit((scheme, netloc, old.path, old.query, old.fragment))

    def walk(node: Any) -> Any:
        if isinstance(node, str):
            return one(node)
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(api)


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into a copy of ``base``: tables key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, v in override.items():
            out[k] = deep_merge(base.get(k), v) if k in base else v
        return out
    return override


def exchange_urls(exchange: str, current: Mapping[str, Any], setting: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``urls`` a ccxt exchange gets from its ``[venues.ccxt] urls.<exchange>`` table: the simple
    form (``rest``/``ws``, see :func:`rewrite_urls`) or a raw ccxt ``urls`` override, deep-merged."""
    urls = dict(current)
    if not setting:
        return urls
    if set(setting) <= SIMPLE_KEYS:
        urls["api"] = rewrite_urls(urls.get("api", {}), exchange, setting.get("rest"), setting.get("ws"))
        return urls
    merged: dict[str, Any] = deep_merge(urls, dict(setting))
    return merged


# --- trades ---------------------------------------------------------------------------------------


def trade_from(item: Any, errors: Counter[str]) -> tuple[str, str, Trade] | None:
    """(unified symbol, venue id, Trade with id 0) from one trade dict of ccxt's unified structure,
    or None (counted in ``errors`` by kind) when it is not a usable trade."""
    if not isinstance(item, dict):
        errors["bad_trade"] += 1
        return None
    ts = item.get("timestamp")
    price = item.get("price")
    amount = item.get("amount")
    symbol = item.get("symbol")
    if (
        not isinstance(ts, int)
        or isinstance(ts, bool)
        or not isinstance(price, int | float)
        or not isinstance(amount, int | float)
        or not isinstance(symbol, str)
    ):
        errors["bad_trade"] += 1
        return None
    try:
        price, amount = float(price), float(amount)
    except OverflowError:
        errors["impossible_value"] += 1
        return None
    if not (math.isfinite(price) and math.isfinite(amount)) or price <= 0 or amount < 0 or ts <= 0:
        errors["impossible_value"] += 1
        return None
    tid = item.get("id")
    vid = "" if tid is None else str(tid)
    return symbol, vid, Trade(symbol, 0, ts, price, amount, item.get("side") == "sell")


@dataclass
class Continuity:
    """What one series remembers of its trades to judge the next batch: the last venue id (when the
    exchange's ids are consecutive), the last trade time, the recent ids, and the next of the
    consecutive ids the candle builder is fed (synthetic: ccxt's ids are not generally a sequence).

    :meth:`take` returns the trades to fold in and the span that may have lost trades, if any.
    """

    sequential: bool
    next_id: int = 1
    last_vid: int | None = None
    last_ms: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    id_gaps: int = 0
    _ids: set[str] = field(default_factory=set)
    _order: deque[str] = field(default_factory=deque)

    def _seen(self, vid: str) -> bool:
        if not vid:
            return False
        if vid in self._ids:
            return True
        self._ids.add(vid)
        self._order.append(vid)
        if len(self._order) > RECENT_IDS:
            self._ids.discard(self._order.popleft())
        return False

    def take(self, items: list[tuple[str, Trade]], limit: int) -> tuple[list[Trade], tuple[int, int] | None]:
        """Judge a batch of (venue id, trade) of this series, in ccxt's order.

        A repeated id is dropped. A trade older than the last one taken is dropped and its span
        becomes a hole (its candle may be closed already). With consecutive ids, one that skips ids
        makes the span since the last trade a hole (and is taken: time order decides). A batch as
        long as ccxt's cache (``limit``) may have been overwritten in part: a hole before it.
        """
        out: list[Trade] = []
        lo = hi = 0

        def hole(a: int, b: int) -> None:
            nonlocal lo, hi
            lo = a if not lo else min(lo, a)
            hi = max(hi, b)

        if limit and len(items) >= limit and items and self.last_ms:
            hole(self.last_ms, items[0][1].time_ms)
        for vid, t in items:
            if self._seen(vid):
                self.duplicates += 1
                continue
            if t.time_ms < self.last_ms:
                self.out_of_order += 1
                hole(t.time_ms, self.last_ms)
                continue
            if self.sequential:
                # Ids only reveal holes here, they never drop a trade: one outlier id (a poisoned
                # frame) must not make every later trade look like a repeat.
                n = _int(vid)
                if n is not None:
                    if self.last_vid is not None and n != self.last_vid + 1:
                        self.id_gaps += 1
                        hole(self.last_ms or t.time_ms, t.time_ms)
                    self.last_vid = n
            t.trade_id = self.next_id
            self.next_id += 1
            self.last_ms = t.time_ms
            out.append(t)
        return out, ((lo, hi) if lo else None)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


# --- history --------------------------------------------------------------------------------------


def candles_from_rows(rows: Any, tf_ms: int, now_ms: int, errors: Counter[str]) -> list[Candle]:
    """Candles from ccxt OHLCV rows ``[ms, open, high, low, close, volume]``, oldest first, one per
    open time; ``closed`` when the interval is over by the venue's clock ``now_ms``. Rows that are not
    such (or misaligned) are counted in ``errors`` and left out. ccxt's rows carry no trade count."""
    out: dict[int, Candle] = {}
    if not isinstance(rows, list):
        errors["bad_ohlcv"] += 1
        return []
    for row in rows:
        if not isinstance(row, list | tuple) or len(row) < 6:
            errors["bad_ohlcv"] += 1
            continue
        t, o, h, lo, c, v = row[:6]
        nums = (o, h, lo, c, v if v is not None else 0.0)
        if not isinstance(t, int) or isinstance(t, bool) or not all(isinstance(x, int | float) for x in nums):
            errors["bad_ohlcv"] += 1
            continue
        try:
            o, h, lo, c, vol = (float(x) for x in nums)
        except OverflowError:
            errors["impossible_value"] += 1
            continue
        if (
            t % tf_ms
            or not all(math.isfinite(x) for x in (o, h, lo, c, vol))
            or min(o, h, lo, c) <= 0
            or vol < 0
            or not lo <= min(o, c) <= max(o, c) <= h
        ):
            errors["impossible_value"] += 1
            continue
        out[t] = Candle(t, o, h, lo, c, vol, 0, t + tf_ms <= now_ms)
    return [out[t] for t in sorted(out)]


def base_timeframe(timeframe: str, offered: Iterable[str]) -> str | None:
    """The timeframe to fetch ``timeframe``'s candles with: itself when the exchange offers it, else
    the longest offered deltafeed timeframe that divides it evenly (rolled up), else None."""
    have = [tf for tf in offered if tf in TIMEFRAMES]
    if timeframe in have:
        return timeframe
    ms = TIMEFRAMES[timeframe]
    fits = [tf for tf in have if ms % TIMEFRAMES[tf] == 0 and TIMEFRAMES[tf] < ms]
    return max(fits, key=lambda tf: TIMEFRAMES[tf]) if fits else None


def roll_up(parts: list[Candle], tf_ms: int, now_ms: int) -> list[Candle]:
    """Candles of ``tf_ms`` from the exchange's shorter candles (oldest first); one is
    closed when its whole interval is over by the venue's clock ``now_ms`` (its last part may be
    missing: an exchange that omits quiet intervals)."""
    out: list[Candle] = []
    cur: Candle | None = None
    for p in parts:
        b = p.open_time - p.open_time % tf_ms
        if cur is None or cur.open_time != b:
            cur = Candle(b, p.open, p.high, p.low, p.close, p.volume, 0, b + tf_ms <= now_ms)
            out.append(cur)
            continue
        cur.high = max(cur.high, p.high)
        cur.low = min(cur.low, p.low)
        cur.close = p.close
        cur.volume += p.volume
    return out
