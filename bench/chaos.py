"""The long chaos run: the engine against a fault-injecting venue replica for N wall minutes (any venue
with a profile in tests/chaos.py).

Runs tests/chaos.py's harness (a kill -9 at half time and a restart, then the faults stop, the
engine settles and is stopped) and prints: faults injected by kind; over the whole stored window,
final candles compared with the tape and how many differ (must be 0), provisional candles left and
candles still forming; the engines' reconciled, corrected, repaired and gap counts; recovery time
median/p99 (from a hole found to the candles repaired); and the engines' exit codes.

    python bench/chaos.py [--venue binance|oanda|coinbase|kraken|...] [--minutes 10] [--speed 120]
                          [--faults-per-minute 6] [--faults close=1,drop=20] [--seed 1] [--faults-seed N]
                          [--rate 2] [--workdir DIR] [--tiers]

With ``--tiers`` the engine writes a private PostgreSQL and mirrors into a private Redis, and each
of them is stopped for a tenth of the run (PostgreSQL from 20%, Redis from 60%) and started again.
The work directory (tape, store, engine.log) is kept when ``--workdir`` names it or when the run
finds a problem, so the candles in question can be looked up; otherwise it is removed. Exits 1 on
any final mismatch, hole, duplicate or late history.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos import FX_PRICES, PROFILES, SYMBOLS, VENUES, ChaosResult, run_chaos
from deltafeed.replicas.faults import parse_faults
from pg_server import PrivatePostgres
from redis_server import PrivateRedis


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


def report(r: ChaosResult, args: argparse.Namespace) -> None:
    """Print the run's figures (see the module docstring)."""
    rec = r.recovery_s()
    print(
        f"run: {args.venue}, {args.minutes:g} wall minutes at x{args.speed:g} = {r.market_ms / 3.6e6:.1f} market "
        f"hours stored (30 min of history included), {len(SYMBOLS[args.venue])} instruments, {r.series} series x "
        f"timeframe, seed {args.seed}, faults seed {args.faults_seed if args.faults_seed is not None else args.seed}"
    )
    print(
        f"exit codes {r.exit_codes} (one kill -9 at half time, then SIGTERM at the end); first engine started in "
        f"{r.startup_s:.1f} s; stopped {r.settled_s:.1f} s after the faults did "
        f"({'streaming again' if r.caught_up else 'NOT streaming again yet'})"
    )
    print(f"faults injected ({sum(r.faults.values())}): " + ", ".join(f"{k}={n}" for k, n in r.faults.items()))
    print(f"final candles compared with the tape {r.final_compared}: mismatched {r.final_mismatched}")
    print(
        f"provisional left {r.provisional_left} ({r.provisional_differ} of them unlike the tape)  forming "
        f"{r.forming}  final marks {r.behind_ms / 60000:.1f} market minutes behind the end"
    )
    sides = (
        ""
        if not PROFILES[args.venue].quotes
        else " (" + ", ".join(f"{p.upper()} {r.per_instrument_total('corrected', price=p)}" for p in FX_PRICES) + ")"
    )
    print(
        f"reconciled {r.total('reconciled')}  corrected {r.total('corrected')}{sides}  unconfirmed "
        f"{r.per_instrument_total('unconfirmed')}  repaired {r.per_instrument_total('repaired')}  bootstrapped "
        f"{r.per_instrument_total('bootstrapped')}  gaps {r.per_instrument_total('gaps')} "
        f"(+{r.total('audit_gaps')} by audit)  duplicates suppressed {r.per_instrument_total('duplicates')}  "
        f"vouched late {r.per_instrument_total('vouched_late')}  suspect trades "
        f"{r.per_instrument_total('suspect_trades')}"
    )
    skipped: Counter[str] = Counter()
    for s in r.statuses:
        skipped.update(s.get("skipped_frames", {}))
    print(
        f"streamed {r.streamed()} of the tape's {r.tape_rows} {'quotes' if PROFILES[args.venue].quotes else 'trades'}"
        f" (history and the time streams were down or behind are fetched over REST)"
    )
    print(
        f"connects {r.total('connects')}  reconnects {r.total('reconnects')}  rotations {r.total('rotations')}  "
        f"stale drops {r.total('stale_drops')}  REST requests {r.total('rest_requests')} (throttled "
        f"{r.total('rest_throttled')}, server errors {r.total('rest_server_errors')})  skipped frames "
        f"{dict(skipped)}"
    )
    print(
        f"recovery (hole found -> candles repaired) median {pct(rec, 0.5):.2f} s  p99 {pct(rec, 0.99):.2f} s  "
        f"({len(rec)} repairs)"
    )
    if args.tiers:
        refills = sum(int((s.get("hot") or {}).get("refills", 0)) for s in r.statuses)
        wall = args.minutes * 60
        print(
            f"store: PostgreSQL stopped {0.1 * wall:.0f} s from {0.2 * wall:.0f} s; candles spooled "
            f"{r.total('store_spooled')}, replayed {r.total('store_replayed')}; Redis stopped {0.1 * wall:.0f} s "
            f"from {0.6 * wall:.0f} s; Redis refills {refills}"
        )
    for m in r.problems[:10]:
        print("  problem:", m)
    for m in r.mismatches[:20]:
        print("  mismatch:", m)
    if len(r.mismatches) > 20:
        print(f"  ... and {len(r.mismatches) - 20} more mismatches")


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venue", choices=VENUES, default="binance")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall minutes of faults")
    ap.add_argument("--speed", type=float, default=120.0, help="market seconds per wall second")
    ap.add_argument("--faults-per-minute", type=float, default=6.0, help="per fault kind")
    ap.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="per-kind rates over --faults-per-minute, e.g. close=1,stall=1,drop=20 (0 leaves one out)",
    )
    ap.add_argument("--rate", type=float, default=2.0, help="trades or quotes per market second per instrument")
    ap.add_argument("--seed", type=int, default=1, help="the market's seed")
    ap.add_argument("--faults-seed", type=int, default=None, help="the fault schedule's seed (default --seed)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the tape, store and engine.log here")
    ap.add_argument("--tiers", action="store_true", help="PostgreSQL + Redis, each stopped for a tenth of the run")
    args = ap.parse_args()
    wall = args.minutes * 60
    pg = PrivatePostgres() if args.tiers else None
    redis = PrivateRedis() if args.tiers else None
    events: list[tuple[float, Callable[[], None]]] = []
    if pg is not None and redis is not None:
        pg.start()
        redis.start()
        events = [(0.2 * wall, pg.stop), (0.3 * wall, pg.start), (0.6 * wall, redis.stop), (0.7 * wall, redis.start)]
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"chaos-{args.venue}-"))
    try:
        r = await run_chaos(
            work,
            venue=args.venue,
            wall_s=wall,
            speed=args.speed,
            faults_per_minute=args.faults_per_minute,
            kill_at_s=wall / 2,
            seed=args.seed,
            faults_seed=args.faults_seed,
            rate=args.rate,
            fault_rates=parse_faults(args.faults),
            db=pg.url if pg else None,
            hot=redis.url if redis else None,
            events=events,
        )
    finally:
        if pg is not None:
            pg.cleanup()
        if redis is not None:
            redis.close()
    report(r, args)
    if args.workdir is None and r.ok:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"work directory kept: {work} (engine.log, tape.csv, the store)")
    return 0 if r.ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
