"""Raw ticks and exports end to end over real loopback sockets: a real engine records the Binance
replica's trades; ``GET /trades``, the client's ``fetch_trades`` and ``deltafeed trades`` read back
exactly the tape's trades for a window; ``deltafeed export`` and ``format=parquet`` write candles that
pandas (and freqtrade's documented layout) load equal to candles built independently from the tape."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import io
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pandas as pd
import pytest
import pytest_asyncio

from deltafeed import SyncClient
from deltafeed.api.http import FORMING_HEADER
from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.cli import main
from deltafeed.client import Client
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import answered
from reference import TapeRow, candles_from_tape, read_tape, rows_by_symbol

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

BTC = "binance:BTCUSDT"


@dataclass
class Served:
    replica: BinanceReplica
    engine: Engine
    url: str
    db: Path
    tape: Path
    tmp: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    tmp = tmp_path_factory.mktemp("ticks")
    tape = tmp / "tape.csv"
    replica = BinanceReplica(symbols=["BTCUSDT"], seed=21, rate=6.0, speed=60.0, history_ms=3_600_000, tape=str(tape))
    await replica.start()
    db = tmp / "ticks.duckdb"
    settings = Settings(
        symbols=["BTCUSDT"],
        timeframes=["1m", "5m"],
        history="1h",
        db=str(db),
        rest_url=replica.url,
        ws_url=replica.ws_url,
        ticks=True,
    ).validate()
    engine = Engine(settings)
    await engine.start()
    runner = await start_api(engine, None, "127.0.0.1", 0, None)
    try:
        async with asyncio.timeout(30):
            st = engine.states[BTC]
            while st.trades < 600 or engine.status()["pending_repairs"]:
                await asyncio.sleep(0.05)
        yield Served(replica, engine, api_url(runner), db, tape, tmp)
    finally:
        await stop_api(runner)
        await engine.stop()
        await replica.stop()


def _tape(served: Served) -> list[TapeRow]:
    return rows_by_symbol(read_tape(served.tape))["BTCUSDT"]


def _expected(rows: list[TapeRow], lo: int, hi: int) -> list[tuple[int, int, float, float, str]]:
    """The tape's trades in [lo, hi] as GET /trades rows (time, id, price, amount, taker side)."""
    return [
        (r.time_ms, r.trade_id, float(r.price), float(r.qty), "sell" if r.buyer_maker else "buy")
        for r in sorted(rows, key=lambda r: (r.time_ms, r.trade_id))
        if lo <= r.time_ms <= hi
    ]


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.json()


async def test_trades_read_back_equal_the_tape(served: Served) -> None:
    """Every trade the stream delivered, for a window from the first recorded trade on, equals the
    tape's, field by field, and the window reports nothing missing."""
    status, whole = await _get(f"{served.url}/trades/{BTC}?limit=100000")
    assert status == 200, whole
    times = [t[0] for t in whole["trades"]]
    assert len(times) >= 600
    lo, hi = times[0], times[-1] - 1  # the last millisecond may still be arriving
    status, doc = await _get(f"{served.url}/trades/{BTC}?since={lo}&until={hi}")
    assert status == 200
    got = [tuple(t) for t in doc["trades"]]
    want = _expected(_tape(served), lo, hi)
    assert len(want) >= 500
    assert got == want
    assert doc["missing"] == []
    assert doc["kept_from"] == lo
    assert doc["next_since"] is None
    # Before the first recorded trade the store knows nothing: kept_from says where answers start.
    assert min(r.time_ms for r in _tape(served)) < lo


async def test_trades_paging_and_the_client(served: Served) -> None:
    """``limit`` pages forward from ``since`` (next_since continues); the client's ccxt-shaped
    fetch_trades returns the same trades as dicts."""
    _, whole = await _get(f"{served.url}/trades/{BTC}?limit=100000")
    lo = whole["trades"][0][0]
    status, first = await _get(f"{served.url}/trades/{BTC}?since={lo}&limit=50")
    assert status == 200 and len(first["trades"]) == 50
    assert first["next_since"] == first["trades"][-1][0]
    assert [tuple(t) for t in first["trades"]] == [tuple(t) for t in whole["trades"][:50]]
    async with Client(served.url) as client:
        trades = await client.fetch_trades(BTC, since=lo, limit=50)
        newest = await client.fetch_trades(BTC, limit=5)
    assert [(t["timestamp"], int(t["id"]), t["price"], t["amount"], t["side"]) for t in trades] == [
        tuple(t) for t in first["trades"]
    ]
    assert all(t["symbol"] == BTC and t["cost"] == t["price"] * t["amount"] for t in trades)
    assert trades[0]["datetime"].endswith("Z") and len(newest) == 5
    assert [int(t["id"]) for t in newest] == sorted(int(t["id"]) for t in newest)
    assert int(newest[-1]["id"]) >= int(whole["trades"][-1][1])
    with pytest.raises(ValueError, match="fetch_trades takes until"):
        async with Client(served.url) as client:
            await client.fetch_trades(BTC, params={"page": 2})

    def sync_fetch() -> list[dict[str, Any]]:
        with SyncClient(served.url) as sync:
            return sync.fetch_trades(BTC, since=lo, limit=50)

    assert await asyncio.to_thread(sync_fetch) == trades


async def test_tick_counters_in_status_and_metrics(served: Served) -> None:
    """The status and /metrics count the recorder's ticks: after a flush, every tick the store holds
    was counted as written, none pending, dropped or missing."""
    rec = served.engine.ticks
    assert rec is not None
    await rec.flush()
    ticks = served.engine.report().ticks
    assert ticks is not None
    _, whole = await _get(f"{served.url}/trades/{BTC}?limit=100000")
    stored = len(whole["trades"])
    # The stream goes on between the flush and the read: the store may hold a few more than counted.
    assert 0 < ticks.written <= stored
    assert (ticks.dropped, ticks.gaps, ticks.up) == (0, 0, True)
    async with aiohttp.ClientSession() as s, s.get(f"{served.url}/metrics") as r:
        text = await r.text()
    values = {
        line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("deltafeed_tick")
    }
    assert values["deltafeed_ticks_written_total"] >= ticks.written
    assert values["deltafeed_ticks_dropped_total"] == 0
    assert values["deltafeed_ticks_store_up"] == 1
    assert "deltafeed_ticks_pending" in values


async def test_trades_errors(served: Served) -> None:
    for path, code, needle in [
        (f"/trades/{BTC}?limit=0", 400, "limit"),
        (f"/trades/{BTC}?since=yesterday", 400, "since"),
        (f"/trades/{BTC}?foo=1", 400, "unknown parameter"),
        ("/trades/binance:DOGEUSDT", 404, "not collected"),
        (f"/candles/{BTC}/1m?format=xlsx", 400, "format=parquet"),
    ]:
        status, doc = await _get(served.url + path)
        assert status == code, (path, doc)
        assert needle in doc["error"], (path, doc)


def _check_candles(frame: pd.DataFrame, rows: list[TapeRow], tf_ms: int, time_col: str) -> int:
    """Every candle of ``frame`` equals the candle built from the tape at its open time."""
    want = {c.open_time: c for c in candles_from_tape(rows, tf_ms)}
    assert len(frame) > 0
    for rec in frame.to_dict("records"):
        t = int(pd.Timestamp(rec[time_col]).value // 1_000_000)
        w = want[t]
        assert (rec["open"], rec["high"], rec["low"], rec["close"], round(rec["volume"], 8)) == (
            w.open,
            w.high,
            w.low,
            w.close,
            round(w.volume, 8),
        ), t
        if "trades" in rec:
            assert rec["trades"] == w.trades
    return len(frame)


async def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            return main(list(argv))

    code = await asyncio.to_thread(run)
    return code, out.getvalue(), err.getvalue()


async def test_export_parquet_plain_equals_the_tape(served: Served) -> None:
    """``deltafeed export`` writes the whole stored series by DuckDB's COPY; pandas reads it back and
    every final candle equals the tape's; states and counts match the store."""
    await served.engine.writer.flush()
    out = served.tmp / "btc-1m.parquet"
    code, _, err = await _cli("export", BTC, "1m", str(out), "--db", str(served.db), "--final-only")
    assert code == 0, err
    frame = pd.read_parquet(out)
    assert list(frame.columns) == [
        "instrument",
        "timeframe",
        "open_time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "trades",
        "state",
    ]
    assert str(frame["open_time"].dt.tz) == "UTC"
    assert set(frame["state"]) == {"final"}
    stored = [c for c in await served.engine.cold.query(BTC, "1m") if c.final]
    assert len(frame) == len(stored)
    assert _check_candles(frame, _tape(served), 60_000, "open_time") == len(stored)


async def test_export_freqtrade_layout(served: Served) -> None:
    """The freqtrade layout: ``<dir>/BTC_USDT-5m.feather`` (and .parquet) with exactly
    ``date, open, high, low, close, volume``, read as freqtrade's feather handler reads it
    (``read_feather``, ``to_datetime(date, utc=True)``), closed candles only, equal to the tape."""
    await served.engine.writer.flush()
    datadir = served.tmp / "freqtrade"
    for fmt in ("feather", "parquet"):
        code, _, err = await _cli(
            "export", BTC, "5m", str(datadir), "--db", str(served.db), "--layout", "freqtrade", "--format", fmt
        )
        assert code == 0, err
        path = datadir / f"BTC_USDT-5m.{fmt}"
        frame = pd.read_feather(path) if fmt == "feather" else pd.read_parquet(path)
        assert list(frame.columns) == ["date", "open", "high", "low", "close", "volume"]
        frame["date"] = pd.to_datetime(frame["date"], utc=True)
        assert frame["date"].is_monotonic_increasing and frame["date"].is_unique
        closed = [c for c in await served.engine.cold.query(BTC, "5m") if c.closed]
        assert len(frame) == len(closed)
        _check_candles(frame, _tape(served), 300_000, "date")


async def test_candles_parquet_over_http(served: Served) -> None:
    async with aiohttp.ClientSession() as s:

        async def get() -> tuple[str | None, bytes]:
            async with s.get(f"{served.url}/candles/{BTC}/1m?format=parquet") as r:
                assert r.status == 200
                assert r.content_type == "application/vnd.apache.parquet"
                return r.headers.get(FORMING_HEADER), await r.read()

        # No candle forms between a minute's end and its first trade (the header is then left out).
        forming, body = await answered(get, lambda got: got[0] is not None, "a forming candle")
    assert forming is not None
    frame = pd.read_parquet(io.BytesIO(body))
    final = frame[frame["state"] == "final"]
    assert len(final) > 30
    _check_candles(final, _tape(served), 60_000, "open_time")
    assert frame["state"].iloc[-1] == "forming" and (frame["state"] == "forming").sum() == 1
    assert int(pd.Timestamp(frame["open_time"].iloc[-1]).value // 1_000_000) == int(forming)


async def test_export_ticks_and_trades_cli(served: Served) -> None:
    """Ticks export as Parquet and print with ``deltafeed trades``, both equal to the tape."""
    await served.engine.ticks.flush()  # type: ignore[union-attr]
    out = served.tmp / "trades.parquet"
    code, _, err = await _cli("export", BTC, "trades", str(out), "--db", str(served.db))
    assert code == 0, err
    frame = pd.read_parquet(out)
    lo = int(frame["time"].iloc[0].value // 1_000_000)
    hi = int(frame["time"].iloc[-1].value // 1_000_000)
    got = [
        (int(r["time"].value // 1_000_000), int(r["id"]), r["price"], r["amount"], r["side"])
        for r in frame.to_dict("records")
    ]
    assert got == _expected(_tape(served), lo, hi)
    code, text, err = await _cli("trades", BTC, "--db", str(served.db), "--format", "json", "--limit", "20")
    assert code == 0, err
    doc = json.loads(text)
    assert len(doc["trades"]) == 20 and doc["missing"] == []


async def test_export_bad_input(served: Served) -> None:
    """Unknown format: one line, exit 2. An empty series: exit 2 naming the series that exist."""
    code, _, err = await _cli(
        "export", BTC, "1m", str(served.tmp / "x.xlsx"), "--db", str(served.db), "--format", "xlsx"
    )
    assert code == 2 and err.count("\n") == 1 and "parquet, csv, feather" in err
    code, _, err = await _cli("export", "binance:ETHUSDT", "1m", str(served.tmp / "e.parquet"), "--db", str(served.db))
    assert code == 2 and err.count("\n") == 1
    assert "no binance:ETHUSDT 1m" in err and "binance:BTCUSDT 1m (" in err and "binance:BTCUSDT 5m (" in err
    assert not (served.tmp / "e.parquet").exists()
    code, _, err = await _cli("export", BTC, "1m", str(served.tmp / "nodir" / "x.parquet"), "--db", str(served.db))
    assert code == 2 and "mkdir -p" in err


# --- the consuming programs themselves (each in its own venv: `make consumers`) --------------------

REPO = Path(__file__).resolve().parents[2]


def _consumer(name: str) -> str:
    """The python of ``name``'s venv (``$DELTAFEED_<NAME>_PYTHON`` or ``.venv-<name>``), or skip."""
    path = os.environ.get(f"DELTAFEED_{name.upper()}_PYTHON") or str(REPO / f".venv-{name}" / "bin" / "python")
    if not os.path.exists(path):
        pytest.skip(f"{name} is not installed beside the project (make consumers builds .venv-{name})")
    return path


async def _run(python: str, script: str, *argv: str) -> Any:
    proc = await asyncio.create_subprocess_exec(
        python, "-c", script, *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


FREQTRADE_LOAD = """
import json, sys
from pathlib import Path
from freqtrade.data.history.datahandlers import get_datahandler
from freqtrade.enums import CandleType
out = {}
for fmt in ("feather", "parquet"):
    dh = get_datahandler(Path(sys.argv[1]), fmt)
    df = dh.ohlcv_load(sys.argv[2], sys.argv[3], CandleType.SPOT, fill_missing=False, drop_incomplete=False)
    out[fmt] = [[round(r.date.timestamp() * 1000), r.open, r.high, r.low, r.close, r.volume] for r in df.itertuples()]
print(json.dumps(out))
"""


async def test_freqtrade_loads_the_export(served: Served) -> None:
    """freqtrade's own data handlers (feather and parquet) load the freqtrade layout: every candle
    equals the tape's, none missing between the first and the last."""
    python = _consumer("freqtrade")
    await served.engine.writer.flush()
    datadir = served.tmp / "ft-data"
    for fmt in ("feather", "parquet"):
        code, _, err = await _cli(
            "export", BTC, "5m", str(datadir), "--db", str(served.db), "--layout", "freqtrade", "--format", fmt
        )
        assert code == 0, err
    want = {c.open_time: c for c in candles_from_tape(_tape(served), 300_000)}  # the tape is ahead of the store
    loaded = await _run(python, FREQTRADE_LOAD, str(datadir), "BTC/USDT", "5m")
    for fmt, rows in loaded.items():
        assert len(rows) >= 10, fmt
        assert [r[0] for r in rows] == list(range(rows[0][0], rows[-1][0] + 1, 300_000))
        for t, o, h, lo, c, v in rows:
            w = want[t]
            assert (o, h, lo, c, round(v, 8)) == (w.open, w.high, w.low, w.close, round(w.volume, 8)), (fmt, t)


NAUTILUS_LOAD = """
import json, sys
from nautilus_trader.persistence.catalog import ParquetDataCatalog
bars = ParquetDataCatalog(sys.argv[1]).bars()
print(json.dumps([[str(b.bar_type), b.ts_event, str(b.open), str(b.high), str(b.low), str(b.close), str(b.volume)]
                  for b in bars]))
"""


async def test_nautilus_catalog_loads_the_export(served: Served) -> None:
    """Nautilus Trader's ParquetDataCatalog reads the nautilus layout back as Bars of the right bar
    type, stamped at their close, with the tape's prices and volumes."""
    python = _consumer("nautilus")
    await served.engine.writer.flush()
    catalog = served.tmp / "catalog"
    code, _, err = await _cli("export", BTC, "1m", str(catalog), "--db", str(served.db), "--layout", "nautilus")
    assert code == 0, err
    bars = await _run(python, NAUTILUS_LOAD, str(catalog))
    last = bars[-1][1] // 1_000_000 - 60_000
    closed = [c for c in await served.engine.cold.query(BTC, "1m", None, last) if c.closed]
    assert [b[1] // 1_000_000 - 60_000 for b in bars] == [c.open_time for c in closed]
    assert len(bars) >= 30
    want = {c.open_time: c for c in candles_from_tape(_tape(served), 60_000)}
    for bar_type, ts, o, h, lo, c, v in bars:
        assert bar_type == "BTCUSDT.BINANCE-1-MINUTE-LAST-EXTERNAL"
        w = want[ts // 1_000_000 - 60_000]
        assert (float(o), float(h), float(lo), float(c)) == (w.open, w.high, w.low, w.close)
        assert abs(float(v) - float(w.exact_volume)) < 1e-8
    # A second, shorter export into the same catalog would overlap the first file: refused (exit 2),
    # the first file left alone.
    half = dt.datetime.fromtimestamp(closed[len(closed) // 2].open_time / 1000, dt.UTC).isoformat()
    code, _, err = await _cli(
        "export", BTC, "1m", str(catalog), "--db", str(served.db), "--layout", "nautilus", "--until", half
    )
    assert code == 2 and "already holds bars" in err and err.count("\n") == 1
    assert len(await _run(python, NAUTILUS_LOAD, str(catalog))) == len(bars)


async def test_quotes_of_a_quote_built_venue_equal_the_tape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A quote-built venue (the OANDA replica, MID and BID candles kept): every quote the stream
    delivered is stored once (not once per price side), equal to the quote tape for the window,
    nothing missing; ``GET /trades`` serves them as ``quotes``."""
    from deltafeed.venues.oanda.replica import DEFAULT_ACCOUNT, DEV_TOKEN, OandaReplica
    from helpers import ms
    from reference import read_quote_tape

    monkeypatch.setenv("OANDA_TOKEN", DEV_TOKEN)
    monkeypatch.setenv("OANDA_ACCOUNT", DEFAULT_ACCOUNT)
    tape = tmp_path / "quotes.csv"
    wednesday = ms("2026-03-04T10:00")  # markets open
    replica = OandaReplica(
        symbols=["EUR_USD"], seed=4, rate=8.0, speed=60.0, history_ms=3_600_000, tape=str(tape), start_ms=wednesday
    )
    await replica.start()
    settings = Settings(
        venue="oanda",
        symbols=["EUR_USD"],
        timeframes=["1m"],
        prices=["mid", "bid"],
        history="1h",
        db=str(tmp_path / "fx.duckdb"),
        rest_url=replica.url,
        stream_url=replica.url,
        ticks=True,
    ).validate()
    engine = Engine(settings)
    runner = None
    try:
        await engine.start()
        runner = await start_api(engine, None, "127.0.0.1", 0, None)
        async with asyncio.timeout(30):
            while engine.states["oanda:EUR_USD"].trades < 300:
                await asyncio.sleep(0.05)
        status, doc = await _get(f"{api_url(runner)}/trades/oanda:EUR_USD@bid?limit=100000")
    finally:
        if runner is not None:
            await stop_api(runner)
        await engine.stop()
        await replica.stop()
    assert status == 200 and doc["trades"] == [] and doc["missing"] == []
    quotes = [tuple(q) for q in doc["quotes"]]
    assert len(quotes) >= 300
    lo, hi = quotes[0][0], quotes[-1][0] - 1
    got = [(t, b, a) for t, _, b, a in quotes if t <= hi]
    want = [(r.time_ms, float(r.bid), float(r.ask)) for r in read_quote_tape(tape) if lo <= r.time_ms <= hi]
    assert got == want
    seqs = [q[1] for q in quotes]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one row per quote, none repeated
