"""`parvagpu profile` for real, in cpu mode: two project-defined models profiled into files the
planner loads and plans from; a run killed midway and resumed; TorchScript and ONNX models; and
bad input (one line, exit 2). Tiny grids and 0.2 s per point keep this well under a minute."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from parvagpu.cli import app
from parvagpu.profiler.results import Point, parse_csv
from parvagpu.inputs.profiles import load_profile, load_profiles

GRID = ["--mode", "cpu", "--sizes", "1,2", "--batches", "1,4", "--procs", "1,2", "--duration", "0.2", "--warmup", "2"]


def cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "parvagpu", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def one_line_error(r, needle):
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.output


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_profile_two_models_then_plan_from_them(torch, tmp_path):
    out = tmp_path / "profiles"
    t0 = time.monotonic()
    for model in ("parvagpu.profiler.zoo:tiny_cnn", "parvagpu.profiler.zoo:small_mlp"):
        r = cli("profile", model, *GRID, "--out", out)
        assert r.returncode == 0, r.stderr
        assert "8 point(s) measured" in r.stderr
    assert time.monotonic() - t0 < 60
    profiles = load_profiles(out)
    assert sorted(profiles) == ["small_mlp", "tiny_cnn"]
    for prof in profiles.values():
        assert [(p.size, p.batch, p.procs) for p in prof.points] == [
            (s, b, p) for s in (1, 2) for b in (1, 4) for p in (1, 2)
        ]
        assert all(p.runnable and p.latency_s > 0 for p in prof.points)
        assert {dict(p.extra)["Mode"] for p in prof.points} == {"cpu"}
        meta = json.loads((out / f"{prof.model}.meta.json").read_text())
        assert meta["mode"] == "cpu" and meta["libraries"]["torch"] and meta["system"]["host"]["cpu"]
        assert "CPU cores" in meta["approximation"]
    # Services the profiles can serve: latency SLOs loose enough for every point, rates that
    # need a few segments.
    services = []
    for name, prof in profiles.items():
        slowest = max(p.latency_ms for p in prof.points)
        best = max(p.segment_throughput for p in prof.points)
        services.append({"model": name, "rate": round(2.5 * best, 1), "latency_ms": round(slowest * 3 + 1, 3)})
    svc = tmp_path / "services.yaml"
    svc.write_text(yaml.safe_dump({"version": "v1", "services": services}))
    plan_file = tmp_path / "plan.json"
    r = cli("plan", "--profiles", out, "--services", svc, "--out", plan_file)
    assert r.returncode == 0, r.stderr
    plan = json.loads(plan_file.read_text())
    assert {s["model"] for s in plan["segments"]} == {"small_mlp", "tiny_cnn"}
    assert all(s["size"] in (1, 2) for s in plan["segments"])
    for s in plan["services"]:
        assert s["capacity"] >= s["rate"]
    r = cli("verify", plan_file, "--profiles", out, "--services", svc)
    assert r.returncode == 0, r.stderr


def _rows(path: Path) -> dict:
    try:
        return parse_csv(path.read_text(), str(path))[0]
    except (FileNotFoundError, ValueError):
        return {}


def _start_and_stop_when(args, csv_path, at_least, sig):
    proc = subprocess.Popen(
        [sys.executable, "-m", "parvagpu", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 90
    while len(_rows(csv_path)) < at_least:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def test_killed_run_resumes_with_only_the_missing_points(torch, tmp_path):
    out = tmp_path / "p"
    csv_path = out / "small_mlp.csv"
    args = ["profile", "parvagpu.profiler.zoo:small_mlp", "--mode", "cpu", "--sizes", "1,2",
            "--batches", "1,2", "--procs", "1,2", "--duration", "0.2", "--warmup", "1", "--out", out]
    total = 8
    # 1. SIGKILL: no chance to clean up; the file must still be valid.
    rc, _ = _start_and_stop_when(args, csv_path, 2, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    after_kill = _rows(csv_path)
    assert 2 <= len(after_kill) < total
    assert len(load_profile(csv_path).points) == len(after_kill)
    # 2. Ctrl-C (SIGINT): exit 130, one line saying how far it got.
    rc, err = _start_and_stop_when(args, csv_path, len(after_kill) + 1, signal.SIGINT)
    after_int = _rows(csv_path)
    if rc == 0:  # finished before the signal landed: nothing left to check for Ctrl-C
        pytest.skip("the run finished before SIGINT arrived")
    assert rc == 130, err
    assert "interrupted:" in err and "Traceback" not in err
    assert len(after_int) < total and all(after_int[p] == after_kill[p] for p in after_kill)
    # 3. The re-run measures exactly what is missing and keeps every saved row unchanged.
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert f"{len(after_int)} point(s) already measured" in r.stderr
    final = _rows(csv_path)
    assert len(final) == total
    assert all(final[p] == after_int[p] for p in after_int)
    meta = json.loads((out / "small_mlp.meta.json").read_text())
    runs = meta["runs"]
    assert [r["outcome"] for r in runs][-2:] == ["interrupted", "complete"]
    assert runs[0]["outcome"] == "running"  # SIGKILL: the run never got to record its end
    measured_last = {Point(*k) for k in runs[-1]["measured"]}
    assert measured_last == set(final) - set(after_int)
    # No point was measured twice over the three runs. The SIGKILLed run's record may lag its CSV
    # by the one point being saved (the row is written before the metadata, and the kill may fall
    # between), so only a point it saved may be missing from the records.
    all_measured = [tuple(k) for run in runs for k in run["measured"]]
    saved = {(p.size, p.batch, p.procs) for p in final}
    assert len(all_measured) == len(set(all_measured)) and set(all_measured) <= saved
    unrecorded = saved - set(all_measured)
    assert len(unrecorded) <= 1 and unrecorded <= {(p.size, p.batch, p.procs) for p in after_kill}
    # A fourth run has nothing to do.
    r = cli(*args)
    assert r.returncode == 0 and "already measured" in r.stderr


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit and the legacy ONNX exporter
def test_torchscript_and_onnx_models(torch, tmp_path):
    from parvagpu.profiler.zoo import tiny_cnn

    model = tiny_cnn().eval()
    example = torch.ones(2, 3, 32, 32)
    ts = tmp_path / "cnn_ts.pt"
    torch.jit.trace(model, example).save(str(ts))
    out = tmp_path / "out"
    small = ["--mode", "cpu", "--sizes", "1", "--batches", "1,2", "--procs", "1", "--duration", "0.2",
             "--warmup", "1", "--out", out]
    r = cli("profile", ts, "--shape", "3,32,32", *small)
    assert r.returncode == 0, r.stderr
    assert len(load_profile(out / "cnn_ts.csv").points) == 2

    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    onnx_file = tmp_path / "cnn.onnx"
    torch.onnx.export(
        model, (example,), str(onnx_file), dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
    )
    r = cli("profile", onnx_file, *small)  # the shape comes from the ONNX file
    assert r.returncode == 0, r.stderr
    prof = load_profile(out / "cnn.csv")
    assert len(prof.points) == 2 and all(p.runnable for p in prof.points)
    assert json.loads((out / "cnn.meta.json").read_text())["model"]["kind"] == "onnx"


runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    cases = [
        (["nosuch_pkg.mod:fn", "--shape", "3"], "cannot import 'nosuch_pkg.mod'"),
        (["parvagpu.profiler.zoo:nope", "--shape", "3"], "has no function 'nope'"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--shape", "3,x"], "--shape"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--out", tmp_path / "file" / "sub"], "cannot create the directory"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--mode", "tpu"], "--mode: expected one of mig, mps-share, cpu"),
        ([tmp_path / "missing.onnx"], "file not found"),
        (["not a model"], "expected package.module:function"),
        (["os.path:join"], "declares no input shape"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--sizes", "1,x"], "--sizes"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--duration", "0"], "--duration"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--mode", "mps-share", "--sizes", "8"], "mps-share"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--name", "a/b"], "--name"),
        # every value bounded, ASCII digits only, checked before --out is created
        (["parvagpu.profiler.zoo:tiny_cnn", "--batches", "\u00b2"], "--batches: expected comma-separated integers"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--batches", "99999999999"], "--batches"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--procs", "0"], "--procs"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--shape", "\u00b2"], "--shape"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--duration", "inf"], "--duration"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--duration", "nan"], "--duration"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--timeout", "inf"], "--timeout"),
        (["parvagpu.profiler.zoo:tiny_cnn", "--max-latency", "inf"], "--max-latency"),
    ]
    for args, needle in cases:
        r = run("profile", *args, "--out" if "--out" not in args else "--name",
                tmp_path / "o" if "--out" not in args else "m")
        one_line_error(r, needle)
        assert not (tmp_path / "o").exists(), args  # a failed command leaves nothing behind


def test_model_that_cannot_run_the_shape_is_a_clear_error(torch, tmp_path):
    r = run("profile", "parvagpu.profiler.zoo:small_mlp", "--shape", "3", "--mode", "cpu", "--out", tmp_path)
    one_line_error(r, "does not accept an input of shape (1, 3)")
    r = run("profile", "builtins:dict", "--shape", "3", "--mode", "cpu", "--out", tmp_path)
    one_line_error(r, "not a torch.nn.Module")
    r = run("profile", "builtins:divmod", "--shape", "3", "--mode", "cpu", "--out", tmp_path)  # needs arguments
    one_line_error(r, "loading failed: TypeError")
    assert not list(tmp_path.glob("*.csv"))


def test_a_file_from_another_mode_is_not_mixed(tmp_path):
    out = tmp_path
    (out / "tiny_cnn.csv").write_text(
        "Mig instance,Batch size,Workload Number,Throughput,Latency,Latency p99,Memory MiB,Mode,Status\n"
        "1,1,1,100,0.01,0.02,,mig,ok\n"
    )
    r = run("profile", "parvagpu.profiler.zoo:tiny_cnn", "--mode", "cpu", "--out", out)
    one_line_error(r, "measured in mode mig")


def _descendants(pid: int) -> set[int]:
    """Every live process under `pid`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_stops_the_run_and_its_workers_and_keeps_the_points(torch, tmp_path):
    out = tmp_path / "p"
    csv_path = out / "small_mlp.csv"
    args = ["profile", "parvagpu.profiler.zoo:small_mlp", "--mode", "cpu", "--sizes", "1", "--batches", "1,2,4,8",
            "--procs", "2", "--duration", "1", "--warmup", "1", "--out", out]
    proc = subprocess.Popen([sys.executable, "-m", "parvagpu", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while len(_rows(csv_path)) < 1 or len(_descendants(proc.pid)) < 2:  # measuring the next point
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)
    workers = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGTERM arrived")
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted:" in err and "Traceback" not in err
    end = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)], "workers or the forkserver outlived the run"
    assert 1 <= len(_rows(csv_path)) < 4 and not list(out.glob(".*.lock"))


def test_a_second_run_into_the_same_file_is_refused(tmp_path):
    from parvagpu.profiler.store import ProfileStore

    out = tmp_path / "o"
    with ProfileStore(out, "tiny_cnn").claim():
        r = run("profile", "parvagpu.profiler.zoo:tiny_cnn", *GRID, "--out", out)
        one_line_error(r, "another parvagpu profile is measuring into it")
    assert not out.exists()  # the directory the claim made, left empty, is removed


def test_mig_mode_without_a_driver_is_exit_4_suggests_cpu_and_leaves_nothing(tmp_path, monkeypatch):
    pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    from nvml_stub import StubNvml

    from parvagpu.hardware.mig import FakeBackend

    monkeypatch.setitem(sys.modules, "pynvml", StubNvml(FakeBackend(), driver=False))
    r = run("profile", "parvagpu.profiler.zoo:tiny_cnn", "--mode", "mig", "--out", tmp_path / "o")
    assert r.exit_code == 4, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot initialise NVML" in lines[0] and "--mode cpu" in lines[0], r.stderr
    assert not (tmp_path / "o").exists()
