"""tick-vault (a Dukascopy tick downloader and reader) against the Dukascopy replica: it downloads two
hours of ``.bi5`` files and decodes them; every tick must equal the replica's quote tape.

tick-vault keeps the datafeed's base URL in a module constant (``tick_vault.chunk``'s
``DUKASCOPY_DATA_FEED_BASE``) with no setting for it, so that constant is the one thing changed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

tick_vault = pytest.importorskip("tick_vault", reason="tick-vault does not install here")
tick_vault_chunk = pytest.importorskip("tick_vault.chunk", reason="tick-vault does not install here")

from deltafeed.venues.dukascopy.replica import DukascopyReplica  # noqa: E402
from reference import read_quote_tape  # noqa: E402

# Wednesday 2026-03-04 15:00 UTC: the FX market open.
START = dt.datetime(2026, 3, 4, 15, tzinfo=dt.UTC)
HOUR = 3_600_000


async def test_download_and_read_equal_the_tape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r = DukascopyReplica(
        symbols=["EURUSD"], rate=2.0, history_ms=3 * HOUR, start_ms=int(START.timestamp() * 1000),
        tape=tmp_path / "tape.csv",
    )  # fmt: skip
    await r.start()
    try:
        monkeypatch.setattr(tick_vault_chunk, "DUKASCOPY_DATA_FEED_BASE", r.url + "/")  # r.url ends in /datafeed
        monkeypatch.chdir(tmp_path)  # tick-vault keeps its files under ./tick_vault_data
        first = START - dt.timedelta(hours=2)
        await tick_vault.download_range("EURUSD", start=first, end=START)
        df = tick_vault.read_tick_data("EURUSD", start=first, end=START, show_progress=False)
    finally:
        await r.stop()
    assert r.tape_path is not None
    tape = [q for q in read_quote_tape(r.tape_path) if START.timestamp() * 1000 - 2 * HOUR <= q.time_ms]
    assert len(tape) > 1000 and len(df) == len(tape)
    got = [
        (int(t.value // 1_000_000), float(b), float(a))
        for t, b, a in zip(
            df["time"].dt.tz_localize(None) if df["time"].dt.tz is not None else df["time"],
            df["bid"],
            df["ask"],
            strict=True,
        )
    ]
    want = sorted((q.time_ms, float(q.bid), float(q.ask)) for q in tape)
    assert sorted((t, round(b, 5), round(a, 5)) for t, b, a in got) == want  # quotes of one ms: any order
