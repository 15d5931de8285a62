"""Kubernetes manifests for a plan: the plan's ConfigMap, one Deployment per segment, one Service
per model, and the node labels the Deployments select.

Each pod runs `parvagpu serve PLAN --segment NAME` from the image built by `docker/Dockerfile`:
the same serving code as `parvagpu serve` (its OIP ingress, admission and dynamic batching, one
Ray Serve replica per MPS process of the segment, batches of the segment's size), restricted to
that one segment. The segments come from `serving.policy.serving_spec`, so the names, batch sizes
and process counts in the manifests are those `serve` uses. The plan and the models config reach
the pod through the ConfigMap.

The manifests use the device plugin's `mixed` strategy (`nvidia.com/mig-<profile>` resources).
The plugin refuses MPS on MIG devices, so each pod starts its own MPS control daemon on the MIG
device it was given before the segment's processes. The device plugin chooses which instance of a
profile a pod gets, so the exact slots are `parvagpu apply`'s to make.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

from parvagpu.contract.plan_json import plan_to_json
from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import MigProfile, gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.export.common import dump, plan_nodes
from parvagpu.serving.policy import SegmentSpec, serving_spec

DEFAULT_IMAGE = "parvagpu:latest"  # docker build -t parvagpu:latest -f docker/Dockerfile .
DEFAULT_NODE_LABEL = "parvagpu.io/node"
# A fleet plan's nodes are named: its pods select the node's name on the label the kubelet sets.
FLEET_NODE_LABEL = "kubernetes.io/hostname"
DEFAULT_PORT = 8000
CONFIG_MAP = "parvagpu-plan"
CONFIG_DIR = "/etc/parvagpu"  # where the ConfigMap's files are mounted in each pod
MPS_PIPE = "/mps/pipe"
MPS_LOG = "/mps/log"
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")

# The container's command: `sh -c POD_SCRIPT parvagpu-segment ARGS...` runs ARGS (the serve command)
# in the background so that a stop reaches it and, after it, the MPS daemon.
POD_SCRIPT = """\
set -eu
# A GPU in this container (the device plugin names it in NVIDIA_VISIBLE_DEVICES): one MPS control
# daemon for it, whose clients are the segment's processes. Without one (a CPU test) there is none.
mps=""
case "${NVIDIA_VISIBLE_DEVICES:-}" in
  ""|void|none) ;;
  *) mps=1 ;;
esac
# The stop is set before MPS starts, so that a pod deleted while it starts still quits it. It can
# come before `pid=$!` has run (the serve command started, or not yet): then the last background
# job's id, if there is one.
pid=""
stop() {
  [ -n "$pid" ] || pid="${!:-}"
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" || true
  fi
  if [ -n "$mps" ]; then echo quit | nvidia-cuda-mps-control || true; fi
}
trap 'stop; exit 0' TERM INT
if [ -n "$mps" ]; then
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  nvidia-cuda-mps-control -d
fi
"$@" &
pid=$!
wait "$pid"
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


def _check_options(image: str, node_label: str, port: int) -> None:
    if not image.strip():
        raise ParvaError("--image must not be empty")
    if not _LABEL_KEY.match(node_label):
        raise ParvaError(f"--node-label {node_label!r} is not a valid Kubernetes label key")
    if not 1 <= port <= 65535:
        raise ParvaError(f"--port must be in 1..65535, got {port}")


def served_segments(plan: DeploymentMap) -> list[SegmentSpec]:
    """The plan's segments as `serve` names and runs them, in plan order (GPU, start)."""
    return sorted((s for ms in serving_spec(plan).values() for s in ms.segments),
                  key=lambda s: (s.node, s.gpu, s.start))


def serve_args(segment: str, port: int = DEFAULT_PORT, force_invalid: bool = False) -> list[str]:
    """The command line a segment's pod runs (after the MPS start-up of `POD_SCRIPT`)."""
    args = ["parvagpu", "serve", f"{CONFIG_DIR}/plan.json", "--models", f"{CONFIG_DIR}/models.yaml",
            "--segment", segment, "--host", "0.0.0.0", "--port", str(port)]
    return args + (["--force-invalid"] if force_invalid else [])


def k8s_deployments(
    plan: DeploymentMap, image: str = DEFAULT_IMAGE, node_label: str | None = None, namespace: str | None = None,
    port: int = DEFAULT_PORT, force_invalid: bool = False,
) -> dict[str, dict[str, Any]]:
    """One Deployment (replicas 1, Recreate) per segment, keyed by file name. `node_label` None:
    `FLEET_NODE_LABEL` = the fleet node's name for a fleet plan, else `DEFAULT_NODE_LABEL` = the index."""
    node_label = _node_label(plan, node_label)
    _check_options(image, node_label, port)
    plan_nodes(plan)  # a plan without segments has nothing to export
    out: dict[str, dict[str, Any]] = {}
    for s in served_segments(plan):
        gpu = gpu_type(plan.node_gpu_type(s.node))  # a fleet plan: the type of the segment's node
        selector = {node_label: node_value(plan, s.node)}
        doc = _deployment(s, gpu.profile(s.size), _node_name(plan, s.node), image, selector, namespace, port,
                          force_invalid)
        out[f"{doc['metadata']['name']}.yaml"] = doc
    return out


def k8s_manifests(
    plan: DeploymentMap, models_text: str, image: str = DEFAULT_IMAGE, node_label: str | None = None,
    namespace: str | None = None, port: int = DEFAULT_PORT, force_invalid: bool = False,
) -> dict[str, dict[str, Any]]:
    """Every manifest keyed by file name: the ConfigMap (the plan and the models config), one
    Deployment per segment and one Service per model."""
    out = {"configmap.yaml": _config_map(plan, models_text, namespace),
           **k8s_deployments(plan, image, node_label, namespace, port, force_invalid)}
    segs = served_segments(plan)
    _check_unique_labels(segs)
    for model in sorted({s.model for s in segs}):
        doc = _service(model, namespace, port)
        name = f"{doc['metadata']['name']}.yaml"
        if name in out:
            raise ParvaError(f"models {model!r} and another map to the same Service name {name[:-5]!r}; rename one")
        out[name] = doc
    return out


def _check_unique_labels(segs: list[SegmentSpec]) -> None:
    """A Service selects its model's pods by a label value cut to 63 characters: two models must
    not share one."""
    seen: dict[str, str] = {}
    for s in segs:
        other = seen.setdefault(_label_value(s.model), s.model)
        if other != s.model:
            raise ParvaError(f"models {other!r} and {s.model!r} share the label value {_label_value(s.model)!r}; rename one")


def _meta(name: str, namespace: str | None, labels: dict, annotations: dict | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    if namespace:
        meta["namespace"] = namespace
    return meta


def _config_map(plan: DeploymentMap, models_text: str, namespace: str | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(CONFIG_MAP, namespace, {"app.kubernetes.io/part-of": "parvagpu"}),
        "data": {"plan.json": plan_to_json(plan), "models.yaml": models_text},
    }


def _service(model: str, namespace: str | None, port: int) -> dict[str, Any]:
    """Clients reach a model by name: `http://parvagpu-<model>:<port>/v2/models/<model>/infer`; the
    Service spreads requests over the model's segment pods."""
    labels = {"app.kubernetes.io/part-of": "parvagpu", "parvagpu.io/model": _label_value(model)}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(f"parvagpu-{_dns(model)}"[:63].rstrip("-"), namespace, labels,
                          {"parvagpu.io/model-name": model}),
        "spec": {
            "selector": {"app.kubernetes.io/name": "parvagpu-segment", **labels},
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _deployment(
    s: SegmentSpec, prof: MigProfile, node_name: str, image: str, selector: dict[str, str], namespace: str | None,
    port: int, force_invalid: bool,
) -> dict[str, Any]:
    """The Deployment of one segment: its name and labels, then a pod of one container."""
    name = f"parvagpu-n{s.node}-g{s.gpu}-s{s.start}-{_dns(s.model)}"[:63].rstrip("-")
    seg_labels = {
        "app.kubernetes.io/name": "parvagpu-segment",
        "app.kubernetes.io/part-of": "parvagpu",
        "parvagpu.io/segment": name,
        "parvagpu.io/model": _label_value(s.model),
    }
    labels = {**seg_labels, "parvagpu.io/node": str(s.node), "parvagpu.io/gpu": str(s.gpu),
              "parvagpu.io/start": str(s.start)}
    notes = {
        "parvagpu.io/serving-segment": s.name,
        "parvagpu.io/batch": str(s.batch),
        "parvagpu.io/procs": str(s.procs),
        "parvagpu.io/placement": f"node {node_name} gpu {s.gpu} {prof.name} at start {s.start}",
        "parvagpu.io/note": (
            f"the device plugin picks which {prof.name} of the node this pod gets; "
            "parvagpu apply makes the exact placement"
        ),
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name, namespace, labels, notes),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # the MIG device must be free before a new pod starts
            "selector": {"matchLabels": {"parvagpu.io/segment": name}},
            "template": {
                "metadata": {"labels": seg_labels},
                "spec": _pod_spec(s, prof, image, selector, port, force_invalid),
            },
        },
    }


def _pod_spec(
    s: SegmentSpec, prof: MigProfile, image: str, node_selector: dict[str, str], port: int, force_invalid: bool,
) -> dict[str, Any]:
    """One container asking for one MIG device of the segment's profile, serving the segment."""
    env = [
        {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": MPS_PIPE},
        {"name": "CUDA_MPS_LOG_DIRECTORY", "value": MPS_LOG},
    ]
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 5}
    return {
        "nodeSelector": node_selector,
        "containers": [
            {
                "name": "segment",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-c", POD_SCRIPT, "parvagpu-segment"],
                "args": serve_args(s.name, port, force_invalid),
                "env": env,
                "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
                # Ray starts and the models load before the route answers: up to 10 minutes.
                "startupProbe": {**probe, "failureThreshold": 120},
                "readinessProbe": probe,
                "resources": {"limits": {f"nvidia.com/mig-{prof.name}": 1}},
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                    {"name": "mps", "mountPath": "/mps"},
                    {"name": "dshm", "mountPath": "/dev/shm"},
                ],
            }
        ],
        "terminationGracePeriodSeconds": 60,
        "volumes": [
            {"name": "config", "configMap": {"name": CONFIG_MAP}},
            {"name": "mps", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
        ],
    }


def k8s_files(
    plan: DeploymentMap, models_text: str, image: str = DEFAULT_IMAGE, node_label: str | None = None,
    namespace: str | None = None, port: int = DEFAULT_PORT, force_invalid: bool = False,
) -> dict[str, str]:
    """The manifests as YAML files, and a script that labels the nodes the Deployments select."""
    node_label = _node_label(plan, node_label)
    docs = k8s_manifests(plan, models_text, image, node_label, namespace, port, force_invalid)
    files = {name: dump(doc) for name, doc in docs.items()}
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
