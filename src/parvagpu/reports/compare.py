"""Strategy comparison: every planner on every scenario, with the figures that explain the
difference (GPUs and the proven bound, GPCs, idle GPCs on used GPUs = external fragmentation,
capacity / demand = internal slack) and the planning time.

Timing makes this a report, not part of the pure core: plans are still the planners' own.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from typing import Sequence

from rich.markup import escape

from parvagpu.core.errors import ParvaError
from parvagpu.core.model import DeploymentMap
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import STRATEGIES
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.verify import verify

# Report order: the paper's heuristic, the default, the exact model, then the baselines.
ORDER = ("parva", "auto", "optimal", "mig-only", "mps-only", "whole-gpu")
assert set(ORDER) == set(STRATEGIES)

CSV_FIELDS = (
    "scenario", "strategy", "gpus", "lower_bound", "gap", "gpcs_used", "idle_gpcs",
    "capacity_over_demand", "segments", "proven_optimal", "valid", "seconds", "error",
)


@dataclass(frozen=True)
class Row:
    scenario: str
    strategy: str
    seconds: float
    plan: DeploymentMap | None = None
    valid: bool = False
    error: str = ""

    @property
    def gpus(self) -> int | None:
        return None if self.plan is None else self.plan.gpus_used

    @property
    def lower_bound(self) -> int | None:
        return None if self.plan is None else self.plan.lower_bound

    @property
    def gap(self) -> float | None:
        if self.plan is None or self.plan.lower_bound is None or not self.plan.gpus_used:
            return None
        return (self.plan.gpus_used - self.plan.lower_bound) / self.plan.gpus_used

    def figures(self) -> dict[str, float]:
        """GPCs, idle GPCs on used GPUs and capacity / demand, as `render.summary` defines them."""
        from parvagpu.reports.tables import summary

        return {} if self.plan is None else summary(self.plan)


def parse_strategies(text: str | None) -> tuple[str, ...]:
    if text is None or text.strip() in ("", "all"):
        return ORDER
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for n in names:
        if n not in STRATEGIES:
            raise ParvaError(f"unknown strategy {n!r}; known: {', '.join(STRATEGIES)}")
    return names


def run(
    requests: Sequence[tuple[str, PlanRequest]], strategies: Sequence[str] = ORDER,
) -> list[Row]:
    """Plan every named request (a scenario) with every strategy and check each plan. A strategy
    that cannot serve a scenario (e.g. whole-gpu when a model needs a smaller, faster instance)
    gets a row with its error instead of stopping the comparison."""
    rows = []
    for name, request in requests:
        for strategy in strategies:
            t0 = time.perf_counter()
            try:
                p = make_plan(request, strategy)
            except ParvaError as exc:
                rows.append(Row(name, strategy, time.perf_counter() - t0, error=str(exc)))
                continue
            seconds = time.perf_counter() - t0
            rows.append(Row(name, strategy, seconds, p, not verify(p, request.profiles)))
    return rows


def _fmt(x) -> str:
    if x is None:
        return ""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


def to_csv(rows: Sequence[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in rows:
        f = r.figures()
        w.writerow([_fmt(v) for v in (
            r.scenario, r.strategy, r.gpus, r.lower_bound, r.gap, f.get("gpcs_used"),
            f.get("idle_gpcs"), f.get("capacity_over_demand"), f.get("segments"),
            None if r.plan is None else r.gpus is not None and r.gpus == r.lower_bound,
            r.valid if r.plan is not None else None, round(r.seconds, 4), r.error or None,
        )])
    return buf.getvalue()


def table(rows: Sequence[Row], title: str = "parvagpu compare"):
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (
        ("scenario", "left"), ("strategy", "left"), ("GPUs", "right"), ("bound", "right"),
        ("gap", "right"), ("GPCs", "right"), ("idle", "right"), ("cap/dem", "right"),
        ("time", "right"), ("valid", "left"),
    ):
        t.add_column(col, justify=just, no_wrap=True, min_width=9 if col == "strategy" else len(col))
    last = None
    for r in rows:
        if last is not None and r.scenario != last:
            t.add_section()
        last = r.scenario
        if r.plan is None:
            t.add_row(escape(r.scenario), escape(r.strategy), "-", "", "", "", "", "", f"{r.seconds:.2f}s",
                      f"[red]{escape(str(r.error))}[/]")
            continue
        f = r.figures()
        t.add_row(
            escape(r.scenario), escape(r.strategy), str(r.gpus),
            "" if r.lower_bound is None else str(r.lower_bound),
            "" if r.gap is None else f"{r.gap:.1%}",
            str(f["gpcs_used"]), str(f["idle_gpcs"]), f"{f['capacity_over_demand']:.3f}",
            f"{r.seconds:.2f}s", "yes" if r.valid else "[red]NO[/]",
        )
    return t
