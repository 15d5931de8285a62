"""Splitting one model's requests over its segments in proportion to their throughput.

Smooth weighted round-robin (the nginx algorithm) on integer weights: deterministic, and after any
n requests each segment has received within one request of its exact share, so a segment never sees
a burst that its share alone would not cause. Weights are the throughputs quantised to
`resolution` parts, which makes the pick sequence periodic with period `sum(weights)`: the
simulator tiles one period instead of stepping the router per request, and gets exactly the
sequence the serving ingress produces.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Sequence

from parvagpu.core.errors import ParvaError

DEFAULT_RESOLUTION = 10000


def quantise(shares: Sequence[float], resolution: int = DEFAULT_RESOLUTION) -> tuple[int, ...]:
    """Integer weights proportional to `shares`, each at least 1 (a segment always gets traffic),
    divided by their common divisor so the period is as short as possible."""
    if not shares:
        raise ParvaError("a router needs at least one segment")
    if any(not (s > 0) for s in shares):
        raise ParvaError(f"segment throughputs must be positive, got {list(shares)}")
    total = float(sum(shares))
    w = [max(1, round(resolution * s / total)) for s in shares]
    g = math.gcd(*w)
    return tuple(x // g for x in w)


class WeightedRouter:
    """Stateful smooth weighted round-robin over segment indices 0..k-1."""

    def __init__(self, shares: Sequence[float], resolution: int = DEFAULT_RESOLUTION) -> None:
        self.weights = quantise(shares, resolution)
        self.total = sum(self.weights)
        self._current = [0] * len(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    def pick(self, eligible: Callable[[int], bool] | None = None) -> int | None:
        """Next segment. With `eligible`, the best-credited eligible segment instead (spill-over
        when the scheduled one is full); None when no segment is eligible. Ties go to the lowest
        index, so the sequence is reproducible."""
        cur, w = self._current, self.weights
        for i, wi in enumerate(w):
            cur[i] += wi
        best = max(range(len(w)), key=lambda i: (cur[i], -i))
        if eligible is not None and not eligible(best):
            ok = [i for i in range(len(w)) if eligible(i)]
            if not ok:
                for i, wi in enumerate(w):  # undo: a rejected request consumes no credit
                    cur[i] -= wi
                return None
            best = max(ok, key=lambda i: (cur[i], -i))
        cur[best] -= self.total
        return best

    def restart(self) -> None:
        """Start the sequence afresh: a segment back from an outage has piled up credit while it
        was skipped and would otherwise take every request until it caught up."""
        self._current = [0] * len(self.weights)

    def period(self) -> list[int]:
        """One full period of picks from a fresh router (each index i appears weights[i] times)."""
        return list(_picks(self.weights, self.total))

    def sequence(self, n: int) -> list[int]:
        """The first `n` picks of a fresh router, by tiling one period."""
        if n <= 0:
            return []
        if n < self.total:
            return list(_picks(self.weights, n))
        p = list(_picks(self.weights, self.total))
        reps, rest = divmod(n, len(p))
        return p * reps + p[:rest]


@lru_cache(maxsize=512)
def _picks(weights: tuple[int, ...], n: int) -> tuple[int, ...]:
    """The first n (at most one period) picks of a fresh router over `weights`, kept: a simulation
    routes the same segments at many loads (the trace replay's serving model)."""
    total, cur, out = sum(weights), [0] * len(weights), []
    k = len(weights)
    for _ in range(n):
        best, top = 0, None
        for i in range(k):  # credit every segment; the first of the highest credits wins
            c = cur[i] = cur[i] + weights[i]
            if top is None or c > top:
                best, top = i, c
        cur[best] -= total
        out.append(best)
    return tuple(out)
