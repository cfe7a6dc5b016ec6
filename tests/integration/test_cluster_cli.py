"""``run --cluster`` and ``cluster status`` with bad input or no NATS: one line each, exit 2 for a
mistake, 69 for a server that does not answer, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "deltafeed"]
DEAD = "nats://127.0.0.1:1"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["run", "--symbols", "BTCUSDT", "--cluster", "http://x:4222"], 2, "is not a NATS address"),
        (["run", "--symbols", "BTCUSDT", "--cluster", DEAD, "--cluster-name", "a.b"], 2, "cluster name 'a.b'"),
        (["cluster", "status", "--cluster-name", "prod"], 2, "no cluster given"),
        (["cluster", "status", "--cluster", DEAD, "--cluster-name", "x y"], 2, "cluster name 'x y'"),
        (["cluster", "status", "--cluster", DEAD], 69, "cannot reach NATS at nats://127.0.0.1:1"),
        (["run", "--symbols", "BTCUSDT", "--cluster", DEAD], 69, "cannot reach NATS at nats://127.0.0.1:1"),
    ],
)
def test_cluster_commands_fail_in_one_line(args: list[str], code: int, says: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTAFEED_CLUSTER")}
    p = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert p.returncode == code, (p.returncode, p.stderr)
    assert says in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
