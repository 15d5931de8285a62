"""The CLI end to end: outputs, formats, verify, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.contract.seed_csv import SEED_CSV_HEADER

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "procs,expected", [(3, [2, 3, 5, 7, 13, 17]), (5, [2, 3, 5, 7, 13, 16])]
)
def test_plan_cli_gpu_counts(procs, expected):
    got = []
    for k in range(1, 7):
        r = run("plan", "--strategy", "parva", "--max-procs", procs, "--scenario", k, "--format", "json")
        assert r.exit_code == 0, r.output
        got.append(json.loads(r.stdout)["gpus_used"])
    assert got == expected


def test_plan_json_contract(tmp_path):
    out = tmp_path / "plan.json"
    r = run("plan", "--strategy", "parva", "-s", 6, "--out", out)
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert {"gpus_used", "gpu_type", "strategy", "max_procs", "segments", "services"} <= set(data)
    assert data["gpu_type"] == "A100-80GB" and data["strategy"] == "parva" and data["max_procs"] == 3
    seg_keys = {"model", "node", "gpu", "start", "size", "batch", "procs", "throughput"}
    assert all(seg_keys <= set(s) for s in data["segments"])
    assert {(s["node"], s["gpu"]) for s in data["segments"]} == {(g // 8, g % 8) for g in range(17)}
    for svc in data["services"]:
        assert {"model", "rate", "latency_ms", "capacity"} <= set(svc)
        assert svc["capacity"] >= svc["rate"]
    v = run("verify", out)
    assert v.exit_code == 0, v.output
    assert "valid" in v.stdout


def test_plan_seed_csv(tmp_path):
    out = tmp_path / "map.csv"
    r = run("plan", "--strategy", "parva", "-s", 6, "--gpus-per-node", 4, "--out", out)
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0] == SEED_CSV_HEADER
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 67
    assert max(int(r[0]) for r in rows) == 4 and max(int(r[1]) for r in rows) == 3  # 17 GPUs, 4/node
    # within a GPU, largest instance first (the reference's row order)
    prev, last_size = None, 0
    for r in rows:
        key = (int(r[0]), int(r[1]))
        if key == prev:
            assert int(r[4]) <= last_size
        prev, last_size = key, int(r[4])


def test_plan_table_output():
    r = run("plan", "--strategy", "parva", "-s", 3, "--format", "table")
    assert r.exit_code == 0, r.output
    for text in ("GPUs used", "idle GPCs on used GPUs", "capacity / demand", "densenet121", "0/4"):
        assert text in r.stdout


def test_services_file_yaml_and_json(tmp_path, profiles):
    y = tmp_path / "svc.yaml"
    y.write_text("- {model: resnet50, rate: 1463, latency_ms: 138}\n- {model: bert, rate: 46, latency_ms: 4294}\n")
    j = tmp_path / "svc.json"
    j.write_text(json.dumps({"version": "v1", "services": [
        {"model": "resnet50", "rate": 1463, "latency_ms": 138},
        {"model": "bert", "rate": 46, "latency_ms": 4294},
    ]}))
    outs = []
    for f in (y, j):
        r = run("plan", "--strategy", "parva", "--services", f, "--format", "json")
        assert r.exit_code == 0, r.output
        outs.append(json.loads(r.stdout))
    assert outs[0] == outs[1]
    assert {s["model"] for s in outs[0]["services"]} == {"resnet50", "bert"}


def test_verify_rejects_broken_plans(tmp_path):
    out = tmp_path / "plan.json"
    assert run("plan", "--strategy", "parva", "-s", 3, "--out", out).exit_code == 0
    data = json.loads(out.read_text())

    def check(mutate, needle):
        d = json.loads(json.dumps(data))
        mutate(d)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        r = run("verify", bad)
        assert r.exit_code == 1, r.output
        assert needle in r.stderr

    def overlap(d):
        s = next(s for s in d["segments"] if s["size"] == 1)
        s["start"] = 6 if s["start"] != 6 else 5  # 3g@4 covers slices 4-7

    check(overlap, "overlaps")

    def illegal(d):
        next(s for s in d["segments"] if s["size"] == 3)["start"] = 2

    check(illegal, "not a legal placement")

    def short(d):
        d["segments"] = [s for s in d["segments"] if s["model"] != "resnet50"]

    check(short, "below its rate")

    def slow(d):
        for s in d["services"]:
            s["latency_ms"] = 10

    check(slow, "not below 0.45")

    def procs(d):
        d["max_procs"] = 1

    check(procs, "exceed max_procs")

    def count(d):
        d["gpus_used"] = 4

    check(count, "states gpus_used 4")


def _bad(args, needle, tmp_path=None, out=None, code=2):
    r = run(*args)
    assert r.exit_code == code, r.output
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error:")
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.output
    if out is not None:
        assert not out.exists()
        assert not list(out.parent.glob(f".{out.name}*"))


def _profiles_copy(tmp_path, example) -> Path:
    d = tmp_path / "profiles"
    d.mkdir()
    for f in (example / "profiles").glob("*.csv"):
        (d / f.name).write_bytes(f.read_bytes())
    return d


def test_bad_inputs(tmp_path, example):
    out = tmp_path / "plan.json"
    slo = example / "SLO"
    _bad(["plan", "--profiles", tmp_path / "nope", "--slo", slo, "--out", out], "profile directory not found", out=out)

    d = _profiles_copy(tmp_path, example)
    text = (d / "vgg16.csv").read_text()
    (d / "vgg16.csv").write_text(text.replace("Mig instance", "MIG size", 1))
    _bad(["plan", "--profiles", d, "--slo", slo, "--out", out], "vgg16.csv: wrong header", out=out)

    (d / "vgg16.csv").write_text(text.replace("1,1,1,", "1,one,1,", 1))
    _bad(["plan", "--profiles", d, "--slo", slo, "--out", out], "vgg16.csv:2: column 'Batch size' is not a number", out=out)

    (d / "vgg16.csv").write_text(text)
    (d / "extra.csv").write_text(text)
    _bad(["plan", "--profiles", d, "--slo", slo, "--out", out], "11 columns but 12 profiles", out=out)

    _bad(["plan", "--scenario", 9, "--out", out], "scenario 9 out of range 1..6", out=out)

    svc = tmp_path / "svc.yaml"
    svc.write_text("- {model: resnet50, rate: -5, latency_ms: 100}\n")
    _bad(["plan", "--services", svc, "--out", out], "rate must be a positive number", out=out)
    svc.write_text("- {model: resnet50, rate: 0, latency_ms: 100}\n")
    _bad(["plan", "--services", svc, "--out", out], "service 1 (resnet50): rate must be a positive number", out=out)
    svc.write_text("- {model: gpt5, rate: 10, latency_ms: 100}\n")
    _bad(["plan", "--services", svc, "--out", out], "model 'gpt5' has no profile", out=out)
    svc.write_text("- {model: resnet50, rate: 10, latency_ms: 5}\n")
    _bad(["plan", "--services", svc, "--out", out], "model resnet50: no triplet meets the 5 ms SLO", out=out, code=3)
    svc.write_text("- {model: resnet50, rate: [10, latency_ms: 5}\n")
    _bad(["plan", "--services", svc, "--out", out], "invalid YAML", out=out)
    _bad(["plan", "--gpu", "V100", "--out", out], "unknown GPU type", out=out)
    _bad(["plan", "--max-procs", 0, "--out", out], "--max-procs must be from 1 to 48", out=out)
    _bad(["plan", "--gpus-per-node", 0, "--out", out], "--gpus-per-node must be from 1 to 64", out=out)
    _bad(["plan", "--time-limit", 0, "--out", out], "--time-limit must be > 0", out=out)
    _bad(["plan", "--out", tmp_path / "missing" / "p.json"], "does not exist")
    _bad(["verify", tmp_path / "nothere.json"], "cannot read plan")
    (tmp_path / "garbage.json").write_text("{not json")
    _bad(["verify", tmp_path / "garbage.json"], "invalid JSON")


def test_infeasible_message_gives_tightest_latency(tmp_path):
    svc = tmp_path / "svc.yaml"
    svc.write_text("- {model: resnet50, rate: 10, latency_ms: 5}\n")
    r = run("plan", "--services", svc)
    assert r.exit_code == 3  # well formed, but cannot be served as asked
    assert "tightest SLO it can meet is just above" in r.stderr


def test_real_process_exit_code_and_no_traceback(tmp_path):
    """Through a real interpreter, as a user runs it."""
    r = subprocess.run(
        [sys.executable, "-m", "parvagpu", "plan", "--scenario", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "scenario 0 out of range" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "parvagpu", "plan", "--strategy", "parva", "-s", "2", "--format", "csv"],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith(SEED_CSV_HEADER)


def test_time_limit_is_the_whole_commands_budget(tmp_path):
    """A budget spent before planning still gives the heuristic's plan, at once."""
    out = tmp_path / "p.json"
    t0 = time.perf_counter()
    r = run("plan", "-s", "6", "--time-limit", "0.001", "--out", out)
    assert r.exit_code == 0, r.output
    assert time.perf_counter() - t0 < 5
    data = json.loads(out.read_text())
    assert data["gpus_used"] == 17 and data["stats"]["from_optimizer"] == 0.0


def test_the_command_imports_only_the_verb_it_runs():
    """`parvagpu gpus` builds the CLI with that verb alone, and no other verb's module is imported
    (the time budget of `plan` counts from the process start); the whole app has every verb."""
    from parvagpu.cli import VERBS

    code = ("import sys, runpy; sys.argv = ['parvagpu', 'gpus', '--json']\n"
            "from parvagpu.__main__ import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('parvagpu.cli.')), file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    loaded = out.stderr.strip().splitlines()[-1]
    assert "'parvagpu.cli.plan'" in loaded and "parvagpu.cli.node" not in loaded and "parvagpu.cli.serving" not in loaded
    assert json.loads(out.stdout)  # the verb ran
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    assert names == {group or verb for group, verb, _, _ in VERBS}
