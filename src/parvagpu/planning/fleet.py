"""Planning onto a fleet: a fixed inventory of nodes of mixed GPU types, prices and reserved slots.

Objective, in strict order: every service meets its SLO at its rate, the lowest total price per
hour, the fewest GPUs. A service's segments may be of several types; the program (`fleet_program`)
states every plan of the fleet, so its proven bound holds for the mixed case.

Where the fleet cannot serve everything, tiers decide (0 the most important): the highest tiers
that fit are served fully; the next tier gets the largest fraction f of every one of its services'
rates found to fit with them, so the shortfall is shared in proportion to demand (every service of
the tier at the same f, floored to 1e-6 req/s); the tiers below it get nothing. Near the fleet's
capacity HiGHS needs tens of seconds to find any plan of 1,000 services, so f starts from the
greedy packing (`fleet_greedy`, bisected on f in well under a second a step); then rounds of
repacking (the cheapest plan at f, HiGHS from the greedy plan, frees room) and greedy filling of
that room raise it; then one program maximises f from that plan (HiGHS's bound on f is proven),
then bisection over feasibility solves between the f found and the bound (six steps), each proven
infeasibility lowering the bound, unless a step's time would be below what the program took (at
1,000 services it runs to its limit): then more repacking rounds instead. The plan records f and
the bound (`share_upper_bound`; equal when proven maximal, 1 when nothing was proven in time).
Unless the request allows it, such a plan is `Unservable` (exit 3).

`time_limit` is one deadline for the whole call: all of it for the plan serving everything, or
with `allow_partial` half of it at most, the tiers 80% of the rest (of the shared tier's part:
60% for repacking and filling, half the rest for the program maximising f) and the cheapest plan
at the served rates what remains. Every phase stops at it (a solve's budget counts building its
program; the greedy bisection checks it each step) and a phase that would start after it is
skipped: the best plan found by then is returned. Pure, like every planner.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Mapping

from parvagpu.core.errors import ParvaError, Unservable
from parvagpu.core.fleet import Fleet, reserved_slots
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Service
from parvagpu.planning.configurator import split_feasible
from parvagpu.planning.fleet_greedy import greedy
from parvagpu.planning.fleet_program import (
    MARGIN, TIE, Demand, GpuClass, Options, build_and_solve, capacity_short, decode, price_unit, start_values,
)
from parvagpu.planning.optimizer.blocks import option_groups
from parvagpu.planning.optimizer.columns import Column, mig_columns
from parvagpu.planning.request import DEFAULT_MAX_PROCS, DEFAULT_TIME_LIMIT, PlanRequest

MIXED = "mixed"


@dataclass(frozen=True)
class FleetRequest:
    """Services (with tiers), each fleet type's profiles (type name -> model -> profile), the
    fleet and the limits. `mip_rel_gap` stops the solve once the price is proven within it."""

    services: tuple[Service, ...]
    profiles: Mapping[str, Mapping[str, Profile]] = field(repr=False)
    fleet: Fleet
    max_procs: int = DEFAULT_MAX_PROCS
    time_limit: float = DEFAULT_TIME_LIMIT
    mip_rel_gap: float = 0.0
    allow_partial: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "services", tuple(self.services))
        for node in self.fleet.nodes:
            if node.gpu not in self.profiles:
                raise ParvaError(f"no profiles for GPU type {node.gpu}")
            # The per-type request checks services and profiles (raises on the first problem).
            PlanRequest(self.services, self.profiles[node.gpu], node.type, self.max_procs)
        if not self.time_limit > 0 or not 0 <= self.mip_rel_gap < 1:
            raise ParvaError("time limit must be positive and the gap in [0, 1)")


class _Clock:
    """The call's deadline; every solve gets a share of what is left (at least a millisecond)."""

    def __init__(self, limit: float) -> None:
        self.deadline = time.perf_counter() + limit

    def left(self) -> float:
        return max(self.deadline - time.perf_counter(), 1e-3)

    def expired(self) -> bool:
        return time.perf_counter() >= self.deadline


def gpu_classes(fleet: Fleet) -> tuple[GpuClass, ...]:
    """The fleet's GPUs grouped by (type, price, reserved slots), each with its layouts; wholly
    reserved GPUs are left out."""
    found: dict[tuple, list[int]] = {}
    for k, node in enumerate(fleet.nodes):
        for local in range(node.gpus):
            mask, compute = reserved_slots(node, local)
            if compute < node.type.compute_slices:
                found.setdefault((node.gpu, node.price_per_gpu_hour, mask, compute), []).append(
                    fleet.gpu_index(k, local))
    return tuple(
        GpuClass(fleet.nodes[fleet.node_of(gpus[0])].type, price, tuple(gpus), _free_columns(
            fleet.nodes[fleet.node_of(gpus[0])].type, mask, compute))
        for (_, price, mask, compute), gpus in found.items()
    )


def _free_columns(gpu: GpuType, mask: int, compute: int) -> tuple[Column, ...]:
    """Maximal layouts that leave the reserved slots alone (all of them when none are)."""
    if not mask:
        return mig_columns(gpu)
    free = {}
    for lay in gpu.layouts():
        if sum(s for s, _ in lay) + compute > gpu.compute_slices:
            continue
        if any(gpu.mask(s, st) & mask for s, st in lay):
            continue
        free.setdefault(tuple(sum(1 for s, _ in lay if s == z) for z in gpu.sizes), lay)
    vecs = set(free)
    maximal = [v for v in vecs if not any(w != v and all(a <= b for a, b in zip(v, w)) for w in vecs)]
    return tuple(Column(v, tuple(sorted(free[v], key=lambda p: p[1]))) for v in sorted(maximal, reverse=True))


@dataclass(frozen=True)
class _Setup:
    """What every solve of one request shares: the types, the GPU classes and each service's
    options per type (they depend on the profile and SLO, not on the rate)."""

    types: Mapping[str, GpuType]
    classes: tuple[GpuClass, ...]
    options: Mapping[str, Mapping[str, Options]]  # model -> type -> options


def _setup(request: FleetRequest) -> _Setup:
    """Each service's options on every type that can serve it; `Unservable` for a service no type
    can serve."""
    types = {n.gpu: n.type for n in request.fleet.nodes}
    options: dict[str, dict[str, Options]] = {s.model: {} for s in request.services}
    reasons: dict[str, str] = {}
    for t, gpu in types.items():
        ok, dropped = split_feasible(PlanRequest(request.services, request.profiles[t], gpu, request.max_procs))
        for msg in dropped:
            reasons.setdefault(msg.split(":")[0], f"{msg} ({t})")
        if ok.services:
            for g in option_groups(ok, mig_columns(gpu)):
                for svc in g.services:
                    options[svc.model][t] = g.options
    for s in request.services:
        if not options[s.model]:
            reason = reasons.get(f"model {s.model}", f"model {s.model}: no admissible triplet")
            raise Unservable(f"{reason} on any GPU type of the fleet")
    return _Setup(types, gpu_classes(request.fleet), options)


def _demands(setup: _Setup, request: FleetRequest, served: Mapping[str, float], shared=frozenset()) -> list[Demand]:
    """Every service with a positive rate to serve (its `served` rate, else its own), `shared`
    ones asking f x their rate."""
    out = []
    for s in request.services:
        rate = s.rate if s.model in shared else served.get(s.model, s.rate)
        if rate > 0:
            out.append(Demand(s, rate, setup.options[s.model], s.model in shared))
    return out


@dataclass(frozen=True)
class _Outcome:
    plan: DeploymentMap | None
    infeasible: bool  # HiGHS proved that no plan exists


def _cheapest(request: FleetRequest, setup: _Setup, served: Mapping[str, float], seconds: float,
              start: DeploymentMap | None = None) -> _Outcome:
    """The cheapest plan serving every service at its rate (or its `served` rate, 0: not at all).
    HiGHS starts from `start` (a plan serving at least these rates), else from the greedy packing
    when it finds one. `seconds` is the budget of the whole call, the greedy packing and building
    the program included."""
    deadline = time.perf_counter() + seconds
    demands = _demands(setup, request, served)
    placed = _placed(start) if start is not None else _greedy(request, setup, demands, [1.0] * len(demands))
    first = None if placed is None else start_values(placed, demands, setup.classes)
    sol = build_and_solve(demands, setup.classes, setup.types, time_limit=seconds, mip_rel_gap=request.mip_rel_gap,
                          start=first, deadline=deadline)
    if not sol.feasible:
        return _Outcome(None, sol.status == "kInfeasible")
    bound = max(0.0, sol.bound - TIE * request.fleet.total_gpus)  # see _plan
    unit = price_unit(setup.classes)
    if unit is not None:  # every plan's price is a whole number of units
        bound = math.ceil(bound / unit - 1e-9) * unit
    return _Outcome(_plan(request, decode(demands, setup.classes, sol), served, bound), False)


def _placed(plan: DeploymentMap) -> list:
    return [(p.gpu, p.start, p.segment) for p in plan.segments]


def _greedy(request: FleetRequest, setup: _Setup, demands: list[Demand], scale: list[float],
            kept: list = ()) -> list | None:
    """The greedy packing (`fleet_greedy`) of every demand's program row at `scale` x it (the
    rate plus the program's margin, so the packing is a solution of the program), on top of the
    `kept` placed segments."""
    have: dict[str, float] = defaultdict(float)
    for _, _, seg in kept:
        have[seg.model] += seg.throughput
    # A kept plan from HiGHS meets its rows to HiGHS's tolerance (1e-7): a deficit that small is
    # none, not a reason for one more segment.
    targets = [x * (d.rate * (1 + MARGIN) + MARGIN) - have[d.service.model] for d, x in zip(demands, scale)]
    targets = [t if t > 1e-6 else 0.0 for t in targets]
    return greedy(demands, setup.classes, setup.types, request.fleet, targets, [not d.shared for d in demands], kept)


def _plan(request: FleetRequest, placed, served: Mapping[str, float], bound: float | None) -> DeploymentMap:
    """The deployment map of placed segments (global GPU, start, segment). `bound` is a proven
    lower bound on the price of any plan serving these rates (None: not known): HiGHS bounds
    price + TIE x GPUs, so the price of any plan is at least that bound less TIE x all the
    fleet's GPUs."""
    short = capacity_short(placed, [s for s in request.services if served.get(s.model, s.rate) > 0], served)
    if short:
        raise AssertionError(f"fleet plan falls short for {', '.join(short)}")
    used = {g for g, _, _ in placed}
    price = sum(request.fleet.node(g).price_per_gpu_hour for g in used)
    stats: tuple = (("price_per_hour", round(price, 6)), ("gpus", float(len(used))))
    if bound is not None:
        bound = min(price, bound)
        gap = 0.0 if price <= 0 or price - bound <= 1e-9 * price else (price - bound) / price
        stats += (("price_lower_bound", round(bound, 6)), ("price_gap", round(gap, 6)),
                  ("proven_optimal", float(gap == 0)))
    kinds = request.fleet.types
    return DeploymentMap(
        gpu_type=kinds[0] if len(kinds) == 1 else MIXED, strategy="fleet", max_procs=request.max_procs,
        gpus_per_node=max(n.gpus for n in request.fleet.nodes),
        segments=tuple(PlacedSegment(seg, g, st) for g, st, seg in placed),
        services=request.services, stats=stats, fleet=request.fleet,
        served=tuple((s.model, served[s.model]) for s in request.services if s.model in served),
    )


def plan_fleet(request: FleetRequest) -> DeploymentMap:
    """The cheapest plan serving every service on the fleet; when the fleet is too small, the
    tiered plan (see the module docstring), `Unservable` unless `allow_partial`."""
    clock = _Clock(request.time_limit)
    setup = _setup(request)
    # With allow_partial, half the time at most: the tiers may need the rest.
    full = _cheapest(request, setup, {}, clock.left() / 2 if request.allow_partial else clock.left())
    if full.plan is not None:
        return full.plan
    if not request.allow_partial:
        if full.infeasible:
            raise Unservable("cannot be served as asked: the fleet is too small (proven); "
                             "--allow-partial plans the served share by tier")
        raise Unservable("the fleet plan found no plan within the time limit; raise --time-limit")
    share = _tiered(request, setup, clock)
    served = share.served  # empty: everything fits (the full solve ran out of time before finding it)
    # The cheapest plan at the served rates; the share program's plan if none is found in time.
    out = (_cheapest(request, setup, served, clock.left(), start=share.plan) if not clock.expired()
           else _Outcome(None, False))
    best = out.plan if out.plan is not None else share.plan
    extra = (("tiers_full", float(share.tiers_full)), ("share", share.f), ("share_upper_bound", share.f_upper))
    return replace(best, stats=best.stats + (extra if served else ()))


@dataclass(frozen=True)
class _Share:
    """The tiers' answer: the served rates (of the services not served in full), the shared tier's
    fraction f and its proven upper bound, how many tiers are served in full, a note, a plan."""

    served: dict[str, float]
    f: float
    f_upper: float
    tiers_full: int
    note: str
    plan: DeploymentMap


def _tiered(request: FleetRequest, setup: _Setup, clock: _Clock) -> _Share:
    """Tier by tier from the most important: the largest f of this tier's rates found to fit with
    the tiers above in full; at f = 1 the next tier, else this tier at f and nothing below. When
    the clock stops it first, the tiers not reached get nothing."""
    tiers = sorted({s.tier for s in request.services})
    best: _Share | None = None
    for i, tier in enumerate(tiers):
        these = tuple(s for s in request.services if s.tier == tier)
        below = {s.model: 0.0 for s in request.services if s.tier > tier}
        if clock.expired():
            break
        # Most of the time for the tiers; the final cheapest plan only improves the price.
        f, f_upper, plan = _largest_share(request, setup, these, below, _Clock(clock.left() * _TIERS_SHARE / (len(tiers) - i)))
        if plan is None:
            break
        note = (f"tier {tier} served at {f:.1%} of its rates (no plan serves more than {f_upper:.1%}), tiers below it not at all"
                if f < 1 else f"tiers up to {tier} served in full, the tiers below not at all (time limit)")
        best = _Share(dict(plan.served), f, f_upper, i + (f >= 1), note, plan)
        if f < 1:
            break
    if best is None:
        raise Unservable("the fleet plan found no partial plan within the time limit; raise --time-limit")
    return best


# Bisection on the shared tier's fraction, after the program maximising it: at most this many steps.
# Few steps, each with time enough to find a plan at 1,000 services (a feasibility solve near the
# fleet's capacity takes tens of seconds there).
_SHARE_STEPS = 6
_SHARE_RESOLUTION = 1 / 4096
_FILL_ROUNDS = 4
_FILL_TIME = 0.6  # of the shared tier's time: repacking and filling; the rest for the bound on f
_FILL_GAP = 0.01  # the repacking solve stops at a price proven within 1%
_TIERS_SHARE = 0.8  # of the time left after the full plan; the rest for the final cheapest plan
_LATE_FILL_PART = 0.8  # of the time left, a repacking solve's after the share program (the greedy fill is fast)


def _largest_share(request: FleetRequest, setup: _Setup, share: tuple[Service, ...], below: dict[str, float],
                   clock: _Clock) -> tuple[float, float, DeploymentMap | None]:
    """(f, f_upper, plan): a plan serving the tiers above in full and `share` at f x their rates
    (floored to 1e-6 req/s), and a proven bound f_upper >= the largest f any plan serves. First
    the greedy packing bisects f (fast, proves nothing); then rounds of repacking and filling raise
    it (`_fill`, `_FILL_TIME` of the time); then one program maximises f from that plan (half the
    rest; solved to the end, f = f_upper); then bisection between f and f_upper over feasibility
    solves, each proven infeasibility lowering f_upper, or, when a step's share of the time left
    is below what the program took, more repacking rounds with that time. A solve that runs out of
    time counts as not fitting (f is never overstated) but proves nothing. Past the clock's
    deadline no phase starts: the plan found by then (f_upper 1 when none was proven)."""
    models = frozenset(s.model for s in share)
    g_f, g_plan = _greedy_share(request, setup, models, below, clock=clock)
    if g_f >= 1:
        return 1.0, 1.0, g_plan
    if g_plan is not None and not clock.expired():
        g_f, g_plan = _fill(request, setup, models, below, g_f, g_plan, _Clock(clock.left() * _FILL_TIME))
    if clock.expired():  # the program and the bisection are skipped: the greedy plan, bound unknown
        return g_f, 1.0, g_plan
    t0 = time.perf_counter()
    f, upper, plan = _max_share(request, setup, models, below, clock.left() / 2, g_f, g_plan)
    took = time.perf_counter() - t0
    if g_plan is not None and (plan is None or g_f > f):  # HiGHS did not take or improve the start
        f, plan = g_f, g_plan
        upper = max(upper, f)  # HiGHS's bound, to its tolerance
    if f >= 1:
        return 1.0, 1.0, plan
    # Each bisection step is a feasibility solve of the same program: when a step's share of the
    # time left is below what the share program took (at 1,000 services it runs to its limit
    # without closing the gap), no step can end in time; the time goes to more repacking rounds.
    if plan is not None and upper - f > _SHARE_RESOLUTION and clock.left() / (_SHARE_STEPS + 1) < took:
        f, plan = _fill(request, setup, models, below, f, plan, clock, part=_LATE_FILL_PART)
        return f, max(upper, f), plan

    def attempt(x: float, steps_left: int) -> _Outcome:
        served = {**below, **{s.model: math.floor(s.rate * x * 1e6) / 1e6 for s in share}}
        quick = replace(request, mip_rel_gap=0.99)  # any plan will do
        return _cheapest(quick, setup, served, clock.left() / (steps_left + 1))

    if plan is None:  # none in time: the tiers above alone, as the last step found
        plan = attempt(0.0, _SHARE_STEPS).plan
    lo, hi = f, upper
    for step in range(_SHARE_STEPS):
        if clock.expired() or hi - lo <= _SHARE_RESOLUTION or plan is None:
            break
        mid = (lo + hi) / 2
        out = attempt(mid, _SHARE_STEPS - step)
        if out.plan is not None:
            lo, plan = mid, out.plan
        else:
            hi = mid
            upper = mid if out.infeasible else upper
    return lo, upper, plan


def _fill(request: FleetRequest, setup: _Setup, share: frozenset, below: dict[str, float], f: float,
          plan: DeploymentMap, clock: _Clock, part: float = 0.5) -> tuple[float, DeploymentMap]:
    """Rounds of: the cheapest plan at f (HiGHS, from `plan`, within `_FILL_GAP`, `part` of the
    time left) repacks the segments and frees room, then the greedy packing raises f in that room
    on top of it; until a round gains less than `_SHARE_RESOLUTION` or the clock stops. Returns
    the last (f, plan)."""
    quick = replace(request, mip_rel_gap=_FILL_GAP)
    for _ in range(_FILL_ROUNDS):
        if clock.expired():
            break
        # Half of what is left: at 1,000 services HiGHS needs 15-30 s to find a cheaper plan.
        out = _cheapest(quick, setup, _served(request, share, below, f), clock.left() * part, start=plan)
        if out.plan is None or clock.expired():
            break
        f2, plan2 = _greedy_share(request, setup, share, below, out.plan, f, clock)
        if f2 - f < _SHARE_RESOLUTION:
            break
        f, plan = f2, plan2
    return f, plan


def _served(request: FleetRequest, share: frozenset, below: dict[str, float], f: float) -> dict[str, float]:
    """The rates a plan at f serves: the tiers below nothing, `share` f x their rates to 1e-6."""
    return {**below, **{s.model: math.floor(s.rate * f * 1e6) / 1e6 for s in request.services
                        if s.model in share and f < 1}}


def _greedy_share(request: FleetRequest, setup: _Setup, share: frozenset, below: dict[str, float],
                  base: DeploymentMap | None = None, lo: float = 0.0, clock: _Clock | None = None):
    """(f, plan): the largest f (to `_SHARE_RESOLUTION`, at least `lo`) at which the greedy
    packing places the tiers above in full and `share` at f x their rates, on top of the segments
    of `base` (a plan at `lo`), and its plan; (lo, base) when it places no more than that. The
    bisection stops at the `clock`'s deadline with the largest f placed by then."""
    demands = _demands(setup, request, below, share)
    kept = [] if base is None else _placed(base)

    def at(f: float):
        return _greedy(request, setup, demands, [f if d.shared else 1.0 for d in demands], kept)

    best = at(1.0)
    if best is not None:
        return 1.0, _plan(request, best, _served(request, share, below, 1.0), None)
    hi, best = 1.0, None
    if base is None:
        best = at(lo)
        if best is None:
            return lo, None
    while hi - lo > _SHARE_RESOLUTION and not (clock is not None and clock.expired()):
        mid = (lo + hi) / 2
        placed = at(mid)
        if placed is not None:
            lo, best = mid, placed
        else:
            hi = mid
    if best is None:
        return lo, base
    f = math.floor(lo * 1e6) / 1e6
    return f, _plan(request, best, _served(request, share, below, f), None)


def _max_share(request: FleetRequest, setup: _Setup, share: frozenset, below: dict[str, float], seconds: float,
               start_f: float = 0.0, start: DeploymentMap | None = None):
    """(f, its proven upper bound, a plan serving the tiers above in full and `share` at f x their
    rates), or (0, 1, None) when no plan was found in time. HiGHS starts from `start` (at f =
    `start_f`) when given."""
    deadline = time.perf_counter() + seconds
    demands = _demands(setup, request, below, share)
    first = None if start is None else start_values(_placed(start), demands, setup.classes, start_f)
    sol = build_and_solve(demands, setup.classes, setup.types, time_limit=seconds, mip_rel_gap=0.0, start=first,
                          deadline=deadline)
    if not sol.feasible:
        return 0.0, 1.0, None
    upper = min(1.0, max(0.0, -sol.bound))
    # f as the placed capacity gives it (exact sums: HiGHS meets its rows to a tolerance), to 1e-6.
    placed = decode(demands, setup.classes, sol)
    cap: dict[str, Fraction] = defaultdict(Fraction)
    for _, _, seg in placed:
        cap[seg.model] += Fraction(seg.throughput)
    exact = min([Fraction(1)] + [cap[s.model] / Fraction(s.rate) for s in request.services if s.model in share])
    f = 1.0 if exact >= 1 else math.floor(exact * 10**6) / 1e6
    return f, max(f, upper), _plan(request, placed, _served(request, share, below, f), None)
