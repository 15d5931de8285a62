"""The serving model of the trace replay: attainment per (model, its serving segments, offered rate),
taken from the discrete-event simulator of `parvagpu simulate` and kept in a table.

A day of 100 models is tens of billions of requests at production rates; simulating each one would
take hours. Between two events (a trace step, a controller tick, a transition step finishing) a
model's offered rate and serving segments are constant, so the replay only needs the share of its
requests answered within the SLO in that steady state. That share is measured once per
(model, its segments' configurations, load bucket) by `parvagpu.serving.simulator.simulate`'s own
arrivals and segment runs (`within_slo`: its counts, without its percentiles), on a plan holding
that model's serving segments alone (same router, batching, admission limits and profile service
times as `simulate`), with `samples` Poisson arrivals at the bucket's load, and reused whenever the
state recurs. It is measured at loads rho = rate / capacity on a grid of `step` and interpolated
linearly between the two grid points around the load; a model without a serving segment answers
nothing.

Approximations, each stated where it is made: the batch waits follow the offered rate (the served
application's waits follow its planned rate; both stay within 10 % of the SLO); queue build-up when
the state changes is not carried from one interval to the next (a draining segment finishes its
in-flight requests; a new segment starts empty); a table entry is an estimate from `samples`
requests, so attainment above 1 - 1/samples is not resolved; a load below one at which a state
lost no request of its samples is taken to lose none either (not measured: losses grow with load).
"""

from __future__ import annotations

import math
from dataclasses import replace

from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Service
from parvagpu.serving.simulator import within_slo

MIN_RHO = 0.1  # below this, loads share the 0.1 grid point's attainment (losses only fall with load)
MAX_RHO = 4.0  # above this, the served rate is the 4.0 grid point's, i.e. no more than capacity


class AttainmentTable:
    """attained(model, segments, rate): the share of requests answered within the SLO."""

    def __init__(self, template: DeploymentMap, slos: dict[str, float], profiles: dict[str, Profile],
                 samples: int = 4000, step: float = 0.1, seed: int = 0) -> None:
        self.template = template  # GPU type, max procs and GPUs per node of every sub-plan
        self.slos = slos
        self.profiles = profiles
        self.samples = samples
        self.step = step
        self.seed = seed
        self._states: dict[tuple, _State] = {}  # (model, configs) -> its grid points measured
        self._shapes: dict[int, tuple] = {}  # id(segments) -> (segments, capacity, its _State)
        self.simulated_requests = 0

    def attained(self, model: str, segments: tuple[PlacedSegment, ...], rate: float) -> float:
        if rate <= 0:
            return 1.0
        if not segments:
            return 0.0
        hit = self._shapes.get(id(segments))  # `_shape`'s look-up written out: asked about 600,000 times a day
        capacity, state = hit[1:] if hit is not None and hit[0] is segments else self._shape(model, segments)
        rho = rate / capacity
        x = (MAX_RHO if rho > MAX_RHO else MIN_RHO if rho < MIN_RHO else rho) / self.step
        lo = math.floor(x + 1e-9)
        points = state.points
        if x - lo < 1e-9:
            a = points.get(lo)
            if a is None:
                a = self._at(state, segments, lo, capacity)
        else:  # the higher point first: when it loses nothing, the lower one is not measured
            a1 = points.get(lo + 1)
            if a1 is None:
                a1 = self._at(state, segments, lo + 1, capacity)
            a0 = points.get(lo)
            if a0 is None:
                a0 = self._at(state, segments, lo, capacity)
            a = a0 + (x - lo) * (a1 - a0)
        return a * (MAX_RHO / rho) if rho > MAX_RHO else a

    def curve(self, model: str, segments: tuple[PlacedSegment, ...], target: float,
              low: float = 0.6) -> tuple[tuple[float, float], ...]:
        """(load, attainment) of these segments on the grid from load 1 down to `low`, stopping at
        the first load that meets `target` (lower loads only lose less)."""
        if not segments:
            return ()
        capacity, state = self._shape(model, segments)
        out = []
        for k in range(round(1.0 / self.step), round(low / self.step) - 1, -1):
            a = self._at(state, segments, k, capacity)
            out.append((k * self.step, a))
            if a >= target:
                break
        return tuple(out)

    def _shape(self, model: str, segments: tuple[PlacedSegment, ...]) -> tuple[float, "_State"]:
        """Capacity and measured state of a segment tuple, found once per tuple (the replay asks for
        the same serving segments at every event until they change). Tuples of equal
        configurations share one state, whose grid points are a small dict keyed by the grid
        index: no tuple of configurations is hashed per look-up."""
        hit = self._shapes.get(id(segments))
        if hit is None or hit[0] is not segments:
            configs = configs_of(segments)
            state = self._states.get((model, configs))
            if state is None:
                state = self._states[(model, configs)] = _State(model)
            hit = self._shapes[id(segments)] = (segments, sum(s.segment.throughput for s in segments), state)
        return hit[1], hit[2]

    def _at(self, state: "_State", segments: tuple[PlacedSegment, ...], k: int, capacity: float) -> float:
        a = state.points.get(k)
        if a is None:
            if k <= state.lossless:
                return 1.0  # a higher load of this state lost nothing: neither does this one
            a = state.points[k] = self._measure(state.model, segments, k * self.step * capacity)
            if a == 1.0:
                state.lossless = max(k, state.lossless)
        return a

    def _measure(self, model: str, segments: tuple[PlacedSegment, ...], rate: float) -> float:
        sub = replace(self.template, segments=segments, services=(Service(model, rate, self.slos[model]),),
                      transition=None, stats=(), lower_bound=None, provenance=None)
        good, sent = within_slo(sub, self.samples / rate, self.seed,
                                {model: self.profiles[model]} if model in self.profiles else None)
        self.simulated_requests += sent
        return good / sent if sent else 1.0

    @property
    def entries(self) -> int:
        return sum(len(st.points) for st in self._states.values())


class _State:
    """One (model, segment configurations): attainment per grid index measured, and the highest
    grid index measured at 1.0 (-1: none)."""

    __slots__ = ("model", "points", "lossless")

    def __init__(self, model: str) -> None:
        self.model = model
        self.points: dict[int, float] = {}
        self.lossless = -1


def configs_of(segments: tuple[PlacedSegment, ...]) -> tuple:
    """What the serving model depends on: the segments' triplets, not where they are placed."""
    return tuple(sorted((t.size, t.batch, t.procs, t.throughput, t.latency_ms)
                        for t in (s.segment.triplet for s in segments)))
