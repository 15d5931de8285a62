"""What machine a profile was measured on, for its metadata file: profiles from different GPUs,
drivers or library versions are not interchangeable, and the file alone does not say."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

LIBRARIES = ("parvagpu", "torch", "onnxruntime", "numpy", "nvidia-ml-py")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_info(index: int) -> dict:
    """Name, driver and memory of one GPU through NVML; an `error` entry where NVML is missing."""
    try:
        import pynvml
    except ImportError:
        return {"error": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses; no driver on this machine
        return {"error": f"NVML unavailable: {exc}"}
    try:
        dev = pynvml.nvmlDeviceGetHandleByIndex(index)
        info: dict = {"index": index, "name": _text(pynvml.nvmlDeviceGetName(dev))}
        info["driver"] = _text(pynvml.nvmlSystemGetDriverVersion())
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()
            info["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        except Exception:  # older drivers
            pass
        info["memory_mib"] = pynvml.nvmlDeviceGetMemoryInfo(dev).total // 2**20
        try:
            info["mig_mode"] = bool(pynvml.nvmlDeviceGetMigMode(dev)[0])
        except Exception:  # GPUs without MIG
            info["mig_mode"] = None
        return info
    except Exception as exc:
        return {"index": index, "error": str(exc)}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def describe(gpu_index: int | None) -> dict:
    """The host, and the GPU when one is used."""
    out = {
        "host": {
            "cpu": cpu_name(),
            "logical_cpus": os.cpu_count(),
            "os": f"{platform.system()} {platform.release()}",
            "machine": platform.machine(),
        },
        "gpu": None if gpu_index is None else gpu_info(gpu_index),
    }
    return out
