"""Where the time of one `simulate --trace` replay goes: CPU and wall seconds per phase (serving-
model states measured, fresh plans, re-plans from the running plan, the transition check), the
rest being the replay's own loop (traffic, windows, ticks).

Run: .venv/bin/python bench/bench_replay_time.py DIR --settings s.yaml [--out figures.json]

DIR is a `parvagpu trace-gen` output (trace.csv, services.yaml, profiles/). The phases are timed by
wrapping the functions the replay calls (no profiler, so the times are the replay's own); --out
keeps the replay's figures (without its elapsed time) to compare two versions of the code.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

from parvagpu.control import fluid, replay
from parvagpu.control.trace import read_trace
from parvagpu.core.gpus import gpu_type
from parvagpu.inputs.profiles import load_profiles
from parvagpu.inputs.services import load_services

PHASES = defaultdict(lambda: [0.0, 0.0, 0])  # phase -> CPU s, wall s, calls


def _timed(owner, name: str, phase) -> None:
    """Replace owner.name by a wrapper adding its CPU and wall time to `phase(args, kwargs)`."""
    f = getattr(owner, name)

    def wrapper(*a, **k):
        c, w = time.process_time(), time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            p = PHASES[phase(a, k)]
            p[0] += time.process_time() - c
            p[1] += time.perf_counter() - w
            p[2] += 1

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("--settings", type=Path)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    _timed(fluid.AttainmentTable, "_measure", lambda *_: "serving-model states")
    _timed(replay, "plan_for", lambda args, kw: "re-plans (current=)" if kw.get("current") is not None
           or len(args) > 3 else "fresh plans")
    _timed(replay, "check_replan", lambda *_: "transition check (verify, schedule)")
    trace = read_trace(a.dir / "trace.csv")
    slos = {s.model: s.latency_ms for s in load_services(a.dir / "services.yaml")}
    cfg, costs, extra = replay.read_settings(a.settings) if a.settings else (replay.PolicyConfig(), replay.Costs(), {})
    inp = replay.Inputs(trace, slos, load_profiles(a.dir / "profiles"), gpu_type("A100-80GB"))
    c, w = time.process_time(), time.perf_counter()
    rep = replay.replay(inp, replay.Options(**extra), cfg, costs)
    cpu, wall = time.process_time() - c, time.perf_counter() - w
    print(f"replay: {cpu:.1f} s CPU, {wall:.1f} s wall, load average {os.getloadavg()[0]:.2f} at the end; "
          f"{rep.table_entries} serving-model states")
    for name, (pc, pw, n) in sorted(PHASES.items()):
        print(f"  {name}: {pc:.1f} s CPU ({pc / cpu:.0%}), {pw:.1f} s wall, {n} calls")
    rest = cpu - sum(p[0] for p in PHASES.values())
    print(f"  the rest (traffic, windows, ticks): {rest:.1f} s CPU ({rest / cpu:.0%})")
    for r in rep.runs:
        row = r.row()
        print(f"  {row['run']}: {row['gpu_hours']} GPU-hours, attainment {row['attainment']:.6f}")
    if a.out is not None:
        doc = rep.to_dict()
        doc.pop("elapsed_s")
        a.out.write_text(json.dumps(doc, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
