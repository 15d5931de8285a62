"""What to profile, parsed and checked before anything runs: the model reference, the input
shape, the grid and the mode. Pure: bad input becomes a `ParvaError` naming the option, so the
CLI can print one line instead of failing halfway through a long run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from parvagpu.core.errors import ParvaError


class Mode(str, Enum):
    """How an instance size is realised while measuring."""

    mig = "mig"  # a real MIG instance of that size, with its own MPS daemon
    mps_share = "mps-share"  # the whole GPU under MPS, capped at size/7 of its SMs
    cpu = "cpu"  # `size` CPU cores and threads per process


APPROXIMATION = {
    Mode.mig: "exact: each size is a MIG GPU instance with one compute instance and its own MPS daemon",
    Mode.mps_share: (
        "approximation: no MIG; the processes of a point share the GPU through MPS with "
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE = round(100 * size / 7), which caps SMs but not memory "
        "or memory bandwidth"
    ),
    Mode.cpu: (
        "approximation: no GPU; instance size = CPU cores (the processes of a point are pinned to "
        "the same `size` cores where the machine has them) and each process runs `size` threads"
    ),
}

DTYPES = ("float32", "int64")
_FACTORY = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
_DIGITS = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is true, int("²") fails
MAX_VALUE = 1 << 20  # a bound on every batch size, process count and shape dimension
MAX_SECONDS = 24 * 3600.0  # a bound on --duration and the per-point timeout
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


@dataclass(frozen=True)
class ModelSpec:
    """A model to load in each worker: a factory `package.module:function` returning a
    `torch.nn.Module`, a TorchScript file, or an ONNX file; plus the shape of one input item
    (without the batch dimension) and its dtype."""

    kind: str
    ref: str  # "pkg.mod:fn" or a file path
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def default_name(self) -> str:
        if self.kind == "factory":
            return self.ref.rsplit(":", 1)[1]
        return Path(self.ref).stem

    @property
    def framework(self) -> str:
        return "onnxruntime" if self.kind == "onnx" else "torch"


def parse_model(ref: str, shape: str | None, dtype: str = "float32") -> ModelSpec:
    """Recognise the model reference: a `.onnx` file, another existing file (TorchScript), or
    `package.module:function`. Files must exist; importability is checked later, by loading.
    Without `shape` the spec's shape is empty, to be filled from what the model declares."""
    ref = ref.strip()
    if not ref:
        raise ParvaError("model: empty model reference")
    if dtype not in DTYPES:
        raise ParvaError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    dims = parse_shape(shape) if shape is not None else ()
    path = Path(ref)
    if ref.lower().endswith(".onnx"):
        kind = "onnx"
    elif path.suffix.lower() in TORCHSCRIPT_SUFFIXES or path.exists():
        kind = "torchscript"
    elif _FACTORY.match(ref):
        return ModelSpec("factory", ref, dims, dtype)
    else:
        raise ParvaError(
            f"model {ref!r}: expected package.module:function, a TorchScript file or an .onnx file"
        )
    if not path.is_file():
        raise ParvaError(f"model {ref!r}: file not found")
    return ModelSpec(kind, ref, dims, dtype)


def parse_shape(text: str) -> tuple[int, ...]:
    """`3,224,224` -> (3, 224, 224): one input item, without the batch dimension."""
    parts = [p.strip() for p in str(text).split(",")] if text else []
    if not parts or any(not p for p in parts):
        raise ParvaError(f"--shape: expected comma-separated positive integers such as 3,224,224, got {text!r}")
    dims = []
    for p in parts:
        if not _DIGITS.fullmatch(p) or not 1 <= int(p) <= MAX_VALUE:
            raise ParvaError(f"--shape: {p!r} in {text!r} is not a positive integer (at most {MAX_VALUE})")
        dims.append(int(p))
    return tuple(dims)


def parse_ints(text: str, option: str, high: int = MAX_VALUE) -> tuple[int, ...]:
    """`1,2,4` -> (1, 2, 4), sorted and without duplicates; every value in 1..`high`."""
    values = set()
    for p in str(text).split(","):
        p = p.strip()
        if not _DIGITS.fullmatch(p) or not 1 <= int(p) <= high:
            raise ParvaError(f"{option}: expected comma-separated integers in 1..{high}, got {text!r}")
        values.add(int(p))
    return tuple(sorted(values))


def check_name(name: str) -> str:
    """The profile's model name is its file stem, so it must be a plain file name."""
    if not _NAME.match(name) or name.endswith(".meta"):
        raise ParvaError(f"--name: {name!r} cannot be a profile file name (letters, digits, _ . + -)")
    return name


@dataclass(frozen=True)
class Settings:
    """How each point is measured. Times in seconds; `max_latency_s` None = no latency cut."""

    duration_s: float = 5.0
    warmup: int = 5
    max_latency_s: float | None = None
    timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0 < self.duration_s <= MAX_SECONDS:
            raise ParvaError(f"--duration must be > 0 and at most {MAX_SECONDS:g} seconds, got {self.duration_s}")
        if not 0 <= self.warmup <= MAX_VALUE:
            raise ParvaError(f"--warmup must be in 0..{MAX_VALUE}, got {self.warmup}")
        if self.max_latency_s is not None and not 0 < self.max_latency_s <= MAX_SECONDS:
            raise ParvaError(f"--max-latency must be > 0 ms and finite, got {self.max_latency_s * 1000:g}")
        if not 0 < self.timeout_s <= MAX_SECONDS:
            raise ParvaError(f"--timeout must be > 0 and at most {MAX_SECONDS:g} seconds, got {self.timeout_s:g}")


def check_sizes(mode: Mode, sizes: tuple[int, ...]) -> None:
    if mode is Mode.mps_share and max(sizes) > 7:
        raise ParvaError(f"--sizes: mps-share mode maps size to size/7 of the SMs; {max(sizes)} > 7")
