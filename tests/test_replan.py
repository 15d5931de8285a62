"""Move-aware planning (`plan --current`): fewest GPUs first, then the fewest changed segments."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.contract.plan_json import plan_from_dict
from parvagpu.core.errors import ParvaError
from parvagpu.inputs.services import load_scenario
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan
from parvagpu.planning.transition import schedule
from parvagpu.verify import verify, verify_schedule


@pytest.fixture(scope="module")
def scenario6(example, profiles, a100):
    services = load_scenario(example / "SLO", 6, list(profiles))
    return services, plan(PlanRequest(services, profiles, a100, 3), "auto")


def _fresh(new, profiles, a100) -> int:
    """GPUs of `auto`'s plan from scratch for the new plan's services."""
    return plan(PlanRequest(new.services, profiles, a100, 3), "auto").gpus_used


def _scaled(services, model, factor):
    return tuple(replace(s, rate=round(s.rate * factor, 3)) if s.model == model else s for s in services)


@pytest.mark.parametrize("strategy", ["auto", "parva"])
def test_unchanged_services_change_nothing(scenario6, profiles, a100, strategy):
    services, current = scenario6
    new = plan(PlanRequest(services, profiles, a100, 3, current=current), strategy)
    assert new.transition.changed == 0 and new.segments == current.segments
    assert new.gpus_used == current.gpus_used


@pytest.mark.parametrize("model", ["bert", "resnet50", "vgg19"])
def test_one_rate_up_ten_percent_adds_one_segment_and_moves_no_other_model(scenario6, profiles, a100, model):
    services, current = scenario6
    new = plan(PlanRequest(_scaled(services, model, 1.1), profiles, a100, 3, current=current), "auto")
    assert verify(new, profiles) == []
    t = new.transition
    assert new.gpus_used == _fresh(new, profiles, a100) == 16  # the fresh optimum, proven
    assert new.lower_bound == 16
    assert "fresh_gpus" not in dict(new.stats)  # at the proven bound: no fresh plan was needed
    assert {s.model for s in t.added + t.removed} == {model}
    assert t.changed == 1


def test_a_rate_down_keeps_everything_when_the_fresh_optimum_needs_as_many_gpus(scenario6, profiles, a100):
    services, current = scenario6
    new = plan(PlanRequest(_scaled(services, "bert", 0.9), profiles, a100, 3, current=current), "auto")
    assert _fresh(new, profiles, a100) == new.gpus_used == new.lower_bound == 16
    assert new.transition.changed == 0  # surplus capacity is kept: removing it would be a change


def test_a_rate_down_that_frees_a_gpu_reaches_the_fresh_optimum(scenario6, profiles, a100):
    services, current = scenario6
    new = plan(PlanRequest(_scaled(services, "vgg19", 0.7), profiles, a100, 3, current=current), "auto")
    assert verify(new, profiles) == []
    assert new.gpus_used == _fresh(new, profiles, a100) == new.lower_bound == 15
    assert new.transition.changed <= 4  # the fresh plan itself would change dozens


def test_extra_gpus_buy_fewer_changes(scenario6, profiles, a100):
    services, current = scenario6
    down = _scaled(services, "vgg19", 0.7)
    strict = plan(PlanRequest(down, profiles, a100, 3, current=current), "auto")
    loose = plan(PlanRequest(down, profiles, a100, 3, current=current, max_extra_gpus=1), "auto")
    assert loose.gpus_used == strict.gpus_used + 1 and loose.transition.changed == 0
    assert strict.transition.changed > 0


def test_strategies_that_cannot_honour_a_running_plan_say_so(scenario6, profiles, a100):
    services, current = scenario6
    with pytest.raises(ParvaError, match="--current works with"):
        plan(PlanRequest(services, profiles, a100, 3, current=current), "mig-only")
    with pytest.raises(ParvaError, match="running plan is for"):
        PlanRequest(services, profiles, a100, 3, gpus_per_node=4, current=current)


factors = st.sampled_from((0.5, 0.7, 0.9, 1.1, 1.3, 1.6))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 6), st.dictionaries(st.integers(0, 10), factors, min_size=1, max_size=4), st.data())
def test_random_rate_changes_verify_transition_safely_and_never_need_more_gpus(
    example, profiles, a100, scenario, changes, data
):
    services = load_scenario(example / "SLO", scenario, list(profiles))
    strategy = data.draw(st.sampled_from(("parva", "parva", "auto")))
    current = plan(PlanRequest(services, profiles, a100, 3), strategy)
    new_services = tuple(
        replace(s, rate=round(s.rate * changes.get(i, 1.0), 3)) for i, s in enumerate(services)
    )
    request = PlanRequest(new_services, profiles, a100, 3, time_limit=2.0, current=current)
    new = plan(request, strategy)
    assert verify(new, profiles) == []
    assert new.gpus_used <= plan(replace(request, current=None), strategy).gpus_used
    sched = schedule(current, new, spare_gpus=len(current.segments))
    assert sched.dips == () and verify_schedule(current, new, sched.steps) == []
    tight = schedule(current, new)
    problems = verify_schedule(current, new, tight.steps)
    assert all("below min(old rate, new rate)" in p for p in problems) and bool(problems) == bool(tight.dips)


def test_plan_current_through_the_cli(tmp_path):
    runner = CliRunner()
    running = tmp_path / "running.json"
    assert runner.invoke(app, ["plan", "-s", "3", "-o", str(running)]).exit_code == 0
    out = runner.invoke(app, ["plan", "-s", "3", "--current", str(running), "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["transition"]["kept"] == len(data["segments"]) and data["transition"]["added"] == []
    assert plan_from_dict(data)[0].transition.changed == 0
    moved = runner.invoke(app, ["plan", "-s", "4", "--current", str(running), "-o", str(tmp_path / "new.json")])
    assert moved.exit_code == 0 and "kept" in moved.output
    assert runner.invoke(app, ["verify", str(tmp_path / "new.json")]).exit_code == 0
    bad = runner.invoke(app, ["plan", "-s", "3", "--max-extra-gpus", "1"])
    assert bad.exit_code == 2 and "--current" in bad.output


def _two_model_gpu(a100, rate_a):
    """One GPU: model a (2g and 4g only) at 2g@0, model b at 3g@4; slices 2-3 free."""
    from helpers import profile

    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet

    profiles = {
        "a": profile("a", [(2, 1, 1, 100.0, 0.001), (4, 1, 1, 250.0, 0.001)]),
        "b": profile("b", [(3, 1, 1, 150.0, 0.001)]),
    }
    running = (
        PlacedSegment(Segment("a", Triplet(2, 1, 1, 100.0, 1.0)), 0, 0),
        PlacedSegment(Segment("b", Triplet(3, 1, 1, 150.0, 1.0)), 0, 4),
    )
    old = (Service("a", 90.0, 100.0), Service("b", 140.0, 100.0))
    current = DeploymentMap(a100.name, "auto", 3, 8, running, old)
    return profiles, current, (Service("a", rate_a, 100.0), old[1])


def test_a_model_short_of_room_trades_its_own_segment_for_a_larger_one(a100):
    profiles, current, services = _two_model_gpu(a100, 240.0)
    new = plan(PlanRequest(services, profiles, a100, 3, current=current), "auto")
    assert verify(new, profiles) == []
    t = new.transition
    assert new.gpus_used == new.lower_bound == 1  # the 2g@2 slot alone cannot hold the shortfall
    assert {(s.model, s.size, s.start) for s in t.removed} == {("a", 2, 0)}
    assert {(s.model, s.size, s.start) for s in t.added} == {("a", 4, 0)}


def test_trim_surplus_frees_the_most_slices_a_lower_rate_allows():
    from fractions import Fraction

    from parvagpu.core.model import PlacedSegment, Segment, Triplet
    from parvagpu.planning.replan import trim_surplus

    def seg(size, thr, gpu, start):
        return PlacedSegment(Segment("a", Triplet(size, 1, 1, thr, 1.0)), gpu, start)

    segs = (seg(4, 250.0, 0, 0), seg(2, 100.0, 1, 0), seg(1, 60.0, 1, 2), seg(3, 150.0, 2, 4))
    # capacity 560; rate 330 leaves 230 spare: 3g (150) + 1g (60) = 4 slices beats 2g + 1g (3)
    kept = trim_surplus(segs, {"a": Fraction(330)}, {"a"})
    assert sorted(s.size for s in kept) == [2, 4]
    assert trim_surplus(segs, {"a": Fraction(330)}, set()) == segs  # unchanged models keep all


def test_the_lp_bound_alone_matches_the_optimizers_proven_bound(scenario6, profiles, a100):
    from parvagpu.planning.optimizer.search import lower_bound

    services, current = scenario6
    for factor in (0.7, 1.3):
        request = PlanRequest(_scaled(services, "vgg19", factor), profiles, a100, 3)
        fresh = plan(request, "auto")
        assert lower_bound(request, 10.0) == fresh.lower_bound == fresh.gpus_used


def _random_changes(services, seed: int, k: int = 20):
    """`services` with `k` of them (seeded) at rates scaled by factors from [0.7, 1.3]."""
    import random

    rng = random.Random(seed)
    picked = set(rng.sample([s.model for s in services], k))
    return tuple(replace(s, rate=round(s.rate * rng.uniform(0.7, 1.3), 3)) if s.model in picked else s
                 for s in services)


def _generated(profiles, n: int, seed: int):
    """`n` services cycling the embedded profiles (named `<model>-<i>`), seeded rates and SLOs
    1.5-4x the tightest each model meets at 3 processes."""
    import random

    from parvagpu.core.model import Profile, Service

    rng = random.Random(seed)
    names = sorted(profiles)
    out_p, out_s = {}, []
    for i in range(n):
        src = profiles[names[i % len(names)]]
        name = f"{src.model}-{i}"
        out_p[name] = Profile(name, src.points, src.source)
        fastest = min(p.latency_ms for p in src.points if p.runnable and p.procs <= 3)
        out_s.append(Service(name, round(rng.uniform(50, 3000), 1), round(fastest / 0.45 * rng.uniform(1.5, 4), 1)))
    return out_p, tuple(out_s)


def test_every_phase_shares_one_deadline(profiles, a100):
    """20 % of 100 services change: the bound, repair, local re-plans, a fresh plan and the
    program all fit in one deadline (a generous margin for a loaded machine), and the plan is
    valid and within its cap."""
    import time

    gen, services = _generated(profiles, 100, 3)
    current = plan(PlanRequest(services, gen, a100, 3, time_limit=5.0), "auto")
    new_services = _random_changes(services, 1)
    limit = 0.6
    t0 = time.perf_counter()
    new = plan(PlanRequest(new_services, gen, a100, 3, time_limit=limit, current=current), "auto")
    assert time.perf_counter() - t0 < limit + 1.5
    assert verify(new, gen) == []
    stats = dict(new.stats)
    assert new.lower_bound is not None and new.lower_bound <= new.gpus_used
    assert new.gpus_used <= stats.get("fresh_gpus", new.lower_bound)


def test_gpus_come_first_and_extra_gpus_buy_fewer_changes_within_the_cap():
    from parvagpu.planning.replan import Candidate, _best, _fewest

    narrow, wide = Candidate("repair", (), 1, 10), Candidate("matched-fresh", (), 3710, 9)
    cands = [wide, narrow, Candidate("over", (), 0, 11)]
    assert _fewest(cands, 10, 0) == 9 and _best(cands, _fewest(cands, 10, 0)) is wide
    assert _fewest(cands, 10, 1) == 10 and _best(cands, _fewest(cands, 10, 1)) is narrow  # one GPU traded
    assert _fewest(cands, 12, 5) == 12  # never beyond the cap (the bound's or the fresh plan's + extra)


def test_out_of_time_the_fewest_gpus_in_hand_win_over_a_loose_fresh_plan(profiles, a100, monkeypatch):
    """The deadline passes right after packing, with a loose fresh plan still to come (the
    heuristic's, as `auto` gives one left no time). In hand then: repair (113 GPUs, 8 changes),
    the plan packing found (112 GPUs; here repair consolidated onto one GPU fewer stands in for
    it) and the fresh plan (116). The clock is injected (`replan._now`), nothing is timed: the
    plan has packing's 112 GPUs, not repair's 113 within the fresh plan's 116."""
    import time

    import parvagpu.planning.replan as rp
    from parvagpu.planning.heuristic import plan_parva

    many, services = _generated(profiles, 100, 0)
    current = plan(PlanRequest(services, many, a100, 3, time_limit=2.0), "auto")
    request = PlanRequest(_random_changes(services, 0), many, a100, 3, time_limit=2.0, current=current)
    late = [0.0]
    monkeypatch.setattr(rp, "_now", lambda: time.perf_counter() + late[0])
    made = []
    candidate = rp._candidate
    monkeypatch.setattr(rp, "_candidate", lambda *a: made.append(candidate(*a)) or made[-1])

    def packed_then_out_of_time(request, packing, cap, share, clock):
        repaired = made[0]
        known = {s.gpu for s in request.current.segments}
        found = rp.consolidate(request, repaired.segments, repaired.gpus - 1, known)
        late[0] = 3600.0  # the deadline has passed: no phase starts after this one
        return [rp._candidate("packed", found, request)]

    monkeypatch.setattr(rp, "_packed", packed_then_out_of_time)
    result = rp.replan(request, "auto", plan_parva)
    gpus = {c.name: c.gpus for c in made}
    assert [c.name for c in made] == ["repair", "packed", "matched-fresh"]
    assert gpus["packed"] < gpus["repair"] < gpus["matched-fresh"]
    assert result.gpus_used == gpus["packed"] and dict(result.stats)["replan_packed"] == 1
    assert result.lower_bound < result.gpus_used  # the bound proved, not reached: time ran out
    assert verify(result, many) == []


def test_repair_trades_two_of_a_models_own_segments_for_one_larger(a100):
    """a at 1g@0 and 1g@1, b at 3g@4: a's rate 90 -> 240 fits neither the free 2-3 slices nor them
    plus one of its own; giving up both frees 4g@0 (3 changes, no new GPU, b untouched)."""
    from helpers import profile

    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
    from parvagpu.planning.replan import admissible_segments, repair

    profiles = {
        "a": profile("a", [(1, 1, 1, 50.0, 0.001), (4, 1, 1, 250.0, 0.001)]),
        "b": profile("b", [(3, 1, 1, 150.0, 0.001)]),
    }
    running = (
        PlacedSegment(Segment("a", Triplet(1, 1, 1, 50.0, 1.0)), 0, 0),
        PlacedSegment(Segment("a", Triplet(1, 1, 1, 50.0, 1.0)), 0, 1),
        PlacedSegment(Segment("b", Triplet(3, 1, 1, 150.0, 1.0)), 0, 4),
    )
    old = (Service("a", 90.0, 100.0), Service("b", 140.0, 100.0))
    current = DeploymentMap(a100.name, "auto", 3, 8, running, old)
    request = PlanRequest((Service("a", 240.0, 100.0), old[1]), profiles, a100, 3, current=current)
    kept, dropped = admissible_segments(request)
    out = repair(request, kept, {0})
    assert dropped == 0 and {s.gpu for s in out} == {0}
    assert sorted((s.model, s.size, s.start) for s in out) == [("a", 4, 0), ("b", 3, 4)]
    new = plan(request, "auto")
    assert verify(new, profiles) == [] and new.gpus_used == 1 and new.transition.changed == 3


def _count_lp_solves(monkeypatch, services) -> list:
    """Wrap the optimizer's LP step: one entry per LP solved for exactly `services`."""
    from parvagpu.planning.optimizer import search

    calls, real = [], search._solve_lp

    def counted(problem, clock, hard=False):
        if problem.request.services == services:
            calls.append(hard)
        return real(problem, clock, hard)

    monkeypatch.setattr(search, "_solve_lp", counted)
    return calls


def test_a_fresh_plan_inside_sharing_starts_from_the_given_lp(scenario6, profiles, a100, monkeypatch):
    from parvagpu.planning.optimizer.search import relax, sharing

    services, _ = scenario6
    request = PlanRequest(_scaled(services, "vgg19", 1.3), profiles, a100, 3)
    calls = _count_lp_solves(monkeypatch, request.services)
    relaxation = relax(request, 10.0)
    assert len(calls) == 1
    with sharing(relaxation):
        shared = plan(request, "auto")
        other = PlanRequest(_scaled(services, "vgg19", 0.7), profiles, a100, 3)
        plan(other, "auto")  # another request: its own LP
    assert len(calls) == 1  # the shared plan solved no LP of its own
    plain = plan(request, "auto")
    assert len(calls) == 2
    assert shared.gpus_used == plain.gpus_used == shared.lower_bound == relaxation.bound
    assert verify(shared, profiles) == []


def test_the_replans_fresh_plan_reuses_the_bounds_lp(profiles, a100, monkeypatch):
    """20 % of 100 services change, repair misses the bound (and packing, made to find nothing
    here, too): the fresh plan is made, from the LP the bound phase solved (one LP for these
    services in the whole re-plan)."""
    monkeypatch.setattr("parvagpu.planning.replan_pack.Packing.plans", lambda *args: [])

    gen, services = _generated(profiles, 100, 3)
    current = plan(PlanRequest(services, gen, a100, 3, time_limit=5.0), "auto")
    new_services = _random_changes(services, 1)
    calls = _count_lp_solves(monkeypatch, new_services)
    new = plan(PlanRequest(new_services, gen, a100, 3, time_limit=2.0, current=current), "auto")
    stats = dict(new.stats)
    # With the LP solved, `auto`'s fresh plan is the optimizer's rounding; no heuristic runs.
    assert "fresh_gpus" in stats and stats["from_optimizer"] == 1.0 and "heuristic_gpus" not in stats
    assert calls == [True]  # the bound's LP (abandoned at its limit if late), solved once
    assert verify(new, gen) == []
    assert new.gpus_used <= stats["fresh_gpus"] and new.lower_bound <= new.gpus_used


def test_a_rate_down_that_frees_its_own_gpu_moves_no_other_model(scenario6, profiles, a100):
    """densenet169 x0.7 alone on a full GPU (7g), with a 4g and a 1g elsewhere: the fresh
    optimum is one GPU fewer. Its 7g goes and a 4g and a 1g take free slots (3 changes); packing
    found 3 changes too, but by moving another model's segment."""
    services, current = scenario6
    new = plan(PlanRequest(_scaled(services, "densenet169", 0.7), profiles, a100, 3, current=current), "auto")
    assert verify(new, profiles) == []
    assert new.gpus_used == new.lower_bound == 15
    t = new.transition
    assert {s.model for s in t.added + t.removed} == {"densenet169"}
    assert t.changed == 3


def test_among_equal_changes_the_plan_that_leaves_other_models_in_place_wins():
    from parvagpu.planning.replan import Candidate, _best

    packed, own = Candidate("packed", (), 3, 15, others=2), Candidate("own", (), 3, 15, others=0)
    assert _best([packed, own], 15) is own
    assert _best([packed, Candidate("own", (), 4, 15, others=0)], 15) is packed  # changes first


def test_own_room_is_the_most_a_model_can_hold_in_the_slots_others_leave(a100):
    """Three full GPUs (`test_replan_pack._tight` without its new model): a's own slots hold
    400 req/s at most; b cannot grow past its one 2g slot (100) unless a GPU is added."""
    from test_replan_pack import _tight

    from parvagpu.planning.replan import admissible_segments, own_room

    _, with_x = _tight(a100)
    request = replace(with_x, services=tuple(s for s in with_x.services if s.model != "x"))
    kept, _ = admissible_segments(request)
    assert own_room(request, kept, {"a"}, 3)
    more = replace(request, services=tuple(replace(s, rate=401.0) if s.model == "a" else s for s in request.services))
    assert not own_room(more, kept, {"a"}, 3)
    b101 = replace(request, services=tuple(replace(s, rate=101.0) if s.model == "b" else s for s in request.services))
    assert not own_room(b101, kept, {"b"}, 3) and own_room(b101, kept, {"b"}, 4)
    assert not own_room(with_x, kept, {"a", "x"}, 3)  # more than one changed model: not looked at


@pytest.mark.parametrize("slo_factor", [1.0, 0.5, 0.3])
def test_admissible_segments_kept_between_calls_equal_those_checked_afresh(scenario6, profiles, a100, slo_factor):
    """admissible_segments keeps each (profile content, triplet, SLO) answer between calls
    (`replan._NOW`): after calls with other SLOs, its answer equals one computed with nothing kept,
    and tighter SLOs drop running segments."""
    from parvagpu.planning import replan as rp

    services, current = scenario6

    def ask(factor):
        tighter = tuple(replace(s, latency_ms=s.latency_ms * factor) for s in services)
        return rp.admissible_segments(PlanRequest(tighter, profiles, a100, current=current))

    for other in (1.0, 0.5, 0.3):
        ask(other)
    kept = ask(slo_factor)
    rp._NOW.clear()
    assert ask(slo_factor) == kept
    assert (kept[1] == 0) == (slo_factor == 1.0)


def _reshuffled(current, seed: int):
    """`current` with its GPUs renumbered and each size's segments dealt over that size's slots
    in a seeded random order: the same plan to a user, every segment changed by `segment_key`."""
    import random

    from parvagpu.core.model import PlacedSegment

    rng = random.Random(seed)
    gpus = sorted({s.gpu for s in current.segments})
    to = dict(zip(gpus, rng.sample(range(len(gpus) + 3), len(gpus))))
    by_size: dict[int, list] = {}
    for s in current.segments:
        by_size.setdefault(s.size, []).append(s)
    out = []
    for group in by_size.values():
        contents = [s.segment for s in group]
        rng.shuffle(contents)
        out += [PlacedSegment(seg, to[s.gpu], s.start) for s, seg in zip(group, contents)]
    return replace(current, segments=tuple(out))


def _changes(a, b, per_node: int = 8) -> int:
    from parvagpu.core.model import segment_key

    return len({segment_key(s, per_node) for s in a} ^ {segment_key(s, per_node) for s in b})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_renumbered_reshuffled_copy_of_the_running_plan_aligns_back_to_no_change(profiles, a100, seed):
    from parvagpu.planning.replan import align_fresh, match_fresh

    many, services = _generated(profiles, 60, seed)
    current = plan(PlanRequest(services, many, a100, 3, time_limit=2.0), "auto")
    copy = _reshuffled(current, seed)
    assert _changes(copy.segments, current.segments) > len(current.segments)  # nearly all moved
    assert _changes(align_fresh(copy, current), current.segments) == 0
    assert _changes(match_fresh(copy, current), current.segments) > 0  # renumbering alone cannot


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10**6), st.dictionaries(st.integers(0, 39), factors, min_size=1, max_size=12))
def test_aligning_a_fresh_plan_keeps_its_gpus_and_capacities_and_it_verifies(profiles, a100, seed, changes):
    from collections import Counter

    from parvagpu.planning.replan import align_fresh

    many, services = _generated(profiles, 40, seed % 7)
    current = plan(PlanRequest(services, many, a100, 3, time_limit=1.0), "auto")
    new_services = tuple(replace(s, rate=round(s.rate * changes.get(i, 1.0), 3)) for i, s in enumerate(services))
    fresh = _reshuffled(plan(PlanRequest(new_services, many, a100, 3, time_limit=1.0), "parva"), seed)
    aligned = replace(fresh, segments=align_fresh(fresh, current))
    assert aligned.gpus_used == fresh.gpus_used
    assert Counter(s.segment for s in aligned.segments) == Counter(s.segment for s in fresh.segments)
    assert verify(aligned, many) == []


def test_no_local_replans_once_packing_meets_the_cap(profiles, a100, monkeypatch):
    import parvagpu.planning.replan as rp

    many, services = _generated(profiles, 100, 0)
    current = plan(PlanRequest(services, many, a100, 3, time_limit=2.0), "auto")
    new = _random_changes(services, 0)
    made: list[str] = []
    candidate = rp._candidate
    monkeypatch.setattr(rp, "_candidate", lambda name, *a: made.append(name) or candidate(name, *a))
    result = plan(PlanRequest(new, many, a100, 3, time_limit=2.0, current=current), "auto")
    assert "packed" in made and result.gpus_used == result.lower_bound  # packing met the proven bound
    assert "local" not in made
    assert verify(result, many) == []


def test_packing_tries_the_per_size_weightings_only_for_few_changed_models():
    from types import SimpleNamespace

    from parvagpu.planning.replan import _ALL_WEIGHTINGS_UP_TO, _weightings
    from parvagpu.planning.replan_pack import WEIGHTINGS, HoleWeighting

    few = _weightings(SimpleNamespace(order=["m"] * _ALL_WEIGHTINGS_UP_TO))
    many = _weightings(SimpleNamespace(order=["m"] * (_ALL_WEIGHTINGS_UP_TO + 1)))
    assert few == WEIGHTINGS and len(many) < len(WEIGHTINGS)
    assert many and all(isinstance(w, HoleWeighting) for w in many) and many == WEIGHTINGS[:len(many)]


def test_a_local_replan_needing_more_gpus_than_it_wiped_never_reuses_a_kept_gpu(scenario6, profiles, a100):
    """The sub-plan of two wiped GPUs comes back on three: the third takes a new id, not the id of a
    GPU kept beside them (two layouts on one GPU would overlap)."""
    from parvagpu.planning.replan import _wipe_and_plan

    services, current = scenario6
    by_gpu: dict[int, list] = {}
    for s in current.segments:
        by_gpu.setdefault(s.gpu, []).append(s)
    assert {0, 1, 2} <= set(by_gpu)
    three = replace(current, segments=tuple(s for s in current.segments if s.gpu in (0, 1, 2)))
    request = PlanRequest(services, profiles, a100, 3, current.gpus_per_node, time_limit=1.0)
    out = _wipe_and_plan(request, by_gpu, {0, 1}, len(by_gpu) + 5, lambda r: three, 1.0)
    assert out is not None
    result = replace(current, segments=out)
    assert result.gpus_used == len(by_gpu) + 1
    assert [p for p in verify(result, profiles) if "overlap" in p or "slot" in p] == []
    assert max(s.gpu for s in out) == max(by_gpu) + 1


def _holes_of_two(a100, rate: float):
    """m serves with a 2g@0 on GPUs 0-2 (three 1g would serve more there: 120 each against 220
    for the 2g), other models fill every other slot but slot 3 of GPU 3; m's rate goes from 660
    to `rate`."""
    from helpers import profile

    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet

    profiles = {"m": profile("m", [(1, 1, 1, 120.0, 0.001), (2, 1, 1, 220.0, 0.001)])}
    thr = {1: 50.0, 2: 100.0, 3: 150.0}
    layout = [("m", 2, g, 0) for g in range(3)] + [
        (f"o{g}{k}", size, g, start) for g in range(3) for k, (size, start) in enumerate(((1, 2), (1, 3), (3, 4)))
    ] + [("p0", 2, 3, 0), ("p1", 1, 3, 2), ("p2", 3, 3, 4)]
    for model, size, _, _ in layout:
        if model != "m":
            profiles[model] = profile(model, [(size, 1, 1, thr[size], 0.001)])
    running = tuple(PlacedSegment(Segment(model, Triplet(size, 1, 1, thr.get(size) if model != "m" else 220.0, 1.0)), g, st)
                    for model, size, g, st in layout)
    old = tuple(Service(model, 660.0 if model == "m" else thr[size] * 0.9, 100.0) for model, size, g, _ in layout
                if model != "m" or g == 0)
    current = DeploymentMap(a100.name, "auto", 3, 8, running, old)
    new = tuple(replace(s, rate=rate) if s.model == "m" else s for s in old)
    return profiles, PlanRequest(new, profiles, a100, 3, current=current)


def test_own_recover_cuts_a_hole_into_the_instances_that_serve_most(a100):
    """m's rate 830 fits without touching another model only as seven 1g (840): its three 2g
    given up, two 1g in each of their slots and one in the free slot 3 of GPU 3 (10 changes).
    The one fastest segment per hole (three 2g and a 1g, 780) falls short."""
    from parvagpu.planning.replan import admissible_segments, own_recover, own_room

    profiles, request = _holes_of_two(a100, 830.0)
    kept, _ = admissible_segments(request)
    assert own_room(request, kept, {"m"}, 4)
    found = own_recover(request, kept, "m", 4)
    assert found is not None
    new = replace(request.current, segments=found, services=request.services)
    assert verify(new, profiles) == []
    assert {s for s in found if s.model != "m"} == {s for s in kept if s.model != "m"}
    assert sorted(s.size for s in found if s.model == "m") == [1] * 7
    _, over = _holes_of_two(a100, 841.0)
    assert not own_room(over, kept, {"m"}, 4) and own_recover(over, kept, "m", 4) is None


def test_covers_and_admitted_decide_as_exact_decimal_arithmetic_does():
    """`_covers` and `_admitted` compare floats first and the decimal values only near the
    limit: rates at, a hair above and below the exact sum of three-decimal throughputs, and batch
    latencies at and around 0.45 x the SLO, decide as `Fraction` arithmetic does."""
    import random
    from fractions import Fraction

    from parvagpu.core.model import PlacedSegment, ProfilePoint, Segment, Service, Triplet
    from parvagpu.planning.replan import _admitted, _covers

    rng = random.Random(0)
    for _ in range(300):
        thr = [round(rng.uniform(1, 2000), 3) for _ in range(rng.randint(1, 12))]
        segs = [PlacedSegment(Segment("m", Triplet(1, 1, 1, t, 1.0)), i, 0) for i, t in enumerate(thr)]
        total = sum(Fraction(repr(t)) for t in thr)
        for rate in (float(total), float(total) + 1e-9, float(total) - 1e-9, float(total) * 1.001, float(total) / 1.001):
            assert _covers(segs, rate) == (total >= Fraction(repr(rate)))
    for slo in (100.0, 33.3, 47.7, 1e-3, 123456.789):
        edge = Fraction(9, 20) * Fraction(repr(slo)) / 1000  # seconds
        for lat in (float(edge), float(edge) * (1 + 1e-12), float(edge) * (1 - 1e-12), float(edge) / 2, float(edge) * 2):
            p = ProfilePoint(1, 1, 1, 10.0, lat)
            assert _admitted(p, Service("m", 1.0, slo)) == (Fraction(repr(lat)) * 1000 < Fraction(9, 20) * Fraction(repr(slo)))


def _own_layout(a100, m_points: dict[int, float], layout, rate: float):
    """Model m (one point per size, throughputs `m_points`) and other models, one segment each
    at 90 % of its rate, placed as `layout` says ((model, size, gpu, start)); m's rate goes
    from what its segments serve to `rate`."""
    from helpers import profile

    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet

    thr = {1: 50.0, 2: 100.0, 3: 150.0, 4: 200.0}
    profiles = {"m": profile("m", [(z, 1, 1, t, 0.001) for z, t in m_points.items()])}
    running = []
    for model, size, g, start in layout:
        t = m_points[size] if model == "m" else thr[size]
        if model != "m":
            profiles[model] = profile(model, [(size, 1, 1, t, 0.001)])
        running.append(PlacedSegment(Segment(model, Triplet(size, 1, 1, t, 1.0)), g, start))
    served = sum(s.segment.throughput for s in running if s.model == "m")
    old = (Service("m", served, 100.0),) + tuple(
        Service(s.model, s.segment.throughput * 0.9, 100.0) for s in running if s.model != "m")
    current = DeploymentMap(a100.name, "auto", 3, 8, tuple(running), old)
    new = tuple(replace(s, rate=rate) if s.model == "m" else s for s in old)
    return profiles, PlanRequest(new, profiles, a100, 3, current=current)


def _only_m_changes(found, kept, request, profiles) -> None:
    from parvagpu.core.model import DeploymentMap

    assert found is not None
    assert verify(DeploymentMap(request.gpu.name, "auto", 3, 8, found, request.services), profiles) == []
    assert {s for s in found if s.model != "m"} == {s for s in kept if s.model != "m"}


def test_own_recover_re_cuts_the_gpu_its_drop_empties(a100):
    """m's 7g (350) fills GPU 0; the others leave one 1g slot on GPU 1. At 415 req/s the 7g and
    that 1g fall short (400); GPU 0 re-cut into a 4g and a 3g (370) with the 1g (50) covers it,
    4 changes and none to another model, at 2 GPUs. A GPU the drops empty was closed to the
    re-cover, which then found nothing."""
    from parvagpu.planning.replan import admissible_segments, own_recover, own_room

    layout = [("m", 7, 0, 0), ("o", 4, 1, 0), ("p", 2, 1, 4)]
    profiles, request = _own_layout(a100, {1: 50.0, 3: 160.0, 4: 210.0, 7: 350.0}, layout, 415.0)
    kept, _ = admissible_segments(request)
    assert own_room(request, kept, {"m"}, 2)
    found = own_recover(request, kept, "m", 2)
    _only_m_changes(found, kept, request, profiles)
    assert len({s.gpu for s in found}) == 2
    assert sorted((s.gpu, s.start, s.size) for s in found if s.model == "m") == [(0, 0, 4), (0, 4, 3), (1, 6, 1)]
    new = plan(request, "auto")
    assert new.gpus_used == 2 and {s.model for s in new.transition.added + new.transition.removed} == {"m"}
    # a rate down that frees GPU 0 still empties it: the re-cover keeps it closed first
    _, less = _own_layout(a100, {1: 50.0, 3: 160.0, 4: 210.0, 7: 350.0}, layout, 40.0)
    kept, _ = admissible_segments(less)
    freed = own_recover(less, kept, "m", 1)
    assert freed is not None and {s.gpu for s in freed} == {1}


def test_own_recover_gives_up_first_the_segments_whose_slots_serve_more_re_cut(a100):
    """m runs fourteen 1g (GPUs 0 and 1) and a 3g@4 (120) beside another model's 4g on GPU 2;
    nothing is free. +20 req/s fits only by cutting the 3g's slots into three 1g (150): 4
    changes. The fourteen 1g came first (smallest first, twelve looked at), so the 3g was never
    given up."""
    from parvagpu.planning.replan import admissible_segments, own_recover, own_room

    layout = [("m", 1, g, st) for g in (0, 1) for st in range(7)] + [("m", 3, 2, 4), ("o", 4, 2, 0)]
    profiles, request = _own_layout(a100, {1: 50.0, 3: 120.0}, layout, 840.0)
    kept, _ = admissible_segments(request)
    assert own_room(request, kept, {"m"}, 3)
    found = own_recover(request, kept, "m", 3)
    _only_m_changes(found, kept, request, profiles)
    assert sorted((s.gpu, s.start, s.size) for s in found if s.model == "m" and s.gpu == 2) == [
        (2, 4, 1), (2, 5, 1), (2, 6, 1)]
    assert len(set(found) ^ set(kept)) == 4


def test_no_plan_packed_at_the_cap_one_gpu_over_then_local_replans_down_to_it(profiles, a100, monkeypatch):
    """Packing finds nothing at the cap (here made to): the plan packed one GPU over it, re-planned
    locally down to the cap, changes fewer segments than the aligned fresh plan, which was the
    only plan at the cap before (at 1,000 services, 914 changes instead of 2,078)."""
    import parvagpu.planning.replan as rp

    many, services = _generated(profiles, 100, 0)
    current = plan(PlanRequest(services, many, a100, 3, time_limit=2.0), "auto")
    request = PlanRequest(_random_changes(services, 0), many, a100, 3, time_limit=5.0, current=current)
    made: list = []
    candidate = rp._candidate
    monkeypatch.setattr(rp, "_candidate", lambda *a: made.append(candidate(*a)) or made[-1])
    packed, caps = rp._packed, []

    def nothing_at_the_cap(request, packing, cap, share, clock):
        caps.append(cap)
        return [] if len(caps) == 1 else packed(request, packing, cap, share, clock)

    monkeypatch.setattr(rp, "_packed", nothing_at_the_cap)
    result = plan(request, "auto")
    by_name = {}
    for c in made:
        by_name.setdefault(c.name, []).append(c)
    assert caps[:2] == [result.lower_bound, result.lower_bound + 1]
    assert all(c.gpus == result.lower_bound + 1 for c in by_name["packed"])
    fresh = min(c.changes for c in by_name["matched-fresh"])
    local = min(c.changes for c in by_name["local"] if c.gpus == result.lower_bound)
    assert local < fresh and result.gpus_used == result.lower_bound
    assert result.transition.changed <= local  # the program, after, starts from it
    assert verify(result, many) == []
