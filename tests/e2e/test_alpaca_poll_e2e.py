"""Alpaca's polling mode against streaming: two replicas of the same seeded market (same seed, same
start), one engine streaming from the first and one polling REST bars from the second. Every final
candle of either equals the tape's candle field by field, both hold the same final candles where
both have one, polling keeps up (its newest final candles are minutes old, not the bootstrap's), and
neither replica answered a 429."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from chaos import WEDNESDAY_UTC, _engine, _wait_exit, candle_fields
from deltafeed.model import TIMEFRAMES
from deltafeed.store.base import open_cold
from deltafeed.venues.alpaca import DEV_KEY, DEV_SECRET, KEY_ENV, SECRET_ENV
from deltafeed.venues.alpaca.codec import SETTLE_MS
from deltafeed.venues.alpaca.replica import AlpacaReplica
from reference import candles_from_tape, read_venue_tape

SYMBOLS = ("AAPL", "BTC/USD")
TIMEFRAMES_COMPARED = ("1m", "5m")
SPEED = 30.0
WALL_S = 30.0
POLL_EVERY_S = 2.0


def _config(tmp: Path, name: str, replica: AlpacaReplica, extra: list[str]) -> Path:
    lines = [
        'venue = "alpaca"',
        f"symbols = {json.dumps(list(SYMBOLS))}",
        f"timeframes = {json.dumps(list(TIMEFRAMES_COMPARED))}",
        'history = "10m"',
        f'db = "{tmp / (name + ".duckdb")}"',
        f'status_file = "{tmp / (name + "-status.json")}"',
        'api = "off"',
        'stale_after = "3s"',
        *extra,
    ]
    path = tmp / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _finals(db: Path) -> dict[tuple[str, str], dict[int, tuple[float, ...]]]:
    store = await open_cold(str(db), read_only=True)
    out: dict[tuple[str, str], dict[int, tuple[float, ...]]] = {}
    try:
        for sym in SYMBOLS:
            for tf in TIMEFRAMES_COMPARED:
                rows = await store.query(f"alpaca:{sym}", tf)
                out[(sym, tf)] = {c.open_time: candle_fields("alpaca", c) for c in rows if c.final}
    finally:
        await store.close()
    return out


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_alpaca_polling_gives_the_streams_final_candles_without_a_429(tmp_path: Path) -> None:
    start = WEDNESDAY_UTC + 15 * 3_600_000
    common = {"symbols": SYMBOLS, "seed": 11, "rate": 1.0, "speed": SPEED, "history_ms": 20 * 60_000, "start_ms": start}
    streamed = AlpacaReplica(**common, tape=tmp_path / "tape.csv")
    polled = AlpacaReplica(**common)
    env = dict(os.environ) | {KEY_ENV: DEV_KEY, SECRET_ENV: DEV_SECRET}
    await streamed.start()
    await polled.start()
    try:
        stream_cfg = _config(
            tmp_path, "stream", streamed,
            [f'rest_url = "{streamed.url}"', f'ws_url = "{streamed.ws_url}"', 'reconcile_every = "3s"'],
        )  # fmt: skip
        poll_cfg = _config(
            tmp_path, "poll", polled,
            [f'venues = {{alpaca = {{rest_url = "{polled.url}", ws_url = "{polled.ws_url}", mode = "poll", '
             f"poll_every_s = {POLL_EVERY_S}}}}}"],
        )  # fmt: skip
        procs = [_engine(stream_cfg, tmp_path / "stream.log", env), _engine(poll_cfg, tmp_path / "poll.log", env)]
        await asyncio.sleep(WALL_S)
        end_ms = polled.clock.now_ms()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [await _wait_exit(p, 20) for p in procs]
    finally:
        await streamed.stop()
        await polled.stop()
    assert codes == [0, 0], (tmp_path / "poll.log").read_text()[-2000:]
    poll_status = json.loads((tmp_path / "poll-status.json").read_text())["venues"]["alpaca"]
    stream_status = json.loads((tmp_path / "stream-status.json").read_text())["venues"]["alpaca"]
    tape = read_venue_tape(tmp_path / "tape.csv")
    stream_finals = await _finals(tmp_path / "stream.duckdb")
    poll_finals = await _finals(tmp_path / "poll.duckdb")
    compared = both = 0
    for sym in SYMBOLS:
        rows = [r for r in tape if r.symbol == sym]
        for tf in TIMEFRAMES_COMPARED:
            ref = {c.open_time: candle_fields("alpaca", c) for c in candles_from_tape(rows, TIMEFRAMES[tf])}
            s, p = stream_finals[(sym, tf)], poll_finals[(sym, tf)]
            for t, fields in [*s.items(), *p.items()]:
                assert ref.get(t) == fields, (sym, tf, t, fields, ref.get(t))
                compared += 1
            common_t = s.keys() & p.keys()
            both += len(common_t)
            assert all(s[t] == p[t] for t in common_t)
            # Polling keeps up: its newest final candle is the last one settled, give or take a poll
            # (a candle settles 35 s after its end), not the bootstrap's.
            lag_ms = 2 * TIMEFRAMES[tf] + SETTLE_MS + int(2 * POLL_EVERY_S * SPEED * 1000)
            assert max(p) >= end_ms - lag_ms, (sym, tf, max(p), end_ms)
    print(
        f"\nalpaca poll vs stream: {compared} final candles equal the tape; {both} final in both and equal; "
        f"poll requests {poll_status['rest_requests']} (429s {poll_status['rest_throttled']}), "
        f"stream requests {stream_status['rest_requests']}; replica 429s {streamed.stats['429']} {polled.stats['429']}"
    )
    assert both >= len(SYMBOLS) * (18 + 3)  # 1m and 5m candles of ~25 market minutes, final in both
    assert streamed.stats["429"] == 0 and polled.stats["429"] == 0
    assert poll_status["rest_throttled"] == 0 and stream_status["rest_throttled"] == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_alpaca_polling_restart_resumes_from_the_last_polled_bar(tmp_path: Path) -> None:
    """A polling run vouches for the bars it polled (its final marks move with them), so the next
    run resumes after the last stored bar instead of fetching again from the first run's bootstrap;
    every final candle of both runs equals the tape."""
    start = WEDNESDAY_UTC + 15 * 3_600_000
    replica = AlpacaReplica(
        symbols=SYMBOLS,
        seed=11,
        rate=1.0,
        speed=SPEED,
        history_ms=20 * 60_000,
        start_ms=start,
        tape=tmp_path / "tape.csv",
    )
    env = dict(os.environ) | {KEY_ENV: DEV_KEY, SECRET_ENV: DEV_SECRET}
    db = tmp_path / "poll.duckdb"
    await replica.start()
    try:
        cfg = _config(
            tmp_path, "poll", replica,
            [f'venues = {{alpaca = {{rest_url = "{replica.url}", ws_url = "{replica.ws_url}", mode = "poll", '
             f"poll_every_s = {POLL_EVERY_S}}}}}"],
        )  # fmt: skip
        for run in range(2):
            status = tmp_path / "poll-status.json"
            status.unlink(missing_ok=True)
            proc = _engine(cfg, tmp_path / f"poll-{run}.log", env)
            for _ in range(600):  # polling from its first status file on (a loaded machine starts slowly)
                if status.exists() or proc.poll() is not None:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(12.0)
            proc.send_signal(signal.SIGTERM)
            assert await _wait_exit(proc, 20) == 0, (tmp_path / f"poll-{run}.log").read_text()[-2000:]
            if run == 0:
                store = await open_cold(str(db), read_only=True)
                try:
                    marks = await store.final_marks()
                finally:
                    await store.close()
                first = await _finals(db)
    finally:
        await replica.stop()
    for sym in SYMBOLS:
        for tf in TIMEFRAMES_COMPARED:
            # The first run's mark lies past its newest polled bar, not at its bootstrap's end.
            assert marks[(f"alpaca:{sym}", tf)] > max(first[(sym, tf)]), (sym, tf, marks, max(first[(sym, tf)]))
    second = (tmp_path / "poll-1.log").read_text()
    assert "the last run did not confirm" not in second, second[-2000:]
    tape = read_venue_tape(tmp_path / "tape.csv")
    finals = await _finals(db)
    for sym in SYMBOLS:
        rows = [r for r in tape if r.symbol == sym]
        for tf in TIMEFRAMES_COMPARED:
            ref = {c.open_time: candle_fields("alpaca", c) for c in candles_from_tape(rows, TIMEFRAMES[tf])}
            assert finals[(sym, tf)], (sym, tf)
            for t, fields in finals[(sym, tf)].items():
                assert ref.get(t) == fields, (sym, tf, t, fields, ref.get(t))
