"""Segment Allocator: segment relocation and allocation optimization (ParvaGPU, SC'24).

1. *Relocation*: segments are queued by size and placed largest first (FIFO within a size, models
   in input order), each on the best-fit GPU: the one whose free compute slices minus the segment's
   size is smallest, ties to the lowest index. A new GPU opens only when no used GPU fits.
2. *Allocation optimization*: GPUs are visited from the last to the first; on a lightly used GPU
   (at most 4 of 7 compute slices) every segment is removed, its throughput added to a per-model
   credit, and the credit re-covered with the model's best 2g/1g segments, placed at once by the same
   best-fit rule. A negative credit (surplus from earlier splits) is carried to the model's next
   removed segment. Emptied GPUs drop out of the count.

Unlike the reference implementation, this one tracks real memory-slice occupancy on the GPU type's
placement table, so every placement it returns is legal; a GPU is eligible for a segment only when
the resulting set of instances has a legal placement. Fixes of the reference's defects:

- placements never overlap (the reference records only start-slot labels, e.g. 3g@4 with 1g@6);
- no slot -1: a 2g that finds its preferred starts taken while enough slices are free gets a legal
  start, re-packing the GPU's instances if needed;
- no dropped segments: there is no fixed GPU array, and a model with no admissible 1g or 2g triplet
  keeps its segment in the optimization pass instead of losing it;
- a removed segment is never valued below its own throughput (see `_valuation`);
- the optimization pass starts at the last GPU (the reference reads one past its array);
- used GPUs are numbered contiguously, so no node has holes.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache

from parvagpu.planning.configurator import ModelConfig
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import PlacedSegment, Segment


@dataclass(frozen=True)
class AllocatorPolicy:
    """Knobs of the heuristic, defaulting to the paper's behaviour."""

    # Sizes allowed at most once per GPU: ParvaGPU keeps a 3g at slot 4 and never builds 3g+3g.
    single_instance_sizes: frozenset[int] = frozenset({3})
    # Optimization pass: GPUs using at most this fraction of compute slices are split (4 of 7).
    light_fraction: float = 4 / 7
    optimize: bool = True


@dataclass(frozen=True)
class Allocation:
    segments: tuple[PlacedSegment, ...]
    gpus_before_optimization: int


@lru_cache(maxsize=None)
def _eligible(gpu: GpuType, key: tuple[int, ...], size: int, single: frozenset[int]) -> bool:
    if size in single and size in key:
        return False
    return gpu.realizable(key + (size,))


class _Gpu:
    __slots__ = ("index", "used", "usage", "slots", "sizes")

    def __init__(self, index: int) -> None:
        self.index = index
        self.used = 0  # memory-slice bitmask
        self.usage = 0  # compute slices in use
        self.slots: dict[int, Segment] = {}  # start -> segment
        self.sizes: tuple[int, ...] = ()  # the instances' sizes, sorted: kept with `slots`

    def key(self) -> tuple[int, ...]:
        return self.sizes


class _Cluster:
    """Mutable working state of one allocation run (local to `allocate`, never escapes)."""

    def __init__(self, gpu: GpuType, policy: AllocatorPolicy) -> None:
        self.gpu = gpu
        self.policy = policy
        self.gpus: list[_Gpu] = []
        self.buckets: dict[tuple[int, ...], list[int]] = defaultdict(list)
        # (instance multiset, size) -> eligible: looked up for every bucket at every placement,
        # so kept here rather than hashing the GPU type each time.
        self.eligible: dict[tuple[tuple[int, ...], int], bool] = {}
        self.room: dict[tuple[int, ...], int] = {}  # instance multiset -> compute slices free

    def _unbucket(self, g: _Gpu) -> None:
        lst = self.buckets[g.key()]
        del lst[bisect_left(lst, g.index)]

    def _bucket(self, g: _Gpu) -> None:
        insort(self.buckets[g.key()], g.index)

    def choose(self, size: int) -> _Gpu:
        """Best fit: least free-after-placement, then lowest index; new GPU when none fits."""
        best: tuple[int, int] | None = None
        room = self.room
        for key, members in self.buckets.items():
            if not members:
                continue
            if not self._eligible_key(key, size):
                continue
            free = room.get(key)
            if free is None:
                free = room[key] = self.gpu.compute_slices - sum(key)
            cand = (free - size, members[0])
            if best is None or cand < best:
                best = cand
        if best is not None:
            return self.gpus[best[1]]
        g = _Gpu(len(self.gpus))
        self.gpus.append(g)
        self._bucket(g)
        return g

    def place(self, seg: Segment, last: _Gpu | None = None) -> _Gpu:
        """Place `seg` on `choose`'s GPU and return it. `last`: the GPU the previous placement took,
        when that was of the same size and nothing else changed since: it stays the best fit while
        it can take one more (its free slices fell, no other GPU's changed), so it is not searched."""
        size = seg.size
        g = last if last is not None and self._eligible_key(last.sizes, size) else self.choose(size)
        self._unbucket(g)
        start = self.gpu.best_start(size, g.used)
        if start is None:
            self._repack(g, seg)
        else:
            g.slots[start] = seg
            g.used |= self.gpu.mask(size, start)
        g.sizes = tuple(sorted(g.sizes + (size,)))
        g.usage += size
        self._bucket(g)
        return g

    def _eligible_key(self, key: tuple[int, ...], size: int) -> bool:
        ok = self.eligible.get((key, size))
        if ok is None:
            ok = self.eligible[(key, size)] = _eligible(self.gpu, key, size, self.policy.single_instance_sizes)
        return ok

    def _repack(self, g: _Gpu, seg: Segment) -> None:
        """Give every instance of the GPU a fresh legal start (planning only: nothing runs yet)."""
        existing = sorted(g.slots.items())
        layout = self.gpu.pack(g.key() + (seg.size,))
        assert layout is not None, "eligibility guarantees a legal layout"
        pool: dict[int, list[Segment]] = defaultdict(list)
        for _, s in existing:
            pool[s.size].append(s)
        pool[seg.size].append(seg)
        g.slots, g.used = {}, 0
        for size, start in sorted(layout, key=lambda p: p[1]):
            g.slots[start] = pool[size].pop(0)
            g.used |= self.gpu.mask(size, start)

    def remove(self, g: _Gpu, start: int) -> Segment:
        self._unbucket(g)
        seg = g.slots.pop(start)
        sizes = list(g.sizes)
        sizes.remove(seg.size)
        g.sizes = tuple(sizes)
        g.used &= ~self.gpu.mask(seg.size, start)
        g.usage -= seg.size
        self._bucket(g)
        return seg

    def used_count(self) -> int:
        return sum(1 for g in self.gpus if g.slots)


def _valuation(seg: Segment, cfg: ModelConfig) -> float:
    """Credit for a removed segment.

    The reference values a segment by its size: the optimal triplet's throughput when it has the
    optimal size, else the last triplet's. That overvalues some split segments (more capacity
    re-added, harmless, and needed to reproduce the reference maps) but undervalues others (e.g. a
    2g piece of a model whose last segment is 1g), which can leave a model short of its rate.
    Taking the larger of the two keeps the reference's results and never undercounts."""
    by_size = cfg.optimal.throughput if seg.size == cfg.optimal.size else cfg.last.throughput
    return max(seg.throughput, by_size)


def _split(
    credit: float, t1: float | None, t2: float | None, ratio: float = 2.0
) -> tuple[int, int]:
    """How many (larger, smaller) segments re-cover `credit`: the reference's rule, never negative.

    `ratio` is the larger size over the smaller (2g / 1g on A100): the larger is preferred when it
    is more efficient per compute slice."""
    if credit <= 0:
        return 0, 0
    if t2 is None:
        return 0, math.ceil(credit / t1)
    if t1 is None:
        return math.ceil(credit / t2), 0
    if t2 / ratio > t1:
        k2 = math.floor(credit / t2)
        return k2, max(0, math.ceil((credit - k2 * t2) / t1))
    return 0, math.ceil(credit / t1)


def allocate(
    configs: tuple[ModelConfig, ...], gpu: GpuType, policy: AllocatorPolicy = AllocatorPolicy()
) -> Allocation:
    """Place every configured segment; returns legal placements on contiguously numbered GPUs."""
    cluster = _Cluster(gpu, policy)
    _relocate(cluster, configs)
    before = cluster.used_count()
    if policy.optimize and len(gpu.sizes) >= 2:
        _optimize(cluster, configs)
    return Allocation(_numbered(cluster), before)


def _relocate(cluster: _Cluster, configs: tuple[ModelConfig, ...]) -> None:
    """Step 1: segments by size, largest first (FIFO within a size), each on its best-fit GPU."""
    queues: dict[int, list[Segment]] = defaultdict(list)
    for cfg in configs:
        for seg in cfg.segments():
            queues[seg.size].append(seg)
    for size in sorted(queues, reverse=True):
        last = None
        for seg in queues[size]:
            last = cluster.place(seg, last)


def _optimize(cluster: _Cluster, configs: tuple[ModelConfig, ...]) -> None:
    """Step 2: lightly used GPUs, last first, re-covered with their models' two smallest sizes."""
    gpu = cluster.gpu
    by_model = {c.service.model: c for c in configs}
    s1, s2 = gpu.sizes[0], gpu.sizes[1]
    light = math.floor(gpu.compute_slices * cluster.policy.light_fraction + 1e-9)
    credit: dict[str, float] = defaultdict(float)
    for g in reversed(list(cluster.gpus)):
        if g.usage > light:
            continue
        for start in range(gpu.memory_slices):
            seg = g.slots.get(start)
            if seg is None:
                continue
            cfg = by_model[seg.model]
            b1, b2 = cfg.best(s1), cfg.best(s2)
            if b1 is None and b2 is None:
                continue  # nothing smaller to split into: keep the segment
            cluster.remove(g, start)
            credit[seg.model] += _valuation(seg, cfg)
            k2, k1 = _split(
                credit[seg.model],
                b1.throughput if b1 else None,
                b2.throughput if b2 else None,
                s2 / s1,
            )
            credit[seg.model] -= k2 * (b2.throughput if b2 else 0.0) + k1 * (
                b1.throughput if b1 else 0.0
            )
            for _ in range(k2):
                cluster.place(Segment(seg.model, b2))
            for _ in range(k1):
                cluster.place(Segment(seg.model, b1))


def _numbered(cluster: _Cluster) -> tuple[PlacedSegment, ...]:
    """Every placed segment, on the used GPUs numbered contiguously in cluster order."""
    used = [g for g in cluster.gpus if g.slots]
    return tuple(
        PlacedSegment(seg, new_index, start)
        for new_index, g in enumerate(used)
        for start, seg in sorted(g.slots.items())
    )
