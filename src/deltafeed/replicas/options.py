"""The options every replica takes, spelled once: :class:`ReplicaOptions`, checked with one-line fixes.

Each replica constructor accepts ``options=ReplicaOptions(...)`` beside its venue-specific extras, and
still accepts the same options as keywords (they are folded into a :class:`ReplicaOptions` with
:meth:`ReplicaOptions.resolve`). A field left at None means "the venue's default", because venues
differ there (Binance simulates 10 trades a second and an hour of history, Dukascopy a week).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from deltafeed.model import BadInput, parse_duration_ms, time_ms
from deltafeed.replicas.faults import parse_faults


def _frozen(rates: Mapping[str, float]) -> Mapping[str, float]:
    return MappingProxyType({k: float(v) for k, v in rates.items()})


@dataclass(frozen=True, slots=True)
class ReplicaOptions:
    """Where a replica listens, what market it simulates, where it tapes and which faults it injects.

    ``rate`` is events (trades or quotes) per market second per symbol, ``speed`` market seconds per
    wall second, ``start_ms`` the market time at start-up (None: now), ``history_ms`` the market
    generated before it. ``faults`` are parsed rates (kind -> events per wall minute) on a schedule
    seeded by ``faults_seed``; which kinds apply is each replica's check. None: the venue's default.
    ``book_tape`` is where a replica with order books writes its book tape (None: beside ``tape``, see
    :func:`deltafeed.replicas.books.book_tape_path`, or nowhere without a tape).
    """

    host: str = "127.0.0.1"
    port: int = 0
    symbols: tuple[str, ...] | None = None
    seed: int = 1
    rate: float | None = None
    speed: float = 1.0
    start_ms: int | None = None
    history_ms: int | None = None
    tape: Path | None = None
    faults: Mapping[str, float] = field(default_factory=lambda: _frozen({}))
    faults_seed: int = 0
    book_tape: Path | None = None

    def __post_init__(self) -> None:
        # Normalise what callers naturally pass (a list of symbols, a str path, a plain dict) so the
        # object stays hashable-ish and immutable whatever was given.
        if self.symbols is not None and not isinstance(self.symbols, tuple):
            object.__setattr__(self, "symbols", tuple(self.symbols))
        if self.tape is not None and not isinstance(self.tape, Path):
            object.__setattr__(self, "tape", Path(self.tape))
        if self.book_tape is not None and not isinstance(self.book_tape, Path):
            object.__setattr__(self, "book_tape", Path(self.book_tape))
        if not isinstance(self.faults, MappingProxyType):
            object.__setattr__(self, "faults", _frozen(self.faults))

    def check(self, example: str = "BTCUSDT") -> ReplicaOptions:
        """Raise :class:`BadInput` with a one-line fix for a value no replica can run with; returns self.

        ``example`` is a symbol of the venue, named in the message for empty symbols.
        """
        if self.symbols is not None and not any(s.strip() for s in self.symbols):
            raise BadInput(f"--symbols is empty; give at least one, e.g. {example}")
        for name, value in (("--rate", self.rate), ("--speed", self.speed)):
            if value is not None and not value > 0:
                raise BadInput(f"{name} must be greater than 0")
        if not 0 <= self.port <= 65535:
            raise BadInput(f"--port {self.port} is not a TCP port; use 0 (any free port) to 65535")
        if self.history_ms is not None and self.history_ms < 0:
            raise BadInput(f"history must not be negative, got {self.history_ms} ms")
        return self

    def book_tape_path(self) -> Path | None:
        """Where the book tape goes: :attr:`book_tape`, else beside :attr:`tape`, else None."""
        from deltafeed.replicas.books import book_tape_path

        if self.book_tape is not None:
            return self.book_tape
        return None if self.tape is None else book_tape_path(self.tape)

    def resolve(self, defaults: ReplicaOptions) -> ReplicaOptions:
        """These options with every field left at None taken from ``defaults`` (the venue's)."""
        return replace(
            self,
            symbols=self.symbols if self.symbols is not None else defaults.symbols,
            rate=self.rate if self.rate is not None else defaults.rate,
            history_ms=self.history_ms if self.history_ms is not None else defaults.history_ms,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, example: str = "BTCUSDT") -> ReplicaOptions:
        """Checked options from a ``replica`` sub-command's parsed arguments (``--host``, ``--port``,
        ``--symbols``, ``--seed``, ``--rate``, ``--speed``, ``--start``, ``--history``, ``--tape``,
        ``--faults``, ``--faults-seed``; those a sub-command lacks are left to the venue's default).

        Fault kinds are only checked against the shared list here; the replica refuses kinds it cannot
        inject, with its own message.
        """
        symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()]
        if not symbols:
            raise BadInput(f"--symbols is empty; give at least one, e.g. {example}")
        start = getattr(args, "start", None)
        start_ms: int | None = None
        if start is not None:
            try:
                start_ms = time_ms(start)
            except ValueError:
                raise BadInput(f"--start {start!r} is not an ISO-8601 time; write e.g. 2026-11-21T08:00:00Z") from None
        history = getattr(args, "history", None)
        tape = getattr(args, "tape", None)
        spec = getattr(args, "faults", None)
        return cls(
            host=args.host,
            port=args.port,
            symbols=tuple(symbols),
            seed=args.seed,
            rate=args.rate,
            speed=args.speed,
            start_ms=start_ms,
            history_ms=parse_duration_ms(history) if history is not None else None,
            tape=Path(tape) if tape else None,
            faults=parse_faults(spec) if spec else {},
            faults_seed=getattr(args, "faults_seed", 0),
            book_tape=Path(book_tape) if (book_tape := getattr(args, "book_tape", None)) else None,
        ).check(example)


def options_from(
    options: ReplicaOptions | None,
    *,
    host: str,
    port: int,
    symbols: Iterable[str],
    seed: int,
    rate: float,
    speed: float,
    start_ms: int | None,
    history_ms: int,
    tape: str | Path | None,
    faults: Mapping[str, float],
    faults_seed: int,
) -> ReplicaOptions:
    """What a replica constructor runs on: ``options`` when given (its None fields from the keywords,
    which then hold the venue's defaults), else the keywords themselves: the old keyword spelling."""
    kw = ReplicaOptions(
        host=host,
        port=port,
        symbols=tuple(symbols),
        seed=seed,
        rate=rate,
        speed=speed,
        start_ms=start_ms,
        history_ms=history_ms,
        tape=Path(tape) if tape is not None else None,
        faults=faults,
        faults_seed=faults_seed,
    )
    return kw if options is None else options.resolve(kw)
