"""Frozen data model shared by every stage of the pipeline.

Nothing here does I/O or imports another module of the package: profiles, services,
segments and the deployment map are plain immutable values, so planners are pure
functions from values to values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # for the annotation only: core/fleet.py does not import this module
    from parvagpu.core.fleet import Fleet

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


# One profile row as packed bytes: what a profile's content digest is taken over.
ROW_DTYPE = np.dtype([("size", "<i8"), ("batch", "<i8"), ("procs", "<i8"), ("thr", "<f8"), ("lat", "<f8")])


def row_digest(rows: bytes, extra: tuple = ()) -> bytes:
    """The content digest of a profile's rows packed as `ROW_DTYPE`, and its extra columns."""
    h = hashlib.blake2b(rows, digest_size=16)
    if extra:
        h.update(repr(extra).encode())
    return h.digest()


@dataclass(frozen=True, eq=False)
class PointColumns:
    """A profile's points as columns (one numpy array per field, rows in file order): the form the
    loader reads and the planners index, so a million points need not exist as objects. `extra`
    holds each row's extra columns, or is empty when the file has none."""

    size: np.ndarray
    batch: np.ndarray
    procs: np.ndarray
    throughput: np.ndarray
    latency_s: np.ndarray
    extra: tuple[tuple[tuple[str, str], ...], ...] = ()
    # Precomputed `digest` (the loader hashes its rows as it reads them), or None.
    known_digest: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for a in (self.size, self.batch, self.procs, self.throughput, self.latency_s):
            a.flags.writeable = False

    def __len__(self) -> int:
        return len(self.size)

    @classmethod
    def of(cls, points: Sequence[ProfilePoint]) -> PointColumns:
        def col(name: str, dtype) -> np.ndarray:
            return np.fromiter((getattr(p, name) for p in points), dtype=dtype, count=len(points))

        extra = tuple(p.extra for p in points)
        return cls(
            col("size", np.int64), col("batch", np.int64), col("procs", np.int64),
            col("throughput", np.float64), col("latency_s", np.float64),
            extra if any(extra) else (),
        )

    def points(self) -> tuple[ProfilePoint, ...]:
        """The rows as `ProfilePoint`s, their fields as Python ints and floats (`tolist` converts
        a column at once: per element, numpy's scalars took twice as long)."""
        extra = self.extra or ((),) * len(self)
        return tuple(map(ProfilePoint, self.size.tolist(), self.batch.tolist(), self.procs.tolist(),
                         self.throughput.tolist(), self.latency_s.tolist(), extra))

    def first_row(self, size: int, batch: int, procs: int) -> int | None:
        """The index of the first row (file order) with this (size, batch, procs), or None: one
        lookup without making every row a `ProfilePoint`."""
        hit = np.flatnonzero((self.size == size) & (self.batch == batch) & (self.procs == procs))
        return int(hit[0]) if len(hit) else None

    def point(self, i: int) -> ProfilePoint:
        """Row i as a `ProfilePoint`, equal to `points()[i]` (fields as Python ints and floats)."""
        return ProfilePoint(int(self.size[i]), int(self.batch[i]), int(self.procs[i]),
                            float(self.throughput[i]), float(self.latency_s[i]),
                            self.extra[i] if self.extra else ())

    @cached_property
    def digest(self) -> bytes:
        """A hash of the content: profiles with equal digests have equal points."""
        if self.known_digest is not None:
            return self.known_digest
        return row_digest(self.packed(), self.extra)

    def packed(self) -> bytes:
        """The rows packed as `ROW_DTYPE` (little-endian), in file order."""
        rows = np.empty(len(self), dtype=ROW_DTYPE)
        for name, a in zip(ROW_DTYPE.names, (self.size, self.batch, self.procs, self.throughput, self.latency_s)):
            rows[name] = a
        return rows.tobytes()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PointColumns):
            return NotImplemented
        return len(self) == len(other) and self.extra == other.extra and all(
            np.array_equal(a, b) for a, b in zip(
                (self.size, self.batch, self.procs, self.throughput, self.latency_s),
                (other.size, other.batch, other.procs, other.throughput, other.latency_s),
            )
        )

    __hash__ = None  # type: ignore[assignment]


class Profile:
    """All measured points of one model on one GPU type, in file order.

    Made from points (`Profile(model, points, source)`) or from columns (`columns=`, what the
    loader does); each form is derived from the other on first use and kept. Immutable; equal when
    model, source and points are equal."""

    __slots__ = ("model", "source", "_points", "_columns")

    def __init__(
        self, model: str, points: Sequence[ProfilePoint] | None = None, source: str = "",
        *, columns: PointColumns | None = None,
    ) -> None:
        if (points is None) == (columns is None):
            raise TypeError("Profile needs points or columns, not both")
        set_ = object.__setattr__
        set_(self, "model", model)
        set_(self, "source", source)
        set_(self, "_points", None if points is None else tuple(points))
        set_(self, "_columns", columns)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Profile is immutable: cannot set {name}")

    @property
    def points(self) -> tuple[ProfilePoint, ...]:
        if self._points is None:
            object.__setattr__(self, "_points", self._columns.points())
        return self._points

    @property
    def columns(self) -> PointColumns:
        if self._columns is None:
            object.__setattr__(self, "_columns", PointColumns.of(self._points))
        return self._columns

    def first_point(self, size: int, batch: int, procs: int) -> ProfilePoint | None:
        """The first point (file order) of this (size, batch, procs), or None; looked up in the
        columns, so asking about a few triplets of many profiles builds no profile's points."""
        if self._points is not None and self._columns is None:
            return next((p for p in self._points if (p.size, p.batch, p.procs) == (size, batch, procs)), None)
        i = self._columns.first_row(size, batch, procs)
        return None if i is None else self._columns.point(i)

    @property
    def content_key(self) -> bytes:
        """Equal for profiles with equal points, whatever their model name or file."""
        return self.columns.digest

    def sizes(self) -> tuple[int, ...]:
        return tuple(sorted({int(s) for s in self.columns.size}))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Profile):
            return NotImplemented
        return (self.model, self.source) == (other.model, other.source) and (
            self.points == other.points if self._columns is None or other._columns is None
            else self.columns == other.columns
        )

    def __hash__(self) -> int:
        return hash((self.model, self.source, self.content_key))

    def __repr__(self) -> str:
        return f"Profile(model={self.model!r}, points={len(self.columns)}, source={self.source!r})"

    def __reduce__(self):
        return (_profile_from, (self.model, self.source, self.columns))


def _profile_from(model: str, source: str, columns: PointColumns) -> Profile:
    return Profile(model, source=source, columns=columns)


@dataclass(frozen=True)
class Service:
    """A model to serve: `rate` requests/s with a latency SLO of `latency_ms` milliseconds.
    `tier` orders services when a fleet cannot serve them all: 0 is the most important."""

    model: str
    rate: float
    latency_ms: float
    tier: int = 0

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

    A plan for a `fleet` numbers GPUs in the fleet's node order (node k's GPU i is the fleet's
    offset of k plus i), takes each GPU's type from its node (`gpu_type` is then the fleet's one
    type, or "mixed"), and lists in `served` the services it serves below their rate (model,
    served rate); every other service is served in full.
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
    fleet: Fleet | None = None
    served: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.segments, key=lambda s: (s.gpu, s.start, s.model)))
        if ordered != self.segments:
            object.__setattr__(self, "segments", ordered)

    @property
    def gpus_used(self) -> int:
        return len({s.gpu for s in self.segments})

    def node_of(self, gpu: int) -> int:
        return self.fleet.node_of(gpu) if self.fleet is not None else gpu // self.gpus_per_node

    def local_gpu(self, gpu: int) -> int:
        return self.fleet.local_gpu(gpu) if self.fleet is not None else gpu % self.gpus_per_node

    def gpu_type_of(self, gpu: int) -> str:
        """The GPU type of one GPU: its node's in a fleet plan, else the plan's."""
        return self.fleet.node(gpu).gpu if self.fleet is not None else self.gpu_type

    def node_gpu_type(self, node: int) -> str:
        return self.fleet.nodes[node].gpu if self.fleet is not None else self.gpu_type

    def node_gpus(self, node: int) -> int:
        """How many GPUs the node has (a fleet node's count, else `gpus_per_node`)."""
        return self.fleet.nodes[node].gpus if self.fleet is not None else self.gpus_per_node

    def global_gpu(self, node: int, local: int) -> int:
        return self.fleet.gpu_index(node, local) if self.fleet is not None else node * self.gpus_per_node + local

    def served_rate(self, service: Service) -> float:
        """The rate the plan serves the service at: its rate unless `served` says less."""
        return dict(self.served).get(service.model, service.rate)

    def price_per_hour(self) -> float:
        """Sum of the used GPUs' prices per hour (1 per GPU without a fleet)."""
        used = {s.gpu for s in self.segments}
        if self.fleet is None:
            return float(len(used))
        return sum(self.fleet.node(g).price_per_gpu_hour for g in used)

    def capacity(self, model: str) -> float:
        return self._capacities.get(model, 0)

    @cached_property
    def _capacities(self) -> dict[str, float]:
        """Each model's summed segment throughput, in one pass (summed in segment order)."""
        out: dict[str, float] = {}
        for s in self.segments:
            out[s.model] = out.get(s.model, 0) + s.segment.throughput
        return out

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


# Transitions: how a cluster moves from one plan to another.
#
# Frozen values describing how a cluster moves from one plan to another.
#
# A segment is *kept* when the new plan holds the same model on the same node, GPU and start slot,
# with the same size, batch and process count: nothing about its MIG instance, MPS daemon or loaded
# model has to change. Every other old segment is *removed* and every other new one *added*.
#
# `Transition` is what a plan records about the plan it replaces (the `transition` section of the
# plan JSON). `Schedule` is the ordered, make-before-break way to get there: creations and removals
# one at a time, with the capacity dips the slots force, if any.


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
