"""Rich rendering of a transition: the model capacities, the ordered steps, the dips."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap, Schedule, Transition
from parvagpu.reports.words import count


def print_schedule(new: DeploymentMap, t: Transition, sched: Schedule, console: Console) -> None:
    console.print(
        f"{t.kept} segments kept, {len(t.added)} added, {len(t.removed)} removed "
        f"on {count(len(t.gpus_touched), 'GPU')}; {count(len(sched.steps), 'step')}"
        + (f", {count(sched.bridges, 'bridge')} on spare GPUs" if sched.bridges else ""),
        highlight=False,
    )
    models = Table(title="Capacity per model (req/s)")
    for col in ("model", "old rate", "new rate", "old capacity", "new capacity"):
        models.add_column(col, justify="left" if col == "model" else "right", overflow="fold")
    for m in t.models:
        if m.old_capacity != m.new_capacity or m.old_rate != m.new_rate:
            models.add_row(escape(m.model), f"{m.old_rate:g}", f"{m.new_rate:g}",
                           f"{m.old_capacity:g}", f"{m.new_capacity:g}")
    console.print(models)
    steps = Table(title="Steps (make before break)")
    for col in ("#", "node", "gpu", "action", "model", "instance", "batch", "procs", "req/s"):
        steps.add_column(col, justify="left" if col in ("action", "model", "instance") else "right")
    for i, st in enumerate(sched.steps):
        s = st.segment
        action = st.action + (" bridge" if st.bridge else "")
        steps.add_row(
            str(i + 1), str(new.node_of(s.gpu)), str(new.local_gpu(s.gpu)),
            f"[green]{action}[/]" if st.action == "create" else f"[red]{action}[/]",
            escape(s.model), f"{gpu_type(new.gpu_type_of(s.gpu)).profile(s.size).name}@{s.start}",
            str(s.segment.triplet.batch),
            str(s.segment.triplet.procs), f"{s.segment.throughput:g}",
        )
    console.print(steps)
    if not sched.dips:
        console.print("every model keeps min(old rate, new rate) at every step", highlight=False)
    for d in sched.dips:
        console.print(
            f"[yellow]dip:[/] {escape(d.model)} is up to {d.shortfall:g} req/s below min(old rate, new rate) "
            f"for {d.steps} step(s) after step {d.first + 1} (--spare-gpus may avoid it)",
            highlight=False,
        )
