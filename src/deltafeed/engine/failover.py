"""Logical series (``fx:EUR_USD``) fed by whichever of two source series is live: when the active
one goes silent while its market is open, the other one takes over without a hole."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deltafeed.api.protocol import SwitchData
from deltafeed.engine.status import SwitchDoc, switch_doc
from deltafeed.model import PRICE_SIDES, BadInput, Instrument, Switch, series_key, timeframe
from deltafeed.store.base import StoreError

if TYPE_CHECKING:
    from deltafeed.config import FailoverSettings
    from deltafeed.engine.core import Engine

log = logging.getLogger("deltafeed.engine")


@dataclass
class FailoverPair:
    """A logical series (``fx:EUR_USD``) fed by whichever of two source series is active."""

    key: str
    sources: tuple[str, str]  # (primary, standby) series keys
    active: int = 0  # index into ``sources``
    switches: list[Switch] = field(default_factory=list)  # this run's, oldest first
    silent_s: list[float] = field(default_factory=list)  # how long the old source was silent, per switch
    unsaved: list[Switch] = field(default_factory=list)  # not yet in the cold store


class Failovers:
    """The run's logical series, which source each follows, and their switches."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pairs: dict[str, FailoverPair] = {}
        self._of: dict[str, FailoverPair] = {}  # source series key -> its failover
        for name, fo in engine.settings.failover.items():
            self.add(name, fo)

    def add(self, name: str, fo: FailoverSettings) -> list[FailoverPair]:
        """The logical series of failover ``name`` (one per price side its sources share), whose
        sources are among the engine's series; :class:`BadInput` when they share no price side."""
        settings = self.engine.settings
        logical = str(Instrument.parse(name))
        primary = str(Instrument.parse(fo.primary, default_venue=settings.venue))
        standby = str(Instrument.parse(fo.standby, default_venue=settings.venue))
        made = []
        for side in ("trade", *PRICE_SIDES):
            pair = (series_key(primary, side), series_key(standby, side))
            if all(k in self.engine.states for k in pair):
                f = self.pairs[series_key(logical, side)] = FailoverPair(series_key(logical, side), pair)
                self._of[pair[0]] = self._of[pair[1]] = f
                made.append(f)
        if not made:
            raise BadInput(
                f"failover {name}: {primary} and {standby} have no price side in common; give them the same prices"
            )
        return made

    def drop(self, name: str) -> list[FailoverPair]:
        """Forget the logical series of failover ``name`` (before its sources go); returns them."""
        logical = str(Instrument.parse(name))
        gone = [f for k, f in self.pairs.items() if k.split("@", 1)[0] == logical]
        for f in gone:
            del self.pairs[f.key]
            for src in f.sources:
                self._of.pop(src, None)
        return gone

    def logical_of(self, key: str) -> str | None:
        """The logical series source series ``key`` feeds now (it is the active source), or None."""
        f = self._of.get(key)
        return f.key if f is not None and f.sources[f.active] == key else None

    def seed(self, pairs: list[FailoverPair] | None = None) -> None:
        """The logical series (``pairs``, default all) start as their primary's recent history (what
        the hot tier holds)."""
        e = self.engine
        for f in self.pairs.values() if pairs is None else pairs:
            for tf in e.timeframes:
                for c in e.hot.last(f.sources[0], tf, e.settings.hot_capacity):
                    e.publisher.put(f.key, tf, c)

    def check(self, mono: float) -> None:
        """Every tick: switch each logical series whose active source went silent."""
        for f in self.pairs.values():
            self._check(f, mono)

    def _check(self, f: FailoverPair, mono: float) -> None:
        """Switch ``f`` to its other source when the active one went silent while its market is open
        and the other one is live."""
        e = self.engine
        limit = e.settings.seconds("failover_after")
        act, other = e.states[f.sources[f.active]], e.states[f.sources[1 - f.active]]
        silent = mono - (act.last_message or e.started)
        if silent <= limit or not act.calendar.is_open(act.feed.clock.now_ms()):
            return
        if not other.last_message or mono - other.last_message > limit:
            return  # both silent: nothing better to switch to
        # The logical series continues from the candles holding the old source's last data: those
        # (and everything after) come whole from the new source, so there is no hole and nothing
        # the silent source made up (flat candles by the timer) stays.
        since = act.last_trade_ms or other.feed.clock.now_ms()
        spanning = {tf: timeframe(tf).start(since) for tf in e.timeframes}
        f.active = 1 - f.active
        for tf, first in spanning.items():
            held = e.hot.range(other.key, tf, first, 2**62)
            if held is None:
                held = [c for c in e.hot.last(other.key, tf, e.settings.hot_capacity) if c.open_time >= first]
            for c in held:
                e.publisher.put(f.key, tf, c)
            live = other.open_candle(tf)
            if live is not None:
                e.publisher.put(f.key, tf, live)
        switch = Switch(f.key, since, other.feed.clock.now_ms(), act.key, other.key)
        f.switches.append(switch)
        f.unsaved.append(switch)
        f.silent_s.append(round(silent, 3))
        if e.hub is not None:
            e.hub.switch(f.key, switch.at_ms, SwitchData(since, act.key, other.key, spanning))
        log.warning(
            "%s: %s silent for %.1f s; candles continue from %s (the candles holding %d are spanning)",
            f.key,
            act.key,
            silent,
            other.key,
            since,
        )

    def switch_doc(self, w: Switch, silent_s: float | None = None) -> SwitchDoc:
        """A switch as the status view and the API show it, with each timeframe's spanning candle."""
        return switch_doc(w, self.engine.timeframes, silent_s)

    async def switches(self, instrument: str, since_ms: int | None = None, until_ms: int | None = None) -> list[Switch]:
        """Failover switches of a logical instrument with ``since_ms`` in the bounds, oldest first:
        from the cold store (every run's) and this run's not yet saved; [] for any other series."""
        f = self.pairs.get(instrument)
        if f is None:
            return []
        lo, hi = since_ms if since_ms is not None else -(2**62), until_ms if until_ms is not None else 2**62
        found = {w.since_ms: w for w in f.switches if lo <= w.since_ms <= hi}
        with contextlib.suppress(StoreError):  # a store that is down: this run's switches still show
            for w in await self.engine.cold.switches(instrument, since_ms, until_ms):
                found.setdefault(w.since_ms, w)
        return [found[k] for k in sorted(found)]

    async def save(self) -> None:
        """This run's switches not yet in the cold store, to it."""
        for f in self.pairs.values():
            if f.unsaved:
                await self.engine.cold.record_switches(f.unsaved)
                f.unsaved.clear()
