"""Leases in a JetStream key-value bucket: who holds a key (an instrument), taken with
compare-and-set so that one holder at a time wins, renewed by the holder, and taken over by another
once it has not moved for ``ttl_s`` by the taker's own clock (no clock needs to agree with another).

A lease's value is JSON ``{"holder": ID, "at_ms": WALL_MS}``; ``holder`` empty means free (a
collector hands a lease back that way, so no key is ever deleted). Every write carries the
revision it read, so of two collectors taking the same lease at once exactly one succeeds."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec

log = logging.getLogger("deltafeed.cluster")


class Lease(msgspec.Struct):
    holder: str
    at_ms: int = 0


_decode = msgspec.json.Decoder(Lease).decode
_encode = msgspec.json.Encoder().encode


def read_lease(value: bytes | None) -> Lease:
    """The lease a value holds; a value that is not one (written by hand, damaged) counts as free."""
    try:
        return _decode(value or b"")
    except msgspec.DecodeError:
        return Lease("")


class Leases:
    """The leases collector ``me`` holds in bucket ``kv``, and the ones it watches for staleness."""

    def __init__(self, kv: Any, me: str, ttl_s: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.kv = kv
        self.me = me
        self.ttl_s = ttl_s
        self.monotonic = monotonic
        #: Held keys -> (revision of our last write, monotonic time of that write).
        self.held: dict[str, tuple[int, float]] = {}
        #: Keys others hold -> (revision seen, monotonic time it was first seen).
        self._seen: dict[str, tuple[int, float]] = {}
        #: Leases taken from a silent holder, and leases lost, since the start.
        self.taken_over = 0
        self.lost = 0

    def _value(self, holder: str) -> bytes:
        return _encode(Lease(holder, int(time.time() * 1000)))

    async def _look(self, key: str) -> tuple[Any, bool]:
        """``key``'s entry (None when missing) and whether we may take it: it is free, or its
        holder has not renewed it for ``ttl_s`` since we first saw its current revision."""
        from nats.js.errors import KeyNotFoundError

        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None, True
        lease = read_lease(entry.value)
        if not lease.holder or lease.holder == self.me:
            return entry, True
        now = self.monotonic()
        seen = self._seen.get(key)
        if seen is None or seen[0] != entry.revision:
            self._seen[key] = (entry.revision, now)
            return entry, False
        return entry, now - seen[1] >= self.ttl_s

    async def watch(self, key: str) -> None:
        """Look at ``key`` without taking it, so its staleness is known when we want it."""
        if key not in self.held:
            await self._look(key)

    async def claim(self, key: str) -> bool:
        """Take ``key`` if it is free, missing, or stale (see :meth:`_look`); whether it is ours now."""
        from nats.js.errors import KeyWrongLastSequenceError

        if key in self.held:
            return True
        entry, free = await self._look(key)
        if not free:
            return False
        try:
            if entry is None:
                rev = await self.kv.create(key, self._value(self.me))
            else:
                rev = await self.kv.update(key, self._value(self.me), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False  # another collector was faster
        if entry is not None and (old := read_lease(entry.value).holder) and old != self.me:
            self.taken_over += 1
            log.info("took %s over from %s (no renewal for %.1f s)", key, old, self.monotonic() - self._seen[key][1])
        self._seen.pop(key, None)
        self.held[key] = (rev, self.monotonic())
        return True

    async def renew(self) -> list[str]:
        """Renew every held lease; the keys lost (another took them, or we could not renew in time:
        their collection must stop now)."""
        from nats.errors import Error as NatsError
        from nats.js.errors import KeyWrongLastSequenceError

        lost = []
        for key, (rev, at) in list(self.held.items()):
            try:
                new = await asyncio.wait_for(self.kv.update(key, self._value(self.me), last=rev), self.ttl_s / 5)
            except KeyWrongLastSequenceError:
                try:  # gone with its bucket (NATS came back without its store): ours again if still free
                    new = await asyncio.wait_for(self.kv.create(key, self._value(self.me)), self.ttl_s / 5)
                except (KeyWrongLastSequenceError, NatsError, TimeoutError, OSError):
                    log.warning("lease %s was taken by another collector", key)
                    lost.append(key)
                    del self.held[key]
                    continue
                log.warning("lease %s was gone from its bucket (NATS lost its store?); taken again", key)
            except (NatsError, TimeoutError, OSError) as exc:
                # Not renewed: past most of the lease, another may take it any moment; stop first.
                if self.monotonic() - at > 0.8 * self.ttl_s:
                    log.warning("lease %s not renewed in time (%s); giving it up", key, exc)
                    lost.append(key)
                    del self.held[key]
                continue
            self.held[key] = (new, self.monotonic())
        self.lost += len(lost)
        return lost

    async def release(self, key: str) -> None:
        """Hand ``key`` back (marked free, so another collector takes it at once)."""
        from nats.errors import Error as NatsError

        held = self.held.pop(key, None)
        if held is None:
            return
        try:
            await self.kv.update(key, self._value(""), last=held[0])
        except (NatsError, TimeoutError, OSError) as exc:  # it goes stale instead
            log.warning("cannot hand lease %s back: %s", key, exc)
