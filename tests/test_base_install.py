"""The README's first command runs on the base install alone (`pip install -e .`).

The test environment installs every extra, so an import of a package only an extra (or another
package's dependency) brings would pass every other test and still break a new user's first
command; this once happened with `click`, which Typer no longer installs. Each check runs the CLI
in a child Python whose importer refuses every such package.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Importable here only through the extras or through their dependencies, not through
# `[project] dependencies` (typer, rich, PyYAML, highspy, numpy and what they need).
NOT_BASE = (
    "click",
    "ray",
    "torch",
    "torchvision",
    "transformers",
    "matplotlib",
    "pynvml",
    "aiohttp",
    "onnx",
    "onnxruntime",
    "prometheus_client",
    "tritonclient",
    "kubernetes_validate",
    "hypothesis",
    "pytest",
    "requests",
    "pandas",
    "scipy",
)

_RUN = """
import sys
from importlib.abc import MetaPathFinder

class Refuse(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {refused!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not in the base install)", name=name)
        return None

sys.meta_path.insert(0, Refuse())
for name in list(sys.modules):
    if name.split(".")[0] in {refused!r}:
        del sys.modules[name]
sys.argv = ["parvagpu", *{argv!r}]
from parvagpu.cli import app
app()
"""


def run_base(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = _RUN.format(refused=set(NOT_BASE), argv=argv)
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_first_command_and_the_plan_verbs_need_no_extra(tmp_path):
    first = run_base(["plan", "--scenario", "6", "--out", "plan.json"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert (
        plan["gpus_used"] == plan["lower_bound"] == 16
    )  # scenario 6 at 3 processes, proven
    for argv in (
        ["verify", "plan.json"],
        ["diff", "plan.json", "plan.json"],
        ["gpus"],
        ["simulate", "plan.json", "--duration", "2"],
        ["export", "mig-parted", "plan.json", "--out", "mig.yaml"],
    ):
        done = run_base(argv, tmp_path)
        assert done.returncode == 0, (argv, done.stderr[-2000:])


def test_the_refusing_importer_refuses():
    """The check above can fail: a refused package really cannot be imported in the child."""
    done = run_base(["--help"], Path.cwd())
    assert done.returncode == 0, done.stderr[-2000:]
    code = _RUN.split("sys.argv")[0].format(refused=set(NOT_BASE)) + "import click\n"
    child = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode != 0 and "not in the base install" in child.stderr
