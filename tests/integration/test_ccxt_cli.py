"""``deltafeed venues`` and ``deltafeed venues ccxt`` (offline, from the installed ccxt), and a run or
listing that needs ccxt where it is not installed: one line naming ``pip install 'deltafeed[ccxt]'``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import ccxt.pro

SRC = str(Path(__file__).resolve().parents[2] / "src")


def deltafeed(*argv: str, pythonpath: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (pythonpath, SRC) if p)}
    return subprocess.run(
        [sys.executable, "-m", "deltafeed", *argv], capture_output=True, text=True, env=env, timeout=120
    )


def test_venues_lists_every_venue_and_ccxts_streaming_exchanges() -> None:
    out = deltafeed("venues")
    assert out.returncode == 0, out.stderr
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert {"binance", "ccxt", "coinbase", "dukascopy"} <= set(names)
    out = deltafeed("venues", "ccxt")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines()[1:-1]}
    # What the installed ccxt says, class by class.
    for ex_id in ("binance", "coinbase", "kraken", "bybit"):
        ex = getattr(ccxt.pro, ex_id)()
        assert ex.has["watchTrades"] is True and ex.has["fetchOHLCV"] is True
        assert rows[ex_id] == list(ex.timeframes), ex_id
    assert "bydfi" not in rows  # has['watchTrades'] is False there (PROTOCOLS-wave2.md 7)
    assert out.stdout.splitlines()[-1].startswith(f"{len(rows)} exchanges with watchTrades and fetchOHLCV")


def test_without_ccxt_installed_the_error_names_the_extra(tmp_path: Path) -> None:
    fake = tmp_path / "ccxt"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named ccxt')\n")
    out = deltafeed("venues", "ccxt", pythonpath=str(tmp_path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'deltafeed[ccxt]'" in lines[0] and "Traceback" not in out.stderr
    config = tmp_path / "run.toml"
    config.write_text('symbols = ["ccxt:binance:BTC/USDT"]\ndb = "' + str(tmp_path / "x.duckdb") + '"\n')
    out = deltafeed("run", "--config", str(config), pythonpath=str(tmp_path))
    assert out.returncode == 2, out.stderr
    assert "pip install 'deltafeed[ccxt]'" in out.stderr.strip().splitlines()[-1] and "Traceback" not in out.stderr
