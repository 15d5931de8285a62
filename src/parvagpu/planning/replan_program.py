"""The move-aware integer program: the fewest changed segments within a GPU cap, solved by HiGHS.

Data
    g          the running plan's GPUs; K_g its kept-worthy segments (see `replan`).
    columns    for each g, every non-empty subset K of K_g with each maximal *extension*: the
               counts e[s] of new instances that fit beside K in some legal layout.
    layouts    the maximal MIG layouts a[c, s] (`mig_columns`), for GPUs planned afresh.
    T[m, s]    the best admissible triplet of model m with size s (the configurator's rule).

Variables
    w[g, j] in {0, 1}   GPU g keeps subset K_j and may take the extension e_j
    x[c]    in Z>=0     GPUs (any not kept, or new) laid out afresh with layout c
    y[m, s] in Z>=0     new segments of model m with size s

Model
    minimise    B * (removed + added) + GPUs, B = cap + 1, with removed = |kept-worthy| - sum |K_j| w[g, j]
    subject to  sum_j w[g, j] <= 1                                                for every g
                sum_(g,j) thr_m(K_j) w[g, j] + sum_s T[m, s] y[m, s] >= rate[m]     for every model m
                sum_m y[m, s] - sum_(g,j) e_j[s] w[g, j] - sum_c a[c, s] x[c] <= 0  for every size s
                sum w + sum x <= cap

B makes one change cost more than every GPU the cap allows, so the order is lexicographic: changes
first within the cap (the cap itself is the fresh plan's GPU count, the first objective), then
GPUs. The best candidate found so far is passed to HiGHS as the starting solution, so the result is
never worse than it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from functools import lru_cache

import numpy as np

from parvagpu.core.gpus import GpuType
from parvagpu.core.model import PlacedSegment, Segment, Triplet
from parvagpu.planning.optimizer.columns import mig_columns
from parvagpu.planning.optimizer.highs import _csc, _highs, run_by
from parvagpu.planning.request import PlanRequest


@lru_cache(maxsize=None)
def _layout_sets(gpu: GpuType) -> tuple[frozenset, ...]:
    return tuple(frozenset(lay) for lay in gpu.layouts()) + (frozenset(),)


@lru_cache(maxsize=200_000)
def extensions(gpu: GpuType, kept: tuple[tuple[int, int], ...]) -> tuple[tuple[int, ...], ...]:
    """The maximal count vectors (over `gpu.sizes`) of instances that fit beside `kept`."""
    k = frozenset(kept)
    sizes = gpu.sizes
    vecs = {
        tuple(sum(1 for s, _ in lay - k if s == z) for z in sizes)
        for lay in _layout_sets(gpu) if k <= lay
    }
    return tuple(sorted(
        v for v in vecs if not any(w != v and all(a <= b for a, b in zip(v, w)) for w in vecs)
    ))


def extension_layout(gpu: GpuType, kept: tuple[tuple[int, int], ...], sizes: list[int]) -> list[int] | None:
    """Starts for new instances of `sizes` beside `kept`: greedily where they leave the most room,
    else from a legal layout holding them all; None when they do not fit."""
    used = 0
    for s, st in kept:
        used |= gpu.mask(s, st)
    starts = []
    for size in sizes:
        st = gpu.best_start(size, used)
        if st is None:
            break
        starts.append(st)
        used |= gpu.mask(size, st)
    else:
        return starts
    k = frozenset(kept)
    for lay in _layout_sets(gpu):
        if k <= lay:
            rest = sorted(lay - k)
            out = []
            for size in sizes:
                hit = next((p for p in rest if p[0] == size), None)
                if hit is None:
                    break
                rest.remove(hit)
                out.append(hit[1])
            else:
                return out
    return None


class _Program:
    """The matrix in coordinate form, columns appended in order: w, then x, then y."""

    def __init__(self) -> None:
        self.cols: list[int] = []
        self.rows: list[int] = []
        self.vals: list[float] = []
        self.cost: list[float] = []
        self.upper: list[float] = []
        self.integer: list[int] = []

    def column(self, cost: float, upper: float, entries: list[tuple[int, float]]) -> int:
        j = len(self.cost)
        self.cost.append(cost)
        self.upper.append(upper)
        for r, v in entries:
            self.cols.append(j)
            self.rows.append(r)
            self.vals.append(v)
        return j


def solve_moves(
    request: PlanRequest, kept: tuple[PlacedSegment, ...], cap: int, start: tuple[PlacedSegment, ...],
    known: set[int], deadline: float, open_gpus: set[int] | None = None,
) -> tuple[PlacedSegment, ...] | None:
    """The program's plan (segments), or None when HiGHS finds none by `deadline` (a
    `time.perf_counter()` instant; the solve is abandoned there, see `run_by`).

    GPUs outside `open_gpus` (all when None) keep every segment: they get only the columns that
    keep all, and must be used, so the program stays small on large clusters."""
    gpu = request.gpu
    sizes = gpu.sizes
    big = float(cap + 1)
    by_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in kept:
        by_gpu[s.gpu].append(s)
    gpus = sorted(by_gpu)
    models = [svc.model for svc in request.services]
    n_g, n_m, n_s = len(gpus), len(models), len(sizes)
    r_model = {m: n_g + i for i, m in enumerate(models)}
    r_size = n_g + n_m
    r_cap = r_size + n_s
    prog = _Program()

    wcols: list[tuple[int, int, tuple[int, ...]]] = []  # (gpu, subset mask, extension)
    for gi, g in enumerate(gpus):
        segs = sorted(by_gpu[g], key=lambda s: s.start)
        full = (1 << len(segs)) - 1
        masks = range(1, full + 1) if open_gpus is None or g in open_gpus else (full,)
        for mask in masks:
            sub = [s for i, s in enumerate(segs) if mask >> i & 1]
            thr: dict[str, float] = defaultdict(float)
            for s in sub:
                thr[s.model] += s.segment.throughput
            for ext in extensions(gpu, tuple(sorted((s.size, s.start) for s in sub))):
                entries = [(gi, 1.0), (r_cap, 1.0)] + [(r_model[m], v) for m, v in thr.items()]
                entries += [(r_size + k, -float(e)) for k, e in enumerate(ext) if e]
                prog.column(1.0 - big * len(sub), 1.0, entries)
                wcols.append((g, mask, ext))
    layouts = mig_columns(gpu)
    x0 = len(prog.cost)
    for c in layouts:
        entries = [(r_cap, 1.0)] + [(r_size + k, -float(a)) for k, a in enumerate(c.counts) if a]
        prog.column(1.0, float(cap), entries)
    ycols: list[tuple[str, int, Triplet]] = []
    y0 = len(prog.cost)
    for svc, per_size in zip(request.services, request.best_by_size):
        for size, t in sorted(per_size.items()):
            prog.column(big, float(np.ceil(svc.rate / t.throughput)),
                        [(r_model[svc.model], t.throughput), (r_size + sizes.index(size), 1.0)])
            ycols.append((svc.model, size, t))
    fixed = [0.0 if open_gpus is None or g in open_gpus else 1.0 for g in gpus]
    row_lo = np.concatenate([np.where(fixed, 1.0, -np.inf), [s.rate for s in request.services],
                             np.full(n_s, -np.inf), [-np.inf]])
    row_hi = np.concatenate([np.ones(n_g), np.full(n_m, np.inf), np.zeros(n_s), [float(cap)]])
    values = _run(prog, row_lo, row_hi, _start_values(request, start, by_gpu, wcols, layouts, ycols, x0, y0,
                                                      len(prog.cost)), deadline)
    if values is None:
        return None
    return _decode(request, values, by_gpu, wcols, layouts, ycols, x0, y0, known)


def _start_values(request, start, by_gpu, wcols, layouts, ycols, x0, y0, n) -> np.ndarray | None:
    """The starting plan as program values, or None if it cannot be expressed."""
    gpu = request.gpu
    sizes = gpu.sizes
    kept_keys = {(s.gpu, s.start, s.model, s.size, s.segment.triplet.batch, s.segment.triplet.procs): s
                 for g in by_gpu.values() for s in g}
    vals = np.zeros(n)
    col_of: dict[tuple[int, int], list[tuple[tuple[int, ...], int]]] = defaultdict(list)
    for j, (g, mask, ext) in enumerate(wcols):
        col_of[(g, mask)].append((ext, j))
    on_gpu: dict[int, list[PlacedSegment]] = defaultdict(list)
    for s in start:
        on_gpu[s.gpu].append(s)
    y_of = {(m, size): y0 + i for i, (m, size, _) in enumerate(ycols)}
    for g, segs in on_gpu.items():
        mask, new = 0, [0] * len(sizes)
        order = sorted(by_gpu.get(g, []), key=lambda s: s.start)
        for s in segs:
            key = (s.gpu, s.start, s.model, s.size, s.segment.triplet.batch, s.segment.triplet.procs)
            if key in kept_keys:
                mask |= 1 << order.index(kept_keys[key])
            else:
                new[sizes.index(s.size)] += 1
                j = y_of.get((s.model, s.size))
                if j is None:
                    return None
                vals[j] += 1
        if mask:
            j = next((j for e, j in col_of[(g, mask)] if all(a >= b for a, b in zip(e, new))), None)
        else:
            j = next((x0 + c for c, lay in enumerate(layouts) if all(a >= b for a, b in zip(lay.counts, new))), None)
        if j is None:
            return None
        vals[j] += 1
    return vals


def _run(prog: _Program, row_lo, row_hi, start, deadline: float) -> np.ndarray | None:
    if deadline - time.perf_counter() < _MIN_SOLVE_S:
        return None  # building the program used the time: the warm start stays the best
    h = _highs()
    h.setOptionValue("time_limit", max(deadline - time.perf_counter(), 1e-3))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1.0 - 1e-6)  # the objective is integral
    h.setOptionValue("presolve", "off")
    # As in the optimizer: these run without checking the time limit and find nothing the
    # starting solution does not already give.
    h.setOptionValue("mip_heuristic_run_feasibility_jump", False)
    h.setOptionValue("mip_detect_symmetry", False)
    n = len(prog.cost)
    starts, index, value = _csc(np.array(prog.cols, dtype=np.int64), np.array(prog.rows, dtype=np.int64),
                                np.array(prog.vals, dtype=np.float64), n)
    h.passModel(
        n, len(row_lo), len(value), 1, 1, 0.0, np.array(prog.cost), np.zeros(n), np.array(prog.upper),
        np.asarray(row_lo, dtype=np.float64), np.asarray(row_hi, dtype=np.float64), starts, index, value,
        np.ones(n, dtype=np.int32),
    )
    if start is not None:
        h.setSolution(n, np.arange(n, dtype=np.int32), np.asarray(start, dtype=np.float64))
    if not run_by(h, deadline):
        return None
    if h.getInfo().primal_solution_status != 2:
        return None
    return np.round(np.asarray(h.getSolution().col_value)).astype(np.int64)


_MIN_SOLVE_S = 0.05  # seconds a solve needs to be worth starting


def _decode(request, values, by_gpu, wcols, layouts, ycols, x0, y0, known) -> tuple[PlacedSegment, ...] | None:
    """Kept subsets, then new segments into the extensions of kept GPUs, then fresh GPUs."""
    gpu = request.gpu
    sizes = gpu.sizes
    pool: dict[int, list[Segment]] = defaultdict(list)
    for i, (m, size, t) in enumerate(ycols):
        pool[size].extend([Segment(m, t)] * int(values[y0 + i]))
    out: list[PlacedSegment] = []
    hosts: list[tuple[int, tuple, tuple[int, ...]]] = []  # (GPU, kept placements, room per size)
    for j, (g, mask, ext) in enumerate(wcols):
        if values[j] > 0:
            segs = sorted(by_gpu[g], key=lambda s: s.start)
            sub = [s for i, s in enumerate(segs) if mask >> i & 1]
            out.extend(sub)
            hosts.append((g, tuple(sorted((s.size, s.start) for s in sub)), ext))
    used_ids = {g for g, _, _ in hosts}
    free_ids = sorted(known - used_ids)
    nxt = max(known, default=-1) + 1
    for c, lay in enumerate(layouts):
        for _ in range(int(values[x0 + c])):
            if free_ids:
                g = free_ids.pop(0)
            else:
                g, nxt = nxt, nxt + 1
            hosts.append((g, (), lay.counts))
    for g, kept, room in hosts:
        take = []
        for k in reversed(range(len(sizes))):  # larger instances first
            for _ in range(min(room[k], len(pool[sizes[k]]))):
                take.append(pool[sizes[k]].pop(0))
        if not take:
            continue
        starts = extension_layout(gpu, kept, [s.size for s in take])
        if starts is None:
            return None
        out.extend(PlacedSegment(s, g, st) for s, st in zip(take, starts))
    if any(pool.values()):
        return None
    return tuple(out)
