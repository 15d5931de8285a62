"""Measuring models into profile CSVs (`parvagpu profile`).

Pure parts (`spec`, `results`) are importable without torch; `worker` imports torch or
onnxruntime only when a model is loaded, inside the measuring processes.
"""

from parvagpu.profiler.results import HEADER, Point, Result, WorkerTiming, aggregate, grid, skip_reason
from parvagpu.profiler.spec import Mode, ModelSpec, Settings, parse_model

__all__ = [
    "HEADER", "Mode", "ModelSpec", "Point", "Result", "Settings", "WorkerTiming", "aggregate", "grid",
    "parse_model", "skip_reason",
]
