"""A fast first plan for the fleet program: services one by one, each covered by the cheapest
segments of the types with room, packed first-fit into the fleet's free MIG slots.

Near the fleet's capacity HiGHS needs tens of seconds to find any plan of 1,000 services; this
packing takes well under a second, so the tiers can bisect their shared fraction on it and hand
the result to HiGHS as its first incumbent (`start_vector`). It proves nothing: a demand it cannot
place may still fit.

Per service and type, the cover is n copies of one option plus the cheapest option for the
remainder, the cheapest such cover by price per compute slice; the types are tried cheapest cover
first, and a service whose cover does not fit on one type takes what room that type has and the
next type the rest (segments may span types, as in the program). Services go largest first
(slices of their cheapest cover), the demands marked `first` before the others. Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from parvagpu.core.fleet import Fleet, reserved_slots
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import Segment, Triplet
from parvagpu.planning.fleet_program import Demand, GpuClass

Placed = list[tuple[int, int, Segment]]  # (global GPU, start, segment), as `fleet_program.decode`


@dataclass
class _Gpu:
    index: int
    type: GpuType
    price: float
    used: int  # memory-slice mask taken (reservations included)
    compute: int  # compute slices taken

    def fit(self, size: int) -> int | None:
        if self.compute + size > self.type.compute_slices:
            return None
        return self.type.best_start(size, self.used)

    def take(self, size: int, start: int) -> None:
        self.used |= self.type.mask(size, start)
        self.compute += size


class _Room:
    """The fleet's free slots per type: GPUs already holding instances first (first-fit, in the
    order they were opened), then fresh GPUs, cheapest and partly reserved ones first."""

    def __init__(self, fleet: Fleet, classes: Sequence[GpuClass], kept: Placed = ()) -> None:
        free = {g for c in classes for g in c.gpus}
        self.fresh: dict[str, list[_Gpu]] = {}
        taken: dict[int, list] = {}
        opened: dict[str, list[_Gpu]] = {}
        for g, st, seg in kept:
            taken.setdefault(g, []).append((seg.size, st))
        for k, node in enumerate(fleet.nodes):
            for local in range(node.gpus):
                g = fleet.gpu_index(k, local)
                if g in free:
                    mask, compute = reserved_slots(node, local)
                    gpu = _Gpu(g, node.type, node.price_per_gpu_hour, mask, compute)
                    for size, st in taken.get(g, ()):
                        gpu.take(size, st)
                    self.fresh.setdefault(node.gpu, [])
                    (opened.setdefault(node.gpu, []) if g in taken else self.fresh[node.gpu]).append(gpu)
        for gpus in self.fresh.values():
            gpus.sort(key=lambda x: (x.price, x.compute == 0, x.index))  # partly reserved ones first
            gpus.reverse()  # popped from the end
        self.open: dict[str, list[_Gpu]] = {t: opened.get(t, []) for t in self.fresh}

    def place(self, t: str, size: int) -> tuple[int, int] | None:
        """(GPU, start) of a new instance of `size` on type `t`, or None when no GPU has room."""
        opened = self.open.get(t, [])
        for gpu in opened:
            st = gpu.fit(size)
            if st is not None:
                gpu.take(size, st)
                return gpu.index, st
        fresh = self.fresh.get(t, [])
        for i in range(len(fresh) - 1, -1, -1):  # a partly reserved GPU may lack room for this size
            st = fresh[i].fit(size)
            if st is not None:
                gpu = fresh.pop(i)
                gpu.take(size, st)
                opened.append(gpu)
                return gpu.index, st
        return None


def _cover(rate: float, options, sizes: tuple[int, ...]) -> tuple[float, list[tuple[int, Triplet]]]:
    """(compute slices, [(option index, triplet)]) of the fewest-slice cover of `rate` of the form
    n x one option + the cheapest option for the remainder."""
    best: tuple[float, list] = (math.inf, [])
    by_slices = sorted(range(len(options)), key=lambda j: (sizes[options[j][0]], -options[j][1].throughput))
    for j, (si, trip) in enumerate(options):
        n = int(rate // trip.throughput)
        rest = rate - n * trip.throughput
        picks = [(j, trip)] * n
        if rest > 1e-12:
            k = next((k for k in by_slices if options[k][1].throughput >= rest), j)
            picks.append((k, options[k][1]))
        slices = sum(sizes[options[k][0]] for k, _ in picks)
        if slices < best[0]:
            best = (slices, picks)
    return best


def greedy(demands: Sequence[Demand], classes: Sequence[GpuClass], types: Mapping[str, GpuType],
           fleet: Fleet, targets: Sequence[float], first: Sequence[bool], kept: Placed = ()) -> Placed | None:
    """Segments placed on the fleet giving demand i at least `targets[i]` req/s more than `kept`
    (segments already placed, returned with the new ones), or None when this packing finds no
    room for some demand."""
    room = _Room(fleet, classes, kept)
    slice_price = {t: min(c.price for c in classes if c.type.name == t) / types[t].compute_slices
                   for t in {c.type.name for c in classes}}
    covers = []
    for d_i, d in enumerate(demands):
        per = {t: _cover(targets[d_i], opts, types[t].sizes) for t, opts in d.per_type.items() if t in slice_price}
        covers.append(sorted(per.items(), key=lambda kv: (kv[1][0] * slice_price[kv[0]], kv[0])))
    order = sorted(range(len(demands)), key=lambda i: (not first[i], -min((c[0] for _, c in covers[i]), default=0), i))
    placed: Placed = list(kept)
    for d_i in order:
        need = targets[d_i]
        if need <= 1e-12:
            continue
        for t, (_, picks) in covers[d_i]:
            if need <= 1e-12:
                break
            need = _fill(room, t, demands[d_i], need, picks if need >= targets[d_i] else None,
                         types[t], placed)
        if need > 1e-12:
            return None
    return placed


def _fill(room: _Room, t: str, d: Demand, need: float, picks, gpu: GpuType,
          placed: Placed) -> float:
    """Place `picks` (the type's cover) on type `t`, else as much of `need` as its room takes:
    the most efficient option that fits, the cheapest one covering what is left. Returns what is
    still needed."""
    options = d.per_type[t]
    sizes = gpu.sizes
    if picks is None:
        picks = _cover(need, options, sizes)[1]
    for j, trip in sorted(picks, key=lambda p: -p[1].size):
        if need <= 1e-12:
            break
        where = room.place(t, trip.size)
        if where is None:
            continue
        placed.append((where[0], where[1], Segment(d.service.model, trip)))
        need -= trip.throughput
    # What the cover could not place: any option that still fits, most efficient first.
    by_eff = sorted(range(len(options)), key=lambda j: -options[j][1].efficiency)
    while need > 1e-12:
        fitting = [j for j in by_eff if _fits_somewhere(room, t, options[j][1].size)]
        if not fitting:
            break
        covering = [j for j in fitting if options[j][1].throughput >= need]
        j = min(covering, key=lambda j: (sizes[options[j][0]], j)) if covering else fitting[0]
        trip = options[j][1]
        g, st = room.place(t, trip.size)
        placed.append((g, st, Segment(d.service.model, trip)))
        need -= trip.throughput
    return need


def _fits_somewhere(room: _Room, t: str, size: int) -> bool:
    return any(g.fit(size) is not None for g in room.open.get(t, ())) or any(
        g.fit(size) is not None for g in room.fresh.get(t, ()))
