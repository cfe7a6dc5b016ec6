"""The neutral form every venue codec decodes its order-book messages into (:class:`BookMsg`).

A venue's book stream is a snapshot (the book as it stands) followed by deltas (levels whose size
changed, size 0 = the level is gone), or snapshots only (Hyperliquid's ``l2Book``). What tells a
consumer the stream is whole differs per venue, so a message carries each venue's evidence in
plain fields and the venue's sync rule (``venues/<name>/book.py``) decides what it means:

- ``key``: the venue-visible sequence key the book stands at after this message, increasing per
  instrument (Bybit's ``seq``; the message time in microseconds on Coinbase and Kraken, whose book
  messages carry no sequence; Hyperliquid's ``time`` in ms). The replicas' book tapes use the same
  key in their ``seq`` column, so a served book can be checked against the tape at its key.
  -1 when the message names none (a Kraken snapshot without ``timestamp``).
- ``update_id``: a per-message counter that must step by one (Bybit's ``u``), -1 when none.
- ``checksum``: the venue's CRC32 of the book after this message (Kraken), -1 when none.

Prices and sizes are floats parsed from the venue's decimal text (or JSON numbers); equal text
gives equal floats, which is all a level-by-level comparison needs. Levels keep the venue's order:
a message may change one price twice, and the later change wins.
"""

from __future__ import annotations

import msgspec

from deltafeed.venues.checks import INF

#: One level change: (price, size); size 0 removes the level.
Level = tuple[float, float]


class BookMsg(msgspec.Struct, gc=False):
    """One book message of one instrument, in the venue's order (see the module docstring)."""

    symbol: str
    snapshot: bool
    bids: list[Level]
    asks: list[Level]
    key: int
    time_ms: int
    update_id: int = -1
    checksum: int = -1
    #: The venue sent a book message for ``symbol`` that could not be used (a bad level, a missing
    #: field): whatever it changed is unknown, so the book can no longer be trusted.
    broken: bool = False


def broken(symbol: str, time_ms: int = 0) -> BookMsg:
    """The message a decoder returns for an unusable book message of ``symbol``."""
    return BookMsg(symbol, False, [], [], -1, time_ms, broken=True)


def levels_ok(levels: list[Level]) -> bool:
    """Every price possible (finite, above zero) and every size finite and not negative."""
    return all(0.0 < p < INF and 0.0 <= q < INF for p, q in levels)
