"""The ``deltafeed`` command as a user runs it: real processes, real signals, real files."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "deltafeed"]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def replica() -> Iterator[str]:
    proc = subprocess.Popen([*CLI, "replica", "binance", "--symbols", "BTCUSDT,ETHUSDT", "--speed", "60",
                             "--history", "30m", "--seed", "5"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first.startswith("listening on http://127.0.0.1:")
    yield first.removeprefix("listening on ")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "429s=0" in out  # the engine never ran into the weight limit


def test_run_query_while_running_and_stop_within_two_seconds(replica: str, tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    ws = replica.replace("http://", "ws://")
    run = subprocess.Popen([*CLI, "run", "--rest-url", replica, "--ws-url", ws, "--symbols", "BTCUSDT,ETHUSDT",
                            "--timeframes", "1m,5m", "--history", "30m", "--db", db, "--api", "127.0.0.1:0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        rows: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            time.sleep(1.0)
            q = cli("candles", "binance:BTCUSDT", "1m", "--db", db, "--format", "csv")  # while run writes
            if q.returncode == 0:
                rows = list(csv.DictReader(io.StringIO(q.stdout)))
                if len(rows) >= 35:  # 30 minutes of history and several of streaming
                    break
        assert len(rows) >= 35, q.stderr
        assert list(rows[0]) == ["open_time", "open", "high", "low", "close", "volume", "trades"]
        assert rows[0]["open_time"].endswith("Z") and "T" in rows[0]["open_time"]
        times = [r["open_time"] for r in rows]
        assert times == sorted(set(times))
    finally:
        t0 = time.monotonic()
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=10)
        took = time.monotonic() - t0
    assert run.returncode == 0, err
    assert took < 2.0, took
    assert "Traceback" not in err
    last = cli("candles", "binance:ETHUSDT", "5m", "--db", db, "--last", "2", "--format", "json")
    assert last.returncode == 0 and last.stdout.count("open_time") == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["run", "--venue", "kraken"], "unknown venue"),
        (["run", "--timeframes", "2m"], "unknown timeframe"),
        (["run", "--history", "5x"], "cannot read duration"),
        (["run", "--rest-url", "http://127.0.0.1:9", "--ws-url", "ws://127.0.0.1:9", "--api", "off"], "cannot reach"),
        (["run", "--api", "0.0.0.0:8080"], "token"),
        (["run", "--api", "nonsense"], "HOST:PORT"),
        (["status", "--api", "http://127.0.0.1:9"], "cannot reach"),
        (["run", "--config", "/nonexistent.toml"], "does not exist"),
        (["candles", "binance:BTCUSDT", "1m", "--db", "/nonexistent/x.duckdb"], "no candle database"),
        (["candles", "BTCUSDT", "1m"], "VENUE:SYMBOL"),
        (["candles", "binance:BTCUSDT", "7m"], "unknown timeframe"),
        (["replica", "binance", "--port", "70000"], "not a TCP port"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_usage_is_one_line_and_exit_code_2(args: list[str], needle: str, tmp_path: Path) -> None:
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert p.returncode == 2
    assert needle in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize(("args", "env", "config", "needle"), [
    (["--api-token", ""], {}, "", "--api-token is blank"),
    (["--api-token", "   "], {}, "", "--api-token is blank"),
    (["--api-token", "two words"], {}, "", "--api-token holds spaces"),
    ([], {"DELTAFEED_API_TOKEN": ""}, "", "DELTAFEED_API_TOKEN is blank"),
    ([], {"DELTAFEED_API_TOKEN": " \t"}, "", "DELTAFEED_API_TOKEN is blank"),
    ([], {}, 'api_token = ""\n', "api_token in the config file is blank"),
    (["--api-token", "fine"], {}, 'api_token = " "\n', "api_token in the config file is blank"),
    (["--api", "0.0.0.0:0", "--api-token", ""], {}, "", "--api-token is blank"),
    (["--api", "off"], {"DELTAFEED_API_TOKEN": ""}, "", "DELTAFEED_API_TOKEN is blank"),
], ids=["flag-empty", "flag-spaces", "flag-inner-space", "env-empty", "env-blank", "config-empty",
        "config-blank-under-a-flag", "wide-bind", "api-off"])
def test_a_blank_api_token_is_refused_wherever_it_comes_from(
        args: list[str], env: dict[str, str], config: str, needle: str, tmp_path: Path) -> None:
    """A blank token would otherwise mean "no token": the API open to reads on loopback, or (before)
    quietly unprotected. One line, exit code 2, before anything starts."""
    conf = tmp_path / "c.toml"
    conf.write_text(config)
    environ = {k: v for k, v in os.environ.items() if k != "DELTAFEED_API_TOKEN"} | env
    p = subprocess.run([*CLI, "run", "--config", str(conf), "--rest-url", "http://127.0.0.1:9", "--ws-url",
                        "ws://127.0.0.1:9", "--db", str(tmp_path / "x.duckdb"), *args],
                       capture_output=True, text=True, timeout=30, env=environ)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "x.duckdb").exists()  # refused before anything started


@pytest.mark.parametrize(("limit", "cap"), [((256, 4096), 1000), ((256, 256), 64)], ids=["raised", "hard-256"])
def test_run_raises_its_descriptor_limit_and_sizes_the_api_cap_by_it(
        limit: tuple[int, int], cap: int, tmp_path: Path) -> None:
    """A soft ``ulimit -n`` of 256 is raised towards the hard one, and the API's default cap follows:
    1000 connections when there is room, (256 - 128) / 2 when the hard limit is 256 too."""
    import resource

    run = subprocess.Popen([*CLI, "run", "--rest-url", "http://127.0.0.1:9", "--ws-url", "ws://127.0.0.1:9",
                            "--db", str(tmp_path / "x.duckdb"), "--api", "127.0.0.1:0"],
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit))
    assert run.stderr is not None
    lines: list[str] = []
    try:  # the API starts before the engine (whose venue is unreachable: no matter here)
        while not lines or "API listening on" not in lines[-1]:
            lines.append(run.stderr.readline())
            assert lines[-1] and len(lines) < 20, lines
    finally:
        run.kill()
        run.communicate(timeout=10)
    assert f"(at most {cap} connections, headers within 5 s)" in lines[-1], lines


def test_status_refuses_a_blank_token_too(tmp_path: Path) -> None:
    p = subprocess.run([*CLI, "status", "--api", "http://127.0.0.1:9", "--api-token", ""],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--api-token is blank" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_bad_config_file_names_the_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('symbolz = ["BTCUSDT"]\n')
    p = cli("run", "--config", str(bad))
    assert p.returncode == 2 and "symbolz" in p.stderr and str(bad) in p.stderr
    bad.write_text('symbols = "BTC\n')
    p = cli("run", "--config", str(bad))
    assert p.returncode == 2 and "not valid TOML" in p.stderr


def test_unknown_symbol_is_refused(replica: str, tmp_path: Path) -> None:
    p = cli("run", "--rest-url", replica, "--ws-url", replica.replace("http", "ws"), "--symbols", "NOPEUSDT",
            "--db", str(tmp_path / "x.duckdb"), "--api", "off")
    assert p.returncode == 2 and "NOPEUSDT" in p.stderr and "--symbols" in p.stderr


def test_demo_runs_offline_for_a_fixed_duration(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "160"}
    p = subprocess.run([*CLI, "demo", "--duration", "4"], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert "replicas: binance on http://127.0.0.1:" in p.stdout and "oanda on http://127.0.0.1:" in p.stdout
    assert "binance:SOLUSDT" in p.stdout and "oanda:EUR_USD" in p.stdout and "stopped;" in p.stdout
    assert (tmp_path / "deltafeed-demo.duckdb").exists()
    q = subprocess.run([*CLI, "candles", "binance:ETHUSDT", "1h", "--db", "deltafeed-demo.duckdb", "--format",
                        "csv"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert q.returncode == 0 and len(q.stdout.splitlines()) >= 7  # header + six hours of history
    for price in ("mid", "bid"):  # forex: quote-built candles, mid kept; bid was not asked for
        r = subprocess.run([*CLI, "candles", "oanda:USD_JPY", "1h", "--price", price, "--db", "deltafeed-demo.duckdb",
                            "--format", "csv"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert len(r.stdout.splitlines()) >= (7 if price == "mid" else 1)
