"""What every venue decoder calls an impossible value, and the skip kinds they share.

A decoder turns a venue's bytes into model events and must survive any bytes: what it cannot use
is counted by kind in its ``errors`` and skipped, and the stream goes on. Prices and sizes are the
values a single bad frame could poison a candle series with, so every decoder applies the same rule
to them here: a price is possible when it is finite and above zero, a size (quantity, volume,
liquidity) when it is finite and not negative. NaN fails both (every comparison with NaN is false),
and so do the infinities a JSON number such as ``1e400`` becomes.

Skip kinds shared by the decoders (each decoder's docstring lists its own as well):

- ``malformed``: not the venue's syntax (not JSON, truncated, nested too deep, not an object).
- ``bad_field``: a field missing, of the wrong type or out of its range (an id beyond int64).
- ``impossible_value``: a price or size that cannot be real (see above).
- ``decoder_bug``: an exception the decoder did not expect. It is caught at the decoder's entry
  point so that a bug cannot end a stream, counted and described in ``last_error``. The fuzz bench
  (``bench/fuzz.py``) counts these separately from skips; it must find none.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable

import msgspec

INF = float("inf")
#: The largest id or time a decoder accepts: what the stores' BIGINT columns hold.
MAX_INT64 = 2**63 - 1

MALFORMED = "malformed"
BAD_FIELD = "bad_field"
IMPOSSIBLE = "impossible_value"
DECODER_BUG = "decoder_bug"

#: JSON syntax errors, including msgspec's RecursionError for input nested deeper than it decodes.
JSON_ERRORS = (msgspec.DecodeError, RecursionError)

#: An untyped JSON decoder for classifying frames the typed one refused. ``float_hook=float`` makes
#: an out-of-range number (``1e400``) an infinity instead of a decode error, so the frame is still
#: read and the number is refused as an impossible value where it stands (one item, not the message).
ANY_JSON = msgspec.json.Decoder(float_hook=float)


def price_ok(x: float) -> bool:
    """A possible price: finite and above zero (False for NaN)."""
    return 0.0 < x < INF


def size_ok(x: float) -> bool:
    """A possible size, volume or liquidity: finite and not negative (False for NaN)."""
    return 0.0 <= x < INF


def id_ok(x: int) -> bool:
    """A possible id, count or epoch time: an int64 that is not negative."""
    return 0 <= x <= MAX_INT64


class Skips:
    """Skip counting shared by the stream decoders: ``errors`` by kind, ``last_error`` for a log line."""

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self.last_error = ""

    def _skip(self, kind: str, why: str) -> None:
        self.errors[kind] += 1
        self.last_error = why

    def _bug(self, exc: BaseException, what: object) -> None:
        """Count an exception the decoder did not expect (see the module docstring)."""
        self._skip(DECODER_BUG, f"decoder error {type(exc).__name__}: {str(exc)[:120]} on {str(what)[:80]!r}")


def near_matches(symbol: str, known: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` of a venue's ``known`` symbols that look like ``symbol`` (a typo, another
    separator or case, a base asset alone), best first, for the one-line "unknown symbol" error."""
    names = list(known)
    squash = {k.upper().replace("/", "").replace("-", "").replace("_", ""): k for k in names}
    want = symbol.upper().replace("/", "").replace("-", "").replace("_", "")
    out = [squash[want]] if want in squash and squash[want] != symbol else []
    out += [squash[m] for m in difflib.get_close_matches(want, list(squash), n=n, cutoff=0.6)]
    out += [k for k in names if want and k.upper().startswith(want)]
    seen: list[str] = []
    for k in out:
        if k not in seen and k != symbol:
            seen.append(k)
    return seen[:n]


def unknown_symbols_message(venue: str, where: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """The one line a feed's ``check()`` raises (as ``BadInput``) for symbols the venue does not list:
    each with its near matches, and the fix."""
    names = list(known)
    parts = []
    for s in sorted(set(unknown)):
        near = near_matches(s, names)
        parts.append(f"{s} (did you mean {', '.join(near)}?)" if near else s)
    return f"unknown symbol(s) on {venue} at {where}: {'; '.join(parts)}; check --symbols"
