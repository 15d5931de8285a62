"""Frozen values describing how a cluster moves from one plan to another.

A segment is *kept* when the new plan holds the same model on the same node, GPU and start slot,
with the same size, batch and process count: nothing about its MIG instance, MPS daemon or loaded
model has to change. Every other old segment is *removed* and every other new one *added*.

`Transition` is what a plan records about the plan it replaces (the `transition` section of the
plan JSON). `Schedule` is the ordered, make-before-break way to get there: creations and removals
one at a time, with the capacity dips the slots force, if any.
"""

from __future__ import annotations

from dataclasses import dataclass

from parvagpu.core.model import PlacedSegment


def segment_key(s: PlacedSegment, gpus_per_node: int) -> tuple:
    """What must be equal for a segment to be kept: model, node, GPU, start, size, batch, procs."""
    t = s.segment.triplet
    return (s.model, s.gpu // gpus_per_node, s.gpu % gpus_per_node, s.start, t.size, t.batch, t.procs)


@dataclass(frozen=True)
class ModelChange:
    """One model's rates and capacities before and after (0 where the model is absent)."""

    model: str
    old_rate: float
    new_rate: float
    old_capacity: float
    new_capacity: float

    @property
    def floor(self) -> float:
        """The capacity a transition must keep at every step: min(old rate, new rate)."""
        return min(self.old_rate, self.new_rate)


@dataclass(frozen=True)
class Transition:
    """The difference between a running plan and a new one, on the new plan's GPU numbering."""

    kept: int
    added: tuple[PlacedSegment, ...]
    removed: tuple[PlacedSegment, ...]
    models: tuple[ModelChange, ...]

    def __post_init__(self) -> None:
        for name in ("added", "removed"):
            ordered = tuple(sorted(getattr(self, name), key=lambda s: (s.gpu, s.start, s.model)))
            object.__setattr__(self, name, ordered)

    @property
    def changed(self) -> int:
        """Segments created or destroyed: the cost of the transition."""
        return len(self.added) + len(self.removed)

    @property
    def gpus_touched(self) -> tuple[int, ...]:
        return tuple(sorted({s.gpu for s in self.added} | {s.gpu for s in self.removed}))


@dataclass(frozen=True)
class Step:
    """Create or remove one segment. A *bridge* is a temporary copy of a segment on a spare GPU,
    created so that the segment it copies can go before its slots are needed, removed at the end."""

    action: str  # "create" or "remove"
    segment: PlacedSegment
    bridge: bool = False


@dataclass(frozen=True)
class Dip:
    """A model below its floor during a transition: by at most `shortfall` req/s, for `steps`
    steps (counted after each step's action), starting after step `first` (0-based)."""

    model: str
    shortfall: float
    steps: int
    first: int


@dataclass(frozen=True)
class Schedule:
    """An ordered transition: `steps` applied one after the other take the old plan's segments to
    the new plan's; `dips` lists every model that falls below min(old rate, new rate) on the way."""

    steps: tuple[Step, ...]
    dips: tuple[Dip, ...]
    spare_gpus: tuple[int, ...] = ()

    @property
    def bridges(self) -> int:
        return sum(1 for s in self.steps if s.bridge and s.action == "create")
