"""The static plan at several headrooms on a trace: which static plan meets the attainment target,
and at what GPU-hours (to set the controller's `simulate --trace` figures against it).

Run: .venv/bin/python bench/bench_trace.py DIR [--headrooms 0,0.02,0.04] [--samples 1000]

DIR is a `parvagpu trace-gen` output (trace.csv, services.yaml, profiles/). Each static plan is
sized for every model's trace peak x (1 + headroom) and judged by the same serving model as
`simulate --trace` (`control.fluid`, seed 0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from parvagpu.control.fluid import AttainmentTable
from parvagpu.control.replay import Inputs, Options, plan_for, run_static
from parvagpu.control.trace import read_trace
from parvagpu.core.gpus import gpu_type
from parvagpu.inputs.profiles import load_profiles
from parvagpu.inputs.services import load_services


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--headrooms", default="0,0.01,0.02,0.03,0.04,0.05,0.06,0.08,0.1,0.15,0.25")
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args()
    trace = read_trace(args.dir / "trace.csv")
    slos = {s.model: s.latency_ms for s in load_services(args.dir / "services.yaml")}
    inp = Inputs(trace, slos, load_profiles(args.dir / "profiles"), gpu_type("A100-80GB"))
    opts = Options(samples=args.samples)
    template = plan_for(inp, opts, {m: 1.0 for m in trace.models})
    table = AttainmentTable(template, slos, inp.profiles, opts.samples, seed=opts.seed)
    print("| static plan | GPUs | GPU-hours | attainment | worst model |")
    print("|---|---:|---:|---:|---|")
    for h in (float(x) for x in args.headrooms.split(",")):
        t0 = time.perf_counter()
        r = run_static(inp, opts, table, h)
        worst = min(r.per_model.items(), key=lambda kv: kv[1])
        print(f"| peak x {1 + h:g} | {r.peak_gpus} | {r.gpu_hours:,.1f} | {r.attainment:.3%} | "
              f"{worst[0]} {worst[1]:.2%} | ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
