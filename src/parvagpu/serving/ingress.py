"""The ingress's decisions, without Ray: per model a router and admission counters, one segment
call with its retry and timeout, and every HTTP route's answer (the Open Inference Protocol under
`/v2`, the timing-only `/v1` routes).

`app.py` wraps `Ingress` in a Ray Serve deployment and gives it the segments' handles; anything with
`handle.remote(payload)` and `handle.predict.remote(inputs, n)` returning an awaitable (with
`cancel()`) works, so this runs in tests without Ray.

A request of n items takes n of a segment's in-flight limit and goes only to a segment whose batch
size is at least n: the planned batch is counted in items, whatever the request sizes.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from parvagpu.serving.oip import HEADER_LENGTH, InferRequest, OipError, Signature, decode_request, encode_response
from parvagpu.serving.policy import Admission
from parvagpu.serving.router import WeightedRouter

RETRIES = 1
CALL_TIMEOUT_SLOS = 10  # a segment call still running after 10 SLOs is given up (504)
MIN_CALL_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 64 * 2**20  # a larger request body is refused (413) before it is read
RETRY_AFTER_S = "1"


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
    batches: list[int]  # per segment, its batch size
    call_timeout_s: float
    signature: Signature | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"admitted": 0, "rejected": 0, "retried": 0, "failed": 0, "ok": 0}
    )
    # metrics hook (serving/metrics.py): observer(outcome, segment index, latency s, batch), or None
    observer: Callable[..., None] | None = None

    def _count(self, outcome: str, i: int | None = None, latency_s: float | None = None, batch=None) -> None:
        self.counts[outcome] += 1
        if self.observer is not None:
            self.observer(outcome, i, latency_s, batch)

    @classmethod
    def from_spec(cls, model: str, m: dict, handles: dict, signature: Signature | None = None) -> "ModelRoute":
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
            batches=[s["batch"] for s in segs],
            call_timeout_s=max(MIN_CALL_TIMEOUT_S, CALL_TIMEOUT_SLOS * m["latency_ms"] / 1000.0),
            signature=signature,
        )

    def admit(self, n: int = 1) -> int | None:
        """The segment this request of n items goes to, its slots taken; None (counted) when no
        segment with a batch of at least n has room."""
        adm, batches = self.admission, self.batches
        i = self.router.pick(lambda j: batches[j] >= n and adm.has_room(j, n))
        if i is None or not adm.try_acquire(i, n):
            self._count("rejected")
            return None
        self._count("admitted", i)
        return i

    async def call(self, i: int, invoke: Callable[[Any], Any], n: int = 1) -> tuple[int, dict]:
        """Run one admitted request (`invoke(handle)` starts it) on segment i: retried once on a
        replica failure, given up (504) after the call timeout. Always releases its slots. 200
        with the replica's answer, or the error status and `{"error"}`."""
        t0 = time.perf_counter()
        try:
            last = None
            for attempt in range(1 + RETRIES):
                resp = invoke(self.handles[i])
                try:
                    res = await asyncio.wait_for(_result(resp), self.call_timeout_s)
                except asyncio.TimeoutError:
                    resp.cancel()  # a hung replica: the request is a miss, answered, not retried
                    self._count("failed", i)
                    return 504, {"error": f"{self.model}: segment {self.names[i]} did not answer in time"}
                except Exception as exc:  # replica died or failed: retry once, then report
                    last = exc
                    if attempt < RETRIES:
                        self._count("retried", i)
                    continue
                if "error" in res:  # the model or a hook failed on this request: no retry
                    self._count("failed", i)
                    return 500, {"error": f"{self.model}: {res['error']}"}
                self.admission.observe(i, res.get("compute_ms", 0.0))
                res["ingress_ms"] = 1000.0 * (time.perf_counter() - t0)
                self._count("ok", i, res["ingress_ms"] / 1000.0, res.get("batch"))
                res["segment"] = self.names[i]
                return 200, res
            self._count("failed", i)
            return 502, {"error": f"{self.model}: segment {self.names[i]} failed: {type(last).__name__}"}
        finally:
            self.admission.release(i, n)

    def stats(self) -> dict:
        adm = self.admission
        return {**self.counts, "inflight": list(adm.inflight), "limits": list(adm.limits),
                "batch_ms": list(adm.batch_ms)}


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body, extra headers."""

    status: int
    body: bytes
    headers: dict = field(default_factory=dict)


def _json(status: int, doc: Any, headers: dict | None = None) -> Reply:
    return Reply(status, json.dumps(doc).encode(), {"content-type": "application/json", **(headers or {})})


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message}, {"retry-after": RETRY_AFTER_S} if status == 503 else None)


class Ingress:
    """Every model's route; `infer` and `infer_tensors` are the entry points for HTTP and Python."""

    def __init__(self, spec: dict, handles: dict, signatures: dict[str, Signature] | None = None,
                 max_body: int = MAX_BODY_BYTES, version: str = "") -> None:
        self.spec = spec
        sigs = signatures or {}
        self.models = {model: ModelRoute.from_spec(model, m, handles, sigs.get(model)) for model, m in spec.items()}
        self.max_body = max_body
        self.version = version

    async def infer(self, model: str, payload: Any = None) -> tuple[int, dict]:
        """(HTTP status, body) for one synthetic request: the model runs on its built-in inputs."""
        route = self.models.get(model)
        if route is None:
            return 404, {"error": f"unknown model {model!r}", "models": sorted(self.models)}
        i = route.admit()
        if i is None:
            return 503, {"error": f"{model}: over planned capacity, retry later"}
        status, res = await route.call(i, lambda h: h.remote(payload))
        if status != 200:
            return status, res
        segment = res.pop("segment")
        return 200, {"model": model, "segment": segment, "timing": res}

    async def infer_tensors(self, model: str, req: InferRequest) -> tuple[int, dict, tuple[str, ...]]:
        """One OIP request, checked against the model's signature before admission: (status, the
        replica's answer with `outputs`, or `{"error"}`; the output names to return)."""
        route = self.models.get(model)
        if route is None:
            raise OipError(f"unknown model {model!r}", 404)
        if route.signature is None:
            raise OipError(f"{model}: no signature in the models config", 400)
        n = route.signature.check(req.inputs)
        names = route.signature.check_outputs(req.outputs)
        if n > max(route.batches):
            raise OipError(f"{model}: {n} items in one request, the largest batch served is {max(route.batches)}")
        i = route.admit(n)
        if i is None:
            raise OipError(f"{model}: over planned capacity, retry later", 503)
        status, res = await route.call(i, lambda h: h.predict.remote(req.inputs, n), n)
        return status, res, names

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

    async def http(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Every route: `/v2/...` (the Open Inference Protocol) and `/v1/...` (timing only)."""
        parts = path.rstrip("/").split("/")[1:]
        try:
            if parts[:1] == ["v2"]:
                return await self._v2(method, parts[1:], headers, body)
            if parts[:1] == ["v1"]:
                return await self._v1(method, parts[1:], body)
        except OipError as exc:
            return _error(exc.status, str(exc))
        return _error(404, f"no route {method} {path}")

    async def _v1(self, method: str, parts: list[str], body: bytes) -> Reply:
        if method == "POST" and len(parts) == 3 and parts[0] == "models" and parts[2] == "infer":
            payload = None
            if body:
                try:
                    payload = json.loads(body)
                except ValueError:
                    return _error(400, "body is not JSON")
            status, out = await self.infer(parts[1], payload)
            return _json(status, out, {"retry-after": RETRY_AFTER_S} if status == 503 else None)
        if method == "GET" and parts == ["models"]:
            return _json(200, self.models_doc())
        if method == "GET" and parts == ["stats"]:
            return _json(200, self.stats_doc())
        return _error(404, f"no route {method} /v1/{'/'.join(parts)}")

    async def _v2(self, method: str, parts: list[str], headers: Mapping[str, str], body: bytes) -> Reply:
        if method == "GET" and parts in (["health", "live"], ["health", "ready"]):
            return _json(200, {parts[1]: True})
        if method == "GET" and not parts:
            return _json(200, {"name": "parvagpu", "version": self.version, "extensions": ["binary_tensor_data"]})
        if len(parts) < 2 or parts[0] != "models":
            raise OipError(f"no route {method} /v2/{'/'.join(parts)}", 404)
        model, rest = parts[1], parts[2:]
        if rest[:1] == ["versions"]:
            if rest[1:2] != ["1"]:
                raise OipError(f"{model}: only version 1 is served", 404)
            rest = rest[2:]
        route = self.models.get(model)
        if route is None:
            raise OipError(f"unknown model {model!r}", 404)
        if method == "GET" and not rest:
            if route.signature is None:
                raise OipError(f"{model}: no signature in the models config", 404)
            return _json(200, route.signature.metadata(model))
        if method == "GET" and rest == ["ready"]:
            return _json(200, {"name": model, "ready": True})
        if method == "POST" and rest == ["infer"]:
            return await self._oip_infer(model, headers, body)
        raise OipError(f"no route {method} /v2/models/{model}/{'/'.join(rest)}", 404)

    async def _oip_infer(self, model: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if len(body) > self.max_body:
            raise OipError(f"request body of {len(body)} bytes exceeds {self.max_body}", 413)
        req = decode_request(body, headers.get(HEADER_LENGTH.lower()))
        status, res, names = await self.infer_tensors(model, req)
        if status != 200:
            return _error(status, res["error"])
        params = {k: res[k] for k in ("segment", "queue_ms", "compute_ms", "batch", "ingress_ms") if k in res}
        out, header_len = encode_response(model, req, res["outputs"], names, params)
        if header_len is None:
            return Reply(200, out, {"content-type": "application/json"})
        return Reply(200, out, {"content-type": "application/octet-stream", HEADER_LENGTH.lower(): str(header_len)})
