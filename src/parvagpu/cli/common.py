"""What every verb shares: the error console, `fail`, the embedded example, the input options and
their resolution into profiles and services."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from enum import Enum
from importlib.resources import files
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from parvagpu.contract.plan_json import read_plan
from parvagpu.core.errors import EXIT_INVALID_PLAN, ParvaError
from parvagpu.core.model import DeploymentMap, Profile, Service
from parvagpu.inputs.profiles import load_profiles
from parvagpu.inputs.services import check_models, load_scenario, load_services
from parvagpu.verify import verify

err = Console(stderr=True)


@dataclass
class _Process:
    """Set by `parvagpu.__main__` when the CLI runs as its own process (not under a test's runner):
    when the process started, and that the CLI may end it."""

    started: Optional[float] = None
    owned: bool = False


PROCESS = _Process()


def finish_now() -> None:
    """End the process with exit 0 now, when the CLI owns it and its output is flushed: a plan of
    5,000 profiles leaves millions of objects that would be freed one by one, and the interpreter's
    teardown after them (about 1 s together on the 2-core VM). Everything is already written
    (`atomic_write` closes and renames its file before returning); a flush that fails is left to
    the normal exit to report."""
    if not PROCESS.owned:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(0)


def example_dir() -> Path:
    """The embedded example: the SC'24 artifact's A100-80GB profiles and six SLO scenarios."""
    return Path(str(files("parvagpu") / "data" / "examples" / "sc24-a100-80gb"))


class Format(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


def bound_note(plan) -> str:
    """How far the plan is from the proven minimum, for one-line messages."""
    stats = dict(plan.stats)
    if plan.fleet is not None:
        price = f" (price {stats.get('price_per_hour', 0):g}/h"
        if "price_gap" in stats:
            price += f", proven within {stats['price_gap']:.2%}"
        short = sum(1 for _ in plan.served)
        return price + (f"; {short} services served below their rate" if short else "") + ")"
    if plan.lower_bound is None:
        return " (no lower bound: use --strategy auto)"
    if plan.gpus_used <= plan.lower_bound:
        return " (proven optimal)"
    gap = (plan.gpus_used - plan.lower_bound) / plan.gpus_used
    return f" (proven lower bound {plan.lower_bound}, gap {gap:.1%})"


def fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr, then exit with `code` (see `parvagpu.core.errors` for the codes)."""
    one_line = message.replace("\r", "\\r").replace("\n", "\\n")  # a message is one line, whatever it quotes
    err.print(f"[bold red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def fail_on(exc: ParvaError) -> NoReturn:
    """Exit for a typed error: its one-line message and its kind's exit code."""
    fail(str(exc), exc.exit_code)


def warn(message: str) -> None:
    """One warning line on stderr; the message is user text, printed as is."""
    err.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def plan_profiles(plan: DeploymentMap, profiles_dir: Optional[Path] = None) -> Optional[dict[str, Profile]]:
    """The profiles to check a plan against: `profiles_dir` when given, else the directory the plan
    records it was made with when it is there, else the embedded example when it has every model
    of the plan; None when none is at hand."""
    from parvagpu.inputs.provenance import EMBEDDED

    if profiles_dir is not None:
        return load_profiles(profiles_dir)
    rec = plan.provenance
    if rec is not None and rec.profiles != EMBEDDED and Path(rec.profiles).is_dir():
        return load_profiles(Path(rec.profiles))
    embedded = load_profiles(example_dir() / "profiles")
    return embedded if {s.model for s in plan.services} <= set(embedded) else None


def fleet_profiles(plan: DeploymentMap, profiles_dir: Optional[Path] = None) -> Optional[dict[str, dict[str, Profile]]]:
    """A fleet plan's profiles by GPU type, when its profile directory (`profiles_dir`, else the
    one the plan records) holds one subdirectory per type; None otherwise."""
    from parvagpu.inputs.fleet import profiles_by_type
    from parvagpu.inputs.provenance import EMBEDDED

    rec = plan.provenance
    root = profiles_dir if profiles_dir is not None else (
        Path(rec.profiles) if rec is not None and rec.profiles != EMBEDDED else None)
    if plan.fleet is None or root is None or not any((root / t).is_dir() for t in plan.fleet.types):
        return None
    return profiles_by_type(root)


def read_checked_plan(plan_file: Path, profiles_dir: Optional[Path] = None, force: bool = False) -> DeploymentMap:
    """Read a plan and run `verify`'s independent checks on it, before any verb acts on it.

    Unreadable or malformed: `ParvaError` (exit 2). Invalid: each problem on stderr, then exit 1,
    unless `force` (an expert's override), which prints them as warnings and returns the plan."""
    plan, stated = read_plan(plan_file)
    by_type = fleet_profiles(plan, profiles_dir)
    profiles = next(iter(by_type.values())) if by_type else plan_profiles(plan, profiles_dir)
    if profiles is None:
        warn(f"{plan_file}: no profiles at hand for its models; segments are checked against the plan's own figures")
    problems = verify(plan, profiles, None, stated, type_profiles=by_type)
    if not problems:
        return plan
    label = "[yellow]warning:[/]" if force else "[red]invalid:[/]"
    for p in problems:
        err.print(f"{label} {escape(p)}", highlight=False, soft_wrap=True)
    if force:
        warn(f"{plan_file}: {len(problems)} problem(s); used anyway because of --force-invalid")
        return plan
    fail(f"{plan_file}: {len(problems)} problem(s); not used (check with `parvagpu verify`; "
         "--force-invalid overrides)", EXIT_INVALID_PLAN)


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
ForceInvalidOpt = typer.Option(
    False, "--force-invalid",
    help="Use the plan even when the checks of `verify` fail (each problem is printed as a warning).",
)
