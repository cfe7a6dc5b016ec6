"""The collector role: joins a cluster on NATS JetStream, takes its share of the configured
instruments through leases, runs one engine per instrument it holds, and publishes their candles.

Every ``ttl_s / 5`` a collector renews its leases, says it is alive (the collectors bucket), and
moves towards its fair share, ceil(instruments / live collectors): it hands back one lease over the
share, or takes free and stale ones under it. A lease is stale when it has not moved for
``ttl_s`` by the taker's clock, so a dead collector's instruments move within about
``ttl_s + 2 * ttl_s / 5`` (7 s with the default 5 s). The taker's engine bootstraps from the venue's
history back to before the newest candle the cluster has for that instrument, so the handover
leaves no hole (repeats are dropped by ``Nats-Msg-Id``).

Venue budgets are cluster-wide: the budgets bucket keeps each venue's REST weight per minute and
connection attempts per 5 minutes (the first collector writes them from its settings), and each
instrument's engine gets an equal part of them, so all collectors together stay within the
venue's limits whatever the assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from deltafeed.cluster import subjects
from deltafeed.cluster.leases import Leases
from deltafeed.cluster.outlet import IN_FLIGHT, EngineSink, Outlet
from deltafeed.config import Settings
from deltafeed.model import BadInput, Instrument, Unavailable, cluster_name, timeframe
from deltafeed.store.base import is_postgres

log = logging.getLogger("deltafeed.cluster")

#: Seconds after its last renewal that another collector may take a lease over.
LEASE_TTL_S = 5.0
#: Seconds a collector leaves an instrument be after its engine failed to start.
COOLDOWN_S = 30.0


class CollectorInfo(msgspec.Struct):
    """A collector's entry in the collectors bucket (rewritten every renewal)."""

    id: str
    host: str
    pid: int
    started_ms: int
    ttl_s: float
    instruments: list[str] = msgspec.field(default_factory=list)
    #: Per instrument, ms since the epoch its lease was taken.
    since_ms: dict[str, int] = msgspec.field(default_factory=dict)
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    at_ms: int = 0


class Budget(msgspec.Struct):
    """A venue's limits shared by the whole cluster (the budgets bucket, key = venue)."""

    weight_limit: int | None
    connect_budget: int


@dataclass
class _Held:
    engine: Any
    task: asyncio.Task[None]
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))


async def open_bucket(js: Any, cluster: str, what: str, ttl_s: float | None = None) -> Any:
    """The key-value bucket ``what`` of ``cluster``, created when missing."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError

    name = subjects.bucket_name(cluster, what)
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl_s))


async def connect(url: str, name: str) -> Any:
    """A NATS connection that reconnects for ever once made; :class:`Unavailable` when none can be
    made now. Connection troubles are logged as one line each, never as a traceback."""
    import nats

    connected = False

    async def error(exc: Exception) -> None:
        if connected:  # before, the one line below says it
            log.warning("NATS at %s: %s", url, exc or type(exc).__name__)

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                connect_timeout=3,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                error_cb=error,
                allow_reconnect=True,
            ),
            8.0,
        )
        connected = True
        return nc
    except TimeoutError:
        raise Unavailable(f"cannot reach NATS at {url}: no answer within 8 s") from None
    except Exception as exc:
        raise Unavailable(f"cannot reach NATS at {url}: {exc or type(exc).__name__}") from None


class Collector:
    """One collector process of cluster ``cluster`` on NATS at ``url``."""

    def __init__(self, settings: Settings, url: str, cluster: str, *, ttl_s: float = LEASE_TTL_S) -> None:
        if settings.failover:
            raise BadInput("failover pairs are not supported with --cluster yet; run them on a collector of their own")
        self.settings = settings
        self.url = url
        self.cluster = cluster_name(cluster)
        self.ttl_s = ttl_s
        self.every_s = ttl_s / 5
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.instruments = {subjects.kv_key(str(i)): i for i in settings.instruments()}
        # Each collector tries the instruments in an order of its own, so they rarely race.
        salt = zlib.crc32(self.id.encode())
        self._order = sorted(self.instruments, key=lambda k: zlib.crc32(k.encode(), salt))
        self.held: dict[str, _Held] = {}
        self.budgets: dict[str, Budget] = {}
        self.started_ms = int(time.time() * 1000)
        self.nc: Any = None
        self.js: Any = None
        self.outlet: Outlet | None = None
        self.leases: Leases | None = None
        self._collectors_kv: Any = None
        #: Collector ids -> (revision, monotonic time first seen), to tell the live ones.
        self._peers: dict[str, tuple[int, float]] = {}
        #: Instruments whose engine failed to start -> monotonic time before which we leave them be.
        self._cooling: dict[str, float] = {}

    async def start(self) -> None:
        """Connect, make the stream and buckets, agree on the venues' budgets."""
        self.nc = await connect(self.url, self.id)
        self.js = self.nc.jetstream(publish_async_max_pending=IN_FLIGHT)
        await subjects.ensure_stream(self.js, self.cluster)
        leases_kv = await open_bucket(self.js, self.cluster, subjects.LEASES)
        self._collectors_kv = await open_bucket(self.js, self.cluster, subjects.COLLECTORS, ttl_s=3 * self.ttl_s)
        budgets_kv = await open_bucket(self.js, self.cluster, subjects.BUDGETS)
        self.leases = Leases(leases_kv, self.id, self.ttl_s)
        for venue in self.settings.venues_used():
            self.budgets[venue] = await self._budget(budgets_kv, venue)
        self.outlet = Outlet(self.js, self.cluster, self.id, trades=self.settings.cluster_trades)
        self.outlet.start()
        log.info(
            "collector %s joined cluster %s at %s: %d instruments to share",
            self.id,
            self.cluster,
            self.url,
            len(self.instruments),
        )

    async def _budget(self, kv: Any, venue: str) -> Budget:
        """The cluster's budget of ``venue``: the one in the bucket, or ours written there first."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        vs = self.settings.venue_settings(venue)
        mine = Budget(getattr(vs, "weight_limit", None), self.settings.connect_budget)
        try:
            await kv.create(venue, msgspec.json.encode(mine))
            return mine
        except KeyWrongLastSequenceError:
            pass
        with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError):
            return msgspec.json.decode((await kv.get(venue)).value or b"", type=Budget)
        return mine

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leases, the share and the engines until ``stop`` is set; then hand back."""
        first = True
        try:
            while not stop.is_set():
                try:
                    await self._round(claim=not first)
                except Exception as exc:  # NATS away for a moment: the leases' own deadline decides
                    log.warning("cluster round failed: %s", exc)
                first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)
        finally:
            await self.close()

    async def _round(self, *, claim: bool) -> None:
        leases = self.leases
        assert leases is not None
        for key in await leases.renew():
            await self._stop_engine(key)
        await self._announce()
        live = await self._live()
        share = math.ceil(len(self.instruments) / max(1, live))
        if len(self.held) > share:
            key = max(self.held, key=lambda k: self.held[k].since_ms)
            log.info("handing %s back: %d live collectors, a share of %d", self.instruments[key], live, share)
            await self._stop_engine(key)
            await leases.release(key)
            return
        for key in self._order:
            if key in self.held:
                continue
            # Every free or watched lease is looked at each round: its staleness clock keeps running.
            if self._cooling.get(key, 0.0) > time.monotonic():
                await leases.watch(key)
            elif len(self.held) < share and claim and await leases.claim(key):
                await self._start_engine(key)
            elif not claim or len(self.held) >= share:
                await leases.watch(key)

    async def _announce(self) -> None:
        outlet = self.outlet
        assert outlet is not None
        info = CollectorInfo(
            self.id,
            socket.gethostname(),
            os.getpid(),
            self.started_ms,
            self.ttl_s,
            sorted(str(self.instruments[k]) for k in self.held),
            {str(self.instruments[k]): h.since_ms for k, h in self.held.items()},
            outlet.published,
            outlet.duplicates,
            outlet.failed,
            int(time.time() * 1000),
        )
        await self._collectors_kv.put(self.id, msgspec.json.encode(info))

    async def _live(self) -> int:
        """How many collectors are alive: entries that moved within ``ttl_s`` (by our clock)."""
        from nats.js.errors import NoKeysError

        try:
            keys = await self._collectors_kv.keys()
        except NoKeysError:
            keys = []
        now = time.monotonic()
        live = 0
        for key in keys:
            try:
                entry = await self._collectors_kv.get(key)
            except Exception:
                continue
            seen = self._peers.get(key)
            if seen is None or seen[0] != entry.revision:
                self._peers[key] = (entry.revision, now)
                live += 1
            elif key == self.id or now - seen[1] < self.ttl_s:
                live += 1
        return max(1, live)

    def _settings_for(self, inst: Instrument, history_ms: int) -> Settings:
        """The settings of one instrument's engine: its part of the venue's budgets, no API, its
        history back to before the cluster's newest candle of it."""
        s = self.settings
        n = sum(1 for i in self.instruments.values() if i.venue == inst.venue)
        budget = self.budgets[inst.venue]
        changes: dict[str, Any] = {
            "symbols": [str(inst)],
            "books": [b for b in s.books if b == str(inst)],
            "history": f"{history_ms}ms",
            "db": s.db if is_postgres(s.db) else ":memory:",
            "spool": "off" if not is_postgres(s.db) else s.spool,
            "api": "off",
            "status_file": None,
            "connect_budget": max(1, budget.connect_budget // n),
            "stop_grace": "1s",
        }
        if budget.weight_limit is not None:
            share = max(1, budget.weight_limit // n)
            venues = dict(s.venues)
            table = msgspec.to_builtins(s.venue_settings(inst.venue))
            table["weight_limit"] = share
            venues[inst.venue] = table
            changes["venues"] = venues
            if inst.venue == s.venue:
                changes["weight_limit"] = share
        return msgspec.structs.replace(s, **changes)

    async def _history_ms(self, inst: Instrument) -> int:
        """How far back the engine of ``inst`` fetches history: to a margin before the newest
        candle the cluster has of it (the window a dead collector left), else ``history``."""
        from nats.js.errors import NotFoundError

        tf = min(self.settings.timeframes, key=lambda t: timeframe(t).ms)
        subj = subjects.subject(self.cluster, subjects.CANDLES, str(inst), tf)
        try:
            raw = await self.js.get_last_msg(subjects.stream_name(self.cluster), subj)
            last = subjects.decode_candle(raw.data)
        except (NotFoundError, ValueError):
            return self.settings.history_ms
        tf_ms = timeframe(tf).ms
        margin = max(10 * tf_ms, 60_000)
        return max(0, int(time.time() * 1000) - last.sent_ms) + tf_ms + margin

    async def _start_engine(self, key: str) -> None:
        from deltafeed.engine import Engine

        inst = self.instruments[key]
        history_ms = await self._history_ms(inst)
        engine = Engine(self._settings_for(inst, history_ms))
        assert self.outlet is not None
        engine.hub = sink = EngineSink(self.outlet)
        sink.attach_books(engine.books)  # its order books on the cluster's books subjects

        async def run() -> None:
            try:
                await engine.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the venue refuses or is away: hand the lease back, try later
                log.error("cannot collect %s: %s", inst, exc)
                self._cooling[key] = time.monotonic() + COOLDOWN_S
                await self._stop_engine(key)
                if self.leases is not None:
                    await self.leases.release(key)
                return
            log.info("collecting %s (history from %.0f s back)", inst, history_ms / 1000)

        self.held[key] = _Held(engine, asyncio.create_task(run(), name=f"engine-{key}"))

    async def _stop_engine(self, key: str) -> None:
        held = self.held.pop(key, None)
        if held is None:
            return
        if not held.task.done() and held.task is not asyncio.current_task():
            held.task.cancel()
            await asyncio.gather(held.task, return_exceptions=True)
        try:
            await held.engine.stop()
        except Exception as exc:
            log.warning("stopping the engine of %s: %s", self.instruments[key], exc)
        log.info("stopped collecting %s", self.instruments[key])

    async def close(self) -> None:
        """Stop every engine, publish what waits, hand every lease back, leave."""
        await asyncio.gather(*(self._stop_engine(k) for k in list(self.held)))
        if self.outlet is not None:
            await self.outlet.close()
        if self.leases is not None:
            for key in list(self.leases.held):
                await self.leases.release(key)
        if self._collectors_kv is not None:
            with contextlib.suppress(Exception):
                await self._collectors_kv.delete(self.id)
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.drain()
