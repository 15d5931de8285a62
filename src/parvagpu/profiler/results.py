"""The pure core of profiling: which points, in which order, which to skip, how per-batch
timings become one profile row, and the CSV text of a profile. No clocks, no processes, no
files: the runner and the store call these, and the tests check them directly."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from parvagpu.core.errors import ParvaError
from parvagpu.inputs.profiles import SEED_COLUMNS

OK, OOM, ERROR = "ok", "oom", "error"
SKIPPED_LATENCY, SKIPPED_OOM = "skipped-latency", "skipped-oom"
STATUSES = (OK, OOM, ERROR, SKIPPED_LATENCY, SKIPPED_OOM)

# Seed columns first, so `parvagpu.inputs.profiles.load_profile` reads the file as any other profile.
EXTRA_COLUMNS = ("Latency p99", "Memory MiB", "Mode", "Status")
HEADER = SEED_COLUMNS + EXTRA_COLUMNS


@dataclass(frozen=True, order=True)
class Point:
    """One grid point. Field order is the seed file's row order: size, then batch, then procs."""

    size: int
    batch: int
    procs: int

    def __str__(self) -> str:
        return f"size {self.size} batch {self.batch} procs {self.procs}"


@dataclass(frozen=True)
class Result:
    """A finished point. Throughput is per process (items/s); latencies are seconds per batch.
    Anything but `ok` is written as `0,0`, the seed format's "not runnable"."""

    point: Point
    status: str
    throughput: float = 0.0
    latency_s: float = 0.0
    p99_s: float = 0.0
    memory_mib: float | None = None
    mode: str = ""
    detail: str = ""  # why it failed; kept in the metadata, not in the CSV

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass(frozen=True)
class WorkerTiming:
    """What one worker process measured after its warm-up: `latencies` per batch and the wall
    time from the common start to the end of its last batch."""

    items: int
    wall_s: float
    latencies: Sequence[float]
    memory_mib: float | None = None


def grid(sizes: Iterable[int], batches: Iterable[int], procs: Iterable[int]) -> list[Point]:
    """Every point in measuring order. Seed order keeps one instance size together (one MIG
    instance per size) and smaller batches first (the skip rules look at smaller batches)."""
    return sorted(Point(s, b, p) for s in set(sizes) for b in set(batches) for p in set(procs))


def skip_reason(point: Point, done: Mapping[Point, Result], max_latency_s: float | None) -> str | None:
    """Skip a batch when a smaller batch of the same size and process count already ran out of
    memory (a larger one will too) or had a mean latency above `max_latency_s` (a larger one is
    slower still and useless to any SLO that tight)."""
    for other, res in done.items():
        if other.size != point.size or other.procs != point.procs or other.batch >= point.batch:
            continue
        if res.status in (OOM, SKIPPED_OOM):
            return SKIPPED_OOM
        if max_latency_s is not None and (
            res.status == SKIPPED_LATENCY or (res.ok and res.latency_s > max_latency_s)
        ):
            return SKIPPED_LATENCY
    return None


def todo(
    points: Iterable[Point], done: Mapping[Point, Result], retry_errors: bool = False, remeasure: bool = False,
) -> list[Point]:
    """Points still to measure: not in the file yet (or failed with an error, when retrying;
    every one, when re-measuring)."""
    return [p for p in points if remeasure or p not in done or (retry_errors and done[p].status == ERROR)]


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): an observed value, never an interpolation."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def aggregate(point: Point, timings: Sequence[WorkerTiming], mode: str = "") -> Result:
    """One row from the workers of a point: throughput per process is items / wall time, averaged
    over processes (the seed format's per-process figure; the planner multiplies by procs);
    latency mean and p99 pool every batch of every process."""
    if len(timings) != point.procs:
        raise ValueError(f"{point}: {len(timings)} worker results for {point.procs} processes")
    lats = [x for t in timings for x in t.latencies]
    if not lats or any(t.wall_s <= 0 or t.items <= 0 for t in timings):
        return Result(point, ERROR, mode=mode, detail="no batch finished")
    thr = sum(t.items / t.wall_s for t in timings) / len(timings)
    mems = [t.memory_mib for t in timings if t.memory_mib is not None]
    return Result(
        point, OK, thr, sum(lats) / len(lats), percentile(lats, 99), max(mems) if mems else None, mode
    )


_OOM_MARKERS = (
    "out of memory",
    "outofmemory",
    "failed to allocate memory",
    "can't allocate memory",
    "cannot allocate memory",
    "cuda_error_out_of_memory",
    "memoryerror",
)


def classify_error(type_name: str, message: str) -> str:
    """OOM or another error, from the exception's class name and text (torch, CUDA and
    onnxruntime word it differently)."""
    text = f"{type_name} {message}".lower()
    return OOM if any(m in text for m in _OOM_MARKERS) else ERROR


def fmt_number(x: float) -> str:
    """At least six significant digits in plain positional notation (no exponent), trailing zeros
    dropped: sub-millisecond CPU latencies must not round to the seed's `0` (= not runnable)."""
    if x == 0:
        return "0"
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"not a finite non-negative number: {x}")
    decimals = max(3, 6 - math.floor(math.log10(x)) - 1)
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def row(result: Result) -> list[str]:
    p = result.point
    if result.ok:
        thr, lat, p99 = fmt_number(result.throughput), fmt_number(result.latency_s), fmt_number(result.p99_s)
    else:
        thr = lat = p99 = "0"
    mem = "" if result.memory_mib is None else f"{result.memory_mib:.0f}"
    return [str(p.size), str(p.batch), str(p.procs), thr, lat, p99, mem, result.mode, result.status]


def to_csv(results: Iterable[Result]) -> str:
    """The whole profile file, rows in seed order, LF line ends."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for r in sorted(results, key=lambda r: r.point):
        w.writerow(row(r))
    return buf.getvalue()


def parse_csv(text: str, where: str) -> tuple[dict[Point, Result], bool]:
    """Read back a profile this module wrote, to resume. A malformed last line (a write cut
    short) is dropped, reported by the second value; anything else malformed is an error."""
    lines = text.splitlines()
    if not lines:
        return {}, False
    header = next(csv.reader([lines[0]]))
    if tuple(h.strip() for h in header) != HEADER:
        raise ParvaError(
            f"{where}: exists but is not a profile written by `parvagpu profile` "
            f"(header {','.join(header)!r}); choose another --out or --name"
        )
    out: dict[Point, Result] = {}
    torn = False
    body = [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    for i, (lineno, line) in enumerate(body):
        try:
            res = _parse_row(next(csv.reader([line])))
        except ValueError as exc:
            if i == len(body) - 1:
                torn = True
                break
            raise ParvaError(f"{where}:{lineno}: {exc}") from None
        if res.point in out:
            raise ParvaError(f"{where}:{lineno}: duplicate point {res.point}")
        out[res.point] = res
    return out, torn


def _parse_row(cells: list[str]) -> Result:
    if len(cells) != len(HEADER):
        raise ValueError(f"expected {len(HEADER)} columns, found {len(cells)}")
    size, batch, procs = (int(c) for c in cells[:3])
    if min(size, batch, procs) < 1:
        raise ValueError("size, batch and procs must be >= 1")
    thr, lat, p99 = (float(c) for c in cells[3:6])
    mem = float(cells[6]) if cells[6].strip() else None
    status = cells[8].strip()
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    if (status == OK) != (thr > 0 and lat > 0):
        raise ValueError(f"status {status!r} does not match throughput {cells[3]} and latency {cells[4]}")
    return Result(Point(size, batch, procs), status, thr, lat, p99, mem, cells[7].strip())
