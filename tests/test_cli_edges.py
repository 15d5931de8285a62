"""Options at their edges and what a new user meets, through the real command line: one error line,
exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from parvagpu.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name,extra,message", [
    ("p.json", ["--format", "csv"], "is a .json file but --format is csv"),
    ("p.csv", ["--format", "json"], "is a .csv file but --format is json"),
    ("plan.yaml", [], "name the file .json (the plan) or .csv"),
    ("plan", ["--format", "json"], "name the file .json (the plan) or .csv"),
])
def test_plan_out_extension_and_format_must_agree(tmp_path, name, extra, message):
    out = tmp_path / name
    r = run("plan", "--strategy", "parva", "--out", out, *extra)
    assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def one_error_line(r, needle, code=2):
    assert r.exit_code == code, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("args,needle", [
    (["simulate", "-s", 1, "--duration", "inf"], "--duration must be > 0 and <= 86400, got inf"),
    (["simulate", "-s", 1, "--duration", "1e7"], "--duration must be > 0 and <= 86400"),
    (["simulate", "-s", 1, "--duration", "nan"], "--duration must be"),
    (["simulate", "-s", 1, "--rate-scale", "1e9"], "--rate-scale must be > 0 and <= 1000000"),
    (["simulate", "-s", 6, "--rate-scale", "1000", "--duration", "86400"], "more than 5,000,000"),
    (["simulate", "-s", 1, "--seed", "-1"], "--seed must be from 0 to 4294967295, got -1"),
    (["simulate", "-s", 1, "--batch-wait-ms", "inf"], "--batch-wait-ms"),
    (["simulate", "-s", 1, "--service-scale", "inf"], "--service-scale"),
    (["load", "http://127.0.0.1:9", "--duration", "inf"], "--duration must be > 0 and <= 3600"),
    (["load", "http://127.0.0.1:9", "--rate-scale", "1e9"], "--rate-scale"),
    (["load", "http://127.0.0.1:9", "--seed", "-1"], "--seed"),
    (["load", "http://127.0.0.1:9", "--timeout", "inf"], "--timeout"),
    (["plan", "--max-procs", "0"], "--max-procs must be from 1 to 48"),
    (["plan", "--time-limit", "inf"], "--time-limit"),
    (["plan", "--gpus-per-node", "1000000000"], "--gpus-per-node"),
    (["compare", "--max-procs", "1000000000"], "--max-procs"),
    (["status", "--node", 0, "--backend", "fake", "--fake-gpus", "1000000000"], "1..1024 GPUs"),
    (["serve", "p.json", "--port", "70000"], "--port"),
    (["serve", "p.json", "--max-body-mb", "inf"], "--max-body-mb"),
    (["profile", "parvagpu.profiler.zoo:small_mlp", "--mode", "cpu", "--batches", "²"], "--batches: expected"),
    (["profile", "parvagpu.profiler.zoo:small_mlp", "--mode", "cpu", "--batches", "100000"], "in 1..4096"),
    (["profile", "parvagpu.profiler.zoo:small_mlp", "--mode", "cpu", "--duration", "inf"], "--duration"),
])
def test_numbers_at_the_edges_are_one_error_line(tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    one_error_line(run(*args), needle)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_plan_with_a_huge_batch_is_refused_by_simulate(tmp_path):
    plan = tmp_path / "p.json"
    assert run("plan", "-s", 1, "--strategy", "parva", "--out", plan).exit_code == 0
    data = json.loads(plan.read_text())
    data["segments"][0]["batch"] = 10**9
    plan.write_text(json.dumps(data))
    one_error_line(run("simulate", plan, "--duration", 1), "batch: 1000000000 is outside")


def test_simulate_says_its_verdict_and_exits_1_when_a_model_misses_its_slo():
    r = run("simulate", "-s", 1, "--duration", 2)
    assert r.exit_code == 0, r.output
    assert "verdict: every model meets its SLO (6 models)" in r.stderr
    assert "violated (> L), tight (> 0.8 L)" in r.stderr  # the legend of the verdict column
    r = run("simulate", "-s", 1, "--duration", 2, "--service-scale", 3)  # hardware 3x slower than profiled
    assert r.exit_code == 1, r.output
    assert "models miss their SLO or lost requests: " in r.stderr and "resnet50" in r.stderr.split("verdict:")[-1]


def test_serve_beyond_loopback_warns(tmp_path, monkeypatch):
    import parvagpu.serving.app as serving_app
    from parvagpu.core.errors import ParvaError

    def stop(*a, **k):
        raise ParvaError("stopped before starting Ray")

    monkeypatch.setattr(serving_app, "serve_app", stop)
    plan = tmp_path / "p.json"
    assert run("plan", "-s", 1, "--strategy", "parva", "--out", plan).exit_code == 0
    r = run("serve", plan, "--host", "0.0.0.0")
    assert "warning: --host 0.0.0.0: the inference API (no authentication) is reachable" in r.stderr, r.output
    r = run("serve", plan)
    assert "warning" not in r.stderr and "stopped before starting Ray" in r.stderr


@pytest.mark.parametrize("verb", [["export", "k8s"], ["verify"], ["load"], ["apply"], ["plan"], ["simulate"]])
def test_help_is_plain(verb):
    r = runner.invoke(app, [*verb, "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert "<bool>" not in r.output and "<list[" not in r.output and "{" not in r.output.splitlines()[1], r.output


def test_export_k8s_help_names_its_argument_and_shows_defaults():
    out = runner.invoke(app, ["export", "k8s", "--help"], env={"COLUMNS": "160"}).output
    assert "k8s [OPTIONS] PLAN_FILE" in " ".join(out.split()), out
    assert "[default: parvagpu:latest]" in out


def test_install_hints_keep_their_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plots extra were not installed
    r = run("simulate", "-s", 1, "--duration", 1, "--plot", tmp_path / "cdf.png")
    assert r.exit_code == 2, r.output
    assert "pip install 'parvagpu[plots]' (in a source checkout: pip install -e '.[plots]')" in r.stderr
    assert not (tmp_path / "cdf.png").exists()


def test_messages_count_in_english():
    from parvagpu.reports.words import count

    assert (count(1, "GPU"), count(0, "GPU"), count(16, "GPU")) == ("1 GPU", "0 GPUs", "16 GPUs")


def test_narrow_terminal_folds_model_names_instead_of_cutting_them():
    import io

    from rich.console import Console

    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
    from parvagpu.reports.tables import print_plan

    t = Triplet(1, 1, 1, 10.0, 5.0)
    names = ("resnet50_finetuned_customer_alpha", "resnet50_finetuned_customer_bravo")
    plan = DeploymentMap(
        "A100-80GB", "parva", 3, 8,
        tuple(PlacedSegment(Segment(n, t), 0, s) for n, s in zip(names, (0, 1))),
        tuple(Service(n, 5.0, 100.0) for n in names),
    )
    out = io.StringIO()
    print_plan(plan, Console(file=out, width=60, color_system=None))
    text = out.getvalue()
    capacity = text[text.index("Capacity per model"):text.index("GPU layouts")]
    assert "…" not in capacity  # no name cut to an ambiguous prefix
    first_column = "".join(line.split("│")[1].strip() for line in capacity.splitlines() if line.startswith("│"))
    assert first_column == "".join(names)  # every name whole, folded over lines
    drawing = text[text.index("GPU layouts"):]
    assert "[#1" in drawing and "[#2" in drawing  # one-slot boxes: keys, not the shared prefix "resn"
    legend = "".join(drawing.split())
    assert all(f"#{i}{n}" in legend for i, n in enumerate(names, 1))
