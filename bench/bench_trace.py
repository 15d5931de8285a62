"""The static plan at several headrooms on a trace: which static plan meets the attainment target,
and at what GPU-hours (to set the controller's `simulate --trace` figures against it); and the
controller itself under several draws of its observation noise.

Run: .venv/bin/python bench/bench_trace.py DIR [--headrooms 0,0.02,0.04] [--samples 1000]
     .venv/bin/python bench/bench_trace.py DIR --settings s.yaml --seeds 0,1,2 [--headrooms ""]

DIR is a `parvagpu trace-gen` output (trace.csv, services.yaml, profiles/). Each static plan is
sized for every model's trace peak x (1 + headroom) and judged by the same serving model as
`simulate --trace` (`control.fluid`, seed 0). With --settings, the controller of that settings
file is replayed once per seed of --seeds: the seed draws the Poisson counts its rate windows see
(the serving model stays the seed-0 table, shared by every run), so the spread of its figures is
what the observation noise alone changes.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from parvagpu.control.fluid import AttainmentTable
from parvagpu.control.replay import Inputs, Options, plan_for, read_settings, run_controller, run_static
from parvagpu.control.trace import read_trace
from parvagpu.core.gpus import gpu_type
from parvagpu.inputs.profiles import load_profiles
from parvagpu.inputs.services import load_services


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--headrooms", default="0,0.01,0.02,0.03,0.04,0.05,0.06,0.08,0.1,0.15,0.25")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--settings", type=Path, help="replay the controller of this settings file too")
    ap.add_argument("--seeds", default="0", help="observation-noise seeds of the controller runs")
    args = ap.parse_args()
    trace = read_trace(args.dir / "trace.csv")
    slos = {s.model: s.latency_ms for s in load_services(args.dir / "services.yaml")}
    inp = Inputs(trace, slos, load_profiles(args.dir / "profiles"), gpu_type("A100-80GB"))
    cfg = costs = None
    opts = Options(samples=args.samples)
    if args.settings is not None:
        cfg, costs, extra = read_settings(args.settings)
        opts = Options(**{"samples": args.samples, **extra})
    template = plan_for(inp, opts, {m: 1.0 for m in trace.models})
    table = AttainmentTable(template, slos, inp.profiles, opts.samples, seed=opts.seed)
    if args.headrooms:
        print("| static plan | GPUs | GPU-hours | attainment | worst model |")
        print("|---|---:|---:|---:|---|")
    for h in (float(x) for x in args.headrooms.split(",") if x):
        t0 = time.perf_counter()
        r = run_static(inp, opts, table, h)
        worst = min(r.per_model.items(), key=lambda kv: kv[1])
        print(f"| peak x {1 + h:g} | {r.peak_gpus} | {r.gpu_hours:,.1f} | {r.attainment:.3%} | "
              f"{worst[0]} {worst[1]:.2%} | ({time.perf_counter() - t0:.1f} s)", flush=True)
    if cfg is None:
        return
    print("| controller seed | GPU-hours | attainment | in transitions | models < 99.9 % | re-plans | most in 10 min "
          "| bridges (GPU-hours) | transitions with a dip | re-plans refused (dip, check) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for seed in (int(x) for x in args.seeds.split(",")):
        t0 = time.process_time()
        r, _ = run_controller(inp, replace(opts, seed=seed), cfg, costs, table)
        row = r.row()
        print(f"| {seed} | {r.gpu_hours:,.1f} | {r.attainment:.3%} | {row['attainment_in_transitions']:.3%} | "
              f"{sum(a < 0.999 for a in r.per_model.values())} | {r.replans} | "
              f"{row['max_model_replans_per_10_min']} | {r.bridges} ({r.bridge_gpu_hours:.1f}) | {r.dipped} | "
              f"{r.refused_dips}, {r.refused_checks} | "
              f"({time.process_time() - t0:.1f} s CPU)", flush=True)


if __name__ == "__main__":
    main()
