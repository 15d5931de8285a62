"""MPS control daemons, one per MIG instance, behind a small interface.

NVIDIA's recipe for MPS inside MIG: one `nvidia-cuda-mps-control -d` per MIG device, each with
its own pipe and log directories and `CUDA_VISIBLE_DEVICES` set to the device's MIG UUID; clients
use the same pipe directory. `NvidiaMps` runs the real binary; `FakeMps` records calls and, when
given a `FakeBackend`, checks the UUID exists and shows the daemon's server as a process on the
instance (so destroying an instance under a live daemon fails, as on hardware).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from parvagpu.core.errors import ParvaError, SystemFailure

CONTROL = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"  # written by the daemon into its pipe directory
_SOCKET_MAX = 107  # sun_path limit; the daemon's sockets live in the pipe directory


class MpsError(SystemFailure):
    """Starting or stopping a daemon, or stopping a process, failed (exit 4)."""


@runtime_checkable
class MpsControl(Protocol):
    calls: Counter

    def start(self, pipe_dir: str, log_dir: str, mig_uuid: str) -> None:
        """Start a control daemon for one MIG device; return once it runs."""
        ...

    def stop(self, pipe_dir: str, log_dir: str) -> None:
        """Ask the daemon to quit; return once it has exited."""
        ...

    def is_running(self, pipe_dir: str) -> bool: ...


def mps_env(pipe_dir: str, log_dir: str, mig_uuid: str | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a daemon and its clients share."""
    env = dict(os.environ if base is None else base)
    env["CUDA_MPS_PIPE_DIRECTORY"] = str(pipe_dir)
    env["CUDA_MPS_LOG_DIRECTORY"] = str(log_dir)
    if mig_uuid is not None:
        env["CUDA_VISIBLE_DEVICES"] = mig_uuid
    return env


class NvidiaMps:
    """The real daemons. `binary` is looked up on PATH."""

    def __init__(self, binary: str = CONTROL, timeout_s: float = 30.0) -> None:
        self.binary = binary
        self.timeout_s = timeout_s
        self.calls: Counter = Counter()

    def _run(self, args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                args, env=env, input=stdin, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except FileNotFoundError:
            raise MpsError(f"{self.binary} not found on PATH; it ships with the NVIDIA driver utilities") from None
        except subprocess.TimeoutExpired:
            raise MpsError(f"{' '.join(args)} did not answer within {self.timeout_s:g} s") from None

    def start(self, pipe_dir: str, log_dir: str, mig_uuid: str) -> None:
        self.calls["start"] += 1
        if len(str(pipe_dir)) + len("/control_privileged") > _SOCKET_MAX:
            raise MpsError(f"MPS pipe directory {pipe_dir} is too long for a Unix socket path; use a shorter --state-dir")
        for d in (pipe_dir, log_dir):
            try:
                Path(d).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MpsError(f"cannot create {d}: {exc.strerror or exc}") from None
        res = self._run([self.binary, "-d"], mps_env(pipe_dir, log_dir, mig_uuid))
        if res.returncode != 0:
            raise MpsError(f"{self.binary} -d for {mig_uuid} failed: {(res.stderr or res.stdout).strip() or res.returncode}")
        self._wait(pipe_dir, running=True)

    def stop(self, pipe_dir: str, log_dir: str) -> None:
        self.calls["stop"] += 1
        res = self._run([self.binary], mps_env(pipe_dir, log_dir), stdin="quit\n")
        if res.returncode != 0 and self.is_running(pipe_dir):
            raise MpsError(f"quit to the MPS daemon in {pipe_dir} failed: {(res.stderr or res.stdout).strip()}")
        self._wait(pipe_dir, running=False)

    def _wait(self, pipe_dir: str, running: bool) -> None:
        deadline = time.monotonic() + self.timeout_s
        while self.is_running(pipe_dir) != running:
            if time.monotonic() > deadline:
                state = "start" if running else "stop"
                raise MpsError(f"the MPS daemon in {pipe_dir} did not {state} within {self.timeout_s:g} s")
            time.sleep(0.05)

    def is_running(self, pipe_dir: str) -> bool:
        try:
            pid = int((Path(pipe_dir) / PID_FILE).read_text().strip())
        except (OSError, ValueError):
            return False
        return _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_processes(pids: tuple[int, ...], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL what is left after `grace_s`: what `apply --force` does to workers."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        except PermissionError:
            raise MpsError(f"no permission to stop process {pid}") from None
    deadline = time.monotonic() + grace_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class FakeMps:
    """Records daemons by pipe directory. Strict: a second daemon on one pipe directory, stopping
    one that is not running, or (with a backend) a UUID no MIG device has, are errors."""

    def __init__(self, backend: Any | None = None) -> None:
        self.backend = backend
        self.daemons: dict[str, dict[str, Any]] = {}
        self.calls: Counter = Counter()
        self.log: list[tuple[str, str]] = []
        self._fail: tuple[str | None, int] | None = None
        self._pid = 30000

    def fail_at(self, index: int, method: str | None = None) -> None:
        self._fail = (method, index)

    def _call(self, name: str) -> None:
        self.calls[name] += 1
        if self._fail is not None:
            method, left = self._fail
            if method is None or method == name:
                if left == 0:
                    self._fail = None
                    raise MpsError(f"injected MPS failure ({name})")
                self._fail = (method, left - 1)

    def start(self, pipe_dir: str, log_dir: str, mig_uuid: str) -> None:
        self._call("start")
        pipe_dir = str(pipe_dir)
        if pipe_dir in self.daemons:
            raise MpsError(f"an MPS control daemon already runs in {pipe_dir}")
        if not str(mig_uuid).startswith("MIG-"):
            raise MpsError(f"CUDA_VISIBLE_DEVICES={mig_uuid!r} is not a MIG device UUID")
        server = None
        if self.backend is not None:
            where = self.backend.find_uuid(mig_uuid)
            if where is None:
                raise MpsError(f"no MIG device {mig_uuid} on this node")
            self._pid += 1
            server = self.backend.add_process(where[0], where[1], name="nvidia-cuda-mps-server", pid=self._pid)
        self.daemons[pipe_dir] = {"log_dir": str(log_dir), "uuid": mig_uuid, "server_pid": server}
        self.log.append(("start", pipe_dir))

    def stop(self, pipe_dir: str, log_dir: str) -> None:
        self._call("stop")
        pipe_dir = str(pipe_dir)
        d = self.daemons.pop(pipe_dir, None)
        if d is None:
            raise MpsError(f"no MPS control daemon runs in {pipe_dir}")
        if self.backend is not None and d.get("server_pid") is not None:
            self.backend.remove_process(d["server_pid"])
        self.log.append(("stop", pipe_dir))

    def is_running(self, pipe_dir: str) -> bool:
        self.calls["is_running"] += 1
        return str(pipe_dir) in self.daemons

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self._pid, "daemons": self.daemons}

    @classmethod
    def from_dict(cls, data: Any, backend: Any | None = None, source: str = "fake state") -> "FakeMps":
        m = cls(backend)
        try:
            m._pid = _json_int(data.get("pid", 30000))
            for pipe, d in dict(data["daemons"]).items():
                m.daemons[str(pipe)] = {
                    "log_dir": str(d["log_dir"]), "uuid": str(d["uuid"]),
                    "server_pid": None if d.get("server_pid") is None else _json_int(d["server_pid"]),
                }
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ParvaError(f"{source}: bad MPS section ({type(exc).__name__}: {exc})") from None
        return m


def _json_int(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise TypeError(f"expected an integer, got {v!r}")
