"""Move-aware planning: a plan for the request's services made from the running plan
(`plan --current RUNNING.json`). Pure.

Objective, in strict order:
1. the fewest GPUs, and never more than a fresh plan of the same strategy needs (plus
   `max_extra_gpus`, which a user may trade for fewer changes);
2. the fewest changed segments, added plus removed (a segment is kept when its model, node, GPU,
   slot, size, batch and process count are unchanged; see `core.model.segment_key`);
3. among equals, new instances at the starts that leave the most room (`GpuType.best_start`).

The steps:
- *keep*: the running segments that are still admissible (model still served, profiled point
  runnable, procs <= max_procs, batch latency < 0.45 x the new SLO, legal and not overlapping).
- *repair*: keep them all; a model short of its new rate gets the fewest new segments: one of the
  smallest size that covers the shortfall and fits somewhere; else a cover placed in free slots
  only; else one or two of its own segments given up and their slots re-covered with the free
  ones (no other model touched); a new GPU only when none of these fits. A model with surplus keeps it:
  removing a segment is a change.
- *bound* (`auto`, `optimal`): the optimizer's LP bound on GPUs (`optimizer.search.relax`).
  A candidate within it (+ `max_extra_gpus`) needs no fresh plan: no plan needs fewer GPUs. The
  fresh plan, when one is made, starts from this LP (`optimizer.search.sharing`), not a second one.
- *pack* (`auto`, `optimal`), when repair needs more GPUs than the bound (and again against a
  fresh plan's count when that is higher): the changed models take the covers with the fewest
  changes whose slices fit the cap, placed in the holes their dropped segments leave, moving whole
  segments of other GPUs where that makes room (`replan_pack`). At the bound, no fresh plan.
- *trim and consolidate*, when repair needs more GPUs than the cap: repair again after the changed
  models whose rate went down give up the segments that free the most slices; then empty the GPU
  whose models are the cheapest to re-cover in the other GPUs' free slots, until within the cap.
- *own* (one changed model): when repair misses the bound (before packing), and when the best
  plan so far changes other models' segments, if the slots they leave could hold the changed
  model's new rate (`own_room`, exact), its own segments alone re-covered (`own_recover`: those
  whose slots serve more re-cut given up first, `_drop_order`; a GPU its drops empty re-cut too
  where the count allows, `_own_cover`; where one fastest segment per hole falls short, the
  holes cut into the instances that serve the most there, `dense_cover`). Among plans with as
  many changes and GPUs, the one changing fewer segments of other models wins.
- *local re-plans*: wipe a few GPUs (those with free slices, or serving a changed model) and plan
  what they served afresh, with the same strategy, onto fewer of them; not after packing met the
  cap (they start from repair, over it, and were measured never to win there).
- *fresh* (`parva` always; the others when nothing met the bound): the strategy's plan from
  scratch, with the time left; its GPU count (+ `max_extra_gpus`) is the cap, and the fresh
  plan aligned to the running one (`align_fresh`: its GPUs renumbered onto the running ones, each
  size's segments dealt into the slots where the running plan has the same ones) is a candidate
  always within it, so a plan is always found.
- *program* (`auto`, `optimal`): the integer program of `replan_program`, warm-started with the
  best candidate so far, when that one may change more than needed (more than `change_floor`);
  on a large cluster only a neighbourhood of GPUs is open to it.

The phases share one deadline: the time limit less a reserve for the finish (grown to what the
first repair's change count says the finish's transition costs). The bound gets at most 70 % of
what is left. When repair misses the bound, the own re-cover (one changed model) and packing
come first (packing's first
try may run to the deadline), then, if they miss too, the fresh plan (70 % of what is
left; it is the cap), then consolidation until 45 % of the time and local re-plans
until 60 % against its count; the program gets what is left, less what decoding its result
costs (about a repair). A HiGHS solve still running at the deadline is abandoned
(`optimizer.highs.run_by`), and a phase with too little time left is not started (nor one
after the deadline), so the command returns the best candidate found by then.

The candidate with the fewest GPUs in hand (+ `max_extra_gpus`) and then the fewest changes
wins: when time runs short and the fresh plan is the heuristic's (a loose cap), a plan in hand
at the bound is not passed over for a repair that needs more GPUs but changes less. The plan
records its `transition` from the running plan.
"""

from __future__ import annotations

import gc
import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from itertools import combinations
from fractions import Fraction
from typing import Callable

from parvagpu.core.errors import ParvaError
from parvagpu.core.exact import capacities, exact as _exact
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.core.model import segment_key
from parvagpu.planning.configurator import unservable
from parvagpu.planning.index import threshold_ms
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.space import Space
from parvagpu.planning.transition import transition

# Strategies that can honour a running plan: those that place segments from profiled triplets.
MOVE_AWARE = ("auto", "optimal", "parva")


# The clock every phase here reads (`time.perf_counter`), so that a test can put another in its
# place. Packing, the program and the optimizer read `time.perf_counter` themselves: a clock put
# here must agree with it wherever they still run (past the deadline none of them is started).
_now = time.perf_counter


@dataclass(frozen=True)
class Candidate:
    """A plan's segments with how many changes it costs and how many GPUs it uses; `others`: the
    changes to models whose demand did not change."""

    name: str
    segments: tuple[PlacedSegment, ...]
    changes: int
    gpus: int
    others: int = 0


def admissible_segments(request: PlanRequest) -> tuple[tuple[PlacedSegment, ...], int]:
    """The running segments worth keeping (throughputs as profiled now), and how many are not."""
    current = request.current
    assert current is not None
    services = {s.model: s for s in request.services}
    gpu = request.gpu
    used: dict[int, int] = defaultdict(int)
    kept = []
    as_now: dict[tuple, Segment | None] = {}  # (model, size, batch, procs) -> the segment as profiled now
    masks: dict[tuple[int, int], int | None] = {}  # (size, start) -> its slices, None where not legal
    for s in current.segments:
        svc = services.get(s.model)
        t = s.segment.triplet
        if svc is None or t.procs > request.max_procs:
            continue
        slot = (s.size, s.start)
        if slot not in masks:
            masks[slot] = gpu.mask(*slot) if gpu.legal(*slot) else None
        mask = masks[slot]
        if mask is None:
            continue
        key = (s.model, t.size, t.batch, t.procs)
        if key not in as_now:  # a model's segments often share a triplet: checked once
            now = _triplet_now(request.profiles[s.model], t, svc)
            seg = None if now is None else Segment(s.model, now)
            as_now[key] = s.segment if seg == s.segment else seg
        seg = as_now[key]
        if seg is None:
            continue
        if used[s.gpu] & mask:
            continue  # overlaps a segment kept before it: the running plan itself is not legal
        used[s.gpu] |= mask
        kept.append(s if seg is s.segment else PlacedSegment(seg, s.gpu, s.start))
    return tuple(kept), len(current.segments) - len(kept)


def _triplet_now(profile, t: Triplet, svc: Service) -> Triplet | None:
    """The profile's first point of t's (size, batch, procs) as a triplet, when it is runnable and
    admissible for the service's SLO (exact); else None. Looked up in the profile's columns
    (making every point of 5,000 distinct profiles took 2-4 s of a re-plan's start), and kept by
    profile content and SLO in `_NOW` (re-planning asks about the same running triplets again and
    again; many services share one profile's content)."""
    key = (profile.content_key, t.size, t.batch, t.procs, float(svc.latency_ms))
    if key in _NOW:
        return _NOW[key]
    p = profile.first_point(t.size, t.batch, t.procs)
    ok = p is not None and p.runnable and _admitted(p, svc)
    if len(_NOW) >= _NOW_MAX:
        _NOW.clear()
    out = _NOW[key] = Triplet(p.size, p.batch, p.procs, p.segment_throughput, p.latency_ms) if ok else None
    return out


_NOW: dict[tuple, Triplet | None] = {}
_NOW_MAX = 100_000


def _admitted(p, svc: Service) -> bool:
    """p's batch latency < 0.45 x the service's SLO, exactly: in floats where they are farther
    apart than a relative `_NEAR` (as `planning.index` decides), else on the decimal values
    (making the two fractions for each of 8,816 running triplets took 0.2-0.5 s at 5,000 services)."""
    latency, limit = p.latency_s * 1000.0, 0.45 * float(svc.latency_ms)
    if latency < limit * (1 - _NEAR):
        return True
    if latency > limit * (1 + _NEAR):
        return False
    return p.exact_latency_ms < threshold_ms(svc.exact_latency_ms)


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
    own: dict[str, list[PlacedSegment]] = defaultdict(list)
    for s in kept:
        own[s.model].append(s)
    out = list(kept)
    for svc in request.services:
        if _covers(own[svc.model], svc.rate):
            continue
        need = _exact(svc.rate) - sum((_exact(s.segment.throughput) for s in own[svc.model]), Fraction(0))
        cover = shortfall_cover(float(need), table[svc.model], space)
        if len(cover) == 1 and space.fits(cover[0].size):
            out.append(space.place(Segment(svc.model, cover[0])))
            continue
        moved = _in_free_slots(svc.model, need, table[svc.model], space, own[svc.model])
        if moved is not None:
            space, gone, added = moved
            out = [s for s in out if s not in gone] + added
            continue
        out += [space.place(Segment(svc.model, t)) for t in cover]
    return tuple(out)


def _in_free_slots(model: str, need: Fraction, per_size: dict[int, Triplet], space: Space,
                   own: list[PlacedSegment]):
    """The model's shortfall covered without a new GPU and without touching another model: in
    free slots alone, else after removing one of its own segments, else two (their slots and the
    free ones re-covered). The fewest changes wins; None when every way needs a new GPU.
    Returns (the space after, segments removed, segments added). Each way is tried on `space`
    itself and undone (a copy of a 5,000-GPU space per way cost more than the tries)."""
    mine = sorted(own, key=lambda s: (s.size, s.gpu, s.start))
    best = None
    for ways in ([()] + [(s,) for s in mine], combinations(mine[:_PAIRS_OF], 2)):
        for gone in ways:
            for s in gone:
                space.remove(s)
            added = fit_cover(model, need + sum(_exact(s.segment.throughput) for s in gone), per_size, space)
            if added is not None and (best is None or len(added) + len(gone) < best[0]):
                best = (len(added) + len(gone), list(gone), added)
            for a in added or ():
                space.remove(a)
            for s in gone:
                space.occupy(s)
        if best is not None:
            _, gone, added = best
            for s in gone:
                space.remove(s)
            for a in added:
                space.occupy(a)
            return space, gone, added
    return None


_PAIRS_OF = 12  # own segments (smallest first) whose pairs are tried when one alone is not enough


def consolidate(
    request: PlanRequest, segments: tuple[PlacedSegment, ...], cap: int, known: set[int],
    deadline: float = float("inf"),
) -> tuple[PlacedSegment, ...] | None:
    """Empty GPUs until at most `cap` are used: each time the GPU whose segments are cheapest to
    re-cover elsewhere (fewest new segments, then fewest removed), its models' shortfalls covered
    in the other GPUs' free slots; None when no GPU can be emptied without a new one, or when
    `deadline` (a `_now()` instant) passes first."""
    rate = {s.model: _exact(s.rate) for s in request.services}
    per_size = per_size_table(request)
    first = _consolidate(request, list(segments), cap, rate, per_size, deadline)
    if first is not None:
        return first
    return _consolidate(request, _trim(segments, rate), cap, rate, per_size, deadline)


def _trim(segments, rate) -> list[PlacedSegment]:
    """Drop segments a model no longer needs, largest first (a rate that went down)."""
    have = capacities(segments)
    out = []
    for s in sorted(segments, key=lambda s: (-s.size, s.gpu, s.start)):
        if have[s.model] - _exact(s.segment.throughput) >= rate[s.model]:
            have[s.model] -= _exact(s.segment.throughput)
        else:
            out.append(s)
    return out


def _consolidate(request, segs, cap, rate, per_size, deadline: float):
    """Empty GPUs one at a time (the `_TRY_EMPTY` least used are tried each time)."""
    while len({s.gpu for s in segs}) > cap:
        if _now() > deadline:
            return None
        by_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
        for s in segs:
            by_gpu[s.gpu].append(s)
        space = Space(request.gpu, tuple(segs), set())
        have = capacities(segs)
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
    fitting size that covers what is left, else the fastest fitting one; None if they run out
    (the space left as it was)."""
    out = []
    while need > 0:
        fitting = [t for _, t in sorted(per_size.items()) if space.fits(t.size)]
        if not fitting:
            for placed in out:  # the space as it was
                space.remove(placed)
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
    slices and those serving models whose demand changed; k doubles until the cap is met."""
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
    have = capacities(segments)  # every wipe's kept capacity is this less the wiped GPUs' (exact)
    for order in orders:  # a few GPUs first, each order on its own
        for k in (2, 4, 8):
            sub = _timed_wipe(request, by_gpu, have, order[:k], cap, planner, deadline, limit=small)
            if sub is not None:
                found.append(sub)
                break
    # Many models changed: every GPU serving one, and more of the least used if that is not enough.
    serving = [g for g in orders[1] if any(s.model in changed for s in by_gpu[g])]
    serves = set(serving)
    others = [g for g in orders[0] if g not in serves]
    if len(serving) > 8 and not found:
        for extra in (0, len(by_gpu) // 20, len(by_gpu) // 10, len(by_gpu) // 5):
            sub = _timed_wipe(request, by_gpu, have, serving + others[:extra], cap, planner, deadline)
            if sub is not None:
                found.append(sub)
                break
    k = 16
    while not found and k < len(by_gpu):  # then twice as many each time, until one meets the cap
        for order in orders:
            sub = _timed_wipe(request, by_gpu, have, order[:k], cap, planner, deadline, share=0.25)
            if sub is not None:
                found.append(sub)
                break
        k *= 2
    return found


def _timed_wipe(request, by_gpu, have, wiped, cap, planner, deadline: float, limit: float | None = None,
                share: float = 1.0):
    """`_wipe_and_plan` with `limit` seconds, or `share` of what is left before the deadline (at
    least 0.2 s), never past the deadline; None when less than `_MIN_PHASE_S` is left."""
    left = deadline - _now()
    if left <= _MIN_PHASE_S:
        return None
    return _wipe_and_plan(request, by_gpu, wiped, cap, planner, min(left, limit or max(0.2, share * left)), have)


def _wipe_and_plan(request, by_gpu, wiped, cap, planner, time_limit, have_all=None):
    """`by_gpu`'s segments but those on the `wiped` GPUs, and a fresh plan of what those leave
    short onto them; `have_all`: each model's exact capacity over all of `by_gpu`, where known."""
    wiped = set(wiped)
    kept = [s for g, segs in by_gpu.items() if g not in wiped for s in segs]
    if len(by_gpu) - len(wiped) >= cap:
        return None
    if have_all is None:
        have_all = capacities(s for segs in by_gpu.values() for s in segs)
    have = defaultdict(Fraction, have_all)
    for g in wiped:
        for s in by_gpu.get(g, ()):
            have[s.model] -= _exact(s.segment.throughput)
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
    # The sub-plan may need more GPUs than were wiped: its extra ones take ids above every GPU of
    # the plan, never a kept GPU's.
    return tuple(kept) + align_fresh(sub, old, set(wiped), avoid=set(by_gpu))


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


def align_fresh(fresh: DeploymentMap, current: DeploymentMap, ids: set[int] | None = None,
                avoid: set[int] = frozenset()) -> tuple[PlacedSegment, ...]:
    """The fresh plan aligned to the running one, to keep the most segments: its GPUs renumbered
    onto the running GPUs whose slots they share most, then each size's segments dealt out among
    that size's slots so that, where the running plan has a segment of the same model, batch and
    processes in a slot, the fresh plan puts one there too.

    Any two instances of the same size trade places without changing a GPU's layout (legality is
    the slots', not the models'), so dealing a size's segments over all its slots, on every GPU,
    keeps the plan legal, its GPU count and every model's capacity; renumbering alone could only
    match whole GPUs. Greedy by slot overlap between the GPUs' layouts (few distinct ones: the
    pairing is over layouts, not over GPU pairs); the dealing is exact for the numbering chosen.
    GPUs beyond `current`'s and `ids` take new ids above those and above `avoid` (GPUs kept
    elsewhere in the plan)."""
    running: dict[tuple[int, int], tuple] = {}  # (GPU, start) -> (size, model, batch, procs)
    for s in current.segments:
        t = s.segment.triplet
        running[(s.gpu, s.start)] = (t.size, s.model, t.batch, t.procs)
    new_by_gpu = fresh.by_gpu()
    offered = {(s.size, s.model, s.segment.triplet.batch, s.segment.triplet.procs) for s in fresh.segments}
    old_slots: dict[int, frozenset] = defaultdict(frozenset)
    for (g, start), key in running.items():
        if key in offered:  # a slot the fresh plan could keep
            old_slots[g] = old_slots[g] | {(start, key[0])}
    to_old = _pair_layouts({f: frozenset((s.start, s.size) for s in segs) for f, segs in new_by_gpu.items()},
                           old_slots)
    taken = set(to_old.values())
    known = set(s.gpu for s in current.segments) | (ids or set())
    free = sorted(known - taken)
    nxt = max(known | set(avoid), default=-1) + 1
    for f in new_by_gpu:
        if f not in to_old:
            if free:
                to_old[f] = free.pop(0)
            else:
                to_old[f], nxt = nxt, nxt + 1
    return _deal(new_by_gpu, to_old, running)


def _pair_layouts(new: dict[int, frozenset], old: dict[int, frozenset]) -> dict[int, int]:
    """Fresh GPU -> running GPU, greedily by the most shared slots: over pairs of distinct
    layouts (a handful of them), each pair taking as many GPUs of both as are left, in id order."""
    new_groups: dict[frozenset, list[int]] = defaultdict(list)
    old_groups: dict[frozenset, list[int]] = defaultdict(list)
    for f, slots in sorted(new.items()):
        new_groups[slots].append(f)
    for g, slots in sorted(old.items()):
        old_groups[slots].append(g)
    pairs = sorted(((-len(a & b), i, j) for i, a in enumerate(new_groups) for j, b in enumerate(old_groups) if a & b))
    news, olds = list(new_groups.values()), list(old_groups.values())
    out: dict[int, int] = {}
    for _, i, j in pairs:
        fs, gs = news[i], olds[j]
        while fs and gs:
            out[fs.pop()] = gs.pop()
    return out


def _deal(new_by_gpu: dict[int, list[PlacedSegment]], to_old: dict[int, int],
          running: dict[tuple[int, int], tuple]) -> tuple[PlacedSegment, ...]:
    """Each size's segments over that size's slots (GPUs renumbered by `to_old`): first into the
    slots where the running plan has the same model, batch and processes, then the rest in order."""
    pool: dict[tuple, list[Segment]] = defaultdict(list)
    slots: list[tuple[int, int, int]] = []  # (size, GPU, start)
    for f, segs in new_by_gpu.items():
        for s in segs:
            t = s.segment.triplet
            pool[(t.size, s.model, t.batch, t.procs)].append(s.segment)
            slots.append((s.size, to_old[f], s.start))
    slots.sort()
    placed: dict[tuple[int, int], Segment] = {}
    for size, g, start in slots:
        key = running.get((g, start))
        if key is not None and key[0] == size and pool.get(key):
            placed[(g, start)] = pool[key].pop()
    rest: dict[int, list[Segment]] = defaultdict(list)
    for key in sorted(pool):  # (size, model, batch, procs)
        rest[key[0]].extend(pool[key])
    for size, g, start in slots:
        if (g, start) not in placed:
            placed[(g, start)] = rest[size].pop()
    return tuple(PlacedSegment(seg, g, start) for (g, start), seg in sorted(placed.items()))


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


def _candidate(name: str, segments, request: PlanRequest) -> Candidate:
    old, changed = _running(request)
    per_node = request.gpus_per_node
    new = {segment_key(s, per_node) for s in segments}
    others = sum(1 for k in old ^ new if k[0] not in changed)
    return Candidate(name, tuple(segments), len(old - new) + len(new - old), len({s.gpu for s in segments}), others)


def _running(request: PlanRequest) -> tuple[frozenset, frozenset[str]]:
    """The running plan's segment keys and the changed models, made once per request (every
    candidate is counted against them: 16,444 keys at 5,000 services)."""
    if _RUNNING and _RUNNING[0] is request:
        return _RUNNING[1]
    per_node = request.gpus_per_node
    out = (frozenset(segment_key(s, per_node) for s in request.current.segments),
           frozenset(_changed_models(request, request.current)))
    _RUNNING[:] = [request, out]
    return out


_RUNNING: list = []  # [the request, its `_running`], while `replan` runs


def change_floor(request: PlanRequest, kept: tuple[PlacedSegment, ...], dropped: int) -> int:
    """A lower bound on the changes of any plan: the running segments that cannot stay, plus one
    new segment per model its kept segments leave short."""
    own: dict[str, list[PlacedSegment]] = defaultdict(list)
    for s in kept:
        own[s.model].append(s)
    return dropped + sum(1 for s in request.services if not _covers(own[s.model], s.rate))


def _covers(segments: list[PlacedSegment], rate: float) -> bool:
    """Whether the segments' throughputs add up to at least `rate`, exactly (on the decimal values
    `_exact` reads). The floats' correctly rounded sum decides when it is farther than a relative
    `_NEAR` from the rate (each float is within 2**-53 of its decimal value, so the sums differ by
    far less); nearer, the exact sum does. Summing 16,444 running segments as fractions took
    0.3-0.9 s of a 5,000-service re-plan's start, and most models are nowhere near their rate."""
    total = math.fsum(s.segment.throughput for s in segments)
    if total >= rate * (1 + _NEAR):
        return True
    if total <= rate * (1 - _NEAR):
        return False
    return sum((_exact(s.segment.throughput) for s in segments), Fraction(0)) >= _exact(rate)


_NEAR = 1e-9  # relative distance below which `_covers` adds exactly


class _Clock:
    """One deadline shared by every phase: the request's time limit less a reserve for making
    the chosen plan's transition. Each phase gets at most what is left before it.

    The first repair is timed (`measured`): turning a solver's values into a candidate (decode,
    a repair, the change count) costs about as much again, so a solve stops that much before
    the deadline (`post`), and the reserve grows to what the finish's transition costs on a
    cluster this large (about three change counts)."""

    def __init__(self, limit: float) -> None:
        self.start = _now()
        self.limit = limit
        self.deadline = self.start + max(0.0, limit - min(_RESERVE_MAX_S, _RESERVE_SHARE * limit))
        self.post = 0.0

    def measured(self, repair_s: float, candidate_s: float) -> None:
        self.post = repair_s + 2 * candidate_s
        self.deadline = min(self.deadline, self.start + max(0.0, self.limit - 3 * candidate_s))

    def left(self) -> float:
        return max(0.0, self.deadline - _now())

    def at(self, share: float) -> float:
        """The time by which `share` of the time to the deadline has passed."""
        return self.start + share * (self.deadline - self.start)


_RESERVE_SHARE, _RESERVE_MAX_S = 0.1, 0.5  # kept back from the limit for the finish
_MIN_PHASE_S = 0.05  # seconds left below which a solver phase is not started
_MIN_LIMIT_S = 1e-3  # a request's limit must be positive: `auto` with this plans by its heuristic


@dataclass(frozen=True)
class _Base:
    """What every phase starts from: the running segments worth keeping, how many cannot stay,
    the change floor, the GPU ids the running plan names, and the models whose demand changed."""

    kept: tuple[PlacedSegment, ...]
    dropped: int
    floor: int
    known: frozenset[int]
    changed: frozenset[str]


def _base(request: PlanRequest, strategy: str) -> _Base:
    if strategy not in MOVE_AWARE:
        raise ParvaError(f"--current works with the strategies {', '.join(MOVE_AWARE)}, not {strategy}")
    current = request.current
    assert current is not None
    if current.fleet is not None:
        raise ParvaError("--current takes a single-type plan; re-planning a fleet plan is not supported yet")
    kept, dropped = admissible_segments(request)
    return _Base(kept, dropped, change_floor(request, kept, dropped), frozenset(s.gpu for s in current.segments),
                 frozenset(_changed_models(request, current)))


@dataclass(frozen=True)
class _Cap:
    """The most GPUs a candidate may use and what it was read from: the proven lower bound (no
    plan, fresh or not, needs fewer) or the fresh plan (then also the bound it proved)."""

    gpus: int
    bound: int | None
    fresh: DeploymentMap | None
    relaxation: object | None = None  # the bound's LP (`optimizer.search.Relaxation`), for the fresh plan


def replan(request: PlanRequest, strategy: str, planner: Callable[[PlanRequest], DeploymentMap]) -> DeploymentMap:
    """Plan `request` from `request.current` (see the module docstring).

    The objects that exist before it (profiles, the running plan, the request) are frozen out of
    the garbage collector's scans while it runs: at 5,000 services its full collections scanned
    them for 1.3 s of a 10 s limit (0.65 s frozen). Nothing of them is freed by a collection."""
    gc.freeze()
    try:
        return _replan(request, strategy, planner)
    finally:
        gc.unfreeze()
        _RUNNING.clear()


def _replan(request: PlanRequest, strategy: str, planner: Callable[[PlanRequest], DeploymentMap]) -> DeploymentMap:
    clock = _Clock(request.time_limit)
    base = _base(request, strategy)
    t0 = _now()
    repaired = repair(request, base.kept, set(base.known))
    t1 = _now()
    cands = [_candidate("repair", repaired, request)]
    clock.measured(t1 - t0, _now() - t1)
    cap = _bound_cap(request, strategy, clock)
    local = cap is not None and cands[0].gpus > cap.gpus
    owned = None  # the GPU count `own_recover` was tried at
    if local and clock.left() > _OWN_MIN_S:
        # A single changed model that can make room by itself, before packing, which may take
        # the rest of the time: 0.1 s at 1,000 services (bert-385 x1.1: 1.3 s of the 2 s were gone
        # when it came after packing and the fresh plan, so the renumbered fresh plan was kept).
        owned = cap.gpus
        cands += _own(request, base, cap.gpus, clock)
    packing = None
    # Packing at the bound: when it fits, no fresh plan is needed. Its first try cannot stop
    # (about two repairs at 5,000 services), so it starts only with that much time left.
    if local and clock.left() > 2 * clock.post:
        packing = _packing(request, base)
        cands += _packed(request, packing, cap.gpus, _PACK_SHARE, clock)
        local = not _within(cands, cap.gpus)
    if local:
        bound_gpus = cap.gpus
        cap = _fresh_cap(request, planner, clock, cands, base, cap, _FRESH_FIRST_SHARE)
        if cap.gpus > bound_gpus and clock.left() > 2 * clock.post:
            packing = _packing(request, base) if packing is None else packing
            cands += _packed(request, packing, cap.gpus, _PACK_SHARE, clock)
        if clock.left() > _MIN_PHASE_S:
            cands += _reach_bound(request, base, cands, cap.gpus, planner, clock)
        if packing is not None and not _packed_within(cands, cap.gpus) and clock.left() > 2 * clock.post:
            cands += _one_over(request, base, packing, cap.gpus, planner, clock)
    if cap is None or (cap.fresh is None and not _within(cands, cap.gpus)):
        cap = _fresh_cap(request, planner, clock, cands, base, cap)
    extra = request.max_extra_gpus
    best = _chosen(cands, cap.gpus, extra)
    if best.others and clock.left() > _OWN_MIN_S and owned != best.gpus:
        # Other models moved where the changed one alone could make room (emptying its own GPU,
        # say): its own segments re-covered, as few changes may leave the others in place.
        cands += _own(request, base, best.gpus, clock)
        best = _chosen(cands, cap.gpus, extra)
    if best.changes > base.floor and not local and not _packed_within(cands, cap.gpus) and clock.left() > _MIN_PHASE_S:
        cands += _local(request, base, cands[0], cap.gpus, planner, clock.at(_LOCAL_BY))
        best = _chosen(cands, cap.gpus, extra)
    if strategy != "parva" and best.changes > base.floor and clock.left() > _MIN_PROGRAM_S:
        cands += _program(request, base, best, _fewest(cands, cap.gpus, extra), clock)
        best = _chosen(cands, cap.gpus, extra)
    return _finish(request, strategy, best, cap, base.floor)


def _fewest(cands: list[Candidate], cap: int, extra: int) -> int:
    """The GPU target the plan is chosen within: the cap (the proven bound or the fresh plan's
    count, + `extra`), tightened to the fewest GPUs of any candidate in hand + `extra`. GPUs come
    first: a fresh plan given too little time is the heuristic's, a loose cap, and below it a
    repair that needs 21 GPUs more than a plan in hand must not win by its fewer changes."""
    return min([cap] + [c.gpus + extra for c in cands])


def _own(request: PlanRequest, base: _Base, gpus: int, clock: _Clock) -> list[Candidate]:
    """The single changed model re-covered in its own and the free slots within `gpus` GPUs,
    every other model left in place, where `own_room` says its capacity there can cover its rate."""
    if not own_room(request, base.kept, base.changed, gpus):
        return []
    found = own_recover(request, base.kept, next(iter(base.changed)), gpus, clock.deadline)
    return [] if found is None else [_candidate("own", found, request)]


_MIN_PROGRAM_S = 0.3  # seconds left below which the program is not started
_OWN_MIN_S = 0.5  # seconds left below which the own re-cover is not tried (its check: 0.15 s at 5,000 services)
# Repair over the bound: the fresh plan comes first, with this share of the time left. It starts
# from the bound's LP (solved once), and is the cap's source: one starved of time by consolidation
# and local re-plans was the heuristic's, a GPU over the bound where the optimizer's reaches it.
_FRESH_FIRST_SHARE = 0.7


def _reach_bound(request, base: _Base, cands: list[Candidate], cap: int, planner,
                 clock: _Clock) -> list[Candidate]:
    """Repair needs more GPUs than the bound: consolidation, then local re-plans while nothing
    meets it, each until its share of the time, leaving the rest to a fresh plan (whose
    renumbering keeps few segments), needed when neither reaches the bound."""
    out = _consolidated(request, cands[0], cap, base, clock.at(_CONSOLIDATE_BY))
    if not _within(cands + out, cap):
        out += _local(request, base, _fewest_gpus(cands + out), cap, planner, clock.at(_LOCAL_BY))
    return out
# Shares of the time to the deadline by which consolidation and local re-plans stop. Local
# re-plans find the narrow plans at the bound; a fresh plan, when still needed, gets the rest: with
# too little, `auto` gives its heuristic's plan (4 % more GPUs at 1,000 services: a loose cap).
_CONSOLIDATE_BY, _LOCAL_BY = 0.45, 0.6


def _one_over(request: PlanRequest, base: _Base, packing, cap: int, planner, clock: _Clock) -> list[Candidate]:
    """Packing found no plan within the cap, so the plan there is the fresh one, aligned: where
    the fresh optimum fills every slice of every GPU, no cover choice of packing's fits and the
    fresh plan changes most segments. Packing one GPU over the cap, then local re-plans from each
    of its plans down to the cap (fewest changes first, while time allows). Measured at 1,000
    services, 20 % random, the two draws of ten that fill every slice, when packing's covers went
    to 10 changes only: packing at the cap + 1 294 and 241 changes; local re-plans from them 914
    and 788 changes at the cap, where the aligned fresh plan has 2,078 and 1,545 (about 0.15 s
    each). With its wider covers (`replan_pack.WIDE`) packing meets the cap on those draws (371
    and 296), so this is the fallback where it still does not. Only the local re-plans are returned: the
    cap already holds `--max-extra-gpus`, so a plan one GPU over it is never chosen."""
    over = sorted(_packed(request, packing, cap + 1, _PACK_SHARE, clock), key=lambda c: c.changes)
    out: list[Candidate] = []
    for start in over:
        if clock.left() <= 2 * clock.post:
            break
        out += _local(request, base, start, cap, planner, clock.deadline)
    return out


def _packing(request: PlanRequest, base: _Base):
    from parvagpu.planning.replan_pack import Packing

    return Packing(request, base.kept, set(base.changed), set(base.known), per_size_table(request))


def _packed(request: PlanRequest, packing, cap: int, share: float, clock: _Clock) -> list[Candidate]:
    """Repair needs more GPUs than `cap`: the changed models' slice-minimal covers packed into
    the running plan's holes, moving few segments (`replan_pack`). Its first try may run to the
    deadline (one that fits needs no fresh plan); later ones start within `share` of the time left."""
    found = packing.plans(cap, _now() + share * clock.left(), clock.deadline, _weightings(packing))
    return [_candidate("packed", segs, request) for segs in found]


def _weightings(packing) -> tuple:
    """Packing's weightings worth trying for this many changed models: all of them up to
    `_ALL_WEIGHTINGS_UP_TO`, beyond that the hole-aware ones only. Measured, 20 % random, every
    weighting run: at 100 services (20 models changed) the per-size ones won 3 draws of 8 (12, 24
    and 19 changes against 15, 26 and 20); at 1,000 (200 changed) never, in 7 draws (the hole-aware
    ones 2-20 % fewer changes), where they took about half of packing's time (0.5 s of a 2 s target)."""
    from parvagpu.planning.replan_pack import WEIGHTINGS, HoleWeighting

    if len(packing.order) <= _ALL_WEIGHTINGS_UP_TO:
        return WEIGHTINGS
    return tuple(w for w in WEIGHTINGS if isinstance(w, HoleWeighting))


_ALL_WEIGHTINGS_UP_TO = 64  # changed models (between the 20 where they win and the 200 where they do not)
# Share of the time left within which packing may start another try (one takes 0.3-0.6 s at 1,000
# services, 20 % of the models changed, 3 s at 5,000 on this 2-core VM).
_PACK_SHARE = 0.5


# Share of the time left the bound's LP may take. At 5,000 services it needs 3-4 s of a 10 s limit
# (1-1.5 s building the blocks, 2-2.5 s solving); abandoned, it leaves the trivial bound and no
# LP for the fresh plan, which is then the heuristic's (5,394 GPUs where the LP's rounding has 5,161).
_BOUND_SHARE = 0.7


def _bound_cap(request: PlanRequest, strategy: str, clock: _Clock) -> _Cap | None:
    """The optimizer's proven lower bound (`auto`, `optimal`; at most `_BOUND_SHARE` of the time left): a
    candidate that uses no more GPUs than that needs no fresh plan to compare with."""
    if strategy == "parva":
        return None  # the heuristic's own plan is the cap, and it is cheap
    from parvagpu.planning.optimizer.search import relax

    relaxation = relax(replace(request, current=None), _BOUND_SHARE * clock.left())  # the LP, or the trivial bound
    return _Cap(relaxation.bound + request.max_extra_gpus, relaxation.bound, None, relaxation)


def _fresh_cap(request: PlanRequest, planner, clock: _Clock, cands: list[Candidate], base: _Base,
               known: _Cap | None, share: float = 1.0) -> _Cap:
    """The strategy's fresh plan, with `share` of the time left before the deadline (`auto` with
    none left is its heuristic's plan): its GPU count is the cap. Adds to `cands` the fresh plan
    renumbered onto the running GPUs, and (when it comes last) repair consolidated to the cap if
    that was not tried already."""
    fresh_request = replace(request, current=None, time_limit=max(share * clock.left(), _MIN_LIMIT_S))
    if known is not None and known.relaxation is not None:
        from parvagpu.planning.optimizer.search import sharing

        with sharing(known.relaxation):  # the optimizer starts from the bound's LP
            fresh = planner(fresh_request)
    else:
        fresh = planner(fresh_request)
    bounds = [b for b in (fresh.lower_bound, known.bound if known else None) if b is not None]
    cap = _Cap(fresh.gpus_used + request.max_extra_gpus, max(bounds) if bounds else None, fresh)
    cands.append(_candidate("matched-fresh", align_fresh(fresh, request.current), request))
    if share == 1.0 and (known is None or known.gpus != cap.gpus):
        cands += _consolidated(request, cands[0], cap.gpus, base, clock.deadline)
    return cap


def _packed_within(cands: list[Candidate], cap: int) -> bool:
    """Whether packing found a plan within the cap. Local re-plans then start from a repair over
    the cap, so they must wipe as many GPUs as it has too many: measured never to win there (20 %
    random, every weighting run: 100 services, 8 draws, 49-157 changes against packing's 12-44;
    1,000 services, 7 draws, 687-1,962 against 225-400), and 0.2-0.3 s of a 2 s limit at 1,000."""
    return any(c.name == "packed" and c.gpus <= cap for c in cands)


def _fewest_gpus(cands: list[Candidate]) -> Candidate:
    """The start for local re-plans: the candidate with the fewest GPUs, then changes."""
    return min(cands, key=lambda c: (c.gpus, c.changes))


def _within(cands: list[Candidate], cap: int) -> bool:
    return any(c.gpus <= cap for c in cands)


def _consolidated(request: PlanRequest, rep: Candidate, cap: int, base: _Base, deadline: float) -> list[Candidate]:
    """Repair kept too much for the cap: first repair again after the changed models' surplus
    is trimmed (their rates went down: free the most slices), then empty GPUs, re-covering what
    they served elsewhere. Nothing once `deadline` has passed (the trimmed repair alone took 1.5 s
    at 5,000 services, after packing had met the cap)."""
    if rep.gpus <= cap or _now() > deadline:
        return []
    rate = {s.model: _exact(s.rate) for s in request.services}
    trimmed = trim_surplus(base.kept, rate, base.changed)
    out = []
    if len(trimmed) < len(base.kept):
        out.append(_candidate("trimmed", repair(request, trimmed, set(base.known)), request))
    for start in [rep] + out:
        if not _within(out, cap):
            packed = consolidate(request, start.segments, cap, set(base.known), deadline)
            out += [] if packed is None else [_candidate("consolidated", packed, request)]
    return out


def trim_surplus(segments, rate: dict[str, Fraction], models) -> tuple[PlacedSegment, ...]:
    """Remove, of each model in `models` with more capacity than its rate, the segments that free
    the most slices (then the fewest segments) while its capacity stays >= its rate."""
    own: dict[str, list[PlacedSegment]] = defaultdict(list)
    for s in segments:
        if s.model in models:
            own[s.model].append(s)
    gone: set[PlacedSegment] = set()
    for m, segs in own.items():
        spare = sum(_exact(s.segment.throughput) for s in segs) - rate[m]
        if spare > 0:
            gone |= _most_slices_within(segs, spare)
    return tuple(s for s in segments if s not in gone)


def _most_slices_within(segs: list[PlacedSegment], spare: Fraction) -> set[PlacedSegment]:
    """The subset of `segs` with throughput <= `spare` holding the most slices (fewest segments
    on a tie): exact over subsets for up to 12 segments, else largest first."""
    segs = sorted(segs, key=lambda s: (-s.size, s.gpu, s.start))
    if len(segs) > 12:
        out, left = set(), spare
        for s in segs:
            if _exact(s.segment.throughput) <= left:
                out.add(s)
                left -= _exact(s.segment.throughput)
        return out
    # Every subset in mask order, each one's sums from the subset without its lowest member, in
    # integers over a common denominator (exact, as the fractions were): 4,096 subsets of 12.
    fracs = [_exact(s.segment.throughput) for s in segs]
    unit = math.lcm(spare.denominator, *(f.denominator for f in fracs))
    thr = [f.numerator * (unit // f.denominator) for f in fracs]
    limit = spare.numerator * (unit // spare.denominator)
    n = len(segs)
    total, slices, count = [0] * (1 << n), [0] * (1 << n), [0] * (1 << n)
    best, best_key = 0, (0, 0)
    for mask in range(1, 1 << n):
        low = mask & -mask
        i, rest = low.bit_length() - 1, mask ^ low
        total[mask] = total[rest] + thr[i]
        slices[mask] = slices[rest] + segs[i].size
        count[mask] = count[rest] + 1
        if total[mask] <= limit:
            key = (slices[mask], -count[mask])
            if key > best_key:
                best, best_key = mask, key
    return {s for i, s in enumerate(segs) if best >> i & 1}


def _local(request, base: _Base, rep: Candidate, cap: int, planner, deadline: float) -> list[Candidate]:
    """Local re-plans from the repaired plan, until `deadline`."""
    found = local_replans(request, rep.segments, cap, planner, set(base.changed), deadline)
    return [_candidate("local", segs, request) for segs in found]


def _program(request, base: _Base, best: Candidate, cap: int, clock: _Clock) -> list[Candidate]:
    """The move-aware integer program over neighbourhoods of GPUs around the best candidate so
    far, each round warm-started with it: first a small neighbourhood, whose solve often ends
    early and narrows a wide start, then a larger one with what is left, until the deadline."""
    from parvagpu.planning.replan_program import solve_moves

    out: list[Candidate] = []
    pick_s = 0.0  # what choosing the last neighbourhood took (0.5 s at 5,000 services)
    for size, share in _ROUNDS:
        if clock.left() - 2 * clock.post - pick_s < _MIN_PROGRAM_S:
            break
        t0 = _now()
        opened = _neighbourhood(request, base.kept, best.segments, set(base.changed), size)
        pick_s = _now() - t0
        left = clock.left() - 2 * clock.post  # building the program costs about what decoding does
        if left < _MIN_PROGRAM_S:
            break
        found = solve_moves(request, base.kept, cap, best.segments, set(base.known),
                            _now() + clock.post + share * left, opened)
        if found is not None:
            fixed = repair(request, found, set(base.known))  # tops up a rate a solver tolerance left short
            out.append(_candidate("program", fixed, request))
            best = _best([best, out[-1]], cap)
        if opened is None or best.changes <= base.floor:
            break  # the whole cluster was open, or nothing can change less
    return out


# Program rounds: GPUs open to it and the share of the time left it gets. 16 GPUs often solve in
# a fraction of a second where 48 took seconds in the root's cut rounds (100 services, 20 %
# changed: 14 and 57 changes instead of 23 and 189); the larger round uses what the first left.
_ROUNDS = ((16, 1.0), (48, 1.0))


def _finish(request: PlanRequest, strategy: str, best: Candidate, cap: _Cap, floor: int) -> DeploymentMap:
    """The chosen candidate as a plan, with its bound, figures and transition. `fresh_gpus` only
    when a fresh plan was made: a candidate at the proven bound needs none."""
    bound = cap.bound if cap.bound is None else min(cap.bound, best.gpus)
    stats = cap.fresh.stats + (("fresh_gpus", float(cap.fresh.gpus_used)),) if cap.fresh is not None else ()
    if cap.bound is not None:
        stats += (("gpu_lower_bound", float(cap.bound)),)
    stats += (("changed_segments", float(best.changes)), ("change_lower_bound", float(floor)),
              ("replan_" + best.name.replace("-", "_"), 1.0))
    plan = DeploymentMap(
        request.gpu.name, strategy, request.max_procs, request.gpus_per_node, best.segments, request.services,
        bound, stats,
    )
    return replace(plan, transition=transition(request.current, plan))


def _neighbourhood(request: PlanRequest, kept, best, changed: set[str], size: int) -> set[int] | None:
    """`size` GPUs the program may change (the rest keep everything): those the best candidate so
    far changes, those serving a changed model, those with free slices, then the least used; None (all) on clusters of at most `size` GPUs."""
    by_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in kept:
        by_gpu[s.gpu].append(s)
    if len(by_gpu) <= size:
        return None
    per_node = request.gpus_per_node
    best_keys = {segment_key(s, per_node) for s in best}
    touched = {s.gpu for s in kept if segment_key(s, per_node) not in best_keys}

    def rank(g: int) -> tuple:
        segs = by_gpu[g]
        used = sum(s.size for s in segs)
        return (g not in touched, not any(s.model in changed for s in segs),
                used >= request.gpu.compute_slices, used, g)

    return set(sorted(by_gpu, key=rank)[:size])


def _changed_models(request: PlanRequest, current: DeploymentMap) -> set[str]:
    """Models whose rate or SLO differs from the running plan's, or that it did not serve."""
    old = {s.model: (s.rate, s.latency_ms) for s in current.services}
    return {s.model for s in request.services if old.get(s.model) != (s.rate, s.latency_ms)}


def _chosen(cands: list[Candidate], cap: int, extra: int) -> Candidate:
    """The plan among `cands`: `_best` within `_fewest`'s GPU target."""
    return _best(cands, _fewest(cands, cap, extra))


def _best(cands: list[Candidate], cap: int) -> Candidate:
    """Within the cap, the fewest changes, then GPUs, then the fewest changes to models whose
    demand did not change. The re-plan's cap is `_fewest`'s: the fewest GPUs in hand (never
    more than the proven bound's or the fresh plan's count), + `max_extra_gpus`, the GPUs a
    user may trade for fewer changes."""
    within = [c for c in cands if c.gpus <= cap]
    return min(within, key=lambda c: (c.changes, c.gpus, c.others))


def own_recover(request: PlanRequest, kept: tuple[PlacedSegment, ...], model: str, gpus: int,
                deadline: float = float("inf")) -> tuple[PlacedSegment, ...] | None:
    """The fewest changes to `model` alone (up to `_OWN_DROPS` of its smallest `_OWN_OF`
    segments given up, `_drop_order`, the rest of its rate covered in free slots, `_own_cover`) within `gpus`
    GPUs, every other segment in `kept` left in place; None when none is found by `deadline`.
    Each way is tried on one space and undone."""
    per_size = per_size_table(request)[model]
    rate = next(_exact(s.rate) for s in request.services if s.model == model)
    own = sorted((s for s in kept if s.model == model), key=lambda s: (s.size, s.gpu, s.start))
    space = Space(request.gpu, kept, set())
    own = _drop_order(own, per_size, space)
    in_use = len(space.state)
    best = None
    fills: dict[int, tuple] = {}  # `dense_cover`'s fastest layout per taken mask, shared by the tries
    for k in range(min(len(own), _OWN_DROPS) + 1):
        for gone in combinations(own[:_OWN_OF], k):
            if _now() > deadline:
                return None
            for s in gone:
                space.remove(s)
            emptied = {s.gpu for s in gone if space.state[s.gpu][1] == 0}
            need = rate - sum((_exact(s.segment.throughput) for s in own if s not in gone), Fraction(0))
            added = _own_cover(model, need, per_size, space, emptied, in_use - gpus, fills)
            if added is not None and (best is None or k + len(added) < best[0]):
                best = (k + len(added), set(gone), added)
            for s in gone:
                space.occupy(s)
        if best is not None and best[0] <= k + 1:
            break  # more drops cannot do better
    if best is None:
        return None
    return tuple(s for s in kept if s not in best[1]) + tuple(best[2])


def _drop_order(own: list[PlacedSegment], per_size: dict[int, Triplet], space: Space) -> list[PlacedSegment]:
    """`own` (smallest first) with the segments whose slots, given up, hold more of the model
    than they serve moved to the front, the most gained first (per GPU, the best legal layout of
    the free slots, `_most_in`, with and without the segment): a 3g@4 re-cut into
    three 1g, a 2g into two. The smallest alone missed those beyond the first `_OWN_OF` (1,000
    services, bert-385 x1.1: thirteen 1g came first, while its 3g and two 2g re-cut, with the one
    free slice, gain the 215 req/s it needs: 11 changes, none to other models, where the plan
    kept was the renumbered fresh one, 1,204 changes)."""
    gpu = space.gpu
    most: dict[int, float] = {}
    gain = {}
    for s in own:
        used = space.state[s.gpu][0]
        freed = used & ~gpu.mask(s.size, s.start)
        gain[s] = _most_in(gpu, per_size, freed, most) - _most_in(gpu, per_size, used, most) - s.segment.throughput
    return sorted(own, key=lambda s: -gain[s] if gain[s] > 1e-9 else 0.0)  # stable: the rest smallest first


def _own_cover(model: str, need: Fraction, per_size: dict[int, Triplet], space: Space, emptied: set[int],
               to_free: int, fills: dict[int, tuple]) -> list[PlacedSegment] | None:
    """The fewest segments covering `need` in `space`'s free slots (`fit_cover`, else
    `dense_cover`) such that at least `to_free` of the GPUs in `emptied` (those the model's drops
    empty) stay empty: first with them closed, the way to fewer GPUs, then open, where the model
    re-cuts its own GPU into instances that serve more (1,000 services, resnet101-226 x1.1: its 7g
    re-cut into a 4g and a 3g, plus a 1g in the one free slice, 4 changes and no other model's,
    where packing moved two segments of others for as many). None if neither fits; the space
    is left as it was."""
    best = None
    for g in emptied:
        space.close(g)
    for closed in (True, False) if emptied else (True,):
        if not closed:
            for g in emptied:
                space.reopen(g)
        added = fit_cover(model, need, per_size, space) if need > 0 else []
        if added is None:
            added = dense_cover(model, need, per_size, space, fills)
        if added is None:
            continue
        still = sum(1 for g in emptied if space.state[g][1] == 0)
        for a in added:
            space.remove(a)
        if still >= to_free and (best is None or len(added) < len(best)):
            best = added
    return best  # every GPU of `emptied` open again: the second try reopened them


def dense_cover(model: str, need: Fraction, per_size: dict[int, Triplet], space: Space,
                fills: dict[int, tuple]) -> list[PlacedSegment] | None:
    """Cover `need` in `space`'s free slots cut into the instances that serve the most there:
    per GPU the fastest legal layout of its free slots (as `own_room` counts them), its fastest
    instances first, the roomiest GPUs first. `fit_cover` puts one segment of the fastest
    fitting size in a hole, which can serve less (a 2g where two 1g serve more). None if even
    this falls short (the space left as it was); `fills` keeps each mask's layout between calls."""
    gpu = space.gpu
    rooms = []
    for (used, compute), members in space.buckets.items():
        if not members:
            continue
        if used not in fills:
            fills[used] = max(((sum(per_size[z].throughput for z, _ in lay), lay) for lay in gpu.layouts()
                               if all(z in per_size and not gpu.mask(z, st) & used for z, st in lay)
                               and compute + sum(z for z, _ in lay) <= gpu.compute_slices),
                              key=lambda c: (c[0], -len(c[1])), default=(0.0, ()))
        room, lay = fills[used]
        rooms += [(-room, g, lay) for g in members] if lay else []
    out = []
    for _, g, lay in sorted(rooms):
        for z, st in sorted(lay, key=lambda p: -per_size[p[0]].throughput):
            if need <= 0:
                return out
            out.append(PlacedSegment(Segment(model, per_size[z]), g, st))
            space.occupy(out[-1])
            need -= _exact(per_size[z].throughput)
    if need <= 0:
        return out
    for placed in out:
        space.remove(placed)
    return None


_OWN_DROPS, _OWN_OF = 3, 12  # `own_recover`: most segments given up, of how many (smallest first)


def _most_in(gpu, per_size: dict[int, Triplet], mask: int, memo: dict[int, float]) -> float:
    """The most a model serves in the memory slices `mask` leaves free on one GPU: the best legal
    layout's instances that fit there, each size at its triplet in `per_size` (throughputs add
    up); `memo` keeps each mask's answer."""
    if mask not in memo:
        memo[mask] = max((sum(per_size[z].throughput for z, st in lay if z in per_size and not gpu.mask(z, st) & mask)
                          for lay in gpu.layouts()), default=0.0)
    return memo[mask]


def own_room(request: PlanRequest, kept: tuple[PlacedSegment, ...], changed, gpus: int) -> bool:
    """Whether one changed model could be re-covered within `gpus` GPUs with every other model's
    segments in `kept` left in place (and still covering its rate). Exact: throughputs add up, so
    its most capacity is, per GPU, the best legal layout of the slots the others leave free (each
    size at the model's best triplet), and each GPU the others do not use holds a full layout.
    False for more than one changed model (not looked at)."""
    if len(changed) != 1:
        return False
    (model,) = changed
    gpu = request.gpu
    have: dict[str, Fraction] = defaultdict(Fraction)
    used: dict[int, int] = defaultdict(int)
    for s in kept:
        if s.model != model:
            have[s.model] += _exact(s.segment.throughput)
            used[s.gpu] |= gpu.mask(s.size, s.start)
    if len(used) > gpus or any(have[s.model] < _exact(s.rate) for s in request.services if s.model != model):
        return False
    best = per_size_table(request)[model]
    most: dict[int, float] = {}
    room = sum(_most_in(gpu, best, m, most) for m in used.values())
    room += (gpus - len(used)) * _most_in(gpu, best, 0, most)  # an unused GPU holds a full layout
    rate = next(s.rate for s in request.services if s.model == model)
    return room >= rate
