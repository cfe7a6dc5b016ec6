"""The Nautilus layout stamps each bar at its close: the next candle's open, which for ``1M`` is the
first of the next calendar month (28 to 31 days on), and for fixed lengths the open plus the length."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from deltafeed.model import Candle
from deltafeed.store.export import write_nautilus

pq = pytest.importorskip("pyarrow.parquet")


def ms(*ymd: int) -> int:
    return int(dt.datetime(*ymd, tzinfo=dt.UTC).timestamp() * 1000)


def bar(open_time: int) -> Candle:
    return Candle(open_time, 100.0, 101.0, 99.5, 100.5, 2.0, 10, True, True)


@pytest.mark.parametrize(
    ("timeframe", "opens", "closes"),
    [
        ("1M", [ms(2026, 1, 1), ms(2026, 2, 1), ms(2026, 12, 1)], [ms(2026, 2, 1), ms(2026, 3, 1), ms(2027, 1, 1)]),
        ("1d", [ms(2026, 2, 27), ms(2026, 2, 28)], [ms(2026, 2, 28), ms(2026, 3, 1)]),
        ("45s", [0, 45_000], [45_000, 90_000]),
    ],
)
def test_bars_are_stamped_at_their_close(tmp_path: Path, timeframe: str, opens: list[int], closes: list[int]) -> None:
    path, n = write_nautilus([bar(t) for t in opens], "binance:BTCUSDT", timeframe, str(tmp_path))
    assert n == len(opens)
    table = pq.read_table(path)
    want = [t * 1_000_000 for t in closes]
    assert table.column("ts_event").to_pylist() == want == table.column("ts_init").to_pylist()
