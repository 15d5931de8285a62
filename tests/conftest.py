"""Shared fixtures: the embedded example and, where present, the reference data in ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from parvagpu.cli.common import example_dir
from parvagpu.core.gpus import gpu_type
from parvagpu.inputs.profiles import load_profiles

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "reference-data" / "parvagpu_sc24"


@pytest.fixture(scope="session")
def example() -> Path:
    return example_dir()


@pytest.fixture(scope="session")
def profiles(example):
    return load_profiles(example / "profiles")


@pytest.fixture(scope="session")
def a100():
    return gpu_type("A100-80GB")


@pytest.fixture(scope="session")
def reference() -> Path:
    """The SC'24 artifact's reference data (golden deployment maps); skipped where absent."""
    if not SHARED.is_dir():
        pytest.skip("../shared/reference-data/parvagpu_sc24 is not present")
    return SHARED


_EXIT = {}


def pytest_sessionfinish(session, exitstatus):
    _EXIT["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the process with pytest's own status once every report is written, skipping the
    interpreter's finalisation: after the Ray tests, a native extension's teardown crashed the
    process at exit (SIGSEGV, status 139) in one full run where every test had passed. The tests'
    own fixtures stop Ray and every process they started before this point."""
    import os
    import sys

    if "status" in _EXIT and os.environ.get("PARVAGPU_FULL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT["status"])
