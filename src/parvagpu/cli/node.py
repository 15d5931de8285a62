"""CLI verbs that act on nodes and clusters: apply, status, teardown, export.

Registered on the main Typer app by `parvagpu.cli`. Thin: open a backend, call the agent, render.
Errors are one line with their kind's exit code: 1 refused or rolled back (or `status --plan`
found drift), 2 bad input, 4 the hardware or the system failed.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from parvagpu import node as agent
from parvagpu.cli.common import ForceInvalidOpt, fail_on, read_checked_plan
from parvagpu.fileio.reader import read_json
from parvagpu.fileio.writer import atomic_write
from parvagpu.core.model import DeploymentMap
from parvagpu.core.gpus import DEFAULT_GPU, gpu_type
from parvagpu.hardware.mig import FakeBackend, mutating_calls, open_nvml
from parvagpu.hardware.mig.fake import FAKE_STATE_VERSION
from parvagpu.core.errors import ParvaError
from parvagpu.hardware.mps import FakeMps, NvidiaMps, terminate_processes

FAKE_STATE_ENV = "PARVAGPU_FAKE_STATE"


class Backend(str, Enum):
    nvml = "nvml"
    fake = "fake"


NodeOpt = typer.Option(..., "--node", "-n", help="Plan node index this machine is.")
BackendOpt = typer.Option(Backend.nvml, "--backend", help="nvml (real GPUs) or fake (a strict in-memory node).")
StateDirOpt = typer.Option(
    None, "--state-dir", envvar=agent.STATE_ENV,
    help=f"Root for the node state file and MPS directories (default {agent.DEFAULT_STATE_ROOT}).",
)
FakeStateOpt = typer.Option(
    None, "--fake-state", envvar=FAKE_STATE_ENV,
    help="With --backend fake: keep the fake node in this JSON file across invocations.",
)
FakeGpusOpt = typer.Option(8, "--fake-gpus", help="With --backend fake: GPUs of a new fake node.")
ForceOpt = typer.Option(False, "--force", help="Terminate processes on instances that must be destroyed.")
DryRunOpt = typer.Option(False, "--dry-run", help="Print the ordered steps; change nothing.")


def _load_fake(path: Optional[Path], type_name: str, gpus: int) -> tuple[FakeBackend, FakeMps]:
    if path is not None and path.exists():
        data = read_json(path, "fake node state")
        if not isinstance(data, dict) or data.get("version") != FAKE_STATE_VERSION:
            raise ParvaError(f"{path}: not a fake node state file (version {FAKE_STATE_VERSION})")
        fake = FakeBackend.from_dict(data.get("mig"), str(path))
        return fake, FakeMps.from_dict(data.get("mps"), fake, str(path))
    fake = FakeBackend(type_name, gpus)
    return fake, FakeMps(fake)


def _check_fake_target(path: Path) -> None:
    """A fake node that will be saved can be saved: checked before anything runs, so a command
    never changes the node state and then fails to keep the fake node that matches it."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ParvaError(f"--fake-state {path}: directory {parent} does not exist")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ParvaError(f"--fake-state {path}: not a regular file; refusing to replace it")


@contextmanager
def _fake_lock(path: Optional[Path]) -> Iterator[None]:
    """Commands on one fake state file take turns (read, change, save), so none loses another's
    update: an exclusive lock on its directory, waited for."""
    if path is None:
        yield
        return
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd = os.open(parent, os.O_RDONLY)
    except OSError as exc:
        raise ParvaError(f"--fake-state {path}: cannot open {parent}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def _node(backend: Backend, fake_state: Optional[Path], fake_gpus: int, type_name: str, save: bool) -> Iterator[tuple]:
    """(backend, mps, kill) for one command; a fake node with a state file is saved afterwards,
    also after a rolled-back apply, so the next command sees what this one left."""
    if backend is Backend.nvml:
        b = open_nvml()
        try:
            yield b, NvidiaMps(), terminate_processes
        finally:
            b.close()
        return
    if save and fake_state is not None:
        _check_fake_target(fake_state)
    with _fake_lock(fake_state if fake_state is not None and fake_state.parent.is_dir() else None):
        fake, mps = _load_fake(fake_state, type_name, fake_gpus)
        try:
            yield fake, mps, fake.kill_processes
        finally:
            changed = mutating_calls(fake.calls) or mps.calls["start"] or mps.calls["stop"]
            if save and fake_state is not None and (changed or fake_state.exists()):
                doc = {"version": FAKE_STATE_VERSION, "mig": fake.to_dict(), "mps": mps.to_dict()}
                atomic_write(fake_state, json.dumps(doc, indent=1) + "\n")


MAX_NODE = 1_000_000  # a plan node index; it names the node's state directory


def _dirs(state_dir: Optional[Path], node: int) -> agent.NodeDirs:
    if not 0 <= node <= MAX_NODE:
        raise ParvaError(f"--node must be a plan node index in 0..{MAX_NODE}, got {node}")
    return agent.NodeDirs(state_dir or agent.default_state_root(), node)


def _print_steps(title: str, steps: list, dirs: agent.NodeDirs) -> None:
    out = Console(highlight=False, markup=False, soft_wrap=True)
    out.print(title)
    width = len(str(len(steps)))
    for i, s in enumerate(steps, 1):
        out.print(f"  {i:>{width}}. {s.describe(dirs)}")


def _summary(result: agent.ApplyResult) -> str:
    counts = result.counts()
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items(), key=lambda kv: list(agent.Op).index(agent.Op(kv[0]))))


def apply_cmd(
    plan_file: Path = typer.Argument(..., help="Plan JSON written by `parvagpu plan`."),
    node: int = NodeOpt,
    backend: Backend = BackendOpt,
    dry_run: bool = DryRunOpt,
    force: bool = ForceOpt,
    state_dir: Optional[Path] = StateDirOpt,
    fake_state: Optional[Path] = FakeStateOpt,
    fake_gpus: int = FakeGpusOpt,
    force_invalid: bool = ForceInvalidOpt,
    spare_gpus: int = typer.Option(
        0, "--spare-gpus", help="With a plan made with --current: up to this many of the node's GPUs that neither "
        "plan uses may hold bridges (temporary copies of segments whose removal would take a model below "
        "min(old rate, new rate)), removed again at the end.",
    ),
) -> None:
    """Make this node hold its part of a plan (MIG instances at exact slots, MPS per instance).

    Changes only what differs; kept instances and their workers keep running. A plan made with
    --current is applied in its make-before-break order.

    Any failure rolls back to the layout found. Exit 1 when refused or rolled back, 2 on bad input,
    4 when the hardware fails (or a rollback cannot finish)."""
    try:
        dirs = _dirs(state_dir, node)
        plan = read_checked_plan(plan_file, force=force_invalid)
        agent.node_wants(plan, node)  # reject a bad plan or node before opening any backend
        order, bridges = node_transition(plan, node, spare_gpus) or (None, ())
        with _node(backend, fake_state, fake_gpus, plan.node_gpu_type(node), save=not dry_run) as (b, mps, kill):
            result = agent.apply_plan(plan, node, b, mps, dirs, force=force, dry_run=dry_run, kill=kill,
                                      order=order, bridges=bridges)
    except ParvaError as exc:
        fail_on(exc)
    head = f"node {node} ({plan.node_gpu_type(node)}, backend {backend.value})"
    if not result.steps:
        Console(highlight=False, markup=False).print(f"{head}: nothing to do, the node matches the plan")
        return
    if dry_run:
        _print_steps(f"{head}: {len(result.steps)} steps (dry run, nothing changed)", result.steps, dirs)
        return
    state = f"; state written to {result.state_path}" if result.state_written else ""
    Console(highlight=False, markup=False, soft_wrap=True).print(f"{head}: applied {len(result.steps)} steps ({_summary(result)}){state}")


def transition_order(plan: DeploymentMap, node: int, spare_gpus: int = 0) -> list[tuple[str, int, int]] | None:
    """The node's part of the plan's make-before-break transition, when the plan records one
    (`plan --current`): ("create" | "remove" | "bridge" | "unbridge", local GPU, start) in order."""
    found = node_transition(plan, node, spare_gpus)
    return None if found is None else found[0]


def node_transition(plan: DeploymentMap, node: int, spare_gpus: int = 0):
    """The node's transition order and its bridges (`agent.Want`s on the node's spare GPUs), or
    None when the plan records no transition. With `spare_gpus`, that many of the node's GPUs
    that neither plan uses (the lowest first) may hold bridges, each for a segment of this node
    (`schedule(spares=...)`); other nodes' segments are not bridged here."""
    if plan.transition is None:
        if spare_gpus:
            raise ParvaError("--spare-gpus follows a plan's transition: plan it with --current")
        return None
    from parvagpu.planning.transition import old_plan_of, schedule

    old = old_plan_of(plan)
    spares = _spare_gpus(plan, old, node, spare_gpus)
    sched = schedule(old, plan, spares=spares) if spares else schedule(old, plan)
    order, bridges = [], []
    for st in sched.steps:
        if plan.node_of(st.segment.gpu) != node:
            continue
        s = st.segment
        kind = st.action if not st.bridge else ("bridge" if st.action == "create" else "unbridge")
        order.append((kind, plan.local_gpu(s.gpu), s.start))
        if kind == "bridge":
            t = s.segment.triplet
            prof = gpu_type(plan.gpu_type).profile(s.size)
            bridges.append(agent.Want(plan.local_gpu(s.gpu), s.start, prof, s.model, t.batch, t.procs))
    return order, tuple(bridges)


def _spare_gpus(plan: DeploymentMap, old: DeploymentMap, node: int, count: int) -> list[int]:
    """`count` GPUs of `node` that neither plan uses (global ids, the lowest first)."""
    if count < 0:
        raise ParvaError(f"--spare-gpus must be >= 0, got {count}")
    used = {s.gpu for s in old.segments + plan.segments}
    free = [g for g in (plan.global_gpu(node, i) for i in range(plan.node_gpus(node))) if g not in used]
    if len(free) < count:
        raise ParvaError(f"--spare-gpus {count}: node {node} has {len(free)} GPU(s) that neither plan uses")
    return free[:count]


def teardown_cmd(
    node: int = NodeOpt,
    backend: Backend = BackendOpt,
    dry_run: bool = DryRunOpt,
    force: bool = ForceOpt,
    state_dir: Optional[Path] = StateDirOpt,
    fake_state: Optional[Path] = FakeStateOpt,
    fake_gpus: int = FakeGpusOpt,
) -> None:
    """Stop the node's MPS daemons and destroy its MIG instances (MIG mode stays on)."""
    try:
        dirs = _dirs(state_dir, node)
        prev = agent.read_state(dirs.state_file)
        type_name = prev.gpu_type if prev else DEFAULT_GPU
        with _node(backend, fake_state, fake_gpus, type_name, save=not dry_run) as (b, mps, kill):
            result = agent.teardown(node, b, mps, dirs, force=force, dry_run=dry_run, kill=kill)
    except ParvaError as exc:
        fail_on(exc)
    head = f"node {node} (backend {backend.value})"
    if not result.steps:
        Console(highlight=False, markup=False).print(f"{head}: nothing to tear down")
    elif dry_run:
        _print_steps(f"{head}: {len(result.steps)} steps (dry run, nothing changed)", result.steps, dirs)
    else:
        Console(highlight=False, markup=False).print(f"{head}: tore down ({_summary(result)})")


def status_cmd(
    node: int = NodeOpt,
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="Also check the node against this plan (exit 1 if it differs)."),
    backend: Backend = BackendOpt,
    state_dir: Optional[Path] = StateDirOpt,
    fake_state: Optional[Path] = FakeStateOpt,
    fake_gpus: int = FakeGpusOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    force_invalid: bool = ForceInvalidOpt,
) -> None:
    """Show the node's MIG instances, UUIDs, MPS daemons and segments; --plan checks drift."""
    try:
        dirs = _dirs(state_dir, node)
        plan = read_checked_plan(plan_file, force=force_invalid) if plan_file is not None else None
        prev = agent.read_state(dirs.state_file)
        type_name = plan.gpu_type if plan else (prev.gpu_type if prev else DEFAULT_GPU)
        with _node(backend, fake_state, fake_gpus, type_name, save=False) as (b, mps, _kill):
            st = agent.node_status(node, b, mps, dirs, plan)
    except ParvaError as exc:
        fail_on(exc)
    rows = _status_rows(st)
    if as_json:
        doc = {"node": node, "instances": rows,
               "matches_plan": None if st.drift is None else not st.drift,
               "drift": None if st.drift is None else [s.describe() for s in st.drift]}
        typer.echo(json.dumps(doc, indent=2))
    else:
        _print_status(node, rows, st.drift, plan_file, dirs)
    if st.drift:
        raise typer.Exit(1)


def _status_rows(st: agent.NodeStatus) -> list[dict]:
    """One row per instance (or per GPU without one), as `status --json` prints them."""
    bound = st.view.previous.by_slot() if st.view.previous else {}
    rows: list[dict] = []
    for g in st.view.gpus:
        if not g.instances:
            rows.append({"gpu": g.index, "type": g.type_name, "mig": g.mig, "instance": None})
        names = agent.profile_names(g.type_name)
        for i in g.instances:
            e = bound.get((g.index, i.start))
            procs = st.processes.get((g.index, i.gi_id), ())
            rows.append({
                "gpu": g.index, "type": g.type_name, "mig": g.mig,
                "instance": f"{names.get(i.profile_id, i.profile_id)}@{i.start}",
                "gi_id": i.gi_id, "ci_ids": [c.ci_id for c in i.cis], "mig_uuid": i.uuid,
                "mps": (g.index, i.start) in st.view.mps,
                "workers": [p.pid for p in procs if not p.is_mps_server],
                "segment": None if e is None or e.mig_uuid != i.uuid else
                f"{e.model} b{e.batch} x{e.procs}",
            })
    return rows


def _print_status(
    node: int, rows: list[dict], drift: list | None, plan_file: Optional[Path], dirs: agent.NodeDirs,
) -> None:
    t = Table(title=f"node {node}")
    for col in ("GPU", "type", "MIG", "instance", "GI", "CI", "MIG UUID", "MPS", "workers", "segment"):
        t.add_column(col)
    for r in rows:
        if r["instance"] is None:
            t.add_row(str(r["gpu"]), r["type"], "on" if r["mig"] else "off", "-", "", "", "", "", "", "")
            continue
        t.add_row(
            str(r["gpu"]), r["type"], "on", r["instance"], str(r["gi_id"]), ",".join(map(str, r["ci_ids"])),
            r["mig_uuid"] or "-", "running" if r["mps"] else "-", str(len(r["workers"])), r["segment"] or "-",
        )
    Console(width=max(160, Console().width), markup=False).print(t)
    if drift is None:
        return
    if drift:
        _print_steps(f"differs from {plan_file}: apply would take {len(drift)} steps", drift, dirs)
    else:
        Console(highlight=False, markup=False).print(f"matches {plan_file}")
