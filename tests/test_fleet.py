"""Fleet plans: mixed GPU types, fixed inventory, reservations, prices and tiers."""

from __future__ import annotations

import pytest

from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import Fleet, FleetNode, Reservation
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, ProfilePoint, Segment, Service, Triplet
from parvagpu.verify import verify


def _fleet() -> Fleet:
    return Fleet((
        FleetNode("a", "A100-80GB", 2, 2.5, (Reservation(0, 0, 3), Reservation(1))),
        FleetNode("h", "H100-80GB", 1, 4.0),
    ))


def test_fleet_numbers_gpus_in_node_order_and_checks_reservations():
    f = _fleet()
    assert f.total_gpus == 3 and (f.node_of(2), f.local_gpu(2)) == (1, 0) and f.gpu_index(0, 1) == 1
    with pytest.raises(ParvaError, match="cannot start at 2"):
        Fleet((FleetNode("a", "A100-80GB", 1, 1.0, (Reservation(0, 2, 3),)),))
    with pytest.raises(ParvaError, match="overlaps"):
        Fleet((FleetNode("a", "A100-80GB", 1, 1.0, (Reservation(0, 0, 3), Reservation(0, 2, 1))),))
    with pytest.raises(ParvaError, match="listed twice"):
        Fleet((FleetNode("a", "A30", 1), FleetNode("a", "A30", 1)))


def _plan(segments, served=()) -> DeploymentMap:
    return DeploymentMap("mixed", "fleet", 3, 8, tuple(segments), (Service("m", 10.0, 100.0),),
                         fleet=_fleet(), served=served)


def test_verify_checks_each_gpu_against_its_type_and_the_reservations():
    profiles = {"m": Profile("m", (ProfilePoint(1, 1, 1, 5.0, 0.01), ProfilePoint(4, 1, 1, 20.0, 0.01)))}
    one, four = Triplet(1, 1, 1, 5.0, 10.0), Triplet(4, 1, 1, 20.0, 10.0)
    ok = _plan([PlacedSegment(Segment("m", one), 0, 4), PlacedSegment(Segment("m", one), 2, 0)])
    assert verify(ok, profiles) == []
    on_reserved = _plan([PlacedSegment(Segment("m", four), 0, 0)])
    assert any("reserved slot" in p for p in verify(on_reserved, profiles))
    whole = _plan([PlacedSegment(Segment("m", four), 1, 0)])
    assert any("reserved slot" in p for p in verify(whole, profiles))
    short = _plan([PlacedSegment(Segment("m", one), 2, 0)], served=(("m", 5.0),))
    assert verify(short, profiles) == []  # served at 5 req/s, as the plan says
    assert any("below its served rate 6" in p for p in verify(_plan(short.segments, (("m", 6.0),)), profiles))


# --- planning against a fleet ---------------------------------------------------------------------

from dataclasses import replace  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

from helpers import run_cli  # noqa: E402

from parvagpu.cli.common import load_inputs  # noqa: E402
from parvagpu.contract.plan_json import plan_from_dict, plan_to_json  # noqa: E402
from parvagpu.core.errors import Unservable  # noqa: E402
from parvagpu.core.fleet import reserved_slots  # noqa: E402
from parvagpu.core.gpus import gpu_type  # noqa: E402
from parvagpu.planning.fleet import FleetRequest, plan_fleet  # noqa: E402


def _faster(profiles, speed):
    """The example's profiles as if measured on a GPU `speed` times as fast (synthetic)."""
    return {m: Profile(m, tuple(replace(q, throughput=round(q.throughput * speed, 3),
                                        latency_s=round(q.latency_s / speed, 6)) for q in p.points))
            for m, p in profiles.items()}


@pytest.fixture(scope="module")
def example():
    profiles, services = load_inputs(None, None, 6, None, False)
    return profiles, services, {"A100-80GB": profiles, "H100-80GB": _faster(profiles, 1.5)}


def _check(plan, by_type):
    assert verify(plan, by_type["A100-80GB"], type_profiles=by_type) == []
    back, _ = plan_from_dict(json.loads(plan_to_json(plan)))
    assert back == plan


def _types_used(plan):
    return {plan.gpu_type_of(s.gpu) for s in plan.segments}


def _half_fast(profiles):
    fast = _faster(profiles, 2.0)
    h100 = {m: fast[m] if i % 2 == 0 else profiles[m] for i, m in enumerate(sorted(profiles))}
    return {"A100-80GB": profiles, "H100-80GB": h100}


def test_the_cheapest_plan_mixes_types(example):
    """H100 (synthetic) is twice as fast for half the models and no faster for the rest, at 1.5x
    the price: the cheapest plan puts the first on H100s and the rest on A100s, below either type
    alone, proven optimal."""
    profiles, services, _ = example
    by_type = _half_fast(profiles)
    # A generous limit: each solve ends once its price is proven optimal (about a second each).
    a_only = plan_fleet(FleetRequest(services, by_type, Fleet((FleetNode("a", "A100-80GB", 40, 1.0),)), time_limit=120))
    h_only = plan_fleet(FleetRequest(services, by_type, Fleet((FleetNode("h", "H100-80GB", 40, 1.5),)), time_limit=120))
    fleet = Fleet((FleetNode("a", "A100-80GB", 40, 1.0), FleetNode("h", "H100-80GB", 40, 1.5)))
    plan = plan_fleet(FleetRequest(services, by_type, fleet, time_limit=120))
    _check(plan, by_type)
    assert _types_used(plan) == {"A100-80GB", "H100-80GB"} and plan.gpu_type == "mixed"
    stats = dict(plan.stats)
    assert stats["proven_optimal"] == 1.0 and stats["price_per_hour"] == pytest.approx(plan.price_per_hour())
    assert plan.price_per_hour() < min(a_only.price_per_hour(), h_only.price_per_hour())
    for p in (a_only, h_only):
        assert dict(p.stats)["proven_optimal"] == 1.0


def test_reserved_slots_and_gpus_are_never_used(example):
    _, services, by_type = example
    reserved = (Reservation(0, 0, 3), Reservation(1), Reservation(2, 4, 3), Reservation(3, 6, 1))
    need = plan_fleet(FleetRequest(services, by_type, Fleet((FleetNode("a", "A100-80GB", 64),)))).gpus_used
    fleet = Fleet((FleetNode("a", "A100-80GB", need + 2, 1.0, reserved),))
    plan = plan_fleet(FleetRequest(services, by_type, fleet, allow_partial=True))
    _check(plan, by_type)
    a100 = gpu_type("A100-80GB")
    for s in plan.segments:
        mask, _ = reserved_slots(fleet.nodes[0], s.gpu)
        assert not mask & a100.mask(s.size, s.start), s
    assert 1 not in {s.gpu for s in plan.segments}


def test_a_fleet_one_gpu_too_small_cuts_the_lowest_tier_in_proportion(example):
    _, services, by_type = example
    tiered = tuple(replace(s, tier=0 if i < 4 else 1 if i < 7 else 2) for i, s in enumerate(services))
    one = {"A100-80GB": by_type["A100-80GB"]}
    need = plan_fleet(FleetRequest(tiered, one, Fleet((FleetNode("a", "A100-80GB", 64),)))).gpus_used
    small = Fleet((FleetNode("a", "A100-80GB", need - 1),))
    with pytest.raises(Unservable, match="cannot be served as asked"):
        plan_fleet(FleetRequest(tiered, one, small))
    # A generous limit: the share program ends once f is proven maximal (about a second), and the
    # final plan once its price is within 10%.
    plan = plan_fleet(FleetRequest(tiered, one, small, allow_partial=True, time_limit=120, mip_rel_gap=0.1))
    _check(plan, {"A100-80GB": one["A100-80GB"]})
    served = {s.model: plan.served_rate(s) / s.rate for s in tiered}
    assert plan.gpus_used <= need - 1
    assert all(served[s.model] == 1.0 for s in tiered if s.tier < 2)
    stats = dict(plan.stats)
    f = stats["share"]
    # f proven maximal (to HiGHS's 1e-6 resolution of f)
    assert 0 < f < 1 and f <= stats["share_upper_bound"] <= f + 1e-5 and stats["tiers_full"] == 2
    # every tier-2 service at the same fraction f of its rate (to 1e-6 req/s): shortfall in proportion
    assert all(plan.served_rate(s) == math.floor(s.rate * f * 1e6) / 1e6 for s in tiered if s.tier == 2)
    data = json.loads(plan_to_json(plan))
    low = [d for d in data["services"] if d.get("tier") == 2]
    assert all(d["shortfall"] > 0 and d["served_rate"] + d["shortfall"] == pytest.approx(d["rate"]) for d in low)


def test_cli_refuses_a_type_without_profiles_in_one_line(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: v1\nnodes:\n  - {name: rack1-a, gpu: A100-80GB, gpus: 8, price_per_gpu_hour: 2.5}\n"
                     "  - {name: rack2-b, gpu: H100-80GB, gpus: 4, reserved: [{gpu: 0, start: 0, size: 3}]}\n")
    r = run_cli("plan", "--fleet", fleet, "--format", "json")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "no profiles measured on H100-80GB" in r.output and "--reuse-profiles-from" in r.output
    r = run_cli("plan", "--gpu", "H200", "--format", "json")
    assert r.exit_code == 2 and "no profiles measured on H200" in r.output
    assert run_cli("plan", "--gpu", "H200", "--reuse-profiles-from", "A100-80GB", "--format", "json").exit_code == 0
    out = tmp_path / "plan.json"
    r = run_cli("plan", "--fleet", fleet, "--reuse-profiles-from", "A100-80GB", "-o", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["fleet"]["nodes"][1]["reserved"] == [{"gpu": 0, "start": 0, "size": 3}]
    assert all("served_rate" in s for s in data["services"])
    assert run_cli("verify", out).exit_code == 0


def test_cli_exit_3_on_a_too_small_fleet_unless_partial(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: v1\nnodes: [{name: n, gpu: A100-80GB, gpus: 1}]\n")
    r = run_cli("plan", "--fleet", fleet, "-s", "6", "--format", "json")
    assert r.exit_code == 3 and "cannot be served as asked" in r.output
    r = run_cli("plan", "--fleet", fleet, "-s", "6", "--format", "json", "--allow-partial")
    assert r.exit_code == 0, r.output
    assert any(s["shortfall"] > 0 for s in json.loads(r.stdout)["services"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\nnodes: [{name: n, gpu: A100-80GB, gpus: 1, reserved: [{gpu: 3}]}]\n")
    r = run_cli("plan", "--fleet", bad)
    assert r.exit_code == 2 and "reserved gpu 3" in r.output and len(r.output.strip().splitlines()) == 1


def test_profiles_in_a_directory_per_type(tmp_path, example):
    import shutil

    from parvagpu.cli.common import example_dir

    for t in ("A100-80GB", "H200"):
        shutil.copytree(example_dir() / "profiles", tmp_path / "profiles" / t)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("version: v1\nnodes: [{name: a, gpu: A100-80GB, gpus: 2}, {name: h, gpu: H200, gpus: 2}]\n")
    out = tmp_path / "plan.json"
    r = run_cli("plan", "--fleet", fleet, "--profiles", tmp_path / "profiles", "--slo", example_dir() / "SLO", "-o", out)
    assert r.exit_code == 0, r.output
    assert run_cli("verify", out, "--profiles", tmp_path / "profiles").exit_code == 0
    assert json.loads(out.read_text())["provenance"]["profiles"] == str((tmp_path / "profiles").resolve())
    r = run_cli("verify", out)  # the profiles the plan records, one subdirectory per type
    assert r.exit_code == 0, r.output


def test_export_and_apply_work_node_by_node_on_a_mixed_plan(tmp_path, example):
    from parvagpu.export.mig_parted import mig_parted_config
    from parvagpu.hardware.mig import FakeBackend
    from parvagpu.hardware.mps import FakeMps
    from parvagpu.node import NodeDirs, apply_plan

    profiles, services, _ = example
    by_type = _half_fast(profiles)
    fleet = Fleet((FleetNode("a", "A100-80GB", 16, 1.0), FleetNode("h", "H100-80GB", 16, 1.5)))
    plan = plan_fleet(FleetRequest(services, by_type, fleet, time_limit=2))
    assert _types_used(plan) == {"A100-80GB", "H100-80GB"}
    config = mig_parted_config(plan)["mig-configs"]
    for node, t in ((0, "A100-80GB"), (1, "H100-80GB")):
        names = {p for g in config[f"parvagpu-node{node}"] for p in g["mig-devices"]}
        assert names <= {p.name for p in gpu_type(t).profiles}
        fake = FakeBackend(t, fleet.nodes[node].gpus)
        apply_plan(plan, node, fake, FakeMps(fake), NodeDirs(tmp_path / "st", node))
        held = sorted((i.gpu, i.start, i.slices) for g in range(fleet.nodes[node].gpus) for i in fake.list_instances(g))
        mine = sorted((plan.local_gpu(s.gpu), s.start, s.size) for s in plan.segments if plan.node_of(s.gpu) == node)
        assert held == mine


def test_apply_leaves_reserved_slots_and_gpus_alone(tmp_path, example):
    from parvagpu.hardware.mig import FakeBackend
    from parvagpu.hardware.mps import FakeMps
    from parvagpu.node import NodeDirs, apply_plan

    profiles, services, _ = example
    reserved = (Reservation(0, 0, 3), Reservation(1))
    fleet = Fleet((FleetNode("a", "A100-80GB", 40, 1.0, reserved),))
    plan = plan_fleet(FleetRequest(services, {"A100-80GB": profiles}, fleet))
    fake = FakeBackend("A100-80GB", 40)
    theirs = [(0, fake.create_gpu_instance(0, 9, 0)), (1, fake.create_gpu_instance(1, 0, 0))]  # 3g@0, 7g
    apply_plan(plan, 0, fake, FakeMps(fake), NodeDirs(tmp_path / "st", 0))
    for g, gi in theirs:
        assert any(i.gi_id == gi for i in fake.list_instances(g))
    held = sorted((i.gpu, i.start, i.slices) for g in range(40) for i in fake.list_instances(g))
    mine = sorted((s.gpu, s.start, s.size) for s in plan.segments)
    assert held == sorted(mine + [(0, 0, 3), (1, 0, 7)])


def test_k8s_export_of_a_fleet_plan_selects_nodes_by_their_fleet_names(example):
    from parvagpu.export.k8s import k8s_deployments, k8s_files

    profiles, services, _ = example
    by_type = _half_fast(profiles)
    fleet = Fleet((FleetNode("rack1-a", "A100-80GB", 16, 1.0), FleetNode("rack2-b", "H100-80GB", 16, 1.5)))
    plan = plan_fleet(FleetRequest(services, by_type, fleet, time_limit=2))
    docs = k8s_deployments(plan)
    want = {s.gpu: fleet.nodes[plan.node_of(s.gpu)].name for s in plan.segments}
    chosen = sorted({d["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/hostname"] for d in docs.values()})
    assert chosen == sorted(set(want.values())) == ["rack1-a", "rack2-b"] and len(docs) == len(plan.segments)
    assert "nothing to label" in k8s_files(plan, "{}")["node-selector-labels.sh"]
    script = k8s_files(plan, "{}", node_label="example.com/n")["node-selector-labels.sh"]
    assert "kubectl label node rack1-a example.com/n=rack1-a --overwrite" in script
    bad = replace(plan, fleet=Fleet((FleetNode("rack 1", "A100-80GB", 16, 1.0), fleet.nodes[1])))
    with pytest.raises(ParvaError, match="not a valid Kubernetes label value"):
        k8s_deployments(bad)


def test_a_service_too_big_for_either_type_alone_spans_types_at_the_proven_lowest_price(example):
    """One service needing n GPUs, a fleet of n - 1 A100s and n - 1 H100s (same speed, same price):
    its segments span both types, the plan uses n GPUs and its price is proven optimal (the bound
    holds over every mix of types, not only over one type per service)."""
    profiles, services, _ = example
    svc = max(services, key=lambda s: s.rate)
    by_type = {"A100-80GB": profiles, "H100-80GB": profiles}
    n = plan_fleet(FleetRequest((svc,), by_type, Fleet((FleetNode("a", "A100-80GB", 64),)))).gpus_used
    assert n >= 2
    fleet = Fleet((FleetNode("a", "A100-80GB", n - 1), FleetNode("h", "H100-80GB", n - 1)))
    plan = plan_fleet(FleetRequest((svc,), by_type, fleet))
    _check(plan, by_type)
    assert _types_used(plan) == {"A100-80GB", "H100-80GB"} and plan.gpus_used == n
    assert dict(plan.stats)["proven_optimal"] == 1.0 and dict(plan.stats)["price_lower_bound"] == n


def test_time_limit_bounds_the_whole_fleet_plan(example, tmp_path, monkeypatch):
    """plan_fleet keeps to its time limit through every solve (full, tiers, the final plan), and
    `plan --fleet` gives it only what reading the inputs left of --time-limit."""
    profiles, services, _ = example
    by_type = _half_fast(profiles)
    tiered = tuple(replace(s, tier=i % 3) for i, s in enumerate(services))
    fleet = Fleet((FleetNode("a", "A100-80GB", 4, 1.0), FleetNode("h", "H100-80GB", 4, 1.5)))
    t0 = time.perf_counter()
    plan = plan_fleet(FleetRequest(tiered, by_type, fleet, time_limit=1.0, allow_partial=True))
    assert time.perf_counter() - t0 < 1.5
    _check(plan, by_type)

    import parvagpu.cli.plan as cli_plan
    import parvagpu.planning.fleet as planning_fleet

    asked = []
    slow_load = cli_plan.load_fleet

    def load_fleet(path):
        time.sleep(0.6)
        return slow_load(path)

    def record(request):
        asked.append(request.time_limit)
        raise Unservable("stop here")

    monkeypatch.setattr(cli_plan, "load_fleet", load_fleet)
    monkeypatch.setattr(planning_fleet, "plan_fleet", record)
    f = tmp_path / "fleet.yaml"
    f.write_text("version: v1\nnodes: [{name: a, gpu: A100-80GB, gpus: 2}]\n")
    r = run_cli("plan", "--fleet", f, "--time-limit", "2", "--format", "json")
    assert r.exit_code == 3 and len(asked) == 1 and 0 < asked[0] <= 2 - 0.6


def test_diff_between_two_fleet_plans_of_one_fleet(example, tmp_path):
    """The transition between two mixed plans of the same fleet: every step on a GPU of its node's
    type, checked by the independent replay; a fleet plan against a single-type plan is refused."""
    from parvagpu.planning.transition import schedule
    from parvagpu.verify import verify_schedule

    profiles, services, _ = example
    by_type = _half_fast(profiles)
    fleet = Fleet((FleetNode("a", "A100-80GB", 16, 1.0), FleetNode("h", "H100-80GB", 16, 1.5)))
    old = plan_fleet(FleetRequest(services, by_type, fleet, time_limit=2))
    grown = tuple(replace(s, rate=round(s.rate * 1.3, 1)) if i % 2 else s for i, s in enumerate(services))
    new = plan_fleet(FleetRequest(grown, by_type, fleet, time_limit=2))
    sched = schedule(old, new)
    problems = verify_schedule(old, new, sched.steps)
    # legal on every GPU's own type and ending at the new plan; capacity dips only where reported
    assert sched.steps and all("below min(old rate, new rate)" in p for p in problems), problems
    assert {p.split(": ")[1].split(" has")[0] for p in problems} <= {d.model for d in sched.dips}
    assert bool(problems) == bool(sched.dips)
    assert {new.gpu_type_of(st.segment.gpu) for st in sched.steps} == {"A100-80GB", "H100-80GB"}
    files = []
    for name, plan in (("old", old), ("new", new)):
        files.append(tmp_path / f"{name}.json")
        files[-1].write_text(plan_to_json(plan))
    r = run_cli("diff", *files, "--format", "json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["steps"]) == len(sched.steps)
    single = tmp_path / "single.json"
    assert run_cli("plan", "-s", "6", "-o", single).exit_code == 0
    r = run_cli("diff", single, files[1], "--format", "json")
    assert r.exit_code == 2 and "different fleets" in r.output and len(r.output.strip().splitlines()) == 1
