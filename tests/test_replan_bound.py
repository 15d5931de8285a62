"""The benchmark's exact check of whether a single-model change could keep every other model in
place (`bench/replan_bound.others_can_stay`): the re-plan table counts other models' segments
moved as avoidable only where it says so."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from helpers import profile
from hypothesis import given, settings
from hypothesis import strategies as st
from test_replan_pack import _tight

from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap, PlacedSegment, ProfilePoint, Segment, Service, Triplet
from parvagpu.planning.request import PlanRequest
from parvagpu.verify import verify

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from replan_bound import others_can_stay  # noqa: E402


def test_a_new_model_on_full_gpus_moves_others_unless_a_gpu_is_added(a100):
    """Every slot of the three GPUs is held by a running segment of another model: x's 3g fits
    only on a fourth GPU."""
    _, request = _tight(a100)
    assert not others_can_stay(request, "x", 3)
    assert others_can_stay(request, "x", 4)


def test_a_model_may_recover_in_its_own_slots(a100):
    """Without the new model x: a's own slots (4g@0, 2g@0, 1g@4) hold 400 req/s as it is
    profiled, so its new rate of 250 fits there, but not 401; b's one 2g slot holds 100 at most.
    With x, which no running segment serves, some other model must change."""
    _, with_x = _tight(a100)
    assert not others_can_stay(with_x, "a", 3)
    request = replace(with_x, services=tuple(s for s in with_x.services if s.model != "x"))
    assert others_can_stay(request, "a", 3)
    more = replace(request, services=tuple(replace(s, rate=401.0) if s.model == "a" else s
                                           for s in request.services))
    assert not others_can_stay(more, "a", 3)
    assert others_can_stay(request, "b", 3)  # b's rate 90 fits its 2g
    less = replace(request, services=tuple(replace(s, rate=101.0) if s.model == "b" else s
                                           for s in request.services))
    assert not others_can_stay(less, "b", 3)


# A100's MIG placement table written out here (memory slices per size, legal starts), so that
# the brute force below does not share GpuType.layouts with the check it tests.
_WIDTH = {1: 1, 2: 2, 3: 4, 4: 4, 7: 8}
_STARTS = {1: range(7), 2: (0, 2, 4), 3: (0, 4), 4: (0,), 7: (0,)}
_PLACES = [(z, s) for z in _WIDTH for s in _STARTS[z]]
_SLO = 100.0


def _mask(size: int, start: int) -> int:
    return ((1 << _WIDTH[size]) - 1) << start


def _free_sets(taken: int) -> list[tuple[tuple[int, int], ...]]:
    """Every set of placements overlapping neither each other nor the slices `taken`."""
    out = []

    def rec(i: int, used: int, chosen: tuple) -> None:
        if i == len(_PLACES):
            out.append(chosen)
            return
        rec(i + 1, used, chosen)
        if not used & _mask(*_PLACES[i]):
            rec(i + 1, used | _mask(*_PLACES[i]), chosen + (_PLACES[i],))

    rec(0, taken, ())
    return out


def _triplet(p: ProfilePoint) -> Triplet:
    return Triplet(p.size, p.batch, p.procs, p.segment_throughput, p.latency_ms)


@st.composite
def _stay_cases(draw):
    """Other models' segments on one or two GPUs (each at 90 % of its own rate), the changed
    model m with a few profile points per size (some too slow for the SLO) and running segments
    in slots the others leave, m's rate as a shift from the most it can get, and a GPU count."""
    sets = _free_sets(0)
    points = []
    for size in _WIDTH:
        for batch in range(1, draw(st.integers(0, 3)) + 1):
            points.append((size, batch, 1, float(draw(st.integers(1, 60)) * (size if size > 1 else 2)),
                           draw(st.sampled_from([0.001, 0.2]))))
    if not any(p[4] < 0.1 for p in points):
        points.append((1, 9, 1, 40.0, 0.001))  # a batch no draw uses: one point per triplet
    profiles = {"m": profile("m", points)}
    running, services, taken = [], [], {}
    for g in range(draw(st.integers(1, 2))):
        layout = draw(st.sampled_from(sets))
        for size, start in layout:
            owner = draw(st.sampled_from(["other", "other", "m", "free"]))
            if owner == "other":
                name = f"o{len(services)}"
                profiles[name] = profile(name, [(size, 1, 1, 100.0, 0.001)])
                running.append(PlacedSegment(Segment(name, _triplet(profiles[name].points[0])), g, start))
                services.append(Service(name, 90.0, _SLO))
                taken[g] = taken.get(g, 0) | _mask(size, start)
            elif owner == "m" and any(p.size == size for p in profiles["m"].points):
                p = draw(st.sampled_from([p for p in profiles["m"].points if p.size == size]))
                running.append(PlacedSegment(Segment("m", _triplet(p)), g, start))
    shift = draw(st.sampled_from([-1.0, 0.0, 1.0]))  # m's rate: just below, at or above the most it can get
    gpus = max(1, len(taken)) + draw(st.integers(0, 1))
    return profiles, tuple(running), tuple(services), shift, taken, gpus


@settings(max_examples=60, deadline=None)
@given(_stay_cases())
def test_others_can_stay_agrees_with_a_brute_force_over_every_placement(case):
    """The check answers as a brute force does: m's segments in every set of legal placements
    the others' slices leave on their GPUs (and on whole GPUs up to the count), each at m's
    fastest point that `verify` accepts for its size; a yes is confirmed by a plan that keeps
    every other segment and passes `verify`."""
    profiles, running, others, shift, taken, gpus = case
    a100 = gpu_type("A100-80GB")
    best: dict[int, Triplet] = {}  # per size, m's fastest point `verify` accepts alone on a GPU
    for p in sorted(profiles["m"].points, key=lambda p: -p.segment_throughput):
        lone = DeploymentMap(a100.name, "auto", 3, 8, (PlacedSegment(Segment("m", _triplet(p)), 0, 0),),
                             (Service("m", 1.0, _SLO),))
        if p.size not in best and verify(lone, profiles) == []:
            best[p.size] = _triplet(p)
    # the others' GPUs, then GPUs nobody else uses up to the count
    ids = sorted(taken) + [g for g in range(4) if g not in taken][: gpus - len(taken)]
    layouts = {g: max(_free_sets(taken.get(g, 0)), key=lambda ls: sum(best[z].throughput for z, _ in ls if z in best))
               for g in ids}
    witness = tuple(s for s in running if s.model != "m") + tuple(
        PlacedSegment(Segment("m", best[z]), g, start) for g, ls in layouts.items() for z, start in ls if z in best)
    capacity = sum(s.segment.throughput for s in witness if s.model == "m")
    rate = max(1.0, capacity + shift)
    services = others + (Service("m", rate, _SLO),)
    current = DeploymentMap(a100.name, "auto", 3, 8, running, services)
    request = PlanRequest(services, profiles, a100, 3, current=current)
    assert others_can_stay(request, "m", gpus) == (capacity >= rate)
    if capacity >= rate:
        assert verify(DeploymentMap(a100.name, "auto", 3, 8, witness, services), profiles) == []


def test_the_reference_fresh_plan_is_skipped_only_at_the_proven_bound(example, profiles, a100, monkeypatch):
    """`bench_replan.fresh_optimum`: a re-plan at the GPU lower bound it reports is the fresh
    optimum (the exact optimizer from scratch needs as many), so no reference plan is made;
    one above that bound gets the reference plan's count."""
    import bench_replan

    from parvagpu.inputs.services import load_scenario
    from parvagpu.planning.strategies import plan

    services = load_scenario(example / "SLO", 6, list(profiles))
    current = plan(PlanRequest(services, profiles, a100, 3), "auto")
    lower = tuple(replace(s, rate=round(s.rate * 0.7, 3)) if s.model == "vgg19" else s for s in services)
    request = PlanRequest(lower, profiles, a100, 3, current=current)
    new = plan(request, "auto")
    made = []
    monkeypatch.setattr(bench_replan, "fresh_plan", lambda r: made.append(r) or plan(replace(r, current=None), "auto"))
    assert bench_replan.fresh_optimum(request, new) == (new.gpus_used, "bound") and made == []
    assert plan(replace(request, current=None), "optimal").gpus_used == new.gpus_used
    loose = replace(new, stats=tuple((k, v - 1 if k == "gpu_lower_bound" else v) for k, v in new.stats))
    assert bench_replan.fresh_optimum(request, loose) == (new.gpus_used, "fresh") and len(made) == 1
