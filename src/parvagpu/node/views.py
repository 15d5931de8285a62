"""What the plan wants of one node and what the node holds: the two inputs of the decision.

`node_wants` reads and checks the node's segments of a plan (pure); `read_node` and
`with_wanted_slots` ask the hardware what it holds. The views are frozen, so `steps.diff` can
decide from them without touching the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from parvagpu.core.gpus import MigProfile, gpu_type
from parvagpu.hardware.mig.base import GpuInstance, GpuProcess, MigBackend
from parvagpu.core.model import DeploymentMap
from parvagpu.core.errors import ParvaError
from parvagpu.hardware.mps import MpsControl
from parvagpu.node.state import NodeDirs, NodeState


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
    gpu = gpu_type(plan.node_gpu_type(node))  # a fleet plan: this node's type
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
