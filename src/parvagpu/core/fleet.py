"""The fleet a plan runs on: named nodes, each with GPUs of one type, a price per GPU-hour, and the
MIG slots (or whole GPUs) others already hold there.

GPUs are numbered globally in node order: node k's GPU i is `offset(k) + i`. Pure values; the
fleet file is read in `inputs/fleet.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import GpuType, gpu_type


@dataclass(frozen=True)
class Reservation:
    """Slots of one GPU of a node that the plan must leave alone: an instance of `size` compute
    slices at memory slot `start`, or the whole GPU when both are None."""

    gpu: int
    start: int | None = None
    size: int | None = None

    @property
    def whole(self) -> bool:
        return self.start is None


@dataclass(frozen=True)
class FleetNode:
    name: str
    gpu: str  # GPU type name, as in the catalog
    gpus: int
    price_per_gpu_hour: float = 1.0
    reserved: tuple[Reservation, ...] = ()

    @property
    def type(self) -> GpuType:
        return gpu_type(self.gpu)


@dataclass(frozen=True)
class Fleet:
    nodes: tuple[FleetNode, ...]

    def __post_init__(self) -> None:
        if not self.nodes:
            raise ParvaError("a fleet needs at least one node")
        seen: set[str] = set()
        for n in self.nodes:
            if n.name in seen:
                raise ParvaError(f"fleet node {n.name!r} is listed twice")
            seen.add(n.name)
            _check_node(n)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, at = [], 0
        for n in self.nodes:
            out.append(at)
            at += n.gpus
        return tuple(out)

    @property
    def total_gpus(self) -> int:
        return sum(n.gpus for n in self.nodes)

    @cached_property
    def _owner(self) -> tuple[int, ...]:
        return tuple(k for k, n in enumerate(self.nodes) for _ in range(n.gpus))

    def node_of(self, gpu: int) -> int:
        if not 0 <= gpu < len(self._owner):
            raise ParvaError(f"GPU {gpu} is not in the fleet ({self.total_gpus} GPUs)")
        return self._owner[gpu]

    def local_gpu(self, gpu: int) -> int:
        return gpu - self.offsets[self.node_of(gpu)]

    def node(self, gpu: int) -> FleetNode:
        return self.nodes[self.node_of(gpu)]

    def gpu_index(self, node: int, local: int) -> int:
        return self.offsets[node] + local

    @property
    def types(self) -> tuple[str, ...]:
        """The GPU types of the fleet, in first-seen node order."""
        return tuple(dict.fromkeys(n.gpu for n in self.nodes))


def reserved_slots(node: FleetNode, local: int) -> tuple[int, int]:
    """(memory-slice mask, compute slices) the reservations hold on GPU `local` of `node`."""
    t = node.type
    mask = compute = 0
    for r in node.reserved:
        if r.gpu != local:
            continue
        if r.whole:
            return (1 << t.memory_slices) - 1, t.compute_slices
        mask |= t.mask(r.size, r.start)
        compute += r.size
    return mask, compute


def _check_node(n: FleetNode) -> None:
    """GPU count and price in range; every reservation a legal, non-overlapping placement."""
    t = n.type
    if n.gpus < 1:
        raise ParvaError(f"fleet node {n.name}: gpus must be >= 1, got {n.gpus}")
    if not n.price_per_gpu_hour >= 0:
        raise ParvaError(f"fleet node {n.name}: price_per_gpu_hour must be >= 0, got {n.price_per_gpu_hour}")
    used: dict[int, int] = {}
    for r in n.reserved:
        where = f"fleet node {n.name}: reserved gpu {r.gpu}"
        if not 0 <= r.gpu < n.gpus:
            raise ParvaError(f"{where}: the node has GPUs 0..{n.gpus - 1}")
        if (r.start is None) != (r.size is None):
            raise ParvaError(f"{where}: give both start and size, or neither for the whole GPU")
        mask = (1 << t.memory_slices) - 1
        if not r.whole:
            if not t.legal(r.size, r.start):
                raise ParvaError(f"{where}: a {r.size}g instance cannot start at {r.start} on {t.name}")
            mask = t.mask(r.size, r.start)
        if used.get(r.gpu, 0) & mask:
            raise ParvaError(f"{where}: overlaps another reservation")
        used[r.gpu] = used.get(r.gpu, 0) | mask
