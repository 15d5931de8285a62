"""What both exports share: the plan's nodes, YAML as cluster tools read it, and writing a set of
files into an output directory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from parvagpu.core.errors import ParvaError
from parvagpu.fileio.writer import write_all
from parvagpu.core.model import DeploymentMap


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
    """Write every file into `out_dir` (created if missing), all or none, through the one safe
    writer: a special file is never replaced, a failure leaves nothing new behind and puts back
    what was replaced. Scripts (*.sh) are executable."""
    out_dir = Path(out_dir)
    targets = {out_dir / name: text for name, text in files.items()}
    modes = {t: 0o755 & ~_umask() for t in targets if t.name.endswith(".sh")}
    return write_all(targets, create_dir=out_dir, modes=modes)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
