"""Exact sums of capacities: the planners and the checker compare capacities with rates in exact
decimal arithmetic (each float read as the decimal it prints as), so a plan is never a hair short."""

from __future__ import annotations

from collections import defaultdict, deque
from fractions import Fraction
from functools import lru_cache
from typing import Iterable

from parvagpu.core.model import PlacedSegment


@lru_cache(maxsize=1 << 18)
def exact(x: float) -> Fraction:
    """The float's exact decimal value. Kept: a re-planning controller plans, schedules and checks
    the same figures at every re-plan (the re-planner, packing, the scheduler and `verify` share
    this one cache, as large as the four they each had)."""
    return Fraction(repr(float(x)))


def capacities(segments: Iterable[PlacedSegment]) -> defaultdict[str, Fraction]:
    """Each model's capacity over `segments`, exact (0 for a model without any), a dict of the
    caller's own. The segments are counted per (model, throughput) first and each count multiplied
    once: a model's segments share a few throughputs, and a Fraction addition per segment cost
    seconds a day in a controller's re-plans. Exact arithmetic, so the sums are those of adding one
    segment after another. A tuple's answer is kept for the next few calls with that same tuple
    (tuples of frozen segments cannot change; a re-plan asks for its kept segments twice)."""
    if isinstance(segments, tuple):
        for seen, out in _RECENT:
            if seen is segments:
                return defaultdict(Fraction, out)
        out = _capacities(segments)
        _RECENT.append((segments, out))
        return defaultdict(Fraction, out)
    return _capacities(segments)


_RECENT: deque = deque(maxlen=4)  # (segment tuple, its capacities) of the last tuple calls


def _capacities(segments: Iterable[PlacedSegment]) -> defaultdict[str, Fraction]:
    counts: dict[tuple[str, float], int] = defaultdict(int)
    for s in segments:
        seg = s.segment
        counts[seg.model, seg.triplet.throughput] += 1
    out: defaultdict[str, Fraction] = defaultdict(Fraction)
    for (m, x), n in counts.items():
        out[m] += n * exact(x)
    return out
