"""The command's fast edges give what the plain ways give: the indented plan JSON byte for byte,
a running plan's segments as the checked reader reads them (or its error), every file's bytes
read by size, and profile points made from columns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parvagpu.contract.plan_json import _checked_segment, _plain_segment, _read_segment, dumps_indented
from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import Fleet, FleetNode
from parvagpu.core.model import PointColumns, ProfilePoint
from parvagpu.fileio import reader
from parvagpu.fileio.reader import read_bytes, read_json

scalars = (st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats()
           | st.text(max_size=6) | st.sampled_from(["\n", "é", "\u2028", "a\"b", "\\"]))
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=4) | st.integers(-3, 3) | st.booleans() | st.none(), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(doc=documents)
def test_dumps_indented_is_json_dumps_indent_2(doc):
    assert dumps_indented(doc) == json.dumps(doc, indent=2)


def test_dumps_indented_on_a_plan_shape():
    segments = [{"model": m, "gpu": g, "throughput": 1.5e-7, "x": None} for g, m in enumerate(
        ["a\nb", "}\n{", "\x00", '"}', "{", "}"])]
    plan = {"version": 1, "gap": 0.0, "segments": segments, "one": [{"a": 1}], "mixed": [{"a": 1}, {}, [1]],
            "services": [], "stats": {}, "provenance": {"models": {"a": "ff"}, "measured_on": None},
            "transition": {"added": [[]], "models": [{"x": float("inf")}, {}]}}
    assert dumps_indented(plan) == json.dumps(plan, indent=2)


_SEG = {"model": "m", "node": 0, "gpu": 1, "start": 4, "size": 3, "profile": "3g.40gb", "batch": 8,
        "procs": 2, "throughput": 120.5, "latency_ms": 30.0}
field_values = (st.none() | st.booleans() | st.integers(-3, 70) | st.integers(2**62, 2**70)
                | st.floats() | st.text(max_size=2) | st.sampled_from([[], {}, 1e9]))


def _checked(s, per_node, fleet):
    """`_read_segment` with the fast path off: the value it reads, or its error."""
    try:
        return _checked_segment(s, "plan: segment 0", per_node, fleet)
    except ParvaError as exc:
        return str(exc)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(_SEG) + ["extra"]), field_values, max_size=3),
    dropped=st.sets(st.sampled_from(sorted(_SEG)), max_size=2),
    per_node=st.integers(1, 8), with_fleet=st.booleans(),
)
def test_plain_segment_agrees_with_the_checked_reader(changes, dropped, per_node, with_fleet):
    seg = {k: v for k, v in {**_SEG, **changes}.items() if k not in dropped}
    fleet = Fleet((FleetNode("a", "A100-80GB", 2), FleetNode("b", "A100-80GB", 4))) if with_fleet else None
    checked = _checked(seg, per_node, fleet)
    fast = _plain_segment(seg, per_node, fleet)
    if fast is not None:
        assert fast == checked  # accepted only what the checked reader accepts, read the same
    try:
        got = _read_segment(seg, "plan: segment 0", per_node, fleet)
    except ParvaError as exc:
        got = str(exc)
    assert got == checked


def test_read_bytes_reads_whole_files_of_any_size(tmp_path, monkeypatch):
    for size in (0, 1, 65535, 65536, 65537, 300_001):
        f = tmp_path / f"f{size}"
        data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        f.write_bytes(data)
        assert read_bytes(f, "file") == data
    monkeypatch.setattr(reader, "MAX_INPUT_BYTES", 1000)
    (tmp_path / "big").write_bytes(b"y" * 1001)
    with pytest.raises(ParvaError, match="larger than"):
        read_bytes(tmp_path / "big", "file")
    (tmp_path / "edge").write_bytes(b"y" * 1000)
    assert len(read_bytes(tmp_path / "edge", "file")) == 1000


def test_a_file_whose_size_is_not_its_length_is_read_to_the_end():
    """Files under /proc state size 0 and have content."""
    proc = Path("/proc/self/status")
    if not proc.exists():
        pytest.skip("no /proc")
    assert read_bytes(proc, "file").startswith(b"Name:")


@pytest.mark.parametrize("text, message", [
    ('{"a": 1e400}', "number 1e400 is out of range"),
    ('{"a": [1.5, -1e999]}', "number -1e999 is out of range"),
    ('{"a": NaN}', "NaN is not a number"),
    ('[' * 101 + ']' * 101, "nested more than 100 levels deep"),
])
def test_json_errors_are_the_same_lines(tmp_path, text, message):
    f = tmp_path / "doc.json"
    f.write_text(text)
    with pytest.raises(ParvaError, match=message):
        read_json(f, "plan")


def test_points_from_columns_are_the_points():
    cols = PointColumns(np.array([1, 2]), np.array([1, 8]), np.array([1, 3]), np.array([74.5, 0.0]),
                        np.array([0.013, 0.0]), extra=((("gpu", "x"),), (("gpu", "y"),)))
    points = cols.points()
    assert points == (ProfilePoint(1, 1, 1, 74.5, 0.013, (("gpu", "x"),)),
                      ProfilePoint(2, 8, 3, 0.0, 0.0, (("gpu", "y"),)))
    assert [type(v) for v in (points[0].size, points[0].throughput)] == [int, float]
    assert points[0].exact_latency_ms * 1 == 13 and hash(points[0]) == hash(ProfilePoint(1, 1, 1, 74.5, 0.013, (("gpu", "x"),)))
    with pytest.raises(AttributeError):
        points[0].size = 2  # still frozen
    assert math.isclose(points[1].segment_throughput, 0.0)


def test_the_plan_process_ends_at_once_with_everything_written(tmp_path):
    """Run as its own process, `plan` ends right after its output (`finish_now`): stdout is
    complete and flushed, the file is whole, the exit code is 0; under a runner it returns."""
    import subprocess
    import sys

    from typer.testing import CliRunner

    from parvagpu.cli import app

    args = ["plan", "--scenario", "2", "--strategy", "parva", "--format", "json"]
    proc = subprocess.run([sys.executable, "-m", "parvagpu", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    in_process = CliRunner().invoke(app, args)
    assert in_process.exit_code == 0 and json.loads(proc.stdout) == json.loads(in_process.stdout)
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "parvagpu", *args[:-2], "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "wrote" in proc.stderr
    assert out.read_text() == in_process.stdout
