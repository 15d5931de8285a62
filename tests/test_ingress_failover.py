"""The ingress's answer to a segment that dies under a request, without Ray: the request moves to
another segment of the model with room or is answered 503 with Retry-After, promptly; never 502,
and never 504 for a segment whose probes fail. A failed segment is avoided until a probe answers,
however long that takes (Ray may restart its replica)."""

from __future__ import annotations

import asyncio
import time

import pytest
from fake_handles import Resp, ScriptedHandle, one_segment_ingress

from parvagpu.serving.ingress import Ingress


@pytest.fixture(autouse=True)
def fast_probes(monkeypatch):
    monkeypatch.setattr("parvagpu.serving.ingress.PROBE_EVERY_S", 0.01)
    monkeypatch.setattr("parvagpu.serving.ingress.PROBE_TIMEOUT_S", 0.05)


def _ingress(*handles, limit: int = 4, slo_ms: float = 100.0) -> Ingress:
    names = [f"m-{chr(ord('a') + k)}" for k in range(len(handles))]
    segs = [{"name": n, "throughput": 10.0, "limit": limit, "batch": 1, "procs": 1, "wait_s": 0.0,
             "latency_ms": 10.0} for n in names]
    ing = Ingress({"m": {"rate": 1.0, "latency_ms": slo_ms, "capacity": 10.0 * len(names), "segments": segs}},
                  dict(zip(names, handles)))
    ing.models["m"].call_timeout_s = 2.0  # far beyond what any answer below may take
    return ing


def _dead(*script: str) -> ScriptedHandle:
    h = ScriptedHandle(*script)
    h.alive = False
    return h


async def _stopped(ing: Ingress, coro):
    try:
        return await coro
    finally:
        await ing.stop_probes()


def test_a_request_whose_only_segment_died_is_a_503_with_retry_after_at_once_not_a_502():
    """Its node is gone (probes fail): no retry on the dead segment, 503 with Retry-After."""
    h = _dead("die")
    ing = _ingress(h)
    t0 = time.perf_counter()
    reply = asyncio.run(_stopped(ing, ing.http("POST", "/v1/models/m/infer", {}, b"")))
    assert reply.status == 503 and reply.headers["retry-after"] == "1"
    assert b"RuntimeError" in reply.body and time.perf_counter() - t0 < 1.0
    st = ing.stats_doc()["m"]
    assert h.calls == 1 and (st["admitted"], st["failed"], st["retried"], st["down"], st["inflight"]) == (
        1, 1, 0, ["m-a"], [0])


def test_a_failure_moves_on_to_every_other_segment_with_room_before_giving_up():
    a, b, c = _dead("die"), _dead("die"), ScriptedHandle("ok")
    ing = _ingress(a, b, c)
    status, body = asyncio.run(_stopped(ing, ing.infer("m")))
    assert status == 200 and body["segment"] == "m-c"
    st = ing.stats_doc()["m"]
    assert (a.calls, b.calls, c.calls) == (1, 1, 1)
    assert (st["failover"], st["failed"], st["ok"], st["down"], st["inflight"]) == (2, 0, 1, ["m-a", "m-b"], [0, 0, 0])


def test_a_restarted_replica_takes_the_retry_and_a_broken_one_gets_503_not_502():
    """The segment's probe answers after its call failed (another or a restarted replica): the
    request is retried there once; if that fails too, 503."""
    back = ScriptedHandle("die", "ok")
    ing = _ingress(back)
    status, body = asyncio.run(_stopped(ing, ing.infer("m")))
    assert status == 200 and body["segment"] == "m-a" and ing.stats_doc()["m"]["retried"] == 1
    assert ing.stats_doc()["m"]["down"] == []
    broken = ScriptedHandle("die")
    ing = _ingress(broken)
    status, body = asyncio.run(_stopped(ing, ing.infer("m")))
    assert status == 503 and broken.calls == 2 and "retry later" in body["error"]


def test_a_call_held_by_a_segment_that_answered_others_gives_up_when_it_dies():
    """Call X is held by segment a; call Y on a answers (a is up); then a's node dies and call Z
    fails there. X is answered 503 at once, not 504 at the call timeout: an answer on a segment
    must not forget the outage signal that calls still held there wait on."""
    h = ScriptedHandle("hang", "ok", "die")
    ing = _ingress(h)

    async def run():
        x = asyncio.ensure_future(ing.infer("m"))
        await asyncio.sleep(0.01)
        y = await ing.infer("m")
        h.alive = False
        z = await ing.infer("m")
        t0 = time.perf_counter()
        return y, z, await x, time.perf_counter() - t0

    y, z, x, waited = asyncio.run(_stopped(ing, run()))
    assert (y[0], z[0], x[0]) == (200, 503, 503) and waited < 0.5
    assert "unreachable" in x[1]["error"]
    assert ing.stats_doc()["m"]["inflight"] == [0]


def test_a_node_that_dies_after_its_probe_answered_is_found_by_the_next_probe():
    """A call past its SLO has its segment probed, and again every SLO: a node that dies after one
    probe answered still has its held call moved to the model's other segment in well under the
    call timeout."""
    silent, live = ScriptedHandle("hang"), ScriptedHandle("ok")
    ing = _ingress(silent, live)

    async def run():
        t0 = time.perf_counter()
        x = asyncio.ensure_future(ing.infer("m"))  # to a: held
        await asyncio.sleep(0.4)  # its first probe (at the 0.25-s floor) answered
        probes = silent.probes
        silent.alive = False
        return probes, await x, time.perf_counter() - t0

    probes, (status, body), took = asyncio.run(_stopped(ing, run()))
    assert probes == 1 and status == 200 and body["segment"] == "m-b" and took < 1.5
    st = ing.stats_doc()["m"]
    assert (st["failover"], st["failed"], st["down"]) == (1, 0, ["m-a"])


def test_a_segment_whose_probe_cannot_be_sent_is_probed_until_it_comes_back():
    """A failed segment is avoided until healthy, not forever: a probe that raises at once (no
    replica to send it to yet) does not end the prober."""

    class Pid:  # raises until the replica is back
        broken = True

        def remote(self):
            if self.broken:
                h.probes += 1
                raise RuntimeError("no replica")
            return Resp(h._pid())

    h = ScriptedHandle("die", "ok")
    h.pid = pid = Pid()
    ing = _ingress(h)

    async def run():
        first = await ing.infer("m")
        await asyncio.sleep(0.05)
        failed_probes, pid.broken = h.probes, False
        await asyncio.sleep(0.1)
        return first, failed_probes, ing.stats_doc()["m"]["down"], await ing.infer("m")

    first, failed_probes, down, second = asyncio.run(_stopped(ing, run()))
    assert first[0] == 503 and failed_probes >= 2
    assert down == [] and second[0] == 200 and ing.stats_doc()["m"]["up"] == 1


def test_a_hung_replica_that_answers_probes_is_still_a_504():
    """The one case left for 504: the segment keeps answering probes but not the call."""
    h = ScriptedHandle("hang")
    ing = one_segment_ingress(h)
    ing.models["m"].call_timeout_s = 1.0  # probes at 0.25 s and every 0.25 s after, even on a stalled loop
    status, _ = asyncio.run(_stopped(ing, ing.infer("m")))
    assert status == 504 and h.probes >= 2 and ing.stats_doc()["m"]["inflight"] == [0]
