"""Baselines: same profiles and admission rule, their own sharing model, plans the checker accepts."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings

from parvagpu.planning.baselines import plan_whole_gpu
from parvagpu.core.gpus import gpu_type
from parvagpu.core.errors import ParvaError
from parvagpu.core.model import Profile, ProfilePoint, Service
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import STRATEGIES, plan
from parvagpu.inputs.services import load_scenario
from parvagpu.verify import verify

from test_optimizer import workloads

EXPECTED = {
    "mig-only": [2, 3, 5, 7, 13, 17],
    "mps-only": [3, 6, 6, 9, 14, 19],
    "whole-gpu": [6, 11, 11, 11, 24, 26],
}


@pytest.mark.parametrize("strategy", sorted(EXPECTED))
def test_reference_counts_and_rules(example, profiles, a100, strategy):
    got = []
    for k in range(1, 7):
        services = load_scenario(example / "SLO", k, list(profiles))
        p = plan(PlanRequest(services, profiles, a100, 3), strategy)
        assert verify(p, profiles) == []
        assert p.strategy == strategy and p.max_procs == 1
        assert all(s.segment.triplet.procs == 1 for s in p.segments)
        assert p.lower_bound == p.gpus_used  # each solved to proven optimality in its own model
        per_gpu = Counter(s.gpu for s in p.segments)
        if strategy == "mps-only":
            assert max(per_gpu.values()) <= 2
        if strategy == "whole-gpu":
            assert set(per_gpu.values()) == {1} and {s.size for s in p.segments} == {7}
        got.append(p.gpus_used)
    assert got == EXPECTED[strategy]


def test_mig_only_equals_optimal_at_one_process(example, profiles, a100):
    """mig-only is the exact model restricted to one process per instance."""
    for k in (5, 6):
        services = load_scenario(example / "SLO", k, list(profiles))
        assert (
            plan(PlanRequest(services, profiles, a100, 1), "optimal").gpus_used
            == plan(PlanRequest(services, profiles, a100, 5), "mig-only").gpus_used
        )


def test_whole_gpu_needs_a_whole_gpu_point(a100):
    prof = Profile("small", (ProfilePoint(1, 8, 1, 400.0, 0.02), ProfilePoint(7, 8, 1, 900.0, 0.5)))
    with pytest.raises(ParvaError, match="whole-gpu: model small has no admissible one-process"):
        plan_whole_gpu(PlanRequest((Service("small", 100.0, 100.0),), {"small": prof}, a100))


def test_unknown_strategy(profiles, a100):
    with pytest.raises(ParvaError, match="unknown strategy 'best'"):
        plan(PlanRequest((Service("resnet50", 10.0, 200.0),), profiles, a100, 3), "best")
    assert set(STRATEGIES) == {"auto", "optimal", "parva", "mig-only", "mps-only", "whole-gpu"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_property_sharing_models_are_ordered(w):
    """On the 7-slice GPUs every mps-only split has a MIG placement, so each model contains the
    next: optimal <= mig-only <= mps-only <= whole-gpu."""
    gpu, profiles, services, max_procs = w
    counts = {}
    for st in ("optimal", "mig-only", "mps-only", "whole-gpu"):
        try:
            p = plan(PlanRequest(services, profiles, gpu, max_procs, time_limit=30), st)
        except ParvaError as exc:
            assert st == "whole-gpu" and "whole-gpu" in str(exc)
            continue
        assert verify(p, profiles) == [], st
        assert p.lower_bound is not None and p.lower_bound <= p.gpus_used
        counts[st] = p.gpus_used
    assert counts["optimal"] <= counts["mig-only"]
    if gpu.compute_slices == 7:
        assert counts["mig-only"] <= counts["mps-only"]
    if "whole-gpu" in counts:
        assert counts["mps-only"] <= counts["whole-gpu"]


def test_a30_baselines(example, profiles):
    a30 = gpu_type("A30")
    services = load_scenario(example / "SLO", 3, list(profiles))
    for st in ("mig-only", "mps-only"):
        p = plan(PlanRequest(services, profiles, a30, 3), st)
        assert verify(p, profiles) == [] and {s.size for s in p.segments} <= {1, 2, 4}
