"""Re-planning onto a fleet from its running plan (`plan --fleet --current`)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from helpers import run_cli

from parvagpu.cli.common import load_inputs
from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import Fleet, FleetNode, Reservation
from parvagpu.core.model import Profile, ProfilePoint, Service, segment_key
from parvagpu.planning.fleet import FleetRequest, plan_fleet
from parvagpu.planning.fleet_replan import replan_fleet
from parvagpu.verify import verify

A100, H100 = "A100-80GB", "H100-80GB"


def _keys(plan, models=None):
    return {segment_key(s, plan.gpus_per_node) for s in plan.segments if models is None or s.model in models}


def _linear(model: str, per_slice: float = 10.0) -> Profile:
    return Profile(model, tuple(ProfilePoint(z, 1, 1, per_slice * z, 0.01) for z in (1, 2, 3, 4, 7)))


@pytest.fixture(scope="module")
def mixed():
    """Six services of scenario 6 on a mixed fleet with a partly reserved GPU, H100s twice as fast
    for every other model at 1.5x the price, and its cheapest plan (of both types)."""
    profiles, services = load_inputs(None, None, 6, None, False)
    services = services[:6]  # six models: HiGHS proves each price optimal in about a second
    fast = {m: Profile(m, tuple(replace(q, throughput=round(q.throughput * 2, 3), latency_s=round(q.latency_s / 2, 6))
                                for q in p.points)) for m, p in profiles.items()}
    h100 = {m: fast[m] if i % 2 == 0 else profiles[m] for i, m in enumerate(sorted(profiles))}
    fleet = Fleet((FleetNode("a", A100, 16, 1.0, (Reservation(0, 0, 3),)), FleetNode("h", H100, 16, 1.5)))
    by_type = {A100: profiles, H100: h100}
    running = plan_fleet(FleetRequest(services, by_type, fleet, time_limit=60))
    assert {running.gpu_type_of(s.gpu) for s in running.segments} == {A100, H100}
    return services, by_type, fleet, running


def test_unchanged_services_change_nothing(mixed):
    services, by_type, fleet, running = mixed
    again = replan_fleet(FleetRequest(services, by_type, fleet, time_limit=60), running)
    stats = dict(again.stats)
    assert _keys(again) == _keys(running) and stats["changed_segments"] == 0
    assert again.transition.added == () and again.transition.removed == ()
    assert stats["price_per_hour"] <= stats["fresh_price_per_hour"]
    assert verify(again, by_type[A100], type_profiles=by_type) == []


def test_one_rate_up_keeps_every_other_services_segments():
    """Three linear models on four GPUs (70 req/s each): 65, 65 and 25 req/s take 7 + 7 + 3 1g
    steps on three GPUs; b at x1.1 (71.5) needs one step more, which the free slots hold, so the
    cheapest plan still uses three GPUs and keeps every segment of a and c (and b's)."""
    services = (Service("a", 65.0, 100.0), Service("b", 65.0, 100.0), Service("c", 25.0, 100.0))
    profiles = {A100: {s.model: _linear(s.model) for s in services}}
    fleet = Fleet((FleetNode("n", A100, 4, 2.0),))
    running = plan_fleet(FleetRequest(services, profiles, fleet, time_limit=30))
    assert running.gpus_used == 3
    up = (services[0], replace(services[1], rate=71.5), services[2])
    plan = replan_fleet(FleetRequest(up, profiles, fleet, time_limit=30), running)
    assert verify(plan, profiles[A100]) == []
    stats = dict(plan.stats)
    assert plan.gpus_used == 3 and stats["price_per_hour"] == 6.0 == stats["fresh_price_per_hour"]
    assert _keys(running) <= _keys(plan) and stats["replan_keep"] == 1.0
    t = plan.transition
    assert t.removed == () and t.added and {s.model for s in t.added} == {"b"}
    assert stats["changed_segments"] == len(t.added)


def test_a_cheaper_fresh_plan_wins_over_keeping(mixed):
    """Price first: a running plan on the dear H100s alone is moved where the fresh plan is
    cheaper, and the renumbering keeps what it can."""
    services, by_type, fleet, _ = mixed
    dear = plan_fleet(FleetRequest(services, by_type, Fleet((FleetNode("h", H100, 16, 1.5),)), time_limit=60))
    # The same segments on the mixed fleet: node h is the fleet's second node (GPUs 16..31).
    running = replace(dear, fleet=fleet, segments=tuple(replace(s, gpu=s.gpu + 16) for s in dear.segments))
    assert verify(running, by_type[A100], type_profiles=by_type) == []
    plan = replan_fleet(FleetRequest(services, by_type, fleet, time_limit=60), running)
    stats = dict(plan.stats)
    assert stats["replan_fresh"] == 1.0 and stats["price_per_hour"] == stats["fresh_price_per_hour"]
    assert stats["price_per_hour"] < running.price_per_hour()
    assert verify(plan, by_type[A100], type_profiles=by_type) == []


def test_a_running_plan_of_another_fleet_is_refused(mixed):
    services, by_type, _, running = mixed
    other = Fleet((FleetNode("a", A100, 16, 1.0),))
    with pytest.raises(ParvaError, match="another fleet"):
        replan_fleet(FleetRequest(services, {A100: by_type[A100]}, other), running)


def test_cli_plan_current_with_fleet_records_the_transition_and_diff_reads_it(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: v1\nnodes:\n  - {name: r1, gpu: A100-80GB, gpus: 8, price_per_gpu_hour: 2.0}\n"
                     "  - {name: r2, gpu: A100-80GB, gpus: 8, reserved: [{gpu: 0, start: 0, size: 3}]}\n")
    first, second = tmp_path / "run.json", tmp_path / "next.json"
    assert run_cli("plan", "--fleet", fleet, "-s", "6", "-o", first).exit_code == 0
    r = run_cli("plan", "--fleet", fleet, "-s", "6", "--current", first, "-o", second)
    assert r.exit_code == 0, r.output
    data = json.loads(second.read_text())
    assert data["transition"]["added"] == [] and data["transition"]["removed"] == []
    assert run_cli("verify", second).exit_code == 0
    r = run_cli("diff", first, second, "--format", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["steps"] == [], r.output
    r = run_cli("plan", "--fleet", fleet, "-s", "6", "--current", first, "--max-extra-gpus", "1")
    assert r.exit_code == 2 and "--max-extra-gpus" in r.output


def test_keeping_wins_when_it_is_within_the_asked_gap_of_the_bound():
    """A running plan that spreads over one GPU too many: with an exact price the fresh plan wins
    (6.0 < 8.0); with mip_rel_gap 0.3 (any plan within 30% of the proven 6.0 is as cheap as asked)
    keeping everything wins, with no change."""
    services = (Service("a", 65.0, 100.0), Service("b", 65.0, 100.0), Service("c", 25.0, 100.0))
    profiles = {A100: {s.model: _linear(s.model) for s in services}}
    fleet = Fleet((FleetNode("n", A100, 4, 2.0),))
    tight = plan_fleet(FleetRequest(services, profiles, fleet, time_limit=30))
    free = ({0, 1, 2, 3} - {s.gpu for s in tight.segments}).pop()
    moved = next(s for s in tight.segments if s.size == 1)
    running = replace(tight, segments=tuple(replace(s, gpu=free, start=6) if s is moved else s for s in tight.segments))
    assert verify(running, profiles[A100]) == [] and running.price_per_hour() == 8.0
    exact = replan_fleet(FleetRequest(services, profiles, fleet, time_limit=30), running)
    assert dict(exact.stats)["replan_fresh"] == 1.0 and exact.price_per_hour() == 6.0
    loose = replan_fleet(FleetRequest(services, profiles, fleet, time_limit=30, mip_rel_gap=0.3), running)
    stats = dict(loose.stats)
    assert stats["replan_keep"] == 1.0 and stats["changed_segments"] == 0 and loose.price_per_hour() == 8.0


def test_a_rate_down_keeps_its_surplus_unless_trimming_saves_price():
    """b from 65 to 55 req/s: three GPUs either way, so nothing changes (b keeps its surplus); b to
    5 req/s: a, b and c fit two GPUs (7 + 1 + 3 steps), so the cheaper plan wins."""
    services = (Service("a", 65.0, 100.0), Service("b", 65.0, 100.0), Service("c", 25.0, 100.0))
    profiles = {A100: {s.model: _linear(s.model) for s in services}}
    fleet = Fleet((FleetNode("n", A100, 4, 2.0),))
    running = plan_fleet(FleetRequest(services, profiles, fleet, time_limit=30))
    down = (services[0], replace(services[1], rate=55.0), services[2])
    plan = replan_fleet(FleetRequest(down, profiles, fleet, time_limit=30), running)
    stats = dict(plan.stats)
    assert stats["replan_keep"] == 1.0 and stats["changed_segments"] == 0 and plan.price_per_hour() == 6.0
    low = (services[0], replace(services[1], rate=5.0), services[2])
    plan = replan_fleet(FleetRequest(low, profiles, fleet, time_limit=30), running)
    assert plan.price_per_hour() == 4.0 == dict(plan.stats)["fresh_price_per_hour"]
    assert verify(plan, profiles[A100]) == []
