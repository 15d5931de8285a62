"""Transitions between plans: what is kept, and a make-before-break order checked by `verify`."""

from __future__ import annotations

import json
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from helpers import swap_pair
from test_contract import plans
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.contract.plan_json import plan_from_dict, plan_to_json
from parvagpu.core.gpus import GPU_TYPES
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.planning.transition import schedule, transition
from parvagpu.verify import verify_schedule

MODELS = ("a", "b", "c", "d")


@st.composite
def cluster(draw, gpu, gpus: int) -> tuple[PlacedSegment, ...]:
    layouts = gpu.layouts()
    out = []
    for g in range(gpus):
        for size, start in layouts[draw(st.integers(0, len(layouts) - 1))]:
            model, batch, procs = draw(st.sampled_from(MODELS)), draw(st.sampled_from((1, 8))), draw(st.integers(1, 2))
            thr = 10.0 * size * procs + batch + MODELS.index(model)  # one figure per profiled point
            out.append(PlacedSegment(Segment(model, Triplet(size, batch, procs, thr, 1.0)), g, start))
    return tuple(out)


def _services(segments, draw, fraction) -> tuple[Service, ...]:
    """Each model's rate at most its capacity (the plan is valid for its rates)."""
    cap: dict[str, float] = {}
    for s in segments:
        cap[s.model] = cap.get(s.model, 0.0) + s.segment.throughput
    return tuple(Service(m, round(c * draw(fraction), 3) or c, 10.0) for m, c in sorted(cap.items()))


@st.composite
def plan_pairs(draw) -> tuple[DeploymentMap, DeploymentMap]:
    """Two plans for the same GPU type, sharing some segments, each meeting its own rates."""
    gpu = GPU_TYPES[draw(st.sampled_from(("A100-80GB", "A30")))]
    frac = st.floats(0.05, 1.0)
    per_node = draw(st.integers(1, 4))
    old = draw(cluster(gpu, draw(st.integers(1, 4))))
    fresh = draw(cluster(gpu, draw(st.integers(1, 4))))
    # Keep some whole old GPUs unchanged, so the pair shares segments.
    keep = {g for g in {s.gpu for s in old} if draw(st.booleans())}
    new = tuple(s for s in old if s.gpu in keep) + tuple(s for s in fresh if s.gpu not in keep)
    mk = lambda segs, svcs: DeploymentMap(gpu.name, "parva", 3, per_node, segs, svcs)  # noqa: E731
    return mk(old, _services(old, draw, frac)), mk(new, _services(new, draw, frac))


def _capacity_steps(problems: list[str]) -> list[str]:
    return [p for p in problems if "below min(old rate, new rate)" in p]


@settings(max_examples=60, deadline=None)
@given(plan_pairs())
def test_schedule_reaches_the_new_plan_and_reports_every_dip(pair):
    old, new = pair
    t = transition(old, new)
    assert t.kept + len(t.added) == len(new.segments)
    assert t.kept + len(t.removed) == len(old.segments)
    sched = schedule(old, new)
    assert len(sched.steps) == t.changed  # no bridges without spare GPUs
    problems = verify_schedule(old, new, sched.steps)
    assert problems == _capacity_steps(problems), problems  # legal order, ends at the new plan
    assert bool(problems) == bool(sched.dips)
    dipped = {d.model for d in sched.dips}
    assert {re.search(r": (\S+) has", p).group(1) for p in problems} <= dipped


@settings(max_examples=60, deadline=None)
@given(plan_pairs())
def test_enough_spare_gpus_remove_every_dip(pair):
    old, new = pair
    sched = schedule(old, new, spare_gpus=len(old.segments))
    assert sched.dips == ()
    assert verify_schedule(old, new, sched.steps) == []


def test_a_forced_dip_is_short_and_reported_and_a_spare_gpu_avoids_it():
    old, new = swap_pair()
    sched = schedule(old, new)
    # One model must wait for the other's slot: a single dip, lasting until its new segment runs.
    assert [(d.model, d.shortfall, d.steps, d.first) for d in sched.dips] == [("b", 80.0, 3, 0)]
    assert len(_capacity_steps(verify_schedule(old, new, sched.steps))) >= 1
    bridged = schedule(old, new, spare_gpus=1)
    assert bridged.dips == () and bridged.bridges == 1  # one copy frees a slot for the other
    assert verify_schedule(old, new, bridged.steps) == []
    assert {s.segment.gpu for s in bridged.steps if s.bridge} == {1}


def test_named_spare_gpus_bridge_only_their_own_nodes_segments():
    old, new = swap_pair()
    old, new = (DeploymentMap(p.gpu_type, p.strategy, p.max_procs, 2, p.segments, p.services) for p in (old, new))
    elsewhere = schedule(old, new, spares=[2])  # GPU 2 is on node 1, the swap on node 0
    assert elsewhere.bridges == 0 and [d.model for d in elsewhere.dips] == ["b"]
    own = schedule(old, new, spares=[1])
    assert own.dips == () and {s.segment.gpu for s in own.steps if s.bridge} == {1}
    assert own.steps[-1].bridge and own.steps[-1].action == "remove"  # removed again at the end
    assert verify_schedule(old, new, own.steps) == []


def test_verify_schedule_catches_a_break_before_make():
    old, new = swap_pair()
    t = transition(old, new)
    from parvagpu.core.model import Step

    wrong = [Step("create", t.added[0])] + [Step("remove", r) for r in t.removed]
    problems = verify_schedule(old, new, wrong)
    assert any("still in use" in p for p in problems)
    assert any("not the new plan" in p for p in problems)


@settings(max_examples=40, deadline=None)
@given(plans(), st.data())
def test_a_plan_with_a_transition_round_trips(plan, data):
    other = data.draw(plans())
    if other.gpu_type != plan.gpu_type or other.gpus_per_node != plan.gpus_per_node:
        other = DeploymentMap(plan.gpu_type, "parva", plan.max_procs, plan.gpus_per_node, (), other.services)
    with_t = DeploymentMap(
        plan.gpu_type, plan.strategy, plan.max_procs, plan.gpus_per_node, plan.segments, plan.services,
        plan.lower_bound, plan.stats, transition(other, plan),
    )
    text = plan_to_json(with_t)
    back, _ = plan_from_dict(json.loads(text))
    assert back == with_t and plan_to_json(back) == text


def test_diff_of_two_scenarios_through_the_cli(tmp_path):
    runner = CliRunner()
    for k in (5, 6):
        out = runner.invoke(app, ["plan", "-s", str(k), "--strategy", "parva", "-o", str(tmp_path / f"{k}.json")])
        assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["diff", str(tmp_path / "5.json"), str(tmp_path / "6.json"), "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["changed"] == len(data["added"]) + len(data["removed"]) > 0
    assert [s["step"] for s in data["steps"]] == list(range(1, len(data["steps"]) + 1))
    same = runner.invoke(app, ["diff", str(tmp_path / "6.json"), str(tmp_path / "6.json"), "--format", "json"])
    assert json.loads(same.stdout)["changed"] == 0 and json.loads(same.stdout)["steps"] == []
    table = runner.invoke(app, ["diff", str(tmp_path / "5.json"), str(tmp_path / "6.json"), "--format", "table"])
    assert table.exit_code == 0 and "make before break" in table.stdout
    bad = runner.invoke(app, ["diff", str(tmp_path / "5.json"), str(tmp_path / "nope.json")])
    assert bad.exit_code == 2
