"""CLI verbs `serve`, `load` and `simulate`, registered on the main Typer app."""

import json
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

import parvagpu.cli.bounds as bounds
from parvagpu.cli.common import ForceInvalidOpt, err, example_dir, fail_on, read_checked_plan
from parvagpu.fileio.writer import write_all
from parvagpu.core.errors import ParvaError

MODELS_HELP = ("Models config (YAML/JSON): model name -> {factory: pkg.mod:fn, inputs, outputs} (see docs/serving.md); "
               "default: the embedded example's, when it has every model of the plan.")


def simulate(
    plan_file: Optional[Path] = typer.Argument(None, help="Plan JSON (or use --scenario)."),
    scenario: Optional[int] = typer.Option(
        None, "--scenario", "-s", help="Plan the embedded example's scenario K (1-6) and simulate it."
    ),
    max_procs: int = typer.Option(3, "--max-procs", help="With --scenario: most MPS processes per segment."),
    profiles_dir: Optional[Path] = typer.Option(
        None, "--profiles", help="Profile CSVs for partial-batch service times (default: embedded example "
        "when it has the plan's models; otherwise every batch takes the full batch's latency)."
    ),
    duration: float = typer.Option(30.0, "--duration", help="Seconds of simulated traffic."),
    seed: int = typer.Option(0, "--seed", help="Seed of the arrival streams."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Multiply every planned rate."),
    depth: Optional[int] = typer.Option(
        None, "--depth", help="Admission queue depth in batch rounds (default: the deepest meeting the SLO)."
    ),
    wait_ms: Optional[float] = typer.Option(None, "--batch-wait-ms", help="Batch wait for every segment (default: from the SLO)."),
    overhead_ms: float = typer.Option(0.0, "--overhead-ms", help="Transport overhead added to every request."),
    unbounded: bool = typer.Option(False, "--unbounded", help="No admission limit: every request queues."),
    service_scale: float = typer.Option(
        1.0, "--service-scale", help="Multiply every profiled service time (hardware slower or faster than profiled)."
    ),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency CDF plot here (PNG/PDF)."),
    trace: Optional[Path] = typer.Option(
        None, "--trace", help="Replay this load trace (CSV time_s,model,rate) through the controller, a static "
        "peak plan and an oracle instead (see docs/control.md); needs --services."),
    services_file: Optional[Path] = typer.Option(None, "--services", "-f", help="With --trace: the models' latency SLOs."),
    settings: Optional[Path] = typer.Option(
        None, "--settings", help="With --trace: controller settings (YAML/JSON: policy, costs, replay)."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """Simulate a served plan: predicted p50/p95/p99, SLO attainment, 0.45 L rule check.

    Poisson arrivals, the serving router, per-segment dynamic batching and admission, service
    times from the profiles; deterministic for a seed. With --trace: GPU-hours and attainment of
    the controller against a static peak plan and an oracle over a time-varying load."""
    from parvagpu.serving.simulator import simulate as run_sim
    from parvagpu.serving.stats import console, stats_table

    try:
        bounds.seed(seed)
        if trace is not None:
            from parvagpu.cli.control import simulate_trace

            return simulate_trace(trace, services_file, profiles_dir, settings, max_procs, seed, json_out)
        if services_file is not None or settings is not None:
            raise ParvaError("--services and --settings go with --trace")
        bounds.in_range("--duration", duration, 0, 86_400, open_low=True)
        _check_sim_options(seed, rate_scale, depth, wait_ms, overhead_ms, service_scale, max_procs)
        plan = _plan_or_scenario(plan_file, scenario, max_procs, profiles_dir, force_invalid)
        res = run_sim(
            plan, duration_s=duration, seed=seed, rate_scale=rate_scale, profiles=_sim_profiles(plan, profiles_dir),
            depth=depth, wait_s=None if wait_ms is None else wait_ms / 1000.0, overhead_ms=overhead_ms,
            unbounded=unbounded, service_scale=service_scale,
        )
        console().print(stats_table(res.stats, f"simulated {duration:g} s at {rate_scale:g}x planned rates "
                              f"({res.requests} requests, {res.elapsed_s:.2f} s)"))
        _write_outputs(res, json_out, plot, "simulated latency CDF")
    except ParvaError as exc:
        fail_on(exc)
    _verdict(res.stats)


def _verdict(stats) -> None:
    """The verdict column's legend and one line for the run; exit 1 when a model misses its SLO."""
    from parvagpu.serving.stats import VERDICT_LEGEND, missed, verdict_line

    err.print(VERDICT_LEGEND, highlight=False, soft_wrap=True, markup=False)
    err.print(verdict_line(stats), highlight=False, soft_wrap=True, markup=False)
    if any(missed(s) for s in stats):
        raise typer.Exit(1)


def _check_sim_options(seed, rate_scale, depth, wait_ms, overhead_ms, service_scale, max_procs) -> None:
    bounds.seed(seed)
    bounds.in_range("--rate-scale", rate_scale, 0, bounds.MAX_RATE_SCALE, open_low=True)
    bounds.in_range("--max-procs", max_procs, 1, bounds.MAX_PROCS)
    _check_policy(depth, wait_ms)
    bounds.in_range("--overhead-ms", overhead_ms, 0, 60_000)
    bounds.in_range("--service-scale", service_scale, 0, 1000, open_low=True)


def _check_policy(depth, wait_ms) -> None:
    if depth is not None:
        bounds.in_range("--depth", depth, 1, 1_000_000)
    if wait_ms is not None:
        bounds.in_range("--batch-wait-ms", wait_ms, 0, 60_000)


def _sim_profiles(plan, profiles_dir: Optional[Path]):
    """The given profiles; else the embedded example's when it has every model of the plan; else
    None (every batch then takes the full batch's latency)."""
    from parvagpu.inputs.profiles import load_profiles

    if profiles_dir is not None:
        return load_profiles(profiles_dir)
    embedded = load_profiles(example_dir() / "profiles")
    return embedded if {s.model for s in plan.services} <= set(embedded) else None


def _write_outputs(res, json_out: Optional[Path], plot: Optional[Path], title: str) -> None:
    """The result's JSON and its latency CDF plot, where asked for: both written, or neither."""
    from parvagpu.serving.stats import render_cdf

    files: dict[Path, str | bytes] = {}
    if json_out is not None:
        files[json_out] = json.dumps(res.to_dict(), indent=2, allow_nan=False) + "\n"
    if plot is not None:
        files[plot] = render_cdf(res.latencies_ms, {s.model: s.slo_ms for s in res.stats}, plot, title)
    for path in write_all(files):
        err.print(f"wrote {escape(str(path))}", highlight=False)


def _plan_or_scenario(plan_file: Optional[Path], scenario: Optional[int], max_procs: int,
                      profiles_dir: Optional[Path] = None, force_invalid: bool = False):
    if (plan_file is None) == (scenario is None):
        raise ParvaError("give a plan file or --scenario K, not both or neither")
    if plan_file is not None:
        return read_checked_plan(plan_file, profiles_dir, force_invalid)
    from parvagpu.core.gpus import DEFAULT_GPU, gpu_type
    from parvagpu.planning.heuristic import plan_parva
    from parvagpu.planning.request import PlanRequest
    from parvagpu.inputs.profiles import load_profiles
    from parvagpu.inputs.services import load_scenario

    profiles = load_profiles(example_dir() / "profiles")
    services = load_scenario(example_dir() / "SLO", scenario, list(profiles))
    return plan_parva(PlanRequest(services, profiles, gpu_type(DEFAULT_GPU), max_procs))


def load(
    target: str = typer.Argument(..., help="Plan JSON (rates from the plan) or a loopback URL (rates from the server)."),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="Server base URL when TARGET is a plan (loopback only)."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Multiply every planned rate."),
    duration: float = typer.Option(60.0, "--duration", help="Seconds of traffic (then wait for the replies)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the arrival streams."),
    timeout: float = typer.Option(10.0, "--timeout", help="Per-request timeout in seconds."),
    max_requests: int = typer.Option(100_000, "--max-requests", help="Stop scheduling after this many requests."),
    model: Optional[List[str]] = typer.Option(None, "--model", help="Load only this model (repeatable)."),
    synthetic: bool = typer.Option(False, "--synthetic", help="Timing-only requests (/v1): the replicas' built-in inputs."),
    data: Optional[Path] = typer.Option(None, "--data", help="Request tensors from DIR/<model>/<input>.npy "
                                        "(items first; default: one item generated from the model's metadata)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a latency CDF plot here (PNG/PDF)."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """Open-loop Poisson load at the planned rates; p50/p95/p99, SLO attainment, every request counted.

    Real Open Inference Protocol requests (binary tensors), every answer's outputs checked against the
    model's metadata (names, datatypes, shapes). Each request ends ok, 503, failed or timed out. Exit 1
    if a request was lost, failed or timed out, or a model's p99 missed its SLO (503s alone do not
    fail the run: they are backpressure)."""
    from parvagpu.serving.loadgen import check_loopback, load_http, targets_from_plan
    from parvagpu.serving.stats import console, stats_table

    try:
        bounds.seed(seed)
        bounds.in_range("--rate-scale", rate_scale, 0, bounds.MAX_RATE_SCALE, open_low=True)
        bounds.in_range("--duration", duration, 0, 3600, open_low=True)
        bounds.in_range("--timeout", timeout, 0, 3600, open_low=True)
        bounds.in_range("--max-requests", max_requests, 1, 200_000)
        if target.startswith(("http://", "https://")) or "://" in target:
            base, targets = check_loopback(target), None
            if model:
                raise ParvaError("--model needs a plan file as TARGET")
        else:
            base = check_loopback(url)
            targets = targets_from_plan(read_checked_plan(Path(target), force=force_invalid), rate_scale, model)
        if synthetic and data is not None:
            raise ParvaError("--data sends real tensors; it cannot go with --synthetic")
        res = load_http(base, targets, duration, seed, rate_scale, timeout, max_requests, synthetic, data)
        console().print(stats_table(res.stats, f"load {base}: {duration:g} s at {rate_scale:g}x planned rates, "
                                    f"max lag {res.max_lag_ms:.1f} ms"))
        for m, o in res.overhead_ms.items():
            err.print(f"{escape(m)}: serving overhead (latency - queue - compute) p50 {o['p50']:.2f} ms, p99 {o['p99']:.2f} ms",
                      highlight=False)
        _write_outputs(res, json_out, plot, f"measured latency CDF ({base})")
    except ParvaError as exc:
        fail_on(exc)
    _verdict(res.stats)


def serve(
    plan_file: Path = typer.Argument(..., help="Plan JSON."),
    node_state: Optional[List[Path]] = typer.Option(
        None, "--node-state", help="Node state file written by `apply` (repeat per node); pins each replica "
        "to its MIG UUID and MPS daemon. Without it nothing is pinned (CPU machine)."
    ),
    models_file: Optional[Path] = typer.Option(None, "--models", help=MODELS_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="HTTP bind address."),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: start a local one)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="Admission queue depth in batch rounds (default: from the SLO)."),
    wait_ms: Optional[float] = typer.Option(None, "--batch-wait-ms", help="Batch wait for every segment (default: from the SLO)."),
    rate_scale: float = typer.Option(1.0, "--rate-scale", help="Serve at this fraction of the planned rates."),
    max_segments: Optional[int] = typer.Option(None, "--max-segments", help="Serve at most K segments per model "
                                               "(the fastest): a small machine cannot hold a GPU plan."),
    max_replicas: Optional[int] = typer.Option(None, "--max-replicas", help="At most R replicas per segment."),
    max_body_mb: float = typer.Option(64.0, "--max-body-mb", help="Largest request body; beyond it 413."),
    segment: Optional[List[str]] = typer.Option(
        None, "--segment", help="Serve only this segment (repeatable; names as <model>-n<node>-g<gpu>-s<start>): "
        "what each pod of `export k8s` runs."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """Serve a plan on Ray Serve: the Open Inference Protocol at /v2 (real tensors), until Ctrl-C.

    A deployment per segment (replicas = procs, dynamic batching up to the batch size), and per
    model a throughput-weighted router with admission: beyond capacity, a fast 503."""
    try:
        bounds.in_range("--port", port, 1, 65535)
        bounds.in_range("--max-body-mb", max_body_mb, 0, 4096, open_low=True)
        bounds.in_range("--rate-scale", rate_scale, 0, bounds.MAX_RATE_SCALE, open_low=True)
        _check_policy(depth, wait_ms)
        spec, models, pins = _serving_inputs(plan_file, models_file, node_state, depth, wait_ms, rate_scale,
                                             max_segments, max_replicas, force_invalid, segment)
        _warn_if_exposed(host)
        from parvagpu.serving.app import serve_app

        serve_app(spec, models, pins, host=host, port=port, address=address, max_body=int(max_body_mb * 2**20))
    except ParvaError as exc:
        fail_on(exc)
    err.print(
        f"serving {len(spec)} models, {sum(len(m.segments) for m in spec.values())} segments at "
        f"http://{host}:{port}/v2/models/<model>/infer (Ctrl-C to stop)",
        highlight=False,
    )
    _wait_for_stop()
    _stop_serving(address)
    sys.exit(0)


def _warn_if_exposed(host: str) -> None:
    """Serving beyond loopback is the user's explicit choice; say what it means."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        err.print(
            f"[yellow]warning:[/] --host {escape(host)}: the inference API (no authentication) is reachable "
            "from other machines on this host's networks", highlight=False, soft_wrap=True,
        )


def _serving_inputs(plan_file: Path, models_file: Optional[Path], node_state: Optional[List[Path]],
                    depth: Optional[int], wait_ms: Optional[float], rate_scale: float = 1.0,
                    max_segments: Optional[int] = None, max_replicas: Optional[int] = None,
                    force_invalid: bool = False, segments: Optional[List[str]] = None):
    """Everything `serve` checks before starting Ray: (serving spec, models config, pins)."""
    from parvagpu.serving.pinning import pins
    from parvagpu.serving.policy import reduce_spec, select_segments, serving_spec

    plan = read_checked_plan(plan_file, force=force_invalid)
    spec = serving_spec(plan, rate_scale, depth, None if wait_ms is None else wait_ms / 1000.0)
    if segments:
        spec = select_segments(spec, segments)
    _, models = models_config(models_file, set(spec))
    spec = reduce_spec(spec, max_segments, max_replicas)
    return spec, models, pins(spec, _node_states(node_state or []))


def models_config(models_file: Optional[Path], needed: set):
    """(path, models) of the given models config, or of the packaged one of the embedded example
    when it has every model; an error unless it has an entry for each needed model."""
    from parvagpu.serving.workers import read_models

    if models_file is None:
        packaged = example_dir() / "models.yaml"
        if not needed <= set(read_models(packaged)):
            raise ParvaError("--models CONFIG is required: it says how to load each model")
        models_file = packaged
    models = read_models(models_file)
    missing = sorted(needed - set(models))
    if missing:
        raise ParvaError(f"{models_file}: no entry for: {', '.join(missing)}")
    return models_file, models


def _node_states(paths: List[Path]) -> list:
    from parvagpu.node import read_state

    states = []
    for p in paths:
        st = read_state(p)
        if st is None:
            raise ParvaError(f"{p}: node state file not found")
        states.append(st)
    return states


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _stop_serving(address: Optional[str]) -> None:
    import ray
    from ray import serve as ray_serve

    from parvagpu.serving.app import APP

    if address is None:
        ray.shutdown()  # our own local cluster: stopping it stops every replica at once
    else:
        ray_serve.delete(APP)  # a shared cluster: remove only this application
