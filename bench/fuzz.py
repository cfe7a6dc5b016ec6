"""Fuzz every venue decoder: valid frames mutated, and random bytes; no exception may escape.

The targets are the venues' own (``Venue.fuzz_targets()``, with their seeds in
``venues/<name>/samples.py``), found through the registry; tests/contract runs a taste of each.

Each decoder (target) is run over ``--count`` inputs. Most are mutations of real, valid frames and
bodies (the venues' documented examples and what the replicas send): bit flips, byte changes,
truncations, deleted or repeated spans, splices of two seeds, numbers swapped for NaN, 1e400, -0 or
ints past int64, strings swapped for odd ones, deep nesting; one in five is random bytes. For every
target it prints the inputs tried, the exceptions that escaped (must be 0), the decoder bugs its
safety net caught (must be 0 as well), the inputs refused with the decoder's declared error (REST
bodies and bi5 files raise one: ``BadAnswer``, ``BadCandles``, ``BadPrices``, ``Bi5Error``;
``BadUpdate`` from ``ItemState``), the peak memory and the time.

Two engines make the inputs:

- ``atheris`` (the default where it is installed): Google's coverage-guided fuzzer, libFuzzer in
  Python. Each target runs in its own process with deltafeed instrumented, starting from the same
  seeds; its custom mutator alternates libFuzzer's own mutations with the structure-aware ones below,
  so a mutation that reaches new code is kept and mutated further. Peak memory is the process's peak
  RSS above what it held after start-up.
- ``seeded``: the structure-aware mutator alone, from a seeded generator: reproducible to the input
  (``--seed``), no native code, and fast to start. The test suite runs it (tests/unit/test_fuzz.py). Each
  target also runs in its own process; peak memory as for atheris.

``--in-process`` runs the targets in this process instead and measures peak memory with tracemalloc
(Python allocations only); that is what the test suite does.

    python bench/fuzz.py --count 1000000                 # every target, 1,000,000 inputs each
    python bench/fuzz.py --count 20000 --engine seeded --targets tlcp_stream,dukascopy_bi5
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
import traceback
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deltafeed.venues import registry
from deltafeed.venues.base import FuzzTarget, Venue

# --- targets ----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Target(FuzzTarget):
    """A target made here rather than by a venue (a test's own): its name is its key in TARGETS."""

    name: str = ""


def _venue_targets(venues: list[Venue]) -> dict[str, Callable[[], FuzzTarget]]:
    """The venues' fuzz targets (``Venue.fuzz_targets``, seeds in ``venues/<name>/samples.py``), by
    name; each call of a value builds the target afresh, with its own decoders."""

    def build(venue: Venue, name: str) -> FuzzTarget:
        return next(t for t in venue.fuzz_targets() if t.name == name)

    out: dict[str, Callable[[], FuzzTarget]] = {}
    for venue in venues:
        for target in venue.fuzz_targets():
            if target.name in out:
                raise ValueError(f"two fuzz targets named {target.name!r} (one is {venue.name}'s)")
            out[target.name] = functools.partial(build, venue, target.name)
    return out


TARGETS: dict[str, Callable[[], FuzzTarget]] = _venue_targets(registry.venues())


# --- the structure-aware mutator ----------------------------------------------------------------------

_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_STRING = re.compile(rb'"[^"\\]{0,64}"')
#: What a number may become: the values that poisoned series (NaN, 1e400), their kin, and ints past int64.
NUMBERS = [
    b"NaN",
    b'"NaN"',
    b"nan",
    b"Infinity",
    b"-Infinity",
    b'"inf"',
    b"1e400",
    b"-1e400",
    b'"1e400"',
    b"-0",
    b'"-0"',
    b"0",
    b"0.0",
    b"-1",
    b"1e-400",
    b"1.7976931348623157e308",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"99999999999999999999999",
    b"4294967296",
    b"60000000",
    b"1" * 400,
    b"",
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'"1"',
    b"0x10",
    b"1_000",
    b"\xd9\xa1",
]
STRINGS = [
    b'""',
    b'"NaN"',
    b'"trade"',
    b'"kline"',
    b'"news"',
    b'"PRICE"',
    b'"HEARTBEAT"',
    b'"ping"',
    b'"error"',
    b'"' + b"A" * 5000 + b'"',
    b'"\\u0000"',
    b'"\xff\xfe"',
    b'"\\ud800"',
    b"null",
    b"1",
    b"[]",
    b"{}",
]
INTERESTING = b'"{}[],:|\r\n\x00\xff\\%#$^-.0123456789eE'


class Mutator:
    """Seeded mutations of seed inputs (see the module docstring); one in five inputs is random bytes."""

    def __init__(self, seeds: list[bytes], rng: random.Random) -> None:
        self.seeds = [s for s in seeds if s] or [b"{}"]
        self.rng = rng

    def next(self) -> bytes:
        r = self.rng
        if r.random() < 0.2:
            return r.randbytes(r.choice((0, 1, 2, 8, 64, 512, 4096)))
        data = r.choice(self.seeds)
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4))):  # mostly one mutation: most of a frame stays valid
            data = self.mutate(data)
        return data

    def mutate(self, data: bytes) -> bytes:
        r = self.rng
        n = len(data)
        op = r.randrange(11)
        if n == 0:
            return r.randbytes(r.randint(1, 16))
        if op == 0:  # bit flips
            b = bytearray(data)
            for _ in range(r.randint(1, 8)):
                b[r.randrange(n)] ^= 1 << r.randrange(8)
            return bytes(b)
        if op == 1:  # a byte set to an interesting one
            i = r.randrange(n)
            return data[:i] + bytes([r.choice(INTERESTING)]) + data[i + 1 :]
        if op == 2:  # truncation
            return data[: r.randrange(n)]
        if op == 3:  # a span deleted
            i = r.randrange(n)
            return data[:i] + data[i + r.randint(1, 32) :]
        if op == 4:  # a span repeated
            i = r.randrange(n)
            j = min(n, i + r.randint(1, 64))
            return data[:j] + data[i:j] * r.choice((1, 2, 3, 10, 50)) + data[j:]
        if op == 5:  # splice two seeds
            other = r.choice(self.seeds)
            return data[: r.randrange(n + 1)] + other[r.randrange(len(other) + 1) :]
        if op in (6, 7):  # a number substituted
            nums = list(_NUMBER.finditer(data))
            if nums:
                m = r.choice(nums)
                return data[: m.start()] + r.choice(NUMBERS) + data[m.end() :]
        if op == 8:  # a string substituted
            strs = list(_STRING.finditer(data))
            if strs:
                m = r.choice(strs)
                return data[: m.start()] + r.choice(STRINGS) + data[m.end() :]
        if op == 9:  # deep nesting
            depth = r.choice((10, 100, 1000, 5000))
            return b"[" * depth + data + b"]" * r.choice((0, depth))
        i = r.randrange(n + 1)  # random bytes inserted
        return data[:i] + r.randbytes(r.randint(1, 16)) + data[i:]


# --- running --------------------------------------------------------------------------------------


@dataclass
class Result:
    target: str
    engine: str
    inputs: int = 0
    escaped: int = 0  # exceptions that escaped the decoder: must be 0
    decoder_bugs: int = 0  # exceptions the decoders' safety nets caught: must be 0 as well
    refused: int = 0  # inputs refused with the decoder's declared error
    skipped: dict[str, int] = field(default_factory=dict)
    peak_mib: float = 0.0  # tracemalloc: peak of Python allocations; rss: the process's peak RSS
    start_mib: float = 0.0  # rss: the peak RSS before the first input (interpreter, imports, seeds)
    seconds: float = 0.0
    memory: str = "tracemalloc"
    first_escape: str = ""

    def ok(self) -> bool:
        return self.escaped == 0 and self.decoder_bugs == 0


class _Runner:
    """Feeds inputs to one target and counts what happens."""

    def __init__(self, name: str, target: FuzzTarget, engine: str) -> None:
        self.target = target
        self.result = Result(name, engine)

    def feed(self, data: bytes) -> None:
        res = self.result
        res.inputs += 1
        try:
            self.target.run(data)
        except self.target.declared:
            res.refused += 1
        except Exception:
            res.escaped += 1
            if not res.first_escape:
                res.first_escape = f"input {data[:300]!r}\n{traceback.format_exc()}"

    def finish(self, started: float) -> Result:
        res = self.result
        res.seconds = round(time.perf_counter() - started, 2)
        skips = self.target.skips()
        res.decoder_bugs = skips.get("decoder_bug", 0)
        res.skipped = dict(sorted(skips.items()))
        return res


def run_seeded(name: str, count: int, seed: int, measure: str = "tracemalloc") -> Result:
    """``count`` inputs from the seeded mutator into target ``name``, in this process."""
    target = TARGETS[name]()
    runner = _Runner(name, target, "seeded")
    mut = Mutator(target.seeds, random.Random(f"deltafeed-fuzz:{seed}:{name}"))
    prepare = target.prepare
    base = _rss_mib()
    if measure == "tracemalloc":
        tracemalloc.start()
    started = time.perf_counter()
    try:
        for data in target.once + target.seeds:
            runner.feed(data)
        for _ in range(max(0, count - len(target.once) - len(target.seeds))):
            data = mut.next()
            if prepare is not None and mut.rng.random() < 0.5:
                data = prepare(data)
            runner.feed(data)
    finally:
        if measure == "tracemalloc":
            runner.result.peak_mib = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
    res = runner.finish(started)
    if measure == "rss":
        res.memory = "rss"
        res.peak_mib, res.start_mib = round(_rss_mib(), 1), round(base, 1)
    return res


def run_atheris(name: str, count: int, seed: int) -> None:
    """``count`` inputs from atheris (libFuzzer) into target ``name``; prints the Result as JSON and exits.

    libFuzzer never returns from ``Fuzz``, so the target itself stops the process once it has seen
    ``count`` inputs. The custom mutator alternates libFuzzer's mutations with :class:`Mutator`'s.
    """
    import atheris  # type: ignore[import-untyped]

    # TARGETS imported deltafeed uninstrumented: this process imports it afresh, instrumented.
    for module in [m for m in sys.modules if m == "deltafeed" or m.startswith("deltafeed.")]:
        del sys.modules[module]
    with atheris.instrument_imports(include=["deltafeed"]):
        from deltafeed.venues import registry as instrumented

        target = _venue_targets(instrumented.venues())[name]()
    runner = _Runner(name, target, "atheris")
    mut = Mutator(target.seeds, random.Random(f"deltafeed-fuzz:{seed}:{name}"))
    prepare = target.prepare
    base = _rss_mib()
    started = time.perf_counter()

    def one(data: bytes) -> None:
        runner.feed(data)
        if runner.result.inputs >= count:
            res = runner.finish(started)
            res.memory = "rss"
            res.peak_mib, res.start_mib = round(_rss_mib(), 1), round(base, 1)
            sys.stdout.write(json.dumps(asdict(res)) + "\n")
            sys.stdout.flush()
            shutil.rmtree(corpus, ignore_errors=True)
            os._exit(0)

    def custom(data: bytes, max_size: int, libfuzzer_seed: int) -> bytes:
        mut.rng.seed(libfuzzer_seed)
        out = atheris.Mutate(data, max_size) if mut.rng.random() < 0.5 else mut.mutate(data)[:max_size]
        if prepare is not None and mut.rng.random() < 0.25:
            out = prepare(out)
        return out

    corpus = Path(os.environ.get("TMPDIR", "/tmp")) / f"deltafeed-fuzz-{name}-{os.getpid()}"
    corpus.mkdir(parents=True, exist_ok=True)
    for data in target.once:
        runner.feed(data)
    for i, s in enumerate(target.seeds):
        (corpus / f"seed{i}").write_bytes(s)
    # Inputs a little longer than the longest seed: longer ones only repeat what shorter ones reach,
    # and cost time (libFuzzer grows inputs up to max_len).
    max_len = max(1024, 2 * max(len(s) for s in target.seeds))
    args = [
        sys.argv[0],
        f"-seed={seed + 1}",
        f"-max_len={max_len}",
        "-rss_limit_mb=4096",
        "-print_final_stats=0",
        "-close_fd_mask=0",
        str(corpus),
    ]
    atheris.Setup(args, one, custom_mutator=custom)
    atheris.Fuzz()


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(name: str, count: int, seed: int, engine: str) -> Result:
    """Run one target in a fresh process (its peak RSS is its own) and read back its Result."""
    cmd = [sys.executable, __file__, "--one", name, "--count", str(count), "--seed", str(seed), "--engine", engine]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return Result(**json.loads(line))
    res = Result(name, engine, escaped=1)
    res.first_escape = (
        f"the {engine} process for {name} exited {proc.returncode} without a result:\n{proc.stderr[-3000:]}"
    )
    return res


def _have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def print_table(results: list[Result]) -> None:
    print(
        f"{'target':<16} {'engine':<8} {'inputs':>9} {'escaped':>7} {'bugs':>4} {'refused':>8} "
        f"{'peak MiB':>8} {'(start)':>8} {'mem':<11} {'seconds':>8}  skipped by the decoder"
    )
    for r in results:
        top = ", ".join(f"{k}={v}" for k, v in sorted(r.skipped.items(), key=lambda kv: -kv[1])[:4])
        start = f"{r.start_mib:.1f}" if r.memory == "rss" else "-"
        print(
            f"{r.target:<16} {r.engine:<8} {r.inputs:>9} {r.escaped:>7} {r.decoder_bugs:>4} {r.refused:>8} "
            f"{r.peak_mib:>8.1f} {start:>8} {r.memory:<11} {r.seconds:>8.1f}  {top}"
        )
    for r in results:
        if r.first_escape:
            print(f"\n--- {r.target}: first escaped exception ---\n{r.first_escape}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--engine",
        choices=("auto", "atheris", "seeded"),
        default="auto",
        help="auto: atheris when installed, else seeded",
    )
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    ap.add_argument("--in-process", action="store_true", help="seeded, in this process, tracemalloc peaks")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    engine = args.engine if args.engine != "auto" else ("atheris" if _have_atheris() else "seeded")
    if args.one:
        if engine == "atheris":
            run_atheris(args.one, args.count, args.seed)
            return 1  # not reached: run_atheris exits
        print(json.dumps(asdict(run_seeded(args.one, args.count, args.seed, measure="rss"))))
        return 0
    names = [n.strip() for n in args.targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {', '.join(unknown)}; use {', '.join(TARGETS)}")
    results = []
    for name in names:
        if args.in_process:
            res = run_seeded(name, args.count, args.seed)
        else:
            res = _child(name, args.count, args.seed, engine)
        results.append(res)
        print(
            f"{name}: {res.inputs} inputs, {res.escaped} escaped, {res.decoder_bugs} decoder bugs, {res.seconds:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    print_table(results)
    total = sum(r.inputs for r in results)
    escaped = sum(r.escaped + r.decoder_bugs for r in results)
    print(f"\n{total} inputs over {len(results)} targets; {escaped} escaped or caught as decoder bugs")
    return 0 if escaped == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
