"""Comparison planners: the same profiles, the same admission rule (batch latency < 0.45 x the
latency SLO, segment throughput = procs x profiled per-process throughput), other sharing models.

- `mig-only`: MIG instances with one process each, no MPS (the paper's MIG-only ablation and the
  setting of MIG-serving); solved exactly by the optimizer with `max_procs` = 1.
- `mps-only`: no MIG. Whole GPUs are shared by MPS in the manner of gpulet: at most two partitions
  per GPU, each a percentage of the GPU's SMs serving one model with one process. The throughput
  and batch latency of a partition of k/N of the GPU (N compute slices, k a profiled instance size)
  are those profiled for one process on a k-slice MIG instance at the same batch: MPS with
  `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` = 100 k/N gives the process the same share of SMs. Fractions
  with no profiled size (5/7, 6/7 on A100) are not used. No interference penalty is applied,
  although co-located MPS partitions share L2 and memory bandwidth that MIG would isolate, so the
  counts are optimistic for mps-only; batch limits stay those of the k-slice instance's memory
  (conservative, an MPS process may use more). Solved exactly over the two-partition splits.
- `whole-gpu`: neither MIG nor MPS: each model gets ceil(rate / T) whole GPUs, T the throughput of
  its best admissible one-process triplet on the full GPU (the "GPU as-is" deployment). Optimal
  for its own model, so its bound is its GPU count.

Plans of every baseline are ordinary deployment maps: partitions are written as instances of the
matching size at legal starts (any two profiled sizes that fit on an A100 have a legal MIG
placement), so the same checker validates them.
"""

from __future__ import annotations

import math

from parvagpu.planning.configurator import best_by_size, build_index, infeasible_message
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Segment, Service
from parvagpu.core.errors import ParvaError

BASELINES = ("mig-only", "mps-only", "whole-gpu")


def _relabel(plan: DeploymentMap, strategy: str, bound: int, optimal: bool, extra=()) -> DeploymentMap:
    return DeploymentMap(
        plan.gpu_type, strategy, plan.max_procs, plan.gpus_per_node, plan.segments, plan.services,
        bound, plan.stats + (("proven_optimal", float(optimal)),) + tuple(extra),
    )


def plan_mig_only(
    services: tuple[Service, ...], profiles: dict[str, Profile], gpu: GpuType,
    gpus_per_node: int = 8, time_limit: float = 10.0,
) -> DeploymentMap:
    """MIG segments with one process each, solved exactly (heuristic fallback on a time-out)."""
    from parvagpu.planning.optimizer import solve
    from parvagpu.planning.strategies import plan_parva

    res = solve(services, profiles, gpu, 1, gpus_per_node, time_limit=time_limit, strategy="mig-only")
    if res.plan is not None:
        return _relabel(res.plan, "mig-only", res.lower_bound, res.optimal)
    heur = plan_parva(services, profiles, gpu, 1, gpus_per_node)
    bound = min(res.lower_bound, heur.gpus_used)
    return _relabel(heur, "mig-only", bound, heur.gpus_used == bound, (("heuristic_fallback", 1.0),))


def plan_whole_gpu(
    services: tuple[Service, ...], profiles: dict[str, Profile], gpu: GpuType,
    gpus_per_node: int = 8,
) -> DeploymentMap:
    """One model per GPU, replicas on whole GPUs, one process each."""
    full = max(gpu.sizes)
    start = gpu.profile(full).starts[0]
    cache: dict[int, object] = {}
    placed: list[PlacedSegment] = []
    for svc in services:
        prof = profiles[svc.model]
        key = id(prof.points)
        if key not in cache:
            cache[key] = build_index(prof, gpu, 1)
        per_size = best_by_size(cache[key], svc.exact_latency_ms)
        if not per_size:
            raise ParvaError(infeasible_message(svc, cache[key]))
        t = per_size.get(full)
        if t is None:
            raise ParvaError(
                f"whole-gpu: model {svc.model} has no admissible one-process triplet on a whole "
                f"{gpu.name} for its {svc.latency_ms:g} ms SLO"
            )
        n = math.floor(svc.rate / t.throughput)
        if n * t.throughput < svc.rate:
            n += 1
        placed.extend(PlacedSegment(Segment(svc.model, t), len(placed), start) for _ in range(n))
    used = len(placed)
    return DeploymentMap(
        gpu_type=gpu.name, strategy="whole-gpu", max_procs=1, gpus_per_node=gpus_per_node,
        segments=tuple(placed), services=tuple(services), lower_bound=used,
        stats=(("proven_optimal", 1.0),),
    )


def plan_mps_only(
    services: tuple[Service, ...], profiles: dict[str, Profile], gpu: GpuType,
    gpus_per_node: int = 8, time_limit: float = 10.0,
) -> DeploymentMap:
    """gpulet-style MPS sharing (at most two one-process partitions per GPU), solved exactly;
    whole GPUs (a valid mps-only plan) on a time-out."""
    from parvagpu.planning.optimizer import mps_columns, solve

    res = solve(
        services, profiles, gpu, 1, gpus_per_node, time_limit=time_limit,
        columns=mps_columns(gpu, 2), strategy="mps-only",
    )
    if res.plan is not None:
        return _relabel(res.plan, "mps-only", res.lower_bound, res.optimal)
    whole = plan_whole_gpu(services, profiles, gpu, gpus_per_node)
    bound = min(res.lower_bound, whole.gpus_used)
    fallback = DeploymentMap(
        whole.gpu_type, "mps-only", 1, whole.gpus_per_node, whole.segments, whole.services,
    )
    return _relabel(fallback, "mps-only", bound, whole.gpus_used == bound, (("heuristic_fallback", 1.0),))


def plan_baseline(
    strategy: str, services: tuple[Service, ...], profiles: dict[str, Profile], gpu: GpuType,
    max_procs: int = 3, gpus_per_node: int = 8, time_limit: float = 10.0,
) -> DeploymentMap:
    """Dispatch by name. `max_procs` is not used: every baseline runs one process per partition."""
    from parvagpu.planning.strategies import check_services

    check_services(services, profiles)
    if gpus_per_node < 1:
        raise ParvaError(f"gpus per node must be >= 1, got {gpus_per_node}")
    if strategy == "mig-only":
        return plan_mig_only(services, profiles, gpu, gpus_per_node, time_limit)
    if strategy == "mps-only":
        return plan_mps_only(services, profiles, gpu, gpus_per_node, time_limit)
    if strategy == "whole-gpu":
        return plan_whole_gpu(services, profiles, gpu, gpus_per_node)
    raise ParvaError(f"unknown baseline {strategy!r}; known: {', '.join(BASELINES)}")
