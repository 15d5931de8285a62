"""From one plan to another: what changes, and a make-before-break order to change it. Pure.

`transition(old, new)` matches segments by `segment_key` (model, node, GPU, slot, size, batch,
procs). `schedule(old, new)` orders the creations and removals so that, at every step, each model
keeps a capacity of at least min(old rate, new rate):

1. create every new segment whose slots are free (creation never lowers capacity);
2. remove every old segment whose model keeps its floor without it; repeat 1-2 while either acts;
3. when stuck, every pending creation waits for old segments whose removal would take a model
   below its floor. With spare GPUs, a *bridge* copy of such a segment is created on a spare GPU
   first, so the removal is safe (bridges go once the new segments run). Otherwise the slots force
   a dip: the creation whose blockers cost the least shortfall is chosen (then the fewest
   blockers), its blockers are removed and it is created at once, so the dip lasts as few steps
   as the slots allow.

Ties go to the lowest (node, GPU, slot), so the order runs node by node where it can. The
result is checked independently by `parvagpu.verify.verify_schedule`.
"""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import (
    DeploymentMap,
    Dip,
    ModelChange,
    PlacedSegment,
    Schedule,
    Service,
    Step,
    Transition,
    segment_key,
)


def _exact(x: float) -> Fraction:
    """Capacities are summed exactly, as the checker does, so a step the scheduler calls safe is
    never a hair below a floor."""
    return Fraction(repr(float(x)))


def _check_compatible(old: DeploymentMap, new: DeploymentMap) -> None:
    if old.fleet is not None or new.fleet is not None:
        # Fleet plans number GPUs by the fleet: comparable only over the same fleet.
        if old.fleet != new.fleet:
            raise ParvaError("the plans are for different fleets (or one is not a fleet plan)")
        return
    if old.gpu_type != new.gpu_type:
        raise ParvaError(f"the plans are for different GPU types ({old.gpu_type}, {new.gpu_type})")
    if old.gpus_per_node != new.gpus_per_node:
        raise ParvaError(
            f"the plans number GPUs differently (gpus_per_node {old.gpus_per_node}, {new.gpus_per_node})"
        )


def model_changes(old: DeploymentMap, new: DeploymentMap) -> tuple[ModelChange, ...]:
    """Per model, in new-service order then models only the old plan serves."""
    old_rate = {s.model: s.rate for s in old.services}
    new_rate = {s.model: s.rate for s in new.services}
    cap_old: dict[str, float] = defaultdict(float)
    cap_new: dict[str, float] = defaultdict(float)
    for s in old.segments:
        cap_old[s.model] += s.segment.throughput
    for s in new.segments:
        cap_new[s.model] += s.segment.throughput
    names = list(new_rate) + [m for m in old_rate if m not in new_rate]
    return tuple(
        ModelChange(m, old_rate.get(m, 0.0), new_rate.get(m, 0.0), cap_old[m], cap_new[m]) for m in names
    )


def transition(old: DeploymentMap, new: DeploymentMap) -> Transition:
    """Kept, added and removed segments from `old` to `new`."""
    _check_compatible(old, new)
    per_node = new.gpus_per_node
    old_keys = {segment_key(s, per_node) for s in old.segments}
    new_keys = {segment_key(s, per_node) for s in new.segments}
    added = tuple(s for s in new.segments if segment_key(s, per_node) not in old_keys)
    removed = tuple(s for s in old.segments if segment_key(s, per_node) not in new_keys)
    return Transition(len(new.segments) - len(added), added, removed, model_changes(old, new))


def old_plan_of(new: DeploymentMap) -> DeploymentMap:
    """The running plan a plan with a `transition` was made from: its segments and its rates
    (latency SLOs of models the new plan no longer serves are unknown and recorded as 0)."""
    t = new.transition
    if t is None:
        raise ParvaError("the plan has no transition section (plan it with --current)")
    gone = {segment_key(s, new.gpus_per_node) for s in t.added}
    kept = tuple(s for s in new.segments if segment_key(s, new.gpus_per_node) not in gone)
    latency = {s.model: s.latency_ms for s in new.services}
    services = tuple(Service(m.model, m.old_rate, latency.get(m.model, 0.0)) for m in t.models if m.old_rate > 0)
    return DeploymentMap(new.gpu_type, "running", new.max_procs, new.gpus_per_node, kept + t.removed, services,
                         fleet=new.fleet)


class _Cluster:
    """Mutable replay state of one scheduling run (never escapes `schedule`)."""

    def __init__(self, plan: DeploymentMap, segments: tuple[PlacedSegment, ...], floors: dict[str, Fraction]) -> None:
        self.gpu = gpu_type(plan.gpu_type) if plan.fleet is None else None  # spare GPUs' type
        self.type_of = (lambda g: self.gpu) if plan.fleet is None else (lambda g: gpu_type(plan.gpu_type_of(g)))
        self.used: dict[int, int] = defaultdict(int)  # memory-slice mask per GPU
        self.compute: dict[int, int] = defaultdict(int)
        self.cap: dict[str, Fraction] = defaultdict(Fraction)
        self.floors = floors
        self.steps: list[Step] = []
        self.below: dict[str, float] = {}  # models below their floor now, by how much
        self.short: list[dict[str, float]] = []  # the same after each step
        for s in segments:
            self._occupy(s, +1)

    def _occupy(self, s: PlacedSegment, sign: int) -> None:
        mask = self.type_of(s.gpu).mask(s.size, s.start)
        self.used[s.gpu] = self.used[s.gpu] | mask if sign > 0 else self.used[s.gpu] & ~mask
        self.compute[s.gpu] += sign * s.size
        self.cap[s.model] += sign * _exact(s.segment.throughput)

    def fits(self, s: PlacedSegment) -> bool:
        gpu = self.type_of(s.gpu)
        return not self.used[s.gpu] & gpu.mask(s.size, s.start) and self.compute[s.gpu] + s.size <= gpu.compute_slices

    def safe(self, s: PlacedSegment) -> bool:
        return self.cap[s.model] - _exact(s.segment.throughput) >= self.floors.get(s.model, 0)

    def act(self, action: str, s: PlacedSegment, bridge: bool = False) -> None:
        self._occupy(s, +1 if action == "create" else -1)
        self.steps.append(Step(action, s, bridge))
        m, floor = s.model, self.floors.get(s.model, 0)
        if self.cap[m] < floor:
            self.below[m] = float(floor - self.cap[m])
        else:
            self.below.pop(m, None)
        self.short.append(dict(self.below))


def _order(s: PlacedSegment, plan: DeploymentMap) -> tuple:
    return (plan.node_of(s.gpu), s.gpu, s.start, s.model)


def schedule(old: DeploymentMap, new: DeploymentMap, spare_gpus: int = 0) -> Schedule:
    """A make-before-break order from `old` to `new` (see the module docstring). `spare_gpus`
    free GPUs, numbered after every GPU either plan uses, may hold bridges."""
    if spare_gpus < 0:
        raise ParvaError(f"spare GPUs must be >= 0, got {spare_gpus}")
    if spare_gpus and new.fleet is not None:
        raise ParvaError("a fleet plan's spare GPUs are its own free GPUs: --spare-gpus does not apply")
    t = transition(old, new)
    floors = {m.model: _exact(m.floor) for m in t.models}
    state = _Cluster(new, old.segments, floors)
    adds = sorted(t.added, key=lambda s: _order(s, new))
    removes = sorted(t.removed, key=lambda s: _order(s, new))
    bridges: list[PlacedSegment] = []
    first_spare = max((s.gpu for s in old.segments + new.segments), default=-1) + 1
    spares = tuple(range(first_spare, first_spare + spare_gpus))
    while adds or removes or bridges:
        if _progress(state, adds, removes, bridges):
            continue
        if not adds:  # only unsafe removals left: the new plan itself is short of a floor
            if removes:
                state.act("remove", removes.pop(0))
            else:
                state.act("remove", bridges.pop(0), bridge=True)
            continue
        pending: dict[int, list[PlacedSegment]] = defaultdict(list)  # removals by GPU, in order
        for r in removes:
            pending[r.gpu].append(r)
        blocked = [(a, _blockers(state, a, pending.get(a.gpu, []))) for a in adds]
        if spares and _bridge(state, blocked, bridges, spares):
            continue
        a, blockers = min(blocked, key=lambda ab: (_cost(state, ab[1]), len(ab[1]), _order(ab[0], new)))
        for r in blockers:
            removes.remove(r)
            state.act("remove", r)
        adds.remove(a)
        state.act("create", a)
    return Schedule(tuple(state.steps), _dips(state), spares)


def _progress(state: _Cluster, adds: list, removes: list, bridges: list) -> bool:
    """Every creation that fits, then every safe removal (bridges last); True if anything acted."""
    acted = False
    for a in list(adds):
        if state.fits(a):
            adds.remove(a)
            state.act("create", a)
            acted = True
    for r in list(removes):
        if state.safe(r):
            removes.remove(r)
            state.act("remove", r)
            acted = True
    if not adds and not removes:
        for b in list(bridges):
            if state.safe(b):
                bridges.remove(b)
                state.act("remove", b, bridge=True)
                acted = True
    return acted


def _blockers(state: _Cluster, a: PlacedSegment, on_gpu: list) -> list[PlacedSegment]:
    """The pending removals (`on_gpu`: those of `a`'s GPU) that must go before `a` fits: those
    overlapping its slots, then, if compute slices are still short, the others, largest first."""
    gpu = state.type_of(a.gpu)
    mask = gpu.mask(a.size, a.start)
    out = [r for r in on_gpu if gpu.mask(r.size, r.start) & mask]
    need = state.compute[a.gpu] + a.size - gpu.compute_slices - sum(r.size for r in out)
    for r in sorted((r for r in on_gpu if r not in out), key=lambda r: -r.size):
        if need <= 0:
            break
        out.append(r)
        need -= r.size
    return out


def _cost(state: _Cluster, blockers: list[PlacedSegment]) -> float:
    """Total shortfall below the floors if `blockers` were all removed now."""
    lost: dict[str, Fraction] = defaultdict(Fraction)
    for r in blockers:
        lost[r.model] += _exact(r.segment.throughput)
    return float(sum(max(Fraction(0), state.floors.get(m, 0) - (state.cap[m] - x)) for m, x in lost.items()))


def _bridge(state: _Cluster, blocked: list, bridges: list, spares: tuple[int, ...]) -> bool:
    """Copy the unsafe blockers of one pending creation onto spare GPUs; True if that was done."""
    for _, blockers in blocked:
        unsafe = [r for r in blockers if not state.safe(r)]
        placed = _fit_on_spares(state, unsafe, spares)
        if unsafe and placed is not None:
            for b in placed:
                bridges.append(b)
                state.act("create", b, bridge=True)
            return True
    return False


def _fit_on_spares(state: _Cluster, segs: list[PlacedSegment], spares: tuple[int, ...]):
    used = {g: state.used[g] for g in spares}
    compute = {g: state.compute[g] for g in spares}
    out = []
    for s in sorted(segs, key=lambda s: -s.size):
        prof = state.gpu.profile(s.size)
        spot = next(
            ((g, st) for g in spares for st in prof.slot_order
             if not used[g] & state.gpu.mask(s.size, st) and compute[g] + s.size <= state.gpu.compute_slices),
            None,
        )
        if spot is None:
            return None
        g, st = spot
        used[g] |= state.gpu.mask(s.size, st)
        compute[g] += s.size
        out.append(PlacedSegment(s.segment, g, st))
    return out


def _dips(state: _Cluster) -> tuple[Dip, ...]:
    """Runs of consecutive steps in which a model is below its floor."""
    out = []
    open_: dict[str, list] = {}
    for i, short in enumerate(state.short + [{}]):
        for m in list(open_):
            if m not in short:
                first, worst, n = open_.pop(m)
                out.append(Dip(m, worst, n, first))
        for m, x in short.items():
            if m in open_:
                open_[m][1] = max(open_[m][1], x)
                open_[m][2] += 1
            else:
                open_[m] = [i, x, 1]
    return tuple(sorted(out, key=lambda d: (d.first, d.model)))
