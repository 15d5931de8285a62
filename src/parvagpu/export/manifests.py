"""Cluster exports of a plan: mig-parted configs with GPU Operator labels, and Kubernetes manifests.

mig-parted describes each GPU as a multiset of profiles and lets the driver choose the slots, so
these exports reproduce a plan's instances but not its start slots; `parvagpu apply` is the exact
path. The Kubernetes manifests use the device plugin's `mixed` strategy (`nvidia.com/mig-<profile>`
resources). The plugin refuses MPS on MIG devices, so each segment's pod starts its own MPS
control daemon on the MIG device it was given and then the segment's worker processes.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from parvagpu.fileio.writer import atomic_write
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.core.errors import ParvaError

DEFAULT_IMAGE = "nvcr.io/nvidia/pytorch:24.05-py3"
DEFAULT_WORKER_CMD = 'python3 serve.py --model "$PARVAGPU_MODEL" --batch-size "$PARVAGPU_BATCH"'
DEFAULT_NODE_LABEL = "parvagpu.io/node"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MPS_PIPE = "/mps/pipe"
MPS_LOG = "/mps/log"

_HEADER = (
    "# Written by parvagpu export mig-parted from {source}.\n"
    "# mig-parted creates each GPU's instance multiset but cannot pin start slots (the driver\n"
    "# chooses them); `parvagpu apply` creates the plan's exact placements.\n"
)


def config_name(node: int) -> str:
    return f"parvagpu-node{node}"


def _nodes(plan: DeploymentMap) -> list[int]:
    nodes = sorted({plan.node_of(s.gpu) for s in plan.segments})
    if not nodes:
        raise ParvaError("the plan has no segments to export")
    return nodes


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings (the pod script) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(data: Any, flow: bool | None = False) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=flow, width=100)


# ---------------------------------------------------------------------------------------------
# mig-parted


def mig_parted_config(plan: DeploymentMap, device_filter: bool = False) -> dict[str, Any]:
    """One named config per node; one `devices: [i]` group per GPU of the node, largest profile
    first. GPUs the plan leaves empty get MIG mode on and no instances."""
    gpu = gpu_type(plan.gpu_type)
    by_gpu = plan.by_gpu()
    configs: dict[str, list[dict[str, Any]]] = {}
    for node in _nodes(plan):
        groups = []
        for local in range(plan.gpus_per_node):
            segs = by_gpu.get(node * plan.gpus_per_node + local, [])
            counts = Counter(s.size for s in segs)
            group: dict[str, Any] = {"devices": [local]}
            if device_filter and gpu.pci_device_ids:
                group["device-filter"] = list(gpu.pci_device_ids)
            group["mig-enabled"] = True
            group["mig-devices"] = {gpu.profile(size).name: n for size, n in sorted(counts.items(), reverse=True)}
            groups.append(group)
        configs[config_name(node)] = groups
    return {"version": "v1", "mig-configs": configs}


_PROFILE_RE = re.compile(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb(?:\+([A-Za-z][A-Za-z0-9]*(?:,[A-Za-z][A-Za-z0-9]*)*))?$")
_SLICES = {1, 2, 3, 4, 6, 7, 8}
_FILTER_RE = re.compile(r"^0x[0-9A-Fa-f]{8}$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_mig_parted(data: Any) -> list[str]:
    """Problems with a mig-parted v1 config, checked as strictly as mig-parted parses it:
    `version: v1`, a non-empty `mig-configs` map of non-empty group lists, groups with only
    `devices` (`all` or GPU indices), `mig-enabled`, `mig-devices`, optional `device-filter`."""
    p: list[str] = []
    if not isinstance(data, dict):
        return ["top level is not a mapping"]
    if "version" not in data:
        p.append("missing 'version'")
    elif data["version"] != "v1":
        p.append(f"unknown version {data['version']!r}")
    for k in set(data) - {"version", "mig-configs"}:
        p.append(f"unexpected field {k!r}")
    configs = data.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        p.append("'mig-configs' must be a non-empty mapping")
        return p
    for name, groups in configs.items():
        if not isinstance(name, str):
            p.append(f"config name {name!r} is not a string")
        if not isinstance(groups, list) or not groups:
            p.append(f"{name}: needs a non-empty list of device groups")
            continue
        seen: set[int] = set()
        for i, g in enumerate(groups):
            w = f"{name}[{i}]"
            if not isinstance(g, dict):
                p.append(f"{w}: not a mapping")
                continue
            for k in set(g) - {"devices", "device-filter", "mig-enabled", "mig-devices"}:
                p.append(f"{w}: unexpected field {k!r}")
            for k in ("devices", "mig-enabled"):
                if k not in g:
                    p.append(f"{w}: missing required field {k!r}")
            dev = g.get("devices")
            if dev is not None and dev != "all":
                if not isinstance(dev, list) or not dev or not all(_is_int(d) and d >= 0 for d in dev):
                    p.append(f"{w}: 'devices' must be 'all' or a list of GPU indices")
                else:
                    dup = seen & set(dev)
                    if dup or len(set(dev)) != len(dev):
                        p.append(f"{w}: GPU {sorted(dup) or dev} listed twice")
                    seen |= set(dev)
            if "device-filter" in g:
                f = g["device-filter"]
                fl = [f] if isinstance(f, str) else f
                if not isinstance(fl, list) or not all(isinstance(x, str) and _FILTER_RE.match(x) for x in fl):
                    p.append(f"{w}: 'device-filter' must be 0xDDDDVVVV ids")
            enabled = g.get("mig-enabled")
            if "mig-enabled" in g and not isinstance(enabled, bool):
                p.append(f"{w}: 'mig-enabled' must be true or false")
            devices = g.get("mig-devices")
            if enabled is True and devices is None:
                p.append(f"{w}: 'mig-devices' is required when 'mig-enabled' is true")
            if devices is not None:
                if not isinstance(devices, dict):
                    p.append(f"{w}: 'mig-devices' must be a mapping profile -> count")
                    continue
                if enabled is False and devices:
                    p.append(f"{w}: 'mig-devices' given while 'mig-enabled' is false")
                for prof, n in devices.items():
                    m = _PROFILE_RE.match(prof) if isinstance(prof, str) else None
                    if not m or int(m.group(2)) not in _SLICES or (m.group(1) and int(m.group(1)) not in _SLICES):
                        p.append(f"{w}: {prof!r} is not a MIG profile name")
                    elif m.group(4) and set(m.group(4).split(",")) - {"me"}:
                        p.append(f"{w}: {prof!r} has an unknown attribute")
                    if not _is_int(n) or n < 0:
                        p.append(f"{w}: count for {prof!r} must be a non-negative integer")
                if devices and all(_is_int(n) and n == 0 for n in devices.values()):
                    p.append(f"{w}: all counts in 'mig-devices' are 0")
    return p


def mig_parted_files(
    plan: DeploymentMap, source: str, device_filter: bool = False, namespace: str = "gpu-operator",
    configmap_name: str = "parvagpu-mig-parted-config",
) -> dict[str, str]:
    """mig-parted.yaml, a ConfigMap holding it for the GPU Operator's MIG manager, the node
    labels that select each node's config, and a script that applies them."""
    config = mig_parted_config(plan, device_filter)
    problems = check_mig_parted(config)
    if problems:  # a bug, not user input: never write a config mig-parted would reject
        raise ParvaError("internal: generated mig-parted config is invalid: " + "; ".join(problems))
    text = _HEADER.format(source=source) + dump(config, flow=None)
    nodes = _nodes(plan)
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": configmap_name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "parvagpu"}},
        "data": {"config.yaml": dump(config, flow=None)},
    }
    labels = {"nodes": [{"node": n, "labels": {MIG_CONFIG_LABEL: config_name(n)}} for n in nodes]}
    script = [
        "#!/bin/sh",
        "# Select each node's MIG layout for the GPU Operator's MIG manager, then wait for",
        "# nvidia.com/mig.config.state=success on every node. Set NODE<k> to the Kubernetes node name",
        "# of plan node k. The MIG manager must use the ConfigMap in mig-parted-configmap.yaml",
        f"# (Helm value migManager.config.name={configmap_name}).",
        "set -eu",
    ]
    for n in nodes:
        script.append(
            f'kubectl label node "${{NODE{n}:?set NODE{n} to the node name of plan node {n}}}" '
            f"{MIG_CONFIG_LABEL}={config_name(n)} --overwrite"
        )
    return {
        "mig-parted.yaml": text,
        "mig-parted-configmap.yaml": dump(cm),
        "node-labels.yaml": dump(labels),
        "mig-config-labels.sh": "\n".join(script) + "\n",
    }


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _dns(s: str) -> str:
    out = re.sub(r"[^a-z0-9-]+", "-", s.lower()).strip("-")
    return out or "x"


def _label_value(s: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", s)[:63].strip("-_.")
    return out or "x"


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


def k8s_deployments(
    plan: DeploymentMap, image: str = DEFAULT_IMAGE, worker_cmd: str = DEFAULT_WORKER_CMD,
    node_label: str = DEFAULT_NODE_LABEL, namespace: str | None = None,
) -> dict[str, dict[str, Any]]:
    """One Deployment (replicas 1, Recreate) per segment, keyed by file name."""
    if not image.strip():
        raise ParvaError("--image must not be empty")
    if not worker_cmd.strip():
        raise ParvaError("--worker-cmd must not be empty")
    if not re.match(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", node_label):
        raise ParvaError(f"--node-label {node_label!r} is not a valid Kubernetes label key")
    gpu = gpu_type(plan.gpu_type)
    out: dict[str, dict[str, Any]] = {}
    for s in sorted(plan.segments, key=lambda s: (s.gpu, s.start)):
        node, local = plan.node_of(s.gpu), plan.local_gpu(s.gpu)
        prof = gpu.profile(s.size)
        t = s.segment.triplet
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
                "parvagpu.io/placement": f"node {node} gpu {local} {prof.name} at start {s.start}",
                "parvagpu.io/note": (
                    f"the device plugin picks which {prof.name} of the node this pod gets; "
                    "parvagpu apply makes the exact placement"
                ),
            },
        }
        if namespace:
            meta["namespace"] = namespace
        env = [
            {"name": "PARVAGPU_MODEL", "value": s.model},
            {"name": "PARVAGPU_BATCH", "value": str(t.batch)},
            {"name": "PARVAGPU_PROCS", "value": str(t.procs)},
            {"name": "PARVAGPU_WORKER_CMD", "value": worker_cmd},
            {"name": "CUDA_MPS_PIPE_DIRECTORY", "value": MPS_PIPE},
            {"name": "CUDA_MPS_LOG_DIRECTORY", "value": MPS_LOG},
        ]
        out[f"{name}.yaml"] = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "strategy": {"type": "Recreate"},  # the MIG device must be free before a new pod starts
                "selector": {"matchLabels": {"parvagpu.io/segment": name}},
                "template": {
                    "metadata": {"labels": seg_labels},
                    "spec": {
                        "nodeSelector": {node_label: str(node)},
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
                    },
                },
            },
        }
    return out


def k8s_files(
    plan: DeploymentMap, image: str = DEFAULT_IMAGE, worker_cmd: str = DEFAULT_WORKER_CMD,
    node_label: str = DEFAULT_NODE_LABEL, namespace: str | None = None,
) -> dict[str, str]:
    files = {name: dump(doc) for name, doc in k8s_deployments(plan, image, worker_cmd, node_label, namespace).items()}
    script = [
        "#!/bin/sh",
        f"# Label each Kubernetes node with its plan node index ({node_label}), which the",
        "# Deployments select. Set NODE<k> to the Kubernetes node name of plan node k.",
        "set -eu",
    ]
    for n in _nodes(plan):
        script.append(
            f'kubectl label node "${{NODE{n}:?set NODE{n} to the node name of plan node {n}}}" '
            f"{shlex.quote(f'{node_label}={n}')} --overwrite"
        )
    files["node-selector-labels.sh"] = "\n".join(script) + "\n"
    return files


def write_files(out_dir: Path, files: dict[str, str]) -> list[Path]:
    """Write every file (each atomically) into `out_dir`, created if missing."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ParvaError(f"{out_dir} exists and is not a directory")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParvaError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    written = []
    for name, text in files.items():
        path = out_dir / name
        atomic_write(path, text)
        if name.endswith(".sh"):
            path.chmod(0o755)
        written.append(path)
    return written
