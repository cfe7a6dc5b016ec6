"""A failover pair in a cluster, on the real JetStream: leased as one unit (its logical series and
both sources on one collector's engine), switched to the standby when the primary falls silent (the
switch published), and taken over whole by another collector when its holder leaves. The logical
series on the stream has no hole, and every final candle of it is the true candle of one of its
sources (computed from the replica's tape)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import nats
import pytest

from conftest import NATS_URL
from deltafeed.cluster import subjects
from deltafeed.cluster.collector import Collector, units
from deltafeed.cluster.read import read_series
from deltafeed.config import FailoverSettings, Settings
from deltafeed.model import BadInput
from deltafeed.venues.binance.replica import BinanceReplica
from helpers import until
from reference import candles_from_tape, read_tape

M = 60_000


def _settings(replica: BinanceReplica, cluster: str) -> Settings:
    return Settings(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        timeframes=["1m"],
        history="10m",
        rest_url=replica.url,
        ws_url=replica.ws_url,
        failover={"x:LOGICAL": FailoverSettings(primary="BTCUSDT", standby="ETHUSDT")},
        failover_after="1s",
        cluster=NATS_URL,
        cluster_name=cluster,
    ).validate()


def test_a_failover_pair_is_one_leased_unit() -> None:
    s = Settings(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        failover={"x:LOGICAL": FailoverSettings(primary="BTCUSDT", standby="ETHUSDT")},
    ).validate()
    got = {k: (u.name, [str(i) for i in u.sources]) for k, u in units(s).items()}
    assert got == {
        "x.LOGICAL": ("x:LOGICAL", ["binance:BTCUSDT", "binance:ETHUSDT"]),
        "binance.SOLUSDT": ("binance:SOLUSDT", ["binance:SOLUSDT"]),
    }
    two = Settings(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
        failover={
            "x:A": FailoverSettings(primary="BTCUSDT", standby="ETHUSDT"),
            "x:B": FailoverSettings(primary="SOLUSDT", standby="ETHUSDT"),
        },
    ).validate()
    with pytest.raises(BadInput, match="binance:ETHUSDT is a source of failovers x:A and x:B"):
        units(two)
    # A source on a venue streaming on one connection per account (Alpaca: its instruments are one
    # unit) would open a second connection in another collector: refused, naming what to do.
    alpaca = Settings(
        symbols=["binance:BTCUSDT", "alpaca:AAPL", "alpaca:MSFT"],
        failover={"x:A": FailoverSettings(primary="binance:BTCUSDT", standby="alpaca:AAPL")},
    ).validate()
    with pytest.raises(BadInput, match="x:A: with --cluster a pair cannot have a source on alpaca"):
        units(alpaca)


@pytest.mark.slow  # over 10 s: not in the everyday subset
async def test_a_failover_pair_switches_and_moves_whole(tmp_path: Path, nats_cluster: str) -> None:
    tape = tmp_path / "tape.csv"
    async with BinanceReplica(
        symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], seed=5, rate=3.0, speed=30.0, history_ms=20 * M, tape=str(tape)
    ) as replica:
        a = Collector(_settings(replica, nats_cluster), NATS_URL, nats_cluster, ttl_s=2.0)
        b = Collector(_settings(replica, nats_cluster), NATS_URL, nats_cluster, ttl_s=2.0)
        stop_a, stop_b = asyncio.Event(), asyncio.Event()
        runs: list[asyncio.Task[None]] = []
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        try:
            await a.start()
            runs.append(asyncio.create_task(a.run(stop_a)))
            await until(lambda: set(a.held) == {"x.LOGICAL", "binance.SOLUSDT"}, 45.0, "a holding both units")
            await until(lambda: "x:LOGICAL" in a.engine.failovers, 45.0, "the pair streaming")
            assert {"binance:BTCUSDT", "binance:ETHUSDT", "binance:SOLUSDT"} <= set(a.engine.states)
            await asyncio.sleep(3.0)  # 1.5 market minutes
            # The primary falls silent: the logical series continues from the standby, and says so.
            await a.engine.stop_streaming(["binance:BTCUSDT"])
            await until(lambda: a.engine.failovers["x:LOGICAL"].active == 1, 45.0, "the switch")
            await asyncio.sleep(3.0)
            subj = subjects.subject(nats_cluster, subjects.SWITCHES, "x:LOGICAL")
            sw = subjects.decode_switch((await js.get_last_msg(subjects.stream_name(nats_cluster), subj)).data)
            assert (sw.switch.source_from, sw.switch.source_to, sw.source) == (
                "binance:BTCUSDT",
                "binance:ETHUSDT",
                a.id,
            )
            # b joins and a leaves: b takes the pair over whole (both sources, one lease).
            await b.start()
            runs.append(asyncio.create_task(b.run(stop_b)))
            await asyncio.sleep(1.0)
            stop_a.set()
            await runs[0]
            await until(lambda: set(b.held) == {"x.LOGICAL", "binance.SOLUSDT"}, 45.0, "b holding both units")
            await until(lambda: "x:LOGICAL" in b.engine.failovers, 45.0, "the pair streaming on b")
            assert {"binance:BTCUSDT", "binance:ETHUSDT"} <= set(b.engine.states)
            await asyncio.sleep(4.0)  # two market minutes from b
            end = replica.clock.now_ms()
        finally:
            stop_a.set()
            stop_b.set()
            for t in runs:
                with contextlib.suppress(Exception):
                    await t
        # What the stream holds of the logical series: b published it after a.
        last = subjects.decode_candle(
            (
                await js.get_last_msg(
                    subjects.stream_name(nats_cluster),
                    subjects.subject(nats_cluster, subjects.CANDLES, "x:LOGICAL", "1m"),
                )
            ).data
        )
        assert last.source == b.id
        served, bad = await read_series(js, nats_cluster, "x:LOGICAL", "1m")
        await nc.close()
    assert bad == 0
    rows = read_tape(str(tape))
    truth = {
        sym: {c.open_time: c for c in candles_from_tape([r for r in rows if r[0] == sym], M)}
        for sym in ("BTCUSDT", "ETHUSDT")
    }
    final = [c for c in served if c.final]
    keys = [c.open_time for c in final]
    assert keys == list(range(keys[0], keys[-1] + M, M)), "a hole in the logical series"
    assert keys[-1] >= end - 4 * M
    for c in final:
        got = (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades)
        assert any(
            (w.open, w.high, w.low, w.close, round(w.volume, 8), w.trades) == got
            for w in (truth["BTCUSDT"].get(c.open_time), truth["ETHUSDT"].get(c.open_time))
            if w is not None
        ), c.open_time
