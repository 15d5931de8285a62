"""The routing switch of a transition at the ingress, pure (fake handles, no Ray): a starting
segment gets no request before it is activated, a draining one gets no new request, it is removed
only when nothing is in flight on it, and every request is answered."""

from __future__ import annotations

import asyncio
import random

import pytest

from fake_handles import GatedHandle, seg_doc
from parvagpu.serving.ingress import Ingress


def _ingress(*names: str) -> tuple[Ingress, dict]:
    handles = {n: GatedHandle(n) for n in names}
    spec = {"m": {"rate": 10.0, "latency_ms": 100.0, "capacity": 10.0 * len(names),
                  "segments": [seg_doc(n, limit=16) for n in names]}}
    return Ingress(spec, dict(handles)), handles


def test_starting_segment_gets_nothing_until_activated():
    async def main():
        ing, h = _ingress("a")
        h["a"].open()
        b = GatedHandle("b")
        b.open()
        ing.add_segment("m", seg_doc("b"), b)
        for _ in range(20):
            assert (await ing.infer("m"))[0] == 200
        assert b.calls == 0 and h["a"].calls == 20  # not ready: no weight
        ing.activate("m", "b")
        for _ in range(20):
            assert (await ing.infer("m"))[0] == 200
        assert b.calls == 10 and h["a"].calls == 30  # equal throughputs: equal shares
    asyncio.run(main())


def test_draining_segment_finishes_its_requests_and_is_removed_only_when_empty():
    async def main():
        ing, h = _ingress("a", "b")
        h["b"].open()
        first = [asyncio.ensure_future(ing.infer("m")) for _ in range(4)]  # 2 wait on a, 2 answered by b
        await asyncio.sleep(0)
        assert ing.inflight("m", "a") == 2
        ing.drain("m", "a")
        with pytest.raises(ValueError, match="in flight"):
            ing.remove_segment("m", "a")  # two requests still run on it
        later = [asyncio.ensure_future(ing.infer("m")) for _ in range(6)]
        await asyncio.sleep(0)
        assert h["a"].calls == 2  # no new request to the draining segment
        h["a"].open()
        results = await asyncio.gather(*first, *later)
        assert [r[0] for r in results] == [200] * 10  # nothing lost
        assert ing.inflight("m", "a") == 0
        ing.remove_segment("m", "a")
        assert ing.models["m"].segments() == {"b": "live"}
        assert [x["segment"] for x in [r[1] for r in results[4:]]] == ["b"] * 6
    asyncio.run(main())


def test_no_live_segment_means_503_not_a_lost_request():
    async def main():
        ing, h = _ingress("a")
        ing.drain("m", "a")
        status, body = await ing.infer("m")
        assert status == 503 and "capacity" in body["error"]
        assert ing.counts()["m"]["rejected"] == 1
        ing.remove_segment("m", "a")
        ing.drop_model("m")
        assert (await ing.infer("m"))[0] == 404
    asyncio.run(main())


def test_new_model_route_serves_after_its_first_segment_is_live():
    async def main():
        ing, _ = _ingress("a")
        ing.set_model("n", 5.0, 200.0)
        assert (await ing.infer("n"))[0] == 503
        h = GatedHandle("n0")
        h.open()
        ing.add_segment("n", seg_doc("n0"), h)
        assert (await ing.infer("n"))[0] == 503
        ing.activate("n", "n0")
        assert (await ing.infer("n"))[0] == 200
        assert ing.counts()["n"]["within_slo"] == 1
        assert {d["model"]: d["segments"] for d in ing.models_doc()["models"]}["n"] == ["n0"]
    asyncio.run(main())


def test_random_switches_never_route_to_a_segment_that_is_not_live():
    """Seeded random interleaving of requests, answers and switch steps: a request only ever goes
    to a live segment, a removal only happens at zero in flight, and every request ends answered."""

    async def main(seed: int):
        rng = random.Random(seed)
        ing, h = _ingress("s0")
        handles = dict(h)
        states = {"s0": "live"}
        pending, sent, k = [], 0, 1
        for _ in range(300):
            op = rng.random()
            if op < 0.5:
                before = {n: x.calls for n, x in handles.items()}
                pending.append(asyncio.ensure_future(ing.infer("m")))
                sent += 1
                await asyncio.sleep(0)
                hit = [n for n, x in handles.items() if x.calls != before[n]]
                assert all(states.get(n) == "live" for n in hit), (hit, states)
            elif op < 0.65:
                name = f"s{k}"
                k += 1
                handles[name] = GatedHandle(name)
                ing.add_segment("m", seg_doc(name, throughput=rng.choice([5.0, 10.0, 20.0])), handles[name])
                states[name] = "starting"
            elif op < 0.75:
                start = [n for n, st in states.items() if st == "starting"]
                if start:
                    n = rng.choice(start)
                    ing.activate("m", n)
                    states[n] = "live"
            elif op < 0.85:
                live = [n for n, st in states.items() if st == "live"]
                if len(live) > 1:
                    n = rng.choice(live)
                    ing.drain("m", n)
                    states[n] = "draining"
            elif op < 0.95:
                n = rng.choice(list(handles))
                handles[n].open()
                await asyncio.sleep(0)
            for n in [n for n, st in states.items() if st == "draining" and ing.inflight("m", n) == 0]:
                ing.remove_segment("m", n)
                states[n] = "gone"
        for x in handles.values():
            x.open()
        results = await asyncio.gather(*pending)
        assert len(results) == sent
        assert all(r[0] in (200, 503) for r in results)
        c = ing.counts()["m"]
        assert c["ok"] + c["rejected"] == sent and c["ok"] == sum(r[0] == 200 for r in results)
        assert sum(ing.models["m"].admission.inflight) == 0

    for seed in range(5):
        asyncio.run(main(seed))
