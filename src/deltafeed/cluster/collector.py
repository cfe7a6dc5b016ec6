"""The collector role: joins a cluster on NATS JetStream, takes its share of the configured
instruments through leases, collects them with one engine (instruments added and dropped as leases
come and go), and publishes their candles.

Every ``ttl_s / 5`` a collector renews its leases, says it is alive (the collectors bucket), and
moves towards its fair share, ceil(instruments / live collectors): it hands back one lease over the
share, or takes free and stale ones under it. A lease is stale when it has not moved for
``ttl_s`` by the taker's clock, so a dead collector's instruments move within about
``ttl_s + 2 * ttl_s / 5`` (7 s with the default 5 s). The taker's engine bootstraps from the venue's
history back to before the newest candle the cluster has for that instrument, so the handover
leaves no hole (repeats are dropped by ``Nats-Msg-Id``).

Venue budgets are per venue and what the venue counts its limits by: the outgoing address, or for
a venue that counts per account, key or session (:meth:`Venue.budget_scope`) that. The budgets
bucket keeps each (venue, scope)'s REST weight per minute (where the venue has one) and connection
attempts per 5 minutes (the first collector there writes them from its settings), and the live
collectors of one scope split them equally: each keeps a fraction of its feed's REST pace and
connection attempts (``Engine.set_share``). A part shrinks at once when another collector joins,
and grows only once it has stood for the longest window of the limits (``cluster_grow_after``, 5
minutes), so together they stay within the venue's limits. Collectors of other scopes have budgets
of their own.

The buckets are made again when NATS comes back without its store (see :meth:`Collector._open_buckets`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import urllib.parse
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from deltafeed.cluster import subjects
from deltafeed.cluster.leases import Leases
from deltafeed.cluster.outlet import IN_FLIGHT, EngineSink, Outlet
from deltafeed.config import FailoverSettings, Settings
from deltafeed.model import BadInput, Instrument, Unavailable, cluster_name, timeframe
from deltafeed.names import native
from deltafeed.store.base import is_postgres
from deltafeed.tasks import cancel_and_wait
from deltafeed.venues import registry

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
    #: Per venue, the outgoing address its budget is kept for.
    addresses: dict[str, str] = msgspec.field(default_factory=dict)


class Budget(msgspec.Struct):
    """A venue's limits on one outgoing address (the budgets bucket, key = :func:`budget_key`)."""

    weight_limit: int | None
    connect_budget: int


def budget_key(venue: str, scope: str) -> str:
    """The budgets bucket's key of ``venue`` seen from ``scope``, an address or an account
    (``binance.127=2E0=2E0=2E1``)."""
    return subjects.kv_key(f"{venue}:{scope}")


def part_of(budget: Budget, own: Budget, sharers: int) -> tuple[float, float]:
    """The fractions of its own REST pace and connection attempts a collector keeps to: the
    ``budget`` of its scope (written there by the first collector, perhaps with other settings than
    its ``own``) split among ``sharers`` collectors."""
    n = max(1, sharers)
    rest = 1.0
    if budget.weight_limit is not None and own.weight_limit:
        rest = budget.weight_limit / own.weight_limit
    connects = budget.connect_budget / own.connect_budget if own.connect_budget else 1.0
    return (min(1.0, rest / n), min(1.0, connects / n))


def outgoing_address(url: str | None) -> str:
    """The local address this machine reaches ``url``'s host from (a UDP connect sends nothing);
    the default route's when the URL names no host or the host does not resolve."""
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname if url else None
    for target in (host, "192.0.2.1"):  # TEST-NET-1: any routable address shows the default route
        if not target:
            continue
        try:
            family = socket.getaddrinfo(target, 9, type=socket.SOCK_DGRAM)[0]
            with socket.socket(family[0], socket.SOCK_DGRAM) as sock:
                sock.connect(family[4])
                return str(sock.getsockname()[0])
        except OSError:
            continue
    return "0.0.0.0"  # no route at all: one budget for every such collector


@dataclass(frozen=True)
class Unit:
    """What one lease covers: an instrument; a failover pair (its logical series and both sources,
    collected together so that the logical series can switch between them); or every instrument of
    a venue that streams on one connection per account or key (``venue:*``, see
    :meth:`Venue.held_together`), so that one collector holds that connection."""

    name: str
    sources: tuple[Instrument, ...]
    failover: FailoverSettings | None = None

    @property
    def instruments(self) -> list[str]:
        """What its holder collects, as the status lists it: a pair's logical series, else its sources."""
        return [self.name] if self.failover is not None else [str(s) for s in self.sources]


def units(settings: Settings) -> dict[str, Unit]:
    """The leased units of ``settings`` by lease key: each failover pair, then each instrument
    that is in none; :class:`BadInput` when an instrument is the source of two pairs."""
    out: dict[str, Unit] = {}
    paired: dict[str, str] = {}
    for name, fo in settings.failover.items():
        logical = str(Instrument.parse(name))
        sources = tuple(Instrument.parse(s, default_venue=settings.venue) for s in (fo.primary, fo.standby))
        for src in sources:
            if str(src) in paired:
                raise BadInput(
                    f"{src} is a source of failovers {paired[str(src)]} and {logical}; with --cluster each "
                    "instrument may feed one failover pair (a pair is leased as one unit)"
                )
            paired[str(src)] = logical
            if registry.get(src.venue).held_together(settings.venue_settings(src.venue)):
                # Its venue's instruments are one unit (one connection per account or key): a pair
                # leased apart from it would open a second connection, which the venue refuses.
                raise BadInput(
                    f"failover {logical}: with --cluster a pair cannot have a source on {src.venue}, whose "
                    f"instruments stream on one connection and are leased together ({src.venue}:*); "
                    "collect this pair without --cluster"
                )
        out[subjects.kv_key(logical)] = Unit(logical, sources, fo)
    together: dict[str, list[Instrument]] = {}
    for inst in settings.instruments():
        if str(inst) in paired:
            continue
        if registry.get(inst.venue).held_together(settings.venue_settings(inst.venue)):
            together.setdefault(inst.venue, []).append(inst)
        else:
            out[subjects.kv_key(str(inst))] = Unit(str(inst), (inst,))
    for venue, insts in together.items():
        out[subjects.kv_key(f"{venue}:*")] = Unit(f"{venue}:*", tuple(insts))
    return out


@dataclass
class _Held:
    #: Adding the instrument to the engine (done once it streams).
    task: asyncio.Task[None]
    since_ms: int = field(default_factory=lambda: int(time.time() * 1000))


@dataclass
class _Part:
    """A collector's part of one venue's budget in its scope: fractions of its REST pace and
    connection attempts."""

    applied: tuple[float, float]
    #: A larger part proposed, and since when (monotonic): applied once it stood for the windows.
    larger: tuple[float, float] | None = None
    since: float = 0.0


async def open_bucket(
    js: Any, cluster: str, what: str, ttl_s: float | None = None, made: list[str] | None = None
) -> Any:
    """The key-value bucket ``what`` of ``cluster``, created when missing (its name then added to ``made``)."""
    from nats.js.api import KeyValueConfig
    from nats.js.errors import BucketNotFoundError

    name = subjects.bucket_name(cluster, what)
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        if made is not None:
            made.append(name)
        return await js.create_key_value(KeyValueConfig(bucket=name, history=1, ttl=ttl_s))


async def connect(url: str, name: str) -> Any:
    """A NATS connection that reconnects for ever once made; :class:`Unavailable` when none can be
    made now. Connection troubles are logged as one line each, never as a traceback."""
    import nats

    connected = False

    async def error(exc: Exception) -> None:
        if connected:  # before, the one line below says it
            log.warning("NATS at %s: %s", url, exc or type(exc).__name__)

    await _reachable(url)
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


async def _reachable(url: str) -> None:
    """:class:`Unavailable` at once when no server of ``url`` (one or a comma-separated list) takes a
    TCP connection: the client would otherwise retry a refused one until its 8 s are up."""
    refusals: list[str] = []
    for one in url.split(","):
        parts = urllib.parse.urlsplit(one.strip() if "://" in one else f"nats://{one.strip()}")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 4222), 3.0)
        except (OSError, TimeoutError, ValueError) as exc:
            refusals.append(str(exc) or type(exc).__name__)
            continue
        writer.close()
        return
    raise Unavailable(f"cannot reach NATS at {url}: {refusals[-1]}")


class Collector:
    """One collector process of cluster ``cluster`` on NATS at ``url``."""

    def __init__(self, settings: Settings, url: str, cluster: str, *, ttl_s: float = LEASE_TTL_S) -> None:
        self.settings = settings
        self.url = url
        self.cluster = cluster_name(cluster)
        self.ttl_s = ttl_s
        self.every_s = ttl_s / 5
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.units = units(settings)
        # Each collector tries the units in an order of its own, so they rarely race.
        salt = zlib.crc32(self.id.encode())
        self._order = sorted(self.units, key=lambda k: zlib.crc32(k.encode(), salt))
        self.held: dict[str, _Held] = {}
        #: The one engine collecting every instrument held (made in :meth:`start`), and what it
        #: publishes through.
        self.engine: Any = None
        self.sink: EngineSink | None = None
        #: The instruments whose order books are kept (and published) while they are held.
        self.books = {str(Instrument.parse(native(b, settings.venue))) for b in settings.books}
        #: Per venue, what its budget is kept for: the account, key or session the venue counts its
        #: limits by, else the outgoing address (``cluster_address``, else found by a UDP connect to
        #: the venue's REST host).
        fixed = settings.cluster_address
        self.addresses = {
            v: registry.get(v).budget_scope(settings.venue_settings(v))
            or fixed
            or outgoing_address(getattr(settings.venue_settings(v), "rest_url", None))
            for v in settings.venues_used()
        }
        #: Per venue, the budget of its scope, the one our settings make, and our part of it.
        self.budgets: dict[str, Budget] = {}
        self.own = {
            v: Budget(getattr(settings.venue_settings(v), "weight_limit", None), settings.connect_budget)
            for v in settings.venues_used()
        }
        self.parts: dict[str, _Part] = {}
        self.grow_after_s = settings.seconds("cluster_grow_after")
        self.started_ms = int(time.time() * 1000)
        self.nc: Any = None
        self.js: Any = None
        self.outlet: Outlet | None = None
        self.leases: Leases | None = None
        self._collectors_kv: Any = None
        self._budgets_kv: Any = None
        #: Times the buckets were found missing and made again (NATS lost its store).
        self.buckets_made_again = 0
        #: Collector ids -> (revision, monotonic time first seen), to tell the live ones.
        self._peers: dict[str, tuple[int, float]] = {}
        #: Instruments whose engine failed to start -> monotonic time before which we leave them be.
        self._cooling: dict[str, float] = {}

    async def start(self) -> None:
        """Connect, make the stream and buckets, agree on the venues' budgets."""
        self.nc = await connect(self.url, self.id)
        self.js = self.nc.jetstream(publish_async_max_pending=IN_FLIGHT)
        await subjects.ensure_stream(self.js, self.cluster)
        await self._open_buckets()
        self.outlet = Outlet(self.js, self.cluster, self.id, trades=self.settings.cluster_trades)
        self.outlet.start()
        await self._start_engine()
        await self._announce()  # seen by the others from now on: they count us before we take anything
        log.info(
            "collector %s joined cluster %s at %s: %d instruments and failover pairs to share",
            self.id,
            self.cluster,
            self.url,
            len(self.units),
        )

    async def _open_buckets(self) -> None:
        """Open the cluster's key-value buckets, each made when missing (:func:`open_bucket`), and
        read (or write first) our venues' budgets. At the start, and again after a round failed:
        a NATS server that came back without its store has lost the buckets, as the outlet finds
        its stream gone, and they are made again the same way. The leases we held are then taken
        again as they are renewed (see :meth:`Leases.renew`)."""
        made: list[str] = []
        leases_kv = await open_bucket(self.js, self.cluster, subjects.LEASES, made=made)
        self._collectors_kv = await open_bucket(
            self.js, self.cluster, subjects.COLLECTORS, ttl_s=3 * self.ttl_s, made=made
        )
        self._budgets_kv = await open_bucket(self.js, self.cluster, subjects.BUDGETS, made=made)
        if made and self.leases is not None:
            self.buckets_made_again += 1
            log.warning("the cluster's buckets %s were gone (NATS lost its store?); made again", ", ".join(made))
        if self.leases is None:
            self.leases = Leases(leases_kv, self.id, self.ttl_s)
        self.leases.kv = leases_kv
        for venue in self.settings.venues_used():
            self.budgets[venue] = await self._budget(self._budgets_kv, venue)

    async def _budget(self, kv: Any, venue: str) -> Budget:
        """The budget of ``venue`` in our scope: the one in the bucket, or ours written there first."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        mine = self.own[venue]
        key = budget_key(venue, self.addresses[venue])
        try:
            await kv.create(key, msgspec.json.encode(mine))
            return mine
        except KeyWrongLastSequenceError:
            pass
        with contextlib.suppress(KeyNotFoundError, msgspec.DecodeError):
            return msgspec.json.decode((await kv.get(key)).value or b"", type=Budget)
        return mine

    async def _start_engine(self) -> None:
        """The engine that collects every instrument this collector will hold: none yet, no API, an
        in-memory store (or the shared PostgreSQL ``db``); until peers are seen, the whole budget."""
        from deltafeed.engine import Engine

        s = self.settings
        engine = Engine(
            msgspec.structs.replace(
                s,
                symbols=[],
                failover={},  # pairs are added with their sources, as leased units
                books=[],  # added with the instruments held
                db=s.db if is_postgres(s.db) else ":memory:",
                spool="off" if not is_postgres(s.db) else s.spool,
                api="off",
                status_file=None,
                stop_grace="1s",
            )
        )
        assert self.outlet is not None
        engine.hub = self.sink = EngineSink(self.outlet)
        for venue, budget in self.budgets.items():
            self.parts[venue] = _Part(part_of(budget, self.own[venue], 1))
            engine.set_share(venue, *self.parts[venue].applied)
        await engine.start()
        self.engine = engine

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the leases, the share and the engines until ``stop`` is set; then hand back."""
        first = True
        try:
            while not stop.is_set():
                try:
                    await self._round(claim=not first)
                except Exception as exc:  # NATS away for a moment: the leases' own deadline decides
                    log.warning("cluster round failed: %s", exc)
                    with contextlib.suppress(Exception):  # or back without its store: make them again
                        await self._open_buckets()
                first = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.every_s)
        finally:
            await self.close()

    async def _round(self, *, claim: bool) -> None:
        leases = self.leases
        assert leases is not None
        for key in await leases.renew():
            await self._stop(key)
        await self._announce()
        peers = await self._live()
        self._share_budgets(peers)
        share = math.ceil(len(self.units) / len(peers))
        if len(self.held) > share:
            key = max(self.held, key=lambda k: self.held[k].since_ms)
            log.info("handing %s back: %d live collectors, a share of %d", self.units[key].name, len(peers), share)
            await self._stop(key)
            await leases.release(key)
            return
        for key in self._order:
            if key in self.held:
                continue
            # Every free or watched lease is looked at each round: its staleness clock keeps running.
            if self._cooling.get(key, 0.0) > time.monotonic():
                await leases.watch(key)
            elif len(self.held) < share and claim and await leases.claim(key):
                await self._start(key)
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
            sorted(name for k in self.held for name in self.units[k].instruments),
            {name: h.since_ms for k, h in self.held.items() for name in self.units[k].instruments},
            outlet.published,
            outlet.duplicates,
            outlet.failed,
            int(time.time() * 1000),
            self.addresses,
        )
        await self._collectors_kv.put(self.id, msgspec.json.encode(info))

    async def _live(self) -> list[CollectorInfo]:
        """The live collectors, this one included: entries that moved within ``ttl_s`` (by our clock)."""
        from nats.js.errors import NoKeysError

        try:
            keys = await self._collectors_kv.keys()
        except NoKeysError:
            keys = []
        now = time.monotonic()
        live = []
        # A key rewritten while the bucket is listed comes twice (its value, then its update): each once.
        for key in dict.fromkeys(keys):
            try:
                entry = await self._collectors_kv.get(key)
                info = msgspec.json.decode(entry.value or b"", type=CollectorInfo)
            except Exception:
                continue
            seen = self._peers.get(key)
            if seen is None or seen[0] != entry.revision:
                self._peers[key] = (entry.revision, now)
                live.append(info)
            elif key == self.id or now - seen[1] < self.ttl_s:
                live.append(info)
        if not any(i.id == self.id for i in live):
            live.append(CollectorInfo(self.id, "", 0, 0, self.ttl_s, addresses=self.addresses))
        return live

    def _share_budgets(self, peers: list[CollectorInfo]) -> None:
        """Split each venue's budget in our scope equally among the live collectors there: a part
        shrinks at once, and grows only once the larger part has stood for ``cluster_grow_after``."""
        now = time.monotonic()
        for venue, budget in self.budgets.items():
            n = sum(1 for p in peers if p.addresses.get(venue) == self.addresses[venue])
            want = part_of(budget, self.own[venue], n)
            part = self.parts.setdefault(venue, _Part(want))
            applied = (min(want[0], part.applied[0]), min(want[1], part.applied[1]))  # shrinks at once
            if applied != want:  # grows once the larger part has stood
                if part.larger != want:
                    part.larger, part.since = want, now
                elif now - part.since >= self.grow_after_s:
                    applied = want
            if applied == want:
                part.larger = None
            if applied == part.applied:
                continue
            part.applied = applied
            log.info(
                "%s: our part of the budget of %s is %.3g of the REST pace and %.3g of the connection attempts"
                " (%d collectors there)",
                venue,
                self.addresses[venue],
                applied[0],
                applied[1],
                n,
            )
            if self.engine is not None:
                self.engine.set_share(venue, *applied)

    async def _history_ms(self, unit: Unit) -> int:
        """How far back the engine fetches the history of ``unit``: to a margin before the newest
        candle the cluster has of it (the window a dead collector left; of a failover pair, its
        logical series'; of several instruments, the furthest back), else ``history``."""
        return max([await self._history_of(name) for name in unit.instruments])

    async def _history_of(self, series: str) -> int:
        from nats.js.errors import NotFoundError

        tf = min(self.settings.timeframes, key=lambda t: timeframe(t).ms)
        subj = subjects.subject(self.cluster, subjects.CANDLES, series, tf)
        try:
            raw = await self.js.get_last_msg(subjects.stream_name(self.cluster), subj)
            last = subjects.decode_candle(raw.data)
        except (NotFoundError, ValueError):
            return self.settings.history_ms
        tf_ms = timeframe(tf).ms
        margin = max(10 * tf_ms, 60_000)
        return max(0, int(time.time() * 1000) - last.sent_ms) + tf_ms + margin

    async def _start(self, key: str) -> None:
        """Add the unit of ``key`` to the engine (its history first, then its stream); one the
        venue refuses is handed back and left be for :data:`COOLDOWN_S`."""
        unit = self.units[key]
        history_ms = await self._history_ms(unit)

        async def add() -> None:
            try:
                if unit.failover is not None:
                    await self.engine.add_failover(unit.name, unit.failover, history_ms=history_ms, books=self.books)
                else:
                    added = []
                    try:
                        for inst in unit.sources:
                            await self.engine.add_instrument(inst, history_ms=history_ms, book=str(inst) in self.books)
                            added.append(inst)
                    except Exception:  # all or none: those added already go again
                        for inst in added:
                            await self.engine.drop_instrument(inst)
                        raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the venue refuses or is away: hand the lease back, try later
                log.error("cannot collect %s: %s", unit.name, exc)
                self._cooling[key] = time.monotonic() + COOLDOWN_S
                self.held.pop(key, None)
                if self.leases is not None:
                    await self.leases.release(key)
                return
            if self.sink is not None:
                self.sink.attach_books(self.engine.books)  # its order books on the cluster's books subjects
            log.info("collecting %s (history from %.0f s back)", unit.name, history_ms / 1000)

        self.held[key] = _Held(asyncio.create_task(add(), name=f"add-{key}"))

    async def _stop(self, key: str) -> None:
        """Drop the unit of ``key`` from the engine (an addition under way is cancelled)."""
        held = self.held.pop(key, None)
        if held is None:
            return
        if not held.task.done() and held.task is not asyncio.current_task():
            await cancel_and_wait(held.task)
        unit = self.units[key]
        if self.sink is not None:
            for inst in unit.sources:
                self.sink.detach_book(str(inst))
        try:
            if unit.failover is not None:
                await self.engine.drop_failover(unit.name, unit.failover)
            else:
                for inst in unit.sources:
                    await self.engine.drop_instrument(inst)
        except Exception as exc:
            log.warning("dropping %s: %s", unit.name, exc)
        log.info("stopped collecting %s", unit.name)

    async def close(self) -> None:
        """Stop the engine, publish what waits, hand every lease back, leave."""
        await cancel_and_wait(*(h.task for h in self.held.values()))
        self.held.clear()
        if self.engine is not None:
            try:
                await self.engine.stop()
            except Exception as exc:
                log.warning("stopping the engine: %s", exc)
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
