"""A cluster's stream on the real NATS JetStream: ensure_stream makes it (and is idempotent), the
``Nats-Msg-Id`` of a candle message drops a repeat and passes a correction, and the per-subject
limit keeps each subject's newest messages replayable."""

from __future__ import annotations

import nats
import pytest

from conftest import NATS_URL
from deltafeed.cluster import subjects as s
from deltafeed.model import Candle

pytestmark = pytest.mark.asyncio


async def _replay(js: nats.js.JetStreamContext, subj: str) -> list[s.CandleMsg]:
    """Every message of ``subj`` the stream holds, oldest first (an ordered ephemeral consumer)."""
    sub = await js.subscribe(subj, ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                return out
            out.append(s.decode_candle(msg.data))
    finally:
        await sub.unsubscribe()


async def test_stream_dedups_repeats_and_keeps_corrections(nats_cluster: str) -> None:
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        await s.ensure_stream(js, nats_cluster, max_msgs_per_subject=5)
        info = await s.ensure_stream(js, nats_cluster, max_msgs_per_subject=5)  # twice: no error
        assert info.config.name == s.stream_name(nats_cluster)
        assert info.config.max_msgs_per_subject == 5
        series = "binance:BTC/USDT"
        subj = s.subject(nats_cluster, s.CANDLES, series, "1m")
        prov = Candle(60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 7, closed=True)
        final = Candle(60_000, 1.0, 2.0, 0.5, 1.5, 10.0, 7, closed=True, final=True)
        corrected = Candle(60_000, 1.0, 2.0, 0.5, 1.6, 11.0, 8, closed=True, final=True)
        acks = []
        for c, source in [(prov, "a"), (prov, "b"), (final, "a"), (final, "b"), (corrected, "a")]:
            data, headers = s.encode(s.candle_msg(series, "1m", c, source=source))
            acks.append(await js.publish(subj, data, headers=headers))
        assert [a.duplicate or False for a in acks] == [False, True, False, True, False]
        got = await _replay(js, subj)
        assert [m.candle for m in got] == [prov, final, corrected]
        # Per-subject limit: 8 more candles on this subject leave its newest 5; another subject is untouched.
        other = s.subject(nats_cluster, s.CANDLES, series, "5m")
        data, headers = s.encode(s.candle_msg(series, "5m", final))
        await js.publish(other, data, headers=headers)
        for i in range(8):
            c = Candle(120_000 + i * 60_000, 1.0, 1.0, 1.0, 1.0, 1.0, 1, closed=True, final=True)
            data, headers = s.encode(s.candle_msg(series, "1m", c))
            await js.publish(subj, data, headers=headers)
        assert [m.open_time for m in await _replay(js, subj)] == [120_000 + i * 60_000 for i in range(3, 8)]
        assert [m.tf for m in await _replay(js, other)] == ["5m"]
    finally:
        await nc.close()
