"""The Redis hot tier: a mirror of the engine's in-memory rings in Redis, so other processes and programs
in any language can read the newest candles of every series and subscribe to their updates.

Key layout (layout version 1; a public contract, also recorded in ``{prefix}:meta``)
------------------------------------------------------------------------------------
``{prefix}`` defaults to ``deltafeed``. Instruments are ``venue:SYMBOL`` (e.g. ``binance:BTCUSDT``: one
colon, no ``|``); timeframes are names such as ``1m`` (no colon, no ``|``).

``{prefix}:candles:{instrument}:{timeframe}`` - sorted set, one series
    e.g. ``deltafeed:candles:binance:BTCUSDT:1m``. Score = the candle's open_time (epoch ms, UTC);
    exactly one member per score. Member = compact JSON array
    ``[open_time,open,high,low,close,volume,trades,closed,final]`` (ints, floats, ``true``/``false``),
    e.g. ``[1700000040000,100.5,101.0,99.5,100.75,12.5,42,false,false]``. ``closed`` says the candle's
    interval is over, ``final`` that deltafeed vouches for it: the state is ``forming`` (not closed),
    ``provisional`` (closed, not final) or ``final``. Members written before ``final`` existed have 8
    fields and read as not final. The newest member is usually the forming candle, replaced in
    place as it changes; a provisional candle is replaced in place when it becomes final. At most
    ``capacity`` members are kept (the newest), none older than the timeframe's retention before the
    newest open_time, and the key expires after the retention if nothing is written (no expiry for
    timeframes kept forever).
    To split a key: strip ``{prefix}:candles:``; the timeframe is after the LAST colon, the
    instrument is everything before it. Read the newest N with ``ZRANGE key -N -1``, a span with
    ``ZRANGEBYSCORE key since until``.
``{prefix}:series`` - set of ``{instrument}|{timeframe}`` (split at the ``|``), for discovery.
    A member may outlive its expired key for a while; treat a missing key as an empty series.
``{prefix}:updates:{instrument}:{timeframe}`` - pub/sub channel; every member that is added or
    changed is PUBLISHed there, after it is stored, as the same JSON array. Pub/sub is at-most-once:
    a subscriber that (re)connects should SUBSCRIBE first, then read the sorted set, and upsert the
    messages by open_time.
``{prefix}:meta`` - hash: ``layout`` = ``1``, ``member`` = the field names of the JSON array.

Every write of a candle is one Lua script (remove the member at that score, add the new one, trim,
expire, register the series, publish), so a reader never sees a series with zero or two members for
an open_time, nor a publish of something not stored. Needs a single Redis (>= 5) or a primary: not
Redis Cluster, since one script touches the series key and ``{prefix}:series`` in different slots.

The engine keeps serving from memory; this tier is best effort and never stops it. ``put`` is
synchronous and O(1) (the engine's hot loop calls it); :meth:`RedisHot.run` writes what changed on the
next loop iteration. When Redis is unreachable the tier turns ``degraded``, drops what it had not
written (memory still holds it), probes every second and, once Redis answers, rewrites everything
memory holds (``refill``) before resuming.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable
from itertools import islice, starmap
from typing import Any

import msgspec
from msgspec.structs import replace as _copy
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from deltafeed.clock import LIVE, Clock
from deltafeed.model import BadInput, Candle
from deltafeed.model import timeframe as timeframe_of
from deltafeed.net.reconnect import Backoff, sleep_unless
from deltafeed.store.base import StoreError, StoreUnavailable, redact
from deltafeed.store.retention import DEFAULT_RETENTION_MS

log = logging.getLogger("deltafeed.redis")

#: Version of the key layout described above, stored in ``{prefix}:meta``.
LAYOUT_VERSION = 1
#: The fields of a member's JSON array, in order.
MEMBER_FIELDS = "open_time,open,high,low,close,volume,trades,closed,final"

# Upsert candles of one series. KEYS: series zset, series set. ARGV: capacity, retention ms (-1 =
# forever), series-set member, channel, then (open_time, member) pairs. A member equal to the one
# stored is skipped (no write, no publish), so rewriting a series that survived an outage publishes
# only what changed during it. Returns how many members changed and were kept.
_PUT_LUA = b"""
local key = KEYS[1]
local changed = {}
for i = 5, #ARGV, 2 do
  local t, m = ARGV[i], ARGV[i + 1]
  local old = redis.call('ZRANGEBYSCORE', key, t, t)
  if #old ~= 1 or old[1] ~= m then
    if #old > 0 then redis.call('ZREMRANGEBYSCORE', key, t, t) end
    redis.call('ZADD', key, t, m)
    changed[#changed + 1] = m
  end
end
redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(ARGV[1]) - 1)
local ret = tonumber(ARGV[2])
if ret >= 0 then
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%d', tonumber(newest[2]) - ret))
  redis.call('PEXPIRE', key, ret)
else
  redis.call('PERSIST', key)
end
redis.call('SADD', KEYS[2], ARGV[3])
local kept = 0
for _, m in ipairs(changed) do
  if redis.call('ZSCORE', key, m) then
    redis.call('PUBLISH', ARGV[4], m)
    kept = kept + 1
  end
end
return kept
"""

# Drop the members of one series older than a cutoff, and forget the series once its key is gone.
# KEYS: series zset, series set. ARGV: cutoff (exclusive), series-set member. Returns how many went.
_TRIM_LUA = b"""
local n = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return n
"""

_SCRIPTS = {"put": _PUT_LUA, "trim": _TRIM_LUA}
_SHA = {name: hashlib.sha1(body).hexdigest() for name, body in _SCRIPTS.items()}

_encode = msgspec.json.Encoder().encode
_decode_rows = msgspec.json.Decoder(list[tuple[int, float, float, float, float, float, int, bool, bool]]).decode


class _AnyMember(msgspec.Struct, array_like=True, gc=False):
    """A member of either width: the current 9 fields, or the 8 written before ``final`` existed."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    closed: bool
    final: bool = False


_decode_any = msgspec.json.Decoder(list[_AnyMember]).decode

Refill = Callable[[], Iterable[tuple[str, str, list[Candle]]]]
_Call = tuple[str, list[Any]]  # (script name, [numkeys, keys..., args...]) for one EVALSHA


def _member(c: Candle) -> bytes:
    return _encode((c.open_time, c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed, c.final))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RedisHot:
    """The hot tier mirrored into Redis (see the module docstring for the key layout).

    One instance per process and event loop. A writer (the engine) calls :meth:`open`, runs
    :meth:`run` as a task, calls :meth:`put` for every candle change and :meth:`close` at the end; a
    reader (``deltafeed candles``, another process) only opens, reads and closes. Reads raise
    :class:`StoreUnavailable` when Redis cannot be reached. ``degraded`` tells whether this writer's
    mirror is known to be incomplete (Redis down, or back but not yet refilled): a reader in the same
    process that needs the whole truth should then read memory instead.
    """

    #: Seconds to wait for a TCP connection before calling Redis unreachable.
    CONNECT_TIMEOUT = 0.5
    #: Seconds to wait for any reply (a hung server is noticed after this long).
    TIMEOUT = 2.0
    #: Seconds between probes while degraded (doubling up to ``MAX_PROBE_INTERVAL`` while Redis
    #: answers but rejects the writes, e.g. out of memory or read-only).
    PROBE_INTERVAL = 1.0
    MAX_PROBE_INTERVAL = 30.0
    #: Candles per pipeline: bounds one round trip's size when much is dirty (warming) or refilled.
    FLUSH_MAX = 10_000
    #: Seconds :meth:`close` spends at most on the final flush.
    CLOSE_TIMEOUT = 2.0

    def __init__(
        self,
        url: str,
        *,
        capacity: int = 1000,
        retention: dict[str, int | None] | None = None,
        prefix: str = "deltafeed",
        refill: Refill | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.name = redact(url)
        self.clock: Clock = clock or LIVE
        if capacity < 1:
            raise BadInput(f"Redis hot tier capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.retention: dict[str, int | None] = dict(DEFAULT_RETENTION_MS if retention is None else retention)
        for tf, ms in self.retention.items():
            if ms is not None and ms < 1:
                raise BadInput(f"retention for {tf} must be a positive duration or forever, got {ms} ms")
        self.prefix = prefix
        self._refill = refill
        try:
            # No retries inside redis-py: a failed command must surface at once so the tier degrades
            # and probes on its own schedule instead of stalling the flusher for seconds.
            self._client: Redis = Redis.from_url(
                url,
                socket_timeout=self.TIMEOUT,
                socket_connect_timeout=self.CONNECT_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                decode_responses=False,
            )
        except ValueError as exc:
            raise BadInput(
                f"cannot use Redis URL {self.name!r} ({exc}); write it like redis://127.0.0.1:6379/0"
                " (or rediss://HOST:PORT/DB, unix:///path/redis.sock)"
            ) from None
        self._series_key = f"{prefix}:series"
        self._meta_key = f"{prefix}:meta"
        self._names: dict[tuple[str, str], tuple[str, str, str, int]] = {}

        #: Why the mirror is incomplete (Redis unreachable, a write refused), or None when in sync.
        self.degraded: str | None = None
        #: ``self.clock.monotonic()`` when the tier became degraded, or None.
        self.down_since: float | None = None
        #: Candles written to Redis (flushes and refills).
        self.written = 0
        #: Failed attempts to write (a flush, a refill, the first connection at open).
        self.failures = 0
        #: Completed rewrites of memory's whole contents (at open and after each outage).
        self.refills = 0

        self._dirty: dict[tuple[str, str, int], Candle] = {}
        self._inflight = 0
        self._accepting = True  # False while degraded: the refill will bring memory's contents anyway
        self._need_sync = True
        self._meta_written = False
        # The reconnect policy without jitter: the probe interval is a promise made in the log line
        # ("retrying every 1 s"); only a Redis that answers but rejects doubles it (from 2 s).
        self._probe = Backoff(self.PROBE_INTERVAL, self.MAX_PROBE_INTERVAL, jitter=False, clock=self.clock)
        self._probe_delay = self.PROBE_INTERVAL
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- writing ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Candles not yet in Redis: waiting for the next flush or in the one under way (so 0 means
        everything put so far is written, unless dropped by an outage)."""
        return len(self._dirty) + self._inflight

    def put(self, instrument: str, timeframe: str, candle: Candle) -> None:
        """Queue a copy of ``candle`` for Redis; repeated updates of one candle before the next flush
        collapse into the latest. Never blocks, never raises; dropped while degraded (the refill after
        the outage rewrites everything memory holds)."""
        if self._accepting:
            self._dirty[(instrument, timeframe, candle.open_time)] = _copy(candle)
            self._wake.set()

    async def open(self, *, warn: bool = True) -> None:
        """Connect, load the scripts and (for a writer) rewrite what memory holds.

        An unreachable server is not fatal: the tier starts degraded and :meth:`run` keeps probing.
        ``warn=False`` leaves reporting that (``degraded``) to the caller, e.g. a one-off reader.
        """
        if not await self._sync() and warn:
            log.warning(
                "Redis hot tier %s unreachable (%s); serving from memory, retrying every %.0f s",
                self.name,
                self.degraded,
                self.PROBE_INTERVAL,
            )

    async def run(self) -> None:
        """Write dirty candles as soon as there are any, and recover from outages; run it as a task."""
        self._task = asyncio.current_task()
        try:
            while not self._closed:
                if self._need_sync:
                    if not await self._sync():
                        await self._sleep(self._probe_delay)
                    continue
                await self._wake.wait()
                self._wake.clear()
                if self._dirty and not self._closed:
                    await self._flush()
        finally:
            self._task = None

    async def _sleep(self, seconds: float) -> None:
        await sleep_unless(self.clock, seconds, self._stop)

    async def _flush(self) -> bool:
        """Write (up to ``FLUSH_MAX`` of) the dirty candles in one pipeline; False if that failed."""
        if len(self._dirty) <= self.FLUSH_MAX:
            batch, self._dirty = self._dirty, {}
        else:
            batch = dict(islice(self._dirty.items(), self.FLUSH_MAX))
            for k in batch:
                del self._dirty[k]
            self._wake.set()  # the rest on the next iteration
        calls: list[_Call] = []
        for (instrument, timeframe, t), c in batch.items():
            key, series, channel, ret = self._series_names(instrument, timeframe)
            calls.append(("put", [2, key, self._series_key, self.capacity, ret, series, channel, t, _member(c)]))
        self._inflight = len(calls)
        try:
            await self._evalsha(calls, write=True)
        except asyncio.CancelledError:
            for k, c in batch.items():  # keep them for close(), unless a newer version came meanwhile
                self._dirty.setdefault(k, c)
            raise
        except Exception as exc:  # every failure means the same: degrade, refill later
            await self._fail(exc)
            return False
        finally:
            self._inflight = 0
        self.written += len(calls)
        return True

    async def _sync(self) -> bool:
        """Probe Redis and, when it answers, rewrite what memory holds; True when in sync again."""
        try:
            await self._client.ping()
            await self._load_scripts()
        except Exception as exc:
            await self._fail(exc)
            return False
        self._accepting = True  # from here on new changes queue up; the refill covers everything before
        n = 0
        if self._refill is not None:
            try:
                n = await self._write_refill(self._refill())
            except Exception as exc:
                await self._fail(exc, answered=True)
                return False
            self.refills += 1
        if self.down_since is not None:
            log.warning(
                "Redis hot tier %s is back after %.1f s; rewrote %d candles from memory",
                self.name,
                self.clock.monotonic() - self.down_since,
                n,
            )
        self._need_sync = False
        self.degraded = None
        self.down_since = None
        self._probe.reset()
        self._probe_delay = self.PROBE_INTERVAL
        if self._dirty:
            self._wake.set()
        return True

    async def _write_refill(self, contents: Iterable[tuple[str, str, list[Candle]]]) -> int:
        """Upsert every series ``contents`` yields (one script call per series), in pipelines of
        about ``FLUSH_MAX`` candles. ``contents`` is consumed lazily, chunk by chunk."""
        total = 0
        calls: list[_Call] = []
        size = 0
        for instrument, timeframe, candles in contents:
            if not candles:
                continue
            key, series, channel, ret = self._series_names(instrument, timeframe)
            args: list[Any] = [2, key, self._series_key, self.capacity, ret, series, channel]
            for c in candles:
                args += (c.open_time, _member(c))
            calls.append(("put", args))
            size += len(candles)
            if size >= self.FLUSH_MAX:
                await self._evalsha(calls, write=True)
                total += size
                self.written += size
                calls, size = [], 0
        await self._evalsha(calls, write=True)
        self.written += size
        return total + size

    async def _fail(self, exc: BaseException, *, answered: bool = False) -> None:
        """Enter (or stay in) the degraded state after ``exc``; ``answered`` says Redis did reply, so
        the next probe backs off instead of rewriting everything every second."""
        reason = _reason(exc)
        if not isinstance(exc, RedisError | OSError):
            log.error("Redis hot tier %s: unexpected error, degrading", self.name, exc_info=exc)
        if self.degraded is None:
            self.down_since = self.clock.monotonic()
            if not self._need_sync:  # open() reports its own first failure
                log.warning(
                    "Redis hot tier %s unavailable (%s); serving from memory, retrying every %.0f s",
                    self.name,
                    reason,
                    self.PROBE_INTERVAL,
                )
        if self.degraded is None or answered:  # a probe failing during an outage is no news
            self.failures += 1
        self.degraded = reason
        self._dirty.clear()
        self._accepting = False
        self._need_sync = True
        self._meta_written = False
        if answered:
            self._probe_delay = self._probe.failed()
        else:
            self._probe.reset()
            self._probe_delay = self.PROBE_INTERVAL
        with contextlib.suppress(Exception):  # drop every pooled connection: after a restart all are dead
            await self._client.connection_pool.disconnect()

    @staticmethod
    def _is_outage(exc: BaseException) -> bool:
        return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)

    async def _load_scripts(self) -> None:
        for name, body in _SCRIPTS.items():
            sha = await self._client.script_load(body)
            if sha != _SHA[name]:  # pragma: no cover - Redis hashes scripts with SHA1 too
                raise StoreError(f"Redis returned script hash {sha} for {name}, expected {_SHA[name]}")

    async def _evalsha(self, calls: list[_Call], *, write: bool = False) -> list[Any]:
        """Run script calls in one pipeline and return their results; raises the first error. A
        NOSCRIPT (the server restarted or its script cache was flushed) reloads and retries once;
        the scripts are idempotent, so repeating the ones that did succeed changes nothing."""
        if not calls:
            return []
        for attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            meta = write and not self._meta_written
            if meta:
                pipe.hset(self._meta_key, mapping={"layout": LAYOUT_VERSION, "member": MEMBER_FIELDS})
            for name, args in calls:
                pipe.evalsha(_SHA[name], *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            errors = [r for r in results if isinstance(r, Exception)]
            if not errors:
                if meta:
                    self._meta_written = True
                    results = results[1:]
                return results
            if attempt == 0 and all(isinstance(e, NoScriptError) for e in errors):
                await self._load_scripts()
                continue
            raise errors[0]
        raise AssertionError("unreachable")  # pragma: no cover

    def _series_names(self, instrument: str, timeframe: str) -> tuple[str, str, str, int]:
        """(zset key, series-set member, channel, retention argument) of one series, cached."""
        names = self._names.get((instrument, timeframe))
        if names is None:
            ret = self.retention.get(timeframe)
            names = self._names[(instrument, timeframe)] = (
                f"{self.prefix}:candles:{instrument}:{timeframe}",
                f"{instrument}|{timeframe}",
                f"{self.prefix}:updates:{instrument}:{timeframe}",
                -1 if ret is None else ret,
            )
        return names

    # -- reading ------------------------------------------------------------------------------

    def _store_error(self, what: str, exc: BaseException) -> StoreError:
        if self._is_outage(exc):
            return StoreUnavailable(f"Redis {self.name} unreachable while {what}: {_reason(exc)}")
        return StoreError(f"Redis {self.name} failed while {what}: {_reason(exc)}")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"Redis hot tier {self.name} is closed")

    def _candles(self, members: list[Any], key: str) -> list[Candle]:
        """Decode members in one pass: join them into one JSON array for a typed msgspec decoder, then
        build the Candles (~0.22 ms for 1000, a fifth less than decoding each member apart)."""
        if not members:
            return []
        joined = b"[" + b",".join(members) + b"]"
        try:
            return list(starmap(Candle, _decode_rows(joined)))
        except msgspec.DecodeError:
            pass
        try:  # members of the previous width (8 fields, no ``final``) among them: the slower way
            return [
                Candle(m.open_time, m.open, m.high, m.low, m.close, m.volume, m.trades, m.closed, m.final)
                for m in _decode_any(joined)
            ]
        except msgspec.DecodeError as exc:
            raise StoreError(f"Redis {self.name}: key {key} holds a member that is not a candle ({exc})") from None

    async def last(self, instrument: str, timeframe: str, n: int) -> list[Candle]:
        """The newest ``n`` candles of a series (fewer if it holds fewer), oldest first."""
        self._check_open()
        if n <= 0:
            return []
        key = self._series_names(instrument, timeframe)[0]
        try:
            members: list[Any] = await self._client.zrange(key, -n, -1)
        except Exception as exc:
            raise self._store_error(f"reading {key}", exc) from None
        return self._candles(members, key)

    async def range(self, instrument: str, timeframe: str, since_ms: int, until_ms: int) -> list[Candle] | None:
        """Candles with ``since_ms <= open_time <= until_ms``, oldest first, or None when the series does
        not reach back to ``since_ms`` (the same rule as :meth:`HotStore.range`: the oldest stored
        candle lies after the first timeframe boundary at or after ``since_ms``)."""
        self._check_open()
        key = self._series_names(instrument, timeframe)[0]
        try:
            pipe = self._client.pipeline(transaction=True)  # one snapshot: no trim between the two
            pipe.zrange(key, 0, 0, withscores=True)
            pipe.zrangebyscore(key, since_ms, until_ms)
            oldest, members = await pipe.execute()
        except Exception as exc:
            raise self._store_error(f"reading {key}", exc) from None
        if not oldest:
            return None
        first_needed = _first_boundary(timeframe, since_ms)
        if oldest[0][1] > first_needed:
            return None
        if until_ms < since_ms:
            return []
        return self._candles(members, key)

    async def series(self) -> list[tuple[str, str]]:
        """Every (instrument, timeframe) registered in ``{prefix}:series``, sorted."""
        self._check_open()
        try:
            members: set[Any] = await self._client.smembers(self._series_key)
        except Exception as exc:
            raise self._store_error(f"reading {self._series_key}", exc) from None
        out = []
        for m in members:
            instrument, sep, timeframe = m.decode().rpartition("|")
            if sep:
                out.append((instrument, timeframe))
        return sorted(out)

    async def apply_retention(self, now_ms: int) -> int:
        """Drop every candle older than its timeframe's retention before ``now_ms`` (the venue's
        clock) in every registered series; returns how many went. Raises StoreError when Redis fails."""
        calls: list[_Call] = []
        for instrument, timeframe in await self.series():
            ret = self.retention.get(timeframe)
            if ret is not None:
                key, series, _, _ = self._series_names(instrument, timeframe)
                calls.append(("trim", [2, key, self._series_key, now_ms - ret, series]))
        try:
            return sum(await self._evalsha(calls))
        except Exception as exc:
            raise self._store_error("applying retention", exc) from None

    async def close(self) -> None:
        """Stop :meth:`run`, write what is dirty if Redis is reachable (at most ``CLOSE_TIMEOUT``), and
        close the connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        task = self._task
        if task is not None and task is not asyncio.current_task():
            _, pending = await asyncio.wait({task}, timeout=self.CLOSE_TIMEOUT)
            if pending:
                task.cancel()
                await asyncio.wait({task})
        if self._dirty and not self._need_sync:
            try:
                async with asyncio.timeout(self.CLOSE_TIMEOUT):
                    while self._dirty and await self._flush():
                        pass
            except TimeoutError:
                log.warning("Redis hot tier %s: %d candles not written at close", self.name, len(self._dirty))
        self._accepting = False
        self._dirty.clear()
        with contextlib.suppress(Exception):  # a dead connection may fail to close; nothing to do
            await self._client.aclose()


def _first_boundary(timeframe: str, since_ms: int) -> int:
    """The first candle open time at or after ``since_ms`` (``since_ms`` itself for an unknown name)."""
    try:
        return timeframe_of(timeframe).ceil(since_ms)
    except BadInput:
        return since_ms
