"""The ingress's decisions, without Ray: per model a router and admission counters, one segment
call with its retry and timeout, and the answers of the HTTP routes.

`app.py` wraps `Ingress` in a Ray Serve deployment and gives it the segments' handles; anything with
`handle.remote(payload)` returning an awaitable (with `cancel()`) works, so this runs in tests
without Ray.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from parvagpu.serving.policy import Admission
from parvagpu.serving.router import WeightedRouter

RETRIES = 1
CALL_TIMEOUT_SLOS = 10  # a segment call still running after 10 SLOs is given up (504)
MIN_CALL_TIMEOUT_S = 5.0


async def _result(resp):
    return await resp


@dataclass
class ModelRoute:
    """One model at the ingress: where its requests may go and what happened to them."""

    model: str
    router: WeightedRouter
    admission: Admission
    handles: list  # per segment, its deployment handle
    names: list[str]  # per segment, its name
    call_timeout_s: float
    counts: dict[str, int] = field(
        default_factory=lambda: {"admitted": 0, "rejected": 0, "retried": 0, "failed": 0, "ok": 0}
    )

    @classmethod
    def from_spec(cls, model: str, m: dict, handles: dict) -> "ModelRoute":
        """From one model of `app.spec_to_dict` and the handles by segment name."""
        segs = m["segments"]
        return cls(
            model=model,
            router=WeightedRouter([s["throughput"] for s in segs]),
            admission=Admission(
                [s["limit"] for s in segs],
                [(s["batch"], s["procs"], s["wait_s"], s["latency_ms"], m["latency_ms"]) for s in segs],
            ),
            handles=[handles[s["name"]] for s in segs],
            names=[s["name"] for s in segs],
            call_timeout_s=max(MIN_CALL_TIMEOUT_S, CALL_TIMEOUT_SLOS * m["latency_ms"] / 1000.0),
        )

    def admit(self) -> int | None:
        """The segment this request goes to, its slot taken; None (counted) when all are full."""
        i = self.router.pick(self.admission.has_room)
        if i is None or not self.admission.try_acquire(i):
            self.counts["rejected"] += 1
            return None
        self.counts["admitted"] += 1
        return i

    async def call(self, i: int, payload: Any) -> tuple[int, dict]:
        """Run one admitted request on segment i: retried once on a replica failure, given up
        (504) after the call timeout. Always releases the slot."""
        t0 = time.perf_counter()
        try:
            last = None
            for attempt in range(1 + RETRIES):
                resp = self.handles[i].remote(payload)
                try:
                    timing = await asyncio.wait_for(_result(resp), self.call_timeout_s)
                except asyncio.TimeoutError:
                    resp.cancel()  # a hung replica: the request is a miss, answered, not retried
                    self.counts["failed"] += 1
                    return 504, {"error": f"{self.model}: segment {self.names[i]} did not answer in time"}
                except Exception as exc:  # replica died or failed: retry once, then report
                    last = exc
                    if attempt < RETRIES:
                        self.counts["retried"] += 1
                    continue
                self.counts["ok"] += 1
                self.admission.observe(i, timing.get("compute_ms", 0.0))
                timing["ingress_ms"] = 1000.0 * (time.perf_counter() - t0)
                return 200, {"model": self.model, "segment": self.names[i], "timing": timing}
            self.counts["failed"] += 1
            return 502, {"error": f"{self.model}: segment {self.names[i]} failed: {type(last).__name__}"}
        finally:
            self.admission.release(i)

    def stats(self) -> dict:
        adm = self.admission
        return {**self.counts, "inflight": list(adm.inflight), "limits": list(adm.limits),
                "batch_ms": list(adm.batch_ms)}


class Ingress:
    """Every model's route; `infer` is the one entry point for HTTP and Python callers."""

    def __init__(self, spec: dict, handles: dict) -> None:
        self.spec = spec
        self.models = {model: ModelRoute.from_spec(model, m, handles) for model, m in spec.items()}

    async def infer(self, model: str, payload: Any = None) -> tuple[int, dict]:
        """(HTTP status, body) for one request."""
        route = self.models.get(model)
        if route is None:
            return 404, {"error": f"unknown model {model!r}", "models": sorted(self.models)}
        i = route.admit()
        if i is None:
            return 503, {"error": f"{model}: over planned capacity, retry later"}
        return await route.call(i, payload)

    def models_doc(self) -> dict:
        """GET /v1/models: each model's planned rate, SLO, capacity and segments."""
        return {"models": [
            {"model": k, "rate": v["rate"], "latency_ms": v["latency_ms"], "capacity": v["capacity"],
             "segments": [s["name"] for s in v["segments"]]}
            for k, v in self.spec.items()
        ]}

    def stats_doc(self) -> dict:
        """GET /v1/stats: per model its counters and its segments' in-flight counts and limits."""
        return {k: r.stats() for k, r in self.models.items()}
