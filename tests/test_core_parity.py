"""The paper's heuristic reproduces the reference scheduler's results on the SC'24 data."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from parvagpu.planning.configurator import configure
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest
from parvagpu.inputs.services import load_scenario
from parvagpu.verify import verify

GPUS = {3: [2, 3, 5, 7, 13, 17], 5: [2, 3, 5, 7, 13, 16]}
GPUS_BEFORE_OPTIMIZATION = {3: [2, 3, 8, 11, 22, 29], 5: [2, 3, 8, 11, 20, 26]}


def _plan(example, profiles, a100, k, procs, truncate=False):
    services = load_scenario(example / "SLO", k, list(profiles), truncate=truncate)
    return plan_parva(PlanRequest(services, profiles, a100, max_procs=procs))


@pytest.mark.parametrize("procs", [3, 5])
@pytest.mark.parametrize("truncate", [False, True])
def test_gpu_counts_match_reference(example, profiles, a100, procs, truncate):
    plans = [_plan(example, profiles, a100, k, procs, truncate) for k in range(1, 7)]
    assert [p.gpus_used for p in plans] == GPUS[procs]
    before = [int(dict(p.stats)["gpus_before_optimization"]) for p in plans]
    assert before == GPUS_BEFORE_OPTIMIZATION[procs]
    for p in plans:
        assert verify(p, profiles) == []


@pytest.mark.parametrize("k", range(1, 7))
def test_segments_equal_shipped_maps(example, profiles, a100, reference, k):
    """With up to 5 processes and integer SLOs (as the reference parses them), every model gets
    exactly the shipped map's segments, and every GPU the same instance multiset."""
    plan = _plan(example, profiles, a100, k, 5, truncate=True)
    path = reference / "deployment" / f"SLO{k}" / f"SLO{k}_ParvaGPU_deploy.csv"
    rows = list(csv.DictReader(path.open()))
    shipped = Counter(
        (r["Model"], int(r["Instance size"]), int(r["Batch size"]), int(r["Num proc"])) for r in rows
    )
    ours = Counter(
        (s.model, s.size, s.segment.triplet.batch, s.segment.triplet.procs) for s in plan.segments
    )
    assert ours == shipped
    shipped_gpus = Counter()
    for r in rows:
        shipped_gpus[(int(r["Num instance"]) * 8 + int(r["Num GPU"]), r["Model"], int(r["Instance size"]))] += 1
    ours_gpus = Counter((s.gpu, s.model, s.size) for s in plan.segments)
    assert ours_gpus == shipped_gpus


def test_scenario3_layout_p3(example, profiles, a100):
    """algorithm.md §7.3: SLO3 at up to 3 processes, per GPU (size multisets and models)."""
    plan = _plan(example, profiles, a100, 3, 3)
    got = {
        g: sorted((s.model, s.size) for s in segs) for g, segs in plan.by_gpu().items()
    }
    assert got == {
        0: sorted([("densenet121", 3), ("mobilenetv2", 2), ("inceptionv3", 2)]),
        1: sorted([("densenet169", 3), ("vgg19", 2), ("bert", 1), ("resnet50", 1)]),
        2: sorted([("densenet201", 3), ("vgg16", 2), ("vgg19", 1), ("vgg19", 1)]),
        3: sorted([("resnet101", 3), ("resnet50", 2), ("vgg16", 1), ("vgg16", 1)]),
        4: sorted([("resnet152", 3), ("resnet50", 1), ("resnet50", 1)]),
    }
    # Real placements: the 3g sits at slot 4 and nothing overlaps it (the reference labels 1g@6).
    for segs in plan.by_gpu().values():
        assert [s.start for s in segs if s.size == 3] == [4]
        assert all(s.start + (1 if s.size == 1 else 2) <= 4 for s in segs if s.size < 3)


def test_scenario_shapes_p3(example, profiles, a100):
    """algorithm.md §7.1: GPCs used, idle GPCs and segment sizes per scenario."""
    expected = {
        1: (10, 4, (3, 2, 1, 0, 0)),
        2: (20, 1, (3, 7, 1, 0, 0)),
        3: (33, 2, (8, 5, 5, 0, 0)),
        4: (48, 1, (11, 8, 7, 0, 0)),
        5: (89, 2, (28, 11, 13, 0, 0)),
        6: (114, 5, (44, 7, 14, 0, 2)),
    }
    for k, (gpcs, idle, sizes) in expected.items():
        plan = _plan(example, profiles, a100, k, 3)
        count = Counter(s.size for s in plan.segments)
        assert plan.gpcs_used() == gpcs
        assert plan.gpus_used * 7 - plan.gpcs_used() == idle
        assert tuple(count[s] for s in (1, 2, 3, 4, 7)) == sizes


def test_worked_examples(example, profiles, a100):
    """algorithm.md §2.3 (P_MAX = 3)."""
    s3 = {s.model: s for s in load_scenario(example / "SLO", 3, list(profiles))}
    cfg = configure(s3["resnet50"], profiles["resnet50"], a100, 3)
    assert (cfg.optimal.size, cfg.optimal.batch, cfg.optimal.procs) == (3, 32, 2)
    assert cfg.optimal.throughput == pytest.approx(1369.716)
    assert cfg.n_optimal == 1
    assert (cfg.last.size, cfg.last.batch, cfg.last.procs) == (1, 16, 1)
    assert cfg.last.throughput == pytest.approx(385.7, abs=0.1)

    cfg = configure(s3["densenet121"], profiles["densenet121"], a100, 3)
    assert (cfg.optimal.size, cfg.optimal.batch, cfg.optimal.procs, cfg.n_optimal) == (3, 16, 3, 0)
    assert cfg.last == cfg.optimal

    s6 = {s.model: s for s in load_scenario(example / "SLO", 6, list(profiles))}
    cfg = configure(s6["densenet169"], profiles["densenet169"], a100, 3)
    assert (cfg.optimal.size, cfg.optimal.batch, cfg.optimal.procs, cfg.n_optimal) == (7, 128, 2, 1)
    assert cfg.last.size == 7
