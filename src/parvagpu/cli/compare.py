"""`parvagpu compare`: every strategy on every scenario, as a table, a CSV and figures.

Registered on the main Typer app by `parvagpu.cli`. Everything is computed and rendered in memory
first; files are written only then, each to a temporary name renamed into place, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.console import Console

import parvagpu.cli.bounds as bounds
from parvagpu.reports import compare as cmp
from parvagpu.cli.common import (
    fail_on,
    ProfilesOpt,
    ServicesOpt,
    SloOpt,
    TruncateOpt,
    err,
    example_dir,
    load_inputs,
)
from parvagpu.core.gpus import DEFAULT_GPU, GPU_TYPES, gpu_type
from parvagpu.core.errors import ParvaError
from parvagpu.fileio.writer import write_all
from parvagpu.planning.request import DEFAULT_TIME_LIMIT, PlanRequest
from parvagpu.inputs.services import load_scenario, scenario_count


def _scenarios(
    profiles_dir, slo_dir, scenario: str, services_file, truncate: bool,
):
    """(profiles, [(name, services)]) for `--scenario all`, `K` or `K,L,...`."""
    if services_file is not None:
        if scenario != "all":
            raise ParvaError("--scenario selects rows of --slo files; it does not apply to --services")
        profiles, services = load_inputs(profiles_dir, slo_dir, None, services_file, truncate)
        return profiles, [(services_file.stem, services)]
    first = None if scenario == "all" else scenario.split(",")[0].strip()
    try:
        first_k = None if first is None else int(first)
        profiles, _ = load_inputs(profiles_dir, slo_dir, first_k, None, truncate)
    except ValueError:
        raise ParvaError(f"--scenario must be all, K or K,L,...; got {scenario!r}") from None
    slo = slo_dir or example_dir() / "SLO"
    if scenario == "all":
        ks = list(range(1, scenario_count(slo) + 1))
    else:
        try:
            ks = [int(t) for t in scenario.split(",") if t.strip()]
        except ValueError:
            raise ParvaError(f"--scenario must be all, K or K,L,...; got {scenario!r}") from None
    return profiles, [(f"SLO{k}", load_scenario(slo, k, list(profiles), truncate=truncate)) for k in ks]


def compare(
    profiles_dir: Optional[Path] = ProfilesOpt,
    slo_dir: Optional[Path] = SloOpt,
    scenario: str = typer.Option("all", "--scenario", "-s", help="all, a scenario K, or K,L,... of the SLO files."),
    services_file: Optional[Path] = ServicesOpt,
    gpu: str = typer.Option(DEFAULT_GPU, "--gpu", help=f"GPU type: {', '.join(GPU_TYPES)}."),
    max_procs: int = typer.Option(3, "--max-procs", help="Most MPS processes per segment (the paper: 3)."),
    strategies: Optional[str] = typer.Option(
        None, "--strategies", help=f"Comma-separated subset of {', '.join(cmp.ORDER)} (default all)."
    ),
    time_limit: float = typer.Option(DEFAULT_TIME_LIMIT, "--time-limit", help="Seconds per exact solve."),
    gpus_per_node: int = typer.Option(8, "--gpus-per-node", help="GPUs per node in the maps."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Directory for compare.csv and the figures gpus.{png,svg}, layout.{png,svg}."
    ),
    layout_scenario: Optional[str] = typer.Option(
        None, "--layout-scenario", help="Scenario whose layouts are drawn (default: the last one)."
    ),
    truncate: bool = TruncateOpt,
) -> None:
    """Compare every strategy on every scenario: GPUs, proven bound, GPCs, idle GPCs on used
    GPUs (external fragmentation), capacity/demand (internal slack) and planning time."""
    try:
        bounds.planning(max_procs, time_limit, gpus_per_node)
        names = cmp.parse_strategies(strategies)
        gpu_t = gpu_type(gpu)
        if out is not None:
            _check_out(out)
        profiles, scenarios = _scenarios(profiles_dir, slo_dir, scenario, services_file, truncate)
        requests = [
            (name, PlanRequest(services, profiles, gpu_t, max_procs, gpus_per_node, time_limit))
            for name, services in scenarios
        ]
        pick = _layout_pick(layout_scenario, [n for n, _ in requests])
        rows = cmp.run(requests, names)
        _report(rows, gpu_t.name, max_procs)
        if out is not None:
            _write_files(out, rows, [n for n, _ in requests], names, pick, gpu_t.name, max_procs)
    except ParvaError as exc:
        fail_on(exc)


def _check_out(out: Path) -> None:
    """Fail before any planning when the figures cannot be drawn or the directory not made."""
    from parvagpu.reports import plots

    plots.check_available()
    if out.exists() and not out.is_dir():
        raise ParvaError(f"{out}: exists and is not a directory")
    if not out.parent.is_dir():
        raise ParvaError(f"{out}: directory {out.parent} does not exist")


def _layout_pick(layout_scenario: Optional[str], sc_names: list[str]) -> str:
    """The scenario whose layouts are drawn: the one asked for (K or its name), else the last."""
    pick = layout_scenario or sc_names[-1]
    pick = f"SLO{pick}" if pick.isdigit() else pick
    if pick not in sc_names:
        raise ParvaError(f"--layout-scenario {layout_scenario!r} is not among {', '.join(sc_names)}")
    return pick


def _report(rows, gpu_name: str, max_procs: int) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(cmp.table(rows, f"parvagpu compare: {gpu_name}, up to {max_procs} MPS processes"))
    err.print(
        "bound: proven minimum of each strategy's own problem (auto, optimal: MIG+MPS); "
        "idle: unused GPCs on used GPUs; cap/dem: capacity / demand",
        highlight=False,
    )


def _write_files(out: Path, rows, sc_names, names, pick, gpu_name: str, max_procs: int) -> None:
    """Render the CSV and figures in memory, then write each file to a temporary name renamed
    into place."""
    files = {"compare.csv": cmp.to_csv(rows).encode()}
    files.update(_figures(rows, sc_names, names, pick, gpu_name, max_procs))
    write_all({out / name: data for name, data in files.items()}, create_dir=out)
    err.print(f"wrote {escape(', '.join(str(out / n) for n in files))}", highlight=False, soft_wrap=True)


def _figures(rows, sc_names, names, pick, gpu_name, max_procs) -> dict[str, bytes]:
    from parvagpu.reports import plots

    gpus = {(r.scenario, r.strategy): r.gpus for r in rows}
    bounds: dict[str, int | None] = {}
    for sc in sc_names:
        known = [r.lower_bound for r in rows if r.scenario == sc and r.strategy in ("auto", "optimal")
                 and r.lower_bound is not None]
        bounds[sc] = max(known) if known else None
    out = {}
    chart = plots.gpus_chart(
        sc_names, names, gpus, bounds, f"GPUs per scenario, {gpu_name}, up to {max_procs} MPS processes"
    )
    out.update({f"gpus.{fmt}": data for fmt, data in chart.items()})
    by = {r.strategy: r.plan for r in rows if r.scenario == pick and r.plan is not None}
    chosen = [s for s in ("parva", "optimal") if s in by] or [s for s in names if s in by][:2]
    if chosen:
        chart = plots.layout_chart([(f"{pick} {s}", by[s]) for s in chosen])
        out.update({f"layout.{fmt}": data for fmt, data in chart.items()})
    return out
