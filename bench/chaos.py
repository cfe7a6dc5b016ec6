"""The long chaos run: the engine against a fault-injecting replica for N wall minutes.

Prints faults injected by kind, reconnects, gaps found, candles backfilled, recovery time p50/p99
(from the venue answering again to the hole filled), and whether the stored 1m and 5m candles equal
the replica's tape.

    python bench/chaos.py --minutes 10 [--speed 120] [--faults-per-minute 6] [--seed 1] [--tiers]

With ``--tiers`` the engine writes a private PostgreSQL and mirrors into a private Redis, and each
of them is stopped for a tenth of the run (PostgreSQL from 20%, Redis from 60%) and started again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos import run_chaos
from pg_server import PrivatePostgres
from redis_server import PrivateRedis


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="wall minutes of faults")
    ap.add_argument("--speed", type=float, default=120.0, help="market seconds per wall second")
    ap.add_argument("--faults-per-minute", type=float, default=6.0, help="per fault kind")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tiers", action="store_true", help="PostgreSQL + Redis, each stopped for a tenth of the run")
    args = ap.parse_args()
    wall = args.minutes * 60
    pg = PrivatePostgres() if args.tiers else None
    redis = PrivateRedis() if args.tiers else None
    events = []
    if pg is not None and redis is not None:
        pg.start()
        redis.start()
        events = [(0.2 * wall, pg.stop), (0.3 * wall, pg.start), (0.6 * wall, redis.stop), (0.7 * wall, redis.start)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = await run_chaos(Path(tmp), wall_s=wall, speed=args.speed, faults_per_minute=args.faults_per_minute,
                                kill_at_s=wall / 2, seed=args.seed, db=pg.url if pg else None,
                                hot=redis.url if redis else None, events=events)
    finally:
        if pg is not None:
            pg.cleanup()
        if redis is not None:
            redis.close()
    rec = r.recovery_s()
    print(f"run: {args.minutes:g} wall minutes at x{args.speed:g} = {r.market_ms / 3.6e6:.1f} market hours, "
          f"3 symbols, one kill -9 at half time (exit codes {r.exit_codes})")
    print(f"faults injected ({sum(r.faults.values())}): " + ", ".join(f"{k}={n}" for k, n in r.faults.items()))
    print(f"reconnects {r.total('reconnects')}  rotations {r.total('rotations')}  stale drops "
          f"{r.total('stale_drops')}  gaps found {r.per_instrument_total('gaps')} (+{r.total('audit_gaps')} by audit)"
          f"  candles backfilled {r.per_instrument_total('repaired')}  duplicates suppressed "
          f"{r.per_instrument_total('duplicates')}")
    print("skipped frames " + str({k: sum(s['skipped_frames'].get(k, 0) for s in r.statuses)
                                   for s0 in r.statuses for k in s0['skipped_frames']}))
    print(f"recovery (hole found -> candles repaired) p50 {pct(rec, 0.5):.2f} s  p99 {pct(rec, 0.99):.2f} s  "
          f"({len(rec)} repairs)")
    if args.tiers:
        refills = sum(int((s.get("hot") or {}).get("refills", 0)) for s in r.statuses)
        print(f"store: PostgreSQL stopped {0.1 * wall:.0f} s from {0.2 * wall:.0f} s; candles spooled "
              f"{r.total('store_spooled')}, replayed {r.total('store_replayed')}; Redis stopped {0.1 * wall:.0f} s "
              f"from {0.6 * wall:.0f} s; Redis refills {refills}")
    print(f"compared {r.compared} candles with the tape: {len(r.mismatches)} mismatches; final marks "
          f"{r.behind_ms / 60000:.1f} market minutes behind the end")
    for m in r.mismatches[:10]:
        print("  ", m)
    return 1 if r.mismatches else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
