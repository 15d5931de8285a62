"""Re-planning onto a fleet from the plan running there (`plan --fleet --current`).

Objective, in the order of a one-type re-plan: the served rates of a fresh fleet plan (every
service in full, or the tiers' shares), the lowest price (as close as the request asks, see
below), then the fewest changed segments (added + removed). Two candidates:

- *keep*: every running segment that is still one of its service's options on its GPU type stays;
  what services lack is planned by the fleet program into the room the kept segments leave, with
  the GPUs that already hold kept segments at no extra price (they are paid for). When some rates
  went down, also *keep_trimmed*: the same with those services' surplus segments removed first
  (`replan.trim_surplus`), which may save a GPU.
- *fresh*: the fleet plan from scratch, its GPUs renumbered onto the running plan's within each
  group of interchangeable GPUs (same type, price and reservations) to keep the most segments
  (`replan.match_fresh`).

Of the candidates as cheap as the request asks (at most the fresh plan's price, or within its
`mip_rel_gap` of the proven lower bound, as the fresh plan itself is), the one with the fewest
changes wins, then the cheaper, then the one with fewer GPUs. The plan records its
`transition` from the running plan. The fresh plan gets half the time limit, the keep candidates'
programs the rest. Pure.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from fractions import Fraction

from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import reserved_slots
from parvagpu.core.model import DeploymentMap, PlacedSegment, segment_key
from parvagpu.planning.fleet import (
    FleetRequest, _Clock, _demands, _free_columns, _greedy, _plan, _setup, gpu_classes, plan_fleet,
)
from parvagpu.planning.fleet_program import MARGIN, GpuClass, build_and_solve, decode, start_values
from parvagpu.planning.replan import match_fresh, trim_surplus
from parvagpu.planning.transition import transition


def replan_fleet(request: FleetRequest, current: DeploymentMap) -> DeploymentMap:
    """The plan for `request` made from the `current` plan running on the same fleet (see the
    module docstring). `Unservable` as `plan_fleet` when the fleet is too small and the request
    does not allow a partial plan."""
    if current.fleet != request.fleet:
        raise ParvaError("the running plan is for another fleet: re-plan with the fleet it runs on")
    clock = _Clock(request.time_limit)
    fresh = plan_fleet(replace(request, time_limit=clock.left() / 2))
    served = dict(fresh.served)
    cands = [("fresh", _matched(fresh, current, gpu_classes(request.fleet)))]
    # Keeping every segment; and, when some rates went down, those services' surplus trimmed (a
    # change, worth it only where it saves a GPU's price).
    was = {s.model: current.served_rate(s) for s in current.services}
    down = frozenset(s.model for s in request.services if served.get(s.model, s.rate) < was.get(s.model, 0.0))
    for trim, label in ((frozenset(), "keep"), (down, "keep_trimmed")):
        if label == "keep" or trim:
            kept = _keep(request, current, served, trim, clock.left() / (1 if trim or not down else 2))
            if kept is not None:
                cands.append((label, kept))
    name, segs = _choose(cands, current, request, fresh)
    plan = replace(fresh, segments=segs)
    keeps = [c for c in cands if c[0] != "fresh"]
    keep_price = (("keep_price_per_hour", min(_rank(k, current, request)[0] for _, k in keeps)),) if keeps else ()
    plan = replace(plan, stats=_stats(plan, fresh, name, _changes(segs, current)) + keep_price)
    return replace(plan, transition=transition(current, plan))


def _choose(cands, current: DeploymentMap, request: FleetRequest, fresh: DeploymentMap):
    """The candidate with the fewest changes among those as cheap as the request asks: at most
    the fresh plan's price, or within `mip_rel_gap` of its proven lower bound (the fresh plan is
    only that close itself); then the lower price, then fewer GPUs."""
    st = dict(fresh.stats)
    limit = st["price_per_hour"]
    if "price_lower_bound" in st and request.mip_rel_gap > 0:
        limit = max(limit, st["price_lower_bound"] / (1 - request.mip_rel_gap))
    ranked = [(c, _rank(c[1], current, request)) for c in cands]
    ok = [(c, r) for c, r in ranked if r[0] <= limit + 1e-9]
    return min(ok, key=lambda cr: (cr[1][2], cr[1][0], cr[1][1]))[0]


def _stats(plan: DeploymentMap, fresh: DeploymentMap, name: str, changes: int) -> tuple:
    """The fresh plan's figures, with the price, GPUs and gap of the chosen segments."""
    was = dict(fresh.stats)
    price = plan.price_per_hour()
    out: tuple = (("price_per_hour", round(price, 6)), ("gpus", float(plan.gpus_used)))
    if "price_lower_bound" in was:
        bound = min(price, was["price_lower_bound"])
        gap = 0.0 if price - bound <= 1e-9 * max(price, 1.0) else (price - bound) / price
        out += (("price_lower_bound", bound), ("price_gap", round(gap, 6)), ("proven_optimal", float(gap == 0)))
    mine = {k for k, _ in out} | {"price_lower_bound"}
    out += tuple((k, v) for k, v in fresh.stats if k not in mine | {"proven_optimal", "price_gap"})
    return out + (("fresh_price_per_hour", was["price_per_hour"]), ("changed_segments", float(changes)),
                  (f"replan_{name}", 1.0))


def _rank(segs, current: DeploymentMap, request: FleetRequest) -> tuple:
    used = {s.gpu for s in segs}
    price = round(sum(request.fleet.node(g).price_per_gpu_hour for g in used), 6)
    return (price, len(used), _changes(segs, current))


def _changes(segs, current: DeploymentMap) -> int:
    per_node = current.gpus_per_node
    old = {segment_key(s, per_node) for s in current.segments}
    new = {segment_key(s, per_node) for s in segs}
    return len(old - new) + len(new - old)


def _matched(fresh: DeploymentMap, current: DeploymentMap, classes) -> tuple[PlacedSegment, ...]:
    """The fresh plan's GPUs renumbered within each class onto the running plan's."""
    out: list[PlacedSegment] = []
    for cl in classes:
        ids = set(cl.gpus)
        sub = replace(fresh, segments=tuple(s for s in fresh.segments if s.gpu in ids))
        run = replace(current, segments=tuple(s for s in current.segments if s.gpu in ids))
        out += match_fresh(sub, run, ids)
    return tuple(out)


def _keep(request: FleetRequest, current: DeploymentMap, served: dict[str, float], trim: frozenset, seconds: float):
    """The keep candidate's segments, or None when what services lack does not fit in time."""
    setup = _setup(request)
    rate = {s.model: served.get(s.model, s.rate) for s in request.services}
    options = {(m, t): {trip for _, trip in opts} for m, per in setup.options.items() for t, opts in per.items()}
    still = tuple(s for s in current.segments if rate.get(s.model, 0) > 0
                  and s.segment.triplet in options.get((s.model, current.gpu_type_of(s.gpu)), ()))
    target = {m: Fraction(repr(r)) * (1 + Fraction(repr(MARGIN))) + Fraction(repr(MARGIN)) for m, r in rate.items()}
    kept = trim_surplus(still, target, trim) if trim else still
    have: dict[str, float] = defaultdict(float)
    for s in kept:
        have[s.model] += s.segment.throughput
    # What each service lacks, as a rate to serve on the room the kept segments leave.
    lack = {m: r - have[m] for m, r in rate.items() if r > 0 and have[m] < r * (1 + MARGIN) + MARGIN - 1e-6}
    if not lack:
        return kept
    classes = _room_classes(request, kept)
    demands = _demands(setup, request, {m: lack.get(m, 0.0) for m in rate})
    # The greedy packing asks each service's whole row less what its kept segments give.
    whole = [replace(d, rate=rate[d.service.model]) for d in demands]
    placed = _greedy(request, replace(setup, classes=classes), whole, [1.0] * len(whole),
                     [(s.gpu, s.start, s.segment) for s in kept])
    first = None
    if placed is not None:
        new = placed[len(kept):]
        first = start_values(new, demands, classes)
    sol = build_and_solve(demands, classes, setup.types, time_limit=seconds, mip_rel_gap=request.mip_rel_gap,
                          start=first)
    if not sol.feasible:
        return None
    new = decode(demands, classes, sol)
    plan = _plan(request, [(s.gpu, s.start, s.segment) for s in kept] + new, served, None)
    return plan.segments


def _room_classes(request: FleetRequest, kept) -> tuple[GpuClass, ...]:
    """The fleet's GPU classes with the kept segments' slots taken as reservations are: GPUs that
    hold kept segments cost nothing more."""
    taken: dict[int, tuple[int, int]] = {}
    fleet = request.fleet
    for s in kept:
        mask, compute = taken.get(s.gpu, (0, 0))
        gpu = fleet.node(s.gpu).type
        taken[s.gpu] = (mask | gpu.mask(s.size, s.start), compute + s.size)
    found: dict[tuple, list[int]] = {}
    for k, node in enumerate(fleet.nodes):
        for local in range(node.gpus):
            g = fleet.gpu_index(k, local)
            mask, compute = reserved_slots(node, local)
            more = taken.get(g, (0, 0))
            mask, compute = mask | more[0], compute + more[1]
            if compute < node.type.compute_slices and mask != (1 << node.type.memory_slices) - 1:
                price = 0.0 if g in taken else node.price_per_gpu_hour
                found.setdefault((node.gpu, price, mask, compute), []).append(g)
    out = []
    for (t, price, mask, compute), gpus in found.items():
        gtype = fleet.nodes[fleet.node_of(gpus[0])].type
        cols = _free_columns(gtype, mask, compute)
        if cols:
            out.append(GpuClass(gtype, price, tuple(gpus), cols))
    return tuple(out)
