"""The node agent: pure diff, apply on the strict fake, idempotence, incremental change,
rollback from a failure at every step, refusal and --force, teardown, the node state file."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import pytest
from apply_support import applied, clone, fresh_node, layout, node_picture, scenario_plan, wanted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parvagpu import node as agent
from parvagpu.node import (
    ApplyFailed,
    GpuView,
    NodeDirs,
    NodeState,
    NodeView,
    Op,
    Refused,
    StateEntry,
    Want,
    apply_plan,
    diff,
    node_status,
    node_wants,
    plan_nodes,
    read_state,
    teardown,
)
from parvagpu.core.gpus import gpu_type
from parvagpu.hardware.mig import FakeBackend, InjectedFailure, mutating_calls
from parvagpu.hardware.mig.base import ComputeInstance, GpuInstance, GpuProcess
from parvagpu.core.errors import ParvaError, SystemFailure
from parvagpu.core.model import PlacedSegment
from parvagpu.hardware.mps import FakeMps, MpsError

A100 = gpu_type("A100-80GB")


def P(size):
    return A100.profile(size)


def want(gpu, start, size, model="m", batch=8, procs=1):
    return Want(gpu, start, P(size), model, batch, procs)


def inst(gpu, gi, size, start, cis=((0, None),), uuid="MIG-x"):
    p = P(size)
    return GpuInstance(
        gpu, gi, p.profile_id, start, p.memory_slices, p.size,
        tuple(ComputeInstance(c, s or p.size, f"{uuid}-{gi}-{c}") for c, s in cis),
    )


def view(*gpus, mps=(), processes=None, previous=None, bound=()):
    """A node holding `gpus` (lists of instances); `bound` wants are recorded in its state file."""
    gv = tuple(GpuView(i, "A100-80GB", True, True, tuple(insts)) for i, insts in enumerate(gpus))
    if bound:
        held = {(i.gpu, i.start): i for insts in gpus for i in insts}
        previous = NodeState(0, "A100-80GB", 8, tuple(
            StateEntry(w.model, w.gpu, w.start, w.profile.size, w.profile.name, w.profile.profile_id, w.batch,
                       w.procs, 1, 0, held[(w.gpu, w.start)].uuid, "/p", "/l")
            for w in bound
        ))
    return NodeView(gv, frozenset(mps), processes or {}, previous)


def ops(steps):
    return [(s.op, s.gpu, s.start) for s in steps]


# -- diff (pure) -------------------------------------------------------------------------------


def test_diff_from_empty_creates_largest_first_gi_ci_mps():
    steps = diff(view([], []), (want(0, 0, 1), want(0, 4, 3), want(0, 2, 2), want(1, 0, 7)))
    assert ops(steps) == [
        (Op.CREATE_GI, 0, 4), (Op.CREATE_CI, 0, 4), (Op.START_MPS, 0, 4),
        (Op.CREATE_GI, 0, 2), (Op.CREATE_CI, 0, 2), (Op.START_MPS, 0, 2),
        (Op.CREATE_GI, 0, 0), (Op.CREATE_CI, 0, 0), (Op.START_MPS, 0, 0),
        (Op.CREATE_GI, 1, 0), (Op.CREATE_CI, 1, 0), (Op.START_MPS, 1, 0),
    ]
    assert [s.slices for s in steps if s.op is Op.CREATE_CI] == [3, 2, 1, 7]


def test_diff_of_identical_layouts_is_empty():
    wants = (want(0, 4, 3), want(0, 0, 2))
    v = view([inst(0, 1, 3, 4), inst(0, 2, 2, 0)], mps={(0, 4), (0, 0)}, bound=wants)
    assert diff(v, wants) == []
    # without a state file the kept instances are only (re)bound: no hardware step
    assert {s.op for s in diff(view([inst(0, 1, 3, 4), inst(0, 2, 2, 0)], mps={(0, 4), (0, 0)}), wants)} == {Op.BIND}


def test_diff_destroys_before_creating_on_each_gpu():
    v = view([inst(0, 1, 7, 0)], [inst(1, 1, 3, 4)], mps={(0, 0), (1, 4)}, bound=(want(1, 4, 3),))
    steps = diff(v, (want(0, 4, 3), want(0, 0, 4), want(1, 4, 3)))
    assert ops(steps) == [
        (Op.STOP_MPS, 0, 0), (Op.DESTROY_CI, 0, 0), (Op.DESTROY_GI, 0, 0),
        (Op.CREATE_GI, 0, 0), (Op.CREATE_CI, 0, 0), (Op.START_MPS, 0, 0),
        (Op.CREATE_GI, 0, 4), (Op.CREATE_CI, 0, 4), (Op.START_MPS, 0, 4),
    ]


def test_diff_same_start_other_profile_is_replaced():
    v = view([inst(0, 1, 2, 0)], mps={(0, 0)})
    steps = diff(v, (want(0, 0, 1),))
    assert [s.op for s in steps] == [
        Op.STOP_MPS, Op.DESTROY_CI, Op.DESTROY_GI, Op.CREATE_GI, Op.CREATE_CI, Op.START_MPS,
    ]
    assert steps[2].profile == "2g.20gb" and steps[3].profile == "1g.10gb"


def test_diff_refuses_to_destroy_an_instance_with_workers():
    v = view([inst(0, 1, 7, 0)], processes={(0, 1): (GpuProcess(123, "python3"),)})
    with pytest.raises(Refused, match=r"gpu 0 7g.80gb@0 runs processes 123.*--force"):
        diff(v, (want(0, 0, 1),))


def test_diff_force_terminates_workers_after_stopping_mps():
    v = view([inst(0, 1, 7, 0)], mps={(0, 0)},
             processes={(0, 1): (GpuProcess(9, "nvidia-cuda-mps-server"), GpuProcess(123, "python3"))})
    steps = diff(v, (), force=True)
    assert [s.op for s in steps] == [Op.STOP_MPS, Op.KILL, Op.DESTROY_CI, Op.DESTROY_GI]
    assert steps[1].pids == (123,)  # the MPS server is not a worker


def test_diff_mps_server_alone_does_not_block():
    v = view([inst(0, 1, 7, 0)], mps={(0, 0)}, processes={(0, 1): (GpuProcess(9, "nvidia-cuda-mps-server"),)})
    assert [s.op for s in diff(v, ())] == [Op.STOP_MPS, Op.DESTROY_CI, Op.DESTROY_GI]


def test_diff_processes_on_kept_instances_are_left_alone():
    w = (want(0, 0, 7),)
    v = view([inst(0, 1, 7, 0)], mps={(0, 0)}, processes={(0, 1): (GpuProcess(123, "python3"),)}, bound=w)
    assert diff(v, w) == []


def test_diff_kept_instance_without_daemon_only_starts_mps():
    w = (want(0, 4, 3),)
    assert ops(diff(view([inst(0, 1, 3, 4)], bound=w), w)) == [(Op.START_MPS, 0, 4)]


def test_diff_gi_without_ci_gets_one():
    w = (want(0, 4, 3),)
    v = view([inst(0, 1, 3, 4, cis=())], previous=view([inst(0, 1, 3, 4)], bound=w).previous)
    assert [s.op for s in diff(v, w)] == [Op.CREATE_CI, Op.START_MPS]


def test_diff_split_compute_instances_are_rebuilt_whole():
    w = (want(0, 4, 3),)
    v = view([inst(0, 1, 3, 4, cis=((0, 2), (1, 1)))], mps={(0, 4)}, bound=w)
    steps = diff(v, w)
    assert [(s.op, s.ci_id) for s in steps] == [
        (Op.STOP_MPS, None), (Op.DESTROY_CI, 0), (Op.DESTROY_CI, 1), (Op.CREATE_CI, None), (Op.START_MPS, None),
    ]


def test_diff_stops_a_stale_daemon_whose_instance_is_gone():
    steps = diff(view([]), (), force=False) + diff(view([], mps={(0, 4)}), ())
    assert ops(steps) == [(Op.STOP_MPS, 0, 4)] and steps[0].note == "stale"


def test_diff_restarts_the_daemon_of_an_instance_recreated_behind_its_back():
    e = StateEntry("m", 0, 4, 3, "3g.40gb", 9, 8, 1, 1, 0, "MIG-old", "/p", "/l")
    prev = NodeState(0, "A100-80GB", 8, (e,))
    steps = diff(view([inst(0, 1, 3, 4)], mps={(0, 4)}, previous=prev), (want(0, 4, 3),))
    assert [s.op for s in steps] == [Op.STOP_MPS, Op.START_MPS]


def test_diff_binding_change_keeps_the_instance():
    e = StateEntry("old", 0, 4, 3, "3g.40gb", 9, 8, 1, 1, 0, "MIG-x-1-0", "/p", "/l")
    prev = NodeState(0, "A100-80GB", 8, (e,))
    steps = diff(view([inst(0, 1, 3, 4)], mps={(0, 4)}, previous=prev), (want(0, 4, 3, model="new"),))
    assert [s.op for s in steps] == [Op.BIND] and "new" in steps[0].describe()


def test_diff_ignores_gpus_without_mig():
    gv = (GpuView(0, "A100-80GB", False, False, ()),)
    assert diff(NodeView(gv), ()) == []


# -- plan -> node wants -------------------------------------------------------------------------


def test_node_wants_rejects_unknown_nodes():
    plan = scenario_plan(6)
    assert plan_nodes(plan) == [0, 1, 2]
    for bad in (3, -1, 99):
        with pytest.raises(ParvaError, match=f"no node {bad} .*0..2"):
            node_wants(plan, bad)


def _with_segment(plan, idx, **change):
    segs = list(plan.segments)
    segs[idx] = dataclasses.replace(segs[idx], **change)
    return dataclasses.replace(plan, segments=tuple(segs))


def test_node_wants_rejects_illegal_and_overlapping_placements():
    plan = scenario_plan(6)
    i3 = next(i for i, s in enumerate(plan.segments) if s.size == 3 and plan.node_of(s.gpu) == 0)
    with pytest.raises(ParvaError, match="cannot start at slot 2"):
        node_wants(_with_segment(plan, i3, start=2), 0)
    seven = next(s for s in plan.segments if s.size == 7)
    clash = PlacedSegment(plan.segments[i3].segment, seven.gpu, 4)
    bad = dataclasses.replace(plan, segments=plan.segments + (clash,))
    with pytest.raises(ParvaError, match="overlaps"):
        node_wants(bad, plan.node_of(seven.gpu))


# -- apply on the fake --------------------------------------------------------------------------


@pytest.mark.parametrize("node", [0, 1, 2])
def test_scenario6_node_by_node_creates_exactly_the_plan(tmp_path, node):
    plan = scenario_plan(6)
    fake, mps, dirs = applied(plan, node, tmp_path)
    assert layout(fake) == wanted(plan, node)
    insts = {(g, i.start): i for g in range(8) for i in fake.list_instances(g)}
    assert all(i.whole_ci for i in insts.values())
    # one daemon per instance, on the instance's own MIG UUID and its own directories
    assert len(mps.daemons) == len(insts)
    for (g, s), i in insts.items():
        assert mps.daemons[dirs.pipe_dir(g, s)]["uuid"] == i.uuid
        assert mps.daemons[dirs.pipe_dir(g, s)]["log_dir"] == dirs.log_dir(g, s)
    # the state file maps every segment to its instance
    state = read_state(dirs.state_file)
    assert state.node == node and state.gpu_type == "A100-80GB"
    assert {(e.gpu, e.start) for e in state.segments} == set(insts)
    for e in state.segments:
        i = insts[(e.gpu, e.start)]
        assert (e.gi_id, e.ci_id, e.mig_uuid, e.profile_id) == (i.gi_id, i.cis[0].ci_id, i.uuid, i.profile_id)
        assert e.mps_pipe_dir == dirs.pipe_dir(e.gpu, e.start)
    by_slot = {(w.gpu, w.start): w for w in node_wants(plan, node)}
    assert all((e.model, e.batch, e.procs) == by_slot[(e.gpu, e.start)].binding for e in state.segments)


def test_state_file_has_the_documented_fields(tmp_path):
    _, _, dirs = applied(scenario_plan(6), 2, tmp_path)
    doc = json.loads(dirs.state_file.read_text())
    assert set(doc) == {"version", "node", "gpu_type", "gpus_per_node", "segments"}
    assert set(doc["segments"][0]) == {
        "model", "gpu", "start", "size", "profile", "profile_id", "batch", "procs", "gi_id", "ci_id",
        "mig_uuid", "mps_pipe_dir", "mps_log_dir",
    }


def test_second_apply_changes_nothing(tmp_path):
    plan = scenario_plan(6)
    fake, mps, dirs = applied(plan, 0, tmp_path)
    before = dirs.state_file.read_text()
    mtime = dirs.state_file.stat().st_mtime_ns
    fake.calls.clear()
    mps.calls.clear()
    result = apply_plan(plan, 0, fake, mps, dirs)
    assert result.steps == [] and not result.state_written
    assert mutating_calls(fake.calls) == 0
    assert mps.calls["start"] == mps.calls["stop"] == 0
    assert dirs.state_file.read_text() == before and dirs.state_file.stat().st_mtime_ns == mtime
    # reads only: one listing per GPU, no process queries, no placement queries
    assert fake.calls["list_instances"] == 8 and fake.calls["running_processes"] == 0


def test_scenario5_after_scenario6_keeps_every_shared_instance(tmp_path):
    s6, s5 = scenario_plan(6), scenario_plan(5)
    for node in plan_nodes(s5):
        root = tmp_path / f"n{node}"
        fake, mps, dirs = applied(s6, node, root) if node in plan_nodes(s6) else (*fresh_node(s6), NodeDirs(root, node))
        before = {(g, i.start, i.profile_id): (i.gi_id, i.uuid) for g in range(8) for i in fake.list_instances(g)}
        shared = set(before) & wanted(s5, node)
        mps.log.clear()
        result = apply_plan(s5, node, fake, mps, dirs)
        after = {(g, i.start, i.profile_id): (i.gi_id, i.uuid) for g in range(8) for i in fake.list_instances(g)}
        assert set(after) == wanted(s5, node)
        for key in shared:
            assert after[key] == before[key], key  # same GI and MIG UUID: never touched
        touched = {p for _, p in mps.log}
        assert not touched & {dirs.pipe_dir(g, s) for g, s, _ in shared}  # their daemons kept running
        assert node_status(node, fake, mps, dirs, s5).drift == []
        if node == 0:
            assert shared and result.counts()["destroy-gi"] > 0  # the scenarios really differ here


def _runs(plan_from, plan_to, node, tmp_path):
    """A node holding `plan_from` (or empty) and a function that applies `plan_to` to a copy."""
    if plan_from is None:
        fake, mps = fresh_node(plan_to)
        dirs = NodeDirs(tmp_path, node)
    else:
        fake, mps, dirs = applied(plan_from, node, tmp_path)
    snapshot = (fake.to_dict(), mps.to_dict(), dirs.state_file.read_text() if dirs.state_file.exists() else None)

    def attempt(inject):
        f = FakeBackend.from_dict(json.loads(json.dumps(snapshot[0])))
        m = FakeMps.from_dict(json.loads(json.dumps(snapshot[1])), f)
        if snapshot[2] is None:
            dirs.state_file.unlink(missing_ok=True)
        else:
            dirs.state_file.write_text(snapshot[2])
        inject(f, m)
        before = node_picture(f, m)
        return f, m, before, apply_plan(plan_to, node, f, m, dirs)

    return attempt, dirs


def _check_unchanged(f, m, before, dirs, exc):
    assert node_picture(f, m) == before
    assert isinstance(exc, ParvaError) and "\n" not in str(exc)
    state = read_state(dirs.state_file)
    if state is not None:  # still true to the hardware (re-created instances have new UUIDs)
        live = {(g, i.start): i.uuid for g in range(8) for i in f.list_instances(g)}
        assert all(live[(e.gpu, e.start)] == e.mig_uuid for e in state.segments)
        assert all(m.daemons[e.mps_pipe_dir]["uuid"] == e.mig_uuid for e in state.segments)


@pytest.mark.parametrize("case", ["fresh-s6", "s6-to-s5"])
def test_injected_failure_at_every_backend_call_leaves_the_node_as_it_was(tmp_path, case):
    """Fail each backend call of a whole apply in turn: reads fail before anything changes,
    every later failure rolls back; either way the node, its daemons and its state file are as
    they were (instances re-created by the rollback have new UUIDs, and the state file says so)."""
    plan_from, plan_to = (None, scenario_plan(6)) if case == "fresh-s6" else (scenario_plan(6), scenario_plan(5))
    attempt, dirs = _runs(plan_from, plan_to, 0, tmp_path)
    f, _, _, ok = attempt(lambda f, m: None)
    total = sum(f.calls.values())
    assert ok.steps and total > len(ok.steps)
    kinds = Counter()
    for i in range(total):
        seen = []

        def inject(f, m, i=i):
            f.fail_at(i)
            seen.append((f, m, node_picture(f, m)))

        with pytest.raises(ParvaError) as info:
            attempt(inject)
        exc = info.value
        assert isinstance(exc, (ApplyFailed, InjectedFailure)), exc
        if isinstance(exc, ApplyFailed):
            assert "the node is as it was" in str(exc)
        kinds[type(exc).__name__] += 1
        _check_unchanged(*seen[0], dirs, exc)
    c = ok.counts()  # backend calls while executing: a CI creation also asks for its UUID
    assert kinds["ApplyFailed"] == c["create-gi"] + 2 * c["create-ci"] + c["destroy-ci"] + c["destroy-gi"]
    assert kinds["InjectedFailure"] > 0


@pytest.mark.parametrize("method", ["start", "stop"])
def test_mps_failure_at_every_daemon_call_rolls_back(tmp_path, method):
    attempt, dirs = _runs(scenario_plan(6), scenario_plan(5), 0, tmp_path)
    _, m, _, _ = attempt(lambda f, m: None)
    n = m.calls[method]
    assert n > 0
    for i in range(n):
        seen = []

        def inject(f, m, i=i):
            m.fail_at(i, method)
            seen.append((f, m, node_picture(f, m)))

        with pytest.raises(ApplyFailed, match="rolled back") as info:
            attempt(inject)
        _check_unchanged(*seen[0], dirs, info.value)


def test_interrupt_rolls_back_and_propagates(tmp_path):
    attempt, dirs = _runs(None, scenario_plan(6), 0, tmp_path)
    seen = []

    def inject(f, m):
        f.fail_at(20, "create_gpu_instance", KeyboardInterrupt())
        seen.append((f, m, node_picture(f, m)))

    with pytest.raises(KeyboardInterrupt):
        attempt(inject)
    f, m, before = seen[0]
    assert node_picture(f, m) == before and not dirs.state_file.exists()


def test_refuses_to_destroy_instances_with_running_processes(tmp_path):
    s6, s5 = scenario_plan(6), scenario_plan(5)
    fake, mps, dirs = applied(s6, 0, tmp_path)
    doomed = next(i for i in fake.list_instances(0) if (0, i.start, i.profile_id) not in wanted(s5, 0))
    pid = fake.add_process(0, doomed.gi_id, "python3")
    before, state = node_picture(fake, mps), dirs.state_file.read_text()
    fake.calls.clear()
    with pytest.raises(Refused, match=f"runs processes {pid}"):
        apply_plan(s5, 0, fake, mps, dirs)
    assert node_picture(fake, mps) == before and dirs.state_file.read_text() == state
    assert mutating_calls(fake.calls) == 0 and mps.calls["stop"] == 0
    # --force terminates them and goes on
    killed = []
    result = apply_plan(s5, 0, fake, mps, dirs, force=True, kill=lambda p: (killed.extend(p), fake.kill_processes(p)))
    assert killed == [pid] and result.counts()["kill-processes"] == 1
    assert layout(fake) == wanted(s5, 0)


def test_dry_run_changes_nothing(tmp_path):
    s6, s5 = scenario_plan(6), scenario_plan(5)
    fake, mps, dirs = applied(s6, 0, tmp_path)
    before, state = node_picture(fake, mps), dirs.state_file.read_text()
    fake.calls.clear()
    mps.calls.clear()
    result = apply_plan(s5, 0, fake, mps, dirs, dry_run=True)
    assert result.steps and not result.executed
    assert mutating_calls(fake.calls) == 0 and mps.calls["start"] == mps.calls["stop"] == 0
    assert node_picture(fake, mps) == before and dirs.state_file.read_text() == state


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FakeBackend("H100-80GB", 8), "is an H100-80GB, the plan is for A100-80GB"),
        (lambda: FakeBackend("A100-80GB", 2), "uses gpu 2 of this node, which has 2 GPU"),
        (lambda: FakeBackend("A100-80GB", 8, mig=False), "MIG mode disabled"),
    ],
)
def test_a_node_that_cannot_hold_the_plan_is_refused_before_any_change(tmp_path, make, match):
    fake = make()
    mps = FakeMps(fake)
    with pytest.raises(ParvaError, match=match):
        apply_plan(scenario_plan(6), 0, fake, mps, NodeDirs(tmp_path, 0))
    assert mutating_calls(fake.calls) == 0 and not mps.daemons


def test_pending_mig_mode_change_is_refused(tmp_path):
    fake = FakeBackend("A100-80GB", 8)
    fake.set_mig_mode(3, True, pending=False)
    with pytest.raises(ParvaError, match="gpu 3 has a MIG mode change pending"):
        apply_plan(scenario_plan(6), 0, fake, FakeMps(fake), NodeDirs(tmp_path, 0))


def test_hardware_placement_table_is_consulted(tmp_path):
    class Narrow(FakeBackend):
        def possible_placements(self, gpu, profile_id):
            places = super().possible_placements(gpu, profile_id)
            return tuple(p for p in places if p[0] != 4) if profile_id == 9 else places

    fake = Narrow("A100-80GB", 8)
    with pytest.raises(SystemFailure, match="does not offer 3g.40gb at start 4"):
        apply_plan(scenario_plan(6), 0, fake, FakeMps(fake), NodeDirs(tmp_path, 0))
    assert mutating_calls(fake.calls) == 0


def test_unplanned_instances_on_the_node_are_removed(tmp_path):
    plan = scenario_plan(6)
    fake, mps = fresh_node(plan)
    gi = fake.create_gpu_instance(7, 0, 0)
    fake.create_compute_instance(7, gi, 3)  # a foreign split layout
    fake.create_compute_instance(7, gi, 4)
    apply_plan(plan, 2, fake, mps, NodeDirs(tmp_path, 2))
    assert layout(fake) == wanted(plan, 2)


def test_gpus_of_another_type_are_left_alone(tmp_path):
    plan = scenario_plan(6)
    fake, mps = fresh_node(plan)
    fake._gpus[5].type_name = "H100-80GB"  # a mixed node; the plan only uses gpu 0 of node 2
    gi = fake.create_gpu_instance(5, 0, 0)
    apply_plan(plan, 2, fake, mps, NodeDirs(tmp_path, 2))
    assert [i.gi_id for i in fake.list_instances(5)] == [gi]


def test_state_file_of_another_node_is_refused(tmp_path):
    plan = scenario_plan(6)
    _, _, dirs = applied(plan, 1, tmp_path)
    other = NodeDirs(tmp_path, 0)
    other.base.mkdir(parents=True)
    other.state_file.write_text(dirs.state_file.read_text())
    with pytest.raises(ParvaError, match="belongs to node 1"):
        apply_plan(plan, 0, *fresh_node(plan), other)


@pytest.mark.parametrize("text", ["{", "[]", '{"version": 2}', '{"version": 1, "node": 0}'])
def test_malformed_state_file_is_a_clear_error(tmp_path, text):
    dirs = NodeDirs(tmp_path, 0)
    dirs.base.mkdir(parents=True)
    dirs.state_file.write_text(text)
    with pytest.raises(ParvaError):
        read_state(dirs.state_file)


def test_teardown_removes_everything_and_is_idempotent(tmp_path):
    plan = scenario_plan(6)
    fake, mps, dirs = applied(plan, 0, tmp_path)
    result = teardown(0, fake, mps, dirs)
    assert result.counts()["destroy-gi"] == len(wanted(plan, 0))
    assert layout(fake) == set() and not mps.daemons and not dirs.state_file.exists()
    assert all(fake.mig_mode(g) == (True, True) for g in range(8))
    fake.calls.clear()
    assert teardown(0, fake, mps, dirs).steps == [] and mutating_calls(fake.calls) == 0


def test_teardown_refuses_busy_instances_unless_forced(tmp_path):
    fake, mps, dirs = applied(scenario_plan(6), 2, tmp_path)
    gi = fake.list_instances(0)[0].gi_id
    pid = fake.add_process(0, gi)
    with pytest.raises(Refused):
        teardown(2, fake, mps, dirs)
    killed = []
    teardown(2, fake, mps, dirs, force=True, kill=lambda p: (killed.extend(p), fake.kill_processes(p)))
    assert layout(fake) == set() and killed == [pid]


def test_status_reports_drift(tmp_path):
    s6, s5 = scenario_plan(6), scenario_plan(5)
    fake, mps, dirs = applied(s6, 0, tmp_path)
    assert node_status(0, fake, mps, dirs, s6).drift == []
    assert node_status(0, fake, mps, dirs, s5).drift
    assert node_status(0, fake, mps, dirs).drift is None
    # a daemon that died is drift too
    mps.stop(dirs.pipe_dir(0, 0), dirs.log_dir(0, 0))
    drift = node_status(0, fake, mps, dirs, s6).drift
    assert [(s.op, s.gpu, s.start) for s in drift] == [(Op.START_MPS, 0, 0)]


def test_apply_through_the_nvml_backend_code(tmp_path, monkeypatch):
    """The real backend's NVML call sequence, over a pynvml-shaped stand-in."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    import sys

    from nvml_stub import StubNvml

    from parvagpu.hardware.mig.nvml import NvmlBackend

    plan = scenario_plan(6)
    fake, _ = fresh_node(plan)
    monkeypatch.setitem(sys.modules, "pynvml", StubNvml(fake))
    nv = NvmlBackend()
    mps = FakeMps(fake)
    dirs = NodeDirs(tmp_path, 1)
    apply_plan(plan, 1, nv, mps, dirs)
    assert layout(fake) == wanted(plan, 1)
    nv.calls.clear()
    nv.nvml_calls.clear()
    assert apply_plan(plan, 1, nv, mps, dirs).steps == [] and mutating_calls(nv.calls) == 0
    assert not any("Create" in n or "Destroy" in n for n in nv.nvml_calls)
    apply_plan(scenario_plan(5), 1, nv, mps, dirs)
    assert layout(fake) == wanted(scenario_plan(5), 1)
    assert nv.nvml_calls["nvmlDeviceCreateGpuInstanceWithPlacement"] == nv.calls["create_gpu_instance"]


def test_a_failing_mps_start_that_left_a_daemon_is_cleaned_up(tmp_path):
    plan = scenario_plan(6)
    fake, _ = fresh_node(plan)

    class Flaky(FakeMps):
        def start(self, pipe_dir, log_dir, mig_uuid):
            super().start(pipe_dir, log_dir, mig_uuid)
            if len(self.daemons) == 3:
                raise MpsError("daemon started but did not answer")

    mps = Flaky(fake)
    with pytest.raises(ApplyFailed, match="the node is as it was"):
        apply_plan(plan, 0, fake, mps, NodeDirs(tmp_path, 0))
    assert layout(fake) == set() and not mps.daemons


# -- property: every plan the planner emits replays on the fake ----------------------------------


@st.composite
def services(draw):
    profiles, _ = agent_inputs()
    names = draw(st.lists(st.sampled_from(sorted(profiles)), min_size=1, max_size=len(profiles), unique=True))
    out = []
    for m in names:
        fastest = min(p.latency_ms for p in profiles[m].points if p.runnable and p.procs <= 3)
        slo = round(fastest / 0.45 * draw(st.floats(1.2, 4.0)), 1)
        out.append((m, round(draw(st.floats(20, 3000)), 1), slo))
    return tuple(out)


def agent_inputs():
    from parvagpu.cli.common import load_inputs

    return load_inputs(None, None, 1, None, False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(services(), st.integers(1, 8))
def test_any_plan_replays_on_the_fake_and_status_matches(tmp_path_factory, svcs, per_node):
    from parvagpu.core.model import Service
    from parvagpu.planning.request import PlanRequest
    from parvagpu.planning.strategies import plan as make_plan

    profiles, _ = agent_inputs()
    plan = make_plan(PlanRequest(tuple(Service(*s) for s in svcs), profiles, A100, 3, per_node), "parva")
    root = tmp_path_factory.mktemp("replay")
    for node in plan_nodes(plan):
        fake, mps = fresh_node(plan, per_node)
        dirs = NodeDirs(root, node)
        apply_plan(plan, node, fake, mps, dirs)
        assert layout(fake) == wanted(plan, node)
        assert node_status(node, fake, mps, dirs, plan).drift == []
        assert len(read_state(dirs.state_file).segments) == len(node_wants(plan, node))


def test_default_state_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(agent.STATE_ENV, raising=False)
    assert str(agent.default_state_root()) == agent.DEFAULT_STATE_ROOT
    monkeypatch.setenv(agent.STATE_ENV, str(tmp_path))
    assert agent.default_state_root() == tmp_path
    assert NodeDirs(tmp_path, 3).pipe_dir(2, 4).endswith("node3/nvidia-mps-2-4")


def test_clone_is_independent():
    fake, mps = fresh_node(scenario_plan(6))
    f2, _ = clone(fake, mps)
    f2.create_gpu_instance(0, 0, 0)
    assert fake.list_instances(0) == ()


def test_one_agent_at_a_time_per_node(tmp_path):
    plan = scenario_plan(6)
    fake, mps = fresh_node(plan)
    dirs = NodeDirs(tmp_path, 0)
    with agent.node_lock(dirs):
        with pytest.raises(ParvaError, match="being changed by another parvagpu process"):
            apply_plan(plan, 0, fake, mps, dirs)
        with pytest.raises(ParvaError, match="being changed"):
            teardown(0, fake, mps, dirs)
        assert apply_plan(plan, 0, fake, mps, dirs, dry_run=True).steps  # a dry run only reads
    assert mutating_calls(fake.calls) == 0
    apply_plan(plan, 0, fake, mps, dirs)
    assert layout(fake) == wanted(plan, 0)


def test_a_refused_first_apply_leaves_no_directory(tmp_path):
    fake = FakeBackend("A100-80GB", 2)
    with pytest.raises(ParvaError):
        apply_plan(scenario_plan(6), 0, fake, FakeMps(fake), NodeDirs(tmp_path / "st", 0))
    assert not (tmp_path / "st" / "node0").exists()
