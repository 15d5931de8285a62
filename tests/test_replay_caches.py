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
from parvagpu.core.model import DeploymentMap, Service
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
