"""Pinning segment replicas to their MIG instance and MPS daemon, from the node state files.

The apply layer writes one node state file per node: for each segment (local GPU, start slot) its
MIG UUID and MPS pipe/log directories. A replica of that segment must see only that MIG instance
(`CUDA_VISIBLE_DEVICES=<MIG UUID>`) and talk to that instance's MPS daemon
(`CUDA_MPS_PIPE_DIRECTORY`), and must run on that node: Ray places it through a custom resource
`parvagpu_node_<n>` that each node of the cluster declares (`ray start --resources`).
Without node state (a CPU machine) nothing is pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from parvagpu.core.errors import ParvaError
from parvagpu.serving.policy import ModelSpec


def node_resource(node: int) -> str:
    return f"parvagpu_node_{node}"


@dataclass(frozen=True)
class Pin:
    env: tuple[tuple[str, str], ...]
    resources: tuple[tuple[str, float], ...]


def _get(entry: Any, key: str) -> Any:
    return entry[key] if isinstance(entry, dict) else getattr(entry, key)


def pins(spec: dict[str, ModelSpec], states: Iterable[Any]) -> dict[str, Pin]:
    """Segment name -> Pin, for every segment of the plan. `states` are node states (the apply
    layer's `NodeState` objects or their JSON dicts). Every segment must be found, with the same
    model, batch and process count; a node state for another plan is refused."""
    by_slot: dict[tuple[int, int, int], Any] = {}
    nodes_given = set()
    for st in states:
        node = int(_get(st, "node"))
        if node in nodes_given:
            raise ParvaError(f"node state: node {node} given twice")
        nodes_given.add(node)
        for e in _get(st, "segments"):
            by_slot[(node, int(_get(e, "gpu")), int(_get(e, "start")))] = e
    if not nodes_given:
        return {}
    out = {}
    for ms in spec.values():
        for seg in ms.segments:
            e = by_slot.get((seg.node, seg.gpu, seg.start))
            if e is None:
                if seg.node not in nodes_given:
                    raise ParvaError(f"segment {seg.name}: no node state for node {seg.node}")
                raise ParvaError(f"segment {seg.name}: node {seg.node} state has no segment at gpu {seg.gpu} start {seg.start}")
            if (_get(e, "model"), int(_get(e, "batch")), int(_get(e, "procs"))) != (seg.model, seg.batch, seg.procs):
                raise ParvaError(
                    f"segment {seg.name}: node state holds {_get(e, 'model')} b{_get(e, 'batch')} p{_get(e, 'procs')} "
                    "there; apply this plan first"
                )
            out[seg.name] = Pin(
                env=(
                    ("CUDA_VISIBLE_DEVICES", str(_get(e, "mig_uuid"))),
                    ("CUDA_MPS_PIPE_DIRECTORY", str(_get(e, "mps_pipe_dir"))),
                    ("CUDA_MPS_LOG_DIRECTORY", str(_get(e, "mps_log_dir"))),
                ),
                resources=((node_resource(seg.node), 0.001),),
            )
    return out
