"""Decide: the steps that take a node from what it holds to what the plan wants. Pure, no I/O.

Exists apart from the executor so that every rule of a reconfiguration (what is kept, what is
torn down and in which order, what is refused without --force) is decided in one place, from
the views alone, and can be tested and dry-run without hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping, NamedTuple, Sequence

from parvagpu.core.errors import EXIT_INVALID_PLAN, ParvaError
from parvagpu.core.gpus import gpu_type
from parvagpu.hardware.mig.base import GpuInstance
from parvagpu.node.state import NodeDirs, StateEntry
from parvagpu.node.views import GpuView, NodeView, Want


class Op(str, Enum):
    STOP_MPS = "stop-mps"
    KILL = "kill-processes"
    DESTROY_CI = "destroy-ci"
    DESTROY_GI = "destroy-gi"
    CREATE_GI = "create-gi"
    CREATE_CI = "create-ci"
    START_MPS = "start-mps"
    BIND = "bind"


@dataclass(frozen=True)
class Step:
    op: Op
    gpu: int
    start: int
    profile: str
    profile_id: int
    gi_id: int | None = None
    ci_id: int | None = None
    slices: int | None = None
    pids: tuple[int, ...] = ()
    note: str = ""

    def describe(self, dirs: NodeDirs | None = None) -> str:
        inst = f"{self.profile}@{self.start}"
        head = f"gpu {self.gpu}: "
        if self.op is Op.STOP_MPS:
            return head + f"stop MPS daemon of {inst}" + (f" ({self.note})" if self.note else "")
        if self.op is Op.KILL:
            return head + f"terminate processes {', '.join(map(str, self.pids))} on {inst} (--force)"
        if self.op is Op.BIND:
            return head + f"bind {inst} to {self.note} (instance kept)"
        tail = f" ({self.note})" if self.note else ""
        if self.op is Op.DESTROY_CI:
            which = "its compute instance" if self.ci_id is None else f"compute instance {self.ci_id}"
            gi = "" if self.gi_id is None else f" (GI {self.gi_id})"
            return head + f"destroy {which} of {inst}{gi}{tail}"
        if self.op is Op.DESTROY_GI:
            gi = "" if self.gi_id is None else f" (GI {self.gi_id})"
            return head + f"destroy GPU instance {inst}{gi}{tail}"
        if self.op is Op.CREATE_GI:
            return head + f"create GPU instance {self.profile} (profile {self.profile_id}) at start {self.start}{tail}"
        if self.op is Op.CREATE_CI:
            unit = "slice" if self.slices == 1 else "slices"
            return head + f"create compute instance ({self.slices} compute {unit}) in {inst}{tail}"
        where = f" (pipe {dirs.pipe_dir(self.gpu, self.start)})" if dirs else ""
        return head + f"start MPS daemon for {inst}{where}{tail}"


class Refused(ParvaError):
    """Applying would destroy an instance that runs processes, and --force was not given. Exit 1."""

    exit_code = EXIT_INVALID_PLAN


def _workers(view: NodeView, gpu: int, gi_id: int) -> tuple[int, ...]:
    return tuple(p.pid for p in view.processes.get((gpu, gi_id), ()) if not p.is_mps_server)


def check_node(view: NodeView, wants: tuple[Want, ...], gpu_type_name: str) -> None:
    """The node can hold the plan: the GPUs exist, are of the plan's type, with MIG mode on."""
    for g in sorted({w.gpu for w in wants}):
        gv = view.gpu(g)
        if gv is None:
            raise ParvaError(f"the plan uses gpu {g} of this node, which has {len(view.gpus)} GPU(s)")
        if gv.type_name != gpu_type_name:
            raise ParvaError(f"gpu {g} is an {gv.type_name}, the plan is for {gpu_type_name}")
        if not gv.mig:
            raise ParvaError(f"gpu {g} has MIG mode disabled; enable it (nvidia-smi -i {g} -mig 1, then reset) and retry")
        if gv.mig_pending != gv.mig:
            raise ParvaError(f"gpu {g} has a MIG mode change pending; reset the GPU first")


class _Split(NamedTuple):
    """One GPU's instances sorted against its wants."""

    remove: list[GpuInstance]  # not wanted: torn down
    keep: list[tuple[GpuInstance, Want]]  # wanted, one whole compute instance: kept as is
    rebuild: list[tuple[GpuInstance, Want]]  # wanted, but its compute instances are split: rebuilt whole
    add: list[Want]  # wanted, not there: created


def _split(gv: GpuView, wants: list[Want]) -> _Split:
    by_start = {w.start: w for w in wants}
    remove, keep, rebuild = [], [], []
    for inst in gv.instances:
        w = by_start.get(inst.start)
        if w is not None and w.profile.profile_id == inst.profile_id:
            (keep if inst.whole_ci else rebuild).append((inst, w))
        else:
            remove.append(inst)
    kept = {inst.start for inst, _ in keep + rebuild}
    return _Split(remove, keep, rebuild, [w for w in wants if w.start not in kept])


def doomed(view: NodeView, wants: tuple[Want, ...]) -> list[tuple[int, int]]:
    """(gpu, GI id) of every instance `diff` would destroy or strip of its compute instances:
    the only ones whose processes need to be asked for."""
    out = []
    for gv in view.gpus:
        if not gv.mig:
            continue
        split = _split(gv, [w for w in wants if w.gpu == gv.index])
        out += [(gv.index, i.gi_id) for i in split.remove] + [(gv.index, i.gi_id) for i, _ in split.rebuild]
    return out


def diff(view: NodeView, wants: tuple[Want, ...], force: bool = False) -> list[Step]:
    """Ordered steps from what the node holds to what the plan wants. Pure.

    Per GPU, destroys come before creates (stop the daemon, terminate workers with --force,
    destroy compute instances, then the GPU instance), and creates go largest first. Instances
    running processes other than an MPS server are refused without `force`."""
    steps: list[Step] = []
    refusals: list[str] = []
    prev = view.previous.by_slot() if view.previous else {}
    for gv in view.gpus:
        if not gv.mig:
            continue
        split = _split(gv, [w for w in wants if w.gpu == gv.index])
        down = _destroy_steps(view, gv, split, prev, force, _names(gv.type_name, wants))
        refusals += down.refusals
        steps += down.steps + _create_steps(gv.index, split, down.running, prev)
    if refusals and not force:
        raise Refused(
            "refusing to destroy instances with running processes (" + "; ".join(refusals)
            + "); stop them or pass --force"
        )
    return steps


@dataclass(frozen=True)
class _Teardown:
    """One GPU's destroy steps, the instances they may not touch without --force, and the start
    slots whose daemons still run after them."""

    steps: list[Step]
    refusals: list[str]
    running: frozenset[int]


def _destroy_steps(
    view: NodeView, gv: GpuView, split: _Split, prev: Mapping[tuple[int, int], StateEntry], force: bool,
    names: Mapping[int, str],
) -> _Teardown:
    g = gv.index
    running = {s for gg, s in view.mps if gg == g}
    steps: list[Step] = []
    refusals: list[str] = []
    for inst, keep_gi in [(i, False) for i in split.remove] + [(i, True) for i, _ in split.rebuild]:
        name = names.get(inst.profile_id, f"profile{inst.profile_id}")
        base = dict(gpu=g, start=inst.start, profile=name, profile_id=inst.profile_id, gi_id=inst.gi_id)
        if inst.start in running:
            steps.append(Step(Op.STOP_MPS, **base))
            running.discard(inst.start)
        pids = _workers(view, g, inst.gi_id)
        if pids:
            if not force:
                refusals.append(f"gpu {g} {name}@{inst.start} runs processes {', '.join(map(str, pids))}")
            steps.append(Step(Op.KILL, **base, pids=pids))
        steps += [Step(Op.DESTROY_CI, **base, ci_id=ci.ci_id, slices=ci.slices) for ci in inst.cis]
        if not keep_gi:
            steps.append(Step(Op.DESTROY_GI, **base))
    for s in sorted(running - {i.start for i in gv.instances}):
        # A daemon whose instance is gone (destroyed behind the agent's back).
        e = prev.get((g, s))
        steps.append(Step(Op.STOP_MPS, g, s, e.profile if e else "?", e.profile_id if e else -1, note="stale"))
        running.discard(s)
    for inst, w in split.keep:
        e = prev.get((g, inst.start))
        if inst.start in running and e is not None and e.mig_uuid != inst.uuid:
            steps.append(Step(Op.STOP_MPS, g, inst.start, w.profile.name, w.profile.profile_id,
                              gi_id=inst.gi_id, note="restart: instance changed"))
            running.discard(inst.start)
    return _Teardown(steps, refusals, frozenset(running))


def _create_steps(
    g: int, split: _Split, running: frozenset[int], prev: Mapping[tuple[int, int], StateEntry],
) -> list[Step]:
    """Largest first: create what is missing, rebuild compute instances, start missing daemons,
    and record changed bindings of kept instances."""
    steps: list[Step] = []
    todo = [(w, None) for w in split.add] + [(w, inst) for inst, w in split.rebuild + split.keep]
    for w, inst in sorted(todo, key=lambda t: (-t[0].profile.size, t[0].start)):
        base = dict(gpu=g, start=w.start, profile=w.profile.name, profile_id=w.profile.profile_id)
        if inst is None:
            steps.append(Step(Op.CREATE_GI, **base))
        if inst is None or not inst.whole_ci:
            steps.append(Step(Op.CREATE_CI, **base, slices=w.profile.size))
        if w.start not in running:
            steps.append(Step(Op.START_MPS, **base))
        e = prev.get((g, w.start))
        if inst is not None and (e is None or (e.model, e.batch, e.procs) != w.binding):
            steps.append(Step(Op.BIND, **base, note=f"{w.model} b{w.batch} x{w.procs}"))
    return steps


def _names(type_name: str, wants: tuple[Want, ...]) -> dict[int, str]:
    """Profile id -> name for one GPU: its type's table, else what the plan calls it."""
    return {**{w.profile.profile_id: w.profile.name for w in wants}, **profile_names(type_name)}


def profile_names(type_name: str) -> dict[int, str]:
    """Profile id -> profile name of a GPU type; empty for a type the table does not know."""
    try:
        return {p.profile_id: p.name for p in gpu_type(type_name).all_profiles}
    except ParvaError:
        return {}


_TEARDOWN = frozenset({Op.STOP_MPS, Op.KILL, Op.DESTROY_CI, Op.DESTROY_GI})


def bridge_steps(b: Want) -> tuple[list[Step], list[Step]]:
    """The steps that create a bridge instance (a temporary copy of a segment on a spare GPU,
    with its MPS daemon) and those that remove it again; the executor knows its ids by then."""
    base = dict(gpu=b.gpu, start=b.start, profile=b.profile.name, profile_id=b.profile.profile_id,
                note=f"bridge for {b.model}")
    create = [Step(Op.CREATE_GI, **base), Step(Op.CREATE_CI, **base, slices=b.profile.size), Step(Op.START_MPS, **base)]
    remove = [Step(Op.STOP_MPS, **base), Step(Op.DESTROY_CI, **base), Step(Op.DESTROY_GI, **base)]
    return create, remove


def in_transition_order(steps: list[Step], order: Sequence[tuple[str, int, int]],
                        bridges: Sequence[Want] = ()) -> list[Step]:
    """`diff`'s steps in the order of a make-before-break transition. Pure.

    `order` lists the node's ("create" | "remove" | "bridge" | "unbridge", gpu, start) in
    transition order; `bridges` are the instances its "bridge" entries create on spare GPUs
    (and its "unbridge" entries remove). Each instance's own teardown or creation steps stay
    together and in `diff`'s order; teardowns the transition does not name (instances the
    running plan did not hold) go first, then the named groups in order, then the rest (daemons
    and bindings of kept instances)."""
    groups: dict[tuple[str, int, int], list[Step]] = {}
    for s in steps:
        kind = "remove" if s.op in _TEARDOWN else "create"
        groups.setdefault((kind, s.gpu, s.start), []).append(s)
    for b in bridges:
        groups[("bridge", b.gpu, b.start)], groups[("unbridge", b.gpu, b.start)] = bridge_steps(b)
    named = [k for k in dict.fromkeys(order) if k in groups]
    rest = [k for k in groups if k not in set(named) and k[0] in ("create", "remove")]
    first = [k for k in rest if k[0] == "remove"]
    last = [k for k in rest if k[0] == "create"]
    return [s for k in first + named + last for s in groups[k]]
