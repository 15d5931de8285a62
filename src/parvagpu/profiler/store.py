"""The profile file and its metadata on disk. Each finished point rewrites both atomically (a
temporary file renamed into place), so a kill at any moment leaves the previous valid file;
a re-run reads them back and measures only what is missing."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from parvagpu.fileio.writer import atomic_write
from parvagpu.core.errors import ParvaError
from parvagpu.profiler.results import Point, Result, parse_csv, to_csv

META_SUFFIX = ".meta.json"


class ProfileStore:
    def __init__(self, out_dir: Path, name: str) -> None:
        self.out_dir = Path(out_dir)
        self.csv_path = self.out_dir / f"{name}.csv"
        self.meta_path = self.out_dir / f"{name}{META_SUFFIX}"

    def prepare(self) -> list[Path]:
        """Create the output directory and prove it is writable, before any measuring. Returns
        the directories it created, innermost first."""
        made = []
        for d in (self.out_dir, *self.out_dir.parents):
            if d.exists():
                break
            made.append(d)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ParvaError(f"--out {self.out_dir}: cannot create the directory: {exc.strerror or exc}") from None
        for p in (self.csv_path, self.meta_path):
            if p.exists() and not p.is_file():
                raise ParvaError(f"{p}: exists and is not a file")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".parvagpu-write-test.", dir=self.out_dir)
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            _remove_empty(made)
            raise ParvaError(f"--out {self.out_dir}: not writable: {exc.strerror or exc}") from None
        return made

    @contextmanager
    def claim(self) -> Iterator[None]:
        """`prepare`, then hold this profile's lock for the run, so a second run into the same
        file is refused instead of both losing points. Afterwards the lock file goes, and so do
        the directories `prepare` made if the run left them empty (a failed start leaves nothing)."""
        made = self.prepare()
        lock = self.out_dir / f".{self.csv_path.stem}.lock"
        try:
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise ParvaError(f"--out {self.out_dir}: cannot create {lock.name}: {exc.strerror or exc}") from None
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ParvaError(f"{self.csv_path}: another parvagpu profile is measuring into it") from None
                try:
                    yield
                finally:
                    lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        finally:
            _remove_empty(made)

    def load(self) -> tuple[dict[Point, Result], bool, dict | None]:
        """Points already measured, whether a torn last line was dropped, and the metadata."""
        results: dict[Point, Result] = {}
        torn = False
        if self.csv_path.exists():
            try:
                text = self.csv_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ParvaError(f"{self.csv_path}: cannot read: {exc}") from None
            results, torn = parse_csv(text, str(self.csv_path))
        meta = None
        if self.meta_path.exists():
            try:
                meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ParvaError(f"{self.meta_path}: unreadable metadata ({exc}); move it away to start over") from None
            if not isinstance(meta, dict):
                raise ParvaError(f"{self.meta_path}: metadata is not a JSON object")
        return results, torn, meta

    def save(self, results: dict[Point, Result], meta: dict) -> None:
        atomic_write(self.csv_path, to_csv(results.values()))
        self.save_meta(meta)

    def save_meta(self, meta: dict) -> None:
        atomic_write(self.meta_path, json.dumps(meta, indent=2) + "\n")


def _remove_empty(dirs: list[Path]) -> None:
    """Remove these directories (innermost first) while they are empty."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            break
