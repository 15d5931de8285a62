"""`parvagpu control` end to end on a local Ray cluster: one model's rate doubles under open-loop
load; the controller re-plans from the running plan and switches make-before-break. Checks:
capacity back, no request lost or failed, 503s only between the step and the end of the
transition, the transition's steps and timings in the decision log, a bad services file refused.
Skipped without Ray, and outside CI unless PARVAGPU_RAY_TESTS=1 (about 1.5 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

from ray_cluster import ray_module  # noqa: E402

ray_module("aiohttp", "prometheus_client")

from parvagpu.serving.loadgen import Target, step_load  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
LIVE = ROOT / "bench" / "live"
# The load runs 52 s past the step: a re-plan before the step (an attainment miss of the first
# requests through a fresh ingress on a loaded machine: a CI run saw 2 late of the first 129, 98.4%
# < 99%) starts the model's 20 s dwell, which holds the step's re-plan; its transition must still
# finish, and be seen, while the load runs (a 32 s load ended first in that run).
STEP_AT, DURATION = 8.0, 60.0


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    work = tmp_path_factory.mktemp("control")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "RAY_USAGE_STATS_ENABLED": "0"}
    # set, as an earlier Ray test in this process leaves it: the controller must still work
    # (start_ray keeps it out of its own import of Serve)
    env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
    # the demonstration's settings as a user would set them (attainment target 0.99): before the
    # step the sleeping model meets it even on a loaded 2-core machine (three runs at load average
    # 4-5: no attainment re-plan held the step's re-plan for a dwell)
    settings = (LIVE / "settings.yaml").read_text()
    assert "attainment_target: 0.99," in settings
    (work / "settings.yaml").write_text(settings)
    py = [sys.executable, "-m", "parvagpu"]
    subprocess.run([*py, "plan", "-f", str(LIVE / "services.yaml"), "--profiles", str(LIVE / "profiles"), "-o",
                    str(work / "plan.json")], check=True, env=env, capture_output=True)
    port, cport = _port(), _port()
    proc = subprocess.Popen(
        [*py, "control", str(work / "plan.json"), "--profiles", str(LIVE / "profiles"), "--models",
         str(LIVE / "models.yaml"), "--settings", str(work / "settings.yaml"), "--state-dir", str(work / "state"),
         "--decisions", str(work / "decisions.jsonl"), "--port", str(port), "--control-port", str(cport),
         "--duration", "300"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url, curl = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{cport}"
    deadline = time.time() + 180
    while True:
        try:
            if _get(f"{url}/v1/models")["models"][0]["segments"]:
                break
        except (OSError, IndexError, KeyError):
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"control did not come up: {proc.stdout.read().decode()[-2000:]}")
        time.sleep(0.5)
    yield work, url, curl
    proc.terminate()
    proc.wait(60)


def test_rate_step_restores_capacity_and_loses_nothing(running):
    work, url, curl = running
    t0 = time.time()
    res = step_load(url, Target("sleepy", 12.0, 1000.0), 2.0, STEP_AT, DURATION, seed=1, timeout_s=30.0)
    stats = (*res.base.stats, *res.extra.stats)
    assert res.lost == 0
    assert sum(s.failed + s.timeouts for s in stats) == 0
    log = [json.loads(x) for x in (work / "decisions.jsonl").read_text().splitlines()]
    at = lambda r: datetime.fromisoformat(r["utc"]).timestamp() - t0  # noqa: E731
    done = [r for r in log if r["kind"] == "transition done" and at(r) > STEP_AT]
    assert all(r["steps"] for r in done)  # a re-plan needing no step is "plan kept", not a transition
    assert done, [(round(at(r), 1), r["kind"], r.get("reason"), r.get("held")) for r in log]
    back = at(done[0])
    assert back - STEP_AT < 60.0  # capacity restored within 60 s of the step
    create = [s for s in done[0]["steps"] if s["action"] == "create"]
    assert create and all(s["ready_s"] >= 0 and s["instance_s"] >= 0 for s in create)
    assert any(r["kind"] == "transition" and r["steps_planned"] for r in log)
    rejected = [t for t, outcome in res.replies if outcome == "rejected"]
    assert not [t for t in rejected if t < STEP_AT]  # before the step: capacity was enough
    assert not [t for t in rejected if t > back + 2.0]  # after the switch: enough again
    plan = _get(f"{curl}/v1/plan")["plan"]
    assert [s["capacity"] for s in plan["services"] if s["model"] == "sleepy"][0] >= 24.0
    _metrics_after_load(curl, sum(s.ok for s in stats))


def _metrics_after_load(curl: str, ok: int) -> None:
    """The controller's /metrics holds the ingress's series (latency histogram, per-segment batch
    sizes and in flight) for the requests just served, beside its own (rates, plan, re-plans)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{curl}/metrics", timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            samples.setdefault(smp.name, []).append(smp)
    value = lambda name, **lb: sum(x.value for x in samples.get(name, []) if lb.items() <= x.labels.items())  # noqa: E731
    assert value("parvagpu_request_latency_seconds_count", model="sleepy") >= ok
    assert value("parvagpu_requests_total", model="sleepy", outcome="ok") >= ok
    segs = {x.labels["segment"] for x in samples["parvagpu_segment_batch_size_count"]}
    assert segs and all(s.startswith("sleepy-") for s in segs)
    assert value("parvagpu_segment_batch_size_sum") >= ok  # every ok request ran in some batch
    assert {x.labels["segment"] for x in samples["parvagpu_segment_inflight_now"]}
    assert value("parvagpu_plan_gpus") >= 1 and value("parvagpu_replans_total") >= 1
    assert value("parvagpu_arrival_rate", model="sleepy") > 0


def test_bad_services_file_is_refused_with_one_line(running):
    _, _, curl = running
    before = _get(f"{curl}/v1/plan")["plan"]
    req = urllib.request.Request(f"{curl}/v1/services", data=b"services: [{model: nope, rate: 1, latency_ms: 5}]",
                                 method="POST")
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=5)
    assert exc.value.code == 400
    msg = json.loads(exc.value.read())["error"]
    assert "nope" in msg and "\n" not in msg
    time.sleep(2.0)  # two ticks: a submitted file would have been re-planned for by now
    after = _get(f"{curl}/v1/plan")
    assert not [d for d in after["decisions"] if d.get("reason") == "services file switched"]
    assert {s["model"] for s in after["plan"]["services"]} == {s["model"] for s in before["services"]} == {"sleepy"}
