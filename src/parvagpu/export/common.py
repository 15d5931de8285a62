"""What both exports share: the plan's nodes, YAML as cluster tools read it, and writing a set of
files into an output directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from parvagpu.core.errors import ParvaError
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
    """Write every file into `out_dir` (created if missing), all or none: each file goes to a
    temporary file first, and only when all are written are they renamed into place. A target
    that exists and is not a regular file (a directory, a link, a device) is refused before
    anything is written. On failure, what this call made is removed again."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ParvaError(f"{out_dir} exists and is not a directory")
    targets = [out_dir / name for name in files]
    for t in targets:
        if t.is_symlink() or (t.exists() and not t.is_file()):
            raise ParvaError(f"{t}: exists and is not a regular file; refusing to replace it (nothing written)")
    made = _make_dirs(out_dir)
    existed = {t for t in targets if t.exists()}
    temps: list[str] = []
    placed: list[Path] = []
    try:
        for t, text in zip(targets, files.values()):
            temps.append(_write_temp(t, text))
        for t, tmp in zip(targets, temps):
            os.replace(tmp, t)
            placed.append(t)
    except OSError as exc:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
        for t in placed:
            if t not in existed:
                t.unlink(missing_ok=True)
        for d in made:
            try:
                d.rmdir()
            except OSError:
                break
        what = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        raise ParvaError(f"{out_dir}: cannot write{what}: {exc.strerror or exc} (nothing written)") from None
    return targets


def _make_dirs(out_dir: Path) -> list[Path]:
    """Create `out_dir` and missing parents; returns those created, innermost first."""
    made = []
    for d in (out_dir, *out_dir.parents):
        if d.exists():
            break
        made.append(d)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParvaError(f"cannot create {out_dir}: {exc.strerror or exc}") from None
    return made


def _write_temp(target: Path, text: str) -> str:
    """`text` in a new temporary file beside `target`, with the mode the file will have."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            os.fchmod(fh.fileno(), 0o755 if target.name.endswith(".sh") else 0o666 & ~_umask())
            fh.write(text)
    except OSError:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
