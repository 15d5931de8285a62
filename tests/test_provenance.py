"""A plan records where its profiles came from; `verify` finds them, or says it cannot, through the CLI."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.cli.common import example_dir

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _plan_with_own_profiles(tmp_path):
    prof = tmp_path / "my profiles"
    shutil.copytree(example_dir() / "profiles", prof)
    services = tmp_path / "services.yaml"
    services.write_text("version: v1\nservices:\n  - {model: resnet50, rate: 1463, latency_ms: 138}\n")
    out = tmp_path / "plan.json"
    r = run("plan", "--strategy", "parva", "--profiles", prof, "--services", services, "--out", out)
    assert r.exit_code == 0, r.output
    return prof, out


def test_plan_records_its_profiles_and_verify_uses_them(tmp_path, monkeypatch):
    prof, out = _plan_with_own_profiles(tmp_path)
    rec = json.loads(out.read_text())["provenance"]
    assert rec["profiles"] == str(prof.resolve()) and list(rec["models"]) == ["resnet50"]
    assert len(rec["sha256"]) == 64 and rec["measured_on"] is None
    monkeypatch.chdir(tmp_path.parent)  # the recorded path is absolute: found from anywhere
    r = run("verify", out)
    assert r.exit_code == 0, r.output
    assert "recorded in the plan" in r.stderr and "valid" in r.stdout


def test_verify_says_when_the_plans_profiles_are_gone(tmp_path):
    prof, out = _plan_with_own_profiles(tmp_path)
    shutil.rmtree(prof)
    r = run("verify", out)
    assert r.exit_code == 2
    assert "which is not there; give --profiles DIR" in r.stderr and "capacity 0" not in r.output


def test_verify_warns_when_a_profile_changed(tmp_path):
    prof, out = _plan_with_own_profiles(tmp_path)
    csv = prof / "resnet50.csv"
    lines = csv.read_text().splitlines()
    row = next(i for i, line in enumerate(lines[1:], 1) if not line.endswith(",0,0"))
    cells = lines[row].split(",")
    cells[3] = str(float(cells[3]) + 0.001)  # one changed figure
    lines[row] = ",".join(cells)
    csv.write_text("\n".join(lines) + "\n")
    r = run("verify", out)
    assert "resnet50: the profile in" in r.stderr and "differs from the one the plan was made with" in r.stderr


def test_verify_of_a_plan_without_provenance_on_other_profiles_is_bad_input(tmp_path):
    _, out = _plan_with_own_profiles(tmp_path)
    data = json.loads(out.read_text())
    old = data["services"][0]["model"]
    for seg in data["segments"]:
        if seg["model"] == old:  # every segment of the renamed service: the plan stays well formed
            seg["model"] = "mymodel"
    data["services"][0]["model"] = "mymodel"
    del data["provenance"]
    out.write_text(json.dumps(data))
    r = run("verify", out)
    assert r.exit_code == 2
    assert "the embedded example has no profile for mymodel" in r.stderr


def test_verify_says_which_services_it_checks_against(tmp_path):
    out = tmp_path / "plan.json"
    assert run("plan", "--strategy", "parva", "-s", 6, "--out", out).exit_code == 0
    r = run("verify", out, "--scenario", 5)
    assert "checking against the services of scenario 5 of the embedded example, not the plan's own" in r.stderr
    assert r.exit_code == 1 and "plan says rate" in r.stderr
