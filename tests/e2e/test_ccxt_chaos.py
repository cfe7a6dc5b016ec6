"""The ``ccxt`` venue through the faults of the Binance, Bybit, Coinbase, Hyperliquid and Kraken
replicas, read through ccxt.pro, a kill -9 and a restart: every stored final 1m and 5m candle equals the tape's
candle field by field (OHLCV; ccxt's rows carry no trade count), with no hole and no duplicate over
the whole stored window. Only provisional candles may differ. Short, fast runs: CI time is tight."""

from __future__ import annotations

from pathlib import Path

import pytest

from chaos import PROFILES, TIMEFRAMES_COMPARED, run_chaos

#: The replicas run here: every one ccxt reads (through ccxt, with only the addresses changed).
LIVELY = ("binance", "bybit", "hyperliquid", "coinbase", "kraken")
#: Seconds each may take to stream again and settle after the faults stop. Hyperliquid's and
#: Kraken's history go at their venues' pace (Hyperliquid ~1.3 s a candle request under its 1200
#: weight a minute; Kraken 1.2 s an OHLC call), so their repairs and reconciliations take longer.
SETTLE_S = {"binance": 30.0, "bybit": 30.0, "coinbase": 30.0, "hyperliquid": 75.0, "kraken": 60.0}
#: Closed candles each series may hold still provisional at the stop (the rest are final and equal
#: the tape). The stop grace reconciles what has closed, one request per series and timeframe; what
#: closes while it runs stays provisional in the store for the next run. Kraken's round of six calls
#: takes about 7 s at 1.2 s a call, 14 market minutes at x120: that many 1m candles close meanwhile.
#: Hyperliquid's history goes at ccxt's slowed pace too (see SETTLE_S): 14 a series were left once.
PROVISIONAL_PER_SERIES = {"kraken": 20, "hyperliquid": 20}
#: Where a repair may still wait at the stop (its REST at ccxt's slowed pace behind the faults'
#: losses): the candles it covers may be missing from the store, behind the final marks (never
#: vouched for) and with the repair pending in the last status, for the next run to fetch.
UNREPAIRED_AT_STOP = {"hyperliquid"}


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("exchange", LIVELY)
async def test_ccxt_final_candles_equal_the_tape_through_faults_and_a_kill(exchange: str, tmp_path: Path) -> None:
    name = f"ccxt_{exchange}"
    # 20 wall seconds at x120: 40 market minutes of streaming after 30 minutes of history.
    r = await run_chaos(
        tmp_path,
        venue=name,
        wall_s=20.0,
        speed=120.0,
        faults_per_minute=6.0,
        kill_at_s=8.0,
        seed=11,
        max_settle_s=SETTLE_S[exchange],
    )
    ccxt = [s.get("venues", {}).get("ccxt", {}) for s in r.statuses]
    print(
        f"\n{name} chaos: faults {sum(r.faults.values())} {r.faults}; final candles {r.final_compared}; "
        f"mismatches {r.final_mismatched}; provisional left {r.provisional_left} (differ {r.provisional_differ}); "
        f"forming {r.forming}; reconciled {r.total('reconciled')}; corrected {r.per_instrument_total('corrected')}; "
        f"reconnects {sum(int(v.get('reconnects', 0)) for v in ccxt)}; watch errors {[v.get('venue_errors') for v in ccxt]}; "
        f"settled {r.settled_s:.0f} s; missing after the marks {r.missing_unvouched} (pending repairs at the stop "
        f"{r.statuses[-1].get('pending_repairs')})"
    )
    symbols = PROFILES[name].symbols
    # Closed means true, for every exchange: no final candle unlike the tape, no hole the engine
    # vouched past, no duplicate; a hole at all only where a repair may wait at the stop, and then
    # behind the final marks with the repair still pending when the engine stopped (not silent).
    assert sum(r.faults.values()) >= 10, r.faults
    pending = r.statuses[-1].get("pending_repairs", 0)
    holes = [p for p in r.problems if "candles missing" in p]
    assert r.missing_vouched == 0, "\n".join(holes)
    if exchange not in UNREPAIRED_AT_STOP or not pending:
        assert not holes, (pending, holes)
    assert not [p for p in r.problems if p not in holes], "\n".join(r.problems[:20])
    assert r.final_mismatched == 0, "\n".join(r.mismatches[:20])
    assert r.series == len(symbols) * len(TIMEFRAMES_COMPARED)
    assert r.final_compared >= len(symbols) * (30 + 30), r.final_compared
    assert r.exit_codes == [-9, 0]
    assert r.caught_up, f"not streaming again {r.settled_s:.0f} s after the faults stopped"
    assert r.provisional_left <= PROVISIONAL_PER_SERIES.get(exchange, 5) * r.series, (r.provisional_left, r.series)
