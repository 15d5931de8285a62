"""Exact planner: segment choice and MIG packing as one pattern integer program, solved by HiGHS.

The paper's heuristic fixes each model's segments first (configurator) and packs them afterwards
(allocator), so it can miss plans that need another mix of segment sizes to pack tightly. Here both
decisions are one integer program: Gilmore-Gomory patterns for the GPUs, and for each model a
choice among its minimal covers (a Dantzig-Wolfe reformulation of its demand row).

Data
    M          services, S the instance sizes of the GPU type, lambda[m] the requested rates.
    T[m,s]     throughput of the best admissible triplet of model m with size s (the configurator's
               rule: batch latency < 0.45 L_m, procs <= max_procs). It dominates every other triplet
               of its size (same slots, at least the throughput), so one per (model, size) is
               enough. A size is dropped when a smaller size has at least its throughput and can
               take its place in every layout.
    C          GPU layouts: the count vectors a[c,s] of every set of legal, non-overlapping
               placements from `GpuType.layouts()`, keeping only the maximal ones (layouts are
               closed under removing instances, so the "<=" of the supply rows loses nothing).
    K[m]       minimal covers of m: vectors k over its sizes with sum_s T[m,s] k[s] >= lambda[m]
               from which no segment can be dropped.

Variables
    x[c]   in Z>=0     GPUs that use layout c
    z[m,k] in Z>=0     services of m's block that use cover k (a block is one service, or n[m]
                       interchangeable services with the same profile points, latency and rate)

Model
    minimise    sum_c x[c]
    subject to  sum_k z[m,k] = n[m]                                   for every block m
                sum_m sum_k k[s] z[m,k] - sum_c a[c,s] x[c] <= 0      for every size s

A block whose covers are too many to list (a rate far above its segments' throughputs) keeps the
direct variables y[m,s] in Z>=0 with the demand row sum_s T[m,s] y[m,s] >= lambda[m] and
y[m,s] in the supply rows instead; the two forms mix freely. The cover form is preferred because
its LP relaxation is the convex hull of each model's integer choices: with y alone every model may
buy a fraction of a segment, and at 1,000 services HiGHS still had a 3-GPU gap after 60 s, where the
cover form is proven optimal in well under a second.

Symmetry: layout counts x carry no GPU identity, and identical services share one block, so no two
solutions differ only by a permutation.

The matrix goes to HiGHS as sparse numpy arrays (`passModel`), single-threaded with a fixed seed:
the same inputs give the same plan whenever the solve ends before the time limit. `solve` lists the
steps (LP bound, rounding, a capped integer program over the columns reduced costs leave open); the
proven lower bound is the LP's Lagrangian bound rounded up, raised by the capped program. Decoding
gives every GPU its layout's concrete placements and fills each size-s slot with a size-s segment;
segments a model does not need are dropped first, and the tiny packing problem (segments fixed) is
re-solved so the GPU count matches the final segments.

`highspy` is imported inside the solve, never at package import.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from fractions import Fraction
from itertools import product
from typing import Sequence

import numpy as np

from parvagpu.planning.configurator import best_by_size, build_index, infeasible_message
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Segment, Service, Triplet
from parvagpu.core.errors import ParvaError

# HiGHS's bound may exceed the truth by its feasibility tolerance: allow for it before rounding up.
_BOUND_EPS = 1e-6
# Most cover candidates enumerated for one block before it falls back to the y form, and most
# cover columns in all (the blocks with the most covers fall back first).
MAX_COVER_GRID = 20_000
MAX_COVERS = 1_000_000


@dataclass(frozen=True)
class Column:
    """One GPU layout: instance counts per size (aligned with `GpuType.sizes`) and concrete legal
    (size, start) placements realising them."""

    counts: tuple[int, ...]
    placements: tuple[tuple[int, int], ...]


def _maximal(vectors: set[tuple[int, ...]]) -> list[tuple[int, ...]]:
    return [
        v for v in vectors
        if not any(w != v and all(a <= b for a, b in zip(v, w)) for w in vectors)
    ]


def _columns(gpu: GpuType, vectors: set[tuple[int, ...]]) -> tuple[Column, ...]:
    sizes = gpu.sizes
    out = []
    # Larger instances first: decoded GPUs then read like the heuristic's (big slots first).
    for v in sorted(_maximal(vectors), key=lambda v: tuple(-c for c in reversed(v))):
        multiset = tuple(s for s, c in zip(sizes, v) for _ in range(c))
        placed = gpu.pack(multiset)
        if placed is not None:
            out.append(Column(v, tuple(sorted(placed, key=lambda p: p[1]))))
    return tuple(out)


def mig_columns(gpu: GpuType) -> tuple[Column, ...]:
    """Maximal MIG layouts, enumerated from the GPU type's placement table."""
    sizes = gpu.sizes
    vectors = {tuple(sum(1 for s, _ in lay if s == z) for z in sizes) for lay in gpu.layouts()}
    return _columns(gpu, vectors)


def mps_columns(gpu: GpuType, max_parts: int = 2) -> tuple[Column, ...]:
    """Maximal ways to split one whole GPU into at most `max_parts` MPS partitions whose sizes are
    profiled instance sizes summing to at most the GPU's compute slices. Placements only number the
    partitions; a split with no MIG-legal placement on this GPU type is left out."""
    sizes = gpu.sizes
    vectors = set()
    for k in range(1, max_parts + 1):
        for combo in product(range(len(sizes)), repeat=k):
            if sum(sizes[i] for i in combo) <= gpu.compute_slices:
                v = [0] * len(sizes)
                for i in combo:
                    v[i] += 1
                vectors.add(tuple(v))
    return _columns(gpu, vectors)


def _substitutes(columns: Sequence[Column], n: int) -> list[list[bool]]:
    """sub[i][j]: in every layout a size-i instance can be replaced by a size-j one."""
    sub = [[i == j for j in range(n)] for i in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            ok = True
            for c in columns:
                if c.counts[i] == 0:
                    continue
                v = list(c.counts)
                v[i] -= 1
                v[j] += 1
                if not any(all(a <= b for a, b in zip(v, d.counts)) for d in columns):
                    ok = False
                    break
            sub[i][j] = ok
    return sub


def minimal_covers(rate: float, throughputs: Sequence[float], limit: int | None = None):
    """All minimal covers of `rate` by segments of the given throughputs, as an int array (one row
    per cover, one column per throughput), or None when more than `limit` candidates would have to
    be enumerated."""
    return _covers_many([(rate, tuple(throughputs))], limit)[0]


_CHUNK_ROWS = 400_000  # candidates enumerated at once (bounds memory, not results)


def _covers_many(items: Sequence[tuple[float, tuple[float, ...]]], limit: int | None = None) -> list:
    """`minimal_covers` for many (rate, throughputs) at once, vectorised across them.

    Every count but the one with the widest range is enumerated (a mixed-radix grid per item, all
    items' grids laid end to end); the last count is the least that reaches the rate given the
    others. Sums within 1e-9 of the rate are re-checked in exact arithmetic, so a cover never misses
    the rate by a rounding and a minimal cover is never dropped by one."""
    limit = MAX_COVER_GRID if limit is None else limit
    out: list = [None] * len(items)
    by_k: dict[int, list[int]] = defaultdict(list)
    for i, (_, ts) in enumerate(items):
        by_k[len(ts)].append(i)
    for k, idx in by_k.items():
        rates = np.array([items[i][0] for i in idx], dtype=np.float64)
        T = np.array([items[i][1] for i in idx], dtype=np.float64).reshape(len(idx), k)
        ubs = np.ceil(rates[:, None] / T).astype(np.int64)
        perm = np.argsort(ubs, axis=1, kind="stable")  # widest range last: computed, not listed
        Ts = np.take_along_axis(T, perm, axis=1)
        radix = np.take_along_axis(ubs, perm, axis=1)[:, :-1] + 1
        grid = np.prod(radix.astype(np.float64), axis=1)
        todo = [b for b in range(len(idx)) if grid[b] <= limit]
        while todo:
            sel, rows = [], 0
            while todo and (not sel or rows + grid[todo[0]] <= _CHUNK_ROWS):
                sel.append(todo.pop(0))
                rows += int(grid[sel[-1]])
            found = _enumerate(np.array(sel), rates, Ts, radix, grid, k)
            for b, cov in zip(sel, found):
                orig = np.empty_like(cov)
                orig[:, perm[b]] = cov
                out[idx[b]] = orig
    return out


def _enumerate(sel, rates, Ts, radix, grid, k) -> list:
    n_b = grid[sel].astype(np.int64)
    bid = np.repeat(np.arange(len(sel)), n_b)
    local = np.arange(int(n_b.sum()), dtype=np.int64) - (np.cumsum(n_b) - n_b)[bid]
    ts = Ts[sel][bid]
    rate = rates[sel][bid]
    vec = np.empty((len(bid), k), dtype=np.int64)
    rest = local
    for j in range(k - 1):
        r = radix[sel, j][bid]
        vec[:, j] = rest % r
        rest = rest // r
    acc = (vec[:, : k - 1] * ts[:, : k - 1]).sum(axis=1)
    short = rate - acc
    vec[:, k - 1] = np.where(short > 0, np.ceil(short / ts[:, k - 1]), 0).astype(np.int64)
    total = acc + vec[:, k - 1] * ts[:, k - 1]
    tol = 1e-9 * np.maximum(rate, 1.0)

    def exact(r: int, drop: int | None = None) -> Fraction:
        s = sum((Fraction(float(ts[r, j])) * int(vec[r, j]) for j in range(k)), Fraction(0))
        return s - (Fraction(float(ts[r, drop])) if drop is not None else 0)

    for r in np.nonzero(np.abs(total - rate) <= tol)[0]:  # coverage near the rate
        if exact(r) < Fraction(float(rate[r])):
            vec[r, k - 1] += 1
            total[r] += ts[r, k - 1]
    ok = total >= rate - tol
    for j in range(k):
        dropped = total - ts[:, j]
        ok &= (vec[:, j] == 0) | (dropped < rate + tol)
        for r in np.nonzero(ok & (vec[:, j] > 0) & (np.abs(dropped - rate) <= tol))[0]:
            if exact(r, j) >= Fraction(float(rate[r])):  # minimality near the rate
                ok[r] = False
    keep = np.nonzero(ok)[0]
    counts = np.bincount(bid[keep], minlength=len(sel))
    return np.split(vec[keep], np.cumsum(counts)[:-1])


@dataclass(frozen=True)
class OptimizerResult:
    """What the optimizer proved: a plan (None when HiGHS found none in time), the lower bound on
    GPUs for this problem, and whether the plan is proven optimal."""

    plan: DeploymentMap | None
    lower_bound: int
    optimal: bool
    status: str


@dataclass(frozen=True, eq=False)
class _Block:
    """One service, or interchangeable services (same points, latency and rate), solved as a unit."""

    services: tuple[Service, ...]
    rate: float
    options: tuple[tuple[int, Triplet], ...]  # (size index, triplet), non-dominated, size order
    covers: object = None  # int array (covers x options), or None for the y form


def _blocks(
    services: Sequence[Service], profiles: dict[str, Profile], gpu: GpuType, max_procs: int,
    columns: Sequence[Column],
) -> list[_Block]:
    sizes = gpu.sizes
    sub = _substitutes(columns, len(sizes))
    usable = {s for c in columns for s, n in zip(sizes, c.counts) if n}
    index_cache: dict[int, object] = {}
    opt_cache: dict[tuple[int, Fraction], tuple[tuple[int, Triplet], ...]] = {}
    groups: dict[tuple, list[Service]] = {}
    for svc in services:
        prof = profiles[svc.model]
        pid = id(prof.points)
        if pid not in index_cache:
            index_cache[pid] = build_index(prof, gpu, max_procs)
        okey = (pid, svc.exact_latency_ms)
        if okey not in opt_cache:
            per_size = best_by_size(index_cache[pid], svc.exact_latency_ms)
            if not per_size:
                raise ParvaError(infeasible_message(svc, index_cache[pid]))
            cand = [(sizes.index(s), t) for s, t in sorted(per_size.items()) if s in usable]
            opt_cache[okey] = tuple(
                (i, t) for i, t in cand
                if not any(j < i and u.throughput >= t.throughput and sub[i][j] for j, u in cand)
            )
        if not opt_cache[okey]:
            raise ParvaError(f"model {svc.model}: no admissible triplet fits a layout of {gpu.name}")
        groups.setdefault((okey, svc.rate), []).append(svc)  # dicts keep first-seen order
    keys = {}
    for (okey, rate), members in groups.items():
        keys.setdefault((rate, tuple(t.throughput for _, t in opt_cache[okey])), len(keys))
    covers_of = _covers_many(list(keys))
    found = []
    for (okey, rate), members in groups.items():
        options = opt_cache[okey]
        cov = covers_of[keys[(rate, tuple(t.throughput for _, t in options))]]
        found.append((members, rate, options, cov))
    total = sum(len(c) for *_, c in found if c is not None)
    if total > MAX_COVERS:  # keep the program's size bounded: drop the longest cover lists first
        lengths = sorted((len(c) for *_, c in found if c is not None), reverse=True)
        cut, kept = lengths[0] + 1, total
        for n in lengths:
            if kept <= MAX_COVERS:
                break
            kept -= n
            cut = n
        found = [(m, r, o, c if c is not None and len(c) < cut else None) for m, r, o, c in found]
    blocks = []
    for members, rate, options, covers in found:
        if covers is not None:
            blocks.append(_Block(tuple(members), rate, options, covers))
        else:
            blocks.extend(_Block((m,), rate, options) for m in members)
    return blocks


def _highs():
    import highspy

    # The bare binding: the Python wrapper prints a banner on stdout when first constructed.
    cls = getattr(highspy, "_Highs", None) or highspy.Highs
    h = cls()
    for key, val in (
        ("output_flag", False), ("log_to_console", False), ("threads", 1), ("random_seed", 0),
    ):
        h.setOptionValue(key, val)
    return h


@dataclass
class _Model:
    """The program in coordinate form; block variables first (per block from `offsets`), then one
    x per layout."""

    offsets: list[int]
    nvar: int
    cols: np.ndarray
    rows: np.ndarray
    vals: np.ndarray
    cost: np.ndarray
    upper: np.ndarray
    row_lo: np.ndarray
    row_hi: np.ndarray

    @property
    def ncol(self) -> int:
        return len(self.cost)


def _csc(cols: np.ndarray, rows: np.ndarray, vals: np.ndarray, ncol: int):
    order = np.argsort(cols, kind="stable")
    starts = np.zeros(ncol + 1, dtype=np.int32)
    np.cumsum(np.bincount(cols, minlength=ncol), out=starts[1:])
    return starts, rows[order].astype(np.int32), vals[order]


def _run(
    cost, upper, row_lo, row_hi, cols, rows, vals, *, integer: bool, time_limit: float,
    mip_rel_gap: float = 0.0,
):
    """One HiGHS solve of min cost.x, row_lo <= A x <= row_hi, 0 <= x <= upper; returns
    (highs, feasible)."""
    h = _highs()
    h.setOptionValue("time_limit", max(float(time_limit), 1e-3))
    if integer:
        h.setOptionValue("mip_rel_gap", float(mip_rel_gap))
        h.setOptionValue("mip_abs_gap", 1.0 - 1e-6)  # the objective is integral
        # The incumbent is known and the layouts carry no GPU identity: the feasibility-jump
        # heuristic and symmetry detection only cost time (seconds on 10^5 columns, unchecked
        # against the time limit).
        h.setOptionValue("mip_heuristic_run_feasibility_jump", False)
        h.setOptionValue("mip_detect_symmetry", False)
    # Presolve finds little to remove in these programs and, on 10^5 columns, costs more than the
    # LP itself (2-3x) and than the capped MIP; it also runs without time checks.
    h.setOptionValue("presolve", "off")
    ncol = len(cost)
    starts, index, value = _csc(cols, rows, vals, ncol)
    h.passModel(
        ncol, len(row_lo), len(value), 1, 1, 0.0,
        np.asarray(cost, dtype=np.float64), np.zeros(ncol), np.asarray(upper, dtype=np.float64),
        np.asarray(row_lo, dtype=np.float64), np.asarray(row_hi, dtype=np.float64),
        starts, index, np.asarray(value, dtype=np.float64),
        np.full(ncol, 1 if integer else 0, dtype=np.int32),
    )
    h.run()
    return h, h.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible


def _pack(demand: Sequence[int], columns: Sequence[Column], time_limit: float):
    """Fewest layouts covering `demand` instances per size (the packing problem, y fixed)."""
    cols, rows, vals = [], [], []
    for c_i, c in enumerate(columns):
        for k, a in enumerate(c.counts):
            if a:
                cols.append(c_i)
                rows.append(k)
                vals.append(float(a))
    n = len(columns)
    h, ok = _run(
        np.ones(n), np.full(n, float(sum(demand))), np.asarray(demand, dtype=float),
        np.full(len(demand), np.inf), np.array(cols), np.array(rows), np.array(vals, dtype=float),
        integer=True, time_limit=time_limit,
    )
    if not ok:  # only on a time-out: one GPU per instance always fits
        return None
    return np.round(np.asarray(h.getSolution().col_value)).astype(np.int64)


def _trivial_bound(blocks: Sequence[_Block], sizes: tuple[int, ...], slices: int) -> int:
    """Each service's GPCs at its most efficient size (at least one segment), over one GPU's;
    the bound while no LP has been solved."""
    gpcs = 0.0
    for b in blocks:
        eff = max(t.throughput / sizes[i] for i, t in b.options)
        smallest = min(sizes[i] for i, _ in b.options)
        gpcs += len(b.services) * max(b.rate / eff, smallest)
    return max(0, math.ceil(gpcs / slices * (1 - 1e-9)))


def _build(blocks: Sequence[_Block], columns: Sequence[Column], nsz: int) -> _Model:
    M = len(blocks)
    cols, rows, vals, upper, offsets = [], [], [], [], []
    row_lo = np.full(M + nsz, -np.inf)
    row_hi = np.zeros(M + nsz)
    nvar = 0
    max_gpus = 0.0
    for b_i, b in enumerate(blocks):
        offsets.append(nvar)
        sidx = np.array([k for k, _ in b.options])
        n = len(b.services)
        if b.covers is not None:
            cov = b.covers
            nc = len(cov)
            row_lo[b_i] = row_hi[b_i] = n
            o, j = np.nonzero(cov)
            cols += [np.arange(nvar, nvar + nc), nvar + o]
            rows += [np.full(nc, b_i), M + sidx[j]]
            vals += [np.ones(nc), cov[o, j].astype(np.float64)]
            upper.append(np.full(nc, float(n)))
            max_gpus += n * float(cov.sum(axis=1).min())
            nvar += nc
        else:
            ts = np.array([t.throughput for _, t in b.options])
            k = len(ts)
            # In req/s, not normalised: HiGHS's absolute feasibility tolerance (1e-6) then lets a
            # plan fall short by 1e-6 req/s at most, below the 0.001 resolution of profiled
            # throughputs, instead of 1e-6 of the rate.
            row_lo[b_i], row_hi[b_i] = b.rate, np.inf
            cols += [np.arange(nvar, nvar + k)] * 2
            rows += [np.full(k, b_i), M + sidx]
            vals += [ts, np.ones(k)]
            ub = np.ceil(b.rate / ts)
            upper.append(ub)
            max_gpus += float(ub.min())
            nvar += k
    for c_i, c in enumerate(columns):
        for k, a in enumerate(c.counts):
            if a:
                cols.append(np.array([nvar + c_i]))
                rows.append(np.array([M + k]))
                vals.append(np.array([-float(a)]))
    upper.append(np.full(len(columns), max(max_gpus, 1.0)))
    cost = np.zeros(nvar + len(columns))
    cost[nvar:] = 1.0
    return _Model(
        offsets, nvar, np.concatenate(cols).astype(np.int64), np.concatenate(rows).astype(np.int64),
        np.concatenate(vals), cost, np.concatenate(upper), row_lo, row_hi,
    )


def _dual_bound(model: _Model, row_dual: np.ndarray) -> tuple[float, np.ndarray]:
    """The Lagrangian bound of any row prices, and the reduced costs behind it.

    Computed here rather than taken from the solver: with prices of the wrong sign zeroed it is a
    valid lower bound whatever the LP's tolerances, and it justifies the column fixing below."""
    pi = np.array(row_dual, dtype=np.float64)
    pi[(pi > 0) & ~np.isfinite(model.row_lo)] = 0.0
    pi[(pi < 0) & ~np.isfinite(model.row_hi)] = 0.0
    d = model.cost - np.bincount(model.cols, weights=model.vals * pi[model.rows], minlength=model.ncol)
    rows_part = np.where(pi > 0, pi * np.where(np.isfinite(model.row_lo), model.row_lo, 0.0),
                         pi * np.where(np.isfinite(model.row_hi), model.row_hi, 0.0)).sum()
    cols_part = np.where(d < 0, d * model.upper, 0.0).sum()
    return float(rows_part + cols_part), d


def _round(blocks: Sequence[_Block], model: _Model, primal: np.ndarray) -> np.ndarray:
    """An integer point from the LP solution: covers by largest remainder, y rounded up."""
    out = np.zeros(model.nvar)
    for b_i, b in enumerate(blocks):
        off = model.offsets[b_i]
        if b.covers is not None:
            z = np.clip(primal[off:off + len(b.covers)], 0.0, None)
            n = len(b.services)
            base = np.floor(z + 1e-9)
            extra = n - int(base.sum())
            if extra > 0:
                frac = z - base
                for o in np.argsort(-frac, kind="stable")[:extra]:
                    base[o] += 1
            elif extra < 0:
                for o in np.nonzero(base)[0][::-1][: -extra]:
                    base[o] -= 1
            out[off:off + len(b.covers)] = base
        else:
            k = len(b.options)
            out[off:off + k] = np.ceil(primal[off:off + k] - 1e-9)
    return out


def solve(
    services: Sequence[Service],
    profiles: dict[str, Profile],
    gpu: GpuType,
    max_procs: int = 3,
    gpus_per_node: int = 8,
    *,
    time_limit: float = 10.0,
    mip_rel_gap: float = 0.0,
    start: DeploymentMap | None = None,
    columns: Sequence[Column] | None = None,
    strategy: str = "optimal",
) -> OptimizerResult:
    """Solve the program of the module docstring within `time_limit` seconds, model building
    included.

    1. The LP relaxation gives row prices; their Lagrangian bound, rounded up, is a proven lower
       bound on GPUs.
    2. Rounding the LP point (nearly integral: a basic solution has at most one fractional block
       per supply row) and re-packing gives an incumbent; `start` (e.g. the heuristic's plan) is a
       second one, so the result is never worse than it.
    3. Unless the incumbent meets the bound (or `mip_rel_gap`), the integer program is solved with
       a cap of one GPU fewer than the incumbent, over the block variables whose reduced cost
       leaves room for such a plan (any other one must be 0 in it). Infeasible means the incumbent
       is optimal.

    `columns` replaces the MIG layouts (the mps-only baseline passes MPS splits).
    """
    t0 = time.perf_counter()

    def left() -> float:
        return time_limit - (time.perf_counter() - t0)

    if max_procs < 1:
        raise ParvaError(f"max procs must be >= 1, got {max_procs}")
    if gpus_per_node < 1:
        raise ParvaError(f"gpus per node must be >= 1, got {gpus_per_node}")
    services = tuple(services)
    columns = tuple(columns) if columns is not None else mig_columns(gpu)
    sizes = gpu.sizes
    blocks = _blocks(services, profiles, gpu, max_procs, columns)
    lb = _trivial_bound(blocks, sizes, gpu.compute_slices)
    best = _relabel(start, strategy) if start is not None else None

    def result(status: str) -> OptimizerResult:
        if best is None:
            return OptimizerResult(None, lb, False, status)
        bound = min(lb, best.gpus_used)
        return OptimizerResult(_relabel(best, strategy, bound), bound, best.gpus_used == bound, status)

    if not services:
        best = DeploymentMap(gpu.name, strategy, max_procs, gpus_per_node, (), ())
        return result("optimal")
    # The phases before the solver cannot be interrupted: check the clock between them.
    if left() <= 0:
        return result("time limit: no LP solution")
    model = _build(blocks, columns, len(sizes))
    if left() <= 0:
        return result("time limit: no LP solution")
    h, ok = _run(model.cost, model.upper, model.row_lo, model.row_hi, model.cols, model.rows,
                 model.vals, integer=False, time_limit=left())
    if not ok or h.getModelStatus().name != "kOptimal":
        return result("time limit: no LP solution")
    sol = h.getSolution()
    bound, reduced = _dual_bound(model, np.asarray(sol.row_dual))
    lb = max(lb, math.ceil(bound - _BOUND_EPS))

    def consider(values: np.ndarray) -> None:
        nonlocal best
        plan = _realize(values, blocks, model, columns, gpu, services, max_procs, gpus_per_node,
                        strategy, max(0.5, left()))
        if plan is not None and (
            best is None or (plan.gpus_used, plan.gpcs_used()) < (best.gpus_used, best.gpcs_used())
        ):
            best = plan

    consider(_round(blocks, model, np.asarray(sol.col_value)))
    if best is not None:
        if best.gpus_used <= lb:
            return result("optimal")
        if (best.gpus_used - lb) / best.gpus_used <= mip_rel_gap:
            return result("gap reached")
    if left() <= 0:
        return result("time limit")

    # Look only for plans with fewer GPUs than the incumbent: a block variable whose reduced cost
    # exceeds the room between that target and the LP bound is 0 in every such plan.
    target = best.gpus_used - 1 if best is not None else math.inf
    keep = np.ones(model.ncol, dtype=bool)
    keep[: model.nvar] = reduced[: model.nvar] <= target - bound + 1e-7
    new_id = np.cumsum(keep) - 1
    mask = keep[model.cols]
    xs = np.arange(model.nvar, model.ncol)
    h, ok = _run(
        model.cost[keep], model.upper[keep],
        np.append(model.row_lo, -np.inf), np.append(model.row_hi, float(target)),
        np.concatenate([new_id[model.cols[mask]], new_id[xs]]),
        np.concatenate([model.rows[mask], np.full(len(xs), len(model.row_lo))]),
        np.concatenate([model.vals[mask], np.ones(len(xs))]),
        integer=True, time_limit=left(), mip_rel_gap=mip_rel_gap,
    )
    status = h.getModelStatus().name
    if ok:
        full = np.zeros(model.ncol)
        full[keep] = np.asarray(h.getSolution().col_value)
        consider(full)
    if best is None:
        return result("time limit")
    if status == "kInfeasible":  # no plan with fewer GPUs than the incumbent
        lb = best.gpus_used
        return result("optimal")
    # A better plan would lie among the kept variables, so the capped program's bound holds for it.
    mip_bound = h.getInfo().mip_dual_bound
    if math.isfinite(mip_bound):
        lb = max(lb, min(best.gpus_used, math.ceil(mip_bound - _BOUND_EPS)))
    if best.gpus_used <= lb:
        return result("optimal")
    return result("gap reached" if status == "kOptimal" else "time limit")


def _relabel(plan: DeploymentMap, strategy: str, lower_bound: int | None = None) -> DeploymentMap:
    return DeploymentMap(
        plan.gpu_type, strategy, plan.max_procs, plan.gpus_per_node, plan.segments, plan.services,
        lower_bound, plan.stats,
    )


def _realize(
    values, blocks, model: _Model, columns, gpu: GpuType, services, max_procs: int,
    gpus_per_node: int, strategy: str, time_limit: float,
) -> DeploymentMap | None:
    """Segments from block variables, trimmed, re-packed and placed; None on a packing time-out."""
    segs = _trim(_decode(blocks, model, values), blocks)
    sizes = gpu.sizes
    for _ in range(3):
        counts = Counter(s.size for lst in segs for s in lst)
        x = _pack([counts[s] for s in sizes], columns, time_limit)
        if x is None:
            return None
        plan = _place(segs, x, columns, gpu, services, max_procs, gpus_per_node, strategy)
        cap: dict[str, float] = defaultdict(float)
        for ps in plan.segments:  # summed in plan order, as a checker would
            cap[ps.model] += ps.segment.throughput
        short = {s.model for s in services if cap[s.model] < s.rate}
        if not short:
            return plan
        _top_up(segs, blocks, short)  # a float sum fell a hair short of the rate
    raise AssertionError("optimizer could not decode a plan meeting every rate")


def _members(blocks):
    for b in blocks:
        for svc in b.services:
            yield svc, b


def _decode(blocks, model: _Model, values) -> list[list[Segment]]:
    """Each service's segments (services in block order)."""
    out: list[list[Segment]] = []
    for b_i, b in enumerate(blocks):
        off = model.offsets[b_i]
        if b.covers is not None:
            z = np.round(values[off:off + len(b.covers)]).astype(np.int64)
            chosen = [o for o in np.nonzero(z > 0)[0] for _ in range(z[o])]
            chosen += [int(np.argmin(b.covers.sum(axis=1)))] * (len(b.services) - len(chosen))
            for svc, o in zip(b.services, chosen):
                out.append([
                    Segment(svc.model, t) for (_, t), n in zip(b.options, b.covers[o]) for _ in range(n)
                ])
        else:
            y = np.round(values[off:off + len(b.options)]).astype(np.int64)
            svc = b.services[0]
            out.append([Segment(svc.model, t) for (_, t), n in zip(b.options, y) for _ in range(n)])
    _top_up(out, blocks, None)
    return out


def _top_up(out: list[list[Segment]], blocks, only: set[str] | None) -> None:
    """Add segments where a model falls short of its rate (solver tolerance or float sums)."""
    for segs, (svc, b) in zip(out, _members(blocks)):
        if only is not None and svc.model not in only:
            continue
        need = Fraction(svc.rate)
        have = sum((Fraction(s.throughput) for s in segs), Fraction(0))
        while have < need or (only is not None and svc.model in only):
            gap = need - have
            _, t = next(((k, t) for k, t in b.options if Fraction(t.throughput) >= gap), b.options[-1])
            segs.append(Segment(svc.model, t))
            have += Fraction(t.throughput)
            only = None if only is None else only - {svc.model}


def _trim(out: list[list[Segment]], blocks) -> list[list[Segment]]:
    """Drop segments a model does not need, largest first: fewer GPCs, never more GPUs."""
    res = []
    for segs, (svc, _) in zip(out, _members(blocks)):
        need = Fraction(svc.rate)
        total = sum((Fraction(s.throughput) for s in segs), Fraction(0))
        keep = []
        for s in sorted(segs, key=lambda s: (-s.size, s.throughput)):
            if total - Fraction(s.throughput) >= need:
                total -= Fraction(s.throughput)
            else:
                keep.append(s)
        res.append(keep)
    return res


def _place(
    segs: list[list[Segment]], x, columns: Sequence[Column], gpu: GpuType,
    services: Sequence[Service], max_procs: int, gpus_per_node: int, strategy: str,
) -> DeploymentMap:
    """Give each GPU its layout's placements and fill size-s slots with size-s segments, models in
    service order, so one model's segments sit together."""
    order = {s.model: i for i, s in enumerate(services)}
    queues: dict[int, list[Segment]] = defaultdict(list)
    for s in sorted((s for lst in segs for s in lst), key=lambda s: (order[s.model], -s.size)):
        queues[s.size].append(s)
    pos = {s: 0 for s in queues}
    placed: list[PlacedSegment] = []
    g = 0
    for c, n in zip(columns, x):
        for _ in range(int(n)):
            on_gpu = []
            for size, st in c.placements:
                q = queues.get(size)
                if q is not None and pos[size] < len(q):
                    on_gpu.append(PlacedSegment(q[pos[size]], g, st))
                    pos[size] += 1
            if on_gpu:
                placed.extend(on_gpu)
                g += 1
    left = sum(len(q) - pos[s] for s, q in queues.items())
    if left:  # the packing covers the demand, so this cannot happen
        raise AssertionError(f"optimizer decoding left {left} segments unplaced")
    return DeploymentMap(
        gpu_type=gpu.name, strategy=strategy, max_procs=max_procs, gpus_per_node=gpus_per_node,
        segments=tuple(placed), services=tuple(services),
    )
