"""The agent's entry points: `apply_plan`, `teardown` and `node_status` for one node.

Exists to put the stages together in one place, and nothing else: take the node lock, read the
node and its state file (`views`, `state`), decide (`steps.diff`), check the placements with the
hardware, run the steps (`executor`) and record the result in the state file (also part-way, each
time a transition's bridges come or go, so the file always lists the bridges that stand).
"""

from __future__ import annotations

import fcntl
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from parvagpu.core.errors import EXIT_INVALID_PLAN, ParvaError, SystemFailure
from parvagpu.core.model import DeploymentMap
from parvagpu.hardware.mig.base import GpuProcess, MigBackend
from parvagpu.hardware.mps import MpsControl
from parvagpu.node.executor import ApplyFailed, Executor, Key, Live
from parvagpu.node.state import NodeDirs, NodeState, StateEntry, load_previous, write_state
from parvagpu.node.steps import Op, Step, bridge_steps, check_node, diff, doomed, in_transition_order
from parvagpu.node.views import NodeView, Want, node_wants, read_node, with_wanted_slots


@dataclass
class ApplyResult:
    steps: list[Step]
    executed: bool
    state_written: bool = False
    state_path: Path | None = None

    def counts(self) -> Counter:
        return Counter(s.op.value for s in self.steps)


class NodeBusy(ParvaError):
    """Another agent holds the node's lock: this run is refused. Exit 1."""

    exit_code = EXIT_INVALID_PLAN


@contextmanager
def node_lock(dirs: NodeDirs) -> Iterator[None]:
    """One agent at a time per node: an exclusive lock on `<base>/.lock`, refused at once if
    held. A directory it had to create for the lock alone is removed again afterwards."""
    made = []  # directories this call creates, innermost first
    for d in (dirs.base, *dirs.base.parents):
        if d.exists():
            break
        made.append(d)
    try:
        dirs.base.mkdir(parents=True, exist_ok=True)
        fh = open(dirs.base / ".lock", "a")
    except OSError as exc:
        raise ParvaError(f"cannot use {dirs.base}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NodeBusy(f"node {dirs.node} is being changed by another parvagpu process ({dirs.base / '.lock'})") from None
        yield
    finally:
        fh.close()
        if made and [p.name for p in dirs.base.iterdir()] == [".lock"]:
            (dirs.base / ".lock").unlink(missing_ok=True)
            for d in made:
                try:
                    d.rmdir()
                except OSError:
                    break


def _prepare(
    backend: MigBackend, mps: MpsControl, dirs: NodeDirs, wants: tuple[Want, ...], type_name: str | None,
    limit: int | None, force: bool, node: int, reserved: Mapping[int, int] | None = None,
    bridges: tuple[Want, ...] = (),
) -> tuple[NodeView, list[Step]]:
    """The node as found and `diff`'s steps to the plan; the placements to be created, bridges
    (`bridges`: temporary instances on spare GPUs) included, checked with the hardware."""
    prev = load_previous(dirs, node, type_name)
    view = read_node(backend, mps, dirs, limit, prev)
    if type_name is not None:
        check_node(view, wants + bridges, type_name)
        # GPUs of another type are not the plan's to manage.
        view = NodeView(tuple(g for g in view.gpus if g.type_name == type_name), view.mps, {}, view.previous)
    if reserved:
        view = _without_reserved(view, reserved)
    view = with_wanted_slots(view, mps, dirs, wants + bridges)
    procs = {(g, gi): backend.running_processes(g, gi) for g, gi in doomed(view, wants)}
    view = NodeView(view.gpus, view.mps, procs, view.previous)
    steps = diff(view, wants, force)
    check_placements(backend, steps + [s for b in bridges for s in bridge_steps(b)[0]], wants + bridges)
    return view, steps


def _without_reserved(view: NodeView, reserved: Mapping[int, int]) -> NodeView:
    """The view less what the fleet reserves for others (GPU -> memory-slice mask, -1: the whole
    GPU): their instances are neither destroyed nor counted."""
    gpus = []
    for g in view.gpus:
        mask = reserved.get(g.index, 0)
        if mask == -1:
            continue
        mine = tuple(i for i in g.instances if not (((1 << i.width) - 1) << i.start) & mask)
        gpus.append(replace(g, instances=mine))
    return NodeView(tuple(gpus), view.mps, view.processes, view.previous)


def _reserved(plan: DeploymentMap, node: int) -> dict[int, int]:
    """A fleet plan's reservations on `node`: GPU -> memory-slice mask (-1: the whole GPU)."""
    if plan.fleet is None:
        return {}
    n = plan.fleet.nodes[node]
    out: dict[int, int] = {}
    for r in n.reserved:
        if r.whole:
            out[r.gpu] = -1
        elif out.get(r.gpu) != -1:
            out[r.gpu] = out.get(r.gpu, 0) | n.type.mask(r.size, r.start)
    return out


def check_placements(backend: MigBackend, steps: list[Step], wants: tuple[Want, ...]) -> None:
    """Ask the hardware whether it offers each placement to be created (once per profile), so a
    GPU whose table differs from ours fails before anything changes."""
    width = {w.profile.profile_id: w.profile.memory_slices for w in wants}
    offered: dict[int, set[tuple[int, int]]] = {}
    for s in steps:
        if s.op is not Op.CREATE_GI:
            continue
        if s.profile_id not in offered:
            offered[s.profile_id] = set(backend.possible_placements(s.gpu, s.profile_id))
        if (s.start, width[s.profile_id]) not in offered[s.profile_id]:
            starts = sorted(st for st, _ in offered[s.profile_id])
            raise SystemFailure(
                f"gpu {s.gpu} does not offer {s.profile} at start {s.start} (it offers starts {starts}); "
                "the GPU table and the hardware disagree"
            )


def apply_plan(
    plan: DeploymentMap, node: int, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, *,
    force: bool = False, dry_run: bool = False, kill: Callable[[tuple[int, ...]], None] | None = None,
    order: Sequence[tuple[str, int, int]] | None = None, bridges: Sequence[Want] = (),
) -> ApplyResult:
    """Make `node` hold its part of `plan`. Raises ParvaError (nothing changed), `Refused` or
    `ApplyFailed` (rolled back), `SystemFailure` (the hardware failed before any change).

    `order`, the node's part of a plan's make-before-break transition as ("create" | "remove" |
    "bridge" | "unbridge", gpu, start), puts the steps in that order (see
    `steps.in_transition_order`); `bridges` are the instances its "bridge" entries create on the
    node's spare GPUs, removed again by its "unbridge" entries."""
    wants, bridges = node_wants(plan, node), tuple(bridges)
    if dry_run:
        _view, steps = _prepare(backend, mps, dirs, wants, plan.node_gpu_type(node), plan.node_gpus(node), force, node,
                                 _reserved(plan, node), bridges)
        return ApplyResult(_ordered(steps, order, bridges), False, False, dirs.state_file)
    with node_lock(dirs):
        view, steps = _prepare(backend, mps, dirs, wants, plan.node_gpu_type(node), plan.node_gpus(node), force, node,
                                 _reserved(plan, node), bridges)
        steps = _ordered(steps, order, bridges)
        ex = Executor(backend, mps, dirs, view, kill)
        record = _Recorder(NodeState(node, plan.node_gpu_type(node), plan.node_gpus(node), ()), steps, wants,
                           bridges, view.previous, ex, dirs)
        try:
            ex.run(steps, record.checkpoint if bridges else None)
        except ApplyFailed:
            _refresh_previous(view.previous, ex.live, dirs)
            raise
        written = record.write(len(steps)) or record.written
    return ApplyResult(steps, True, written, dirs.state_file)


def _ordered(steps: list[Step], order: Sequence[tuple[str, int, int]] | None,
             bridges: tuple[Want, ...] = ()) -> list[Step]:
    return steps if order is None else in_transition_order(steps, order, bridges)


def _entries(wants: tuple[Want, ...], live: Mapping[Key, Live], dirs: NodeDirs) -> tuple[StateEntry, ...]:
    """The state file's segments: what the plan wanted, with the ids the hardware gave it."""
    out = []
    for w in sorted(wants, key=lambda w: (w.gpu, w.start)):
        inst = live[(w.gpu, w.start)]
        out.append(StateEntry(
            w.model, w.gpu, w.start, w.profile.size, w.profile.name, w.profile.profile_id, w.batch, w.procs,
            inst.gi_id, inst.cis[0].ci_id, inst.uuid, dirs.pipe_dir(w.gpu, w.start), dirs.log_dir(w.gpu, w.start),
        ))
    return tuple(out)


_CREATE = frozenset({Op.CREATE_GI, Op.CREATE_CI, Op.START_MPS, Op.BIND})
_REMOVE = frozenset({Op.STOP_MPS, Op.KILL, Op.DESTROY_CI, Op.DESTROY_GI})


class _Recorder:
    """Writes the state file as an apply goes: before each step at which the standing bridges
    change (one is up once its daemon runs; it goes before its daemon stops), and at the end.
    Part-way, `segments` holds each slot's plan segment once its steps are done, else the
    previous state's segment there until its teardown starts; `bridges` the bridges standing."""

    def __init__(self, base: NodeState, steps: list[Step], wants: tuple[Want, ...], bridges: tuple[Want, ...],
                 prev: NodeState | None, ex: Executor, dirs: NodeDirs) -> None:
        self.base, self.steps, self.wants, self.bridges = base, steps, wants, bridges
        self.prev, self.ex, self.dirs = prev, ex, dirs
        self.spans = {(b.gpu, b.start): _span(steps, b) for b in bridges}
        self.standing: frozenset[Key] = frozenset()
        self.written = False

    def checkpoint(self, i: int) -> None:
        if self._standing(i) != self.standing:
            self.written = self.write(i) or self.written

    def write(self, i: int) -> bool:
        """The state with steps[:i] done."""
        self.standing = self._standing(i)
        bridges = {(b.gpu, b.start): b for b in self.bridges}
        return write_state(self.dirs.state_file, replace(
            self.base, segments=self._segments(i),
            bridges=_entries(tuple(bridges[k] for k in sorted(self.standing)), self.ex.live, self.dirs)))

    def _standing(self, i: int) -> frozenset[Key]:
        return frozenset(k for k, (up, down) in self.spans.items() if up <= i < down)

    def _segments(self, i: int) -> tuple[StateEntry, ...]:
        if i == len(self.steps):
            return _entries(self.wants, self.ex.live, self.dirs)
        done = self.steps[:i]
        pending = {(s.gpu, s.start) for s in self.steps[i:] if s.op in _CREATE}
        torn = {(s.gpu, s.start) for s in done if s.op in _REMOVE}
        made = tuple(w for w in self.wants if (w.gpu, w.start) not in pending and (w.gpu, w.start) in self.ex.live)
        keys = {(w.gpu, w.start) for w in made}
        old = [e for e in (self.prev.segments if self.prev else ()) if (e.gpu, e.start) not in keys | torn]
        return tuple(sorted((*_entries(made, self.ex.live, self.dirs), *old), key=lambda e: (e.gpu, e.start)))


def _span(steps: list[Step], b: Want) -> tuple[int, int]:
    """The step boundaries (steps[:i] done) between which bridge `b` stands: from just after its
    last creation step to just before its first removal step."""
    create, remove = bridge_steps(b)
    made = [i for i, s in enumerate(steps) if s in create]
    gone = [i for i, s in enumerate(steps) if s in remove]
    return (max(made) + 1 if made else len(steps) + 1), (min(gone) if gone else len(steps) + 1)


def _refresh_previous(prev: NodeState | None, live: Mapping[Key, Live], dirs: NodeDirs) -> None:
    """After a rollback, instances the agent re-created have new ids and UUIDs: keep the old
    state file truthful about them (best effort: the apply's own error is what gets reported)."""
    if prev is None:
        return
    segs = []
    for e in prev.segments:
        inst = live.get((e.gpu, e.start))
        if inst is not None and inst.profile_id == e.profile_id and inst.cis:
            e = replace(e, gi_id=inst.gi_id, ci_id=inst.cis[0].ci_id, mig_uuid=inst.uuid)
        segs.append(e)
    try:
        write_state(dirs.state_file, replace(prev, segments=tuple(segs)))
    except ParvaError:
        pass


def teardown(
    node: int, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, *,
    force: bool = False, dry_run: bool = False, kill: Callable[[tuple[int, ...]], None] | None = None,
) -> ApplyResult:
    """Stop every daemon and destroy every instance on the node's GPUs (MIG mode stays on)."""
    def prepare() -> tuple[NodeView, list[Step]]:
        prev = load_previous(dirs, node, None)
        limit = prev.gpus_per_node if prev is not None else None
        return _prepare(backend, mps, dirs, (), None, limit, force, node)

    if dry_run:
        return ApplyResult(prepare()[1], False, False, dirs.state_file)
    with node_lock(dirs):
        view, steps = prepare()
        Executor(backend, mps, dirs, view, kill).run(steps)
        removed = False
        if dirs.state_file.exists():
            try:
                dirs.state_file.unlink()
                removed = True
            except OSError as exc:
                raise ParvaError(f"cannot remove {dirs.state_file}: {exc.strerror or exc}") from None
    return ApplyResult(steps, True, removed, dirs.state_file)


@dataclass
class NodeStatus:
    view: NodeView
    processes: dict[tuple[int, int], tuple[GpuProcess, ...]]
    drift: list[Step] | None  # None when no plan was given


def node_status(
    node: int, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, plan: DeploymentMap | None = None,
) -> NodeStatus:
    """What the node holds and, given a plan, the steps `apply` would take (empty: it matches)."""
    prev = load_previous(dirs, node, plan.node_gpu_type(node) if plan is not None else None)
    limit = plan.node_gpus(node) if plan is not None else (prev.gpus_per_node if prev else None)
    view = read_node(backend, mps, dirs, limit, prev)
    procs = {(g.index, i.gi_id): backend.running_processes(g.index, i.gi_id)
             for g in view.gpus for i in g.instances if i.cis}
    drift = None
    if plan is not None:
        wants = node_wants(plan, node)
        check_node(view, wants, plan.node_gpu_type(node))
        view2 = with_wanted_slots(view, mps, dirs, wants)
        drift = diff(NodeView(view2.gpus, view2.mps, procs, prev), wants, force=True)
        view = view2
    return NodeStatus(view, procs, drift)
