"""Ray nodes started as `ray start --block` processes on loopback, for the end-to-end tests that
need a cluster of their own (several nodes, or one a command joins with --address)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# `ray start` resolves a loopback address to the machine's routable one when it joins a cluster;
# this keeps a joining node (and a driver) on 127.0.0.1 like the head, so nothing listens beyond
# loopback.
LOOPBACK = (
    "from ray._private import services\n"
    "_resolve = services.resolve_ip_for_localhost\n"
    "services.resolve_ip_for_localhost = lambda h: h if services.is_localhost(h) else _resolve(h)\n"
)
RAY_START = LOOPBACK + "import sys\nfrom ray.scripts.scripts import main\nsys.argv[0] = 'ray'\nmain()\n"
# Options every node gets: loopback, one CPU, a small object store.
COMMON = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--object-store-memory=100000000",
          "--disable-usage-stats"]

# The end-to-end tests that start a Ray cluster take 1-2 minutes each on 2 cores: they run in CI or
# on request, and skip cleanly where Ray Serve is not installed.
RAY_TESTS = bool(os.environ.get("CI") or os.environ.get("PARVAGPU_RAY_TESTS"))
WHY_SKIPPED = "starts a Ray cluster (1-2 minutes on 2 cores): runs in CI (CI set) or with PARVAGPU_RAY_TESTS=1"
NO_SERVE = "Ray Serve is not installed (pip install 'parvagpu[serve]')"
ray_tests = pytest.mark.skipif(not RAY_TESTS, reason=WHY_SKIPPED)  # for one test in a module of others


def ray_module(*also: str):
    """At the top of a module of Ray end-to-end tests: skip it unless they are asked for and Ray
    Serve and the modules `also` import. Returns the `ray` module."""
    if not RAY_TESTS:
        pytest.skip(WHY_SKIPPED, allow_module_level=True)
    ray = pytest.importorskip("ray", reason=NO_SERVE)
    pytest.importorskip("ray.serve", reason=NO_SERVE)
    for name in also:
        pytest.importorskip(name)
    return ray


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Node:
    """One `ray start --block` process and everything below it; stopped by its process ids only."""

    def __init__(self, args: list[str], env: dict, log: Path) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", RAY_START, "start", "--block", *args], env=env,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: dict = {}  # pid -> psutil.Process

    def processes(self) -> list:
        """The `ray start` process and its descendants (remembered: a worker outlives its raylet)."""
        import psutil  # the Ray tests' requirement, imported by them only

        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                self.seen.setdefault(p.pid, p)
        except psutil.NoSuchProcess:
            pass
        return list(self.seen.values())

    def raylet(self):
        return next(p for p in self.processes() if p.name() == "raylet")

    def stop(self) -> None:
        import psutil

        procs = self.processes()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes on SIGTERM
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        for p in procs:
            try:
                if p.is_running():
                    p.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(5)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]


def wait_for(what: str, ok, timeout_s: float, nodes: list[Node]) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():
        if time.monotonic() > deadline or any(n.proc.poll() is not None for n in nodes):
            logs = "\n".join(n.tail() for n in nodes)
            pytest.fail(f"{what} not within {timeout_s:g} s:\n{logs}")
        time.sleep(0.3)


def make_auth_token(env: dict) -> None:
    """Token authentication, as Ray sets it up for a local cluster: the nodes and the drivers read
    the user's token (~/.ray/auth_token), made here if there is none."""
    subprocess.run([sys.executable, "-c", RAY_START, "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=60)


def head_args(tmp: Path, gcs: int, resources: str) -> list[str]:
    """A head on loopback with GCS port `gcs`, its files under `tmp`, declaring `resources` (JSON)."""
    return [
        "--head", f"--port={gcs}", f"--temp-dir={tmp}", "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}", f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}", "--min-worker-port=21000", "--max-worker-port=21199",
        f"--resources={resources}", *COMMON,
    ]
