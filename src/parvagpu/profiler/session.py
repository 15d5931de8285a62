"""One profiling run: read what is done, measure the rest point by point, save after each.

The device (how a size becomes hardware), the launcher (how a point is measured) and the
progress display come in as small interfaces, so the whole loop, resume and Ctrl-C included,
is tested with fakes and without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import groupby
from pathlib import Path
from typing import Protocol

from parvagpu.core.errors import ParvaError
from parvagpu.profiler.devices import Device
from parvagpu.profiler.results import ERROR, OK, OOM, Point, Result, grid, skip_reason, todo
from parvagpu.profiler.runner import Launcher, Slot
from parvagpu.profiler.spec import APPROXIMATION, Mode, ModelSpec, Settings
from parvagpu.profiler.store import ProfileStore

META_VERSION = 1


@dataclass(frozen=True)
class Job:
    spec: ModelSpec
    name: str
    mode: Mode
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    procs: tuple[int, ...]
    settings: Settings = field(default_factory=Settings)
    retry_errors: bool = False
    remeasure: bool = False  # measure every grid point again, replacing its row

    def points(self) -> list[Point]:
        return grid(self.sizes, self.batches, self.procs)


@dataclass
class Summary:
    csv_path: Path
    total: int  # points of the requested grid
    already: int  # of them, done before this run
    measured: int = 0
    skipped: int = 0
    failed: int = 0
    complete: bool = False
    dropped_torn_line: bool = False


class ProfileInterrupted(Exception):
    """Ctrl-C: the finished points are saved; the summary says how far the run got."""

    def __init__(self, summary: Summary) -> None:
        super().__init__("interrupted")
        self.summary = summary


class Progress(Protocol):
    def start(self, job: Job, pending: int, already: int) -> None: ...

    def begin(self, point: Point, slot: Slot | None) -> None: ...

    def end(self, result: Result) -> None: ...

    def close(self) -> None: ...


class NoProgress:
    def start(self, job: Job, pending: int, already: int) -> None:
        pass

    def begin(self, point: Point, slot: Slot | None) -> None:
        pass

    def end(self, result: Result) -> None:
        pass

    def close(self) -> None:
        pass


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _identity(job: Job) -> dict:
    """What must match for a re-run to continue a file rather than mix two experiments."""
    ref = job.spec.ref if job.spec.kind == "factory" else Path(job.spec.ref).name
    return {"kind": job.spec.kind, "ref": ref, "shape": list(job.spec.shape), "dtype": job.spec.dtype}


def check_compatible(job: Job, existing: dict[Point, Result], meta: dict | None, where: Path) -> None:
    modes = {r.mode for r in existing.values()} - {job.mode.value}
    if modes:
        raise ParvaError(
            f"{where}: measured in mode {sorted(modes)[0]}, not {job.mode.value}; use that mode or another --out"
        )
    if meta is None:
        return
    if meta.get("mode", job.mode.value) != job.mode.value:
        raise ParvaError(f"{where}: measured in mode {meta['mode']}, not {job.mode.value}; use that mode or another --out")
    old = meta.get("model")
    if isinstance(old, dict):
        new = _identity(job)
        for key in ("kind", "ref", "shape", "dtype"):
            if key in old and old[key] != new[key]:
                raise ParvaError(
                    f"{where}: was measured with model {key} {old[key]!r}, not {new[key]!r}; "
                    f"use another --out or --name"
                )


def new_meta(job: Job, meta: dict | None, system: dict, libraries: dict) -> dict:
    now = _now()
    out = dict(meta or {})
    out.setdefault("created", now)
    out.update(
        version=META_VERSION,
        model_name=job.name,
        model=_identity(job),
        mode=job.mode.value,
        approximation=APPROXIMATION[job.mode],
        units={"Throughput": "items/s per process", "Latency": "s per batch (mean)",
               "Latency p99": "s per batch", "Memory MiB": _memory_unit(job.mode)},
        updated=now,
        system=system,
        libraries=libraries,
    )
    out.setdefault("runs", [])
    out.setdefault("errors", {})
    return out


def _memory_unit(mode: Mode) -> str:
    if mode is Mode.cpu:
        return "peak resident memory of one worker process (largest of the point's processes), MiB"
    return "peak GPU memory reserved by torch in one worker process (largest), MiB; empty for ONNX"


def _key(p: Point) -> str:
    return f"{p.size},{p.batch},{p.procs}"


def profile(
    job: Job,
    device: Device,
    launcher: Launcher,
    store: ProfileStore,
    progress: Progress | None = None,
    system: Callable[[], dict] = dict,
    libraries: Callable[[], dict] = dict,
) -> Summary:
    """Measure every point of the job's grid that the file does not hold yet."""
    progress = progress or NoProgress()
    existing, torn, meta = store.load()
    check_compatible(job, existing, meta, store.csv_path)
    points = job.points()
    pending = todo(points, existing, job.retry_errors, job.remeasure)
    summary = Summary(store.csv_path, len(points), len(points) - len(pending), dropped_torn_line=torn)
    if not pending:
        summary.complete = True
        return summary
    log = _RunLog(new_meta(job, meta, system(), libraries()), _run_record(job), summary)
    progress.start(job, len(pending), summary.already)
    try:
        _measure(job, pending, dict(existing), device, launcher, store, progress, log)
        log.run["outcome"] = "complete"
        summary.complete = True
        return summary
    except KeyboardInterrupt:
        log.run["outcome"] = "interrupted"
        raise ProfileInterrupted(summary) from None
    except BaseException:
        log.run["outcome"] = "failed"
        raise
    finally:
        log.run["ended"] = _now()
        try:
            if log.run["measured"] or log.run["skipped"] or store.meta_path.exists():
                log.meta["device"] = device.notes()
                store.save_meta(log.meta)
        except Exception:  # never hide the error that got us here
            pass
        progress.close()


def _run_record(job: Job) -> dict:
    """This run's entry in the metadata's `runs`: its settings, then what it measured."""
    s = job.settings
    return {
        "started": _now(), "ended": None, "outcome": "running",
        "settings": {
            "duration_s": s.duration_s, "warmup": s.warmup,
            "max_latency_ms": None if s.max_latency_s is None else s.max_latency_s * 1000,
            "sizes": list(job.sizes), "batches": list(job.batches), "procs": list(job.procs),
            "retry_errors": job.retry_errors, "remeasure": job.remeasure,
        },
        "measured": [], "skipped": [],
    }


@dataclass
class _RunLog:
    """What a run records as it goes: the metadata (its `runs` ends with this run's record) and
    the summary returned to the caller."""

    meta: dict
    run: dict
    summary: Summary

    def __post_init__(self) -> None:
        self.meta["runs"].append(self.run)

    def record(self, result: Result, skipped: bool) -> None:
        key = [result.point.size, result.point.batch, result.point.procs]
        if skipped:
            self.run["skipped"].append(key)
            self.summary.skipped += 1
        else:
            self.run["measured"].append(key)
            self.summary.measured += 1
        if result.status in (ERROR, OOM):
            self.summary.failed += 1
            self.meta["errors"][_key(result.point)] = result.detail or result.status
        elif result.status == OK:
            self.meta["errors"].pop(_key(result.point), None)


def _measure(
    job: Job, pending: list[Point], results: dict[Point, Result], device: Device, launcher: Launcher,
    store: ProfileStore, progress: Progress, log: _RunLog,
) -> None:
    """Point by point, one size at a time (its slot made on the first point not skipped and
    released after the size's last), saving the file after every point."""
    for size, group in groupby(pending, key=lambda p: p.size):
        with ExitStack() as stack:
            slot = None
            for point in group:
                reason = skip_reason(point, results, job.settings.max_latency_s)
                if reason:
                    result = Result(point, reason, mode=job.mode.value)
                    progress.begin(point, None)
                else:
                    if slot is None:
                        slot = stack.enter_context(device.slot(size))
                    progress.begin(point, slot)
                    result = launcher.measure(point, slot)
                results[point] = result
                log.record(result, reason is not None)
                log.meta["device"] = device.notes()
                log.meta["updated"] = _now()
                store.save(results, log.meta)
                progress.end(result)
