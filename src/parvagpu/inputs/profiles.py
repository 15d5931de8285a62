"""Reading and validating profile CSVs (the seed format, one file per model).

Header: `Mig instance,Batch size,Workload Number,Throughput,Latency` (extra columns allowed and
kept). Throughput is per process in items/s, latency in seconds per batch; `0,0` = not runnable.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from parvagpu.core.errors import ParvaError
from parvagpu.core.model import Profile, ProfilePoint

SEED_COLUMNS = ("Mig instance", "Batch size", "Workload Number", "Throughput", "Latency")


def _number(text: str, where: str, column: str, kind: type) -> float | int:
    try:
        value = kind(text.strip())
    except ValueError:
        raise ParvaError(f"{where}: column {column!r} is not a number: {text.strip()!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ParvaError(f"{where}: column {column!r} is not finite: {text.strip()!r}")
    if value < 0:
        raise ParvaError(f"{where}: column {column!r} is negative: {text.strip()!r}")
    return value


def load_profile(path: Path, model: str | None = None) -> Profile:
    """Load one model's profile; the model name is the file stem unless given."""
    model = model or path.stem
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise ParvaError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ParvaError(f"{path}: not a text CSV file") from None
    if not rows:
        raise ParvaError(f"{path}: empty profile file")
    header = [h.strip() for h in rows[0]]
    if tuple(header[:5]) != SEED_COLUMNS:
        raise ParvaError(
            f"{path}: wrong header {','.join(header)!r}; expected it to start with {','.join(SEED_COLUMNS)!r}"
        )
    extra_names = header[5:]
    points: list[ProfilePoint] = []
    seen: set[tuple[int, int, int]] = set()
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        where = f"{path}:{lineno}"
        if len(row) != len(header):
            raise ParvaError(f"{where}: expected {len(header)} columns, found {len(row)}")
        size = _number(row[0], where, SEED_COLUMNS[0], int)
        batch = _number(row[1], where, SEED_COLUMNS[1], int)
        procs = _number(row[2], where, SEED_COLUMNS[2], int)
        thr = float(_number(row[3], where, SEED_COLUMNS[3], float))
        lat = float(_number(row[4], where, SEED_COLUMNS[4], float))
        if size < 1 or batch < 1 or procs < 1:
            raise ParvaError(f"{where}: instance size, batch size and workload number must be >= 1")
        if (thr > 0) != (lat > 0):
            raise ParvaError(f"{where}: throughput and latency must both be 0 (not runnable) or both > 0")
        key = (size, batch, procs)
        if key in seen:
            raise ParvaError(f"{where}: duplicate point size={size} batch={batch} procs={procs}")
        seen.add(key)
        extra = tuple(zip(extra_names, (c.strip() for c in row[5:])))
        points.append(ProfilePoint(size, batch, procs, thr, lat, extra))
    if not points:
        raise ParvaError(f"{path}: profile has no data rows")
    return Profile(model, tuple(points), str(path))


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Load every `*.csv` in a directory, keyed by model name, in sorted (strcmp) order."""
    if not directory.is_dir():
        raise ParvaError(f"{directory}: profile directory not found")
    files = sorted(directory.glob("*.csv"), key=lambda p: p.name)
    if not files:
        raise ParvaError(f"{directory}: no profile CSV files")
    return {f.stem: load_profile(f) for f in files}
