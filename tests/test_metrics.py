"""Prometheus metrics: the ingress hook counts every outcome, latencies against the SLO, batches
and in-flight requests; the controller's plan figures; the endpoint answers on loopback."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from fake_handles import ScriptedHandle, one_segment_ingress

pytest.importorskip("prometheus_client")

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet  # noqa: E402
from parvagpu.serving.metrics import Metrics  # noqa: E402


def _value(metrics: Metrics, name: str, labels: dict | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_ingress_outcomes_latency_batches_and_inflight():
    ing, met = one_segment_ingress(ScriptedHandle("ok", "hang", "die", "die", hang_s=0.3, batch=4), rate=8.0, batch=4), Metrics()
    met.attach(ing)
    assert asyncio.run(ing.infer("m"))[0] == 200

    async def two():  # the second call holds the only slot: the third gets 503
        return await asyncio.gather(ing.infer("m"), ing.infer("m"))

    assert sorted(s for s, _ in asyncio.run(two())) == [200, 503]
    assert asyncio.run(ing.infer("m"))[0] == 502  # dies twice: retried, then failed
    count = {o: _value(met, "parvagpu_requests_total", {"model": "m", "outcome": o}) for o in
             ("admitted", "rejected", "failed", "ok")}
    assert count == {"admitted": 3, "rejected": 1, "failed": 1, "ok": 2}
    assert _value(met, "parvagpu_request_latency_seconds_count", {"model": "m"}) == 2
    assert _value(met, "parvagpu_requests_within_slo_total", {"model": "m"}) == 1  # 0.3 s > 100 ms SLO
    assert _value(met, "parvagpu_segment_batch_size_bucket", {"model": "m", "segment": "m-s0", "le": "4.0"}) == 2
    assert _value(met, "parvagpu_segment_inflight_now", {"model": "m", "segment": "m-s0"}) == 0
    assert _value(met, "parvagpu_capacity", {"model": "m"}) == 10.0
    assert ing.stats_doc()["m"]["ok"] == 2  # the counts the ingress reported before are unchanged


def test_controller_figures():
    met = Metrics()
    seg = PlacedSegment(Segment("m", Triplet(1, 1, 1, 10.0, 1.0)), 0, 0)
    plan = DeploymentMap("A100-80GB", "parva", 3, 8, (seg,), (Service("m", 5.0, 10.0),), lower_bound=1)
    met.plan(plan)
    met.transition(created=3, removed=2)
    met.model_state("m", rate=8.0, attainment=0.999, capacity=10.0, planned=9.0)
    assert (_value(met, "parvagpu_plan_gpus"), _value(met, "parvagpu_plan_lower_bound"),
            _value(met, "parvagpu_plan_gap")) == (1, 1, 0.0)
    assert _value(met, "parvagpu_replans_total") == 1
    assert _value(met, "parvagpu_segment_changes_total", {"action": "create"}) == 3
    assert _value(met, "parvagpu_headroom", {"model": "m"}) == pytest.approx(0.25)


def test_endpoint_on_loopback():
    met = Metrics()
    met.request("m", "ok", 0.01, 0.1)
    server = met.serve(0)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'parvagpu_requests_total{model="m",outcome="ok"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()
