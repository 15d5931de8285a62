"""Every reader, fed arbitrary bytes and arbitrary JSON/YAML shapes (Hypothesis): a valid object
or one clean `ParvaError` line naming the file, never another exception, in bounded time."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parvagpu.contract.plan_json import read_plan
from parvagpu.core.errors import ParvaError
from parvagpu.inputs.fleet import load_fleet
from parvagpu.inputs.profiles import load_profile
from parvagpu.inputs.services import load_scenario, load_services
from parvagpu.node import read_state
from parvagpu.serving.workers import read_models

# Per input, in CPU seconds of this process (other jobs on a loaded machine do not count against
# it): milliseconds usually; PyYAML needs ~2 s to reject 100,000 nested brackets.
LIMIT_S = 5.0


def _slo(path: Path):
    (path.parent / "SLO_latency.csv").write_bytes(path.read_bytes())
    return load_scenario(path.parent, 1, ["a", "b"])


READERS = {
    "profile.csv": load_profile,
    "SLO_req_rate.csv": _slo,
    "services.yaml": load_services,
    "services.json": load_services,
    "plan.json": read_plan,
    "state.json": read_state,
    "models.yaml": read_models,
    "fleet.yaml": load_fleet,
}

scalars = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats() | st.text(max_size=12)
documents = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _check(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / name
        path.write_bytes(data)
        start = time.process_time()
        try:
            READERS[name](path)
        except ParvaError as exc:
            assert "\n" not in str(exc) and str(exc), repr(exc)
        assert time.process_time() - start < LIMIT_S


@pytest.mark.parametrize("name", list(READERS))
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_any_bytes(name, data):
    _check(name, data)


@pytest.mark.parametrize("name", list(READERS))
@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents)
def test_any_document_shape(name, doc):
    _check(name, json.dumps(doc, allow_nan=True).encode())


@pytest.mark.parametrize("name", ["plan.json", "services.json", "state.json", "models.yaml", "fleet.yaml"])
@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,  # RecursionError before
    '{"a": NaN}', '{"a": 1e400}', "1" * 5000,
    "{1: 2}",  # a YAML mapping with a numeric key
    "a: &x [*x]",  # a self-referencing YAML alias
])
def test_known_hostile_documents(name, text):
    _check(name, text.encode())


def test_csv_cell_over_128_kib_is_one_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("Mig instance,Batch size,Workload Number,Throughput,Latency\n1,1,1," + "9" * 200_000 + ",0.1\n")
    with pytest.raises(ParvaError, match="m.csv"):
        load_profile(path)


def test_utf16_slo_file_is_one_line(tmp_path):
    (tmp_path / "SLO_req_rate.csv").write_text("1,2\n", encoding="utf-16")
    (tmp_path / "SLO_latency.csv").write_text("100,100\n")
    with pytest.raises(ParvaError, match="SLO_req_rate.csv: cannot read SLO file: not UTF-8 text"):
        load_scenario(tmp_path, 1, ["a", "b"])


def test_special_files_are_refused_before_reading(tmp_path):
    import os

    fifo = tmp_path / "plan.json"
    os.mkfifo(fifo)
    with pytest.raises(ParvaError, match="is a FIFO"):
        read_plan(fifo)  # would block forever on open or read without the check
    if Path("/dev/zero").exists():
        with pytest.raises(ParvaError, match="is a character device"):
            load_services(Path("/dev/zero"))
