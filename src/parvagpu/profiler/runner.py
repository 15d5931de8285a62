"""Measuring one point with real processes: `procs` workers load the model and warm up, then
start together and time batches for the same duration.

Workers come from a `forkserver` that has already imported torch (or onnxruntime): a fresh
process per point costs about 20 ms instead of the 1.5 s of importing torch anew, yet no point
inherits another's state (memory, CUDA context). Where `forkserver` is missing, `spawn` is used.
Neither the forkserver nor a worker initialises CUDA before the worker has its own environment
(MIG UUID, MPS pipe, thread percentage), which the driver reads at first use.

Each worker gets two one-way pipes: results to the parent, the start signal from it. Holding
only its own ends, a worker can never block on a dead parent (a Queue would hand it both ends
of one pipe, and a worker killed parent's full pipe would hang its exit).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from array import array
from collections.abc import Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Protocol

from parvagpu.profiler import worker as worker_mod
from parvagpu.profiler.results import ERROR, OOM, Point, Result, WorkerTiming, aggregate, classify_error
from parvagpu.profiler.spec import ModelSpec, Settings


@dataclass(frozen=True)
class Slot:
    """What a device lends the processes of one instance size: the torch device name, the
    environment variables that select the share of hardware, CPU threads and cores."""

    device: str = "cpu"
    env: Mapping[str, str] = field(default_factory=dict)
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    label: str = ""


class Launcher(Protocol):
    """Measures one point in a slot and returns its row; failures become rows, not exceptions
    (KeyboardInterrupt excepted)."""

    def measure(self, point: Point, slot: Slot) -> Result: ...


def _context(spec: ModelSpec):
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([spec.framework, "parvagpu.profiler.worker"])
        return ctx
    return mp.get_context("spawn")


class _Failed(Exception):
    def __init__(self, status: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class ProcessLauncher:
    def __init__(self, spec: ModelSpec, settings: Settings, mode: str, context=None) -> None:
        self.spec = spec
        self.settings = settings
        self.mode = mode
        self.ctx = context or _context(spec)

    def measure(self, point: Point, slot: Slot) -> Result:
        s = self.settings
        job = worker_mod.WorkerJob(
            self.spec, point.batch, s.duration_s, s.warmup, slot.device, slot.threads, slot.cpus, dict(slot.env)
        )
        procs, results, controls = [], [], []
        try:
            for i in range(point.procs):
                res_r, res_w = self.ctx.Pipe(duplex=False)
                ctl_r, ctl_w = self.ctx.Pipe(duplex=False)
                p = self.ctx.Process(target=worker_mod.main, args=(job, i, res_w, ctl_r), daemon=True)
                procs.append(p)
                results.append(res_r)
                controls.append(ctl_w)
                p.start()
                res_w.close()  # the worker has its copies; ours would hide its death
                ctl_r.close()
            self._collect(results, procs, "ready", s.timeout_s, "loading and warming up")
            for c in controls:
                try:
                    c.send("go")
                except OSError:
                    raise _Failed(ERROR, "a worker exited before the start") from None
            done = self._collect(results, procs, "done", s.duration_s + s.timeout_s, "measuring")
            timings = [
                WorkerTiming(items, wall, array("d", lat_bytes), mem)
                for (items, wall, lat_bytes, mem) in (done[i] for i in range(point.procs))
            ]
            return aggregate(point, timings, self.mode)
        except _Failed as f:
            return Result(point, f.status, mode=self.mode, detail=f.detail)
        finally:
            _stop(procs)
            for c in results + controls:
                c.close()

    @staticmethod
    def _collect(conns, procs, kind: str, timeout_s: float, stage: str) -> dict[int, tuple]:
        """One `kind` message from every worker. An error message, a worker that died (end of
        file on its pipe) or the timeout fails the point."""
        got: dict[int, tuple] = {}
        deadline = time.monotonic() + timeout_s
        while len(got) < len(conns):
            pending = [c for i, c in enumerate(conns) if i not in got]
            ready = wait(pending, timeout=0.5)
            if not ready and time.monotonic() > deadline:
                raise _Failed(ERROR, f"timed out after {timeout_s:g} s while {stage}")
            for c in ready:
                i = conns.index(c)
                try:
                    msg = c.recv()
                except (EOFError, OSError):
                    procs[i].join(timeout=5)
                    raise _Failed(*_death(procs[i].exitcode, stage)) from None
                if msg[0] == "error":
                    _, type_name, message = msg
                    raise _Failed(classify_error(type_name, message), f"{type_name}: {message}")
                if msg[0] != kind:
                    raise _Failed(ERROR, f"unexpected message {msg[0]!r} from a worker while {stage}")
                got[i] = tuple(msg[1:])
        return got


def _death(exitcode: int | None, stage: str) -> tuple[str, str]:
    if exitcode == -signal.SIGKILL:
        return OOM, f"a worker was killed (SIGKILL) while {stage}, most likely by the out-of-memory killer"
    return ERROR, f"a worker exited (code {exitcode}) without a result while {stage}"


def _stop(procs) -> None:
    """Workers are done or no longer wanted: ask, then insist."""
    for p in procs:
        if p.pid is not None and p.is_alive():
            p.terminate()
    for p in procs:
        if p.pid is None:
            continue
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
