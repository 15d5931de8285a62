"""Devices: how one instance size becomes real hardware while its points are measured.

`device.slot(size)` is a context manager that makes the share of hardware (a MIG instance with
its MPS daemon, an SM-capped MPS client environment, or a set of CPU cores), yields the `Slot`
that workers run in, and tears it down afterwards, also on errors and Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from parvagpu.core.gpus import gpu_type as lookup_gpu_type
from parvagpu.core.errors import ParvaError
from parvagpu.profiler.runner import Slot
from parvagpu.profiler.spec import Mode

if TYPE_CHECKING:
    from parvagpu.hardware.mig.base import MigBackend
    from parvagpu.hardware.mps import MpsControl


class Device(Protocol):
    mode: Mode

    def slot(self, size: int):  # -> ContextManager[Slot]
        ...

    def notes(self) -> dict:
        """What the metadata should say about how sizes were realised."""
        ...


def available_cpus() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


class CpuDevice:
    """Size = CPU cores. The processes of a point are pinned to the same first `size` cores (as
    MPS processes share one instance's SMs), each with `size` threads. A size larger than the
    machine's cores is run unpinned, oversubscribed, and the metadata says so."""

    mode = Mode.cpu

    def __init__(self, cpus: tuple[int, ...] | None = None) -> None:
        self.cpus = cpus if cpus is not None else available_cpus()
        self.oversubscribed: set[int] = set()

    @contextmanager
    def slot(self, size: int) -> Iterator[Slot]:
        if size <= len(self.cpus):
            cores = self.cpus[:size]
            label = f"{size} thread(s) on cores {','.join(map(str, cores))}"
        else:
            cores = None
            self.oversubscribed.add(size)
            label = f"{size} thread(s), more than the {len(self.cpus)} cores here"
        yield Slot("cpu", {}, size, cores, label)

    def notes(self) -> dict:
        return {
            "cores": len(self.cpus),
            "oversubscribed_sizes": sorted(self.oversubscribed),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        }


def thread_percentage(size: int, compute_slices: int = 7) -> int:
    """The share of SMs that stands in for an instance of `size` compute slices."""
    return max(1, min(100, round(100 * size / compute_slices)))


def _pipe_root() -> Path:
    # Short: the daemon's Unix sockets live in the pipe directory (108-byte path limit).
    return Path(tempfile.mkdtemp(prefix="pgp-mps-"))


class MpsShareDevice:
    """One GPU without MIG: the processes of a point are MPS clients limited to
    round(100 * size / 7) % of the SMs. Uses the MPS daemon named by CUDA_MPS_PIPE_DIRECTORY if
    one is set, or starts a private daemon for the run."""

    mode = Mode.mps_share

    def __init__(self, gpu: int, mps: MpsControl, pipe_dir: str | None = None, compute_slices: int = 7) -> None:
        self.gpu = gpu
        self.mps = mps
        self.compute_slices = compute_slices
        self.external = pipe_dir if pipe_dir is not None else os.environ.get("CUDA_MPS_PIPE_DIRECTORY")

    @contextmanager
    def slot(self, size: int) -> Iterator[Slot]:
        pct = thread_percentage(size, self.compute_slices)
        env = {"CUDA_VISIBLE_DEVICES": str(self.gpu), "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(pct)}
        label = f"GPU {self.gpu} at {pct}% of its SMs"
        if self.external:
            yield Slot("cuda", {**env, "CUDA_MPS_PIPE_DIRECTORY": self.external}, label=label)
            return
        root = _pipe_root()
        pipe, log = str(root / "pipe"), str(root / "log")
        try:
            self.mps.start(pipe, log, str(self.gpu))
            try:
                yield Slot("cuda", {**env, "CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": log}, label=label)
            finally:
                self.mps.stop(pipe, log)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def notes(self) -> dict:
        return {
            "gpu_index": self.gpu,
            "thread_percentage": f"round(100 * size / {self.compute_slices})",
            "mps_daemon": self.external or "private, started per size",
        }


class MigDevice:
    """Each size is a real MIG GPU instance with one compute instance spanning it and its own MPS
    daemon, made through the apply layer's `MigBackend` and `MpsControl`, and destroyed after its
    points. It needs MIG mode on and one free legal slot of that size; other instances on the GPU
    are left alone."""

    mode = Mode.mig

    def __init__(
        self, backend: MigBackend, gpu: int, mps: MpsControl, pipe_root: Path | None = None,
        destroy_retries: int = 20, retry_wait_s: float = 0.25,
    ) -> None:
        self.backend = backend
        self.gpu = gpu
        self.mps = mps
        self.pipe_root = pipe_root
        self.destroy_retries = destroy_retries
        self.retry_wait_s = retry_wait_s
        self.used: list[dict] = []

    def _type(self):
        return lookup_gpu_type(self.backend.gpu_type(self.gpu))

    @contextmanager
    def slot(self, size: int) -> Iterator[Slot]:
        from parvagpu.hardware.mig.base import InsufficientResources

        gpu, b = self.gpu, self.backend
        current, _pending = b.mig_mode(gpu)
        if not current:
            raise ParvaError(f"GPU {gpu}: MIG mode is off; enable it (nvidia-smi -i {gpu} -mig 1) or use --mode mps-share")
        profile = self._type().profile(size)
        gi = start = None
        for s, _width in b.possible_placements(gpu, profile.profile_id):
            try:
                gi = b.create_gpu_instance(gpu, profile.profile_id, s)
            except InsufficientResources:
                continue
            start = s
            break
        if gi is None:
            raise ParvaError(f"GPU {gpu}: no free slot for a {profile.name} instance; free one to profile size {size}")
        ci = None
        daemon = None
        own_root = self.pipe_root is None
        root = self.pipe_root or _pipe_root()
        try:
            ci = b.create_compute_instance(gpu, gi)
            uuid = b.mig_uuid(gpu, gi, ci)
            pipe, log = str(root / f"nvidia-mps-{gpu}-{start}"), str(root / f"nvidia-log-{gpu}-{start}")
            self.mps.start(pipe, log, uuid)
            daemon = (pipe, log)
            self.used.append({"size": size, "profile": profile.name, "start": start, "uuid": uuid})
            env = {"CUDA_VISIBLE_DEVICES": uuid, "CUDA_MPS_PIPE_DIRECTORY": pipe, "CUDA_MPS_LOG_DIRECTORY": log}
            yield Slot("cuda", env, label=f"{profile.name} at slot {start} ({uuid})")
        finally:
            try:
                if daemon is not None:
                    self.mps.stop(*daemon)
            finally:
                if own_root:
                    shutil.rmtree(root, ignore_errors=True)
                if ci is not None:
                    self._retry(lambda: b.destroy_compute_instance(gpu, gi, ci))
                self._retry(lambda: b.destroy_gpu_instance(gpu, gi))

    def _retry(self, call) -> None:
        """The MPS server and killed workers release an instance a moment after they exit."""
        from parvagpu.hardware.mig.base import InUse

        for attempt in range(self.destroy_retries):
            try:
                return call()
            except InUse:
                if attempt == self.destroy_retries - 1:
                    raise
                time.sleep(self.retry_wait_s)

    def notes(self) -> dict:
        return {"gpu_index": self.gpu, "gpu_type": self._type().name, "instances": self.used}
