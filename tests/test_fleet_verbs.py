"""The verbs that take a plan (verify, export, apply, simulate, and serve's spec) on a mixed-type
fleet plan made from one profile directory per GPU type, through the CLI as a user runs them."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from helpers import run_cli

from parvagpu.cli.common import example_dir, read_checked_plan
from parvagpu.contract.plan_json import read_plan
from parvagpu.core.gpus import gpu_type
from parvagpu.serving.policy import serving_spec

A100, H100 = "A100-80GB", "H100-80GB"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Per-type profiles (H100: the example's twice as fast, so the plan uses both types), a fleet
    with a reserved 3g slot and a wholly reserved GPU, and its plan of scenario 3."""
    root = tmp_path_factory.mktemp("mixed")
    shutil.copytree(example_dir() / "profiles", root / "profiles" / A100)
    (root / "profiles" / H100).mkdir()
    for f in (root / "profiles" / A100).glob("*.csv"):
        rows = list(csv.reader(f.open()))
        with (root / "profiles" / H100 / f.name).open("w", newline="") as out:
            w = csv.writer(out)
            w.writerow(rows[0])
            w.writerows([r[:3] + [f"{float(r[3]) * 2:.3f}", f"{float(r[4]) / 2:.5f}"] for r in rows[1:]])
    fleet = root / "fleet.yaml"
    fleet.write_text("version: v1\nnodes:\n  - {name: a1, gpu: A100-80GB, gpus: 4, price_per_gpu_hour: 1.0}\n"
                     "  - {name: h1, gpu: H100-80GB, gpus: 3, price_per_gpu_hour: 1.5,\n"
                     "     reserved: [{gpu: 0, start: 0, size: 3}, {gpu: 2}]}\n")
    plan = root / "plan.json"
    r = run_cli("plan", "--fleet", fleet, "--profiles", root / "profiles", "--slo", example_dir() / "SLO", "-s", "3",
             "--allow-partial", "-o", plan)
    assert r.exit_code == 0, r.output
    loaded, _ = read_plan(plan)
    assert loaded.gpu_type == "mixed" and {loaded.gpu_type_of(s.gpu) for s in loaded.segments} == {A100, H100}
    return root, plan, loaded


def test_a_mixed_plan_is_checked_against_each_types_profiles(mixed):
    _, plan_file, plan = mixed
    assert read_checked_plan(plan_file) == plan  # the recorded per-type directory, no problem
    assert run_cli("verify", plan_file).exit_code == 0


def test_mig_parted_export_per_node_type_keeps_reservations(mixed, tmp_path):
    _, plan_file, plan = mixed
    r = run_cli("export", "mig-parted", plan_file, "-o", tmp_path / "mp")
    assert r.exit_code == 0, r.output
    text = "".join(p.read_text() for p in sorted((tmp_path / "mp").glob("*.yaml")))
    docs = [d for d in yaml.safe_load_all(text) if d and d.get("kind") == "ConfigMap"]
    configs = yaml.safe_load(docs[0]["data"]["config.yaml"])["mig-configs"]
    for node, t in ((0, A100), (1, H100)):
        groups = configs.get(f"parvagpu-node{node}", [])
        names = {p.name: p.size for p in gpu_type(t).profiles}
        for g in groups:
            local = g["devices"][0]
            want = sorted(s.size for s in plan.segments if plan.node_of(s.gpu) == node and plan.local_gpu(s.gpu) == local)
            if node == 1 and local == 0:
                want = sorted(want + [3])  # the reserved 3g is listed with the plan's instances
            assert sorted(names[n] for n, c in g["mig-devices"].items() for _ in range(c)) == want
        if node == 1:
            assert [g["devices"][0] for g in groups] == [0, 1]  # the wholly reserved GPU 2 is left out


def test_k8s_export_simulate_and_serve_spec_take_the_mixed_plan(mixed, tmp_path):
    _, plan_file, plan = mixed
    r = run_cli("export", "k8s", plan_file, "-o", tmp_path / "k8s")
    assert r.exit_code == 0, r.output
    r = run_cli("simulate", plan_file, "--duration", "1")
    assert r.exit_code == 0, r.output
    spec = serving_spec(plan)
    segs = [s for m in spec.values() for s in m.segments]
    assert len(segs) == len(plan.segments) and {s.node for s in segs} == {0, 1}


def test_apply_node_by_node_with_each_nodes_type(mixed, tmp_path):
    _, plan_file, plan = mixed
    for node, gpus in ((0, 4), (1, 3)):
        r = run_cli("apply", plan_file, "--node", node, "--backend", "fake", "--fake-gpus", gpus,
                 "--state-dir", tmp_path / "st", "--fake-state", tmp_path / f"fake{node}.json")
        assert r.exit_code == 0, r.output
        state = json.loads((tmp_path / "st" / f"node{node}" / "state.json").read_text())
        assert state["gpu_type"] == (A100, H100)[node]
        assert len(state["segments"]) == sum(1 for s in plan.segments if plan.node_of(s.gpu) == node)
