"""The fleet's integer program: which GPU type serves each service, with which segments, and which
layout each GPU of the fleet takes, at the lowest price.

It reuses the optimizer's pieces by import (layouts as `Column`s, each type's per-service options
and minimal covers from `build_blocks`) and adds what a fleet needs:

    classes    GPUs of one type, price and reservation, with the layouts that avoid the reserved
               slots; x[c] in Z>=0 per (class, layout), sum over a class's layouts <= its GPUs
    groups     services with the same options on every type (same profiles, SLO and rate); a
               group chooses one cover per service on any type: sum_{t,k} z[g,t,k] = n[g]
               (a service then runs on one type), or, where some type's covers are too many to
               list, each service buys segments y[m,t,s] of any type with sum T y >= rate
    supply     per type and size: segments used <= instances the chosen layouts offer

    minimise   sum_c (price_c + TIE) x[c]       (the lowest price, then the fewest GPUs)

HiGHS solves it with the costs scaled by SCALE, so its absolute gap stop (one unit of the
objective, set for GPU counts) is 1/SCALE of a price unit.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np

from parvagpu.core.gpus import GpuType
from parvagpu.core.model import Segment, Service, Triplet
from parvagpu.planning.optimizer.columns import Column
from parvagpu.planning.optimizer.highs import run

TIE = 1e-4  # price-unit weight per GPU: among plans of one price, the fewest GPUs
SCALE = 1e4
# A y-form demand row asks a hair above the rate, so HiGHS's feasibility tolerance never leaves a
# service short.
_MARGIN = 1e-6

Options = tuple[tuple[int, Triplet], ...]


@dataclass(frozen=True)
class GpuClass:
    """Interchangeable GPUs of the fleet: one type, price and reservation."""

    type: GpuType
    price: float
    gpus: tuple[int, ...]  # global GPU indices, in fleet order
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Group:
    """Services with the same options and covers on every type. `per_type`: type name -> (options,
    covers or None)."""

    services: tuple[Service, ...]
    rate: float
    per_type: Mapping[str, tuple[Options, object]]
    cover_form: bool


@dataclass
class _Program:
    cols: list
    rows: list
    vals: list
    cost: list
    upper: list
    row_lo: list
    row_hi: list
    var: list  # what each variable is: ("z", g, type, k) / ("y", g, type, j) / ("x", class, column)

    def add_var(self, what, cost: float, upper: float) -> int:
        self.var.append(what)
        self.cost.append(cost)
        self.upper.append(upper)
        return len(self.var) - 1

    def add_row(self, lo: float, hi: float) -> int:
        self.row_lo.append(lo)
        self.row_hi.append(hi)
        return len(self.row_lo) - 1

    def coef(self, row: int, var: int, val: float) -> None:
        self.cols.append(var)
        self.rows.append(row)
        self.vals.append(val)


@dataclass(frozen=True)
class Solution:
    """The solver's answer: feasible or not, HiGHS's status, the objective and its proven bound
    (unscaled), and the values by variable meaning."""

    feasible: bool
    status: str
    objective: float
    bound: float
    values: dict


def build_and_solve(
    groups: Sequence[Group], classes: Sequence[GpuClass], types: Mapping[str, GpuType], *,
    time_limit: float, mip_rel_gap: float,
) -> Solution:
    """Build the program and solve it with HiGHS."""
    p = _Program([], [], [], [], [], [], [], [])
    supply = {(t, s): p.add_row(-np.inf, 0.0) for t, gpu in types.items() for s in gpu.sizes}
    for g_i, g in enumerate(groups):
        _add_group(p, g_i, g, types, supply)
    for c_i, cl in enumerate(classes):
        cap = p.add_row(-np.inf, float(len(cl.gpus)))
        for k, col in enumerate(cl.columns):
            v = p.add_var(("x", c_i, k), (cl.price + TIE) * SCALE, float(len(cl.gpus)))
            p.coef(cap, v, 1.0)
            for s, a in zip(cl.type.sizes, col.counts):
                if a:
                    p.coef(supply[cl.type.name, s], v, -float(a))
    h, ok = run(
        np.array(p.cost), np.array(p.upper), np.array(p.row_lo), np.array(p.row_hi),
        np.array(p.cols, dtype=np.int64), np.array(p.rows, dtype=np.int64), np.array(p.vals),
        integer=True, time_limit=time_limit, mip_rel_gap=mip_rel_gap,
    )
    status = h.getModelStatus().name
    if not ok:
        return Solution(False, status, float("inf"), float("nan"), {})
    x = np.asarray(h.getSolution().col_value)
    values = {p.var[i]: float(x[i]) for i in np.nonzero(np.abs(x) > 1e-9)[0]}
    info = h.getInfo()
    return Solution(True, status, info.objective_function_value / SCALE, info.mip_dual_bound / SCALE, values)


def _add_group(p: _Program, g_i: int, g: Group, types, supply) -> None:
    n = len(g.services)
    if g.cover_form:
        row = p.add_row(float(n), float(n))
        for t, (options, covers) in g.per_type.items():
            sizes = types[t].sizes
            for k, cov in enumerate(covers):
                v = p.add_var(("z", g_i, t, k), 0.0, float(n))
                p.coef(row, v, 1.0)
                for (si, _), c in zip(options, cov):
                    if c:
                        p.coef(supply[t, sizes[si]], v, float(c))
        return
    # y form (one service per group): sum T y >= rate
    row = p.add_row(g.rate * (1 + _MARGIN) + _MARGIN, np.inf)
    for t, (options, _) in g.per_type.items():
        sizes = types[t].sizes
        for j, (si, trip) in enumerate(options):
            v = p.add_var(("y", g_i, t, j), 0.0, float(np.ceil(g.rate / trip.throughput)))
            p.coef(row, v, trip.throughput)
            p.coef(supply[t, sizes[si]], v, 1.0)


def decode(
    groups: Sequence[Group], classes: Sequence[GpuClass], sol: Solution,
) -> tuple[list[tuple[int, int, Segment]], dict[str, str]]:
    """Placed segments (global GPU, start, segment) from the solution, and each service's types."""
    per_type: dict[str, list[Segment]] = defaultdict(list)
    order = []
    for g_i, g in enumerate(groups):
        for svc, segs in zip(g.services, _group_segments(g_i, g, sol.values)):
            for t, seg in segs:
                per_type[t].append(seg)
            order.append(svc.model)
    rank = {m: i for i, m in enumerate(order)}
    queues: dict[tuple[str, int], list[Segment]] = defaultdict(list)
    for t, segs in per_type.items():
        for seg in sorted(segs, key=lambda s: (rank[s.model], -s.size)):
            queues[t, seg.size].append(seg)
    placed = []
    for c_i, cl in enumerate(classes):
        gpus = iter(cl.gpus)
        for k, col in enumerate(cl.columns):
            for _ in range(int(round(sol.values.get(("x", c_i, k), 0.0)))):
                on_gpu = [(st, queues[cl.type.name, size].pop(0)) for size, st in col.placements
                          if queues.get((cl.type.name, size))]
                if on_gpu:
                    g = next(gpus)
                    placed += [(g, st, seg) for st, seg in on_gpu]
    left = sum(len(q) for q in queues.values())
    if left:  # the supply rows cover every segment, so this cannot happen
        raise AssertionError(f"fleet decoding left {left} segments unplaced")
    return placed, {}


def _group_segments(g_i: int, g: Group, values: dict) -> list[list[tuple[str, Segment]]]:
    """Each service's (type, segment) list from the group's variables."""
    out: list[list[tuple[str, Segment]]] = []
    if g.cover_form:
        chosen = []
        for t, (options, covers) in g.per_type.items():
            for k in range(len(covers)):
                chosen += [(t, k)] * int(round(values.get(("z", g_i, t, k), 0.0)))
        for svc, (t, k) in zip(g.services, chosen):
            options, covers = g.per_type[t]
            out.append([(t, Segment(svc.model, trip)) for (_, trip), c in zip(options, covers[k]) for _ in range(c)])
        if len(out) != len(g.services):
            raise AssertionError("fleet decoding: a group's covers do not match its services")
        return out
    svc = g.services[0]
    segs = []
    for t, (options, _) in g.per_type.items():
        for j, (_, trip) in enumerate(options):
            segs += [(t, Segment(svc.model, trip))] * int(round(values.get(("y", g_i, t, j), 0.0)))
    return [segs]


def capacity_short(placed, services: Sequence[Service], served: Mapping[str, float]) -> list[str]:
    """Services whose placed capacity is below what they must be served at (exact sums)."""
    cap: dict[str, Fraction] = defaultdict(Fraction)
    for _, _, seg in placed:
        cap[seg.model] += Fraction(seg.throughput)
    return [s.model for s in services if cap[s.model] < Fraction(served.get(s.model, s.rate))]
