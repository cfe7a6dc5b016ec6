"""The replicas' simulated level-2 order book, its book tape (the truth) and its book faults.

**The book** (:class:`SimBook`). A deterministic ladder around the symbol's last trade, in integer
ticks and lots: ``levels`` levels a tick apart on each side, the best bid at the last price when the
buyer was the maker (a sell hit the bid), else one tick below it. :meth:`SimBook.step` moves it to a
new last trade: levels that leave the ladder go to size 0, levels that enter get a size, and the
``TOUCHED`` best levels of each side get a new size (trading consumed them). Every changed level is
one *update*, numbered from the book's start id on, so a step is a :class:`BookStep` with update ids
``first..last`` (``first`` = the previous ``last`` + 1): Binance's ``U``/``u`` directly; a venue with
another key (a message counter, a timestamp) maps steps to it. Steps are kept in
:attr:`SimBook.events` until the replica :meth:`SimBook.trim`\\ s them, and :meth:`SimBook.merged`
folds the steps after an id into one (later sizes win) for a stream that pushes every N ms.

**The book tape** (:class:`BookTape`): a CSV beside the trade tape (:func:`book_tape_path`:
``trades.csv`` -> ``trades.book.csv``) with header ``symbol,seq,time_ms,side,price,size`` and one row
per level change, the initial ladder included (side ``b``/``a``; size ``0`` = the level was removed;
prices and sizes as the venue sends them). ``seq`` is the *venue-visible* sequence key after which the
change is in the venue's book: the true book at key S is every row of the symbol with ``seq <= S``
applied in file order (``tests/books.py`` rebuilds it). Rows are flushed as written.

**Book faults** (kinds in :data:`BOOK_FAULTS`, rates in ``--faults`` like any other): a delta message
dropped, sent twice, or sent after the next one; a stale snapshot (the book as it was at least
``STALE_STEPS`` steps ago, with *its own* true id, as a cache would serve it); a wrong checksum (for
venues whose deltas carry one). :class:`DeltaFaults` applies the delta kinds to one stream's messages;
a replica asks :meth:`DeltaFaults.stale` / :meth:`DeltaFaults.bad_checksum` where those apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from deltafeed.model import fmt
from deltafeed.replicas.faults import FaultSchedule
from deltafeed.replicas.sim import LOT_DECIMALS, SymbolSpec
from deltafeed.replicas.tape import TapeWriter

DEPTH_LEVELS = 1000  # levels per side of the synthetic book
TOUCHED = 5  # best levels per side whose size changes at each step
STALE_STEPS = 50  # a stale snapshot is the book as it was at least this many steps ago

#: The book tape's columns.
BOOK_COLUMNS: tuple[str, ...] = ("symbol", "seq", "time_ms", "side", "price", "size")
#: The book fault kinds, in the order a stream's messages take them.
BOOK_FAULTS: tuple[str, ...] = ("bookdrop", "bookdup", "bookreorder", "stalebook", "badchecksum")
_LOT_SCALE = 10**LOT_DECIMALS


def _size_lots(tick: int, salt: int) -> int:
    """A level's size in lots: a fixed hash of its price and the update that set it."""
    return (tick * 2654435761 + salt * 40503 + 12345) % 500_000 + 1


@dataclass(slots=True)
class BookStep:
    """One book step (or several merged): update ids ``first..last``, changed levels (ticks -> lots; 0 removes)."""

    first: int
    last: int
    bids: dict[int, int]
    asks: dict[int, int]


class SimBook:
    """A symbol's synthetic order book (see the module docstring), its recent steps, and an older copy
    for stale snapshots. ``update_id`` is the id of the initial ladder (the first step's ``first`` is
    one more)."""

    def __init__(
        self, spec: SymbolSpec, last_ticks: int, buyer_maker: bool, update_id: int, levels: int = DEPTH_LEVELS
    ) -> None:
        self.spec = spec
        self.depth = levels
        self.u = update_id
        bb, ba = self._best(last_ticks, buyer_maker)
        self.best_bid, self.best_ask = bb, ba
        self.bids = {t: _size_lots(t, self.u) for t in range(bb, max(0, bb - levels), -1)}
        self.asks = {t: _size_lots(t, self.u) for t in range(ba, ba + levels)}
        #: Steps not yet taken by every delta stream (trimmed by :meth:`trim`).
        self.events: list[BookStep] = []
        self.steps = 0
        self._old = (self.u, dict(self.bids), dict(self.asks))
        self._older = self._old

    @staticmethod
    def _best(ticks: int, buyer_maker: bool) -> tuple[int, int]:
        return (ticks, ticks + 1) if buyer_maker else (max(1, ticks - 1), max(2, ticks))

    def step(self, last_ticks: int, buyer_maker: bool) -> BookStep:
        """Move the book to a new last trade; returns (and keeps) the step."""
        bb, ba = self._best(last_ticks, buyer_maker)
        salt = self.u + 1
        bid_ch = self._shift(self.bids, self.best_bid, bb, -1, salt)
        ask_ch = self._shift(self.asks, self.best_ask, ba, 1, salt)
        self.best_bid, self.best_ask = bb, ba
        n = len(bid_ch) + len(ask_ch)
        ev = BookStep(self.u + 1, self.u + n, bid_ch, ask_ch)
        self.u += n
        self.events.append(ev)
        self.steps += 1
        if self.steps % STALE_STEPS == 0:  # two copies: the older is always >= STALE_STEPS steps old
            self._older, self._old = self._old, (self.u, dict(self.bids), dict(self.asks))
        return ev

    def trim(self, upto: int) -> None:
        """Forget steps whose last update is ``<= upto`` (every delta stream has sent them)."""
        k = 0
        while k < len(self.events) and self.events[k].last <= upto:
            k += 1
        del self.events[:k]

    def merged(self, after: int) -> BookStep | None:
        """Every kept step after update ``after`` as one (later sizes win), or None."""
        evs = [e for e in self.events if e.last > after]
        if not evs:
            return None
        bids: dict[int, int] = {}
        asks: dict[int, int] = {}
        for e in evs:
            bids.update(e.bids)
            asks.update(e.asks)
        return BookStep(evs[0].first, evs[-1].last, bids, asks)

    def levels(self, limit: int) -> tuple[list[list[str]], list[list[str]]]:
        """The best ``limit`` bids (descending) and asks (ascending) as ``[price, size]`` texts."""
        return self._side(self.bids, True, limit), self._side(self.asks, False, limit)

    def stale_levels(self, limit: int) -> tuple[int, list[list[str]], list[list[str]]]:
        """A stale snapshot: ``(update id, bids, asks)`` of the book as it was at least ``STALE_STEPS``
        steps ago (the initial ladder before that many steps)."""
        u, bids, asks = self._older
        return u, self._side(bids, True, limit), self._side(asks, False, limit)

    def _side(self, side: Mapping[int, int], desc: bool, limit: int) -> list[list[str]]:
        keys = sorted(side, reverse=desc)[:limit]
        return [[self.price(t), self.qty(side[t])] for t in keys]

    def price(self, ticks: int) -> str:
        """A price as the venue writes it (a venue with another format overrides this and :meth:`qty`;
        the book tape uses them too)."""
        return fmt(ticks / self.spec.price_scale)

    def qty(self, lots: int) -> str:
        return fmt(lots / _LOT_SCALE)

    def changes(self, levels: dict[int, int], desc: bool) -> list[list[str]]:
        """Changed levels as ``[price, size]`` texts, best first."""
        return [[self.price(t), self.qty(levels[t])] for t in sorted(levels, reverse=desc)]

    def _ladder(self, best: int, direction: int) -> tuple[int, int]:
        """The tick range ``[lo, hi]`` of a side whose best level is ``best`` (-1: bids, +1: asks)."""
        if direction > 0:
            return best, best + self.depth - 1
        return max(1, best - self.depth + 1), best

    def _shift(self, side: dict[int, int], old_best: int, new_best: int, direction: int, salt: int) -> dict[int, int]:
        """Move one side's ladder from ``old_best`` to ``new_best`` in place; returns the changed levels.

        Only the ends of the ladder are touched, so a step costs the size of the move, not the depth."""
        old_lo, old_hi = self._ladder(old_best, direction)
        new_lo, new_hi = self._ladder(new_best, direction)
        ch: dict[int, int] = {}
        for t in _outside(old_lo, old_hi, new_lo, new_hi):
            if side.pop(t, None) is not None:
                ch[t] = 0
        for t in _outside(new_lo, new_hi, old_lo, old_hi):
            side[t] = ch[t] = _size_lots(t, salt)
        for k in range(TOUCHED):
            t = new_best + direction * k
            if t in side:
                side[t] = ch[t] = _size_lots(t, salt + k + 1)
        return ch


def _outside(lo: int, hi: int, cut_lo: int, cut_hi: int) -> list[int]:
    """The ticks of ``[lo, hi]`` outside ``[cut_lo, cut_hi]``."""
    return [*range(lo, min(hi, cut_lo - 1) + 1), *range(max(lo, cut_hi + 1), hi + 1)]


# --- the book tape ---------------------------------------------------------------------------------------


def book_tape_path(tape: str | Path) -> Path:
    """Where the book tape of trade tape ``tape`` goes: beside it, ``X.csv`` -> ``X.book.csv``."""
    p = Path(tape)
    return p.with_name(f"{p.stem}.book.csv" if p.suffix == ".csv" else f"{p.name}.book.csv")


class BookTape:
    """The book tape (see the module docstring) of one replica, every symbol's changes in one file."""

    def __init__(self, path: str | Path) -> None:
        self._w = TapeWriter(path, BOOK_COLUMNS)
        self.path = self._w.path

    @property
    def rows(self) -> int:
        return self._w.rows

    def write(
        self, symbol: str, seq: int, time_ms: int, book: SimBook, bids: Mapping[int, int], asks: Mapping[int, int]
    ) -> None:
        """Rows for changed levels ``bids``/``asks`` (ticks -> lots, 0 removed) of ``book``, in the book at ``seq``."""
        head = f"{symbol},{seq},{time_ms},"
        lines = [f"{head}b,{book.price(t)},{book.qty(q)}\n" for t, q in bids.items()]
        lines += [f"{head}a,{book.price(t)},{book.qty(q)}\n" for t, q in asks.items()]
        self._w.write_text("".join(lines), len(lines))

    def write_book(self, symbol: str, seq: int, time_ms: int, book: SimBook) -> None:
        """The whole current ladder of ``book`` (its start), in the book at ``seq``."""
        self.write(symbol, seq, time_ms, book, book.bids, book.asks)

    def close(self) -> None:
        self._w.close()


# --- book faults -----------------------------------------------------------------------------------------


class DeltaFaults:
    """The book faults of one replica (see the module docstring), drawn from its fault schedule.

    ``injected(kind)`` is called for each fault injected (the replica counts and logs it). Delta faults
    apply to one stream's messages at a time, in order, with :meth:`deltas`; a reordered message held
    back is sent after the next message of the same stream (``key``)."""

    def __init__(self, schedule: FaultSchedule | None, injected: Callable[[str], None]) -> None:
        self.schedule = schedule
        self._injected = injected
        self._held: dict[object, bytes] = {}

    def _take(self, kind: str) -> bool:
        f = self.schedule
        if f is None or not f.pending(kind):
            return False
        f.due(kind)
        self._injected(kind)
        return True

    def deltas(self, key: object, payloads: list[bytes]) -> list[bytes]:
        """One stream's delta messages of this moment, with the delta faults due now applied."""
        held = self._held.pop(key, None)
        out = list(payloads)
        if held is not None:
            out.insert(min(1, len(out)), held)
        f = self.schedule
        if f is None or not payloads:
            return out
        if self._take("bookdrop"):
            del out[f.pick(len(out))]
        if out and self._take("bookdup"):
            i = f.pick(len(out))
            out.insert(i, out[i])
        if out and self._take("bookreorder"):
            if len(out) >= 2:
                i = f.pick(len(out) - 1)
                out[i], out[i + 1] = out[i + 1], out[i]
            else:
                self._held[key] = out.pop()
        return out

    def stale(self) -> bool:
        """Whether this snapshot is to be stale (a ``stalebook`` fault is due; taken and counted)."""
        return self._take("stalebook")

    def bad_checksum(self) -> bool:
        """Whether this message's checksum is to be wrong (a ``badchecksum`` fault is due; taken and counted)."""
        return self._take("badchecksum")
