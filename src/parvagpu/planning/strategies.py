"""Planning entry point: services and profiles in, a deployment map out. Pure: no I/O."""

from __future__ import annotations

import time

from parvagpu.planning.allocator import AllocatorPolicy, allocate
from parvagpu.planning.configurator import configure_all
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, Profile, Service
from parvagpu.core.errors import ParvaError

# `auto` first: the CLI's default. The optimizer and the baselines import HiGHS only when used.
STRATEGIES = ("auto", "optimal", "parva", "mig-only", "mps-only", "whole-gpu")
DEFAULT_TIME_LIMIT = 10.0


def check_services(services: tuple[Service, ...], profiles: dict[str, Profile]) -> None:
    seen: set[str] = set()
    for s in services:
        if s.model not in profiles:
            raise ParvaError(f"model {s.model!r} has no profile (known: {', '.join(sorted(profiles))})")
        if s.model in seen:
            raise ParvaError(f"model {s.model!r} is listed twice")
        if not s.rate > 0:
            raise ParvaError(f"model {s.model}: rate must be positive, got {s.rate}")
        if not s.latency_ms > 0:
            raise ParvaError(f"model {s.model}: latency SLO must be positive, got {s.latency_ms}")
        seen.add(s.model)


def plan_parva(
    services: tuple[Service, ...],
    profiles: dict[str, Profile],
    gpu: GpuType,
    max_procs: int = 3,
    gpus_per_node: int = 8,
    policy: AllocatorPolicy = AllocatorPolicy(),
) -> DeploymentMap:
    """The paper's heuristic: Segment Configurator then Segment Allocator."""
    check_services(services, profiles)
    if gpus_per_node < 1:
        raise ParvaError(f"gpus per node must be >= 1, got {gpus_per_node}")
    configs = configure_all(services, profiles, gpu, max_procs)
    alloc = allocate(configs, gpu, policy)
    return DeploymentMap(
        gpu_type=gpu.name,
        strategy="parva",
        max_procs=max_procs,
        gpus_per_node=gpus_per_node,
        segments=alloc.segments,
        services=services,
        stats=(("gpus_before_optimization", float(alloc.gpus_before_optimization)),),
    )


def _relabel(plan: DeploymentMap, strategy: str, lower_bound: int | None, stats: tuple) -> DeploymentMap:
    return DeploymentMap(
        plan.gpu_type, strategy, plan.max_procs, plan.gpus_per_node, plan.segments, plan.services,
        lower_bound, plan.stats + stats,
    )


def plan_optimal(
    services: tuple[Service, ...],
    profiles: dict[str, Profile],
    gpu: GpuType,
    max_procs: int = 3,
    gpus_per_node: int = 8,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> DeploymentMap:
    """The exact optimizer alone (see `optimizer`); if it finds no plan in time, the heuristic's
    plan is returned with the optimizer's bound."""
    from parvagpu.planning.optimizer import solve

    check_services(services, profiles)
    res = solve(services, profiles, gpu, max_procs, gpus_per_node, time_limit=time_limit)
    if res.plan is not None:
        return _relabel(res.plan, "optimal", res.lower_bound, (("proven_optimal", float(res.optimal)),))
    heur = plan_parva(services, profiles, gpu, max_procs, gpus_per_node)
    bound = min(res.lower_bound, heur.gpus_used)
    return _relabel(heur, "optimal", bound, (
        ("proven_optimal", float(heur.gpus_used == bound)), ("heuristic_fallback", 1.0),
    ))


def plan_auto(
    services: tuple[Service, ...],
    profiles: dict[str, Profile],
    gpu: GpuType,
    max_procs: int = 3,
    gpus_per_node: int = 8,
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> DeploymentMap:
    """The heuristic first, then the optimizer for the rest of `time_limit`, seeded with the
    heuristic's plan; the better plan is kept (fewer GPUs, then fewer GPCs, else the heuristic's),
    with the optimizer's proven bound. Never more GPUs than `parva`."""
    t0 = time.perf_counter()
    heur = plan_parva(services, profiles, gpu, max_procs, gpus_per_node)
    left = time_limit - (time.perf_counter() - t0)
    seen = (("heuristic_gpus", float(heur.gpus_used)),)
    if left <= 0:
        return _relabel(heur, "auto", None, seen + (("from_optimizer", 0.0),))
    from parvagpu.planning.optimizer import solve

    res = solve(services, profiles, gpu, max_procs, gpus_per_node, time_limit=left, start=heur)
    best, from_opt = heur, 0.0
    if res.plan is not None and (res.plan.gpus_used, res.plan.gpcs_used()) < (
        heur.gpus_used, heur.gpcs_used()
    ):
        best, from_opt = res.plan, 1.0
    bound = min(res.lower_bound, best.gpus_used)
    return _relabel(best, "auto", bound, seen + (
        ("from_optimizer", from_opt), ("proven_optimal", float(best.gpus_used == bound)),
    ))


def plan(
    services: tuple[Service, ...],
    profiles: dict[str, Profile],
    gpu: GpuType,
    max_procs: int = 3,
    gpus_per_node: int = 8,
    strategy: str = "parva",
    time_limit: float = DEFAULT_TIME_LIMIT,
) -> DeploymentMap:
    """Plan with one of `STRATEGIES`. `time_limit` (seconds) bounds the exact solves; the
    heuristic alone (`parva`) ignores it."""
    if strategy not in STRATEGIES:
        raise ParvaError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if not time_limit > 0:
        raise ParvaError(f"time limit must be positive, got {time_limit}")
    if strategy == "parva":
        return plan_parva(services, profiles, gpu, max_procs, gpus_per_node)
    if strategy == "auto":
        return plan_auto(services, profiles, gpu, max_procs, gpus_per_node, time_limit)
    if strategy == "optimal":
        return plan_optimal(services, profiles, gpu, max_procs, gpus_per_node, time_limit)
    from parvagpu.planning import baselines

    return baselines.plan_baseline(strategy, services, profiles, gpu, max_procs, gpus_per_node, time_limit)
