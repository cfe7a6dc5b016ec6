"""Operating deltafeed: ``--version``, log formats, exit codes a supervisor can act on, the base
install without optional extras, ``/livez`` and ``/readyz``, the process and build metrics, live-only
candle latency, and the Grafana dashboard's expressions against a running engine's ``/metrics``.

The engine tests share one engine collecting from the Binance replica (real loopback sockets),
served by the real API server; the CLI tests run ``python -m deltafeed`` as a user would."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers import free_port

from deltafeed.api.server import api_url, start_api, stop_api
from deltafeed.config import Settings
from deltafeed.engine import Engine
from deltafeed.venues.binance.replica import BinanceReplica

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "deltafeed"]
DASHBOARD = REPO / "deploy" / "grafana" / "deltafeed.json"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


# --- the command line ----------------------------------------------------------------------------


def test_version_comes_from_the_package_metadata() -> None:
    p = cli("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"deltafeed {metadata.version('deltafeed')}"


async def test_a_venue_behind_a_private_ca_is_refused_with_the_fix_then_trusted_through_ssl_cert_file(
    tls_binance: BinanceReplica, tmp_path: Path
) -> None:
    """A venue address whose certificate no trusted CA signed (here a replica over ``--tls``) stops
    ``run`` with one line naming the fix (exit 2, not a retry loop); with ``SSL_CERT_FILE`` pointing at
    that CA, the same run bootstraps over https, streams over wss and keeps candles."""
    assert tls_binance.ca_file is not None
    db = tmp_path / "tls.duckdb"
    args = [
        *CLI, "run", "--rest-url", tls_binance.url, "--ws-url", tls_binance.ws_url, "--symbols", "BTCUSDT",
        "--timeframes", "1m", "--history", "5m", "--db", str(db), "--api", "127.0.0.1:0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_FILE"}
    p = await asyncio.create_subprocess_exec(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(p.communicate(), 60)
    errors = [line for line in err.decode().splitlines() if "deltafeed run:" in line]
    assert p.returncode == 2, err.decode()
    assert len(errors) == 1 and "is not trusted" in errors[0] and "SSL_CERT_FILE" in errors[0], err.decode()
    assert "Traceback" not in err.decode()

    env["SSL_CERT_FILE"] = str(tls_binance.ca_file)
    p = await asyncio.create_subprocess_exec(*args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            while not tls_binance.stats["open_connections"]:  # the wss handshake trusted the CA
                await asyncio.sleep(0.1)
        await asyncio.sleep(2)  # some trades over it
    finally:
        p.terminate()
        _, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode == 0, err.decode()
    assert tls_binance.stats["connections"] >= 1 and "untrusted certificate" not in err.decode()
    q = cli("candles", "binance:BTCUSDT", "1m", "--db", str(db), "--format", "csv")
    assert q.returncode == 0, q.stderr
    assert len(q.stdout.splitlines()) - 1 >= 5  # five minutes of history at least, fetched over https


def test_json_logs_are_one_object_per_line_and_a_bad_level_is_bad_usage(tmp_path: Path) -> None:
    p = cli("run", "--log-format", "json", "--history", "5x")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    doc = json.loads(lines[0])
    assert set(doc) == {"time", "level", "logger", "message"} and doc["level"] == "error"
    assert "cannot read duration '5x'" in doc["message"]
    p = cli("run", env={**os.environ, "DELTAFEED_LOG_LEVEL": "loud"})
    assert p.returncode == 2 and p.stderr.strip() == (
        "deltafeed: DELTAFEED_LOG_LEVEL='loud' is not one of debug, info, warning, error; fix or unset it"
    )


@pytest.mark.slow  # the REST client's retries take ~10 s before it gives up on the venue
def test_an_unreachable_venue_exits_69_not_2(tmp_path: Path) -> None:
    """Nothing listens on the port: the settings may be right, so 69 (retry), not 2 (fix them)."""
    port = free_port()
    p = cli(
        "run",
        "--symbols",
        "BTCUSDT",
        "--rest-url",
        f"http://127.0.0.1:{port}",
        "--ws-url",
        f"ws://127.0.0.1:{port}",
        "--api",
        "off",
        "--db",
        str(tmp_path / "x.duckdb"),
    )
    assert p.returncode == 69, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0].startswith(f"deltafeed run: cannot reach http://127.0.0.1:{port}") and "--rest-url" in lines[0]


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--api", "http://127.0.0.1:{port}"],
        [
            "backfill",
            "oanda:EUR_USD",
            "--since",
            "2026-11-02",
            "--until",
            "2026-11-03",
            "--url",
            "http://127.0.0.1:{port}/datafeed",
            "--retries",
            "0",
            "--db",
            "{tmp}/fx.duckdb",
        ],
    ],
    ids=["status", "backfill"],
)
def test_an_unreachable_api_or_tick_source_exits_69_not_2(args: list[str], tmp_path: Path) -> None:
    """Nothing listens: ``status`` (the run may be starting) and ``backfill`` (the source may be
    down) may work later, so they exit 69 with one line, as ``run`` does for a venue."""
    port = free_port()
    p = cli(*[a.format(port=port, tmp=tmp_path) for a in args])
    assert p.returncode == 69, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "cannot reach" in lines[0] and f"127.0.0.1:{port}" in lines[0], lines


#: Runs the CLI with the optional extras' packages unimportable: the base install.
BASE_ONLY = (
    "import sys\n"
    "for name in ('asyncpg', 'redis', 'pandas', 'pyarrow', 'ccxt'):\n"
    "    sys.modules[name] = None\n"
    "from deltafeed.cli import main\n"
    "raise SystemExit(main(sys.argv[1:]))\n"
)


def base_only(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BASE_ONLY, *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_the_base_install_runs_and_names_the_extra_it_lacks(tmp_path: Path) -> None:
    assert base_only("run", "--help").returncode == 0
    p = base_only("run", "--hot", "redis://127.0.0.1:6379/0", "--db", str(tmp_path / "x.duckdb"), "--api", "off")
    assert p.returncode == 2 and p.stderr.strip() == (
        "deltafeed run: --hot (the Redis hot tier) needs redis, which is not installed; install the redis"
        " extra: pip install 'deltafeed[redis]'"
    )
    p = base_only("candles", "binance:BTCUSDT", "1m", "--db", "postgresql://deltafeed@127.0.0.1:9/x")
    assert p.returncode == 2 and "pip install 'deltafeed[postgres]'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_the_base_dependencies_leave_the_extras_out() -> None:
    requires = metadata.requires("deltafeed") or []
    base = {re.split(r"[ <>=;\[]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
    assert not base & {"asyncpg", "redis", "pandas", "pyarrow", "ccxt"}, base
    extras = set(metadata.metadata("deltafeed").get_all("Provides-Extra") or [])
    assert {"postgres", "redis", "ccxt", "pandas", "export"} <= extras


# --- a running engine ----------------------------------------------------------------------------


@dataclass
class Running:
    replica: BinanceReplica
    engine: Engine
    url: str
    #: What /readyz and /livez answered before the engine started (the API starts first, as in `run`).
    before: dict[str, tuple[int, Any]] = field(default_factory=dict)


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        text = await resp.text()
        return resp.status, json.loads(text) if resp.content_type == "application/json" else text


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    tmp = tmp_path_factory.mktemp("ops")
    replica = BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT"], seed=7, rate=4.0, speed=60.0, history_ms=3_600_000, tape=str(tmp / "tape.csv")
    )
    await replica.start()
    settings = Settings(
        symbols=["BTCUSDT", "ETHUSDT"],
        timeframes=["1m", "5m"],
        history="1h",
        db=str(tmp / "ops.duckdb"),
        rest_url=replica.url,
        ws_url=replica.ws_url,
    ).validate()
    engine = Engine(settings)
    runner = await start_api(engine, None, "127.0.0.1", 0, None)
    url = api_url(runner)
    before = {path: await get(url + path) for path in ("/readyz", "/livez")}
    try:
        await engine.start()
        # Streaming until live candles (closed by the stream, not fetched) have reached the store.
        async with asyncio.timeout(60):  # seconds at 60x; a loaded CI machine can take many
            while engine.metrics.candle_latency.count < 2:
                await asyncio.sleep(0.1)
                await engine.writer.flush()
        yield Running(replica, engine, url, before)
    finally:
        await stop_api(runner)
        await engine.stop()
        await replica.stop()


pytestmark_engine = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.slow
@pytestmark_engine
async def test_readyz_is_503_before_bootstrap_and_200_when_ready(running: Running) -> None:
    status, doc = running.before["/readyz"]
    assert status == 503 and doc["status"] == "not ready"
    assert doc["reasons"] == ["starting: bootstrapping history"]
    assert running.before["/livez"] == (200, {"status": "alive"})
    assert await get(running.url + "/readyz") == (200, {"status": "ready"})
    assert await get(running.url + "/livez") == (200, {"status": "alive"})
    probe = await asyncio.create_subprocess_exec(
        *CLI, "status", "--probe", "ready", "--api", running.url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await probe.communicate()
    assert probe.returncode == 0 and out.decode().strip() == f"{running.url}/readyz: ready", err


@pytest.mark.slow
@pytestmark_engine
async def test_metrics_have_the_process_the_build_and_live_only_latency(running: Running) -> None:
    engine = running.engine
    status, text = await get(running.url + "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # The process and the interpreter, on the server's own registry.
    for name in ("process_resident_memory_bytes", "process_cpu_seconds", "process_open_fds", "python_gc_collections"):
        assert name in families and families[name].samples, name
    assert next(iter(families["process_resident_memory_bytes"].samples)).value > 1e6
    [sample] = [s for f in families.values() for s in f.samples if s.name == "deltafeed_build_info"]
    assert sample.value == 1.0
    assert sample.labels["version"] == metadata.version("deltafeed")
    # Live candles only: far fewer observations than the history bootstrapped, none in +Inf.
    bootstrapped = sum(st.bootstrapped for st in engine.states.values())
    assert bootstrapped >= 2 * 60  # an hour of 1m candles per instrument, at least
    for name in (
        "deltafeed_candle_latency_seconds",
        "deltafeed_candle_close_seconds",
        "deltafeed_candle_store_seconds",
    ):
        buckets = {s.labels["le"]: s.value for s in families[name].samples if s.name == name + "_bucket"}
        count = next(s.value for s in families[name].samples if s.name == name + "_count")
        assert 0 < count < bootstrapped, (name, count, bootstrapped)
        assert buckets["+Inf"] == buckets["60.0"] == count, (name, buckets)  # none past a minute
    m = engine.metrics
    # Every live candle stored was closed first; the latency of each is its two stages together.
    assert m.candle_store.count == m.candle_latency.count <= m.candle_close.count
    # Each live candle is timed once, at its first close (not again when vouched final or corrected):
    # every one closed is stored or still on its way.
    assert m.candle_close.count == m.candle_store.count + len(engine.publisher._live)
    assert m.candle_store.sum <= m.candle_latency.sum <= m.candle_store.sum + m.candle_close.sum + 1e-9


#: PromQL words that are not metric names.
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions (followed by
    a parenthesis), not inside label matchers, grouping clauses, strings or ranges, nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = m.group(0)
        if expr[m.end() :].lstrip().startswith("(") or word in PROMQL_WORDS:
            continue  # a function, or a keyword
        names.add(word)
    return names


def dashboard_expressions() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    for var in doc["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", var["definition"]))
    return exprs


def test_metric_names_are_read_from_promql() -> None:
    """The checker itself: functions, labels, grouping and ranges are not taken for metrics."""
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(deltafeed_candle_latency_seconds_bucket{instance=~"$instance"}[5m])))'
    ) == {"deltafeed_candle_latency_seconds_bucket"}
    assert metric_names("time() - max(process_start_time_seconds) + on(instance) group_left(version) x_info") == {
        "process_start_time_seconds",
        "x_info",
    }


@pytest.mark.slow
@pytestmark_engine
async def test_the_grafana_dashboard_reads_metrics_that_exist(running: Running) -> None:
    _, text = await get(running.url + "/metrics")
    exposed: set[str] = set()
    for fam in text_string_to_metric_families(text):
        exposed |= {s.name for s in fam.samples}
        # A family with no sample yet (no failover configured, no 5xx so far) still exists.
        exposed |= {
            "counter": {fam.name + "_total"},
            "histogram": {fam.name + s for s in ("_bucket", "_sum", "_count")},
            "info": {fam.name + "_info"},
        }.get(fam.type, {fam.name})
    exprs = dashboard_expressions()
    assert len(exprs) >= 30
    used = set().union(*(metric_names(e) for e in exprs))
    missing = sorted(used - exposed)
    assert not missing, f"the dashboard reads metrics /metrics does not have: {missing}"
    # Each part of the service is on it: live latency, the store, venues, the API, the process.
    for must in (
        "deltafeed_candle_close_seconds_bucket",
        "deltafeed_store_pending_candles",
        "deltafeed_connected",
        "deltafeed_api_clients",
        "process_resident_memory_bytes",
        "deltafeed_build_info",
    ):
        assert must in used, must


def test_the_dashboard_is_what_its_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("grafana_dashboard", REPO / "scripts" / "grafana_dashboard.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), "run: python scripts/grafana_dashboard.py"
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    for p in doc["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]


@pytest.mark.slow
@pytestmark_engine
async def test_readyz_is_503_when_the_venue_is_gone(running: Running) -> None:
    """Last: stops the replica. The engine keeps running (it retries), but is not ready."""
    await running.replica.stop()
    async with asyncio.timeout(15):
        while (await get(running.url + "/readyz"))[0] != 503:
            await asyncio.sleep(0.1)
    status, doc = await get(running.url + "/readyz")
    assert status == 503 and "binance disconnected" in doc["reasons"], doc
    assert (await get(running.url + "/livez"))[0] == 200  # alive all the same: nothing to restart
    probe = await asyncio.create_subprocess_exec(
        *CLI, "status", "--probe", "ready", "--api", running.url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await probe.communicate()
    assert probe.returncode == 1 and out == b""
    assert err.decode().strip() == f"deltafeed status: {running.url}/readyz answered 503: binance disconnected"
