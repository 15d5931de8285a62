"""The simulator against closed forms, batching limits, admission, and the reference scenarios."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.core.errors import ParvaError
from parvagpu.planning.heuristic import plan_parva as make_plan
from parvagpu.planning.request import PlanRequest
from parvagpu.serving.policy import SegmentSpec
from parvagpu.serving.simulator import (poisson_arrivals, service_times, simulate, simulate_segment, simulate_spilling,
                                       within_slo)
from parvagpu.inputs.services import load_scenario

from helpers import profile


def test_md1_mean_wait_matches_closed_form():
    """Batch 1, one server, deterministic service: M/D/1, mean wait = rho / (2 mu (1 - rho))."""
    mu, lam = 100.0, 70.0
    a = poisson_arrivals(np.random.default_rng(1), lam, 3000.0)
    r = simulate_segment(a, procs=1, batch=1, wait_s=0.0, service_s=[1 / mu])
    wq = float(np.mean(r.latencies_s)) - 1 / mu
    rho = lam / mu
    assert wq == pytest.approx(rho / (2 * mu * (1 - rho)), rel=0.05)
    assert r.batches == {1: a.size}


@pytest.mark.parametrize("rho", [0.3, 0.9])
def test_md1_at_low_and_high_load(rho):
    mu = 50.0
    a = poisson_arrivals(np.random.default_rng(7), rho * mu, 4000.0)
    r = simulate_segment(a, 1, 1, 0.0, [1 / mu])
    wq = float(np.mean(r.latencies_s)) - 1 / mu
    assert wq == pytest.approx(rho / (2 * mu * (1 - rho)), rel=0.1)


def test_poisson_arrivals_rate_and_seed():
    a = poisson_arrivals(np.random.default_rng(3), 200.0, 50.0)
    assert a.size == pytest.approx(10_000, rel=0.05)
    assert np.all(np.diff(a) > 0) and a[-1] < 50.0
    b = poisson_arrivals(np.random.default_rng(3), 200.0, 50.0)
    assert np.array_equal(a, b)


def test_batches_never_exceed_batch_size_and_fill_under_load():
    a = poisson_arrivals(np.random.default_rng(2), 900.0, 20.0)
    r = simulate_segment(a, procs=2, batch=8, wait_s=0.005, service_s=[0.015] * 8)
    assert max(r.batches) <= 8
    assert sum(k * c for k, c in r.batches.items()) == a.size
    # capacity 2 * 8 / 15 ms = 1067/s at 900/s offered: nearly every batch is full
    full = r.batches.get(8, 0) / sum(r.batches.values())
    assert full > 0.8


def test_light_load_waits_at_most_the_timeout_then_runs_partial_batch():
    a = np.array([0.0, 10.0, 20.0])  # far apart: each alone
    r = simulate_segment(a, 1, 4, wait_s=0.03, service_s=[0.01, 0.012, 0.014, 0.016])
    assert r.batches == {1: 3}
    assert np.allclose(r.latencies_s, 0.03 + 0.01)


def test_batch_closes_as_soon_as_full():
    a = np.array([0.0, 0.001, 0.002, 0.003])
    r = simulate_segment(a, 1, 4, wait_s=1.0, service_s=[0.1] * 4)
    assert r.batches == {4: 1}
    assert np.allclose(r.latencies_s, 0.003 + 0.1 - a)


def test_admission_bounds_latency_under_overload():
    """At 2x capacity an unbounded queue grows without end; the in-flight limit keeps every admitted
    request within (depth * batch latency + wait) and rejects the excess."""
    lat, batch, procs, wait = 0.02, 4, 2, 0.002
    cap = procs * batch / lat  # 400/s
    a = poisson_arrivals(np.random.default_rng(5), 2 * cap, 20.0)
    depth = 3
    bounded = simulate_segment(a, procs, batch, wait, [lat] * batch, limit=depth * batch * procs)
    served = bounded.latencies_s[~np.isnan(bounded.latencies_s)]
    assert served.max() <= depth * lat + wait + 1e-9
    rejected = np.isnan(bounded.latencies_s).sum()
    assert rejected / a.size == pytest.approx(0.5, abs=0.05)
    unbounded = simulate_segment(a, procs, batch, wait, [lat] * batch)
    assert not np.isnan(unbounded.latencies_s).any()
    assert np.nanmax(unbounded.latencies_s) > 5.0  # seconds: grows with the run


@pytest.mark.parametrize("rate,procs,batch,wait,limit", [
    (900, 2, 8, 0.005, 32), (60, 1, 2, 0.0036, 4), (300, 1, 1, 0.0, 3), (1500, 3, 4, 0.002, 6),
])
def test_arrival_by_arrival_segment_matches_the_segment_simulation(rate, procs, batch, wait, limit):
    """The spill-over path's segment (batches formed only once they are known to have closed) gives
    exactly `simulate_segment`'s latencies, batches and rejections, overload included."""
    svc = [0.004 + 0.0015 * k for k in range(batch)]
    a = poisson_arrivals(np.random.default_rng(5), rate, 10.0)
    ref = simulate_segment(a, procs, batch, wait, svc, limit)
    (res,), rejected = simulate_spilling(a, [(procs, batch, wait, svc, limit)], [1.0])
    assert rejected == [int(np.isnan(ref.latencies_s).sum())]
    assert np.array_equal(ref.latencies_s[~np.isnan(ref.latencies_s)], res.latencies_s)
    assert ref.batches == res.batches


def test_a_full_segment_spills_over_as_the_ingress_does():
    """Two segments, the small one (limit 1) overloaded by its share: on its own it rejects; with
    the ingress's spill-over its excess goes to the big one, and every request is accounted for."""
    a = poisson_arrivals(np.random.default_rng(3), 300.0, 20.0)
    small, big = (1, 1, 0.0, [0.01], 1), (2, 4, 0.002, [0.01] * 4, 16)
    alone = simulate_segment(a[1::2], *small)  # share 1:1, so every other request is its
    assert np.isnan(alone.latencies_s).sum() > 300
    runs, rejected = simulate_spilling(a, [small, big], [1.0, 1.0])
    assert sum(rejected) < 10
    assert sum(r.latencies_s.size for r in runs) + sum(rejected) == a.size
    assert runs[1].latencies_s.size > a.size // 2  # the big one took the spills


def test_simulate_with_spill_over_rejects_only_beyond_capacity(profiles):
    """A model over five segments: at 0.9 of its capacity a full segment's request spills over to
    one with room (on their own the segments would reject about 1 %); at 1.3x the rejections are
    the excess (0.23 of the requests), counted once, and every request is accounted for."""
    services = (Service("resnet50", 900.0, 60.0),)
    plan = make_plan(PlanRequest(services, profiles, gpu_type("A100-80GB")))
    assert len(plan.segments) > 1
    capacity = sum(s.segment.throughput for s in plan.segments)
    for load, share in ((0.9, 0.0), (1.3, 0.3 / 1.3)):
        r = simulate(plan, duration_s=3, seed=1, profiles=profiles, rate_scale=load * capacity / 900.0)
        st = r.stats[0]
        assert st.lost == 0 and st.ok + st.rejected == st.sent
        assert sum(row["rejected"] for row in r.segments) == st.rejected
        assert st.rejected / st.sent == pytest.approx(share, abs=0.003 if load < 1 else 0.02)


def test_within_slo_counts_what_simulate_counts(profiles):
    """The trace replay's serving model takes `within_slo` for `simulate`'s stats: the same counts
    for one segment and for several, below and beyond capacity (spills and rejections)."""
    for rate, slo in ((40.0, 200.0), (900.0, 60.0)):
        plan = make_plan(PlanRequest((Service("resnet50", rate, slo),), profiles, gpu_type("A100-80GB")))
        for load in (0.5, 0.95, 1.3, 3.0):
            scaled = replace(plan, services=(Service("resnet50", rate * load, slo),))
            st = simulate(scaled, duration_s=400 / (rate * load), seed=2, profiles=profiles).stats[0]
            assert within_slo(scaled, 400 / (rate * load), 2, profiles) == (st.within_slo, st.sent)


def _seg(batch=16, procs=1, size=1, lat=40.0):
    return SegmentSpec("m-n0-g0-s0", "m", 0, 0, 0, size, batch, procs, 100.0, lat, 50.0, 0.0, 10)


def test_service_times_interpolate_profile_and_pin_own_batch():
    prof = profile("m", [(1, 1, 1, 100, 0.010), (1, 4, 1, 200, 0.020), (1, 16, 1, 300, 0.050),
                         (2, 8, 1, 500, 0.016)])
    st = service_times(_seg(batch=16, lat=40.0), prof)
    assert len(st) == 16
    assert st[0] == pytest.approx(0.010) and st[3] == pytest.approx(0.020)
    assert st[1] == pytest.approx(0.010 + 0.010 / 3)
    assert st[15] == pytest.approx(0.040)  # the plan's own latency wins at its batch
    assert all(x <= y for x, y in zip(st, st[1:]))
    assert service_times(_seg(batch=4, lat=25.0)) == [0.025] * 4  # no profile: full batch time


def test_simulate_is_deterministic_and_validates(profiles):
    services = (Service("resnet50", 300.0, 200.0), Service("bert", 20.0, 6000.0))
    plan = make_plan(PlanRequest(services, profiles, gpu_type("A100-80GB")))
    r1 = simulate(plan, duration_s=5, seed=4, profiles=profiles)
    r2 = simulate(plan, duration_s=5, seed=4, profiles=profiles)
    assert [s.to_dict() for s in r1.stats] == [s.to_dict() for s in r2.stats]
    for s in r1.stats:
        assert s.lost == 0 and s.sent > 0
        assert s.p99_ms <= s.slo_ms
    with pytest.raises(ParvaError):
        simulate(plan, duration_s=0)


def test_reference_scenario_6_simulates_in_seconds(example, profiles):
    services = load_scenario(example / "SLO", 6, list(profiles))
    plan = make_plan(PlanRequest(services, profiles, gpu_type("A100-80GB")))
    t0 = time.perf_counter()
    r = simulate(plan, duration_s=30, seed=0, profiles=profiles)
    elapsed = time.perf_counter() - t0
    assert r.requests > 1_000_000
    assert elapsed < 15.0
    assert {s.model for s in r.stats} == {s.model for s in services}
    for s in r.stats:
        assert s.lost == 0
        assert s.p99_ms <= s.slo_ms  # admission keeps admitted requests within the SLO
        assert s.attainment > 0.98


def test_plan_without_segment_latency_needs_profiles():
    placed = (PlacedSegment(Segment("m", Triplet(1, 2, 1, 10.0, 0.0)), 0, 0),)
    plan = DeploymentMap("A100-80GB", "parva", 3, 8, placed, (Service("m", 5.0, 100.0),))
    with pytest.raises(ParvaError, match="profiles"):
        simulate(plan, duration_s=1)
