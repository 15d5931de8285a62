"""Pure serving parts: the router's proportional split, the batching policy, admission."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from fake_handles import ScriptedHandle, one_segment_ingress

from parvagpu.core.model import DeploymentMap, PlacedSegment, Segment, Service, Triplet
from parvagpu.core.errors import ParvaError
from parvagpu.serving.policy import Admission, batch_wait_s, queue_depth, serving_spec
from parvagpu.serving.router import WeightedRouter, quantise


def _plan(segs, services, per_node=8):
    placed = tuple(
        PlacedSegment(Segment(m, Triplet(size, b, p, thr, lat)), gpu, start)
        for (m, size, b, p, thr, lat, gpu, start) in segs
    )
    return DeploymentMap("A100-80GB", "parva", 3, per_node, placed, tuple(services))


def test_router_split_is_proportional_at_every_prefix():
    shares = [1369.7, 385.7, 93.3]
    r = WeightedRouter(shares)
    counts = [0, 0, 0]
    total = sum(r.weights)
    for n in range(1, 5001):
        counts[r.pick()] += 1
        for i, w in enumerate(r.weights):
            # smooth WRR: never more than one request away from the exact share
            assert abs(counts[i] - n * w / total) < 1.0 + 1e-9
    exact = [s / sum(shares) for s in shares]
    assert [c / 5000 for c in counts] == pytest.approx(exact, abs=1e-3)


def test_router_is_smooth_not_bursty():
    r = WeightedRouter([3, 1])
    assert r.weights == (3, 1) and r.period() == [0, 0, 1, 0]
    # a 3:1 split interleaves: the light segment never waits 4+ picks in a row
    seq = WeightedRouter([3, 1], resolution=4).sequence(40)
    assert max(len(run) for run in "".join(map(str, seq)).split("1")) <= 3


def test_router_sequence_tiles_the_stateful_picks():
    shares = [5.0, 2.0, 2.5]
    r = WeightedRouter(shares, resolution=50)
    live = [r.pick() for _ in range(237)]
    assert WeightedRouter(shares, resolution=50).sequence(237) == live
    assert Counter(r.period()) == dict(enumerate(r.weights))


def test_router_spills_over_to_an_eligible_segment_and_rejects_when_none():
    r = WeightedRouter([1, 1])
    assert r.pick(lambda i: i == 1) == 1
    assert r.pick(lambda i: False) is None
    # a rejection consumes no credit: the next free pick continues the pattern
    assert r.pick() == 0


def test_quantise_validates_and_keeps_tiny_segments():
    assert quantise([1e6, 1e-3], resolution=100) == (100, 1)
    with pytest.raises(ParvaError):
        quantise([])
    with pytest.raises(ParvaError):
        quantise([1.0, 0.0])


def test_batch_wait_is_bounded_by_slo_and_fill_time():
    # 10 % of the SLO at most
    assert batch_wait_s(16, 1, rate=1.0, slo_ms=200) == pytest.approx(0.02)
    # sooner when the planned rate fills the batch faster: 7 more requests at 1000/s per process
    assert batch_wait_s(8, 2, rate=2000, slo_ms=1000) == pytest.approx(0.007)
    assert batch_wait_s(1, 3, rate=5, slo_ms=1000) == 0.0


def test_queue_depth_meets_slo_and_rule_gives_at_least_two():
    # rule: lat < 0.45 L; with wait <= 0.1 L the depth is >= 2
    for lat in (1.0, 10.0, 44.9):
        d = queue_depth(lat, 100.0, 0.010)
        assert d >= 2
        assert d * lat + 10.0 <= 100.0
        assert (d + 1) * lat + 10.0 > 100.0


def test_serving_spec_shares_limits_and_names():
    plan = _plan(
        [
            ("a", 3, 32, 2, 1000.0, 40.0, 0, 4),
            ("a", 1, 16, 1, 250.0, 30.0, 9, 0),
            ("b", 2, 4, 1, 100.0, 20.0, 0, 0),
        ],
        [Service("a", 800.0, 100.0), Service("b", 50.0, 100.0)],
    )
    spec = serving_spec(plan)
    a = spec["a"]
    assert [s.name for s in a.segments] == ["a-n0-g0-s4", "a-n1-g1-s0"]
    assert [s.rate for s in a.segments] == pytest.approx([640.0, 160.0])
    assert a.capacity == 1250.0
    for s in a.segments:
        d = queue_depth(s.latency_ms, 100.0, s.wait_s)
        assert s.limit == d * s.batch * s.procs
        assert s.wait_s <= 0.010 + 1e-12
    assert spec["b"].segments[0].limit >= 2 * 4
    assert serving_spec(plan, depth=2)["a"].segments[0].limit == 2 * 32 * 2
    with pytest.raises(ParvaError):
        serving_spec(plan, rate_scale=0)


def test_serving_spec_rejects_service_without_segment():
    plan = _plan([("a", 1, 1, 1, 10.0, 5.0, 0, 0)], [Service("a", 5, 100), Service("b", 5, 100)])
    with pytest.raises(ParvaError, match="no segment"):
        serving_spec(plan)


def test_admission_backpressure_limits_and_release():
    adm = Admission([2, 1])
    assert adm.try_acquire(0) and adm.try_acquire(0)
    assert not adm.try_acquire(0)  # full: the ingress answers 503 at once
    assert adm.try_acquire(1) and not adm.has_room(1)
    adm.release(0)
    assert adm.has_room(0) and adm.try_acquire(0)
    with pytest.raises(RuntimeError):
        Admission([1]).release(0)
    with pytest.raises(ParvaError):
        Admission([0])


def test_router_with_admission_rejects_only_when_all_segments_full():
    r, adm = WeightedRouter([1.0, 3.0]), Admission([1, 3])
    picks = []
    for _ in range(6):
        i = r.pick(adm.has_room)
        picks.append(i)
        if i is not None:
            assert adm.try_acquire(i)
    assert picks.count(None) == 2 and Counter(p for p in picks if p is not None) == {0: 1, 1: 3}


# Models config and pinning (pure, no Ray)

from parvagpu.serving.pinning import node_resource, pins  # noqa: E402
from parvagpu.serving.workers import build_runner, parse_models, read_models  # noqa: E402


def test_models_config_parses_and_runs_numpy_model(tmp_path):
    cfg = tmp_path / "models.yaml"
    cfg.write_text(
        "version: v1\nmodels:\n"
        "  m: {factory: 'parvagpu.serving.workers:numpy_mlp', shape: [3, 4, 4], args: {hidden: 8}}\n"
    )
    models = read_models(cfg)
    assert models["m"].shape == (3, 4, 4) and models["m"].threads is None
    run = build_runner(models["m"], 4)
    assert run(1) >= 0 and run(4) >= 0


@pytest.mark.parametrize(
    "entry, msg",
    [
        ({"factory": "nocolon", "shape": [1]}, "factory"),
        ({"factory": "a.b:c", "shape": []}, "shape"),
        ({"factory": "a.b:c", "shape": [0]}, "shape"),
        ({"factory": "a.b:c", "shape": [1], "dtype": "float16"}, "dtype"),
        ({"factory": "a.b:c", "shape": [1], "threads": 0}, "threads"),
        ({"factory": "a.b:c", "shape": [1], "extra": 1}, "unknown"),
    ],
)
def test_models_config_rejects_bad_entries(entry, msg):
    with pytest.raises(ParvaError, match=msg):
        parse_models({"m": entry})


def test_models_config_unimportable_factory_is_a_clear_error():
    m = parse_models({"m": {"factory": "parvagpu.nope:f", "shape": [1]}})["m"]
    with pytest.raises(ParvaError, match="cannot import"):
        build_runner(m, 1)


def _state(node, entries):
    keys = ("model", "gpu", "start", "batch", "procs", "mig_uuid", "mps_pipe_dir", "mps_log_dir")
    return {"node": node, "segments": [dict(zip(keys, e)) for e in entries]}


def test_pins_map_each_segment_to_its_mig_uuid_mps_dir_and_node():
    plan = _plan(
        [("a", 3, 32, 2, 1000.0, 40.0, 0, 4), ("a", 1, 16, 1, 250.0, 30.0, 9, 0)],
        [Service("a", 800.0, 100.0)],
    )
    spec = serving_spec(plan)
    states = [
        _state(0, [("a", 0, 4, 32, 2, "MIG-aaa", "/run/p/0-4", "/run/l/0-4")]),
        _state(1, [("a", 1, 0, 16, 1, "MIG-bbb", "/run/p/1-0", "/run/l/1-0")]),
    ]
    p = pins(spec, states)
    assert dict(p["a-n0-g0-s4"].env) == {
        "CUDA_VISIBLE_DEVICES": "MIG-aaa", "CUDA_MPS_PIPE_DIRECTORY": "/run/p/0-4", "CUDA_MPS_LOG_DIRECTORY": "/run/l/0-4",
    }
    assert dict(p["a-n1-g1-s0"].resources) == {node_resource(1): 0.001}
    assert pins(spec, []) == {}  # CPU machine: nothing pinned
    with pytest.raises(ParvaError, match="no node state for node 1"):
        pins(spec, states[:1])
    wrong = [states[0], _state(1, [("a", 1, 0, 8, 1, "MIG-bbb", "/p", "/l")])]
    with pytest.raises(ParvaError, match="apply this plan first"):
        pins(spec, wrong)


def test_pins_accept_the_apply_layers_node_state():
    from parvagpu.node import STATE_VERSION, state_from_dict

    plan = _plan([("a", 3, 32, 2, 1000.0, 40.0, 0, 4)], [Service("a", 800.0, 100.0)])
    doc = {
        "version": STATE_VERSION, "node": 0, "gpu_type": "A100-80GB", "gpus_per_node": 8,
        "segments": [{
            "model": "a", "gpu": 0, "start": 4, "size": 3, "profile": "3g.40gb", "profile_id": 9, "batch": 32,
            "procs": 2, "gi_id": 2, "ci_id": 0, "mig_uuid": "MIG-1234", "mps_pipe_dir": "/p", "mps_log_dir": "/l",
        }],
    }
    p = pins(serving_spec(plan), [state_from_dict(doc, "state.json")])
    assert dict(p["a-n0-g0-s4"].env)["CUDA_VISIBLE_DEVICES"] == "MIG-1234"


def test_adaptive_admission_shrinks_limit_for_slow_segments_only():
    # batch 4, 2 procs, no wait, profiled 20 ms, SLO 100 ms: depth 5, limit 40
    adm = Admission([40], [(4, 2, 0.0, 20.0, 100.0)], alpha=1.0)
    adm.observe(0, 10.0)  # faster than the profile: keep the profile's limit
    assert adm.limits == [40]
    adm.observe(0, 45.0)  # 45 ms batches: only 2 rounds fit in 100 ms
    assert adm.limits == [2 * 4 * 2]
    adm.observe(0, 500.0)  # far too slow: at least one request still admitted
    assert adm.limits == [1 * 4 * 2]
    adm.observe(0, 20.0)
    assert adm.limits == [40]
    plain = Admission([3])
    plain.observe(0, 1e6)
    assert plain.limits == [3]


def test_ingress_retries_a_dead_replica_once_when_its_probe_answers_then_answers_503():
    ing = one_segment_ingress(ScriptedHandle("die", "ok"))
    status, body = asyncio.run(ing.infer("m"))
    assert status == 200 and body["segment"] == "m-s0" and "ingress_ms" in body["timing"]
    ing = one_segment_ingress(ScriptedHandle("die"))
    status, body = asyncio.run(ing.infer("m"))
    assert status == 503 and "RuntimeError" in body["error"]
    st = ing.stats_doc()["m"]
    assert (st["admitted"], st["retried"], st["failed"], st["ok"], st["inflight"]) == (1, 1, 1, 0, [0])


def _two_segment_ingress(a, b):
    from parvagpu.serving.ingress import Ingress

    segs = [{"name": name, "throughput": 10.0, "limit": 4, "batch": 1, "procs": 1, "wait_s": 0.0,
             "latency_ms": 10.0} for name in ("m-a", "m-b")]
    return Ingress({"m": {"rate": 1.0, "latency_ms": 100.0, "capacity": 20.0, "segments": segs}},
                   {"m-a": a, "m-b": b})


def test_ingress_fails_over_from_a_dead_segment_and_probes_it_back(monkeypatch):
    """A segment whose node died: the request in it moves to the model's other segment, no new
    request goes there while it is down, and it takes traffic again once a probe answers."""
    monkeypatch.setattr("parvagpu.serving.ingress.PROBE_EVERY_S", 0.01)
    dead, live = ScriptedHandle("die"), ScriptedHandle("ok")
    dead.alive = False
    ing = _two_segment_ingress(dead, live)

    async def run():
        first = [await ing.infer("m") for _ in range(6)]
        st = ing.stats_doc()["m"] | {"calls": dead.calls}
        await asyncio.sleep(0.1)
        probes_while_dead = dead.probes
        dead.alive, dead.script = True, ["ok"]
        await asyncio.sleep(0.1)
        after = [await ing.infer("m") for _ in range(4)]
        await ing.stop_probes()
        return first, st, probes_while_dead, after

    first, st, probes, after = asyncio.run(run())
    assert [s for s, _ in first] == [200] * 6 and {b["segment"] for _, b in first} == {"m-b"}
    assert st["calls"] == 1  # only the request in flight when it died reached it
    assert (st["failover"], st["down"], st["failed"], st["ok"], st["inflight"]) == (1, ["m-a"], 0, 6, [0, 0])
    assert probes >= 2
    assert sorted(b["segment"] for _, b in after) == ["m-a", "m-a", "m-b", "m-b"]  # no catch-up burst
    assert ing.stats_doc()["m"]["down"] == [] and ing.stats_doc()["m"]["up"] == 1


def test_ingress_answers_503_at_once_when_every_segment_of_a_model_is_down(monkeypatch):
    monkeypatch.setattr("parvagpu.serving.ingress.PROBE_EVERY_S", 0.01)
    h = ScriptedHandle("die")
    h.alive = False
    ing = one_segment_ingress(h, limit=4)

    async def run():
        out = [await ing.infer("m")]
        await asyncio.sleep(0.05)
        out += [await ing.infer("m") for _ in range(3)]
        await ing.stop_probes()
        return out

    assert [s for s, _ in asyncio.run(run())] == [503, 503, 503, 503]
    st = ing.stats_doc()["m"]
    assert h.calls == 1 and h.probes >= 2  # its probe failed: no retry there, then only probes
    assert (st["down"], st["rejected"], st["failed"], st["inflight"]) == (["m-s0"], 3, 1, [0])


def test_calls_held_by_an_unreachable_segment_fail_over_or_get_503_at_once(monkeypatch):
    """A node gone: its segment's replicas neither answer nor fail the calls already sent to them
    (Ray Serve holds a call to a deployment with no replica). One call's error marks the segment
    down; its probe then fails, and every call still held there moves to the model's other segment,
    or, with none, is answered 503: in well under a second, not after the 5-s call timeout."""
    import time

    monkeypatch.setattr("parvagpu.serving.ingress.PROBE_EVERY_S", 0.01)
    dead, live = ScriptedHandle("die", "hang"), ScriptedHandle("ok")
    dead.alive = False
    ing = _two_segment_ingress(dead, live)
    assert ing.models["m"].call_timeout_s >= 5.0

    async def run(ing, k):
        t0 = time.perf_counter()
        out = await asyncio.gather(*(ing.infer("m") for _ in range(k)))
        await ing.stop_probes()
        return out, time.perf_counter() - t0

    out, took = asyncio.run(run(ing, 3))  # a (dies), b, a (held)
    assert [s for s, _ in out] == [200, 200, 200] and {b["segment"] for _, b in out} == {"m-b"}
    assert dead.calls == 2 and took < 1.0
    st = ing.stats_doc()["m"]
    assert (st["failover"], st["failed"], st["ok"], st["inflight"]) == (2, 0, 3, [0, 0])

    alone = ScriptedHandle("die", "hang")
    alone.alive = False
    ing = one_segment_ingress(alone, limit=4)
    out, took = asyncio.run(run(ing, 2))  # the first dies (its probe fails: no retry), the second is held
    assert [s for s, _ in out] == [503, 503] and took < 1.0 and alone.calls == 2
    assert "RuntimeError" in out[0][1]["error"] and "unreachable" in out[1][1]["error"]
    st = ing.stats_doc()["m"]
    assert (st["admitted"], st["failed"], st["rejected"], st["inflight"]) == (2, 2, 0, [0])

    silent = ScriptedHandle("hang")  # no call ever fails: the call past its SLO has the segment probed
    silent.alive = False
    ing = _two_segment_ingress(silent, ScriptedHandle("ok"))
    out, took = asyncio.run(run(ing, 2))  # a (held), b
    assert [s for s, _ in out] == [200, 200] and {b["segment"] for _, b in out} == {"m-b"} and took < 1.0
    assert ing.stats_doc()["m"]["down"] == ["m-a"] and silent.probes >= 1


def test_a_busy_segment_whose_probe_answers_within_the_slo_is_not_taken_for_dead(monkeypatch):
    """A call past its SLO has its segment probed; a replica busy with a long batch answers the
    probe late, but within the SLO: the segment stays up and the call completes (200), where a
    probe bounded by PROBE_TIMEOUT_S alone would have declared it unreachable (503)."""
    monkeypatch.setattr("parvagpu.serving.ingress.PROBE_TIMEOUT_S", 0.05)
    monkeypatch.setattr("parvagpu.serving.ingress.SUSPECT_MIN_S", 0.01)

    class Busy(ScriptedHandle):
        async def _pid(self) -> int:
            self.probes += 1
            await asyncio.sleep(0.1)  # later than PROBE_TIMEOUT_S, within the 0.2-s SLO
            return 1

    h = Busy("hang", hang_s=0.35)
    h.pid = type(h.pid)(h._pid)
    ing = one_segment_ingress(h)
    ing.models["m"].set_slo(200.0)

    async def run():
        out = await ing.infer("m")
        await ing.stop_probes()
        return out

    status, _ = asyncio.run(run())
    assert status == 200 and h.probes == 1 and ing.stats_doc()["m"]["down"] == []


def test_ingress_gives_up_a_hung_call_with_504_and_frees_its_slot():
    ing = one_segment_ingress(ScriptedHandle("hang"))
    ing.models["m"].call_timeout_s = 0.05
    status, _ = asyncio.run(ing.infer("m"))
    assert status == 504 and ing.stats_doc()["m"]["inflight"] == [0]


def test_ingress_rejects_beyond_the_limit_and_unknown_models():
    ing = one_segment_ingress(ScriptedHandle("hang"), limit=1)
    ing.models["m"].call_timeout_s = 0.2

    async def two():
        return await asyncio.gather(ing.infer("m"), ing.infer("m"))

    assert sorted(s for s, _ in asyncio.run(two())) == [503, 504]
    assert asyncio.run(ing.infer("nope"))[0] == 404
    assert ing.stats_doc()["m"]["rejected"] == 1
