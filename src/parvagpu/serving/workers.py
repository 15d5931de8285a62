"""What a segment replica runs: the models config, a model runner, and a batch of requests.

Models config (YAML or JSON), one entry per model name used in the plan:

```yaml
version: v1
models:
  tinycnn:
    factory: parvagpu.profiler.zoo:tiny_cnn   # package.module:function, no arguments unless `args`
    inputs:                                   # the signature requests are checked against
      - {name: image, datatype: FP32, shape: [3, 32, 32]}   # one item, no batch dimension; -1 = any
    outputs:
      - {name: logits, datatype: FP32, shape: [10]}
    threads: 1                                # intra-op threads per replica; default: the segment's
                                              # size, as the profiler's cpu mode runs them
    args: {}                                  # keyword arguments for the factory
    weights: tinycnn.pt                       # optional: a state dict (torch.save), relative to this file
    pre: mypkg.hooks:decode                   # optional hooks, a name or {hook: name, args: {...}}
    post: {hook: parvagpu.serving.hooks:top_k, args: {k: 5}}
```

The older form `shape: [...]` with `dtype: float32|int64` declares one input named `input`; without
`outputs` the model has one FP32 output named `output`, each item flattened. `shape`/`dtype` also
say what the synthetic path feeds the model (required with a `pre` hook, which changes what the
model takes; otherwise derived from `inputs`, -1 as 1).

The factory returns a `torch.nn.Module` (run under `torch.inference_mode`) or any callable that
takes numpy arrays; the second keeps a served model free of torch where none is needed. A model
with one input is called with it; with several, by keyword (the input names). Its result is
mapped to the declared outputs: one array, a tuple (in order) or a mapping (by name).

Synthetic inputs are built once per replica at the segment's batch size and sliced per batch, as
the reference profiler does: that path measures serving, not data handling.
"""

from __future__ import annotations

import importlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from parvagpu.core.errors import ParvaError
from parvagpu.fileio.reader import read_document
from parvagpu.serving.oip import DTYPES, OipError, Signature, TensorSpec, datatype_of

_REF = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[A-Za-z_][\w.-]{0,63}$")
_KEYS = {"factory", "shape", "dtype", "threads", "args", "inputs", "outputs", "pre", "post", "weights"}
_LEGACY = {"float32": "FP32", "int64": "INT64"}
DEFAULT_OUTPUT = TensorSpec("output", "FP32", (-1,))


@dataclass(frozen=True)
class Hook:
    ref: str  # package.module:function
    args: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class WorkerModel:
    name: str
    factory: str
    shape: tuple[int, ...] | None = None  # synthetic model input (one item), legacy single input
    dtype: str = "float32"
    threads: int | None = None
    args: tuple[tuple[str, Any], ...] = field(default=())
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = (DEFAULT_OUTPUT,)
    pre: Hook | None = None
    post: Hook | None = None
    weights: str | None = None  # absolute path of a state dict

    @property
    def signature(self) -> Signature:
        return Signature(self.inputs, self.outputs)

    @property
    def synthetic(self) -> tuple[TensorSpec, ...]:
        """What the synthetic path feeds the model, one item each."""
        if self.shape is not None:
            return (TensorSpec("input", _LEGACY[self.dtype], self.shape),)
        return tuple(TensorSpec(t.name, t.datatype, tuple(1 if d == -1 else d for d in t.shape)) for t in self.inputs)

    def to_dict(self) -> dict:
        """A plain, picklable form (how a replica receives it)."""
        return {"factory": self.factory, "shape": None if self.shape is None else list(self.shape),
                "dtype": self.dtype, "threads": self.threads, "args": dict(self.args),
                "inputs": [_spec_dict(t) for t in self.inputs], "outputs": [_spec_dict(t) for t in self.outputs],
                "pre": _hook_dict(self.pre), "post": _hook_dict(self.post), "weights": self.weights}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "WorkerModel":
        """Back from `to_dict`."""
        return cls(
            name, d["factory"], None if d["shape"] is None else tuple(d["shape"]), d["dtype"], d["threads"],
            tuple(sorted(d["args"].items())), tuple(_spec(t) for t in d["inputs"]),
            tuple(_spec(t) for t in d["outputs"]), _hook(d["pre"]), _hook(d["post"]), d["weights"],
        )


def _spec_dict(t: TensorSpec) -> dict:
    return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}


def _spec(d: dict) -> TensorSpec:
    return TensorSpec(d["name"], d["datatype"], tuple(d["shape"]))


def _hook_dict(h: Hook | None) -> dict | None:
    return None if h is None else {"hook": h.ref, "args": dict(h.args)}


def _hook(d: dict | None) -> Hook | None:
    return None if d is None else Hook(d["hook"], tuple(sorted(d["args"].items())))


def parse_models(data: Any, source: str = "models config", base: Path | None = None) -> dict[str, WorkerModel]:
    """The models config as WorkerModels; `base` is the directory relative weight paths start from."""
    if isinstance(data, dict) and "models" in data:
        extra = set(data) - {"models", "version"}
        if extra:
            raise ParvaError(f"{source}: unknown keys {', '.join(sorted(extra))}")
        if data.get("version", "v1") != "v1":
            raise ParvaError(f"{source}: unsupported version {data.get('version')!r}")
        data = data["models"]
    if not isinstance(data, dict) or not data:
        raise ParvaError(f"{source}: expected a mapping of model name -> {{factory, inputs}}")
    return {str(name): _parse_entry(str(name), e, f"{source}: model {name!r}", base) for name, e in data.items()}


def _parse_entry(name: str, e: Any, where: str, base: Path | None) -> WorkerModel:
    if not isinstance(e, dict):
        raise ParvaError(f"{where}: expected a mapping")
    unknown = set(e) - _KEYS
    if unknown:
        raise ParvaError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    ref = e.get("factory")
    if not isinstance(ref, str) or not _REF.match(ref):
        raise ParvaError(f"{where}: factory must be 'package.module:function', got {ref!r}")
    shape = e.get("shape")
    if shape is not None:
        shape = _dims(shape, f"{where}: shape", allow_any=False)
    dtype = e.get("dtype", "float32")
    if dtype not in _LEGACY:
        raise ParvaError(f"{where}: dtype must be float32 or int64, got {dtype!r}")
    threads = e.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ParvaError(f"{where}: threads must be a positive integer, got {threads!r}")
    args = e.get("args", {}) or {}
    if not isinstance(args, dict):
        raise ParvaError(f"{where}: args must be a mapping")
    if "inputs" in e:
        inputs = _tensors(e["inputs"], f"{where}: inputs", empty_ok=False)
    elif shape is not None:
        inputs = (TensorSpec("input", _LEGACY[dtype], shape),)
    else:
        raise ParvaError(f"{where}: give its inputs (or the one-input shorthand shape)")
    outputs = _tensors(e["outputs"], f"{where}: outputs", empty_ok=True) if "outputs" in e else (DEFAULT_OUTPUT,)
    pre, post = _parse_hook(e.get("pre"), f"{where}: pre"), _parse_hook(e.get("post"), f"{where}: post")
    if pre is not None and shape is None:
        raise ParvaError(f"{where}: a pre hook changes what the model takes; give shape (and dtype) for the synthetic path")
    return WorkerModel(name, ref, shape, dtype, threads, tuple(sorted(args.items())), inputs, outputs, pre, post,
                       _weights(e.get("weights"), where, base))


def _dims(shape: Any, where: str, allow_any: bool) -> tuple[int, ...]:
    ok = isinstance(shape, list) and bool(shape) and all(
        isinstance(d, int) and not isinstance(d, bool) and (d > 0 or (allow_any and d == -1)) for d in shape
    )
    if not ok:
        what = "positive integers or -1" if allow_any else "positive integers"
        raise ParvaError(f"{where} must be a non-empty list of {what}, got {shape!r}")
    return tuple(shape)


def _tensors(items: Any, where: str, empty_ok: bool) -> tuple[TensorSpec, ...]:
    if not isinstance(items, list) or (not items and not empty_ok):
        raise ParvaError(f"{where}: expected a list of {{name, datatype, shape}}")
    out = []
    for t in items:
        if not isinstance(t, dict) or set(t) - {"name", "datatype", "shape"}:
            raise ParvaError(f"{where}: each entry is {{name, datatype, shape}}, got {t!r}")
        name, datatype = t.get("name"), t.get("datatype", "FP32")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ParvaError(f"{where}: bad tensor name {name!r}")
        if datatype not in DTYPES:
            raise ParvaError(f"{where}: {name}: datatype must be one of {', '.join(DTYPES)}, got {datatype!r}")
        out.append(TensorSpec(name, datatype, _dims(t.get("shape", [-1]), f"{where}: {name}: shape", allow_any=True)))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ParvaError(f"{where}: tensor names repeat: {names}")
    return tuple(out)


def _parse_hook(h: Any, where: str) -> Hook | None:
    if h is None:
        return None
    ref, args = (h, {}) if isinstance(h, str) else (h.get("hook"), h.get("args") or {}) if isinstance(h, dict) else (None, {})
    if not isinstance(ref, str) or not _REF.match(ref) or not isinstance(args, dict):
        raise ParvaError(f"{where}: expected 'package.module:function' or {{hook, args}}, got {h!r}")
    return Hook(ref, tuple(sorted(args.items())))


def _weights(w: Any, where: str, base: Path | None) -> str | None:
    if w is None:
        return None
    if not isinstance(w, str) or not w:
        raise ParvaError(f"{where}: weights must be a file path")
    p = Path(w) if base is None or Path(w).is_absolute() else base / w
    if not p.is_file():
        raise ParvaError(f"{where}: weights file {p} not found")
    return str(p.resolve())


def read_models(path: Path) -> dict[str, WorkerModel]:
    return parse_models(read_document(path, "models config"), str(path), path.parent)


def _import(ref: str, what: str = "factory") -> Callable[..., Any]:
    mod, fn = ref.split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as exc:
        raise ParvaError(f"{what} {ref!r}: cannot import: {exc}") from None


class Runner:
    """A loaded model: `runner(k)` runs the synthetic batch of k items and returns the seconds the
    model call took (the direct cost the serving path is compared with); `predict(inputs)` runs
    real named arrays (items first) and returns the named outputs and the seconds."""

    def __init__(self, spec: WorkerModel, max_batch: int, threads: int | None = None) -> None:
        self.spec = spec
        model = _import(spec.factory)(**dict(spec.args))
        try:
            import torch
        except ImportError:
            torch = None
        self.torch = torch if torch is not None and isinstance(model, torch.nn.Module) else None
        self.cuda = False
        if self.torch is not None:
            torch.set_num_threads(spec.threads or threads or 1)
            if spec.weights:
                model.load_state_dict(torch.load(spec.weights, map_location="cpu", weights_only=True))
            self.cuda = torch.cuda.is_available()  # a pinned replica sees only its MIG instance
            model = model.to("cuda" if self.cuda else "cpu").eval()
        elif not callable(model):
            raise ParvaError(f"factory {spec.factory!r} returned {type(model).__name__}, not a callable model")
        elif spec.weights:
            raise ParvaError(f"factory {spec.factory!r}: weights are only loaded into torch modules")
        self.model = model
        self.pre = _bind(spec.pre)
        self.post = _bind(spec.post)
        self.x = {t.name: self._convert(_synthetic(t, max_batch)) for t in spec.synthetic}

    def _convert(self, arr):
        if self.torch is None:
            return arr
        x = self.torch.from_numpy(arr if arr.flags.writeable else arr.copy())
        return x.to("cuda", non_blocking=True) if self.cuda else x

    def _call(self, inputs: dict) -> Any:
        args = ([next(iter(inputs.values()))], {}) if len(inputs) == 1 else ([], inputs)
        if self.torch is None:
            return self.model(*args[0], **args[1])
        with self.torch.inference_mode():
            out = self.model(*args[0], **args[1])
        if self.cuda:
            self.torch.cuda.synchronize()  # the call's time is the device's, not the launch's
        return out

    def __call__(self, k: int) -> float:
        t0 = time.perf_counter()
        self._call({n: x[:k] for n, x in self.x.items()})
        return time.perf_counter() - t0

    def predict(self, inputs: dict) -> tuple[dict, float]:
        """Model inputs (after the pre hook) for n items -> named outputs (before the post hook)."""
        x = {n: self._convert(a) for n, a in inputs.items()}
        t0 = time.perf_counter()
        out = self._call(x)
        seconds = time.perf_counter() - t0
        return self._named(out), seconds

    def _named(self, out: Any) -> dict:
        names = [t.name for t in self.spec.outputs] if self.spec.post is None else None
        if out is None:
            return {}
        if hasattr(out, "keys"):  # a mapping (a transformers ModelOutput is one)
            wanted = names if names is not None else list(out.keys())
            return {n: _numpy(out[n]) for n in wanted}
        seq = list(out) if isinstance(out, (tuple, list)) else [out]
        keys = names if names is not None else [f"output{i}" if i else "output" for i in range(len(seq))]
        if len(seq) < len(keys):
            raise OipError(f"model gave {len(seq)} outputs, {len(keys)} declared", 500)
        res = {n: _numpy(a) for n, a in zip(keys, seq)}
        if self.spec.post is None and self.spec.outputs == (DEFAULT_OUTPUT,):
            res["output"] = res["output"].reshape(res["output"].shape[0], -1)
        return res


def build_runner(spec: WorkerModel, max_batch: int, threads: int | None = None) -> Runner:
    """Load the model once (`threads` applies when the config sets none; default 1)."""
    return Runner(spec, max_batch, threads)


def _bind(h: Hook | None) -> Callable[[dict], dict] | None:
    if h is None:
        return None
    fn, args = _import(h.ref, "hook"), dict(h.args)
    return lambda tensors: fn(tensors, **args)


def _numpy(x: Any):
    import numpy as np

    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _synthetic(t: TensorSpec, items: int):
    """A seeded synthetic tensor of `items` items: normal floats, ones otherwise."""
    import numpy as np

    shape = (items, *t.shape)
    dt = DTYPES[t.datatype]
    if dt.kind == "f":
        return np.random.default_rng(0).standard_normal(shape).astype(dt)
    if dt.kind == "O":
        raise ParvaError(f"input {t.name}: BYTES cannot be synthesised; give shape/dtype of what the model takes")
    return np.ones(shape, dtype=dt)


# A batch on one replica. A request of n items enters the replica's batch queue as n one-item
# entries (so it counts n against the batch size, and Ray Serve's FIFO batching stays as it is); the
# batch runs as one model call per distinct item shape, and the request's n rows are put back together.


@dataclass(frozen=True)
class Item:
    """One item in a replica's batch queue."""

    arrived: float  # perf_counter at the replica
    inputs: dict | None  # model inputs (pre hook applied) of one item, items first; None = synthetic

    def shape_key(self) -> tuple:
        return tuple((k, v.shape[1:], str(v.dtype)) for k, v in sorted(self.inputs.items()))


def split(inputs: dict, n: int) -> list[dict]:
    """A request's inputs of n items as n one-item inputs (views, no copy)."""
    return [{k: v[j:j + 1] for k, v in inputs.items()} for j in range(n)]


def merge(parts: list[dict]) -> dict:
    """The one-item answers of a request back as one: outputs stacked in item order; the slowest
    item's timings and the largest batch any of its items ran in; an error if any item failed."""
    import numpy as np

    errors = [p["error"] for p in parts if "error" in p]
    if errors:
        return {"error": errors[0]}
    out = {k: max(p[k] for p in parts) for k in ("queue_ms", "compute_ms", "batch")}
    if "outputs" in parts[0]:
        out["outputs"] = {name: np.concatenate([p["outputs"][name] for p in parts]) for name in parts[0]["outputs"]}
    return out


def run_batch(runner: Runner, items: list[Item]) -> list[dict]:
    """Run one batch: the synthetic items as one synthetic call, the real ones stacked per item
    shape; per item its timings, the batch's size and its own row of the outputs (or an error)."""
    import numpy as np

    started = time.perf_counter()
    results: list[dict] = [{} for _ in items]
    compute = 0.0
    synthetic = sum(1 for it in items if it.inputs is None)
    if synthetic:
        compute += runner(synthetic)
    groups: dict[tuple, list[int]] = {}
    for j, it in enumerate(items):
        if it.inputs is not None:
            groups.setdefault(it.shape_key(), []).append(j)
    for members in groups.values():
        try:
            stacked = {k: np.concatenate([items[j].inputs[k] for j in members]) for k in items[members[0]].inputs}
            out, seconds = runner.predict(stacked)
            compute += seconds
            _rows(out, members, results)
        except Exception as exc:  # a model failure answers these items, it does not kill the replica
            for j in members:
                results[j] = {"error": f"{type(exc).__name__}: {exc}"}
    timing = {"compute_ms": 1000.0 * compute, "batch": len(items)}
    return [{**timing, "queue_ms": 1000.0 * (started - it.arrived), **r} for it, r in zip(items, results)]


def _rows(out: dict, members: list[int], results: list[dict]) -> None:
    for name, arr in out.items():
        if arr.ndim == 0 or arr.shape[0] != len(members):
            raise OipError(f"output {name!r} has shape {list(arr.shape)}, not {len(members)} items first", 500)
    for row, j in enumerate(members):
        results[j] = {"outputs": {name: arr[row:row + 1] for name, arr in out.items()}}


def prepare(runner: Runner, inputs: dict, n: int) -> dict:
    """One request's inputs through the pre hook: what the model takes, still n items."""
    out = runner.pre(inputs)
    if not isinstance(out, dict) or any(getattr(v, "shape", (None,))[:1] != (n,) for v in out.values()):
        raise OipError(f"pre hook must return named arrays of {n} items", 500)
    return out


def finish(runner: Runner, outputs: dict) -> dict:
    """One request's outputs through the post hook, checked against the declared outputs."""
    if runner.post is not None:
        outputs = runner.post(outputs)
    for t in runner.spec.outputs:
        arr = outputs.get(t.name)
        if arr is None:
            raise OipError(f"output {t.name!r} missing from the model's result", 500)
        if datatype_of(arr) != t.datatype or not t.fits(arr.shape):
            raise OipError(f"output {t.name!r} is {datatype_of(arr)} {list(arr.shape)}, declared {t.datatype} "
                           f"{[-1, *t.shape]}", 500)
    return {t.name: outputs[t.name] for t in runner.spec.outputs}


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
    """A model that sleeps, a known load-independent service time for tests, and returns each
    item's sum (so real requests have an output to check)."""

    def forward(x):
        time.sleep((ms_per_batch + ms_per_item * len(x)) / 1000.0)
        return x.reshape(len(x), -1).sum(axis=1, keepdims=True)

    return forward
