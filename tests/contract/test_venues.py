"""The venue contract: every venue the registry knows keeps these promises, so a new venue gets
these tests by existing.

- its declaration is consistent (name, settings with its public addresses, calendars, sides, finality);
- its replica starts from its own command-line defaults on a real loopback socket and answers;
- ``deltafeed replica NAME`` refuses a bad option in one line with exit code 2, never a traceback;
- a third-party package adds a venue through the ``deltafeed.venues`` entry-point group;
- its decoders come with samples (``Venue.fuzz_targets``): a live venue or tick source has some, every
  seed decodes cleanly but those marked bad (which are refused), and mutated seeds never make a
  decoder raise anything it does not declare.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import aiohttp
import msgspec
import pytest

from deltafeed.candles.calendar import CALENDARS
from deltafeed.model import timeframe
from deltafeed.venues import registry
from deltafeed.venues.base import FuzzTarget, Venue, VenueSettings

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))  # last: tests/chaos.py must win over bench/chaos.py

import fuzz  # bench/fuzz.py, for its mutator

SRC = str(Path(__file__).resolve().parents[2] / "src")
VENUES = registry.venues()
LIVE = [v for v in VENUES if type(v).make_feed is not Venue.make_feed]
WITH_REPLICA = [v for v in VENUES if v.replica_help is not None]
WITH_DECODERS = [v for v in VENUES if v in LIVE or v.tick_source() is not None]
#: Mutated inputs per fuzz target: a taste of bench/fuzz.py (tests/unit/test_fuzz.py runs more).
MUTATIONS = 300


def ids(venues: list[Venue]) -> list[str]:
    return [v.name for v in venues]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_the_registry_knows_the_venues_of_this_package() -> None:
    """Found by existing: every ``venues/<name>/`` package with a ``VENUE`` is registered."""
    root = Path(SRC) / "deltafeed" / "venues"
    packages = {p.parent.name for p in root.glob("*/__init__.py") if "VENUE =" in p.read_text()}
    assert packages and packages <= set(registry.names())
    with pytest.raises(Exception, match="unknown venue 'nowhere'; this version supports: "):
        registry.get("nowhere")


@pytest.mark.parametrize("venue", VENUES, ids=ids(VENUES))
def test_declaration_is_consistent(venue: Venue) -> None:
    assert venue.name.isidentifier() and venue.name == venue.name.lower()
    assert registry.get(venue.name) is venue and venue.description
    assert issubclass(venue.settings_type, VenueSettings)
    defaults = venue.settings_type()
    for name, schemes in venue.urls.items():
        url = getattr(defaults, name)
        assert isinstance(url, str) and url.startswith(schemes), (name, url)  # its public address by default
    # Settings round-trip through TOML-like data (what a [venues.NAME] table gives).
    assert msgspec.convert(msgspec.to_builtins(defaults), venue.settings_type) == defaults
    assert venue.calendar_name("EUR_USD") in CALENDARS
    sides = venue.sides(["mid", "bid", "ask"])
    assert sides == (["mid", "bid", "ask"] if venue.quotes else ["trade", *venue.quote_sides])
    assert venue.sides(["mid"]) == (["mid"] if venue.quotes else ["trade"])  # the default adds no quote side
    # The timeframes its history serves are canonical timeframe names (the engine rolls any other
    # up from the longest of them that divides it).
    assert venue.timeframes is None or all(timeframe(tf).name == tf for tf in venue.timeframes)
    if venue in LIVE:  # how its candles become final is declared one way or the other
        assert venue.sequenced == (venue.reconcile_every_s == 0), (venue.sequenced, venue.reconcile_every_s)


@pytest.mark.parametrize("venue", WITH_REPLICA, ids=ids(WITH_REPLICA))
async def test_replica_starts_from_its_cli_defaults_and_answers(venue: Venue, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    venue.add_replica_args(parser)
    argv = ["--history", "10m"]
    if any(a.dest == "tape" for a in parser._actions):
        argv += ["--tape", str(tmp_path / "tape.csv")]
    replica = venue.make_replica(parser.parse_args(argv))
    await replica.start()
    try:
        assert replica.url.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http, http.get(replica.url + "/no-such-path") as r:
            assert r.status < 500  # a real server on a real socket answered
    finally:
        await replica.stop()


@pytest.mark.parametrize("venue", WITH_REPLICA, ids=ids(WITH_REPLICA))
@pytest.mark.parametrize(
    ("argv", "says"),
    [(["--rate", "0"], "--rate must be greater than 0"), (["--symbols", ","], "--symbols is empty")],
    ids=["rate", "symbols"],
)
def test_replica_cli_refuses_bad_options_in_one_line(venue: Venue, argv: list[str], says: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deltafeed", "replica", venue.name, *argv],
        capture_output=True,
        text=True,
        env=env(),
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_replica_help_lists_every_venue_with_a_replica() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deltafeed", "replica", "--help"], capture_output=True, text=True, env=env(), timeout=60
    )
    assert proc.returncode == 0
    for venue in WITH_REPLICA:
        assert venue.name in proc.stdout


def test_a_pip_installed_venue_is_found_through_its_entry_point(tmp_path: Path) -> None:
    """What ``pip install`` of a third-party venue leaves on sys.path: its package and a dist-info
    whose entry point names its ``VENUE``."""
    pkg = tmp_path / "toyep"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from deltafeed.venues.base import HTTP_SCHEMES, Venue, VenueSettings

            class ToySettings(VenueSettings, forbid_unknown_fields=True, kw_only=True):
                rest_url: str | None = "https://toyep.example"

            class ToyEp(Venue):
                name = "toyep"
                description = "a venue from a third-party package"
                settings_type = ToySettings
                urls = {"rest_url": HTTP_SCHEMES}

            VENUE = ToyEp()
            """
        )
    )
    info = tmp_path / "toyep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[deltafeed.venues]\ntoyep = toyep:VENUE\n")
    code = (
        "from deltafeed.venues import registry; from deltafeed.config import Settings; "
        "print(registry.names()); "
        "s = Settings(venue='toyep', symbols=['X'], db=':memory:').validate(); "
        "print(s.venue_settings('toyep').rest_url)"
    )
    e = env()
    e["PYTHONPATH"] = str(tmp_path) + os.pathsep + e["PYTHONPATH"]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=60)
    assert proc.returncode == 0, proc.stderr
    names, url = proc.stdout.strip().splitlines()
    assert "toyep" in names and "binance" in names
    assert url == "https://toyep.example"


@pytest.mark.parametrize("venue", VENUES, ids=ids(VENUES))
def test_a_venue_with_decoders_has_fuzz_targets(venue: Venue) -> None:
    targets = venue.fuzz_targets()
    if venue in WITH_DECODERS:
        assert targets, f"{venue.name} decodes a stream or files but declares no fuzz_targets()"
    names = [t.name for t in targets]
    assert len(set(names)) == len(names) and all(n.isidentifier() for n in names), names
    for t in targets:
        assert t.seeds and all(isinstance(s, bytes) for s in t.seeds), t.name
        assert set(t.bad_seeds) <= set(t.seeds), f"{t.name}: a bad seed that is no seed"


def test_fuzz_target_names_are_unique_across_venues() -> None:
    names = [t.name for v in VENUES for t in v.fuzz_targets()]
    assert len(set(names)) == len(names), names


def _outcome(target: FuzzTarget, data: bytes) -> tuple[str | None, Counter[str]]:
    """Feed ``data``: the declared error it raised (or None), and the skips it added, by kind."""
    before = Counter(target.skips())
    try:
        target.run(data)
        raised = None
    except target.declared as exc:
        raised = type(exc).__name__
    return raised, target.skips() - before


@pytest.mark.parametrize("venue", WITH_DECODERS, ids=ids(WITH_DECODERS))
def test_every_seed_decodes_and_every_bad_seed_is_refused(venue: Venue) -> None:
    for target in venue.fuzz_targets():
        for i, seed in enumerate(target.seeds):
            raised, skipped = _outcome(target, seed)
            where = f"{target.name} seed {i} {seed[:80]!r}: raised {raised}, skipped {dict(skipped)}"
            if seed in target.bad_seeds:
                assert raised or skipped, where
                continue
            if target.several_decoders:  # the decoders it is not meant for refuse it, nothing more
                assert all(k.startswith("refused_") for k in skipped), where
            else:
                assert raised is None and not skipped, where
        assert target.skips().get("decoder_bug", 0) == 0, target.name


@pytest.mark.parametrize("venue", WITH_DECODERS, ids=ids(WITH_DECODERS))
def test_mutated_seeds_raise_nothing_undeclared(venue: Venue) -> None:
    """A few hundred inputs per target from bench/fuzz.py's mutator, seeded: an escape fails here
    reproducibly (bench/fuzz.py runs millions)."""
    for target in venue.fuzz_targets():
        mutator = fuzz.Mutator(target.seeds, random.Random(f"contract:{target.name}"))
        for _ in range(MUTATIONS):
            data = mutator.next()
            if target.prepare is not None and mutator.rng.random() < 0.5:
                data = target.prepare(data)
            try:
                target.run(data)
            except target.declared:
                pass
            except Exception as exc:
                raise AssertionError(f"{target.name}: {type(exc).__name__} escaped for input {data[:300]!r}") from exc
        assert target.skips().get("decoder_bug", 0) == 0, (target.name, target.skips())
