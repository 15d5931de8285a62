"""`parvagpu plan` and `parvagpu gpus`: inputs in, a deployment map out."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import parvagpu.cli.bounds as bounds
from parvagpu.cli.common import (
    Format,
    ProfilesOpt,
    ScenarioOpt,
    ServicesOpt,
    SloOpt,
    TruncateOpt,
    PROCESS,
    bound_note,
    err,
    example_dir,
    fail_on,
    finish_now,
    load_inputs,
)
from parvagpu.contract.plan_json import plan_to_json, read_plan
from parvagpu.contract.seed_csv import plan_to_seed_csv
from parvagpu.core.errors import ParvaError, Unservable
from parvagpu.core.gpus import DEFAULT_GPU, GPU_TYPES, GpuType, gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.fileio.writer import atomic_write
from parvagpu.inputs.fleet import (
    check_measured_on,
    load_fleet,
    measured_type,
    profiles_by_type,
    profiles_for,
)
from parvagpu.inputs.provenance import provenance
from parvagpu.planning.configurator import split_feasible
from parvagpu.planning.request import DEFAULT_TIME_LIMIT, PlanRequest
from parvagpu.planning.strategies import STRATEGIES
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.reports.words import count

EXAMPLE_GPU = "A100-80GB"  # the embedded example was measured on it


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
        DEFAULT_TIME_LIMIT, "--time-limit",
        help="Seconds for the whole command, reading the inputs to writing the plan; the exact optimizer "
        "(auto, optimal, mig-only, mps-only) gets what is left after loading.",
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
    current_file: Optional[Path] = typer.Option(
        None, "--current",
        help="The running plan (JSON): plan from it, changing as few segments as the fewest GPUs (with --fleet: the "
        "lowest price) allow; "
        "the plan records its transition.",
    ),
    max_extra_gpus: int = typer.Option(
        0, "--max-extra-gpus", help="With --current: GPUs beyond the fewest found (a fresh plan's, or a re-plan's with fewer) that may be used to change fewer segments."
    ),
    fleet_file: Optional[Path] = typer.Option(
        None, "--fleet", help="Fleet file (YAML/JSON): plan onto these nodes, GPU types, prices and reserved slots."
    ),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="With --fleet: when the fleet is too small, plan the served share by tier "
        "(exit 0) instead of exit 3.",
    ),
    reuse_profiles_from: Optional[str] = typer.Option(
        None, "--reuse-profiles-from", help="Plan a GPU type without its own profiles with this type's measurements.",
    ),
) -> None:
    """Plan segments and exact MIG placements for every service."""
    started = PROCESS.started if PROCESS.started is not None else time.perf_counter()
    try:
        bounds.planning(max_procs, time_limit, gpus_per_node)
        out_kind = None if out is None else _out_format(out, fmt)
        if fleet_file is not None:
            if strategy != "auto" or max_extra_gpus:
                raise ParvaError("--fleet plans with the fleet optimizer; --strategy and --max-extra-gpus do not apply")
            current = read_plan(current_file)[0] if current_file is not None else None
            _emit(_fleet_plan(fleet_file, profiles_dir, slo_dir, scenario, services_file, truncate, max_procs,
                              (started, time_limit), allow_partial, reuse_profiles_from, current), fmt, out_kind, out)
            finish_now()
            return
        profiles, services = load_inputs(profiles_dir, slo_dir, scenario, services_file, truncate)
        where = str(profiles_dir) if profiles_dir is not None else "the embedded example"
        check_measured_on(gpu_type(gpu).name, measured_type(profiles, profiles_dir, EXAMPLE_GPU),
                          reuse_profiles_from, where)
        current = read_plan(current_file)[0] if current_file is not None else None
        if current is None and max_extra_gpus:
            raise ParvaError("--max-extra-gpus applies to a plan made from --current")
        request = PlanRequest(services, profiles, gpu_type(gpu), max_procs, gpus_per_node, time_limit,
                              current=current, max_extra_gpus=max_extra_gpus)
        if skip_infeasible:
            request = _servable(request)
        result = make_plan(_budgeted(request, started), strategy)
        _emit(replace(result, provenance=provenance(profiles, [s.model for s in request.services], profiles_dir)),
              fmt, out_kind, out)
        finish_now()
    except ParvaError as exc:
        fail_on(exc)


# Kept back from the planners for writing the plan, per service, and per running segment with
# --current (the plan then lists its transition too): about twice what writing takes on the 2-core
# VM (a re-plan of 5,000 services, 16,444 segments: its provenance, 4.9 MB of JSON and the file,
# 0.4 s of CPU; 1.2 s before the plan's JSON was written by the C encoder).
_WRITE_RESERVE_S = 1e-4
_WRITE_PER_RUNNING_SEGMENT_S = 2e-5


def _budgeted(request: PlanRequest, started: float) -> PlanRequest:
    """`--time-limit` is the budget of the whole command: the planners get what reading and
    checking the inputs left, less a reserve for writing the plan (at least a millisecond, so
    an overspent budget still gives the heuristic's plan)."""
    running = len(request.current.segments) if request.current is not None else 0
    return replace(request, time_limit=_left(request.time_limit, started, len(request.services), running))


def _left(time_limit: float, started: float, services: int, running: int = 0) -> float:
    spent = time.perf_counter() - started + _WRITE_RESERVE_S * services + _WRITE_PER_RUNNING_SEGMENT_S * running
    return max(time_limit - spent, 1e-3)


def _fleet_plan(
    fleet_file: Path, profiles_dir: Optional[Path], slo_dir, scenario, services_file, truncate: bool,
    max_procs: int, budget: tuple[float, float], allow_partial: bool, reuse_from: Optional[str],
    current: Optional[DeploymentMap] = None,
) -> DeploymentMap:
    """Plan onto the fleet: each of its types' profiles (a subdirectory per type, or the type the
    metadata names), the services, the fleet program within what `budget` (started, --time-limit)
    leaves after reading the inputs; from the `current` running plan when given."""
    from parvagpu.planning.fleet import FleetRequest, plan_fleet
    from parvagpu.planning.fleet_replan import replan_fleet

    fleet = load_fleet(fleet_file)
    root = profiles_dir or example_dir() / "profiles"
    found = profiles_by_type(root, EXAMPLE_GPU if profiles_dir is None else None)
    where = str(profiles_dir) if profiles_dir is not None else "the embedded example"
    by_type = profiles_for(fleet.types, found, reuse_from, where)
    flat = None if profiles_dir is None or not any((root / t).is_dir() for t in found) else root / next(iter(found))
    _, services = load_inputs(flat or profiles_dir, slo_dir, scenario, services_file, truncate)
    started, time_limit = budget
    left = _left(time_limit, started, len(services))
    request = FleetRequest(services, by_type, fleet, max_procs, left, allow_partial=allow_partial)
    result = plan_fleet(request) if current is None else replan_fleet(request, current)
    # Provenance of the first type's profiles, under the directory given: `verify` finds the rest.
    return replace(result, provenance=provenance(by_type[fleet.types[0]], [s.model for s in services], profiles_dir))


def _servable(request: PlanRequest) -> PlanRequest:
    """The request narrowed to the services some triplet can serve; one warning per other one."""
    request, dropped = split_feasible(request)
    for message in dropped:
        err.print(f"[yellow]skipped:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if not request.services:
        raise Unservable("no service can be served")
    return request


def _emit(result: DeploymentMap, fmt: Optional[Format], out_kind: Optional[Format], out: Optional[Path]) -> None:
    """Write the plan to `out` as `out_kind`, else print it to stdout as --format says."""
    if out is not None:
        atomic_write(out, plan_to_seed_csv(result) if out_kind is Format.csv else plan_to_json(result))
        t = result.transition
        moves = "" if t is None else f"; {t.kept} kept, {len(t.added)} added, {len(t.removed)} removed"
        err.print(
            f"wrote {escape(str(out))}: {count(result.gpus_used, 'GPU')}{bound_note(result)}, {count(len(result.segments), 'segment')}{moves}",
            highlight=False,
        )
        return
    kind = fmt or (Format.table if sys.stdout.isatty() else Format.json)
    if kind is Format.table:
        from parvagpu.reports.tables import print_plan

        print_plan(result, Console())
    else:
        sys.stdout.write(plan_to_seed_csv(result) if kind is Format.csv else plan_to_json(result))


def _out_format(out: Path, fmt: Optional[Format]) -> Format:
    """The file's format: its extension says it, and --format, if given, must say the same."""
    by_suffix = {".json": Format.json, ".csv": Format.csv}.get(out.suffix.lower())
    if fmt is Format.table:
        raise ParvaError("--format table cannot be written to a file; use json or csv")
    if by_suffix is None:
        raise ParvaError(f"--out {out}: name the file .json (the plan) or .csv (the seed deployment map)")
    if fmt is not None and fmt is not by_suffix:
        raise ParvaError(f"--out {out} is a .{by_suffix.value} file but --format is {fmt.value}; make them agree")
    return by_suffix


def gpus(
    as_json: bool = typer.Option(False, "--json", help="Print the catalog as JSON instead of a table."),
) -> None:
    """List the GPU types and their MIG instance profiles (planning ones and the extras: +me,
    double-memory 1-slice)."""
    if as_json:
        sys.stdout.write(json.dumps({"version": 1, "gpus": [_gpu_dict(t) for t in GPU_TYPES.values()]}, indent=2) + "\n")
        return
    table = Table(title="GPU types")
    for col in ("GPU", "profile", "id", "GPCs", "memory slices", "legal starts", "MiB", "SMs", "max", "planned"):
        table.add_column(col)
    for t in GPU_TYPES.values():
        for p in t.all_profiles:
            table.add_row(
                t.name, p.name, str(p.profile_id), str(p.size), str(p.memory_slices),
                ",".join(map(str, p.starts)), str(p.memory_mib), str(p.sms or "?"),
                str(p.max_count or ""), "yes" if p in t.profiles else "no",
            )
    Console().print(table)


def _gpu_dict(t: GpuType) -> dict:
    planned = set(t.profiles)
    return {
        "name": t.name, "memory_gb": t.memory_gb, "compute_slices": t.compute_slices,
        "memory_slices": t.memory_slices, "pci_device_ids": list(t.pci_device_ids),
        "profiles": [
            {
                "name": p.name, "id": p.profile_id, "size": p.size, "memory_slices": p.memory_slices,
                "starts": list(p.starts), "memory_mib": p.memory_mib, "sms": p.sms or None,
                "max_count": p.max_count or None, "planned": p in planned,
            }
            for p in t.all_profiles
        ],
    }
