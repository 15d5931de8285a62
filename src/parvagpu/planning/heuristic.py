"""The paper's heuristic (`parva`): Segment Configurator, then Segment Allocator."""

from __future__ import annotations

from parvagpu.core.model import DeploymentMap
from parvagpu.planning.allocator import AllocatorPolicy, allocate
from parvagpu.planning.configurator import configure_all
from parvagpu.planning.request import PlanRequest


def plan_parva(request: PlanRequest, policy: AllocatorPolicy = AllocatorPolicy()) -> DeploymentMap:
    """Configure every service, then place the segments. Ignores `request.time_limit`."""
    alloc = allocate(configure_all(request), request.gpu, policy)
    return DeploymentMap(
        gpu_type=request.gpu.name,
        strategy="parva",
        max_procs=request.max_procs,
        gpus_per_node=request.gpus_per_node,
        segments=alloc.segments,
        services=request.services,
        stats=(("gpus_before_optimization", float(alloc.gpus_before_optimization)),),
    )
