"""Dukascopy's decoder sample: an hour file (``.bi5``) as its servers send one, as a fuzz target (see
:class:`~deltafeed.venues.base.FuzzTarget`)."""

from __future__ import annotations

import lzma
from collections import Counter

from deltafeed.model import Quote
from deltafeed.venues.base import SAMPLE_HOUR_MS, FuzzTarget
from deltafeed.venues.dukascopy import codec as dukascopy


def fuzz_targets() -> list[FuzzTarget]:
    return [_bi5()]


def _bi5() -> FuzzTarget:
    hour = SAMPLE_HOUR_MS
    quotes = [Quote("EURUSD", hour + i * 7_919, 1.08 + i * 1e-5, 1.0802 + i * 1e-5, 1.5e6, 2.25e6) for i in range(60)]
    body = dukascopy.encode_bi5(quotes, hour, "EURUSD")
    records = lzma.decompress(body)[:400]  # not compressed: refused as is, the mutator's material once prepared
    skipped: Counter[str] = Counter()
    bomb = _bomb(2_000_000 * dukascopy.RECORD_SIZE)  # 2 million ticks in 6 KiB

    def prepare(records: bytes) -> bytes:
        """Mutated records compressed again: reaches the record checks, which bytes flipped in an
        LZMA stream rarely do."""
        return lzma.compress(records, format=lzma.FORMAT_ALONE, preset=0)

    return FuzzTarget(
        name="dukascopy_bi5",
        seeds=[body, records, b""],
        bad_seeds=[records],
        run=lambda data: dukascopy.decode_bi5(data, hour, "EURUSD", skipped),
        declared=(dukascopy.Bi5Error,),
        skips=lambda: skipped,
        prepare=prepare,
        once=[bomb],
    )


def _bomb(size: int) -> bytes:
    """An LZMA body of ``size`` zero bytes, made a MiB at a time (the fuzzer's own memory stays small)."""
    comp = lzma.LZMACompressor(format=lzma.FORMAT_ALONE, preset=0)
    chunk = bytes(1 << 20)
    parts = [comp.compress(chunk[: min(len(chunk), size - done)]) for done in range(0, size, len(chunk))]
    return b"".join(parts) + comp.flush()
