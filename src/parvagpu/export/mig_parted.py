"""mig-parted v1 configs for a plan, with the GPU Operator's ConfigMap and node labels, and a
checker that reads a config as strictly as mig-parted does.

mig-parted describes each GPU as a multiset of profiles and lets the driver choose the slots, so
this export reproduces a plan's instances but not its start slots; `parvagpu apply` is the exact
path.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from parvagpu.core.errors import ParvaError
from parvagpu.core.gpus import gpu_type
from parvagpu.core.model import DeploymentMap
from parvagpu.export.common import dump, plan_nodes

MIG_CONFIG_LABEL = "nvidia.com/mig.config"

_HEADER = (
    "# Written by parvagpu export mig-parted from {source}.\n"
    "# mig-parted creates each GPU's instance multiset but cannot pin start slots (the driver\n"
    "# chooses them); `parvagpu apply` creates the plan's exact placements.\n"
)


def config_name(node: int) -> str:
    return f"parvagpu-node{node}"


def mig_parted_config(plan: DeploymentMap, device_filter: bool = False) -> dict[str, Any]:
    """One named config per node; one `devices: [i]` group per GPU of the node, largest profile
    first. GPUs the plan leaves empty get MIG mode on and no instances. A fleet plan's reserved
    slots: a wholly reserved GPU has no group (mig-parted leaves it alone), and a reserved instance
    is listed with the plan's, so a GPU already holding it matches its config."""
    by_gpu = plan.by_gpu()
    configs: dict[str, list[dict[str, Any]]] = {}
    for node in plan_nodes(plan):
        gpu = gpu_type(plan.node_gpu_type(node))  # a fleet plan: this node's type
        reserved = plan.fleet.nodes[node].reserved if plan.fleet is not None else ()
        groups = []
        for local in range(plan.node_gpus(node)):
            theirs = [r for r in reserved if r.gpu == local]
            if any(r.whole for r in theirs):
                continue
            segs = by_gpu.get(plan.global_gpu(node, local), [])
            counts = Counter(s.size for s in segs) + Counter(r.size for r in theirs)
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
_GROUP_KEYS = {"devices", "device-filter", "mig-enabled", "mig-devices"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_mig_parted(data: Any) -> list[str]:
    """Problems with a mig-parted v1 config, checked as strictly as mig-parted parses it:
    `version: v1`, a non-empty `mig-configs` map of non-empty group lists, groups with only
    `devices` (`all` or GPU indices), `mig-enabled`, `mig-devices`, optional `device-filter`."""
    if not isinstance(data, dict):
        return ["top level is not a mapping"]
    p: list[str] = []
    if "version" not in data:
        p.append("missing 'version'")
    elif data["version"] != "v1":
        p.append(f"unknown version {data['version']!r}")
    p += [f"unexpected field {k!r}" for k in set(data) - {"version", "mig-configs"}]
    configs = data.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        return p + ["'mig-configs' must be a non-empty mapping"]
    for name, groups in configs.items():
        if not isinstance(name, str):
            p.append(f"config name {name!r} is not a string")
        if not isinstance(groups, list) or not groups:
            p.append(f"{name}: needs a non-empty list of device groups")
            continue
        seen: set[int] = set()
        for i, g in enumerate(groups):
            p += _check_group(f"{name}[{i}]", g, seen)
    return p


def _check_group(w: str, g: Any, seen: set[int]) -> list[str]:
    """Problems with one device group; `seen` collects the config's GPU indices across groups."""
    if not isinstance(g, dict):
        return [f"{w}: not a mapping"]
    p = [f"{w}: unexpected field {k!r}" for k in set(g) - _GROUP_KEYS]
    p += [f"{w}: missing required field {k!r}" for k in ("devices", "mig-enabled") if k not in g]
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
        p += _check_mig_devices(w, devices, enabled)
    return p


def _check_mig_devices(w: str, devices: Any, enabled: Any) -> list[str]:
    """Problems with a group's `mig-devices`: profile names mig-parted knows, counts >= 0."""
    if not isinstance(devices, dict):
        return [f"{w}: 'mig-devices' must be a mapping profile -> count"]
    p = []
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
    nodes = plan_nodes(plan)
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
