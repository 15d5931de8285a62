"""The node state file reader is strict: types, ranges, a segment's GPU within the node, profiles
the node's GPU type has, legal and non-overlapping starts. Every bad file is one line, exit 2,
through the command line too, and nothing is changed."""

from __future__ import annotations

import copy
import json

import pytest
from apply_support import scenario_plan, write_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.core.errors import ParvaError
from parvagpu.node import NodeDirs, NodeState, read_state, state_from_dict
from parvagpu.node.state import state_doc

runner = CliRunner()


def _seg(**change):
    seg = {
        "model": "bert", "gpu": 2, "start": 4, "size": 3, "profile": "3g.40gb", "profile_id": 9, "batch": 32,
        "procs": 2, "gi_id": 2, "ci_id": 0, "mig_uuid": "MIG-40a387fc", "mps_pipe_dir": "/p/2-4",
        "mps_log_dir": "/l/2-4",
    }
    return {**seg, **change}


VALID = {
    "version": 1, "node": 0, "gpu_type": "A100-80GB", "gpus_per_node": 8,
    "segments": [
        _seg(),
        _seg(model="gpt", start=0, size=4, profile="4g.40gb", profile_id=5, mig_uuid="MIG-1",
             mps_pipe_dir="/p/2-0", mps_log_dir="/l/2-0"),
    ],
}


def _with(**change):
    doc = copy.deepcopy(VALID)
    doc.update(change)
    return doc


def _seg0(**change):
    doc = copy.deepcopy(VALID)
    doc["segments"][0].update(change)
    return doc


BAD = [
    (_with(node="abc"), "node must be an integer, got 'abc'"),
    (_with(node=-1), "node must be >= 0, got -1"),
    (_with(node=0.0), "node must be an integer"),
    (_with(version=True), "unsupported node state version True"),
    (_with(gpus_per_node=0), "gpus_per_node must be >= 1, got 0"),
    (_with(gpus_per_node=True), "gpus_per_node must be an integer"),
    (_with(gpu_type="B300"), "unknown GPU type 'B300'"),
    (_with(gpu_type=7), "gpu_type must be a string"),
    (_with(segments={}), "segments must be a list"),
    (_with(extra=1), "not a node state file"),
    (_seg0(gpu=999), "segment 0: gpu 999 is not a GPU of the node (gpus_per_node 8)"),
    (_seg0(gpu=-1), "segment 0: gpu must be >= 0"),
    (_seg0(gpu="2"), "segment 0: gpu must be an integer"),
    (_seg0(size=5), "segment 0: A100-80GB has no 5g instance"),
    (_seg0(profile="3g.20gb"), "segment 0: profile '3g.20gb' (id 9) is not A100-80GB's 3g profile"),
    (_seg0(profile_id=10), "is not A100-80GB's 3g profile (3g.40gb, id 9)"),
    (_seg0(start=1), "segment 0: 3g.40gb cannot start at slot 1"),
    (_seg0(start=0), "segment 1: 4g.40gb@0 overlaps another segment on gpu 2"),
    (_seg0(batch=0), "segment 0: batch must be >= 1, got 0"),
    (_seg0(procs=1.5), "segment 0: procs must be an integer, got 1.5"),
    (_seg0(model=""), "segment 0: model must be a non-empty string"),
    (_seg0(mig_uuid=None), "segment 0: mig_uuid must be a non-empty string, got None"),
    (_seg0(gi_id=-3), "segment 0: gi_id must be >= 0"),
    (_seg0(unknown="x"), "segment 0 is malformed"),
    (_with(bridges={}), "bridges must be a list"),
    (_with(bridges=[_seg(gpu=3, start=1)]), "bridge 0: 3g.40gb cannot start at slot 1"),
    (_with(bridges=[_seg(mig_uuid="MIG-9")]), "segment 2: 3g.40gb@4 overlaps another segment on gpu 2"),
]


def test_the_valid_document_reads():
    state = state_from_dict(copy.deepcopy(VALID), "state.json")
    assert isinstance(state, NodeState) and len(state.segments) == 2
    assert state_doc(state) == VALID


def test_a_state_with_bridges_reads_and_writes_them_only_when_there_are_some():
    doc = _with(bridges=[_seg(gpu=3, model="gpt", mig_uuid="MIG-b", mps_pipe_dir="/p/3-4", mps_log_dir="/l/3-4")])
    state = state_from_dict(copy.deepcopy(doc), "state.json")
    assert [(e.gpu, e.model, e.mig_uuid) for e in state.bridges] == [(3, "gpt", "MIG-b")]
    assert state_doc(state) == doc and state.by_slot().keys() == {(2, 4), (2, 0)}
    assert "bridges" not in state_doc(state_from_dict(copy.deepcopy(VALID), "state.json"))


@pytest.mark.parametrize("doc, needle", BAD, ids=[n[:40] for _, n in BAD])
def test_each_bad_field_is_one_line(doc, needle):
    with pytest.raises(ParvaError) as info:
        state_from_dict(doc, "state.json")
    msg = str(info.value)
    assert msg.startswith("state.json: ") and needle in msg and "\n" not in msg


@pytest.mark.parametrize("doc, needle", BAD[::3], ids=[n[:40] for _, n in BAD[::3]])
def test_bad_state_file_through_the_command_line_is_exit_2_and_changes_nothing(tmp_path, doc, needle):
    plan = write_plan(scenario_plan(6), tmp_path / "s6.json")
    node = ["--node", 0, "--backend", "fake", "--fake-state", tmp_path / "fake.json", "--state-dir", tmp_path / "st"]
    dirs = NodeDirs(tmp_path / "st", 0)
    dirs.base.mkdir(parents=True)
    dirs.state_file.write_text(json.dumps(doc))
    for verb in (["apply", plan], ["status"], ["teardown"]):
        r = runner.invoke(app, [str(a) for a in verb + node])
        assert r.exit_code == 2, r.output
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
        assert str(dirs.state_file) in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s6.json", "st"]  # no fake node saved
    assert json.loads(dirs.state_file.read_text()) == doc


def test_every_state_the_agent_writes_reads_back(tmp_path):
    plan = scenario_plan(6)
    node = ["--node", 0, "--backend", "fake", "--fake-state", tmp_path / "fake.json", "--state-dir", tmp_path / "st"]
    assert runner.invoke(app, [str(a) for a in ["apply", write_plan(plan, tmp_path / "p.json"), *node]]).exit_code == 0
    state = read_state(NodeDirs(tmp_path / "st", 0).state_file)
    assert state is not None and len(state.segments) == sum(1 for s in plan.segments if plan.node_of(s.gpu) == 0)
    assert state_from_dict(state_doc(state), "x") == state


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)
_TOP = sorted(VALID)
_SEG = sorted(VALID["segments"][0])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["top", "segment"]),
    key=st.sampled_from(_TOP + _SEG),
    value=_json,
    drop=st.booleans(),
)
def test_fuzz_a_valid_file_with_one_field_changed_reads_or_fails_in_one_line(where, key, value, drop):
    doc = copy.deepcopy(VALID)
    target = doc if where == "top" or key not in _SEG else doc["segments"][1]
    if drop:
        target.pop(key, None)
    else:
        target[key] = value
    try:
        state = state_from_dict(doc, "f.json")
    except ParvaError as exc:
        assert str(exc).startswith("f.json") and "\n" not in str(exc)
        return
    assert state_doc(state) == doc  # accepted only when it is a well-formed state file


@settings(max_examples=200, deadline=None)
@given(value=_json)
def test_fuzz_any_json_value_reads_or_fails_in_one_line(value):
    try:
        state_from_dict(value, "f.json")
    except ParvaError as exc:
        assert "\n" not in str(exc)
