"""Free MIG slots per GPU while a re-plan adds and removes segments (mutable; local to one
planning run). Shared by repair (`replan`) and packing (`replan_pack`)."""

from __future__ import annotations

from collections import defaultdict

from parvagpu.core.gpus import GpuType
from parvagpu.core.model import PlacedSegment, Segment


class Space:
    """Free slots per GPU while segments are added (mutable; local to one planning run).

    GPUs are bucketed by (memory mask, compute slices in use), so best fit looks at each distinct
    layout once, not at every GPU."""

    def __init__(self, gpu: GpuType, segments: tuple[PlacedSegment, ...], known: set[int]) -> None:
        self.gpu = gpu
        self.state: dict[int, tuple[int, int]] = {}
        for s in segments:
            used, compute = self.state.get(s.gpu, (0, 0))
            self.state[s.gpu] = (used | gpu.mask(s.size, s.start), compute + s.size)
        self.buckets: dict[tuple[int, int], set[int]] = defaultdict(set)
        for g, key in self.state.items():
            self.buckets[key].add(g)
        # GPU ids the running plan names but nothing uses any more: reused before new ones.
        self.idle = sorted(known - set(self.state))
        self.next_id = max(known | set(self.state), default=-1) + 1

    def without(self, g: int) -> "Space":
        """A copy in which GPU `g` takes nothing (it is being emptied)."""
        other = Space.__new__(Space)
        other.gpu, other.idle, other.next_id = self.gpu, [], self.next_id
        other.state = dict(self.state)
        other.buckets = defaultdict(set, {k: set(v) for k, v in self.buckets.items()})
        if g in other.state:
            other.buckets[other.state.pop(g)].discard(g)
        return other

    def copy(self) -> "Space":
        other = self.without(-1)
        other.idle = list(self.idle)
        return other

    def close(self, g: int) -> None:
        """GPU `g` takes nothing until `reopen(g)` (it holds nothing and is to stay unused)."""
        self.buckets[self.state[g]].discard(g)

    def reopen(self, g: int) -> None:
        self.buckets[self.state[g]].add(g)

    def remove(self, s: PlacedSegment) -> None:
        """Free the slot of a placed segment."""
        used, compute = self.state[s.gpu]
        self.buckets[(used, compute)].discard(s.gpu)
        key = (used & ~self.gpu.mask(s.size, s.start), compute - s.size)
        self.state[s.gpu] = key
        self.buckets[key].add(s.gpu)

    def occupy(self, s: PlacedSegment) -> None:
        """Take the slot of a segment again (undoes `remove`, or places `s` where it says)."""
        used, compute = self.state.get(s.gpu, (0, 0))
        self.buckets[(used, compute)].discard(s.gpu)
        key = (used | self.gpu.mask(s.size, s.start), compute + s.size)
        self.state[s.gpu] = key
        self.buckets[key].add(s.gpu)

    def _spot(self, size: int) -> tuple[int, int] | None:
        best = None
        for (used, compute), members in self.buckets.items():
            if not members or compute + size > self.gpu.compute_slices:
                continue
            start = self.gpu.best_start(size, used)
            if start is None:
                continue
            cand = (self.gpu.compute_slices - compute - size, min(members), start)
            if best is None or cand < best:
                best = cand
        return None if best is None else (best[1], best[2])

    def fits(self, size: int) -> bool:
        """Whether a segment of `size` fits on some GPU in use: the first layout with room
        answers (`_spot` also finds each layout's lowest GPU, a scan of its members, which
        repair's and packing's many fit tests do not need)."""
        limit = self.gpu.compute_slices - size
        for (used, compute), members in self.buckets.items():
            if members and compute <= limit and self.gpu.best_start(size, used) is not None:
                return True
        return False

    def place(self, seg: Segment) -> PlacedSegment:
        """Best fit (least free after it, then the lowest GPU); a new GPU when nothing fits."""
        spot = self._spot(seg.size)
        if spot is None:
            g = self.idle.pop(0) if self.idle else self._new_id()
            start = self.gpu.best_start(seg.size, 0)
            used, compute = 0, 0
        else:
            g, start = spot
            used, compute = self.state[g]
            self.buckets[(used, compute)].discard(g)
        key = (used | self.gpu.mask(seg.size, start), compute + seg.size)
        self.state[g] = key
        self.buckets[key].add(g)
        return PlacedSegment(seg, g, start)

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1
