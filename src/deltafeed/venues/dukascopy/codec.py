"""Dukascopy tick history codec: ``.bi5`` hour files, their URL paths and price scales, without I/O.

Dukascopy publishes free tick history as one file per instrument and UTC hour (see
../shared/PROTOCOLS.md section 8)::

    https://datafeed.dukascopy.com/datafeed/{SYMBOL}/{YYYY}/{MM-1}/{DD}/{HH}h_ticks.bi5

The month is zero-based (January is ``00``). The body is an LZMA stream in the legacy "alone"
format; decompressed, it is a run of 20-byte big-endian records ``>IIIff`` = (ms offset from the
start of the hour, ask, bid, ask volume, bid volume). Prices are integers in units of the pair's
price step (:func:`price_scale`); volumes are float32 in millions of units of the base currency.
A closed hour (weekend, holiday) is an empty body, not an empty LZMA stream.

The same module serves the history client (decoding), the replica (encoding) and tests. Decoding is
vectorised with numpy; what remains per tick is building the :class:`~deltafeed.model.Quote`.
"""

from __future__ import annotations

import datetime as dt
import lzma
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from deltafeed.model import BadInput, Quote
from deltafeed.venues.checks import IMPOSSIBLE

VENUE = "dukascopy"
DEFAULT_BASE_URL = "https://datafeed.dukascopy.com/datafeed"
HOUR_MS = 3_600_000

#: One tick record. Field order is the file's: ask comes before bid.
RECORD = np.dtype([("ms", ">u4"), ("ask", ">u4"), ("bid", ">u4"), ("ask_vol", ">f4"), ("bid_vol", ">f4")])
RECORD_SIZE = RECORD.itemsize  # 20
#: Dukascopy volumes are in millions of units; Quote sizes are in units, as OANDA's and Binance's are.
VOLUME_UNIT = 1_000_000.0

#: Instruments whose price step is not the FX default of 1e-5 (JPY pairs are handled by rule).
#: XAUUSD is in PROTOCOLS.md; XAGUSD at 1e-3 is what third-party downloaders use [UNVERIFIED here].
_SCALE_OVERRIDES: dict[str, int] = {"XAUUSD": 1_000, "XAGUSD": 1_000}
_PAIR_RE = re.compile(r"^[A-Z]{6}$")
_PATH_RE = re.compile(r"^/?([A-Z0-9]+)/(\d{4})/(\d{2})/(\d{2})/(\d{2})h_ticks\.bi5$")


#: The most ticks an hour file may hold; a body that decompresses to more is refused, not read. The
#: busiest hours Dukascopy publishes (EURUSD around a US payrolls release) hold some tens of thousands
#: of ticks; 200,000 (55 a second for the whole hour) leaves a wide margin. It bounds what a body can
#: make the decoder allocate: 4 MB decompressed and some 30 MB of quotes, where an LZMA body of a few
#: KiB could otherwise expand to hundreds of MiB (2 million quotes from 6 KiB).
MAX_TICKS_PER_HOUR = 200_000
MAX_HOUR_BYTES = MAX_TICKS_PER_HOUR * 20


class Bi5Error(ValueError):
    """A ``.bi5`` body that is not a valid tick file (bad LZMA stream, torn record, offset outside the hour)."""


# --- symbols ---------------------------------------------------------------------------------------


def dukascopy_symbol(symbol: str) -> str:
    """``EUR_USD`` / ``EUR/USD`` / ``eurusd`` → ``EURUSD``: Dukascopy names have no separator."""
    s = symbol.strip().upper().replace("_", "").replace("/", "")
    if not s.isalnum():
        raise BadInput(f"{symbol!r} is not an instrument name; write it like EURUSD or EUR_USD")
    return s


def oanda_symbol(symbol: str) -> str:
    """``EURUSD`` → ``EUR_USD``, the form the rest of deltafeed's forex code (and QuoteSim) uses.

    Only six-letter currency/metal pairs split unambiguously; anything else is refused rather than guessed.
    """
    s = dukascopy_symbol(symbol)
    if not _PAIR_RE.match(s):
        raise BadInput(f"{symbol!r} is not a six-letter pair like EURUSD; cannot name it BASE_QUOTE")
    return f"{s[:3]}_{s[3:]}"


def price_scale(symbol: str) -> int:
    """Integer prices in a file are ``price * price_scale(symbol)``: 1000 for JPY pairs and metals, else 100000.

    Accepts either naming (``USDJPY`` or ``USD_JPY``). Instruments that are not six-letter pairs
    (indices, CFDs) have per-instrument scales deltafeed does not know, so they are refused: a
    wrong scale would silently give prices off by powers of ten.
    """
    s = dukascopy_symbol(symbol)
    if s in _SCALE_OVERRIDES:
        return _SCALE_OVERRIDES[s]
    if not _PAIR_RE.match(s):
        raise BadInput(f"no known Dukascopy price scale for {symbol!r}; deltafeed reads currency pairs like EURUSD")
    return 1_000 if "JPY" in s else 100_000


# --- paths -----------------------------------------------------------------------------------------


def tick_path(symbol: str, hour_start_ms: int) -> str:
    """``EURUSD/2026/00/05/10h_ticks.bi5`` for 2026-01-05 10:00 UTC (zero-based month), relative to the base URL."""
    if hour_start_ms % HOUR_MS:
        raise ValueError(f"{hour_start_ms} is not the start of a UTC hour")
    t = dt.datetime.fromtimestamp(hour_start_ms / 1000, dt.UTC)
    return f"{dukascopy_symbol(symbol)}/{t.year:04d}/{t.month - 1:02d}/{t.day:02d}/{t.hour:02d}h_ticks.bi5"


def parse_tick_path(path: str) -> tuple[str, int]:
    """The inverse of :func:`tick_path`: ``(SYMBOL, hour_start_ms)``; ValueError for any other path."""
    m = _PATH_RE.match(path)
    if not m:
        raise ValueError(f"{path!r} is not SYMBOL/YYYY/MM/DD/HHh_ticks.bi5")
    sym, year, month0, day, hour = m.group(1), *(int(g) for g in m.groups()[1:])
    try:
        t = dt.datetime(year, month0 + 1, day, hour, tzinfo=dt.UTC)
    except ValueError:
        raise ValueError(f"{path!r} names no hour (the month is zero-based: 00 to 11)") from None
    return sym, int(t.timestamp()) * 1000


def hour_floor(time_ms: int) -> int:
    return time_ms - time_ms % HOUR_MS


def _hour_name(symbol: str, hour_start_ms: int) -> str:
    t = dt.datetime.fromtimestamp(hour_start_ms / 1000, dt.UTC)
    return f"{dukascopy_symbol(symbol)} {t:%Y-%m-%d %H}h"


# --- bi5 -------------------------------------------------------------------------------------------


def decode_records(body: bytes, hour_start_ms: int, symbol: str) -> np.ndarray:
    """The raw tick records of one hour's body (an empty array for an empty body), checked.

    Raises :class:`Bi5Error` naming the hour for a body that is not LZMA, decompresses to a torn
    record, or has an offset outside the hour (which would put a tick in another file's hour).
    """
    if not body:
        return np.empty(0, RECORD)
    dec = lzma.LZMADecompressor(format=lzma.FORMAT_AUTO)
    try:
        # At most one byte past the bound: enough to know the body holds too much, without reading it.
        raw = dec.decompress(body, max_length=MAX_HOUR_BYTES + 1)
    except lzma.LZMAError as e:
        raise Bi5Error(f"{_hour_name(symbol, hour_start_ms)}: body is not an LZMA stream ({e})") from None
    if len(raw) > MAX_HOUR_BYTES:
        raise Bi5Error(
            f"{_hour_name(symbol, hour_start_ms)}: body decompresses to more than {MAX_HOUR_BYTES} "
            f"bytes ({MAX_TICKS_PER_HOUR} ticks, the most an hour file may hold); refused"
        )
    if not dec.eof:  # bytes after the end of the stream are ignored, as lzma.decompress ignores them
        raise Bi5Error(f"{_hour_name(symbol, hour_start_ms)}: the LZMA stream is truncated")
    if len(raw) % RECORD_SIZE:
        raise Bi5Error(
            f"{_hour_name(symbol, hour_start_ms)}: {len(raw)} bytes decompressed, "
            f"not a whole number of {RECORD_SIZE}-byte tick records"
        )
    rec = np.frombuffer(raw, RECORD)
    if len(rec) and int(rec["ms"].max()) >= HOUR_MS:
        raise Bi5Error(f"{_hour_name(symbol, hour_start_ms)}: tick offset {int(rec['ms'].max())} ms is past the hour")
    return rec


def decode_bi5(body: bytes, hour_start_ms: int, symbol: str, skipped: Counter[str] | None = None) -> list[Quote]:
    """The quotes of one hour file, in file order, named ``symbol`` as given (either naming works).

    ``price / scale`` with exact integers gives the double nearest the decimal price, so 1.08123
    decodes to the same float as the literal ``1.08123``. Sizes are converted from Dukascopy's
    millions to units and rounded to whole units, which removes float32 noise
    (float32(1.12) * 1e6 = 1120000.0047...) and keeps every size Dukascopy can actually publish.

    A tick with an impossible value (a zero price, a size that is NaN, infinite or negative) is left
    out and counted in ``skipped["impossible_value"]``; the rest of the hour is kept. A body that is not
    a tick file raises :class:`Bi5Error` (see :func:`decode_records`).
    """
    rec = decode_records(body, hour_start_ms, symbol)
    if not len(rec):
        return []
    ask_vol, bid_vol = rec["ask_vol"], rec["bid_vol"]
    good = (
        (rec["ask"] > 0)
        & (rec["bid"] > 0)
        & np.isfinite(ask_vol)
        & np.isfinite(bid_vol)
        & (ask_vol >= 0)
        & (bid_vol >= 0)
    )
    if not good.all():
        if skipped is not None:
            skipped[IMPOSSIBLE] += int((~good).sum())
        rec = rec[good]
        if not len(rec):
            return []
    scale = float(price_scale(symbol))
    times = (rec["ms"].astype(np.int64) + hour_start_ms).tolist()
    bids = (rec["bid"] / scale).tolist()
    asks = (rec["ask"] / scale).tolist()
    bid_sizes = np.rint(rec["bid_vol"].astype(np.float64) * VOLUME_UNIT).tolist()
    ask_sizes = np.rint(rec["ask_vol"].astype(np.float64) * VOLUME_UNIT).tolist()
    return [
        Quote(symbol, t, b, a, bs, az) for t, b, a, bs, az in zip(times, bids, asks, bid_sizes, ask_sizes, strict=True)
    ]


def encode_bi5(quotes: Sequence[Quote], hour_start_ms: int, symbol: str, preset: int = 0) -> bytes:
    """One hour file holding ``quotes`` (in the order given), as Dukascopy would serve it.

    Prices are quantised to the pair's step (rounded to nearest), sizes to float32 millions. No
    quotes gives an empty body, as Dukascopy serves a closed hour. Raises ValueError for a quote
    outside ``[hour_start_ms, hour_start_ms + 1h)`` or a price that does not fit the format.
    ``preset`` is the LZMA effort: 0 (fastest, ~1 ms per 1000 ticks) is what the replica needs, and the
    decoder does not care which was used.
    """
    if hour_start_ms % HOUR_MS:
        raise ValueError(f"{hour_start_ms} is not the start of a UTC hour")
    if not quotes:
        return b""
    n = len(quotes)
    offsets = np.fromiter((q.time_ms for q in quotes), np.int64, n) - hour_start_ms
    if int(offsets.min()) < 0 or int(offsets.max()) >= HOUR_MS:
        raise ValueError(f"{_hour_name(symbol, hour_start_ms)}: a quote lies outside the hour")
    scale = float(price_scale(symbol))
    asks = np.rint(np.fromiter((q.ask for q in quotes), np.float64, n) * scale)
    bids = np.rint(np.fromiter((q.bid for q in quotes), np.float64, n) * scale)
    lo, hi = float(min(asks.min(), bids.min())), float(max(asks.max(), bids.max()))
    if not (lo >= 0 and hi < 2**32):  # also catches NaN
        raise ValueError(f"{_hour_name(symbol, hour_start_ms)}: a price does not fit the format at scale {scale:g}")
    rec = np.empty(n, RECORD)
    rec["ms"] = offsets
    rec["ask"] = asks
    rec["bid"] = bids
    rec["ask_vol"] = np.fromiter((q.ask_size for q in quotes), np.float64, n) / VOLUME_UNIT
    rec["bid_vol"] = np.fromiter((q.bid_size for q in quotes), np.float64, n) / VOLUME_UNIT
    return lzma.compress(rec.tobytes(), format=lzma.FORMAT_ALONE, preset=preset)
