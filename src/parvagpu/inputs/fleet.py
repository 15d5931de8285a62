"""The fleet file and the profiles of each GPU type a plan needs.

A fleet file (YAML or JSON, versioned like the services file):

    version: v1
    nodes:
      - {name: rack1-a, gpu: A100-80GB, gpus: 8, price_per_gpu_hour: 2.5}
      - {name: rack2-b, gpu: H100-80GB, gpus: 4, reserved: [{gpu: 0, start: 0, size: 3}]}

`price_per_gpu_hour` defaults to 1 (cost = GPUs); `reserved` lists MIG slots (`gpu`, `start`,
`size` in compute slices) or whole GPUs (`gpu` alone) others hold, kept out of the plan.

Profiles per GPU type: a profiles directory holds either one subdirectory per GPU type, named as
the catalog names it (`DIR/A100-80GB/*.csv`, `DIR/H100-80GB/*.csv`), or the CSVs of one type,
which the profiler's metadata files (`<model>.meta.json`) name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from parvagpu.core.errors import ParvaError
from parvagpu.core.fleet import Fleet, FleetNode, Reservation
from parvagpu.core.gpus import GPU_TYPES, gpu_type, type_of_device
from parvagpu.core.model import Profile
from parvagpu.fileio.reader import read_document
from parvagpu.inputs.profiles import load_profiles
from parvagpu.inputs.provenance import measured_on

_NODE_KEYS = {"name", "gpu", "gpus", "price_per_gpu_hour", "reserved"}


def load_fleet(path: Path) -> Fleet:
    """Read and check a fleet file; one-line `ParvaError` naming the file and node otherwise."""
    data = read_document(path, "fleet file")
    if not isinstance(data, dict) or set(data) - {"version", "nodes"}:
        raise ParvaError(f"{path}: expected a mapping with version and nodes")
    if data.get("version") != "v1":
        raise ParvaError(f"{path}: unsupported version {data.get('version')!r} (expected v1)")
    nodes = data.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise ParvaError(f"{path}: nodes must be a non-empty list")
    try:
        return Fleet(tuple(_node(n, f"{path}: node {i}") for i, n in enumerate(nodes, start=1)))
    except ParvaError as exc:
        msg = str(exc)
        raise ParvaError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


def _node(n: Any, where: str) -> FleetNode:
    if not isinstance(n, dict):
        raise ParvaError(f"{where}: expected a mapping with name, gpu, gpus")
    missing = {"name", "gpu", "gpus"} - set(n)
    if missing:
        raise ParvaError(f"{where}: missing {', '.join(sorted(missing))}")
    if set(n) - _NODE_KEYS:
        raise ParvaError(f"{where}: unknown keys {', '.join(sorted(set(n) - _NODE_KEYS))}")
    if not isinstance(n["name"], str) or not n["name"]:
        raise ParvaError(f"{where}: name must be a non-empty string")
    where = f"{where} ({n['name']})"
    try:
        kind = gpu_type(str(n["gpu"])).name
    except ParvaError as exc:
        raise ParvaError(f"{where}: {exc}") from None
    gpus = _int(n["gpus"], f"{where}: gpus")
    price = n.get("price_per_gpu_hour", 1.0)
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        raise ParvaError(f"{where}: price_per_gpu_hour must be a number")
    reserved = n.get("reserved", [])
    if not isinstance(reserved, list):
        raise ParvaError(f"{where}: reserved must be a list of {{gpu, start, size}}")
    return FleetNode(n["name"], kind, gpus, float(price), tuple(_reservation(r, where) for r in reserved))


def _reservation(r: Any, where: str) -> Reservation:
    if not isinstance(r, dict) or "gpu" not in r or set(r) - {"gpu", "start", "size"}:
        raise ParvaError(f"{where}: a reservation is {{gpu, start, size}} or {{gpu}} for the whole GPU")
    start = None if r.get("start") is None else _int(r["start"], f"{where}: reserved start")
    size = None if r.get("size") is None else _int(r["size"], f"{where}: reserved size")
    return Reservation(_int(r["gpu"], f"{where}: reserved gpu"), start, size)


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParvaError(f"{where}: expected an integer, got {v!r}")
    return v


def profiles_by_type(root: Path, default_type: str | None = None) -> dict[str, dict[str, Profile]]:
    """The profiles under `root` by the GPU type they were measured on: its subdirectories named
    by catalog type, else its own CSVs under the type their metadata names (`default_type` when
    they name none: the embedded example's A100-80GB). Empty when the type cannot be told."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name in GPU_TYPES) if root.is_dir() else []
    if subdirs:
        return {p.name: load_profiles(p) for p in subdirs}
    profiles = load_profiles(root)
    kind = measured_type(profiles, root, default_type)
    return {kind: profiles} if kind else {}


def measured_type(profiles: dict[str, Profile], root: Path | None, default_type: str | None) -> str | None:
    """The catalog type the profiler's metadata names for these profiles (`default_type` when
    `root` is None, the embedded example, or the files name no GPU); None when unknown."""
    if root is None:
        return default_type
    # The metadata alone: the plan's provenance hashes the planned profiles once, when it is written.
    measured = measured_on(list(profiles.values()))
    return (type_of_device(measured) if measured else None) or default_type


def check_measured_on(gpu: str, measured: str | None, reuse_from: str | None, where: str) -> None:
    """A single-type plan: refuse profiles measured on another type unless `reuse_from` names it."""
    if measured is None or measured == gpu:
        return
    if reuse_from is not None and gpu_type(reuse_from).name == measured:
        return
    raise ParvaError(
        f"no profiles measured on {gpu}: {where} was measured on {measured}; profile {gpu}, or pass "
        f"--reuse-profiles-from {measured} to plan {gpu} with its measurements"
    )


def profiles_for(
    types: tuple[str, ...], found: Mapping[str, dict[str, Profile]], reuse_from: str | None, where: str,
) -> dict[str, dict[str, Profile]]:
    """Each needed type's profiles: measured on it, else `reuse_from`'s when given; a one-line
    `ParvaError` for a type with neither."""
    if reuse_from is not None:
        reuse_from = gpu_type(reuse_from).name
        if reuse_from not in found:
            raise ParvaError(f"--reuse-profiles-from {reuse_from}: {where} has no profiles measured on it")
    out = {}
    for t in types:
        if t in found:
            out[t] = found[t]
        elif reuse_from is not None:
            out[t] = found[reuse_from]
        else:
            have = ", ".join(sorted(found)) or "an unknown GPU"
            raise ParvaError(
                f"no profiles measured on {t} in {where} (they are for {have}); profile {t}, "
                f"or pass --reuse-profiles-from TYPE to plan {t} with another type's measurements"
            )
    return out
