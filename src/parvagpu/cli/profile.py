"""`parvagpu profile`: parse, check the inputs and the model, then run the measuring loop.
Registered on the main Typer app by `parvagpu.cli`."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from parvagpu.cli.common import err, fail_on
from parvagpu.core.errors import ParvaError, SystemFailure
from parvagpu.profiler import worker
from parvagpu.profiler.results import todo
from parvagpu.profiler.session import Job, ProfileInterrupted, Summary, check_compatible
from parvagpu.profiler.session import profile as run_profile
from parvagpu.profiler.spec import Mode, Settings, check_name, check_sizes, parse_ints, parse_model
from parvagpu.profiler.store import ProfileStore

MODES = ", ".join(m.value for m in Mode)
MAX_SIZE, MAX_BATCH, MAX_PROCS, MAX_POINTS = 1024, 4096, 48, 10_000  # cores; MPS serves 48 clients


def make_device(mode: Mode, gpu: int, sizes: tuple[int, ...]):
    from parvagpu.profiler.devices import CpuDevice, MigDevice, MpsShareDevice

    if mode is Mode.cpu:
        # Idle OpenMP threads must sleep, not spin, or processes sharing cores starve each other
        # (measured: 2 processes x 2 threads on 2 cores ran 10-50x slower with spinning threads).
        # libgomp reads this when torch is loaded, i.e. in the forkserver, hence the parent's env.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        return CpuDevice(), None
    from parvagpu.core.gpus import gpu_type
    from parvagpu.hardware.mig import open_nvml
    from parvagpu.hardware.mps import CONTROL, NvidiaMps

    try:
        backend = open_nvml()
    except ParvaError as exc:  # no driver (exit 4), or no nvidia-ml-py (exit 2)
        raise type(exc)(f"{exc}; --mode {mode.value} needs an NVIDIA GPU (--mode cpu profiles without one)") from None
    try:
        if not 0 <= gpu < backend.gpu_count():
            raise ParvaError(f"--gpu-index {gpu}: this machine has {backend.gpu_count()} GPU(s)")
        external = mode is Mode.mps_share and os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
        if not external and shutil.which(CONTROL) is None:
            raise SystemFailure(f"{CONTROL} not found on PATH; it ships with the NVIDIA driver utilities")
        if mode is Mode.mps_share:
            backend.close()
            return MpsShareDevice(gpu, NvidiaMps()), None
        kind = gpu_type(backend.gpu_type(gpu))
        for s in sizes:
            kind.profile(s)  # an unknown size fails here, before any instance is made
    except BaseException:
        backend.close()
        raise
    return MigDevice(backend, gpu, NvidiaMps()), backend


def profile(
    model: str = typer.Argument(
        ..., help="package.module:function returning a torch.nn.Module, a TorchScript file, or an .onnx file."
    ),
    shape: Optional[str] = typer.Option(
        None, "--shape", help="Shape of one input item without the batch, e.g. 3,224,224 (default: what the model declares)."
    ),
    sizes: str = typer.Option("1,2,3,4,7", "--sizes", help="Instance sizes (compute slices; CPU cores in cpu mode)."),
    batches: str = typer.Option("1,2,4,8,16,32,64,128,256", "--batches", help="Batch sizes."),
    procs: str = typer.Option("1,2,3", "--procs", help="Process counts (MPS processes sharing the instance)."),
    out: Path = typer.Option(Path("profiles"), "--out", "-o", help="Directory for <model>.csv and <model>.meta.json."),
    mode: str = typer.Option("mig", "--mode", help=f"How a size is realised: {MODES}."),
    duration: float = typer.Option(5.0, "--duration", help="Seconds each process runs batches per point, after warm-up."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed batches per process before the timed run."),
    max_latency: Optional[float] = typer.Option(
        None, "--max-latency", help="Skip (as 0,0) larger batches once a batch's mean latency exceeds this many ms."
    ),
    name: Optional[str] = typer.Option(None, "--name", help="Model name = profile file stem (default: function or file name)."),
    dtype: str = typer.Option("float32", "--dtype", help="Input dtype: float32 (random) or int64 (ones, token ids)."),
    gpu_index: int = typer.Option(0, "--gpu-index", help="GPU to use in mig and mps-share modes."),
    retry_errors: bool = typer.Option(False, "--retry-errors", help="Measure again the points that failed with an error."),
    remeasure: bool = typer.Option(
        False, "--remeasure", help="Measure every point of the grid again, replacing its row (other rows stay)."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds a point may take to load and warm up."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the progress bar and failures."),
) -> None:
    """Measure a model's throughput and latency per (instance size, batch, processes) into a profile CSV.

    Every finished point is saved at once; running the same command again measures only what is
    missing. Ctrl-C or SIGTERM keeps the finished points (exit 130 or 143)."""
    backend = None
    signals = _Signals()
    try:
        with signals.sigterm_interrupts():
            settings = Settings(duration, warmup, None if max_latency is None else max_latency / 1000, timeout)
            job = _parse_job(model, shape, dtype, name, mode, sizes, batches, procs, settings, retry_errors)
            job = replace(job, remeasure=remeasure)
            store = ProfileStore(out, job.name)
            with store.claim():
                if _all_measured(job, store):
                    return
                device, backend = make_device(job.mode, gpu_index, job.sizes)  # a missing GPU fails before torch loads
                worker.check(job.spec)
                _report(_run(job, device, store, gpu_index, quiet))
    except ParvaError as exc:
        fail_on(exc)
    except ProfileInterrupted as exc:
        s = exc.summary
        err.print(
            f"interrupted: {s.already + s.measured + s.skipped} of {s.total} points saved in {s.csv_path}; "
            "run the same command again to measure the rest",
            highlight=False, markup=False,
            soft_wrap=True,
        )
        raise typer.Exit(signals.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted before measuring; nothing was written", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(signals.exit_code)
    finally:
        if backend is not None:
            backend.close()


class _Signals:
    """SIGTERM stops a run as Ctrl-C does (workers stopped, instance torn down, finished points
    kept), and the exit code says which signal it was (128 + its number: 130 or 143)."""

    def __init__(self) -> None:
        self.received = signal.SIGINT

    @property
    def exit_code(self) -> int:
        return 128 + int(self.received)

    @contextmanager
    def sigterm_interrupts(self) -> Iterator[None]:
        def on_term(signum: int, _frame: object) -> None:
            self.received = signal.Signals(signum)
            raise KeyboardInterrupt

        try:
            previous = signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread (tests): leave SIGTERM alone
            yield
            return
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def _parse_job(
    model: str, shape: Optional[str], dtype: str, name: Optional[str], mode: str, sizes: str, batches: str,
    procs: str, settings: Settings, retry_errors: bool,
) -> Job:
    """Every option checked, before anything is created or loaded into a worker."""
    try:
        m = Mode(mode.lower())
    except ValueError:
        raise ParvaError(f"--mode: expected one of {MODES}, got {mode!r}") from None
    spec = parse_model(model, shape, dtype)
    job_sizes = parse_ints(sizes, "--sizes", MAX_SIZE)
    check_sizes(m, job_sizes)
    job_batches, job_procs = parse_ints(batches, "--batches", MAX_BATCH), parse_ints(procs, "--procs", MAX_PROCS)
    points = len(job_sizes) * len(job_batches) * len(job_procs)
    if points > MAX_POINTS:
        raise ParvaError(f"the grid has {points} points (sizes x batches x procs), more than {MAX_POINTS}")
    spec = worker.with_declared_shape(spec)
    label = check_name(name or spec.default_name)
    return Job(spec, label, m, job_sizes, job_batches, job_procs, settings, retry_errors)


def _all_measured(job: Job, store: ProfileStore) -> bool:
    """The file already holds every point (after checking it belongs to this model and mode)."""
    existing, _torn, meta = store.load()
    check_compatible(job, existing, meta, store.csv_path)
    if todo(job.points(), existing, job.retry_errors, job.remeasure):
        return False
    err.print(f"{store.csv_path}: all {len(job.points())} points already measured", highlight=False, markup=False, soft_wrap=True)
    return True


def _run(job: Job, device, store: ProfileStore, gpu_index: int, quiet: bool) -> Summary:
    from parvagpu.profiler.console import RichProgress
    from parvagpu.profiler.runner import ProcessLauncher
    from parvagpu.profiler.sysinfo import describe, library_versions

    return run_profile(
        job, device, ProcessLauncher(job.spec, job.settings, job.mode.value), store, RichProgress(err, quiet),
        system=lambda: describe(None if job.mode is Mode.cpu else gpu_index), libraries=library_versions,
    )


def _report(summary: Summary) -> None:
    if summary.dropped_torn_line:
        err.print(f"{summary.csv_path}: dropped an incomplete last line; that point was measured again",
                  highlight=False, markup=False, soft_wrap=True)
    err.print(
        f"wrote {summary.csv_path}: {summary.measured} point(s) measured, {summary.skipped} skipped, "
        f"{summary.failed} failed; {summary.already} were already there",
        highlight=False, markup=False,
        soft_wrap=True,
    )
