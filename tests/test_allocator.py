"""Segment Allocator: best fit, legal slots, and the fixes of the reference's defects."""

from __future__ import annotations

import pytest

from parvagpu.planning.allocator import AllocatorPolicy, _Cluster, _valuation, allocate
from parvagpu.planning.configurator import configure, configure_all
from parvagpu.core.model import Segment, Triplet
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest
from parvagpu.inputs.services import load_scenario
from parvagpu.verify import verify

from helpers import profile, service


def _seg(model, size, thr=10.0):
    return Segment(model, Triplet(size, 1, 1, thr, 1.0))


def test_fix_overlapping_labels(example, profiles, a100):
    """The reference labels a 1g at slot 6 next to a 3g at slot 4 (and 2g@0 with 1g@1 in SLO2):
    overlapping instances that cannot be created. Every placement here is legal and disjoint."""
    for k in range(1, 7):
        services = load_scenario(example / "SLO", k, list(profiles))
        plan = plan_parva(PlanRequest(services, profiles, a100, max_procs=3))
        assert verify(plan, profiles) == []
        for segs in plan.by_gpu().values():
            used = 0
            for s in segs:
                assert a100.legal(s.size, s.start)
                assert not used & a100.mask(s.size, s.start)
                used |= a100.mask(s.size, s.start)


def test_fix_slot_minus_one(a100):
    """The reference gives a 2g slot -1 when 1g's hold its preferred starts 0, 4 and 2 while two
    slices are free. Here the GPU is re-packed and both 2g's fit on the one GPU."""
    c = _Cluster(a100, AllocatorPolicy())
    c.place(_seg("m", 2))  # opens GPU 0; its layout is then set to the reference's by hand
    g = c.gpus[0]
    c._unbucket(g)
    g.slots, g.used, g.usage = {}, 0, 0
    for size, start in ((1, 0), (1, 4), (1, 6), (2, 2)):  # its preferred starts
        g.slots[start] = _seg("m", size)
        g.used |= a100.mask(size, start)
        g.usage += size
    c._bucket(g)
    assert sorted((s.size, st) for st, s in g.slots.items()) == [(1, 0), (1, 4), (1, 6), (2, 2)]
    c.place(_seg("m", 2))
    assert len(c.gpus) == 1
    g = c.gpus[0]
    assert g.usage == 7
    used = 0
    for st, s in g.slots.items():
        assert a100.legal(s.size, st) and not used & a100.mask(s.size, st)
        used |= a100.mask(s.size, st)


def test_small_instances_keep_larger_ones_placeable(a100):
    """1g instances fill a GPU from slot 6 down, so a 4g@0 (or 3g@0) still fits beside three of
    them; the reference's 0, 4, 6 leaves room for nothing above 2g. Same GPU count either way."""
    c = _Cluster(a100, AllocatorPolicy())
    for _ in range(3):
        c.place(_seg("m", 1))
    assert sorted(c.gpus[0].slots) == [4, 5, 6]
    c.place(_seg("m", 4))
    assert len(c.gpus) == 1 and sorted(c.gpus[0].slots) == [0, 4, 5, 6]


def test_fix_no_dropped_segment_without_small_triplets(a100):
    """A model with no admissible 1g or 2g triplet on a lightly used GPU: the reference removes
    its segment in the optimization pass and never replaces it. Here it is kept."""
    p = {"big": profile("big", [(3, 8, 1, 500.0, 0.020), (1, 8, 1, 50.0, 0.500)])}
    plan = plan_parva(PlanRequest((service("big", 400, 100),), p, a100, max_procs=1))
    assert [(s.size, s.model) for s in plan.segments] == [(3, "big")]
    assert verify(plan, p) == []


def test_fix_no_fixed_gpu_array(a100):
    """The reference has 2000 GPUs and silently drops what does not fit; here GPUs are unbounded."""
    p = {"huge": profile("huge", [(7, 64, 1, 100.0, 0.010)])}
    plan = plan_parva(PlanRequest((service("huge", 2100 * 100 - 1, 1000),), p, a100, max_procs=1))
    assert plan.gpus_used == 2100
    assert plan.capacity("huge") >= 2100 * 100 - 1


def test_fix_valuation_never_undercounts(a100):
    """The reference credits a removed segment by size (optimal or last triplet's throughput), so a
    2g piece of a model whose last segment is 1g would be credited as a 1g."""
    p = profile(
        "m",
        [(1, 1, 1, 100.0, 0.010), (2, 1, 1, 250.0, 0.010), (3, 1, 1, 900.0, 0.010)],
    )
    cfg = configure(service("m", 950, 1000), p, a100, 1)
    assert (cfg.optimal.size, cfg.last.size) == (3, 1)
    two = Segment("m", cfg.best(2))
    assert _valuation(two, cfg) == 250.0


def test_gpus_numbered_contiguously(example, profiles, a100):
    services = load_scenario(example / "SLO", 6, list(profiles))
    plan = plan_parva(PlanRequest(services, profiles, a100, max_procs=3))
    assert sorted({s.gpu for s in plan.segments}) == list(range(plan.gpus_used))


def test_best_fit_prefers_fullest_gpu_then_lowest_index(a100):
    c = _Cluster(a100, AllocatorPolicy())
    c.place(_seg("a", 4))  # gpu 0: 3 free
    c.place(_seg("b", 3))  # fits gpu 0 exactly
    c.place(_seg("c", 2))  # new gpu 1
    c.place(_seg("d", 3))  # gpu 1 (5 free) has room: 3g at 4
    c.place(_seg("e", 2))  # gpu 1 has 2 free: exact fit
    assert [sorted(s.model for s in g.slots.values()) for g in c.gpus] == [["a", "b"], ["c", "d", "e"]]


def test_one_3g_per_gpu_policy(a100):
    c = _Cluster(a100, AllocatorPolicy())
    c.place(_seg("a", 3))
    c.place(_seg("b", 3))
    assert len(c.gpus) == 2
    c = _Cluster(a100, AllocatorPolicy(single_instance_sizes=frozenset()))
    c.place(_seg("a", 3))
    c.place(_seg("b", 3))
    assert len(c.gpus) == 1
    assert sorted(c.gpus[0].slots) == [0, 4]


def test_optimization_pass_saves_gpus(example, profiles, a100):
    services = load_scenario(example / "SLO", 5, list(profiles))
    configs = configure_all(PlanRequest(services, profiles, a100, 3))
    without = allocate(configs, a100, AllocatorPolicy(optimize=False))
    with_opt = allocate(configs, a100)
    assert len({s.gpu for s in without.segments}) == 22
    assert len({s.gpu for s in with_opt.segments}) == 13


@pytest.mark.parametrize("name", ["A30", "H100-80GB", "A100-40GB", "H200"])
def test_other_gpu_types(example, profiles, name):
    from parvagpu.core.gpus import gpu_type

    gpu = gpu_type(name)
    services = load_scenario(example / "SLO", 3, list(profiles))
    plan = plan_parva(PlanRequest(services, profiles, gpu, max_procs=3))
    assert plan.gpu_type == gpu.name
    assert verify(plan, profiles) == []
