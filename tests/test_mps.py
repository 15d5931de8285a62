"""The real MPS control wrapper against a stand-in `nvidia-cuda-mps-control` that behaves like the
daemon where it matters: `-d` forks a background process and writes its pid file into the pipe
directory; `quit` on stdin stops it and the pid file goes away."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from parvagpu.hardware.mps import PID_FILE, MpsError, NvidiaMps, mps_env, terminate_processes

STUB = """#!/bin/sh
if [ "${1:-}" = "-d" ]; then
  [ -n "${STUB_FAIL:-}" ] && { echo "An instance of this daemon is already running" >&2; exit 1; }
  echo "start $CUDA_VISIBLE_DEVICES $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY" >> "$STUB_LOG"
  sleep 300 >/dev/null 2>&1 &
  echo $! > "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
  exit 0
fi
read cmd
echo "$cmd $CUDA_MPS_PIPE_DIRECTORY" >> "$STUB_LOG"
if [ "$cmd" = quit ] && [ -f "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid" ]; then
  kill "$(cat "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid")"
  rm -f "$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
fi
"""


@pytest.fixture
def stub(tmp_path, monkeypatch):
    binary = tmp_path / "nvidia-cuda-mps-control"
    binary.write_text(STUB)
    binary.chmod(0o755)
    log = tmp_path / "log"
    monkeypatch.setenv("STUB_LOG", str(log))
    return binary, log


def test_start_stop_is_running(tmp_path, stub):
    binary, log = stub
    mps = NvidiaMps(str(binary), timeout_s=10)
    pipe, logdir = str(tmp_path / "p"), str(tmp_path / "l")
    assert not mps.is_running(pipe)
    mps.start(pipe, logdir, "MIG-abc")
    try:
        assert mps.is_running(pipe) and os.path.isdir(logdir)
        assert log.read_text().splitlines() == [f"start MIG-abc {pipe} {logdir}"]
    finally:
        mps.stop(pipe, logdir)
    assert not mps.is_running(pipe) and not (tmp_path / "p" / PID_FILE).exists()
    assert log.read_text().splitlines()[-1] == f"quit {pipe}"
    assert mps.calls == {"start": 1, "stop": 1}


def test_failures_are_one_line_errors(tmp_path, stub, monkeypatch):
    binary, _ = stub
    with pytest.raises(MpsError, match="not found on PATH"):
        NvidiaMps(str(tmp_path / "missing")).start(str(tmp_path / "p"), str(tmp_path / "l"), "MIG-a")
    with pytest.raises(MpsError, match="too long"):
        NvidiaMps(str(binary)).start("/" + "d" * 120, str(tmp_path / "l"), "MIG-a")
    monkeypatch.setenv("STUB_FAIL", "1")
    with pytest.raises(MpsError, match="already running") as info:
        NvidiaMps(str(binary)).start(str(tmp_path / "p"), str(tmp_path / "l"), "MIG-a")
    assert "\n" not in str(info.value)


def test_stale_pid_file_is_not_running(tmp_path):
    (tmp_path / PID_FILE).write_text("999999999\n")
    assert not NvidiaMps().is_running(str(tmp_path))
    (tmp_path / PID_FILE).write_text("garbage")
    assert not NvidiaMps().is_running(str(tmp_path))


def test_mps_env_sets_the_three_variables():
    env = mps_env("/p", "/l", "MIG-x", base={"PATH": "/bin"})
    assert env == {"PATH": "/bin", "CUDA_MPS_PIPE_DIRECTORY": "/p", "CUDA_MPS_LOG_DIRECTORY": "/l",
                   "CUDA_VISIBLE_DEVICES": "MIG-x"}


def test_terminate_processes_escalates_to_sigkill():
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn.stdout.readline()  # SIGTERM is ignored from here on
    t0 = time.monotonic()
    terminate_processes((stubborn.pid, polite.pid), grace_s=0.5)
    assert stubborn.wait(timeout=5) == -9 and polite.wait(timeout=5) == -15
    assert time.monotonic() - t0 < 5
