"""Simulator speed and the 0.45 L rule on the reference scenarios 1-6 (embedded A100-80GB example).

Run: .venv/bin/python bench/bench_simulate.py [--duration 30] [--max-procs 3]
Prints two Markdown tables: time per scenario, and per scenario and model the predicted p99 against
the SLO L and the rule's 0.45 L, with and without the admission limit.
"""

from __future__ import annotations

import argparse
import sys
import time

from parvagpu.cli.common import example_dir
from parvagpu.core.gpus import gpu_type
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest
from parvagpu.inputs.profiles import load_profiles
from parvagpu.serving.simulator import simulate
from parvagpu.inputs.services import load_scenario, scenario_count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--max-procs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    profiles = load_profiles(example_dir() / "profiles")
    gpu = gpu_type("A100-80GB")
    timing, rows = [], []
    for k in range(1, scenario_count(example_dir() / "SLO") + 1):
        services = load_scenario(example_dir() / "SLO", k, list(profiles))
        plan = plan_parva(PlanRequest(services, profiles, gpu, args.max_procs))
        t0 = time.perf_counter()
        bounded = simulate(plan, args.duration, args.seed, profiles=profiles)
        wall = time.perf_counter() - t0
        free = simulate(plan, args.duration, args.seed, profiles=profiles, unbounded=True)
        timing.append((k, len(plan.segments), bounded.requests, wall))
        for s, r, u in zip(bounded.stats, bounded.rule, free.stats):
            cap = plan.capacity(s.model) / s.rate
            rows.append((k, s, r, u, cap))
        print(f"scenario {k}: {wall:.2f} s", file=sys.stderr)
    print(f"Simulated {args.duration:g} s of traffic per scenario (seed {args.seed}, P_MAX {args.max_procs}).\n")
    print("| scenario | segments | requests | simulation time |")
    print("|---:|---:|---:|---:|")
    for k, n, req, wall in timing:
        print(f"| {k} | {n} | {req:,} | {wall:.2f} s |")
    print()
    print("| scenario | model | capacity / rate | max batch latency / L | p99 / L (admission) | 503 | "
          "attainment | p99 / L (no admission) | verdict |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for k, s, r, u, cap in rows:
        print(
            f"| {k} | {s.model} | {cap:.3f} | {r['batch_latency_over_slo']:.2f} | {s.p99_ms / s.slo_ms:.2f} | "
            f"{100 * s.rejected / s.sent:.2f}% | {100 * s.attainment:.2f}% | {u.p99_ms / u.slo_ms:.2f} | {s.verdict} |"
        )


if __name__ == "__main__":
    main()
