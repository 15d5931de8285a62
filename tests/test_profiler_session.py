"""The measuring loop with a fake launcher and fake devices: resume, skip rules, failures,
Ctrl-C, and the MIG and MPS-share devices against the apply layer's strict fakes. No torch."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest

from parvagpu.hardware.mig import FakeBackend
from parvagpu.core.errors import ParvaError
from parvagpu.hardware.mps import FakeMps
from parvagpu.profiler.devices import CpuDevice, MigDevice, MpsShareDevice
from parvagpu.profiler.results import ERROR, OK, OOM, SKIPPED_LATENCY, SKIPPED_OOM, Point, Result, parse_csv
from parvagpu.profiler.runner import Slot
from parvagpu.profiler.session import Job, ProfileInterrupted, profile
from parvagpu.profiler.spec import Mode, ModelSpec, Settings
from parvagpu.profiler.store import ProfileStore
from parvagpu.inputs.profiles import load_profile

SPEC = ModelSpec("factory", "pkg.mod:fn", (8,))


def job(sizes=(1, 2), batches=(1, 2, 4), procs=(1, 2), max_latency_s=None, retry=False, mode=Mode.cpu):
    return Job(SPEC, "m", mode, sizes, batches, procs, Settings(0.1, 0, max_latency_s), retry)


class FakeLauncher:
    """Latency grows with batch and procs, shrinks with size; `outcomes` overrides per point;
    `interrupt_at` raises KeyboardInterrupt on that call (0-based)."""

    def __init__(self, outcomes=None, interrupt_at=None, mode="cpu"):
        self.outcomes = outcomes or {}
        self.interrupt_at = interrupt_at
        self.calls: list[tuple[Point, Slot]] = []
        self.mode = mode

    def measure(self, point, slot):
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((point, slot))
        if point in self.outcomes:
            status = self.outcomes[point]
            return Result(point, status, mode=self.mode, detail=f"{status} at {point}")
        lat = 0.001 * point.batch * point.procs / point.size
        return Result(point, OK, point.batch / lat, lat, lat * 2, 10.0, self.mode)

    def close(self):
        pass


class FakeDevice:
    mode = Mode.cpu

    def __init__(self):
        self.log: list[tuple[str, int]] = []

    @contextmanager
    def slot(self, size):
        self.log.append(("open", size))
        try:
            yield Slot("cpu", {"SIZE": str(size)}, size, None, f"fake {size}")
        finally:
            self.log.append(("close", size))

    def notes(self):
        return {"fake": True}


def store(tmp_path):
    s = ProfileStore(tmp_path, "m")
    s.prepare()
    return s


def test_full_run_writes_a_loadable_profile_and_metadata(tmp_path):
    st, dev, la = store(tmp_path), FakeDevice(), FakeLauncher()
    summary = profile(job(), dev, la, st, libraries=lambda: {"torch": "x"})
    assert summary.complete and summary.measured == 12 and summary.already == 0
    assert [p for p, _ in la.calls] == job().points()
    assert dev.log == [("open", 1), ("close", 1), ("open", 2), ("close", 2)]  # one slot per size
    prof = load_profile(st.csv_path)
    assert len(prof.points) == 12 and all(p.runnable for p in prof.points)
    meta = json.loads(st.meta_path.read_text())
    assert meta["mode"] == "cpu" and "approximation" in meta["approximation"]
    assert meta["libraries"] == {"torch": "x"} and meta["device"] == {"fake": True}
    assert meta["runs"][0]["outcome"] == "complete" and len(meta["runs"][0]["measured"]) == 12


def test_rerun_measures_only_missing_points(tmp_path):
    st = store(tmp_path)
    with pytest.raises(ProfileInterrupted) as exc:
        profile(job(), FakeDevice(), FakeLauncher(interrupt_at=5), st)
    assert exc.value.summary.measured == 5
    first, _ = parse_csv(st.csv_path.read_text(), "m.csv")
    assert len(first) == 5 and len(load_profile(st.csv_path).points) == 5
    la = FakeLauncher()
    summary = profile(job(), FakeDevice(), la, st)
    assert summary.already == 5 and summary.measured == 7
    assert [p for p, _ in la.calls] == [p for p in job().points() if p not in first]
    final, _ = parse_csv(st.csv_path.read_text(), "m.csv")
    assert all(final[p] == first[p] for p in first)  # kept, not re-measured
    meta = json.loads(st.meta_path.read_text())
    assert [r["outcome"] for r in meta["runs"]] == ["interrupted", "complete"]
    assert len(meta["runs"][1]["measured"]) == 7
    # A third run has nothing to do and writes nothing.
    mtime = st.csv_path.stat().st_mtime_ns
    assert profile(job(), FakeDevice(), FakeLauncher(), st).measured == 0
    assert st.csv_path.stat().st_mtime_ns == mtime


def test_a_bigger_grid_extends_the_file_and_keeps_old_points(tmp_path):
    st = store(tmp_path)
    profile(job(sizes=(1,), batches=(1,), procs=(1,)), FakeDevice(), FakeLauncher(), st)
    la = FakeLauncher()
    profile(job(sizes=(1,), batches=(1, 2), procs=(1,)), FakeDevice(), la, st)
    assert [p for p, _ in la.calls] == [Point(1, 2, 1)]
    # A smaller grid later does not delete measured points.
    profile(job(sizes=(1,), batches=(2,), procs=(1,)), FakeDevice(), FakeLauncher(), st)
    assert len(load_profile(st.csv_path).points) == 2


def test_oom_and_error_rows_are_zero_and_the_run_goes_on(tmp_path):
    st = store(tmp_path)
    la = FakeLauncher({Point(1, 2, 2): OOM, Point(2, 1, 1): ERROR})
    summary = profile(job(), FakeDevice(), la, st)
    assert summary.complete and summary.failed == 2 and summary.skipped == 1
    rows, _ = parse_csv(st.csv_path.read_text(), "m.csv")
    assert rows[Point(1, 2, 2)].status == OOM
    assert rows[Point(1, 4, 2)].status == SKIPPED_OOM  # larger batch after an OOM: not run
    assert Point(1, 4, 2) not in [p for p, _ in la.calls]
    assert rows[Point(2, 2, 1)].status == OK  # an error does not skip larger batches
    prof = {(p.size, p.batch, p.procs): p for p in load_profile(st.csv_path).points}
    assert prof[(1, 2, 2)].throughput == 0 and prof[(1, 2, 2)].latency_s == 0
    meta = json.loads(st.meta_path.read_text())
    assert set(meta["errors"]) == {"1,2,2", "2,1,1"}
    assert meta["runs"][0]["skipped"] == [[1, 4, 2]]
    # --retry-errors measures the error again (not the OOM) and clears its message.
    la2 = FakeLauncher()
    profile(job(retry=True), FakeDevice(), la2, st)
    assert [p for p, _ in la2.calls] == [Point(2, 1, 1)]
    assert set(json.loads(st.meta_path.read_text())["errors"]) == {"1,2,2"}


def test_max_latency_skips_larger_batches(tmp_path):
    st = store(tmp_path)
    # latency = 1 ms * batch * procs / size: size 1 procs 2 batch 2 = 4 ms > 3 ms.
    la = FakeLauncher()
    profile(job(max_latency_s=0.003), FakeDevice(), la, st)
    rows, _ = parse_csv(st.csv_path.read_text(), "m.csv")
    assert rows[Point(1, 4, 2)].status == SKIPPED_LATENCY
    assert rows[Point(1, 4, 1)].status == OK  # 4 ms was measured: only larger batches are cut
    assert rows[Point(1, 2, 2)].status == OK
    assert Point(1, 4, 2) not in [p for p, _ in la.calls]
    assert load_profile(st.csv_path)  # skipped rows are 0,0 and load


def test_a_size_whose_points_are_all_skipped_opens_no_instance(tmp_path):
    st = store(tmp_path)
    profile(job(sizes=(1,), batches=(1,)), FakeDevice(), FakeLauncher({Point(1, 1, 1): OOM, Point(1, 1, 2): OOM}), st)
    dev = FakeDevice()
    profile(job(sizes=(1,), batches=(1, 2)), dev, FakeLauncher(), st)
    assert dev.log == []


def test_interrupt_closes_the_slot_and_leaves_a_valid_file(tmp_path):
    st, dev = store(tmp_path), FakeDevice()
    with pytest.raises(ProfileInterrupted):
        profile(job(), dev, FakeLauncher(interrupt_at=2), st)
    assert dev.log == [("open", 1), ("close", 1)]
    assert len(load_profile(st.csv_path).points) == 2
    assert json.loads(st.meta_path.read_text())["runs"][-1]["outcome"] == "interrupted"


def test_refuses_to_mix_modes_or_models(tmp_path):
    st = store(tmp_path)
    profile(job(sizes=(1,), batches=(1,), procs=(1,)), FakeDevice(), FakeLauncher(), st)
    with pytest.raises(ParvaError, match="mode cpu"):
        profile(job(mode=Mode.mps_share), FakeDevice(), FakeLauncher(mode="mps-share"), st)
    other = Job(ModelSpec("factory", "pkg.mod:fn", (16,)), "m", Mode.cpu, (1,), (2,), (1,))
    with pytest.raises(ParvaError, match="shape"):
        profile(other, FakeDevice(), FakeLauncher(), st)


def test_store_rejects_an_unusable_out_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ParvaError, match="cannot create"):
        ProfileStore(tmp_path / "file" / "sub", "m").prepare()
    (tmp_path / "d" / "m.csv").mkdir(parents=True)
    with pytest.raises(ParvaError, match="not a file"):
        ProfileStore(tmp_path / "d", "m").prepare()


def test_cpu_device_pins_to_cores_it_has():
    dev = CpuDevice(cpus=(0, 1))
    with dev.slot(2) as s:
        assert (s.device, s.threads, s.cpus) == ("cpu", 2, (0, 1))
    with dev.slot(7) as s:
        assert s.threads == 7 and s.cpus is None
    assert dev.notes()["oversubscribed_sizes"] == [7]


def layout(backend):
    return tuple((g.profile_id, g.start, len(g.cis)) for g in backend.list_instances(0))


def test_mig_device_makes_and_destroys_a_real_instance_per_size(tmp_path):
    backend = FakeBackend("A100-80GB", count=1)
    mps = FakeMps(backend)
    dev = MigDevice(backend, 0, mps, pipe_root=tmp_path)
    backend.create_gpu_instance(0, 9, 4)  # someone else's 3g at slot 4: left alone
    before = layout(backend)
    with dev.slot(3) as slot:
        (gi,) = [g for g in backend.list_instances(0) if g.start != 4]
        assert (gi.profile_id, gi.start) == (9, 0) and gi.whole_ci  # the free legal slot
        assert slot.device == "cuda" and slot.env["CUDA_VISIBLE_DEVICES"] == gi.uuid
        pipe = slot.env["CUDA_MPS_PIPE_DIRECTORY"]
        assert mps.is_running(pipe) and pipe.endswith("nvidia-mps-0-0")
    assert layout(backend) == before and not mps.daemons
    assert dev.notes()["instances"][0]["profile"] == "3g.40gb"
    # No free slot for a 7g: a clear error, nothing left behind.
    with pytest.raises(ParvaError, match="no free slot for a 7g"):
        with dev.slot(7):
            pass
    assert layout(backend) == before


def test_mig_device_tears_down_after_a_failure_inside(tmp_path):
    backend = FakeBackend("A100-80GB", count=1)
    mps = FakeMps(backend)
    dev = MigDevice(backend, 0, mps, pipe_root=tmp_path)
    with pytest.raises(RuntimeError):
        with dev.slot(1):
            raise RuntimeError("worker blew up")
    assert backend.list_instances(0) == () and not mps.daemons
    # The MPS daemon fails to start: the instance is still destroyed.
    mps.fail_at(0, "start")
    with pytest.raises(ParvaError, match="injected"):
        with dev.slot(2):
            pass
    assert backend.list_instances(0) == ()


def test_mig_device_needs_mig_mode(tmp_path):
    backend = FakeBackend("A100-80GB", count=1, mig=False)
    with pytest.raises(ParvaError, match="MIG mode is off"):
        with MigDevice(backend, 0, FakeMps(backend), pipe_root=tmp_path).slot(1):
            pass


def test_mig_mode_through_the_session(tmp_path):
    backend = FakeBackend("H100-80GB", count=1)
    mps = FakeMps(backend)
    la = FakeLauncher(mode="mig")
    st = store(tmp_path)
    profile(job(mode=Mode.mig, batches=(1,), procs=(1,)), MigDevice(backend, 0, mps, pipe_root=tmp_path), la, st)
    envs = [s.env["CUDA_VISIBLE_DEVICES"] for _, s in la.calls]
    assert len(envs) == 2 and all(e.startswith("MIG-") for e in envs) and envs[0] != envs[1]
    assert backend.list_instances(0) == ()
    assert {p.extra for p in load_profile(st.csv_path).points} == {
        (("Latency p99", "0.002"), ("Memory MiB", "10"), ("Mode", "mig"), ("Status", "ok")),
        (("Latency p99", "0.001"), ("Memory MiB", "10"), ("Mode", "mig"), ("Status", "ok")),
    }


class RecordingMps:
    def __init__(self):
        self.log = []

    def start(self, pipe_dir, log_dir, visible):
        self.log.append(("start", visible))

    def stop(self, pipe_dir, log_dir):
        self.log.append(("stop", pipe_dir))


def test_mps_share_device_caps_threads_and_owns_its_daemon():
    mps = RecordingMps()
    dev = MpsShareDevice(1, mps, pipe_dir="")
    with dev.slot(3) as s:
        assert s.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "43" and s.env["CUDA_VISIBLE_DEVICES"] == "1"
        root = Path(s.env["CUDA_MPS_PIPE_DIRECTORY"]).parent
        assert root.is_dir()
    assert [k for k, _ in mps.log] == ["start", "stop"]
    assert not root.exists()  # the private pipe directory is removed with its daemon
    shared = MpsShareDevice(0, mps, pipe_dir="/run/mps")
    with shared.slot(7) as s:
        assert s.env["CUDA_MPS_PIPE_DIRECTORY"] == "/run/mps" and s.env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "100"
    assert len(mps.log) == 2  # an existing daemon is used, not started or stopped


class BrokenDevice(FakeDevice):
    @contextmanager
    def slot(self, size):
        raise ParvaError("no GPU here")
        yield  # pragma: no cover


def test_a_device_failure_stops_the_run_without_leaving_files(tmp_path):
    st = store(tmp_path)
    with pytest.raises(ParvaError, match="no GPU here"):
        profile(job(), BrokenDevice(), FakeLauncher(), st)
    assert not st.csv_path.exists() and not st.meta_path.exists()


def test_a_torn_last_line_is_dropped_and_measured_again(tmp_path):
    st = store(tmp_path)
    profile(job(sizes=(1,), batches=(1, 2), procs=(1,)), FakeDevice(), FakeLauncher(), st)
    text = st.csv_path.read_text()
    st.csv_path.write_text(text[: len(text) - 12])  # a write cut short inside the last row
    la = FakeLauncher()
    summary = profile(job(sizes=(1,), batches=(1, 2), procs=(1,)), FakeDevice(), la, st)
    assert summary.dropped_torn_line and [p for p, _ in la.calls] == [Point(1, 2, 1)]
    assert len(load_profile(st.csv_path).points) == 2


def test_remeasure_measures_the_grid_again_and_keeps_other_rows(tmp_path):
    import dataclasses

    st = store(tmp_path)
    profile(job(sizes=(1, 2)), FakeDevice(), FakeLauncher(), st)
    la = FakeLauncher(outcomes={Point(1, 1, 1): ERROR})
    assert profile(job(sizes=(1,)), FakeDevice(), la, st).measured == 0  # nothing missing
    summary = profile(dataclasses.replace(job(sizes=(1,)), remeasure=True), FakeDevice(), la, st)
    assert summary.measured == 6 and summary.already == 0 and len(la.calls) == 6
    rows = parse_csv(st.csv_path.read_text(), "m.csv")[0]
    assert len(rows) == 12 and rows[Point(1, 1, 1)].status == ERROR  # size 2 rows kept as they were
    meta = json.loads(st.meta_path.read_text())
    assert meta["runs"][-1]["settings"]["remeasure"] is True
