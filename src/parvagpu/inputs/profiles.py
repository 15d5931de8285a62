"""Reading and validating profile CSVs (the seed format, one file per model).

Header: `Mig instance,Batch size,Workload Number,Throughput,Latency` (extra columns allowed and
kept). Throughput is per process in items/s, latency in seconds per batch; `0,0` = not runnable.

Plain files (the five seed columns, no quotes, no blank lines) are parsed in bulk: every such file's
rows at once with numpy, checked with array operations, and kept as columns. Any other file, and
any file the bulk checks reject, is read row by row with `csv`: the one place the checks are spelt
out, so a bad file gets the same one-line error whichever path met it first.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from parvagpu.core.errors import ParvaError
from parvagpu.core.limits import MAX_BATCH, MAX_LATENCY_MS, MAX_PROCS, MAX_THROUGHPUT
from parvagpu.core.model import ROW_DTYPE, PointColumns, Profile, ProfilePoint, row_digest
from parvagpu.fileio.reader import parse_csv_rows, read_text

# the largest value each column may hold (sizes are checked against the GPU type later)
_MAX_SIZE = 64
_MAX = {"Mig instance": _MAX_SIZE, "Batch size": MAX_BATCH, "Workload Number": MAX_PROCS,
        "Throughput": MAX_THROUGHPUT, "Latency": MAX_LATENCY_MS / 1000}

SEED_COLUMNS = ("Mig instance", "Batch size", "Workload Number", "Throughput", "Latency")


def _number(text: str, where: str, column: str, kind: type) -> float | int:
    shown = text.strip()[:40]
    try:
        value = kind(text.strip())
    except ValueError:
        raise ParvaError(f"{where}: column {column!r} is not a number: {shown!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ParvaError(f"{where}: column {column!r} is not finite: {shown!r}")
    if value < 0:
        raise ParvaError(f"{where}: column {column!r} is negative: {shown!r}")
    if value > _MAX[column]:
        raise ParvaError(f"{where}: column {column!r} is above {_MAX[column]:g}: {shown!r}")
    return value


def load_profile(path: Path, model: str | None = None) -> Profile:
    """Load one model's profile; the model name is the file stem unless given."""
    return _load([path], [model or path.stem])[0]


def _read_text(path: Path) -> str:
    """The checked reader's text (regular files only, bounded size, UTF-8 with or without BOM)."""
    return read_text(path, "profile", encoding="utf-8-sig")


def _parse_rows(path: Path, model: str, text: str) -> Profile:
    """Row by row with `csv`: every check, and the error for the first bad row."""
    rows = parse_csv_rows(path, text, "profile")
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


# Bulk-parsed integer fields stay below these (larger values take the row parser): the duplicate
# check packs (file, size, batch, procs) into one int64.
_SIZE_BITS, _BATCH_BITS, _PROCS_BITS = 7, 20, 10


@dataclass(frozen=True)
class _Plain:
    """A file the bulk parser may take: its data rows as text, and how many."""

    index: int
    body: str
    rows: int


def _plain(index: int, text: str) -> _Plain | None:
    """The body of a file whose header is exactly the seed columns, or None."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    head, sep, body = text.partition("\n")
    if not sep or [h.strip() for h in head.split(",")] != list(SEED_COLUMNS):
        return None
    body = body[:-1] if body.endswith("\n") else body
    return _Plain(index, body, body.count("\n") + 1) if body else None


def _clean(text: str) -> bool:
    """No quotes, comment marks, lone carriage returns or blank lines: rows the bulk reader
    splits as `csv` would."""
    return not (text.startswith("\n") or "\n\n" in text or any(c in text for c in '"#\r'))


def _bulk(plain: list[_Plain]) -> list[PointColumns | None]:
    """Parse every plain file's rows at once (numpy's C reader: five fields per row, integers
    as written, floats as `float` reads them); a file any of whose rows fails a check gets None,
    and so does every file when the reader refuses the text (the row parser then reports it)."""
    rows = np.array([p.rows for p in plain], dtype=np.int64)
    try:
        table = np.loadtxt(
            io.StringIO("\n".join(p.body for p in plain)), dtype=ROW_DTYPE, delimiter=",",
            comments=None, ndmin=1,
        )
    except (ValueError, OverflowError):
        table = None
    if table is None or len(table) != int(rows.sum()):
        return [None] * len(plain)
    file_of = np.repeat(np.arange(len(plain)), rows)
    ints = np.stack([table["size"], table["batch"], table["procs"]], axis=1)
    thr, lat = np.ascontiguousarray(table["thr"]), np.ascontiguousarray(table["lat"])
    bad = np.zeros(len(plain), dtype=bool)
    bad[file_of[~_rows_ok(ints, thr, lat)]] = True
    bad |= _duplicates(ints, file_of, len(plain))
    ends = np.cumsum(rows)
    out: list[PointColumns | None] = []
    for k, p in enumerate(plain):
        a, b = ends[k] - p.rows, ends[k]
        out.append(None if bad[k] else PointColumns(
            ints[a:b, 0], ints[a:b, 1], ints[a:b, 2], thr[a:b], lat[a:b],
            known_digest=row_digest(table[a:b].tobytes()),
        ))
    return out


def _rows_ok(ints: np.ndarray, thr: np.ndarray, lat: np.ndarray) -> np.ndarray:
    limits = np.array([min(2**_SIZE_BITS - 1, _MAX_SIZE), min(2**_BATCH_BITS - 1, MAX_BATCH),
                       min(2**_PROCS_BITS - 1, MAX_PROCS)])
    return (
        (ints >= 1).all(axis=1) & (ints <= limits).all(axis=1)
        & np.isfinite(thr) & np.isfinite(lat) & (thr >= 0) & (lat >= 0) & ((thr > 0) == (lat > 0))
        & (thr <= _MAX["Throughput"]) & (lat <= _MAX["Latency"])
    )


def _duplicates(ints: np.ndarray, file_of: np.ndarray, n: int) -> np.ndarray:
    """Files with two rows of the same (size, batch, procs)."""
    ints = np.clip(ints, 0, [2**_SIZE_BITS - 1, 2**_BATCH_BITS - 1, 2**_PROCS_BITS - 1])
    key = file_of.astype(np.int64)
    for col, bits in ((0, _SIZE_BITS), (1, _BATCH_BITS), (2, _PROCS_BITS)):
        key = (key << bits) | ints[:, col]
    key.sort()
    bad = np.zeros(n, dtype=bool)
    bad[key[1:][key[1:] == key[:-1]] >> (_SIZE_BITS + _BATCH_BITS + _PROCS_BITS)] = True
    return bad


def _load(paths: list[Path], models: list[str]) -> list[Profile]:
    """Profiles of `paths`, in order; the first bad file (in order) raises its error."""
    texts: list[str | ParvaError] = []
    for path in paths:
        try:
            texts.append(_read_text(path))
        except ParvaError as exc:
            texts.append(exc)
    plain = [p for i, t in enumerate(texts) if isinstance(t, str) and (p := _plain(i, t)) is not None]
    if not _clean("\n".join(p.body for p in plain)):  # checked at once, file by file if need be
        plain = [p for p in plain if _clean(p.body)]
    columns = dict(zip((p.index for p in plain), _bulk(plain))) if plain else {}
    out = []
    for i, (path, model, text) in enumerate(zip(paths, models, texts)):
        if isinstance(text, ParvaError):
            raise text
        cols = columns.get(i)
        out.append(Profile(model, source=str(path), columns=cols) if cols is not None
                   else _parse_rows(path, model, text))
    return out


def load_profiles(directory: Path) -> dict[str, Profile]:
    """Load every `*.csv` in a directory, keyed by model name, in sorted (strcmp) order."""
    if not directory.is_dir():
        raise ParvaError(f"{directory}: profile directory not found")
    files = sorted(directory.glob("*.csv"), key=lambda p: p.name)
    if not files:
        raise ParvaError(f"{directory}: no profile CSV files")
    return dict(zip((f.stem for f in files), _load(files, [f.stem for f in files])))
