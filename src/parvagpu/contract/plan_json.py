"""The plan contract: the JSON every later stage reads, written and read back strictly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import Fleet, FleetNode, Reservation
from parvagpu.core.gpus import GpuType, gpu_type
from parvagpu.core.model import (
    PLAN_VERSION,
    DeploymentMap,
    ModelChange,
    PlacedSegment,
    Provenance,
    Schedule,
    Segment,
    Service,
    Transition,
    Triplet,
)
from parvagpu.fileio.reader import read_json


def _round(x: float) -> float:
    """A derived figure for people (capacity, gap): sums of profiled floats carry binary noise
    (5383.360999999999); six decimals keep every digit a profile states."""
    return round(x, 6) if math.isfinite(x) else x


def _plain(x: float) -> float | int:
    """Integer-valued figures are written as integers (17, not 17.0); read back they compare equal."""
    return int(x) if isinstance(x, float) and x.is_integer() else x


def provenance_to_dict(p: Provenance) -> dict[str, Any]:
    return {"profiles": p.profiles, "sha256": p.sha256, "models": dict(p.models), "measured_on": p.measured_on}


def provenance_from_dict(v: Any, where: str) -> Provenance:
    _need(v, {"profiles", "sha256", "models", "measured_on"}, where, optional={"models", "measured_on"})
    models = v.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(h, str) for h in models.values()):
        raise ParvaError(f"{where}: models must be an object of model names to hashes")
    on = v.get("measured_on")
    if not isinstance(v["profiles"], str) or not isinstance(v["sha256"], str) or not (on is None or isinstance(on, str)):
        raise ParvaError(f"{where}: profiles, sha256 and measured_on must be strings")
    return Provenance(v["profiles"], v["sha256"], tuple((str(m), h) for m, h in models.items()), on)


MIXED = "mixed"  # the plan-level gpu_type of a fleet plan over several GPU types


class _Types:
    """Each GPU's type: the plan's one type, or its fleet node's."""

    def __init__(self, plan: DeploymentMap) -> None:
        self.plan = plan

    def of(self, g: int) -> GpuType:
        return gpu_type(self.plan.gpu_type_of(g))


def fleet_to_dict(fleet: Fleet) -> dict[str, Any]:
    return {"nodes": [
        {
            "name": n.name, "gpu": n.gpu, "gpus": n.gpus, "price_per_gpu_hour": n.price_per_gpu_hour,
            "reserved": [
                {"gpu": r.gpu} if r.whole else {"gpu": r.gpu, "start": r.start, "size": r.size} for r in n.reserved
            ],
        }
        for n in fleet.nodes
    ]}


def _service_dict(plan: DeploymentMap, c) -> dict[str, Any]:
    out = {
        "model": c.service.model,
        "rate": c.service.rate,
        "latency_ms": c.service.latency_ms,
        "capacity": _round(c.capacity),
    }
    if c.service.tier:
        out["tier"] = c.service.tier
    if plan.fleet is not None or plan.served:
        served = plan.served_rate(c.service)
        out["served_rate"] = served
        out["shortfall"] = _round(c.service.rate - served)
    return out


def plan_to_dict(plan: DeploymentMap) -> dict[str, Any]:
    gpu = _Types(plan)
    gap = None
    if plan.lower_bound is not None and plan.gpus_used:
        gap = (plan.gpus_used - plan.lower_bound) / plan.gpus_used
    out = {
        "version": PLAN_VERSION,
        "gpus_used": plan.gpus_used,
        "gpu_type": plan.gpu_type,
        "strategy": plan.strategy,
        "max_procs": plan.max_procs,
        "gpus_per_node": plan.gpus_per_node,
        "lower_bound": plan.lower_bound,
        "gap": None if gap is None else _round(gap),
        "segments": [_segment(plan, gpu, s) for s in plan.segments],
        "services": [_service_dict(plan, c) for c in plan.capacities()],
        "stats": {k: _plain(v) for k, v in plan.stats},
    }
    if plan.fleet is not None:
        out["fleet"] = fleet_to_dict(plan.fleet)
    if plan.provenance is not None:
        out["provenance"] = provenance_to_dict(plan.provenance)
    if plan.transition is not None:
        out["transition"] = _transition_to_dict(plan, gpu, plan.transition)
    return out


def _segment(plan: DeploymentMap, gpu, s: PlacedSegment) -> dict[str, Any]:
    return {
        "model": s.model,
        "node": plan.node_of(s.gpu),
        "gpu": plan.local_gpu(s.gpu),
        "start": s.start,
        "size": s.size,
        "profile": gpu.of(s.gpu).profile(s.size).name,
        "batch": s.segment.triplet.batch,
        "procs": s.segment.triplet.procs,
        "throughput": s.segment.throughput,
        "latency_ms": s.segment.triplet.latency_ms,
    }


def schedule_to_dict(plan: DeploymentMap, t: Transition, sched: Schedule) -> dict[str, Any]:
    """What `parvagpu diff` writes: the transition, its ordered steps and its dips."""
    gpu = _Types(plan)
    out = _transition_to_dict(plan, gpu, t)
    out["changed"] = t.changed
    out["spare_gpus"] = [{"node": plan.node_of(g), "gpu": plan.local_gpu(g)} for g in sched.spare_gpus]
    out["steps"] = [
        {"step": i + 1, "action": st.action, "bridge": st.bridge, **_segment(plan, gpu, st.segment)}
        for i, st in enumerate(sched.steps)
    ]
    out["dips"] = [
        {"model": d.model, "shortfall": d.shortfall, "steps": d.steps, "after_step": d.first + 1}
        for d in sched.dips
    ]
    return out


def _transition_to_dict(plan: DeploymentMap, gpu, t: Transition) -> dict[str, Any]:
    """The `transition` section: what changes from the running plan (see the transition values in core/model.py)."""
    return {
        "kept": t.kept,
        "added": [_segment(plan, gpu, s) for s in t.added],
        "removed": [_segment(plan, gpu, s) for s in t.removed],
        "gpus_touched": [{"node": plan.node_of(g), "gpu": plan.local_gpu(g)} for g in t.gpus_touched],
        "models": [
            {
                "model": m.model, "old_rate": m.old_rate, "new_rate": m.new_rate,
                "old_capacity": m.old_capacity, "new_capacity": m.new_capacity,
            }
            for m in t.models
        ],
    }


def plan_to_json(plan: DeploymentMap) -> str:
    return json.dumps(plan_to_dict(plan), indent=2) + "\n"


_TOP_KEYS = {
    "version", "gpus_used", "gpu_type", "strategy", "max_procs", "gpus_per_node",
    "lower_bound", "gap", "segments", "services", "stats", "transition", "provenance", "fleet",
}
_TRANSITION_KEYS = {"kept", "added", "removed", "gpus_touched", "models"}
_CHANGE_KEYS = {"model", "old_rate", "new_rate", "old_capacity", "new_capacity"}
_SEG_KEYS = {
    "model", "node", "gpu", "start", "size", "profile", "batch", "procs", "throughput", "latency_ms",
}
_SVC_KEYS = {"model", "rate", "latency_ms", "capacity", "tier", "served_rate", "shortfall"}
_NODE_KEYS = {"name", "gpu", "gpus", "price_per_gpu_hour", "reserved"}
_RESERVED_KEYS = {"gpu", "start", "size"}


def _need(obj: dict, keys: set[str], where: str, optional: set[str] = frozenset()) -> None:
    if not isinstance(obj, dict):
        raise ParvaError(f"{where}: expected an object")
    missing = keys - optional - set(obj)
    if missing:
        raise ParvaError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = set(obj) - keys
    if unknown:
        raise ParvaError(f"{where}: unknown keys {', '.join(sorted(unknown))}")


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParvaError(f"{where}: expected an integer, got {v!r}")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ParvaError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _stats(v: Any, where: str) -> tuple[tuple[str, float], ...]:
    """The planner's figures, in the order written (an object of names to numbers)."""
    if not isinstance(v, dict):
        raise ParvaError(f"{where}: expected an object of names to numbers")
    return tuple((str(k), _num(x, f"{where} {k}")) for k, x in v.items())


def plan_from_dict(data: Any, source: str = "plan") -> tuple[DeploymentMap, int]:
    """Parse a plan JSON object strictly; returns the map and the `gpus_used` it states."""
    _need(data, _TOP_KEYS, source,
          optional={"lower_bound", "gap", "stats", "gpus_per_node", "transition", "provenance", "fleet"})
    if data["version"] != PLAN_VERSION:
        raise ParvaError(f"{source}: unsupported plan version {data['version']!r}")
    fleet = _read_fleet(data["fleet"], f"{source}: fleet") if data.get("fleet") is not None else None
    type_name = str(data["gpu_type"])
    if fleet is None or type_name != MIXED:
        type_name = gpu_type(type_name).name
    per_node = _int(data.get("gpus_per_node", 8), f"{source}: gpus_per_node")
    if per_node < 1:
        raise ParvaError(f"{source}: gpus_per_node must be >= 1")
    if not isinstance(data["segments"], list) or not isinstance(data["services"], list):
        raise ParvaError(f"{source}: segments and services must be lists")
    segments = [
        _read_segment(s, f"{source}: segment {i}", per_node, fleet) for i, s in enumerate(data["segments"])
    ]
    services, served = [], []
    for i, s in enumerate(data["services"]):
        where = f"{source}: service {i}"
        _need(s, _SVC_KEYS, where, optional={"capacity", "tier", "served_rate", "shortfall"})
        tier = _int(s.get("tier", 0), where + " tier")
        svc = Service(str(s["model"]), _num(s["rate"], where), _num(s["latency_ms"], where), tier)
        services.append(svc)
        if s.get("served_rate") is not None and _num(s["served_rate"], where) != svc.rate:
            served.append((svc.model, _num(s["served_rate"], where)))
    lb = data.get("lower_bound")
    stats = _stats(data.get("stats", {}), f"{source}: stats")
    plan = DeploymentMap(
        gpu_type=type_name,
        strategy=str(data["strategy"]),
        max_procs=_int(data["max_procs"], f"{source}: max_procs"),
        gpus_per_node=per_node,
        segments=tuple(segments),
        services=tuple(services),
        lower_bound=None if lb is None else _int(lb, f"{source}: lower_bound"),
        stats=stats,
        transition=_read_transition(data["transition"], f"{source}: transition", per_node, fleet)
        if data.get("transition") is not None else None,
        provenance=None if data.get("provenance") is None
        else provenance_from_dict(data["provenance"], f"{source}: provenance"),
        fleet=fleet,
        served=tuple(served),
    )
    return plan, _int(data["gpus_used"], f"{source}: gpus_used")


def _read_fleet(v: Any, where: str) -> Fleet:
    _need(v, {"nodes"}, where)
    if not isinstance(v["nodes"], list) or not v["nodes"]:
        raise ParvaError(f"{where}: nodes must be a non-empty list")
    nodes = []
    for i, n in enumerate(v["nodes"]):
        w = f"{where} node {i}"
        _need(n, _NODE_KEYS, w, optional={"price_per_gpu_hour", "reserved"})
        res = []
        for j, r in enumerate(n.get("reserved", [])):
            _need(r, _RESERVED_KEYS, f"{w} reserved {j}", optional={"start", "size"})
            start, size = r.get("start"), r.get("size")
            res.append(Reservation(
                _int(r["gpu"], f"{w} reserved {j} gpu"),
                None if start is None else _int(start, f"{w} reserved {j} start"),
                None if size is None else _int(size, f"{w} reserved {j} size"),
            ))
        nodes.append(FleetNode(
            str(n["name"]), gpu_type(str(n["gpu"])).name, _int(n["gpus"], f"{w} gpus"),
            _num(n.get("price_per_gpu_hour", 1.0), f"{w} price_per_gpu_hour"), tuple(res),
        ))
    return Fleet(tuple(nodes))


def _read_segment(s: Any, where: str, per_node: int, fleet: Fleet | None = None) -> PlacedSegment:
    _need(s, _SEG_KEYS, where, optional={"profile", "latency_ms"})
    node, local = _int(s["node"], where + " node"), _int(s["gpu"], where + " gpu")
    if fleet is not None:
        if not 0 <= node < len(fleet.nodes) or not 0 <= local < fleet.nodes[node].gpus:
            raise ParvaError(f"{where}: node {node} / gpu {local} is not in the plan's fleet")
        per_node = fleet.nodes[node].gpus
    elif node < 0 or not 0 <= local < per_node:
        raise ParvaError(f"{where}: node {node} / gpu {local} out of range (gpus_per_node {per_node})")
    t = Triplet(
        _int(s["size"], where + " size"),
        _int(s["batch"], where + " batch"),
        _int(s["procs"], where + " procs"),
        _num(s["throughput"], where + " throughput"),
        _num(s.get("latency_ms", 0.0), where + " latency_ms"),
    )
    g = fleet.gpu_index(node, local) if fleet is not None else node * per_node + local
    return PlacedSegment(Segment(str(s["model"]), t), g, _int(s["start"], where + " start"))


def _read_transition(t: Any, where: str, per_node: int, fleet: Fleet | None = None) -> Transition:
    """The `transition` section; `gpus_touched` is derived from added and removed, not trusted."""
    _need(t, _TRANSITION_KEYS, where, optional={"gpus_touched"})
    for key in ("added", "removed", "models"):
        if not isinstance(t[key], list):
            raise ParvaError(f"{where}: {key} must be a list")
    models = []
    for i, m in enumerate(t["models"]):
        w = f"{where} model {i}"
        _need(m, _CHANGE_KEYS, w)
        models.append(ModelChange(str(m["model"]), *(_num(m[k], f"{w} {k}") for k in (
            "old_rate", "new_rate", "old_capacity", "new_capacity"))))
    return Transition(
        kept=_int(t["kept"], f"{where} kept"),
        added=tuple(_read_segment(s, f"{where} added {i}", per_node, fleet) for i, s in enumerate(t["added"])),
        removed=tuple(_read_segment(s, f"{where} removed {i}", per_node, fleet) for i, s in enumerate(t["removed"])),
        models=tuple(models),
    )


def read_plan(path: Path) -> tuple[DeploymentMap, int]:
    return plan_from_dict(read_json(path, "plan"), str(path))
