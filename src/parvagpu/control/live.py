"""The live controller: observe at the ingress, decide with the policy, re-plan from the running
plan, check, and carry out the transition make-before-break on the nodes and in serving.

Effects sit behind three small interfaces, so the loop runs in tests with a fake clock, fake
node agents and an in-process ingress:

- `Nodes.apply(plan)`: every node holds the plan's segments (MIG instances, MPS daemons);
- `Deployments.start(segments)` returns once each new segment's deployment is ready;
  `Deployments.stop(names)` removes deployments;
- `Port`: the ingress's routing switch (`serving.ingress.Ingress`'s `set_model`, `add_segment`,
  `activate`, `drain`, `inflight`, `remove_segment`, `drop_model`, `counts`).

A transition runs the schedule's steps in groups of consecutive creations or removals. Creations:
the nodes create the instances, the deployments start and are ready, then the ingress adds them
and gives them weight. Removals: the ingress drains them (no new request), the controller waits
until nothing is in flight on them, removes them from the ingress, stops their deployments, then
the nodes destroy the instances. Every step of the way is in the decision log with its time.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Protocol

from parvagpu.control.policy import (Decision, ModelView, PolicyConfig, decide, policy_from_settings, settings_section,
                                     transition_verdict)
from parvagpu.control.window import AttainmentWindow, RateWindow, TrendWindow
from parvagpu.core.errors import ParvaError, SystemFailure
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap, PlacedSegment, Schedule, Service
from parvagpu.planning.nodeloss import as_running, replan_without_nodes, surviving
from parvagpu.planning.request import PlanRequest
from parvagpu.planning.strategies import plan as make_plan
from parvagpu.planning.transition import schedule
from parvagpu.serving.app import spec_to_dict
from parvagpu.serving.policy import ModelSpec, SegmentSpec, serving_spec
from parvagpu.verify import verify, verify_schedule


@dataclass(frozen=True)
class LiveConfig:
    tick_s: float = 5.0  # between two looks at the ingress
    window_s: float = 30.0  # arrival-rate window
    attainment_window_s: float = 60.0
    min_requests: float = 50.0  # fewer in the attainment window: no attainment judged
    drain_timeout_s: float = 120.0  # longest wait for a draining segment's requests
    poll_s: float = 0.05  # between looks at a draining segment's in-flight count
    strategy: str = "parva"
    max_procs: int = 3
    node_loss_s: float = 10.0  # every segment of a node down this long: the node is lost
    trend_window_s: float = 1800.0  # the window of the rate's slope (the policy's trend rules)
    spare_gpus: int = 0  # free GPUs after the plan's that a transition may borrow for bridge copies

    def __post_init__(self) -> None:
        for name in ("tick_s", "window_s", "attainment_window_s", "drain_timeout_s", "poll_s", "node_loss_s",
                     "trend_window_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ParvaError(f"control setting {name} must be positive, got {getattr(self, name)}")
        object.__setattr__(self, "spare_gpus", spare_count(self.spare_gpus))


def spare_count(n) -> int:
    """A number of spare GPUs from a settings file: a whole number >= 0."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 0 or n != int(n):
        raise ParvaError(f"spare GPUs must be a whole number >= 0, got {n}")
    return int(n)


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class Nodes(Protocol):
    def apply(self, plan: DeploymentMap) -> None: ...


class Deployments(Protocol):
    def start(self, segments: list[tuple[SegmentSpec, dict]]) -> None: ...
    def stop(self, names: list[str]) -> None: ...


class Port(Protocol):
    def counts(self) -> dict[str, dict[str, int]]: ...
    def set_model(self, model: str, rate: float, latency_ms: float) -> None: ...
    def add_segment(self, model: str, seg: dict) -> None: ...
    def activate(self, model: str, name: str) -> None: ...
    def drain(self, model: str, name: str) -> None: ...
    def inflight(self, model: str, name: str) -> int: ...
    def remove_segment(self, model: str, name: str) -> None: ...
    def drop_model(self, model: str) -> None: ...
    def down_segments(self) -> dict[str, list[str]]: ...


def segment_name(plan: DeploymentMap, s: PlacedSegment) -> str:
    """A segment's serving name (as `serving_spec` names it)."""
    return f"{s.model}-n{plan.node_of(s.gpu)}-g{plan.local_gpu(s.gpu)}-s{s.start}"


def groups(sched: Schedule) -> list[tuple[str, list[PlacedSegment]]]:
    """The schedule's steps as runs of consecutive creations or removals."""
    out: list[tuple[str, list[PlacedSegment]]] = []
    for st in sched.steps:
        if out and out[-1][0] == st.action:
            out[-1][1].append(st.segment)
        else:
            out.append((st.action, [st.segment]))
    return out


def check_replan(old: DeploymentMap, new: DeploymentMap, profiles,
                 spare_gpus: int = 0) -> tuple[Schedule | None, list[str]]:
    """verify's checks of a new plan and of its transition schedule from the running plan, before
    any effect: (schedule, problems); the schedule is None when the plan itself is wrong. With
    `spare_gpus`, the schedule may bridge on that many free GPUs after the plans' (see `schedule`)."""
    problems = verify(new, profiles)
    if problems:
        return None, problems
    sched = schedule(old, new, spare_gpus)
    return sched, verify_schedule(old, new, sched.steps)


def dip_records(sched: Schedule) -> list[dict]:
    """The schedule's dips as the decision log writes them."""
    return [{"model": d.model, "shortfall": d.shortfall, "steps": d.steps} for d in sched.dips]


def with_bridges(new: DeploymentMap, sched: Schedule) -> DeploymentMap:
    """`new` with the schedule's bridge copies added: every segment that serves during the
    transition, so each bridge gets a serving spec and a name like any other segment."""
    extra = tuple(st.segment for st in sched.steps if st.bridge and st.action == "create")
    return replace(new, segments=new.segments + extra, transition=None) if extra else new


class Controller:
    """The loop's state: the running plan, the windows, what each model is planned for."""

    def __init__(self, plan: DeploymentMap, profiles, policy: PolicyConfig, cfg: LiveConfig, clock: Clock,
                 nodes: Nodes, deployments: Deployments, port: Port, log: Callable[[dict], None],
                 spec_of: Callable[[DeploymentMap], dict[str, ModelSpec]] = serving_spec) -> None:
        self.plan, self.profiles, self.policy, self.cfg = plan, profiles, policy, cfg
        self.clock, self.nodes, self.deployments, self.port = clock, nodes, deployments, port
        self.spec_of, self._log = spec_of, log
        self.gpu = gpu_type(plan.gpu_type)
        self.planned = {s.model: s.rate for s in plan.services}
        self.slos = {s.model: s.latency_ms for s in plan.services}
        self.changed: dict[str, float] = {}
        self.last_replan = -math.inf
        self.rates: dict[str, RateWindow] = {}
        self.attain: dict[str, AttainmentWindow] = {}
        self.trends: dict[str, TrendWindow] = {}
        self.headroom: dict[str, float] = {}  # what the attainment rule raised a model's headroom to
        self.seen: dict[str, tuple[int, int, int]] = {}  # arrived, answered, within SLO
        self.first_seen: dict[str, float] = {}  # when a model's first request arrived
        self.last_obs = -math.inf
        self.recent: deque = deque(maxlen=200)
        self.lock = threading.Lock()
        self._pending: tuple[Service, ...] | None = None
        self._last_hold: str | None = None
        self._down_since: dict[int, float] = {}  # node -> when all its segments were first seen down
        self.on_change: Callable[[DeploymentMap, dict | None], None] | None = None  # metrics hooks
        self.on_observe: Callable[[tuple[ModelView, ...], dict], None] | None = None

    # --- records ---

    def log(self, record: dict) -> None:
        with self.lock:
            self.recent.append(record)
        self._log(record)

    def snapshot(self) -> dict:
        """GET /v1/plan: the running plan, what each model is planned for and the recent records."""
        from parvagpu.contract.plan_json import plan_to_dict

        with self.lock:
            return {"plan": plan_to_dict(self.plan), "planned": dict(self.planned), "decisions": list(self.recent)}

    # --- bring-up ---

    def start(self) -> None:
        """Serve the running plan from nothing: the nodes, then every deployment, then the routes."""
        now = self.clock.now()
        for m in self.planned:
            self._watch(m, now)
        self.log({"kind": "start", "time_s": now, "gpus": self.plan.gpus_used, "segments": len(self.plan.segments)})
        spec = self.spec_of(self.plan)
        for m in sorted(self.planned):
            self.port.set_model(m, self.planned[m], self.slos[m])
        steps = self._create(self.plan, list(self.plan.segments), spec, [], self.plan.segments)
        self.log({"kind": "started", "time_s": self.clock.now(), "steps": steps})

    def _watch(self, model: str, now: float) -> None:
        self.rates[model] = RateWindow(self.cfg.window_s, now)
        self.attain[model] = AttainmentWindow(self.cfg.attainment_window_s, self.cfg.min_requests)
        self.trends[model] = TrendWindow(self.cfg.trend_window_s, now)
        self.seen.setdefault(model, (0, 0, 0))

    # --- the loop ---

    def submit_services(self, services: tuple[Service, ...]) -> None:
        """A new services file (already checked): the next tick re-plans for it."""
        with self.lock:
            self._pending = tuple(services)

    def observe(self, now: float) -> tuple[ModelView, ...]:
        """Feed the windows from the ingress's counters; each model as the policy sees it."""
        counts = self.port.counts()
        for m in self.planned:
            # arrivals for the rate; answered requests (ok, 503, failed) for the attainment, so
            # requests still in flight are not counted as misses
            c = counts.get(m, {})
            now_seen = (c.get("admitted", 0) + c.get("rejected", 0),
                        c.get("ok", 0) + c.get("rejected", 0) + c.get("failed", 0), c.get("within_slo", 0))
            before = self.seen.get(m, (0, 0, 0))
            sent, ended, good = (max(0, a - b) for a, b in zip(now_seen, before))
            self.seen[m] = now_seen
            self._feed(m, now, sent, ended, min(good, ended))
            if sent and m not in self.first_seen:
                self.first_seen[m] = now
        self.last_obs = now
        views = tuple(
            ModelView(m, self.rates[m].rate(now), self.attain[m].attainment(now), self.planned[m],
                      self.plan.capacity(m), self.changed.get(m, -math.inf), self.headroom.get(m),
                      self.trends[m].slope(now))
            for m in sorted(self.planned) if self.warm(m, now)
        )
        if self.on_observe is not None:
            self.on_observe(views, counts)
        return views

    def _feed(self, m: str, now: float, sent: float, ended: float, good: float) -> None:
        """Add one look's counts to the windows. After a gap longer than a tick (a transition ran),
        the counts are spread evenly over the gap in tick-long parts, so the rate window does not
        see the whole gap's arrivals as one burst at its end."""
        last = max(self.last_obs, self.rates[m].start_s)
        parts = max(1, min(1000, int((now - last) / self.cfg.tick_s + 0.5)))
        for k in range(1, parts + 1):
            t = now if k == parts else last + (now - last) * k / parts
            self.rates[m].add(t, sent / parts)
            self.trends[m].add(t, sent / parts)
            self.attain[m].add(t, ended / parts, good / parts)

    def warm(self, model: str, now: float) -> bool:
        """A model is judged once its window has held traffic for a whole window: a model nobody
        has sent to yet (a fresh start) keeps the plan it was given instead of being planned down."""
        first = self.first_seen.get(model)
        return first is not None and now - first >= self.cfg.window_s

    def tick(self) -> Decision | None:
        """One look: a pending services file re-plans at once; else the policy decides."""
        now = self.clock.now()
        views = self.observe(now)
        lost = self.lost_nodes(now)
        if lost:
            if not self.lose_nodes(now, lost):  # refused: tried again after the cool-down, as below
                self.last_replan = now
            return None
        with self.lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._switch_services(now, pending)
            return None
        d = decide(self.policy, now, views, self.last_replan)
        if d.replan or d.reason != self._last_hold or d.held:
            self.log({"kind": "decision", **d.to_dict()})
        self._last_hold = None if d.replan else d.reason
        if d.replan:
            self.headroom.update(d.headrooms)  # kept, as the replay keeps it: the same policy state
            planned = {**self.planned, **dict(d.targets)}
            if self.replan(now, planned, self.slos, d.reason):
                for m, _ in d.targets:
                    self.changed[m] = now
            else:  # refused: tried again after the cool-down (the replay does the same), not every tick
                self.last_replan = now
        return d

    def run(self, stop: threading.Event) -> None:
        """Tick every `tick_s` until `stop` is set."""
        while not stop.is_set():
            self.tick()
            stop.wait(self.cfg.tick_s)

    def _switch_services(self, now: float, services: tuple[Service, ...]) -> None:
        planned = {s.model: s.rate for s in services}
        slos = {s.model: s.latency_ms for s in services}
        self.log({"kind": "decision", "time_s": now, "replan": True, "reason": "services file switched",
                  "targets": planned, "slos": slos})
        if self.replan(now, planned, slos, "services file switched"):
            for m in planned:
                self.changed[m] = now
                if m not in self.rates:
                    self._watch(m, now)

    # --- nodes lost ---

    def lost_nodes(self, now: float) -> set[int]:
        """Nodes whose every segment the ingress has held down (failed calls, no probe answered)
        for `node_loss_s`: a replica restarting on a live node comes back well before."""
        down = {n for names in self.port.down_segments().values() for n in names}
        by_node: dict[int, list[str]] = {}
        for s in self.plan.segments:
            by_node.setdefault(self.plan.node_of(s.gpu), []).append(segment_name(self.plan, s))
        dead = {node for node, names in by_node.items() if all(n in down for n in names)}
        self._down_since = {node: self._down_since.get(node, now) for node in dead}
        return {node for node, t in self._down_since.items() if now - t >= self.cfg.node_loss_s}

    def lose_nodes(self, now: float, lost: set[int]) -> bool:
        """Forget the lost nodes' segments (drained: in-flight requests end within the ingress's
        call timeout; removed from the routes; deployments stopped), then re-plan every service
        with those nodes' GPUs unavailable."""
        gone = [s for s in self.plan.segments if self.plan.node_of(s.gpu) in lost]
        names = [(s.model, segment_name(self.plan, s)) for s in gone]
        self.log({"kind": "nodes lost", "time_s": now, "nodes": sorted(lost), "segments": [n for _, n in names]})
        alive = surviving(self.plan, lost)
        steps = self._remove(alive, list(alive.segments), names)
        with self.lock:
            self.plan = alive
        self._down_since = {}
        self.log({"kind": "nodes forgotten", "time_s": self.clock.now(), "steps": steps})
        return self.replan(now, self.planned, self.slos, f"nodes {sorted(lost)} lost", lost=lost)

    # --- re-plan and transition ---

    def replan(self, now: float, planned: dict[str, float], slos: dict[str, float], reason: str,
               lost: set[int] = frozenset()) -> bool:
        """Plan for `planned` from the running plan (using no GPU of a `lost` node), check plan and
        schedule, run the transition. False (logged, nothing changed) when planning or a check
        refuses (`transition_verdict`: any failed check, or a dip under `dips: refuse`)."""
        services = tuple(Service(m, max(r, 1e-3), slos[m]) for m, r in sorted(planned.items()))
        t0 = self.clock.now()
        try:
            req = PlanRequest(services, self.profiles, self.gpu, self.cfg.max_procs, self.plan.gpus_per_node,
                              current=self.plan)
            if lost:
                new = replan_without_nodes(replace(self.plan, services=services), lost, self.profiles,
                                           lambda r: make_plan(r, self.cfg.strategy), self.cfg.max_procs)
            else:
                new = make_plan(req, self.cfg.strategy)
            sched, problems = check_replan(as_running(self.plan) if lost else self.plan, new, self.profiles,
                                           0 if lost else self.cfg.spare_gpus)
        except ParvaError as exc:
            problems, sched, new = [str(exc)], None, None
        plan_s = self.clock.now() - t0
        verdict = transition_verdict(self.policy, problems, {d.model for d in sched.dips} if sched else set())
        if not verdict.run:
            self.log({"kind": "refused", "time_s": now, "reason": reason, "refused": verdict.reason,
                      "problems": list(verdict.problems[:5]), "dips": dip_records(sched) if verdict.dipped else [],
                      "plan_s": round(plan_s, 3)})
            return False
        assert sched is not None and new is not None
        if not sched.steps:  # the running segments already serve the new targets: nothing to switch
            with self.lock:
                self.plan, self.planned, self.slos, self.last_replan = new, dict(planned), dict(slos), now
            self.log({"kind": "plan kept", "time_s": now, "reason": reason, "plan_s": round(plan_s, 3),
                      "planned": {m: round(r, 6) for m, r in sorted(planned.items())}})
            return True
        self.log({"kind": "transition", "time_s": now, "reason": reason, "plan_s": round(plan_s, 3),
                  "gpus": [self.plan.gpus_used, new.gpus_used],
                  "steps_planned": [f"{st.action} {segment_name(new, st.segment)}" for st in sched.steps],
                  "dips": dip_records(sched)})
        steps = self.execute(new, sched, slos)
        with self.lock:
            old, self.plan, self.planned, self.slos = self.plan, new, dict(planned), dict(slos)
            self.last_replan = now
        done = self.clock.now()
        self.log({"kind": "transition done", "time_s": done, "duration_s": round(done - now, 3), "steps": steps,
                  "created": sum(1 for s in steps if s["action"] == "create"),
                  "removed": sum(1 for s in steps if s["action"] == "remove")})
        if self.on_change is not None:
            self.on_change(new, {"old": old, "steps": steps})
        return True

    def execute(self, new: DeploymentMap, sched: Schedule, slos: dict[str, float]) -> list[dict]:
        """Carry out the schedule; one record per step with its times (seconds from the start). Bridge
        copies on spare GPUs serve like the new plan's segments until their removal steps."""
        serving = with_bridges(new, sched)
        spec = self.spec_of(serving)
        names = {s: segment_name(self.plan, s) for s in self.plan.segments}
        names.update((s, segment_name(serving, s)) for s in serving.segments if s not in names)
        for m in sorted(spec):  # new models get a route (503 until a segment is live), others their SLO
            self.port.set_model(m, spec[m].rate, slos[m])
        held = list(self.plan.segments)
        steps: list[dict] = []
        for action, segs in groups(sched):
            if action == "create":
                held += segs
                steps += self._create(serving, held, spec, steps, segs)
            else:
                held = [s for s in held if s not in segs]
                steps += self._remove(serving, held, [(s.model, names[s]) for s in segs])
        gone = {s.model for s in self.plan.services} - {s.model for s in new.services}
        for m in sorted(gone):
            self.port.drop_model(m)
        for m in sorted(spec):
            self.port.set_model(m, spec[m].rate, slos[m])
        return steps

    def _create(self, new: DeploymentMap, held: list, spec: dict, done: list, segs: Iterable[PlacedSegment]) -> list[dict]:
        t0 = self.clock.now()
        self.nodes.apply(replace(new, segments=tuple(held), transition=None))
        t1 = self.clock.now()
        by_name = {s.name: (m, s) for m, ms in spec.items() for s in ms.segments}
        docs = {m: {x["name"]: x for x in d["segments"]} for m, d in spec_to_dict(spec).items()}
        items = [by_name[segment_name(new, s)] for s in segs]
        self.deployments.start([(s, docs[m][s.name]) for m, s in items])
        t2 = self.clock.now()
        out = []
        for m, s in items:
            self.port.add_segment(m, docs[m][s.name])
            self.port.activate(m, s.name)
            out.append({"action": "create", "segment": s.name, "model": m, "instance_s": round(t1 - t0, 3),
                        "ready_s": round(t2 - t1, 3), "routed_at_s": round(self.clock.now(), 3)})
        return out

    def _remove(self, new: DeploymentMap, held: list, names: list[tuple[str, str]]) -> list[dict]:
        t0 = self.clock.now()
        for m, n in names:
            self.port.drain(m, n)
        while True:
            left = [n for m, n in names if self.port.inflight(m, n)]
            if not left:
                break
            if self.clock.now() - t0 > self.cfg.drain_timeout_s:
                raise SystemFailure(f"segments {', '.join(sorted(left))} still have requests in flight after "
                                    f"{self.cfg.drain_timeout_s:g} s of draining")
            self.clock.sleep(self.cfg.poll_s)
        t1 = self.clock.now()
        for m, n in names:
            self.port.remove_segment(m, n)
        self.deployments.stop([n for _, n in names])
        t2 = self.clock.now()
        self.nodes.apply(replace(new, segments=tuple(held), transition=None))
        t3 = self.clock.now()
        return [{"action": "remove", "segment": n, "model": m, "drain_s": round(t1 - t0, 3),
                 "stop_s": round(t2 - t1, 3), "instance_s": round(t3 - t2, 3), "removed_at_s": round(t3, 3)}
                for m, n in names]


LIVE_KEYS = {"tick_s", "window_s", "attainment_window_s", "min_requests", "drain_timeout_s", "poll_s",
             "strategy", "max_procs", "node_loss_s", "trend_window_s", "spare_gpus"}


def read_live_settings(path) -> tuple[PolicyConfig, LiveConfig]:
    """A settings file (YAML/JSON) for `parvagpu control`: `policy:` (as for `simulate --trace`) and
    `control:` (LiveConfig fields); `costs:` and `replay:` sections are allowed and left to the
    replay, so one file can serve both. Unknown keys are rejected."""
    from dataclasses import fields

    from parvagpu.fileio.reader import read_document

    doc = read_document(path, "controller settings") or {}
    if not isinstance(doc, dict) or set(doc) - {"policy", "control", "costs", "replay"}:
        raise ParvaError(f"{path}: expected a mapping with optional policy, control, costs and replay sections")
    policy = policy_from_settings(path, settings_section(path, doc, "policy", {f.name for f in fields(PolicyConfig)}))
    part = settings_section(path, doc, "control", LIVE_KEYS)
    for k, v in part.items():
        text = k == "strategy"
        if isinstance(v, bool) or not isinstance(v, str if text else (int, float)):
            raise ParvaError(f"{path}: control.{k} must be {'a name' if text else 'a number'}")
    try:
        live = {k: (v if k in ("strategy", "spare_gpus") else int(v) if k == "max_procs" else float(v))
                for k, v in part.items()}
        return policy, LiveConfig(**live)
    except (TypeError, ValueError) as exc:
        raise ParvaError(f"{path}: {exc}") from None


MAX_SERVICES_BODY = 4 * 2**20


def services_from_body(body: bytes, profiles, models: set[str] | None = None,
                       where: str = "POST /v1/services") -> tuple[Service, ...]:
    """A services file sent at runtime (YAML or JSON), checked as the file input is, and every model
    known (a profile, and an entry in the models config when `models` is given); one ParvaError line."""
    from parvagpu.fileio.reader import parse_document
    from parvagpu.inputs.services import services_from_document

    if len(body) > MAX_SERVICES_BODY:
        raise ParvaError(f"{where}: body of {len(body)} bytes exceeds {MAX_SERVICES_BODY}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ParvaError(f"{where}: body is not UTF-8 text") from None
    services = services_from_document(parse_document(text, where), where)
    for s in services:
        if s.model not in profiles:
            raise ParvaError(f"{where}: no profile for model {s.model!r}".encode("unicode_escape").decode("ascii"))
        if models is not None and s.model not in models:
            raise ParvaError(f"{where}: the models config has no entry for {s.model!r}".encode("unicode_escape").decode("ascii"))
    return services


class ServicesWatch:
    """A services file watched on disk (`control --services FILE --watch`): `poll()` re-reads it
    when its modification time or size changed since the last look. A good file is submitted (the
    next tick re-plans for it, reason `services file switched`) and logged `services file read`; a
    bad or unreadable one is logged `services file refused` with its one-line error and changes
    nothing (the running services stay until a good version appears)."""

    def __init__(self, path, ctl: Controller, profiles, models: set[str] | None) -> None:
        from pathlib import Path

        self.path, self.ctl, self.profiles, self.models = Path(path), ctl, profiles, models
        self.seen = self._stamp()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def poll(self) -> bool:
        """Whether a changed, good file was submitted."""
        stamp = self._stamp()
        if stamp == self.seen:
            return False
        self.seen = stamp
        now = self.ctl.clock.now()
        try:
            if self.path.stat().st_size > MAX_SERVICES_BODY:
                raise ParvaError(f"{self.path}: larger than {MAX_SERVICES_BODY} bytes")
            services = services_from_body(self.path.read_bytes(), self.profiles, self.models, where=str(self.path))
        except (ParvaError, OSError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.ctl.log({"kind": "services file refused", "time_s": now, "file": str(self.path), "error": msg})
            return False
        self.ctl.submit_services(services)
        self.ctl.log({"kind": "services file read", "time_s": now, "file": str(self.path),
                      "services": {s.model: [s.rate, s.latency_ms] for s in services}})
        return True
