"""Serving policy derived from a plan: per-segment batch wait, in-flight limit, routing shares.

Shared by the Ray Serve application and the simulator so both run the same policy.

Why these numbers. The planner admits a triplet only if one batch takes `lat_b < 0.45 L` (L = the
SLO), i.e. a request may spend one batch time waiting and one executing, with 10 % margin. The
serving side keeps that promise:

- **Batch wait** `min(0.1 L, time to fill a batch at the planned rate)`: the 10 % of L the rule
  leaves over; shorter when the planned rate fills a batch sooner, so light traffic is not held
  back for nothing.
- **In-flight limit** `D * batch * procs` per segment (queued + executing). A request admitted
  with fewer than `D * batch * procs` ahead of it is in one of the next D batch rounds: it finishes
  within `D * lat_b + wait` (the running batch, D-1 more rounds, its own formation wait). The
  deepest D with `D * lat_b + wait <= L` is `floor((L - wait) / lat_b)`, and the planner's rule
  guarantees D >= 2 (`2 * lat_b < 0.9 L`): the 0.45 L rule is exactly what makes a queue of one
  waiting batch per process safe. Segments far below the rule get a deeper queue.
- A request beyond the limit is rejected at once (HTTP 503): under overload the queue, and so the
  latency of admitted requests, stays bounded instead of growing without end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from parvagpu.core.model import DeploymentMap
from parvagpu.core.errors import ParvaError

MIN_DEPTH = 2  # what the 0.45 L rule guarantees
WAIT_FRACTION = 0.1


@dataclass(frozen=True)
class SegmentSpec:
    """One segment as served: where it is, how it batches, how much it admits."""

    name: str  # unique, stable: "<model>-n<node>-g<gpu>-s<start>"
    model: str
    node: int
    gpu: int  # local index on the node
    start: int
    size: int
    batch: int
    procs: int
    throughput: float  # segment throughput from the profile (all processes), req/s
    latency_ms: float  # profiled per-batch latency at `batch`
    rate: float  # planned share of the model's rate routed here, req/s
    wait_s: float  # batch wait timeout
    limit: int  # in-flight limit (queued + executing)


@dataclass(frozen=True)
class ModelSpec:
    model: str
    rate: float  # planned request rate
    latency_ms: float  # SLO
    segments: tuple[SegmentSpec, ...]

    @property
    def capacity(self) -> float:
        return sum(s.throughput for s in self.segments)

    @property
    def limit(self) -> int:
        return sum(s.limit for s in self.segments)


def batch_wait_s(batch: int, procs: int, rate: float, slo_ms: float) -> float:
    """Longest a replica holds a partial batch open: 10 % of the SLO, or less when the planned
    per-process rate fills the batch sooner. Batch 1 never waits."""
    if batch <= 1:
        return 0.0
    budget = WAIT_FRACTION * slo_ms / 1000.0
    per_proc = rate / procs if procs else 0.0
    fill = (batch - 1) / per_proc if per_proc > 0 else budget
    return max(0.0, min(budget, fill))


def queue_depth(latency_ms: float, slo_ms: float, wait_s: float) -> int:
    """Batch rounds a request may have ahead of it and still meet the SLO (at least 1)."""
    if not latency_ms > 0:
        return MIN_DEPTH
    return max(1, math.floor((slo_ms - 1000.0 * wait_s) / latency_ms))


def inflight_limit(batch: int, procs: int, depth: int) -> int:
    if depth < 1:
        raise ParvaError(f"admission depth must be >= 1, got {depth}")
    return depth * batch * procs


def serving_spec(
    plan: DeploymentMap,
    rate_scale: float = 1.0,
    depth: int | None = None,
    wait_s: float | None = None,
) -> dict[str, ModelSpec]:
    """Per model, its SLO and its segments with routing shares, batch waits and limits.

    `rate_scale` scales the offered rate (the per-segment rates and so the batch waits); `depth`
    fixes the queue depth in batch rounds (default: derived from the SLO, see `queue_depth`);
    `wait_s` overrides the batch wait of every segment with batch > 1."""
    if not 0 < rate_scale < math.inf:
        raise ParvaError(f"rate scale must be positive and finite, got {rate_scale}")
    services = {s.model: s for s in plan.services}
    by_model: dict[str, list] = {}
    for ps in sorted(plan.segments, key=lambda s: (s.gpu, s.start)):
        if ps.model not in services:
            raise ParvaError(f"plan: segment of {ps.model!r} has no service entry")
        by_model.setdefault(ps.model, []).append(ps)
    out: dict[str, ModelSpec] = {}
    for model in sorted(services):
        svc = services[model]
        segs = by_model.get(model, [])
        if not segs:
            raise ParvaError(f"plan: service {model!r} has no segment")
        total = sum(s.segment.throughput for s in segs)
        if not total > 0:
            raise ParvaError(f"plan: segments of {model!r} have no throughput")
        specs = []
        for ps in segs:
            t = ps.segment.triplet
            _check_bounds(model, t.batch, t.procs)
            rate = svc.rate * rate_scale * t.throughput / total
            node, local = plan.node_of(ps.gpu), plan.local_gpu(ps.gpu)
            w = batch_wait_s(t.batch, t.procs, rate, svc.latency_ms) if wait_s is None else (
                wait_s if t.batch > 1 else 0.0
            )
            specs.append(
                SegmentSpec(
                    name=f"{model}-n{node}-g{local}-s{ps.start}",
                    model=model, node=node, gpu=local, start=ps.start, size=t.size,
                    batch=t.batch, procs=t.procs, throughput=t.throughput, latency_ms=t.latency_ms,
                    rate=rate, wait_s=w,
                    limit=inflight_limit(
                        t.batch, t.procs, queue_depth(t.latency_ms, svc.latency_ms, w) if depth is None else depth
                    ),
                )
            )
        out[model] = ModelSpec(model, svc.rate * rate_scale, svc.latency_ms, tuple(specs))
    return out


def reduce_spec(spec: dict[str, ModelSpec], max_segments: int | None = None,
                max_replicas: int | None = None) -> dict[str, ModelSpec]:
    """The spec on a smaller machine: per model at most `max_segments` segments (the fastest), each
    with at most `max_replicas` processes; throughputs and in-flight limits shrink in proportion, the
    routing shares follow the throughputs, batch sizes and waits stay as planned."""
    for what, v in (("max segments", max_segments), ("max replicas", max_replicas)):
        if v is not None and v < 1:
            raise ParvaError(f"{what} must be >= 1, got {v}")
    out = {}
    for model, ms in spec.items():
        segs = sorted(ms.segments, key=lambda s: (-s.throughput, s.name))[:max_segments or len(ms.segments)]
        segs = [s for s in ms.segments if s in segs]  # keep the plan's order
        if max_replicas is not None:
            segs = [_fewer_procs(s, min(s.procs, max_replicas)) for s in segs]
        total = sum(s.throughput for s in segs)
        segs = [replace(s, rate=ms.rate * s.throughput / total) for s in segs]
        out[model] = replace(ms, segments=tuple(segs))
    return out


def select_segments(spec: dict[str, ModelSpec], names: list[str]) -> dict[str, ModelSpec]:
    """The spec with only the named segments (a pod of `export k8s` serves one): each keeps its
    batch, processes, wait and limit as planned; a model keeps the rate its selected segments were
    planned to carry; models with none selected are left out. An unknown name is an error."""
    known = {s.name for ms in spec.values() for s in ms.segments}
    unknown = sorted(set(names) - known)
    if unknown:
        some = ", ".join(sorted(known)[:8]) + (", ..." if len(known) > 8 else "")
        raise ParvaError(f"no segment {', '.join(map(repr, unknown))} in the plan (its segments: {some})")
    out = {}
    for model, ms in spec.items():
        segs = tuple(s for s in ms.segments if s.name in names)
        if segs:
            out[model] = replace(ms, rate=sum(s.rate for s in segs), segments=segs)
    return out


def _fewer_procs(s: SegmentSpec, procs: int) -> SegmentSpec:
    """The segment with `procs` processes: throughput and limit (D x batch x procs) in proportion."""
    return replace(s, procs=procs, throughput=s.throughput * procs / s.procs, limit=s.limit // s.procs * procs)


class Admission:
    """In-flight counters per segment of one model, with their limits.

    The ingress asks `try_acquire(i)` before forwarding to segment i and calls `release(i)` when the
    call ends, whatever its outcome, so a dead replica cannot leak capacity.

    With `adaptive` (the segments' batch, procs, wait, profiled latency and the SLO), each answer's
    measured batch time feeds an average, and a segment that runs slower than its profile (a busy
    CPU, a throttled or shared GPU) gets the smaller limit its real batch time allows: the queue
    stays within the SLO instead of within a bound computed for faster hardware. It never grows
    above the profile's limit."""

    def __init__(self, limits: list[int], adaptive: list[tuple[int, int, float, float, float]] | None = None,
                 alpha: float = 0.1) -> None:
        if any(lim < 1 for lim in limits):
            raise ParvaError(f"in-flight limits must be >= 1, got {limits}")
        if adaptive is not None and len(adaptive) != len(limits):
            raise ParvaError("adaptive admission needs one (batch, procs, wait_s, latency_ms, slo_ms) per segment")
        self.static = list(limits)
        self.limits = list(limits)
        self.inflight = [0] * len(limits)
        self.adaptive = None if adaptive is None else list(adaptive)
        self.alpha = alpha
        self.batch_ms: list[float | None] = [None] * len(limits)

    def has_room(self, i: int, n: int = 1) -> bool:
        """Whether segment i can take n more items (a request of n items counts n)."""
        return self.inflight[i] + n <= self.limits[i]

    def try_acquire(self, i: int, n: int = 1) -> bool:
        if not self.has_room(i, n):
            return False
        self.inflight[i] += n
        return True

    def release(self, i: int, n: int = 1) -> None:
        if self.inflight[i] < n:
            raise RuntimeError(f"release of {n} on segment {i} with {self.inflight[i]} in flight")
        self.inflight[i] -= n

    def append(self, limit: int, adaptive: tuple[int, int, float, float, float] | None = None) -> int:
        """A new segment's counters (a transition adds it); its index."""
        if limit < 1:
            raise ParvaError(f"in-flight limits must be >= 1, got {limit}")
        if (self.adaptive is None) != (adaptive is None):
            raise ParvaError("a new segment needs adaptive figures exactly when the others have them")
        self.static.append(limit)
        self.limits.append(limit)
        self.inflight.append(0)
        self.batch_ms.append(None)
        if self.adaptive is not None:
            self.adaptive.append(adaptive)
        return len(self.limits) - 1

    def keep(self, indices: list[int]) -> None:
        """Keep only these segments' counters, in this order (segments removed by a transition go);
        only when nothing is in flight on the others."""
        if any(self.inflight[i] for i in range(len(self.inflight)) if i not in indices):
            raise RuntimeError("a segment with requests in flight cannot be dropped")
        for name in ("static", "limits", "inflight", "batch_ms"):
            vals = getattr(self, name)
            setattr(self, name, [vals[i] for i in indices])
        if self.adaptive is not None:
            self.adaptive = [self.adaptive[i] for i in indices]

    def observe(self, i: int, batch_ms: float) -> None:
        """Record one measured batch time of segment i and update its limit."""
        if self.adaptive is None or not batch_ms > 0:
            return
        prev = self.batch_ms[i]
        avg = batch_ms if prev is None else prev + self.alpha * (batch_ms - prev)
        self.batch_ms[i] = avg
        batch, procs, wait_s, latency_ms, slo_ms = self.adaptive[i]
        depth = queue_depth(max(latency_ms, avg), slo_ms, wait_s)
        self.limits[i] = max(1, min(self.static[i], inflight_limit(batch, procs, depth)))


MAX_BATCH = 4096  # a batch is held as one array per segment; profiles stop far below this
MAX_PROCS = 48  # MPS serves at most 48 clients per device


def _check_bounds(model: str, batch: int, procs: int) -> None:
    if not 1 <= batch <= MAX_BATCH:
        raise ParvaError(f"plan: a segment of {model!r} has batch {batch}; serving takes batches 1..{MAX_BATCH}")
    if not 1 <= procs <= MAX_PROCS:
        raise ParvaError(f"plan: a segment of {model!r} has {procs} processes; serving takes 1..{MAX_PROCS}")
