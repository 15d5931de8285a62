"""The live controller on two Ray nodes (the cluster of `test_serving_nodes.py`: a head and a second
`ray start --address` on loopback, each with its `parvagpu_node_<n>` resource). The controller
serves a two-node plan with each segment on its node; the second node's raylet is killed under
open-loop load. Checks: the dead node's segments' requests fail over or get 503 promptly (never
the 5-s call timeout), every request sent is answered, and the controller re-plans onto the
remaining node (decision log and `GET /v1/plan`), after which the model that lived only on the
lost node is served again. Skipped like the other Ray end-to-end tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from ray_cluster import free_port
from test_serving_nodes import cluster  # noqa: F401 (the two-node cluster fixture)

from parvagpu.control.live import Controller, LiveConfig
from parvagpu.control.policy import PolicyConfig
from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.inputs.profiles import load_profiles
from parvagpu.serving.loadgen import HttpSender, Target, run_load
from parvagpu.serving.workers import read_models

pytestmark = pytest.mark.slow
LIVE = Path(__file__).resolve().parents[1] / "bench" / "live"

# One GPU per node. sleepy (100 ms a batch of 2: 20 req/s a segment) on both nodes, nap (50 ms:
# 40 req/s) on node 1 only; the offered rates are far below either model's capacity on one node.
SLEEPY, NAP = Triplet(1, 2, 1, 20.0, 100.0), Triplet(1, 2, 1, 40.0, 50.0)
PLAN = DeploymentMap(
    "A100-80GB", "parva", 3, 1,
    (PlacedSegment(Segment("sleepy", SLEEPY), 0, 0), PlacedSegment(Segment("sleepy", SLEEPY), 1, 0),
     PlacedSegment(Segment("nap", NAP), 1, 1)),
    (Service("sleepy", 8.0, 1000.0), Service("nap", 8.0, 500.0)),
)
LOAD_S, KILL_AT_S, CLIENT_TIMEOUT_S = 30.0, 4.0, 20.0
# No re-plan for load during the test (the window outlasts it): only the node loss re-plans.
POLICY = PolicyConfig(dwell_s=3600.0, cooldown_s=1.0)
CFG = LiveConfig(tick_s=0.5, window_s=600.0, attainment_window_s=600.0, node_loss_s=2.0, drain_timeout_s=30.0)


class _Clock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, s: float) -> None:
        time.sleep(s)


def _load(url: str) -> list[tuple[float, str, str, float]]:
    """Open-loop load on both models; every reply as (sent at, model, outcome, seconds taken)."""
    out: list[tuple[float, str, str, float]] = []

    async def main():
        loop = asyncio.get_running_loop()
        async with HttpSender(url, synthetic=True) as sender:
            await sender.prepare(["sleepy", "nap"])
            t0 = loop.time()

            async def send(model: str, rid: int):
                sent = loop.time() - t0
                r = await sender(model, rid)
                out.append((sent, model, r.outcome, loop.time() - t0 - sent))
                return r

            return await run_load([Target(s.model, s.rate, s.latency_ms) for s in PLAN.services], send, LOAD_S,
                                  seed=3, timeout_s=CLIENT_TIMEOUT_S)

    res = asyncio.run(main())
    assert res.lost == 0 and all(s.timeouts == 0 for s in res.stats), res.stats
    assert sum(s.sent for s in res.stats) == len(out)
    return sorted(out)


def test_controller_loses_a_node_fails_over_promptly_and_replans_onto_the_rest(cluster, tmp_path,  # noqa: F811
                                                                                monkeypatch):
    from parvagpu.control.api import serve_api
    from parvagpu.control.nodes import FakeNodes
    from parvagpu.serving.app import LiveServe, start_ray

    for k in ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_worker_niceness", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(k, "")  # recorded, so what start_ray sets is undone after the test:
        monkeypatch.delenv(k)  # a later test's subprocess must not inherit it
    port, cport = free_port(), free_port()
    start_ray("127.0.0.1", port, "auto")
    log: list[dict] = []
    live = LiveServe(read_models(LIVE / "models.yaml"), 200, pin_nodes=True)
    profiles = load_profiles(LIVE / "profiles")
    ctl = Controller(PLAN, profiles, POLICY, CFG, _Clock(), FakeNodes(tmp_path, 1), live, live, log.append)
    ctl.start()
    server = serve_api(ctl, cport, profiles, {"sleepy", "nap"})
    stop = threading.Event()
    loop = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    loop.start()
    out: dict = {}
    load = threading.Thread(target=lambda: out.setdefault("replies", _load(f"http://127.0.0.1:{port}")))
    try:
        t0 = time.monotonic()
        load.start()
        time.sleep(KILL_AT_S)
        cluster[1].raylet().kill()  # SIGKILL: node 1 is gone, its workers with it
        killed = time.monotonic() - t0
        load.join(LOAD_S + CLIENT_TIMEOUT_S + 60)
        assert not load.is_alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{cport}/v1/plan", timeout=10) as r:
            snap = json.load(r)
    finally:
        stop.set()
        loop.join(60)
        server.shutdown()
    replies = out["replies"]
    kinds = [r["kind"] for r in log]
    assert "refused" not in kinds, log
    lost = next(r for r in log if r["kind"] == "nodes lost")
    assert lost["nodes"] == [1] and set(lost["segments"]) == {"sleepy-n1-g0-s0", "nap-n1-g0-s1"}
    done = next(r for r in log if r["kind"] == "transition done" and r["time_s"] > lost["time_s"])
    routed = max(s["routed_at_s"] for s in done["steps"] if s["action"] == "create") - t0
    # the running plan (GET /v1/plan) holds node 0's GPU only, every model with enough capacity
    plan = snap["plan"]
    assert {s["gpu"] for s in plan["segments"]} == {0}, plan["segments"]
    assert {s["model"]: s["capacity"] >= s["rate"] for s in plan["services"]} == {"sleepy": True, "nap": True}
    assert any(d["kind"] == "nodes lost" for d in snap["decisions"])
    # no answer waited for the call timeout: the dead node's requests failed over or got 503 fast
    slow = [r for r in replies if r[2] != "ok" and r[3] > 3.0]
    assert not slow, slow[:5]
    sleepy = [r for r in replies if r[1] == "sleepy"]
    assert sum(r[2] == "ok" for r in sleepy) >= 0.95 * len(sleepy)  # node 0's segment took it all
    nap = [r for r in replies if r[1] == "nap"]
    assert all(r[2] == "ok" for r in nap if r[0] < killed - 0.5)
    assert any(r[2] == "rejected" for r in nap if killed < r[0] < routed)  # nowhere to go: 503
    after = [r for r in nap if r[0] > routed + 1.0]
    assert after and all(r[2] == "ok" for r in after)  # served again on node 0
    worst = max((r[3] for r in replies if r[2] != "ok"), default=0.0)
    print(f"killed at {killed:.1f} s, lost at {lost['time_s'] - t0:.1f} s, re-planned and routed at "
          f"{routed:.1f} s; slowest answer other than ok {worst:.2f} s; " + "; ".join(
              f"{m}: sent {len(rs)} ok {sum(r[2] == 'ok' for r in rs)} 503 {sum(r[2] == 'rejected' for r in rs)} "
              f"failed {sum(r[2] == 'failed' for r in rs)}" for m, rs in (("sleepy", sleepy), ("nap", nap))))
