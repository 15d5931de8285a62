"""What must not reach beyond this machine: `load` follows no redirect (a loopback server could
send it anywhere), and the local Ray cluster of `serve` listens on loopback only."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from parvagpu.cli import app
from ray_cluster import ray_tests

runner = CliRunner()


class _Server:
    """A loopback HTTP server; `answer(method, path)` -> (status, headers, body); records every hit."""

    def __init__(self, answer) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                hits.append((self.command, self.path))
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                status, headers, body = answer(self.command, self.path)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _reply

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


MODELS = json.dumps({"models": [{"model": "m", "rate": 20, "latency_ms": 100}]}).encode()


@pytest.fixture
def elsewhere():
    """Where a redirect points: any request reaching it means the redirect was followed."""
    s = _Server(lambda method, path: (200, {}, MODELS if path == "/v1/models" else b'{"timing": {}}'))
    yield s
    s.close()


def test_load_does_not_follow_a_redirect_of_the_model_list(elsewhere):
    pytest.importorskip("aiohttp")
    s = _Server(lambda method, path: (302, {"Location": elsewhere.url + path}, b""))
    try:
        r = runner.invoke(app, ["load", s.url, "--duration", "1"])
    finally:
        s.close()
    assert r.exit_code == 2, r.output
    assert "answered a redirect (HTTP 302); load does not follow redirects" in r.stderr
    assert elsewhere.hits == []


def test_load_counts_a_redirected_request_as_failed_and_does_not_follow_it(elsewhere):
    pytest.importorskip("aiohttp")

    def answer(method, path):
        if path == "/v1/models":
            return 200, {"Content-Type": "application/json"}, MODELS
        return 307, {"Location": elsewhere.url + path}, b""

    s = _Server(answer)
    try:
        r = runner.invoke(app, ["load", s.url, "--duration", "1", "--synthetic"])
    finally:
        s.close()
    assert elsewhere.hits == []
    posts = [h for h in s.hits if h[0] == "POST"]
    assert posts, "load sent requests"
    assert r.exit_code == 1, r.output  # every request failed: the verdict says so
    assert "verdict: 1 of 1 models miss their SLO or lost requests: m" in r.stderr


def test_load_does_not_follow_a_redirect_of_the_model_metadata(elsewhere):
    pytest.importorskip("aiohttp")

    def answer(method, path):
        if path == "/v1/models":
            return 200, {"Content-Type": "application/json"}, MODELS
        return 302, {"Location": elsewhere.url + path}, b""

    s = _Server(answer)
    try:
        r = runner.invoke(app, ["load", s.url, "--duration", "1"])
    finally:
        s.close()
    assert r.exit_code == 2 and "/v2/models/m answered HTTP 302" in r.stderr, r.output
    assert elsewhere.hits == [] and not [h for h in s.hits if h[0] == "POST"]


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        out.add(p)
        todo.extend(children.get(p, []))
    return out


def _listeners(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, local address as in /proc/net, port) of every listening TCP socket the pids hold."""
    by_inode = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                ip, port = f[1].split(":")
                by_inode[f[9]] = (ip, int(port, 16))
    out = []
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in by_inode:
                    out.append((pid, *by_inode[target[8:-1]]))
        except OSError:
            continue
    return out


_LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


@ray_tests
def test_serve_keeps_its_local_ray_cluster_on_loopback(tmp_path):
    pytest.importorskip("ray.serve")
    from parvagpu.contract.plan_json import plan_to_json
    from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet

    plan = tmp_path / "plan.json"
    plan.write_text(plan_to_json(DeploymentMap(
        "A100-80GB", "parva", 3, 8, (PlacedSegment(Segment("mlp", Triplet(1, 4, 1, 400.0, 10.0)), 0, 0),),
        (Service("mlp", 20.0, 1000.0),))))
    models = tmp_path / "models.yaml"
    models.write_text("mlp: {factory: 'parvagpu.serving.workers:numpy_mlp', shape: [3, 8, 8]}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ENABLE")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen([sys.executable, "-m", "parvagpu", "serve", str(plan), "--models", str(models),
                             "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        for line in proc.stderr:
            if line.startswith("serving ") or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "serve exited"
        held = _listeners(_descendants(proc.pid))
        assert any(p == port for _, _, p in held), "the HTTP port is among the listeners found"
        assert len(held) >= 3  # GCS, raylet, workers, agents: all found, and all of them loopback
        wide = [(h, Path(f"/proc/{h[0]}/cmdline").read_text()[:60]) for h in held if h[1] not in _LOOPBACK]
        assert wide == []
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
