"""The node's files: where it keeps them (`NodeDirs`) and the node state file.

Exists so that the state file's format lives in one place: the agent writes it after an apply
(and corrects it after a rollback), the serving layer reads it (`read_state`, `state_from_dict`)
to find each segment's MIG UUID and MPS directories. While a transition's bridges (temporary
copies of segments on spare GPUs) stand, the agent lists them too, under `bridges`. Nothing here decides or touches a GPU, and
nothing here imports the rest of the agent: the file has its own record types.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parvagpu.fileio.writer import atomic_write
from parvagpu.fileio.reader import read_json
from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import GpuType, gpu_type

STATE_VERSION = 1
STATE_ENV = "PARVAGPU_STATE_DIR"
DEFAULT_STATE_ROOT = "/tmp/parvagpu"


def default_state_root() -> Path:
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_ROOT)


@dataclass(frozen=True)
class NodeDirs:
    """Where one node keeps its state file and the per-instance MPS directories."""

    root: Path
    node: int

    @property
    def base(self) -> Path:
        return Path(self.root) / f"node{self.node}"

    @property
    def state_file(self) -> Path:
        return self.base / "state.json"

    def pipe_dir(self, gpu: int, start: int) -> str:
        return str(self.base / f"nvidia-mps-{gpu}-{start}")

    def log_dir(self, gpu: int, start: int) -> str:
        return str(self.base / f"nvidia-log-{gpu}-{start}")


@dataclass(frozen=True)
class StateEntry:
    """One segment of a node state file."""

    model: str
    gpu: int
    start: int
    size: int
    profile: str
    profile_id: int
    batch: int
    procs: int
    gi_id: int
    ci_id: int
    mig_uuid: str
    mps_pipe_dir: str
    mps_log_dir: str


@dataclass(frozen=True)
class NodeState:
    """A node state file: the node, its GPU type and size, its segments, and the bridges that
    stand while an apply runs a transition (same records; the key is written only when some do)."""

    node: int
    gpu_type: str
    gpus_per_node: int
    segments: tuple[StateEntry, ...]
    bridges: tuple[StateEntry, ...] = ()

    def by_slot(self) -> dict[tuple[int, int], StateEntry]:
        return {(e.gpu, e.start): e for e in self.segments}


def state_doc(state: NodeState) -> dict[str, Any]:
    """The JSON document of a node state file (segments in file order)."""
    doc = {"version": STATE_VERSION, "node": state.node, "gpu_type": state.gpu_type,
           "gpus_per_node": state.gpus_per_node, "segments": [dataclasses.asdict(e) for e in state.segments]}
    if state.bridges:
        doc["bridges"] = [dataclasses.asdict(e) for e in state.bridges]
    return doc


_TOP_KEYS = frozenset({"version", "node", "gpu_type", "gpus_per_node", "segments"})
_OPTIONAL_KEYS = frozenset({"bridges"})
_SEGMENT_KEYS = frozenset(StateEntry.__dataclass_fields__)


def state_from_dict(data: Any, source: str) -> NodeState:
    """Strict reader of a node state file: exact keys, JSON types, ranges, and segments that the
    node's GPU type can hold (a known profile at a legal start of a GPU of the node, no overlap)."""
    if not isinstance(data, dict) or not _TOP_KEYS <= set(data) <= _TOP_KEYS | _OPTIONAL_KEYS:
        raise ParvaError(f"{source}: not a node state file (expected keys {', '.join(sorted(_TOP_KEYS))}"
                         f", optionally {', '.join(sorted(_OPTIONAL_KEYS))})")
    if _int(data["version"]) != STATE_VERSION:
        raise ParvaError(f"{source}: unsupported node state version {data['version']!r}")
    node = _checked_int(data["node"], f"{source}: node", 0)
    if not isinstance(data["gpu_type"], str):
        raise ParvaError(f"{source}: gpu_type must be a string, got {data['gpu_type']!r}")
    try:
        gpu = gpu_type(data["gpu_type"])
    except ParvaError as exc:
        raise ParvaError(f"{source}: {exc}") from None
    per_node = _checked_int(data["gpus_per_node"], f"{source}: gpus_per_node", 1)
    if not isinstance(data["segments"], list):
        raise ParvaError(f"{source}: segments must be a list")
    segs = tuple(_entry(e, f"{source}: segment {i}", gpu, per_node) for i, e in enumerate(data["segments"]))
    bridges = data.get("bridges", [])
    if not isinstance(bridges, list):
        raise ParvaError(f"{source}: bridges must be a list")
    bridged = tuple(_entry(e, f"{source}: bridge {i}", gpu, per_node) for i, e in enumerate(bridges))
    _check_overlaps(segs + bridged, gpu, source)
    return NodeState(node, data["gpu_type"], per_node, segs, bridged)


def _int(value: Any) -> int | None:
    """A JSON integer (not a boolean, not a float), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _checked_int(value: Any, where: str, low: int, high: int | None = None) -> int:
    n = _int(value)
    if n is None:
        raise ParvaError(f"{where} must be an integer, got {value!r}")
    if n < low or (high is not None and n > high):
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ParvaError(f"{where} must be {span}, got {n}")
    return n


def _checked_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ParvaError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _entry(e: Any, where: str, gpu: GpuType, per_node: int) -> StateEntry:
    """One segment: a known profile of the node's GPU type, on a GPU of the node, at a legal start."""
    if not isinstance(e, dict) or set(e) != _SEGMENT_KEYS:
        raise ParvaError(f"{where} is malformed (expected keys {', '.join(sorted(_SEGMENT_KEYS))})")
    ints = {k: _checked_int(e[k], f"{where}: {k}", 0) for k in ("gpu", "start", "size", "profile_id", "gi_id", "ci_id")}
    ints.update({k: _checked_int(e[k], f"{where}: {k}", 1) for k in ("batch", "procs")})
    strs = {k: _checked_str(e[k], f"{where}: {k}") for k in ("model", "profile", "mig_uuid", "mps_pipe_dir", "mps_log_dir")}
    if ints["gpu"] >= per_node:
        raise ParvaError(f"{where}: gpu {ints['gpu']} is not a GPU of the node (gpus_per_node {per_node})")
    if not gpu.has_size(ints["size"]):
        raise ParvaError(f"{where}: {gpu.name} has no {ints['size']}g instance (sizes: {gpu.sizes})")
    prof = gpu.profile(ints["size"])
    if (strs["profile"], ints["profile_id"]) != (prof.name, prof.profile_id):
        raise ParvaError(
            f"{where}: profile {strs['profile']!r} (id {ints['profile_id']}) is not {gpu.name}'s "
            f"{ints['size']}g profile ({prof.name}, id {prof.profile_id})"
        )
    if ints["start"] not in prof.starts:
        raise ParvaError(f"{where}: {prof.name} cannot start at slot {ints['start']} (legal: {list(prof.starts)})")
    return StateEntry(**{k: e[k] for k in StateEntry.__dataclass_fields__})


def _check_overlaps(segs: tuple[StateEntry, ...], gpu: GpuType, source: str) -> None:
    used: dict[int, int] = {}
    for i, e in enumerate(segs):
        mask = gpu.mask(e.size, e.start)
        if used.get(e.gpu, 0) & mask:
            raise ParvaError(f"{source}: segment {i}: {e.profile}@{e.start} overlaps another segment on gpu {e.gpu}")
        used[e.gpu] = used.get(e.gpu, 0) | mask


def read_state(path: Path) -> NodeState | None:
    """The node state file, or None if there is none yet."""
    if not Path(path).exists():
        return None
    return state_from_dict(read_json(path, "node state"), str(path))


def write_state(path: Path, state: NodeState) -> bool:
    """Write only when the content changes, so a no-op apply leaves the file alone."""
    text = json.dumps(state_doc(state), indent=2) + "\n"
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParvaError(f"cannot create {Path(path).parent}: {exc.strerror or exc}") from None
    atomic_write(Path(path), text)
    try:
        Path(path).chmod(0o644)  # the serving layer may run as another user
    except OSError:
        pass
    return True


def load_previous(dirs: NodeDirs, node: int, type_name: str | None) -> NodeState | None:
    """The node's last state file, refused when it belongs to another node or GPU type."""
    prev = read_state(dirs.state_file)
    if prev is None:
        return None
    if prev.node != node:
        raise ParvaError(f"{dirs.state_file} belongs to node {prev.node}, not node {node}")
    if type_name is not None and prev.gpu_type != type_name:
        raise ParvaError(f"{dirs.state_file} is for {prev.gpu_type}, the plan is for {type_name}")
    return prev
