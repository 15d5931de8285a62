"""Applying a plan on the fake node: NVML calls and wall time, from scratch and incrementally.

Run: .venv/bin/python bench/bench_apply.py [--repeat 5] [--model resnet50 --factor 1.1]

Cases, summed over the plan's nodes (8 GPUs each):
  A. scenario 6 on empty nodes;
  B. scenario 6 again (nothing to do);
  C. scenario 6 -> the same scenario with one model's rate scaled: incremental apply;
  D. the same change from scratch: tear everything down, then apply (what the reference runtime's
     scripts do: destroy all instances, create all).
Backend calls are counted by the fake (one per MigBackend method, each one NVML operation);
NVML calls are what the real `nvml` backend issues for the same work, counted by running it over
the pynvml-shaped stand-in in tests/nvml_stub.py (needs nvidia-ml-py). Wall time is on the fake:
the agent's own cost (diff, undo log, state file), not the driver's.
Prints a Markdown table; the figures in docs/benchmarks.md come from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from parvagpu.node import NodeDirs, apply_plan, plan_nodes, teardown  # noqa: E402
from parvagpu.cli.common import load_inputs  # noqa: E402
from parvagpu.core.gpus import gpu_type  # noqa: E402
from parvagpu.hardware.mig import FakeBackend, mutating_calls  # noqa: E402
from parvagpu.hardware.mps import FakeMps  # noqa: E402
from parvagpu.planning.heuristic import plan_parva  # noqa: E402
from parvagpu.planning.request import PlanRequest  # noqa: E402


def plans(model: str, factor: float):
    profiles, services = load_inputs(None, None, 6, None, False)
    if model not in {s.model for s in services}:
        raise SystemExit(f"unknown model {model}")
    gpu = gpu_type("A100-80GB")
    base = plan_parva(PlanRequest(services, profiles, gpu))
    changed = tuple(dataclasses.replace(s, rate=s.rate * factor) if s.model == model else s for s in services)
    return base, plan_parva(PlanRequest(changed, profiles, gpu))


def nvml_backend(fake: FakeBackend):
    """The real nvml backend over the stand-in, or None without nvidia-ml-py."""
    try:
        from nvml_stub import StubNvml
    except ImportError:
        return None
    from parvagpu.hardware.mig.nvml import NvmlBackend

    sys.modules["pynvml"] = StubNvml(fake)
    try:
        return NvmlBackend()
    finally:
        del sys.modules["pynvml"]


def run_case(before, after, mode: str, root: Path, nvml: bool) -> dict:
    """Prepare every node with `before` (or empty), reset counters, then do the case's work."""
    stats = Counter()
    nodes = sorted(set(plan_nodes(after)) | (set(plan_nodes(before)) if before else set()))
    elapsed = 0.0
    for node in nodes:
        fake = FakeBackend(after.gpu_type, after.gpus_per_node)
        mps = FakeMps(fake)
        dirs = NodeDirs(root / f"{mode}-{nvml}-{time.perf_counter_ns()}", node)
        if before is not None and node in plan_nodes(before):
            apply_plan(before, node, fake, mps, dirs)
        backend = nvml_backend(fake) if nvml else fake
        if backend is None:
            return {}
        fake.calls.clear()
        mps.calls.clear()
        before_ids = {(g, i.start, i.profile_id): i.uuid for g in range(after.gpus_per_node) for i in fake.list_instances(g)}
        fake.calls.clear()
        t0 = time.perf_counter()
        steps = 0
        if mode == "scratch":
            steps += len(teardown(node, backend, mps, dirs).steps)
        if node in plan_nodes(after):
            steps += len(apply_plan(after, node, backend, mps, dirs).steps)
        else:
            steps += len(teardown(node, backend, mps, dirs).steps)
        elapsed += time.perf_counter() - t0
        counter = Counter(backend.nvml_calls if nvml else backend.calls)  # before reading the result
        after_ids = {(g, i.start, i.profile_id): i.uuid for g in range(after.gpus_per_node) for i in fake.list_instances(g)}
        stats["steps"] += steps
        stats["calls"] += sum(counter.values())
        stats["mutating"] += (
            sum(n for k, n in counter.items() if "Create" in k or "Destroy" in k) if nvml else mutating_calls(counter)
        )
        stats["mps"] += mps.calls["start"] + mps.calls["stop"]
        stats["kept"] += sum(1 for k, u in before_ids.items() if after_ids.get(k) == u)
        stats["instances"] += len(after_ids)
    stats["seconds"] = elapsed
    return dict(stats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--factor", type=float, default=1.1)
    args = ap.parse_args()
    s6, changed = plans(args.model, args.factor)
    cases = [
        ("A", "scenario 6 on empty nodes", None, s6, "apply"),
        ("B", "scenario 6 again (no-op)", s6, s6, "apply"),
        ("C", f"{args.model} rate x{args.factor:g}, incremental", s6, changed, "apply"),
        ("D", f"{args.model} rate x{args.factor:g}, from scratch", s6, changed, "scratch"),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for tag, label, before, after, mode in cases:
            nv = run_case(before, after, mode, root, nvml=True)
            times = []
            for _ in range(args.repeat):
                fk = run_case(before, after, mode, root, nvml=False)
                times.append(fk["seconds"])
            rows.append((tag, label, fk, nv, statistics.median(times)))
    segs = lambda p: {(s.gpu, s.start, s.size, s.model, s.segment.triplet.batch, s.segment.triplet.procs) for s in p.segments}  # noqa: E731
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"scenario 6: {s6.gpus_used} GPUs, {len(s6.segments)} segments; after the change: "
          f"{changed.gpus_used} GPUs, {len(changed.segments)} segments "
          f"({len(segs(s6) - segs(changed))} removed, {len(segs(changed) - segs(s6))} added)")
    print()
    print("| case | steps | backend calls (mutating) | NVML calls (create/destroy) | MPS start+stop | instances kept | wall time (fake) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for tag, label, fk, nv, med in rows:
        nvs = f"{nv['calls']:,} ({nv['mutating']})" if nv else "n/a (no nvidia-ml-py)"
        kept = f"{fk['kept']} of {fk['instances']}" if tag != "A" else f"0 of {fk['instances']}"
        print(f"| {tag}. {label} | {fk['steps']} | {fk['calls']:,} ({fk['mutating']}) | {nvs} | {fk['mps']} | "
              f"{kept} | {med * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
