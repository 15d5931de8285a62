"""Command line: one verb per stage. Thin: parse, call the stage, render; user errors exit 2."""

from __future__ import annotations

import sys
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .configurator import split_feasible
from .formats import atomic_write, plan_to_json, plan_to_seed_csv, read_plan
from .gpus import DEFAULT_GPU, GPU_TYPES, gpu_type
from .model import ParvaError, Profile, Service
from .planner import DEFAULT_TIME_LIMIT, STRATEGIES, plan as make_plan
from .profiles import load_profiles
from .slo import check_models, load_scenario, load_services
from .verify import verify as verify_plan

app = typer.Typer(
    help="Serve many DNN models on the fewest MIG/MPS-partitioned GPUs while meeting every SLO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def example_dir() -> Path:
    """The embedded example: the SC'24 artifact's A100-80GB profiles and six SLO scenarios."""
    return Path(str(files("parvagpu") / "data" / "examples" / "sc24-a100-80gb"))


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def bound_note(plan) -> str:
    """How far the plan is from the proven minimum, for one-line messages."""
    if plan.lower_bound is None:
        return " (no lower bound: use --strategy auto)"
    if plan.gpus_used <= plan.lower_bound:
        return " (proven optimal)"
    gap = (plan.gpus_used - plan.lower_bound) / plan.gpus_used
    return f" (proven lower bound {plan.lower_bound}, gap {gap:.1%})"


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load_inputs(
    profiles_dir: Optional[Path],
    slo_dir: Optional[Path],
    scenario: Optional[int],
    services_file: Optional[Path],
    truncate: bool,
) -> tuple[dict[str, Profile], tuple[Service, ...]]:
    """Resolve the inputs: defaults to the embedded example, scenario 1."""
    if slo_dir is not None and services_file is not None:
        raise ParvaError("give either --slo DIR --scenario K or --services FILE, not both")
    profiles = load_profiles(profiles_dir or example_dir() / "profiles")
    if services_file is not None:
        if scenario is not None:
            raise ParvaError("--scenario selects a row of --slo files; it does not apply to --services")
        services = load_services(services_file, truncate=truncate)
        source = str(services_file)
    else:
        if slo_dir is None:
            if profiles_dir is not None:
                raise ParvaError("give --slo DIR --scenario K or --services FILE for your profiles")
            slo_dir = example_dir() / "SLO"
        services = load_scenario(slo_dir, 1 if scenario is None else scenario, list(profiles), truncate=truncate)
        source = str(slo_dir)
    check_models(services, profiles, source)
    return profiles, services


ProfilesOpt = typer.Option(None, "--profiles", help="Directory of profile CSVs (default: embedded example).")
SloOpt = typer.Option(None, "--slo", help="Directory with SLO_req_rate.csv and SLO_latency.csv.")
ScenarioOpt = typer.Option(None, "--scenario", "-s", help="Scenario row of the SLO files, 1-based (default 1).")
ServicesOpt = typer.Option(None, "--services", "-f", help="Services file (YAML/JSON): list of {model, rate, latency_ms}.")
TruncateOpt = typer.Option(
    False, "--truncate-slos", help="Truncate SLO values to integers as the reference scheduler does (parity checks)."
)


@app.command()
def plan(
    profiles_dir: Optional[Path] = ProfilesOpt,
    slo_dir: Optional[Path] = SloOpt,
    scenario: Optional[int] = ScenarioOpt,
    services_file: Optional[Path] = ServicesOpt,
    gpu: str = typer.Option(DEFAULT_GPU, "--gpu", help=f"GPU type: {', '.join(GPU_TYPES)}."),
    max_procs: int = typer.Option(3, "--max-procs", help="Most MPS processes per segment (the paper: 3)."),
    strategy: str = typer.Option(
        "auto", "--strategy",
        help=f"Planner: {', '.join(STRATEGIES)}. auto: the heuristic, then the exact optimizer "
        "within --time-limit; the better plan, with a proven lower bound.",
    ),
    time_limit: float = typer.Option(
        DEFAULT_TIME_LIMIT, "--time-limit", help="Seconds for the exact optimizer (auto, optimal, mig-only, mps-only)."
    ),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs per node in the map."),
    fmt: Optional[Format] = typer.Option(
        None, "--format", help="table (default on a terminal), json, or csv (the seed deployment map)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the plan here (.json or .csv)."),
    truncate: bool = TruncateOpt,
    skip_infeasible: bool = typer.Option(
        False, "--skip-infeasible", help="Plan the services that can be served; warn about the rest."
    ),
) -> None:
    """Plan segments and exact MIG placements for every service."""
    try:
        if max_procs < 1:
            raise ParvaError(f"--max-procs must be >= 1, got {max_procs}")
        profiles, services = load_inputs(profiles_dir, slo_dir, scenario, services_file, truncate)
        if skip_infeasible:
            services, dropped = split_feasible(services, profiles, gpu_type(gpu), max_procs)
            for message in dropped:
                err.print(f"[yellow]skipped:[/] {message}", highlight=False, soft_wrap=True)
            if not services:
                raise ParvaError("no service can be served")
        result = make_plan(services, profiles, gpu_type(gpu), max_procs, gpus_per_node, strategy, time_limit)
        if out is not None:
            kind = fmt or (Format.csv if out.suffix.lower() == ".csv" else Format.json)
            if kind is Format.table:
                raise ParvaError("--format table cannot be written to a file; use json or csv")
            text = plan_to_seed_csv(result) if kind is Format.csv else plan_to_json(result)
            atomic_write(out, text)
            err.print(
                f"wrote {out}: {result.gpus_used} GPUs{bound_note(result)}, {len(result.segments)} segments",
                highlight=False,
            )
            return
        kind = fmt or (Format.table if sys.stdout.isatty() else Format.json)
        if kind is Format.table:
            from .render import print_plan

            print_plan(result, Console())
        else:
            sys.stdout.write(plan_to_seed_csv(result) if kind is Format.csv else plan_to_json(result))
    except ParvaError as exc:
        fail(str(exc))


@app.command()
def verify(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `parvagpu plan`."),
    profiles_dir: Optional[Path] = ProfilesOpt,
    slo_dir: Optional[Path] = SloOpt,
    scenario: Optional[int] = ScenarioOpt,
    services_file: Optional[Path] = ServicesOpt,
    truncate: bool = TruncateOpt,
) -> None:
    """Check a plan independently: legal placements, admissible segments, capacity >= rate.

    Exit 0 when valid, 1 with the reasons when not, 2 on unreadable input. Without --slo or
    --services the plan's own services are checked."""
    try:
        result, stated = read_plan(plan_file)
        if slo_dir is None and services_file is None and scenario is None:
            profiles = load_profiles(profiles_dir or example_dir() / "profiles")
            services = None
        else:
            profiles, services = load_inputs(profiles_dir, slo_dir, scenario, services_file, truncate)
    except ParvaError as exc:
        fail(str(exc))
    problems = verify_plan(result, profiles, services, stated)
    if problems:
        for p in problems:
            err.print(f"[red]invalid:[/] {p}", highlight=False, soft_wrap=True)
        err.print(f"{plan_file}: {len(problems)} problem(s)", highlight=False)
        raise typer.Exit(1)
    Console().print(
        f"{plan_file}: valid ({result.gpus_used} GPUs, {len(result.segments)} segments, "
        f"{len(result.services)} services)",
        highlight=False,
    )


@app.command()
def gpus() -> None:
    """List the GPU types and their MIG instance profiles."""
    table = Table(title="GPU types")
    for col in ("GPU", "profile", "id", "GPCs", "memory slices", "legal starts", "MiB", "SMs"):
        table.add_column(col)
    for t in GPU_TYPES.values():
        for p in t.profiles:
            table.add_row(
                t.name, p.name, str(p.profile_id), str(p.size), str(p.memory_slices),
                ",".join(map(str, p.starts)), str(p.memory_mib), str(p.sms),
            )
    Console().print(table)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"parvagpu {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """parvagpu: plan, check and apply MIG+MPS GPU segments for DNN inference."""


# Node and cluster verbs (apply, status, teardown, export) register themselves on `app`.
from . import cli_apply as _cli_apply  # noqa: E402,F401
from . import cli_compare as _cli_compare  # noqa: E402,F401  (`parvagpu compare`)
from .profiler import cli as _cli_profile  # noqa: E402,F401  (`parvagpu profile`)
from .serving import cli as _cli_serving  # noqa: E402,F401  (`parvagpu serve`, `load`, `simulate`)
