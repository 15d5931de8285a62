"""The serve, load and simulate verbs: results, files, and one-line errors with exit 2."""

from __future__ import annotations

import json
import socket

import pytest
from typer.testing import CliRunner

from parvagpu.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan") / "plan.json"
    r = _run("plan", "--scenario", "1", "--strategy", "parva", "--out", str(out))
    assert r.exit_code == 0, r.output
    return out


def test_simulate_scenario_writes_json(tmp_path):
    out = tmp_path / "sim.json"
    r = _run("simulate", "--scenario", "1", "--duration", "5", "--json", str(out))
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["kind"] == "simulation" and len(data["models"]) == 6
    assert all(m["lost"] == 0 for m in data["models"])
    assert {r["model"] for r in data["rule"]} == {m["model"] for m in data["models"]}


def test_simulate_plan_file_same_as_scenario(plan_file, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert _run("simulate", str(plan_file), "--duration", "3", "--json", str(a)).exit_code == 0
    assert _run("simulate", "--scenario", "1", "--duration", "3", "--json", str(b)).exit_code == 0
    pa, pb = json.loads(a.read_text()), json.loads(b.read_text())
    assert [m["p99_ms"] for m in pa["models"]] == [m["p99_ms"] for m in pb["models"]]


@pytest.mark.parametrize(
    "args, msg",
    [
        (["simulate"], "plan file or --scenario"),
        (["simulate", "--scenario", "9"], "out of range"),
        (["simulate", "nope.json"], "cannot read plan"),
        (["simulate", "--scenario", "1", "--duration", "0"], "duration"),
        (["simulate", "--scenario", "1", "--rate-scale", "-1"], "--rate-scale"),
        (["load", "http://10.0.0.1:8000"], "loopback"),
        (["load", "nope.json"], "cannot read plan"),
        (["serve", "nope.json", "--models", "m.yaml"], "cannot read plan"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, msg):
    r = _run(*args)
    assert r.exit_code == 2, r.output
    assert msg in r.output and "Traceback" not in r.output


def test_load_to_a_closed_port_is_an_error_before_any_request(plan_file):
    pytest.importorskip("aiohttp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _run("load", str(plan_file), "--url", f"http://127.0.0.1:{port}", "--duration", "1")
    assert r.exit_code == 2 and "cannot connect" in r.output


def test_serve_needs_a_models_entry_per_model(plan_file, tmp_path):
    cfg = tmp_path / "m.yaml"
    cfg.write_text("models:\n  bert: {factory: 'a.b:c', shape: [1]}\n")
    r = _run("serve", str(plan_file), "--models", str(cfg))
    assert r.exit_code == 2 and "no entry for" in r.output
    # without --models the example's config is used, but only when it has every model of the plan
    other = tmp_path / "other.json"
    other.write_text(plan_file.read_text().replace('"bert"', '"mybert"'))
    r = _run("serve", str(other))
    assert r.exit_code == 2 and "--models" in r.output
    r = _run("serve", str(plan_file), "--max-replicas", "0")
    assert r.exit_code == 2 and "max replicas" in r.output
