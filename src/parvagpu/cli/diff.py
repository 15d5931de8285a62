"""`parvagpu diff OLD.json NEW.json`: the ordered make-before-break transition between two plans."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from parvagpu.cli.common import Format, fail_on
from parvagpu.contract.plan_json import read_plan, schedule_to_dict
from parvagpu.core.errors import ParvaError
from parvagpu.planning.transition import schedule, transition


def diff(
    old_file: Path = typer.Argument(..., help="The running plan (JSON)."),
    new_file: Path = typer.Argument(..., help="The plan to move to (JSON)."),
    spare_gpus: int = typer.Option(
        0, "--spare-gpus", help="Free GPUs the transition may borrow for temporary copies to avoid a dip."
    ),
    fmt: Optional[Format] = typer.Option(None, "--format", help="table (default on a terminal) or json."),
) -> None:
    """Kept, added and removed segments, and the order to change them without losing capacity.

    New segments are created (and warmed) before old ones go; at every step each model keeps
    min(old rate, new rate) unless the slots force a dip, which is reported."""
    try:
        old, _ = read_plan(old_file)
        new, _ = read_plan(new_file)
        if fmt is Format.csv:
            raise ParvaError("diff writes table or json")
        t = transition(old, new)
        sched = schedule(old, new, spare_gpus)
    except ParvaError as exc:
        fail_on(exc)
    kind = fmt or (Format.table if sys.stdout.isatty() else Format.json)
    if kind is Format.json:
        sys.stdout.write(json.dumps(schedule_to_dict(new, t, sched), indent=2) + "\n")
        return
    from parvagpu.reports.transition import print_schedule

    print_schedule(new, t, sched, Console())
