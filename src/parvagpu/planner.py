"""Planning entry point: services and profiles in, a deployment map out. Pure: no I/O."""

from __future__ import annotations

from .allocator import AllocatorPolicy, allocate
from .configurator import configure_all
from .gpus import GpuType
from .model import DeploymentMap, ParvaError, Profile, Service

STRATEGIES = ("parva",)


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


def plan(
    services: tuple[Service, ...],
    profiles: dict[str, Profile],
    gpu: GpuType,
    max_procs: int = 3,
    gpus_per_node: int = 8,
    strategy: str = "parva",
) -> DeploymentMap:
    if strategy not in STRATEGIES:
        raise ParvaError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return plan_parva(services, profiles, gpu, max_procs, gpus_per_node)
