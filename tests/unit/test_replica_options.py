"""ReplicaOptions: built from a replica sub-command's arguments, checked with one-line fixes, and resolved
against a venue's defaults."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from deltafeed.model import BadInput
from deltafeed.replicas.options import ReplicaOptions


def args(**over: object) -> argparse.Namespace:
    base: dict[str, object] = dict(
        host="127.0.0.1", port=0, symbols="eurusd, usdjpy", seed=7, rate=2.0, speed=60.0,
        start="2026-03-04T15:00:00Z", history="2h", tape="t.csv", faults="http500=2,overflow=1", faults_seed=3,
    )  # fmt: skip
    base.update(over)
    return argparse.Namespace(**base)


def test_from_args() -> None:
    o = ReplicaOptions.from_args(args(), "EURUSD")
    assert o.symbols == ("EURUSD", "USDJPY") and o.seed == 7 and o.rate == 2.0 and o.speed == 60.0
    assert o.start_ms == 1_772_636_400_000 and o.history_ms == 7_200_000 and o.tape == Path("t.csv")
    assert dict(o.faults) == {"http500": 2.0, "overflow": 1.0} and o.faults_seed == 3
    bare = argparse.Namespace(**{k: v for k, v in vars(args(faults=None, tape=None)).items() if k != "start"})
    o = ReplicaOptions.from_args(bare)
    assert o.start_ms is None and o.tape is None and dict(o.faults) == {}


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"symbols": " , "}, "--symbols is empty; give at least one, e.g. EURUSD"),
        ({"rate": 0.0}, "--rate must be greater than 0"),
        ({"speed": -1.0}, "--speed must be greater than 0"),
        ({"port": 65536}, "--port 65536 is not a TCP port"),
        ({"start": "soon"}, "--start 'soon' is not an ISO-8601 time"),
        ({"faults": "close"}, "has no rate"),
    ],
)
def test_from_args_refuses_bad_values(over: dict[str, object], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        ReplicaOptions.from_args(args(**over), "EURUSD")


def test_resolve_fills_only_what_was_left_to_the_venue() -> None:
    venue = ReplicaOptions(symbols=("BTCUSDT",), rate=10.0, history_ms=3_600_000)
    o = ReplicaOptions(rate=3.0, tape="x.csv").resolve(venue)  # type: ignore[arg-type]
    assert o.symbols == ("BTCUSDT",) and o.rate == 3.0 and o.history_ms == 3_600_000 and o.tape == Path("x.csv")
