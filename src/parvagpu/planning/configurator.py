"""Segment Configurator: optimal triplet decision and demand matching (ParvaGPU, SC'24).

For one model with SLO (rate λ, latency L):

- a triplet (size s, batch b, procs p) is *admissible* when its profiled per-batch latency is
  strictly below 0.45·L (one batch-formation wait plus one execution must fit in L, with a 10 %
  margin) and its throughput is > 0, with p <= max_procs;
- its segment throughput is T = p · (per-process throughput) and its efficiency T / s;
- the *optimal* triplet maximises efficiency; ties go to the first in (size, batch, procs) order;
- the *best triplet of size s* maximises T among admissible triplets of that size (same tie rule);
- demand matching: n = floor(λ / T*), minus one when λ is an exact multiple, copies of the optimal
  segment, then one *last* segment: the best triplet of the smallest size covering the residual.

The admission test is exact (`index`), so a latency equal to the threshold is never admitted
because of a float rounding. The best triplets of every service come from the request's index,
built once for all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

from parvagpu.core.errors import Unservable
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import Profile, Segment, Service, Triplet
from parvagpu.planning.index import ADMISSION, TripletIndex, threshold_ms
from parvagpu.planning.request import PlanRequest

@dataclass(frozen=True)
class ModelConfig:
    """The configurator's decision for one service."""

    service: Service
    optimal: Triplet
    n_optimal: int
    last: Triplet
    per_size: tuple[tuple[int, Triplet], ...]  # best admissible triplet per size

    def best(self, size: int) -> Triplet | None:
        return dict(self.per_size).get(size)

    def segments(self) -> tuple[Segment, ...]:
        m = self.service.model
        return (Segment(m, self.optimal),) * self.n_optimal + (Segment(m, self.last),)


def infeasible_message(service: Service, fastest_ms: Fraction | None) -> str:
    """Why no triplet serves `service`, given the fastest usable latency of its profile."""
    limit = float(threshold_ms(service.exact_latency_ms))
    if fastest_ms is None:
        return f"model {service.model}: profile has no runnable point on this GPU type"
    fastest = float(fastest_ms)
    tightest = fastest / float(ADMISSION)
    return (
        f"model {service.model}: no triplet meets the {service.latency_ms:g} ms SLO "
        f"(needs batch latency < {limit:g} ms; fastest profiled batch takes {fastest:g} ms, "
        f"so the tightest SLO it can meet is just above {tightest:g} ms)"
    )


def decide(service: Service, per_size: dict[int, Triplet]) -> ModelConfig:
    """Optimal triplet decision and demand matching, from the service's best triplet per size
    (not empty)."""
    optimal: Triplet | None = None
    for size in sorted(per_size):  # strict '>' in size order: first maximum wins
        t = per_size[size]
        if optimal is None or t.efficiency > optimal.efficiency:
            optimal = t
    assert optimal is not None
    rate = service.rate
    n = math.floor(rate / optimal.throughput)
    if math.fmod(rate, optimal.throughput) == 0:
        n -= 1
    residual = rate - n * optimal.throughput
    last = next(
        (per_size[s] for s in sorted(per_size) if residual <= per_size[s].throughput), optimal
    )
    return ModelConfig(service, optimal, n, last, tuple(sorted(per_size.items())))


def configure(service: Service, profile: Profile, gpu: GpuType, max_procs: int) -> ModelConfig:
    """One service alone; `Unservable` when no triplet meets its SLO."""
    index = TripletIndex.build([profile], gpu, max_procs)
    per_size = index.best_by_size([profile], [service])[0]
    if not per_size:
        raise Unservable(infeasible_message(service, index.fastest_ms(profile)))
    return decide(service, per_size)


def unservable(request: PlanRequest, i: int) -> Unservable:
    """The error for the request's i-th service, which no triplet can serve."""
    svc = request.services[i]
    return Unservable(infeasible_message(svc, request.index.fastest_ms(request.profiles[svc.model])))


def split_feasible(request: PlanRequest) -> tuple[PlanRequest, tuple[str, ...]]:
    """The request narrowed to the services some triplet can serve, and a message for each one
    none can."""
    kept, dropped = [], []
    for i, (s, per_size) in enumerate(zip(request.services, request.best_by_size)):
        if per_size:
            kept.append(s)
        else:
            dropped.append(str(unservable(request, i)))
    return replace(request, services=tuple(kept)), tuple(dropped)


def configure_all(request: PlanRequest) -> tuple[ModelConfig, ...]:
    """Configure every service of the request, in its order; `Unservable` for the first one no
    triplet can serve."""
    out = []
    for i, (s, per_size) in enumerate(zip(request.services, request.best_by_size)):
        if not per_size:
            raise unservable(request, i)
        hit = _DECIDED.get((s, id(per_size)))
        if hit is None or hit[0] is not per_size:
            if len(_DECIDED) >= _DECIDED_MAX:
                _DECIDED.clear()
            hit = _DECIDED[(s, id(per_size))] = (per_size, decide(s, per_size))
        out.append(hit[1])
    return tuple(out)


# (service, id of its best-triplets dict) -> (that dict, the decision): a decision depends on the
# service and those triplets alone, and a re-planning controller asks for the same services again
# (most rates unchanged between re-plans). The dicts are the request's shared ones (`_BEST`), never
# changed; the entry holds its dict, so a matching id is that same dict.
_DECIDED: dict[tuple, tuple] = {}
_DECIDED_MAX = 100_000
