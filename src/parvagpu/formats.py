"""Plan writers and readers: the JSON contract, the seed-compatible CSV, atomic file writes."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .gpus import gpu_type
from .model import (
    PLAN_VERSION,
    DeploymentMap,
    ParvaError,
    PlacedSegment,
    Segment,
    Service,
    Triplet,
)

SEED_CSV_HEADER = "Num instance,Num GPU,Model,Placement,Instance size,Batch size,Num proc"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file or nothing: a temporary file in the same directory, then rename."""
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise ParvaError(f"{path}: directory {directory} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise ParvaError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise ParvaError(f"{path}: cannot write: {exc.strerror or exc}") from None


def _round(x: float) -> float:
    return float(f"{x:.6g}") if math.isfinite(x) else x


def plan_to_dict(plan: DeploymentMap) -> dict[str, Any]:
    gpu = gpu_type(plan.gpu_type)
    gap = None
    if plan.lower_bound is not None and plan.gpus_used:
        gap = (plan.gpus_used - plan.lower_bound) / plan.gpus_used
    return {
        "version": PLAN_VERSION,
        "gpus_used": plan.gpus_used,
        "gpu_type": plan.gpu_type,
        "strategy": plan.strategy,
        "max_procs": plan.max_procs,
        "gpus_per_node": plan.gpus_per_node,
        "lower_bound": plan.lower_bound,
        "gap": gap,
        "segments": [
            {
                "model": s.model,
                "node": plan.node_of(s.gpu),
                "gpu": plan.local_gpu(s.gpu),
                "start": s.start,
                "size": s.size,
                "profile": gpu.profile(s.size).name,
                "batch": s.segment.triplet.batch,
                "procs": s.segment.triplet.procs,
                "throughput": s.segment.throughput,
                "latency_ms": s.segment.triplet.latency_ms,
            }
            for s in sorted(plan.segments, key=lambda s: (s.gpu, s.start))
        ],
        "services": [
            {
                "model": c.service.model,
                "rate": c.service.rate,
                "latency_ms": c.service.latency_ms,
                "capacity": c.capacity,
            }
            for c in plan.capacities()
        ],
        "stats": dict(plan.stats),
    }


def plan_to_json(plan: DeploymentMap) -> str:
    return json.dumps(plan_to_dict(plan), indent=2) + "\n"


def plan_to_seed_csv(plan: DeploymentMap) -> str:
    """The reference deployment-map CSV; `Placement` is the real NVIDIA start slot."""
    buf = io.StringIO()
    buf.write(SEED_CSV_HEADER + "\n")
    w = csv.writer(buf, lineterminator="\n")
    for s in sorted(plan.segments, key=lambda s: (s.gpu, -s.size, s.start)):
        t = s.segment.triplet
        w.writerow([plan.node_of(s.gpu), plan.local_gpu(s.gpu), s.model, s.start, s.size, t.batch, t.procs])
    return buf.getvalue()


_TOP_KEYS = {
    "version", "gpus_used", "gpu_type", "strategy", "max_procs", "gpus_per_node",
    "lower_bound", "gap", "segments", "services", "stats",
}
_SEG_KEYS = {
    "model", "node", "gpu", "start", "size", "profile", "batch", "procs", "throughput", "latency_ms",
}
_SVC_KEYS = {"model", "rate", "latency_ms", "capacity"}


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


def plan_from_dict(data: Any, source: str = "plan") -> tuple[DeploymentMap, int]:
    """Parse a plan JSON object strictly; returns the map and the `gpus_used` it states."""
    _need(data, _TOP_KEYS, source, optional={"lower_bound", "gap", "stats", "gpus_per_node"})
    if data["version"] != PLAN_VERSION:
        raise ParvaError(f"{source}: unsupported plan version {data['version']!r}")
    gpu = gpu_type(str(data["gpu_type"]))
    per_node = _int(data.get("gpus_per_node", 8), f"{source}: gpus_per_node")
    if per_node < 1:
        raise ParvaError(f"{source}: gpus_per_node must be >= 1")
    if not isinstance(data["segments"], list) or not isinstance(data["services"], list):
        raise ParvaError(f"{source}: segments and services must be lists")
    segments = []
    for i, s in enumerate(data["segments"]):
        where = f"{source}: segment {i}"
        _need(s, _SEG_KEYS, where, optional={"profile", "latency_ms"})
        node, local = _int(s["node"], where + " node"), _int(s["gpu"], where + " gpu")
        if node < 0 or not 0 <= local < per_node:
            raise ParvaError(f"{where}: node {node} / gpu {local} out of range (gpus_per_node {per_node})")
        t = Triplet(
            _int(s["size"], where + " size"),
            _int(s["batch"], where + " batch"),
            _int(s["procs"], where + " procs"),
            _num(s["throughput"], where + " throughput"),
            _num(s.get("latency_ms", 0.0), where + " latency_ms"),
        )
        segments.append(
            PlacedSegment(Segment(str(s["model"]), t), node * per_node + local, _int(s["start"], where + " start"))
        )
    services = []
    for i, s in enumerate(data["services"]):
        where = f"{source}: service {i}"
        _need(s, _SVC_KEYS, where, optional={"capacity"})
        services.append(Service(str(s["model"]), _num(s["rate"], where), _num(s["latency_ms"], where)))
    lb = data.get("lower_bound")
    plan = DeploymentMap(
        gpu_type=gpu.name,
        strategy=str(data["strategy"]),
        max_procs=_int(data["max_procs"], f"{source}: max_procs"),
        gpus_per_node=per_node,
        segments=tuple(segments),
        services=tuple(services),
        lower_bound=None if lb is None else _int(lb, f"{source}: lower_bound"),
    )
    return plan, _int(data["gpus_used"], f"{source}: gpus_used")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParvaError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ParvaError(f"{path}: cannot read {what}: not UTF-8 text") from None


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParvaError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; any read or parse failure is one `ParvaError` line naming the file."""
    path = Path(path)
    return _parse_json(path, _read_text(path, what))


def read_document(path: Path, what: str) -> Any:
    """A user-written file: JSON when it ends in .json, else YAML; failures as in `read_json`."""
    path = Path(path)
    text = _read_text(path, what)
    if path.suffix.lower() == ".json":
        return _parse_json(path, text)
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParvaError(f"{path}: invalid YAML{line}") from None


def read_plan(path: Path) -> tuple[DeploymentMap, int]:
    return plan_from_dict(read_json(path, "plan"), str(path))
