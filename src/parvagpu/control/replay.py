"""Replaying a load trace through the controller: GPU-hours, SLO attainment, re-plans and moves.

Three ways to serve the same trace, each judged by the same serving model (`fluid.AttainmentTable`,
measured with `simulate`'s discrete-event simulator):

- **controller**: every `tick_s` the policy of `policy.py` (the same `decide` the live loop uses)
  looks at each model's arrival rate over the last `window_s` (Poisson-noisy counts, as an ingress
  would see them) and its attainment; on a re-plan the planner makes the new plan from the running
  one (`current=`, move-aware, where the planner supports it; else from scratch), the live
  controller's check (`live.check_replan`) makes its make-before-break schedule, with bridge copies
  on `spare_gpus` free GPUs where the slots would force a dip, the live controller's verdict
  (`policy.transition_verdict`: a dip runs or is refused as the `dips` setting says, a failed check
  refuses) runs the transition in that order with reconfiguration costs or keeps the plan;
- **static**: one plan sized for every model's peak rate in the trace, for the whole trace; once
  at the peak itself and once with the controller's headroom (peak x (1 + h));
- **oracle**: a plan from scratch every `oracle_interval_s` for the interval's true peak rates,
  switched instantly at no cost (a lower bound on GPU-hours no real controller reaches).

Transition timing: the schedule's steps are grouped into runs of consecutive creations or
removals. A run's steps proceed in parallel across GPUs and one after another on the same GPU; a
creation takes `create_s + load_s` (instance and MPS daemon, then the model loaded and warm), a
removal `destroy_s`. A removed segment takes no new requests from the start of its removal
(draining); a created one serves from the end of its creation. GPUs are counted from the first
moment a segment is present on them to the last.
"""

from __future__ import annotations

import gc
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np

from parvagpu.control.fluid import AttainmentTable, configs_of
from parvagpu.control.live import check_replan, groups, spare_count
from parvagpu.control.policy import (ModelView, PolicyConfig, decide, policy_from_settings, queueing_headroom,
                                     settings_section, target_rate, transition_verdict)
from parvagpu.control.trace import Trace
from parvagpu.control.window import AttainmentWindow, RateWindow, TrendWindow
from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import GpuType
from parvagpu.core.model import DeploymentMap, PlacedSegment, Profile, Schedule, Service, segment_key
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.planning.transition import transition


@dataclass(frozen=True)
class Costs:
    """Seconds per reconfiguration step (defaults and their sources: docs/control.md)."""

    create_s: float = 4.0  # MIG GPU + compute instance created, MPS daemon started
    destroy_s: float = 2.0  # instance destroyed
    load_s: float = 10.0  # model weights loaded onto the instance and warmed up

    def __post_init__(self) -> None:
        if min(self.create_s, self.destroy_s, self.load_s) < 0:
            raise ParvaError("reconfiguration costs must be >= 0 s")


@dataclass(frozen=True)
class Options:
    tick_s: float = 30.0  # how often the controller decides
    window_s: float = 120.0  # rate window
    trend_window_s: float = 1800.0  # the window of the rate's slope (the policy's trend rules)
    attainment_window_s: float = 300.0
    oracle_interval_s: float = 300.0
    strategy: str = "parva"
    max_procs: int = 3
    seed: int = 0
    samples: int = 2000  # requests per serving-model table entry
    estimate_headroom: int = 0  # 1: each model's headroom from its planned segments' load curve
    spare_gpus: int = 0  # free GPUs a transition may borrow for bridge copies (their time is counted)

    def __post_init__(self) -> None:
        if min(self.tick_s, self.window_s, self.trend_window_s, self.attainment_window_s, self.oracle_interval_s) <= 0:
            raise ParvaError("tick, windows and oracle interval must be positive")
        object.__setattr__(self, "spare_gpus", spare_count(self.spare_gpus))


@dataclass
class Tally:
    """Requests offered and answered within the SLO, per model (fractional: a fluid count)."""

    sent: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    good: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, model: str, sent: float, good: float) -> None:
        self.sent[model] += sent
        self.good[model] += good

    def overall(self) -> float:
        s = sum(self.sent.values())
        return sum(self.good.values()) / s if s else 1.0

    def per_model(self) -> dict[str, float]:
        return {m: (self.good[m] / s if s else 1.0) for m, s in self.sent.items()}


@dataclass(frozen=True)
class RunResult:
    """One way of serving the trace, summarised."""

    name: str
    gpu_hours: float
    attainment: float
    attainment_in_transitions: float | None
    per_model: dict[str, float]
    replans: int
    created: int
    removed: int
    hours: float
    peak_gpus: int
    model_replans: dict[str, int] = field(default_factory=dict)
    min_model_gap_s: float | None = None  # shortest time between two re-plans of one model
    replan_times: dict[str, list[float]] = field(default_factory=dict)  # per model, when it was re-planned
    transition_s: float = 0.0  # time spent in transitions
    bridges: int = 0  # bridge copies created on spare GPUs
    dipped: int = 0  # transitions run with a capacity dip (policy `dips: run`)
    bridge_gpu_hours: float = 0.0  # the spare GPUs' share of gpu_hours
    refused_dips: int = 0  # re-plans refused for a dip (policy `dips: refuse`): the plan kept
    refused_checks: int = 0  # re-plans refused by a failed check (planner error, wrong plan or step)

    def row(self) -> dict:
        worst = min(self.per_model.items(), key=lambda kv: kv[1]) if self.per_model else ("-", 1.0)
        return {
            "run": self.name, "gpu_hours": round(self.gpu_hours, 2), "peak_gpus": self.peak_gpus,
            "attainment": self.attainment, "attainment_in_transitions": self.attainment_in_transitions,
            "worst_model": worst[0], "worst_attainment": worst[1],
            "replans": self.replans, "replans_per_hour": self.replans / self.hours,
            "segments_created": self.created, "segments_removed": self.removed,
            "changes_per_hour": (self.created + self.removed) / self.hours,
            "max_model_replans": max(self.model_replans.values(), default=0),
            "min_model_gap_s": self.min_model_gap_s, "transition_hours": self.transition_s / 3600,
            "bridges": self.bridges, "transitions_with_dips": self.dipped,
            "replans_refused_for_dips": self.refused_dips, "replans_refused_by_checks": self.refused_checks,
            "bridge_gpu_hours": round(self.bridge_gpu_hours, 2),
            "max_model_replans_per_10_min": max((_most_within(ts, 600.0) for ts in self.replan_times.values()),
                                                default=0),
        }


def _most_within(times: list[float], span: float) -> int:
    """The most of the sorted `times` inside any window of `span` seconds."""
    most, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= span:
            lo += 1
        most = max(most, hi - lo + 1)
    return most


@dataclass(frozen=True)
class Inputs:
    trace: Trace
    slos: dict[str, float]  # model -> latency SLO (ms)
    profiles: dict[str, Profile]
    gpu: GpuType
    gpus_per_node: int = 8


def plan_for(inp: Inputs, opts: Options, rates: dict[str, float], current: DeploymentMap | None = None) -> DeploymentMap:
    """A plan for `rates`, from the running plan `current` when the planner takes one."""
    services = tuple(Service(m, max(r, 1e-3), inp.slos[m]) for m, r in sorted(rates.items()))
    kw = {}
    if current is not None and "current" in {f.name for f in fields(PlanRequest)}:
        kw["current"] = current
    req = PlanRequest(services, inp.profiles, inp.gpu, opts.max_procs, inp.gpus_per_node, **kw)
    return make_plan(req, opts.strategy)


def _check(inp: Inputs) -> None:
    missing = [m for m in inp.trace.models if m not in inp.slos]
    if missing:
        raise ParvaError(f"the services file has no latency SLO for trace model(s) {', '.join(missing[:5])}")
    missing = [m for m in inp.trace.models if m not in inp.profiles]
    if missing:
        raise ParvaError(f"no profile for trace model(s) {', '.join(missing[:5])}")


def _by_model(plan: DeploymentMap) -> dict[str, tuple[PlacedSegment, ...]]:
    out: dict[str, list[PlacedSegment]] = defaultdict(list)
    for s in plan.segments:
        out[s.model].append(s)
    return {m: tuple(v) for m, v in out.items()}


def _step_ends(trace: Trace) -> list[tuple[float, float, tuple[float, ...]]]:
    ends = trace.times[1:] + (trace.end_s,)
    return list(zip(trace.times, ends, trace.rates))


def _served(inp: Inputs, table: AttainmentTable, segs: dict[str, tuple[PlacedSegment, ...]],
            steps: list, tally: Tally | None = None) -> Tally:
    """`tally` with the trace `steps` served by fixed segments: each model's sums kept in a local
    list in trace.models order, added to in the same order as `Tally.add` would (same floats)."""
    tally = tally if tally is not None else Tally()
    models = inp.trace.models
    sent = [tally.sent.get(m, 0.0) for m in models]
    good = [tally.good.get(m, 0.0) for m in models]
    own = [(i, m, segs.get(m, ())) for i, m in enumerate(models)]
    attained = table.attained
    for a, b, rates in steps:
        dt = b - a
        for (i, m, s), r in zip(own, rates):
            n = r * dt
            sent[i] += n
            good[i] += n * attained(m, s, r)
    for m, x, y in zip(models, sent, good):
        tally.sent[m], tally.good[m] = x, y
    return tally


def run_static(inp: Inputs, opts: Options, table: AttainmentTable, headroom: float = 0.0) -> RunResult:
    """One plan for every model's peak rate x (1 + headroom), all the trace long."""
    plan = plan_for(inp, opts, {m: r * (1.0 + headroom) for m, r in inp.trace.peak().items()})
    tally = _served(inp, table, _by_model(plan), _step_ends(inp.trace))
    hours = inp.trace.duration_s / 3600
    name = "static (peak)" if headroom == 0 else f"static (peak x {1 + headroom:g})"
    return RunResult(name, plan.gpus_used * hours, tally.overall(), None, tally.per_model(), 1,
                     len(plan.segments), 0, hours, plan.gpus_used)


def run_oracle(inp: Inputs, opts: Options, table: AttainmentTable) -> RunResult:
    tally, gpu_h, peak, plans, created, removed = Tally(), 0.0, 0, 0, 0, 0
    plan = None
    steps = _step_ends(inp.trace)
    k = 0
    t0 = inp.trace.times[0]
    while k < len(steps):
        end = min(steps[k][0] + opts.oracle_interval_s, inp.trace.end_s)
        group = []
        while k < len(steps) and steps[k][0] < end:
            group.append(steps[k])
            k += 1
        peaks = {m: max(g[2][i] for g in group) for i, m in enumerate(inp.trace.models)}
        new = plan_for(inp, opts, peaks)
        if plans:
            t = transition(plan, new)
            created, removed = created + len(t.added), removed + len(t.removed)
        plan, segs = new, _by_model(new)
        plans += 1
        tally = _served(inp, table, segs, group, tally)
        span = group[-1][1] - group[0][0]
        gpu_h += plan.gpus_used * span / 3600
        peak = max(peak, plan.gpus_used)
    hours = (inp.trace.end_s - t0) / 3600
    return RunResult(f"oracle (fresh every {opts.oracle_interval_s:g} s, free)", gpu_h, tally.overall(), None,
                     tally.per_model(), plans, created, removed, hours, peak)


@dataclass
class _Run:
    """A run of consecutive creations or removals of one transition, with its start and end."""

    action: str
    segments: list[PlacedSegment]
    start: float
    end: float


def _runs(sched: Schedule, start: float, costs: Costs) -> list[_Run]:
    """Time a schedule's runs, grouped as the live controller groups them (see the module docstring)."""
    out, t = [], start
    for action, segs in groups(sched):
        each = costs.create_s + costs.load_s if action == "create" else costs.destroy_s
        per_gpu: dict[int, int] = defaultdict(int)
        for s in segs:
            per_gpu[s.gpu] += 1
        end = t + each * max(per_gpu.values())
        out.append(_Run(action, segs, t, end))
        t = end
    return out


class _Cluster:
    """What is on the GPUs (present) and what takes traffic (serving), per model."""

    def __init__(self, plan: DeploymentMap) -> None:
        self.per_node = plan.gpus_per_node
        self.present: dict[tuple, PlacedSegment] = {segment_key(s, self.per_node): s for s in plan.segments}
        self.serving: dict[str, dict[tuple, PlacedSegment]] = defaultdict(dict)
        for k, s in self.present.items():
            self.serving[s.model][k] = s
        self._cache: dict[str, tuple[PlacedSegment, ...]] = {}
        self.version = 0  # counts changes: what was derived at one version holds until the next
        self._used: tuple[int, set[int]] = (-1, set())

    def segments(self, model: str) -> tuple[PlacedSegment, ...]:
        out = self._cache.get(model)
        if out is None:
            out = self._cache[model] = tuple(sorted(self.serving[model].values(), key=lambda s: (s.gpu, s.start)))
        return out

    def gpus(self, among: frozenset[int] | None = None) -> int:
        """GPUs holding a segment (of those in `among`, when given)."""
        if self._used[0] != self.version:
            self._used = (self.version, {s.gpu for s in self.present.values()})
        used = self._used[1]
        return len(used if among is None else used & among)

    def begin(self, run: _Run) -> None:
        self.version += 1
        for s in run.segments:
            k = segment_key(s, self.per_node)
            if run.action == "create":
                self.present[k] = s
            else:
                self.serving[s.model].pop(k, None)  # draining: no new requests
                self._cache.pop(s.model, None)

    def finish(self, run: _Run) -> None:
        self.version += 1
        for s in run.segments:
            k = segment_key(s, self.per_node)
            if run.action == "create":
                self.serving[s.model][k] = s
            else:
                self.present.pop(k, None)
            self._cache.pop(s.model, None)


class _Controller:
    """The controller's replay state: the plan, the windows, the running transition, the tallies."""

    def __init__(self, inp: Inputs, opts: Options, cfg: PolicyConfig, costs: Costs, table: AttainmentTable) -> None:
        self.inp, self.opts, self.cfg, self.costs, self.table = inp, opts, cfg, costs, table
        self.rng = np.random.default_rng(opts.seed)
        t0 = inp.trace.times[0]
        first = dict(zip(inp.trace.models, inp.trace.rates[0]))
        self.planned = {m: target_rate(cfg, r) for m, r in first.items()}
        self.plan = plan_for(inp, opts, self.planned)
        self.cluster = _Cluster(self.plan)
        self.capacity = self._capacities(self.plan)
        self.changed: dict[str, list[float]] = {m: [] for m in inp.trace.models}
        self.headroom: dict[str, float] = {}  # models whose headroom the attainment rule raised
        self.estimated: dict[str, float] = {}  # per model, the headroom its planned segments need
        self._estimates: dict[tuple, float | None] = {}  # (model, segment configurations) -> that
        self._attained: dict[str, tuple] = {}  # model -> (segments, rate, attainment) last served
        self._served: tuple = (None, -1, None, None)  # (trace rates, cluster version, attainment per model) last served
        # One window of each kind for all models, counts as arrays in trace.models order (window.py)
        self.rates = RateWindow(opts.window_s, t0)
        self.trends = TrendWindow(opts.trend_window_s, t0)
        self.attain = AttainmentWindow(opts.attainment_window_s)
        self.runs: list[_Run] = []
        self.last_replan = -math.inf
        self.replans = self.created = self.removed = self.bridges = self.dipped = 0
        self.refused: dict[str, int] = defaultdict(int)  # re-plans refused, by the verdict's reason
        n = len(inp.trace.models)
        self.sent, self.good = np.zeros(n), np.zeros(n)  # per model, all the trace long
        self.sent_moving, self.good_moving = np.zeros(n), np.zeros(n)  # and during transitions
        self.moved = False
        self.gpu_s = 0.0
        self.spares: frozenset[int] = frozenset()  # the running transition's spare GPUs
        self.spare_gpu_s = 0.0  # GPU time of spare GPUs holding bridges (part of gpu_s)
        self.transition_s = 0.0
        self.peak = self.plan.gpus_used
        self.decisions: list = []
        self._estimate()

    @staticmethod
    def _capacities(plan: DeploymentMap) -> dict[str, float]:
        cap: dict[str, float] = defaultdict(float)
        for s in plan.segments:
            cap[s.model] += s.segment.throughput
        return cap

    def serve(self, a: float, b: float, rates: tuple[float, ...]) -> None:
        """Traffic in [a, b) with nothing changing: tallies, windows, GPU time. All models at once,
        as arrays in trace.models order; the Poisson counts are drawn in that order (zero requests
        draw nothing), as one model after another would draw them."""
        dt = b - a
        if dt <= 0:
            return
        moving = bool(self.runs)
        rate, attained = self._attainments(rates)
        sent = rate * dt
        good = sent * attained
        self.sent += sent
        self.good += good
        if moving:
            self.sent_moving += sent
            self.good_moving += good
            self.moved = True
        seen = self.rng.poisson(sent).astype(float)
        self.rates.add(b, seen)
        self.trends.add(b, seen)
        self.attain.add(b, sent, good)
        gpus = self.cluster.gpus()
        self.gpu_s += gpus * dt
        if self.spares:
            self.spare_gpu_s += self.cluster.gpus(self.spares) * dt
        self.peak = max(self.peak, gpus)
        if moving:
            self.transition_s += dt

    def _attainments(self, rates: tuple[float, ...]) -> tuple:
        """The trace step's rates and each model's attainment at them (arrays), asked of the table
        only for models whose rate or serving segments changed (ticks split a state, not change it)."""
        hit = self._served
        if hit[0] is rates and hit[1] == self.cluster.version:
            return hit[2], hit[3]
        last, out = self._attained, []
        for m, r in zip(self.inp.trace.models, rates):
            segs = self.cluster.segments(m)
            h = last.get(m)
            if h is None or h[0] is not segs or h[1] != r:
                h = last[m] = (segs, r, self.table.attained(m, segs, r))
            out.append(h[2])
        self._served = (rates, self.cluster.version, np.array(rates, dtype=float), np.array(out))
        return self._served[2], self._served[3]

    def next_event(self, t: float) -> float:
        """The next moment a transition run begins or ends after t (inf when none)."""
        times = [x for r in self.runs for x in (r.start, r.end) if x > t]
        return min(times, default=math.inf)

    def advance_runs(self, t: float) -> None:
        for r in list(self.runs):
            if r.start <= t and not getattr(r, "begun", False):
                self.cluster.begin(r)
                r.begun = True
            if r.end <= t:
                self.cluster.finish(r)
                self.runs.remove(r)

    def tick(self, now: float) -> None:
        models = self.inp.trace.models
        rates, attained = self.rates.rate(now).tolist(), self.attain.attainment(now)
        slopes = self.trends.slope(now)
        slopes = [None] * len(models) if slopes is None else slopes.tolist()
        views = tuple(
            ModelView(m, rates[i], attained[i], self.planned[m],
                      self.capacity.get(m, 0.0), self.changed[m][-1] if self.changed[m] else -math.inf,
                      self._headroom(m), slopes[i])
            for i, m in enumerate(models)
        )
        d = decide(self.cfg, now, views, self.last_replan, transition_running=bool(self.runs))
        if d.replan:
            self.decisions.append(d)
            self.headroom.update(d.headrooms)
            self._replan(now, dict(d.targets))

    def _headroom(self, m: str) -> float | None:
        learned, estimated = self.headroom.get(m), self.estimated.get(m)
        if self.opts.estimate_headroom == 2 and learned is not None and estimated is not None:
            return max(learned, estimated)
        return estimated if self.opts.estimate_headroom else learned

    def _estimate(self) -> None:
        """Each model's headroom from its planned segments (`queueing_headroom` over the serving
        model's load curve), looked up again only when the segments' configurations change."""
        if not self.opts.estimate_headroom:
            return
        for m, segs in _by_model(self.plan).items():
            key = (m, configs_of(segs))
            if key not in self._estimates:
                curve = self.table.curve(m, segs, self.cfg.attainment_target)
                self._estimates[key] = queueing_headroom(self.cfg, curve)
            h = self._estimates[key]
            if h is not None:
                self.estimated[m] = h

    def _replan(self, now: float, targets: dict[str, float]) -> None:
        """The live controller's `replan` and its verdict: a refused re-plan keeps the plan and
        the planned rates and starts the cool-down; a run one starts the transition's runs."""
        planned = {**self.planned, **targets}
        try:
            new = plan_for(self.inp, self.opts, planned, current=self.plan)
            sched, problems = check_replan(self.plan, new, self.inp.profiles, self.opts.spare_gpus)
        except ParvaError as exc:
            sched, problems = None, [str(exc)]
        verdict = transition_verdict(self.cfg, problems, {d.model for d in sched.dips} if sched else set())
        self.last_replan = now
        if not verdict.run:
            self.refused[verdict.reason] += 1
            return
        assert sched is not None
        self.planned = planned
        for m in targets:
            self.changed[m].append(now)
        self.dipped += verdict.dipped
        self.created += sum(1 for s in sched.steps if s.action == "create" and not s.bridge)
        self.removed += sum(1 for s in sched.steps if s.action == "remove" and not s.bridge)
        self.bridges += sched.bridges
        self.spares = frozenset(sched.spare_gpus)
        self.runs = _runs(sched, now, self.costs)
        self.plan, self.capacity = new, self._capacities(new)
        self._estimate()
        self.replans += 1
        self.advance_runs(now)

    def result(self) -> RunResult:
        gaps = [b - a for ts in self.changed.values() for a, b in zip(ts, ts[1:])]
        hours = self.inp.trace.duration_s / 3600
        tally, moving = Tally(), Tally()
        for m, s, g, sm, gm in zip(self.inp.trace.models, self.sent.tolist(), self.good.tolist(),
                                   self.sent_moving.tolist(), self.good_moving.tolist()):
            tally.add(m, s, g)
            if self.moved:
                moving.add(m, sm, gm)
        inside = moving.overall() if self.moved else None
        return RunResult(
            "controller", self.gpu_s / 3600, tally.overall(), inside, tally.per_model(), self.replans,
            self.created, self.removed, hours, self.peak,
            model_replans={m: len(ts) for m, ts in self.changed.items()},
            min_model_gap_s=min(gaps) if gaps else None, replan_times=self.changed, transition_s=self.transition_s,
            bridges=self.bridges, dipped=self.dipped, bridge_gpu_hours=self.spare_gpu_s / 3600,
            refused_dips=self.refused["dips refused"], refused_checks=self.refused["check failed"],
        )


def run_controller(inp: Inputs, opts: Options, cfg: PolicyConfig, costs: Costs, table: AttainmentTable) -> tuple[RunResult, list]:
    """Replay the trace through the controller; its result and its re-plan decisions."""
    ctl = _Controller(inp, opts, cfg, costs, table)
    trace = inp.trace
    t, end = trace.times[0], trace.end_s
    steps = _step_ends(trace)
    k = 0
    next_tick = t + opts.tick_s
    while t < end:
        while k + 1 < len(steps) and steps[k][1] <= t:
            k += 1
        b = min(steps[k][1], next_tick, ctl.next_event(t), end)
        ctl.serve(t, b, steps[k][2])
        t = b
        ctl.advance_runs(t)
        if t >= next_tick:
            ctl.tick(t)
            next_tick += opts.tick_s
    return ctl.result(), ctl.decisions


@dataclass(frozen=True)
class Report:
    runs: tuple[RunResult, ...]
    decisions: tuple
    elapsed_s: float
    table_entries: int
    simulated_requests: int

    def to_dict(self) -> dict:
        return {
            "kind": "trace replay", "elapsed_s": self.elapsed_s, "serving_model_entries": self.table_entries,
            "simulated_requests": self.simulated_requests,
            "runs": [dict(r.row(), per_model=r.per_model, model_replans=r.model_replans) for r in self.runs],
            "decisions": [d.to_dict() | {"observation": None} for d in self.decisions],
        }


def replay(inp: Inputs, opts: Options = Options(), cfg: PolicyConfig = PolicyConfig(), costs: Costs = Costs()) -> Report:
    """The controller, the static peak plan and the oracle on one trace."""
    _check(inp)
    with _fewer_collections():
        return _replay(inp, opts, cfg, costs)


@contextmanager
def _fewer_collections(young: int = 50_000):
    """Collect the youngest generation after `young` net allocations instead of CPython's 700
    while a replay runs. It makes millions of short-lived containers (plans, segment tuples, batch
    queues) on a heap of tables and caches that grows all day; the default threshold ran a full
    collection of that heap often enough to take about 1 s of a day's 13-14 s. Garbage cycles are
    still collected, later; nothing the replay computes depends on when."""
    old = gc.get_threshold()
    gc.set_threshold(young, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _replay(inp: Inputs, opts: Options, cfg: PolicyConfig, costs: Costs) -> Report:
    started = time.perf_counter()
    template = plan_for(inp, opts, {m: 1.0 for m in inp.trace.models})
    table = AttainmentTable(template, inp.slos, inp.profiles, opts.samples, seed=opts.seed)
    ctl, decisions = run_controller(inp, opts, cfg, costs, table)
    runs = (ctl, run_static(inp, opts, table), run_static(inp, opts, table, cfg.headroom), run_oracle(inp, opts, table))
    return Report(runs, tuple(decisions), time.perf_counter() - started, table.entries, table.simulated_requests)


POLICY_KEYS = {f.name for f in fields(PolicyConfig)}
COST_KEYS = {f.name for f in fields(Costs)}
OPTION_KEYS = {f.name for f in fields(Options)} - {"seed", "max_procs"}


def read_settings(path) -> tuple[PolicyConfig, Costs, dict]:
    """A settings file (YAML/JSON): `policy:` (PolicyConfig fields, read as the live controller
    reads them), `costs:` (Costs fields) and `replay:` (Options fields but seed and max_procs);
    every key optional, unknown keys rejected. A `control:` section (the live controller's) is
    allowed and left to it, so one file serves both."""
    from parvagpu.fileio.reader import read_document

    doc = read_document(path, "controller settings") or {}
    if not isinstance(doc, dict) or set(doc) - {"policy", "costs", "replay", "control"}:
        raise ParvaError(f"{path}: expected a mapping with optional policy, costs, replay and control sections")
    policy = policy_from_settings(path, settings_section(path, doc, "policy", POLICY_KEYS))
    parts = []
    for section, keys in (("costs", COST_KEYS), ("replay", OPTION_KEYS)):
        part = settings_section(path, doc, section, keys)
        bad = [k for k, v in part.items() if isinstance(v, bool) or not isinstance(v, (int, float, str))]
        if bad:
            raise ParvaError(f"{path}: {section}.{bad[0]} must be a number")
        parts.append(part)
    try:
        return policy, Costs(**{k: float(v) for k, v in parts[0].items()}), parts[1]
    except (TypeError, ValueError) as exc:
        raise ParvaError(f"{path}: {exc}") from None
