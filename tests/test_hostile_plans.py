"""Hostile plans through the real command line: every verb that consumes a plan reads it strictly
and runs the independent checks of `verify` first (exit 2 unreadable, exit 1 invalid, nothing
written, no traceback); `--force-invalid` lets an expert through with warnings."""

from __future__ import annotations

import copy
import json

import pytest
from apply_support import scenario_plan
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.contract.plan_json import plan_to_dict

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def s6() -> dict:
    return plan_to_dict(scenario_plan(6))


def _write(tmp_path, doc, name="p.json") -> str:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def _verbs(plan: str, tmp_path) -> list[list]:
    """Every verb that consumes a plan, each with what it would write or change (all in tmp_path)."""
    return [
        ["verify", plan],
        ["apply", plan, "--node", 0, "--backend", "fake", "--fake-state", tmp_path / "fake.json",
         "--state-dir", tmp_path / "st"],
        ["status", "--node", 0, "--backend", "fake", "--plan", plan, "--state-dir", tmp_path / "st"],
        ["export", "k8s", plan, "--out", tmp_path / "k8s"],
        ["export", "mig-parted", plan, "--out", tmp_path / "mp"],
        ["simulate", plan, "--duration", 1, "--json", tmp_path / "sim.json"],
        ["load", plan, "--duration", 1],
        ["serve", plan, "--models", tmp_path / "models.yaml"],
    ]


VERBS = ["verify", "apply", "status", "export k8s", "export mig-parted", "simulate", "load", "serve"]


def _edit(path: str, value):
    """A copy of the scenario-6 plan with one value replaced (path: dotted keys and list indices)."""
    def change(doc):
        doc = copy.deepcopy(doc)
        *head, last = path.split(".")
        obj = doc
        for k in head:
            obj = obj[int(k)] if isinstance(obj, list) else obj[k]
        obj[int(last) if isinstance(obj, list) else last] = value
        return doc
    return change


UNREADABLE = {
    "rate NaN": ('"rate": NaN', "NaN is not a number"),
    "latency Infinity": ('"latency_ms": Infinity', "Infinity is not a number"),
    "rate 1e400": ('"rate": 1e400', "out of range"),
    "huge integer": ('"rate": ' + "9" * 5000, "invalid JSON"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "not JSON": ("{nope", "invalid JSON"),
}
UNREADABLE_EDITS = {
    "negative rate": (_edit("services.0.rate", -5), "rate: must be a positive number"),
    "zero latency": (_edit("services.0.latency_ms", 0), "latency_ms: must be a positive number"),
    "zero throughput": (_edit("segments.0.throughput", 0), "throughput: must be a positive number"),
    "rate 1e308": (_edit("services.0.rate", 1e308), "rate: must be a positive number up to"),
    "batch 10^9": (_edit("segments.0.batch", 10**9), "batch: 1000000000 is outside 1..65536"),
    "service twice": (lambda d: {**d, "services": d["services"] + d["services"][:1]}, "is listed twice"),
    "segment of no service": (_edit("segments.0.model", "ghost"), "'ghost' is not one of the plan's services"),
    "model not text": (_edit("services.0.model", 7), "model: expected a non-empty string"),
    "gpu 999": (_edit("segments.0.gpu", 999), "out of range (gpus_per_node 8)"),
}


def _text_for(s6, case: str) -> str:
    if case in UNREADABLE_EDITS:
        return json.dumps(UNREADABLE_EDITS[case][0](s6))
    text, _ = UNREADABLE[case]
    if case in ("deep nesting", "not JSON"):
        return text
    doc = json.dumps(s6).replace(f'"rate": {s6["services"][0]["rate"]}', text, 1)
    return doc.replace(f'"latency_ms": {s6["services"][0]["latency_ms"]}', text, 1) if "latency" in text else doc


@pytest.mark.parametrize("case", list(UNREADABLE) + list(UNREADABLE_EDITS))
def test_unreadable_plans_exit_2_with_one_line_in_every_verb(tmp_path, s6, case):
    needle = (UNREADABLE.get(case) or UNREADABLE_EDITS[case])[1]
    plan = _write(tmp_path, _text_for(s6, case))
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, verb in zip(_verbs(plan, tmp_path), VERBS):
        r = run(*argv)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert r.exit_code == 2, (verb, r.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (verb, r.stderr)
        assert "Traceback" not in r.output
        assert sorted(p.name for p in tmp_path.iterdir()) == before, verb


def _overlap(d):
    """Two 4g instances at slot 0 of one GPU: a layout no A100 can hold."""
    seg = dict(d["segments"][0], size=4, profile="4g.40gb", start=0, node=0, gpu=0)
    return {**d, "segments": [s for s in d["segments"] if not (s["node"] == 0 and s["gpu"] == 0)] + [seg, dict(seg)]}


def _slow(d):
    """Capacity below the rate: the first service asks for far more than its segments give."""
    return _edit("services.0.rate", d["services"][0]["capacity"] * 10)(d)


INVALID = {
    "overlapping 4g at slot 0": (_overlap, "overlaps"),
    "capacity below rate": (_slow, "is below its rate"),
    "procs over the limit": (_edit("max_procs", 1), "exceed max_procs 1"),
    "empty plan": (lambda d: {**d, "segments": [], "services": [], "gpus_used": 0}, "the plan has no services"),
    "stated GPUs wrong": (_edit("gpus_used", 99), "plan states gpus_used 99"),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_plans_are_refused_with_exit_1_by_every_verb(tmp_path, s6, case):
    make, needle = INVALID[case]
    plan = _write(tmp_path, make(s6))
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, verb in zip(_verbs(plan, tmp_path), VERBS):
        r = run(*argv)
        assert r.exit_code == 1, (verb, r.output)
        assert needle in r.stderr and "Traceback" not in r.output, (verb, r.stderr)
        if verb != "verify":
            assert "--force-invalid overrides" in r.stderr.splitlines()[-1], (verb, r.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, verb


def test_force_invalid_lets_an_expert_export_with_warnings(tmp_path, s6):
    plan = _write(tmp_path, _slow(s6))
    r = run("export", "mig-parted", plan, "--out", tmp_path / "mp", "--force-invalid")
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "is below its rate" in r.stderr and "used anyway" in r.stderr
    assert (tmp_path / "mp").is_dir()


def test_apply_with_force_invalid_still_meets_the_agents_own_check(tmp_path, s6):
    d = copy.deepcopy(s6)
    next(s for s in d["segments"] if s["size"] == 3)["start"] = 2
    plan = _write(tmp_path, d)
    r = run("apply", plan, "--node", 0, "--backend", "fake", "--fake-state", tmp_path / "fake.json",
            "--state-dir", tmp_path / "st", "--force-invalid")
    assert r.exit_code == 2 and "cannot start at slot" in r.stderr.splitlines()[-1], r.output
    assert not (tmp_path / "fake.json").exists()


def test_verify_says_when_it_cannot_find_the_profiles(tmp_path, s6):
    """A plan made with other profiles is not reported as "capacity 0" but as missing profiles."""
    text = json.dumps(s6)
    for s in s6["services"]:
        text = text.replace(f'"{s["model"]}"', f'"my-{s["model"]}"')
    r = run("verify", _write(tmp_path, text))
    assert r.exit_code == 2 and "give --profiles DIR" in r.stderr and "capacity" not in r.stderr, r.output
