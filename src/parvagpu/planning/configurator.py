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

The admission test is done in exact rational arithmetic, so a latency equal to the threshold is
never admitted because of a float rounding.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Mapping

from parvagpu.core.errors import Unservable
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import Profile, ProfilePoint, Segment, Service, Triplet
from parvagpu.planning.request import PlanRequest

ADMISSION = Fraction(9, 20)  # 0.45: latency per batch must be < 0.45 * SLO


def threshold_ms(latency_slo_ms: Fraction) -> Fraction:
    return ADMISSION * latency_slo_ms


def to_triplet(p: ProfilePoint) -> Triplet:
    return Triplet(p.size, p.batch, p.procs, p.segment_throughput, p.latency_ms)


@dataclass(frozen=True)
class _SizeIndex:
    """Runnable points of one size sorted by latency; prefix_best[k] = best of the first k+1."""

    latencies: tuple[Fraction, ...]
    prefix_best: tuple[Triplet, ...]


@dataclass(frozen=True)
class ProfileIndex:
    """Per-size latency-sorted indexes of one profile, so one model's decision is O(sizes · log n)."""

    by_size: tuple[tuple[int, _SizeIndex], ...]
    fastest_ms: Fraction | None  # the lowest latency of any usable point


def build_index(profile: Profile, gpu: GpuType, max_procs: int) -> ProfileIndex:
    usable = [
        p for p in profile.points if p.runnable and p.procs <= max_procs and gpu.has_size(p.size)
    ]
    by_size = []
    for size in gpu.sizes:
        # Sorted by latency, so the admissible points of any threshold are a prefix. Ties on
        # throughput go to the first in iteration order: (batch, procs), unique within a size.
        pts = sorted((p for p in usable if p.size == size), key=lambda p: p.exact_latency_ms)
        if not pts:
            continue
        best: ProfilePoint | None = None
        prefix = []
        for p in pts:
            if (
                best is None
                or p.segment_throughput > best.segment_throughput
                or (
                    p.segment_throughput == best.segment_throughput
                    and (p.batch, p.procs) < (best.batch, best.procs)
                )
            ):
                best = p
            prefix.append(to_triplet(best))
        by_size.append(
            (size, _SizeIndex(tuple(p.exact_latency_ms for p in pts), tuple(prefix)))
        )
    fastest = min((p.exact_latency_ms for p in usable), default=None)
    return ProfileIndex(tuple(by_size), fastest)


def best_by_size(index: ProfileIndex, latency_slo_ms: Fraction) -> dict[int, Triplet]:
    """The max-throughput admissible triplet of every size that has one."""
    thr = threshold_ms(latency_slo_ms)
    out = {}
    for size, idx in index.by_size:
        k = bisect_left(idx.latencies, thr)  # points with latency < thr
        if k:
            out[size] = idx.prefix_best[k - 1]
    return out


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


def infeasible_message(service: Service, index: ProfileIndex) -> str:
    limit = float(threshold_ms(service.exact_latency_ms))
    if index.fastest_ms is None:
        return f"model {service.model}: profile has no runnable point on this GPU type"
    fastest = float(index.fastest_ms)
    tightest = fastest / float(ADMISSION)
    return (
        f"model {service.model}: no triplet meets the {service.latency_ms:g} ms SLO "
        f"(needs batch latency < {limit:g} ms; fastest profiled batch takes {fastest:g} ms, "
        f"so the tightest SLO it can meet is just above {tightest:g} ms)"
    )


def configure(
    service: Service, profile: Profile, gpu: GpuType, max_procs: int,
    index: ProfileIndex | None = None,
) -> ModelConfig:
    """Optimal triplet decision and demand matching for one service; `Unservable` when no
    triplet meets its SLO."""
    index = index or build_index(profile, gpu, max_procs)
    per_size = best_by_size(index, service.exact_latency_ms)
    if not per_size:
        raise Unservable(infeasible_message(service, index))
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


class IndexCache:
    """Profile indexes built once per distinct profile and reused by every service using it
    (e.g. replicas of one measured model under several service names)."""

    def __init__(self, profiles: Mapping[str, Profile], gpu: GpuType, max_procs: int) -> None:
        self._profiles, self._gpu, self._max_procs = profiles, gpu, max_procs
        self._cache: dict[int, ProfileIndex] = {}

    def __call__(self, model: str) -> ProfileIndex:
        profile = self._profiles[model]
        key = id(profile.points)
        if key not in self._cache:
            self._cache[key] = build_index(profile, self._gpu, self._max_procs)
        return self._cache[key]


def split_feasible(request: PlanRequest) -> tuple[PlanRequest, tuple[str, ...]]:
    """The request narrowed to the services some triplet can serve, and a message for each one
    none can."""
    index = IndexCache(request.profiles, request.gpu, request.max_procs)
    kept, dropped = [], []
    for s in request.services:
        if best_by_size(index(s.model), s.exact_latency_ms):
            kept.append(s)
        else:
            dropped.append(infeasible_message(s, index(s.model)))
    return replace(request, services=tuple(kept)), tuple(dropped)


def configure_all(request: PlanRequest) -> tuple[ModelConfig, ...]:
    """Configure every service of the request, in its order."""
    index = IndexCache(request.profiles, request.gpu, request.max_procs)
    return tuple(
        configure(s, request.profiles[s.model], request.gpu, request.max_procs, index(s.model))
        for s in request.services
    )
