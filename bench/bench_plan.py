"""Planning time of the paper's heuristic (configurator + allocator) versus the number of services.

Run: .venv/bin/python bench/bench_plan.py [--repeat 5]
Prints a Markdown table; the figures in docs/benchmarks.md come from it.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import base_profiles, random_services  # noqa: E402

from parvagpu.core.gpus import gpu_type  # noqa: E402
from parvagpu.planning.heuristic import plan_parva  # noqa: E402
from parvagpu.planning.request import PlanRequest  # noqa: E402
from parvagpu.verify import verify  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sizes", default="11,100,1000,5000")
    args = ap.parse_args()
    gpu = gpu_type("A100-80GB")
    base = base_profiles()
    rows = []
    for n in map(int, args.sizes.split(",")):
        profiles, services = random_services(n, seed=n, base=base)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            plan = plan_parva(PlanRequest(services, profiles, gpu, max_procs=3))
            times.append(time.perf_counter() - t0)
        assert verify(plan, profiles) == []
        med = statistics.median(times)
        rows.append((n, med, min(times), plan.gpus_used, len(plan.segments)))
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print()
    print("| services | segments | GPUs | median time | best time | time / (n log2 n) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for n, med, best, gpus, segs in rows:
        print(
            f"| {n:,} | {segs:,} | {gpus:,} | {med * 1000:.1f} ms | {best * 1000:.1f} ms "
            f"| {med / (n * math.log2(n)) * 1e6:.2f} µs |"
        )
    if len(rows) >= 2:
        (n0, t0, *_), (n1, t1, *_) = rows[-2], rows[-1]
        print()
        print(f"growth exponent between {n0} and {n1} services: {math.log(t1 / t0) / math.log(n1 / n0):.2f}")


if __name__ == "__main__":
    main()
