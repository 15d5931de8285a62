"""Property tests: every plan, on random profiles and services, passes the independent checker."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parvagpu.core.gpus import GPU_TYPES
from parvagpu.core.model import Profile, ProfilePoint, Service
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest
from parvagpu.verify import verify

BATCHES = (1, 2, 4, 8, 16, 32, 64)


@st.composite
def workloads(draw):
    gpu = GPU_TYPES[draw(st.sampled_from(sorted(GPU_TYPES)))]
    max_procs = draw(st.integers(1, 5))
    n_models = draw(st.integers(1, 6))
    profiles, services = {}, []
    for i in range(n_models):
        model = f"m{i}"
        speed = draw(st.floats(50, 2000))  # items/s of one process on one compute slice
        points = []
        for size in gpu.sizes:
            for batch in draw(st.lists(st.sampled_from(BATCHES), min_size=1, max_size=4, unique=True)):
                # (size, batch) pairs are unique, so every (size, batch, procs) point is too
                for procs in range(1, draw(st.integers(1, 4)) + 1):
                    if draw(st.integers(0, 9)) == 0:
                        points.append(ProfilePoint(size, batch, procs, 0.0, 0.0))  # OOM row
                        continue
                    noise = draw(st.floats(0.6, 1.4))
                    per_proc = speed * size ** 0.8 * noise / procs ** 0.7 * min(batch, 16) ** 0.3
                    latency = round(batch / per_proc, 3) or 0.001
                    points.append(ProfilePoint(size, batch, procs, round(batch / latency, 3), latency))
        profiles[model] = Profile(model, tuple(points))
        fastest = min(
            (p.latency_s for p in points if p.throughput > 0 and p.procs <= max_procs), default=None
        )
        if fastest is None:
            points = [p for p in points if (p.size, p.batch, p.procs) != (gpu.sizes[0], 1, 1)]
            profiles[model] = Profile(model, tuple(points) + (ProfilePoint(gpu.sizes[0], 1, 1, 100.0, 0.01),))
            fastest = 0.01
        slo = fastest * 1000 / 0.45 * draw(st.floats(1.01, 6.0))
        rate = draw(st.floats(1, 20000))
        services.append(Service(model, round(rate, 2), round(slo, 2) + 0.01))
    return gpu, profiles, tuple(services), max_procs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_every_random_plan_verifies(w):
    gpu, profiles, services, procs = w
    plan = plan_parva(PlanRequest(services, profiles, gpu, max_procs=procs))
    assert verify(plan, profiles) == []
    for svc in services:
        assert plan.capacity(svc.model) >= svc.rate
    assert sorted({s.gpu for s in plan.segments}) == list(range(plan.gpus_used))
    # Lower bound from compute slices alone: a plan cannot beat the total size it places.
    assert plan.gpus_used * gpu.compute_slices >= plan.gpcs_used()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["bert", "densenet121", "densenet169", "densenet201", "inceptionv3", "mobilenetv2",
                 "resnet101", "resnet152", "resnet50", "vgg16", "vgg19"]
            ),
            st.floats(1, 8000),
            st.floats(150, 7000),
        ),
        min_size=1, max_size=11, unique_by=lambda t: t[0],
    ),
    st.integers(1, 5),
)
def test_random_services_on_reference_profiles(profiles, entries, procs):
    services = tuple(Service(m, round(r, 1), round(lat, 1)) for m, r, lat in entries)
    plan = plan_parva(PlanRequest(services, profiles, GPU_TYPES["A100-80GB"], max_procs=procs))
    assert verify(plan, profiles) == []
    # Deterministic: the same inputs give the same plan.
    assert plan_parva(PlanRequest(services, profiles, GPU_TYPES["A100-80GB"], max_procs=procs)) == plan
