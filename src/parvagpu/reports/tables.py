"""Rich rendering of a plan: a summary, capacity per model, and a drawing of each GPU's slots."""

from __future__ import annotations

from collections import Counter

from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.reports.words import count

_COLORS = (
    "cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta",
    "bright_green", "bright_yellow", "bright_blue", "bright_red",
)


def summary(plan: DeploymentMap) -> dict[str, float]:
    """The headline figures shown in tables and compared across strategies."""
    used = plan.gpus_used
    gpcs = plan.gpcs_used()
    slices = sum(gpu_type(plan.gpu_type_of(g)).compute_slices for g in {s.gpu for s in plan.segments})
    demand = sum(s.rate for s in plan.services)
    cap = sum(c.capacity for c in plan.capacities())
    return {
        "gpus_used": used,
        "gpcs_used": gpcs,
        "idle_gpcs": slices - gpcs,
        "capacity_over_demand": cap / demand if demand else 0.0,
        "segments": len(plan.segments),
    }


def model_colors(plan: DeploymentMap) -> dict[str, str]:
    models = sorted({s.model for s in plan.services} | {s.model for s in plan.segments})
    return {m: _COLORS[i % len(_COLORS)] for i, m in enumerate(models)}


def _short_names(models: list[str], room: int) -> tuple[dict[str, str], list[str]]:
    """Names that fit `room` characters and still tell models apart: the names themselves when
    they fit, else their prefixes when those differ, else numbered keys explained in a legend."""
    if all(len(m) <= room for m in models) or len({m[:room] for m in models}) == len(models):
        return {m: m[:room] for m in models}, []
    keys = {m: f"#{i + 1}" for i, m in enumerate(models)}
    return keys, [f"{keys[m]} {m}" for m in models]


def gpu_drawing(plan: DeploymentMap, slice_width: int = 8) -> Table:
    """One row per GPU; each memory slice is `slice_width` characters wide."""
    color = model_colors(plan)
    short, legend = _short_names(sorted({s.model for s in plan.segments}), max(slice_width - 2, 1))
    SLICE_WIDTH = slice_width
    slices = max((gpu_type(plan.gpu_type_of(g)).memory_slices for g in plan.by_gpu()), default=8)
    table = Table(title="GPU layouts (memory slices 0..%d)" % (slices - 1), show_lines=False)
    table.add_column("node/gpu", justify="right", no_wrap=True)
    if plan.fleet is not None:
        table.add_column("type", no_wrap=True)
    table.add_column("slots", no_wrap=True)
    table.add_column("GPCs", justify="right")
    for g, segs in plan.by_gpu().items():
        gpu = gpu_type(plan.gpu_type_of(g))
        line = Text()
        pos = 0
        for s in segs:
            if s.start > pos:
                line.append(("·" * (SLICE_WIDTH * (s.start - pos))), style="dim")
            width = SLICE_WIDTH * gpu.profile(s.size).memory_slices
            t = s.segment.triplet
            label = short[s.model] if width < 16 else f"{s.size}g {s.model} b{t.batch}p{t.procs}"
            cell = f"[{label[: width - 2].ljust(width - 2)}]"
            line.append(cell, style=f"bold {color[s.model]}")
            pos = s.start + gpu.profile(s.size).memory_slices
        if pos < gpu.memory_slices:
            line.append("·" * (SLICE_WIDTH * (gpu.memory_slices - pos)), style="dim")
        used = sum(s.size for s in segs)
        where = f"{plan.node_of(g)}/{plan.local_gpu(g)}"
        if plan.fleet is not None:
            table.add_row(escape(f"{plan.fleet.node(g).name}/{plan.local_gpu(g)}"), gpu.name, line, f"{used}/{gpu.compute_slices}")
        else:
            table.add_row(where, line, f"{used}/{gpu.compute_slices}")
    if legend:  # names cut to one slot would be ambiguous: keys, explained here
        table.caption = escape(", ".join(legend))
    return table


def plan_tables(plan: DeploymentMap, width: int = 100) -> Group:
    s = summary(plan)
    head = Table(title=escape(f"parvagpu plan: {plan.strategy} on {plan.gpu_type}"), show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("GPUs used", str(s["gpus_used"]))
    stats = dict(plan.stats)
    if plan.fleet is not None:
        head.add_row("fleet", f"{count(len(plan.fleet.nodes), 'node')}, {count(plan.fleet.total_gpus, 'GPU')}")
        head.add_row("price per hour", f"{plan.price_per_hour():g}")
        if "price_lower_bound" in stats:
            head.add_row("proven price bound", f"{stats['price_lower_bound']:g} (gap {stats['price_gap']:.2%})")
    elif plan.lower_bound is not None:
        gap = (plan.gpus_used - plan.lower_bound) / plan.gpus_used if plan.gpus_used else 0.0
        head.add_row("proven lower bound", f"{plan.lower_bound} (gap {gap:.1%})")
    else:
        head.add_row("proven lower bound", "not computed (--strategy auto proves one)")
    head.add_row("GPCs used", str(s["gpcs_used"]))
    head.add_row("idle GPCs on used GPUs", str(s["idle_gpcs"]))
    head.add_row("capacity / demand", f"{s['capacity_over_demand']:.3f}")
    head.add_row("segments", str(s["segments"]))
    head.add_row("max procs per segment", str(plan.max_procs))

    per_model = Table(title="Capacity per model")
    cols = [("model", "left"), ("rate", "right"), ("SLO ms", "right"),
            ("capacity", "right"), ("cap/rate", "right"), ("segments", "left")]
    fleet = plan.fleet is not None
    if fleet:
        cols[1:1] = [("tier", "right")]
        cols[3:3] = [("served", "right"), ("shortfall", "right")]
    for col, just in cols:
        # nothing is cut on a narrow terminal (a model name to an ambiguous prefix, a figure to "…"): it folds
        per_model.add_column(col, justify=just, overflow="fold")
    color = model_colors(plan)
    for c in plan.capacities():
        sizes = Counter(
            (plan.gpu_type_of(seg.gpu) if fleet else "", seg.size) for seg in plan.segments if seg.model == c.service.model
        )
        cells = [
            Text(c.service.model, style=color[c.service.model]),
            f"{c.service.rate:g}",
            f"{c.service.latency_ms:g}",
            f"{c.capacity:.1f}",
            f"{c.capacity / c.service.rate:.3f}",
            " ".join(f"{t + ' ' if t else ''}{k}g×{v}" for (t, k), v in sorted(sizes.items(), key=lambda kv: (kv[0][0], -kv[0][1]))),
        ]
        if fleet:
            served = plan.served_rate(c.service)
            cells[1:1] = [str(c.service.tier)]
            cells[3:3] = [f"{served:g}", f"{c.service.rate - served:g}"]
        per_model.add_row(*cells)
    slices = max((gpu_type(plan.gpu_type_of(g)).memory_slices for g in plan.by_gpu()), default=8)
    slice_width = max(6, min(14, (width - 22) // slices))
    return Group(head, per_model, gpu_drawing(plan, slice_width))


def print_plan(plan: DeploymentMap, console: Console | None = None) -> None:
    console = console or Console()
    console.print(plan_tables(plan, console.width))
