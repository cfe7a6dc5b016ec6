"""Fault injection for replicas: a seeded schedule of faults, and the frame-level faults themselves.

A fault spec is a comma list of ``kind=rate``, rates in events per minute of wall time, e.g.
``close=2,drop=30,http429=1``. For each kind the event times form a Poisson process (exponential
gaps) drawn from a generator seeded by ``(seed, kind)`` and counted from the schedule's start, so a
seed always gives the same times whatever else is configured. Which connection or frame an event hits
is drawn from one more generator, seeded by ``(seed, "pick")``.

An event that falls due while nothing can take it (no connection with data, no REST request) stays
pending, and events that fall due meanwhile join it: a replica never saves faults up to fire them in
a burst later. The schedule is venue-independent; each replica decides where a kind applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

from deltafeed.model import BadInput

#: Faults on one WebSocket connection as a whole.
CONNECTION_KINDS = ("close", "reset", "stall", "shutdown")
#: Faults on the data frames of one connection, with the frames a tick's output needs for each.
#: ``poison`` needs the replica's own poison maker (see :func:`apply_message_fault`).
MESSAGE_KINDS: dict[str, int] = {"drop": 1, "dup": 1, "reorder": 2, "garbage": 1, "poison": 1}
#: Faults on REST answers.
REST_KINDS = ("http500", "http429", "slow")
KINDS: tuple[str, ...] = (*CONNECTION_KINDS, *MESSAGE_KINDS, *REST_KINDS)
#: Faults only some replicas can inject, with what each does. Every parser accepts them; a replica
#: refuses, with its own message, a kind it cannot inject.
VENUE_KINDS: dict[str, str] = {
    "overflow": "updates of one item withheld from a client too slow for them (Lightstreamer's OV, IG)",
    "seqgap": "a sequence number skipped on a sequenced channel, nothing else lost",
    "noheartbeat": "heartbeats stop while the connection stays up",
    "silence": "the connection stays open and answers pings but sends no data",
    "connectivity": "the venue's own link drops and comes back on a live connection (IB's 1100, then 1101/1102)",
    # Order books (deltafeed.replicas.books).
    "bookdrop": "one order-book delta message lost",
    "bookdup": "one order-book delta message sent twice",
    "bookreorder": "one order-book delta message sent after the next one",
    "stalebook": "an order-book snapshot from an older state of the book (with its own, older, sequence)",
    "badchecksum": "an order-book message whose checksum is wrong (venues with book checksums)",
    "bookrestart": "the venue's book service restarts: a book stream starts over with a snapshot (Bybit: u = 1)",
}
#: Every kind a fault spec may name.
ALL_KINDS: tuple[str, ...] = (*KINDS, *VENUE_KINDS)

#: SO_LINGER on with a 0 s timeout: closing the socket sends a TCP RST instead of a FIN.
LINGER_RESET = struct.pack("ii", 1, 0)

_V = TypeVar("_V")

#: A text frame that is not JSON, as a proxy in front of a venue might send.
NOT_JSON = b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"


def _usage(kinds: tuple[str, ...] = KINDS) -> str:
    return f"use kind=rate (events per minute), comma separated, with kinds {', '.join(kinds)}"


def _check(kind: str, rate: float, part: str, kinds: tuple[str, ...]) -> None:
    if kind not in kinds:
        raise BadInput(f"unknown fault kind {kind!r} in --faults ({part!r}); {_usage(kinds)}")
    if not (math.isfinite(rate) and rate >= 0):
        raise BadInput(f"fault rate in {part!r} must be a number >= 0 (events per minute); {_usage(kinds)}")


def parse_faults(spec: str) -> dict[str, float]:
    """``"close=2,drop=30"`` → ``{"close": 2.0, "drop": 30.0}``; :class:`BadInput` naming the bad part.

    An empty spec means no faults; a rate of 0 disables its kind. Kinds are checked against
    :data:`ALL_KINDS`; which of them a replica injects is the replica's check.
    """
    kinds = ALL_KINDS
    rates: dict[str, float] = {}
    for raw in spec.split(","):
        part = raw.strip()
        if not part:
            continue
        kind, sep, value = (s.strip() for s in part.partition("="))
        _check(kind, 0.0, part, kinds)
        if not sep:
            raise BadInput(f"fault {part!r} in --faults has no rate; {_usage(kinds)}")
        try:
            rate = float(value)
        except ValueError:
            raise BadInput(f"fault rate {value!r} in {part!r} is not a number; {_usage(kinds)}") from None
        _check(kind, rate, part, kinds)
        if kind in rates:
            raise BadInput(f"fault kind {kind!r} appears twice in --faults; give each kind once")
        rates[kind] = rate
    return rates


def _rng(seed: int, name: str) -> random.Random:
    # A str seed is hashed with SHA-512: stable across runs, processes and platforms.
    return random.Random(f"deltafeed-faults:{seed}:{name}")


class FaultSchedule:
    """When each kind of fault is due, which victim it hits, and how many were injected.

    ``rates`` maps kinds to events per minute of wall time (kinds with rate 0 are left out);
    ``clock`` gives wall seconds (monotonic). The schedule counts from its creation, or from the
    latest :meth:`start`.
    """

    def __init__(self, rates: Mapping[str, float], seed: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        every = ALL_KINDS
        for kind, rate in rates.items():
            _check(kind, float(rate), f"{kind}={rate}", every)
        self.rates: dict[str, float] = {k: float(rates[k]) for k in every if rates.get(k, 0) > 0}
        self.seed = seed
        self._clock = clock
        #: Faults injected, per kind (the replica records them as it injects).
        self.injected: Counter[str] = Counter()
        #: Scheduled events that joined an already pending one of their kind, per kind.
        self.coalesced: Counter[str] = Counter()
        self.t0 = 0.0
        self._gens: dict[str, random.Random] = {}
        self._next: dict[str, float] = {}
        self._pick = _rng(seed, "pick")
        self.start()

    def start(self) -> None:
        """(Re)start the schedule now: event times count from this instant, generators from their seed."""
        self.t0 = self._clock()
        self._pick = _rng(self.seed, "pick")
        self._gens = {k: _rng(self.seed, k) for k in self.rates}
        self._next = {k: self.t0 + self._gap(k) for k in self.rates}

    def _gap(self, kind: str) -> float:
        return self._gens[kind].expovariate(self.rates[kind] / 60.0)

    def __contains__(self, kind: object) -> bool:
        return kind in self.rates

    def pending(self, kind: str) -> bool:
        """Whether an event of ``kind`` is due now (without taking it)."""
        t = self._next.get(kind)
        return t is not None and self._clock() >= t

    def due(self, kind: str) -> bool:
        """True if an event of ``kind`` is due, and take it: the schedule moves to the next event
        still in the future (events already past join the one taken, counted in ``coalesced``)."""
        t = self._next.get(kind)
        if t is None:
            return False
        now = self._clock()
        if now < t:
            return False
        t += self._gap(kind)
        while t <= now:
            self.coalesced[kind] += 1
            t += self._gap(kind)
        self._next[kind] = t
        return True

    def pick(self, n: int) -> int:
        """A victim (or frame, or variant) among ``n``, from the schedule's own generator."""
        return self._pick.randrange(n)

    def record(self, kind: str) -> None:
        self.injected[kind] += 1

    def times(self, kind: str, horizon_s: float) -> list[float]:
        """The event times of ``kind`` within ``horizon_s`` of the start, in seconds after it.

        Drawn from a fresh generator with the same seed, so it is what :meth:`due` follows.
        """
        rate = self.rates.get(kind)
        if rate is None:
            return []
        gen, t = _rng(self.seed, kind), 0.0
        out: list[float] = []
        while True:
            t += gen.expovariate(rate / 60.0)
            if t > horizon_s:
                return out
            out.append(t)

    def counts(self) -> dict[str, int]:
        """Faults injected so far, for every configured kind (zeros included)."""
        return {k: self.injected[k] for k in self.rates}

    def summary(self) -> str:
        """``faults: close=2 drop=17`` (every configured kind), or ``faults: none``."""
        return "faults: " + (" ".join(f"{k}={n}" for k, n in self.counts().items()) or "none")


#: ``poison(payload, pick)``: the frames that poison ``payload`` (to be sent just before it), or None
#: when the payload carries nothing to poison (a kline, a heartbeat).
Poison = Callable[[bytes, Callable[[int], int]], list[bytes] | None]


def apply_message_fault(
    kind: str, payloads: list[bytes], pick: Callable[[int], int], poison: Poison | None = None
) -> list[bytes]:
    """``payloads`` (one tick's data frames of one connection, in order) with fault ``kind`` applied.

    drop: one frame lost. dup: one frame sent twice. reorder: two neighbouring frames swapped.
    garbage: a malformed frame inserted before a frame (a truncated copy of it, or a text that is
    not JSON); everything else arrives. poison: frames that a careless client would take for data
    inserted before the first frame (from a random one on) that ``poison`` can poison: a trade with a
    NaN price and the id of the real trade after it, a price of 1e400, a truncated message of an
    unknown type; everything else arrives, and the payloads are unchanged if none can be poisoned.
    Needs at least ``MESSAGE_KINDS[kind]`` payloads.
    """
    need = MESSAGE_KINDS[kind]
    if len(payloads) < need:
        raise ValueError(f"{kind} needs {need} frames, got {len(payloads)}")
    out = list(payloads)
    if kind == "drop":
        del out[pick(len(out))]
    elif kind == "dup":
        i = pick(len(out))
        out.insert(i, out[i])
    elif kind == "reorder":
        i = pick(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    elif kind == "poison":
        if poison is None:
            raise ValueError("the poison fault needs the replica's poison maker")
        start = pick(len(out))
        for k in range(len(out)):
            i = (start + k) % len(out)
            frames = poison(out[i], pick)
            if frames:
                out[i:i] = frames
                break
    else:
        i = pick(len(out))
        p = out[i]
        # Payloads are ASCII JSON, so any cut is valid UTF-8 (a text frame must be), and a strict
        # prefix of a JSON object never parses.
        bad = p[: max(1, len(p) // 2)] if pick(2) == 0 else NOT_JSON
        out.insert(i, bad)
    return out


# --- connection faults ----------------------------------------------------------------------------


def reset_transport(transport: asyncio.Transport | None) -> None:
    """Drop a connection so the peer gets a TCP RST (the ``reset`` fault): linger 0, then abort.

    Nothing happens to a transport that is None or already closing.
    """
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # a socket the peer already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    transport.abort()


def inject_connection_faults(
    schedule: FaultSchedule,
    victims: Callable[[], Sequence[_V]],
    actions: Mapping[str, Callable[[_V], None]],
    injected: Callable[[str, _V], None],
) -> None:
    """Inject every connection fault of ``actions`` (kind -> what it does to a victim, e.g. ``close``,
    ``reset``, ``stall``) that is due now, in the mapping's order: one victim each, picked among
    ``victims()`` (asked again for each kind, since a victim of the previous one is no candidate any
    more); ``injected(kind, victim)`` is called after the action, to count and log it.

    A kind that is due while there is no candidate stays due (see the module docstring). The
    schedule's draws come in a fixed order (take the event, pick the victim, then the action's own
    picks), so a seed gives the same faults on the same connections.
    """
    for kind, act in actions.items():
        if not schedule.pending(kind):
            continue
        cands = victims()
        if not cands:
            continue
        schedule.due(kind)
        victim = cands[schedule.pick(len(cands))]
        act(victim)
        injected(kind, victim)
