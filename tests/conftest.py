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
