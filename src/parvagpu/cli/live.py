"""CLI verb `control`: serve a plan on Ray Serve and follow the load (the live controller)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

import parvagpu.cli.bounds as bounds
from parvagpu.cli.common import ForceInvalidOpt, err, example_dir, fail_on, read_checked_plan
from parvagpu.core.errors import ParvaError


class NodeBackend(str, Enum):
    fake = "fake"
    nvml = "nvml"


def control(
    plan_file: Path = typer.Argument(..., help="The plan to start from (plan JSON)."),
    state_dir: Path = typer.Option(..., "--state-dir", help="Directory for the node state (node<k>/) and, with "
                                   "--backend fake, the fake MIG nodes (fake-node<k>.json); created if missing."),
    backend: NodeBackend = typer.Option(NodeBackend.fake, "--backend", help="fake (a strict in-memory MIG node per "
                                        "plan node) or nvml (this machine's GPUs as plan node 0; the plan must "
                                        "use no other node; replicas pinned to their MIG instance and MPS daemon)."),
    decisions: Path = typer.Option(..., "--decisions", help="Append every decision, transition and its steps "
                                   "with their timings here (JSON lines)."),
    profiles_dir: Optional[Path] = typer.Option(None, "--profiles", help="Profile CSVs to re-plan with "
                                                "(default: the embedded example's)."),
    models_file: Optional[Path] = typer.Option(None, "--models", help="Models config (YAML/JSON): every model "
                                               "the plan or a later services file may name."),
    services_file: Optional[Path] = typer.Option(None, "--services", help="A services file (YAML/JSON) to serve: "
                                                 "checked at the start and, when it differs from the plan's "
                                                 "services, re-planned for at the first tick."),
    watch: bool = typer.Option(False, "--watch", help="With --services: re-read the file whenever it changes; "
                               "a bad version is logged and refused, the running services kept."),
    settings: Optional[Path] = typer.Option(None, "--settings", help="Settings (YAML/JSON): policy and control "
                                            "sections (see docs/control.md)."),
    port: int = typer.Option(8000, "--port", help="Inference HTTP port (loopback)."),
    control_port: int = typer.Option(8001, "--control-port", help="Control port (loopback): GET /v1/plan, "
                                     "POST /v1/services, GET /metrics."),
    duration: Optional[float] = typer.Option(None, "--duration", help="Stop after this many seconds "
                                             "(default: until Ctrl-C)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: start a local "
                                          "one); each segment then runs on its node, which declares the resource "
                                          "parvagpu_node_<n>."),
    front_door: float = typer.Option(4.0, "--front-door-scale", help="The ingress takes this many times the "
                                     "first plan's front-door limit (rates may grow)."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """Serve a plan and follow the load: observe each model's rate and SLO attainment at the
    ingress, re-plan with the policy (headroom, band, dwell, cool-down) from the running plan, and
    switch make-before-break: the node agents (fake MIG nodes, or this machine's GPUs) first, new segments ready
    before they get traffic, old ones drained before they go. Loopback only."""
    try:
        bounds.in_range("--port", port, 1, 65535)
        bounds.in_range("--control-port", control_port, 1, 65535)
        bounds.in_range("--front-door-scale", front_door, 1, 100)
        if duration is not None:
            bounds.in_range("--duration", duration, 0, 7 * 86_400, open_low=True)
        ctx = _prepare(plan_file, profiles_dir, models_file, settings, state_dir, decisions, force_invalid)
        if watch and services_file is None:
            raise ParvaError("--watch needs --services FILE")
        ctx["services"] = _services(services_file, ctx)
        ctx["nodes"] = _nodes(backend, ctx["plan"], state_dir)
        ctl, server, log = _start(ctx, port, control_port, front_door, address)
    except ParvaError as exc:
        fail_on(exc)
    if ctx["services"] is not None and set(ctx["services"]) != set(ctx["plan"].services):
        ctl.submit_services(ctx["services"])
    err.print(f"serving {len(ctx['plan'].services)} models at http://127.0.0.1:{port}/v2/models/<model>/infer; "
              f"plan and decisions at http://127.0.0.1:{control_port}/v1/plan (Ctrl-C to stop)", highlight=False)
    stop = _stop_event(duration)
    if watch:
        _watch(services_file, ctl, ctx, stop)
    try:
        ctl.run(stop)
    except ParvaError as exc:
        log({"kind": "stopped", "time_s": ctl.clock.now(), "reason": str(exc)})
        _shutdown(server, ctl, address)
        fail_on(exc)
    _shutdown(server, ctl, address)


def _prepare(plan_file, profiles_dir, models_file, settings, state_dir, decisions, force_invalid) -> dict:
    """Everything checked before Ray starts: the plan (verified), profiles, models, settings, files."""
    from parvagpu.cli.serving import models_config
    from parvagpu.control.live import read_live_settings
    from parvagpu.control.policy import PolicyConfig
    from parvagpu.control.live import LiveConfig
    from parvagpu.inputs.profiles import load_profiles

    plan = read_checked_plan(plan_file, profiles_dir, force_invalid)
    profiles = load_profiles(profiles_dir or example_dir() / "profiles")
    missing = sorted({s.model for s in plan.services} - set(profiles))
    if missing:
        raise ParvaError(f"no profile for {', '.join(missing)}: control re-plans from profiles (--profiles DIR)")
    _, models = models_config(models_file, {s.model for s in plan.services})
    policy, cfg = read_live_settings(settings) if settings is not None else (PolicyConfig(), LiveConfig())
    if state_dir.exists() and not state_dir.is_dir():
        raise ParvaError(f"--state-dir {state_dir}: not a directory")
    if decisions.is_symlink() or (decisions.exists() and not decisions.is_file()):
        raise ParvaError(f"--decisions {decisions}: not a regular file; refusing to write to it")
    if not (decisions.parent if str(decisions.parent) else Path(".")).is_dir():
        raise ParvaError(f"--decisions {decisions}: directory {decisions.parent} does not exist")
    return {"plan": plan, "profiles": profiles, "models": models, "policy": policy, "cfg": cfg,
            "state_dir": state_dir, "decisions": decisions}


def _services(path: Optional[Path], ctx: dict):
    """--services FILE read and checked like a file posted at runtime (None without it)."""
    from parvagpu.control.live import services_from_body

    if path is None:
        return None
    try:
        body = path.read_bytes()
    except OSError as exc:
        raise ParvaError(f"--services {path}: {exc.strerror or exc}") from None
    return services_from_body(body, ctx["profiles"], set(ctx["models"]), where=str(path))


def _watch(path: Path, ctl, ctx: dict, stop: threading.Event) -> None:
    """Look at the services file every second (in a thread) until `stop`."""
    from parvagpu.control.live import ServicesWatch

    w = ServicesWatch(path, ctl, ctx["profiles"], set(ctx["models"]))

    def loop() -> None:
        while not stop.wait(1.0):
            w.poll()

    threading.Thread(target=loop, daemon=True).start()


def _nodes(backend: NodeBackend, plan, state_dir: Path):
    """The node side, opened before Ray starts: a missing NVML or a plan beyond this machine is one
    line and its exit code (4: the hardware or driver refused; 2: bad input), nothing started."""
    from parvagpu.control.nodes import FakeNodes, LocalNodes

    if backend is NodeBackend.fake:
        return FakeNodes(state_dir, plan.gpus_per_node)
    from parvagpu.hardware.mig import open_nvml
    from parvagpu.hardware.mps import NvidiaMps, terminate_processes

    mig = open_nvml()
    nodes = LocalNodes(mig, NvidiaMps(), terminate_processes, state_dir)
    try:
        nodes.check(plan)
    except ParvaError:
        mig.close()
        raise
    return nodes


class _Clock:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def sleep(self, s: float) -> None:
        time.sleep(s)


def _log_writer(path: Path):
    fh = open(path, "a", encoding="utf-8")
    lock = threading.Lock()

    def log(record: dict) -> None:
        line = json.dumps({"utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **record},
                          default=str, allow_nan=False)
        with lock:
            fh.write(line + "\n")
            fh.flush()

    return log


def _start(ctx: dict, port: int, control_port: int, front_door: float, address: Optional[str] = None):
    from parvagpu.control.api import serve_api
    from parvagpu.control.live import Controller
    from parvagpu.control.nodes import LocalNodes
    from parvagpu.serving.app import LiveServe, front_door_limit, start_ray
    from parvagpu.serving.policy import serving_spec

    plan = ctx["plan"]
    ctx["state_dir"].mkdir(parents=True, exist_ok=True)
    log = _log_writer(ctx["decisions"])
    start_ray("127.0.0.1", port, address)
    nodes = ctx["nodes"]
    live = LiveServe(ctx["models"], int(front_door * front_door_limit(serving_spec(plan))),
                     pin_nodes=address is not None, pin_of=nodes.pin if isinstance(nodes, LocalNodes) else None)
    ctl = Controller(plan, ctx["profiles"], ctx["policy"], ctx["cfg"], _Clock(), nodes, live, live, log)
    metrics = _metrics(ctl)
    ctl.start()
    server = serve_api(ctl, control_port, ctx["profiles"], set(ctx["models"]),
                       None if metrics is None else _exposition(metrics, live))
    return ctl, server, log


def _exposition(metrics, live):
    """GET /metrics: the ingress's families (request outcomes, latency histogram, batch sizes, in
    flight per segment; kept inside the ingress replica) and the controller's own."""
    from parvagpu.serving.metrics import INGRESS_FAMILIES

    def text() -> bytes:
        return live.metrics_text() + metrics.exposition(skip=INGRESS_FAMILIES)

    return text


def _metrics(ctl):
    """Prometheus series fed by the controller (when prometheus-client is installed): what it
    observes and plans; request outcomes and latencies come from the ingress (`_exposition`)."""
    try:
        from parvagpu.serving.metrics import Metrics

        m = Metrics()
    except ImportError:
        err.print("prometheus-client is not installed: no /metrics", highlight=False)
        return None
    m.plan(ctl.plan)

    def changed(plan, info) -> None:
        m.plan(plan)
        if info is not None:
            steps = info["steps"]
            m.transition(sum(s["action"] == "create" for s in steps), sum(s["action"] == "remove" for s in steps))

    def observed(views, counts) -> None:
        for v in views:
            m.model_state(v.model, v.observed_rate, v.attainment, v.capacity, v.planned_rate)

    ctl.on_observe = observed
    ctl.on_change = changed
    return m


def _stop_event(duration: Optional[float]) -> threading.Event:
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if duration is not None:
        timer = threading.Timer(duration, stop.set)
        timer.daemon = True
        timer.start()
    return stop


def _shutdown(server, ctl, address: Optional[str]) -> None:
    """Stop the control endpoint and the local Ray cluster (every replica with it); on a cluster
    joined with --address, delete only this controller's applications."""
    import ray

    server.shutdown()
    if address is not None:
        from ray import serve

        from parvagpu.control.live import segment_name
        from parvagpu.serving.app import APP

        for name in [APP, *(segment_name(ctl.plan, s) for s in ctl.plan.segments)]:
            serve.delete(name, _blocking=False)
    ray.shutdown()
    close = getattr(getattr(ctl.nodes, "backend", None), "close", None)
    if close is not None:  # NVML opened by --backend nvml; the MIG instances stay as the plan left them
        close()
    err.print("stopped", highlight=False)
