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

Ties go to the lowest (node, GPU, slot), so the order runs node by node where it can. Each pass
looks only at the steps that may have changed (a creation after a removal on its GPU, a removal
after its model gained capacity), so a change of 19,000 segments is ordered in seconds. The
result is checked independently by `parvagpu.verify.verify_schedule`.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque
from fractions import Fraction
from typing import Sequence

# capacities summed exactly, as the checker does: a step the scheduler calls safe is never a hair
# below a floor
from parvagpu.core.exact import exact as _exact
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
    """Kept, added and removed segments from `old` to `new`. The last few answers are kept: a
    re-plan makes its plan's transition and the controller's check asks `schedule` for the same
    one (the plan `replace`d with it: the same segment and service tuples) right after."""
    for o, n, t in _RECENT:
        if _same(o, old) and _same(n, new):
            return t
    t = _transition(old, new)
    _RECENT.append((old, new, t))
    return t


# (old, new, their transition) of the last calls; holding the plans keeps their tuples' identity
_RECENT: deque = deque(maxlen=4)


def _same(a: DeploymentMap, b: DeploymentMap) -> bool:
    """Whether two plans have the same segments and services (the same tuple objects: plans are
    frozen, so these cannot have changed) and numbering: what `transition` reads."""
    return a is b or (a.segments is b.segments and a.services is b.services and a.gpu_type == b.gpu_type
                      and a.gpus_per_node == b.gpus_per_node and a.fleet == b.fleet)


def _transition(old: DeploymentMap, new: DeploymentMap) -> Transition:
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
    """Mutable replay state of one scheduling run (never escapes `schedule`).

    Capacities are integers in units of 1/`unit` req/s (`unit`: a common denominator of every
    throughput and floor as written), so sums are exact, as the checker's, and cheap."""

    def __init__(self, plan: DeploymentMap, segments: tuple[PlacedSegment, ...], floors: dict[str, Fraction],
                 others: tuple[PlacedSegment, ...] = ()) -> None:
        self.gpu = gpu_type(plan.gpu_type) if plan.fleet is None else None  # spare GPUs' type
        self.type_of = (lambda g: self.gpu) if plan.fleet is None else (lambda g: gpu_type(plan.gpu_type_of(g)))
        self.used: dict[int, int] = defaultdict(int)  # memory-slice mask per GPU
        self.compute: dict[int, int] = defaultdict(int)
        exact = {x: _exact(x) for x in {s.segment.throughput for s in segments + others}}
        self.unit = math.lcm(1, *(f.denominator for f in exact.values()), *(f.denominator for f in floors.values()))
        self.thr = {x: f.numerator * (self.unit // f.denominator) for x, f in exact.items()}
        self.floors = {m: f.numerator * (self.unit // f.denominator) for m, f in floors.items()}
        self.cap: dict[str, int] = defaultdict(int)
        self.steps: list[Step] = []
        self.open: dict[str, list] = {}  # models below their floor now: [first step, worst shortfall]
        self.dips: list[Dip] = []  # those that came back up
        self.watch: list = []  # called with each segment acted on (the scheduler's indexes)
        for s in segments:
            self._occupy(s, +1)

    def _occupy(self, s: PlacedSegment, sign: int) -> None:
        mask = self.type_of(s.gpu).mask(s.size, s.start)
        self.used[s.gpu] = self.used[s.gpu] | mask if sign > 0 else self.used[s.gpu] & ~mask
        self.compute[s.gpu] += sign * s.size
        self.cap[s.model] += sign * self.thr[s.segment.throughput]

    def fits(self, s: PlacedSegment) -> bool:
        gpu = self.type_of(s.gpu)
        return not self.used[s.gpu] & gpu.mask(s.size, s.start) and self.compute[s.gpu] + s.size <= gpu.compute_slices

    def safe(self, s: PlacedSegment) -> bool:
        return self.cap[s.model] - self.thr[s.segment.throughput] >= self.floors.get(s.model, 0)

    def act(self, action: str, s: PlacedSegment, bridge: bool = False) -> None:
        self._occupy(s, +1 if action == "create" else -1)
        self.steps.append(Step(action, s, bridge))
        m, floor, i = s.model, self.floors.get(s.model, 0), len(self.steps) - 1
        if self.cap[m] < floor:
            x = (floor - self.cap[m]) / self.unit
            if m in self.open:
                self.open[m][1] = max(self.open[m][1], x)
            else:
                self.open[m] = [i, x]
        elif m in self.open:
            first, worst = self.open.pop(m)
            self.dips.append(Dip(m, worst, i - first, first))
        for f in self.watch:
            f(action, s)


def _order(s: PlacedSegment, plan: DeploymentMap) -> tuple:
    return (plan.node_of(s.gpu), s.gpu, s.start, s.model)


def schedule(old: DeploymentMap, new: DeploymentMap, spare_gpus: int = 0,
             spares: Sequence[int] | None = None) -> Schedule:
    """A make-before-break order from `old` to `new` (see the module docstring). `spare_gpus`
    free GPUs, numbered after every GPU either plan uses, may hold bridges. `spares` names the
    free GPUs instead (a node agent's own): then a segment is bridged only onto a spare GPU of
    its own node."""
    if spare_gpus < 0:
        raise ParvaError(f"spare GPUs must be >= 0, got {spare_gpus}")
    if (spare_gpus or spares) and new.fleet is not None:
        raise ParvaError("a fleet plan's spare GPUs are its own free GPUs: --spare-gpus does not apply")
    t = transition(old, new)
    floors = {m.model: _exact(m.floor) for m in t.models}
    state = _Cluster(new, old.segments, floors, t.added)
    same_node = spares is not None
    if spares is None:
        first_spare = max((s.gpu for s in old.segments + new.segments), default=-1) + 1
        spares = range(first_spare, first_spare + spare_gpus)
    run = _Run(state, new, sorted(t.added, key=lambda s: _order(s, new)),
               sorted(t.removed, key=lambda s: _order(s, new)), tuple(spares), same_node)
    run.go()
    return Schedule(tuple(state.steps), _dips(state), tuple(spares))


class _Run:
    """The scheduling loop of `schedule`, with indexes so that each pass looks only at what may
    have changed: a pending creation can start to fit only after a removal on its GPU, a
    pending removal can become safe only after its model gained capacity.

    Pending creations and removals are numbered in their (node, GPU, slot) order; a pass acts on
    the candidates in that order, as a scan of every pending step would."""

    def __init__(self, state: _Cluster, plan: DeploymentMap, adds: list, removes: list,
                 spares: tuple[int, ...], same_node: bool) -> None:
        self.state, self.plan, self.spares, self.same_node = state, plan, spares, same_node
        self.adds, self.removes = dict(enumerate(adds)), dict(enumerate(removes))
        self.bridges: list[PlacedSegment] = []
        self.adds_on: dict[int, set[int]] = defaultdict(set)  # GPU -> pending creations
        self.removes_of: dict[str, set[int]] = defaultdict(set)  # model -> pending removals
        self.removes_on: dict[int, list[int]] = defaultdict(list)  # GPU -> removals, in order
        for i, a in self.adds.items():
            self.adds_on[a.gpu].add(i)
        for i, r in self.removes.items():
            self.removes_of[r.model].add(i)
            self.removes_on[r.gpu].append(i)
        self.new_adds, self.new_removes = set(self.adds), set(self.removes)  # to look at again
        self.blocked: dict[int, tuple[list[PlacedSegment], tuple]] = {}  # creation -> (blockers, key)
        self.needs: dict[str, set[int]] = defaultdict(set)  # model -> creations it blocks
        self.stale: set[int] = set(self.adds)  # creations whose blockers or key may have changed
        self.heap: list[tuple] = []
        self.costly: set[int] = set()  # creations whose blockers' removal costs a shortfall
        state.watch.append(self._changed)

    def _changed(self, action: str, s: PlacedSegment) -> None:
        if action == "remove":
            self.new_adds |= self.adds_on.get(s.gpu, set())
        else:
            self.new_removes |= self.removes_of.get(s.model, set())
        self.stale |= self.adds_on.get(s.gpu, set()) | self.needs.get(s.model, set())

    def go(self) -> None:
        state = self.state
        while self.adds or self.removes or self.bridges:
            if self._progress():
                continue
            if not self.adds:  # only unsafe removals left: the new plan itself is short of a floor
                if self.removes:
                    self._remove(min(self.removes))
                else:
                    state.act("remove", self.bridges.pop(0), bridge=True)
                continue
            self._refresh()
            if self.spares and self._bridge():
                continue
            i = self._cheapest()
            for r in self.blocked[i][0]:
                self._remove(next(j for j in self.removes_on[r.gpu] if self.removes.get(j) is r))
            self._create(i)

    def _create(self, i: int) -> None:
        a = self.adds.pop(i)
        self.adds_on[a.gpu].discard(i)
        self.state.act("create", a)

    def _remove(self, j: int) -> None:
        r = self.removes.pop(j)
        self.removes_of[r.model].discard(j)
        self.state.act("remove", r)

    def _progress(self) -> bool:
        """Every creation that fits, then every safe removal (bridges last); True if anything acted."""
        acted = False
        look, self.new_adds = sorted(i for i in self.new_adds if i in self.adds), set()
        for i in look:
            if self.state.fits(self.adds[i]):
                self._create(i)
                acted = True
        look, self.new_removes = sorted(j for j in self.new_removes if j in self.removes), set()
        for j in look:
            if self.state.safe(self.removes[j]):
                self._remove(j)
                acted = True
        if not self.adds and not self.removes:
            for b in list(self.bridges):
                if self.state.safe(b):
                    self.bridges.remove(b)
                    self.state.act("remove", b, bridge=True)
                    acted = True
        return acted

    def _refresh(self) -> None:
        """Blockers and choice keys of the creations whose GPU or blockers' models changed."""
        for i in self.stale:
            a = self.adds.get(i)
            if a is None:
                continue
            old = self.blocked.get(i)
            for r in old[0] if old else ():
                self.needs[r.model].discard(i)
            on_gpu = [self.removes[j] for j in self.removes_on.get(a.gpu, ()) if j in self.removes]
            blockers = _blockers(self.state, a, on_gpu)
            key = (_cost(self.state, blockers), len(blockers), i)
            self.blocked[i] = (blockers, key)
            (self.costly.add if key[0] > 0 else self.costly.discard)(i)
            for r in blockers:
                self.needs[r.model].add(i)
            heapq.heappush(self.heap, key)
        self.stale = set()

    def _cheapest(self) -> int:
        """The creation whose blockers cost the least shortfall, then the fewest, then the first."""
        while True:
            key = self.heap[0]
            i = key[2]
            if i in self.adds and self.blocked[i][1] == key:
                return i
            heapq.heappop(self.heap)  # created since, or its key changed (a newer entry exists)

    def _bridge(self) -> bool:
        """Copy the unsafe blockers of the first creation that has some onto spare GPUs; True if
        that was done. Only creations whose blockers cost a shortfall can have unsafe ones, and
        a segment of a size no spare GPU has room for cannot be copied."""
        room = _room(self.state, self.spares)
        if not room:
            return False
        for i in sorted(i for i in self.costly if i in self.adds):
            unsafe = [r for r in self.blocked[i][0] if not self.state.safe(r)]
            if not unsafe or any(r.size not in room for r in unsafe):
                continue
            placed = _fit_on_spares(self.state, unsafe, self._spares_for(unsafe))
            if placed is not None:
                for b in placed:
                    self.bridges.append(b)
                    self.state.act("create", b, bridge=True)
                return True
        return False

    def _spares_for(self, segs: list[PlacedSegment]) -> tuple[int, ...]:
        if not self.same_node:
            return self.spares
        nodes = {self.plan.node_of(s.gpu) for s in segs}
        return tuple(g for g in self.spares if {self.plan.node_of(g)} == nodes)


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


def _cost(state: _Cluster, blockers: list[PlacedSegment]) -> int:
    """Total shortfall below the floors (in the cluster's units) if `blockers` were all removed now."""
    lost: dict[str, int] = defaultdict(int)
    for r in blockers:
        lost[r.model] += state.thr[r.segment.throughput]
    return sum(max(0, state.floors.get(m, 0) - (state.cap[m] - x)) for m, x in lost.items())


def _room(state: _Cluster, spares: tuple[int, ...]) -> set[int]:
    """The instance sizes some spare GPU still has room for."""
    gpu = state.gpu
    return {size for size in gpu.sizes for g in spares
            if state.compute[g] + size <= gpu.compute_slices and gpu.best_start(size, state.used[g]) is not None}


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
    """Runs of consecutive steps in which a model is below its floor (counted after each step)."""
    end = len(state.steps)
    out = state.dips + [Dip(m, worst, end - first, first) for m, (first, worst) in state.open.items()]
    return tuple(sorted(out, key=lambda d: (d.first, d.model)))
