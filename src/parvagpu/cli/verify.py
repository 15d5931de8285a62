"""`parvagpu verify`: the independent check of a plan file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from parvagpu.cli.common import (
    ProfilesOpt,
    ScenarioOpt,
    ServicesOpt,
    SloOpt,
    TruncateOpt,
    err,
    example_dir,
    fail_on,
    load_inputs,
)
from parvagpu.contract.plan_json import read_plan
from parvagpu.core.errors import ParvaError
from parvagpu.core.model import DeploymentMap
from parvagpu.inputs.fleet import profiles_by_type
from parvagpu.inputs.profiles import load_profiles
from parvagpu.inputs.provenance import EMBEDDED, mismatches
from parvagpu.reports.words import count
from parvagpu.verify import verify as verify_plan


def verify(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `parvagpu plan`."),
    profiles_dir: Optional[Path] = ProfilesOpt,
    slo_dir: Optional[Path] = SloOpt,
    scenario: Optional[int] = ScenarioOpt,
    services_file: Optional[Path] = ServicesOpt,
    truncate: bool = TruncateOpt,
) -> None:
    """Check a plan independently: legal placements, admissible segments, capacity >= rate.

    Exit 0 when valid, 1 with the reasons when not, 2 on unreadable input or when the plan's
    profiles cannot be found. Without --profiles, the profiles the plan records it was made with;
    without --slo, --scenario or --services, the plan's own services."""
    try:
        result, stated = read_plan(plan_file)
        profiles_dir = _profiles_dir(result, profiles_dir)
        type_profiles, flat = _per_type(result, profiles_dir)
        if slo_dir is None and services_file is None and scenario is None:
            profiles = load_profiles(flat or example_dir() / "profiles")
            services = None
        else:
            profiles, services = load_inputs(flat, slo_dir, scenario, services_file, truncate)
            source = services_file or f"scenario {1 if scenario is None else scenario} of {slo_dir or 'the embedded example'}"
            err.print(f"checking against the services of {escape(str(source))}, not the plan's own", highlight=False, soft_wrap=True)
        _check_profiles(result, profiles, profiles_dir)
    except ParvaError as exc:
        fail_on(exc)
    problems = verify_plan(result, profiles, services, stated, type_profiles)
    if problems:
        for p in problems:
            err.print(f"[red]invalid:[/] {escape(p)}", highlight=False, soft_wrap=True)
        err.print(f"{escape(str(plan_file))}: {len(problems)} problem(s)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    Console().print(
        f"{escape(str(plan_file))}: valid ({count(result.gpus_used, 'GPU')}, {count(len(result.segments), 'segment')}, "
        f"{len(result.services)} services)",
        highlight=False,
    )


def _per_type(plan: DeploymentMap, profiles_dir: Optional[Path]) -> tuple[Optional[dict], Optional[Path]]:
    """A fleet plan's profiles in one subdirectory per GPU type: those by type, and one of the
    subdirectories to read services against; else (None, the directory)."""
    if plan.fleet is None or profiles_dir is None or not any((profiles_dir / t).is_dir() for t in plan.fleet.types):
        return None, profiles_dir
    by_type = profiles_by_type(profiles_dir)
    return by_type, profiles_dir / next(t for t in plan.fleet.types if t in by_type)


def _profiles_dir(plan: DeploymentMap, given: Optional[Path]) -> Optional[Path]:
    """--profiles if given, else the directory the plan records (None: the embedded example)."""
    rec = plan.provenance
    if given is not None or rec is None or rec.profiles == EMBEDDED:
        return given
    path = Path(rec.profiles)
    if not path.is_dir():
        raise ParvaError(
            f"the plan was made with the profiles in {rec.profiles}, which is not there; "
            "give --profiles DIR with the same profiles"
        )
    err.print(f"profiles: {escape(rec.profiles)} (recorded in the plan)", highlight=False, soft_wrap=True)
    return path


def _check_profiles(plan: DeploymentMap, profiles: dict, profiles_dir: Optional[Path]) -> None:
    """Bad input, not an invalid plan, when the profiles lack the plan's models; a warning when they
    differ from those the plan was made with."""
    where = profiles_dir or "the embedded example"
    missing = sorted({s.model for s in plan.segments} - set(profiles))
    if missing:
        made = "" if plan.provenance is None else f" (the plan was made with {plan.provenance.profiles})"
        raise ParvaError(
            f"{where} has no profile for {', '.join(missing)}{made}; give --profiles DIR with the plan's profiles"
        )
    if plan.provenance is not None:
        for m in mismatches(plan.provenance, profiles):
            err.print(
                f"[yellow]warning:[/] {escape(m)}: the profile in {escape(str(where))} differs from the one "
                "the plan was made with (its hash does not match)", highlight=False, soft_wrap=True,
            )
