"""A lower bound on the segments any plan within a GPU count must change, by counting slices.

A plan with at most `gpus` GPUs holds at most `gpus` x (compute slices) slices. For each model,
whatever the layout, its segments are some of its running (admissible) segments kept plus added
ones of its admissible sizes, covering its rate; it changes the running ones it drops plus the
ones it adds. f_m(c), the fewest slices model m can use with at most c changes, is found by
enumeration (how many of each kind of running segment it keeps x added multisets of its best triplet
per size); the fewest changes
whose slices fit the budget (a multiple-choice knapsack, by dynamic programming over the total
changes) is then a lower bound for every plan: layouts only add constraints. Running segments
that are no longer admissible count as changes in every plan."""

from __future__ import annotations

from itertools import product

import numpy as np

from parvagpu.planning.replan import admissible_segments, per_size_table
from parvagpu.planning.replan_pack import _add_tables as pack_tables
from parvagpu.planning.request import PlanRequest

MAX_MODEL_CHANGES = 20  # 12 (and 6 added) left two 1,000-service draws unbounded; 30 and 14 give the same bounds there


_ADD_MAX = 10  # most added segments per model enumerated
_TOL = 1e-9  # a cover within this relative distance of the rate counts (only loosens the bound)


def _add_tables(per_size: dict) -> list[tuple[np.ndarray, np.ndarray]]:
    """For a = 0.._ADD_MAX added segments: their throughputs, ascending, and the fewest slices
    of any a-multiset with at least that throughput (suffix minima): packing's own tables."""
    ordered = tuple(t for _, t in sorted(per_size.items()))
    return [(thr, least) for thr, least, _, _ in pack_tables(ordered, _ADD_MAX)]


def _fewest_slices(old: list, per_size: dict, rate: float) -> np.ndarray:
    """f(c) for c = 0..MAX_MODEL_CHANGES: the fewest slices with at most c changes (inf where no
    cover has that few)."""
    out = np.full(MAX_MODEL_CHANGES + 1, np.inf)
    tables = _add_tables(per_size)
    groups: dict[tuple, int] = {}  # (size, throughput) -> running segments alike (interchangeable)
    for s in old:
        key = (s.size, s.segment.throughput)
        groups[key] = groups.get(key, 0) + 1
    keys = list(groups)
    for counts in product(*(range(groups[k] + 1) for k in keys)):
        removed = len(old) - sum(counts)
        need = (rate - sum(n * k[1] for n, k in zip(counts, keys))) * (1 - _TOL)
        base = sum(n * k[0] for n, k in zip(counts, keys))
        for a, (thr, least) in enumerate(tables):
            if removed + a > MAX_MODEL_CHANGES:
                break
            i = int(np.searchsorted(thr, need, "left"))
            if i < len(thr):
                out[removed + a] = min(out[removed + a], base + least[i])
    return np.minimum.accumulate(out)


def change_bound(request: PlanRequest, gpus: int) -> int | None:
    """The fewest changed segments of any plan of `request` from `request.current` that uses at
    most `gpus` GPUs (None when more than the enumeration covers would be needed)."""
    kept, dropped = admissible_segments(request)
    table = per_size_table(request)
    own: dict[str, list] = {}
    for s in kept:
        own.setdefault(s.model, []).append(s)
    best = np.array([0.0])  # best[c]: fewest slices with c changes in all
    for svc in request.services:
        old = own.get(svc.model, [])
        f = _fewest_slices(old, table[svc.model], svc.rate)
        nxt = np.full(len(best) + MAX_MODEL_CHANGES, np.inf)
        for c, sl in enumerate(f):
            if np.isfinite(sl):
                nxt[c:c + len(best)] = np.minimum(nxt[c:c + len(best)], best + sl)
        best = nxt[: np.max(np.nonzero(np.isfinite(nxt))) + 1]
    budget = gpus * request.gpu.compute_slices
    ok = np.nonzero(best <= budget)[0]
    return None if len(ok) == 0 else int(ok[0]) + dropped


def others_can_stay(request: PlanRequest, model: str, gpus: int) -> bool:
    """Whether some plan with at most `gpus` GPUs changes no segment but `model`'s: every other
    model's admissible running segments stay where they are (and must still cover its rate), and
    `model` is re-covered in what they leave free (its own segments may all go). Exact:
    throughputs add up, so the model's most capacity is, per GPU, the best legal layout of the
    free slots (each size at its fastest triplet: the best admissible one or a running one of
    that size), and each GPU nothing else uses holds its fastest full layout."""
    kept, _ = admissible_segments(request)
    others = sum(1 for s in request.current.segments if s.model != model)
    if sum(1 for s in kept if s.model != model) < others:
        return False  # another model's running segment that cannot stay is a change in every plan
    have: dict[str, float] = {}
    for s in kept:
        have[s.model] = have.get(s.model, 0.0) + s.segment.throughput
    if any(have.get(s.model, 0.0) < s.rate * (1 - _TOL) for s in request.services if s.model != model):
        return False
    gpu = request.gpu
    fastest = {z: t.throughput for z, t in per_size_table(request)[model].items()}
    for s in kept:
        if s.model == model:
            fastest[s.size] = max(fastest.get(s.size, 0.0), s.segment.throughput)
    used: dict[int, int] = {}
    for s in kept:
        if s.model != model:
            used[s.gpu] = used.get(s.gpu, 0) | gpu.mask(s.size, s.start)
    if len(used) > gpus:
        return False
    best: dict[int, float] = {}

    def most(mask: int) -> float:
        if mask not in best:
            best[mask] = max((sum(fastest.get(z, 0.0) for z, st in layout if not gpu.mask(z, st) & mask)
                              for layout in gpu.layouts()), default=0.0)
        return best[mask]

    rate = next(s.rate for s in request.services if s.model == model)
    capacity = sum(most(m) for m in used.values()) + (gpus - len(used)) * most(0)
    return capacity >= rate * (1 - _TOL)


def fewest_changes(request: PlanRequest, gpus: int, start, time_limit: float) -> tuple[int | None, bool]:
    """The fewest changed segments of any plan of `request` from `request.current` within `gpus`
    GPUs, by the re-planner's move-aware program (`replan_program.solve_moves`) with every GPU
    open, warm-started with `start` (a plan's segments), and whether it is proven: HiGHS runs
    with a zero gap and stops early only at the optimum, so a solve that ends before its limit
    proved it. The program's model is complete for this question: a new segment of a size is
    best taken at that size's best triplet, and every legal placement beside kept segments is one
    of its extensions. (None, False) when it finds no plan in time."""
    import time

    from parvagpu.planning.replan import _base, _candidate
    from parvagpu.planning.replan_program import solve_moves

    base = _base(request, "auto")
    t0 = time.perf_counter()
    found = solve_moves(request, base.kept, gpus, start, set(base.known), t0 + time_limit, None)
    proven = time.perf_counter() - t0 < time_limit - 0.5
    if found is None:
        return None, False
    return _candidate("exact", found, request).changes, proven
