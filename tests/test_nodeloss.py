"""Re-planning after a node is lost (planning/nodeloss.py): every service served again, nothing on
the lost node, the survivors kept, and the independent checker's verdict."""

from __future__ import annotations

from dataclasses import replace

import pytest

from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import Service
from parvagpu.planning.nodeloss import away_from, replan_without_nodes, spill_nodes, surviving
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.verify import verify

SERVICES = (Service("resnet50", 4000.0, 100.0), Service("bert", 1500.0, 300.0), Service("vgg16", 1500.0, 200.0))


def _two_nodes(profiles, per_node: int | None = None):
    """A fresh plan spread over two nodes of `per_node` GPUs (default: just enough), its GPUs
    alternating between node 0 and node 1."""
    fresh = make_plan(PlanRequest(SERVICES, profiles, gpu_type("A100-80GB"), 3, 8, time_limit=5.0), "parva")
    gpus = sorted({s.gpu for s in fresh.segments})
    assert len(gpus) >= 3
    per = per_node or (len(gpus) + 1) // 2
    to = {g: (k // 2) + (k % 2) * per for k, g in enumerate(gpus)}
    spread = replace(fresh, gpus_per_node=per, segments=tuple(replace(s, gpu=to[s.gpu]) for s in fresh.segments))
    assert {spread.node_of(s.gpu) for s in spread.segments} == {0, 1} and verify(spread, profiles) == []
    return spread


def _planner(req):
    return make_plan(req, "parva")


def test_lost_node_replanned_onto_the_remaining_node(profiles):
    plan = _two_nodes(profiles, 8)  # node 0 has room for everything
    new = replan_without_nodes(plan, {1}, profiles, _planner, time_limit=5.0)
    assert verify(new, profiles) == []
    assert {new.node_of(s.gpu) for s in new.segments} == {0} and spill_nodes(new, plan) == set()
    for svc in SERVICES:  # every model served at its rate again
        assert sum(s.segment.throughput for s in new.segments if s.model == svc.model) >= svc.rate
    kept = set(surviving(plan, {1}).segments)
    assert kept <= set(new.segments)  # what still runs stays where it is
    assert new.transition is not None and new.transition.removed == ()  # nothing left to remove


def test_without_room_it_spills_to_a_new_node_never_the_lost_one(profiles):
    plan = _two_nodes(profiles)  # nodes just big enough for their half: node 0 alone cannot hold it all
    new = replan_without_nodes(plan, {1}, profiles, _planner, time_limit=5.0)
    assert verify(new, profiles) == []
    nodes = {new.node_of(s.gpu) for s in new.segments}
    assert 1 not in nodes and 0 in nodes and spill_nodes(new, plan) == nodes - {0} != set()


def test_away_from_renumbers_only_gpus_on_lost_nodes(profiles):
    plan = _two_nodes(profiles)
    moved = away_from(plan, {1})
    assert {moved.node_of(s.gpu) for s in moved.segments}.isdisjoint({1})
    on0 = [s for s in plan.segments if plan.node_of(s.gpu) == 0]
    assert all(s in moved.segments for s in on0)
    assert away_from(plan, {7}) == plan
    with pytest.raises(Exception):
        surviving(replace(plan, fleet=object()), {1})
