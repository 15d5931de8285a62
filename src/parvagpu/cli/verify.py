"""`parvagpu verify`: the independent check of a plan file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from parvagpu.cli.common import (
    ProfilesOpt, ScenarioOpt, ServicesOpt, SloOpt, TruncateOpt, err, example_dir, fail_on, load_inputs,
)
from parvagpu.contract.plan_json import read_plan
from parvagpu.core.errors import ParvaError
from parvagpu.inputs.profiles import load_profiles
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
        fail_on(exc)
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
