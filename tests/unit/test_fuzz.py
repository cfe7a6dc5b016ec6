"""The short version of bench/fuzz.py: every decoder over 2,000 mutated and random inputs, in this
process. No exception may escape a decoder, none may reach a decoder's safety net (``decoder_bug``),
and no input may make a decoder allocate much: the poison inputs among the seeds (``SUBOK,1,1,60000000``,
a 6 KiB bi5 body of 2 million ticks) cost hundreds of MiB before the bounds existed."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))  # last: tests/chaos.py must win over bench/chaos.py

import fuzz

COUNT = 2_000
#: Peak Python allocations of one target's whole run (tracemalloc). The bi5 target's LZMA decoder and its
#: 4 MB bound dominate; anything near the old 480 MiB (TLCP) or 640 MiB (bi5) fails.
PEAK_MIB = 48.0


@pytest.mark.parametrize("name", list(fuzz.TARGETS))
def test_no_input_escapes_a_decoder(name: str) -> None:
    res = fuzz.run_seeded(name, COUNT, seed=7)
    assert res.inputs >= COUNT
    assert res.escaped == 0, res.first_escape
    assert res.decoder_bugs == 0, res.skipped
    assert res.peak_mib < PEAK_MIB, res
    # The inputs reached the decoder's checks, not only its JSON (or LZMA) parser.
    assert res.refused + sum(res.skipped.values()) > COUNT // 2, res


def test_the_mutator_is_reproducible_and_makes_poison() -> None:
    seeds = [b'{"e":"trade","p":"1.5","q":"2","t":12}']
    a = fuzz.Mutator(seeds, random.Random(3))
    b = fuzz.Mutator(seeds, random.Random(3))
    first = [a.next() for _ in range(500)]
    assert first == [b.next() for _ in range(500)]
    assert any(b"NaN" in x or b"1e400" in x for x in first)  # number substitutions happen
    assert any(len(x) < len(seeds[0]) and seeds[0].startswith(x) for x in first)  # truncations too


def test_the_bench_cli_runs_and_fails_on_an_escape(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fuzz.main(["--count", "50", "--in-process", "--targets", "tlcp_stream"]) == 0
    assert "tlcp_stream" in capsys.readouterr().out

    def broken() -> fuzz.Target:
        def run(data: bytes) -> None:
            raise TypeError("a decoder that raises")

        return fuzz.Target(seeds=[b"x"], run=run)

    monkeypatch.setitem(fuzz.TARGETS, "broken", broken)
    assert fuzz.main(["--count", "20", "--in-process", "--targets", "broken"]) == 1
    out = capsys.readouterr().out
    assert "a decoder that raises" in out
