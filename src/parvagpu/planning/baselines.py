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
from dataclasses import replace

from parvagpu.core.errors import Unservable
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment
from parvagpu.planning.configurator import unservable
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.optimizer import mps_columns, solve
from parvagpu.planning.request import PlanRequest


def _labelled(plan: DeploymentMap, strategy: str, bound: int, optimal: bool, extra=()) -> DeploymentMap:
    return replace(
        plan, strategy=strategy, lower_bound=bound,
        stats=plan.stats + (("proven_optimal", float(optimal)),) + tuple(extra),
    )


def plan_mig_only(request: PlanRequest) -> DeploymentMap:
    """MIG segments with one process each, solved exactly (heuristic fallback on a time-out)."""
    one = replace(request, max_procs=1)
    res = solve(one, strategy="mig-only")
    if res.plan is not None:
        return _labelled(res.plan, "mig-only", res.lower_bound, res.optimal)
    heur = plan_parva(one)
    bound = min(res.lower_bound, heur.gpus_used)
    return _labelled(heur, "mig-only", bound, heur.gpus_used == bound, (("heuristic_fallback", 1.0),))


def plan_whole_gpu(request: PlanRequest) -> DeploymentMap:
    """One model per GPU, replicas on whole GPUs, one process each."""
    gpu = request.gpu
    full = max(gpu.sizes)
    start = gpu.profile(full).starts[0]
    one = replace(request, max_procs=1)
    placed: list[PlacedSegment] = []
    for i, (svc, per_size) in enumerate(zip(one.services, one.best_by_size)):
        if not per_size:
            raise unservable(one, i)
        t = per_size.get(full)
        if t is None:
            raise Unservable(
                f"whole-gpu: model {svc.model} has no admissible one-process triplet on a whole "
                f"{gpu.name} for its {svc.latency_ms:g} ms SLO"
            )
        n = math.floor(svc.rate / t.throughput)
        if n * t.throughput < svc.rate:
            n += 1
        placed.extend(PlacedSegment(Segment(svc.model, t), len(placed), start) for _ in range(n))
    used = len(placed)
    return DeploymentMap(
        gpu_type=gpu.name, strategy="whole-gpu", max_procs=1, gpus_per_node=request.gpus_per_node,
        segments=tuple(placed), services=request.services, lower_bound=used,
        stats=(("proven_optimal", 1.0),),
    )


def plan_mps_only(request: PlanRequest) -> DeploymentMap:
    """gpulet-style MPS sharing (at most two one-process partitions per GPU), solved exactly;
    whole GPUs (a valid mps-only plan) on a time-out."""
    one = replace(request, max_procs=1)
    res = solve(one, columns=mps_columns(request.gpu, 2), strategy="mps-only")
    if res.plan is not None:
        return _labelled(res.plan, "mps-only", res.lower_bound, res.optimal)
    whole = plan_whole_gpu(request)
    bound = min(res.lower_bound, whole.gpus_used)
    fallback = replace(whole, strategy="mps-only", lower_bound=None, stats=())
    return _labelled(fallback, "mps-only", bound, whole.gpus_used == bound, (("heuristic_fallback", 1.0),))


# Every baseline runs one process per partition, whatever the request's `max_procs`.
BASELINES = {"mig-only": plan_mig_only, "mps-only": plan_mps_only, "whole-gpu": plan_whole_gpu}
