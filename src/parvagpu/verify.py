"""Independent plan checker. It shares no code with the planners: it re-derives every fact it
checks from the GPU table, the profiles and the services.

A plan is valid when:
- every instance has a size the GPU type offers, at one of its legal start slots, and the instances
  on one GPU cover disjoint memory slices and at most all compute slices;
- every segment is an admissible triplet of its model's profile: the point exists and is runnable,
  procs <= max_procs, its stated throughput is procs x the profiled per-process throughput, and its
  profiled latency is strictly below 0.45 x the model's latency SLO;
- every service has a capacity (sum of its segments' throughputs) >= its rate, and no segment
  serves a model that is not a service;
- the stated GPU count matches the GPUs the segments use.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap, Profile, Service
from parvagpu.core.errors import ParvaError


def _exact(x: float) -> Fraction:
    return Fraction(repr(float(x)))


def verify(
    plan: DeploymentMap,
    profiles: dict[str, Profile],
    services: tuple[Service, ...] | None = None,
    stated_gpus_used: int | None = None,
) -> list[str]:
    """Return the reasons the plan is wrong; an empty list means it is valid."""
    problems: list[str] = []
    try:
        gpu = gpu_type(plan.gpu_type)
    except ParvaError as exc:
        return [str(exc)]
    services = plan.services if services is None else services
    by_model = {s.model: s for s in services}
    if services is not plan.services:
        stated = {s.model: s for s in plan.services}
        for m, s in by_model.items():
            p = stated.get(m)
            if p is None:
                problems.append(f"service {m} is missing from the plan's services")
            elif (p.rate, p.latency_ms) != (s.rate, s.latency_ms):
                problems.append(
                    f"service {m}: plan says rate {p.rate} / {p.latency_ms} ms, inputs say {s.rate} / {s.latency_ms} ms"
                )

    widths = {p.size: p for p in gpu.profiles}
    per_gpu: dict[int, list] = defaultdict(list)
    for s in plan.segments:
        per_gpu[s.gpu].append(s)
    for g, segs in sorted(per_gpu.items()):
        label = f"node {plan.node_of(g)} gpu {plan.local_gpu(g)}"
        used = [None] * gpu.memory_slices
        compute = 0
        for s in sorted(segs, key=lambda s: s.start):
            prof = widths.get(s.size)
            if prof is None:
                problems.append(f"{label}: {s.model} has size {s.size}g, which {gpu.name} does not offer")
                continue
            if s.start not in prof.starts:
                problems.append(
                    f"{label}: {s.model} {prof.name} at start {s.start} is not a legal placement "
                    f"(legal starts {list(prof.starts)})"
                )
                continue
            compute += s.size
            for slot in range(s.start, s.start + prof.memory_slices):
                if used[slot] is not None:
                    problems.append(
                        f"{label}: {s.model} {prof.name}@{s.start} overlaps {used[slot]} on memory slice {slot}"
                    )
                    break
                used[slot] = f"{s.model} {prof.name}@{s.start}"
        if compute > gpu.compute_slices:
            problems.append(f"{label}: uses {compute} compute slices of {gpu.compute_slices}")

    capacity: dict[str, float] = defaultdict(float)
    points: dict[str, dict] = {}  # per model: (size, batch, procs) -> profiled point
    for s in plan.segments:
        t = s.segment.triplet
        where = f"node {plan.node_of(s.gpu)} gpu {plan.local_gpu(s.gpu)} start {s.start} ({s.model})"
        svc = by_model.get(s.model)
        if svc is None:
            problems.append(f"{where}: model {s.model} is not one of the services")
            continue
        prof = profiles.get(s.model)
        if prof is None:
            problems.append(f"{where}: no profile for model {s.model}")
            continue
        if s.model not in points:
            lookup = points[s.model] = {}
            for p in prof.points:
                lookup.setdefault((p.size, p.batch, p.procs), p)
        point = points[s.model].get((t.size, t.batch, t.procs))
        if point is None or point.throughput <= 0:
            problems.append(f"{where}: ({t.size}g, b{t.batch}, p{t.procs}) is not a runnable profiled point")
            continue
        if t.procs > plan.max_procs:
            problems.append(f"{where}: {t.procs} processes exceed max_procs {plan.max_procs}")
        real = point.procs * point.throughput
        if abs(real - t.throughput) > 1e-6 * max(1.0, real):
            problems.append(f"{where}: states throughput {t.throughput:g}, profile gives {real:g}")
        lat_ms = _exact(point.latency_s) * 1000
        if not lat_ms * 20 < 9 * _exact(svc.latency_ms):
            problems.append(
                f"{where}: batch latency {float(lat_ms):g} ms is not below 0.45 x SLO "
                f"{svc.latency_ms:g} ms = {0.45 * svc.latency_ms:g} ms"
            )
        capacity[s.model] += real
    for svc in services:
        if capacity[svc.model] < svc.rate:
            problems.append(
                f"service {svc.model}: capacity {capacity[svc.model]:g} req/s is below its rate {svc.rate:g}"
            )
    if stated_gpus_used is not None and stated_gpus_used != plan.gpus_used:
        problems.append(f"plan states gpus_used {stated_gpus_used}, its segments use {plan.gpus_used}")
    return problems
