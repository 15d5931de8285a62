"""CLI verbs for live adaptation: `trace-gen` (synthetic load traces) and the trace replay behind
`simulate --trace`."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Optional

import typer

from parvagpu.cli.common import err, example_dir, fail_on
from parvagpu.core.errors import ParvaError


def trace_gen(
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write trace.csv (and, without --services, "
                             "services.yaml and profiles/) into; created if missing."),
    models: int = typer.Option(100, "--models", "-n", help="Models to generate (without --services)."),
    services_file: Optional[Path] = typer.Option(
        None, "--services", "-f", help="Take the models and their peak rates from this services file instead."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same arguments give the same trace."),
    hours: float = typer.Option(24.0, "--hours", help="Trace length."),
    step: float = typer.Option(60.0, "--step", help="Seconds between rate changes."),
    trough: float = typer.Option(0.3, "--trough", help="Night rate as a share of the peak."),
    noise: float = typer.Option(0.05, "--noise", help="Sigma of the per-step log-normal noise."),
    bursts: float = typer.Option(0.0, "--bursts-per-day", help="Bursts (rate x2-3 for 2-10 min) per model per day."),
    ramps: float = typer.Option(0.0, "--ramp-share", help="Share of models whose load grows up to x1.5 over the trace."),
) -> None:
    """Write a synthetic load trace (CSV time_s,model,rate; piecewise constant): diurnal with noise,
    bursts and ramps.

    Without --services, N models are made from the embedded A100-80GB profiles (model `<name>-<i>`,
    peak 50-3,000 req/s, latency SLO 1.2-4x the tightest the model meets), with their services file
    and profile copies, so `simulate --trace` can replay it at once."""
    from parvagpu.control.trace import Shape, generate, trace_csv
    from parvagpu.fileio.writer import atomic_write

    try:
        shape = Shape(hours, step, trough, noise=noise, bursts_per_day=bursts, ramp_share=ramps)
        if out.exists() and not out.is_dir():
            raise ParvaError(f"{out}: exists and is not a directory")
        if services_file is not None:
            from parvagpu.inputs.services import load_services

            peaks = {s.model: s.rate for s in load_services(services_file)}
            out.mkdir(parents=True, exist_ok=True)
        else:
            if models < 1:
                raise ParvaError(f"--models must be >= 1, got {models}")
            out.mkdir(parents=True, exist_ok=True)
            peaks = _generated_models(out, models, seed)
        trace = generate(peaks, shape, seed)
        atomic_write(out / "trace.csv", trace_csv(trace))
        err.print(f"wrote {out / 'trace.csv'}: {len(trace.models)} models, {len(trace.times)} steps of {step:g} s",
                  highlight=False)
    except ParvaError as exc:
        fail_on(exc)


def _generated_models(out: Path, n: int, seed: int) -> dict[str, float]:
    """N services cycling the embedded profiles under random SLOs: services.yaml and profiles/."""
    from parvagpu.fileio.writer import atomic_write
    from parvagpu.inputs.profiles import load_profiles

    src_dir = example_dir() / "profiles"
    base = load_profiles(src_dir)
    names = sorted(base)
    rng = random.Random(seed)
    (out / "profiles").mkdir(exist_ok=True)
    lines, peaks = ["version: v1", "services:"], {}
    for i in range(n):
        src = base[names[i % len(names)]]
        name = f"{src.model}-{i}"
        fastest = min(p.latency_ms for p in src.points if p.runnable and p.procs <= 3)
        slo = round(fastest / 0.45 * rng.uniform(1.2, 4.0), 1)
        peaks[name] = round(rng.uniform(50, 3000), 1)
        lines.append(f"  - {{model: {name}, rate: {peaks[name]}, latency_ms: {slo}}}")
        atomic_write(out / "profiles" / f"{name}.csv", (src_dir / f"{src.model}.csv").read_text(encoding="utf-8"))
    atomic_write(out / "services.yaml", "\n".join(lines) + "\n")
    return peaks


def simulate_trace(trace_file: Path, services_file: Optional[Path], profiles_dir: Optional[Path],
                   settings: Optional[Path], max_procs: int, seed: int, json_out: Optional[Path]) -> None:
    """`simulate --trace`: replay the trace through the controller, the static peak plan and the
    oracle, and print one table."""
    from parvagpu.control.replay import Inputs, Options, PolicyConfig, Costs, read_settings, replay
    from parvagpu.control.trace import read_trace
    from parvagpu.core.gpus import gpu_type
    from parvagpu.fileio.writer import atomic_write
    from parvagpu.inputs.profiles import load_profiles
    from parvagpu.inputs.services import load_services

    if services_file is None:
        raise ParvaError("--trace needs --services FILE for the models' latency SLOs (trace-gen writes one)")
    trace = read_trace(trace_file)
    slos = {s.model: s.latency_ms for s in load_services(services_file)}
    profiles = load_profiles(profiles_dir or example_dir() / "profiles")
    cfg, costs, extra = read_settings(settings) if settings is not None else (PolicyConfig(), Costs(), {})
    try:
        opts = Options(seed=seed, max_procs=max_procs, **extra)
    except (TypeError, ValueError) as exc:
        raise ParvaError(f"{settings}: {exc}") from None
    rep = replay(Inputs(trace, slos, profiles, gpu_type("A100-80GB")), opts, cfg, costs)
    _print_report(rep, trace)
    if json_out is not None:
        atomic_write(json_out, json.dumps(rep.to_dict(), indent=2, allow_nan=False) + "\n")
        err.print(f"wrote {json_out}", highlight=False)


def _print_report(rep, trace) -> None:
    from rich.table import Table

    from parvagpu.serving.stats import console

    t = Table(title=f"{len(trace.models)} models, {trace.duration_s / 3600:g} h replayed in {rep.elapsed_s:.1f} s "
                    f"({rep.table_entries} serving-model states, {rep.simulated_requests:,} simulated requests)")
    for col in ("run", "GPU-hours", "peak GPUs", "attainment", "in transitions", "worst model",
                "re-plans/h", "segment changes/h", "most re-plans of a model", "most in 10 min", "shortest gap"):
        t.add_column(col, justify="left" if col in ("run", "worst model") else "right")
    for r in rep.runs:
        row = r.row()
        t.add_row(
            row["run"], f"{row['gpu_hours']:.1f}", str(row["peak_gpus"]), f"{row['attainment']:.4%}",
            "-" if row["attainment_in_transitions"] is None else f"{row['attainment_in_transitions']:.4%}",
            f"{row['worst_model']} {row['worst_attainment']:.3%}", f"{row['replans_per_hour']:.2f}",
            f"{row['changes_per_hour']:.1f}", str(row["max_model_replans"]), str(row["max_model_replans_per_10_min"]),
            "-" if row["min_model_gap_s"] is None else f"{row['min_model_gap_s']:.0f} s",
        )
    console().print(t)
    for r in rep.runs:
        if r.name == "controller":
            err.print(f"controller: {r.dipped} transitions ran with a capacity dip; re-plans refused: "
                      f"{r.refused_dips} for a dip, {r.refused_checks} by a failed check", highlight=False)
