"""What the trace replay's hot paths keep or count differently gives the answers computed afresh:
the transition kept from the re-plan's finish, exact capacities counted per throughput, the
allocator's instance multisets kept with each GPU."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st
from test_transition import cluster

from parvagpu.core.exact import capacities, exact
from parvagpu.core.gpus import GPU_TYPES
from parvagpu.core.model import DeploymentMap, Profile, Service
from parvagpu.inputs.services import load_scenario
from parvagpu.planning import allocator, transition as tr
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest

A100 = GPU_TYPES["A100-80GB"]


def _plan(segments, services=()) -> DeploymentMap:
    return DeploymentMap(A100.name, "parva", 3, 8, tuple(segments), tuple(services))


@settings(max_examples=40, deadline=None)
@given(cluster(A100, 4), cluster(A100, 4))
def test_transition_kept_equals_fresh(a, b):
    """The kept answer for the same plans (or the same tuples `replace`d into another plan) is the
    one computed afresh; plans with other segments get their own."""
    old, new = _plan(a), _plan(b)
    tr._RECENT.clear()
    first = tr.transition(old, new)
    assert first == tr._transition(old, new)
    assert tr.transition(old, replace(new, transition=first)) is first  # the re-plan's finish, then `schedule`
    other = _plan(b[1:])
    assert tr.transition(old, other) == tr._transition(old, other)
    assert tr.transition(other, new) == tr._transition(other, new)
    assert tr.transition(replace(old, gpus_per_node=4), replace(new, gpus_per_node=4)) == \
        tr._transition(replace(old, gpus_per_node=4), replace(new, gpus_per_node=4))


@settings(max_examples=60, deadline=None)
@given(cluster(A100, 6))
def test_capacities_are_the_sums_one_by_one(segments):
    have: dict[str, Fraction] = defaultdict(Fraction)
    for s in segments:
        have[s.model] += Fraction(repr(s.segment.throughput))
    got = capacities(segments)
    assert dict(got) == dict(have)
    assert got["nobody"] == 0


def test_capacities_exact_on_decimals():
    """0.1 + 0.2 as the decimals they print as: exactly 0.3, where the float sum is not."""
    assert exact(0.1) * 2 + exact(0.2) == Fraction(4, 10)


def test_allocator_kept_sizes_equal_sorted_slots(example, profiles, monkeypatch):
    """Every scenario and 30 seeded rate draws allocate the same with each GPU's instance multiset
    recomputed from its slots at every look-up (the code before it was kept)."""
    requests = [PlanRequest(load_scenario(example / "SLO", k, list(profiles)), profiles, A100, max_procs=3)
                for k in range(1, 7)]
    rng = random.Random(7)
    base = requests[0].services
    for _ in range(30):
        services = tuple(Service(s.model, s.rate * rng.uniform(0.2, 3.0), s.latency_ms) for s in base)
        requests.append(PlanRequest(services, profiles, A100, max_procs=rng.choice((1, 2, 3))))
    kept = [plan_parva(r) for r in requests]

    def fresh_key(g):
        assert g.sizes == tuple(sorted(s.size for s in g.slots.values()))
        return tuple(sorted(s.size for s in g.slots.values()))

    monkeypatch.setattr(allocator._Gpu, "key", fresh_key)
    assert [plan_parva(r) for r in requests] == kept


def test_capacities_kept_answer_is_a_copy():
    """A tuple's kept answer equals the fresh one and each caller gets a dict of its own (the
    transition check adds to and takes from its copy)."""
    from parvagpu.core.model import PlacedSegment, Segment, Triplet

    seg = _plan(()).segments
    segs = tuple(PlacedSegment(Segment(m, Triplet(1, 1, 1, x, 1.0)), g, 0)
                 for g, (m, x) in enumerate([("a", 0.1), ("a", 0.2), ("b", 1.5)]))
    first = capacities(segs)
    first["a"] += 1
    again = capacities(segs)
    assert again == {"a": Fraction(3, 10), "b": Fraction(3, 2)}
    assert capacities(list(segs)) == again and capacities(seg) == {}


def _wipe_before(request, by_gpu, wiped, cap, planner, time_limit):
    """`_wipe_and_plan` as it was: the kept segments' capacity summed one by one."""
    from parvagpu.planning.replan import align_fresh

    wiped = set(wiped)
    kept = [s for g, segs in by_gpu.items() if g not in wiped for s in segs]
    if len(by_gpu) - len(wiped) >= cap:
        return None
    have: dict[str, Fraction] = defaultdict(Fraction)
    for s in kept:
        have[s.model] += exact(s.segment.throughput)
    residual = tuple(Service(v.model, float(exact(v.rate) - have[v.model]), v.latency_ms)
                     for v in request.services if have[v.model] < exact(v.rate))
    if not residual:
        return tuple(kept)
    sub = planner(replace(request, services=residual, current=None, time_limit=time_limit))
    if len(by_gpu) - len(wiped) + sub.gpus_used > cap:
        return None
    old = DeploymentMap(request.gpu.name, "", request.max_procs, request.gpus_per_node,
                        tuple(s for g in wiped for s in by_gpu[g]), ())
    return tuple(kept) + align_fresh(sub, old, set(wiped), avoid=set(by_gpu))


def test_wipes_equal_with_capacity_less_the_wiped(example, profiles):
    """Each local re-plan's wipe (its kept capacity: all less the wiped GPUs', exact) gives what
    summing the kept segments one by one gave, on seeded rate changes and GPU sets."""
    from parvagpu.planning.replan import _wipe_and_plan

    services = load_scenario(example / "SLO", 3, list(profiles))
    running = plan_parva(PlanRequest(services, profiles, A100, max_procs=3))
    by_gpu: dict[int, list] = defaultdict(list)
    for s in running.segments:
        by_gpu[s.gpu].append(s)
    have = capacities(running.segments)
    rng = random.Random(5)
    found = 0
    for _ in range(40):
        changed = tuple(Service(s.model, s.rate * rng.uniform(0.6, 1.5), s.latency_ms) for s in services)
        req = PlanRequest(changed, profiles, A100, max_procs=3, current=running)
        wiped = rng.sample(sorted(by_gpu), rng.randint(1, min(6, len(by_gpu))))
        cap = len(by_gpu) + rng.randint(-1, 2)
        got = _wipe_and_plan(req, by_gpu, wiped, cap, plan_parva, 1.0, have)
        assert got == _wipe_before(req, by_gpu, wiped, cap, plan_parva, 1.0)
        found += got is not None
    assert found > 5


def test_kept_heuristic_plans_equal_fresh_ones(example, profiles):
    """`plan_parva` gives the plan made afresh for the same inputs, and another plan for other
    rates, SLOs, limits or profile contents."""
    from parvagpu.planning import heuristic

    services = load_scenario(example / "SLO", 2, list(profiles))
    req = PlanRequest(services, profiles, A100, max_procs=3)
    first = heuristic.plan_parva(req)
    assert first == heuristic._plan(req, allocator.AllocatorPolicy())
    assert heuristic.plan_parva(PlanRequest(services, profiles, A100, max_procs=3)) is first
    for other in (PlanRequest(services, profiles, A100, max_procs=1),
                  PlanRequest((replace(services[0], rate=services[0].rate * 2),) + services[1:], profiles, A100),
                  PlanRequest((replace(services[0], latency_ms=services[0].latency_ms * 2),) + services[1:],
                              profiles, A100)):
        assert heuristic.plan_parva(other) == heuristic._plan(other, allocator.AllocatorPolicy())
    donor = next(m for m in profiles if m != services[0].model and
                 profiles[m].content_key != profiles[services[0].model].content_key)
    swapped = dict(profiles)
    swapped[services[0].model] = Profile(services[0].model, source="swapped", columns=profiles[donor].columns)
    req2 = PlanRequest(services, swapped, A100, max_procs=3)
    assert heuristic.plan_parva(req2) == heuristic._plan(req2, allocator.AllocatorPolicy())


def test_candidates_count_changes_against_their_own_request(example, profiles):
    """The running plan's keys kept per request: a candidate of another request (another running
    plan) is counted against that one's."""
    from parvagpu.planning.replan import _candidate

    services = load_scenario(example / "SLO", 3, list(profiles))
    a = plan_parva(PlanRequest(services, profiles, A100, max_procs=3))
    b = plan_parva(PlanRequest(services, profiles, A100, max_procs=2))
    ra = PlanRequest(services, profiles, A100, max_procs=3, current=a)
    rb = PlanRequest(services, profiles, A100, max_procs=3, current=b)
    assert _candidate("x", a.segments, ra).changes == 0
    assert _candidate("x", a.segments, rb).changes > 0
    assert _candidate("x", b.segments, rb).changes == 0
    assert _candidate("x", b.segments, ra).changes == _candidate("x", a.segments, rb).changes


def _most_slices_before(segs, spare):
    """`_most_slices_within` as it was: every subset summed afresh in fractions."""
    segs = sorted(segs, key=lambda s: (-s.size, s.gpu, s.start))
    best, best_key = set(), (0, 0)
    for mask in range(1, 1 << len(segs)):
        sub = [s for i, s in enumerate(segs) if mask >> i & 1]
        if sum(exact(s.segment.throughput) for s in sub) <= spare:
            key = (sum(s.size for s in sub), -len(sub))
            if key > best_key:
                best, best_key = set(sub), key
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from((1, 2, 3, 4, 7)), st.sampled_from((0.1, 0.2, 7.1, 12.5, 33.3, 100.0, 250.25)),
                          st.integers(0, 40)), min_size=1, max_size=12, unique_by=lambda x: x[2]),
       st.decimals(min_value=0, max_value=500, places=3))
def test_most_slices_within_equals_the_subset_sums(rows, spare):
    """The surplus trim's subset search over integer sums picks the subset the fraction sums did."""
    from parvagpu.core.model import PlacedSegment, Segment, Triplet
    from parvagpu.planning.replan import _most_slices_within

    segs = [PlacedSegment(Segment("m", Triplet(z, 1, 1, x, 1.0)), g // 7, g % 7) for z, x, g in rows]
    assert _most_slices_within(segs, Fraction(spare)) == _most_slices_before(segs, Fraction(spare))


def test_kept_heuristic_plans_are_bounded_in_segments(example, profiles, monkeypatch):
    """The kept plans hold at most `_PLANS_MAX_SEGMENTS` segments in all, the oldest dropped
    first, the newest always kept (a long-running controller at thousands of services)."""
    from parvagpu.planning import heuristic

    services = load_scenario(example / "SLO", 2, list(profiles))
    monkeypatch.setattr(heuristic, "_PLANS", {})
    plans = [heuristic.plan_parva(PlanRequest(tuple(replace(s, rate=s.rate * (1 + k / 10)) for s in services),
                                              profiles, A100)) for k in range(3)]
    held = len(plans[1].segments) + len(plans[2].segments)
    monkeypatch.setattr(heuristic, "_PLANS", {})
    monkeypatch.setattr(heuristic, "_PLANS_MAX_SEGMENTS", held)
    for k in range(3):
        heuristic.plan_parva(PlanRequest(tuple(replace(s, rate=s.rate * (1 + k / 10)) for s in services),
                                         profiles, A100))
    assert list(heuristic._PLANS.values()) == plans[1:]
    monkeypatch.setattr(heuristic, "_PLANS_MAX_SEGMENTS", 1)
    heuristic.plan_parva(PlanRequest(services, profiles, A100))
    assert list(heuristic._PLANS.values()) == [plans[0]]


def test_kept_decisions_equal_fresh_ones(example, profiles):
    """`configure_all` keeps each (service, best triplets) decision: over seeded rate draws, some
    services repeated between requests, its answers are those of `decide` afresh."""
    from parvagpu.planning.configurator import configure_all, decide

    base = load_scenario(example / "SLO", 4, list(profiles))
    rng = random.Random(11)
    for _ in range(20):
        services = tuple(Service(s.model, s.rate * rng.choice((1.0, 1.0, 0.5, 1.7)), s.latency_ms) for s in base)
        req = PlanRequest(services, profiles, A100, max_procs=rng.choice((2, 3)))
        assert configure_all(req) == tuple(decide(s, p) for s, p in zip(req.services, req.best_by_size))
