"""The fleet's integer program: which segments, of which GPU types, serve each service, and which
layout each GPU of the fleet takes, at the lowest price.

It reuses the optimizer's layouts (`Column`s) and each type's non-dominated segment options per
service (`option_groups`), and states the fleet's problem exactly:

    classes    GPUs of one type, price and reservation, with the layouts that avoid the reserved
               slots; x[c] in Z>=0 per (class, layout), sum over a class's layouts <= its GPUs
    demand     per service, segments y[m,t,j] in Z>=0 of any type t and option j:
               sum T y >= rate (a service's segments may span types)
    supply     per type and size: segments used <= instances the chosen layouts offer

    minimise   sum_c (price_c + TIE) x[c]       (the lowest price, then the fewest GPUs)

Every plan of the fleet is a solution (a service's segments are some y; a GPU's instances fit in a
maximal layout), so HiGHS's dual bound is a proven bound over all plans, mixed or not. In the
share form, the services of one tier ask f x their rates and the program maximises f instead.

HiGHS solves it with the costs scaled by SCALE, so its absolute gap stop (one unit of the
objective) is 1/SCALE of a price unit, and 1/SHARE_SCALE of f in the share form.
"""

from __future__ import annotations

import math
import time
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
SHARE_SCALE = 1e6  # the share form's objective: f to 1e-6
# A demand row asks a hair above the rate, so HiGHS's feasibility tolerance never leaves a
# service short.
MARGIN = 1e-6

Options = tuple[tuple[int, Triplet], ...]


@dataclass(frozen=True)
class GpuClass:
    """Interchangeable GPUs of the fleet: one type, price and reservation."""

    type: GpuType
    price: float
    gpus: tuple[int, ...]  # global GPU indices, in fleet order
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Demand:
    """One service: its rate, its options on every type that can serve it (type name -> options),
    and whether it asks f x its rate (the share form) rather than its rate."""

    service: Service
    rate: float
    per_type: Mapping[str, Options]
    shared: bool = False


@dataclass
class _Program:
    cols: list
    rows: list
    vals: list
    cost: list
    upper: list
    row_lo: list
    row_hi: list
    var: list  # what each variable is: ("y", d, type, j) / ("x", class, column) / ("f",)

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
    (unscaled: a price, or -f in the share form), and the values by variable meaning."""

    feasible: bool
    status: str
    objective: float
    bound: float
    values: dict


def build_and_solve(
    demands: Sequence[Demand], classes: Sequence[GpuClass], types: Mapping[str, GpuType], *,
    time_limit: float, mip_rel_gap: float, start: Mapping | None = None, deadline: float | None = None,
) -> Solution:
    """Build the program and solve it with HiGHS: the lowest price, or, when some demand is
    shared, the largest f (the price is then not optimised). HiGHS stops once no cheaper plan can
    exist (its gap below one `price_unit`, less the ties) or the price is within `mip_rel_gap`.
    `start` (variable meaning -> value, as `start_values` makes) is HiGHS's first incumbent.
    `deadline` (a `time.perf_counter()` instant): the solve gets no more than what is left of it
    once the program is built (building 1,000 services' program takes seconds), and none at all
    when nothing is left (not feasible, status "kTimeLimit")."""
    share = any(d.shared for d in demands)
    p = _Program([], [], [], [], [], [], [], [])
    f = p.add_var(("f",), -SHARE_SCALE, 1.0) if share else None  # continuous
    supply = {(t, s): p.add_row(-np.inf, 0.0) for t, gpu in types.items() for s in gpu.sizes}
    for d_i, d in enumerate(demands):
        _add_demand(p, d_i, d, types, supply, f)
    for c_i, cl in enumerate(classes):
        cap = p.add_row(-np.inf, float(len(cl.gpus)))
        for k, col in enumerate(cl.columns):
            v = p.add_var(("x", c_i, k), 0.0 if share else (cl.price + TIE) * SCALE, float(len(cl.gpus)))
            p.coef(cap, v, 1.0)
            for s, a in zip(cl.type.sizes, col.counts):
                if a:
                    p.coef(supply[cl.type.name, s], v, -float(a))
    abs_gap = 1.0 - 1e-6
    unit = price_unit(classes)
    if not share and unit is not None:
        abs_gap = max(abs_gap, (unit - TIE * sum(len(c.gpus) for c in classes)) * SCALE * (1 - 1e-9))
    if deadline is not None:
        time_limit = min(time_limit, deadline - time.perf_counter())
        if time_limit <= 0:
            return Solution(False, "kTimeLimit", float("inf"), float("nan"), {})
    h, ok = run(
        np.array(p.cost), np.array(p.upper), np.array(p.row_lo), np.array(p.row_hi),
        np.array(p.cols, dtype=np.int64), np.array(p.rows, dtype=np.int64), np.array(p.vals),
        integer=True, time_limit=time_limit, mip_rel_gap=mip_rel_gap, mip_abs_gap=abs_gap,
        continuous=() if f is None else (f,),
        start=None if start is None else [start.get(v, 0.0) for v in p.var],
    )
    status = h.getModelStatus().name
    if not ok:
        return Solution(False, status, float("inf"), float("nan"), {})
    x = np.asarray(h.getSolution().col_value)
    values = {p.var[i]: float(x[i]) for i in np.nonzero(np.abs(x) > 1e-9)[0]}
    info = h.getInfo()
    unit = SHARE_SCALE if share else SCALE
    return Solution(True, status, info.objective_function_value / unit, info.mip_dual_bound / unit, values)


def price_unit(classes: Sequence[GpuClass]) -> float | None:
    """The largest q of which every GPU's price (as written, in decimal) is a whole multiple, so
    every plan's price is too: a proven bound rounds up to the next multiple. None: no such q of
    at least 1e-6."""
    q = Fraction(0)
    for c in classes:
        p = Fraction(repr(c.price))
        q = Fraction(math.gcd(q.numerator * p.denominator, p.numerator * q.denominator), q.denominator * p.denominator)
    return float(q) if q >= Fraction(1, 10**6) else None


def _add_demand(p: _Program, d_i: int, d: Demand, types, supply, f: int | None) -> None:
    """sum T y >= rate (1 + margin) + margin, or f x that in the share form."""
    if d.shared:  # f = 0 asks nothing
        row = p.add_row(0.0, np.inf)
        p.coef(row, f, -(d.rate * (1 + MARGIN) + MARGIN))
    else:
        row = p.add_row(d.rate * (1 + MARGIN) + MARGIN, np.inf)
    for t, options in d.per_type.items():
        sizes = types[t].sizes
        for j, (si, trip) in enumerate(options):
            v = p.add_var(("y", d_i, t, j), 0.0, float(np.ceil(d.rate * (1 + MARGIN) / trip.throughput) + 1))
            p.coef(row, v, trip.throughput)
            p.coef(supply[t, sizes[si]], v, 1.0)


def decode(demands: Sequence[Demand], classes: Sequence[GpuClass], sol: Solution) -> list[tuple[int, int, Segment]]:
    """Placed segments (global GPU, start, segment) from the solution."""
    per_type: dict[str, list[Segment]] = defaultdict(list)
    for d_i, d in enumerate(demands):
        for t, options in d.per_type.items():
            for j, (_, trip) in enumerate(options):
                per_type[t] += [Segment(d.service.model, trip)] * int(round(sol.values.get(("y", d_i, t, j), 0.0)))
    queues: dict[tuple[str, int], list[Segment]] = defaultdict(list)
    for t, segs in per_type.items():
        for seg in segs:  # demand order, then option order: a service's segments stay together
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
    return placed


def start_values(placed, demands: Sequence[Demand], classes: Sequence[GpuClass], f: float | None = None) -> dict:
    """The program's variables (by meaning) of a plan's placed segments (global GPU, start,
    segment): y counts each demand's segments per type and option, x each used GPU's layout as a
    maximal column of its class that holds it; `f` for the share form. The segments must use the
    demands' options on GPUs of `classes`."""
    of_gpu = {g: c_i for c_i, c in enumerate(classes) for g in c.gpus}
    demand_of = {d.service.model: d_i for d_i, d in enumerate(demands)}
    out: dict = defaultdict(float)
    counts: dict[int, list[int]] = {}
    for g, _, seg in placed:
        cl = classes[of_gpu[g]]
        t = cl.type.name
        d_i = demand_of[seg.model]
        j = next(j for j, (_, trip) in enumerate(demands[d_i].per_type[t]) if trip == seg.triplet)
        out["y", d_i, t, j] += 1.0
        counts.setdefault(g, [0] * len(cl.type.sizes))[cl.type.sizes.index(seg.size)] += 1
    for g, v in counts.items():
        c_i = of_gpu[g]
        k = next(k for k, col in enumerate(classes[c_i].columns) if all(a <= b for a, b in zip(v, col.counts)))
        out["x", c_i, k] += 1.0
    if f is not None:
        out["f",] = f
    return dict(out)


def capacity_short(placed, services: Sequence[Service], served: Mapping[str, float]) -> list[str]:
    """Services whose placed capacity is below what they must be served at (exact sums)."""
    cap: dict[str, Fraction] = defaultdict(Fraction)
    for _, _, seg in placed:
        cap[seg.model] += Fraction(seg.throughput)
    return [s.model for s in services if cap[s.model] < Fraction(served.get(s.model, s.rate))]
