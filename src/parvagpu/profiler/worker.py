"""Code that runs inside a measuring process: load the model, make an input batch, warm up,
wait for the common start, then time batches for a fixed duration.

Torch and onnxruntime are imported here, lazily, so `import parvagpu` never needs them. The same
loader serves the parent's one-batch check, so a model that cannot load fails before the run.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from parvagpu.core.errors import ParvaError
from parvagpu.profiler.spec import ModelSpec
from parvagpu.core.extras import install_hint


class ModelLoadError(ParvaError):
    """The model reference does not give a runnable model (import, file or call failed)."""


@dataclass(frozen=True)
class WorkerJob:
    """Everything a worker needs; picklable, so it crosses the process boundary."""

    spec: ModelSpec
    batch: int
    duration_s: float
    warmup: int
    device: str = "cpu"  # "cpu" or "cuda" (the only GPU the worker's environment shows)
    threads: int | None = None
    cpus: tuple[int, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Loaded:
    """A ready model: `run()` does one batch end to end (host input -> device -> forward,
    synchronised), which is what a served request batch costs."""

    run: Callable[[], object]
    memory_mib: Callable[[], float | None]


def load(spec: ModelSpec, batch: int, device: str = "cpu", threads: int | None = None) -> Loaded:
    if spec.kind == "onnx":
        return _load_onnx(spec, batch, device, threads)
    return _load_torch(spec, batch, device, threads)


def _factory(ref: str) -> Callable[[], object]:
    module_name, fn_name = ref.rsplit(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"model {ref!r}: cannot import {module_name!r}: {exc}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ModelLoadError(f"model {ref!r}: {module_name!r} has no function {fn_name!r}")
    return fn


def _load_torch(spec: ModelSpec, batch: int, device: str, threads: int | None) -> Loaded:
    try:
        import torch
    except ImportError:
        raise ModelLoadError(f"profiling a PyTorch model needs torch: {install_hint('profile')}") from None
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"CUDA is not available in the worker (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})"
        )
    if spec.kind == "factory":
        model = _factory(spec.ref)()
        if not isinstance(model, torch.nn.Module):
            raise ModelLoadError(f"model {spec.ref!r}: the factory returned {type(model).__name__}, not a torch.nn.Module")
    else:
        try:
            model = torch.jit.load(spec.ref, map_location="cpu")
        except Exception as exc:  # torch raises RuntimeError/ValueError for a bad archive
            raise ModelLoadError(f"model {spec.ref!r}: not a TorchScript file: {_first_line(exc)}") from None
    model = model.eval().to(device)
    shape = (batch, *spec.shape)
    if spec.dtype == "int64":
        x = torch.ones(shape, dtype=torch.long)  # valid token ids for embedding models
    else:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    if device == "cuda":
        x = x.pin_memory()

    def run() -> object:
        with torch.inference_mode():
            out = model(x.to(device, non_blocking=True))
            if device == "cuda":
                torch.cuda.synchronize()
        return out

    def memory() -> float | None:
        if device == "cuda":
            return torch.cuda.max_memory_reserved() / 2**20
        return _peak_rss_mib()

    return Loaded(run, memory)


def _load_onnx(spec: ModelSpec, batch: int, device: str, threads: int | None) -> Loaded:
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        raise ModelLoadError(f"profiling an ONNX model needs onnxruntime: {install_hint('profile')}") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise ModelLoadError(f"onnxruntime has no {provider} here (for GPUs install onnxruntime-gpu)")
    try:
        session = ort.InferenceSession(spec.ref, opts, providers=[provider])
    except Exception as exc:  # onnxruntime raises its own exception classes for bad files
        raise ModelLoadError(f"model {spec.ref!r}: onnxruntime cannot load it: {_first_line(exc)}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"model {spec.ref!r}: has {len(inputs)} inputs; only single-input models are supported")
    name = inputs[0].name
    shape = (batch, *spec.shape)
    if spec.dtype == "int64":
        x = np.ones(shape, dtype=np.int64)
    else:
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    def run() -> object:
        return session.run(None, {name: x})

    def memory() -> float | None:
        return None if device == "cuda" else _peak_rss_mib()

    return Loaded(run, memory)


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def with_declared_shape(spec: ModelSpec) -> ModelSpec:
    """Fill in the input shape the model declares: a factory's `input_shape` attribute, or the
    static input shape of an ONNX file. Without one, `--shape` is required. A factory's module is
    imported either way, so an unknown one is reported before any device is touched."""
    factory = _factory(spec.ref) if spec.kind == "factory" else None
    if spec.shape:
        return spec
    shape = None
    if factory is not None:
        shape = getattr(factory, "input_shape", None)
    elif spec.kind == "onnx":
        try:
            import onnxruntime as ort

            dims = ort.InferenceSession(spec.ref, providers=["CPUExecutionProvider"]).get_inputs()[0].shape[1:]
            shape = tuple(dims) if dims and all(isinstance(d, int) and d > 0 for d in dims) else None
        except Exception:  # unreadable or dynamic: ask for --shape
            shape = None
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ParvaError(f"model {spec.ref!r} declares no input shape; give --shape, e.g. 3,224,224")
    return replace(spec, shape=tuple(shape))


def check(spec: ModelSpec) -> None:
    """Load the model on the CPU and run one batch of one item, so a wrong reference or a shape
    the model does not accept is a clear error before any point is measured."""
    try:
        loaded = load(spec, 1, "cpu", None)
    except ParvaError:
        raise
    except Exception as exc:  # the user's factory may raise anything
        raise ParvaError(f"model {spec.ref!r}: loading failed: {type(exc).__name__}: {_first_line(exc)}") from None
    try:
        loaded.run()
    except Exception as exc:
        raise ParvaError(
            f"model {spec.ref!r} does not accept an input of shape {(1, *spec.shape)} "
            f"({spec.dtype}): {_first_line(exc)}"
        ) from None


def _send(conn, message: tuple) -> bool:
    try:
        conn.send(message)
        return True
    except OSError:  # the parent is gone (broken pipe): nobody wants the result
        return False


def main(job: WorkerJob, index: int, out, control) -> None:
    """Worker process entry. `out` is the send end of a pipe to the parent: ("ready",), then
    ("done", items, wall_s, latencies as bytes of array('d'), memory MiB), or at any stage
    ("error", type, message). `control` is the receive end of the start signal.

    Ctrl-C is left to the parent, which stops its workers. A worker whose parent died exits at
    the next message: the start wait sees end-of-file and a send sees a broken pipe (the worker
    holds only its ends of both pipes, so neither can block forever)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.environ.update(job.env)
        if job.cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, job.cpus)
        model = load(job.spec, job.batch, job.device, job.threads)
        for _ in range(job.warmup):
            model.run()
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a row, the run goes on
        _send(out, ("error", type(exc).__name__, _first_line(exc)[:500]))
        return
    if not _send(out, ("ready",)):
        return
    try:
        if control.recv() != "go":
            return
    except (EOFError, OSError):
        return
    try:
        lat = array("d")
        t_start = time.perf_counter()
        deadline = t_start + job.duration_s
        while True:
            t0 = time.perf_counter()
            model.run()
            t1 = time.perf_counter()
            lat.append(t1 - t0)
            if t1 >= deadline:
                break
        _send(out, ("done", job.batch * len(lat), t1 - t_start, lat.tobytes(), model.memory_mib()))
    except BaseException as exc:  # noqa: BLE001
        _send(out, ("error", type(exc).__name__, _first_line(exc)[:500]))
