"""What a segment replica runs: the models config and a batch runner per model.

Models config (YAML or JSON), one entry per model name used in the plan:

```yaml
version: v1
models:
  tinycnn:
    factory: parvagpu.profiler.zoo:tiny_cnn   # package.module:function, no arguments unless `args`
    shape: [3, 32, 32]                        # one input item, without the batch dimension
    dtype: float32                            # float32 (default) or int64
    threads: 1                                # intra-op threads per replica; default: the segment's
                                              # size, as the profiler's cpu mode runs them
    args: {}                                  # keyword arguments for the factory
```

The factory returns a `torch.nn.Module` (run under `torch.inference_mode`) or any callable that
takes a numpy batch; the second keeps a served model free of torch where none is needed. Inputs are
synthetic, built once per replica at the segment's batch size and sliced per batch, as the
reference profiler does: the serving path is measured, not data decoding.
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parvagpu.fileio.reader import read_document
from parvagpu.core.errors import ParvaError

_FACTORY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_KEYS = {"factory", "shape", "dtype", "threads", "args"}


@dataclass(frozen=True)
class WorkerModel:
    name: str
    factory: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    threads: int | None = None
    args: tuple[tuple[str, Any], ...] = field(default=())

    def to_dict(self) -> dict:
        return {"factory": self.factory, "shape": list(self.shape), "dtype": self.dtype,
                "threads": self.threads, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "WorkerModel":
        """Back from `to_dict` (how a replica receives it)."""
        return cls(name, d["factory"], tuple(d["shape"]), d["dtype"], d["threads"], tuple(sorted(d["args"].items())))


def parse_models(data: Any, source: str = "models config") -> dict[str, WorkerModel]:
    if isinstance(data, dict) and "models" in data:
        extra = set(data) - {"models", "version"}
        if extra:
            raise ParvaError(f"{source}: unknown keys {', '.join(sorted(extra))}")
        if data.get("version", "v1") != "v1":
            raise ParvaError(f"{source}: unsupported version {data.get('version')!r}")
        data = data["models"]
    if not isinstance(data, dict) or not data:
        raise ParvaError(f"{source}: expected a mapping of model name -> {{factory, shape}}")
    out = {}
    for name, e in data.items():
        where = f"{source}: model {name!r}"
        if not isinstance(e, dict):
            raise ParvaError(f"{where}: expected a mapping")
        unknown = set(e) - _KEYS
        if unknown:
            raise ParvaError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        ref = e.get("factory")
        if not isinstance(ref, str) or not _FACTORY.match(ref):
            raise ParvaError(f"{where}: factory must be 'package.module:function', got {ref!r}")
        shape = e.get("shape")
        if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            raise ParvaError(f"{where}: shape must be a list of positive integers, got {shape!r}")
        dtype = e.get("dtype", "float32")
        if dtype not in ("float32", "int64"):
            raise ParvaError(f"{where}: dtype must be float32 or int64, got {dtype!r}")
        threads = e.get("threads")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ParvaError(f"{where}: threads must be a positive integer, got {threads!r}")
        args = e.get("args", {}) or {}
        if not isinstance(args, dict):
            raise ParvaError(f"{where}: args must be a mapping")
        out[str(name)] = WorkerModel(str(name), ref, tuple(shape), dtype, threads, tuple(sorted(args.items())))
    return out


def read_models(path: Path) -> dict[str, WorkerModel]:
    return parse_models(read_document(path, "models config"), str(path))


def _factory(ref: str) -> Callable[..., Any]:
    mod, fn = ref.split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise ParvaError(f"factory {ref!r}: cannot import: {exc}") from None


def build_runner(spec: WorkerModel, max_batch: int, threads: int | None = None) -> Callable[[int], float]:
    """Load the model once; return `run(k)` that runs one batch of k items and returns the seconds
    the model call took (the direct cost the serving path is compared with). `threads` applies
    when the config sets none (default 1)."""
    model = _factory(spec.factory)(**dict(spec.args))
    shape = (max_batch, *spec.shape)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(model, torch.nn.Module):
        torch.set_num_threads(spec.threads or threads or 1)
        model.eval()
        if spec.dtype == "int64":
            x = torch.ones(shape, dtype=torch.long)
        else:
            x = torch.randn(shape, generator=torch.Generator().manual_seed(0))

        def run_torch(k: int) -> float:
            t0 = time.perf_counter()
            with torch.inference_mode():
                model(x[:k])
            return time.perf_counter() - t0

        return run_torch
    if not callable(model):
        raise ParvaError(f"factory {spec.factory!r} returned {type(model).__name__}, not a callable model")
    import numpy as np

    xs = np.ones(shape, dtype=np.int64) if spec.dtype == "int64" else (
        np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    )

    def run_plain(k: int) -> float:
        t0 = time.perf_counter()
        model(xs[:k])
        return time.perf_counter() - t0

    return run_plain


# Small project-defined models without torch, for tests and the CI end-to-end run.


def numpy_mlp(hidden: int = 256, classes: int = 10, seed: int = 0) -> Callable[[Any], Any]:
    """A two-layer MLP in numpy over flattened inputs (input width fixed at first call)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    weights: dict[str, Any] = {}

    def forward(x):
        flat = x.reshape(x.shape[0], -1).astype(np.float32, copy=False)
        if "w1" not in weights:
            weights["w1"] = rng.standard_normal((flat.shape[1], hidden)).astype(np.float32) / 16
            weights["w2"] = rng.standard_normal((hidden, classes)).astype(np.float32) / 16
        return np.maximum(flat @ weights["w1"], 0.0) @ weights["w2"]

    return forward


def sleep_model(ms_per_batch: float = 5.0, ms_per_item: float = 0.0) -> Callable[[Any], Any]:
    """A model that only sleeps: a known, load-independent service time for tests."""

    def forward(x):
        time.sleep((ms_per_batch + ms_per_item * len(x)) / 1000.0)
        return None

    return forward
