"""Exact optimizer: time, GPUs and proven gap versus the number of services, next to the heuristic,
and what the default strategy (`auto`) adds in time for the GPUs it saves.

Run: .venv/bin/python bench/bench_optimizer.py [--sizes 11,100,1000,5000] [--seeds 3]
Prints Markdown tables; the figures in docs/benchmarks.md come from it. Services: bench/common.py
(the eleven embedded profiles cycled, random SLOs from seeded generators). HiGHS runs single-
threaded. Every plan is checked with `verify`, and `auto` is asserted never worse than `parva`.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_profiles, random_services  # noqa: E402

from parvagpu.core.gpus import gpu_type  # noqa: E402
from parvagpu.planning.optimizer import solve  # noqa: E402
from parvagpu.planning.heuristic import plan_parva  # noqa: E402
from parvagpu.planning.request import PlanRequest  # noqa: E402
from parvagpu.planning.strategies import plan  # noqa: E402
from parvagpu.verify import verify  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="11,100,1000,5000")
    ap.add_argument("--seeds", type=int, default=3, help="workloads per size (seeds 0..k-1)")
    ap.add_argument("--time-limit", type=float, default=60.0, help="for the optimal runs")
    ap.add_argument("--max-procs", type=int, default=3)
    args = ap.parse_args()
    gpu = gpu_type("A100-80GB")
    base = base_profiles()
    solve(PlanRequest(*reversed(random_services(11, 0, base=base)), gpu))  # import HiGHS outside the timings
    opt_rows, auto_rows = [], []
    for n in map(int, args.sizes.split(",")):
        for seed in range(args.seeds):
            profiles, services = random_services(n, seed=seed, max_procs=args.max_procs, base=base)
            request = PlanRequest(services, profiles, gpu, args.max_procs)
            heur, t_heur = timed(lambda: plan_parva(request))
            res, t_opt = timed(lambda: solve(request, time_limit=args.time_limit))
            auto, t_auto = timed(lambda: plan(request, "auto"))
            for p in (heur, res.plan, auto):
                assert p is not None and verify(p, profiles) == [], (n, seed)
            assert auto.gpus_used <= heur.gpus_used, (n, seed)
            gap = (res.plan.gpus_used - res.lower_bound) / res.plan.gpus_used
            opt_rows.append((n, seed, heur.gpus_used, res.plan.gpus_used, res.lower_bound, gap,
                             res.status, t_opt))
            auto_rows.append((n, seed, heur.gpus_used, auto.gpus_used, auto.lower_bound, t_heur, t_auto))
            print(f"  n={n} seed={seed}: parva {heur.gpus_used}, optimal {res.plan.gpus_used} "
                  f"(bound {res.lower_bound}, {res.status}) in {t_opt:.2f}s, auto {auto.gpus_used} "
                  f"in {t_auto:.2f}s", file=sys.stderr, flush=True)

    print(f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"python {platform.python_version()}, time limit {args.time_limit:g}s (optimal), 10s (auto)")
    print()
    print("| services | seed | parva GPUs | optimal GPUs | proven bound | gap | status | optimizer time |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|")
    for n, seed, h, o, lb, gap, status, t in opt_rows:
        print(f"| {n:,} | {seed} | {h:,} | {o:,} | {lb:,} | {gap:.2%} | {status} | {t:.2f} s |")
    print()
    print("| services | parva GPUs (sum) | auto GPUs (sum) | saved | parva time (median) "
          "| auto time (median) | time added |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in dict.fromkeys(r[0] for r in auto_rows):
        rs = [r for r in auto_rows if r[0] == n]
        h, a = sum(r[2] for r in rs), sum(r[3] for r in rs)
        th, ta = statistics.median(r[5] for r in rs), statistics.median(r[6] for r in rs)
        print(f"| {n:,} | {h:,} | {a:,} | {h - a:,} ({(h - a) / h:.1%}) | {th:.3f} s | {ta:.2f} s "
              f"| {ta - th:.2f} s |")


if __name__ == "__main__":
    main()
