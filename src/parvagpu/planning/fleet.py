"""Planning onto a fleet: a fixed inventory of nodes of mixed GPU types, prices and reserved slots.

Objective, in strict order: every service meets its SLO at its rate, the lowest total price per
hour, the fewest GPUs. Where the fleet cannot serve everything, tiers decide (0 the most
important): the highest tiers are served fully, the lowest tier that still fits gets the largest
equal fraction of every service's rate found by bisection to 1/1000 (the shortfall shared in
proportion to demand), and the tiers below get nothing. Unless the request allows it, such a plan is `Unservable` (exit 3).

The program is in `fleet_program`; here: the request, the GPU classes, the groups of services
with their per-type options, the tier search and the result. Pure, like every planner.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Mapping

from parvagpu.core.errors import ParvaError, Unservable
from parvagpu.core.fleet import Fleet, reserved_slots
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Service
from parvagpu.planning.configurator import split_feasible
from parvagpu.planning.fleet_program import TIE, GpuClass, Group, build_and_solve, capacity_short, decode
from parvagpu.planning.optimizer.blocks import build_blocks
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
    def __init__(self, limit: float) -> None:
        self.deadline = time.perf_counter() + limit

    def left(self) -> float:
        return max(self.deadline - time.perf_counter(), 0.05)


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


def _groups(request: FleetRequest, services: tuple[Service, ...]) -> list[Group]:
    """Services grouped so that a group has the same options and covers on every type; services
    with too many covers to list are singletons buying segments of any type. A service with no
    option on any type is `Unservable`."""
    types = {n.gpu: n.type for n in request.fleet.nodes}
    per_service: dict[str, dict[str, tuple]] = {s.model: {} for s in services}
    block_of: dict[str, dict[str, int]] = {s.model: {} for s in services}
    reasons: dict[str, str] = {}
    for t, gpu in types.items():
        req = PlanRequest(services, request.profiles[t], gpu, request.max_procs)
        ok, dropped = split_feasible(req)
        for msg in dropped:
            reasons.setdefault(msg.split(":")[0], f"{msg} ({t})")
        if not ok.services:
            continue
        for b_i, b in enumerate(build_blocks(ok, mig_columns(gpu))):
            for svc in b.services:
                per_service[svc.model][t] = (b.options, b.covers)
                block_of[svc.model][t] = b_i
    groups: dict[tuple, list[Service]] = {}
    for s in services:
        if not per_service[s.model]:
            raise Unservable(f"{_first_reason(s, reasons)} on any GPU type of the fleet")
        single = any(c is None for _, c in per_service[s.model].values())
        key = ("one", s.model) if single else tuple(sorted(block_of[s.model].items()))
        groups.setdefault(key, []).append(s)
    return [
        Group(tuple(m), m[0].rate, per_service[m[0].model], cover_form=key[0] != "one")
        for key, m in groups.items()
    ]


def _first_reason(s: Service, reasons: dict[str, str]) -> str:
    return reasons.get(f"model {s.model}", f"model {s.model}: no admissible triplet")


@dataclass(frozen=True)
class _Outcome:
    plan: DeploymentMap | None
    feasible: bool  # False only when HiGHS proved no plan exists


def _solve(request: FleetRequest, served: Mapping[str, float], clock: _Clock) -> _Outcome:
    """The cheapest plan serving every service at its rate (or its `served` rate, 0: not at all)."""
    scaled = tuple(replace(s, rate=served.get(s.model, s.rate)) for s in request.services)
    scaled = tuple(s for s in scaled if s.rate > 0)
    types = {n.gpu: n.type for n in request.fleet.nodes}
    classes = gpu_classes(request.fleet)
    groups = _groups(request, scaled)
    sol = build_and_solve(groups, classes, types, time_limit=clock.left(), mip_rel_gap=request.mip_rel_gap)
    if not sol.feasible:
        return _Outcome(None, sol.status != "kInfeasible")
    bound = max(0.0, sol.bound - TIE * request.fleet.total_gpus)  # see _plan
    return _Outcome(_plan(request, groups, classes, sol, served, bound, sol.status == "kOptimal"), True)


def _plan(request: FleetRequest, groups, classes, sol, served: Mapping[str, float], bound: float | None,
          optimal: bool) -> DeploymentMap:
    """The deployment map of a solution. `bound` is a proven lower bound on the price of any plan
    serving these rates (None: not known): HiGHS bounds price + TIE x GPUs, so the price of any plan
    is at least that bound less TIE x all the fleet's GPUs."""
    placed, _ = decode(groups, classes, sol)
    short = capacity_short(placed, [s for s in request.services if served.get(s.model, s.rate) > 0], served)
    if short:
        raise AssertionError(f"fleet plan falls short for {', '.join(short)}")
    used = {g for g, _, _ in placed}
    price = sum(request.fleet.node(g).price_per_gpu_hour for g in used)
    stats: tuple = (("price_per_hour", round(price, 6)), ("gpus", float(len(used))))
    if bound is not None:
        bound = min(price, bound)
        gap = 0.0 if price <= 0 else max(0.0, (price - bound) / price)
        stats += (("price_lower_bound", round(bound, 6)), ("price_gap", round(gap, 6)),
                  ("proven_optimal", float(optimal and request.mip_rel_gap == 0)))
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
    full = _solve(request, {}, clock)
    if full.plan is not None:
        return full.plan
    if full.feasible:
        raise Unservable("the fleet plan found no plan within the time limit; raise --time-limit")
    served, note, fallback = _tiered(request, clock)
    if not request.allow_partial:
        raise Unservable(f"cannot be served as asked: the fleet is too small ({note}); --allow-partial plans it")
    # The cheapest plan at the served rates; the bisection's plan if the solve finds none in time.
    out = _solve(request, served, clock)
    best = out.plan if out.plan is not None else fallback
    return replace(best, stats=best.stats + (("tiers_full", float(len(_tiers_full(request, served)))),))


def _tiers_full(request: FleetRequest, served: Mapping[str, float]) -> set[int]:
    return {s.tier for s in request.services} - {s.tier for s in request.services if s.model in served}


def _tiered(request: FleetRequest, clock: _Clock) -> tuple[dict[str, float], str, DeploymentMap]:
    """The served rate of every service not served in full (the highest tiers that fit in full,
    then the largest equal fraction found of the next tier's rates, nothing below it), a note
    saying so, and a plan that serves them."""
    tiers = sorted({s.tier for s in request.services})
    full: dict[str, float] = {}
    for tier in tiers:
        rest = {s.model: 0.0 for s in request.services if s.tier > tier}
        these = tuple(s for s in request.services if s.tier == tier)
        if tier != tiers[-1] and _fits(request, {**rest}, clock) is not None:
            continue  # this tier fits in full with the ones above it: try the next
        frac, plan = _largest_share(request, these, rest, clock)
        note = f"tier {tier} served at {frac:.1%} of its rates, tiers below it not at all"
        return dict(plan.served), note, plan
    raise AssertionError("every tier fits, yet the full plan was infeasible")


# Bisection on the shared tier's fraction: steps, and the resolution it stops at.
_SHARE_STEPS = 12
_SHARE_RESOLUTION = 1e-3


def _fits(request: FleetRequest, served: dict[str, float], clock: _Clock, limit: float | None = None):
    """Any plan at these served rates (the first HiGHS finds), or None: none exists, or none was
    found within `limit` seconds."""
    quick = replace(request, mip_rel_gap=0.99)
    return _solve(quick, served, _Clock(min(limit or clock.left(), clock.left()))).plan


def _largest_share(
    request: FleetRequest, share: tuple[Service, ...], rest: dict[str, float], clock: _Clock,
) -> tuple[float, DeploymentMap]:
    """The largest f (to 1/1000) found such that the tiers above `share` in full and `share` at f x
    their rates fit, by bisection over feasibility solves (each given a share of the time left; a
    solve that times out counts as not fitting, so f is never overstated), and a plan for it."""
    def served_at(f: float) -> dict[str, float]:
        return {**rest, **{s.model: math.floor(s.rate * f * 1e6) / 1e6 for s in share}}

    lo, hi = 0.0, 1.0
    best = _fits(request, served_at(0.0), clock)  # the tiers above alone fit, as the last step found
    if best is None:
        raise Unservable("the fleet plan found no partial plan within the time limit; raise --time-limit")
    for step in range(_SHARE_STEPS):
        if hi - lo <= _SHARE_RESOLUTION:
            break
        mid = (lo + hi) / 2
        plan = _fits(request, served_at(mid), clock, clock.left() / (_SHARE_STEPS - step + 1))
        if plan is not None:
            lo, best = mid, plan
        else:
            hi = mid
    return lo, best
