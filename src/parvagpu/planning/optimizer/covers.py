"""Minimal covers: the ways one service's rate can be met by segments of its sizes, from which no
segment can be dropped (the cover variables of the program)."""

from __future__ import annotations

from collections import defaultdict
from fractions import Fraction
from typing import Sequence

import numpy as np

# Most cover candidates enumerated for one block before it falls back to the y form.
MAX_COVER_GRID = 20_000


def minimal_covers(rate: float, throughputs: Sequence[float], limit: int | None = None):
    """All minimal covers of `rate` by segments of the given throughputs, as an int array (one row
    per cover, one column per throughput), or None when more than `limit` candidates would have to
    be enumerated."""
    return covers_many([(rate, tuple(throughputs))], limit)[0]


_CHUNK_ROWS = 400_000  # candidates enumerated at once (bounds memory, not results)


def covers_many(items: Sequence[tuple[float, tuple[float, ...]]], limit: int | None = None) -> list:
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
