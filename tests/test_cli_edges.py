"""Options at their edges and what a new user meets, through the real command line: one error line,
exit 2, nothing written."""

from __future__ import annotations

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
