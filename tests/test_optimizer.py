"""The exact optimizer and the default `auto` strategy: reference GPU counts proven optimal, every
plan verified, never worse than the heuristic, honest bounds, determinism, all GPU types."""

from __future__ import annotations

import json
import subprocess
import sys
from fractions import Fraction
from itertools import product
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from parvagpu.planning import optimizer
from parvagpu.planning.optimizer import blocks as opt_blocks, covers as opt_covers
from parvagpu.planning.optimizer.blocks import build_blocks
from parvagpu.cli import app
from parvagpu.contract.plan_json import plan_from_dict, plan_to_dict, plan_to_json
from parvagpu.core.gpus import GPU_TYPES, gpu_type
from parvagpu.core.errors import ParvaError, Unservable
from parvagpu.core.model import Profile, ProfilePoint, Service
from parvagpu.planning.heuristic import plan_parva
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan
from parvagpu.inputs.services import load_scenario
from parvagpu.verify import verify

OPTIMUM = {3: [2, 3, 5, 7, 12, 16], 5: [2, 3, 5, 7, 12, 15]}
PARVA = {3: [2, 3, 5, 7, 13, 17], 5: [2, 3, 5, 7, 13, 16]}


def scenario(example, profiles, k):
    return load_scenario(example / "SLO", k, list(profiles))


@pytest.mark.parametrize("procs", [3, 5])
@pytest.mark.parametrize("strategy", ["auto", "optimal"])
def test_reference_scenarios_proven_optimal(example, profiles, a100, procs, strategy):
    got = []
    for k in range(1, 7):
        p = plan(PlanRequest(scenario(example, profiles, k), profiles, a100, procs), strategy)
        assert verify(p, profiles) == []
        assert p.strategy == strategy
        assert p.lower_bound == p.gpus_used, f"SLO{k}: not proven optimal"
        assert dict(p.stats)["proven_optimal"] == 1.0
        got.append(p.gpus_used)
    assert got == OPTIMUM[procs]


@pytest.mark.parametrize("procs", [3, 5])
def test_default_cli_plan_is_auto_and_optimal(procs):
    runner = CliRunner()
    got = []
    for k in range(1, 7):
        r = runner.invoke(app, ["plan", "--max-procs", str(procs), "-s", str(k), "--format", "json"])
        assert r.exit_code == 0, r.output
        data = json.loads(r.stdout)
        assert data["strategy"] == "auto"
        assert data["lower_bound"] == data["gpus_used"] and data["gap"] == 0.0
        plan_map, stated = plan_from_dict(data)
        assert stated == data["gpus_used"]
        got.append(data["gpus_used"])
    assert got == OPTIMUM[procs]


def test_auto_beats_parva_where_the_heuristic_is_not_optimal(example, profiles, a100):
    for k, procs in ((5, 3), (6, 3), (6, 5)):
        services = scenario(example, profiles, k)
        heur = plan_parva(PlanRequest(services, profiles, a100, procs))
        auto = plan(PlanRequest(services, profiles, a100, procs), "auto")
        assert heur.gpus_used == PARVA[procs][k - 1]
        assert auto.gpus_used == heur.gpus_used - 1
        stats = dict(auto.stats)
        assert stats["heuristic_gpus"] == heur.gpus_used and stats["from_optimizer"] == 1.0


def test_auto_keeps_the_heuristic_on_a_full_tie(example, profiles, a100):
    # SLO1: both use 2 GPUs and 10 GPCs, so the heuristic's plan is kept, with the bound.
    services = scenario(example, profiles, 1)
    heur = plan_parva(PlanRequest(services, profiles, a100, 3))
    auto = plan(PlanRequest(services, profiles, a100, 3), "auto")
    assert auto.segments == heur.segments
    assert auto.lower_bound == 2 and dict(auto.stats)["from_optimizer"] == 0.0


def test_json_and_table_report_the_bound(example, profiles, a100):
    p = plan(PlanRequest(scenario(example, profiles, 6), profiles, a100, 3), "optimal")
    data = plan_to_dict(p)
    assert data["lower_bound"] == 16 and isinstance(data["lower_bound"], int) and data["gap"] == 0.0
    r = CliRunner().invoke(app, ["plan", "-s", "6", "--format", "table"])
    assert r.exit_code == 0 and "proven lower bound" in r.stdout and "16 (gap 0.0%)" in r.stdout
    r = CliRunner().invoke(app, ["plan", "-s", "6", "--strategy", "parva", "--format", "table"])
    assert r.exit_code == 0 and "--strategy auto" in r.stdout


def test_deterministic(example, profiles, a100):
    services = scenario(example, profiles, 6)
    a = plan_to_json(plan(PlanRequest(services, profiles, a100, 3), "optimal"))
    b = plan_to_json(plan(PlanRequest(services, profiles, a100, 3), "optimal"))
    assert a == b


def test_cover_and_direct_forms_agree(example, profiles, a100, monkeypatch):
    """The per-model cover variables and the direct y[m,s] form are the same program."""
    services = scenario(example, profiles, 5)
    with_covers = optimizer.solve(PlanRequest(services, profiles, a100, 3))
    monkeypatch.setattr(opt_covers, "MAX_COVER_GRID", 0)  # every block falls back to y
    blocks = build_blocks(PlanRequest(services, profiles, a100, 3), optimizer.mig_columns(a100))
    assert all(b.covers is None for b in blocks)
    direct = optimizer.solve(PlanRequest(services, profiles, a100, 3))
    assert with_covers.optimal and direct.optimal
    assert with_covers.plan.gpus_used == direct.plan.gpus_used == 12
    assert verify(direct.plan, profiles) == []


def test_cover_budget_drops_the_longest_lists(example, profiles, a100, monkeypatch):
    services = scenario(example, profiles, 6)
    cols = optimizer.mig_columns(a100)
    full = build_blocks(PlanRequest(services, profiles, a100, 3), cols)
    counts = sorted(len(b.covers) for b in full)
    monkeypatch.setattr(opt_blocks, "MAX_COVERS", sum(counts) - 1)
    capped = build_blocks(PlanRequest(services, profiles, a100, 3), cols)
    assert sum(b.covers is None for b in capped) >= 1
    assert sum(len(b.covers) for b in capped if b.covers is not None) <= sum(counts) - 1
    res = optimizer.solve(PlanRequest(services, profiles, a100, 3))
    assert res.optimal and res.plan.gpus_used == 16 and verify(res.plan, profiles) == []


def test_columns_are_the_maximal_legal_layouts():
    a100 = gpu_type("A100-80GB")
    cols = optimizer.mig_columns(a100)
    counts = {c.counts for c in cols}
    assert len(cols) == 12
    assert (0, 0, 2, 0, 0) in counts  # 3g+3g, which the heuristic never builds
    assert (7, 0, 0, 0, 0) in counts and (0, 0, 0, 0, 1) in counts
    for gpu in GPU_TYPES.values():
        layouts = set(gpu.layouts())
        for c in optimizer.mig_columns(gpu):
            assert tuple(sorted(c.placements)) in layouts
            assert c.counts == tuple(sum(1 for s, _ in c.placements if s == z) for z in gpu.sizes)
    a30 = optimizer.mig_columns(gpu_type("A30"))
    assert {c.counts for c in a30} == {(4, 0, 0), (2, 1, 0), (0, 2, 0), (0, 0, 1)}


def test_mps_columns_have_at_most_two_partitions():
    for gpu in GPU_TYPES.values():
        for c in optimizer.mps_columns(gpu, 2):
            assert 1 <= sum(c.counts) <= 2
            assert sum(s * n for s, n in zip(gpu.sizes, c.counts)) <= gpu.compute_slices


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(1, 3000),
    ts=st.lists(st.floats(20, 2000), min_size=1, max_size=3, unique=True),
)
def test_minimal_covers_match_brute_force(rate, ts):
    rate, ts = round(rate, 2), [round(t, 3) for t in ts]
    got = {tuple(int(v) for v in row) for row in optimizer.minimal_covers(rate, ts)}
    need = Fraction(rate)
    ft = [Fraction(t) for t in ts]
    ranges = [range(int(need / t) + 2) for t in ft]
    want = set()
    for vec in product(*ranges):
        total = sum(n * t for n, t in zip(vec, ft))
        if total >= need and all(n == 0 or total - t < need for n, t in zip(vec, ft)):
            want.add(vec)
    assert got == want


def test_identical_services_share_one_block(example, profiles, a100):
    base = profiles["resnet50"]
    # Distinct objects with equal content (as distinct files with the same rows load): one block.
    profs = {f"r{i}": Profile(f"r{i}", tuple(list(base.points))) for i in range(6)}
    assert len({id(p.points) for p in profs.values()}) == 6
    services = tuple(Service(f"r{i}", 900.0, 150.0) for i in range(6))
    blocks = build_blocks(PlanRequest(services, profs, a100, 3), optimizer.mig_columns(a100))
    assert len(blocks) == 1 and len(blocks[0].services) == 6
    res = optimizer.solve(PlanRequest(services, profs, a100, 3))
    assert res.optimal and verify(res.plan, profs) == []
    # the same answer as six distinct services (a rate 1e-9 apart keeps them apart)
    apart = tuple(Service(f"r{i}", 900.0 + i * 1e-9, 150.0) for i in range(6))
    assert optimizer.solve(PlanRequest(apart, profs, a100, 3)).plan.gpus_used == res.plan.gpus_used


@pytest.mark.parametrize("gpu_name", sorted(GPU_TYPES))
def test_every_gpu_type(example, profiles, gpu_name):
    gpu = gpu_type(gpu_name)
    services = scenario(example, profiles, 3)
    heur = plan_parva(PlanRequest(services, profiles, gpu, 3))
    res = optimizer.solve(PlanRequest(services, profiles, gpu, 3))
    assert res.optimal
    assert verify(res.plan, profiles) == []
    assert res.lower_bound <= res.plan.gpus_used <= heur.gpus_used
    sizes = {s.size for s in res.plan.segments}
    assert sizes <= set(gpu.sizes)


def test_time_limit_falls_back_to_the_heuristic(example, profiles, a100):
    services = scenario(example, profiles, 6)
    p = plan(PlanRequest(services, profiles, a100, 3, time_limit=1e-9), "optimal")
    assert verify(p, profiles) == []
    assert p.lower_bound is not None and p.lower_bound <= p.gpus_used
    auto = plan(PlanRequest(services, profiles, a100, 3, time_limit=1e-9), "auto")
    assert verify(auto, profiles) == [] and auto.gpus_used == PARVA[3][5]
    with pytest.raises(ParvaError, match="time limit must be positive"):
        plan(PlanRequest(services, profiles, a100, 3, time_limit=0), "auto")


def test_infeasible_service_is_unservable(profiles, a100):
    with pytest.raises(Unservable, match="no triplet meets the 5 ms SLO"):
        optimizer.solve(PlanRequest((Service("resnet50", 100.0, 5.0),), profiles, a100, 3))


def test_package_import_loads_no_solver_or_plotting():
    code = (
        "import sys, parvagpu.cli, parvagpu.planning.strategies;"
        "print(sorted(m for m in ('highspy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Property test: small random profiles and services on every GPU type.

BATCHES = (1, 2, 4, 8, 16, 32)


@st.composite
def workloads(draw):
    gpu = GPU_TYPES[draw(st.sampled_from(sorted(GPU_TYPES)))]
    max_procs = draw(st.integers(1, 3))
    profiles, services = {}, []
    for i in range(draw(st.integers(1, 5))):
        model = f"m{i}"
        speed = draw(st.floats(30, 1500))
        points = [ProfilePoint(gpu.sizes[0], 1, 1, 100.0, 0.01)]  # every model is servable
        for size in gpu.sizes:
            for batch in draw(st.lists(st.sampled_from(BATCHES), min_size=1, max_size=3, unique=True)):
                for procs in range(1, draw(st.integers(1, 3)) + 1):
                    if (size, batch, procs) == (gpu.sizes[0], 1, 1):
                        continue
                    if draw(st.integers(0, 7)) == 0:
                        points.append(ProfilePoint(size, batch, procs, 0.0, 0.0))
                        continue
                    per_proc = speed * size ** draw(st.floats(0.6, 1.0)) / procs ** 0.6 * batch ** 0.3
                    latency = max(0.001, round(batch / per_proc, 3))
                    points.append(ProfilePoint(size, batch, procs, round(batch / latency, 3), latency))
        profiles[model] = Profile(model, tuple(points))
        slo = round(10 / 0.45 * draw(st.floats(1.05, 30.0)), 2)
        services.append(Service(model, round(draw(st.floats(1, 6000)), 2), slo))
    return gpu, profiles, tuple(services), max_procs


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_property_optimal_between_bound_and_heuristic(w):
    gpu, profiles, services, max_procs = w
    heur = plan_parva(PlanRequest(services, profiles, gpu, max_procs))
    opt = plan(PlanRequest(services, profiles, gpu, max_procs, time_limit=30), "optimal")
    auto = plan(PlanRequest(services, profiles, gpu, max_procs, time_limit=30), "auto")
    for p in (heur, opt, auto):
        assert verify(p, profiles) == [], p.strategy
    assert opt.lower_bound <= opt.gpus_used <= heur.gpus_used
    assert auto.gpus_used <= heur.gpus_used
    assert auto.gpus_used == opt.gpus_used  # both proven optimal on instances this small
    assert opt.lower_bound == opt.gpus_used == auto.lower_bound


_ABANDON = """
import sys, time
from pathlib import Path
from parvagpu.planning.optimizer import highs

def slow_solve(h, time_limit):  # a solve that reaches its next interrupt check late
    time.sleep(0.6)
    Path(sys.argv[1]).write_text("reached its check")

highs.run_within = slow_solve
assert highs.run_by(None, time.perf_counter() + 0.05) is False  # abandoned
"""


def test_an_abandoned_solve_is_waited_for_at_exit(tmp_path):
    """A solve abandoned at its deadline keeps running; the process must not finalise under it (a
    HiGHS thread calling back into a finalising interpreter aborts the process), so exit waits."""
    mark = tmp_path / "mark"
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", _ABANDON, str(mark)], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert mark.read_text() == "reached its check"
