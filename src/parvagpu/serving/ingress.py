"""The ingress's decisions, without Ray: per model a router and admission counters, one segment
call with its retry and timeout, and every HTTP route's answer (the Open Inference Protocol under
`/v2`, the timing-only `/v1` routes).

`app.py` wraps `Ingress` in a Ray Serve deployment and gives it the segments' handles; anything with
`handle.remote(payload)` and `handle.predict.remote(inputs, n)` returning an awaitable (with
`cancel()`) works, so this runs in tests without Ray.

A request of n items takes n of a segment's in-flight limit and goes only to a segment whose batch
size is at least n: the planned batch is counted in items, whatever the request sizes.

A segment whose call fails (its replica died, or its node: Ray's actor errors) or times out is
*down*: it gets no new requests, and a background probe (`handle.pid.remote()`, bounded) brings it
back when it answers, however long the outage (Ray may restart a replica, or a node may return).
A request whose segment fails moves to another live segment of the model that is up and has room;
with none, the failed segment is probed once and, if it answers (another or a restarted replica),
the request is retried there, once; otherwise the request is answered 503 with Retry-After. A
request is never answered 502 because its segment died: a failure with nowhere to go is a 503.
A node that dies may fail no call at all (its calls just hang), so a call still running after its
model's SLO has its segment probed, and again every SLO while it runs. A probe not answered within
the larger of PROBE_TIMEOUT_S and the SLO (no replica is left, as when its node is gone) makes the
segment down and *unreachable*: every call still waiting on it is given up at once and moves or is
answered 503 the same way; without this, Ray Serve holds a call to a deployment with no replica
until the call timeout. Only a call whose segment keeps answering probes reaches the call timeout
(504: a hung replica, not a lost one). A model with no live segment up answers 503 at once.
`down_segments()` is the node-loss signal the controller reads.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Collection, Mapping

from parvagpu.serving.oip import HEADER_LENGTH, InferRequest, OipError, Signature, decode_request, encode_response
from parvagpu.serving.policy import Admission
from parvagpu.serving.router import WeightedRouter

CALL_TIMEOUT_SLOS = 10  # a segment call still running after 10 SLOs is given up (504)
MIN_CALL_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 64 * 2**20  # a larger request body is refused (413) before it is read
RETRY_AFTER_S = "1"
PROBE_EVERY_S = 0.5  # a down segment is probed this often
PROBE_TIMEOUT_S = 1.0  # a probe not answered in this time (a segment with no replica) failed
SUSPECT_MIN_S = 0.25  # a call running longer than its SLO (at least this) has its segment probed


async def _answers(resp, timeout_s: float) -> bool:
    """Whether a call answers without error within timeout_s. Uses asyncio.wait, not wait_for:
    on Python 3.10/3.11 wait_for swallows a cancellation that arrives as the call finishes, and a
    probe loop that misses its cancellation never ends (the event loop then hangs at shutdown)."""
    fut = asyncio.ensure_future(_result(resp))
    try:
        done, _ = await asyncio.wait({fut}, timeout=timeout_s)
    finally:
        if not fut.done():
            fut.cancel()
            resp.cancel()
    return bool(done) and not fut.cancelled() and fut.exception() is None


async def _result(resp):
    return await resp


STARTING, LIVE, DRAINING, GONE = "starting", "live", "draining", "gone"


@dataclass
class ModelRoute:
    """One model at the ingress: where its requests may go and what happened to them.

    Each segment has a state. A transition adds a segment *starting* (it gets no request), makes
    it *live* once its deployment is ready (the router gives it weight), turns it *draining* (no
    new request; those in flight finish) and removes it only when nothing is in flight on it. The
    router and the admission counters cover live segments only; a request's segment index stays
    valid while it runs, because the lists are compacted only when nothing is in flight."""

    model: str
    router: WeightedRouter | None  # over the live segments (positions in `live`); None when none
    admission: Admission
    handles: list  # per segment, its deployment handle
    names: list[str]  # per segment, its name
    batches: list[int]  # per segment, its batch size
    call_timeout_s: float
    signature: Signature | None = None
    counts: dict[str, int] = field(
        default_factory=lambda: {"admitted": 0, "rejected": 0, "retried": 0, "failed": 0, "ok": 0, "within_slo": 0,
                                 "failover": 0, "down": 0, "up": 0}
    )
    # metrics hook (serving/metrics.py): observer(outcome, segment index, latency s, batch), or None
    observer: Callable[..., None] | None = None
    throughputs: list[float] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    live: list[int] = field(default_factory=list)  # indices of the live segments, the router's order
    slo_s: float = math.inf
    down: set[str] = field(default_factory=set)  # segments (by name) taking no request until a probe answers
    _probes: dict[str, asyncio.Task] = field(default_factory=dict, repr=False)
    # per down segment, a future done once a probe of it failed: the calls waiting on it give up
    _gone: dict[str, asyncio.Future] = field(default_factory=dict, repr=False)
    _checks: dict[str, asyncio.Task] = field(default_factory=dict, repr=False)  # probes of suspect segments

    def _count(self, outcome: str, i: int | None = None, latency_s: float | None = None, batch=None) -> None:
        self.counts[outcome] += 1
        if outcome == "ok" and latency_s is not None and latency_s <= self.slo_s:
            self.counts["within_slo"] += 1
        if self.observer is not None:
            self.observer(outcome, i, latency_s, batch)

    @classmethod
    def from_spec(cls, model: str, m: dict, handles: dict, signature: Signature | None = None) -> "ModelRoute":
        """From one model of `app.spec_to_dict` and the handles by segment name; every segment live."""
        route = cls.empty(model, m, signature, adaptive=True)
        for s in m["segments"]:
            route.add(s, handles[s["name"]])
            route.activate(s["name"])
        return route

    @classmethod
    def empty(cls, model: str, m: dict, signature: Signature | None = None, adaptive: bool = True) -> "ModelRoute":
        """A route with no segment yet (every request 503 until one is live)."""
        route = cls(model=model, router=None, admission=Admission([], [] if adaptive else None), handles=[],
                    names=[], batches=[], call_timeout_s=0.0, signature=signature)
        route.set_slo(m["latency_ms"])
        return route

    def set_slo(self, latency_ms: float) -> None:
        self.slo_s = latency_ms / 1000.0
        self.call_timeout_s = max(MIN_CALL_TIMEOUT_S, CALL_TIMEOUT_SLOS * self.slo_s)

    # --- the routing switch (a transition's steps at the ingress) ---

    def index(self, name: str) -> int:
        for i, (n, st) in enumerate(zip(self.names, self.states)):
            if n == name and st != GONE:
                return i
        raise KeyError(f"{self.model}: no segment {name!r}")

    def add(self, seg: dict, handle) -> None:
        """A new segment, starting: counted, but no request goes to it before `activate`."""
        if any(n == seg["name"] and st != GONE for n, st in zip(self.names, self.states)):
            raise ValueError(f"{self.model}: segment {seg['name']!r} is already routed")
        adaptive = None if self.admission.adaptive is None else (
            seg["batch"], seg["procs"], seg["wait_s"], seg["latency_ms"], 1000.0 * self.slo_s)
        self.admission.append(seg["limit"], adaptive)
        self.handles.append(handle)
        self.names.append(seg["name"])
        self.batches.append(seg["batch"])
        self.throughputs.append(seg["throughput"])
        self.states.append(STARTING)

    def activate(self, name: str) -> None:
        """The segment's deployment is ready: the router gives it its weight."""
        i = self.index(name)
        if self.states[i] != STARTING:
            raise ValueError(f"{self.model}: segment {name!r} is {self.states[i]}, not starting")
        self.states[i] = LIVE
        self._reroute()

    def drain(self, name: str) -> None:
        """No new request goes to the segment; those in flight finish."""
        i = self.index(name)
        self.states[i] = DRAINING
        self._reroute()

    def inflight_of(self, name: str) -> int:
        return self.admission.inflight[self.index(name)]

    def remove(self, name: str) -> None:
        """Forget a drained segment; refused while a request is in flight on it."""
        i = self.index(name)
        if self.states[i] != DRAINING or self.admission.inflight[i]:
            raise ValueError(f"{self.model}: segment {name!r} is {self.states[i]} with "
                             f"{self.admission.inflight[i]} in flight; only a drained segment is removed")
        self.states[i], self.handles[i] = GONE, None
        self.down.discard(name)
        self._gone.pop(name, None)
        task = self._probes.pop(name, None)
        if task is not None:
            task.cancel()
        self._compact()

    def _reroute(self) -> None:
        self.live = [i for i, st in enumerate(self.states) if st == LIVE]
        self.router = WeightedRouter([self.throughputs[i] for i in self.live]) if self.live else None

    def _compact(self) -> None:
        """Drop removed segments' entries once nothing is in flight (no running request holds an index)."""
        if any(self.admission.inflight):
            return
        keep = [i for i, st in enumerate(self.states) if st != GONE]
        self.admission.keep(keep)
        for name in ("handles", "names", "batches", "throughputs", "states"):
            vals = getattr(self, name)
            setattr(self, name, [vals[i] for i in keep])
        self._reroute()

    def segments(self) -> dict[str, str]:
        """Each segment's state, by name (removed ones left out)."""
        return {n: st for n, st in zip(self.names, self.states) if st != GONE}

    def capacity(self) -> float:
        return sum(self.throughputs[i] for i in self.live)

    def admit(self, n: int = 1) -> int | None:
        """The segment this request of n items goes to, its slots taken; None (counted) when no
        live segment with a batch of at least n has room."""
        i = self._pick(n)
        if i is None:
            self._count("rejected")
            return None
        self._count("admitted", i)
        return i

    def _pick(self, n: int, avoid: Collection[int] = ()) -> int | None:
        """A live segment that is up (none of `avoid`) with a batch of at least n and room for n,
        its slots taken."""
        adm, batches, live, names, down = self.admission, self.batches, self.live, self.names, self.down

        def eligible(j: int) -> bool:
            i = live[j]
            return i not in avoid and names[i] not in down and batches[i] >= n and adm.has_room(i, n)

        j = None if self.router is None else self.router.pick(eligible)
        i = None if j is None else live[j]
        if i is None or not adm.try_acquire(i, n):
            return None
        return i

    # --- segments down (their replicas or node died) and back ---

    def mark_down(self, i: int) -> None:
        """Segment i takes no new request until a probe of it answers (counted once per outage)."""
        name = self.names[i]
        if name in self.down:
            return
        self.down.add(name)
        self._count("down", i)
        try:
            self._probes[name] = asyncio.get_running_loop().create_task(self._probe(name))
        except RuntimeError:  # no event loop (a synchronous caller): down until a call answers
            pass

    def mark_up(self, i: int) -> None:
        name = self.names[i]
        if name in self.down:
            self.down.discard(name)
            if self.router is not None:
                self.router.restart()
            self._count("up", i)
        gone = self._gone.get(name)
        if gone is not None and gone.done():  # an undone one is what calls in flight there wait on
            del self._gone[name]
        for tasks in (self._probes, self._checks):
            task = tasks.pop(name, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def stop_probes(self) -> None:
        """Cancel the probes of down segments and wait for them to end (an ingress shutting down
        leaves no task behind for the event loop to chase at exit)."""
        tasks = [t for t in (*self._probes.values(), *self._checks.values()) if t is not asyncio.current_task()]
        self._probes.clear()
        self._checks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _probe(self, name: str) -> None:
        while name in self.down:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                healthy = await self._healthy(name)
                i = self.index(name)
            except KeyError:  # removed by a transition: nothing to probe
                self.down.discard(name)
                return
            if healthy:
                self.mark_up(i)
            else:
                self._mark_gone(name)

    async def _healthy(self, name: str) -> bool:
        """Whether segment `name` answers a probe within the larger of PROBE_TIMEOUT_S and the SLO
        (a busy replica answers once its batch ends, so a slow model is not taken for dead). A
        probe that cannot even be sent failed, and the prober goes on (KeyError: no such segment)."""
        handle = self.handles[self.index(name)]
        try:
            resp = handle.pid.remote()
        except Exception:
            return False
        return await _answers(resp, max(PROBE_TIMEOUT_S, self.slo_s))

    def _mark_gone(self, name: str) -> None:
        """Segment `name` is unreachable: every call waiting on it gives up now."""
        gone = self._gone_future(name)
        if not gone.done():
            gone.set_result(True)

    def _gone_future(self, name: str) -> asyncio.Future:
        """The future that says segment `name` is unreachable (made on first use, on this loop)."""
        fut = self._gone.get(name)
        loop = asyncio.get_running_loop()
        if fut is None or fut.get_loop() is not loop:
            fut = self._gone[name] = loop.create_future()
        return fut

    def _suspect(self, name: str) -> None:
        """A call on segment `name` runs long: probe the segment once (unless a probe runs already);
        no answer marks it down and unreachable."""
        if name in self.down or name in self._checks:
            return
        self._checks[name] = asyncio.get_running_loop().create_task(self._check(name))

    async def _check(self, name: str) -> None:
        try:
            if await self._healthy(name):
                return
            i = self.index(name)
        except KeyError:  # removed meanwhile
            return
        finally:
            if self._checks.get(name) is asyncio.current_task():
                del self._checks[name]
        self.mark_down(i)
        self._mark_gone(name)

    async def _outcome(self, resp, name: str) -> tuple[str, Any]:
        """How one segment call ends: ("ok", its answer), ("timeout", None) after the call timeout,
        or ("gone", None) as soon as the segment is known unreachable; the call's own error is
        raised. A call running past its SLO has its segment probed, and again every SLO while it
        runs: a node may die after a probe that found it alive. A call not finished is cancelled."""
        gone = self._gone_future(name)
        task = asyncio.ensure_future(_result(resp))
        suspect_s = max(SUSPECT_MIN_S, self.slo_s)
        deadline = time.monotonic() + self.call_timeout_s
        try:
            done: set = set()
            while not done:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                done, _ = await asyncio.wait({task, gone}, timeout=min(suspect_s, left),
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done and left > suspect_s:
                    self._suspect(name)
        finally:
            if not task.done():
                task.cancel()
                resp.cancel()
        if task in done:
            return "ok", task.result()
        return ("gone" if gone.done() else "timeout"), None

    async def call(self, i: int, invoke: Callable[[Any], Any], n: int = 1) -> tuple[int, dict]:
        """Run one admitted request (`invoke(handle)` starts it) on segment i. A segment that fails
        it (an actor error, or found unreachable) is marked down and the request moves on
        (`_next`): another live segment with room, else the same one once if a probe finds it
        healthy, else 503 (counted failed). Given up (504) after the call timeout, on a segment
        that kept answering probes. Always releases its slots. 200 with the replica's answer, or
        the error status and `{"error"}`."""
        t0 = time.perf_counter()
        tried: set[int] = set()
        try:
            while True:
                how, res = await self._attempt(i, invoke)
                if how == "timeout":  # a hung replica: the request is a miss, answered, not retried
                    self.mark_down(i)  # its node may be gone before Ray says so: probe it
                    self._count("failed", i)
                    return 504, {"error": f"{self.model}: segment {self.names[i]} did not answer in time"}
                if how == "ok":
                    return self._answered(i, res, t0)
                if how == "error":
                    self.mark_down(i)
                j = await self._next(i, n, tried, how)
                if j is None:
                    self._count("failed", i)
                    why = "is unreachable" if how == "gone" else f"failed ({res})"
                    return 503, {"error": f"{self.model}: segment {self.names[i]} {why} and no other "
                                          f"segment has room, retry later"}
                tried.add(i)
                i = j
        finally:
            self.admission.release(i, n)

    async def _attempt(self, i: int, invoke: Callable[[Any], Any]) -> tuple[str, Any]:
        """One try on segment i: ("ok", the replica's answer), ("timeout", None), ("gone", None)
        when the segment is unreachable, or ("error", the exception's type name)."""
        gone = self._gone.get(self.names[i])
        if gone is not None and gone.done():
            return "gone", None
        try:
            return await self._outcome(invoke(self.handles[i]), self.names[i])
        except Exception as exc:  # the replica or its node died (Ray's actor errors)
            return "error", type(exc).__name__

    def _answered(self, i: int, res: dict, t0: float) -> tuple[int, dict]:
        if "error" in res:  # the model or a hook failed on this request: no retry
            self._count("failed", i)
            return 500, {"error": f"{self.model}: {res['error']}"}
        self.mark_up(i)
        self.admission.observe(i, res.get("compute_ms", 0.0))
        res["ingress_ms"] = 1000.0 * (time.perf_counter() - t0)
        self._count("ok", i, res["ingress_ms"] / 1000.0, res.get("batch"))
        res["segment"] = self.names[i]
        return 200, res

    async def _next(self, i: int, n: int, tried: set[int], how: str) -> int | None:
        """Where a request that segment i failed goes next: another live segment that is up with
        room and not tried before (its slots moved there, counted as a fail-over); else, after an
        actor error and only the first time, segment i itself if a probe finds it healthy
        (another or a restarted replica; counted retried); else None (answered 503)."""
        j = self._move(i, n, avoid={i, *tried})
        if j is not None or how != "error" or i in tried:
            return j
        name = self.names[i]
        try:
            healthy = await self._healthy(name)
        except KeyError:  # removed meanwhile: nothing to retry on
            return None
        if not healthy:
            self._mark_gone(name)
            return None
        self.mark_up(i)
        self._count("retried", i)
        return i

    def _move(self, i: int, n: int, avoid: Collection[int] = ()) -> int | None:
        """Another live segment that is up with room for a request of n items on segment i (none
        of `avoid`), its slots moved there (counted as a fail-over); None when there is none."""
        j = self._pick(n, avoid=avoid or (i,))
        if j is not None:
            self.admission.release(i, n)
            self._count("failover", j)
        return j

    def stats(self) -> dict:
        adm = self.admission
        return {**self.counts, "inflight": list(adm.inflight), "limits": list(adm.limits),
                "batch_ms": list(adm.batch_ms), "segments": list(self.names), "states": list(self.states),
                "down": sorted(self.down)}


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


def _not_ready() -> Reply:
    return _json(503, {"ready": False, "error": "the segments' replicas are still starting"},
                 {"retry-after": RETRY_AFTER_S})


class Ingress:
    """Every model's route; `infer` and `infer_tensors` are the entry points for HTTP and Python."""

    def __init__(self, spec: dict, handles: dict, signatures: dict[str, Signature] | None = None,
                 max_body: int = MAX_BODY_BYTES, version: str = "") -> None:
        self.spec = spec
        sigs = signatures or {}
        self.models = {model: ModelRoute.from_spec(model, m, handles, sigs.get(model)) for model, m in spec.items()}
        self.max_body = max_body
        self.version = version
        # None: ready as soon as constructed; else asked (until it first says yes) whether every
        # segment's replicas are up, so a readiness probe does not send traffic to replicas still
        # loading their models (`app.py` sets it for a planned application).
        self.readiness: Callable[[], Awaitable[bool]] | None = None
        self._ready = False

    async def is_ready(self) -> bool:
        if not self._ready:
            self._ready = self.readiness is None or await self.readiness()
        return self._ready

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
        largest = max((route.batches[i] for i in route.live), default=0)
        if not largest:
            raise OipError(f"{model}: no segment is serving, retry later", 503)
        if n > largest:
            raise OipError(f"{model}: {n} items in one request, the largest batch served is {largest}")
        i = route.admit(n)
        if i is None:
            raise OipError(f"{model}: over planned capacity, retry later", 503)
        status, res = await route.call(i, lambda h: h.predict.remote(req.inputs, n), n)
        return status, res, names

    def models_doc(self) -> dict:
        """GET /v1/models: each model's planned rate, SLO, capacity and live segments."""
        return {"models": [
            {"model": k, "rate": v["rate"], "latency_ms": v["latency_ms"], "capacity": self.models[k].capacity(),
             "segments": [self.models[k].names[i] for i in self.models[k].live]}
            for k, v in self.spec.items()
        ]}

    # --- the routing switch: a transition's steps at the ingress (the controller calls these) ---

    def set_model(self, model: str, rate: float, latency_ms: float, signature: Signature | None = None) -> None:
        """Route a model (new: every request 503 until a segment is live) or update its planned
        rate and SLO."""
        route = self.models.get(model)
        if route is None:
            route = self.models[model] = ModelRoute.empty(model, {"latency_ms": latency_ms}, signature)
        else:
            route.set_slo(latency_ms)
            if signature is not None:
                route.signature = signature
        self.spec[model] = {**self.spec.get(model, {"segments": []}), "rate": rate, "latency_ms": latency_ms,
                            "capacity": route.capacity()}

    def add_segment(self, model: str, seg: dict, handle) -> None:
        """A starting segment of a routed model: no request reaches it before `activate`."""
        self.models[model].add(seg, handle)

    def activate(self, model: str, name: str) -> None:
        self.models[model].activate(name)
        self.spec[model]["capacity"] = self.models[model].capacity()

    def drain(self, model: str, name: str) -> None:
        self.models[model].drain(name)
        self.spec[model]["capacity"] = self.models[model].capacity()

    def inflight(self, model: str, name: str) -> int:
        return self.models[model].inflight_of(name)

    def remove_segment(self, model: str, name: str) -> None:
        self.models[model].remove(name)

    def drop_model(self, model: str) -> None:
        """Stop routing a model that has no segment left (its requests then get 404)."""
        if self.models[model].segments():
            raise ValueError(f"{model}: still has segments {sorted(self.models[model].segments())}")
        del self.models[model]
        self.spec.pop(model, None)

    def counts(self) -> dict[str, dict[str, int]]:
        """Per model its cumulative counters (admitted, rejected, ..., within_slo): the controller's
        observation, taken at the ingress."""
        return {m: dict(r.counts) for m, r in self.models.items()}

    async def stop_probes(self) -> None:
        """Every model's probes cancelled and ended (called when the ingress shuts down)."""
        for r in self.models.values():
            await r.stop_probes()

    def down_segments(self) -> dict[str, list[str]]:
        """Per model, its segments that are down (a failed call, no probe answered since)."""
        return {m: sorted(r.down) for m, r in self.models.items() if r.down}

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
        if method == "GET" and parts == ["health", "live"]:
            return _json(200, {"live": True})
        if method == "GET" and parts == ["health", "ready"]:
            return _json(200, {"ready": True}) if await self.is_ready() else _not_ready()
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
            return _json(200, {"name": model, "ready": True}) if await self.is_ready() else _not_ready()
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
