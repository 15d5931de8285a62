"""`apply NEW --node K` for a plan made with --current: the node follows the make-before-break
transition on the fake backend, ends in the plan's layout, and rolls back on a failure."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from apply_support import applied, layout, node_picture, wanted, write_plan
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.cli.common import load_inputs
from parvagpu.cli.node import node_transition, transition_order
from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import gpu_type
from parvagpu.hardware.mig import FakeBackend
from parvagpu.hardware.mps import FakeMps
from parvagpu.node import NodeDirs, Op, apply_plan, read_state
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.planning.transition import schedule


@pytest.fixture(scope="module")
def moved():
    """Scenario 3 running on one node, then re-planned for scenario 2 with --current (some segments move)."""
    profiles, s3 = load_inputs(None, None, 3, None, False)
    _, s2 = load_inputs(None, None, 2, None, False)
    a100 = gpu_type("A100-80GB")
    old = make_plan(PlanRequest(s3, profiles, a100, 3, 8), "parva")
    new = make_plan(PlanRequest(s2, profiles, a100, 3, 8, time_limit=2.0, current=old), "auto")
    assert old.gpus_used <= 8 and new.gpus_used <= 8 and new.transition.changed > 0
    return old, new


def _key(step):
    kind = "create" if step.op in (Op.CREATE_GI, Op.CREATE_CI, Op.START_MPS, Op.BIND) else "remove"
    return (kind, step.gpu, step.start)


def test_apply_follows_the_transition_and_ends_in_the_plan(moved, tmp_path):
    old, new = moved
    fake, mps, dirs = applied(old, 0, tmp_path)
    order = transition_order(new, 0)
    result = apply_plan(new, 0, fake, mps, dirs, order=order)
    assert layout(fake) == wanted(new, 0)
    seen = list(dict.fromkeys(_key(s) for s in result.steps))
    named = [k for k in seen if k in set(order)]
    assert named == [k for k in dict.fromkeys(order) if k in set(named)]  # the transition's order
    # Without the transition, diff tears a GPU down before creating on it: another order.
    fake2, mps2, dirs2 = applied(old, 0, tmp_path / "plain")
    plain = apply_plan(new, 0, fake2, mps2, dirs2, dry_run=True).steps
    assert sorted(map(repr, plain)) == sorted(map(repr, result.steps)) and plain != result.steps
    creates = [i for i, s in enumerate(result.steps) if s.op is Op.CREATE_GI]
    destroys = [i for i, s in enumerate(result.steps) if s.op is Op.DESTROY_GI]
    assert creates[0] < destroys[-1]  # creations interleave with removals, as the transition says


def test_a_failure_in_transition_order_rolls_back(moved, tmp_path):
    old, new = moved
    fake, mps, dirs = applied(old, 0, tmp_path)
    before = node_picture(fake, mps)
    order = transition_order(new, 0)
    fake.fail_at(3, "create_gpu_instance")  # part-way through: after removals and creations
    with pytest.raises(ParvaError, match="as it was"):
        apply_plan(new, 0, fake, mps, dirs, order=order)
    assert node_picture(fake, mps) == before


def test_apply_cli_with_a_transition(moved, tmp_path):
    old, new = moved
    runner = CliRunner()
    state = tmp_path / "fake.json"
    args = ["--backend", "fake", "--fake-state", str(state), "--state-dir", str(tmp_path / "st")]
    assert runner.invoke(app, ["apply", str(write_plan(old, tmp_path / "old.json")), "--node", "0", *args]).exit_code == 0
    out = runner.invoke(app, ["apply", str(write_plan(new, tmp_path / "new.json")), "--node", "0", *args])
    assert out.exit_code == 0, out.output
    again = runner.invoke(app, ["apply", str(tmp_path / "new.json"), "--node", "0", *args])
    assert "nothing to do" in again.output


def _squeeze():
    """One node of two GPUs: on GPU 0, a (4g@0) and b (3g@4) make room for each other's new
    segments (a 3g@0; b 2g@4 and 1g@6), so without a spare GPU both dip; GPU 1 is free."""
    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
    from parvagpu.planning.transition import transition

    def seg(model, size, thr, gpu, start):
        return PlacedSegment(Segment(model, Triplet(size, 8, 1, thr, 1.0)), gpu, start)

    svc = (Service("a", 100.0, 10.0), Service("b", 80.0, 10.0))
    old = DeploymentMap("A100-80GB", "parva", 3, 2, (seg("a", 4, 100.0, 0, 0), seg("b", 3, 80.0, 0, 4)), svc)
    new = DeploymentMap("A100-80GB", "parva", 3, 2, (
        seg("a", 3, 100.0, 0, 0), seg("b", 2, 40.0, 0, 4), seg("b", 1, 40.0, 0, 6)), svc)
    return old, replace(new, transition=transition(old, new))



class _Watched(FakeMps):
    """Records each model's serving capacity (instances whose MPS daemon runs), read from the
    fake node itself after every daemon start and stop."""

    def __init__(self, backend, segments):
        super().__init__(backend)
        self.thr = {(s.gpu, s.start, s.size): (s.model, s.segment.throughput) for s in segments}
        self.size = {p.profile_id: p.size for p in gpu_type("A100-80GB").profiles}
        self.seen: list[dict[str, float]] = []

    def _record(self):
        cap: dict[str, float] = {}
        for d in self.daemons.values():
            gpu, gi = self.backend.find_uuid(d["uuid"])
            inst = next(i for i in self.backend.list_instances(gpu) if i.gi_id == gi)
            model, thr = self.thr[(gpu, inst.start, self.size[inst.profile_id])]
            cap[model] = cap.get(model, 0.0) + thr
        self.seen.append(cap)

    def start(self, *a):
        super().start(*a)
        self._record()

    def stop(self, *a):
        super().stop(*a)
        self._record()


def _watched_node(old, new, tmp_path):
    """`old` applied to a fresh two-GPU fake node whose MPS control records capacities."""
    bridged = schedule(old, new, spares=[1])
    fake = FakeBackend("A100-80GB", 2)
    mps = _Watched(fake, old.segments + new.segments + tuple(s.segment for s in bridged.steps if s.bridge))
    dirs = NodeDirs(tmp_path, 0)
    apply_plan(old, 0, fake, mps, dirs)
    mps.seen.clear()
    return fake, mps, dirs


def test_apply_with_a_spare_gpu_bridges_and_keeps_every_model_at_its_floor(tmp_path):
    old, new = _squeeze()
    fake, mps, dirs = _watched_node(old, new, tmp_path / "bridged")
    order, bridges = node_transition(new, 0, spare_gpus=1)
    assert {(b.gpu, b.model) for b in bridges} == {(1, "a"), (1, "b")}
    result = apply_plan(new, 0, fake, mps, dirs, order=order, bridges=bridges)
    assert layout(fake) == wanted(new, 0)  # ends in the plan's layout, the spare GPU empty again
    assert fake.list_instances(1) == ()
    assert [s.op for s in result.steps if s.gpu == 1][:3] == [Op.CREATE_GI, Op.CREATE_CI, Op.START_MPS]
    assert result.steps[-1].op is Op.DESTROY_GI and result.steps[-1].gpu == 1
    assert all(cap.get("a", 0) >= 100.0 and cap.get("b", 0) >= 80.0 for cap in mps.seen), mps.seen
    # Without the spare GPU the same transition takes both models below their floors.
    fake2, mps2, dirs2 = _watched_node(old, new, tmp_path / "plain")
    apply_plan(new, 0, fake2, mps2, dirs2, order=transition_order(new, 0))
    assert layout(fake2) == wanted(new, 0)
    assert min(cap.get("a", 0) for cap in mps2.seen) < 100.0 and min(cap.get("b", 0) for cap in mps2.seen) < 80.0


@pytest.mark.parametrize("at", [1, 3])
def test_a_failure_with_bridges_rolls_back_and_removes_them(tmp_path, at):
    old, new = _squeeze()
    fake, mps, dirs = _watched_node(old, new, tmp_path)
    before = node_picture(fake, mps)
    order, bridges = node_transition(new, 0, spare_gpus=1)
    fake.fail_at(at, "create_gpu_instance")  # 1: the second bridge; 3: a new segment after both bridges
    state_before = read_state(dirs.state_file)
    with pytest.raises(ParvaError, match="as it was"):
        apply_plan(new, 0, fake, mps, dirs, order=order, bridges=bridges)
    assert node_picture(fake, mps) == before and fake.list_instances(1) == ()
    after = read_state(dirs.state_file)  # the bridges listed part-way are gone from it again
    assert after.bridges == () and after.by_slot().keys() == state_before.by_slot().keys()


def test_bridges_are_in_the_node_state_while_they_stand(tmp_path, monkeypatch):
    """Serving finds where a segment runs (MIG UUID, MPS directories) in the node state: every
    bridge is listed there once its daemon runs, with its model, batch and processes, and leaves
    it before its daemon stops; the state after the apply is the plan's, with no bridges."""
    from parvagpu.node import agent

    old, new = _squeeze()
    fake, mps, dirs = _watched_node(old, new, tmp_path)
    written, at_stop = [], []
    original_write, original_stop = agent.write_state, mps.stop

    def write(path, state):
        changed = original_write(path, state)
        st = read_state(path)  # the strict reader takes every version
        written.append((st, {e.mps_pipe_dir: (mps.daemons.get(e.mps_pipe_dir, {}).get("uuid"),
                                              fake.find_uuid(e.mig_uuid)) for e in st.bridges}))
        return changed

    def stop(pipe_dir, log_dir):
        at_stop.append((str(pipe_dir), read_state(dirs.state_file)))
        original_stop(pipe_dir, log_dir)

    monkeypatch.setattr(agent, "write_state", write)
    mps.stop = stop
    order, bridges = node_transition(new, 0, spare_gpus=1)
    apply_plan(new, 0, fake, mps, dirs, order=order, bridges=bridges)
    listed = {(e.gpu, e.start, e.model, e.batch, e.procs) for st, _ in written for e in st.bridges}
    assert listed == {(b.gpu, b.start, b.model, b.batch, b.procs) for b in bridges}
    assert max(len(st.bridges) for st, _ in written) == 2  # both bridges stand together at one point
    for st, live in written:  # each listed bridge is an instance on the spare GPU whose daemon runs
        for e in st.bridges:
            daemon_uuid, where = live[e.mps_pipe_dir]
            assert daemon_uuid == e.mig_uuid and where is not None and where[0] == 1
    bridge_pipes = {dirs.pipe_dir(b.gpu, b.start) for b in bridges}
    stopped = [(pipe, st) for pipe, st in at_stop if pipe in bridge_pipes]
    assert len(stopped) == 2 and all(pipe not in {e.mps_pipe_dir for e in st.bridges} for pipe, st in stopped)
    final = read_state(dirs.state_file)
    assert final.bridges == () and "bridges" not in json.loads(dirs.state_file.read_text())
    assert {(e.gpu, e.start, e.model) for e in final.segments} == {
        (new.local_gpu(s.gpu), s.start, s.model) for s in new.segments}


def test_apply_cli_spare_gpus(tmp_path):
    old, new = _squeeze()
    runner = CliRunner()
    state = tmp_path / "fake.json"
    args = ["--node", "0", "--backend", "fake", "--fake-state", str(state), "--fake-gpus", "2",
            "--state-dir", str(tmp_path / "st")]
    assert runner.invoke(app, ["apply", str(write_plan(old, tmp_path / "old.json")), *args]).exit_code == 0
    plan_file = str(write_plan(new, tmp_path / "new.json"))
    dry = runner.invoke(app, ["apply", plan_file, *args, "--spare-gpus", "1", "--dry-run"])
    assert dry.exit_code == 0 and "(bridge for a)" in dry.output, dry.output
    too_many = runner.invoke(app, ["apply", plan_file, *args, "--spare-gpus", "2"])
    assert too_many.exit_code == 2 and "node 0 has 1 GPU(s) that neither plan uses" in too_many.output
    out = runner.invoke(app, ["apply", plan_file, *args, "--spare-gpus", "1"])
    assert out.exit_code == 0, out.output
    again = runner.invoke(app, ["apply", plan_file, *args])
    assert "nothing to do" in again.output
    plain = runner.invoke(app, ["apply", str(tmp_path / "old.json"), *args, "--spare-gpus", "1"])
    assert plain.exit_code == 2 and "plan it with --current" in plain.output


def test_bridges_through_the_nvml_backend_code(tmp_path, monkeypatch):
    """The same bridged apply over the real backend's NVML call sequence (a pynvml stand-in)."""
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    import sys

    from nvml_stub import StubNvml

    from parvagpu.hardware.mig.nvml import NvmlBackend

    old, new = _squeeze()
    fake, mps, dirs = _watched_node(old, new, tmp_path)
    monkeypatch.setitem(sys.modules, "pynvml", StubNvml(fake))
    nv = NvmlBackend()
    order, bridges = node_transition(new, 0, spare_gpus=1)
    apply_plan(new, 0, nv, mps, dirs, order=order, bridges=bridges)
    assert layout(fake) == wanted(new, 0) and fake.list_instances(1) == ()
    assert all(cap.get("a", 0) >= 100.0 and cap.get("b", 0) >= 80.0 for cap in mps.seen)
    assert nv.calls["create_gpu_instance"] == nv.calls["destroy_gpu_instance"] + 1  # 2 bridges + 3 new; 2 + 2 old
