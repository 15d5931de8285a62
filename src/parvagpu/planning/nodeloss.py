"""Re-planning after nodes are lost: the running plan's segments on those nodes are gone, their GPUs
unavailable, and every service is planned again from what still runs. Pure.

The move-aware planner (`replan.py`, `plan --current`) plans from the surviving segments, so what
still runs stays where it is; it knows nothing of lost nodes, so any GPU of its plan that sits on a
lost node (only new segments can: the survivors hold none there) is renumbered to the lowest free
GPU of a node that is not lost: the remaining nodes' free GPUs first, then nodes beyond the plan's
(which the operator must add; `spill_nodes` says which).
"""

from __future__ import annotations

from dataclasses import replace
from itertools import count
from typing import Callable

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.transition import transition


def nodes_of(plan: DeploymentMap) -> set[int]:
    return {plan.node_of(s.gpu) for s in plan.segments}


def surviving(plan: DeploymentMap, lost: set[int]) -> DeploymentMap:
    """The running plan less every segment on a lost node: what still runs."""
    if plan.fleet is not None:
        raise ParvaError("re-planning after a node loss takes a single-type plan, not a fleet plan")
    return replace(plan, segments=tuple(s for s in plan.segments if plan.node_of(s.gpu) not in lost),
                   transition=None)


def as_running(alive: DeploymentMap) -> DeploymentMap:
    """`alive` with each service's rate capped at what its surviving segments serve (a model with
    none left dropped): the floor a transition from it must keep, since the loss already took the
    rest."""
    services = tuple(replace(v, rate=min(v.rate, alive.capacity(v.model))) for v in alive.services
                     if alive.capacity(v.model) > 0)
    return replace(alive, services=services)


def away_from(plan: DeploymentMap, lost: set[int]) -> DeploymentMap:
    """`plan` with each GPU on a lost node renumbered to the lowest free GPU of a node not lost."""
    bad = sorted({s.gpu for s in plan.segments if plan.node_of(s.gpu) in lost})
    if not bad:
        return plan
    used = {s.gpu for s in plan.segments}
    free = (g for g in count() if g not in used and plan.node_of(g) not in lost)
    to = {g: next(free) for g in bad}
    return replace(plan, segments=tuple(replace(s, gpu=to.get(s.gpu, s.gpu)) for s in plan.segments))


def replan_without_nodes(plan: DeploymentMap, lost: set[int], profiles, planner: Callable[[PlanRequest], DeploymentMap],
                         max_procs: int | None = None, time_limit: float | None = None) -> DeploymentMap:
    """A plan for `plan`'s services that uses no GPU of the `lost` nodes, made from the segments
    that survive them, with its transition from those survivors. `planner` is the move-aware
    planning of a request with `current` (`strategies.plan` with a strategy)."""
    alive = surviving(plan, lost)
    extra = {} if time_limit is None else {"time_limit": time_limit}
    req = PlanRequest(plan.services, profiles, gpu_type(plan.gpu_type),
                      plan.max_procs if max_procs is None else max_procs, plan.gpus_per_node, current=alive, **extra)
    new = away_from(planner(req), lost)
    return replace(new, transition=transition(alive, new))


def spill_nodes(plan: DeploymentMap, before: DeploymentMap) -> set[int]:
    """Nodes `plan` uses that `before` (the plan the nodes were lost from) did not: nodes to add."""
    return nodes_of(plan) - nodes_of(before)
