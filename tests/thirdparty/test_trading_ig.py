"""trading-ig against the IG replica, with only its base URL changed: login (v2 session), accounts, market
details, historical prices over the v1, v2 and v3 paths, and streaming through the lightstreamer-client-lib
1.0.3 it pins (TLCP-2.4.0): MARKET quotes and CHART TICKs. Everything it received is compared with the tape.

trading-ig's pin clashes with the lightstreamer-client-lib 2.x of the project's venv, so it runs in a venv of
its own (``.venv-trading-ig``, which ``make clients`` builds when it can, or ``$DELTAFEED_TRADING_IG_PYTHON``)
as a subprocess; without it the test is skipped, saying so."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from deltafeed.venues.ig.replica import IGReplica
from reference import QuoteRow, read_quote_tape

REPO = Path(__file__).resolve().parents[2]
EPIC = "CS.D.EURUSD.CFD.IP"
# Wednesday 2026-03-04 00:40 UTC: the FX market open; the tape holds the UTC day from its first quote.
START = int(dt.datetime(2026, 3, 4, 0, 40, tzinfo=dt.UTC).timestamp() * 1000)

# Runs in trading-ig's venv: argv = REST base URL, epic. Prints one JSON object.
SCRIPT = r"""
import datetime, json, sys, time
import trading_ig.rest
from trading_ig import IGService, IGStreamService
from lightstreamer.client import Subscription, SubscriptionListener
base, epic = sys.argv[1], sys.argv[2]
trading_ig.rest.D_BASE_URL["demo"] = base  # the only change: where the API lives
ig = IGService("me", "pw", "key", acc_type="demo", return_dataframe=False, return_munch=False)
stream = IGStreamService(ig)
stream.create_session(version="2")
out = {"accounts": ig.fetch_accounts(), "market": ig.fetch_market_by_epic(epic)}
out["v2_points"] = ig.fetch_historical_prices_by_epic_and_num_points(epic, "MINUTE", 10)
out["v2_range"] = ig.fetch_historical_prices_by_epic_and_date_range(
    epic, "MINUTE_5", "2026-03-04 00:00:00", "2026-03-04 00:30:00")
out["v1_range"] = ig.fetch_historical_prices_by_epic_and_date_range(
    epic, "MINUTE", datetime.datetime(2026, 3, 4, 0, 10), datetime.datetime(2026, 3, 4, 0, 20), version="1")
out["v3"] = ig.fetch_historical_prices_by_epic(epic, "MINUTE", start_date="2026-03-04T00:10:00",
    end_date="2026-03-04T00:20:00")
class L(SubscriptionListener):
    def __init__(self, fields): self.fields, self.got = fields, []
    def onItemUpdate(self, u): self.got.append({f: u.getValue(f) for f in self.fields})
market_fields = ["BID", "OFFER", "HIGH", "LOW", "MID_OPEN", "CHANGE", "MARKET_STATE"]
tick_fields = ["BID", "OFR", "UTM", "DAY_OPEN_MID", "DAY_HIGH", "DAY_LOW", "DAY_NET_CHG_MID"]
market, tick = L(market_fields), L(tick_fields)
for mode, item, fields, listener in (("MERGE", "MARKET:" + epic, market_fields, market),
                                     ("DISTINCT", "CHART:" + epic + ":TICK", tick_fields, tick)):
    sub = Subscription(mode=mode, items=[item], fields=fields)
    sub.addListener(listener)
    stream.subscribe(sub)
time.sleep(3.0)
stream.disconnect()
out["market_updates"], out["tick_updates"] = market.got, tick.got
print(json.dumps(out, default=str))
"""


def _python() -> str:
    path = os.environ.get("DELTAFEED_TRADING_IG_PYTHON") or str(REPO / ".venv-trading-ig" / "bin" / "python")
    if not os.path.exists(path):
        pytest.skip("trading-ig is not installed beside the project (make clients builds .venv-trading-ig)")
    return path


def _mid_day(rows: list[QuoteRow], k: int) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """(open, high, low, last) of the mid over the UTC day of quote ``k``, up to it."""
    day = rows[k].time_ms - rows[k].time_ms % 86_400_000
    mids = [(q.bid + q.ask) / 2 for q in rows[: k + 1] if q.time_ms >= day]
    return mids[0], max(mids), min(mids), mids[-1]


def _run_of(rows: list[QuoteRow], seq: list[tuple[str, str]]) -> int:
    """Where ``seq`` (bid, ask) runs consecutively in the tape."""
    key = [(str(q.bid), str(q.ask)) for q in rows]
    starts = [k for k in range(len(key) - len(seq) + 1) if key[k : k + len(seq)] == seq]
    assert starts, "the updates are not a run of consecutive tape quotes"
    return starts[0]


def _minutes(rows: list[QuoteRow], length: int) -> dict[int, tuple[list[Decimal], list[Decimal], int]]:
    out: dict[int, tuple[list[Decimal], list[Decimal], int]] = {}
    for q in rows:
        b, a, n = out.get(q.time_ms - q.time_ms % length, ([], [], 0))
        out[q.time_ms - q.time_ms % length] = ([*b, q.bid], [*a, q.ask], n + 1)
    return out


def _check_prices(rows: list[QuoteRow], body: dict[str, Any], length: int, fmt: str, utc_key: str) -> int:
    ref = _minutes(rows, length)
    for p in body["prices"]:
        t = int(dt.datetime.strptime(p[utc_key], fmt).replace(tzinfo=dt.UTC).timestamp() * 1000)
        bids, asks, n = ref[t]
        for side, px in (("bid", bids), ("ask", asks)):
            got = [Decimal(str(p[k][side])) for k in ("openPrice", "highPrice", "lowPrice", "closePrice")]
            assert got == [px[0], max(px), min(px), px[-1]], (t, side)
        assert p["lastTradedVolume"] == n
    return len(body["prices"])


async def test_trading_ig_session_prices_and_streaming(tmp_path: Path) -> None:
    python = _python()
    r = IGReplica(epics=[EPIC], seed=9, rate=2.0, speed=5.0, history_ms=40 * 60_000, start_ms=START,
                  tape=tmp_path / "tape.csv")  # fmt: skip
    await r.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            python, "-c", SCRIPT, r.rest_url, EPIC, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await r.stop()
    assert proc.returncode == 0, err.decode()[-3000:]
    got = json.loads(out)
    rows = [q for q in read_quote_tape(tmp_path / "tape.csv") if q.symbol == EPIC]

    assert [a["accountId"] for a in got["accounts"]["accounts"]] == [r.account_id]
    snap = got["market"]["snapshot"]
    assert got["market"]["instrument"]["epic"] == EPIC and snap["marketStatus"] == "TRADEABLE"
    # The snapshot is a tape quote with the UTC day's mid high, low and change up to it.
    stats = [
        (float(h), float(lo), float(last - o))
        for k, q in enumerate(rows)
        if (float(q.bid), float(q.ask)) == (snap["bid"], snap["offer"])
        for o, h, lo, last in [_mid_day(rows, k)]
    ]
    assert (snap["high"], snap["low"], snap["netChange"]) in stats
    assert r.stats["connections_TLCP-2.4.0"] >= 1  # lightstreamer-client-lib 1.0.3's protocol

    v2 = "%Y/%m/%d %H:%M:%S"
    assert _check_prices(rows, got["v2_points"], 60_000, v2, "snapshotTime") == 10
    assert _check_prices(rows, got["v2_range"], 300_000, v2, "snapshotTime") == 7  # 00:00 to 00:30 inclusive
    assert _check_prices(rows, got["v1_range"], 60_000, "%Y:%m:%d-%H:%M:%S", "snapshotTime") == 11
    assert _check_prices(rows, got["v3"], 60_000, "%Y-%m-%dT%H:%M:%S", "snapshotTimeUTC") == 11
    assert "allowance" in got["v2_points"] and "metadata" in got["v3"]

    # MARKET (MERGE): consecutive tape quotes, each with the UTC day's mid statistics up to it.
    ups = got["market_updates"]
    assert len(ups) > 10
    k = _run_of(rows, [(u["BID"], u["OFFER"]) for u in ups])
    for j, u in enumerate(ups):
        o, h, lo, last = _mid_day(rows, k + j)
        assert (Decimal(u["MID_OPEN"]), Decimal(u["HIGH"]), Decimal(u["LOW"])) == (o, h, lo), j
        assert Decimal(u["CHANGE"]) == last - o and u["MARKET_STATE"] == "TRADEABLE"
    # CHART TICK (DISTINCT): every quote, with its time and the day's mid statistics (trading-ig's Ticker fields).
    ticks = got["tick_updates"]
    assert len(ticks) > 10
    k = _run_of(rows, [(u["BID"], u["OFR"]) for u in ticks])
    for j, u in enumerate(ticks):
        assert int(u["UTM"]) == rows[k + j].time_ms
        o, h, lo, last = _mid_day(rows, k + j)
        assert (Decimal(u["DAY_OPEN_MID"]), Decimal(u["DAY_HIGH"]), Decimal(u["DAY_LOW"])) == (o, h, lo), j
        assert Decimal(u["DAY_NET_CHG_MID"]) == last - o
