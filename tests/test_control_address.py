"""`parvagpu control --address`: the controller joins a Ray cluster that is already running (a head
started with `ray start` on loopback, declaring the node resource `parvagpu_node_0`), serves the
plan there with each segment pinned to its node, answers requests, and on stopping deletes its own
applications and leaves the cluster running. Skipped like the other Ray end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ray_cluster import ray_module  # noqa: E402

ray_module("aiohttp", "psutil")

from parvagpu.serving.loadgen import Target, load_http  # noqa: E402
from parvagpu.serving.pinning import node_resource  # noqa: E402

from ray_cluster import LOOPBACK, Node, free_port, head_args, listening, make_auth_token, wait_for  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LIVE = ROOT / "bench" / "live"
# The command as `python -m parvagpu` runs it, its driver kept on loopback like the head.
CONTROL = LOOPBACK + "from parvagpu.cli import app\napp(prog_name='parvagpu')\n"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_control_joins_a_running_cluster_and_leaves_it_running(tmp_path, tmp_path_factory):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None)
    make_auth_token(env)
    gcs = free_port()
    head = Node(head_args(tmp_path_factory.mktemp("rayc"), gcs, '{"%s": 1}' % node_resource(0)),
                {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}, tmp_path / "head.log")
    ctl = None
    try:
        wait_for("the head's GCS", lambda: listening(gcs), 60, [head])
        py = [sys.executable, "-m", "parvagpu"]
        subprocess.run([*py, "plan", "-f", str(LIVE / "services.yaml"), "--profiles", str(LIVE / "profiles"), "-o",
                        str(tmp_path / "plan.json")], check=True, env=env, capture_output=True)
        port, cport = free_port(), free_port()
        ctl = subprocess.Popen(
            [sys.executable, "-c", CONTROL, "control", str(tmp_path / "plan.json"), "--profiles",
             str(LIVE / "profiles"), "--models", str(LIVE / "models.yaml"), "--settings", str(LIVE / "settings.yaml"),
             "--state-dir", str(tmp_path / "state"), "--decisions", str(tmp_path / "decisions.jsonl"),
             "--port", str(port), "--control-port", str(cport), "--address", f"127.0.0.1:{gcs}",
             "--duration", "300"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return bool(_get(f"{url}/v1/models")["models"][0]["segments"])
            except (OSError, IndexError, KeyError, ValueError):
                return ctl.poll() is not None  # ended: reported below
        wait_for("control serving on the cluster", up, 180, [head])
        assert ctl.poll() is None, ctl.stdout.read().decode()[-2000:]
        res = load_http(url, [Target("sleepy", 6.0, 1000.0)], duration_s=3.0, seed=1, timeout_s=30.0, synthetic=True)
        (st,) = res.stats
        assert st.sent > 0 and st.ok == st.sent, st
        ctl.send_signal(signal.SIGTERM)  # stops as on Ctrl-C: its applications deleted, Ray left
        out = ctl.communicate(timeout=120)[0].decode()
        assert ctl.returncode == 0, out[-2000:]
        assert "stopped" in out
        time.sleep(2.0)
        assert head.proc.poll() is None and head.raylet().is_running()  # the cluster runs on
        assert listening(gcs)
    finally:
        if ctl is not None and ctl.poll() is None:
            ctl.kill()
            ctl.wait(30)
        head.stop()
