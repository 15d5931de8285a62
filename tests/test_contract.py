"""The plan JSON contract: a plan written and read back is the same plan, every field included."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.contract.plan_json import plan_from_dict, plan_to_dict, plan_to_json
from parvagpu.core.fleet import Fleet, FleetNode, Reservation
from parvagpu.core.gpus import GPU_TYPES
from parvagpu.core.model import DeploymentMap, PlacedSegment, Provenance, Segment, Service, Triplet

positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def plans(draw) -> DeploymentMap:
    """Any well-formed plan: legal layouts per GPU, positive figures, one service per model."""
    gpu = GPU_TYPES[draw(st.sampled_from(sorted(GPU_TYPES)))]
    layouts = gpu.layouts()
    models = [f"m{i}" for i in range(draw(st.integers(1, 5)))]
    max_procs = draw(st.integers(1, 7))
    segments = []
    for g in range(draw(st.integers(0, 6))):
        for size, start in layouts[draw(st.integers(0, len(layouts) - 1))]:
            t = Triplet(size, draw(st.sampled_from((1, 2, 8, 64))), draw(st.integers(1, max_procs)),
                        draw(positive), draw(positive))
            segments.append(PlacedSegment(Segment(draw(st.sampled_from(models)), t), g, start))
    draw(st.randoms()).shuffle(segments)  # planners emit segments in any order
    services = tuple(Service(m, draw(positive), draw(positive)) for m in models)
    names = draw(st.lists(st.sampled_from(("gpus_before_optimization", "proven_optimal", "heuristic_gpus")),
                          unique=True, max_size=3))
    return DeploymentMap(
        gpu_type=gpu.name, strategy=draw(st.sampled_from(("auto", "parva", "optimal", "mig-only"))),
        max_procs=max_procs, gpus_per_node=draw(st.integers(1, 8)), segments=tuple(segments),
        services=services, lower_bound=draw(st.none() | st.integers(0, 6)),
        stats=tuple((n, draw(positive | st.integers(0, 10**6).map(float))) for n in names),
        provenance=draw(st.none() | st.builds(
            Provenance, st.text(max_size=20), st.text("0123456789abcdef", min_size=64, max_size=64),
            st.just(tuple((m, "ab" * 32) for m in models)), st.none() | st.text(max_size=20),
        )),
    )


@st.composite
def fleet_plans(draw) -> DeploymentMap:
    """A mixed-type fleet plan: nodes of different types and GPU counts, a reservation on node 0's
    GPU 0 (kept free by the drawn layouts), tiers and partly served services."""
    names = draw(st.lists(st.sampled_from(sorted(GPU_TYPES)), min_size=1, max_size=4))
    nodes = []
    for k, name in enumerate(names):
        reserved = (Reservation(0, 0, 1),) if k == 0 and GPU_TYPES[name].legal(1, 0) else ()
        nodes.append(FleetNode(f"n{k}", name, draw(st.integers(1, 3)),
                               draw(st.sampled_from((1.0, 2.5, 0.75))), reserved))
    fleet = Fleet(tuple(nodes))
    models = [f"m{i}" for i in range(draw(st.integers(1, 4)))]
    segments = []
    for g in range(fleet.total_gpus):
        gpu = GPU_TYPES[fleet.node(g).gpu]
        layouts = [lay for lay in gpu.layouts() if not (g == 0 and fleet.nodes[0].reserved
                                                        and any(st_ == 0 for _, st_ in lay))]
        if not layouts or not draw(st.booleans()):
            continue
        for size, start in layouts[draw(st.integers(0, len(layouts) - 1))]:
            t = Triplet(size, 1, 1, draw(positive), draw(positive))
            segments.append(PlacedSegment(Segment(draw(st.sampled_from(models)), t), g, start))
    services = tuple(Service(m, 100.0, draw(positive), draw(st.integers(0, 3))) for m in models)
    served = tuple((m, draw(st.sampled_from((0.0, 12.5, 99.0)))) for m in models if draw(st.booleans()))
    kinds = set(names)
    return DeploymentMap(
        gpu_type=names[0] if len(kinds) == 1 else "mixed", strategy="fleet", max_procs=3,
        gpus_per_node=8, segments=tuple(segments), services=services, fleet=fleet, served=served,
        stats=(("price_per_hour", 12.5),),
    )


@settings(max_examples=60, deadline=None)
@given(fleet_plans())
def test_fleet_plan_written_and_read_back_compares_equal(plan):
    text = plan_to_json(plan)
    data = json.loads(text)
    back, stated_gpus = plan_from_dict(data)
    assert back == plan and stated_gpus == plan.gpus_used
    assert plan_to_json(back) == text
    for seg, s in zip(data["segments"], plan.segments):  # each segment's profile is its node's type's
        node = plan.fleet.nodes[seg["node"]]
        assert seg["profile"] == GPU_TYPES[node.gpu].profile(s.size).name and seg["gpu"] < node.gpus


def test_a_single_type_plan_has_no_fleet_or_served_keys():
    t = Triplet(1, 1, 1, 10.0, 5.0)
    plan = DeploymentMap("A100-80GB", "parva", 3, 8, (PlacedSegment(Segment("a", t), 0, 0),),
                         (Service("a", 1.0, 10.0),))
    data = plan_to_dict(plan)
    assert "fleet" not in data and set(data["services"][0]) == {"model", "rate", "latency_ms", "capacity"}


@settings(max_examples=200, deadline=None)
@given(plans())
def test_plan_written_and_read_back_compares_equal(plan):
    text = plan_to_json(plan)
    back, stated_gpus = plan_from_dict(json.loads(text))
    assert back == plan  # every field: segments, services, bound, stats, limits
    assert stated_gpus == plan.gpus_used
    assert plan_to_json(back) == text


def test_segment_order_does_not_change_a_plan():
    t = Triplet(1, 1, 1, 10.0, 5.0)
    a = PlacedSegment(Segment("a", t), 1, 0)
    b = PlacedSegment(Segment("b", t), 0, 6)
    svc = (Service("a", 1.0, 10.0), Service("b", 1.0, 10.0))
    one = DeploymentMap("A100-80GB", "parva", 3, 8, (a, b), svc)
    two = DeploymentMap("A100-80GB", "parva", 3, 8, (b, a), svc)
    assert one == two and one.segments == (b, a)


@pytest.mark.parametrize("strategy", ["parva", "auto", "mig-only", "whole-gpu"])
def test_planned_plan_round_trips_through_the_cli(strategy):
    out = CliRunner().invoke(app, ["plan", "--scenario", "2", "--strategy", strategy, "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["stats"], "every strategy records its figures"
    plan, _ = plan_from_dict(data)
    assert plan_to_dict(plan) == data


def test_written_figures_are_rounded_and_integral_stats_are_integers():
    t = Triplet(1, 1, 1, 5383.360999999999, 5.0)
    plan = DeploymentMap("A100-80GB", "parva", 3, 8, (PlacedSegment(Segment("a", t), 0, 0),),
                         (Service("a", 1.0, 10.0),), stats=(("heuristic_gpus", 17.0), ("ms", 0.25)))
    text = plan_to_json(plan)
    assert "\"capacity\": 5383.361\n" in text and '"heuristic_gpus": 17,' in text and '"ms": 0.25' in text
    assert plan_from_dict(json.loads(text))[0] == plan
