"""Independent plan checker. It shares no code with the planners: it re-derives every fact it
checks from the GPU table, the profiles and the services.

A plan is valid when:
- every instance has a size its GPU's type offers (a fleet plan: the type of the GPU's node), at one
  of its legal start slots, and the instances on one GPU cover disjoint memory slices and at most
  all compute slices, leaving the fleet's reserved slots and GPUs alone;
- every segment is an admissible triplet of its model's profile: the point exists and is runnable,
  procs <= max_procs, its stated throughput is procs x the profiled per-process throughput, and its
  profiled latency is strictly below 0.45 x the model's latency SLO;
- every service has a capacity (sum of its segments' throughputs) >= its rate (or the lower rate
  the plan says it serves), and no segment serves a model that is not a service;
- the stated GPU count matches the GPUs the segments use;
- the plan serves something (at least one service) and names each service once.

Without profiles (`profiles=None`: they cannot be found), segments are checked against what the
plan states (throughput, batch latency, process count) instead of the profiled points.

Each check is a function returning its problems; `verify` runs them all in order.
"""

from __future__ import annotations

import re
from collections import defaultdict
from fractions import Fraction
from functools import lru_cache

from parvagpu.core.errors import ParvaError
from parvagpu.core.exact import capacities, exact as _exact
from parvagpu.core.fleet import reserved_slots
from parvagpu.core.gpus import GpuType, gpu_type
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Service


@lru_cache(maxsize=1 << 16)
def _below_rule(latency_s: float, slo_ms: float) -> bool:
    """A batch latency strictly below 0.45 x the SLO, in exact arithmetic."""
    return _exact(latency_s) * 1000 * 20 < 9 * _exact(slo_ms)


def check_services_listed(plan: DeploymentMap) -> list[str]:
    """A plan serves at least one service and names each once (a second entry's SLO is never met)."""
    if not plan.services:
        return ["the plan has no services"]
    seen: set[str] = set()
    twice = [s.model for s in plan.services if s.model in seen or seen.add(s.model)]
    return [f"service {m} is listed more than once" for m in dict.fromkeys(twice)]


def check_services_agree(plan: DeploymentMap, services: tuple[Service, ...]) -> list[str]:
    """The services checked against must appear in the plan with the same rate and SLO."""
    problems: list[str] = []
    stated = {s.model: s for s in plan.services}
    for m, s in {s.model: s for s in services}.items():
        p = stated.get(m)
        if p is None:
            problems.append(f"service {m} is missing from the plan's services")
        elif (p.rate, p.latency_ms, p.tier) != (s.rate, s.latency_ms, s.tier):
            problems.append(
                f"service {m}: plan says rate {p.rate} / {p.latency_ms} ms, inputs say {s.rate} / {s.latency_ms} ms"
            )
    return problems


def _check_gpu(plan: DeploymentMap, gpu: GpuType, g: int, segs: list[PlacedSegment]) -> list[str]:
    """One GPU: legal sizes and starts, disjoint memory slices, compute slices within the GPU."""
    problems: list[str] = []
    widths = {p.size: p for p in gpu.profiles}
    label = f"node {plan.node_of(g)} gpu {plan.local_gpu(g)}"
    # per memory slice what holds it: a reserved slot's text or (segment, its profile), worded
    # only for a finding (a controller checks every plan it makes)
    used: list = [None] * gpu.memory_slices
    compute = 0
    if plan.fleet is not None:
        mask, compute = reserved_slots(plan.fleet.node(g), plan.local_gpu(g))
        for slot in range(gpu.memory_slices):
            if mask >> slot & 1:
                used[slot] = "a reserved slot"
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
                    f"{label}: {s.model} {prof.name}@{s.start} overlaps {_holder(used[slot])} on memory slice {slot}"
                )
                break
            used[slot] = (s, prof)
    if compute > gpu.compute_slices:
        problems.append(f"{label}: uses {compute} compute slices of {gpu.compute_slices}")
    return problems


def _holder(held) -> str:
    """What holds a memory slice, in words: a reserved slot's text or (segment, its profile)."""
    if isinstance(held, str):
        return held
    seg, prof = held
    return f"{seg.model} {prof.name}@{seg.start}"


def check_placements(plan: DeploymentMap, gpu: GpuType | None = None) -> list[str]:
    """Every GPU's instances form a placement its GPU type allows (`gpu`, else each GPU's own)."""
    per_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in plan.segments:
        per_gpu[s.gpu].append(s)
    problems: list[str] = []
    for g, segs in sorted(per_gpu.items()):
        if plan.fleet is not None and not 0 <= g < plan.fleet.total_gpus:
            problems.append(f"gpu {g}: not a GPU of the plan's fleet")
            continue
        problems += _check_gpu(plan, gpu or gpu_type(plan.gpu_type_of(g)), g, segs)
    return problems


_INDEXES: dict[bytes, dict[tuple[int, int, int], tuple[int, float, float]]] = {}  # by content digest


def _point_index(profile: Profile) -> dict[tuple[int, int, int], tuple[int, float, float]]:
    """A profile's (procs, per-process throughput, latency in s) by (size, batch, procs); the
    first in file order wins. Read from the profile's columns: no point objects are made, so a
    plan over thousands of profiles is checked in time linear in its size and theirs. Kept per
    content (read only), since a re-planning controller checks the same profiles again and again."""
    key = profile.content_key
    lookup = _INDEXES.get(key)
    if lookup is None:
        c = profile.columns
        lookup = {}
        for k, point in zip(zip(c.size.tolist(), c.batch.tolist(), c.procs.tolist()),
                            zip(c.procs.tolist(), c.throughput.tolist(), c.latency_s.tolist())):
            lookup.setdefault(k, point)
        if len(_INDEXES) >= 4096:
            _INDEXES.clear()
        _INDEXES[key] = lookup
    return lookup


def _check_stated(plan: DeploymentMap, s: PlacedSegment, svc: Service, where: str) -> tuple[list[str], float]:
    """A segment checked against what the plan states, when no profiles are at hand."""
    t = s.segment.triplet
    problems = []
    if t.procs > plan.max_procs:
        problems.append(f"{where}: {t.procs} processes exceed max_procs {plan.max_procs}")
    if t.latency_ms > 0 and not _exact(t.latency_ms) * 20 < 9 * _exact(svc.latency_ms):
        problems.append(
            f"{where}: stated batch latency {t.latency_ms:g} ms is not below 0.45 x SLO {svc.latency_ms:g} ms"
        )
    return problems, t.throughput


def _where(plan: DeploymentMap, s: PlacedSegment) -> str:
    """A segment's place in a finding (worded only for one: a controller checks every plan it makes)."""
    return f"node {plan.node_of(s.gpu)} gpu {plan.local_gpu(s.gpu)} start {s.start} ({s.model})"


def check_segments(
    plan: DeploymentMap, profiles: dict[str, Profile] | None, services: tuple[Service, ...],
    type_profiles: dict[str, dict[str, Profile]] | None = None,
) -> tuple[list[str], dict[str, float]]:
    """Every segment is an admissible profiled point of a served model, measured on its GPU's type
    (`type_profiles[type]` where given, else `profiles`). Returns the problems and the capacity each
    model gets from its admissible segments. Without any profiles, the plan's stated figures are
    checked and counted instead."""
    problems: list[str] = []
    by_model = {s.model: s for s in services}
    capacity: dict[str, float] = defaultdict(float)
    points: dict[tuple[str, str], dict[tuple[int, int, int], tuple[int, float, float]]] = {}
    for s in plan.segments:
        t = s.segment.triplet
        svc = by_model.get(s.model)
        if svc is None:
            problems.append(f"{_where(plan, s)}: model {s.model} is not one of the services")
            continue
        kind = plan.gpu_type_of(s.gpu)
        if profiles is None and not type_profiles:
            found, stated = _check_stated(plan, s, svc, _where(plan, s))
            problems += found
            capacity[s.model] += stated
            continue
        prof = (type_profiles or {}).get(kind, profiles or {}).get(s.model)
        if prof is None:
            problems.append(f"{_where(plan, s)}: no profile for model {s.model} on {kind}")
            continue
        if (kind, s.model) not in points:
            points[kind, s.model] = _point_index(prof)
        point = points[kind, s.model].get((t.size, t.batch, t.procs))
        if point is None or point[1] <= 0:
            problems.append(f"{_where(plan, s)}: ({t.size}g, b{t.batch}, p{t.procs}) is not a runnable profiled point")
            continue
        if t.procs > plan.max_procs:
            problems.append(f"{_where(plan, s)}: {t.procs} processes exceed max_procs {plan.max_procs}")
        procs, throughput, latency_s = point
        real = procs * throughput
        if abs(real - t.throughput) > 1e-6 * max(1.0, real):
            problems.append(f"{_where(plan, s)}: states throughput {t.throughput:g}, profile gives {real:g}")
        if not _below_rule(latency_s, svc.latency_ms):
            problems.append(
                f"{_where(plan, s)}: batch latency {float(_exact(latency_s) * 1000):g} ms is not below 0.45 x SLO "
                f"{svc.latency_ms:g} ms = {0.45 * svc.latency_ms:g} ms"
            )
        capacity[s.model] += real
    return problems, capacity


def check_capacity(
    services: tuple[Service, ...], capacity: dict[str, float], served: dict[str, float] | None = None,
) -> list[str]:
    """Every service's capacity reaches its rate, or the lower rate the plan says it serves."""
    served = served or {}
    problems = []
    for svc in services:
        want = served.get(svc.model, svc.rate)
        if not 0 <= want <= svc.rate:
            problems.append(f"service {svc.model}: served rate {want:g} is not between 0 and its rate {svc.rate:g}")
        elif capacity.get(svc.model, 0.0) < want:
            what = "rate" if want == svc.rate else "served rate"
            problems.append(
                f"service {svc.model}: capacity {capacity.get(svc.model, 0.0):g} req/s is below its {what} {want:g}"
            )
    return problems


def check_gpu_count(plan: DeploymentMap, stated_gpus_used: int | None) -> list[str]:
    """The GPU count the plan states is the number its segments use."""
    if stated_gpus_used is not None and stated_gpus_used != plan.gpus_used:
        return [f"plan states gpus_used {stated_gpus_used}, its segments use {plan.gpus_used}"]
    return []


def verify(
    plan: DeploymentMap,
    profiles: dict[str, Profile] | None,
    services: tuple[Service, ...] | None = None,
    stated_gpus_used: int | None = None,
    type_profiles: dict[str, dict[str, Profile]] | None = None,
) -> list[str]:
    """Return the reasons the plan is wrong; an empty list means it is valid.

    `services` defaults to the plan's own; when given, they must also agree with the plan's. A
    fleet plan's segments are checked against `type_profiles` of their GPU's type where given.
    `profiles=None` checks the segments against the plan's stated figures (see the module's note)."""
    try:
        gpu = gpu_type(plan.gpu_type) if plan.fleet is None else None
    except ParvaError as exc:
        return [str(exc)]
    problems = check_services_listed(plan)
    if services is None:
        services = plan.services
    else:
        problems += check_services_agree(plan, services)
    problems += check_placements(plan, gpu)
    segment_problems, capacity = check_segments(plan, profiles, services, type_profiles)
    problems += segment_problems
    problems += check_capacity(services, capacity, dict(plan.served))
    problems += check_gpu_count(plan, stated_gpus_used)
    return problems


class _Replay:
    """The instances a node holds while an ordered transition is replayed: per GPU its segments
    by start slot, and each model's capacity, exact."""

    def __init__(self, type_of, old: DeploymentMap) -> None:
        self.type_of = type_of  # GPU index -> its GpuType (a fleet plan's GPUs differ), None: no such GPU
        self.live: dict[int, dict[int, object]] = defaultdict(dict)  # GPU -> start -> segment
        self.capacity: dict[str, Fraction] = capacities(old.segments)
        for s in old.segments:
            self.live[s.gpu][s.start] = s

    def create(self, s) -> str | None:
        """Place `s`, or say why the hardware would refuse it."""
        gpu = self.type_of(s.gpu)
        if gpu is None:
            return "not a GPU of the plan's fleet"
        widths = {p.size: p for p in gpu.profiles}
        prof = widths.get(s.size)
        if prof is None or s.start not in prof.starts:
            return f"not a legal placement on {gpu.name}"
        on_gpu = self.live[s.gpu]
        mine = set(range(s.start, s.start + prof.memory_slices))
        if any(mine & set(range(o.start, o.start + widths[o.size].memory_slices)) for o in on_gpu.values()):
            return "its memory slices are still in use"
        if sum(o.size for o in on_gpu.values()) + s.size > gpu.compute_slices:
            return "not enough free compute slices"
        on_gpu[s.start] = s
        self.capacity[s.model] += _exact(s.segment.throughput)
        return None

    def remove(self, s) -> str | None:
        """Take `s` away, or say that it is not running."""
        if self.live[s.gpu].get(s.start) != s:
            return "no such segment is running"
        del self.live[s.gpu][s.start]
        self.capacity[s.model] -= _exact(s.segment.throughput)
        return None

    def end_state(self) -> list[tuple]:
        return sorted(_instance_key(o) for g in self.live.values() for o in g.values())


def _instance_key(s) -> tuple:
    """A kept segment is the same instance even if its profiled figure moved."""
    t = s.segment.triplet
    return (s.gpu, s.start, s.model, t.size, t.batch, t.procs)


_BELOW_FLOOR = "below min(old rate, new rate)"
# `verify_schedule`'s finding for a model below its floor before the first step or after a step
_DIP = re.compile(r"^(?:before the first step|step \d+): (.+?) has \S+ req/s, " + re.escape(_BELOW_FLOOR))


def dipping_model(finding: str) -> str | None:
    """The model a `verify_schedule` finding says is below min(old rate, new rate), or None for
    any other finding: read here, beside the wording it parses, for callers that may accept a dip
    (the controller's verdict) or count dips apart."""
    m = _DIP.match(finding)
    return m.group(1) if m else None


def verify_schedule(old: DeploymentMap, new: DeploymentMap, steps) -> list[str]:
    """Replay an ordered transition (steps with `action` "create"/"remove" and a placed `segment`)
    from `old`'s segments and return what is wrong: a creation on an illegal or occupied place, a
    removal of a segment that is not running, an end state other than `new`'s segments, and every
    step after which a model's capacity is below min(its old rate, its new rate)."""
    try:
        if new.fleet is None:
            one = gpu_type(new.gpu_type)
            replay = _Replay(lambda g: one, old)
        else:
            fleet = new.fleet
            replay = _Replay(lambda g: gpu_type(fleet.node(g).gpu) if 0 <= g < fleet.total_gpus else None, old)
    except ParvaError as exc:
        return [str(exc)]
    old_rate = {s.model: _exact(s.rate) for s in old.services}
    floors = {s.model: min(old_rate.get(s.model, Fraction(0)), _exact(s.rate)) for s in new.services}

    def below(m: str, when: str) -> list[str]:
        if m in floors and replay.capacity[m] < floors[m]:
            return [f"{when}: {m} has {float(replay.capacity[m]):g} req/s, {_BELOW_FLOOR} = {float(floors[m]):g}"]
        return []

    problems = [p for m in floors for p in below(m, "before the first step")]
    for i, step in enumerate(steps):
        s = step.segment
        act = {"create": replay.create, "remove": replay.remove}.get(step.action)
        wrong = act(s) if act else f"unknown action {step.action!r}"
        if wrong:
            problems.append(f"step {i + 1} ({step.action} {s.model} {s.size}g at gpu {s.gpu} start {s.start}): {wrong}")
            continue
        problems += below(s.model, f"step {i + 1}")  # only this step's model changed
    end = replay.end_state()
    if end != sorted(_instance_key(s) for s in new.segments):
        problems.append(f"the steps end with {len(end)} segments that are not the new plan's {len(new.segments)}")
    return problems
