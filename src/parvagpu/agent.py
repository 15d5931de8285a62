"""Node agent: make one node's GPUs hold its part of a plan, touching only what differs.

Decide, then act. `read_node` asks the hardware what it holds; `diff` (pure) turns that and the
plan's wants into ordered steps; `Executor` runs the steps through a `MigBackend` and an
`MpsControl`, keeping an undo log so that any failure rolls the node back to the layout it found.
On success the node state file maps every segment to its MIG UUID and MPS directories, which the
serving layer reads. Instances are identified by (GPU, start slot, profile): one that both the
node and the plan have is kept, with its compute instance, daemon and workers.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from .formats import atomic_write
from .gpus import MigProfile, gpu_type
from .mig.base import ComputeInstance, GpuInstance, GpuProcess, MigBackend
from .model import DeploymentMap, ParvaError
from .mps import MpsControl

STATE_VERSION = 1
STATE_ENV = "PARVAGPU_STATE_DIR"
DEFAULT_STATE_ROOT = "/tmp/parvagpu"


def default_state_root() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_ROOT)


@dataclass(frozen=True)
class NodeDirs:
    """Where one node keeps its state file and the per-instance MPS directories."""

    root: Path
    node: int

    @property
    def base(self) -> Path:
        return Path(self.root) / f"node{self.node}"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    def pipe_dir(self, gpu: int, start: int) -> str:
        return str(self.base / f"nvidia-mps-{gpu}-{start}")

    def log_dir(self, gpu: int, start: int) -> str:
        return str(self.base / f"nvidia-log-{gpu}-{start}")


# ---------------------------------------------------------------------------------------------
# What the plan wants and what the node holds


@dataclass(frozen=True)
class Want:
    """One segment of the plan on this node: an instance at an exact slot, and what it serves."""

    gpu: int  # local to the node
    start: int
    profile: MigProfile
    model: str
    batch: int
    procs: int

    @property
    def binding(self) -> tuple[str, int, int]:
        return (self.model, self.batch, self.procs)


def plan_nodes(plan: DeploymentMap) -> list[int]:
    return sorted({plan.node_of(s.gpu) for s in plan.segments})


def node_wants(plan: DeploymentMap, node: int) -> tuple[Want, ...]:
    """The node's segments, checked for legal, non-overlapping placements before anything runs."""
    nodes = plan_nodes(plan)
    if node not in nodes:
        shown = f"{nodes[0]}..{nodes[-1]}" if nodes else "none"
        raise ParvaError(f"the plan has no node {node} (its nodes: {shown})")
    gpu = gpu_type(plan.gpu_type)
    wants: list[Want] = []
    used: dict[int, int] = {}
    compute: dict[int, int] = {}
    for s in sorted(plan.segments, key=lambda s: (s.gpu, s.start)):
        if plan.node_of(s.gpu) != node:
            continue
        local = plan.local_gpu(s.gpu)
        where = f"node {node} gpu {local}: {s.model}"
        if not gpu.has_size(s.size):
            raise ParvaError(f"{where}: {gpu.name} has no {s.size}g instance")
        prof = gpu.profile(s.size)
        if s.start not in prof.starts:
            raise ParvaError(f"{where}: {prof.name} cannot start at slot {s.start} (legal: {list(prof.starts)})")
        mask = gpu.mask(s.size, s.start)
        if used.get(local, 0) & mask:
            raise ParvaError(f"{where}: {prof.name}@{s.start} overlaps another instance of the plan")
        used[local] = used.get(local, 0) | mask
        compute[local] = compute.get(local, 0) + s.size
        if compute[local] > gpu.compute_slices:
            raise ParvaError(f"node {node} gpu {local}: the plan uses more than {gpu.compute_slices} compute slices")
        t = s.segment.triplet
        wants.append(Want(local, s.start, prof, s.model, t.batch, t.procs))
    return tuple(wants)


@dataclass(frozen=True)
class GpuView:
    index: int
    type_name: str
    mig: bool
    mig_pending: bool
    instances: tuple[GpuInstance, ...] = ()


@dataclass(frozen=True)
class StateEntry:
    """One segment of a node state file."""

    model: str
    gpu: int
    start: int
    size: int
    profile: str
    profile_id: int
    batch: int
    procs: int
    gi_id: int
    ci_id: int
    mig_uuid: str
    mps_pipe_dir: str
    mps_log_dir: str


@dataclass(frozen=True)
class NodeState:
    node: int
    gpu_type: str
    gpus_per_node: int
    segments: tuple[StateEntry, ...]

    def by_slot(self) -> dict[tuple[int, int], StateEntry]:
        return {(e.gpu, e.start): e for e in self.segments}


@dataclass(frozen=True)
class NodeView:
    """What the node holds: managed GPUs, live MPS daemons by (gpu, start), processes on the
    instances that may be destroyed, and the last state file (None when there is none)."""

    gpus: tuple[GpuView, ...]
    mps: frozenset[tuple[int, int]] = frozenset()
    processes: Mapping[tuple[int, int], tuple[GpuProcess, ...]] = field(default_factory=dict)
    previous: NodeState | None = None

    def gpu(self, index: int) -> GpuView | None:
        return next((g for g in self.gpus if g.index == index), None)


def read_node(
    backend: MigBackend, mps: MpsControl, dirs: NodeDirs, limit: int | None = None,
    previous: NodeState | None = None,
) -> NodeView:
    """Ask the hardware: GPU types and MIG modes, instances on MIG GPUs, live daemons."""
    count = backend.gpu_count()
    gpus = []
    for i in range(count if limit is None else min(count, limit)):
        cur, pending = backend.mig_mode(i)
        insts = backend.list_instances(i) if cur else ()
        gpus.append(GpuView(i, backend.gpu_type(i), cur, pending, insts))
    slots = {(g.index, inst.start) for g in gpus for inst in g.instances}
    if previous is not None:
        slots |= {(e.gpu, e.start) for e in previous.segments}
    live = frozenset(s for s in sorted(slots) if mps.is_running(dirs.pipe_dir(*s)))
    return NodeView(tuple(gpus), live, {}, previous)


def with_wanted_slots(view: NodeView, mps: MpsControl, dirs: NodeDirs, wants: Iterable[Want]) -> NodeView:
    """Also look for daemons on the slots the plan wants (a stale daemon must be stopped first)."""
    extra = {(w.gpu, w.start) for w in wants} - {(g.index, i.start) for g in view.gpus for i in g.instances}
    if view.previous is not None:
        extra -= {(e.gpu, e.start) for e in view.previous.segments}
    live = {s for s in sorted(extra) if mps.is_running(dirs.pipe_dir(*s))}
    return NodeView(view.gpus, view.mps | live, view.processes, view.previous)


# ---------------------------------------------------------------------------------------------
# Steps


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
        if self.op is Op.DESTROY_CI:
            return head + f"destroy compute instance {self.ci_id} of {inst} (GI {self.gi_id})"
        if self.op is Op.DESTROY_GI:
            return head + f"destroy GPU instance {inst} (GI {self.gi_id})"
        if self.op is Op.CREATE_GI:
            return head + f"create GPU instance {self.profile} (profile {self.profile_id}) at start {self.start}"
        if self.op is Op.CREATE_CI:
            unit = "slice" if self.slices == 1 else "slices"
            return head + f"create compute instance ({self.slices} compute {unit}) in {inst}"
        if self.op is Op.START_MPS:
            where = f" (pipe {dirs.pipe_dir(self.gpu, self.start)})" if dirs else ""
            return head + f"start MPS daemon for {inst}{where}"
        return head + f"bind {inst} to {self.note} (instance kept)"


class Refused(ParvaError):
    """Applying would destroy an instance that runs processes, and --force was not given."""


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


def _split(gv: GpuView, wants: list[Want]):
    """Per GPU: instances to remove, kept instances (whole CI or to rebuild), wants to create."""
    by_start = {w.start: w for w in wants}
    remove, keep, rebuild = [], [], []
    for inst in gv.instances:
        w = by_start.get(inst.start)
        if w is not None and w.profile.profile_id == inst.profile_id:
            (keep if inst.whole_ci else rebuild).append((inst, w))
        else:
            remove.append(inst)
    kept = {inst.start for inst, _ in keep + rebuild}
    add = [w for w in wants if w.start not in kept]
    return remove, keep, rebuild, add


def doomed(view: NodeView, wants: tuple[Want, ...]) -> list[tuple[int, int]]:
    """(gpu, GI id) of every instance `diff` would destroy or strip of its compute instances:
    the only ones whose processes need to be asked for."""
    out = []
    for gv in view.gpus:
        if not gv.mig:
            continue
        remove, _keep, rebuild, _add = _split(gv, [w for w in wants if w.gpu == gv.index])
        out += [(gv.index, i.gi_id) for i in remove] + [(gv.index, i.gi_id) for i, _ in rebuild]
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
        g = gv.index
        remove, keep, rebuild, add = _split(gv, [w for w in wants if w.gpu == g])
        live = {s for gg, s in view.mps if gg == g}
        profile_name = {w.profile.profile_id: w.profile.name for w in wants}
        names = _profile_names(gv.type_name)
        destroy: list[Step] = []
        create: list[Step] = []

        def tear(inst: GpuInstance, keep_gi: bool) -> None:
            name = names.get(inst.profile_id, profile_name.get(inst.profile_id, f"profile{inst.profile_id}"))
            base = dict(gpu=g, start=inst.start, profile=name, profile_id=inst.profile_id, gi_id=inst.gi_id)
            if inst.start in live:
                destroy.append(Step(Op.STOP_MPS, **base))
                live.discard(inst.start)
            pids = _workers(view, g, inst.gi_id)
            if pids:
                if not force:
                    refusals.append(f"gpu {g} {name}@{inst.start} runs processes {', '.join(map(str, pids))}")
                destroy.append(Step(Op.KILL, **base, pids=pids))
            for ci in inst.cis:
                destroy.append(Step(Op.DESTROY_CI, **base, ci_id=ci.ci_id, slices=ci.slices))
            if not keep_gi:
                destroy.append(Step(Op.DESTROY_GI, **base))

        for inst in remove:
            tear(inst, keep_gi=False)
        for inst, _w in rebuild:
            tear(inst, keep_gi=True)
        held = {i.start for i in gv.instances}
        for s in sorted(live - held):
            # A daemon whose instance is gone (destroyed behind the agent's back).
            e = prev.get((g, s))
            destroy.append(Step(Op.STOP_MPS, g, s, e.profile if e else "?", e.profile_id if e else -1, note="stale"))
            live.discard(s)
        for inst, w in keep:
            e = prev.get((g, inst.start))
            if inst.start in live and e is not None and e.mig_uuid != inst.uuid:
                destroy.append(Step(Op.STOP_MPS, g, inst.start, w.profile.name, w.profile.profile_id,
                                    gi_id=inst.gi_id, note="restart: instance changed"))
                live.discard(inst.start)

        todo = [(w, None) for w in add] + [(w, inst) for inst, w in rebuild] + [(w, inst) for inst, w in keep]
        for w, inst in sorted(todo, key=lambda t: (-t[0].profile.size, t[0].start)):
            base = dict(gpu=g, start=w.start, profile=w.profile.name, profile_id=w.profile.profile_id)
            if inst is None:
                create.append(Step(Op.CREATE_GI, **base))
            if inst is None or not inst.whole_ci:
                create.append(Step(Op.CREATE_CI, **base, slices=w.profile.size))
            if w.start not in live:
                create.append(Step(Op.START_MPS, **base))
            e = prev.get((g, w.start))
            if inst is not None and (e is None or (e.model, e.batch, e.procs) != w.binding):
                create.append(Step(Op.BIND, **base, note=f"{w.model} b{w.batch} x{w.procs}"))
        steps += destroy + create
    if refusals and not force:
        raise Refused(
            "refusing to destroy instances with running processes (" + "; ".join(refusals)
            + "); stop them or pass --force"
        )
    return steps


def _profile_names(type_name: str) -> dict[int, str]:
    try:
        return {p.profile_id: p.name for p in gpu_type(type_name).profiles}
    except ParvaError:
        return {}


# ---------------------------------------------------------------------------------------------
# Executing steps with an undo log


@dataclass
class _Live:
    profile_id: int
    gi_id: int
    cis: list[ComputeInstance]

    @property
    def uuid(self) -> str | None:
        return self.cis[0].uuid if self.cis else None


class ApplyFailed(ParvaError):
    """A step failed; the message says which, and what the rollback did."""


class Executor:
    """Runs steps against the node and undoes them in reverse order if one fails."""

    def __init__(
        self, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, view: NodeView,
        kill: Callable[[tuple[int, ...]], None] | None = None,
    ) -> None:
        self.backend = backend
        self.mps = mps
        self.dirs = dirs
        self.kill = kill
        self.live: dict[tuple[int, int], _Live] = {
            (g.index, i.start): _Live(i.profile_id, i.gi_id, list(i.cis)) for g in view.gpus for i in g.instances
        }
        self.undo: list[tuple] = []
        self.killed: list[int] = []
        self.done = 0

    def run(self, steps: list[Step]) -> None:
        for i, step in enumerate(steps):
            try:
                self._do(step)
            except BaseException as exc:
                errors = self.rollback()
                if not isinstance(exc, Exception):
                    raise
                msg = f"step {i + 1}/{len(steps)} failed ({step.describe()}): {exc}"
                if errors:
                    msg += f"; rollback incomplete ({'; '.join(errors)}): check with `parvagpu status`"
                else:
                    msg += f"; rolled back {i} step(s), the node is as it was"
                if self.killed:
                    msg += f" (terminated processes {', '.join(map(str, self.killed))} stay stopped)"
                raise ApplyFailed(msg) from None
            self.done += 1

    def _pipe(self, gpu: int, start: int) -> tuple[str, str]:
        return self.dirs.pipe_dir(gpu, start), self.dirs.log_dir(gpu, start)

    def _do(self, s: Step) -> None:
        key = (s.gpu, s.start)
        b = self.backend
        if s.op is Op.CREATE_GI:
            gi = b.create_gpu_instance(s.gpu, s.profile_id, s.start)
            self.live[key] = _Live(s.profile_id, gi, [])
            self.undo.append(("destroy_gi", key))
        elif s.op is Op.CREATE_CI:
            self._create_ci(key, s.slices, record=True)
        elif s.op is Op.START_MPS:
            uuid = self.live[key].uuid
            if uuid is None:
                raise ParvaError(f"gpu {s.gpu} {s.profile}@{s.start} has no MIG device to start MPS on")
            try:
                self.mps.start(*self._pipe(*key), uuid)
            except BaseException:
                if self.mps.is_running(self._pipe(*key)[0]):
                    self.mps.stop(*self._pipe(*key))
                raise
            self.undo.append(("stop_mps", key))
        elif s.op is Op.STOP_MPS:
            inst = self.live.get(key)
            self.mps.stop(*self._pipe(*key))
            if inst is not None:  # a stale daemon (its instance gone) is not restarted
                self.undo.append(("start_mps", key, inst.uuid))
        elif s.op is Op.KILL:
            if self.kill is None:
                raise ParvaError("this backend cannot terminate processes")
            self.kill(s.pids)
            self.killed += list(s.pids)
        elif s.op is Op.DESTROY_CI:
            inst = self.live[key]
            b.destroy_compute_instance(s.gpu, inst.gi_id, s.ci_id)
            ci = next(c for c in inst.cis if c.ci_id == s.ci_id)
            inst.cis.remove(ci)
            self.undo.append(("create_ci", key, ci.slices))
        elif s.op is Op.DESTROY_GI:
            inst = self.live[key]
            b.destroy_gpu_instance(s.gpu, inst.gi_id)
            del self.live[key]
            self.undo.append(("create_gi", key, inst.profile_id))
        # Op.BIND changes only the state file.

    def _create_ci(self, key: tuple[int, int], slices: int | None, record: bool = False) -> None:
        inst = self.live[key]
        ci = self.backend.create_compute_instance(key[0], inst.gi_id, slices)
        inst.cis.append(ComputeInstance(ci, slices or 0, None))
        if record:  # before asking for the UUID, so a failure there still undoes the CI
            self.undo.append(("destroy_ci", key))
        uuid = self.backend.mig_uuid(key[0], inst.gi_id, ci)
        inst.cis[-1] = ComputeInstance(ci, slices or 0, uuid)

    def rollback(self) -> list[str]:
        """Undo every step done so far, newest first; best effort, returns what failed."""
        errors = []
        while self.undo:
            entry = self.undo.pop()
            op, key = entry[0], entry[1]
            try:
                if op == "destroy_gi":
                    self.backend.destroy_gpu_instance(key[0], self.live[key].gi_id)
                    del self.live[key]
                elif op == "destroy_ci":
                    inst = self.live[key]
                    ci = inst.cis[-1]
                    self.backend.destroy_compute_instance(key[0], inst.gi_id, ci.ci_id)
                    inst.cis.pop()
                elif op == "stop_mps":
                    self.mps.stop(*self._pipe(*key))
                elif op == "start_mps":
                    inst = self.live.get(key)
                    uuid = inst.uuid if inst is not None and inst.uuid else entry[2]
                    self.mps.start(*self._pipe(*key), uuid)
                elif op == "create_ci":
                    self._create_ci(key, entry[2])
                elif op == "create_gi":
                    gi = self.backend.create_gpu_instance(key[0], entry[2], key[1])
                    self.live[key] = _Live(entry[2], gi, [])
            except Exception as exc:  # keep undoing the rest
                errors.append(f"undo {op} gpu {key[0]} start {key[1]}: {exc}")
        return errors


# ---------------------------------------------------------------------------------------------
# Node state file


def state_doc(
    node: int, gpu_type_name: str, gpus_per_node: int, wants: tuple[Want, ...], live: Mapping[tuple[int, int], _Live],
    dirs: NodeDirs,
) -> dict[str, Any]:
    segs = []
    for w in sorted(wants, key=lambda w: (w.gpu, w.start)):
        inst = live[(w.gpu, w.start)]
        segs.append({
            "model": w.model, "gpu": w.gpu, "start": w.start, "size": w.profile.size, "profile": w.profile.name,
            "profile_id": w.profile.profile_id, "batch": w.batch, "procs": w.procs, "gi_id": inst.gi_id,
            "ci_id": inst.cis[0].ci_id, "mig_uuid": inst.uuid,
            "mps_pipe_dir": dirs.pipe_dir(w.gpu, w.start), "mps_log_dir": dirs.log_dir(w.gpu, w.start),
        })
    return {"version": STATE_VERSION, "node": node, "gpu_type": gpu_type_name, "gpus_per_node": gpus_per_node,
            "segments": segs}


def state_from_dict(data: Any, source: str) -> NodeState:
    """Strict reader of a node state file."""
    keys = {"version", "node", "gpu_type", "gpus_per_node", "segments"}
    seg_keys = {f for f in StateEntry.__dataclass_fields__}
    if not isinstance(data, dict) or set(data) != keys:
        raise ParvaError(f"{source}: not a node state file (expected keys {', '.join(sorted(keys))})")
    if data["version"] != STATE_VERSION:
        raise ParvaError(f"{source}: unsupported node state version {data['version']!r}")
    segs = []
    for i, e in enumerate(data["segments"] if isinstance(data["segments"], list) else [None]):
        if not isinstance(e, dict) or set(e) != seg_keys:
            raise ParvaError(f"{source}: segment {i} is malformed")
        try:
            segs.append(StateEntry(**e))
        except TypeError as exc:
            raise ParvaError(f"{source}: segment {i}: {exc}") from None
    return NodeState(int(data["node"]), str(data["gpu_type"]), int(data["gpus_per_node"]), tuple(segs))


def read_state(path: Path) -> NodeState | None:
    """The node state file, or None if there is none yet."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ParvaError(f"{path}: cannot read node state: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParvaError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return state_from_dict(data, str(path))


def _write_state(path: Path, doc: dict[str, Any]) -> bool:
    """Write only when the content changes, so a no-op apply leaves the file alone."""
    text = json.dumps(doc, indent=2) + "\n"
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParvaError(f"cannot create {Path(path).parent}: {exc.strerror or exc}") from None
    atomic_write(Path(path), text)
    try:
        Path(path).chmod(0o644)  # the serving layer may run as another user
    except OSError:
        pass
    return True


# ---------------------------------------------------------------------------------------------
# Entry points


@dataclass
class ApplyResult:
    steps: list[Step]
    executed: bool
    state_written: bool = False
    state_path: Path | None = None

    def counts(self) -> Counter:
        return Counter(s.op.value for s in self.steps)


def _load_previous(dirs: NodeDirs, node: int, type_name: str | None) -> NodeState | None:
    prev = read_state(dirs.state_file)
    if prev is None:
        return None
    if prev.node != node:
        raise ParvaError(f"{dirs.state_file} belongs to node {prev.node}, not node {node}")
    if type_name is not None and prev.gpu_type != type_name:
        raise ParvaError(f"{dirs.state_file} is for {prev.gpu_type}, the plan is for {type_name}")
    return prev


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
            raise ParvaError(f"node {dirs.node} is being changed by another parvagpu process ({dirs.base / '.lock'})") from None
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
    limit: int | None, force: bool, node: int,
) -> tuple[NodeView, list[Step]]:
    prev = _load_previous(dirs, node, type_name)
    view = read_node(backend, mps, dirs, limit, prev)
    if type_name is not None:
        check_node(view, wants, type_name)
        # GPUs of another type are not the plan's to manage.
        view = NodeView(tuple(g for g in view.gpus if g.type_name == type_name), view.mps, {}, view.previous)
    view = with_wanted_slots(view, mps, dirs, wants)
    procs = {(g, gi): backend.running_processes(g, gi) for g, gi in doomed(view, wants)}
    view = NodeView(view.gpus, view.mps, procs, view.previous)
    steps = diff(view, wants, force)
    check_placements(backend, steps, wants)
    return view, steps


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
            raise ParvaError(
                f"gpu {s.gpu} does not offer {s.profile} at start {s.start} (it offers starts {starts}); "
                "the GPU table and the hardware disagree"
            )


def apply_plan(
    plan: DeploymentMap, node: int, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, *,
    force: bool = False, dry_run: bool = False, kill: Callable[[tuple[int, ...]], None] | None = None,
) -> ApplyResult:
    """Make `node` hold its part of `plan`. Raises ParvaError (nothing changed, or rolled back)."""
    wants = node_wants(plan, node)
    if dry_run:
        _view, steps = _prepare(backend, mps, dirs, wants, plan.gpu_type, plan.gpus_per_node, force, node)
        return ApplyResult(steps, False, False, dirs.state_file)
    with node_lock(dirs):
        view, steps = _prepare(backend, mps, dirs, wants, plan.gpu_type, plan.gpus_per_node, force, node)
        ex = Executor(backend, mps, dirs, view, kill)
        try:
            ex.run(steps)
        except ApplyFailed:
            _refresh_previous(view.previous, ex.live, dirs)
            raise
        doc = state_doc(node, plan.gpu_type, plan.gpus_per_node, wants, ex.live, dirs)
        written = _write_state(dirs.state_file, doc)
    return ApplyResult(steps, True, written, dirs.state_file)


def _refresh_previous(prev: NodeState | None, live: Mapping[tuple[int, int], _Live], dirs: NodeDirs) -> None:
    """After a rollback, instances the agent re-created have new ids and UUIDs: keep the old
    state file truthful about them."""
    if prev is None:
        return
    segs = []
    for e in prev.segments:
        inst = live.get((e.gpu, e.start))
        if inst is not None and inst.profile_id == e.profile_id and inst.cis:
            e = StateEntry(**{**e.__dict__, "gi_id": inst.gi_id, "ci_id": inst.cis[0].ci_id, "mig_uuid": inst.uuid})
        segs.append(e.__dict__)
    doc = {"version": STATE_VERSION, "node": prev.node, "gpu_type": prev.gpu_type,
           "gpus_per_node": prev.gpus_per_node, "segments": segs}
    try:
        _write_state(dirs.state_file, doc)
    except ParvaError:
        pass


def teardown(
    node: int, backend: MigBackend, mps: MpsControl, dirs: NodeDirs, *,
    force: bool = False, dry_run: bool = False, kill: Callable[[tuple[int, ...]], None] | None = None,
) -> ApplyResult:
    """Stop every daemon and destroy every instance on the node's GPUs (MIG mode stays on)."""
    def prepare() -> tuple[NodeView, list[Step]]:
        prev = _load_previous(dirs, node, None)
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
    prev = _load_previous(dirs, node, plan.gpu_type if plan is not None else None)
    limit = plan.gpus_per_node if plan is not None else (prev.gpus_per_node if prev else None)
    view = read_node(backend, mps, dirs, limit, prev)
    procs = {(g.index, i.gi_id): backend.running_processes(g.index, i.gi_id)
             for g in view.gpus for i in g.instances if i.cis}
    drift = None
    if plan is not None:
        wants = node_wants(plan, node)
        check_node(view, wants, plan.gpu_type)
        view2 = with_wanted_slots(view, mps, dirs, wants)
        drift = diff(NodeView(view2.gpus, view2.mps, procs, prev), wants, force=True)
        view = view2
    return NodeStatus(view, procs, drift)
