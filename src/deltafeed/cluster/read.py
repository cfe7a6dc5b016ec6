"""Reading a cluster's stream as a hot tier, for ``deltafeed candles --cluster``: which series it
holds, and one series' candles (the latest version of each, a final one replaced only by a final
one), replayed from the stream in publication order."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from deltafeed.cluster import subjects
from deltafeed.model import Candle

log = logging.getLogger("deltafeed.cluster.read")

#: How long a replay waits for its next message before it gives up, in seconds.
NEXT_TIMEOUT_S = 5.0


async def _subject_counts(js: Any, cluster: str, filter_: str) -> dict[str, int]:
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(subjects.stream_name(cluster), subjects_filter=filter_)
    except NotFoundError:
        return {}
    return dict(info.state.subjects or {})


async def stream_series(js: Any, cluster: str) -> list[tuple[str, str, int]]:
    """(series, timeframe, messages) of every candle subject the cluster's stream holds, sorted."""
    out = []
    for subj, n in (await _subject_counts(js, cluster, subjects.filter_subject(cluster, subjects.CANDLES))).items():
        with contextlib.suppress(ValueError):
            _, _, series, tf = subjects.parse_subject(subj)
            if tf is not None:
                out.append((series, tf, n))
    return sorted(out)


async def read_series(js: Any, cluster: str, series: str, tf: str) -> tuple[list[Candle], int]:
    """The candles of one series held in the stream, oldest first, and how many messages could not
    be read (counted and skipped)."""
    from nats.js.api import DeliverPolicy

    subj = subjects.subject(cluster, subjects.CANDLES, series, tf)
    if not (await _subject_counts(js, cluster, subj)).get(subj):
        return [], 0
    latest: dict[int, subjects.CandleMsg] = {}
    bad = 0
    sub = await js.subscribe(subj, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=NEXT_TIMEOUT_S)
            except TimeoutError:
                log.warning("the replay of %s stopped: no message for %g s", subj, NEXT_TIMEOUT_S)
                break
            try:
                m = subjects.decode_candle(msg.data)
            except ValueError as exc:
                bad += 1
                log.warning("skipped a message on %s: %s", subj, exc)
            else:
                if subjects.newer(latest.get(m.open_time), m):
                    latest[m.open_time] = m
            if msg.metadata.num_pending == 0:
                break
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return [latest[t].candle for t in sorted(latest)], bad
