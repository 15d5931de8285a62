"""What both exports share: the plan's nodes, YAML as cluster tools read it, and writing a set of
files into an output directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from parvagpu.core.errors import ParvaError
from parvagpu.core.model import DeploymentMap
from parvagpu.fileio.writer import atomic_write


def plan_nodes(plan: DeploymentMap) -> list[int]:
    """The plan's node indices; a plan without segments has nothing to export."""
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
