"""The engine's status as typed structs, one schema for every reader (``GET /streaming/status``,
the Prometheus metrics, the status file, ``deltafeed status``), and the health check.

Field names and order are the JSON keys the status has always had: the structs encode to the same
document the engine built as a dict before.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import msgspec

from deltafeed.model import Switch, timeframe
from deltafeed.venues.base import FeedStatus

if TYPE_CHECKING:
    from deltafeed.engine.core import Engine

__all__ = [
    "EngineStatus",
    "FailoverStatus",
    "FeedStatus",
    "HotStatus",
    "SeriesStatus",
    "StatusFile",
    "SwitchDoc",
    "engine_status",
    "health",
    "readiness",
    "switch_doc",
]


class SwitchDoc(msgspec.Struct, omit_defaults=True):
    """A failover switch with each timeframe's spanning candle; ``silent_s`` only in the status."""

    since_ms: int
    at_ms: int
    source_from: str = msgspec.field(name="from")
    source_to: str = msgspec.field(name="to")
    spanning: dict[str, int] = msgspec.field(default_factory=dict)
    silent_s: float | None = None


class FailoverStatus(msgspec.Struct):
    """One logical series: which source it follows and its recent switches."""

    active: str
    primary: str
    standby: str
    on_standby: bool
    switches: int
    history: list[SwitchDoc]  # the latest 20


class HotStatus(msgspec.Struct):
    """The Redis hot tier (absent without ``--hot``)."""

    name: str
    degraded: str | None  # why it is unreachable, None while it works
    written: int
    failures: int
    refills: int
    pending: int


class TickStatus(msgspec.Struct):
    """The raw tick recorder (absent with ``ticks = false`` or a cold tier without tick tables)."""

    written: int  # ticks written to the cold tier
    pending: int  # ticks in memory, not yet written
    dropped: int  # ticks dropped because the store failed for longer than memory could hold them
    gaps: int  # spans recorded as missing (a lost id, a reconnect, a store outage)
    up: bool  # False while the last tick write failed


class SeriesStatus(msgspec.Struct):
    """One series' counters."""

    streaming: bool
    venue: str
    price: str
    connected: bool
    messages_per_s: float
    trades: int
    last_trade_ms: int
    last_message_age_s: float | None
    duplicates: int
    gaps: int
    missed_trades: int
    late_trades: int
    held: int
    bootstrapped: int
    repaired: int
    provisional: int
    vouched_late: int
    suspect_trades: int
    reconciled: int
    corrected: int
    unconfirmed: int


class BookStatus(msgspec.Struct, omit_defaults=True):
    """One kept order book: best bid and ask and the spread (only while in sync), and how well it keeps
    up: our ``sequence``, the venue's key, snapshots and deltas applied, resyncs per kind and the
    time spent out of sync (in all, and the longest recent period)."""

    in_sync: bool
    sequence: int
    venue_seq: int | None
    snapshots: int
    deltas: int
    resyncs: dict[str, int]
    out_of_sync_s: float
    longest_out_of_sync_s: float
    best_bid: float | None = None
    best_ask: float | None = None
    spread: float | None = None


class EngineStatus(msgspec.Struct):
    """A snapshot of the engine's counters. The venue counters (``connections`` to
    ``rest_limiter_waits``, ``skipped_frames``) are the sums over ``venues``."""

    venue_time_ms: int
    connected: bool
    connections: int
    connects: int
    reconnects: int
    rotations: int
    stale_drops: int
    connect_budget_waits: int
    frames: int
    rest_requests: int
    rest_throttled: int
    rest_server_errors: int
    rest_limiter_waits: int
    skipped_frames: dict[str, int]
    venues: dict[str, FeedStatus]
    store_pending: int
    store_written: int
    store_failures: int
    store_dropped: int
    store: str
    store_spooled: int
    store_spool_pending: int
    store_replayed: int
    store_up: bool
    hot_up: bool | None
    hot_written: int | None
    hot_failures: int | None
    hot_refills: int | None
    hot: HotStatus | None
    ticks: TickStatus | None
    pending_repairs: int
    repairs_merged: int  # reported losses that widened a waiting repair instead of queueing one
    provisional: int
    reconciled: int
    corrected: int
    audits: int
    audit_gaps: int
    quiet_holes: int
    healthy: bool
    failover: dict[str, FailoverStatus]
    instruments: dict[str, SeriesStatus]
    #: The kept order books (``books`` setting), by instrument.
    books: dict[str, BookStatus]


class StatusFile(EngineStatus):
    """What the status file holds: the status and the recovery times (hole found -> repaired)."""

    recovery_s: list[float]


def switch_doc(w: Switch, timeframes: list[str], silent_s: float | None = None) -> SwitchDoc:
    """A switch as the status and the API show it, with each timeframe's spanning candle."""
    spanning = {tf: w.spanning(timeframe(tf)) for tf in timeframes}
    return SwitchDoc(w.since_ms, w.at_ms, w.source_from, w.source_to, spanning, silent_s)


def engine_status(e: Engine) -> EngineStatus:
    """The status of ``e`` now."""
    mono = e.clock.monotonic()
    venues = {venue: feed.report() for venue, feed in e.feeds.items()}

    def total(key: str) -> int:
        return sum(int(getattr(v, key)) for v in venues.values())

    skipped: Counter[str] = Counter()
    for v in venues.values():
        skipped.update(v.skipped_frames)
    redis = e.redis
    states = e.states
    return EngineStatus(
        venue_time_ms=e.now_ms(),
        connected=all(feed.connected() for feed in e.feeds.values()),
        connections=total("connections"),
        connects=total("connects"),
        reconnects=total("reconnects"),
        rotations=total("rotations"),
        stale_drops=total("stale_drops"),
        connect_budget_waits=total("connect_budget_waits"),
        frames=total("frames"),
        rest_requests=total("rest_requests"),
        rest_throttled=total("rest_throttled"),
        rest_server_errors=total("rest_server_errors"),
        rest_limiter_waits=total("rest_limiter_waits"),
        skipped_frames=dict(skipped),
        venues=venues,
        store_pending=e.writer.pending,
        store_written=e.writer.written,
        store_failures=e.writer.failures,
        store_dropped=e.store_dropped,
        store=e.cold.name,
        store_spooled=e.writer.spooled,
        store_spool_pending=e.writer.spooled_pending,
        store_replayed=e.writer.replayed,
        store_up=e.writer.store_error is None,
        hot_up=None if redis is None else redis.degraded is None,
        hot_written=None if redis is None else redis.written,
        hot_failures=None if redis is None else redis.failures,
        hot_refills=None if redis is None else redis.refills,
        hot=None
        if redis is None
        else HotStatus(redis.name, redis.degraded, redis.written, redis.failures, redis.refills, redis.pending),
        ticks=None
        if e.ticks is None
        else TickStatus(e.ticks.written, e.ticks.pending, e.ticks.dropped, e.ticks.gaps, e.ticks.last_error is None),
        pending_repairs=e.completeness.pending,
        repairs_merged=e.completeness.merged,
        provisional=sum(len(p) for st in states.values() for p in st.provisional.values()),
        reconciled=sum(st.reconciled for st in states.values()),
        corrected=sum(st.corrected for st in states.values()),
        audits=e.completeness.audits,
        audit_gaps=e.completeness.audit_gaps,
        quiet_holes=e.completeness.quiet_holes,
        healthy=not health(e),
        failover={
            f.key: FailoverStatus(
                active=f.sources[f.active],
                primary=f.sources[0],
                standby=f.sources[1],
                on_standby=f.active == 1,
                switches=len(f.switches),
                history=[
                    switch_doc(w, e.timeframes, silent)
                    for w, silent in list(zip(f.switches, f.silent_s, strict=True))[-20:]
                ],
            )
            for f in e.failover.pairs.values()
        },
        books={k: msgspec.convert(b.status(), BookStatus) for k, b in e.books.keepers.items()},
        instruments={
            k: SeriesStatus(
                streaming=st.active,
                venue=st.instrument.venue,
                price=st.price,
                connected=st.active and st.feed.connected(),
                messages_per_s=round(st.messages_per_s, 2),
                trades=st.trades,
                last_trade_ms=st.last_trade_ms,
                last_message_age_s=round(mono - st.last_message, 3) if st.last_message else None,
                duplicates=st.builder.duplicates,
                gaps=st.builder.gaps,
                missed_trades=st.builder.missed_trades,
                late_trades=st.builder.late_trades,
                held=st.builder.held,
                bootstrapped=st.bootstrapped,
                repaired=st.repaired,
                provisional=sum(len(p) for p in st.provisional.values()),
                vouched_late=st.builder.vouched_late,
                suspect_trades=st.builder.suspect_trades,
                reconciled=st.reconciled,
                corrected=st.corrected,
                unconfirmed=st.unconfirmed,
            )
            for k, st in states.items()
        },
    )


def health(e: Engine) -> list[str]:
    """Reasons the collector ``e`` is not healthy; empty when it is."""
    reasons = [f"{venue} disconnected" for venue, feed in e.feeds.items() if not feed.connected()]
    writer, spool, boot = e.writer, e.spool, e.bootstrap
    if boot.waiting_for is not None:
        # Why, unless the store's own reason below says it already.
        why = f" ({boot.wait_error})" if writer.store_error is None else ""
        reasons.append(
            f"start-up waits for the cold store {e.cold.name} to {boot.waiting_for}{why}; streaming"
            " starts once it works again"
        )
    # The store's failures and the spool's apart, each naming its own file.
    if writer.store_error is not None:
        spooled = writer.spooled_pending
        where = (
            f"; {spooled} candles spooled at {spool.path}, replayed when it is back"
            if spooled and spool is not None
            else ""
        )
        reasons.append(f"cold store {e.cold.name} failing: {writer.store_error}{where}")
    if writer.spool_error is not None and spool is not None:
        reasons.append(f"spool {spool.path} failing: {writer.spool_error}; {writer.in_memory} candles wait in memory")
    if e.redis is not None and e.redis.degraded is not None:
        reasons.append(
            f"hot tier {e.redis.name} unreachable ({e.redis.degraded}); serving from memory,"
            " Redis is re-filled when it is back"
        )
    if e.store_dropped:
        reasons.append(f"store backlog full: {e.store_dropped} candle updates not queued")
    limit = e.settings.seconds("unhealthy_after")
    mono = e.clock.monotonic()
    for key, st in e.states.items():
        now = st.feed.clock.now_ms()
        silent = mono - (st.last_message or e.started)
        if st.active and silent > limit and st.calendar.is_open(now):
            reasons.append(f"{key} stale: no data for {silent:.0f} s while its market is open")
    return reasons


def readiness(e: Engine) -> list[str]:
    """Reasons the collector ``e`` is not ready (``GET /readyz`` answers 503 with them): history
    not bootstrapped yet, a venue not connected, or the cold store not taking writes. Narrower than
    :func:`health`: a quiet instrument or a full backlog makes the collector unhealthy, yet what it
    serves is still worth serving."""
    reasons: list[str] = []
    if e.streaming_since is None:
        waiting = e.bootstrap.waiting_for
        reasons.append(
            "starting: bootstrapping history"
            + (f" (waiting for the cold store {e.cold.name} to {waiting})" if waiting is not None else "")
        )
    else:
        reasons += [f"{venue} disconnected" for venue, feed in e.feeds.items() if not feed.connected()]
    if e.writer.store_error is not None:
        reasons.append(f"cold store {e.cold.name} not writable: {e.writer.store_error}")
    return reasons
