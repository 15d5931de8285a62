"""The progress display: a Rich bar with the time left (on stderr) and one line per point."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from parvagpu.profiler.results import OK, Point, Result
from parvagpu.profiler.runner import Slot


def describe(result: Result) -> str:
    if result.ok:
        mem = "" if result.memory_mib is None else f", {result.memory_mib:,.0f} MiB"
        return (
            f"{result.throughput:,.1f} items/s per process, {result.latency_s * 1000:.3f} ms "
            f"(p99 {result.p99_s * 1000:.3f} ms){mem}"
        )
    detail = f" ({result.detail})" if result.detail else ""
    return f"{result.status}{detail}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RichProgress:
    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.bar: Progress | None = None
        self.task = None
        self.slot_label: str | None = None

    def start(self, job, pending: int, already: int) -> None:
        done = f"{already} point(s) already measured, " if already else ""
        self.console.print(
            f"{escape(job.name)}: {done}{pending} to measure, {job.settings.duration_s:g} s each after loading and "
            f"warm-up (at least {_duration(pending * job.settings.duration_s)})",
            highlight=False, soft_wrap=True,
        )
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.bar.start()
        self.task = self.bar.add_task(job.name, total=pending)

    def begin(self, point: Point, slot: Slot | None) -> None:
        if self.bar is None:
            return
        if slot is not None and slot.label and slot.label != self.slot_label:
            self.slot_label = slot.label
            if not self.quiet:
                self.bar.console.print(f"size {point.size}: {escape(slot.label)}", highlight=False, soft_wrap=True)
        self.bar.update(self.task, description=f"s{point.size} b{point.batch} p{point.procs}")

    def end(self, result: Result) -> None:
        if self.bar is None:
            return
        if not self.quiet or result.status != OK:
            self.bar.console.print(f"  {result.point}: {escape(describe(result))}", highlight=False, soft_wrap=True)
        self.bar.advance(self.task)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
