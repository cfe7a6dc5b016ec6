"""cryptofeed (2.4.1, Binance TRADES from ``@aggTrade`` and 1m CANDLES from ``@kline_1m``) against the
Binance replica over TLS, with only the venue's addresses changed; every trade and every closed candle
it hands out is compared with the tape.

cryptofeed's pins clash with ours (websockets), so it lives in its own venv (``make clients``:
``.venv-cryptofeed``, or the Python named by ``DELTAFEED_CRYPTOFEED_PYTHON``) and runs in a
subprocess (tests/thirdparty/cryptofeed_probe.py); without that venv the test is skipped, saying so."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from deltafeed.venues.binance.replica import BinanceReplica
from reference import agg_trades_from_tape, candles_from_tape, read_tape, rows_by_symbol

pytestmark = [pytest.mark.thirdparty, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("DELTAFEED_CRYPTOFEED_PYTHON", ROOT / ".venv-cryptofeed" / "bin" / "python"))
PROBE = Path(__file__).with_name("cryptofeed_probe.py")
SYMBOLS = ("BTCUSDT", "XYZUSDT")


def _installed() -> bool:
    if not PYTHON.exists():
        return False
    return subprocess.run([str(PYTHON), "-c", "import cryptofeed"], capture_output=True, timeout=60).returncode == 0


if not _installed():
    pytest.skip(f"cryptofeed is not installed in {PYTHON} (run `make clients`)", allow_module_level=True)


@pytest_asyncio.fixture
async def replica(tmp_path: Path) -> AsyncIterator[BinanceReplica]:
    """BTCUSDT, and XYZUSDT whose trades often share a price (multi-trade aggregates); 1m candles close
    every 2 s of wall time."""
    r = BinanceReplica(
        symbols=SYMBOLS, seed=11, rate=5.0, speed=30.0, history_ms=10 * 60_000, tape=tmp_path / "tape.csv",
        tls=tmp_path / "tls",
    )  # fmt: skip
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


async def _probe(r: BinanceReplica, seconds: float) -> list[dict[str, Any]]:
    env = {**os.environ, "SSL_CERT_FILE": str(r.ca_file), "REQUESTS_CA_BUNDLE": str(r.ca_file)}
    proc = await asyncio.create_subprocess_exec(
        str(PYTHON), str(PROBE), r.url, r.ws_url, str(seconds), *SYMBOLS,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
    assert proc.returncode == 0, err.decode()[-2000:]
    docs = [json.loads(line) for line in out.decode().splitlines()]
    assert docs and docs[-1] == {"kind": "done"}, err.decode()[-2000:]
    return docs[:-1]


async def test_trades_and_candles_equal_the_tape(replica: BinanceReplica) -> None:
    docs = await _probe(replica, 10.0)
    await replica.stop()  # the tape is complete once the replica stops
    assert replica.options.tape is not None
    tape = rows_by_symbol(read_tape(replica.options.tape))
    for symbol in SYMBOLS:
        pair = f"{symbol[:-4]}-{symbol[-4:]}"
        aggs = {a.agg_id: a for a in agg_trades_from_tape(tape[symbol])}
        trades = [d for d in docs if d["kind"] == "trade" and d["symbol"] == pair]
        assert len(trades) > 50, (symbol, len(trades))
        ids = [t["id"] for t in trades]
        assert ids == list(range(ids[0], ids[0] + len(ids))), symbol  # none lost, none repeated
        for t in trades:
            a = aggs[t["id"]]
            assert (Decimal(t["price"]), Decimal(t["amount"]), round(t["time"] * 1000), t["side"]) == (
                a.price, a.qty, a.time_ms, "sell" if a.buyer_maker else "buy"
            ), t  # fmt: skip
        if symbol == "XYZUSDT":
            assert any(aggs[i].last_id > aggs[i].first_id for i in ids)  # aggregation is exercised
        ref = {c.open_time: c for c in candles_from_tape(tape[symbol], 60_000)}
        closed = [d for d in docs if d["kind"] == "candle" and d["symbol"] == pair and d["closed"]]
        assert len(closed) >= 3, (symbol, len(closed))
        for c in closed:
            want = ref[round(c["start"] * 1000)]
            assert round(c["stop"] * 1000) == want.open_time + 59_999
            assert (Decimal(c["open"]), Decimal(c["high"]), Decimal(c["low"]), Decimal(c["close"])) == (
                want.exact_open, want.exact_high, want.exact_low, want.exact_close
            ), c  # fmt: skip
            assert (Decimal(c["volume"]), c["trades"]) == (want.exact_volume, want.trades), c
