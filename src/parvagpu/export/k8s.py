"""Kubernetes manifests for a plan: one Deployment per segment, and the node labels they select.

The manifests use the device plugin's `mixed` strategy (`nvidia.com/mig-<profile>` resources).
The plugin refuses MPS on MIG devices, so each segment's pod starts its own MPS control daemon on
the MIG device it was given and then the segment's worker processes. The device plugin chooses
which instance of a profile a pod gets, so the exact slots are `parvagpu apply`'s to make.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import MigProfile, gpu_type
from parvagpu.core.model import DeploymentMap, PlacedSegment
from parvagpu.export.common import dump, plan_nodes

DEFAULT_IMAGE = "nvcr.io/nvidia/pytorch:24.05-py3"
DEFAULT_WORKER_CMD = 'python3 serve.py --model "$PARVAGPU_MODEL" --batch-size "$PARVAGPU_BATCH"'
DEFAULT_NODE_LABEL = "parvagpu.io/node"
# A fleet plan's nodes are named: its pods select the node's name on the label the kubelet sets.
FLEET_NODE_LABEL = "kubernetes.io/hostname"
MPS_PIPE = "/mps/pipe"
MPS_LOG = "/mps/log"
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

POD_SCRIPT = """\
set -eu
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
# One MPS control daemon for the MIG device this pod was given; its workers share it.
nvidia-cuda-mps-control -d
pids=""
stop() {
  kill $pids 2>/dev/null || true
  wait || true
  echo quit | nvidia-cuda-mps-control || true
}
trap 'stop; exit 0' TERM INT
i=0
while [ "$i" -lt "$PARVAGPU_PROCS" ]; do
  PARVAGPU_WORKER="$i" sh -c "$PARVAGPU_WORKER_CMD" &
  pids="$pids $!"
  i=$((i + 1))
done
wait
"""


def _dns(s: str) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", s.lower()).strip("-")
    return out or "x"


def _label_value(s: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", s)[:63].strip("-_.")
    return out or "x"


def _node_label(plan: DeploymentMap, node_label: str | None) -> str:
    """The label key the pods select: the one asked for, else the fleet's or the index's default."""
    if node_label is not None:
        return node_label
    return FLEET_NODE_LABEL if plan.fleet is not None else DEFAULT_NODE_LABEL


def node_value(plan: DeploymentMap, node: int) -> str:
    """The label value of plan node `node`: a fleet node's name, else its index."""
    if plan.fleet is None:
        return str(node)
    name = plan.fleet.nodes[node].name
    if not re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", name) or len(name) > 63:
        raise ParvaError(f"fleet node name {name!r} is not a valid Kubernetes label value")
    return name


def _node_name(plan: DeploymentMap, node: int) -> str:
    return plan.fleet.nodes[node].name if plan.fleet is not None else str(node)


def _check_options(image: str, worker_cmd: str, node_label: str) -> None:
    if not image.strip():
        raise ParvaError("--image must not be empty")
    if not worker_cmd.strip():
        raise ParvaError("--worker-cmd must not be empty")
    if not _LABEL_KEY.match(node_label):
        raise ParvaError(f"--node-label {node_label!r} is not a valid Kubernetes label key")


def k8s_deployments(
    plan: DeploymentMap, image: str = DEFAULT_IMAGE, worker_cmd: str = DEFAULT_WORKER_CMD,
    node_label: str | None = None, namespace: str | None = None,
) -> dict[str, dict[str, Any]]:
    """One Deployment (replicas 1, Recreate) per segment, keyed by file name. `node_label` None:
    `FLEET_NODE_LABEL` = the fleet node's name for a fleet plan, else `DEFAULT_NODE_LABEL` = the index."""
    node_label = _node_label(plan, node_label)
    _check_options(image, worker_cmd, node_label)
    out: dict[str, dict[str, Any]] = {}
    for s in sorted(plan.segments, key=lambda s: (s.gpu, s.start)):
        gpu = gpu_type(plan.gpu_type_of(s.gpu))  # a fleet plan: the type of the segment's node
        doc = _deployment(plan, s, gpu.profile(s.size), image, worker_cmd, node_label, namespace)
        out[f"{doc['metadata']['name']}.yaml"] = doc
    return out


def _deployment(
    plan: DeploymentMap, s: PlacedSegment, prof: MigProfile, image: str, worker_cmd: str, node_label: str,
    namespace: str | None,
) -> dict[str, Any]:
    """The Deployment of one segment: its name and labels, then a pod of one container."""
    node, local = plan.node_of(s.gpu), plan.local_gpu(s.gpu)
    name = f"parvagpu-n{node}-g{local}-s{s.start}-{_dns(s.model)}"[:63].rstrip("-")
    seg_labels = {
        "app.kubernetes.io/name": "parvagpu-segment",
        "app.kubernetes.io/part-of": "parvagpu",
        "parvagpu.io/segment": name,
        "parvagpu.io/model": _label_value(s.model),
    }
    meta: dict[str, Any] = {
        "name": name,
        "labels": {**seg_labels, "parvagpu.io/node": str(node), "parvagpu.io/gpu": str(local),
                   "parvagpu.io/start": str(s.start)},
        "annotations": {
            "parvagpu.io/placement": f"node {_node_name(plan, node)} gpu {local} {prof.name} at start {s.start}",
            "parvagpu.io/note": (
                f"the device plugin picks which {prof.name} of the node this pod gets; "
                "parvagpu apply makes the exact placement"
            ),
        },
    }
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # the MIG device must be free before a new pod starts
            "selector": {"matchLabels": {"parvagpu.io/segment": name}},
            "template": {
                "metadata": {"labels": seg_labels},
                "spec": _pod_spec(s, prof, image, worker_cmd, {node_label: node_value(plan, node)}),
            },
        },
    }


def _pod_spec(
    s: PlacedSegment, prof: MigProfile, image: str, worker_cmd: str, node_selector: dict[str, str],
) -> dict[str, Any]:
    """One container asking for one MIG device of the segment's profile, running `POD_SCRIPT`."""
    t = s.segment.triplet
    env = [
        {"name": "PARVAGPU_MODEL", "value": s.model},
        {"name": "PARVAGPU_BATCH", "value": str(t.batch)},
        {"name": "PARVAGPU_PROCS", "value": str(t.procs)},
        {"name": "PARVAGPU_WORKER_CMD", "value": worker_cmd},
        {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": MPS_PIPE},
        {"name": "CUDA_MPS_LOG_DIRECTORY", "value": MPS_LOG},
    ]
    return {
        "nodeSelector": node_selector,
        "containers": [
            {
                "name": "segment",
                "image": image,
                "command": ["/bin/sh", "-c", POD_SCRIPT],
                "env": env,
                "resources": {"limits": {f"nvidia.com/mig-{prof.name}": 1}},
                "volumeMounts": [
                    {"name": "mps", "mountPath": "/mps"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "volumes": [
            {"name": "mps", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }


def k8s_files(
    plan: DeploymentMap, image: str = DEFAULT_IMAGE, worker_cmd: str = DEFAULT_WORKER_CMD,
    node_label: str | None = None, namespace: str | None = None,
) -> dict[str, str]:
    """The Deployments as YAML files, and a script that labels the nodes they select."""
    node_label = _node_label(plan, node_label)
    files = {name: dump(doc) for name, doc in k8s_deployments(plan, image, worker_cmd, node_label, namespace).items()}
    files["node-selector-labels.sh"] = (_fleet_script if plan.fleet is not None else _index_script)(plan, node_label)
    return files


def _fleet_script(plan: DeploymentMap, node_label: str) -> str:
    """A fleet plan's nodes are Kubernetes nodes of the same names: label them only when the
    Deployments select a label other than the kubelet's own hostname label."""
    script = ["#!/bin/sh", f"# The Deployments select each fleet node by its name ({node_label}).", "set -eu"]
    if node_label == FLEET_NODE_LABEL:
        script.append("# The kubelet sets this label on every node: nothing to label.")
    for n in plan_nodes(plan) if node_label != FLEET_NODE_LABEL else ():
        name = node_value(plan, n)
        script.append(f"kubectl label node {shlex.quote(name)} {shlex.quote(f'{node_label}={name}')} --overwrite")
    return "\n".join(script) + "\n"


def _index_script(plan: DeploymentMap, node_label: str) -> str:
    script = [
        "#!/bin/sh",
        f"# Label each Kubernetes node with its plan node index ({node_label}), which the",
        "# Deployments select. Set NODE<k> to the Kubernetes node name of plan node k.",
        "set -eu",
    ]
    for n in plan_nodes(plan):
        script.append(
            f'kubectl label node "${{NODE{n}:?set NODE{n} to the node name of plan node {n}}}" '
            f"{shlex.quote(f'{node_label}={n}')} --overwrite"
        )
    return "\n".join(script) + "\n"
