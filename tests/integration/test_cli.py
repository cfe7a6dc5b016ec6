"""The ``deltafeed`` command as a user runs it: real processes, real signals, real files."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from deltafeed.model import Candle, state_flags
from deltafeed.store.cold import ColdStore
from deltafeed.store.redis_hot import RedisHot

CLI = [sys.executable, "-m", "deltafeed"]


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def replica() -> Iterator[str]:
    proc = subprocess.Popen(
        [
            *CLI,
            "replica",
            "binance",
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--speed",
            "60",
            "--history",
            "30m",
            "--seed",
            "5",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first.startswith("listening on http://127.0.0.1:")
    yield first.removeprefix("listening on ")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "429s=0" in out  # the engine never ran into the weight limit


@pytest.mark.slow  # over 3 s: not in the everyday subset
def test_run_query_while_running_and_stop_within_two_seconds(replica: str, tmp_path: Path) -> None:
    db = str(tmp_path / "cli.duckdb")
    ws = replica.replace("http://", "ws://")
    run = subprocess.Popen(
        [
            *CLI,
            "run",
            "--rest-url",
            replica,
            "--ws-url",
            ws,
            "--symbols",
            "BTCUSDT,ETHUSDT",
            "--timeframes",
            "1m,5m",
            "--history",
            "30m",
            "--db",
            db,
            "--api",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
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
        assert list(rows[0]) == ["open_time", "open", "high", "low", "close", "volume", "trades", "state"]
        assert {r["state"] for r in rows} <= {"forming", "provisional", "final"}
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
        (["run", "--venue", "nosuchvenue"], "unknown venue"),
        (["run", "--timeframes", "45s,7x"], "unknown timeframe '7x'; use Ns, Nm, Nh or Nd"),
        (["run", "--history", "5x"], "cannot read duration"),
        (["run", "--week-start", "someday 25:00"], "write e.g. 'mon 00:00' or 'sun 21:00'"),
        # An unreachable venue is not bad usage: exit 69 (tests/integration/test_ops.py).
        (["run", "--api", "0.0.0.0:8080"], "token"),
        (["run", "--api", "nonsense"], "HOST:PORT"),
        (["run", "--config", "/nonexistent.toml"], "does not exist"),
        (["candles", "binance:BTCUSDT", "1m", "--db", "/nonexistent/x.duckdb"], "no candle database"),
        (["candles", "binance:", "1m"], "VENUE:SYMBOL"),
        (["candles", "binance:BTCUSDT", "7x"], "unknown timeframe"),
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


#: Each command that takes --db, with what it needs besides; nothing listens on port 9, so a run or
#: backfill that got past its --db would fail on the venue instead.
DB_COMMANDS = {
    "run": [
        "run",
        "--symbols",
        "BTCUSDT",
        "--rest-url",
        "http://127.0.0.1:9",
        "--ws-url",
        "ws://127.0.0.1:9",
        "--api",
        "off",
    ],
    "candles": ["candles", "binance:BTCUSDT", "1m"],
    "backfill": [
        "backfill",
        "oanda:EUR_USD",
        "--since",
        "2026-01-05T00:00:00Z",
        "--until",
        "2026-01-05T01:00:00Z",
        "--url",
        "http://127.0.0.1:9",
    ],
}


def one_line_error(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    return p.stderr.strip()


@pytest.mark.parametrize("db", ["foo://x", "mysql://u:secret@db.example/candles", "http://example.com/x.duckdb"])
@pytest.mark.parametrize("command", list(DB_COMMANDS))
def test_db_of_an_unsupported_kind_is_refused_and_nothing_is_created(command: str, db: str, tmp_path: Path) -> None:
    p = subprocess.run(
        [*CLI, *DB_COMMANDS[command], "--db", db], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    err = one_line_error(p)
    scheme = db.split("://")[0]
    assert err.startswith(f"deltafeed {command}: --db ") and f"{scheme}:// databases are not supported" in err
    assert "pass a DuckDB file path" in err and "postgresql://" in err and "secret" not in err
    assert list(tmp_path.iterdir()) == []  # before: a directory "foo:" holding a DuckDB file "x" and its spool


@pytest.mark.parametrize("command", list(DB_COMMANDS))
def test_db_in_a_missing_directory_names_it_and_creates_nothing(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    p = subprocess.run(
        [*CLI, *DB_COMMANDS[command], "--db", str(missing / "x.duckdb")],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    err = one_line_error(p)
    assert f"the directory {missing} does not exist" in err, err
    assert "spool" not in err  # the database's problem, not the spool that would sit beside it
    if command != "candles":  # a writer can be pointed at a new directory; a reader needs the file
        assert f"create it first (mkdir -p {missing})" in err
    assert list(tmp_path.iterdir()) == []


def test_run_with_a_spool_in_a_missing_directory_names_it(tmp_path: Path) -> None:
    spool = tmp_path / "gone" / "x.spool"
    p = subprocess.run(
        [*CLI, *DB_COMMANDS["run"], "--db", str(tmp_path / "x.duckdb"), "--spool", str(spool)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    err = one_line_error(p)
    assert f"--spool {spool}: the directory {spool.parent} does not exist" in err and "--spool off" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "env", "config", "needle"),
    [
        (["--api-token", ""], {}, "", "--api-token is blank"),
        (["--api-token", "   "], {}, "", "--api-token is blank"),
        (["--api-token", "two words"], {}, "", "--api-token holds spaces"),
        ([], {"DELTAFEED_API_TOKEN": ""}, "", "DELTAFEED_API_TOKEN is blank"),
        ([], {"DELTAFEED_API_TOKEN": " \t"}, "", "DELTAFEED_API_TOKEN is blank"),
        ([], {}, 'api_token = ""\n', "api_token in the config file is blank"),
        (["--api-token", "fine"], {}, 'api_token = " "\n', "api_token in the config file is blank"),
        (["--api", "0.0.0.0:0", "--api-token", ""], {}, "", "--api-token is blank"),
        (["--api", "off"], {"DELTAFEED_API_TOKEN": ""}, "", "DELTAFEED_API_TOKEN is blank"),
    ],
    ids=[
        "flag-empty",
        "flag-spaces",
        "flag-inner-space",
        "env-empty",
        "env-blank",
        "config-empty",
        "config-blank-under-a-flag",
        "wide-bind",
        "api-off",
    ],
)
def test_a_blank_api_token_is_refused_wherever_it_comes_from(
    args: list[str], env: dict[str, str], config: str, needle: str, tmp_path: Path
) -> None:
    """A blank token would otherwise mean "no token": the API open to reads on loopback, or (before)
    quietly unprotected. One line, exit code 2, before anything starts."""
    conf = tmp_path / "c.toml"
    conf.write_text(config)
    environ = {k: v for k, v in os.environ.items() if k != "DELTAFEED_API_TOKEN"} | env
    p = subprocess.run(
        [
            *CLI,
            "run",
            "--config",
            str(conf),
            "--rest-url",
            "http://127.0.0.1:9",
            "--ws-url",
            "ws://127.0.0.1:9",
            "--db",
            str(tmp_path / "x.duckdb"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=environ,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "x.duckdb").exists()  # refused before anything started


@pytest.mark.parametrize(("limit", "cap"), [((256, 4096), 1000), ((256, 256), 64)], ids=["raised", "hard-256"])
def test_run_raises_its_descriptor_limit_and_sizes_the_api_cap_by_it(
    limit: tuple[int, int], cap: int, tmp_path: Path
) -> None:
    """A soft ``ulimit -n`` of 256 is raised towards the hard one, and the API's default cap follows:
    1000 connections when there is room, (256 - 128) / 2 when the hard limit is 256 too."""
    import resource

    run = subprocess.Popen(
        [
            *CLI,
            "run",
            "--rest-url",
            "http://127.0.0.1:9",
            "--ws-url",
            "ws://127.0.0.1:9",
            "--db",
            str(tmp_path / "x.duckdb"),
            "--api",
            "127.0.0.1:0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, limit),
    )
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
    p = subprocess.run(
        [*CLI, "status", "--api", "http://127.0.0.1:9", "--api-token", ""], capture_output=True, text=True, timeout=30
    )
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
    p = cli(
        "run",
        "--rest-url",
        replica,
        "--ws-url",
        replica.replace("http", "ws"),
        "--symbols",
        "NOPEUSDT",
        "--db",
        str(tmp_path / "x.duckdb"),
        "--api",
        "off",
    )
    assert p.returncode == 2 and "NOPEUSDT" in p.stderr and "--symbols" in p.stderr


@pytest.mark.slow  # over 3 s: not in the everyday subset
def test_demo_runs_offline_for_a_fixed_duration(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "160"}
    # Into a pipe, as `make demo | tee log` or a CI log: the first line within 10 s, then plain
    # snapshots of the table while it runs (not only at exit).
    started = time.monotonic()
    proc = subprocess.Popen(
        [*CLI, "demo", "--duration", "6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    first_s = time.monotonic() - started
    rest, err = proc.communicate(timeout=90)
    p = subprocess.CompletedProcess(proc.args, proc.returncode, first + rest, err)
    assert first.startswith("deltafeed demo: starting") and first_s < 10, (first, first_s)
    assert p.stdout.count("deltafeed demo: crypto from trades") >= 2, p.stdout  # snapshots, title once each
    assert p.returncode == 0, p.stderr
    assert "replicas: binance on http://127.0.0.1:" in p.stdout and "oanda on http://127.0.0.1:" in p.stdout
    assert "binance:SOLUSDT" in p.stdout and "oanda:EUR_USD" in p.stdout and "stopped;" in p.stdout
    assert (tmp_path / "deltafeed-demo.duckdb").exists()
    q = subprocess.run(
        [*CLI, "candles", "binance:ETHUSDT", "1h", "--db", "deltafeed-demo.duckdb", "--format", "csv"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert q.returncode == 0 and len(q.stdout.splitlines()) >= 7  # header + six hours of history
    for price in ("mid", "bid"):  # forex: quote-built candles, mid kept; bid was not asked for
        r = subprocess.run(
            [
                *CLI,
                "candles",
                "oanda:USD_JPY",
                "1h",
                "--price",
                price,
                "--db",
                "deltafeed-demo.duckdb",
                "--format",
                "csv",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
        )
        if price == "mid":
            assert r.returncode == 0, r.stderr
            assert len(r.stdout.splitlines()) >= 7
        else:  # a series that was not collected: one line listing those that were, exit 2
            assert r.returncode == 2 and "no oanda:USD_JPY@bid 1h candles" in r.stderr, r.stderr
            assert "oanda:USD_JPY 1h" in r.stderr and len(r.stderr.splitlines()) == 1


@pytest.mark.slow  # over 10 s: not in the everyday subset
def test_candles_show_each_state_and_final_only(tmp_path: Path) -> None:
    """A DuckDB file with candles in every state (and, with --hot, newer ones in Redis): each read
    format shows the state; --final-only keeps the final ones, --last then counting those."""
    m, t0 = 60_000, 1_767_225_600_000  # 2026-01-01T00:00:00Z
    states = ["final", "final", "provisional", "final", "provisional", "provisional", "final", "forming"]

    def candle(k: int) -> Candle:
        return Candle(t0 + k * m, 100.0 + k, 101.0 + k, 99.0 + k, 100.5 + k, 1.25, 3 + k, *state_flags(states[k]))

    db = tmp_path / "states.duckdb"
    store = ColdStore(db)
    store.write([("binance:BTCUSDT", "1m", candle(k)) for k in range(6)])
    store.close()

    q = cli("candles", "binance:BTCUSDT", "1m", "--db", str(db), "--format", "csv")
    assert q.returncode == 0, q.stderr
    rows = list(csv.DictReader(io.StringIO(q.stdout)))
    assert q.stdout.splitlines()[0] == "open_time,open,high,low,close,volume,trades,state"
    assert [r["state"] for r in rows] == states[:6]
    assert rows[2] == {
        "open_time": "2026-01-01T00:02:00Z",
        "open": "102",
        "high": "103",
        "low": "101",
        "close": "102.5",
        "volume": "1.25",
        "trades": "5",
        "state": "provisional",
    }
    q = cli("candles", "binance:BTCUSDT", "1m", "--db", str(db), "--format", "json")
    docs = json.loads(q.stdout)
    assert [(d["closed"], d["state"]) for d in docs] == [(True, s) for s in states[:6]]
    q = cli("candles", "binance:BTCUSDT", "1m", "--db", str(db), "--format", "csv", "--final-only")
    assert [r["open_time"][14:16] for r in csv.DictReader(io.StringIO(q.stdout))] == ["00", "01", "03"]
    q = cli("candles", "binance:BTCUSDT", "1m", "--db", str(db), "--format", "json", "--final-only", "--last", "2")
    assert [(d["open_time"], d["state"]) for d in json.loads(q.stdout)] == [
        ("2026-01-01T00:01:00Z", "final"),
        ("2026-01-01T00:03:00Z", "final"),
    ]
    q = subprocess.run(
        [*CLI, "candles", "binance:BTCUSDT", "1m", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert q.returncode == 0 and q.stdout.count("provisional") == 3 and q.stdout.count("final") == 3

    # Newer candles from Redis (the hot tier), in all three states, joined to the file's.
    prefix = f"dfcli{uuid.uuid4().hex[:8]}"

    async def fill() -> None:
        hot = RedisHot("redis://127.0.0.1:6379/0", prefix=prefix, retention={"1m": None})
        await hot.open(warn=False)
        if hot.degraded is not None:
            pytest.skip(f"no Redis at 127.0.0.1:6379 ({hot.degraded})")
        for k in range(4, 8):
            hot.put("binance:BTCUSDT", "1m", candle(k))
        await hot.close()

    async def clean() -> None:
        raw = Redis.from_url("redis://127.0.0.1:6379/0")
        keys = [k async for k in raw.scan_iter(match=f"{prefix}:*")]
        if keys:
            await raw.delete(*keys)
        await raw.aclose()

    asyncio.run(fill())
    try:
        hot_args = ["--db", str(db), "--hot", "redis://127.0.0.1:6379/0", "--hot-prefix", prefix, "--format", "csv"]
        q = cli("candles", "binance:BTCUSDT", "1m", *hot_args)
        assert q.returncode == 0, q.stderr
        assert [r["state"] for r in csv.DictReader(io.StringIO(q.stdout))] == states
        q = cli("candles", "binance:BTCUSDT", "1m", *hot_args, "--final-only", "--last", "3")
        assert [(r["open_time"][14:16], r["state"]) for r in csv.DictReader(io.StringIO(q.stdout))] == [
            ("01", "final"),
            ("03", "final"),
            ("06", "final"),
        ]
    finally:
        asyncio.run(clean())
