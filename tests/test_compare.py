"""`parvagpu compare`: every strategy on every scenario, its CSV and figures, and bad input."""

from __future__ import annotations

import csv
import io

import pytest
from typer.testing import CliRunner

from parvagpu.reports import compare
from parvagpu.cli import app
from parvagpu.inputs.services import load_scenario
from parvagpu.planning.request import PlanRequest

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_run_rows(example, profiles, a100):
    scenarios = [(f"SLO{k}", load_scenario(example / "SLO", k, list(profiles))) for k in (5, 6)]
    rows = compare.run([(name, PlanRequest(services, profiles, a100, 3)) for name, services in scenarios])
    assert [(r.scenario, r.strategy) for r in rows] == [
        (s, st) for s in ("SLO5", "SLO6") for st in compare.ORDER
    ]
    assert all(r.valid and r.plan is not None for r in rows)
    gpus = {(r.scenario, r.strategy): r.gpus for r in rows}
    assert gpus[("SLO5", "parva")] == 13 and gpus[("SLO5", "optimal")] == 12
    assert gpus[("SLO6", "parva")] == 17 and gpus[("SLO6", "auto")] == 16
    text = compare.to_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert list(parsed[0]) == list(compare.CSV_FIELDS)
    opt6 = next(r for r in parsed if r["scenario"] == "SLO6" and r["strategy"] == "optimal")
    assert opt6["gpus"] == "16" and opt6["lower_bound"] == "16" and opt6["proven_optimal"] == "1"
    assert int(opt6["gpcs_used"]) + int(opt6["idle_gpcs"]) == 16 * 7
    parva6 = next(r for r in parsed if r["scenario"] == "SLO6" and r["strategy"] == "parva")
    assert parva6["lower_bound"] == "" and parva6["valid"] == "1"


@pytest.mark.slow
def test_cli_writes_csv_and_figures(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    r = run("compare", "--scenario", "all", "--out", out)
    assert r.exit_code == 0, r.output
    assert "whole-gpu" in r.stdout and "SLO6" in r.stdout
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert len(rows) == 6 * len(compare.ORDER)
    assert all(row["valid"] == "1" for row in rows)
    for name in ("gpus", "layout"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000]
    assert not list(out.glob(".*.tmp"))


def test_cli_subset_without_files():
    r = run("compare", "-s", "2", "--strategies", "parva,optimal")
    assert r.exit_code == 0, r.output
    assert "parva" in r.stdout and "mps-only" not in r.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--scenario", "x"], "--scenario must be all, K or K,L"),
        (["--scenario", "9"], "scenario 9 out of range 1..6"),
        (["--strategies", "parva,best"], "unknown strategy 'best'"),
        (["--time-limit", "0"], "--time-limit must be > 0"),
        (["--gpu", "V100"], "unknown GPU type"),
        (["--layout-scenario", "7"], "--layout-scenario '7' is not among"),
    ],
)
def test_bad_input_is_one_line_and_nothing_written(tmp_path, args, message):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    r = run("compare", *args, "--out", out)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert not out.exists()


def test_out_must_be_a_directory(tmp_path):
    pytest.importorskip("matplotlib")
    f = tmp_path / "file"
    f.write_text("keep")
    r = run("compare", "-s", "1", "--out", f)
    assert r.exit_code == 2 and "is not a directory" in r.stderr
    assert f.read_text() == "keep"
