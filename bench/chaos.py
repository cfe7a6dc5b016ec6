"""The long chaos run: the engine against a fault-injecting replica for N wall minutes.

Prints faults injected by kind, reconnects, gaps found, candles backfilled, recovery time p50/p99
(from the venue answering again to the hole filled), and whether the stored 1m and 5m candles equal
the replica's tape.

    python bench/chaos.py --minutes 10 [--speed 120] [--faults-per-minute 6] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from chaos import run_chaos


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(len(xs) * q))] if xs else float("nan")


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0, help="wall minutes of faults")
    ap.add_argument("--speed", type=float, default=120.0, help="market seconds per wall second")
    ap.add_argument("--faults-per-minute", type=float, default=6.0, help="per fault kind")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wall = args.minutes * 60
        r = await run_chaos(Path(tmp), wall_s=wall, speed=args.speed, faults_per_minute=args.faults_per_minute,
                            kill_at_s=wall / 2, seed=args.seed)
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
    print(f"compared {r.compared} candles with the tape: {len(r.mismatches)} mismatches; final marks "
          f"{r.behind_ms / 60000:.1f} market minutes behind the end")
    for m in r.mismatches[:10]:
        print("  ", m)
    return 1 if r.mismatches else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
