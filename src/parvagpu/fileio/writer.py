"""The one safe writer: every file the project writes goes through `write_all` (or `atomic_write`).

Rules (docs/usage.md, "Where output goes"):
- A target is written only when it is a regular file or a new path in an existing directory. A
  device, FIFO, socket or directory is never replaced: the command fails with one line.
- A symlink is followed: its final target is written in place, under the same rules, and the link
  stays a link. A symlink whose target does not exist is refused (it could point anywhere).
- Several files are written all or nothing: every file is first written to a temporary name
  beside its target; only when all are written are they renamed into place. If anything fails,
  the temporaries are removed, files already replaced get their old content back, new files and a
  directory created for the output are removed.
- A replaced file keeps its permission bits; a new one gets those a plain `open()` would give.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from parvagpu.core.errors import ParvaError

_KINDS = {
    stat.S_IFLNK: "a symlink",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory",
}


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot(path: Path, exc: OSError) -> ParvaError:
    return ParvaError(f"{path}: cannot write: {exc.strerror or exc} (nothing written)")


@dataclass
class _Target:
    """Where one output lands: `real` is the file actually replaced (a symlink's target)."""

    given: Path
    real: Path
    mode: int  # permission bits for the written file
    existed: bool
    tmp: str | None = None
    backup: str | None = None
    placed: bool = False


def check_target(path: Path) -> _Target:
    """Resolve and check one output path without writing anything (see the module's rules)."""
    path = Path(path)
    real = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(real)
    except FileNotFoundError:
        if path.is_symlink():
            raise ParvaError(f"{path}: is a symlink to {real}, which does not exist; refusing to write through it") from None
        directory = real.parent if str(real.parent) else Path(".")
        if not directory.is_dir():
            raise ParvaError(f"{path}: directory {directory} does not exist") from None
        return _Target(path, real, 0o666 & ~_umask(), existed=False)
    except OSError as exc:
        raise _cannot(path, exc) from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise ParvaError(f"{path}: is {kind}, which is not a regular file; refusing to replace it (nothing written)")
    return _Target(path, real, stat.S_IMODE(st.st_mode) & 0o777, existed=True)


def _stage(t: _Target, data: bytes) -> None:
    try:
        fd, t.tmp = tempfile.mkstemp(prefix=f".{t.real.name}.", suffix=".tmp", dir=t.real.parent)
    except OSError as exc:
        raise _cannot(t.given, exc) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(t.tmp, t.mode)  # mkstemp makes the file private (0600)
    except OSError as exc:
        raise _cannot(t.given, exc) from None


def _place(t: _Target, keep_old: bool) -> None:
    try:
        if t.existed and keep_old:
            # keep the old content under a second name until every file is in place
            t.backup = str(t.real.parent / f".{t.real.name}.{secrets.token_hex(6)}.old")
            os.link(t.real, t.backup)
        _recheck(t)
        os.replace(t.tmp, t.real)
        t.tmp, t.placed = None, True
    except OSError as exc:
        raise _cannot(t.given, exc) from None


def _recheck(t: _Target) -> None:
    """The target may have changed since it was checked: never rename over a special file."""
    try:
        mode = os.lstat(t.real).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise ParvaError(f"{t.given}: changed into {_KINDS.get(stat.S_IFMT(mode), 'a special file')} while writing")


def _undo(targets: list[_Target]) -> None:
    """Best effort: put back what was replaced, remove what is new."""
    for t in targets:
        for leftover in (t.tmp,) + (() if t.placed else (t.backup,)):
            if leftover:
                Path(leftover).unlink(missing_ok=True)
        if not t.placed:
            continue
        try:
            if t.backup:
                os.replace(t.backup, t.real)
            elif not t.existed:
                t.real.unlink(missing_ok=True)
        except OSError:
            pass


@dataclass
class _Transaction:
    targets: list[_Target] = field(default_factory=list)
    made_dirs: list[Path] = field(default_factory=list)


def write_all(
    files: Mapping[Path, str | bytes], create_dir: Path | None = None, modes: Mapping[Path, int] | None = None,
) -> list[Path]:
    """Write every file or none (text as UTF-8). `create_dir`, when given and missing, is created
    first (with missing parents) and removed again if the write fails. `modes` gives a file's
    permission bits (e.g. 0o755 for a script), else the module's rule. Returns the paths written."""
    tx = _Transaction()
    try:
        if create_dir is not None:
            tx.made_dirs = _make_dirs(Path(create_dir))
        tx.targets = [check_target(p) for p in files]
        for t in tx.targets:
            if modes and t.given in modes:
                t.mode = modes[t.given]
        reals = [os.path.realpath(t.real) for t in tx.targets]
        if len(set(reals)) != len(reals):
            raise ParvaError("two outputs name the same file")
        for t, data in zip(tx.targets, files.values()):
            _stage(t, data.encode("utf-8") if isinstance(data, str) else bytes(data))
        for t in tx.targets:
            _place(t, keep_old=len(tx.targets) > 1)
    except BaseException:
        _undo(tx.targets)
        for d in tx.made_dirs:
            try:
                d.rmdir()
            except OSError:
                break
        raise
    for t in tx.targets:
        if t.backup:
            Path(t.backup).unlink(missing_ok=True)
    return [t.given for t in tx.targets]


def _make_dirs(path: Path) -> list[Path]:
    """Create an output directory and its missing parents; returns those created here, innermost
    first (to remove on failure)."""
    made = []
    for d in (path, *path.parents):
        if d.is_dir():
            break
        if d.exists() or d.is_symlink():
            raise ParvaError(f"{d}: exists and is not a directory")
        made.append(d)
    for d in reversed(made):
        try:
            d.mkdir()
        except OSError as exc:
            for m in made[made.index(d) + 1:]:
                m.rmdir()
            raise _cannot(d, exc) from None
    return made


def atomic_write(path: Path, text: str | bytes) -> None:
    """Write one whole file or nothing, under the rules above."""
    write_all({Path(path): text})
