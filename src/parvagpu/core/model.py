"""Frozen data model shared by every stage of the pipeline.

Nothing here does I/O or imports another module of the package: profiles, services,
segments and the deployment map are plain immutable values, so planners are pure
functions from values to values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parvagpu.core.transition import Transition

PLAN_VERSION = 1


@dataclass(frozen=True)
class ProfilePoint:
    """One measured point: `procs` MPS processes of a model, each running batches of `batch`,
    on an instance of `size` compute slices.

    `throughput` is per process (items/s) and `latency_s` is seconds per batch, as in the seed
    profile format. A point with throughput 0 was not runnable (OOM, not measured).
    """

    size: int
    batch: int
    procs: int
    throughput: float
    latency_s: float
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def runnable(self) -> bool:
        return self.throughput > 0

    @property
    def segment_throughput(self) -> float:
        """Throughput of the whole segment: every process serves in parallel."""
        return self.procs * self.throughput

    @property
    def latency_ms(self) -> float:
        return self.latency_s * 1000.0

    @cached_property
    def exact_latency_ms(self) -> Fraction:
        """Latency as an exact rational, so the strict SLO comparison has no float edge cases.

        `repr` of a float parsed from decimal text gives back that text, so "0.047" stays 47/1000 s.
        """
        return Fraction(repr(self.latency_s)) * 1000


@dataclass(frozen=True)
class Profile:
    """All measured points of one model on one GPU type, in file order."""

    model: str
    points: tuple[ProfilePoint, ...]
    source: str = ""

    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted({p.size for p in self.points}))


@dataclass(frozen=True)
class Service:
    """A model to serve: `rate` requests/s with a latency SLO of `latency_ms` milliseconds."""

    model: str
    rate: float
    latency_ms: float

    @property
    def exact_latency_ms(self) -> Fraction:
        return Fraction(repr(float(self.latency_ms)))


@dataclass(frozen=True)
class Triplet:
    """A segment configuration: instance size, batch size and MPS process count, with the
    profiled segment throughput (all processes) and per-batch latency."""

    size: int
    batch: int
    procs: int
    throughput: float
    latency_ms: float

    @property
    def efficiency(self) -> float:
        """Throughput per compute slice: the Segment Configurator's objective."""
        return self.throughput / self.size


@dataclass(frozen=True)
class Segment:
    """One MPS-activated MIG instance serving one model."""

    model: str
    triplet: Triplet

    @property
    def size(self) -> int:
        return self.triplet.size

    @property
    def throughput(self) -> float:
        return self.triplet.throughput


@dataclass(frozen=True)
class PlacedSegment:
    """A segment pinned to a GPU (global index) at a start slot on the memory-slice axis."""

    segment: Segment
    gpu: int
    start: int

    @property
    def model(self) -> str:
        return self.segment.model

    @property
    def size(self) -> int:
        return self.segment.size


@dataclass(frozen=True)
class ServiceCapacity:
    service: Service
    capacity: float


@dataclass(frozen=True)
class Provenance:
    """Where a plan's profiles came from: the directory (or the embedded example), a SHA-256 of
    each planned model's profile points and of all of them, and the GPU they were measured on when
    the profiler's metadata says so. `verify` uses it to find and match the same profiles."""

    profiles: str
    sha256: str
    models: tuple[tuple[str, str], ...] = ()
    measured_on: str | None = None


@dataclass(frozen=True)
class DeploymentMap:
    """The planner's output: every segment with its exact placement.

    GPUs are numbered 0..gpus_used-1 globally; node = gpu // gpus_per_node. Segments are kept in
    (GPU, start slot) order whatever order a planner produced them in, so two maps holding the same
    placements compare equal (a plan written to JSON and read back is equal to the one written).
    A plan made from a running one (`plan --current`) may leave GPUs of that plan empty, so its
    numbering can have holes, and it records its `transition` from the running plan.
    """

    gpu_type: str
    strategy: str
    max_procs: int
    gpus_per_node: int
    segments: tuple[PlacedSegment, ...]
    services: tuple[Service, ...]
    lower_bound: int | None = None
    stats: tuple[tuple[str, float], ...] = field(default=())
    transition: Transition | None = None
    provenance: Provenance | None = None

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.segments, key=lambda s: (s.gpu, s.start, s.model)))
        if ordered != self.segments:
            object.__setattr__(self, "segments", ordered)

    @property
    def gpus_used(self) -> int:
        return len({s.gpu for s in self.segments})

    def node_of(self, gpu: int) -> int:
        return gpu // self.gpus_per_node

    def local_gpu(self, gpu: int) -> int:
        return gpu % self.gpus_per_node

    def capacity(self, model: str) -> float:
        return sum(s.segment.throughput for s in self.segments if s.model == model)

    def capacities(self) -> tuple[ServiceCapacity, ...]:
        return tuple(ServiceCapacity(s, self.capacity(s.model)) for s in self.services)

    def by_gpu(self) -> dict[int, list[PlacedSegment]]:
        """Segments grouped by GPU, each GPU's list in start-slot order."""
        out: dict[int, list[PlacedSegment]] = {}
        for s in sorted(self.segments, key=lambda s: (s.gpu, s.start)):
            out.setdefault(s.gpu, []).append(s)
        return out

    def gpcs_used(self) -> int:
        return sum(s.size for s in self.segments)
