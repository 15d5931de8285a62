"""Prometheus metrics: the ingress hook counts every outcome, latencies against the SLO, batches
and in-flight requests; the controller's plan figures; the endpoint answers on loopback."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest

pytest.importorskip("prometheus_client")

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet  # noqa: E402
from parvagpu.serving.ingress import Ingress  # noqa: E402
from parvagpu.serving.metrics import Metrics  # noqa: E402


class _Resp:
    def __init__(self, coro) -> None:
        self.coro = coro

    def __await__(self):
        return self.coro.__await__()

    def cancel(self) -> None:
        pass


class _Handle:
    def __init__(self, *script: str) -> None:
        self.script, self.calls = list(script), 0

    def remote(self, payload):
        what = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1

        async def go():
            if what == "die":
                raise RuntimeError("actor died")
            if what == "hang":
                await asyncio.sleep(0.3)
            return {"queue_ms": 1.0, "compute_ms": 2.0, "batch": 4}

        return _Resp(go())


def _ingress(handle, limit=1):
    seg = {"name": "m-s0", "throughput": 10.0, "limit": limit, "batch": 4, "procs": 1, "wait_s": 0.0,
           "latency_ms": 10.0}
    spec = {"m": {"rate": 8.0, "latency_ms": 100.0, "capacity": 10.0, "segments": [seg]}}
    return Ingress(spec, {"m-s0": handle})


def _value(metrics: Metrics, name: str, labels: dict | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_ingress_outcomes_latency_batches_and_inflight():
    ing, met = _ingress(_Handle("ok", "die", "die", "hang")), Metrics()
    met.attach(ing)
    assert asyncio.run(ing.infer("m"))[0] == 200
    assert asyncio.run(ing.infer("m"))[0] == 502  # dies twice: retried, then failed

    async def two():  # the third call holds the only slot: the fourth gets 503
        return await asyncio.gather(ing.infer("m"), ing.infer("m"))

    assert sorted(s for s, _ in asyncio.run(two())) == [200, 503]
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
