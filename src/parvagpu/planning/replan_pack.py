"""Re-planning as packing with few moves: a candidate for `replan` when repairing the running
plan needs more GPUs than the cap because the changed models' covers take too many slices. Pure.

1. *Covers*: for each changed model, the fewest slices it can use with c changes (keep some of
   its running segments, add a multiset of its best triplets per size), for c up to a limit
   (`NARROW`; `WIDE` where the narrow covers leave no choice that fits, see `Packing.plans`).
2. *Choice*: a knapsack over the changed models picks the fewest changes in all whose slices,
   with the other models' running ones, fit in `cap` GPUs less a margin for fragmentation; the
   changes may be weighted by the moves an added 3g or 4g is expected to force (`WEIGHTINGS`,
   each tried in turn while time allows, covers without those sizes offered too). The hole
   weightings come first: each hole of 3+ slices a cover needs costs 2-2.5 changes, a dropped
   3g, 4g or 7g crediting the hole it leaves, and every cover of each (changes, holes) is
   offered (`covers_by_large`), so the choice favours small instances where the drops leave
   small holes (at 1,000 services they leave mostly holes of one or two slices).
3. *Holes*: each model's dropped segments are taken on the least filled GPUs, so the freed slots
   gather; the least filled GPUs beyond the cap are emptied and their segments move as they are
   (same size, batch and processes: two changes each).
4. *Placement*: the added and the moved segments, largest first, go to the hole that fits best
   without stranding a slice (a GPU whose memory slots are all taken while a compute slice is
   free: on the A100, a 3g at slot 0 always strands one); where none fits, one or two segments
   of some GPU move as they are into other holes to make room (segments placed here first: they
   cost nothing more). A model whose segment still finds no room has what is left of its rate
   covered in the holes that remain (smaller sizes). Fails when some of it does not fit.

At 1,000 services the changed models' slice-minimal covers fill the fresh plan's GPUs to within
a few slices, so the knapsack's margin is rarely usable and the moves do the fitting. The first
margin that fits gives the plan.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache, wraps
from itertools import combinations, combinations_with_replacement, count, product

import numpy as np

from parvagpu.core.exact import exact as _exact
from parvagpu.core.model import PlacedSegment, Segment, Triplet
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.space import Space

@dataclass(frozen=True)
class Limits:
    """How far each model's covers are enumerated: at most `changes` changes, of which at most
    `adds` added segments."""

    changes: int
    adds: int


# The narrow limits serve almost every re-plan. Where the fresh optimum fills every slice, some
# model's slice-minimal cover swaps several segments for others (on the A100 three 2g for two
# superlinear 3g, or six 2g for twelve 1g): two 1,000-service draws of ten (20 % of the models
# changed) had no cover choice within the narrow limits at the cap, so packing went one GPU over
# (914 and 788 changes after local re-plans back to the cap); within the wide ones they pack at
# the cap (371 and 296), and the 5,000-service re-plan of `bench_command.py` with them (1,619
# changes, 4,708 before). Made for every changed model, wide covers took 0.5 s more of a
# 1,000-service re-plan (1.53 s against 1.03 s) and twice the memory, so they are made only where
# the narrow ones leave no choice (the tables grow from 462 multisets to 3,003).
NARROW = Limits(10, 6)
WIDE = Limits(20, 10)


def _kept_when_narrow(make):
    """`make(per_size, adds)`, its tables kept (an LRU of 4,096) at the narrow limits: a controller
    re-plans the same models all day. The wide tables serve one re-plan's packing, which keeps the
    covers it reads from them, so only the last few are kept (one model's covers ask for the same
    tables two or three times in a row); all kept, they held 1.2 MB a model (1.3 GB of memory at
    5,000 services, 20 % of the models changed, where the narrow ones took 0.4 GB)."""
    kept = lru_cache(maxsize=4096)(make)
    recent = lru_cache(maxsize=8)(make)

    @wraps(make)
    def tables(per_size: tuple[Triplet, ...], adds: int):
        return (kept if adds == NARROW.adds else recent)(per_size, adds)

    return tables


@lru_cache(maxsize=64)
def _multisets(n: int, a: int) -> np.ndarray:
    """Every multiset of `a` of the indices 0..n-1, one per row (read-only: shared by every
    model with `n` sizes; making them took half the time of a model's wide covers)."""
    rows = list(combinations_with_replacement(range(n), a))
    out = np.array(rows, dtype=np.int64).reshape(len(rows), a)
    out.setflags(write=False)
    return out


@_kept_when_narrow
def _add_tables(per_size: tuple[Triplet, ...], adds: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]:
    """For a = 0..`adds` added segments (multisets of `per_size`): their throughputs ascending,
    the fewest slices of any multiset at least that fast (suffix minima), where that minimum is,
    and the multisets (rows of indices into `per_size`)."""
    thr_of = np.array([t.throughput for t in per_size])
    size_of = np.array([t.size for t in per_size], dtype=np.int64)
    out = []
    for a in range(adds + 1):
        combos = _multisets(len(per_size), a)
        thr = thr_of[combos].sum(axis=1)
        sl = size_of[combos].sum(axis=1)
        order = np.argsort(thr, kind="stable")
        thr, sl, combos = thr[order], sl[order], combos[order]
        n = len(sl) + 1
        key = np.minimum.accumulate((sl * n + np.arange(len(sl)))[::-1])[::-1]  # suffix min, first index
        out.append((thr, key // n, key % n, combos))
    return tuple(out)


@dataclass(frozen=True)
class Cover:
    """One way for a model to meet its rate: how many of each running triplet it keeps, what it
    adds, and the slices and changes that costs."""

    slices: int
    changes: int
    keep: tuple[tuple[Triplet, int], ...]
    add: tuple[Triplet, ...]


def _own_groups(own: list[PlacedSegment]) -> tuple[dict[Triplet, int], list[Triplet]]:
    """A model's running segments counted per triplet, and the triplets in a fixed order."""
    groups: dict[Triplet, int] = defaultdict(int)
    for s in own:
        groups[s.segment.triplet] += 1
    return groups, sorted(groups, key=lambda t: (t.size, t.batch, t.procs, t.throughput))


def _keeps(groups: dict[Triplet, int], keys: list[Triplet], n_own: int, rate: Fraction, most: int):
    """Each way of keeping some of a model's running segments, most kept first, with at most
    `most` removed: (kept per triplet, removed, rate still needed (floats, a hair under the
    rate so that exact ties count as covered), slices kept)."""
    target = float(rate) * (1 - 1e-12)
    for counts in product(*(range(groups[k], -1, -1) for k in keys)):
        removed = n_own - sum(counts)
        if removed > most:
            continue
        need = target - sum(k.throughput * n for k, n in zip(keys, counts))
        yield counts, removed, need, sum(k.size * n for k, n in zip(keys, counts))


def covers(rate: Fraction, own: list[PlacedSegment], per_size: dict[int, Triplet],
           without: frozenset[int] = frozenset(), limits: Limits = NARROW) -> list[Cover | None]:
    """For c = 0..`limits.changes`, the cover with the fewest slices and at most c changes (None where
    none has that few), adding no segment of a size in `without`. Searched in floats; each cover
    kept is checked exactly."""
    per_size = {z: t for z, t in per_size.items() if z not in without}
    groups, keys = _own_groups(own)
    per_size_t = tuple(t for _, t in sorted(per_size.items()))
    most = limits.changes
    tables = _add_tables(per_size_t, limits.adds)
    best: list[tuple | None] = [None] * (most + 1)  # (slices, counts, table, index)
    for counts, removed, need, base in _keeps(groups, keys, len(own), rate, most):
        for a, (thr, least, where, _) in enumerate(tables):
            c = removed + a
            if c > most:
                break
            if need <= 0:
                if best[c] is None or base < best[c][0]:
                    best[c] = (base, counts, 0, 0)
                break  # adding to a model already covered only costs
            i = int(np.searchsorted(thr, need, "left"))
            if i < len(thr) and (best[c] is None or base + least[i] < best[c][0]):
                best[c] = (base + int(least[i]), counts, a, int(where[i]))
    out: list[Cover | None] = [None] * (most + 1)
    checked: dict[tuple, bool] = {}
    for c, found in enumerate(best):
        if found is not None:
            slices, counts, a, j = found
            add = tuple(per_size_t[i] for i in tables[a][3][j])
            keep = tuple((k, n) for k, n in zip(keys, counts))
            if found not in checked:
                held = sum((_exact(k.throughput) * n for k, n in keep if n), Fraction(0))
                checked[found] = held + sum((_exact(t.throughput) for t in add), Fraction(0)) >= rate
            if checked[found]:
                out[c] = Cover(slices, c, keep, add)
    for c in range(1, most + 1):  # at most c changes
        if out[c - 1] is not None and (out[c] is None or out[c - 1].slices <= out[c].slices):
            out[c] = out[c - 1]
    return out


def large(size: int) -> int:
    """The holes of three or more slices an instance of `size` needs on a 7-slice GPU: one for a
    3g or 4g, two for a whole GPU (it takes the room of a 4g and a 3g)."""
    return _LARGE.get(size, 0)


_LARGE = {3: 1, 4: 1, 7: 2}
_LARGE_MAX = 2


@_kept_when_narrow
def _large_tables(per_size: tuple[Triplet, ...], adds: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]:
    """For a = 0..`adds` added segments (`_add_tables`' multisets, in its order): per number of
    holes of 3+ slices the multiset needs (`large`, rows), the fewest slices of any multiset at
    least as fast as column i (suffix minima, inf where none) and where that minimum is.

    Every row of a table at once: row by row, a 1,000-service re-plan's 200 changed models took
    0.25-0.37 s of CPU here, 0.11-0.12 s so."""
    size_of = np.array([t.size for t in per_size], dtype=np.int64)
    large_of = np.array([large(t.size) for t in per_size], dtype=np.int64)
    none = np.iinfo(np.int64).max
    out = []
    for a, (thr, _, _, combos) in enumerate(_add_tables(per_size, adds)):
        sl = size_of[combos].sum(axis=1)
        lg = large_of[combos].sum(axis=1)
        n = len(sl)
        rows = np.arange(_LARGE_MAX * a + 1)[:, None]
        key = np.where(lg[None, :] == rows, sl * (n + 1) + np.arange(n), none)
        key = np.minimum.accumulate(key[:, ::-1], axis=1)[:, ::-1]  # suffix minima, first index
        ok = key != none
        least = np.full((len(rows), n + 1), np.inf)
        where = np.zeros((len(rows), n + 1), dtype=np.int64)
        least[:, :n][ok] = key[ok] // (n + 1)
        where[:, :n][ok] = key[ok] % (n + 1)
        out.append((thr, least, where))
    return tuple(out)


def covers_by_large(rate: Fraction, own: list[PlacedSegment], per_size: dict[int, Triplet],
                    limits: Limits = NARROW) -> list[tuple[int, Cover]]:
    """Per (changes c <= `limits.changes`, holes of 3+ slices the cover's instances need, kept ones
    counted too), the cover with the fewest slices, as (holes, cover) pairs: the covers among
    which `HoleWeighting` trades changes for large instances. Searched in floats; each cover kept
    is checked exactly."""
    groups, keys = _own_groups(own)
    per_size_t = tuple(t for _, t in sorted(per_size.items()))
    most = limits.changes
    tables, ltables = _add_tables(per_size_t, limits.adds), _large_tables(per_size_t, limits.adds)
    width = sum(large(k.size) * n for k, n in groups.items()) + _LARGE_MAX * limits.adds + 1
    best = np.full((most + 1, width), np.inf)
    arg: dict[tuple[int, int], tuple] = {}  # (c, holes) -> (counts, a, row)
    for counts, removed, need, base in _keeps(groups, keys, len(own), rate, most):
        held = sum(large(k.size) * n for k, n in zip(keys, counts))
        if need <= 0:
            if base < best[removed, held]:
                best[removed, held] = base
                arg[(removed, held)] = (counts, 0, 0)
            continue  # adding to a model already covered only costs
        for a, (thr, least, where) in enumerate(ltables):
            c = removed + a
            if c > most:
                break
            i = int(thr.searchsorted(need))
            if i == len(thr):
                continue
            cand = base + least[:, i]
            row = best[c, held:held + len(cand)]
            for L in (cand < row).nonzero()[0]:
                row[L] = cand[L]
                arg[(c, held + int(L))] = (counts, a, int(where[L, i]))
    # Only the covers no other beats on changes, holes and slices at once are worth checking.
    least = np.minimum.accumulate(np.minimum.accumulate(best, axis=0), axis=1)
    before = np.minimum(np.vstack([np.full((1, width), np.inf), least[:-1]]),
                        np.hstack([np.full((most + 1, 1), np.inf), least[:, :-1]]))
    out = []
    for (c, h), (counts, a, j) in sorted(arg.items()):
        if best[c, h] >= before[c, h]:
            continue
        add = tuple(per_size_t[i] for i in tables[a][3][j])
        keep = tuple((k, n) for k, n in zip(keys, counts))
        held = sum((_exact(k.throughput) * n for k, n in keep if n), Fraction(0))
        if held + sum((_exact(t.throughput) for t in add), Fraction(0)) >= rate:
            out.append((h, Cover(int(best[c, h]), c, keep, add)))
    return out


@dataclass(frozen=True)
class Weighting:
    """The moves an added instance of an awkward size is expected to force, in changes per
    instance (`weights`, by size): counted beyond the instances of that size the model itself
    drops, or (`net`) less those it drops, the other models' drops of that size counting too.
    On a 7-slice GPU a 3g fits beside a full 0-3 only at 4-7 and a 4g needs 0-3 free, so the
    holes the drops leave rarely take them without one or two segments moved out (two changes
    each) or a split; the knapsack alone sees only slices."""

    weights: tuple[tuple[int, int], ...]
    net: bool = False

    def cost(self, cov: Cover, own: list[PlacedSegment]) -> int:
        cost = cov.changes
        for z, w in self.weights:
            added = sum(1 for t in cov.add if t.size == z)
            kept = sum(n for t, n in cov.keep if t.size == z)
            dropped = sum(1 for s in own if s.size == z) - kept
            cost += w * (added + kept if self.net else max(0, added - dropped))  # net: offset to stay >= 0
        return cost


@dataclass(frozen=True)
class HoleWeighting:
    """Each hole of three or more slices a cover's instances need (`large`: its added ones and
    the running ones it keeps, so that a model giving up a 3g, 4g or 7g is credited with the
    hole it leaves) costs `per_hole` changes, and every cover of each (changes, holes) is offered
    (`covers_by_large`), not only those with or without a size. After the drops the free slices
    lie mostly in holes of one or two slices, so a large instance beyond the large holes costs a
    move (two changes) or a split; the knapsack then trades those for covers of smaller
    instances, which take a change or a slice more."""

    per_hole: int
    scale: int = 1  # changes count `scale` each: a hole costs per_hole / scale changes

    def cost(self, holes: int, cov: Cover) -> int:
        return self.scale * cov.changes + self.per_hole * holes


# Tried in turn while time allows, the plan with the fewest changes kept; the first does best
# where only one or two fit the time (5,000 services). 20 % of the models changed, changes of
# each at the bound (packing alone, untimed): at 1,000 services (three draws) 296, 272, 246;
# 296, 266, 246; 310, 270, 226; then 332, 287, 247; 329, 283, 257; 329, 307, 271; at 5,000 (one
# draw) 1,849, 1,882, 1,946, then 1,882 (1,951 timed), ...; at 100 (three draws) 15, 14, 20;
# 15, 14, 20; 15, 14, 18; then 13, 14, 23; 12, 14, 23; 12, 14, 20.
WEIGHTINGS: tuple[Weighting | HoleWeighting, ...] = (
    HoleWeighting(3), HoleWeighting(5, 2), HoleWeighting(2), Weighting(((3, 1),), net=True), Weighting(((3, 1), (4, 1))), Weighting(()))


def by_cost(cands: list[Cover | None], own: list[PlacedSegment], weighting: Weighting) -> list[Cover | None]:
    """Covers (`covers`' lists, with and without the awkward sizes, concatenated) indexed by
    their cost under `weighting`: at each cost, the fewest slices of any cover costing at most
    that."""
    return _indexed([(weighting.cost(cov, own), cov) for cov in cands if cov is not None])


def _indexed(costs: list[tuple[int, Cover]]) -> list[Cover | None]:
    """Covers indexed by cost: at each, the fewest slices of any cover costing at most that."""
    out: list[Cover | None] = [None] * (max((c for c, _ in costs), default=0) + 1)
    for cost, cov in costs:
        if out[cost] is None or cov.slices < out[cost].slices:
            out[cost] = cov
    for c in range(1, len(out)):  # at most that cost
        if out[c - 1] is not None and (out[c] is None or out[c - 1].slices <= out[c].slices):
            out[c] = out[c - 1]
    return out


def choose(options: list[list[Cover | None]], budget: int) -> list[Cover] | None:
    """One cover per model: the fewest changes in all whose slices sum to at most `budget`
    (a knapsack by dynamic programming over the total changes); None when none fits."""
    best = np.zeros(1)
    args = []
    for opts in options:
        nxt = np.full(len(best) + len(opts) - 1, np.inf)
        arg = np.full(len(nxt), -1, dtype=np.int64)
        for k, cov in enumerate(opts):
            if cov is None or (k and opts[k - 1] is cov):
                continue
            cand = best + cov.slices
            window = nxt[k:k + len(best)]
            better = cand < window
            window[better] = cand[better]
            arg[k:k + len(best)][better] = k
        best = nxt
        args.append(arg)
    ok = np.nonzero(best <= budget)[0]
    if len(ok) == 0:
        return None
    total = int(ok[0])
    out = []
    for opts, arg in zip(reversed(options), reversed(args)):
        k = int(arg[total])
        out.append(opts[k])
        total -= k
    return out[::-1]


def _strands(gpu, used: int, size: int, start: int) -> bool:
    """Whether an instance at `start` takes more from what a GPU with memory slots `used` can
    still hold than its own compute slices (on the A100, a 3g at slot 0 beside anything at 4-7)."""
    return _placeable(gpu, used) - _placeable(gpu, used | gpu.mask(size, start)) > size


def _placeable(gpu, used: int) -> int:
    """The most compute slices that legal instances in the free memory slots can hold."""
    key = (gpu.name, used)  # by name: hashing the whole GPU type costs more than the lookup
    if key not in _PLACEABLE:
        best = 0
        for layout in gpu.layouts():
            mask = 0
            for z, st in layout:
                mask |= gpu.mask(z, st)
            if not mask & used:
                best = max(best, sum(z for z, _ in layout))
        _PLACEABLE[key] = best
    return _PLACEABLE[key]


_PLACEABLE: dict[tuple[str, int], int] = {}


class _Holes(Space):
    """`Space` with packing's own best fit (never stranding a slice, never on a GPU being
    cleared) and GPUs opened on demand."""

    def __init__(self, gpu, segments) -> None:
        super().__init__(gpu, segments, set())

    def open(self, g: int) -> None:
        """An empty GPU that may take segments."""
        self.state[g] = (0, 0)
        self.buckets[(0, 0)].add(g)

    def spot(self, size: int, besides: int = -1) -> tuple[int, int] | None:
        """Best fit: the GPU left with the fewest free slices, then the lowest id, and its start
        (never on GPU `besides`, never stranding a slice)."""
        best = None
        for (used, compute), members in self.buckets.items():
            if not members or compute + size > self.gpu.compute_slices or members == {besides}:
                continue
            start = self.gpu.best_start(size, used)
            if start is not None:
                if _strands(self.gpu, used, size, start):
                    continue  # a stranded slice: the plan is short of slices, not of GPUs
                cand = (self.gpu.compute_slices - compute - size, min(members - {besides}), start)
                if best is None or cand < best:
                    best = cand
        return None if best is None else best[1:]

    def put(self, seg: Segment, g: int, start: int) -> PlacedSegment:
        placed = PlacedSegment(seg, g, start)
        self.occupy(placed)
        return placed


class Packing:
    """Packing for one re-plan: the changed models' covers are enumerated once, for every cap
    tried (the proven bound, then perhaps a fresh plan's count)."""

    def __init__(self, request: PlanRequest, kept: tuple[PlacedSegment, ...], models: set[str], known: set[int],
                 per_size: dict[str, dict[int, Triplet]]) -> None:
        self.request, self.kept, self.known, self.per_size = request, kept, known, per_size
        self.rate = {s.model: _exact(s.rate) for s in request.services}
        self.own: dict[str, list[PlacedSegment]] = defaultdict(list)
        for s in kept:
            self.own[s.model].append(s)
        have = {m: sum((_exact(s.segment.throughput) for s in segs), Fraction(0)) for m, segs in self.own.items()}
        self.order = sorted(set(models) | {m for m in self.rate if have.get(m, 0) < self.rate[m]})
        self.fixed = sum(s.size for s in kept if s.model not in set(self.order))
        self._covers: dict[tuple[str, frozenset[int], Limits], list[Cover | None]] = {}
        self._by_large: dict[tuple[str, Limits], list[tuple[int, Cover]]] = {}

    def options(self, weighting: Weighting | HoleWeighting = Weighting(()),
                limits: Limits = NARROW) -> list[list[Cover | None]]:
        """Per changed model, by cost under `weighting`, the cover with the fewest slices."""
        out = []
        for m in self.order:
            if isinstance(weighting, HoleWeighting):
                if (m, limits) not in self._by_large:
                    self._by_large[(m, limits)] = covers_by_large(self.rate[m], self.own[m], self.per_size[m], limits)
                costs = [(weighting.cost(h, cov), cov) for h, cov in self._by_large[(m, limits)]]
                low = min((c for c, _ in costs), default=0)  # the same for every choice: dropped
                out.append(_indexed([(c - low, cov) for c, cov in costs]))
                continue
            cands = []
            awkward = frozenset(z for z, _ in weighting.weights)
            for without in (frozenset(), awkward) if awkward else (awkward,):  # ties: the plain cover
                if (m, without, limits) not in self._covers:
                    self._covers[(m, without, limits)] = covers(self.rate[m], self.own[m], self.per_size[m], without,
                                                                limits)
                cands += self._covers[(m, without, limits)]
            out.append(by_cost(cands, self.own[m], weighting))
        return out

    def plans(self, cap: int, deadline: float, hard: float | None = None,
              weightings: tuple = WEIGHTINGS) -> list[tuple[PlacedSegment, ...]]:
        """Plans within `cap` GPUs from the kept segments in which only the changed models change
        covers, plus moves of whole segments: per weighting (`weightings`, in turn), the first margin that
        fits (see the module docstring). Nothing starts after `deadline` but the first weighting's
        first margin, and nothing runs past `hard` (both `time.perf_counter()` instants; `hard`
        defaults to `deadline`)."""
        hard = deadline if hard is None else hard
        found: list[tuple[PlacedSegment, ...]] = []
        for k, weighting in enumerate(weightings):
            if k and time.perf_counter() > deadline:
                break
            fit = self._options_that_fit(weighting, cap)
            if fit is None:
                return found
            options, chosen = fit  # the choice without a margin comes with them
            for i, margin in enumerate(_MARGINS):
                if time.perf_counter() > (deadline if i or k else hard):
                    break
                if i:
                    chosen = choose(options, cap * self.request.gpu.compute_slices - self.fixed - margin)
                if chosen is None:
                    break
                placed = _place(self.request, self.kept, dict(zip(self.order, chosen)), self.own, cap, self.known,
                                self.per_size, self.rate, hard)
                if placed is not None:
                    found.append(placed)
                    break
        return found

    def _options_that_fit(self, weighting, cap: int) -> tuple[list[list[Cover | None]], list[Cover]] | None:
        """`options` within the narrow limits, or the wide ones where the narrow leave some model
        without a cover or no choice within `cap` GPUs (without a margin), with that choice (the
        knapsack at 1,000 changed models is worth not running twice); None where neither has one."""
        budget = cap * self.request.gpu.compute_slices - self.fixed
        for limits in (NARROW, WIDE):
            options = self.options(weighting, limits)
            if all(any(c is not None for c in opts) for opts in options):
                chosen = choose(options, budget)
                if chosen is not None:
                    return options, chosen
        return None


def pack(request: PlanRequest, kept: tuple[PlacedSegment, ...], models: set[str], cap: int, known: set[int],
         per_size: dict[str, dict[int, Triplet]], deadline: float) -> list[tuple[PlacedSegment, ...]]:
    """`Packing(...).plans(cap, deadline)`: the models in `models` (and any short of its rate)
    change covers; one plan per weighting that fits."""
    return Packing(request, kept, models, known, per_size).plans(cap, deadline)


_MARGINS = (0, 3, 7, 14, 28, 56)  # slices kept free for fragmentation, tried in turn


def _drops(gpu, kept, chosen: dict[str, Cover], own) -> set[PlacedSegment]:
    """The running segments the models give up, one at a time, each time the one whose slot
    opens the largest instance on its GPU (a drop that completes a free 3g or 4g region), then
    the one on the least filled GPU, so that the freed slots gather into holes the added
    segments fit."""
    used: dict[int, int] = defaultdict(int)
    fill: dict[int, int] = defaultdict(int)
    for s in kept:
        used[s.gpu] |= gpu.mask(s.size, s.start)
        fill[s.gpu] += s.size
    pending: list[list] = []  # [how many to drop, instances alike]
    for m in sorted(chosen):
        keep = dict(chosen[m].keep)
        by_t: dict[Triplet, list[PlacedSegment]] = defaultdict(list)
        for s in own[m]:
            by_t[s.segment.triplet].append(s)
        for t, segs in sorted(by_t.items(), key=lambda kv: (kv[0].size, kv[0].throughput)):
            if len(segs) > keep.get(t, 0):
                pending.append([len(segs) - keep.get(t, 0), segs])
    version: dict[int, int] = defaultdict(int)  # drops so far per GPU: a key older is stale
    heap: list = []
    order = count()  # ties never reach the segments

    def push(s: PlacedSegment, group: list) -> None:
        key = (-_opens(gpu, used[s.gpu] & ~gpu.mask(s.size, s.start)), fill[s.gpu] - s.size, s.gpu, s.start)
        heapq.heappush(heap, (key, version[s.gpu], next(order), s, group))

    for group in pending:
        for s in group[1]:
            push(s, group)
    gone: set[PlacedSegment] = set()
    while heap:
        _, seen, _, s, group = heapq.heappop(heap)
        if group[0] == 0 or s in gone:
            continue
        if seen != version[s.gpu]:
            push(s, group)
            continue
        group[0] -= 1
        gone.add(s)
        used[s.gpu] &= ~gpu.mask(s.size, s.start)
        fill[s.gpu] -= s.size
        version[s.gpu] += 1
    return gone


def _opens(gpu, used: int) -> int:
    """The largest instance that fits on a GPU whose memory slots `used` are taken."""
    key = (gpu.name, used)
    if key not in _OPENS:
        _OPENS[key] = max((z for z in gpu.sizes if gpu.best_start(z, used) is not None), default=0)
    return _OPENS[key]


_OPENS: dict[tuple[str, int], int] = {}


def _place(request, kept, chosen: dict[str, Cover], own, cap: int, known: set[int], per_size, rate,
           deadline: float = float("inf")):
    """The chosen covers placed (see the module docstring), or None when they do not fit or
    `deadline` passes first."""
    gone = _drops(request.gpu, kept, chosen, own)
    stay = [s for s in kept if s not in gone]
    fill: dict[int, int] = defaultdict(int)
    count: dict[int, int] = defaultdict(int)
    for s in stay:
        fill[s.gpu] += s.size
        count[s.gpu] += 1
    extra = len(fill) - cap
    emptied = set(sorted(fill, key=lambda g: (fill[g], count[g], g))[:max(0, extra)])
    spare = sorted(known - set(fill))[: max(0, -extra)]
    nxt = max(known | set(fill), default=-1) + 1
    while len(spare) < -extra:
        spare.append(nxt)
        nxt += 1
    room = _Room(request.gpu, [s for s in stay if s.gpu not in emptied], spare)
    pool = [(Segment(m, t), True) for m in sorted(chosen) for t in chosen[m].add]
    pool += [(s.segment, False) for s in stay if s.gpu in emptied]
    for m, cov in chosen.items():  # what the chosen covers give beyond the rates
        room.surplus[m] = sum((_exact(t.throughput) * n for t, n in cov.keep), Fraction(0)) + sum(
            (_exact(t.throughput) for t in cov.add), Fraction(0)) - rate[m]
    room.per_size = per_size
    short: dict[str, Fraction] = defaultdict(Fraction)
    for seg, added in sorted(pool, key=lambda p: (-p[0].size, p[0].model)):
        if time.perf_counter() > deadline:
            return None
        if not room.take(seg, added):
            short[seg.model] += _exact(seg.triplet.throughput)
    for m in sorted(short):
        if not room.cover(m, short[m], per_size[m]):
            return None
    return room.segments()


class _Room:
    """Placement into holes (mutable): a segment goes where it fits best, else into an empty
    spare GPU, else where moving one or two segments out of a GPU to other holes makes room
    (running segments moved as they are cost two changes each; segments placed here are free
    to move)."""

    def __init__(self, gpu, stay: list[PlacedSegment], spare: list[int]) -> None:
        self.gpu = gpu
        self.holes = _Holes(gpu, stay)
        self.on: dict[int, list[PlacedSegment]] = defaultdict(list)
        for s in stay:
            self.on[s.gpu].append(s)
        self._stay = stay  # alive, so that the ids below stay theirs
        self.running = {id(s) for s in stay}
        self.kind_of: dict[int, tuple] = {}  # GPU -> its layout and segments (see `_rekind`)
        self.alike: dict[tuple, set[int]] = defaultdict(set)  # layout and segments -> GPUs
        for g in self.on:
            self._rekind(g)
        self.spare = list(spare)
        self.moves = 0
        self.surplus: dict[str, Fraction] = {}  # per changed model: capacity beyond its rate
        self.per_size: dict[str, dict[int, Triplet]] = {}

    def segments(self) -> tuple[PlacedSegment, ...]:
        return tuple(s for g in sorted(self.on) for s in self.on[g])

    def _put(self, seg: Segment, g: int, start: int) -> None:
        self.on[g].append(self.holes.put(seg, g, start))
        self._rekind(g)

    def _lift(self, s: PlacedSegment) -> None:
        self.on[s.gpu].remove(s)
        self.holes.remove(s)
        self._rekind(s.gpu)

    def _rekind(self, g: int) -> None:
        """File GPU `g` under its memory mask and segments (size, start, whether running):
        GPUs alike offer the same room at the same cost."""
        if g in self.kind_of:
            self.alike[self.kind_of[g]].discard(g)
        key = (self.holes.state[g][0], tuple(sorted((id(s) in self.running, s.size, s.start) for s in self.on[g])))
        self.kind_of[g] = key
        self.alike[key].add(g)

    def _movable(self, g: int) -> list[PlacedSegment]:
        """GPU `g`'s segments, cheapest to move first (placed here, then smaller)."""
        return sorted(self.on[g], key=lambda s: (id(s) in self.running, s.size, s.start))

    def take(self, seg: Segment, added: bool = False) -> bool:
        """Place `seg`; an `added` one may instead be split into smaller segments of its model
        (one change more per extra segment) where that is cheaper than moving others."""
        spot = self.holes.spot(seg.size)
        if spot is None and self.spare:
            self.holes.open(self.spare.pop(0))
            spot = self.holes.spot(seg.size)
        if spot is not None:
            self._put(seg, *spot)
            return True
        move = self._room_for(seg)
        split = self._split(seg) if added else None
        if split is not None and (move is None or split[0] <= move[0]):
            for t in split[1]:
                self._put(Segment(seg.model, t), *self.holes.spot(t.size))
            self.surplus[seg.model] += sum((_exact(t.throughput) for t in split[1]), Fraction(0)) - _exact(
                seg.triplet.throughput)
            return True
        if move is None:
            return False
        _, g, out = move
        for o in out:
            self._lift(o)
        used, _ = self.holes.state[g]
        self._put(seg, g, self.gpu.best_start(seg.size, used))
        for o in sorted(out, key=lambda o: -o.size):
            self._put(o.segment, *self.holes.spot(o.size, besides=g))
        self.moves += sum(id(o) in self.running for o in out)
        return True

    def _split(self, seg: Segment) -> tuple[int, tuple[Triplet, ...]] | None:
        """Smaller segments of `seg`'s model, no more slices in all, that cover what `seg` was
        to (less the model's surplus) and fit the holes now: the fewest, with its extra changes."""
        need = _exact(seg.triplet.throughput) - self.surplus.get(seg.model, Fraction(0))
        smaller = [t for z, t in sorted(self.per_size.get(seg.model, {}).items()) if z < seg.size]
        for k in (1, 2, 3):
            fits = [c for c in combinations_with_replacement(smaller, k)
                    if sum(t.size for t in c) <= seg.size
                    and sum((_exact(t.throughput) for t in c), Fraction(0)) >= need and self._fit_all(c)]
            if fits:
                return k - 1, min(fits, key=lambda c: (sum(t.size for t in c), -sum(t.throughput for t in c)))
        return None

    def _fit_all(self, triplets) -> bool:
        """Whether segments of these sizes all fit the holes now (tried for real and undone)."""
        placed = []
        for t in sorted(triplets, key=lambda t: -t.size):
            spot = self.holes.spot(t.size)
            if spot is None:
                break
            placed.append(self.holes.put(Segment("", t), *spot))
        for p in placed:
            self.holes.remove(p)
        return len(placed) == len(triplets)

    def _room_for(self, seg: Segment):
        """The cheapest one or two segments (no more slices than `seg`'s) of some GPU to move to
        holes of other GPUs so that `seg` fits there, losing no slice: (changes, GPU, segments),
        or None. GPUs alike (same layout, same segments movable at the same cost) are looked at
        once."""
        gpu, size = self.gpu, seg.size
        best = None
        for g in sorted(min(members) for members in self.alike.values() if members):
            used, compute = self.holes.state[g]
            if compute == 0:
                continue
            here = self._movable(g)
            for k in (1, 2):
                for out in combinations(here, k):
                    cost = 2 * sum(id(s) in self.running for s in out)
                    if sum(o.size for o in out) > size or (best is not None and cost >= best[0]):
                        continue
                    mask = used
                    for o in out:
                        mask &= ~gpu.mask(o.size, o.start)
                    start = gpu.best_start(size, mask)
                    if start is None:
                        continue
                    if not _strands(gpu, mask, size, start) and self._relocatable(g, out):
                        best = (cost, g, out)
            if best is not None and best[0] == 0:
                break
        return best

    def _relocatable(self, g: int, out) -> bool:
        """Whether the segments `out` of GPU `g` all fit in holes of other GPUs (tried for real
        and undone)."""
        placed = []
        ok = True
        for o in sorted(out, key=lambda o: -o.size):
            spot = self.holes.spot(o.size, besides=g)
            if spot is None:
                ok = False
                break
            placed.append(self.holes.put(o.segment, *spot))
        for p in placed:
            self.holes.remove(p)
        return ok

    def cover(self, model: str, need: Fraction, per_size: dict[int, Triplet]) -> bool:
        """Cover `need` in the holes left: each time the smallest fitting size that covers what
        is left, else the fastest fitting one (an empty spare GPU when nothing fits)."""
        while need > 0:
            fitting = [(t, self.holes.spot(t.size)) for _, t in sorted(per_size.items())]
            fitting = [(t, sp) for t, sp in fitting if sp is not None]
            if not fitting:
                if not self.spare:
                    return False
                self.holes.open(self.spare.pop(0))
                continue
            t, sp = next(((t, sp) for t, sp in fitting if _exact(t.throughput) >= need), None) or max(
                fitting, key=lambda x: x[0].throughput)
            self._put(Segment(model, t), *sp)
            need -= _exact(t.throughput)
        return True
