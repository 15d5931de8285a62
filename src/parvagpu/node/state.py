"""The node's files: where it keeps them (`NodeDirs`) and the node state file.

Exists so that the state file's format lives in one place: the agent writes it after an apply
(and corrects it after a rollback), the serving layer reads it (`read_state`, `state_from_dict`)
to find each segment's MIG UUID and MPS directories. Nothing here decides or touches a GPU, and
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
    """A node state file: the node, its GPU type and size, and its segments."""

    node: int
    gpu_type: str
    gpus_per_node: int
    segments: tuple[StateEntry, ...]

    def by_slot(self) -> dict[tuple[int, int], StateEntry]:
        return {(e.gpu, e.start): e for e in self.segments}


def state_doc(state: NodeState) -> dict[str, Any]:
    """The JSON document of a node state file (segments in file order)."""
    return {"version": STATE_VERSION, "node": state.node, "gpu_type": state.gpu_type,
            "gpus_per_node": state.gpus_per_node, "segments": [dataclasses.asdict(e) for e in state.segments]}


def state_from_dict(data: Any, source: str) -> NodeState:
    """Strict reader of a node state file."""
    keys = {"version", "node", "gpu_type", "gpus_per_node", "segments"}
    seg_keys = {f for f in StateEntry.__dataclass_fields__}
    if not isinstance(data, dict) or set(data) != keys:
        raise ParvaError(f"{source}: not a node state file (expected keys {', '.join(sorted(keys))})")
    if data["version"] != STATE_VERSION:
        raise ParvaError(f"{source}: unsupported node state version {data['version']!r}")
    segs = []
    for i, e in enumerate(data["segments"] if isinstance(data["segments"], list) else [None]):
        if not isinstance(e, dict) or set(e) != seg_keys:
            raise ParvaError(f"{source}: segment {i} is malformed")
        try:
            segs.append(StateEntry(**e))
        except TypeError as exc:
            raise ParvaError(f"{source}: segment {i}: {exc}") from None
    return NodeState(int(data["node"]), str(data["gpu_type"]), int(data["gpus_per_node"]), tuple(segs))


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
