"""CandleBuilder: trades to candles by event time, flat candles, duplicates, gaps, venue klines."""

from __future__ import annotations

import random

import msgspec
import pytest

from deltafeed.candles.aggregator import CandleBuilder
from deltafeed.candles.rollup import rollup
from deltafeed.model import Candle, Trade


class Recorder:
    def __init__(self) -> None:
        self.closed: dict[str, dict[int, Candle]] = {}
        self.repairs: list[tuple[str, int, int]] = []

    def on_closed(self, tf: str, c: Candle) -> None:
        self.closed.setdefault(tf, {})[c.open_time] = c  # upsert, like the stores

    def on_repair(self, tf: str, first: int, last: int) -> None:
        self.repairs.append((tf, first, last))


def make(tfs: list[str]) -> tuple[CandleBuilder, Recorder]:
    r = Recorder()
    return CandleBuilder(tfs, r.on_closed, r.on_repair), r


def trades(n: int, seed: int = 3, start_ms: int = 1_700_000_000_000, quiet_every: int = 0) -> list[Trade]:
    rng = random.Random(seed)
    out, t, px = [], start_ms, 100.0
    for i in range(1, n + 1):
        t += int(rng.expovariate(1 / 700))
        if quiet_every and i % quiet_every == 0:
            t += 7 * 60_000  # several empty minutes
        px = round(max(1.0, px + rng.choice((-1, 1)) * rng.random() * 0.3), 2)
        out.append(Trade("X", i, t, px, rng.randint(1, 500) / 1000, rng.random() < 0.5))
    return out


def reference(ts: list[Trade], tf_ms: int) -> dict[int, tuple[float, float, float, float, float, int]]:
    """Candles the plain way, with flat candles between the first and last bucket."""
    out: dict[int, list[float]] = {}
    for t in ts:
        b = t.time_ms // tf_ms * tf_ms
        c = out.get(b)
        if c is None:
            out[b] = [t.price, t.price, t.price, t.price, t.qty, 1]
        else:
            c[1], c[2], c[3] = max(c[1], t.price), min(c[2], t.price), t.price
            c[4] += t.qty
            c[5] += 1
    keys = sorted(out)
    prev = None
    b = keys[0]
    res = {}
    while b <= keys[-1]:
        if b in out:
            o, h, lo, c, v, n = out[b]
            res[b] = (o, h, lo, c, round(v, 8), int(n))
            prev = c
        else:
            res[b] = (prev, prev, prev, prev, 0.0, 0)
        b += tf_ms
    return res


def as_tuples(d: dict[int, Candle]) -> dict[int, tuple[float, float, float, float, float, int]]:
    return {k: (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) for k, c in d.items()}


def test_candles_equal_reference_for_every_timeframe() -> None:
    ts = trades(5000, quiet_every=700)
    builder, rec = make(["1s", "15s", "1m", "5m", "1h"])
    for t in ts:
        builder.on_trade(t)
    builder.advance(ts[-1].time_ms + 3_600_000 * 2)
    for tf, ms in (("1s", 1000), ("15s", 15_000), ("1m", 60_000), ("5m", 300_000), ("1h", 3_600_000)):
        got = as_tuples(rec.closed[tf])
        want = reference(ts, ms)
        # What came after the last trade is flat filling up to "now": compare the traded stretch.
        assert {k: got[k] for k in want} == want, tf
        assert all(c.closed for c in rec.closed[tf].values())
    # The first trade ever: what came before it is unknown, so only its own candles are repaired.
    assert [r[0] for r in rec.repairs] == ["1s", "15s", "1m", "5m", "1h"]


def test_duplicates_never_count_twice() -> None:
    ts = trades(300)
    builder, rec = make(["1m"])
    for t in ts:
        builder.on_trade(t)
        builder.on_trade(t)  # every trade delivered twice
    builder.on_trade(ts[10])  # and an old one again
    builder.advance(ts[-1].time_ms + 120_000)
    assert builder.duplicates == 301
    assert as_tuples(rec.closed["1m"]) | {} == {k: v for k, v in reference(ts, 60_000).items()} | {
        k: v for k, v in as_tuples(rec.closed["1m"]).items() if k > ts[-1].time_ms
    }


def test_gap_in_trade_ids_reports_repairs_and_no_flat_candles_across_it() -> None:
    ts = trades(400)
    builder, rec = make(["1m"])
    lost = ts[200:260]
    for t in ts[:200] + ts[260:270]:
        builder.on_trade(t)
    assert builder.gaps == 0 and builder.held == 10  # held back: the hole may still fill
    builder.release_held()  # the owner's timer says it will not
    for t in ts[270:]:
        builder.on_trade(t)
    assert builder.gaps == 1 and builder.missed_trades == 60 and builder.held == 0
    first_bucket = ts[199].time_ms // 60_000 * 60_000
    gap_bucket = ts[260].time_ms // 60_000 * 60_000
    assert rec.repairs[-1] == ("1m", first_bucket, gap_bucket)
    # Buckets that only the lost trades touched got no (wrong) flat candle.
    lost_only = {t.time_ms // 60_000 * 60_000 for t in lost} - {first_bucket, gap_bucket}
    assert not lost_only & set(rec.closed["1m"])


def test_quiet_market_closes_by_venue_time_and_fills_flat() -> None:
    builder, rec = make(["1m"])
    builder.on_trade(Trade("X", 1, 60_500, 10.0, 1.0, False))
    builder.on_trade(Trade("X", 2, 61_000, 11.0, 2.0, False))
    builder.advance(119_999)
    assert "1m" not in rec.closed  # not yet ended
    builder.advance(240_000)
    assert as_tuples(rec.closed["1m"]) == {
        60_000: (10.0, 11.0, 10.0, 11.0, 3.0, 2),
        120_000: (11.0, 11.0, 11.0, 11.0, 0.0, 0),
        180_000: (11.0, 11.0, 11.0, 11.0, 0.0, 0),
    }
    # A trade later continues from the flat candles without repeating them.
    builder.on_trade(Trade("X", 3, 300_100, 12.0, 1.0, True))
    builder.advance(400_000)
    assert as_tuples(rec.closed["1m"])[240_000] == (11.0, 11.0, 11.0, 11.0, 0.0, 0)
    assert as_tuples(rec.closed["1m"])[300_000] == (12.0, 12.0, 12.0, 12.0, 1.0, 1)


def test_seeded_builder_fills_flat_from_the_stored_candle_only_when_synced() -> None:
    builder, rec = make(["1m"])
    builder.seed("1m", Candle(0, 5.0, 5.0, 5.0, 5.0, 1.0, 1, True))
    builder.advance(600_000)
    assert "1m" not in rec.closed  # no trade seen yet: quiet or disconnected, nobody knows
    builder.on_trade(Trade("X", 42, 300_100, 6.0, 1.0, False))
    assert rec.repairs == [("1m", 60_000, 300_000)]  # the stretch since the store is fetched


def test_a_closed_venue_kline_before_any_trade_leaves_the_stretch_since_the_store_to_repair() -> None:
    # A long start-up (a deep history, a store that was full): the stream's first message is the
    # venue's kline of a candle well after the last stored one, before any trade.
    builder, rec = make(["1m"])
    builder.seed("1m", Candle(0, 5.0, 5.0, 5.0, 5.0, 1.0, 1, True))
    venue = Candle(600_000, 6.0, 6.0, 6.0, 6.0, 1.0, 1, True)
    builder.on_venue_candle("1m", venue, -1)
    assert rec.closed["1m"] == {600_000: msgspec.structs.replace(venue, final=True)}  # the venue's own
    assert rec.repairs == [("1m", 60_000, 540_000)]  # nobody knows what happened in between
    builder.on_trade(Trade("X", 42, 660_100, 6.0, 1.0, False))
    assert rec.repairs[1:] == [("1m", 660_000, 660_000)]  # and the candle the stream joined in


def test_closed_venue_kline_is_final_and_late_trades_are_refused() -> None:
    builder, rec = make(["1m"])
    builder.on_trade(Trade("X", 1, 60_500, 10.0, 1.0, False))
    venue = Candle(60_000, 9.0, 12.0, 8.0, 10.0, 5.0, 4, True)
    builder.on_venue_candle("1m", venue, 1)
    assert rec.closed["1m"][60_000] == msgspec.structs.replace(venue, final=True)  # the venue's own
    builder.on_trade(Trade("X", 2, 60_900, 99.0, 1.0, False))  # late for a final candle
    assert builder.late_trades == 1 and rec.closed["1m"][60_000] == msgspec.structs.replace(venue, final=True)
    assert rec.repairs[-1] == ("1m", 60_000, 60_000)


def test_open_venue_kline_is_adopted_only_when_it_holds_exactly_our_trades() -> None:
    builder, _ = make(["1m"])
    builder.on_trade(Trade("X", 10, 60_500, 10.0, 1.0, False))  # started mid-candle
    builder.on_venue_candle("1m", Candle(60_000, 9.0, 12.0, 8.0, 10.0, 5.0, 4, False), 9)  # older
    assert builder.open_candle("1m") == Candle(60_000, 10.0, 10.0, 10.0, 10.0, 1.0, 1, False)
    builder.on_venue_candle("1m", Candle(60_000, 9.0, 12.0, 8.0, 10.0, 5.0, 4, False), 10)
    assert builder.open_candle("1m") == Candle(60_000, 9.0, 12.0, 8.0, 10.0, 5.0, 4, False)
    builder.on_trade(Trade("X", 11, 60_700, 13.0, 1.0, False))
    assert builder.open_candle("1m") == Candle(60_000, 9.0, 13.0, 8.0, 13.0, 6.0, 5, False)


def test_rollup_equals_direct_aggregation() -> None:
    ts = trades(3000, seed=9)
    b1, r1 = make(["1s", "15s"])
    for t in ts:
        b1.on_trade(t)
    b1.advance(ts[-1].time_ms + 60_000)
    secs = sorted(r1.closed["1s"].values(), key=lambda c: c.open_time)
    rolled = {c.open_time: c for c in rollup(secs, 1000, 15_000) if c.closed}
    direct = as_tuples(r1.closed["15s"])
    assert {k: v for k, v in as_tuples(rolled).items() if k in direct} == {
        k: v for k, v in direct.items() if k in rolled
    }
    assert len(rolled) >= len(direct) - 1


def test_reordered_trades_are_put_back_in_order_without_a_gap() -> None:
    ts = trades(2000, seed=5)
    shuffled = list(ts)
    for i in range(10, len(shuffled) - 1, 37):  # swap neighbours now and then
        shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    builder, rec = make(["1m"])
    for t in shuffled:
        builder.on_trade(t)
    builder.advance(ts[-1].time_ms + 120_000)
    assert builder.gaps == 0 and builder.duplicates == 0 and builder.held == 0
    want = reference(ts, 60_000)
    assert {k: v for k, v in as_tuples(rec.closed["1m"]).items() if k in want} == want


def test_two_overlapping_connections_count_every_trade_once() -> None:
    """A rotation: the new connection starts ahead of the old one, both deliver for a while."""
    ts = trades(1000, seed=8)
    builder, rec = make(["1m"])
    for t in ts[:500]:
        builder.on_trade(t)
    old, new = ts[500:700], ts[520:]
    for i in range(max(len(old), len(new))):  # interleaved, the new one ahead by 20 trades
        if i < len(new):
            builder.on_trade(new[i])
        if i < len(old):
            builder.on_trade(old[i])
    builder.advance(ts[-1].time_ms + 120_000)
    assert builder.gaps == 0 and builder.held == 0
    assert builder.duplicates == len(old) + len(new) - 500
    want = reference(ts, 60_000)
    assert {k: v for k, v in as_tuples(rec.closed["1m"]).items() if k in want} == want


def test_candles_closed_by_the_timer_during_a_silent_loss_are_repaired() -> None:
    """A stalled connection looks like a quiet market: the timer closes flat candles. When the
    next trade shows trades were lost, those flat candles are in the repair range too."""
    builder, rec = make(["1m"])
    builder.on_trade(Trade("X", 1, 60_500, 10.0, 1.0, False))
    builder.advance(300_000)  # flat candles for 120_000 .. 240_000
    assert rec.closed["1m"][180_000].trades == 0
    builder.on_trade(Trade("X", 50, 310_000, 11.0, 1.0, False))
    builder.release_held()
    assert rec.repairs[-1] == ("1m", 60_000, 300_000)


# --- closed means true: what the builder vouches for ------------------------------------------------------------


def test_a_trade_that_follows_on_by_id_vouches_for_the_candle_it_closes() -> None:
    builder, rec = make(["1m"])
    builder.on_trade(Trade("X", 1, 60_500, 10.0, 1.0, False))  # the first trade: what came before is unknown
    builder.on_trade(Trade("X", 2, 121_000, 11.0, 1.0, False))
    builder.on_trade(Trade("X", 3, 185_000, 12.0, 1.0, False))
    assert not rec.closed["1m"][60_000].final  # holds the first trade: its repair vouches for it
    assert rec.closed["1m"][120_000].final and rec.closed["1m"][120_000].closed


def test_the_timer_never_vouches_and_the_next_trade_in_sequence_does() -> None:
    builder, rec = make(["1m"])
    for i, t in enumerate((60_500, 121_000, 130_000), start=1):
        builder.on_trade(Trade("X", i, t, 10.0, 1.0, False))
    builder.advance(300_000)  # the venue's clock moved on, no trade came: the timer closes 2m, 3m, 4m
    assert [rec.closed["1m"][t].state for t in (120_000, 180_000, 240_000)] == ["provisional"] * 3
    builder.on_trade(Trade("X", 4, 301_000, 10.5, 1.0, False))  # id 4 follows 3: nothing traded between
    assert [rec.closed["1m"][t].state for t in (120_000, 180_000, 240_000)] == ["final"] * 3
    assert builder.vouched_late == 3 and not rec.repairs[1:]


def test_a_hole_after_the_timer_leaves_its_candles_to_the_repair() -> None:
    builder, rec = make(["1m"])
    for i, t in enumerate((60_500, 121_000, 130_000), start=1):
        builder.on_trade(Trade("X", i, t, 10.0, 1.0, False))
    builder.advance(300_000)
    builder.on_trade(Trade("X", 9, 301_000, 10.5, 1.0, False))  # ids 4..8 never came
    builder.release_held()
    assert not any(rec.closed["1m"][t].final for t in (120_000, 180_000, 240_000))
    assert ("1m", 120_000, 300_000) in rec.repairs


def test_a_late_trade_in_a_timer_closed_candle_is_repaired_not_vouched_for() -> None:
    builder, rec = make(["1m"])
    builder.on_trade(Trade("X", 1, 60_500, 10.0, 1.0, False))
    builder.on_trade(Trade("X", 2, 121_000, 10.0, 1.0, False))
    builder.advance(200_000)  # closes 2m (provisional) and the flat 3m
    builder.on_trade(Trade("X", 3, 179_000, 11.0, 1.0, False))  # in sequence, but inside the closed 2m
    builder.on_trade(Trade("X", 4, 250_000, 11.0, 1.0, False))
    assert not rec.closed["1m"][120_000].final and ("1m", 120_000, 120_000) in rec.repairs


def test_an_id_far_ahead_is_a_suspect_and_cannot_freeze_the_series() -> None:
    builder, rec = make(["15s"])
    ts = trades(400)
    for t in ts[:100]:
        builder.on_trade(t)
    builder.on_trade(Trade("X", 10**12, ts[100].time_ms, 1.0, 1.0, False))  # one poisoned frame
    for t in ts[100:]:
        builder.on_trade(t)
    builder.release_held()
    assert builder.duplicates == 0 and builder.gaps == 0 and builder.last_trade_id == 400
    assert builder.suspect_trades == 1
    ref = reference(ts, 15_000)
    got = {b: (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) for b, c in rec.closed["15s"].items()}
    assert all(got[b] == ref[b] for b in got)


def test_a_jump_that_later_ids_confirm_is_a_hole() -> None:
    builder, _rec = make(["1m"])
    builder.on_trade(Trade("X", 1, 60_500, 10.0, 1.0, False))
    far = 5_000_000
    for k in range(3):
        builder.on_trade(Trade("X", far + k, 70_000 + k, 10.0, 1.0, False))
    assert builder.last_trade_id == far + 2 and builder.gaps == 1 and builder.suspect_trades == 0
    builder.on_trade(Trade("X", far + 3, 70_500, 10.0, 1.0, False))
    assert builder.duplicates == 0


def test_without_venue_ids_nothing_the_builder_makes_is_final() -> None:
    r = Recorder()
    builder = CandleBuilder(["1m"], r.on_closed, r.on_repair, vouch=False)
    ts = trades(300)
    for t in ts:
        builder.on_trade(t)
    builder.advance(ts[-1].time_ms + 300_000)
    assert r.closed["1m"] and not any(c.final for c in r.closed["1m"].values())


def test_suspect_span_is_repaired_and_never_vouched_for() -> None:
    """A feed that lost messages without an id jump showing it (a sequence break) has the span's
    candles repaired, up to the one forming, and the builder vouches for none of them."""
    closed: list[tuple[str, Candle]] = []
    repairs: list[tuple[str, int, int]] = []
    b = CandleBuilder(["1m", "5m"], lambda tf, c: closed.append((tf, c)), lambda *r: repairs.append(r))
    b.on_trade(Trade("X", 1, 60_000, 1.0, 1.0, False))
    repairs.clear()
    b.on_trade(Trade("X", 2, 130_000, 1.0, 1.0, False))
    b.suspect(125_000, 170_000)
    assert ("1m", 120_000, 120_000) in repairs and ("5m", 0, 0) in repairs
    b.on_trade(Trade("X", 3, 190_000, 1.0, 1.0, False))  # follows on by id, but inside the suspect span
    assert not any(c.final and c.open_time >= 120_000 for tf, c in closed if tf == "1m")


@pytest.mark.slow  # over 10 s: not in the everyday subset
def test_open_candles_read_between_trades_equal_the_reference() -> None:
    """Dense trades (many per second) fold into a partial candle between rolls: whenever the open
    candles are read, they hold every trade so far, also for a timeframe whose grid does not nest
    in the others (7s)."""
    rng = random.Random(5)
    tfs = {"1s": 1000, "7s": 7000, "1m": 60_000, "5m": 300_000, "1h": 3_600_000}
    builder, rec = make(list(tfs))
    seen: list[Trade] = []
    t, px = 1_700_000_000_000, 100.0
    for i in range(1, 20_001):
        t += int(rng.expovariate(1 / 25))
        px = round(max(1.0, px + rng.choice((-1, 1)) * rng.random() * 0.3), 2)
        trade = Trade("X", i, t, px, rng.randint(1, 500) / 1000, False)
        builder.on_trade(trade)
        seen.append(trade)
        if rng.random() < 0.01:
            for tf, ms in tfs.items():
                c = builder.open_candle(tf)
                assert c is not None
                want = reference([x for x in seen if x.time_ms // ms == t // ms], ms)[t // ms * ms]
                assert (c.open, c.high, c.low, c.close, round(c.volume, 8), c.trades) == want, (i, tf)
    builder.advance(t + 2 * 3_600_000)
    for tf, ms in tfs.items():
        got = as_tuples(rec.closed[tf])
        want = reference(seen, ms)
        assert {k: got[k] for k in want} == want, tf


def test_a_trade_late_for_the_short_candle_still_counts_in_the_long_one() -> None:
    builder, rec = make(["1s", "1m"])
    for i, (ts, px) in enumerate([(60_100, 10.0), (61_100, 11.0), (61_200, 12.0)], start=1):
        builder.on_trade(Trade("X", i, ts, px, 1.0, False))
    builder.on_trade(Trade("X", 4, 60_900, 9.0, 1.0, False))  # the venue's clock went back 300 ms
    builder.on_trade(Trade("X", 5, 61_300, 12.5, 1.0, False))
    assert builder.late_trades == 1 and rec.repairs[-1] == ("1s", 60_000, 60_000)
    assert builder.open_candle("1m") == Candle(60_000, 10.0, 12.5, 9.0, 12.5, 5.0, 5, False)
    assert builder.open_candle("1s") == Candle(61_000, 11.0, 12.5, 11.0, 12.5, 3.0, 3, False)
