"""The one checked reader for user files (JSON, YAML, CSV): every failure is one line naming the file.

Bounded for any input: only regular files are read (a FIFO or a device such as /dev/zero is
refused before anything blocks), at most `MAX_INPUT_BYTES`, nesting at most `MAX_DEPTH` levels.
JSON and YAML numbers must be finite (no NaN, Infinity or 1e400) and mapping keys must be text.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from parvagpu.core.errors import ParvaError

MAX_INPUT_BYTES = 32 * 2**20
MAX_DEPTH = 100
MAX_CSV_FIELD = 1 * 2**20  # the csv module's default limit is 128 KiB; long cells get a clean error


def _kind(mode: int) -> str:
    kinds = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


def read_bytes(path: Path, what: str) -> bytes:
    """A regular file's bytes, at most `MAX_INPUT_BYTES`; never blocks on a FIFO."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ParvaError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:  # on the descriptor itself: a file object per file cost half of reading 5,000 profiles
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ParvaError(f"{path}: cannot read {what}: is {_kind(st.st_mode)}, not a regular file")
        try:
            data = _read_upto(fd, min(st.st_size, MAX_INPUT_BYTES) + 1, MAX_INPUT_BYTES + 1)
        except OSError as exc:
            raise ParvaError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_INPUT_BYTES:
        raise ParvaError(f"{path}: {what} is larger than {MAX_INPUT_BYTES // 2**20} MiB")
    return data


def _read_upto(fd: int, first: int, most: int) -> bytes:
    """Up to `most` bytes to the end of the file, asking for `first` (its size and one) at once:
    a buffer of `most` bytes per read would cost an allocation of 32 MiB per file. A file that
    grows while read is read on, still at most `most` bytes."""
    chunks, got = [], 0
    ask = first
    while got < most:
        chunk = os.read(fd, min(ask, most - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        ask = max(ask, 1 << 16)
    return b"".join(chunks)


def read_text(path: Path, what: str, encoding: str = "utf-8") -> str:
    """A regular file as text (`read_bytes`'s bounds); not-UTF-8 text (UTF-16, binary) is one line."""
    try:
        return read_bytes(path, what).decode(encoding)
    except UnicodeDecodeError:
        raise ParvaError(f"{path}: cannot read {what}: not UTF-8 text") from None


def _finite_float(path: Path, text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ParvaError(f"{path}: number {text[:40]} is out of range")
    return value


def _no_constant(path: Path, name: str) -> Any:
    raise ParvaError(f"{path}: {name} is not a number; JSON values must be finite")


def _parse_json(path: Path, text: str) -> Any:
    """Parsed and checked (`check_values`), with the C scanner's own floats; a number too large for a float (1e400) is then the
    one infinity `check_values` meets, and is reported by parsing again with a check per float."""
    data = _parse_json_with(path, text, None)
    try:
        check_values(path, data)
    except _NotFinite:
        _parse_json_with(path, text, lambda t: _finite_float(path, t))
        raise ParvaError(f"{path}: a number is out of range") from None
    return data


def _parse_json_with(path: Path, text: str, parse_float: Any) -> Any:
    try:
        return json.loads(text, parse_float=parse_float, parse_constant=lambda n: _no_constant(path, n))
    except json.JSONDecodeError as exc:
        raise ParvaError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise ParvaError(f"{path}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ParvaError(f"{path}: invalid JSON: {str(exc).splitlines()[0][:80]}") from None


class _NotFinite(ParvaError):
    """A float in a parsed document is NaN or infinite."""


def check_values(path: Path, data: Any) -> Any:
    """Walk a parsed document once (shared YAML aliases once): keys are text, floats are finite,
    nesting at most `MAX_DEPTH`."""
    _check_scalar(path, data)
    if not isinstance(data, (dict, list)):
        return data
    seen = {id(data)}
    stack = [(data, 0)]
    while stack:
        obj, depth = stack.pop()
        if depth >= MAX_DEPTH:
            raise ParvaError(f"{path}: nested more than {MAX_DEPTH} levels deep")
        if isinstance(obj, dict):
            for k in obj:
                if type(k) is not str and not isinstance(k, str):
                    raise ParvaError(f"{path}: key {str(k)[:40]!r} is not text; quote it")
            items = obj.values()
        else:
            items = obj
        for v in items:
            kind = type(v)
            if kind is str or kind is int or kind is bool or v is None:
                continue
            if kind is dict or kind is list or isinstance(v, (dict, list)):
                if id(v) not in seen:
                    seen.add(id(v))
                    stack.append((v, depth + 1))
            else:
                _check_scalar(path, v)
    return data


def _check_scalar(path: Path, v: Any) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise _NotFinite(f"{path}: {v} is not a finite number")


def read_json(path: Path, what: str) -> Any:
    """A JSON file's content; any read or parse failure is one `ParvaError` line naming the file."""
    path = Path(path)
    return _parse_json(path, read_text(path, what))


def read_document(path: Path, what: str) -> Any:
    """A user-written file: JSON when it ends in .json, else YAML; failures as in `read_json`."""
    path = Path(path)
    return parse_document(read_text(path, what), path, path.suffix.lower() == ".json")


def parse_document(text: str, path: Any, as_json: bool = False) -> Any:
    """A document's text (YAML, of which JSON is a subset; strict JSON with `as_json`), checked as
    `read_document` checks a file; `path` names it in messages (a file or, e.g., "POST /v1/services")."""
    if as_json:
        return _parse_json(path, text)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ParvaError(f"{path}: invalid YAML{line}") from None
    except RecursionError:
        raise ParvaError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # a YAML int of more digits than Python converts
        raise ParvaError(f"{path}: invalid YAML: {str(exc).splitlines()[0][:80]}") from None
    return check_values(path, data)


def read_csv_rows(path: Path, what: str) -> list[list[str]]:
    """A CSV file's rows (a UTF-8 byte-order mark is dropped); bounded as `read_bytes`."""
    path = Path(path)
    return parse_csv_rows(path, read_text(path, what, encoding="utf-8-sig"), what)


def parse_csv_rows(path: Path, text: str, what: str) -> list[list[str]]:
    """`text`'s CSV rows; a NUL byte or a cell over `MAX_CSV_FIELD` is one line naming the file."""
    if "\x00" in text:
        raise ParvaError(f"{path}: cannot read {what}: not a text CSV file")
    old = csv.field_size_limit(MAX_CSV_FIELD)
    try:
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise ParvaError(f"{path}: cannot read {what}: {exc}") from None
    finally:
        csv.field_size_limit(old)
