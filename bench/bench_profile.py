"""CPU profile of the project's tiny CNN: per-process throughput and latency across batches
1-64, 1-3 processes and instance sizes (cores) 1-2, measured by `parvagpu profile --mode cpu`.

Run: .venv/bin/python bench/bench_profile.py [--duration 2] [--out DIR]
Prints Markdown tables; the figures in docs/benchmarks.md come from it. It also compares the
measured throughput with batch / mean latency, the relation the seed profiles follow
(Throughput ~ Batch size / Latency), on the measured rows and on the embedded seed data.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from parvagpu.cli.common import example_dir
from parvagpu.profiler.sysinfo import cpu_name, library_versions
from parvagpu.inputs.profiles import load_profile, load_profiles

SIZES, BATCHES, PROCS = (1, 2), (1, 2, 4, 8, 16, 32, 64), (1, 2, 3)


def ratio(p) -> float:
    """Measured per-process throughput over batch / mean latency (1.0 = no time between batches)."""
    return p.throughput / (p.batch / p.latency_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=None, help="keep the profile here (default: a temporary directory)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-profile-"))
    cmd = [
        sys.executable, "-m", "parvagpu", "profile", "parvagpu.profiler.zoo:tiny_cnn", "--mode", "cpu",
        "--sizes", ",".join(map(str, SIZES)), "--batches", ",".join(map(str, BATCHES)),
        "--procs", ",".join(map(str, PROCS)), "--duration", str(args.duration), "--out", str(out), "--quiet",
    ]
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    prof = load_profile(out / "tiny_cnn.csv")
    pts = {(p.size, p.batch, p.procs): p for p in prof.points}
    libs = library_versions()

    print(f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}; python {libs['python']}, "
          f"torch {libs['torch']}; {len(pts)} points at {args.duration:g} s each in {wall:.0f} s "
          f"(1-min load average {load_before:.1f} before, {load_after:.1f} after)")
    print()
    head = "| size | batch | " + " | ".join(f"p={p}: items/s per process | p={p}: latency ms (p99)" for p in PROCS) + " |"
    print(head)
    print("|---:|---:|" + "---:|---:|" * len(PROCS))
    for s in SIZES:
        for b in BATCHES:
            cells = []
            for p in PROCS:
                pt = pts.get((s, b, p))
                if pt is None or not pt.runnable:
                    cells += ["0", "0"]
                    continue
                p99 = float(dict(pt.extra)["Latency p99"]) * 1000
                cells += [f"{pt.throughput:,.0f}", f"{pt.latency_ms:.3f} ({p99:.3f})"]
            print(f"| {s} | {b} | " + " | ".join(cells) + " |")
    print()
    print("Best segment throughput (procs x per-process) per size:")
    print()
    print("| size | best triplet (batch, procs) | segment items/s | per core |")
    print("|---:|---|---:|---:|")
    for s in SIZES:
        best = max((p for p in prof.points if p.size == s and p.runnable), key=lambda p: p.segment_throughput)
        print(f"| {s} | ({best.batch}, {best.procs}) | {best.segment_throughput:,.0f} | {best.segment_throughput / s:,.0f} |")
    print()
    print("Throughput / (batch / latency):")
    print()
    print("| data | rows | min | median | max |")
    print("|---|---:|---:|---:|---:|")
    for p in PROCS:
        r = [ratio(x) for x in prof.points if x.procs == p and x.runnable]
        print(f"| measured, {p} process(es) | {len(r)} | {min(r):.3f} | {statistics.median(r):.3f} | {max(r):.3f} |")
    seed = [ratio(x) for prof_ in load_profiles(example_dir() / "profiles").values() for x in prof_.points
            if x.runnable and x.latency_s >= 0.01]  # 1 ms rounding makes shorter latencies meaningless
    print(f"| seed A100 profiles (latency >= 10 ms) | {len(seed)} | {min(seed):.3f} | {statistics.median(seed):.3f} "
          f"| {max(seed):.3f} |")


if __name__ == "__main__":
    main()
