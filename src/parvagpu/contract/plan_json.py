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
from parvagpu.core.limits import (
    MAX_BATCH, MAX_GPUS_PER_NODE, MAX_LATENCY_MS, MAX_NODES, MAX_PROCS, MAX_RATE, MAX_THROUGHPUT,
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
    return dumps_indented(plan_to_dict(plan)) + "\n"


_SCALARS = frozenset((str, int, float, bool, type(None)))
_FLAT: dict[str, json.JSONEncoder] = {}  # one C encoder per nesting level
_BARE = json.JSONEncoder(separators=("\n", ": "))


def dumps_indented(obj: Any, pad: str = "\n") -> str:
    """`json.dumps(obj, indent=2)`, byte for byte, several times faster: the standard library
    formats indented JSON in Python, so every container holding only scalars (a plan's segments,
    services, stats) is written by its C encoder instead, whose item separator carries the
    newline and indent of the container's level. Text never holds a raw newline (JSON escapes
    it), so the newlines and indents are exactly those of the layout. `pad` is a newline and the
    indent of `obj`'s level."""
    if type(obj) is dict and obj and set(map(type, obj)) == {str}:
        inner = pad + "  "
        if _SCALARS.issuperset(map(type, obj.values())):
            return "{" + inner + _flat(inner).encode(obj)[1:-1] + pad + "}"
        items = (f"{_flat(inner).encode(k)}: {dumps_indented(v, inner)}" for k, v in obj.items())
        return "{" + inner + ("," + inner).join(items) + pad + "}"
    if type(obj) is list and obj:
        inner = pad + "  "
        if _SCALARS.issuperset(map(type, obj)):
            return "[" + inner + _flat(inner).encode(obj)[1:-1] + pad + "]"
        if all(_flat_dict(v) for v in obj):
            return "[" + inner + _records(obj, inner) + pad + "]"
        return "[" + inner + ("," + inner).join(dumps_indented(v, inner) for v in obj) + pad + "]"
    return json.dumps(obj, indent=2).replace("\n", pad)


def _flat(inner: str) -> json.JSONEncoder:
    if inner not in _FLAT:
        _FLAT[inner] = json.JSONEncoder(separators=("," + inner, ": "))
    return _FLAT[inner]


def _flat_dict(v: Any) -> bool:
    return type(v) is dict and bool(v) and set(map(type, v)) == {str} and _SCALARS.issuperset(map(type, v.values()))


def _records(items: list, inner: str) -> str:
    """A list of non-empty flat objects (a plan's segments) in one call of the C encoder, every
    separator a bare newline: between two objects it stands between "}" and "{", between two
    fields before a key's quote (a scalar never ends in "}"), so each is replaced by its own
    indent. NUL marks the first kind meanwhile (the encoder escapes it in text)."""
    deeper = inner + "  "
    text = _BARE.encode(items)[2:-2]  # without "[{" and "}]"
    text = text.replace("}\n{", "\0").replace("\n", "," + deeper).replace("\0", inner + "}," + inner + "{" + deeper)
    return "{" + deeper + text + inner + "}"


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
        raise ParvaError(f"{where}: unknown keys {', '.join(sorted(unknown)).encode('unicode_escape').decode('ascii')[:200]}")


def _int(v: Any, where: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParvaError(f"{where}: expected an integer, got {_show(v)}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ParvaError(f"{where}: {_show(v)} is outside {'' if low is None else low}..{'' if high is None else high}")
    return v


def _num(v: Any, where: str, high: float = MAX_RATE * MAX_THROUGHPUT, positive: bool = False) -> float:
    """A finite number in [0, high], or in (0, high] when `positive` (rates, latencies, throughputs)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ParvaError(f"{where}: expected a number, got {_show(v)}")
    x = float(v) if not (isinstance(v, int) and v > high) else math.inf
    if not math.isfinite(x) or not (0 < x if positive else 0 <= x) or x > high:
        kind = "a positive number" if positive else "a number >= 0"
        raise ParvaError(f"{where}: must be {kind} up to {high:g}, got {_show(v)}")
    return x


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ParvaError(f"{where}: expected a non-empty string, got {_show(v)}")
    return v


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _stats(v: Any, where: str) -> tuple[tuple[str, float], ...]:
    """The planner's figures, in the order written (an object of names to finite numbers)."""
    if not isinstance(v, dict):
        raise ParvaError(f"{where}: expected an object of names to numbers")
    out = []
    for k, x in v.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
            raise ParvaError(f"{where} {k}: expected a finite number, got {_show(x)}")
        out.append((str(k), float(x)))
    return tuple(out)


def _read_services(items: list, source: str) -> tuple[tuple[Service, ...], tuple[tuple[str, float], ...]]:
    """The services, each model once, and the lower rates the plan says it serves."""
    services: dict[str, Service] = {}
    served = []
    for i, s in enumerate(items):
        where = f"{source}: service {i}"
        _need(s, _SVC_KEYS, where, optional={"capacity", "tier", "served_rate", "shortfall"})
        model = _str(s["model"], where + " model")
        if model in services:
            raise ParvaError(f"{where}: model {model!r} is listed twice")
        tier = _int(s.get("tier", 0), where + " tier")
        svc = Service(model, _num(s["rate"], f"{where} rate", MAX_RATE, positive=True),
                      _num(s["latency_ms"], f"{where} latency_ms", MAX_LATENCY_MS, positive=True), tier)
        services[model] = svc
        if s.get("served_rate") is not None:
            rate = _num(s["served_rate"], f"{where} served_rate", MAX_RATE)
            if rate != svc.rate:
                served.append((model, rate))
    return tuple(services.values()), tuple(served)


def plan_from_dict(data: Any, source: str = "plan") -> tuple[DeploymentMap, int]:
    """Parse a plan JSON object strictly; returns the map and the `gpus_used` it states.

    Structure and value ranges only: every number finite, positive where it must be and bounded
    (core.limits), each service once, each segment for one of the services. Whether the plan is
    servable is `verify`'s question."""
    _need(data, _TOP_KEYS, source,
          optional={"lower_bound", "gap", "stats", "gpus_per_node", "transition", "provenance", "fleet"})
    if data["version"] != PLAN_VERSION:
        raise ParvaError(f"{source}: unsupported plan version {_show(data['version'])}")
    fleet = _read_fleet(data["fleet"], f"{source}: fleet") if data.get("fleet") is not None else None
    type_name = _str(data["gpu_type"], f"{source}: gpu_type")
    if fleet is None or type_name != MIXED:
        type_name = gpu_type(type_name).name
    per_node = _int(data.get("gpus_per_node", 8), f"{source}: gpus_per_node", 1, MAX_GPUS_PER_NODE)
    if not isinstance(data["segments"], list) or not isinstance(data["services"], list):
        raise ParvaError(f"{source}: segments and services must be lists")
    services, served = _read_services(data["services"], source)
    models = {s.model for s in services}
    segments = []
    for i, s in enumerate(data["segments"]):
        seg = _read_segment(s, f"{source}: segment {i}", per_node, fleet)
        if seg.model not in models:
            raise ParvaError(f"{source}: segment {i}: model {seg.model!r} is not one of the plan's services")
        segments.append(seg)
    lb = data.get("lower_bound")
    stats = _stats(data.get("stats", {}), f"{source}: stats")
    plan = DeploymentMap(
        gpu_type=type_name,
        strategy=_str(data["strategy"], f"{source}: strategy"),
        max_procs=_int(data["max_procs"], f"{source}: max_procs", 1, MAX_PROCS),
        gpus_per_node=per_node,
        segments=tuple(segments),
        services=services,
        lower_bound=None if lb is None else _int(lb, f"{source}: lower_bound", 0),
        stats=stats,
        transition=_read_transition(data["transition"], f"{source}: transition", per_node, fleet)
        if data.get("transition") is not None else None,
        provenance=None if data.get("provenance") is None
        else provenance_from_dict(data["provenance"], f"{source}: provenance"),
        fleet=fleet,
        served=served,
    )
    return plan, _int(data["gpus_used"], f"{source}: gpus_used", 0)


def _read_fleet(v: Any, where: str) -> Fleet:
    _need(v, {"nodes"}, where)
    if not isinstance(v["nodes"], list) or not 0 < len(v["nodes"]) <= MAX_NODES:
        raise ParvaError(f"{where}: nodes must be a non-empty list of at most {MAX_NODES}")
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
            _str(n["name"], f"{w} name"), gpu_type(_str(n["gpu"], f"{w} gpu")).name,
            _int(n["gpus"], f"{w} gpus", 1, MAX_GPUS_PER_NODE),
            _num(n.get("price_per_gpu_hour", 1.0), f"{w} price_per_gpu_hour"), tuple(res),
        ))
    return Fleet(tuple(nodes))


_SEG_REQUIRED = _SEG_KEYS - {"profile", "latency_ms"}


def _read_segment(s: Any, where: str, per_node: int, fleet: Fleet | None = None) -> PlacedSegment:
    placed = _plain_segment(s, per_node, fleet)
    return placed if placed is not None else _checked_segment(s, where, per_node, fleet)


def _checked_segment(s: Any, where: str, per_node: int, fleet: Fleet | None = None) -> PlacedSegment:
    """Every check, field by field, naming the first that fails."""
    _need(s, _SEG_KEYS, where, optional={"profile", "latency_ms"})
    node, local = _int(s["node"], where + " node", 0, MAX_NODES), _int(s["gpu"], where + " gpu", 0)
    if fleet is not None:
        if not 0 <= node < len(fleet.nodes) or not 0 <= local < fleet.nodes[node].gpus:
            raise ParvaError(f"{where}: node {node} / gpu {local} is not in the plan's fleet")
        per_node = fleet.nodes[node].gpus
    elif node < 0 or not 0 <= local < per_node:
        raise ParvaError(f"{where}: node {node} / gpu {local} out of range (gpus_per_node {per_node})")
    latency = s.get("latency_ms")
    t = Triplet(
        _int(s["size"], where + " size", 1, 64),
        _int(s["batch"], where + " batch", 1, MAX_BATCH),
        _int(s["procs"], where + " procs", 1, MAX_PROCS),
        _num(s["throughput"], where + " throughput", MAX_THROUGHPUT, positive=True),
        0.0 if latency is None else _num(latency, where + " latency_ms", MAX_LATENCY_MS, positive=True),
    )
    g = fleet.gpu_index(node, local) if fleet is not None else node * per_node + local
    return PlacedSegment(Segment(_str(s["model"], where + " model"), t), g, _int(s["start"], where + " start", 0, 64))


def _plain_segment(s: Any, per_node: int, fleet: Fleet | None) -> PlacedSegment | None:
    """A segment every check of `_read_segment` passes, read without naming each field (a running
    plan holds tens of thousands); None at the first doubt, and the checked path reports it."""
    if type(s) is not dict or not (s.keys() <= _SEG_KEYS and _SEG_REQUIRED <= s.keys()):
        return None
    model, node, local, start = s["model"], s["node"], s["gpu"], s["start"]
    size, batch, procs, thr, lat = s["size"], s["batch"], s["procs"], s["throughput"], s.get("latency_ms")
    if not (type(model) is str and model and type(node) is int and type(local) is int and type(start) is int
            and type(size) is int and type(batch) is int and type(procs) is int
            and 0 <= node <= MAX_NODES and 0 <= local and 0 <= start <= 64 and 1 <= size <= 64
            and 1 <= batch <= MAX_BATCH and 1 <= procs <= MAX_PROCS
            and _positive(thr, MAX_THROUGHPUT) and (lat is None or _positive(lat, MAX_LATENCY_MS))):
        return None
    if fleet is None:
        if local >= per_node:
            return None
        g = node * per_node + local
    elif node < len(fleet.nodes) and local < fleet.nodes[node].gpus:
        g = fleet.gpu_index(node, local)
    else:
        return None
    t = Triplet(size, batch, procs, float(thr), 0.0 if lat is None else float(lat))
    return PlacedSegment(Segment(model, t), g, start)


def _positive(v: Any, high: float) -> bool:
    """What `_num(v, ..., high, positive=True)` accepts (ints compared before any conversion)."""
    kind = type(v)
    return (kind is float or kind is int) and 0 < v <= high and (kind is int or math.isfinite(v))


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
        models.append(ModelChange(_str(m["model"], f"{w} model"), *(_num(m[k], f"{w} {k}") for k in (
            "old_rate", "new_rate", "old_capacity", "new_capacity"))))
    return Transition(
        kept=_int(t["kept"], f"{where} kept", 0),
        added=tuple(_read_segment(s, f"{where} added {i}", per_node, fleet) for i, s in enumerate(t["added"])),
        removed=tuple(_read_segment(s, f"{where} removed {i}", per_node, fleet) for i, s in enumerate(t["removed"])),
        models=tuple(models),
    )


def read_plan(path: Path) -> tuple[DeploymentMap, int]:
    return plan_from_dict(read_json(path, "plan"), str(path))
