"""Tier shares on fleets too small for their services, where the right shares are known by hand,
and the greedy first plan the tiers start from."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.core.errors import Unservable
from parvagpu.core.fleet import Fleet, FleetNode, Reservation, reserved_slots
from parvagpu.core.model import Profile, ProfilePoint, Service
from parvagpu.planning.fleet import FleetRequest, _demands, _greedy, _setup, plan_fleet
from parvagpu.planning.fleet_program import MARGIN
from parvagpu.verify import verify

A100 = "A100-80GB"


def _linear(model: str) -> Profile:
    """10 req/s per compute slice on every A100 size: a GPU serves at most 70 req/s, in steps of
    10 (seven 1g instances)."""
    return Profile(model, tuple(ProfilePoint(z, 1, 1, 10.0 * z, 0.01) for z in (1, 2, 3, 4, 7)))


def _request(rates_by_tier, gpus: int, **kw) -> FleetRequest:
    services = tuple(Service(m, r, 100.0, tier) for tier, rates in enumerate(rates_by_tier) for m, r in rates)
    profiles = {A100: {s.model: _linear(s.model) for s in services}}
    return FleetRequest(services, profiles, Fleet((FleetNode("n", A100, gpus),)), **kw)


def _largest_f(rates, units: int) -> float:
    """The largest f with sum over rates of ceil(rate f (1 + margin) + margin) / 10 <= units: the
    shared tier's exact optimum on `units` free 1g instances."""
    def fits(f):
        return sum(math.ceil((r * f * (1 + MARGIN) + f * MARGIN) / 10 - 1e-12) for r in rates) <= units
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _outcome(plan, request):
    assert verify(plan, request.profiles[A100]) == []
    return {s.model: plan.served_rate(s) for s in request.services}, dict(plan.stats)


def test_the_lowest_tier_that_fits_gets_the_proven_largest_share_and_fills_the_fleet():
    """Four GPUs (280 req/s): tier 0 takes two, tier 1 one (rates a hair below 70 req/s a GPU, as
    the program asks a margin of 1e-6 above each rate), and tier 2 (100 and 300 req/s) shares
    the last seven 1g instances: 2 + 5 of them, f = 1/6 (300 f <= 50)."""
    req = _request([[("a", 139.9)], [("b", 69.9)], [("c", 100.0), ("d", 300.0)]], 4, time_limit=60)
    with pytest.raises(Unservable, match="cannot be served as asked"):
        plan_fleet(req)
    plan = plan_fleet(FleetRequest(req.services, req.profiles, req.fleet, time_limit=60, allow_partial=True))
    served, stats = _outcome(plan, req)
    f = stats["share"]
    assert f == pytest.approx(_largest_f([100.0, 300.0], 7), abs=1e-6) and f == pytest.approx(1 / 6, abs=1e-5)
    assert stats["share_upper_bound"] <= f + 1e-5 and stats["tiers_full"] == 2
    assert served["a"] == 139.9 and served["b"] == 69.9
    assert served["c"] == math.floor(100 * f * 1e6) / 1e6 and served["d"] == math.floor(300 * f * 1e6) / 1e6
    assert plan.gpus_used == 4 and sum(s.size for s in plan.segments) == 28  # the fleet is full


def test_a_cut_tier_shares_in_proportion_and_the_tiers_below_get_nothing():
    """Three GPUs: tier 0 takes one; tier 1 (100 and 300 req/s) shares fourteen 1g instances,
    4 + 10 of them, f just below 1/3; tier 2 gets nothing."""
    req = _request([[("a", 69.9)], [("b", 100.0), ("c", 300.0)], [("e", 10.0)]], 3,
                   time_limit=60, allow_partial=True)
    served, stats = _outcome(plan_fleet(req), req)
    f = stats["share"]
    assert f == pytest.approx(_largest_f([100.0, 300.0], 14), abs=1e-6) and 0.333 < f < 1 / 3
    assert stats["share_upper_bound"] <= f + 1e-5 and stats["tiers_full"] == 1
    assert served == {"a": 69.9, "b": math.floor(100 * f * 1e6) / 1e6, "c": math.floor(300 * f * 1e6) / 1e6,
                      "e": 0.0}


def test_when_even_the_top_tier_does_not_fit_it_is_the_shared_one():
    req = _request([[("a", 100.0), ("b", 100.0)], [("c", 10.0)]], 2, time_limit=60, allow_partial=True)
    served, stats = _outcome(plan_fleet(req), req)
    # 14 1g instances for 200 req/s: 7 each, f = 0.7 (less the margin)
    assert stats["share"] == pytest.approx(_largest_f([100.0, 100.0], 14), abs=1e-6)
    assert stats["tiers_full"] == 0 and served["c"] == 0.0


@settings(max_examples=25, deadline=None)
@given(rates=st.lists(st.floats(1.0, 150.0), min_size=1, max_size=8), gpus=st.integers(1, 6),
       reserve=st.booleans())
def test_the_greedy_packing_is_a_legal_plan_that_serves_its_targets(rates, gpus, reserve):
    """Whatever it places is on free, legal slots and serves every target; it gives up (None)
    only when the fleet's usable slices (7 a GPU; 3 beside the reserved 3g at slot 0, whose
    memory slices leave room for 3g@4 or three 1g only) cannot hold the targets, in 1g steps."""
    res = (Reservation(0, 0, 3),) + ((Reservation(1),) if gpus > 1 else ()) if reserve else ()
    services = tuple(Service(f"m{i}", round(r, 1), 100.0) for i, r in enumerate(rates))
    req = FleetRequest(services, {A100: {s.model: _linear(s.model) for s in services}},
                       Fleet((FleetNode("n", A100, gpus, 1.0, res),)))
    setup = _setup(req)
    demands = _demands(setup, req, {})
    placed = _greedy(req, setup, demands, [1.0] * len(demands))
    usable = 7 * gpus - (4 + (7 if gpus > 1 else 0) if reserve else 0)
    if placed is None:
        assert sum(math.ceil((s.rate * (1 + MARGIN) + MARGIN) / 10) for s in services) > usable
        return
    node = req.fleet.nodes[0]
    for g, start, seg in placed:
        assert not reserved_slots(node, g)[0] & node.type.mask(seg.size, start)
    cap = {s.model: sum(seg.throughput for _, _, seg in placed if seg.model == s.model) for s in services}
    assert all(cap[s.model] >= s.rate for s in services)
    by_gpu: dict[int, list] = {}
    for g, start, seg in placed:
        by_gpu.setdefault(g, []).append((seg.size, start))
    for g, inst in by_gpu.items():
        used = reserved_slots(node, g)[0]
        for size, start in inst:
            assert node.type.legal(size, start) and not used & node.type.mask(size, start)
            used |= node.type.mask(size, start)


def _four_gpus(time_limit: float) -> FleetRequest:
    return _request([[("a", 139.9)], [("b", 69.9)], [("c", 100.0), ("d", 300.0)]], 4,
                    time_limit=time_limit, allow_partial=True)


def test_a_phase_past_the_deadline_is_skipped_and_the_best_plan_by_then_is_returned(monkeypatch):
    """The first repacking solve of the shared tier ends past the call's deadline (it sleeps the
    whole limit): no solve and no greedy packing runs after it (not the share program, the
    bisection nor the final cheapest plan), and the greedy plan found before is returned."""
    from parvagpu.planning import fleet

    req = _four_gpus(0.5)
    log: list[str] = []
    real_solve, real_greedy = fleet.build_and_solve, fleet.greedy

    def solve(*args, **kw):
        sol = real_solve(*args, **kw)
        log.append("solve")
        if log.count("solve") == 2:  # 1: the full plan (proven infeasible); 2: the repacking
            time.sleep(req.time_limit)
            log.append("deadline")
        return sol

    def pack(*args, **kw):
        log.append("greedy")
        return real_greedy(*args, **kw)

    monkeypatch.setattr(fleet, "build_and_solve", solve)
    monkeypatch.setattr(fleet, "greedy", pack)
    plan = plan_fleet(req)
    assert log[-1] == "deadline" and log.count("solve") == 2 and log.count("greedy") > 2
    served, stats = _outcome(plan, req)
    assert served["a"] == 139.9 and served["b"] == 69.9 and stats["tiers_full"] == 2
    assert 0 < stats["share"] < 1 and stats["share_upper_bound"] == 1.0  # nothing proven in time
    assert served["d"] == math.floor(300 * stats["share"] * 1e6) / 1e6


def test_the_bisection_is_skipped_when_a_step_cannot_end_in_time(monkeypatch):
    """A share program that took longer than a bisection step's share of the time left and left a
    gap (as at 1,000 services): no feasibility solve of the bisection runs, more repacking rounds
    do, and the plan keeps the share found."""
    from parvagpu.planning import fleet

    req = _four_gpus(3.0)
    real_max, real_cheapest = fleet._max_share, fleet._cheapest
    gaps: list[float] = []
    found: list[float] = []

    def slow_max(*args, **kw):
        f, _, plan = real_max(*args, **kw)
        time.sleep(0.5)
        found.append(f)
        return f, 1.0, plan  # as if the bound were still open

    def cheapest(request, *args, **kw):
        gaps.append(request.mip_rel_gap)
        return real_cheapest(request, *args, **kw)

    monkeypatch.setattr(fleet, "_max_share", slow_max)
    monkeypatch.setattr(fleet, "_cheapest", cheapest)
    plan = plan_fleet(req)
    _, stats = _outcome(plan, req)
    assert found and 0.99 not in gaps  # the bisection's solves ask any plan (gap 0.99)
    assert gaps.count(fleet._FILL_GAP) >= 1 and stats["share"] >= found[0]
    assert stats["share"] == pytest.approx(1 / 6, abs=1e-5)
