"""Reading user files (JSON or YAML): every failure is one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from parvagpu.core.errors import ParvaError


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParvaError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ParvaError(f"{path}: cannot read {what}: not UTF-8 text") from None


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParvaError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; any read or parse failure is one `ParvaError` line naming the file."""
    path = Path(path)
    return _parse_json(path, _read_text(path, what))


def read_document(path: Path, what: str) -> Any:
    """A user-written file: JSON when it ends in .json, else YAML; failures as in `read_json`."""
    path = Path(path)
    text = _read_text(path, what)
    if path.suffix.lower() == ".json":
        return _parse_json(path, text)
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParvaError(f"{path}: invalid YAML{line}") from None
