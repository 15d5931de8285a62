"""The planning request: what every strategy plans from, checked once when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, Profile, Service, Triplet
from parvagpu.planning.index import TripletIndex

# Seconds the exact solves may take when the caller names no limit.
DEFAULT_TIME_LIMIT = 10.0
DEFAULT_MAX_PROCS = 3  # the paper's limit of MPS processes per segment
DEFAULT_GPUS_PER_NODE = 8


@dataclass(frozen=True)
class PlanRequest:
    """Services to serve, their models' profiles, the GPU type and the planning limits.

    `time_limit` (seconds) bounds the exact solves; the heuristic alone ignores it. A request that
    exists is valid: every service has a profile, is listed once, and has a positive rate and
    latency SLO; the limits are in range. Whether an SLO can be met is the planners' question
    (`Unservable`), not the request's.

    `current`, when given, is the running plan to re-plan from (`plan --current`): the planners
    then also minimise the segments that change, and may use up to `max_extra_gpus` GPUs more
    than a fresh plan to change fewer."""

    services: tuple[Service, ...]
    profiles: Mapping[str, Profile] = field(repr=False)
    gpu: GpuType
    max_procs: int = DEFAULT_MAX_PROCS
    gpus_per_node: int = DEFAULT_GPUS_PER_NODE
    time_limit: float = DEFAULT_TIME_LIMIT
    current: DeploymentMap | None = field(default=None, repr=False)
    max_extra_gpus: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", tuple(self.services))
        if self.max_procs < 1:
            raise ParvaError(f"max procs must be >= 1, got {self.max_procs}")
        if self.gpus_per_node < 1:
            raise ParvaError(f"gpus per node must be >= 1, got {self.gpus_per_node}")
        if not self.time_limit > 0:
            raise ParvaError(f"time limit must be positive, got {self.time_limit}")
        _check_services(self.services, self.profiles)
        if self.max_extra_gpus < 0:
            raise ParvaError(f"max extra GPUs must be >= 0, got {self.max_extra_gpus}")
        cur = self.current
        if cur is not None and (cur.gpu_type != self.gpu.name or cur.gpus_per_node != self.gpus_per_node):
            raise ParvaError(
                f"the running plan is for {cur.gpu_type} with {cur.gpus_per_node} GPUs per node; "
                f"this request is for {self.gpu.name} with {self.gpus_per_node}"
            )

    # Derived once per request and shared by every planner that plans it (`auto` runs two).
    @cached_property
    def index(self) -> TripletIndex:
        """The admissible-triplet index of the services' profiles (one entry per distinct content)."""
        return TripletIndex.build([self.profiles[s.model] for s in self.services], self.gpu, self.max_procs)

    @cached_property
    def best_by_size(self) -> tuple[dict[int, Triplet], ...]:
        """Per service, in order: the max-throughput admissible triplet of every size that has one
        (empty when no triplet meets the service's SLO). Shared with earlier requests of the same
        GPU type and limit (`_BEST`): a service's entry depends on its profile and SLO alone, not
        on its rate or the other services, and re-planning asks for the same ones again and again."""
        keys = [(self.profiles[s.model].content_key, float(s.latency_ms)) for s in self.services]
        memo = _BEST.setdefault((self.gpu, self.max_procs), {})
        new = {k: s for k, s in zip(keys, self.services) if k not in memo}
        if new:
            services = list(new.values())
            profiles = [self.profiles[s.model] for s in services]
            index = TripletIndex.build(profiles, self.gpu, self.max_procs)
            if len(memo) + len(new) > _BEST_MAX:
                memo.clear()
            memo.update(zip(new, index.best_by_size(profiles, services)))
        return tuple(memo[k] for k in keys)


# (GPU type, max procs) -> (profile content, latency SLO) -> the best triplet per size: the index's
# answer for one service depends on nothing else (its groups never mix profiles), so requests that
# differ only in rates (every re-plan of a controller) build no index. Cleared when it grows past
# _BEST_MAX entries; the dicts in it are never changed by their users.
_BEST: dict[tuple, dict[tuple[bytes, float], dict[int, Triplet]]] = {}
_BEST_MAX = 100_000


def _check_services(services: tuple[Service, ...], profiles: Mapping[str, Profile]) -> None:
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
