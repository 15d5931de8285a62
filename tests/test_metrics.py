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
    assert asyncio.run(ing.infer("m"))[0] == 503  # dies twice: retried, then failed
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


def test_a_route_added_later_is_watched_and_families_split_between_ingress_and_controller():
    """The live ingress starts with no model: a route set later is watched (its SLO read at each
    request), and the families split cleanly: the ingress's text and the controller's, with no
    family in both (a scrape of the controller's /metrics joins the two)."""
    from parvagpu.serving.ingress import Ingress
    from parvagpu.serving.metrics import INGRESS_FAMILIES

    ing, met = Ingress({}, {}), Metrics()
    met.attach(ing)
    ing.set_model("m", 5.0, 100.0)
    met.watch("m", ing.models["m"])
    seg = {"name": "m-s0", "throughput": 10.0, "limit": 2, "batch": 1, "procs": 1, "wait_s": 0.0, "latency_ms": 1.0}
    ing.add_segment("m", seg, ScriptedHandle("ok", "hang", hang_s=0.2))
    ing.activate("m", "m-s0")
    assert asyncio.run(ing.infer("m"))[0] == 200
    ing.set_model("m", 5.0, 1000.0)  # the SLO switched at runtime: 0.2 s is now within it
    assert asyncio.run(ing.infer("m"))[0] == 200
    assert _value(met, "parvagpu_request_latency_seconds_count", {"model": "m"}) == 2
    assert _value(met, "parvagpu_requests_within_slo_total", {"model": "m"}) == 2
    ctl = Metrics()
    ctl.model_state("m", rate=4.0, attainment=1.0, capacity=10.0, planned=5.0)
    ingress_text = met.exposition(only=INGRESS_FAMILIES).decode()
    ctl_text = ctl.exposition(skip=INGRESS_FAMILIES).decode()
    assert 'parvagpu_request_latency_seconds_count{model="m"} 2.0' in ingress_text
    assert 'parvagpu_segment_inflight_now{model="m",segment="m-s0"} 0.0' in ingress_text
    assert "parvagpu_capacity" not in ingress_text and 'parvagpu_capacity{model="m"} 10.0' in ctl_text
    names = lambda text: {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")}  # noqa: E731
    assert {n for n in names(ingress_text) if not any(n.startswith(f) for f in INGRESS_FAMILIES)} == set()
    assert not names(ingress_text) & names(ctl_text) and "parvagpu_plan_gpus" in names(ctl_text)
