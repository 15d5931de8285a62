"""A plan as one Ray Serve application.

- One deployment per segment, `num_replicas = procs` (one replica = one MPS process of the
  segment), each replica pinned to its MIG instance and MPS daemon (`pinning.py`; nothing on a CPU
  machine) and batching with `@serve.batch` up to the segment's batch size with the SLO-derived
  wait (`policy.py`). `max_ongoing_requests` per replica = its share of the segment's in-flight
  limit, so Ray never queues more than the admission allows.
- One HTTP ingress deployment holding, per model, its own router and admission counters (the
  decisions are in `ingress.py`, which needs no Ray): requests
  are split over the model's segments by smooth weighted round-robin on segment throughput
  (`router.py`), a full segment spills over to another segment of the model, and when all are
  full the request gets a 503 at once. Limits shrink when a segment's measured batch time exceeds
  its profile (`policy.Admission`). Keeping the per-model routers in one ingress deployment
  saves a network hop per request over a deployment per model; the counters stay exact because the
  ingress has one replica.
- Front door: the ingress replica takes at most `front_door_limit` requests at once and Ray's
  proxy queues 32 more, then answers 503 itself: on a saturated machine the ingress's own event
  loop is a queue the per-model admission cannot see.
- A replica that dies is restarted by Ray Serve; a request that was in it fails with an actor
  error and its segment is marked down at the ingress (no new requests until a probe answers):
  the request moves to another live segment of the model with room, else is retried once on the
  same segment if a probe finds it healthy (another or the restarted replica), else is answered
  503 with Retry-After; a model with no live segment answers 503 at once; a call still running
  after 10 SLOs (at least 5 s) on a segment that answers probes is answered 504. Nothing is
  dropped silently. A whole node lost is the same, for all its segments at once.
- Several nodes: segment replicas go to their node through `parvagpu_node_<n>` resources
  (`pinning.py`); the ingress and the one HTTP proxy run on the head node, so losing another node
  never takes the front door with it.

HTTP: `POST /v1/models/<model>/infer` (JSON body optional), `GET /v1/models`, `GET /v1/stats`.
Python: `serve.get_app_handle(APP).infer.remote(model, payload)`.
"""


import asyncio
import json
import math
import os
import sys
import time
from typing import Any

from parvagpu.core.errors import ParvaError
from parvagpu.serving.ingress import MAX_BODY_BYTES
from parvagpu.serving.pinning import Pin
from parvagpu.serving.policy import ModelSpec
from parvagpu.serving.workers import WorkerModel
from parvagpu.core.extras import install_hint

APP = "parvagpu"
HEAD_RESOURCE = "node:__internal_head__"


def _require_ray():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ParvaError(f"serving needs Ray Serve: {install_hint('serve')}") from None


def _deployments():
    """Define the deployment classes on first use, so importing this module needs no Ray."""
    return _segment_worker(), _plan_ingress()


def _segment_worker():
    from ray import serve

    @serve.deployment
    class SegmentWorker:
        """One replica (MPS process) of a segment: dynamic batching counted in items, the model
        call in a thread, each caller answered with its own rows."""

        def __init__(self, segment: str, model: str, cfg: dict, batch: int, wait_s: float, size: int) -> None:
            from parvagpu.serving.workers import build_runner

            self.segment = segment
            self.run = build_runner(WorkerModel.from_dict(model, cfg), batch, threads=size)
            self.run(1)  # warm up before taking traffic
            self.infer.set_max_batch_size(batch)
            self.infer.set_batch_wait_timeout_s(wait_s)

        @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)
        async def infer(self, items: list) -> list[dict]:
            from parvagpu.serving.workers import run_batch

            return await asyncio.get_running_loop().run_in_executor(None, run_batch, self.run, items)

        async def __call__(self, payload: Any = None) -> dict:
            """A synthetic request: one item of the replica's built-in inputs."""
            from parvagpu.serving.workers import Item

            return await self.infer(Item(time.perf_counter(), None))

        async def predict(self, inputs: dict, n: int) -> dict:
            """A real request of n items: the pre hook, its n items through the batch queue, the
            post hook on its own rows."""
            from parvagpu.serving.workers import Item, finish, merge, prepare, split

            arrived = time.perf_counter()
            try:
                if self.run.pre is not None:
                    inputs = await asyncio.get_running_loop().run_in_executor(None, prepare, self.run, inputs, n)
                res = merge(await asyncio.gather(*(self.infer(Item(arrived, x)) for x in split(inputs, n))))
                if "outputs" in res:
                    res["outputs"] = finish(self.run, res["outputs"])
            except Exception as exc:  # a hook's failure answers this request only
                return {"error": f"{type(exc).__name__}: {exc}"}
            return res

        def pid(self) -> int:
            return os.getpid()

    return SegmentWorker


def _plan_ingress():
    from ray import serve

    # On the head node (Ray's built-in `node:__internal_head__` resource), beside Serve's controller and proxy.
    @serve.deployment(max_ongoing_requests=100_000, num_replicas=1,
                      ray_actor_options={"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}})
    class PlanIngress:
        """The HTTP ingress: `ingress.Ingress` behind Ray Serve."""

        def __init__(self, spec: dict, handles: dict, signatures: dict, max_body: int) -> None:
            from parvagpu import __version__
            from parvagpu.serving.ingress import Ingress

            self.ingress = Ingress(spec, handles, signatures, max_body, __version__)
            self.signatures = signatures
            self.metrics = _ingress_metrics(self.ingress)
            if handles:  # a planned application: ready once Serve runs all of it (`_app_running`)
                self.ingress.readiness = _app_running

        # The routing switch, for the live controller (`control/live.py`); each segment is its own
        # Serve application, named for the segment, so it comes and goes without redeploying others.
        def set_model(self, model: str, rate: float, latency_ms: float) -> None:
            self.ingress.set_model(model, rate, latency_ms, self.signatures.get(model))
            route = self.ingress.models[model]
            if self.metrics is not None and route.observer is None:
                self.metrics.watch(model, route)

        def metrics_text(self) -> bytes:
            """The ingress's Prometheus families (outcomes, latency, batches, in flight); empty
            without prometheus-client."""
            from parvagpu.serving.metrics import INGRESS_FAMILIES

            return b"" if self.metrics is None else self.metrics.exposition(only=INGRESS_FAMILIES)

        def add_segment(self, model: str, seg: dict) -> None:
            self.ingress.add_segment(model, seg, serve.get_deployment_handle(seg["name"], app_name=seg["name"]))

        def activate(self, model: str, name: str) -> None:
            self.ingress.activate(model, name)

        def drain(self, model: str, name: str) -> None:
            self.ingress.drain(model, name)

        def inflight(self, model: str, name: str) -> int:
            return self.ingress.inflight(model, name)

        def remove_segment(self, model: str, name: str) -> None:
            self.ingress.remove_segment(model, name)

        def drop_model(self, model: str) -> None:
            self.ingress.drop_model(model)

        def counts(self) -> dict:
            return self.ingress.counts()

        def down_segments(self) -> dict:
            return self.ingress.down_segments()

        async def infer(self, model: str, payload: Any = None) -> tuple[int, dict]:
            """(HTTP status, body) for one synthetic request: the Python-handle entry point too."""
            return await self.ingress.infer(model, payload)

        async def infer_tensors(self, model: str, inputs: dict, outputs: list | None = None) -> tuple[int, dict]:
            """Python handle: named arrays in, (status, {"outputs": named arrays, timings} or
            {"error"}) out, checked like an OIP request."""
            from parvagpu.serving.ingress import InferRequest, OipError

            try:
                status, res, names = await self.ingress.infer_tensors(
                    model, InferRequest(inputs, outputs=None if outputs is None else tuple(outputs)))
            except OipError as exc:
                return exc.status, {"error": str(exc)}
            if status == 200:
                res["outputs"] = {k: res["outputs"][k] for k in names}
            return status, res

        async def __call__(self, request):
            from starlette.responses import Response

            if request.method == "GET" and request.url.path == "/metrics" and self.metrics is not None:
                return Response(self.metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")
            body = await _read_body(request, self.ingress.max_body)
            if body is None:
                reply = _too_large(self.ingress.max_body)
            else:
                reply = await self.ingress.http(request.method, request.url.path, request.headers, body)
            return Response(reply.body, status_code=reply.status, headers=reply.headers)

    return PlanIngress


def _ingress_metrics(ingress):
    """Prometheus series kept inside the ingress replica (None without prometheus-client)."""
    try:
        from parvagpu.serving.metrics import Metrics

        m = Metrics()
    except ImportError:
        return None
    m.attach(ingress)
    return m


async def _app_running() -> bool:
    """Whether Serve reports this application RUNNING: every deployment's replicas constructed and
    warmed up. Until then the ingress answers, but its segments' replicas may still be loading."""
    from ray import serve

    def running() -> bool:
        st = serve.status().applications.get(APP)
        return st is not None and str(st.status).endswith("RUNNING")

    return await asyncio.get_running_loop().run_in_executor(None, running)


async def _read_body(request, limit: int) -> bytes | None:
    """The request body, or None as soon as it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int):
    from parvagpu.serving.ingress import Reply

    return Reply(413, json.dumps({"error": f"request body exceeds {limit} bytes"}).encode(),
                 {"content-type": "application/json"})


def spec_to_dict(spec: dict[str, ModelSpec]) -> dict:
    return {
        model: {
            "rate": ms.rate, "latency_ms": ms.latency_ms, "capacity": ms.capacity,
            "segments": [
                {"name": s.name, "throughput": s.throughput, "limit": s.limit, "batch": s.batch,
                 "procs": s.procs, "wait_s": s.wait_s, "latency_ms": s.latency_ms}
                for s in ms.segments
            ],
        }
        for model, ms in spec.items()
    }


def build_app(spec: dict[str, ModelSpec], models: dict[str, WorkerModel], pins: dict[str, Pin] | None = None,
              max_body: int = MAX_BODY_BYTES):
    """The Ray Serve application (`Application`) for a serving spec."""
    _require_ray()
    missing = sorted(set(spec) - set(models))
    if missing:
        raise ParvaError(f"models config has no entry for: {', '.join(missing)}")
    SegmentWorker, PlanIngress = _deployments()
    pins = pins or {}
    handles = {}
    for model, ms in spec.items():
        for seg in ms.segments:
            handles[seg.name] = _segment_app(SegmentWorker, seg, models[model], pins.get(seg.name))
    cap = front_door_limit(spec)
    return PlanIngress.options(max_ongoing_requests=cap, max_queued_requests=FRONT_QUEUE).bind(
        spec_to_dict(spec), handles, {m: models[m].signature for m in spec}, max_body
    )


def _segment_app(SegmentWorker, seg, model: WorkerModel, pin: Pin | None):
    """One segment's deployment, bound: replicas = processes, pinned where a node state says."""
    opts: dict[str, Any] = {"num_cpus": 0}
    if pin is not None:
        opts["runtime_env"] = {"env_vars": dict(pin.env)}
        opts["resources"] = dict(pin.resources)
    return SegmentWorker.options(
        name=seg.name,
        num_replicas=seg.procs,
        max_ongoing_requests=max(seg.batch, math.ceil(seg.limit / seg.procs)),
        ray_actor_options=opts,
        health_check_period_s=2.0,
        graceful_shutdown_timeout_s=1.0,
    ).bind(seg.name, seg.model, model.to_dict(), seg.batch, seg.wait_s, seg.size)


FRONT_QUEUE = 32


def front_door_limit(spec: dict[str, ModelSpec]) -> int:
    """Requests the ingress replica takes at once; beyond it (plus FRONT_QUEUE waiting) Ray's proxy
    answers 503 itself. The per-model admission cannot act on requests still waiting for a busy
    ingress's event loop, so this bounds that wait too. Per model: its in-flight limit, but no more
    than three times what it holds at its planned rate within its SLO (Little: rate x SLO), plus
    one batch per process; plus slack for requests being rejected."""
    total = 0
    for ms in spec.values():
        little = math.ceil(3 * ms.rate * ms.latency_ms / 1000.0) + sum(s.batch * s.procs for s in ms.segments)
        total += min(ms.limit, little)
    return total + 32


def confine_replica_grpc() -> None:
    """In each worker of a local cluster: Ray Serve binds every replica's inter-deployment gRPC
    server to all interfaces ("[::]:0", with no option to change it); bind it to loopback like
    the rest of the cluster. Does nothing if Ray's internals differ from what this expects."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None or getattr(original, "_parvagpu_loopback", False):
        return

    def loopback(server, address: str):
        if address.startswith("[::]:"):
            address = "127.0.0.1:" + address[len("[::]:"):]
        return original(server, address)

    loopback._parvagpu_loopback = True
    replica.add_port_to_grpc_server = loopback


def start_ray(host: str, port: int, address: str | None) -> None:
    """Start (or join) Ray and start Serve's HTTP proxy on host:port (see `serve_app`)."""
    if address is None:
        # A cluster for this machine alone: Ray would otherwise advertise the host's network address
        # and its GCS, raylet, workers and agents would listen on every interface. With this (read
        # when ray is first imported) the node address is loopback and so is every listener.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # Ray Serve's low-overhead mode (below) is for the replicas and the proxy: in this driver it
    # makes the synchronous handle calls of the controller fail, and Serve reads it when first
    # imported, so it is held back from this process's import and restored for the workers.
    fast = os.environ.pop("RAY_SERVE_THROUGHPUT_OPTIMIZED", None) if "ray.serve" not in sys.modules else None
    _require_ray()
    import ray
    from ray import serve

    # Ray reports usage statistics over the network unless told not to; this stays on this machine.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray Serve's low-overhead mode: user code on the replica's own event loop, buffered access
    # logs. It more than halves the per-request CPU of the ingress on a small machine.
    os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = fast if fast is not None else os.environ.get(
        "RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    # Ray starts worker processes at nice 15 (background priority); replicas are the served
    # workload and must not yield to every other process on the node.
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not ray.is_initialized():
        local = {} if address is not None else {
            "runtime_env": {"worker_process_setup_hook": "parvagpu.serving.app.confine_replica_grpc"}}
        ray.init(address=address, include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False, configure_logging=True, **local)
    serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port})


class LiveServe:
    """The live controller's serving side on Ray Serve: an ingress application that starts with no
    model, and one Serve application per segment, started and deleted on their own. Its methods are
    the controller's `Port` (the ingress's routing switch, called through its handle) and
    `Deployments` (segments started, ready, stopped)."""

    def __init__(self, models: dict[str, WorkerModel], front_door: int, max_body: int = MAX_BODY_BYTES,
                 ready_timeout_s: float = 300.0, pin_nodes: bool = False, pin_of=None) -> None:
        from ray import serve

        _SegmentWorker, PlanIngress = _deployments()
        self.models, self.ready_timeout_s, self.pin_nodes = models, ready_timeout_s, pin_nodes
        self.pin_of = pin_of  # segment -> Pin (its MIG instance and MPS daemon), or None: no pinning
        app = PlanIngress.options(max_ongoing_requests=front_door, max_queued_requests=FRONT_QUEUE).bind(
            {}, {}, {m: w.signature for m, w in models.items()}, max_body)
        self.handle = serve.run(app, name=APP, route_prefix="/")

    def _call(self, method: str, *args):
        return getattr(self.handle, method).remote(*args).result()

    def counts(self) -> dict:
        return self._call("counts")

    def down_segments(self) -> dict:
        return self._call("down_segments")

    def metrics_text(self) -> bytes:
        return self._call("metrics_text")

    def set_model(self, model: str, rate: float, latency_ms: float) -> None:
        self._call("set_model", model, rate, latency_ms)

    def add_segment(self, model: str, seg: dict) -> None:
        self._call("add_segment", model, seg)

    def activate(self, model: str, name: str) -> None:
        self._call("activate", model, name)

    def drain(self, model: str, name: str) -> None:
        self._call("drain", model, name)

    def inflight(self, model: str, name: str) -> int:
        return self._call("inflight", model, name)

    def remove_segment(self, model: str, name: str) -> None:
        self._call("remove_segment", model, name)

    def drop_model(self, model: str) -> None:
        self._call("drop_model", model)

    def start(self, segments: list) -> None:
        """Deploy each segment as its own application (all at once) and return when every one is
        running (its replicas constructed and warmed up). With `pin_nodes` (a cluster of several
        nodes) each segment's replicas go to its node through the `parvagpu_node_<n>` resource;
        with `pin_of` they see only their MIG instance and MPS daemon."""
        from ray import serve
        from ray.serve.api import _run

        from parvagpu.serving.pinning import node_resource

        SegmentWorker, _ = _deployments()
        names = []
        for seg, _doc in segments:
            env = self.pin_of(seg).env if self.pin_of is not None else ()
            where = ((node_resource(seg.node), 0.001),) if self.pin_nodes else ()
            pin = Pin(env, where) if env or where else None
            _run(_segment_app(SegmentWorker, seg, self.models[seg.model], pin), name=seg.name, route_prefix=None,
                 _blocking=False)
            names.append(seg.name)
        deadline = time.monotonic() + self.ready_timeout_s
        while names:
            apps = serve.status().applications
            for n in list(names):
                st = apps.get(n)
                status = str(getattr(st, "status", ""))
                if status.endswith("RUNNING"):
                    names.remove(n)
                elif status.endswith("DEPLOY_FAILED"):
                    raise ParvaError(f"segment {n} failed to deploy: {getattr(st, 'message', '')[:200]}")
            if names and time.monotonic() > deadline:
                raise ParvaError(f"segments not ready after {self.ready_timeout_s:g} s: {', '.join(names)}")
            if names:
                time.sleep(0.2)

    def stop(self, names: list[str]) -> None:
        from ray import serve

        for n in names:
            serve.delete(n, _blocking=False)
        for n in names:  # wait until they are gone: a later segment may reuse the name
            deadline = time.monotonic() + self.ready_timeout_s
            while n in serve.status().applications and time.monotonic() < deadline:
                time.sleep(0.2)


def serve_app(
    spec: dict[str, ModelSpec],
    models: dict[str, WorkerModel],
    pins: dict[str, Pin] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    max_body: int = MAX_BODY_BYTES,
):
    """Start (or join) Ray, start Serve on host:port and deploy the plan; returns the ingress handle."""
    start_ray(host, port, address)
    from ray import serve

    return serve.run(build_app(spec, models, pins, max_body), name=APP, route_prefix="/")
