"""Move-aware planning: a plan for the request's services made from the running plan
(`plan --current RUNNING.json`). Pure.

Objective, in strict order:
1. the fewest GPUs, and never more than a fresh plan of the same strategy needs (plus
   `max_extra_gpus`, which a user may trade for fewer changes);
2. the fewest changed segments, added plus removed (a segment is kept when its model, node, GPU,
   slot, size, batch and process count are unchanged; see `core.model.segment_key`);
3. among equals, new instances at the starts that leave the most room (`GpuType.best_start`).

The steps:
- *fresh*: the strategy's plan from scratch; its GPU count (+ `max_extra_gpus`) is the cap and its
  proven bound is the plan's bound.
- *keep*: the running segments that are still admissible (model still served, profiled point
  runnable, procs <= max_procs, batch latency < 0.45 x the new SLO, legal and not overlapping).
- *repair*: keep them all; a model short of its new rate gets the fewest new segments (one of the
  smallest size that covers the shortfall and fits somewhere, else the configurator's cover of the
  shortfall), placed best fit into free slots; a new GPU only when nothing fits. A model with
  surplus keeps it: removing a segment is a change.
- *consolidate*, when repair needs more GPUs than the cap: empty the GPU whose models are the
  cheapest to re-cover in the other GPUs' free slots, again until within the cap.
- *local re-plans*: wipe a few GPUs (those with free slices, or serving a changed model) and plan
  what they served afresh, with the same strategy, onto fewer of them.
- *program* (`auto`, `optimal`): the integer program of `replan_program`, warm-started with the
  best candidate so far, when that one may change more than needed (more than `change_floor`);
  on a large cluster only a neighbourhood of GPUs is open to it.
- *matched fresh plan*: the fresh plan with its GPUs renumbered onto the running ones to keep the
  most segments: always within the cap, so a plan is always found.

The candidate within the cap with the fewest changes wins (then fewer GPUs). The plan records its
`transition` from the running plan.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, replace
from functools import lru_cache
from fractions import Fraction
from typing import Callable

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.core.model import segment_key
from parvagpu.planning.configurator import unservable
from parvagpu.planning.index import threshold_ms
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.transition import transition

# Strategies that can honour a running plan: those that place segments from profiled triplets.
MOVE_AWARE = ("auto", "optimal", "parva")


@lru_cache(maxsize=1 << 16)
def _exact(x: float) -> Fraction:
    return Fraction(repr(float(x)))


@dataclass(frozen=True)
class Candidate:
    """A plan's segments with how many changes it costs and how many GPUs it uses."""

    name: str
    segments: tuple[PlacedSegment, ...]
    changes: int
    gpus: int


def admissible_segments(request: PlanRequest) -> tuple[tuple[PlacedSegment, ...], int]:
    """The running segments worth keeping (throughputs as profiled now), and how many are not."""
    current = request.current
    assert current is not None
    services = {s.model: s for s in request.services}
    points: dict[str, dict] = {}
    gpu = request.gpu
    used: dict[int, int] = defaultdict(int)
    kept = []
    for s in current.segments:
        svc = services.get(s.model)
        t = s.segment.triplet
        if svc is None or t.procs > request.max_procs or not gpu.legal(s.size, s.start):
            continue
        if s.model not in points:
            table = points[s.model] = {}
            for p in request.profiles[s.model].points:
                table.setdefault((p.size, p.batch, p.procs), p)
        p = points[s.model].get((t.size, t.batch, t.procs))
        if p is None or not p.runnable or not p.exact_latency_ms < threshold_ms(svc.exact_latency_ms):
            continue
        mask = gpu.mask(s.size, s.start)
        if used[s.gpu] & mask:
            continue  # overlaps a segment kept before it: the running plan itself is not legal
        used[s.gpu] |= mask
        kept.append(PlacedSegment(Segment(s.model, Triplet(p.size, p.batch, p.procs, p.segment_throughput, p.latency_ms)), s.gpu, s.start))
    return tuple(kept), len(current.segments) - len(kept)


class Space:
    """Free slots per GPU while segments are added (mutable; local to one planning run).

    GPUs are bucketed by (memory mask, compute slices in use), so best fit looks at each distinct
    layout once, not at every GPU."""

    def __init__(self, gpu: GpuType, segments: tuple[PlacedSegment, ...], known: set[int]) -> None:
        self.gpu = gpu
        self.state: dict[int, tuple[int, int]] = {}
        for s in segments:
            used, compute = self.state.get(s.gpu, (0, 0))
            self.state[s.gpu] = (used | gpu.mask(s.size, s.start), compute + s.size)
        self.buckets: dict[tuple[int, int], set[int]] = defaultdict(set)
        for g, key in self.state.items():
            self.buckets[key].add(g)
        # GPU ids the running plan names but nothing uses any more: reused before new ones.
        self.idle = sorted(known - set(self.state))
        self.next_id = max(known | set(self.state), default=-1) + 1

    def without(self, g: int) -> "Space":
        """A copy in which GPU `g` takes nothing (it is being emptied)."""
        other = Space.__new__(Space)
        other.gpu, other.idle, other.next_id = self.gpu, [], self.next_id
        other.state = dict(self.state)
        other.buckets = defaultdict(set, {k: set(v) for k, v in self.buckets.items()})
        if g in other.state:
            other.buckets[other.state.pop(g)].discard(g)
        return other

    def _spot(self, size: int) -> tuple[int, int] | None:
        best = None
        for (used, compute), members in self.buckets.items():
            if not members or compute + size > self.gpu.compute_slices:
                continue
            start = self.gpu.best_start(size, used)
            if start is None:
                continue
            cand = (self.gpu.compute_slices - compute - size, min(members), start)
            if best is None or cand < best:
                best = cand
        return None if best is None else (best[1], best[2])

    def fits(self, size: int) -> bool:
        return self._spot(size) is not None

    def place(self, seg: Segment) -> PlacedSegment:
        """Best fit (least free after it, then the lowest GPU); a new GPU when nothing fits."""
        spot = self._spot(seg.size)
        if spot is None:
            g = self.idle.pop(0) if self.idle else self._new_id()
            start = self.gpu.best_start(seg.size, 0)
            used, compute = 0, 0
        else:
            g, start = spot
            used, compute = self.state[g]
            self.buckets[(used, compute)].discard(g)
        key = (used | self.gpu.mask(seg.size, start), compute + seg.size)
        self.state[g] = key
        self.buckets[key].add(g)
        return PlacedSegment(seg, g, start)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def shortfall_cover(deficit: float, per_size: dict[int, Triplet], space: Space) -> list[Triplet]:
    """The fewest segments covering `deficit`: one of the smallest size that covers it and fits
    somewhere; else the configurator's rule (copies of the most efficient triplet, then the
    smallest that covers the rest)."""
    covering = [t for _, t in sorted(per_size.items()) if t.throughput >= deficit]
    for t in covering:
        if space.fits(t.size):
            return [t]
    best = None
    for _, t in sorted(per_size.items()):
        if best is None or t.efficiency > best.efficiency:
            best = t
    assert best is not None
    out = []
    left = _exact(deficit)
    while left > _exact(best.throughput):
        out.append(best)
        left -= _exact(best.throughput)
    out.append(next((t for _, t in sorted(per_size.items()) if _exact(t.throughput) >= left), best))
    return out


def per_size_table(request: PlanRequest) -> dict[str, dict[int, Triplet]]:
    """Each model's best admissible triplet per size; `Unservable` if a model has none."""
    out = {}
    for i, (svc, per_size) in enumerate(zip(request.services, request.best_by_size)):
        if not per_size:
            raise unservable(request, i)
        out[svc.model] = per_size
    return out


def repair(request: PlanRequest, kept: tuple[PlacedSegment, ...], known: set[int]) -> tuple[PlacedSegment, ...]:
    """Keep every segment in `kept`; cover each model's shortfall with new segments."""
    table = per_size_table(request)
    space = Space(request.gpu, kept, known)
    have: dict[str, Fraction] = defaultdict(Fraction)
    for s in kept:
        have[s.model] += _exact(s.segment.throughput)
    out = list(kept)
    for svc in request.services:
        need = _exact(svc.rate) - have[svc.model]
        if need <= 0:
            continue
        for t in shortfall_cover(float(need), table[svc.model], space):
            out.append(space.place(Segment(svc.model, t)))
    return tuple(out)


def consolidate(
    request: PlanRequest, segments: tuple[PlacedSegment, ...], cap: int, known: set[int]
) -> tuple[PlacedSegment, ...] | None:
    """Empty GPUs until at most `cap` are used: each time the GPU whose segments are cheapest to
    re-cover elsewhere (fewest new segments, then fewest removed), its models' shortfalls covered
    in the other GPUs' free slots; None when no GPU can be emptied without a new one."""
    rate = {s.model: _exact(s.rate) for s in request.services}
    per_size = per_size_table(request)
    first = _consolidate(request, list(segments), cap, known, rate, per_size)
    if first is not None:
        return first
    return _consolidate(request, _trim(segments, rate), cap, known, rate, per_size)


def _trim(segments, rate) -> list[PlacedSegment]:
    """Drop segments a model no longer needs, largest first (a rate that went down)."""
    have: dict[str, Fraction] = defaultdict(Fraction)
    for s in segments:
        have[s.model] += _exact(s.segment.throughput)
    out = []
    for s in sorted(segments, key=lambda s: (-s.size, s.gpu, s.start)):
        if have[s.model] - _exact(s.segment.throughput) >= rate[s.model]:
            have[s.model] -= _exact(s.segment.throughput)
        else:
            out.append(s)
    return out


def _consolidate(request, segs, cap, known, rate, per_size):
    """Empty GPUs one at a time (the `_TRY_EMPTY` least used are tried each time)."""
    while len({s.gpu for s in segs}) > cap:
        by_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
        for s in segs:
            by_gpu[s.gpu].append(s)
        space = Space(request.gpu, tuple(segs), set())
        have: dict[str, Fraction] = defaultdict(Fraction)
        for s in segs:
            have[s.model] += _exact(s.segment.throughput)
        lightest = sorted(by_gpu, key=lambda g: (sum(s.size for s in by_gpu[g]), len(by_gpu[g]), g))
        best = None
        for g in lightest[:_TRY_EMPTY]:
            added = _empty(space.without(g), by_gpu[g], have, rate, per_size)
            if added is not None and (best is None or (len(added), len(by_gpu[g])) < best[0]):
                best = ((len(added), len(by_gpu[g])), g, added)
        if best is None:
            return None
        _, g, added = best
        segs = [s for s in segs if s.gpu != g] + added
    return tuple(segs)


_TRY_EMPTY = 64  # GPUs tried per emptying round, least used first


def _empty(space: Space, gone, have, rate, per_size) -> list[PlacedSegment] | None:
    """New segments covering what emptying a GPU of `gone` leaves short, or None."""
    lost: dict[str, Fraction] = defaultdict(Fraction)
    for s in gone:
        lost[s.model] += _exact(s.segment.throughput)
    added = []
    for m, x in lost.items():
        need = rate[m] - (have[m] - x)
        if need <= 0:
            continue
        placed = fit_cover(m, need, per_size[m], space)
        if placed is None:
            return None
        added += placed
    return added


def fit_cover(model: str, need: Fraction, per_size: dict[int, Triplet], space: Space) -> list[PlacedSegment] | None:
    """Cover `need` with segments placed in `space`'s free slots only: each time the smallest
    fitting size that covers what is left, else the fastest fitting one; None if they run out."""
    out = []
    while need > 0:
        fitting = [t for _, t in sorted(per_size.items()) if space.fits(t.size)]
        if not fitting:
            return None
        t = next((t for t in fitting if _exact(t.throughput) >= need), None) or max(
            fitting, key=lambda t: t.throughput)
        out.append(space.place(Segment(model, t)))
        need -= _exact(t.throughput)
    return out


def local_replans(
    request: PlanRequest, segments: tuple[PlacedSegment, ...], cap: int,
    planner: Callable[[PlanRequest], DeploymentMap], changed: set[str], deadline: float,
) -> list[tuple[PlacedSegment, ...]]:
    """Large-neighbourhood moves: wipe a few GPUs and plan what they served afresh (the residual
    rates) onto them, keeping every other GPU as it is. The GPUs tried first are those with free
    slices and those serving models whose demand changed; k grows until the cap is met."""
    by_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in segments:
        by_gpu[s.gpu].append(s)
    free = {g: request.gpu.compute_slices - sum(s.size for s in segs) for g, segs in by_gpu.items()}
    orders = (
        sorted(by_gpu, key=lambda g: (-free[g], -any(s.model in changed for s in by_gpu[g]), g)),
        sorted(by_gpu, key=lambda g: (-any(s.model in changed for s in by_gpu[g]), -free[g], g)),
    )
    found = []
    small = max(0.2, request.time_limit / 20)
    for order in orders:
        for k in range(2, min(len(order), 8) + 1):
            if time.perf_counter() > deadline:
                return found
            sub = _wipe_and_plan(request, by_gpu, order[:k], cap, planner, small)
            if sub is not None:
                found.append(sub)
                break
    # Many models changed: every GPU serving one, and more of the least used if that is not enough.
    serving = [g for g in orders[1] if any(s.model in changed for s in by_gpu[g])]
    others = [g for g in orders[0] if g not in set(serving)]
    if len(serving) > 8:
        for extra in (0, len(by_gpu) // 20, len(by_gpu) // 10, len(by_gpu) // 5):
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            sub = _wipe_and_plan(request, by_gpu, serving + others[:extra], cap, planner, left)
            if sub is not None:
                found.append(sub)
                break
    # Still nothing (a tight cluster must free a GPU): wipe more of the least used, doubling.
    k = 16
    while not found and k < len(orders[0]) and time.perf_counter() < deadline:
        sub = _wipe_and_plan(request, by_gpu, orders[0][:k], cap, planner, deadline - time.perf_counter())
        if sub is not None:
            found.append(sub)
        k *= 2
    return found


def _wipe_and_plan(request, by_gpu, wiped, cap, planner, time_limit):
    wiped = set(wiped)
    kept = [s for g, segs in by_gpu.items() if g not in wiped for s in segs]
    if len(by_gpu) - len(wiped) >= cap:
        return None
    have: dict[str, Fraction] = defaultdict(Fraction)
    for s in kept:
        have[s.model] += _exact(s.segment.throughput)
    residual = tuple(
        Service(svc.model, float(_exact(svc.rate) - have[svc.model]), svc.latency_ms)
        for svc in request.services if have[svc.model] < _exact(svc.rate)
    )
    if not residual:
        return tuple(kept)
    sub_request = replace(request, services=residual, current=None, time_limit=time_limit)
    sub = planner(sub_request)
    if len(by_gpu) - len(wiped) + sub.gpus_used > cap:
        return None
    old = DeploymentMap(request.gpu.name, "", request.max_procs, request.gpus_per_node,
                        tuple(s for g in wiped for s in by_gpu[g]), ())
    return tuple(kept) + match_fresh(sub, old, set(wiped))


def match_fresh(fresh: DeploymentMap, current: DeploymentMap, ids: set[int] | None = None) -> tuple[PlacedSegment, ...]:
    """The fresh plan with its GPUs renumbered onto the running plan's, greedily by the number of
    segments each pairing keeps (same-size instances of a GPU may swap models to match)."""
    old_by_gpu: dict[int, dict[tuple, str]] = defaultdict(dict)
    for s in current.segments:
        t = s.segment.triplet
        old_by_gpu[s.gpu][(s.start, t.size, t.batch, t.procs, s.model)] = s.model
    old_keys = {g: set(v) for g, v in old_by_gpu.items()}
    where: dict[tuple, list[int]] = defaultdict(list)  # segment key -> old GPUs holding it
    for g, keys in old_keys.items():
        for k in keys:
            where[k].append(g)
    new_by_gpu = fresh.by_gpu()
    pairs = []
    for f, segs in new_by_gpu.items():
        common: dict[int, int] = defaultdict(int)
        for s in segs:
            for g in where.get((s.start, s.size, s.segment.triplet.batch, s.segment.triplet.procs, s.model), ()):
                common[g] += 1
        pairs.extend((-n, f, g) for g, n in common.items())
    pairs.sort()
    to_old: dict[int, int] = {}
    taken: set[int] = set()
    for _, f, g in pairs:
        if f not in to_old and g not in taken:
            to_old[f] = g
            taken.add(g)
    free = sorted((set(old_by_gpu) | (ids or set())) - taken)
    nxt = max(set(old_by_gpu) | (ids or set()), default=-1) + 1
    out = []
    for f, segs in new_by_gpu.items():
        if f not in to_old:
            if free:
                to_old[f] = free.pop(0)
            else:
                to_old[f], nxt = nxt, nxt + 1
        out.extend(_swap_to_match(segs, to_old[f], old_keys.get(to_old[f], set())))
    return tuple(out)


def _swap_to_match(segs: list[PlacedSegment], g: int, old: set[tuple]) -> list[PlacedSegment]:
    """Place `segs` on GPU `g`, letting same-size segments trade starts so more match `old`."""
    by_size: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in segs:
        by_size[s.size].append(s)
    out = []
    for size, group in by_size.items():
        starts = sorted(s.start for s in group)
        pending = list(group)
        placed: dict[int, Segment] = {}
        for st in starts:  # first the starts where some segment matches what runs there
            hit = next((s for s in pending if (st, size, s.segment.triplet.batch, s.segment.triplet.procs, s.model) in old), None)
            if hit is not None:
                pending.remove(hit)
                placed[st] = hit.segment
        for st in starts:
            if st not in placed:
                placed[st] = pending.pop(0).segment
        out.extend(PlacedSegment(seg, g, st) for st, seg in placed.items())
    return out


def _candidate(name: str, segments, current: DeploymentMap, per_node: int) -> Candidate:
    old = {segment_key(s, per_node) for s in current.segments}
    new = {segment_key(s, per_node) for s in segments}
    return Candidate(name, tuple(segments), len(old - new) + len(new - old), len({s.gpu for s in segments}))


def change_floor(request: PlanRequest, kept: tuple[PlacedSegment, ...], dropped: int) -> int:
    """A lower bound on the changes of any plan: the running segments that cannot stay, plus one
    new segment per model its kept segments leave short."""
    have: dict[str, Fraction] = defaultdict(Fraction)
    for s in kept:
        have[s.model] += _exact(s.segment.throughput)
    return dropped + sum(1 for s in request.services if have[s.model] < _exact(s.rate))


def replan(request: PlanRequest, strategy: str, planner: Callable[[PlanRequest], DeploymentMap]) -> DeploymentMap:
    """Plan `request` from `request.current` (see the module docstring)."""
    if strategy not in MOVE_AWARE:
        raise ParvaError(f"--current works with the strategies {', '.join(MOVE_AWARE)}, not {strategy}")
    current = request.current
    assert current is not None
    if current.fleet is not None:
        raise ParvaError("--current takes a single-type plan; re-planning a fleet plan is not supported yet")
    t0 = time.perf_counter()
    fresh = planner(replace(request, current=None))
    cap = fresh.gpus_used + request.max_extra_gpus
    per_node = request.gpus_per_node
    kept, dropped = admissible_segments(request)
    floor = change_floor(request, kept, dropped)
    known = {s.gpu for s in current.segments}
    cands = [
        _candidate("matched-fresh", match_fresh(fresh, current), current, per_node),
        _candidate("repair", repair(request, kept, known), current, per_node),
    ]
    gpus_first = request.max_extra_gpus == 0
    if cands[1].gpus > cap:  # repair kept too much: empty GPUs, re-covering what they served
        packed = consolidate(request, cands[1].segments, cap, known)
        if packed is not None:
            cands.append(_candidate("consolidated", packed, current, per_node))
    best = _best(cands, cap, gpus_first)
    if best.changes > floor:
        changed = _changed_models(request, current)
        deadline = t0 + request.time_limit * 0.6
        for segs in local_replans(request, cands[1].segments, cap, planner, changed, deadline):
            cands.append(_candidate("local", segs, current, per_node))
        best = _best(cands, cap, gpus_first)
    if strategy != "parva" and best.changes > floor:
        from parvagpu.planning.replan_program import solve_moves

        left = request.time_limit - (time.perf_counter() - t0)
        budget = max(left, 0.5)
        opened = _neighbourhood(request, kept, best.segments, _changed_models(request, current))
        found = solve_moves(request, kept, cap, best.segments, known, budget, opened)
        if found is not None:
            fixed = repair(request, found, known)  # tops up a rate a solver tolerance left short
            cands.append(_candidate("program", fixed, current, per_node))
            best = _best(cands, cap, gpus_first)
    plan = DeploymentMap(
        request.gpu.name, fresh.strategy, request.max_procs, per_node, best.segments, request.services,
        fresh.lower_bound if fresh.lower_bound is None else min(fresh.lower_bound, best.gpus),
        fresh.stats + (
            ("fresh_gpus", float(fresh.gpus_used)), ("changed_segments", float(best.changes)),
            ("change_lower_bound", float(floor)), ("replan_" + best.name.replace("-", "_"), 1.0),
        ),
    )
    return replace(plan, transition=transition(current, plan))


_MAX_OPEN = 48  # GPUs the program may re-arrange on a larger cluster; the rest keep everything


def _neighbourhood(request: PlanRequest, kept, best, changed: set[str]) -> set[int] | None:
    """GPUs the program may change: those serving a changed model, those with free slices, those
    the best candidate so far changes, then the least used; None (all) on small clusters."""
    by_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in kept:
        by_gpu[s.gpu].append(s)
    if len(by_gpu) <= _MAX_OPEN:
        return None
    per_node = request.gpus_per_node
    best_keys = {segment_key(s, per_node) for s in best}
    touched = {s.gpu for s in kept if segment_key(s, per_node) not in best_keys}

    def rank(g: int) -> tuple:
        segs = by_gpu[g]
        used = sum(s.size for s in segs)
        return (g not in touched, not any(s.model in changed for s in segs),
                used >= request.gpu.compute_slices, used, g)

    return set(sorted(by_gpu, key=rank)[:_MAX_OPEN])


def _changed_models(request: PlanRequest, current: DeploymentMap) -> set[str]:
    """Models whose rate or SLO differs from the running plan's, or that it did not serve."""
    old = {s.model: (s.rate, s.latency_ms) for s in current.services}
    return {s.model for s in request.services if old.get(s.model) != (s.rate, s.latency_ms)}


def _best(cands: list[Candidate], cap: int, gpus_first: bool) -> Candidate:
    """Within the cap: the fewest GPUs, then changes; with extra GPUs allowed, changes first."""
    within = [c for c in cands if c.gpus <= cap]
    return min(within, key=lambda c: (c.gpus, c.changes) if gpus_first else (c.changes, c.gpus))
